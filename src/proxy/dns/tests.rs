use super::*;
use std::net::Ipv6Addr;

fn query(name: &str) -> Vec<u8> {
    let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]); // EDNS OPT
    packet
}

#[test]
fn query_names_are_read_and_malformed_queries_refused() {
    assert_eq!(
        query_name(&query("api.example.com")).as_deref(),
        Some("api.example.com")
    );
    assert_eq!(query_name(&[0; 5]), None);
    let mut truncated = query("example.com");
    truncated.truncate(16);
    assert_eq!(query_name(&truncated), None);
    let mut pointer = query("a.b");
    pointer[12] = 0xc0;
    assert_eq!(query_name(&pointer), None);
    let answer = formerr(&pointer);
    assert_eq!(&answer[..2], &[0x12, 0x34]);
    assert_eq!(answer[2] & 0x80, 0x80);
    assert_eq!(answer[3] & 0x0f, FORMERR);
    assert_eq!(&answer[4..], &[0; 8]);
    assert!(formerr(&[0; 5]).is_empty());
}

/// An answer to `query(name)`: its records as (owner, type, data); an owner of None points at the
/// question's name (compression), as resolvers write it.
fn answer(name: &str, records: &[(Option<&str>, u16, Vec<u8>)]) -> Vec<u8> {
    let mut packet = query(name);
    packet.truncate(packet.len() - 11); // no EDNS in this answer
    packet[2] = 0x81;
    packet[3] = 0x80;
    packet[7] = records.len() as u8;
    packet[11] = 0;
    for (owner, kind, data) in records {
        match owner {
            Some(owner) => {
                for label in owner.split('.') {
                    packet.push(label.len() as u8);
                    packet.extend_from_slice(label.as_bytes());
                }
                packet.push(0);
            }
            None => packet.extend_from_slice(&[0xc0, 12]),
        }
        packet.extend_from_slice(&kind.to_be_bytes());
        packet.extend_from_slice(&[0, 1, 0, 0, 0x0e, 0x10]);
        packet.extend_from_slice(&(data.len() as u16).to_be_bytes());
        packet.extend_from_slice(data);
    }
    packet
}

#[test]
fn answer_addresses_are_read_through_cname_chains_and_malformed_records_stop_the_reading() {
    let cdn = b"\x03cdn\x07example\x03net\x00".to_vec();
    let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let full = answer(
        "api.example.com",
        &[
            (None, 5, cdn),
            (Some("cdn.example.net"), 1, vec![192, 0, 2, 7]),
            (Some("cdn.example.net"), 16, b"\x04text".to_vec()),
            (Some("cdn.example.net"), 28, v6.octets().to_vec()),
            (Some("cdn.example.net"), 1, vec![192, 0, 2]),
        ],
    );
    assert_eq!(
        answer_addresses(&full),
        vec![IpAddr::from([192, 0, 2, 7]), IpAddr::from(v6)],
        "CNAME and TXT skipped, the three-byte A ignored"
    );
    let mut cut = full.clone();
    cut.truncate(full.len() - 40);
    assert_eq!(
        answer_addresses(&cut),
        vec![IpAddr::from([192, 0, 2, 7])],
        "a record cut short ends the reading"
    );
    let mut failed = full.clone();
    failed[3] = 0x83; // NXDOMAIN
    assert!(answer_addresses(&failed).is_empty());
    let mut not_an_answer = full.clone();
    not_an_answer[2] = 0x01;
    assert!(answer_addresses(&not_an_answer).is_empty());
    let mut loop_pointer = answer("a.b", &[(None, 1, vec![10, 0, 0, 1])]);
    let at = loop_pointer.len() - 16;
    loop_pointer[at] = 0x80; // neither a label nor a pointer
    assert!(answer_addresses(&loop_pointer).is_empty());
    assert!(answer_addresses(&query("a.b")).is_empty());
    assert!(answer_addresses(&[0xff; 3]).is_empty());
}

#[test]
fn servfail_keeps_id_and_question_and_drops_the_rest() {
    let q = query("example.com");
    let answer = servfail(&q).unwrap();
    assert_eq!(&answer[..2], &[0x12, 0x34]);
    assert_eq!(answer[2] & 0x80, 0x80);
    assert_eq!(answer[3] & 0x0f, 2);
    assert_eq!(&answer[6..12], &[0; 6]);
    assert_eq!(query_name(&answer).as_deref(), Some("example.com"));
    assert_eq!(answer.len(), 12 + 13 + 4);
}
