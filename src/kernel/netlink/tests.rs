use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_packet_route::route::{RouteAddress, RouteHeader};

use super::*;
use crate::testutil::{in_new_netns, new_netns, root_or_skip};

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
fn connect_from_sandbox(sandbox: BorrowedFd<'_>, listener: &TcpListener) -> (Duration, SocketAddr) {
    let to = listener.local_addr().unwrap();
    let took = netns::run_in(sandbox, || {
        let start = Instant::now();
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        let took = start.elapsed();
        stream.write_all(b"x").unwrap();
        took
    })
    .unwrap();
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
        // Exactly these: no link-local address made from a MAC on either end (each would be one more
        // IPv6 route that every link change in the daemon's namespace walks).
        let mut sandbox_addrs = sandbox_addrs;
        sandbox_addrs.sort();
        let mut expected = expected.to_vec();
        expected.sort();
        assert_eq!(sandbox_addrs, expected);
        let link_local =
            |addr: &&IpAddr| matches!(addr, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80);
        assert_eq!(
            host_addrs.iter().filter(link_local).collect::<Vec<_>>(),
            [&IpAddr::from(HOST_LINK_LOCAL)]
        );
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
