//! The test resolver in U, on :53 over UDP and TCP: A and AAAA for the names it knows ([`DNS_NAME`] at
//! first, more with [`TestNet::add_dns_name`]), NODATA for their other types, NXDOMAIN for any other
//! name. hickory-proto reads and writes its messages, so the daemon's DNS relay is checked against a
//! codec it does not share. Every message that arrives is recorded raw, and each question answered as
//! "name TYPE" (see [`Seen`]).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use super::net::{in_netns, TestNet};
use super::servers::{tcp_listen, udp_bind, wildcards, Seen, Servers};

pub const DNS_NAME: &str = "upstream.test";

/// Names the test resolver knows, with their A and AAAA answers.
pub type DnsNames = Arc<Mutex<Vec<(String, Ipv4Addr, Ipv6Addr)>>>;

/// The response to `query` and its question as "name TYPE" (the name in lower case, the type as a
/// number). None, and so no response at all, for what a stub resolver never sends: a message that does
/// not parse, a response, or a query with other than one question.
fn answer(query: &[u8], names: &DnsNames) -> Option<(String, Vec<u8>)> {
    let query = Message::from_vec(query).ok()?;
    let [question] = query.queries.as_slice() else {
        return None;
    };
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let name = question
        .name()
        .iter()
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".");
    let addresses = names
        .lock()
        .unwrap()
        .iter()
        .find(|(known, _, _)| *known == name)
        .map(|&(_, v4, v6)| (v4, v6));
    let mut response = Message::response(query.metadata.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.response_code = match addresses {
        Some(_) => ResponseCode::NoError,
        None => ResponseCode::NXDomain,
    };
    response.add_query(question.clone());
    let rdata = match (addresses, question.query_type()) {
        (Some((v4, _)), RecordType::A) => Some(RData::A(A(v4))),
        (Some((_, v6)), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
        _ => None,
    };
    if let Some(rdata) = rdata {
        response.add_answer(Record::from_rdata(question.name().clone(), 60, rdata));
    }
    let asked = format!("{name} {}", u16::from(question.query_type()));
    Some((asked, response.to_vec().expect("encode a DNS response")))
}

impl Servers {
    /// The resolver on :53 of netns `ns`, over UDP and TCP.
    pub(super) fn resolver(&mut self, ns: &str, seen: &Arc<Seen>, names: &DnsNames) {
        let (udp, tcp) = in_netns(ns, || {
            (wildcards(53).map(udp_bind), wildcards(53).map(tcp_listen))
        });
        for s in udp {
            let (seen, names) = (seen.clone(), names.clone());
            self.udp(s, move |sock, data, peer| {
                seen.dns_raw.lock().unwrap().push(data.to_vec());
                if let Some((question, response)) = answer(data, &names) {
                    seen.dns.lock().unwrap().push(question);
                    let _ = sock.send_to(&response, peer);
                }
            });
        }
        for l in tcp {
            let (seen, names) = (seen.clone(), names.clone());
            self.tcp(
                l,
                Arc::new(move |mut s: TcpStream| {
                    // RFC 7766 framing: a two-byte length before each message.
                    let mut len = [0u8; 2];
                    while s.read_exact(&mut len).is_ok() {
                        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut query).is_err() {
                            return;
                        }
                        seen.dns_raw.lock().unwrap().push(query.clone());
                        let Some((question, response)) = answer(&query, &names) else {
                            return;
                        };
                        seen.dns_tcp.lock().unwrap().push(question);
                        let mut framed = (response.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&response);
                        if s.write_all(&framed).is_err() {
                            return;
                        }
                    }
                }),
            );
        }
    }
}

impl TestNet {
    /// Makes the test resolver answer `name` with these addresses.
    pub fn add_dns_name(&self, name: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
        self.dns_names
            .lock()
            .unwrap()
            .push((name.to_ascii_lowercase(), v4, v6));
    }
}
