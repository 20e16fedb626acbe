//! The daemon's control socket: binds it (directory, mode, group, stale socket), accepts clients, learns
//! who they are from the kernel (SO_PEERCRED, SO_PEERGROUPS — never from anything they send), reads one
//! versioned request with its file descriptors, and hands it to the sandbox lifecycle (exec, ls) or
//! answers it here (secrets, for root only). A client that sends garbage, stalls, or floods the socket
//! costs a bounded amount and is dropped.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::config::{Current, SecretSource};
use crate::protocol::{self, FrameError, Reply, Request, SecretInfo};
use crate::sandbox::lifecycle::Sandboxes;
use crate::sandbox::live::Caller;
use crate::secrets::store::Status;
use crate::secrets::Store;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that have not yet sent a complete request. Past this, the oldest is closed: a real
/// client sends its request within microseconds, so only idle or stalling ones are ever old, and a flood
/// of them cannot lock out the next real client.
const MAX_PENDING: usize = 128;

#[derive(Default)]
struct Pending {
    next_id: AtomicU64,
    queue: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
}

impl Pending {
    /// Registers a new connection; the receiver fires if it is evicted to make room.
    fn enter(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (evict, evicted) = oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push_back((id, evict));
        if queue.len() > MAX_PENDING {
            if let Some((_, oldest)) = queue.pop_front() {
                let _ = oldest.send(());
            }
        }
        (id, evicted)
    }

    fn leave(&self, id: u64) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.retain(|(queued, _)| *queued != id);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating socket directory {path}: {source}")]
    Directory { path: String, source: io::Error },
    #[error("another daemon is already listening on {0}; stop it first (systemctl stop sandbox)")]
    InUse(String),
    #[error(
        "{0} exists and is not a socket; daemon.socket must name a path for the daemon's socket"
    )]
    NotASocket(String),
    #[error("binding {path}: {source}")]
    Bind { path: String, source: io::Error },
    #[error(
        "socket_group {0:?} does not exist; create it (groupadd {0}) or change daemon.socket_group"
    )]
    NoGroup(String),
    #[error("setting owner/mode of {path}: {source}")]
    Permissions { path: String, source: io::Error },
}

/// Fails when the daemon could not bind its socket at `path`: another daemon serves it, something that
/// is not a socket is there, or `group` does not exist. Checked before the daemon changes anything in the
/// kernel, which would break the sandboxes of a daemon already running.
pub fn check_free(path: &Path, group: Option<&str>) -> Result<(), ControlError> {
    let display = path.display().to_string();
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(ControlError::NotASocket(display));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(display));
        }
    }
    if let Some(name) = group {
        group_id(name)?;
    }
    Ok(())
}

fn group_id(name: &str) -> Result<nix::unistd::Gid, ControlError> {
    Ok(nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| ControlError::NoGroup(name.to_string()))?
        .gid)
}

/// Binds the control socket: mode 0660 and group `group` when one is configured (members may call
/// `sandbox exec`; the profiles still decide what each caller gets), else 0666 and the profiles alone
/// decide. A socket left by a dead daemon is replaced; a live one is an error.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, ControlError> {
    let display = path.display().to_string();
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| ControlError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| ControlError::Directory {
                    path: dir.display().to_string(),
                    source,
                },
            )?;
        }
    }
    check_free(path, group)?;
    if std::fs::symlink_metadata(path).is_ok() {
        // A dead daemon's socket (check_free let nothing else through).
        let _ = std::fs::remove_file(path);
    }
    let gid = group.map(group_id).transpose()?;
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: display.clone(),
        source,
    })?;
    let mode = if gid.is_some() { 0o660 } else { 0o666 };
    let permissions = || -> io::Result<()> {
        if let Some(gid) = gid {
            nix::unistd::chown(path, None, Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    permissions().map_err(|source| ControlError::Permissions {
        path: display,
        source,
    })?;
    Ok(listener)
}

/// Serves the control socket: `exec` and `ls` go to `sandboxes`; `secrets` reads the config in force
/// (`current`) and the minted secrets' `store`.
pub async fn serve(
    listener: UnixListener,
    sandboxes: Arc<Sandboxes>,
    current: Arc<Current>,
    store: Store,
) {
    let pending = Arc::new(Pending::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept on the control socket failed");
                // EMFILE and friends: give the system a moment instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let sandboxes = sandboxes.clone();
        let pending = pending.clone();
        let (current, store) = (current.clone(), store.clone());
        tokio::spawn(async move {
            let (id, evicted) = pending.enter();
            let request = tokio::select! {
                request = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&stream)) => request,
                _ = evicted => {
                    tracing::debug!("idle control connection closed to make room");
                    return;
                }
            };
            pending.leave(id);
            let (request, fds) = match request {
                Ok(Ok(received)) => received,
                Ok(Err(FrameError::Closed)) => return,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "bad request on the control socket");
                    reply_error(stream, &error.to_string()).await;
                    return;
                }
                Err(_) => {
                    reply_error(stream, "no request within 10 s").await;
                    return;
                }
            };
            let caller = match identify(&stream).await {
                Ok(caller) => caller,
                Err(error) => {
                    reply_error(stream, &format!("cannot identify the caller: {error}")).await;
                    return;
                }
            };
            match request {
                Request::Exec(exec) => sandboxes.run_exec(stream, caller, exec, fds).await,
                Request::List => {
                    let listed = sandboxes.list(&caller);
                    let reply = Reply::List { sandboxes: listed };
                    let _ = protocol::send(&mut { stream }, &reply).await;
                }
                // Which secrets exist, where they come from and which fail is for the operator only.
                Request::Secrets if caller.uid != 0 => {
                    reply_error(
                        stream,
                        &format!(
                            "`sandbox secrets` is for root only (you are {}): it describes every secret the \
                             daemon holds; run it with sudo",
                            caller.user
                        ),
                    )
                    .await;
                }
                Request::Secrets => {
                    let reply = Reply::Secrets {
                        secrets: secrets_status(&current, &store),
                    };
                    let _ = protocol::send(&mut { stream }, &reply).await;
                }
            }
        });
    }
}

/// Every secret of the config in force, by name: the static ones as last read, the minted ones as the
/// store has them.
fn secrets_status(current: &Current, store: &Store) -> Vec<SecretInfo> {
    let (config, secrets) = current.get();
    let mut minted: HashMap<String, Status> = store
        .status()
        .into_iter()
        .map(|status| (status.name.clone(), status))
        .collect();
    let now = SystemTime::now();
    let ago = |at: SystemTime| now.duration_since(at).unwrap_or_default().as_secs();
    let rfc3339 = |at: SystemTime| humantime::format_rfc3339_millis(at).to_string();
    config
        .secrets
        .iter()
        .map(|(name, def)| match (&def.source, minted.remove(name)) {
            (SecretSource::Minted(_), Some(status)) => SecretInfo {
                name: name.clone(),
                source: status.source.as_str().into(),
                from: status.endpoint_host,
                state: status.state.as_str().into(),
                expires_in_secs: status
                    .expires_at
                    .map(|at| at.duration_since(now).unwrap_or_default().as_secs()),
                usable_for_secs: status.usable_for.map(|usable| usable.as_secs()),
                last_refresh: status.last_refresh.map(rfc3339),
                last_refresh_ago_secs: status.last_refresh.map(ago),
                last_error: status.last_error,
                last_error_at: status.last_error_at.map(rfc3339),
                next_fetch_in_secs: status.next_fetch_in.map(|next| next.as_secs()),
            },
            (source, status) => {
                let minted_but_missing =
                    matches!(source, SecretSource::Minted(_)) && status.is_none();
                let from = match source {
                    SecretSource::Env(var) => var.clone(),
                    SecretSource::File(path) => path.display().to_string(),
                    SecretSource::Credential(credential) => credential.clone(),
                    SecretSource::Minted(_) => String::new(),
                };
                SecretInfo {
                    name: name.clone(),
                    source: source.kind().into(),
                    from,
                    state: if minted_but_missing { "error" } else { "ok" }.into(),
                    expires_in_secs: None,
                    usable_for_secs: None,
                    last_refresh: (!minted_but_missing).then(|| rfc3339(secrets.loaded_at())),
                    last_refresh_ago_secs: (!minted_but_missing).then(|| ago(secrets.loaded_at())),
                    last_error: minted_but_missing.then(|| {
                        "the daemon has no definition of it (a reload is in progress?)".into()
                    }),
                    last_error_at: None,
                    next_fetch_in_secs: None,
                }
            }
        })
        .collect()
}

async fn reply_error(mut stream: UnixStream, message: &str) {
    let _ = protocol::send(
        &mut stream,
        &Reply::Error {
            message: message.to_string(),
        },
    )
    .await;
}

/// Reads exactly one request frame, collecting the descriptors that came with it. Descriptors beyond the
/// three standard streams are closed (they are dropped with the vector's other elements by the caller).
async fn read_request(stream: &UnixStream) -> Result<(Request, Vec<OwnedFd>), FrameError> {
    let mut buffer = Vec::new();
    let mut fds = Vec::new();
    loop {
        if let Some(body) = protocol::take_frame(&mut buffer)? {
            if !buffer.is_empty() {
                return Err(FrameError::Malformed(serde::de::Error::custom(
                    "data after the request; send one request per connection",
                )));
            }
            return Ok((protocol::decode_request(&body)?, fds));
        }
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            protocol::recv_with_fds(stream, &mut buffer, &mut fds)
        }) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error.into()),
        }
        if fds.len() > 3 {
            return Err(FrameError::Malformed(serde::de::Error::custom(
                "more than three file descriptors",
            )));
        }
    }
}

async fn identify(stream: &UnixStream) -> io::Result<Caller> {
    let credentials = stream.peer_cred()?;
    let groups = peer_groups(stream)?;
    let uid = credentials.uid();
    let gid = credentials.gid();
    // Name service lookups may block (LDAP, sssd): keep them off the async workers.
    tokio::task::spawn_blocking(move || Caller::lookup(uid, gid, groups))
        .await
        .map_err(io::Error::other)?
}

/// The caller's supplementary groups as the kernel saw them when it connected.
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 256];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most that much.
        let result = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if result == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
}
