//! Upstreams that are programs of their own, run as root in U and stopped when dropped: nginx as operators
//! run it (rotating its connections: GOAWAY after `keepalive_requests`, on reload, on restart), and the
//! Python servers of `tests/servers` (HTTP/2 GOAWAY and REFUSED_STREAM at chosen moments; HTTP/1.1
//! connections closed as the next request arrives). They serve names under [`CHURN_DOMAIN`], which the
//! integration `churn` (see [`Churn::configure`]) intercepts, with certificates from a test CA of their own.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::certs::{ca_dir, TestCa};
use super::clients::RUN_TAG_VAR;
use super::daemon::DaemonBuilder;
use super::net::{in_netns, TestNet};
use super::tools::{tool, unique_suffix, wait_for, TempDir, STD_PATH};

/// The names these upstreams serve end in this.
pub const CHURN_DOMAIN: &str = "churn.test";
/// The daemon's variable holding the `churn` integration's secret.
const CHURN_SECRET_VAR: &str = "SBX_CHURN_SECRET";

/// The test CA of these upstreams, and the integration that intercepts them.
pub struct Churn {
    /// 0755: the CA (0644), certificates and keys, each server's files.
    pub dir: TempDir,
    ca: TestCa,
    pub ca_pem: PathBuf,
    pub secret: String,
}

impl Default for Churn {
    fn default() -> Self {
        Self::new()
    }
}

impl Churn {
    pub fn new() -> Churn {
        let (dir, ca, ca_pem) = ca_dir("churn", "sbx-e2e churn CA");
        Churn {
            dir,
            ca,
            ca_pem,
            secret: format!("sbx-e2e-churn-{}", unique_suffix()),
        }
    }

    /// The daemon config: `upstream_ca`, and integration `churn` (Bearer secret) for every name under
    /// [`CHURN_DOMAIN`], in profile `default`.
    pub fn configure<'n>(&self, builder: DaemonBuilder<'n>) -> DaemonBuilder<'n> {
        builder
            .env(CHURN_SECRET_VAR, &self.secret)
            .upstream_ca(&self.ca_pem)
            .profile_toml("default", r#"integrations = ["churn"]"#)
            .extra_toml(&format!(
                r#"
[secrets]
churn = {{ env = "{CHURN_SECRET_VAR}" }}

[[integration]]
name = "churn"
hosts = ["*.{CHURN_DOMAIN}"]
headers = {{ Authorization = "Bearer ${{secret:churn}}" }}
"#
            ))
    }
}

/// Gives U the addresses `.N` and `::N` and the resolver `names` for them.
pub(super) fn add_host(net: &TestNet, n: u8, names: &[&str]) -> (Ipv4Addr, Ipv6Addr) {
    let (v4, v6) = net.add_u_address(n);
    for name in names {
        net.add_dns_name(name, v4, v6);
    }
    (v4, v6)
}

/// A server process in U, tagged like the test's clients (so the test's guard finds it too); stopped
/// (SIGTERM, then SIGKILL) when dropped.
pub(super) struct ServerProcess {
    child: Option<Child>,
}

impl ServerProcess {
    /// `python3 tests/servers/<script> ARGS...` in U, once it printed "listening".
    pub(super) fn python(net: &TestNet, script: &str, args: &[String]) -> ServerProcess {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/servers")
            .join(script);
        let script = script.display().to_string();
        let args: Vec<&str> = std::iter::once(script.as_str())
            .chain(args.iter().map(String::as_str))
            .collect();
        let mut child = ServerProcess::spawn(net, &tool("python3"), &args, Stdio::piped());
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening", "{script} did not start");
        ServerProcess { child: Some(child) }
    }

    fn spawn(net: &TestNet, program: &Path, args: &[&str], stdout: Stdio) -> Child {
        Command::new(tool("ip"))
            .args(["netns", "exec", &net.u])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", STD_PATH)
            .env(RUN_TAG_VAR, &net.suffix)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()))
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    fn stop(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
            let stopped = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
            if stopped.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop(Signal::SIGTERM);
    }
}

/// Waits until `addr` in U accepts TCP connections.
pub(super) fn wait_listening(net: &TestNet, addr: SocketAddr) {
    let listening = wait_for(Duration::from_secs(10), || {
        in_netns(&net.u, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
    });
    assert!(listening.is_some(), "nothing listens on {addr} in U");
}

/// nginx with one worker, serving `/small` and `/h2load` (100 bytes each) under two names: [`Nginx::name`] offers h2 and
/// http/1.1, [`Nginx::h1_name`] http/1.1 only.
pub struct Nginx<'n> {
    net: &'n TestNet,
    conf: PathBuf,
    pub name: String,
    pub h1_name: String,
    v4: Ipv4Addr,
    process: ServerProcess,
}

impl<'n> Nginx<'n> {
    /// Starts nginx on U's `.N`/`::N` (h2) and `.N+1`/`::N+1` (http/1.1 only); `http` is added to its
    /// `http` block (e.g. `keepalive_requests 100;`; nothing: nginx's defaults).
    pub fn start(net: &'n TestNet, churn: &Churn, n: u8, http: &str) -> Nginx<'n> {
        let name = format!("nginx{n}.{CHURN_DOMAIN}");
        let h1_name = format!("nginx{n}-h1.{CHURN_DOMAIN}");
        let (v4, v6) = add_host(net, n, &[&name]);
        let (h1_v4, h1_v6) = add_host(net, n + 1, &[&h1_name]);
        let dir = churn.dir.join(format!("nginx{n}"));
        let www = dir.join("www");
        fs::create_dir_all(&www).unwrap();
        for file in ["small", "h2load"] {
            fs::write(www.join(file), "x".repeat(100)).unwrap();
        }
        let (cert, key) = churn
            .ca
            .write_leaf(&dir, "server", &[name.as_str(), h1_name.as_str()]);
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
env {RUN_TAG_VAR};
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {www};
    {http}
    server {{
        listen {v4}:443 ssl http2;
        listen [{v6}]:443 ssl http2;
    }}
    server {{
        listen {h1_v4}:443 ssl;
        listen [{h1_v6}]:443 ssl;
    }}
}}
"#,
                cert = cert.display(),
                key = key.display(),
                www = www.display(),
            ),
        )
        .unwrap();
        let mut nginx = Nginx {
            net,
            conf,
            name,
            h1_name,
            v4,
            process: ServerProcess { child: None },
        };
        nginx.start_again();
        wait_listening(net, SocketAddr::from((h1_v4, 443)));
        nginx
    }

    /// Reloads the configuration (SIGHUP): new workers; the old ones send GOAWAY on HTTP/2 connections,
    /// close idle HTTP/1.1 ones, finish what is in flight and exit.
    pub fn reload(&self) {
        kill(self.process.pid(), Signal::SIGHUP).expect("signal nginx");
    }

    /// Stops nginx with `signal` (SIGTERM: at once; SIGQUIT: once its requests are done) and waits for it
    /// to exit: its address refuses connections until [`Nginx::start_again`].
    pub fn stop(&mut self, signal: Signal) {
        self.process.stop(signal);
    }

    pub fn start_again(&mut self) {
        let nginx = tool("nginx");
        let conf = self.conf.display().to_string();
        self.process.child = Some(ServerProcess::spawn(
            self.net,
            &nginx,
            &["-c", &conf, "-g", "daemon off;"],
            Stdio::null(),
        ));
        wait_listening(self.net, SocketAddr::from((self.v4, 443)));
    }
}

/// One of the Python servers of `tests/servers`, serving `name` on U's `.N` and `::N`; what it received
/// is in [`PythonServer::log`].
pub struct PythonServer {
    pub name: String,
    log: PathBuf,
    _process: ServerProcess,
}

impl PythonServer {
    /// `tests/servers/h2_churn.py`: `/hold` requests wait until `hold` are held, then the `last` lowest
    /// streams are answered and GOAWAY says the others were not processed; `/refuse-once` is refused
    /// (REFUSED_STREAM) the first time.
    pub fn h2_churn(net: &TestNet, churn: &Churn, n: u8, hold: usize, last: usize) -> Self {
        Self::start(
            net,
            churn,
            n,
            "h2_churn.py",
            &[&hold.to_string(), &last.to_string()],
        )
    }

    /// `tests/servers/h1_churn.py`: each kept-alive connection is closed, unanswered, as its second
    /// request arrives.
    pub fn h1_churn(net: &TestNet, churn: &Churn, n: u8) -> Self {
        Self::start(net, churn, n, "h1_churn.py", &[])
    }

    fn start(net: &TestNet, churn: &Churn, n: u8, script: &str, extra: &[&str]) -> Self {
        let name = format!("py{n}.{CHURN_DOMAIN}");
        let (v4, v6) = add_host(net, n, &[&name]);
        let (cert, key) = churn
            .ca
            .write_leaf(churn.dir.path(), &format!("py{n}"), &[&name]);
        let log = churn.dir.join(format!("py{n}.jsonl"));
        let mut args = vec![
            format!("{v4},{v6}"),
            cert.display().to_string(),
            key.display().to_string(),
            log.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        PythonServer {
            name,
            log,
            _process: ServerProcess::python(net, script, &args),
        }
    }

    /// Every request the server received, in order.
    pub fn log(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}
