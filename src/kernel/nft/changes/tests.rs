use super::*;

fn message(subsystem: u16, kind: u16) -> Vec<u8> {
    let mut m = (NLMSG_HEADER as u32).to_ne_bytes().to_vec();
    m.extend_from_slice(&((subsystem << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&[0; 10]);
    m
}

#[test]
fn only_changes_of_tables_chains_rules_and_sets_count() {
    let added = [
        message(10, NFT_MSG_NEWSETELEM),
        message(10, NFT_MSG_DELSETELEM),
        message(10, NFT_MSG_NEWGEN),
    ]
    .concat();
    assert!(!table_changed(&added));
    // A deleted rule (8) at the end of a batch, a replaced rule (6), a deleted chain (5).
    for kind in [8, 6, 5] {
        assert!(table_changed(&[added.clone(), message(10, kind)].concat()));
    }
    // Another netfilter subsystem (conntrack) and a short tail are not nf_tables changes.
    assert!(!table_changed(&[message(1, 8), vec![1, 2, 3]].concat()));
    assert!(!table_changed(&[]));
}
