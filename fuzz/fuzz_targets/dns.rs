//! Fuzzes the DNS relay's readers of untrusted messages: a sandbox's queries (`query_name`, `servfail`)
//! and the resolvers' answers (`answer_addresses`). None may panic; an answer yields no more addresses
//! than it says it has records, and a SERVFAIL keeps the query's id and question.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox::proxy::dns::{answer_addresses, query_name, servfail};

fuzz_target!(|data: &[u8]| {
    let addresses = answer_addresses(data);
    if !addresses.is_empty() {
        let records = usize::from(u16::from_be_bytes([data[6], data[7]]));
        assert!(
            addresses.len() <= records,
            "{} addresses from {records} records",
            addresses.len()
        );
    }
    let name = query_name(data);
    if let Some(answer) = servfail(data) {
        assert_eq!(answer[..2], data[..2]);
        assert_eq!(query_name(&answer), name);
    }
});
