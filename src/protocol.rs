//! The control protocol between `sandbox exec`/`sandbox ls` and the daemon: versioned, length-prefixed JSON
//! frames over the Unix socket. The first frame of an exec carries the caller's stdin/stdout/stderr as
//! SCM_RIGHTS file descriptors, so pipes, files and terminals reach the command as they are.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape; both sides refuse to talk across versions. A new request (with
/// its reply) is not a change of shape: the messages of other requests stay as they were, and a daemon
/// that does not know it answers `Error` naming the unknown variant, which the client turns into advice.
pub const PROTOCOL_VERSION: u32 = 1;

/// Large enough for a command line plus a big environment (Linux caps both together near 2 MiB).
pub const MAX_FRAME: usize = 4 << 20;

/// Bytes that are not necessarily UTF-8 (argv, environment, paths): a JSON string when they are valid
/// UTF-8, otherwise an array of byte values, so nothing is lost on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => self.0.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Raw(Vec<u8>),
        }
        Ok(match Repr::deserialize(deserializer)? {
            Repr::Text(text) => Bytes(text.into_bytes()),
            Repr::Raw(raw) => Bytes(raw),
        })
    }
}

impl From<&std::ffi::OsStr> for Bytes {
    fn from(value: &std::ffi::OsStr) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Bytes(value.as_bytes().to_vec())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub version: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Run a command; stdin/stdout/stderr arrive as three file descriptors with this frame.
    Exec(ExecRequest),
    List,
    /// Every secret the daemon holds and the state of each (root only); never a value.
    Secrets,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub argv: Vec<Bytes>,
    pub env: Vec<(Bytes, Bytes)>,
    pub cwd: Bytes,
    pub profile: Option<String>,
    /// The descriptors are a terminal the command should take as its controlling terminal.
    pub tty: bool,
    /// The CA bundles the caller's environment names (see `trust::variables`), read by the client with
    /// the caller's rights: path and content.
    #[serde(default)]
    pub ca_files: Vec<(Bytes, Bytes)>,
}

/// What the client sends after an exec has started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    Signal { signal: i32 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Started { id: String },
    Exited { code: i32 },
    Error { message: String },
    List { sandboxes: Vec<SandboxInfo> },
    Secrets { secrets: Vec<SecretInfo> },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxInfo {
    pub id: String,
    pub user: String,
    pub uid: u32,
    pub profile: String,
    pub pid: u32,
    pub command: String,
    pub age_secs: u64,
    pub connections: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// One secret, as `sandbox secrets` shows it. Never its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretInfo {
    pub name: String,
    /// `env`, `file`, `credential`, `github_app`, `oauth2` or `google_service_account`.
    pub source: String,
    /// The variable, file or credential a static secret is read from; a minted one's token endpoint host.
    pub from: String,
    /// `ok`, `refreshing`, `expired` or `error`.
    pub state: String,
    /// Until the token expires (minted only).
    pub expires_in_secs: Option<u64>,
    /// Until the token is no longer handed out (its last tenth, at most a minute, is not used).
    pub usable_for_secs: Option<u64>,
    /// When the token was last minted, or the static value last read (start or reload): RFC 3339.
    pub last_refresh: Option<String>,
    pub last_refresh_ago_secs: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// When the next fetch is due (refresh or retry), unless one is running.
    pub next_fetch_in_secs: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("protocol version {theirs} is not {PROTOCOL_VERSION}: client and daemon are different releases")]
    Version { theirs: u32 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Writes one reply to a client of the control socket.
pub async fn send(stream: &mut tokio::net::UnixStream, reply: &Reply) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let frame = encode(reply).map_err(io::Error::other)?;
    stream.write_all(&frame).await
}

pub fn encode_request(request: Request) -> Result<Vec<u8>, FrameError> {
    encode(&Envelope {
        version: PROTOCOL_VERSION,
        body: request,
    })
}

/// Parses a request frame body, checking the version before the shape so that an old or new client
/// learns why it was refused instead of getting a parse error.
pub fn decode_request(body: &[u8]) -> Result<Request, FrameError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let VersionOnly { version } = serde_json::from_slice(body)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { theirs: version });
    }
    let envelope: Envelope<Request> = serde_json::from_slice(body)?;
    Ok(envelope.body)
}

/// Splits one complete frame off the front of `buffer`, if there is one.
pub fn take_frame(buffer: &mut Vec<u8>) -> Result<Option<Vec<u8>>, FrameError> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if buffer.len() < 4 + len {
        return Ok(None);
    }
    let body = buffer[4..4 + len].to_vec();
    buffer.drain(..4 + len);
    Ok(Some(body))
}

/// Sends `data` with `fds` attached to its first byte. Returns how much of `data` went out; the caller
/// writes the rest normally.
pub fn send_with_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let iov = [io::IoSlice::new(data)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    loop {
        match sendmsg::<()>(socket, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(sent) => return Ok(sent),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// One recvmsg: appends the bytes to `buffer` and any descriptors that came with them to `fds`.
/// Returns the number of bytes read (0 at end of stream).
pub fn recv_with_fds(
    socket: &impl AsRawFd,
    buffer: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [io::IoSliceMut::new(&mut chunk)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let received = message.bytes;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed these descriptors in our table; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if message.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors in one message",
        ));
    }
    buffer.extend_from_slice(&chunk[..received]);
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_a_frame() {
        let request = Request::Exec(ExecRequest {
            argv: vec![Bytes(b"echo".to_vec()), Bytes(vec![0xff, b'x'])],
            env: vec![(Bytes(b"A".to_vec()), Bytes(b"b c".to_vec()))],
            cwd: Bytes(b"/tmp".to_vec()),
            profile: Some("default".into()),
            tty: false,
            ca_files: vec![],
        });
        let mut buffer = encode_request(request.clone()).unwrap();
        buffer.extend_from_slice(b"\0\0"); // the start of the next frame stays behind
        let body = take_frame(&mut buffer).unwrap().unwrap();
        assert_eq!(decode_request(&body).unwrap(), request);
        assert_eq!(buffer, b"\0\0");
    }

    #[test]
    fn non_utf8_bytes_survive_json() {
        let original = Bytes(vec![b'a', 0xc3, 0x28, 0]);
        let json = serde_json::to_string(&original).unwrap();
        assert_eq!(serde_json::from_str::<Bytes>(&json).unwrap(), original);
        assert_eq!(
            serde_json::to_string(&Bytes(b"plain".to_vec())).unwrap(),
            "\"plain\""
        );
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let frame = encode(&Reply::Exited { code: 3 }).unwrap();
        let mut buffer = frame[..frame.len() - 1].to_vec();
        assert!(take_frame(&mut buffer).unwrap().is_none());
        buffer.push(*frame.last().unwrap());
        let body = take_frame(&mut buffer).unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<Reply>(&body).unwrap(),
            Reply::Exited { code: 3 }
        );
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_reading_it() {
        let mut buffer = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        assert!(matches!(
            take_frame(&mut buffer),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn other_protocol_version_is_named() {
        let body = br#"{"version":99,"request":"list"}"#;
        let error = decode_request(body).unwrap_err();
        assert!(matches!(error, FrameError::Version { theirs: 99 }));
        assert!(error.to_string().contains("99"));
    }

    #[test]
    fn the_secrets_request_is_a_new_variant_of_version_1() {
        let frame = encode_request(Request::Secrets).unwrap();
        assert_eq!(&frame[4..], br#"{"version":1,"request":"secrets"}"#);
        let mut buffer = frame;
        let body = take_frame(&mut buffer).unwrap().unwrap();
        assert_eq!(decode_request(&body).unwrap(), Request::Secrets);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_request(b"\xff\xfe not json").is_err());
        assert!(decode_request(br#"{"version":1,"request":"nope"}"#).is_err());
    }

    #[test]
    fn descriptors_travel_with_the_first_byte() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let sent = send_with_fds(
            a.as_raw_fd(),
            b"hello",
            &[file.as_raw_fd(), file.as_raw_fd()],
        )
        .unwrap();
        assert_eq!(sent, 5);
        let mut buffer = Vec::new();
        let mut fds = Vec::new();
        recv_with_fds(&b, &mut buffer, &mut fds).unwrap();
        assert_eq!(buffer, b"hello");
        assert_eq!(fds.len(), 2);
    }
}
