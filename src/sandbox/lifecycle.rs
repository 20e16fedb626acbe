//! Sandbox lifecycle: from an accepted exec request to a running command and back to nothing. Chooses the
//! profile, takes addresses from the pool, starts the keeper in new namespaces, wires its veth and nftables
//! set elements, tells it to go, relays the client's signals, and — when the command ends, the client goes
//! away or the daemon stops — removes every kernel object the sandbox had, continuing past errors.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{watch, Notify};

use crate::config::{Config, Current, Integration, Profile, SecretSource};
use crate::kernel::host_addresses;
use crate::kernel::netlink::{LinkSpec, LinkSpec6, Netlink};
use crate::kernel::nft::{self, SandboxElements};
use crate::protocol::{self, Bytes, ClientEvent, ExecRequest, Reply, SandboxInfo};
use crate::redact::profiles::Redactions;
use crate::sandbox::ca::SandboxCa;
use crate::sandbox::init::{self, InitSpec, EXIT_NO_SANDBOX};
use crate::sandbox::live::{Caller, Registry, Resolved, Sandbox, Stats};
use crate::sandbox::pool::{AddressPool, Slot};
use crate::sandbox::resolv_conf;

/// How long a command has, after SIGTERM (daemon stopping) or SIGHUP (client gone), before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// Ended sandboxes are reaped together after this pause: one nft run and one kernel namespace cleanup
/// for all of them, instead of each end competing with the next start for the same kernel locks.
const REAP_DELAY: Duration = Duration::from_millis(200);
/// How long the reaper waits for the kernel to remove a dead namespace's veth before deleting it itself.
const LINK_GONE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new keeper may take to make its namespaces (milliseconds, normally; more on a host under load).
const KEEPER_READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{0}")]
    Refused(String),
    #[error("no free addresses left in daemon.subnet ({0} sandboxes are running)")]
    PoolExhausted(usize),
    #[error("starting the sandbox: {0}")]
    Spawn(io::Error),
    #[error("wiring the sandbox network: {0}")]
    Network(String),
    #[error("making the sandbox's CA: {0}")]
    Ca(#[from] crate::sandbox::ca::CaError),
}

/// Facts about the sandbox network fixed when the daemon starts.
pub struct SandboxNetwork {
    pub ipv6: bool,
    /// Addresses the DNS relay answers on for sandboxes whose host resolver is unreachable from them.
    pub dns_addresses: Vec<IpAddr>,
}

/// Makes and ends sandboxes: the one part of the daemon that starts processes.
pub struct Sandboxes {
    current: Arc<Current>,
    registry: Arc<Registry>,
    /// What each sandbox's responses are masked with, shared between sandboxes given the same.
    redactions: Arc<Redactions>,
    id_salt: u32,
    next_id: AtomicU32,
    pool: Mutex<AddressPool>,
    pub netlink: Netlink,
    pub network: SandboxNetwork,
    nofile_soft: u64,
    stopping: watch::Receiver<bool>,
    tearing_down: AtomicUsize,
    torn_down: Notify,
    graveyard: Mutex<Vec<Wiring>>,
    reap_soon: Notify,
}

impl Sandboxes {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        current: Arc<Current>,
        registry: Arc<Registry>,
        redactions: Arc<Redactions>,
        pool: AddressPool,
        netlink: Netlink,
        network: SandboxNetwork,
        nofile_soft: u64,
        stopping: watch::Receiver<bool>,
    ) -> Sandboxes {
        let id_salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0);
        Sandboxes {
            current,
            registry,
            redactions,
            id_salt,
            next_id: AtomicU32::new(0),
            pool: Mutex::new(pool),
            netlink,
            network,
            nofile_soft,
            stopping,
            tearing_down: AtomicUsize::new(0),
            torn_down: Notify::new(),
            graveyard: Mutex::default(),
            reap_soon: Notify::new(),
        }
    }

    /// Ids: unique within this daemon, and unlikely to repeat across restarts (the salt).
    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:08x}",
            self.id_salt.rotate_left(16) ^ n.wrapping_mul(0x9e37_79b9)
        )
    }

    /// What `sandbox ls` shows `caller`: root sees every sandbox, others their own.
    pub fn list(&self, caller: &Caller) -> Vec<SandboxInfo> {
        let mut list: Vec<SandboxInfo> = self
            .registry
            .all()
            .iter()
            .filter(|sandbox| caller.uid == 0 || sandbox.caller.uid == caller.uid)
            .map(|sandbox| sandbox.info())
            .collect();
        list.sort_by_key(|info| std::cmp::Reverse(info.age_secs));
        list
    }

    /// The nftables elements the live sandboxes need (to restore them when someone removed the table).
    pub fn live_elements(&self) -> Vec<SandboxElements> {
        self.registry
            .all()
            .iter()
            .map(|sandbox| Wiring::new(sandbox.slot.clone(), self.network.ipv6).elements())
            .collect()
    }

    pub fn live_pids(&self) -> Vec<u32> {
        self.registry
            .all()
            .iter()
            .map(|sandbox| sandbox.pid)
            .collect()
    }

    /// Waits until every sandbox has ended and been torn down.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.torn_down.notified();
            let running = self.registry.len();
            if running == 0 && self.tearing_down.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Serves one `sandbox exec` from start to end, on the connection it came in on.
    pub async fn run_exec(
        self: Arc<Self>,
        mut stream: UnixStream,
        caller: Caller,
        request: ExecRequest,
        fds: Vec<OwnedFd>,
    ) {
        let started = Instant::now();
        let command = describe(&request.argv);
        let (sandbox, keeper, wiring) = match self
            .create(&caller, &request, fds, command.clone())
            .await
        {
            Ok(created) => created,
            Err(error) => {
                tracing::warn!(user = %caller.user, uid = caller.uid, %command, %error, "sandbox refused");
                let _ = protocol::send(
                    &mut stream,
                    &Reply::Error {
                        message: error.to_string(),
                    },
                )
                .await;
                return;
            }
        };
        tracing::info!(
            id = %sandbox.id, user = %caller.user, uid = caller.uid, profile = %sandbox.profile.name,
            pid = sandbox.pid, %command, setup_ms = started.elapsed().as_micros() as f64 / 1000.0,
            "sandbox started"
        );
        let _ = protocol::send(
            &mut stream,
            &Reply::Started {
                id: sandbox.id.clone(),
            },
        )
        .await;
        let code = self.supervise(&sandbox, keeper, &mut stream).await;
        let _ = protocol::send(&mut stream, &Reply::Exited { code }).await;
        drop(stream);
        tracing::info!(
            id = %sandbox.id, user = %caller.user, profile = %sandbox.profile.name, %command,
            exit = code, duration_ms = sandbox.started.elapsed().as_millis() as u64, "sandbox ended"
        );
        self.teardown(sandbox, wiring);
    }

    async fn create(
        &self,
        caller: &Caller,
        request: &ExecRequest,
        fds: Vec<OwnedFd>,
        command: String,
    ) -> Result<(Arc<Sandbox>, tokio::process::Child, Wiring), SetupError> {
        let (config, secrets) = self.current.get();
        let profile = config
            .select_profile(
                request.profile.as_deref(),
                caller.uid,
                &caller.user,
                &caller.group_names,
            )
            .map_err(|error| SetupError::Refused(error.to_string()))?
            .clone();
        if request.argv.is_empty() {
            return Err(SetupError::Refused("no command given".into()));
        }
        let stdio: [OwnedFd; 3] = fds.try_into().map_err(|_| {
            SetupError::Refused("the request must carry stdin, stdout and stderr".into())
        })?;
        let integrations: Vec<Integration> = config.integrations_of(&profile).cloned().collect();
        // Before anything is made: a sandbox whose secrets could not be masked must not start.
        let redaction = self
            .redactions
            .for_sandbox(&integrations, &secrets)
            .map_err(|error| {
                SetupError::Refused(format!(
                    "the secrets of profile {:?} cannot be masked in responses: {error}",
                    profile.name
                ))
            })?;
        let slot = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.allocate()
                .ok_or_else(|| SetupError::PoolExhausted(self.registry.len()))?
        };
        let id = self.new_id();
        let permitted: Vec<String> = integrations
            .iter()
            .flat_map(|integration| integration.hosts.iter().map(|host| host.to_string()))
            .collect();
        let ca = match SandboxCa::new(&id, &permitted) {
            Ok(ca) => ca,
            Err(error) => {
                self.pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .release(slot.index);
                return Err(error.into());
            }
        };
        let mut wiring = Wiring::new(slot.clone(), self.network.ipv6);
        match self
            .start(
                caller,
                request,
                stdio,
                (&config, &profile),
                &ca,
                &mut wiring,
            )
            .await
        {
            Ok((pid, mut keeper, mut control)) => {
                let sandbox = Arc::new(Sandbox {
                    id,
                    caller: caller.clone(),
                    profile,
                    integrations,
                    secrets,
                    redaction,
                    ca,
                    pid,
                    command,
                    started: Instant::now(),
                    slot,
                    stats: Stats::default(),
                    resolved: Resolved::default(),
                });
                // Known before its command runs: the command's first connection must find its sandbox.
                self.register(&sandbox);
                if control.write_all(b"g").await.is_err() {
                    // The keeper died before it could start the command; its status says why.
                    let status = keeper.wait().await;
                    self.teardown(sandbox, wiring);
                    let status = status.map_err(SetupError::Spawn)?;
                    return Err(SetupError::Spawn(io::Error::other(format!(
                        "the sandbox init failed ({status})"
                    ))));
                }
                // The keeper needs nothing more; an open descriptor per live sandbox would only make every
                // later spawn slower (each spawn copies them, each exec closes them).
                drop(control);
                Ok((sandbox, keeper, wiring))
            }
            Err(error) => {
                self.tearing_down.fetch_add(1, Ordering::SeqCst);
                self.bury(wiring);
                Err(error)
            }
        }
    }

    async fn start(
        &self,
        caller: &Caller,
        request: &ExecRequest,
        stdio: [OwnedFd; 3],
        (config, profile): (&Config, &Profile),
        ca: &SandboxCa,
        wiring: &mut Wiring,
    ) -> Result<(u32, tokio::process::Child, UnixStream), SetupError> {
        let (mut control, keeper_end) = UnixStream::pair().map_err(SetupError::Spawn)?;
        let keeper_end = keeper_end.into_std().map_err(SetupError::Spawn)?;
        keeper_end
            .set_nonblocking(false)
            .map_err(SetupError::Spawn)?;
        let [stdin, stdout, stderr] = stdio;
        let mut keeper =
            init::spawn_keeper(keeper_end.into(), stdout, stderr).map_err(SetupError::Spawn)?;
        let pid = keeper.id().ok_or_else(|| {
            SetupError::Spawn(io::Error::other("the sandbox init exited at once"))
        })?;
        wiring.keeper = Some(pid);
        init::send_stdin(&control, stdin).map_err(SetupError::Spawn)?;

        let spec = self.init_spec(caller, request, config, profile, ca);
        let frame = protocol::encode(&spec).map_err(|e| SetupError::Spawn(io::Error::other(e)))?;
        let (link_spec, elements) = (wiring.link_spec(), wiring.elements());
        let wired = async {
            // One byte from the keeper: its namespaces exist, and its netns is no longer the daemon's.
            let mut made = [0u8; 1];
            tokio::time::timeout(KEEPER_READY_TIMEOUT, control.read_exact(&mut made))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            let (written, link) = tokio::join!(
                control.write_all(&frame),
                self.netlink.create_sandbox_link(&link_spec, netns.as_fd()),
            );
            io::Result::Ok((netns, written, link))
        };
        let (wired, elements) = tokio::join!(wired, nft::add_sandbox(&elements));
        wiring.elements = elements.is_ok();
        let written = match wired {
            Ok((netns, written, link)) => {
                // Held until the sandbox is reaped, so the namespace dies with a batch of others.
                wiring.netns = Some(netns.into());
                wiring.link = true;
                link.map_err(|e| SetupError::Network(e.to_string()))?;
                written
            }
            Err(error) => Err(error),
        };
        elements.map_err(|e| SetupError::Network(e.to_string()))?;
        if written.is_err() {
            // The keeper died before it could start the command, and its status says why; or it is stuck,
            // and is ended here.
            let _ = keeper.start_kill();
            let status = keeper.wait().await.map_err(SetupError::Spawn)?;
            return Err(SetupError::Spawn(io::Error::other(format!(
                "the sandbox init failed ({status})"
            ))));
        }
        Ok((pid, keeper, control))
    }

    /// What the keeper is told to make: the command, its environment with the trust variables, who it runs
    /// as, the paths it must not see and the files it sees replaced (CA bundles, resolv.conf).
    fn init_spec(
        &self,
        caller: &Caller,
        request: &ExecRequest,
        config: &Config,
        profile: &Profile,
        ca: &SandboxCa,
    ) -> InitSpec {
        let trust = self.trust_plan(ca, request);
        let (add_ca, caller_bundles): (Vec<_>, Vec<_>) =
            trust.files.into_iter().partition(|(path, _)| {
                crate::sandbox::trust::SYSTEM_BUNDLES
                    .iter()
                    .any(|bundle| path == std::path::Path::new(bundle))
            });
        let caller_files: Vec<(PathBuf, Bytes)> = caller_bundles
            .into_iter()
            .map(|(path, content)| (path, Bytes(content)))
            .collect();
        let mut env: Vec<(Bytes, Bytes)> = request
            .env
            .iter()
            .filter(|(key, _)| !trust.env.iter().any(|(name, _)| name.as_bytes() == key.0))
            .cloned()
            .collect();
        env.extend(
            trust
                .env
                .into_iter()
                .map(|(key, value)| (Bytes(key.into_bytes()), Bytes(value.into_bytes()))),
        );
        InitSpec {
            argv: request.argv.clone(),
            env,
            cwd: request.cwd.clone(),
            uid: caller.uid,
            gid: caller.gid,
            groups: caller.groups.clone(),
            tty: request.tty,
            hide: hidden_paths(config),
            replace: self.replaced_files(),
            caller_files,
            add_ca: add_ca.into_iter().map(|(path, _)| path).collect(),
            ca_pem: ca.cert_pem().to_string(),
            java_keystores: trust.java_keystores,
            nofile_soft: self.nofile_soft,
            unix_sockets: profile
                .unix_sockets
                .iter()
                .map(|pattern| pattern.for_uid(caller.uid))
                .collect(),
        }
    }

    /// Waits for the command while passing on the client's signals. Returns the exit status for the client.
    async fn supervise(
        &self,
        sandbox: &Sandbox,
        mut keeper: tokio::process::Child,
        stream: &mut UnixStream,
    ) -> i32 {
        let pid = Pid::from_raw(sandbox.pid as i32);
        let mut stopping = self.stopping.clone();
        let mut client_open = true;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 512];
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let kill_at = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = keeper.wait() => {
                    return match status {
                        Ok(status) => exit_code(status),
                        Err(_) => EXIT_NO_SANDBOX,
                    };
                }
                read = stream.read(&mut chunk), if client_open => match read {
                    Ok(0) | Err(_) => {
                        // The caller is gone: hang up on the command as a terminal would.
                        client_open = false;
                        let _ = kill(pid, Signal::SIGHUP);
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
                    }
                    Ok(n) => {
                        buffer.extend_from_slice(&chunk[..n]);
                        while let Ok(Some(body)) = protocol::take_frame(&mut buffer) {
                            if let Ok(ClientEvent::Signal { signal }) = serde_json::from_slice(&body) {
                                if let Ok(signal) = Signal::try_from(signal) {
                                    let _ = kill(pid, signal);
                                }
                            }
                        }
                        if buffer.len() > protocol::MAX_FRAME {
                            buffer.clear();
                        }
                    }
                },
                _ = stopping.changed(), if deadline.is_none() || client_open => {
                    if *stopping.borrow() {
                        let _ = kill(pid, Signal::SIGTERM);
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
                    }
                }
                () = kill_at => {
                    tracing::warn!(id = %sandbox.id, "command did not end within {GRACE:?}; killing the sandbox");
                    let _ = keeper.start_kill();
                    deadline = None;
                }
            }
        }
    }

    fn register(&self, sandbox: &Arc<Sandbox>) {
        let mut addresses = vec![IpAddr::V4(sandbox.slot.sandbox_v4)];
        addresses.extend(
            sandbox
                .slot
                .sandbox_v6
                .filter(|_| self.network.ipv6)
                .map(IpAddr::V6),
        );
        self.registry.insert(sandbox, addresses);
    }

    fn teardown(&self, sandbox: Arc<Sandbox>, wiring: Wiring) {
        self.tearing_down.fetch_add(1, Ordering::SeqCst);
        self.registry.remove(&sandbox.id);
        self.bury(wiring);
    }

    /// Hands an ended (or failed) sandbox's kernel objects to the reaper.
    fn bury(&self, mut wiring: Wiring) {
        if let Some(pid) = wiring.keeper.take() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        self.graveyard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(wiring);
        self.reap_soon.notify_one();
    }

    /// Removes the kernel objects of ended sandboxes, in batches, for the daemon's whole life.
    pub async fn reap_forever(self: Arc<Self>) {
        loop {
            self.reap_soon.notified().await;
            if !*self.stopping.borrow() {
                tokio::time::sleep(REAP_DELAY).await;
            }
            let batch =
                std::mem::take(&mut *self.graveyard.lock().unwrap_or_else(|e| e.into_inner()));
            self.reap(batch).await;
        }
    }

    /// Removes what exists of each sandbox in `batch`, logging failures and carrying on: the set
    /// elements in one nft run; the namespaces by letting go of them all at once (the kernel removes
    /// their veths with them); a veth still there after a while is deleted by hand.
    async fn reap(&self, batch: Vec<Wiring>) {
        if batch.is_empty() {
            return;
        }
        let elements: Vec<SandboxElements> = batch
            .iter()
            .filter(|w| w.elements)
            .map(Wiring::elements)
            .collect();
        if let Err(error) = nft::remove_sandboxes(&elements).await {
            tracing::error!(%error, "removing nftables elements");
        }
        let mut links: Vec<String> = Vec::new();
        let mut slots = Vec::new();
        for mut wiring in batch {
            wiring.netns = None;
            if wiring.link {
                links.push(wiring.slot.host_ifname());
            }
            slots.push(wiring.slot);
        }
        let deadline = Instant::now() + LINK_GONE_TIMEOUT;
        while !links.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut present = Vec::with_capacity(links.len());
            for name in links {
                match self.netlink.link_exists(&name).await {
                    Ok(false) => {}
                    Ok(true) => present.push(name),
                    Err(error) => {
                        // A transient failure only delays the check.
                        tracing::debug!(%error, "looking up a veth");
                        present.push(name);
                    }
                }
            }
            links = present;
        }
        for name in links {
            if let Err(error) = self.netlink.delete_link(&name).await {
                tracing::error!(%error, ifname = %name, "removing veth");
            }
        }
        for slot in &slots {
            self.release(slot);
        }
    }

    fn release(&self, slot: &Slot) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(slot.index);
        self.tearing_down.fetch_sub(1, Ordering::SeqCst);
        self.torn_down.notify_waiters();
    }

    /// When the host's resolvers cannot be reached from a sandbox (loopback, or one of the host's own
    /// addresses, which sandboxes may not reach), the sandbox gets a resolv.conf that names the DNS relay.
    /// Where the sandbox's CA becomes trusted: the distribution bundles, and the bundles the caller's
    /// environment names (read by the client, with the caller's rights).
    fn trust_plan(
        &self,
        ca: &SandboxCa,
        request: &ExecRequest,
    ) -> crate::sandbox::trust::TrustPlan {
        let env: Vec<(String, String)> = request
            .env
            .iter()
            .map(|(key, value)| {
                (
                    String::from_utf8_lossy(&key.0).into_owned(),
                    String::from_utf8_lossy(&value.0).into_owned(),
                )
            })
            .collect();
        // The client sends each file under its path as the variable spells it; the plan asks by the
        // normalized path (`/a//./b` is `/a/b`).
        let caller_file = |path: &std::path::Path| {
            request
                .ca_files
                .iter()
                .find(|(sent, _)| {
                    crate::sandbox::trust::caller_path(&String::from_utf8_lossy(&sent.0)).as_deref()
                        == Some(path)
                })
                .map(|(_, content)| content.0.clone())
        };
        // Only which distribution bundles exist matters here: the keeper appends the CA to their content.
        crate::sandbox::trust::plan(
            ca.cert_pem(),
            &|path| path.exists().then(Vec::new),
            &env,
            &caller_file,
        )
    }

    fn replaced_files(&self) -> Vec<(PathBuf, Bytes)> {
        let path = PathBuf::from("/etc/resolv.conf");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Vec::new();
        };
        let local = host_addresses::current();
        match resolv_conf::for_sandbox(&text, &self.network.dns_addresses, |ip| {
            ip.is_loopback() || local.contains(&ip)
        }) {
            Some(replacement) => vec![(path, Bytes(replacement.into_bytes()))],
            None => Vec::new(),
        }
    }
}

/// The kernel objects of one sandbox, and which of them exist, so a failed start and a normal end remove
/// exactly what was made.
struct Wiring {
    slot: Slot,
    ipv6: bool,
    keeper: Option<u32>,
    netns: Option<OwnedFd>,
    link: bool,
    elements: bool,
}

impl Wiring {
    fn new(slot: Slot, ipv6: bool) -> Self {
        Wiring {
            slot,
            ipv6,
            keeper: None,
            netns: None,
            link: false,
            elements: false,
        }
    }

    fn link_spec(&self) -> LinkSpec {
        LinkSpec {
            host_ifname: self.slot.host_ifname(),
            host_v4: self.slot.host_v4,
            sandbox_v4: self.slot.sandbox_v4,
            prefix_v4: self.slot.prefix_v4,
            v6: match (self.ipv6, self.slot.host_v6, self.slot.sandbox_v6) {
                (true, Some(host), Some(sandbox)) => Some(LinkSpec6 {
                    host,
                    sandbox,
                    prefix: self.slot.prefix_v6,
                }),
                _ => None,
            },
        }
    }

    fn elements(&self) -> SandboxElements {
        SandboxElements {
            ifname: self.slot.host_ifname(),
            v4: self.slot.sandbox_v4,
            v6: self.slot.sandbox_v6.filter(|_| self.ipv6),
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EXIT_NO_SANDBOX,
    }
}

fn describe(argv: &[Bytes]) -> String {
    let mut text = argv
        .iter()
        .map(|arg| String::from_utf8_lossy(&arg.0).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Everything of the daemon's that a sandbox must not reach through the filesystem.
fn hidden_paths(config: &Config) -> Vec<PathBuf> {
    let mut paths = vec![
        config.daemon.socket.clone(),
        config.path.clone(),
        config.daemon.audit_log.clone(),
        // Rotated refresh tokens (0700, files 0600: hidden even from a root caller without capabilities).
        config.daemon.state_dir.clone(),
    ];
    for secret in config.secrets.values() {
        if let SecretSource::File(path) = &secret.source {
            paths.push(path.clone());
        }
    }
    // Where systemd keeps what the unit was given: the credentials (and the files they were loaded
    // from, typically next to the config), and the unit's configuration and log directories. A caller
    // with uid 0 but no capabilities could otherwise still read root's 0600 files there.
    paths.push(PathBuf::from("/run/credentials"));
    for var in [
        "CREDENTIALS_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "LOGS_DIRECTORY",
        "STATE_DIRECTORY",
    ] {
        if let Some(dirs) = std::env::var_os(var) {
            paths.extend(std::env::split_paths(&dirs));
        }
    }
    if let Some(dir) = config.path.parent().filter(|dir| dir.ends_with("sandbox")) {
        paths.push(dir.to_path_buf());
    }
    if let Some(dir) = config
        .daemon
        .audit_log
        .parent()
        .filter(|dir| dir.ends_with("sandbox"))
    {
        paths.push(dir.to_path_buf());
    }
    paths
}
