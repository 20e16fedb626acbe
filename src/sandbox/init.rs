//! The processes inside a sandbox. The daemon starts `sandbox-init` (this binary again), which first makes
//! new network, mount, PID, IPC and UTS namespaces for itself. That process (the "keeper", still in the
//! daemon's PID namespace) reads its instructions from the daemon, shapes the mount namespace, waits until
//! the daemon has wired the network, then forks PID 1 of the new PID namespace. PID 1 mounts a /proc of its
//! own, forks the command, forwards signals to it, reaps orphans and serves the socket filter's calls
//! (`unix_sockets`); when the command exits, PID 1 exits with its status and the kernel ends everything
//! else in the namespace. The command's process drops to the caller's identity in the order that keeps it
//! from regaining anything: bounding set while still privileged, then groups/gid/uid, then every remaining
//! capability set, then no_new_privs, then the socket filter, then exec, with nothing but stdin, stdout and
//! stderr open across it. PID 1 drops to the caller's identity the same way once the command is forked,
//! and makes itself non-dumpable.
//!
//! Everything here runs in single-threaded processes, never on a tokio thread: setns/unshare, set*id and
//! capabilities act on the calling thread only.

mod sys;

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::socket;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::protocol::{self, Bytes};
use crate::sandbox::unix_sockets;
use sys::{Handover, Linux, Sys};

/// The hidden first argument that turns this binary into the sandbox's init.
pub const INIT_ARG: &str = "__sandbox-init";

/// The lowest descriptor the keeper moves its control socket to, off stdin.
const CONTROL_FD: RawFd = 3;

/// Exit status when the sandbox itself could not be made (the command never ran).
pub const EXIT_NO_SANDBOX: i32 = 125;
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// Signals the keeper and PID 1 pass on to the command. SIGKILL and SIGSTOP cannot be caught; the
/// daemon uses SIGKILL on the keeper to end the whole sandbox.
const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

/// What the daemon tells the keeper: the command and identity, and how the mount namespace differs
/// from the host's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    pub argv: Vec<Bytes>,
    pub env: Vec<(Bytes, Bytes)>,
    pub cwd: Bytes,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub tty: bool,
    /// Paths the sandbox must not reach (the daemon's socket and config, secret files): files are
    /// covered with /dev/null, directories with an empty read-only tmpfs.
    pub hide: Vec<PathBuf>,
    /// Files whose content the sandbox sees replaced (resolv.conf).
    pub replace: Vec<(PathBuf, Bytes)>,
    /// The caller's CA bundles, with the CA added, that the sandbox sees at the paths the caller named:
    /// each path is opened without following symbolic links, as `sandbox exec` read it, and mounted onto
    /// through that descriptor (`ScratchFs::replace_caller_file`).
    pub caller_files: Vec<(PathBuf, Bytes)>,
    /// Distribution CA bundles the sandbox sees with `ca_pem` appended. The keeper reads them itself:
    /// they are large, and sending them with every exec would cost more than the sandbox.
    pub add_ca: Vec<PathBuf>,
    pub ca_pem: String,
    /// Java keystores the sandbox sees replaced by one made from the first of `add_ca` and `ca_pem`.
    pub java_keystores: Vec<PathBuf>,
    /// The soft open-files limit the command starts with: the daemon's own was raised for its relays.
    pub nofile_soft: u64,
    /// Host Unix sockets the command may connect to (the profile's `unix_sockets`, %U the caller's uid).
    pub unix_sockets: Vec<PathBuf>,
}

/// Starts the keeper. A command without a pre-exec hook is started with posix_spawn, whose child shares the
/// daemon's memory until it execs; fork copied the daemon's page tables instead, and the copy-on-write faults
/// that followed cost about 1 ms per exec with 200 sandboxes alive. So what the child used to do between fork
/// and exec, the keeper does first thing (`enter`): its stdin is its control socket until then, and the
/// caller's stdin follows over that socket (`send_stdin`). The keeper has made its namespaces once it has
/// written one byte on the control socket; until then /proc/PID/ns/net is the daemon's own.
///
/// Must be called from a thread that outlives the sandbox (a tokio worker, not a blocking-pool thread): the
/// keeper's parent-death signal fires when the thread that started it ends, which is how a killed daemon
/// takes its sandboxes with it.
pub fn spawn_keeper(
    control: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> io::Result<tokio::process::Child> {
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .arg0("sandbox-init")
        .arg(INIT_ARG)
        .arg(nix::unistd::getpid().to_string())
        .env_clear()
        .stdin(Stdio::from(control))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn()
}

/// Hands the caller's stdin to the keeper over its control socket (one byte carrying the descriptor).
pub fn send_stdin(control: &impl AsRawFd, stdin: OwnedFd) -> io::Result<()> {
    let fds = [stdin.as_raw_fd()];
    let sent = socket::sendmsg::<()>(
        control.as_raw_fd(),
        &[io::IoSlice::new(b"i")],
        &[socket::ControlMessage::ScmRights(&fds)],
        socket::MsgFlags::empty(),
        None,
    )?;
    if sent != 1 {
        return Err(io::Error::other("the keeper's control socket took no byte"));
    }
    Ok(())
}

/// What the daemon's spawn once did between fork and exec: die with the daemon's thread, leave its session,
/// make the namespaces, and take the control socket and the caller's stdin where the rest expects them.
/// Returns the control socket, after telling the daemon the namespaces exist.
fn enter() -> Result<File, InitError> {
    let daemon = std::env::args()
        .nth(2)
        .and_then(|pid| pid.parse::<i32>().ok())
        .ok_or(InitError::Aborted)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .context(|| "setting the parent-death signal".into())?;
    // The daemon may have died before the line above took effect.
    if nix::unistd::getppid() != Pid::from_raw(daemon) {
        return Err(InitError::Aborted);
    }
    nix::unistd::setsid().context(|| "starting a session".into())?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .context(|| "making the sandbox's namespaces".into())?;
    let what = || "taking the caller's stdin from the daemon".to_string();
    // SAFETY: the daemon made the keeper's stdin its end of the control socket; nothing else owns fd 0 yet.
    let stdin = unsafe { OwnedFd::from_raw_fd(0) };
    let control: OwnedFd =
        nix::fcntl::fcntl(&stdin, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(CONTROL_FD))
            .map(|fd| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that only this function owns.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
            .context(what)?;
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!(RawFd);
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let message = socket::recvmsg::<()>(
        control.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context(what)?;
    let caller_stdin = message
        .cmsgs()
        .context(what)?
        .find_map(|cmsg| match cmsg {
            socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .ok_or(InitError::Aborted)?;
    // SAFETY: the descriptor arrived with the message and belongs to this process alone.
    let caller_stdin = unsafe { OwnedFd::from_raw_fd(caller_stdin) };
    // Replaces the control socket's copy at 0 in one step; 0 stays open throughout, so the descriptor
    // received above could not have been given that number.
    nix::unistd::dup2_stdin(&caller_stdin).context(what)?;
    let _caller_stdin_now_at_0 = stdin.into_raw_fd();
    drop(caller_stdin);
    let mut control = File::from(control);
    control
        .write_all(b"n")
        .context(|| "telling the daemon the namespaces exist".into())?;
    Ok(control)
}

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("the daemon went away before the sandbox was ready")]
    Aborted,
    #[error("reading instructions from the daemon: {0}")]
    Spec(String),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
}

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, InitError>;
}

impl<T, E: Into<io::Error>> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|error| InitError::Sys {
            what: what(),
            source: error.into(),
        })
    }
}

/// Entry point of `sandbox-init`. Never returns.
pub fn main() -> ! {
    let code = match keeper() {
        Ok(code) => code,
        Err(InitError::Aborted) => EXIT_NO_SANDBOX,
        Err(error) => {
            let _ = writeln!(io::stderr(), "sandbox: {error}");
            EXIT_NO_SANDBOX
        }
    };
    std::process::exit(code)
}

fn keeper() -> Result<i32, InitError> {
    let mut control = enter()?;
    let (spec, rest) = read_spec(&mut control)?;
    prepare_mounts(&spec)?;
    // The go byte may have arrived in the same read as the spec.
    if rest.is_empty() {
        let mut go = [0u8; 1];
        match control.read(&mut go) {
            Ok(1) => {}
            _ => return Err(InitError::Aborted),
        }
    }
    drop(control);

    let forwarded = forwarded_set();
    let previous_mask = forwarded
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .context(|| "blocking signals".into())?;
    // Its write end is open while the keeper lives: PID 1 cannot ask getppid() (its parent is outside its
    // PID namespace) whether the keeper died before PID 1's parent-death signal was set.
    let (keeper_alive, keeper_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "making a pipe".into())?;
    // The socket supervisor's way to the keeper (`unix_sockets::helper`).
    let (helper_end, supervisor_end) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .context(|| "making the socket supervisor's socket pair".into())?;
    // SAFETY: this process is single-threaded, so fork is safe.
    match unsafe { fork() }.context(|| "fork of the sandbox's PID 1".into())? {
        ForkResult::Child => {
            drop((keeper_end, helper_end));
            let helper = unix_sockets::helper::Helper::new(supervisor_end);
            let code = match pid1(&spec, &forwarded, &previous_mask, keeper_alive, helper) {
                Ok(code) => code,
                Err(error) => {
                    let _ = writeln!(io::stderr(), "sandbox: {error}");
                    EXIT_NO_SANDBOX
                }
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop((keeper_alive, supervisor_end));
            // After the fork: the keeper has no other thread that a fork could have caught mid-way.
            // Without the helper, a non-dumpable program's socket calls fail (EPERM), closed as before.
            // Without the namespace, no request is answered: a non-dumpable program's socket calls
            // fail (EPERM), closed as before.
            let helper = unix_sockets::helper::pid_namespace_of(child.as_raw())
                .ok()
                .map(|sandbox_pid_ns| (helper_end, sandbox_pid_ns));
            let status = supervise(child, &forwarded, helper);
            drop(keeper_end);
            status
        }
    }
}

/// Reads the spec frame; returns it with whatever bytes followed it.
fn read_spec(control: &mut File) -> Result<(InitSpec, Vec<u8>), InitError> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Some(body) =
            protocol::take_frame(&mut buffer).map_err(|e| InitError::Spec(e.to_string()))?
        {
            let spec = serde_json::from_slice(&body).map_err(|e| InitError::Spec(e.to_string()))?;
            return Ok((spec, buffer));
        }
        match control.read(&mut chunk) {
            Ok(0) => return Err(InitError::Aborted),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(InitError::Aborted),
        }
    }
}

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        set.add(signal);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Waits for `child`, passing on forwarded signals and reaping every other child that ends (PID 1 inherits
/// the orphans of the namespace). Returns the exit status the shell convention gives `child`. The keeper
/// answers the socket supervisor's requests meanwhile (`helper`: the socket and the sandbox's PID
/// namespace; `unix_sockets::helper`), polling in its one thread: a process that made a PID namespace for
/// its children can start no thread.
fn supervise(
    child: Pid,
    forwarded: &SigSet,
    mut helper: Option<(OwnedFd, u64)>,
) -> Result<i32, InitError> {
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        forwarded,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .context(|| "making a signalfd".into())?;
    loop {
        let mut ready = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if let Some((socket, _)) = &helper {
            ready.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut ready, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            other => other.context(|| "waiting for signals".into())?,
        };
        let readable = |at: usize| {
            ready
                .get(at)
                .and_then(|fd| fd.revents())
                .is_some_and(|e| !e.is_empty())
        };
        let (signal_ready, request_ready) = (readable(0), readable(1));
        drop(ready);
        if request_ready {
            let open = helper
                .as_ref()
                .is_some_and(|(socket, ns)| unix_sockets::helper::answer_one(socket.as_fd(), *ns));
            if !open {
                helper = None;
            }
        }
        if signal_ready {
            let Some(info) = signals
                .read_signal()
                .context(|| "reading a signal".into())?
            else {
                continue;
            };
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if let Some(code) = on_signal(child, signal)? {
                return Ok(code);
            }
        }
    }
}

/// A forwarded signal goes to `child`; SIGCHLD reaps what ended. The exit status once `child` ended.
fn on_signal(child: Pid, signal: Signal) -> Result<Option<i32>, InitError> {
    if signal != Signal::SIGCHLD {
        let _ = kill(child, signal);
        return Ok(None);
    }
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                return Ok(Some(128 + signal as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(error) => return Err(error).context(|| "waiting for the command".into()),
        }
    }
}

fn pid1(
    spec: &InitSpec,
    forwarded: &SigSet,
    previous_mask: &SigSet,
    keeper_alive: OwnedFd,
    helper: unix_sockets::helper::Helper,
) -> Result<i32, InitError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .context(|| "setting the parent-death signal".into())?;
    check_keeper(&keeper_alive)?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context(|| "mounting /proc for the sandbox's PID namespace".into())?;
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "making a pipe".into());
    let (from_command, to_pid1) = pipe()?;
    let (from_pid1, to_command) = pipe()?;
    // SAFETY: PID 1 is single-threaded: the supervisor's thread starts after this fork.
    match unsafe { fork() }.context(|| "fork of the command".into())? {
        ForkResult::Child => {
            drop((from_command, to_command, keeper_alive));
            let mut sys = Linux {
                handover: Some(Handover { to_pid1, from_pid1 }),
            };
            let (code, reason) = run_command(&mut sys, spec, previous_mask);
            let _ = writeln!(io::stderr(), "sandbox: {reason}");
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop((to_pid1, from_pid1));
            let serving = become_supervisor(&mut Linux { handover: None }, spec)
                .and_then(|()| check_keeper(&keeper_alive))
                .and_then(|()| take_listener(child, from_command, to_command))
                .and_then(|listener| {
                    let Some(listener) = listener else {
                        return Ok(()); // the command failed before its filter; it says why
                    };
                    let policy = unix_sockets::Policy::new(spec.unix_sockets.clone());
                    std::thread::Builder::new()
                        .name("sandbox-sockets".into())
                        .spawn(move || unix_sockets::serve(listener, policy, Some(helper)))
                        .map(drop)
                        .context(|| "starting the socket supervisor".into())
                });
            if let Err(error) = serving {
                let _ = kill(child, Signal::SIGKILL);
                return Err(error);
            }
            drop(keeper_alive);
            supervise(child, forwarded, None)
        }
    }
}

/// Fails if the keeper has died: PID 1 cannot ask getppid() (its parent is outside its PID namespace)
/// whether that happened before its parent-death signal was set.
fn check_keeper(keeper_alive: &OwnedFd) -> Result<(), InitError> {
    let mut pipe = [PollFd::new(keeper_alive.as_fd(), PollFlags::POLLIN)];
    poll(&mut pipe, PollTimeout::ZERO).context(|| "checking on the keeper".into())?;
    if pipe[0]
        .revents()
        .is_some_and(|events| events.contains(PollFlags::POLLHUP))
    {
        return Err(InitError::Aborted);
    }
    Ok(())
}

/// PID 1 serves the socket filter's calls as the caller, so that the connects it makes for the command
/// are checked with the caller's rights and seen by their peers as the caller's; non-dumpable, so that the
/// command (the same user now) cannot trace it, read its memory or take its descriptors. Changing uid
/// clears the parent-death signal: it is set again (and the keeper checked once more by the caller).
fn become_supervisor<S: Sys>(sys: &mut S, spec: &InitSpec) -> Result<(), InitError> {
    drop_privileges(sys, spec)?;
    sys.set_dumpable(false)
        .context(|| "making PID 1 non-dumpable".into())?;
    sys.set_parent_death_signal()
        .context(|| "setting the parent-death signal".into())
}

/// The socket filter's listener, taken from the command once it says which descriptor it is (None: the
/// command failed before it had one). pidfd_getfd: both are the caller now, and the command made itself
/// dumpable for this.
fn take_listener(
    command: Pid,
    from_command: OwnedFd,
    to_command: OwnedFd,
) -> Result<Option<OwnedFd>, InitError> {
    let mut number = [0u8; 4];
    if File::from(from_command).read_exact(&mut number).is_err() {
        return Ok(None);
    }
    let taken = unix_sockets::take_listener(command.as_raw(), i32::from_ne_bytes(number));
    let answer = if taken.is_ok() { b"k" } else { b"x" };
    let _ = File::from(to_command).write_all(answer);
    taken.map(Some).context(|| {
        "taking the socket filter from the command (pidfd_getfd; a container's seccomp filter may \
             refuse it: see `sandbox doctor`)"
            .into()
    })
}

/// Becomes the command. Returns only on failure, with the exit status that failure should have and why.
fn run_command<S: Sys>(sys: &mut S, spec: &InitSpec, previous_mask: &SigSet) -> (i32, String) {
    let result = become_caller(sys, spec, previous_mask).and_then(|()| {
        let cwd = Path::new(OsStr::from_bytes(&spec.cwd.0));
        sys.chdir(cwd)
            .context(|| format!("cannot enter the working directory {}", cwd.display()))
    });
    // Whatever the daemon inherited from what started it (a shell's pipe, a supervisor's file) is not
    // close-on-exec, and would otherwise reach the command, opened with rights the caller does not have.
    let result = result.and_then(|()| {
        sys.only_stdio_on_exec()
            .context(|| "keeping the daemon's descriptors from the command".into())
    });
    let result = result.and_then(|()| confine_unix_sockets(sys));
    if let Err(error) = result {
        return (EXIT_NO_SANDBOX, error.to_string());
    }
    let error = exec_search(sys, &spec.argv, &spec.env);
    let argv0 = spec
        .argv
        .first()
        .map(|arg| String::from_utf8_lossy(&arg.0).into_owned())
        .unwrap_or_default();
    let (code, reason) = match error {
        Errno::ENOENT | Errno::ENOTDIR => (EXIT_NOT_FOUND, "command not found".to_string()),
        other => (EXIT_NOT_EXECUTABLE, other.desc().to_lowercase()),
    };
    (code, format!("{argv0}: {reason}"))
}

fn become_caller<S: Sys>(
    sys: &mut S,
    spec: &InitSpec,
    previous_mask: &SigSet,
) -> Result<(), InitError> {
    sys.reset_signals(previous_mask)
        .context(|| "restoring the signal mask".into())?;
    // What the daemon set for itself must not pass to the command: its OOM protection (a sandbox should
    // be killed before the daemon, not after) and its raised open-files limit.
    sys.reset_oom_score()
        .context(|| "resetting oom_score_adj".into())?;
    let hard = sys
        .open_files_hard_limit()
        .context(|| "reading RLIMIT_NOFILE".into())?;
    sys.set_open_files_limit(spec.nofile_soft.min(hard), hard)
        .context(|| "setting RLIMIT_NOFILE".into())?;
    sys.new_session().context(|| "setsid".into())?;
    if spec.tty {
        sys.take_terminal()
            .context(|| "taking the terminal as controlling terminal".into())?;
    }
    drop_privileges(sys, spec)
}

/// The caller's identity and no more, for the command and for PID 1.
fn drop_privileges<S: Sys>(sys: &mut S, spec: &InitSpec) -> Result<(), InitError> {
    drop_bounding_set(sys)?;
    let groups: Vec<Gid> = spec.groups.iter().map(|&gid| Gid::from_raw(gid)).collect();
    sys.set_groups(&groups)
        .context(|| "setting supplementary groups".into())?;
    let gid = Gid::from_raw(spec.gid);
    sys.set_gid(gid).context(|| format!("setting gid {gid}"))?;
    let uid = Uid::from_raw(spec.uid);
    sys.set_uid(uid).context(|| format!("setting uid {uid}"))?;
    // A caller with uid 0 keeps its capabilities through setresuid; nobody keeps any. The effective set
    // goes before the permitted one, which it must stay within.
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        sys.clear_capabilities(set)
            .context(|| format!("clearing the {set:?} capability set"))?;
    }
    sys.set_no_new_privs()
        .context(|| "setting no_new_privs".into())?;
    Ok(())
}

/// The last step before exec: the socket filter, whose listener goes to PID 1. PID 1 takes it with
/// pidfd_getfd, which the kernel allows a process of the same user only while this one is dumpable:
/// changing uid made it not, and exec sets it again as the command's binary says.
fn confine_unix_sockets<S: Sys>(sys: &mut S) -> Result<(), InitError> {
    sys.set_dumpable(true)
        .context(|| "letting PID 1 take the socket filter".into())?;
    let listener = sys.install_socket_filter().context(|| {
        "installing the socket filter (seccomp user notification, Linux 5.19 or newer; \
         see `sandbox doctor`)"
            .into()
    })?;
    sys.hand_over_listener(listener)
        .context(|| "handing the socket filter to PID 1".into())
}

/// Empties the bounding set through prctl rather than a fixed list, so capabilities newer than any
/// list we could ship are dropped too. Needs CAP_SETPCAP, so it runs before the uid changes.
fn drop_bounding_set<S: Sys>(sys: &mut S) -> Result<(), InitError> {
    for cap in 0..64 {
        let known = sys
            .drop_from_bounding_set(cap)
            .context(|| format!("dropping capability {cap} from the bounding set"))?;
        if !known {
            break; // past the last capability this kernel knows
        }
    }
    Ok(())
}

/// execve with a PATH search over the *caller's* PATH (libc's execvp would use ours). Returns the most
/// telling error: permission problems beat "not found", as in a shell.
fn exec_search<S: Sys>(sys: &mut S, argv: &[Bytes], env: &[(Bytes, Bytes)]) -> Errno {
    let Some(program) = argv.first() else {
        return Errno::ENOENT;
    };
    let to_cstring = |bytes: &[u8]| CString::new(bytes.to_vec());
    let Ok(args) = argv
        .iter()
        .map(|arg| to_cstring(&arg.0))
        .collect::<Result<Vec<_>, _>>()
    else {
        return Errno::EINVAL;
    };
    let Ok(envp) = env
        .iter()
        .map(|(key, value)| to_cstring(&[key.0.as_slice(), b"=", value.0.as_slice()].concat()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return Errno::EINVAL;
    };
    if program.0.contains(&b'/') {
        let Ok(path) = to_cstring(&program.0) else {
            return Errno::EINVAL;
        };
        return sys.exec(&path, &args, &envp);
    }
    let path_var = env
        .iter()
        .find(|(key, _)| key.0 == b"PATH")
        .map(|(_, value)| value.0.clone())
        .unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
    let mut best = Errno::ENOENT;
    for dir in path_var.split(|&byte| byte == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let Ok(candidate) = to_cstring(&[dir, b"/", program.0.as_slice()].concat()) else {
            continue;
        };
        match sys.exec(&candidate, &args, &envp) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            other => best = other,
        }
    }
    best
}

fn prepare_mounts(spec: &InitSpec) -> Result<(), InitError> {
    // Host mounts still appear inside; nothing mounted here leaks out.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context(|| "making / a slave mount".into())?;
    for path in &spec.hide {
        hide(path)?;
    }
    if spec.replace.is_empty() && spec.caller_files.is_empty() && spec.add_ca.is_empty() {
        return Ok(());
    }
    let scratch = ScratchFs::new()?;
    for (path, content) in &spec.replace {
        scratch.replace(path, &content.0)?;
    }
    for (path, content) in &spec.caller_files {
        scratch.replace_caller_file(path, &content.0)?;
    }
    let mut java_keystore = None;
    for path in &spec.add_ca {
        let Ok(mut bundle) = std::fs::read(path) else {
            continue;
        };
        if java_keystore.is_none() && !spec.java_keystores.is_empty() {
            let created = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64);
            java_keystore = Some(crate::sandbox::trust::java_keystore(
                &bundle,
                &spec.ca_pem,
                created,
            ));
        }
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(spec.ca_pem.as_bytes());
        scratch.replace(path, &bundle)?;
    }
    if let Some(keystore) = java_keystore {
        for path in &spec.java_keystores {
            scratch.replace(path, &keystore)?;
        }
    }
    Ok(())
}

fn hide(path: &Path) -> Result<(), InitError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).context(|| format!("hiding {}", path.display())),
    };
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    if metadata.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            ro,
            Some("size=4k,mode=0555"),
        )
        .context(|| format!("hiding {}", path.display()))
    } else {
        bind_read_only(Path::new("/dev/null"), path)
            .context(|| format!("hiding {}", path.display()))
    }
}

fn bind_read_only(source: &Path, target: &Path) -> nix::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
}

/// Mounts a read-only clone of `source` (a file) onto `target` (an O_PATH descriptor), with the new mount
/// API: no path is looked up.
fn move_read_only_copy(source: BorrowedFd, target: BorrowedFd) -> io::Result<()> {
    let check = |result: libc::c_long| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    // SAFETY: open_tree with a valid descriptor and an empty C string; the new descriptor is owned once.
    let tree = unsafe {
        let tree = check(libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        ))?;
        OwnedFd::from_raw_fd(tree as RawFd)
    };
    let attributes = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads one mount_attr of the given size; move_mount takes two descriptors and
    // empty C strings.
    unsafe {
        check(libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attributes as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        ))?;
        check(libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        ))?;
    }
    Ok(())
}

/// A tmpfs that is mounted nowhere (new mount API): files made in it can be bind-mounted over host
/// files without ever having a name that another process could see or that could be left behind.
struct ScratchFs {
    mount: OwnedFd,
}

impl ScratchFs {
    fn new() -> Result<Self, InitError> {
        let what = || "creating a detached tmpfs (kernel 5.2 or newer needed)".to_string();
        // SAFETY: raw syscalls with valid C strings; each returned descriptor is owned exactly once.
        unsafe {
            let fs = libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), libc::FSOPEN_CLOEXEC);
            if fs < 0 {
                return Err(io::Error::last_os_error()).context(what);
            }
            let fs = OwnedFd::from_raw_fd(fs as RawFd);
            let created = libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            );
            if created < 0 {
                return Err(io::Error::last_os_error()).context(what);
            }
            let mount = libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0);
            if mount < 0 {
                return Err(io::Error::last_os_error()).context(what);
            }
            Ok(ScratchFs {
                mount: OwnedFd::from_raw_fd(mount as RawFd),
            })
        }
    }

    fn replace(&self, target: &Path, content: &[u8]) -> Result<(), InitError> {
        if !target.exists() {
            return Ok(());
        }
        let what = || format!("replacing {} inside the sandbox", target.display());
        let file = self.file(target, content).context(what)?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        bind_read_only(&source, target).context(what)
    }

    /// `content` in a file of its own, named after `target`.
    fn file(&self, target: &Path, content: &[u8]) -> io::Result<File> {
        let name = target.to_string_lossy().replace('/', "_");
        let file = nix::fcntl::openat(
            &self.mount,
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )?;
        let mut file = File::from(file);
        file.write_all(content)?;
        Ok(file)
    }

    /// Like `replace`, for a path the caller named, which the caller may swap for a symbolic link at any
    /// moment: the target is opened once without following any (RESOLVE_NO_SYMLINKS), must be a regular
    /// file, and the read-only copy is moved onto that very file through its descriptor (open_tree,
    /// mount_setattr, move_mount), never by a path resolved again. A path with a symbolic link in it, no
    /// longer a file, or whose file was replaced meanwhile, is left as it is: the sandbox sees it without
    /// the CA.
    fn replace_caller_file(&self, path: &Path, content: &[u8]) -> Result<(), InitError> {
        let what = || format!("replacing {} inside the sandbox", path.display());
        let how = nix::fcntl::OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS);
        let target = match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how) {
            Ok(target) => target,
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::EACCES) => return Ok(()),
            Err(error) => return Err(error).context(what),
        };
        let stat = nix::sys::stat::fstat(&target).context(what)?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let file = self.file(path, content).context(what)?;
        match move_read_only_copy(file.as_fd(), target.as_fd()) {
            // The file was unlinked (renamed over) since it was opened: the kernel mounts on no deleted
            // file. What is at the path now is someone else's; it is left as it is, like a link.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            moved => moved.context(what),
        }
    }
}

#[cfg(test)]
mod tests;
