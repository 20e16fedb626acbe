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

/// What the kernel holds: whether the table exists, its definition, and the elements of each set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    pub exists: bool,
    pub shape: TableShape,
    pub ifaces: Vec<String>,
    pub src4: Vec<(String, Ipv4Addr)>,
    pub src6: Vec<(String, Ipv6Addr)>,
}

/// The table's definition as the kernel lists it: the table, its chains (hook, priority, policy), sets
/// (types, flags) and rules in order, without handles and set elements. The guard compares it whole with
/// the one listed after the daemon installed the table, so a rule replaced by another, a chain's policy
/// changed or a chain added is noticed as surely as a flushed table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableShape(Vec<NfListObject<'static>>);

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
    // In this order: the first rule that decides a packet's fate is the one that applies.
    let rules = [
        from_sandboxes_only(),
        accepted_connections(mark, socket_mark),
        dns_to_the_relay(dns_port, tcp_port, mark),
        refused_destinations(&networks),
        to_the_listeners(tls_port, tcp_port, mark),
        vec![vec![Statement::Drop(None)]],
    ];
    for r in rules.into_iter().flatten() {
        batch.add(rule(r));
    }
    batch.to_nftables()
}

type Statements = Vec<Statement<'static>>;

/// Packets from anything but a sandbox's veth are not the table's business; a sandbox's packets must
/// come from its own addresses.
fn from_sandboxes_only() -> Vec<Statements> {
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
    rules
}

/// The rest of a connection the daemon accepted goes straight to its socket: its first packet took the
/// whole path below, and only sockets the daemon accepted carry `socket_mark`.
fn accepted_connections(mark: u32, socket_mark: u32) -> Vec<Statements> {
    vec![vec![
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
    ]]
}

/// DNS goes to the relay, before the refusals: the relay's address lies in the sandbox network, which is
/// refused below. DNS over TCP, which stub resolvers use for answers too large for a datagram, goes to
/// the TCP relay, which answers it itself (`dns::serve_tcp`).
fn dns_to_the_relay(dns_port: u16, tcp_port: u16, mark: u32) -> Vec<Statements> {
    let mut rules = Vec::new();
    for family in [&V4, &V6] {
        let mut r = vec![
            is(meta(MetaKey::Nfproto), family.nfproto),
            port_is("udp", 53),
        ];
        r.extend(to_daemon(family, dns_port, mark));
        rules.push(r);
    }
    for family in [&V4, &V6] {
        let mut r = vec![
            is(meta(MetaKey::Nfproto), family.nfproto),
            is(meta(MetaKey::L4proto), "tcp"),
            port_is("tcp", 53),
        ];
        r.extend(to_daemon(family, tcp_port, mark));
        rules.push(r);
    }
    rules
}

/// Refused at once: QUIC (an immediate error makes clients fall back to TCP instead of waiting for a
/// timeout), and destinations no sandbox may reach, with "connection refused": the host's own addresses,
/// loopback, link-local and metadata addresses, and other sandboxes.
fn refused_destinations(networks: &[IpNet]) -> Vec<Statements> {
    let mut rules = vec![
        vec![port_is("udp", 443), Statement::Reject(None)],
        vec![
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
        ],
    ];
    for family in [&V4, &V6] {
        let blocked: Vec<SetItem<'static>> = blocked_destinations(family, networks)
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
    rules
}

/// Every other TCP connection goes to the daemon: port 443 to the TLS router, the rest to the TCP relay.
fn to_the_listeners(tls_port: u16, tcp_port: u16, mark: u32) -> Vec<Statements> {
    let tcp = |family: &Family| {
        vec![
            is(meta(MetaKey::Nfproto), family.nfproto),
            is(meta(MetaKey::L4proto), "tcp"),
        ]
    };
    let mut rules = Vec::new();
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
    rules
}

/// Installs the table, atomically replacing any table of the same name.
pub async fn install(params: RulesetParams) -> Result<(), NftError> {
    restore(params, &[]).await
}

/// Installs the table with the elements of the live sandboxes, in one atomic batch: no moment passes in
/// which a live sandbox's packets find a table without its elements (and so pass it uninspected).
pub async fn restore(params: RulesetParams, live: &[SandboxElements]) -> Result<(), NftError> {
    helper::apply_ruleset_async(&ruleset_with(params, live))
        .await
        .map_err(nft_error(format!("install table inet {TABLE}")))
}

/// `ruleset` followed by the elements of `live`.
pub fn ruleset_with(params: RulesetParams, live: &[SandboxElements]) -> Nftables<'static> {
    let mut objects = ruleset(params).objects.into_owned();
    objects.extend(
        live.iter()
            .flat_map(elements)
            .map(|element| NfObject::CmdObject(NfCmd::Add(element))),
    );
    Nftables {
        objects: objects.into(),
    }
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

fn table_state(listing: &Nftables<'static>) -> Result<TableState, NftError> {
    let mut state = TableState {
        exists: has_table(listing),
        ..TableState::default()
    };
    state.shape = shape(listing);
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

fn shape(listing: &Nftables<'static>) -> TableShape {
    let definition = listing.objects.iter().filter_map(|object| {
        let NfObject::ListObject(object) = object else {
            return None;
        };
        let mut object = object.clone();
        match &mut object {
            NfListObject::MetainfoObject(_) => return None,
            NfListObject::Table(table) => table.handle = None,
            NfListObject::Chain(chain) => chain.handle = None,
            NfListObject::Rule(rule) => rule.handle = None,
            NfListObject::Set(set) => {
                set.handle = None;
                set.elem = None;
            }
            NfListObject::Map(map) => {
                map.handle = None;
                map.elem = None;
            }
            // Anything else in the table is no part of the ruleset: it stays, so that it differs.
            _ => {}
        }
        Some(object)
    });
    TableShape(definition.collect())
}

fn concat_pair<'e>(parts: &'e [Expression]) -> Option<(String, &'e str)> {
    match parts {
        [Expression::String(ifname), Expression::String(addr)] => Some((ifname.to_string(), addr)),
        _ => None,
    }
}

mod changes;
pub use changes::Changes;

#[cfg(test)]
mod tests;
