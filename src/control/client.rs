//! The client side: `sandbox exec`, `sandbox ls` and `sandbox secrets` (root's). `exec` sends the command line, environment,
//! working directory and its own stdin/stdout/stderr to the daemon, passes on the signals it receives, and
//! exits with the command's status. On a terminal it gives the command a pseudo-terminal of its own and
//! relays it, so the command gets job control and Ctrl-C while the caller's shell keeps its terminal.
//! Plain threads, no async runtime: this is on the path of every `sandbox exec` and must start fast.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};

use crate::protocol::{
    self, Bytes, ClientEvent, ExecRequest, Reply, Request, SandboxInfo, SecretInfo,
};
use crate::sandbox::init::EXIT_NO_SANDBOX;

/// Signals that `sandbox exec` passes on to the command instead of dying of them.
const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the sandbox daemon at {path}: {source} (is it running? `systemctl status sandbox`; another socket can be named with --socket or SANDBOX_SOCKET)")]
    Connect { path: String, source: io::Error },
    #[error("talking to the daemon: {0}")]
    Io(#[from] io::Error),
    #[error("talking to the daemon: {0}")]
    Frame(#[from] protocol::FrameError),
    #[error("{0}")]
    Refused(String),
    #[error("the daemon closed the connection before the command finished")]
    Hangup,
    #[error("setting up the terminal: {0}")]
    Terminal(nix::Error),
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        EXIT_NO_SANDBOX
    }
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })
}

/// Runs `argv` in a new sandbox and returns the exit status `sandbox exec` should have.
pub fn exec(
    socket: &Path,
    profile: Option<String>,
    argv: &[std::ffi::OsString],
) -> Result<i32, ClientError> {
    let stream = connect(socket)?;
    // Block the forwarded signals before any thread starts, so that only the forwarding thread takes them.
    let mut forwarded = SigSet::empty();
    for signal in FORWARDED {
        forwarded.add(signal);
    }
    forwarded
        .thread_block()
        .map_err(|e| ClientError::Io(e.into()))?;

    let terminal = Terminal::open_if_interactive()?;
    let cwd = std::env::current_dir()
        .map(|dir| Bytes(dir.as_os_str().as_bytes().to_vec()))
        .unwrap_or_else(|_| Bytes(b"/".to_vec()));
    let request = Request::Exec(ExecRequest {
        argv: argv
            .iter()
            .map(|arg| Bytes::from(arg.as_os_str()))
            .collect(),
        env: std::env::vars_os()
            .map(|(key, value)| (Bytes::from(key.as_os_str()), Bytes::from(value.as_os_str())))
            .collect(),
        cwd,
        profile,
        tty: terminal.is_some(),
        ca_files: caller_ca_files(),
    });
    let frame = protocol::encode_request(request)?;
    let stdio: [RawFd; 3] = match &terminal {
        Some(terminal) => terminal.command_stdio(),
        None => [0, 1, 2],
    };
    let sent = protocol::send_with_fds(stream.as_raw_fd(), &frame, &stdio)?;
    (&stream).write_all(&frame[sent..])?;
    let relay = terminal.map(Terminal::start_relay).transpose()?;

    let writer = stream.try_clone()?;
    std::thread::spawn(move || forward_signals(writer, forwarded));

    let result = read_until_exit(&stream);
    if let Some(relay) = relay {
        relay.finish();
    }
    result
}

/// The CA bundles the caller's environment points at, read as the caller: the sandbox sees them with its
/// CA added, and only what the caller could read itself can get there.
fn caller_ca_files() -> Vec<(Bytes, Bytes)> {
    let mut paths: Vec<std::ffi::OsString> = crate::sandbox::trust::variables()
        .filter_map(std::env::var_os)
        .filter(|path| !path.is_empty())
        // The daemon adds the CA to the distribution bundles itself.
        .filter(|path| {
            !crate::sandbox::trust::SYSTEM_BUNDLES
                .iter()
                .any(|bundle| path == bundle)
        })
        .collect();
    paths.sort();
    paths.dedup();
    let mut budget = crate::sandbox::trust::MAX_CALLER_FILE as u64;
    paths
        .into_iter()
        .filter_map(|path| {
            let file = open_without_symlinks(&path)?;
            let metadata = file.metadata().ok()?;
            if !metadata.is_file() {
                return None;
            }
            if metadata.len() > budget {
                eprintln!(
                    "sandbox: {} is not given the sandbox's CA: the CA files your environment names \
                     pass {} MiB in all; programs that read it will not trust intercepted hosts",
                    path.to_string_lossy(),
                    crate::sandbox::trust::MAX_CALLER_FILE >> 20
                );
                return None;
            }
            let mut content = Vec::new();
            (&file).take(budget).read_to_end(&mut content).ok()?;
            budget -= content.len() as u64;
            Some((Bytes::from(path.as_os_str()), Bytes(content)))
        })
        .collect()
}

/// Opens a CA file the caller's environment names, following no symbolic link on the way (the keeper
/// mounts over that path, and must find there what was read); O_NONBLOCK so that a FIFO does not hang.
fn open_without_symlinks(path: &std::ffi::OsStr) -> Option<std::fs::File> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how) {
        Ok(fd) => Some(fd.into()),
        Err(nix::errno::Errno::ELOOP) => {
            eprintln!(
                "sandbox: {} is not given the sandbox's CA: its path has a symbolic link; name the \
                 file it leads to",
                std::path::Path::new(path).display()
            );
            None
        }
        Err(_) => None,
    }
}

fn read_until_exit(stream: &UnixStream) -> Result<i32, ClientError> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(body) = protocol::take_frame(&mut buffer)? {
            match serde_json::from_slice::<Reply>(&body).map_err(protocol::FrameError::from)? {
                Reply::Started { .. } | Reply::List { .. } | Reply::Secrets { .. } => {}
                Reply::Exited { code } => return Ok(code),
                Reply::Error { message } => return Err(ClientError::Refused(message)),
            }
        }
        match (&*stream).read(&mut chunk) {
            Ok(0) => return Err(ClientError::Hangup),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
}

fn forward_signals(mut stream: UnixStream, set: SigSet) {
    while let Ok(signal) = set.wait() {
        if signal == Signal::SIGWINCH {
            Terminal::copy_window_size();
            continue;
        }
        let Ok(frame) = protocol::encode(&ClientEvent::Signal {
            signal: signal as i32,
        }) else {
            continue;
        };
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}

/// The pseudo-terminal given to an interactive command, and the caller's terminal in raw mode while it runs.
struct Terminal {
    master: OwnedFd,
    slave: OwnedFd,
    saved: Termios,
    stderr_is_tty: bool,
}

/// The master side of the pseudo-terminal, kept where SIGWINCH handling can reach it.
static MASTER: std::sync::OnceLock<RawFd> = std::sync::OnceLock::new();

impl Terminal {
    /// A pseudo-terminal only when both stdin and stdout are terminals: `sandbox exec -- cmd | less` keeps
    /// plain descriptors.
    fn open_if_interactive() -> Result<Option<Terminal>, ClientError> {
        let stdin = io::stdin();
        if !nix::unistd::isatty(&stdin).unwrap_or(false)
            || !nix::unistd::isatty(io::stdout()).unwrap_or(false)
        {
            return Ok(None);
        }
        let saved = termios::tcgetattr(&stdin).map_err(ClientError::Terminal)?;
        let size = window_size(stdin.as_fd());
        let pty = nix::pty::openpty(size.as_ref(), Some(&saved)).map_err(ClientError::Terminal)?;
        let _ = MASTER.set(pty.master.as_raw_fd());
        Ok(Some(Terminal {
            master: pty.master,
            slave: pty.slave,
            saved,
            stderr_is_tty: nix::unistd::isatty(io::stderr()).unwrap_or(false),
        }))
    }

    fn command_stdio(&self) -> [RawFd; 3] {
        let slave = self.slave.as_raw_fd();
        [slave, slave, if self.stderr_is_tty { slave } else { 2 }]
    }

    fn copy_window_size() {
        if let (Some(size), Some(&master)) = (window_size(io::stdin().as_fd()), MASTER.get()) {
            // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
            unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &size) };
        }
    }

    /// Puts the caller's terminal in raw mode (the sandbox's pseudo-terminal does the line editing) and
    /// copies keystrokes to the command and its output back; the returned `Relay` gives the terminal back
    /// as it was, also when dropped on an error. The slave is closed here: from now on only the sandbox
    /// holds it, so reading the master ends when the last process of the sandbox is gone.
    fn start_relay(self) -> Result<Relay, ClientError> {
        let Terminal {
            master,
            slave,
            saved,
            ..
        } = self;
        drop(slave);
        let mut input = std::fs::File::from(master.try_clone()?);
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(io::stdin(), SetArg::TCSANOW, &raw).map_err(ClientError::Terminal)?;
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stdin.read(&mut buffer) {
                if n == 0 || input.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        });
        let mut output = std::fs::File::from(master);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = io::stdout().lock();
            let mut buffer = [0u8; 4096];
            // EIO from the master means every holder of the slave has closed it.
            while let Ok(n) = output.read(&mut buffer) {
                if n == 0 || stdout.write_all(&buffer[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
            let _ = done_tx.send(());
        });
        Ok(Relay {
            saved,
            done: done_rx,
        })
    }
}

fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into a valid pointer.
    (unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } == 0).then_some(size)
}

struct Relay {
    saved: Termios,
    done: std::sync::mpsc::Receiver<()>,
}

impl Relay {
    /// Lets the last output reach the screen, then gives the caller its terminal back as it was.
    fn finish(self) {
        let _ = self.done.recv_timeout(Duration::from_secs(2));
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

pub fn list(socket: &Path) -> Result<Vec<SandboxInfo>, ClientError> {
    let mut stream = connect(socket)?;
    stream.write_all(&protocol::encode_request(Request::List)?)?;
    let mut buffer = Vec::new();
    stream.read_to_end(&mut buffer)?;
    let body = protocol::take_frame(&mut buffer)?.ok_or(ClientError::Hangup)?;
    match serde_json::from_slice::<Reply>(&body).map_err(protocol::FrameError::from)? {
        Reply::List { sandboxes } => Ok(sandboxes),
        Reply::Error { message } => Err(ClientError::Refused(message)),
        _ => Err(ClientError::Hangup),
    }
}

/// Every secret the daemon holds and its state (root only: the daemon refuses anyone else).
pub fn secrets(socket: &Path) -> Result<Vec<SecretInfo>, ClientError> {
    let mut stream = connect(socket)?;
    stream.write_all(&protocol::encode_request(Request::Secrets)?)?;
    let mut buffer = Vec::new();
    stream.read_to_end(&mut buffer)?;
    let body = protocol::take_frame(&mut buffer)?.ok_or(ClientError::Hangup)?;
    match serde_json::from_slice::<Reply>(&body).map_err(protocol::FrameError::from)? {
        Reply::Secrets { secrets } => Ok(secrets),
        // A daemon of an older release knows no such request (see `protocol::PROTOCOL_VERSION`).
        Reply::Error { message } if message.contains("unknown variant `secrets`") => {
            Err(ClientError::Refused(
                "the daemon is an older release without `sandbox secrets`; restart it with this \
                 binary (systemctl restart sandbox)"
                    .into(),
            ))
        }
        Reply::Error { message } => Err(ClientError::Refused(message)),
        _ => Err(ClientError::Hangup),
    }
}

pub fn print_secrets(secrets: &[SecretInfo]) {
    println!(
        "{:<16} {:<23} {:<11} {:>10} {:>12}  {:<24}  LAST-ERROR",
        "NAME", "SOURCE", "STATE", "EXPIRES-IN", "LAST-REFRESH", "FROM"
    );
    for secret in secrets {
        let expires = secret
            .expires_in_secs
            .map_or_else(|| "-".into(), format_age);
        let refreshed = secret
            .last_refresh_ago_secs
            .map_or_else(|| "never".into(), |ago| format!("{} ago", format_age(ago)));
        println!(
            "{:<16} {:<23} {:<11} {:>10} {:>12}  {:<24}  {}",
            secret.name,
            secret.source,
            secret.state,
            expires,
            refreshed,
            secret.from,
            secret.last_error.as_deref().unwrap_or("-")
        );
    }
}

pub fn print_list(sandboxes: &[SandboxInfo]) {
    println!(
        "{:<10} {:<12} {:<12} {:>8} {:>8} {:>6} {:>10} {:>10}  COMMAND",
        "ID", "USER", "PROFILE", "PID", "AGE", "CONNS", "BYTES-OUT", "BYTES-IN"
    );
    for sandbox in sandboxes {
        println!(
            "{:<10} {:<12} {:<12} {:>8} {:>8} {:>6} {:>10} {:>10}  {}",
            sandbox.id,
            sandbox.user,
            sandbox.profile,
            sandbox.pid,
            format_age(sandbox.age_secs),
            sandbox.connections,
            sandbox.bytes_up,
            sandbox.bytes_down,
            sandbox.command
        );
    }
}

fn format_age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::format_age;

    #[test]
    fn ages_read_like_ps() {
        assert_eq!(format_age(5), "5s");
        assert_eq!(format_age(600), "10m");
        assert_eq!(format_age(7200), "2h");
    }
}
