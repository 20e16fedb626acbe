//! The daemon under test, started with `ip netns exec H` on a config that the builder writes: a base
//! config (a pool, the test resolver, profiles `default`, `locked` and `rootonly`) plus what the test
//! adds. [`Daemon::finish`] ends every test with the leak checks; dropping a `Daemon` kills it and, on
//! panic, prints its logs and process tree.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::clients::{caller_command, test_user, Caller, Exec, TEST_USER};
use super::leaks::process_tree;
use super::net::TestNet;
use super::tools::{bin, read_json_lines, tool, wait_for, TempDir, SETTLE};

/// A comment in the daemon's config, to detect that a sandbox could read it.
pub const CONFIG_MARKER: &str = "sbx-e2e-config-marker";
pub const POOL4: &str = "10.233.0.0/16";
pub const POOL6: &str = "fd00:5ba:d::/48";
/// How long the daemon may take to answer `ls` after it started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where [`DaemonBuilder::stray_fd`] puts its file in the daemon.
pub const STRAY_FD: i32 = 20;

impl TestNet {
    /// A daemon for this net, to configure and `start()`.
    pub fn daemon(&self) -> DaemonBuilder<'_> {
        DaemonBuilder {
            net: self,
            extra_toml: String::new(),
            daemon_toml: String::new(),
            profile_toml: Vec::new(),
            resolv_conf: format!("nameserver {}\n", self.u4),
            env: Vec::new(),
            stray_file: None,
        }
    }
}

pub struct DaemonBuilder<'n> {
    net: &'n TestNet,
    extra_toml: String,
    daemon_toml: String,
    profile_toml: Vec<(String, String)>,
    resolv_conf: String,
    env: Vec<(String, String)>,
    stray_file: Option<PathBuf>,
}

impl<'n> DaemonBuilder<'n> {
    /// Starts the daemon with `path` open at descriptor [`STRAY_FD`], not close-on-exec: what a daemon
    /// started from a careless shell or supervisor inherits.
    pub fn stray_fd(mut self, path: &Path) -> Self {
        self.stray_file = Some(path.to_owned());
        self
    }

    /// TOML appended after the base config (profiles `default`, `locked` (egress deny), `rootonly`).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    /// TOML lines added to the base config's `[daemon]` table (e.g. `upstream_ca = [...]`).
    pub fn daemon_toml(mut self, toml: &str) -> Self {
        self.daemon_toml.push_str(toml);
        self.daemon_toml.push('\n');
        self
    }

    /// `upstream_ca` in `[daemon]`: the test CA the daemon verifies upstreams with.
    pub fn upstream_ca(self, ca_pem: &Path) -> Self {
        self.daemon_toml(&format!(
            "upstream_ca = [{:?}]",
            ca_pem.display().to_string()
        ))
    }

    /// TOML lines added to the base profile `profile` (`default`, `locked` or `rootonly`), e.g.
    /// `integrations = ["api"]`.
    pub fn profile_toml(mut self, profile: &str, toml: &str) -> Self {
        self.profile_toml.push((profile.into(), toml.into()));
        self
    }

    /// The daemon's /etc/resolv.conf (default: `nameserver <U v4>`).
    pub fn resolv_conf(mut self, text: &str) -> Self {
        self.resolv_conf = text.into();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn start(self) -> Daemon<'n> {
        let net = self.net;
        let etc = Path::new("/etc/netns").join(&net.h);
        fs::create_dir_all(&etc).unwrap();
        // `ip netns exec` bind-mounts this over /etc/resolv.conf for the daemon.
        fs::write(etc.join("resolv.conf"), &self.resolv_conf).unwrap();
        let dir = TempDir::new("d", 0o755);
        let work = TempDir::new("w", 0o755);
        let user = test_user();
        nix::unistd::chown(work.path(), Some(user.uid.into()), Some(user.gid.into())).unwrap();
        let mut d = Daemon {
            net,
            config: dir.join("sandbox.toml"),
            socket: dir.join("sandbox.sock"),
            audit_log: dir.join("audit.jsonl"),
            dir,
            work,
            env: self.env,
            daemon_toml: self.daemon_toml,
            profile_toml: self.profile_toml,
            stray_file: self.stray_file,
            child: None,
            starts: 0,
        };
        d.write_config(&d.config_text(&self.extra_toml));
        d.spawn();
        d
    }
}

pub struct Daemon<'n> {
    pub net: &'n TestNet,
    /// Config, socket, audit log and daemon logs (0755: the test user must reach the socket).
    pub dir: TempDir,
    /// The callers' working directory, owned by the test user, apart from `dir` (which the daemon may
    /// hide from sandboxes).
    pub work: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub audit_log: PathBuf,
    env: Vec<(String, String)>,
    daemon_toml: String,
    profile_toml: Vec<(String, String)>,
    stray_file: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
}

impl Daemon<'_> {
    /// The config file text: the base config (with the builder's `daemon_toml` and `profile_toml`)
    /// plus `extra`.
    pub fn config_text(&self, extra: &str) -> String {
        let profile = |name: &str| -> String {
            self.profile_toml
                .iter()
                .filter(|(p, _)| p == name)
                .map(|(_, t)| format!("{t}\n"))
                .collect()
        };
        format!(
            r#"# {CONFIG_MARKER}
[daemon]
socket = "{socket}"
socket_group = "{TEST_USER}"
subnet = "{POOL4}"
subnet6 = "{POOL6}"
audit_log = "{audit}"
dns = ["{dns}"]
{daemon_toml}
[[profile]]
name = "default"
users = ["*", "root"]
{default}
[[profile]]
name = "locked"
users = ["*", "root"]
egress = "deny"
{locked}
[[profile]]
name = "rootonly"
users = ["root"]
{rootonly}
{extra}
"#,
            socket = self.socket.display(),
            audit = self.audit_log.display(),
            dns = self.net.u4,
            daemon_toml = self.daemon_toml,
            default = profile("default"),
            locked = profile("locked"),
            rootonly = profile("rootonly"),
        )
    }

    pub fn write_config(&self, text: &str) {
        fs::write(&self.config, text).unwrap();
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("daemon-{n}.log"))
    }

    /// Everything every daemon run of this test wrote to stdout/stderr.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                format!(
                    "--- daemon run {n} ---\n{}",
                    fs::read_to_string(self.log_path(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Starts `ip netns exec H sandbox daemon --config C` and waits until `ls` answers.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).unwrap();
        let mut command = Command::new(tool("ip"));
        command
            .args(["netns", "exec", &self.net.h])
            .arg(bin())
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let stray = self
            .stray_file
            .as_ref()
            .map(|path| File::open(path).unwrap());
        if let Some(stray) = &stray {
            let raw = stray.as_raw_fd();
            // SAFETY: dup2 only, between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if nix::libc::dup2(raw, STRAY_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("spawn daemon");
        drop(stray);
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("daemon exited during start-up: {status}\n{}", self.logs());
            }
            if self.ls().status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "daemon not ready after {READY_TIMEOUT:?} (`ls` fails)\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon again (same config, socket and netns) after it stopped.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon running").id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the daemon");
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits for the daemon to exit; panics (with its logs) after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let status = wait_for(limit, || child.try_wait().unwrap());
        match status {
            Some(s) => {
                self.child = None;
                s
            }
            None => panic!("daemon still running after {limit:?}\n{}", self.logs()),
        }
    }

    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let status = self.wait_exit(Duration::from_secs(10));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// `sandbox ls --socket S` as root.
    pub fn ls(&self) -> Output {
        Command::new(bin())
            .arg("ls")
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .expect("run sandbox ls")
    }

    /// `sandbox exec` as `caller` against this daemon; add args and run or spawn.
    pub fn exec(&self, caller: &Caller) -> Exec {
        Exec::new(caller, &self.socket, self.work.path(), &self.net.suffix)
    }

    /// A command as `caller` in this test's work dir (e.g. a python3 driving the client on a pty).
    pub fn caller_command(&self, caller: &Caller, program: impl AsRef<OsStr>) -> Command {
        caller_command(caller, program, self.work.path(), &self.net.suffix)
    }

    /// The audit log's JSON lines (panics on a line that is not JSON).
    pub fn audit_lines(&self) -> Vec<Value> {
        read_json_lines(&self.audit_log)
    }

    /// Namespaces the daemon holds open (by descriptor) while no sandbox runs: those of an ended sandbox
    /// would outlive it, with whatever is inside them.
    pub fn held_namespaces(&self) -> Vec<String> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| {
                entries
                    .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
                    .map(|target| target.display().to_string())
                    .filter(|target| {
                        ["net:[", "mnt:[", "pid:[", "ipc:[", "uts:["]
                            .iter()
                            .any(|kind| target.starts_with(kind))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The end of every test: no sandbox object left, no sandbox namespace held; SIGTERM; exit status 0;
    /// nothing of the daemon left.
    pub fn finish(mut self) {
        self.net.assert_no_sandbox_objects();
        let mut held = Vec::new();
        let released = wait_for(SETTLE, || {
            held = self.held_namespaces();
            held.is_empty().then_some(())
        });
        assert!(
            released.is_some(),
            "the daemon still holds namespaces of ended sandboxes: {held:?}"
        );
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "daemon exit on SIGTERM: {status}");
        self.net.assert_no_daemon_objects();
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Some(c) = &self.child {
                eprintln!(
                    "--- daemon process tree ---\n{}",
                    process_tree(c.id() as i32)
                );
            }
            eprintln!("{}", self.logs());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
