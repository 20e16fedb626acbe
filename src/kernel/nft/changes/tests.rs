use super::*;

fn message(subsystem: u16, kind: u16) -> Vec<u8> {
    let mut m = (NLMSG_HEADER as u32).to_ne_bytes().to_vec();
    m.extend_from_slice(&((subsystem << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&[0; 10]);
    m
}

#[test]
fn only_what_may_take_something_away_counts() {
    let added = [message(10, NFT_MSG_NEWSETELEM), message(10, NFT_MSG_NEWGEN)].concat();
    assert!(!may_take_away(&added));
    // A deleted rule (8) at the end of a batch, a deleted element (14), a replaced rule (6).
    for kind in [8, 14, 6] {
        assert!(may_take_away(&[added.clone(), message(10, kind)].concat()));
    }
    // Another netfilter subsystem (conntrack) and a short tail are not nf_tables changes.
    assert!(!may_take_away(&[message(1, 8), vec![1, 2, 3]].concat()));
    assert!(!may_take_away(&[]));
}
