//! The audit log: one JSON object per line for every connection, DNS query and HTTP request a sandbox
//! makes, with who, where, how much and the verdict, and for every token fetch of a minted secret (kind
//! `token`: which secret, which endpoint, what came of it). Records are built from fields that never hold
//! a secret value. One writer task owns the file, so lines never interleave; a full queue slows the proxies
//! down rather than dropping records.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use serde::{Serialize, Serializer};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::PollSender;

use crate::sandbox::live::Sandbox;

const QUEUE: usize = 8192;
/// How long a record may wait for others before they are written together.
pub const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Https,
    TlsPassthrough,
    Tcp,
    Dns,
    Token,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Injected,
    Passed,
    Denied,
    Error,
}

/// The fields a connection's records share are reference-counted: a connection with many requests
/// clones one record per request, and it takes no allocation.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When it ended, written out (RFC 3339, milliseconds) by the log's thread, not the proxy's.
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    pub sandbox: Arc<str>,
    pub uid: u32,
    pub profile: Arc<str>,
    pub kind: Kind,
    pub destination: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integration: Option<Arc<str>>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times the request went again on another upstream connection (one the upstream closed or
    /// refused it on without processing it).
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// How many secrets were masked in the response (each run of masked bytes counts once).
    #[serde(skip_serializing_if = "is_zero")]
    pub redacted: u64,
}

fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenVerdict {
    Minted,
    Error,
}

/// One token fetch of a minted secret: never the token, nor anything the endpoint said but its status and
/// its error (`error`, `error_description`).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    pub kind: Kind,
    pub secret: String,
    /// `github_app`, `oauth2` or `google_service_account`.
    pub source: &'static str,
    /// The token endpoint's host.
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub verdict: TokenVerdict,
    /// When the token minted expires.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_millis_opt"
    )]
    pub expires: Option<SystemTime>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What goes into the log: one line each.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Record(Record),
    Token(TokenRecord),
}

impl Record {
    pub fn new(sandbox: &Sandbox, kind: Kind, destination: SocketAddr) -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH,
            sandbox: sandbox.id.as_str().into(),
            uid: sandbox.caller.uid,
            profile: sandbox.profile.name.as_str().into(),
            kind,
            destination: destination.to_string().into(),
            sni: None,
            method: None,
            host: None,
            path: None,
            status: None,
            integration: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            verdict: Verdict::Passed,
            error: None,
            retries: 0,
            redacted: 0,
        }
    }

    /// Stamps the end of the connection: the time written is when it ended, the duration since `started`.
    pub fn finish(&mut self, verdict: Verdict, error: Option<String>, started: Instant) {
        self.time = SystemTime::now();
        self.duration_ms = started.elapsed().as_millis() as u64;
        self.verdict = verdict;
        self.error = error;
    }

    /// Says in the daemon's log that the request's response had secrets masked, if it had: which
    /// integration, host and path, and how many (never what).
    pub fn log_redacted(&self) {
        if self.redacted > 0 {
            tracing::warn!(
                sandbox = %self.sandbox,
                integration = self.integration.as_deref().unwrap_or("-"),
                host = self.host.as_deref().unwrap_or("-"),
                path = self.path.as_deref().unwrap_or("-"),
                masked = self.redacted,
                "a response gave back secrets the daemon holds; the sandbox got them masked"
            );
        }
    }
}

fn rfc3339_millis<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

fn rfc3339_millis_opt<S: Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => rfc3339_millis(time, serializer),
        None => serializer.serialize_none(),
    }
}

#[derive(Clone)]
pub struct Audit {
    queue: mpsc::Sender<Entry>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source} (set daemon.audit_log to a writable path)")]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

impl Audit {
    /// Opens (creating, mode 0640, with its directory) the log and starts the writer task.
    pub fn open(path: &Path) -> Result<Audit, AuditError> {
        let error = |source| AuditError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(error)?;
        let (queue, mut records) = mpsc::channel::<Entry>(QUEUE);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
                while let Some(record) = records.blocking_recv() {
                    // Records that arrive meanwhile join this one: a proxy handing over a record
                    // wakes this thread once per batch instead of once per request.
                    std::thread::sleep(BATCH_DELAY);
                    let mut write = |record: &Entry| -> std::io::Result<()> {
                        serde_json::to_writer(&mut out, record)?;
                        out.write_all(b"\n")
                    };
                    let mut result = write(&record);
                    while let Ok(more) = records.try_recv() {
                        result = result.and_then(|()| write(&more));
                    }
                    if let Err(error) = result.and_then(|()| out.flush()) {
                        tracing::error!(%error, path = %path.display(), "writing the audit log");
                    }
                }
            })
            .map_err(error)?;
        Ok(Audit { queue })
    }

    pub async fn log(&self, record: Record) {
        let _ = self.queue.send(Entry::Record(record)).await;
    }

    /// For places that cannot wait (a body being dropped): a full queue loses this record, loudly.
    pub fn log_now(&self, record: Record) {
        hand_over(&self.queue, Entry::Record(record));
    }

    /// A token fetch; called from the minted secrets' refresh tasks, which do not wait on the log.
    pub fn log_token(&self, record: TokenRecord) {
        hand_over(&self.queue, Entry::Token(record));
    }

    /// A handle for code that is polled rather than awaited.
    pub fn polled(&self) -> PolledLog {
        PolledLog::new(self.queue.clone())
    }
}

/// The audit queue for code that is polled rather than awaited (the HTTP/2 relay). A record that finds
/// the queue full waits here, and its connection reads nothing more from its client until `poll_drain`
/// has passed every waiting record on: a sandbox that makes requests faster than the log is written
/// (streams it resets at once cost it nothing) is slowed down to that pace, and no record is lost.
pub struct PolledLog {
    queue: PollSender<Entry>,
    waiting: VecDeque<Record>,
}

impl PolledLog {
    pub fn new(queue: mpsc::Sender<Entry>) -> Self {
        PolledLog {
            queue: PollSender::new(queue),
            waiting: VecDeque::new(),
        }
    }

    pub fn log(&mut self, record: Record) {
        let record = match self.queue.get_ref() {
            Some(queue) if self.waiting.is_empty() => match queue.try_send(Entry::Record(record)) {
                Err(TrySendError::Full(Entry::Record(record))) => record,
                Ok(()) | Err(TrySendError::Full(_) | TrySendError::Closed(_)) => return,
            },
            Some(_) => record,
            None => return,
        };
        self.waiting.push_back(record);
    }

    /// Whether no record waits for room in the queue.
    pub fn is_clear(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Passes waiting records on as the queue makes room; ready once none waits.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.waiting.is_empty() {
            match self.queue.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(record) = self.waiting.pop_front() {
                        let _ = self.queue.send_item(Entry::Record(record));
                    }
                }
                // The writer is gone (the daemon is stopping): there is nowhere to wait for.
                Poll::Ready(Err(_)) => self.waiting.clear(),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }
}

impl Drop for PolledLog {
    /// A connection dropped without being closed (the daemon stopping) hands over what it can.
    fn drop(&mut self) {
        let Some(queue) = self.queue.get_ref() else {
            return;
        };
        for record in self.waiting.drain(..) {
            hand_over(queue, Entry::Record(record));
        }
    }
}

/// Queues `record` if there is room; a full queue loses it, loudly.
fn hand_over(queue: &mpsc::Sender<Entry>, record: Entry) {
    if queue.try_send(record).is_err() {
        tracing::error!("audit queue full; a record was lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(bytes_up: u64) -> Record {
        Record {
            time: UNIX_EPOCH,
            sandbox: "sbx-1".into(),
            uid: 1000,
            profile: "default".into(),
            kind: Kind::Https,
            destination: "10.0.0.3:443".into(),
            sni: None,
            method: None,
            host: None,
            path: None,
            status: None,
            integration: None,
            bytes_up,
            bytes_down: 0,
            duration_ms: 0,
            verdict: Verdict::Injected,
            error: None,
            retries: 0,
            redacted: 0,
        }
    }

    /// A full queue keeps records waiting, in order, until it has room; none is dropped.
    #[tokio::test]
    async fn a_polled_log_keeps_what_a_full_queue_cannot_take() {
        let (queue, mut written) = mpsc::channel(1);
        let mut log = PolledLog::new(queue);
        let bytes_up = |entry: Entry| match entry {
            Entry::Record(record) => record.bytes_up,
            Entry::Token(_) => panic!("a token record"),
        };
        for n in 0..3 {
            log.log(record(n));
        }
        assert!(!log.is_clear());
        let drained = std::future::poll_fn(|cx| Poll::Ready(log.poll_drain(cx))).await;
        assert!(drained.is_pending(), "the queue has no room yet");
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(bytes_up(written.recv().await.unwrap()));
            let _ = std::future::poll_fn(|cx| Poll::Ready(log.poll_drain(cx))).await;
        }
        assert_eq!(seen, [0, 1, 2]);
        assert!(log.is_clear());
    }

    #[test]
    fn a_record_is_one_json_object_that_begins_with_its_end_time() {
        let record = Record {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            kind: Kind::TlsPassthrough,
            sni: Some("api.example.com".into()),
            bytes_down: 2,
            duration_ms: 3,
            verdict: Verdict::Passed,
            ..record(1)
        };
        let line = serde_json::to_string(&record).unwrap();
        assert_eq!(
            line,
            r#"{"time":"2023-11-14T22:13:20.123Z","sandbox":"sbx-1","uid":1000,"profile":"default","kind":"tls-passthrough","destination":"10.0.0.3:443","sni":"api.example.com","bytes_up":1,"bytes_down":2,"duration_ms":3,"verdict":"passed"}"#
        );
    }

    #[test]
    fn a_token_fetch_is_a_line_of_kind_token() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let minted = TokenRecord {
            time: at,
            kind: Kind::Token,
            secret: "github".into(),
            source: "github_app",
            endpoint: "api.github.com".into(),
            status: Some(201),
            verdict: TokenVerdict::Minted,
            expires: Some(at + Duration::from_secs(3600)),
            duration_ms: 40,
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&Entry::Token(minted.clone())).unwrap(),
            r#"{"time":"2023-11-14T22:13:20.123Z","kind":"token","secret":"github","source":"github_app","endpoint":"api.github.com","status":201,"verdict":"minted","expires":"2023-11-14T23:13:20.123Z","duration_ms":40}"#
        );
        let failed = TokenRecord {
            status: None,
            verdict: TokenVerdict::Error,
            expires: None,
            error: Some("connecting to api.github.com: refused".into()),
            ..minted
        };
        assert_eq!(
            serde_json::to_string(&Entry::Token(failed)).unwrap(),
            r#"{"time":"2023-11-14T22:13:20.123Z","kind":"token","secret":"github","source":"github_app","endpoint":"api.github.com","verdict":"error","duration_ms":40,"error":"connecting to api.github.com: refused"}"#
        );
    }
}
