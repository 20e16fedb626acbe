//! The daemon's one nftables table, `inet sandbox`: the pure builders of its JSON batches (the
//! ruleset, and the set elements of one sandbox), applying them through the `nftables` crate's
//! helper (the `nft` binary, one atomic batch per call), and reading the table back.
//!
//! Sandboxes are set elements, never rules: adding one is a single `nft` run whose cost does not
//! grow with the number of sandboxes.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem, Socket, SocketAttr,
};
use nftables::helper::{self, NftablesError, DEFAULT_NFT};
use nftables::schema::{Chain, Element, NfListObject, NfObject, Nftables, Rule, Set, SetType};
use nftables::schema::{NfCmd, SetTypeValue, Table};
use nftables::stmt::{Mangle, Match, Operator, Statement, TProxy};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

const TABLE: &str = "sandbox";
const CHAIN: &str = "prerouting";
const IFACES: &str = "ifaces";
const SRC4: &str = "src4";
const SRC6: &str = "src6";
/// nft's `priority mangle`.
const PRIORITY_MANGLE: i32 = -150;
const LIST_TABLE: [&str; 4] = ["list", "table", "inet", TABLE];

/// Where the daemon's listeners are and which mark routes TPROXYed packets to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetParams {
    pub mark: u32,
    /// The mark (SO_MARK) the daemon sets on every connection it accepted from a sandbox.
    pub socket_mark: u32,
    pub tcp_port: u16,
    pub tls_port: u16,
    pub dns_port: u16,
    /// The sandbox address pools: sandboxes may not reach each other.
    pub networks: Vec<IpNet>,
}

/// The set elements of one sandbox: its host-side interface and the addresses it may send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxElements {
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

/// What the kernel holds: whether the table exists, and the elements of each set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    pub exists: bool,
    /// Rules in the table's chain: fewer than `ruleset` makes means something flushed them.
    pub rules: usize,
    pub ifaces: Vec<String>,
    pub src4: Vec<(String, Ipv4Addr)>,
    pub src6: Vec<(String, Ipv6Addr)>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft: cannot {action}: {source}{}", nft_output(.source))]
    Nft {
        action: String,
        source: NftablesError,
    },
    #[error("nft: unexpected element {element} in set {set} of table inet {TABLE}")]
    UnexpectedElement { set: String, element: String },
}

/// `NftablesError`'s own message leaves out what `nft` printed, which is the useful part. (Only
/// listings capture it: the crate's apply helpers leave nft's stderr on the daemon's.)
fn nft_output(err: &NftablesError) -> String {
    match err {
        NftablesError::NftFailed { stdout, stderr, .. } => [stderr, stdout]
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| format!(": {s}"))
            .collect(),
        _ => String::new(),
    }
}

fn nft_error(action: impl Into<String>) -> impl FnOnce(NftablesError) -> NftError {
    move |source| NftError::Nft {
        action: action.into(),
        source,
    }
}

/// The IPv4 and IPv6 halves of the rules that come in pairs.
struct Family {
    nfproto: &'static str,
    header: &'static str,
    src_set: &'static str,
    loopback: &'static str,
}

const V4: Family = Family {
    nfproto: "ipv4",
    header: "ip",
    src_set: "@src4",
    loopback: "127.0.0.1",
};
const V6: Family = Family {
    nfproto: "ipv6",
    header: "ip6",
    src_set: "@src6",
    loopback: "::1",
};

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    })
}

fn set(name: &'static str, set_type: SetTypeValue<'static>) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        set_type,
        ..Set::default()
    }))
}

fn rule(expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: CHAIN.into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: None,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn cmp(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn is(left: Expression<'static>, right: &'static str) -> Statement<'static> {
    cmp(left, Operator::EQ, Expression::String(right.into()))
}

fn port_is(protocol: &'static str, port: u16) -> Statement<'static> {
    cmp(
        payload(protocol, "dport"),
        Operator::EQ,
        Expression::Number(port.into()),
    )
}

/// `tproxy ip|ip6 to <loopback>:<port> meta mark set <mark> accept`
fn to_daemon(family: &Family, port: u16, mark: u32) -> [Statement<'static>; 3] {
    [
        Statement::TProxy(TProxy {
            family: Some(family.header.into()),
            port,
            addr: Some(family.loopback.into()),
        }),
        Statement::Mangle(Mangle {
            key: meta(MetaKey::Mark),
            value: Expression::Number(mark),
        }),
        Statement::Accept(None),
    ]
}

/// Loopback, unspecified, link-local (cloud metadata lives there), multicast, other well-known metadata
/// addresses, and the sandbox pools of this family.
fn blocked_destinations(family: &Family, networks: &[IpNet]) -> Vec<IpNet> {
    let fixed: &[&str] = if family.header == "ip" {
        &[
            "0.0.0.0/8",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "100.100.100.200/32",
            "224.0.0.0/4",
        ]
    } else {
        &[
            "::/128",
            "::1/128",
            "fe80::/10",
            "fd00:ec2::254/128",
            "ff00::/8",
            "::ffff:0.0.0.0/96",
        ]
    };
    let mut blocked: Vec<IpNet> = fixed.iter().filter_map(|net| net.parse().ok()).collect();
    blocked.extend(
        networks
            .iter()
            .filter(|net| matches!(net, IpNet::V4(_)) == (family.header == "ip"))
            .map(IpNet::trunc),
    );
    blocked
}

/// How many rules `ruleset` puts in the chain.
pub fn rule_count(params: RulesetParams) -> usize {
    ruleset(params)
        .objects
        .iter()
        .filter(|o| matches!(o, NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(_)))))
        .count()
}

/// One atomic batch that (re)creates the table: the `add` makes the `delete` succeed when no
/// table exists, and the `delete` throws away whatever a killed daemon left in it.
pub fn ruleset(params: RulesetParams) -> Nftables<'static> {
    let RulesetParams {
        mark,
        socket_mark,
        tcp_port,
        tls_port,
        dns_port,
        networks,
    } = params;
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    batch.add(table());
    batch.add(set(IFACES, SetTypeValue::Single(SetType::Ifname)));
    for (name, addr) in [(SRC4, SetType::Ipv4Addr), (SRC6, SetType::Ipv6Addr)] {
        let key = SetTypeValue::Concatenated(vec![SetType::Ifname, addr].into());
        batch.add(set(name, key));
    }
    batch.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Prerouting),
        prio: Some(PRIORITY_MANGLE),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));

    let mut rules = vec![
        vec![
            cmp(
                meta(MetaKey::Iifname),
                Operator::NEQ,
                Expression::String("@ifaces".into()),
            ),
            Statement::Return(None),
        ],
        // Neighbour discovery on the veth may use link-local sources, which the anti-spoofing
        // rule below would drop.
        vec![
            cmp(
                payload("icmpv6", "type"),
                Operator::EQ,
                Expression::Named(NamedExpression::Set(vec![
                    SetItem::Element(Expression::String("nd-neighbor-solicit".into())),
                    SetItem::Element(Expression::String("nd-neighbor-advert".into())),
                ])),
            ),
            Statement::Accept(None),
        ],
    ];
    for family in [&V4, &V6] {
        rules.push(vec![
            is(meta(MetaKey::Nfproto), family.nfproto),
            cmp(
                Expression::Named(NamedExpression::Concat(vec![
                    meta(MetaKey::Iifname),
                    payload(family.header, "saddr"),
                ])),
                Operator::NEQ,
                Expression::String(family.src_set.into()),
            ),
            Statement::Drop(None),
        ]);
    }
    // The rest of a connection the daemon accepted goes straight to its socket: its first packet took the
    // whole path below, and only sockets the daemon accepted carry this mark.
    rules.push(vec![
        is(meta(MetaKey::L4proto), "tcp"),
        cmp(
            Expression::Named(NamedExpression::Socket(Socket {
                key: Cow::Owned(SocketAttr::Mark),
            })),
            Operator::EQ,
            Expression::Number(socket_mark),
        ),
        Statement::Mangle(Mangle {
            key: meta(MetaKey::Mark),
            value: Expression::Number(mark),
        }),
        Statement::Accept(None),
    ]);
    // DNS first: the relay's address lies in the sandbox network, which is refused below.
    for family in [&V4, &V6] {
        let mut r = vec![
            is(meta(MetaKey::Nfproto), family.nfproto),
            port_is("udp", 53),
        ];
        r.extend(to_daemon(family, dns_port, mark));
        rules.push(r);
    }
    // DNS over TCP, which stub resolvers use for answers too large for a datagram, goes to the TCP
    // relay, which answers it itself (`dns::serve_tcp`).
    for family in [&V4, &V6] {
        let mut r = vec![
            is(meta(MetaKey::Nfproto), family.nfproto),
            is(meta(MetaKey::L4proto), "tcp"),
            port_is("tcp", 53),
        ];
        r.extend(to_daemon(family, tcp_port, mark));
        rules.push(r);
    }
    // QUIC: an immediate error makes clients fall back to TCP instead of waiting for a timeout.
    rules.push(vec![port_is("udp", 443), Statement::Reject(None)]);
    // Destinations no sandbox may reach get an immediate "connection refused": the host's own
    // addresses, loopback, link-local and metadata addresses, and other sandboxes.
    rules.push(vec![
        cmp(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: [FibFlag::Daddr].into_iter().collect(),
            })),
            Operator::EQ,
            Expression::Named(NamedExpression::Set(
                ["local", "broadcast", "multicast"]
                    .into_iter()
                    .map(|kind| SetItem::Element(Expression::String(kind.into())))
                    .collect(),
            )),
        ),
        Statement::Reject(None),
    ]);
    for family in [&V4, &V6] {
        let blocked: Vec<SetItem<'static>> = blocked_destinations(family, &networks)
            .into_iter()
            .map(|net| {
                SetItem::Element(Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(Expression::String(net.addr().to_string().into())),
                    len: u32::from(net.prefix_len()),
                })))
            })
            .collect();
        rules.push(vec![
            cmp(
                payload(family.header, "daddr"),
                Operator::EQ,
                Expression::Named(NamedExpression::Set(blocked)),
            ),
            Statement::Reject(None),
        ]);
    }
    let tcp = |family: &Family| {
        vec![
            is(meta(MetaKey::Nfproto), family.nfproto),
            is(meta(MetaKey::L4proto), "tcp"),
        ]
    };
    for family in [&V4, &V6] {
        let mut r = tcp(family);
        r.push(port_is("tcp", 443));
        r.extend(to_daemon(family, tls_port, mark));
        rules.push(r);
    }
    for family in [&V4, &V6] {
        let mut r = tcp(family);
        r.extend(to_daemon(family, tcp_port, mark));
        rules.push(r);
    }
    rules.push(vec![Statement::Drop(None)]);

    for r in rules {
        batch.add(rule(r));
    }
    batch.to_nftables()
}

/// Installs the table, atomically replacing any table of the same name.
pub async fn install(params: RulesetParams) -> Result<(), NftError> {
    helper::apply_ruleset_async(&ruleset(params))
        .await
        .map_err(nft_error(format!("install table inet {TABLE}")))
}

/// Deletes the table; no error when there is none (nft 1.0.6 has no `destroy`, hence add+delete).
pub async fn remove() -> Result<(), NftError> {
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    helper::apply_ruleset_async(&batch.to_nftables())
        .await
        .map_err(nft_error(format!("remove table inet {TABLE}")))
}

fn element(set: &'static str, elem: Expression<'static>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: set.into(),
        elem: vec![elem].into(),
    })
}

fn elements(e: &SandboxElements) -> Vec<NfListObject<'static>> {
    let ifname = || Expression::String(e.ifname.clone().into());
    let with_addr = |addr: String| {
        Expression::Named(NamedExpression::Concat(vec![
            ifname(),
            Expression::String(addr.into()),
        ]))
    };
    let mut objects = vec![
        element(IFACES, ifname()),
        element(SRC4, with_addr(e.v4.to_string())),
    ];
    if let Some(v6) = e.v6 {
        objects.push(element(SRC6, with_addr(v6.to_string())));
    }
    objects
}

/// The batch that admits one sandbox's traffic.
pub fn add_elements(e: &SandboxElements) -> Nftables<'static> {
    let mut batch = Batch::new();
    for object in elements(e) {
        batch.add(object);
    }
    batch.to_nftables()
}

/// The batch that removes the elements of the given sandboxes. Each is added first so that the batch
/// also succeeds when some are already gone (teardown after a partial failure).
pub fn delete_elements(all: &[SandboxElements]) -> Nftables<'static> {
    let objects: Vec<_> = all.iter().flat_map(elements).collect();
    let mut batch = Batch::new();
    for object in &objects {
        batch.add(object.clone());
    }
    for object in objects {
        batch.delete(object);
    }
    batch.to_nftables()
}

pub async fn add_sandbox(e: &SandboxElements) -> Result<(), NftError> {
    helper::apply_ruleset_async(&add_elements(e))
        .await
        .map_err(nft_error(format!("add set elements of {}", e.ifname)))
}

/// Removes the elements of several sandboxes in one nft run: ended sandboxes are reaped in batches.
pub async fn remove_sandboxes(all: &[SandboxElements]) -> Result<(), NftError> {
    if all.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = all.iter().map(|e| e.ifname.as_str()).collect();
    helper::apply_ruleset_async(&delete_elements(all))
        .await
        .map_err(nft_error(format!(
            "delete set elements of {}",
            names.join(", ")
        )))
}

/// Reads the table from the kernel (for the daemon's self-check and for leak checks).
pub async fn read_back() -> Result<TableState, NftError> {
    let listing = match helper::get_current_ruleset_with_args_async(DEFAULT_NFT, &LIST_TABLE).await
    {
        Ok(listing) => listing,
        // Tell "no such table" from other failures without parsing nft's message.
        Err(err @ NftablesError::NftFailed { .. }) => {
            let tables = helper::get_current_ruleset_with_args_async(
                DEFAULT_NFT,
                &["list", "tables", "inet"],
            )
            .await
            .map_err(nft_error("list tables inet"))?;
            if has_table(&tables) {
                return Err(nft_error(format!("list table inet {TABLE}"))(err));
            }
            return Ok(TableState::default());
        }
        Err(err) => return Err(nft_error(format!("list table inet {TABLE}"))(err)),
    };
    table_state(&listing)
}

fn has_table(listing: &Nftables) -> bool {
    listing.objects.iter().any(|o| {
        matches!(o, NfObject::ListObject(NfListObject::Table(t))
            if t.family == NfFamily::INet && t.name == TABLE)
    })
}

fn table_state(listing: &Nftables) -> Result<TableState, NftError> {
    let mut state = TableState {
        exists: has_table(listing),
        ..TableState::default()
    };
    state.rules = listing
        .objects
        .iter()
        .filter(|o| {
            matches!(o, NfObject::ListObject(NfListObject::Rule(rule))
                if rule.family == NfFamily::INet && rule.table == TABLE && rule.chain == CHAIN)
        })
        .count();
    for object in listing.objects.iter() {
        let NfObject::ListObject(NfListObject::Set(set)) = object else {
            continue;
        };
        if set.family != NfFamily::INet || set.table != TABLE {
            continue;
        }
        for elem in set.elem.iter().flat_map(|e| e.iter()) {
            let unexpected = || NftError::UnexpectedElement {
                set: set.name.to_string(),
                element: format!("{elem:?}"),
            };
            match (&*set.name, elem) {
                (IFACES, Expression::String(name)) => state.ifaces.push(name.to_string()),
                (SRC4, Expression::Named(NamedExpression::Concat(parts))) => {
                    let (ifname, addr) = concat_pair(parts).ok_or_else(unexpected)?;
                    state
                        .src4
                        .push((ifname, addr.parse().map_err(|_| unexpected())?));
                }
                (SRC6, Expression::Named(NamedExpression::Concat(parts))) => {
                    let (ifname, addr) = concat_pair(parts).ok_or_else(unexpected)?;
                    state
                        .src6
                        .push((ifname, addr.parse().map_err(|_| unexpected())?));
                }
                _ => return Err(unexpected()),
            }
        }
    }
    Ok(state)
}

fn concat_pair<'e>(parts: &'e [Expression]) -> Option<(String, &'e str)> {
    match parts {
        [Expression::String(ifname), Expression::String(addr)] => Some((ifname.to_string(), addr)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            table_state(&listing).unwrap(),
            TableState {
                exists: true,
                rules: 1,
                ifaces: vec!["sbx0".into(), "sbx1".into()],
                src4: vec![("sbx0".into(), Ipv4Addr::new(10, 233, 0, 2))],
                src6: vec![],
            }
        );
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
                    rules: rule_count(params()),
                    ifaces: vec!["sbx3".into(), "sbx4".into()],
                    src4: vec![("sbx3".into(), a.v4), ("sbx4".into(), b.v4)],
                    src6: vec![("sbx3".into(), a.v6.unwrap())],
                }
            );
            assert_eq!(rule_count(params()), 18);

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
                    rules: 18,
                    ..TableState::default()
                }
            );

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
}
