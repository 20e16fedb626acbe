//! Who runs clients and how: the unprivileged test user (and root), commands run as a caller with a
//! small fixed environment that carries the test's run tag, `sandbox exec` built step by step
//! ([`Exec`]), and a running client whose output is read as it comes ([`Running`]).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::tools::{bin, run_tool, SETTLE, STD_PATH};

pub const TEST_USER: &str = "sbxtest";
pub const TEST_GROUP2: &str = "sbxtest2";
/// Every client and so every sandboxed command carries this variable; the guards use it to find and kill
/// whatever a failed test left running.
pub const RUN_TAG_VAR: &str = "SBX_E2E_RUN";
/// How long [`Exec::run`] waits for a client unless the test says otherwise.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, including the primary one.
    pub groups: Vec<u32>,
}

pub fn root() -> Caller {
    Caller {
        name: "root".into(),
        uid: 0,
        gid: 0,
        groups: vec![0],
    }
}

/// The unprivileged test user (created once, idempotently, under a lock shared with other test
/// processes): primary group `sbxtest`, supplementary group `sbxtest2`.
pub fn test_user() -> Caller {
    static USER: OnceLock<Caller> = OnceLock::new();
    USER.get_or_init(|| {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/sbx-e2e-user.lock")
            .unwrap();
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("flock user lock");
        run_tool("groupadd", &["-f", TEST_USER]);
        run_tool("groupadd", &["-f", TEST_GROUP2]);
        if lookup_user().is_none() {
            run_tool(
                "useradd",
                &[
                    "-M",
                    "-N",
                    "-g",
                    TEST_USER,
                    "-G",
                    TEST_GROUP2,
                    "-d",
                    "/nonexistent",
                    "-s",
                    "/bin/sh",
                    TEST_USER,
                ],
            );
        }
        let group2 = nix::unistd::Group::from_name(TEST_GROUP2)
            .unwrap()
            .expect("group sbxtest2");
        if !group2.mem.iter().any(|m| m == TEST_USER) {
            run_tool("usermod", &["-a", "-G", TEST_GROUP2, TEST_USER]);
        }
        let user = lookup_user().expect("user sbxtest exists after useradd");
        let gid = user.gid.as_raw();
        Caller {
            name: TEST_USER.into(),
            uid: user.uid.as_raw(),
            gid,
            groups: vec![gid, group2.gid.as_raw()],
        }
    })
    .clone()
}

fn lookup_user() -> Option<nix::unistd::User> {
    nix::unistd::User::from_name(TEST_USER).ok().flatten()
}

/// A command run as `caller` (uid, gid, groups), with a small fixed environment and cwd.
pub fn caller_command(
    caller: &Caller,
    program: impl AsRef<OsStr>,
    cwd: &Path,
    run_tag: &str,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", STD_PATH)
        .env("HOME", cwd)
        .env("LANG", "C.UTF-8")
        .env("USER", &caller.name)
        .env("LOGNAME", &caller.name)
        .env(RUN_TAG_VAR, run_tag)
        .current_dir(cwd);
    if caller.uid != 0 {
        let (uid, gid, groups) = (caller.uid, caller.gid, caller.groups.clone());
        // std's uid()/gid() run before pre_exec and cannot set supplementary groups on stable, so the
        // whole switch happens here, in the order setgroups, setgid, setuid.
        // SAFETY: only async-signal-safe libc calls on memory allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Reads a pipe on a thread, line by line, into a channel.
struct PipeReader {
    rx: Receiver<Vec<u8>>,
    collected: Vec<u8>,
}

impl PipeReader {
    fn new(pipe: impl Read + Send + 'static) -> PipeReader {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        PipeReader {
            rx,
            collected: Vec::new(),
        }
    }

    /// Reads until a line containing `want`; None on EOF or timeout.
    fn line_containing(&mut self, want: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.rx.recv_timeout(left).ok()?;
            self.collected.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line).into_owned();
            if text.contains(want) {
                return Some(text);
            }
        }
    }

    /// Everything until EOF, waiting at most `limit` (something in the sandbox may hold the pipe).
    fn drain(&mut self, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.collected.extend_from_slice(&line),
                Err(RecvTimeoutError::Timeout) => {
                    self.collected
                        .extend_from_slice(b"\n[harness: pipe still open, stopped reading]\n");
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        std::mem::take(&mut self.collected)
    }

    fn so_far(&mut self) -> String {
        while let Ok(line) = self.rx.try_recv() {
            self.collected.extend_from_slice(&line);
        }
        String::from_utf8_lossy(&self.collected).into_owned()
    }
}

/// A running client; dropping it kills it.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<PipeReader>,
    stderr: PipeReader,
    timeout: Duration,
}

impl Running {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the client");
    }

    /// Waits (up to 10 s) for a stdout line containing `want`.
    pub fn wait_for_line(&mut self, want: &str) -> String {
        let out = self.stdout.as_mut().expect("stdout is piped");
        match out.line_containing(want, Duration::from_secs(10)) {
            Some(line) => line,
            None => {
                let so_far = out.so_far();
                panic!(
                    "no line containing {want:?} on stdout; stdout so far:\n{so_far}\nstderr:\n{}",
                    self.stderr.so_far()
                )
            }
        }
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin is piped")
            .write_all(data)
            .expect("write to client stdin");
    }

    /// Waits for the client (closing its stdin first) and returns its whole output.
    pub fn finish(mut self) -> Output {
        self.stdin = None;
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for client") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.stdout.as_mut().map(|s| s.so_far()).unwrap_or_default();
                panic!(
                    "client still running after {:?}; stdout:\n{out}\nstderr:\n{}",
                    self.timeout,
                    self.stderr.so_far()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .stdout
            .as_mut()
            .map(|s| s.drain(SETTLE))
            .unwrap_or_default();
        let stderr = self.stderr.drain(SETTLE);
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Waits for the client's exit status only.
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        self.timeout = limit;
        self.finish().status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub enum Input {
    Null,
    Bytes(Vec<u8>),
    Piped,
}

/// `sandbox exec` as some caller, built step by step.
pub struct Exec {
    caller: Caller,
    socket: PathBuf,
    cwd: PathBuf,
    run_tag: String,
    profile: Option<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Input,
    stdout_file: Option<File>,
    timeout: Duration,
}

impl Exec {
    /// `sandbox exec --socket socket` as `caller` in `cwd`, tagged with `run_tag`.
    pub(super) fn new(caller: &Caller, socket: &Path, cwd: &Path, run_tag: &str) -> Exec {
        Exec {
            caller: caller.clone(),
            socket: socket.to_owned(),
            cwd: cwd.to_owned(),
            run_tag: run_tag.to_owned(),
            profile: None,
            args: Vec::new(),
            env: Vec::new(),
            stdin: Input::Null,
            stdout_file: None,
            timeout: CLIENT_TIMEOUT,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn profile(mut self, p: &str) -> Exec {
        self.profile = Some(p.into());
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Exec {
        self.env.push((k.as_ref().into(), v.as_ref().into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Exec {
        self.cwd = dir.into();
        self
    }

    pub fn socket(mut self, path: impl Into<PathBuf>) -> Exec {
        self.socket = path.into();
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Exec {
        self.stdin = Input::Bytes(data.into());
        self
    }

    pub fn stdin_piped(mut self) -> Exec {
        self.stdin = Input::Piped;
        self
    }

    pub fn stdout_file(mut self, f: File) -> Exec {
        self.stdout_file = Some(f);
        self
    }

    /// How long [`Exec::run`] waits for the client before it kills it and fails.
    pub fn timeout(mut self, limit: Duration) -> Exec {
        self.timeout = limit;
        self
    }

    /// The client command line without stdio: `sandbox exec --socket S [--profile P] -- ARGS`.
    pub fn command(&self) -> Command {
        let mut cmd = caller_command(&self.caller, bin(), &self.cwd, &self.run_tag);
        cmd.arg("exec").arg("--socket").arg(&self.socket);
        if let Some(p) = &self.profile {
            cmd.arg("--profile").arg(p);
        }
        cmd.arg("--").args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn spawn(self) -> Running {
        let mut cmd = self.command();
        cmd.stdin(match self.stdin {
            Input::Null => Stdio::null(),
            Input::Bytes(_) | Input::Piped => Stdio::piped(),
        });
        let piped_stdout = self.stdout_file.is_none();
        cmd.stdout(match self.stdout_file {
            Some(f) => Stdio::from(f),
            None => Stdio::piped(),
        });
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sandbox exec");
        let stdout = piped_stdout.then(|| PipeReader::new(child.stdout.take().unwrap()));
        let stderr = PipeReader::new(child.stderr.take().unwrap());
        let mut stdin = child.stdin.take();
        if let Input::Bytes(data) = self.stdin {
            let mut pipe = stdin.take().unwrap();
            // A writer thread: the command may not read everything before it answers.
            thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        Running {
            child,
            stdin,
            stdout,
            stderr,
            timeout: self.timeout,
        }
    }

    pub fn run(self) -> Output {
        self.spawn().finish()
    }
}

/// Runs `cmd` with stdin from /dev/null and piped stdout/stderr, killing it after `limit`.
pub fn run_command(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    Running {
        stdout: Some(PipeReader::new(child.stdout.take().unwrap())),
        stderr: PipeReader::new(child.stderr.take().unwrap()),
        child,
        stdin: None,
        timeout: limit,
    }
    .finish()
}
