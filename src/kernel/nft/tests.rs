use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::testutil::{in_new_netns, root_or_skip};

fn params() -> RulesetParams {
    RulesetParams {
        mark: 0x5ba,
        socket_mark: 0x5ba00,
        tcp_port: 15001,
        tls_port: 15002,
        dns_port: 15053,
        networks: vec![
            "10.233.0.0/16".parse().unwrap(),
            "fd00:5ba:d::/48".parse().unwrap(),
        ],
    }
}

fn sbx3() -> SandboxElements {
    SandboxElements {
        ifname: "sbx3".into(),
        v4: Ipv4Addr::new(10, 233, 0, 14),
        v6: Some("fd00:5ba:d:3::2".parse().unwrap()),
    }
}

fn sbx4_v4_only() -> SandboxElements {
    SandboxElements {
        ifname: "sbx4".into(),
        v4: Ipv4Addr::new(10, 233, 0, 18),
        v6: None,
    }
}

fn to_json(batch: &Nftables) -> Value {
    serde_json::to_value(batch).unwrap()
}

fn elem_cmd(cmd: &str, set: &str, elem: Value) -> Value {
    json!({cmd: {"element": {"family": "inet", "table": "sandbox", "name": set, "elem": [elem]}}})
}

#[test]
fn element_batches() {
    let ifaces = json!("sbx3");
    let src4 = json!({"concat": ["sbx3", "10.233.0.14"]});
    let src6 = json!({"concat": ["sbx3", "fd00:5ba:d:3::2"]});
    assert_eq!(
        to_json(&add_elements(&sbx3())),
        json!({"nftables": [
            elem_cmd("add", "ifaces", ifaces.clone()),
            elem_cmd("add", "src4", src4.clone()),
            elem_cmd("add", "src6", src6.clone()),
        ]})
    );
    assert_eq!(
        to_json(&delete_elements(&[sbx3()])),
        json!({"nftables": [
            elem_cmd("add", "ifaces", ifaces.clone()),
            elem_cmd("add", "src4", src4.clone()),
            elem_cmd("add", "src6", src6.clone()),
            elem_cmd("delete", "ifaces", ifaces),
            elem_cmd("delete", "src4", src4),
            elem_cmd("delete", "src6", src6),
        ]})
    );
    let v4_only = to_json(&add_elements(&sbx4_v4_only()));
    assert_eq!(
        v4_only,
        json!({"nftables": [
            elem_cmd("add", "ifaces", json!("sbx4")),
            elem_cmd("add", "src4", json!({"concat": ["sbx4", "10.233.0.18"]})),
        ]})
    );
}

#[test]
fn ruleset_replaces_table_then_builds_sets_and_chain() {
    let batch = to_json(&ruleset(params()));
    let cmds = batch["nftables"].as_array().unwrap();
    let table = json!({"table": {"family": "inet", "name": "sandbox"}});
    let set = |name: &str, ty: Value| json!({"add": {"set": {"family": "inet", "table": "sandbox", "name": name, "type": ty}}});
    assert_eq!(
        cmds[..7],
        [
            json!({ "add": table }),
            json!({ "delete": table }),
            json!({ "add": table }),
            set("ifaces", json!("ifname")),
            set("src4", json!(["ifname", "ipv4_addr"])),
            set("src6", json!(["ifname", "ipv6_addr"])),
            json!({"add": {"chain": {"family": "inet", "table": "sandbox", "name": "prerouting",
                    "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}}),
        ]
    );
    assert_eq!(cmds.len(), 7 + 18);
}

fn rules() -> Vec<Value> {
    let batch = to_json(&ruleset(params()));
    batch["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|cmd| cmd["add"].get("rule"))
        .inspect(|r| {
            assert_eq!(
                (&r["table"], &r["chain"]),
                (&json!("sandbox"), &json!("prerouting"))
            )
        })
        .map(|r| r["expr"].clone())
        .collect()
}

fn is(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

#[test]
fn key_rules() {
    let rules = rules();
    assert_eq!(rules.len(), 18);
    assert_eq!(
        rules[0],
        json!([{"match": {"op": "!=", "left": meta("iifname"), "right": "@ifaces"}}, {"return": null}])
    );
    assert_eq!(
        rules[2],
        json!([
            is(meta("nfproto"), json!("ipv4")),
            {"match": {"op": "!=", "right": "@src4", "left": {"concat": [
                meta("iifname"), {"payload": {"protocol": "ip", "field": "saddr"}}]}}},
            {"drop": null},
        ])
    );
    assert_eq!(
        rules[4],
        json!([
            is(meta("l4proto"), json!("tcp")),
            is(json!({"socket": {"key": "mark"}}), json!(0x5ba00)),
            {"mangle": {"key": meta("mark"), "value": 0x5ba}},
            {"accept": null},
        ])
    );
    assert_eq!(
        rules[3][1]["match"]["left"]["concat"][1],
        json!({"payload": {"protocol": "ip6", "field": "saddr"}})
    );
    assert_eq!(
        rules[9],
        json!([is(json!({"payload": {"protocol": "udp", "field": "dport"}}), json!(443)), {"reject": null}])
    );
    assert_eq!(
        rules[10],
        json!([
            is(json!({"fib": {"result": "type", "flags": ["daddr"]}}), json!({"set": ["local", "broadcast", "multicast"]})),
            {"reject": null},
        ])
    );
    let prefix = |addr: &str, len: u32| json!({"prefix": {"addr": addr, "len": len}});
    let blocked4 = &rules[11][0]["match"];
    assert_eq!(
        blocked4["left"],
        json!({"payload": {"protocol": "ip", "field": "daddr"}})
    );
    for net in [
        prefix("127.0.0.0", 8),
        prefix("169.254.0.0", 16),
        prefix("10.233.0.0", 16),
    ] {
        assert!(
            blocked4["right"]["set"].as_array().unwrap().contains(&net),
            "{net}"
        );
    }
    let blocked6 = &rules[12][0]["match"];
    for net in [
        prefix("::1", 128),
        prefix("fe80::", 10),
        prefix("fd00:5ba:d::", 48),
    ] {
        assert!(
            blocked6["right"]["set"].as_array().unwrap().contains(&net),
            "{net}"
        );
    }
    assert!(!blocked6["right"]["set"]
        .as_array()
        .unwrap()
        .contains(&prefix("10.233.0.0", 16)));
    let to_daemon = |family: &str, addr: &str, port: u16| {
        [
            json!({"tproxy": {"family": family, "addr": addr, "port": port}}),
            json!({"mangle": {"key": meta("mark"), "value": 0x5ba}}),
            json!({"accept": null}),
        ]
    };
    let [tproxy, mark, accept] = to_daemon("ip6", "::1", 15002);
    assert_eq!(
        rules[14],
        json!([
            is(meta("nfproto"), json!("ipv6")),
            is(meta("l4proto"), json!("tcp")),
            is(
                json!({"payload": {"protocol": "tcp", "field": "dport"}}),
                json!(443)
            ),
            tproxy,
            mark,
            accept,
        ])
    );
    let [tproxy, mark, accept] = to_daemon("ip", "127.0.0.1", 15001);
    assert_eq!(
        rules[15],
        json!([
            is(meta("nfproto"), json!("ipv4")),
            is(meta("l4proto"), json!("tcp")),
            tproxy,
            mark,
            accept
        ])
    );
    let [tproxy, mark, accept] = to_daemon("ip", "127.0.0.1", 15053);
    assert_eq!(
        rules[5],
        json!([
            is(meta("nfproto"), json!("ipv4")),
            is(
                json!({"payload": {"protocol": "udp", "field": "dport"}}),
                json!(53)
            ),
            tproxy,
            mark,
            accept,
        ])
    );
    let [tproxy, mark, accept] = to_daemon("ip", "127.0.0.1", 15001);
    assert_eq!(
        rules[7],
        json!([
            is(meta("nfproto"), json!("ipv4")),
            is(meta("l4proto"), json!("tcp")),
            is(
                json!({"payload": {"protocol": "tcp", "field": "dport"}}),
                json!(53)
            ),
            tproxy,
            mark,
            accept,
        ])
    );
    assert_eq!(rules[17], json!([{"drop": null}]));
}

#[test]
fn parses_nft_listing() {
    // Trimmed from `nft -j list table inet sandbox` of nft 1.0.6.
    let listing: Nftables = serde_json::from_value(json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "sandbox", "handle": 1}},
            {"set": {"family": "inet", "name": "ifaces", "table": "sandbox", "type": "ifname",
                "handle": 2, "elem": ["sbx0", "sbx1"]}},
            {"set": {"family": "inet", "name": "src4", "table": "sandbox", "type": ["ifname", "ipv4_addr"],
                "handle": 3, "elem": [{"concat": ["sbx0", "10.233.0.2"]}]}},
            {"set": {"family": "inet", "name": "src6", "table": "sandbox", "type": ["ifname", "ipv6_addr"],
                "handle": 4}},
            {"chain": {"family": "inet", "table": "sandbox", "name": "prerouting", "handle": 1,
                "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "sandbox", "chain": "prerouting", "handle": 5,
                "expr": [{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}},
        ]}))
        .unwrap();
    let state = table_state(&listing).unwrap();
    assert_eq!(
        state.shape.0.len(),
        6,
        "table, 3 sets, chain, rule: {:?}",
        state.shape
    );
    assert_eq!(
        TableState {
            shape: TableShape::default(),
            ..state
        },
        TableState {
            exists: true,
            shape: TableShape::default(),
            ifaces: vec!["sbx0".into(), "sbx1".into()],
            src4: vec![("sbx0".into(), Ipv4Addr::new(10, 233, 0, 2))],
            src6: vec![],
        }
    );
}

/// The shape leaves out what changes with every install and sandbox (handles, elements) and keeps what
/// decides a packet's fate: a replaced rule or a changed chain policy differ, a missing rule too.
#[test]
fn the_shape_is_the_definition_without_handles_and_elements() {
    let listing = |handle: u32, elem: Value, rule: Value, policy: &str| -> Nftables<'static> {
        serde_json::from_value(json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "sandbox", "handle": handle}},
            {"set": {"family": "inet", "name": "ifaces", "table": "sandbox", "type": "ifname",
                "handle": handle + 1, "elem": elem}},
            {"chain": {"family": "inet", "table": "sandbox", "name": "prerouting", "handle": handle + 2,
                "type": "filter", "hook": "prerouting", "prio": -150, "policy": policy}},
            {"rule": {"family": "inet", "table": "sandbox", "chain": "prerouting", "handle": handle + 3,
                "expr": [rule]}},
        ]}))
        .unwrap()
    };
    let shape = |listing: Nftables<'static>| table_state(&listing).unwrap().shape;
    let drop = json!({"drop": null});
    let installed = shape(listing(1, json!([]), drop.clone(), "accept"));
    assert_eq!(
        shape(listing(40, json!(["sbx0", "sbx1"]), drop.clone(), "accept")),
        installed
    );
    assert_ne!(
        shape(listing(1, json!([]), json!({"accept": null}), "accept")),
        installed
    );
    assert_ne!(shape(listing(1, json!([]), drop, "drop")), installed);
    let mut flushed = listing(1, json!([]), json!({"drop": null}), "accept");
    flushed.objects.to_mut().pop();
    assert_ne!(shape(flushed), installed);
}

#[test]
fn root_table_lifecycle_in_throwaway_netns() {
    if !root_or_skip("nft::root_table_lifecycle_in_throwaway_netns") {
        return;
    }
    in_new_netns(|| async {
        assert_eq!(read_back().await.unwrap(), TableState::default());
        remove().await.unwrap();

        install(params()).await.unwrap();
        let installed = read_back().await.unwrap().shape;
        assert_eq!(
            installed.0.len(),
            1 + 3 + 1 + 18,
            "table, sets, chain, rules"
        );
        let (a, b) = (sbx3(), sbx4_v4_only());
        add_sandbox(&a).await.unwrap();
        add_sandbox(&b).await.unwrap();
        let mut state = read_back().await.unwrap();
        state.ifaces.sort();
        state.src4.sort();
        assert_eq!(
            state,
            TableState {
                exists: true,
                shape: installed.clone(),
                ifaces: vec!["sbx3".into(), "sbx4".into()],
                src4: vec![("sbx3".into(), a.v4), ("sbx4".into(), b.v4)],
                src6: vec![("sbx3".into(), a.v6.unwrap())],
            }
        );

        remove_sandboxes(std::slice::from_ref(&a)).await.unwrap();
        remove_sandboxes(std::slice::from_ref(&a)).await.unwrap();
        let state = read_back().await.unwrap();
        assert_eq!(
            (state.ifaces, state.src4, state.src6),
            (vec!["sbx4".into()], vec![("sbx4".into(), b.v4)], vec![])
        );

        // A restarted daemon's install replaces the leftover table with an empty one.
        install(params()).await.unwrap();
        assert_eq!(
            read_back().await.unwrap(),
            TableState {
                exists: true,
                shape: installed.clone(),
                ..TableState::default()
            }
        );

        // What the guard puts back: the table and the live sandboxes' elements, in one batch.
        restore(params(), &[a.clone(), b.clone()]).await.unwrap();
        let mut state = read_back().await.unwrap();
        state.ifaces.sort();
        assert_eq!(
            (state.shape, state.ifaces, state.src6),
            (
                installed.clone(),
                vec!["sbx3".into(), "sbx4".into()],
                vec![("sbx3".into(), a.v6.unwrap())]
            )
        );
        install(params()).await.unwrap();

        let mut took: Vec<Duration> = Vec::new();
        for _ in 0..31 {
            let start = Instant::now();
            add_sandbox(&a).await.unwrap();
            took.push(start.elapsed());
            remove_sandboxes(std::slice::from_ref(&a)).await.unwrap();
        }
        took.sort();
        eprintln!(
            "add_sandbox: median {:?}, min {:?}, max {:?}",
            took[15], took[0], took[30]
        );

        remove().await.unwrap();
        assert_eq!(read_back().await.unwrap(), TableState::default());
    });
}
