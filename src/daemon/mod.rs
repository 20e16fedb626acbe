//! The daemon's start, reload and stop, in that order: validate the config before touching anything; clear
//! what a killed daemon left; bind the transparent listeners, then point nftables and policy routing at
//! them; open the control socket last, so a client never reaches a half-built daemon. Minted secrets'
//! first tokens are fetched in the background (`minted`): the daemon is ready without them. SIGHUP swaps
//! the config for new sandboxes and gives the minted secrets their new definitions; SIGTERM ends the
//! sandboxes (SIGTERM, then SIGKILL after a grace period) and removes every kernel object the daemon made.

pub mod minted;
pub mod systemd;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use tokio::signal::unix::{signal, SignalKind};

use crate::audit::Audit;
use crate::config::{Config, Current, Secrets};
use crate::control::socket as control;
use crate::kernel::host_addresses;
use crate::kernel::marks::{LINK_PREFIX, MARK, ROUTE_TABLE, SOCKET_MARK};
use crate::kernel::netlink::Netlink;
use crate::kernel::nft::{self, RulesetParams};
use crate::proxy::context::ProxyContext;
use crate::proxy::upstream::{self, Upstreams};
use crate::proxy::workers::Workers;
use crate::proxy::{dns, listener, tcp_relay, tls_router};
use crate::redact::profiles::Redactions;
use crate::sandbox::lifecycle::{SandboxNetwork, Sandboxes, GRACE};
use crate::sandbox::live::Registry;
use crate::sandbox::pool::AddressPool;
use crate::secrets::Definition;

use self::minted::Minted;

/// A validated config with its secrets read, its minted secrets ready to mint from, and the TLS roots for
/// upstreams (and token endpoints).
pub struct Loaded {
    pub config: Config,
    pub secrets: Secrets,
    pub minted: Vec<Definition>,
    pub upstream_tls: Arc<rustls::ClientConfig>,
}

/// Loads and validates the config, its secrets (and the key material of minted secrets) and its upstream
/// CAs; the error text is what the operator sees.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let config = Config::load(path).map_err(|error| error.to_string())?;
    let secrets = config.load_secrets().map_err(|error| error.to_string())?;
    let minted = config
        .minted_definitions(&secrets)
        .map_err(|error| error.to_string())?;
    let upstream_tls = upstream::client_config(&config.daemon.upstream_ca)
        .map_err(|error| format!("{}: daemon.upstream_ca: {error}", config.path.display()))?;
    Ok(Loaded {
        config,
        secrets,
        minted,
        upstream_tls,
    })
}

pub fn run(loaded: Loaded) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the daemon must run as root (it creates network namespaces, veths and nftables rules)"
        );
    }
    let nofile_soft = raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sandbox-daemon")
        // Blocking threads (user lookups of a burst of execs) go soon after the burst: every one alive
        // makes each later keeper's fork copy more.
        .thread_keep_alive(Duration::from_secs(1))
        .build()
        .context("starting the async runtime")?;
    // Core dumps of the daemon would hold every sandbox CA's key and the secrets.
    let _ = nix::sys::prctl::set_dumpable(false);
    runtime.block_on(serve(loaded, nofile_soft))
}

/// Each relayed connection holds two descriptors; the default soft limit of 1024 is far too low.
/// Returns the soft limit it started with, which sandboxed commands get back.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            soft
        }
        Err(_) => 1024,
    }
}

struct Listeners {
    tcp: Vec<tokio::net::TcpListener>,
    tls: Vec<tokio::net::TcpListener>,
    dns: Vec<tokio::net::UdpSocket>,
    tcp_port: u16,
    tls_port: u16,
    dns_port: u16,
}

/// Binds the TCP and DNS listeners on loopback, IPv6 with the same port numbers as IPv4 so one port per
/// kind serves both families in the nftables rules.
fn bind_listeners(ipv6: bool) -> anyhow::Result<Listeners> {
    let v4 = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let v6 = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
    let mut last_error = None;
    for _ in 0..20 {
        let tcp4 = listener::tcp_listener(v4(0)).context("binding the transparent TCP listener")?;
        let tcp_port = tcp4.local_addr()?.port();
        let tls4 = listener::tcp_listener(v4(0)).context("binding the transparent TLS listener")?;
        let tls_port = tls4.local_addr()?.port();
        let dns4 = dns::udp_socket(v4(0)).context("binding the DNS relay")?;
        let dns_port = dns4.local_addr()?.port();
        if !ipv6 {
            return Ok(Listeners {
                tcp: vec![tcp4],
                tls: vec![tls4],
                dns: vec![dns4],
                tcp_port,
                tls_port,
                dns_port,
            });
        }
        match (
            listener::tcp_listener(v6(tcp_port)),
            listener::tcp_listener(v6(tls_port)),
            dns::udp_socket(v6(dns_port)),
        ) {
            (Ok(tcp6), Ok(tls6), Ok(dns6)) => {
                return Ok(Listeners {
                    tcp: vec![tcp4, tcp6],
                    tls: vec![tls4, tls6],
                    dns: vec![dns4, dns6],
                    tcp_port,
                    tls_port,
                    dns_port,
                })
            }
            (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
                last_error = Some(error)
            }
        }
    }
    Err(anyhow::anyhow!(
        "binding IPv6 listeners on [::1]: {}",
        last_error.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// IPv6 is used when the config asks for it and the host has it (a loopback address to listen on).
fn ipv6_usable(config: &Config) -> bool {
    config.daemon.subnet6.is_some()
        && std::net::TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)).is_ok()
}

async fn serve(loaded: Loaded, nofile_soft: u64) -> anyhow::Result<()> {
    let config = Arc::new(loaded.config);
    control::check_free(&config.daemon.socket, config.daemon.socket_group.as_deref())?;
    let audit = Audit::open(&config.daemon.audit_log)?;
    let netlink = Netlink::connect().context("opening a netlink socket")?;
    let (listeners, ruleset, ipv6) = take_over_the_kernel(&config, &netlink).await?;

    let mut pool = AddressPool::new(config.daemon.subnet, config.daemon.subnet6.filter(|_| ipv6));
    // Slot 0 is never a sandbox: its host address is where the DNS relay answers, an address no
    // interface has, so answering from it never collides with a real service.
    let relay_slot = pool.allocate().context("daemon.subnet has no room")?;
    let mut dns_addresses = vec![IpAddr::V4(relay_slot.host_v4)];
    dns_addresses.extend(relay_slot.host_v6.filter(|_| ipv6).map(IpAddr::V6));

    let control = control::bind(&config.daemon.socket, config.daemon.socket_group.as_deref())?;

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let current = Arc::new(Current::new(config.clone(), Arc::new(loaded.secrets)));
    let registry = Arc::new(Registry::default());
    // Minted secrets tell it of each new value (`Redactions::value_changed`).
    let redactions = Arc::new(Redactions::default());
    let minted = Minted::start(
        loaded.upstream_tls.clone(),
        audit.clone(),
        redactions.clone(),
        loaded.minted,
    );
    let sandboxes = Arc::new(Sandboxes::new(
        current.clone(),
        registry.clone(),
        redactions,
        pool,
        netlink,
        SandboxNetwork {
            ipv6,
            dns_addresses,
        },
        nofile_soft,
        stopping,
    ));
    let proxy = Arc::new(ProxyContext {
        sandboxes: registry,
        config: current.clone(),
        minted: minted.store.clone(),
        audit,
        upstreams: Upstreams::new(loaded.upstream_tls),
        networks: networks(&config),
    });
    let workers = Arc::new(Workers::start().context("starting the connection workers")?);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::serve(
        control,
        sandboxes.clone(),
        current.clone(),
        minted.store.clone(),
    ));
    for socket in listeners.tcp {
        tasks.spawn(tcp_relay::serve(socket, proxy.clone(), workers.clone()));
    }
    for socket in listeners.tls {
        tasks.spawn(tls_router::serve(socket, proxy.clone(), workers.clone()));
    }
    for socket in listeners.dns {
        tasks.spawn(dns::serve(socket, proxy.clone()));
    }
    tasks.spawn(host_addresses::refresh_forever(
        Netlink::connect().context("opening a netlink socket")?,
    ));
    tasks.spawn(sandboxes.clone().reap_forever());
    tasks.spawn(guard_kernel_state(
        sandboxes.clone(),
        Netlink::connect().context("opening a netlink socket")?,
        ruleset,
        ipv6,
    ));
    if let Some(interval) = systemd::watchdog_interval() {
        tasks.spawn(systemd::watchdog(interval));
    }
    tracing::info!(
        socket = %config.daemon.socket.display(), subnet = %config.daemon.subnet, ipv6,
        tcp_port = listeners.tcp_port, dns_port = listeners.dns_port, "ready"
    );
    systemd::notify(&format!(
        "READY=1\nSTATUS=serving on {}",
        config.daemon.socket.display()
    ));

    serve_until_stopped(&current, &proxy.upstreams, &minted).await?;
    let _ = stop.send(true);
    wait_for_the_sandboxes(&sandboxes).await;
    // Before the kernel objects go: the guard would put them back.
    tasks.abort_all();
    remove_kernel_state(&sandboxes, &config).await
}

/// Clears what a killed daemon left (veths), binds the listeners, and points the nftables table and
/// policy routing at them. Returns the listeners, the ruleset (to restore it if it is removed) and whether
/// sandboxes get IPv6.
async fn take_over_the_kernel(
    config: &Config,
    netlink: &Netlink,
) -> anyhow::Result<(Listeners, RulesetParams, bool)> {
    let leftovers = netlink
        .delete_links_with_prefix(LINK_PREFIX)
        .await
        .context("removing veths left by a previous daemon")?;
    if !leftovers.is_empty() {
        tracing::warn!(
            count = leftovers.len(),
            "removed veths left by a previous daemon"
        );
    }
    let ipv6 = ipv6_usable(config);
    if config.daemon.subnet6.is_some() && !ipv6 {
        tracing::warn!(
            "daemon.subnet6 is set but this host has no IPv6 loopback; sandboxes get IPv4 only"
        );
    }
    let listeners = bind_listeners(ipv6)?;
    let ruleset = RulesetParams {
        mark: MARK,
        socket_mark: SOCKET_MARK,
        tcp_port: listeners.tcp_port,
        tls_port: listeners.tls_port,
        dns_port: listeners.dns_port,
        networks: networks(config),
    };
    nft::install(ruleset.clone()).await.context(
        "installing the nftables table inet sandbox (is nftables installed? `sandbox doctor`)",
    )?;
    netlink
        .install_policy_routing(MARK, ROUTE_TABLE, ipv6)
        .await
        .context("installing policy routing for TPROXY")?;
    Ok((listeners, ruleset, ipv6))
}

/// Reloads the config on SIGHUP; returns on SIGTERM or SIGINT.
async fn serve_until_stopped(
    current: &Current,
    upstreams: &Upstreams,
    minted: &Minted,
) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(current, upstreams, minted),
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
}

/// Waits (bounded) for the sandboxes, told to stop, to end and be torn down.
async fn wait_for_the_sandboxes(sandboxes: &Sandboxes) {
    let running = sandboxes.live_pids().len();
    tracing::info!(
        sandboxes = running,
        "stopping: each command gets SIGTERM, then SIGKILL after {GRACE:?}"
    );
    systemd::notify(&format!("STOPPING=1\nSTATUS=ending {running} sandboxes"));
    if tokio::time::timeout(GRACE + Duration::from_secs(5), sandboxes.wait_idle())
        .await
        .is_err()
    {
        tracing::error!("sandboxes did not end in time; removing their network anyway");
    }
}

/// Removes every kernel object the daemon made, going on past errors.
async fn remove_kernel_state(sandboxes: &Sandboxes, config: &Config) -> anyhow::Result<()> {
    let mut failed = false;
    if let Err(error) = nft::remove().await {
        tracing::error!(%error, "removing the nftables table");
        failed = true;
    }
    if let Err(error) = sandboxes
        .netlink
        .remove_policy_routing(MARK, ROUTE_TABLE)
        .await
    {
        tracing::error!(%error, "removing policy routing");
        failed = true;
    }
    if let Err(error) = sandboxes
        .netlink
        .delete_links_with_prefix(LINK_PREFIX)
        .await
    {
        tracing::error!(%error, "removing veths");
        failed = true;
    }
    let _ = std::fs::remove_file(&config.daemon.socket);
    // The audit writer batches: give it time to write the records of the sandboxes that just ended.
    tokio::time::sleep(crate::audit::BATCH_DELAY * 3).await;
    if failed {
        anyhow::bail!("some kernel objects could not be removed; see the errors above");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Without its table and policy routing, a sandbox's packets to the host's own addresses would be
/// delivered locally: the sandbox would reach the host's services. Something else on the host can remove
/// or change them (`nft flush ruleset` or `flush table`, restarting nftables.service, a rule deleted or
/// replaced, `ip rule flush`), so they are put back, with the live sandboxes' elements: the table as soon
/// as the kernel reports a change to nftables (and every GUARD_PERIOD in case a report was missed), by
/// its content (`nft::TableShape`), not only its existence; policy routing every GUARD_PERIOD.
async fn guard_kernel_state(
    sandboxes: Arc<Sandboxes>,
    netlink: Netlink,
    ruleset: RulesetParams,
    ipv6: bool,
) {
    let mut changes = nft::Changes::subscribe()
        .inspect_err(|error| {
            tracing::warn!(%error, "not told of nftables changes: the table is checked every 2 s only")
        })
        .ok();
    let installed = match nft::read_back().await {
        Ok(state) => state.shape,
        Err(error) => {
            tracing::error!(%error, "reading back the nftables table just installed");
            return;
        }
    };
    loop {
        let told = async {
            match changes.as_mut() {
                Some(listening) => listening.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(GUARD_PERIOD) => {}
            result = told => if let Err(error) = result {
                tracing::warn!(%error, "not told of nftables changes any more: the table is checked every 2 s only");
                changes = None;
            },
        }
        // Live sandboxes first: every one of them had its elements before it was registered. One that
        // ended meanwhile (no longer registered after the read) may have lost them to the reaper.
        let before = sandboxes.live_elements();
        match nft::read_back().await {
            Ok(state) => {
                let live = sandboxes.live_elements();
                let missing = live.iter().filter(|e| before.contains(e)).any(|e| {
                    !state.ifaces.contains(&e.ifname)
                        || !state.src4.contains(&(e.ifname.clone(), e.v4))
                        || e.v6
                            .is_some_and(|v6| !state.src6.contains(&(e.ifname.clone(), v6)))
                });
                if !state.exists || missing || state.shape != installed {
                    tracing::error!(
                        table_exists = state.exists,
                        elements_missing = missing,
                        "the nftables table inet sandbox was removed or changed by something else; restoring it"
                    );
                    if let Err(error) = nft::restore(ruleset.clone(), &live).await {
                        tracing::error!(%error, "restoring the nftables table");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "checking the nftables table"),
        }
        match netlink
            .policy_routing_complete(MARK, ROUTE_TABLE, ipv6)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    "the policy routing for TPROXY was removed by something else; restoring it"
                );
                if let Err(error) = netlink
                    .install_policy_routing(MARK, ROUTE_TABLE, ipv6)
                    .await
                {
                    tracing::error!(%error, "restoring policy routing");
                }
            }
            Err(error) => tracing::warn!(%error, "checking policy routing"),
        }
    }
}

/// How often the guard checks without being told of a change.
const GUARD_PERIOD: Duration = Duration::from_secs(2);

fn networks(config: &Config) -> Vec<IpNet> {
    let mut networks = vec![IpNet::V4(config.daemon.subnet)];
    networks.extend(config.daemon.subnet6.map(IpNet::V6));
    networks
}

fn reload(current: &Current, upstreams: &Upstreams, minted: &Minted) {
    systemd::notify("RELOADING=1");
    reload_config(current, upstreams, minted);
    systemd::notify("READY=1");
}

fn reload_config(current: &Current, upstreams: &Upstreams, minted: &Minted) {
    let running_config = current.config();
    let running = &running_config.daemon;
    let loaded = load(&running_config.path).and_then(|mut new| {
        let fresh = &mut new.config.daemon;
        if running.socket != fresh.socket
            || running.socket_group != fresh.socket_group
            || running.subnet != fresh.subnet
            || running.subnet6 != fresh.subnet6
            || running.audit_log != fresh.audit_log
            || running.state_dir != fresh.state_dir
        {
            tracing::warn!(
                "daemon.socket, socket_group, subnet, subnet6, audit_log and state_dir take effect only after a restart"
            );
        }
        // The running values stay in the config: sandboxes must not see the socket and the audit log
        // that are live, whatever the file now says, and a rotated refresh token stays where it was saved.
        fresh.socket = running.socket.clone();
        fresh.socket_group = running.socket_group.clone();
        fresh.subnet = running.subnet;
        fresh.subnet6 = running.subnet6;
        fresh.audit_log = running.audit_log.clone();
        if fresh.state_dir != running.state_dir {
            fresh.state_dir = running.state_dir.clone();
            new.minted = new
                .config
                .minted_definitions(&new.secrets)
                .map_err(|error| error.to_string())?;
        }
        Ok(new)
    });
    match loaded {
        Ok(new) => {
            upstreams.set_config(new.upstream_tls.clone());
            minted.reload(new.upstream_tls, new.minted);
            current.set(Arc::new(new.config), Arc::new(new.secrets));
            tracing::info!(config = %running_config.path.display(), "config reloaded; new sandboxes use it");
            systemd::notify("STATUS=config reloaded");
        }
        Err(error) => {
            tracing::error!("config reload failed, keeping the previous config: {error}");
            systemd::notify(&format!(
                "STATUS=reload failed, previous config kept: {error}"
            ));
        }
    }
}
