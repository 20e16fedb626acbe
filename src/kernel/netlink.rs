//! Kernel network objects through rtnetlink: each sandbox's veth pair with its addresses and
//! routes, the policy routing that delivers TPROXYed packets locally, and the dumps the daemon
//! uses for leftover cleanup and leak checks.
//!
//! A [`Netlink`] talks to the network namespace its socket was opened in. Work inside a sandbox's
//! namespace goes through a second socket opened there by a short-lived thread, so no tokio
//! worker ever changes namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use futures::future::try_join_all;
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
};
use netlink_packet_route::route::{RouteAttribute, RouteType};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::{Handle, IpVersion, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::kernel::netns;

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

    /// Opens a socket in the network namespace `netns` refers to: [`netns::run_in`] opens it on a
    /// thread that entered the namespace, and the socket stays bound to that namespace. `run_in` waits
    /// for its thread, so a blocking thread waits, not this task's worker: the socket is opened while
    /// other futures (the veth's creation) go on.
    pub async fn connect_in(netns: BorrowedFd<'_>) -> Result<Self, NetlinkError> {
        let netns = netns
            .try_clone_to_owned()
            .map_err(NetlinkError::ConnectIn)?;
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = tokio::task::spawn_blocking(move || {
            netns::run_in(netns.as_fd(), || {
                // The socket registers with this runtime's reactor.
                let _runtime = runtime.enter();
                rtnetlink::new_connection()
            })
        })
        .await
        .map_err(|died| NetlinkError::ConnectIn(died.into()))?
        // Entering the namespace failed, or opening the socket there did.
        .and_then(|opened| opened)
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
        // Both ends are created down: each is brought up only once it has no automatic IPv6
        // address to make (`up_without_autoconf`), which the kernel does not take on creation.
        let peer = LinkUnspec::new_with_name(SANDBOX_IFNAME)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(ifname)
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
        futures::try_join!(
            self.up_without_autoconf(index, ifname, spec.v6.is_some()),
            try_join_all(addresses)
        )
        .map(drop)
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
            self.up_without_autoconf(index, SANDBOX_IFNAME, spec.v6.is_some()),
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

    /// Brings a veth end up without the link-local address the kernel would make from its MAC
    /// (IN6_ADDR_GEN_MODE_NONE; the fixed one is added without DAD). Each IPv6 route of the daemon's
    /// namespace costs every later link change there a little: the kernel walks all of them whenever
    /// any device goes up or down, holding the lock every sandbox's start and end wait for. With 500
    /// sandboxes, that walk was most of what each further one cost; this address was one route (and
    /// a DAD run) per sandbox. The mode must be set while the device is down, by a message of its
    /// own: the kernel applies a message's flags before its address-family settings. Without IPv6
    /// in the config the kernel may have none (ipv6.disable=1), and would refuse the setting.
    async fn up_without_autoconf(
        &self,
        index: u32,
        ifname: &str,
        ipv6: bool,
    ) -> Result<(), NetlinkError> {
        if !ipv6 {
            return self.set_up(index, ifname).await;
        }
        let no_autoconf = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        let request = self.handle.link().change(no_autoconf).execute();
        request.await.map_err(failed(format!(
            "turn off IPv6 address generation on {ifname}"
        )))?;
        self.set_up(index, ifname).await
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
mod tests;
