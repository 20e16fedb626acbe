//! Kernel network objects through rtnetlink: each sandbox's veth pair with its addresses and
//! routes, the policy routing that delivers TPROXYed packets locally, and the dumps the daemon
//! uses for leftover cleanup and leak checks.
//!
//! A [`Netlink`] talks to the network namespace its socket was opened in. Work inside a sandbox's
//! namespace goes through a second socket opened there by a short-lived thread, so no tokio
//! worker ever changes namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::future::try_join_all;
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use netlink_packet_route::route::{RouteAttribute, RouteType};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use rtnetlink::RouteMessageBuilder;
use rtnetlink::{Handle, IpVersion, LinkMessageBuilder, LinkUnspec, LinkVeth};

/// The name of the veth peer inside every sandbox.
const SANDBOX_IFNAME: &str = "eth0";
/// The kernel gives the loopback device this index in every network namespace.
const LOOPBACK_INDEX: u32 = 1;
/// Fixed link-local addresses, added without DAD: neighbour discovery needs a usable link-local
/// source when a packet's own source is not on the link (TPROXY replies, NUD probes), and an
/// auto-generated one stays tentative for a second or more.
const HOST_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const SANDBOX_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("cannot open a netlink socket in the sandbox network namespace: {0}")]
    ConnectIn(#[source] std::io::Error),
    #[error("netlink: cannot {action}: {source}")]
    Request {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("netlink: no link named {0}")]
    NoSuchLink(String),
    #[error("inside the sandbox of {ifname}: {source}")]
    Sandbox {
        ifname: String,
        #[source]
        source: Box<NetlinkError>,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<NetlinkError>),
}

fn failed(action: String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Request { action, source }
}

fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| Errno::from_raw(-code.get())),
        _ => None,
    }
}

/// `Ok(false)` when the request failed with one of the errnos that mean "no such object" (or, for
/// IPv6 on a host without it, "no such family").
fn absent_ok(
    result: Result<(), rtnetlink::Error>,
    absent: &[Errno],
) -> Result<bool, rtnetlink::Error> {
    match result {
        Ok(()) => Ok(true),
        Err(err) if errno(&err).is_some_and(|e| absent.contains(&e)) => Ok(false),
        Err(err) => Err(err),
    }
}

fn all_ok(errors: Vec<NetlinkError>) -> Result<(), NetlinkError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(NetlinkError::Several(errors))
    }
}

/// The two ends of one sandbox's veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub host_ifname: String,
    pub host_v4: Ipv4Addr,
    pub sandbox_v4: Ipv4Addr,
    pub prefix_v4: u8,
    pub v6: Option<LinkSpec6>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec6 {
    pub host: Ipv6Addr,
    pub sandbox: Ipv6Addr,
    pub prefix: u8,
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn version(self) -> IpVersion {
        match self {
            Family::V4 => IpVersion::V4,
            Family::V6 => IpVersion::V6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// What a delete answers when there is nothing to delete.
    fn absent(self) -> &'static [Errno] {
        match self {
            Family::V4 => &[Errno::ENOENT, Errno::ESRCH],
            Family::V6 => &[Errno::ENOENT, Errno::ESRCH, Errno::EAFNOSUPPORT],
        }
    }
}

/// `local <any>/0 dev lo table <table>`: whatever their destination, TPROXYed (marked) packets
/// are delivered to the local socket the TPROXY statement chose.
fn local_route(family: Family, table: u32) -> RouteMessage {
    fn local<T>(builder: RouteMessageBuilder<T>, table: u32) -> RouteMessage {
        builder
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(LOOPBACK_INDEX)
            .table_id(table)
            .build()
    }
    match family {
        Family::V4 => local(RouteMessageBuilder::<Ipv4Addr>::new(), table),
        Family::V6 => local(RouteMessageBuilder::<Ipv6Addr>::new(), table),
    }
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(route.header.table.into())
}

/// `fwmark <mark>/<mark> lookup <table>`
fn policy_rule(family: Family, mark: u32, table: u32) -> RuleMessage {
    let mut rule = RuleMessage::default();
    rule.header.family = match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    rule.header.action = RuleAction::ToTable;
    rule.attributes = vec![
        RuleAttribute::FwMark(mark),
        RuleAttribute::FwMask(mark),
        RuleAttribute::Table(table),
    ];
    rule
}

fn is_policy_rule(rule: &RuleMessage, mark: u32, table: u32) -> bool {
    // The kernel leaves out FRA_FWMASK when the mask is all ones.
    let (mut fwmark, mut fwmask, mut rule_table) = (None, u32::MAX, rule.header.table.into());
    for attribute in &rule.attributes {
        match attribute {
            RuleAttribute::FwMark(m) => fwmark = Some(*m),
            RuleAttribute::FwMask(m) => fwmask = *m,
            RuleAttribute::Table(t) => rule_table = *t,
            _ => {}
        }
    }
    rule.header.action == RuleAction::ToTable
        && fwmark == Some(mark)
        && fwmask == mark
        && rule_table == table
}

/// Deletes until the kernel says there is nothing left (each delete removes one match).
async fn delete_all<F, Fut>(family: Family, what: &str, delete: F) -> Result<(), NetlinkError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), rtnetlink::Error>>,
{
    while absent_ok(delete().await, family.absent()).map_err(failed(what.to_string()))? {}
    Ok(())
}

/// A socket to the kernel's routing subsystem of one network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace; its connection task runs on the
    /// current tokio runtime (panics outside one).
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Opens a socket in the network namespace `netns` refers to. A dedicated thread enters the
    /// namespace and opens the socket, which stays bound to that namespace; the thread never
    /// switches back, it just ends.
    pub async fn connect_in(netns: BorrowedFd<'_>) -> Result<Self, NetlinkError> {
        let netns = netns
            .try_clone_to_owned()
            .map_err(NetlinkError::ConnectIn)?;
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netns-netlink".into())
            .spawn(move || {
                let opened = setns(&netns, CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
                    .and_then(|()| {
                        let _runtime = runtime.enter();
                        rtnetlink::new_connection()
                    })
                    .map(|(connection, handle, _)| (connection, handle));
                // The receiver is only gone when the caller was cancelled.
                let _ = tx.send(opened);
            })
            .map_err(NetlinkError::ConnectIn)?;
        let (connection, handle) = rx
            .await
            .map_err(|_| NetlinkError::ConnectIn(std::io::Error::other("its thread died")))?
            .map_err(NetlinkError::ConnectIn)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Installs `fwmark mark/mark lookup table` and `local 0.0.0.0/0 dev lo table table` (and the
    /// IPv6 pair when `ipv6`), first removing identical ones a killed daemon may have left.
    pub async fn install_policy_routing(
        &self,
        mark: u32,
        table: u32,
        ipv6: bool,
    ) -> Result<(), NetlinkError> {
        self.remove_policy_routing(mark, table).await?;
        let families: &[Family] = if ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        };
        for &family in families {
            // Route first, so that no marked packet ever meets an empty table.
            self.handle
                .route()
                .add(local_route(family, table))
                .execute()
                .await
                .map_err(failed(format!(
                    "add {} local default route to table {table}",
                    family.name()
                )))?;
            let mut rule = self.handle.rule().add();
            *rule.message_mut() = policy_rule(family, mark, table);
            rule.execute().await.map_err(failed(format!(
                "add {} rule fwmark {mark:#x}/{mark:#x} lookup {table}",
                family.name()
            )))?;
        }
        Ok(())
    }

    /// Removes the rules and routes of [`Self::install_policy_routing`] for both families,
    /// however many copies exist; absent ones are no error. Keeps going after an error.
    pub async fn remove_policy_routing(&self, mark: u32, table: u32) -> Result<(), NetlinkError> {
        let mut errors = Vec::new();
        for family in [Family::V4, Family::V6] {
            let rule = policy_rule(family, mark, table);
            let what = format!(
                "delete {} rule fwmark {mark:#x}/{mark:#x} lookup {table}",
                family.name()
            );
            let deleted = delete_all(family, &what, || {
                self.handle.rule().del(rule.clone()).execute()
            });
            if let Err(err) = deleted.await {
                errors.push(err);
            }
            // Any protocol: also match a route someone added by hand with `ip route`.
            let mut route = local_route(family, table);
            route.header.protocol = RouteProtocol::Unspec;
            let what = format!(
                "delete {} local default route from table {table}",
                family.name()
            );
            let deleted = delete_all(family, &what, || {
                self.handle.route().del(route.clone()).execute()
            });
            if let Err(err) = deleted.await {
                errors.push(err);
            }
        }
        all_ok(errors)
    }

    /// Whether any rule or route of [`Self::install_policy_routing`] exists (leak check).
    pub async fn policy_routing_present(
        &self,
        mark: u32,
        table: u32,
    ) -> Result<bool, NetlinkError> {
        let counts = self.policy_routing_counts(mark, table).await?;
        Ok(counts.iter().any(|&(rules, routes)| rules + routes > 0))
    }

    /// True when the rule and the route are there for IPv4, and for IPv6 when `ipv6`.
    pub async fn policy_routing_complete(
        &self,
        mark: u32,
        table: u32,
        ipv6: bool,
    ) -> Result<bool, NetlinkError> {
        let counts = self.policy_routing_counts(mark, table).await?;
        let family_complete = |(rules, routes): (usize, usize)| rules > 0 && routes > 0;
        Ok(family_complete(counts[0]) && (!ipv6 || family_complete(counts[1])))
    }

    /// (rules, routes) of ours, for IPv4 and IPv6.
    async fn policy_routing_counts(
        &self,
        mark: u32,
        table: u32,
    ) -> Result<[(usize, usize); 2], NetlinkError> {
        let mut counts = [(0, 0); 2];
        for (count, family) in counts.iter_mut().zip([Family::V4, Family::V6]) {
            let rules: Vec<RuleMessage> = match self
                .handle
                .rule()
                .get(family.version())
                .execute()
                .try_collect()
                .await
            {
                Err(err) if errno(&err) == Some(Errno::EAFNOSUPPORT) => continue,
                rules => rules.map_err(failed(format!("dump {} rules", family.name())))?,
            };
            count.0 = rules
                .iter()
                .filter(|r| is_policy_rule(r, mark, table))
                .count();
            // Without strict checking the kernel dumps every route of the family; the filter
            // below decides.
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(local_route(family, table))
                .execute()
                .try_collect()
                .await
                .map_err(failed(format!("dump {} routes", family.name())))?;
            count.1 = routes
                .iter()
                .filter(|r| {
                    route_table(r) == table
                        && r.header.kind == RouteType::Local
                        && r.header.destination_prefix_length == 0
                })
                .count();
        }
        Ok(counts)
    }

    /// Creates the veth pair of one sandbox, its peer `eth0` directly inside `sandbox_netns`, and
    /// configures both ends: addresses (IPv6 without DAD), up, and inside the sandbox `lo` up and
    /// the default routes via the host side. On failure the pair is deleted again.
    pub async fn create_sandbox_link(
        &self,
        spec: &LinkSpec,
        sandbox_netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        // The sandbox's socket is opened while the kernel creates the pair.
        let (sandbox, created) = futures::join!(
            Self::connect_in(sandbox_netns),
            self.create_veth(&spec.host_ifname, sandbox_netns)
        );
        created?;
        let configured = async {
            let sandbox = sandbox?;
            let in_sandbox = async {
                sandbox
                    .configure_sandbox_end(spec)
                    .await
                    .map_err(|source| NetlinkError::Sandbox {
                        ifname: spec.host_ifname.clone(),
                        source: Box::new(source),
                    })
            };
            futures::try_join!(self.configure_host_end(spec), in_sandbox).map(drop)
        }
        .await;
        if configured.is_err() {
            // Best effort: the error that matters is the one being returned.
            let _ = self.delete_link(&spec.host_ifname).await;
        }
        configured
    }

    async fn create_veth(&self, ifname: &str, netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        // The host end is created up (the kernel applies its ifinfomsg flags on creation); the
        // peer cannot be: the kernel configures it before the pair is joined, and opening a veth
        // without its peer fails with ENOTCONN.
        let peer = LinkUnspec::new_with_name(SANDBOX_IFNAME)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(ifname)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(failed(format!(
                "create veth {ifname} with peer {SANDBOX_IFNAME} in the sandbox"
            )))
    }

    async fn configure_host_end(&self, spec: &LinkSpec) -> Result<(), NetlinkError> {
        let ifname = &spec.host_ifname;
        let index = self.index_of(ifname).await?;
        let mut addresses =
            vec![self.add_address(index, ifname, spec.host_v4.into(), spec.prefix_v4)];
        if let Some(v6) = &spec.v6 {
            addresses.push(self.add_address(index, ifname, HOST_LINK_LOCAL.into(), 64));
            addresses.push(self.add_address(index, ifname, v6.host.into(), v6.prefix));
        }
        try_join_all(addresses).await.map(drop)
    }

    async fn configure_sandbox_end(&self, spec: &LinkSpec) -> Result<(), NetlinkError> {
        let index = self.index_of(SANDBOX_IFNAME).await?;
        let mut addresses = vec![self.add_address(
            index,
            SANDBOX_IFNAME,
            spec.sandbox_v4.into(),
            spec.prefix_v4,
        )];
        let mut routes = vec![(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(index)
                .gateway(spec.host_v4)
                .build(),
            IpAddr::from(spec.host_v4),
        )];
        if let Some(v6) = &spec.v6 {
            addresses.push(self.add_address(index, SANDBOX_IFNAME, SANDBOX_LINK_LOCAL.into(), 64));
            addresses.push(self.add_address(index, SANDBOX_IFNAME, v6.sandbox.into(), v6.prefix));
            routes.push((
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .output_interface(index)
                    .gateway(v6.host)
                    .build(),
                v6.host.into(),
            ));
        }
        futures::try_join!(
            self.set_up(LOOPBACK_INDEX, "lo"),
            self.set_up(index, SANDBOX_IFNAME),
            try_join_all(addresses),
        )?;
        // The gateways are reachable only now that eth0 is up and has its addresses.
        try_join_all(routes.into_iter().map(|(route, via)| async move {
            let request = self.handle.route().add(route).execute();
            request
                .await
                .map_err(failed(format!("add default route via {via}")))
        }))
        .await
        .map(drop)
    }

    /// Brings up the namespace's loopback device (down in a new network namespace).
    pub async fn loopback_up(&self) -> Result<(), NetlinkError> {
        self.set_up(LOOPBACK_INDEX, "lo").await
    }

    async fn set_up(&self, index: u32, ifname: &str) -> Result<(), NetlinkError> {
        let link = LinkUnspec::new_with_index(index).up().build();
        let request = self.handle.link().change(link).execute();
        request.await.map_err(failed(format!("bring {ifname} up")))
    }

    async fn index_of(&self, ifname: &str) -> Result<u32, NetlinkError> {
        let mut links = self.handle.link().get().match_name(ifname).execute();
        let link = links
            .try_next()
            .await
            .map_err(failed(format!("look up link {ifname}")))?;
        link.map(|l| l.header.index)
            .ok_or_else(|| NetlinkError::NoSuchLink(ifname.into()))
    }

    async fn add_address(
        &self,
        index: u32,
        ifname: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, addr, prefix);
        if addr.is_ipv6() {
            // DAD would keep the address unusable for a second or more; the pool makes it unique.
            request.message_mut().header.flags = AddressHeaderFlags::Nodad;
        }
        request
            .execute()
            .await
            .map_err(failed(format!("add address {addr}/{prefix} to {ifname}")))
    }

    /// Deletes a link (for a veth, both ends); no error when there is none.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        let link = LinkUnspec::new_with_name(name).build();
        let deleted = self.handle.link().del_with_message(link).execute().await;
        absent_ok(deleted, &[Errno::ENODEV])
            .map(drop)
            .map_err(failed(format!("delete link {name}")))
    }

    /// Deletes every link whose name starts with `prefix` (leftovers of a killed daemon) and
    /// returns their names. Keeps going after an error. An empty prefix matches nothing: it would
    /// take the host's own links.
    pub async fn delete_links_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<String>, NetlinkError> {
        let names: Vec<String> = self
            .link_names()
            .await?
            .into_iter()
            .filter(|n| !prefix.is_empty() && n.starts_with(prefix))
            .collect();
        let mut errors = Vec::new();
        for name in &names {
            if let Err(err) = self.delete_link(name).await {
                errors.push(err);
            }
        }
        all_ok(errors).map(|()| names)
    }

    /// Whether a link of this name exists: one targeted request, where a dump costs as much as there are
    /// links (two per live sandbox).
    pub async fn link_exists(&self, ifname: &str) -> Result<bool, NetlinkError> {
        let mut links = self.handle.link().get().match_name(ifname).execute();
        let found = links.try_next().await.map(|link| link.is_some());
        match found {
            Err(err) if errno(&err) == Some(Errno::ENODEV) => Ok(false),
            found => found.map_err(failed(format!("look up link {ifname}"))),
        }
    }

    /// The names of all links of this namespace (leak checks).
    pub async fn link_names(&self) -> Result<Vec<String>, NetlinkError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(failed("dump links".into()))?;
        Ok(links
            .into_iter()
            .flat_map(|l| l.attributes)
            .filter_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            })
            .collect())
    }

    /// Every address of every interface of this namespace: the daemon never connects to these.
    pub async fn local_addresses(&self) -> Result<Vec<IpAddr>, NetlinkError> {
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(failed("dump addresses".into()))?;
        Ok(addresses
            .iter()
            .filter_map(|msg| {
                // On point-to-point links IFA_ADDRESS is the peer's; IFA_LOCAL is ours.
                let local = msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                local.or_else(|| {
                    msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use netlink_packet_route::route::{RouteAddress, RouteHeader};

    use super::*;
    use crate::testutil::{in_netns, in_new_netns, new_netns, root_or_skip};

    const MARK: u32 = 0x5ba;
    const TABLE: u32 = 0x5ba;

    fn spec(slot: u8, v6: bool) -> LinkSpec {
        let block = 4 * slot;
        LinkSpec {
            host_ifname: format!("sbx{slot}"),
            host_v4: Ipv4Addr::new(10, 233, 0, block + 1),
            sandbox_v4: Ipv4Addr::new(10, 233, 0, block + 2),
            prefix_v4: 30,
            v6: v6.then(|| LinkSpec6 {
                host: Ipv6Addr::new(0xfd00, 0x5ba, 0xd, slot.into(), 0, 0, 0, 1),
                sandbox: Ipv6Addr::new(0xfd00, 0x5ba, 0xd, slot.into(), 0, 0, 0, 2),
                prefix: 64,
            }),
        }
    }

    impl Netlink {
        async fn set_lo_up(&self) {
            let lo = LinkUnspec::new_with_index(LOOPBACK_INDEX).up().build();
            self.handle.link().change(lo).execute().await.unwrap();
        }

        /// The gateways of the main table's default routes.
        async fn default_gateways(&self) -> Vec<IpAddr> {
            let mut gateways = Vec::new();
            for family in [
                RouteMessageBuilder::<Ipv4Addr>::new().build(),
                RouteMessageBuilder::<Ipv6Addr>::new().build(),
            ] {
                let routes: Vec<RouteMessage> = self
                    .handle
                    .route()
                    .get(family)
                    .execute()
                    .try_collect()
                    .await
                    .unwrap();
                for route in routes.iter().filter(|r| {
                    r.header.destination_prefix_length == 0
                        && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                }) {
                    gateways.extend(route.attributes.iter().filter_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(IpAddr::V4(*gw)),
                        RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => Some(IpAddr::V6(*gw)),
                        _ => None,
                    }));
                }
            }
            gateways
        }
    }

    #[test]
    fn root_policy_routing_is_idempotent_and_removable() {
        if !root_or_skip("netlink::root_policy_routing_is_idempotent_and_removable") {
            return;
        }
        in_new_netns(|| async {
            let nl = Netlink::connect().unwrap();
            nl.set_lo_up().await;
            assert!(!nl.policy_routing_present(MARK, TABLE).await.unwrap());
            nl.remove_policy_routing(MARK, TABLE).await.unwrap();

            nl.install_policy_routing(MARK, TABLE, true).await.unwrap();
            assert_eq!(
                nl.policy_routing_counts(MARK, TABLE).await.unwrap(),
                [(1, 1), (1, 1)]
            );
            assert!(nl.policy_routing_complete(MARK, TABLE, true).await.unwrap());
            // Leftovers that differ in priority or protocol, as `ip` or an older daemon makes them.
            let mut rule = nl.handle.rule().add();
            *rule.message_mut() = policy_rule(Family::V4, MARK, TABLE);
            rule.message_mut()
                .attributes
                .push(RuleAttribute::Priority(100));
            rule.execute().await.unwrap();
            let mut route = local_route(Family::V6, TABLE);
            route.header.protocol = RouteProtocol::Boot;
            nl.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .unwrap();
            assert_eq!(
                nl.policy_routing_counts(MARK, TABLE).await.unwrap(),
                [(2, 1), (1, 1)]
            );

            nl.install_policy_routing(MARK, TABLE, true).await.unwrap();
            assert_eq!(
                nl.policy_routing_counts(MARK, TABLE).await.unwrap(),
                [(1, 1), (1, 1)]
            );
            nl.install_policy_routing(MARK, TABLE, false).await.unwrap();
            assert_eq!(
                nl.policy_routing_counts(MARK, TABLE).await.unwrap(),
                [(1, 1), (0, 0)]
            );
            assert!(nl
                .policy_routing_complete(MARK, TABLE, false)
                .await
                .unwrap());
            assert!(!nl.policy_routing_complete(MARK, TABLE, true).await.unwrap());

            nl.remove_policy_routing(MARK, TABLE).await.unwrap();
            assert!(!nl.policy_routing_present(MARK, TABLE).await.unwrap());
            nl.remove_policy_routing(MARK, TABLE).await.unwrap();
        });
    }

    /// Connects from inside the sandbox, returning the time it took and the peer address the
    /// host saw.
    fn connect_from_sandbox(
        sandbox: BorrowedFd<'_>,
        listener: &TcpListener,
    ) -> (Duration, SocketAddr) {
        let to = listener.local_addr().unwrap();
        let took = in_netns(sandbox, || {
            let start = Instant::now();
            let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            let took = start.elapsed();
            stream.write_all(b"x").unwrap();
            took
        });
        let (mut accepted, peer) = listener.accept().unwrap();
        let mut byte = [0];
        accepted.read_exact(&mut byte).unwrap();
        (took, peer)
    }

    #[test]
    fn root_sandbox_link_lifecycle() {
        if !root_or_skip("netlink::root_sandbox_link_lifecycle") {
            return;
        }
        in_new_netns(|| async {
            let host = Netlink::connect().unwrap();
            let sandbox_ns = new_netns();
            let spec = spec(7, true);
            let v6 = spec.v6.unwrap();
            host.create_sandbox_link(&spec, sandbox_ns.as_fd())
                .await
                .unwrap();

            // Right away, also over IPv6: binding the host address and connecting from the sandbox's
            // both fail while an address is still tentative (DAD), so success proves nothing waits.
            let listener6 = TcpListener::bind((v6.host, 0)).unwrap();
            let (took6, peer6) = connect_from_sandbox(sandbox_ns.as_fd(), &listener6);
            assert_eq!(peer6.ip(), IpAddr::from(v6.sandbox));
            let listener4 = TcpListener::bind((spec.host_v4, 0)).unwrap();
            let (took4, peer4) = connect_from_sandbox(sandbox_ns.as_fd(), &listener4);
            assert_eq!(peer4.ip(), IpAddr::from(spec.sandbox_v4));
            eprintln!("first connect from the sandbox: IPv6 {took6:?}, IPv4 {took4:?}");

            let host_addrs = host.local_addresses().await.unwrap();
            for addr in [spec.host_v4.into(), v6.host.into(), HOST_LINK_LOCAL.into()] {
                assert!(host_addrs.contains(&addr), "{addr} not in {host_addrs:?}");
            }
            let sandbox = Netlink::connect_in(sandbox_ns.as_fd()).await.unwrap();
            let sandbox_addrs = sandbox.local_addresses().await.unwrap();
            let expected: [IpAddr; 5] = [
                spec.sandbox_v4.into(),
                v6.sandbox.into(),
                SANDBOX_LINK_LOCAL.into(),
                // lo gets its addresses when it goes up.
                Ipv4Addr::LOCALHOST.into(),
                Ipv6Addr::LOCALHOST.into(),
            ];
            for addr in expected {
                assert!(
                    sandbox_addrs.contains(&addr),
                    "{addr} not in {sandbox_addrs:?}"
                );
            }
            let mut gateways = sandbox.default_gateways().await;
            gateways.sort();
            assert_eq!(gateways, [IpAddr::from(spec.host_v4), v6.host.into()]);
            let mut names = sandbox.link_names().await.unwrap();
            names.sort();
            assert_eq!(names, ["eth0", "lo"]);

            // A name that is taken is an error, and the existing pair survives it.
            let other_ns = new_netns();
            let err = host
                .create_sandbox_link(&spec, other_ns.as_fd())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("create veth sbx7"), "{err}");
            assert!(host.link_names().await.unwrap().contains(&spec.host_ifname));
            assert!(host.link_exists(&spec.host_ifname).await.unwrap());

            host.delete_link(&spec.host_ifname).await.unwrap();
            assert!(!host.link_names().await.unwrap().contains(&spec.host_ifname));
            assert!(!host.link_exists(&spec.host_ifname).await.unwrap());
            assert_eq!(sandbox.link_names().await.unwrap(), ["lo"]);
            host.delete_link(&spec.host_ifname).await.unwrap();
        });
    }

    #[test]
    fn root_sandbox_netns_is_not_kept_alive() {
        if !root_or_skip("netlink::root_sandbox_netns_is_not_kept_alive") {
            return;
        }
        in_new_netns(|| async {
            let host = Netlink::connect().unwrap();
            let ns = new_netns();
            host.create_sandbox_link(&spec(5, true), ns.as_fd())
                .await
                .unwrap();
            drop(ns);
            // The pair dies with the namespace, unless a socket left open there still holds it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while host.link_names().await.unwrap().contains(&"sbx5".into()) {
                assert!(Instant::now() < deadline, "sbx5 outlived its namespace");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    #[test]
    fn root_delete_links_with_prefix() {
        if !root_or_skip("netlink::root_delete_links_with_prefix") {
            return;
        }
        in_new_netns(|| async {
            let host = Netlink::connect().unwrap();
            let namespaces = [new_netns(), new_netns()];
            for (slot, ns) in [1, 2].into_iter().zip(&namespaces) {
                host.create_sandbox_link(&spec(slot, false), ns.as_fd())
                    .await
                    .unwrap();
            }
            let mut deleted = host.delete_links_with_prefix("sbx").await.unwrap();
            deleted.sort();
            assert_eq!(deleted, ["sbx1", "sbx2"]);
            assert_eq!(host.link_names().await.unwrap(), ["lo"]);
            assert!(host
                .delete_links_with_prefix("sbx")
                .await
                .unwrap()
                .is_empty());
        });
    }

    #[test]
    fn root_create_sandbox_link_timing() {
        if !root_or_skip("netlink::root_create_sandbox_link_timing") {
            return;
        }
        in_new_netns(|| async {
            let host = Netlink::connect().unwrap();
            let mut took = Vec::new();
            for slot in 0..21 {
                let ns = new_netns();
                let spec = spec(slot, true);
                let start = Instant::now();
                host.create_sandbox_link(&spec, ns.as_fd()).await.unwrap();
                took.push(start.elapsed());
                host.delete_link(&spec.host_ifname).await.unwrap();
            }
            took.sort();
            eprintln!(
                "create_sandbox_link (v4+v6): median {:?}, min {:?}, max {:?}",
                took[10], took[0], took[20]
            );
        });
    }
}
