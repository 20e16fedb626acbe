//! Fuzzes `sandbox::proxy::http2::hpack`: header blocks decoded in sequence on one `Decoder`, so that the
//! dynamic table carries from block to block as on a connection. Nothing may panic, and the fields of every
//! block that decodes, written again with `encode_field`, must read back the same from a fresh decoder
//! (whose table they must not need). A second decoder reads the same blocks asking only for `:status` (as the relay
//! reads responses): it must find the same `:status` fields, its table kept in step by the values it skips.
//!
//! Input: a byte giving the table size ceiling in units of 64 bytes, then blocks, each a length byte and
//! that many bytes (the last may be short). A length byte of 255 instead sets a new ceiling from the byte
//! after it, as a SETTINGS_HEADER_TABLE_SIZE taking effect between blocks would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox::proxy::http2::hpack::{encode_field, Decoder};

const NEW_CEILING: u8 = 255;

fuzz_target!(|data: &[u8]| {
    let Some((&ceiling, mut rest)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(usize::from(ceiling) * 64);
    let mut status_reader = Decoder::new(usize::from(ceiling) * 64);
    while let Some((&len, after)) = rest.split_first() {
        if len == NEW_CEILING {
            let Some((&ceiling, after)) = after.split_first() else {
                return;
            };
            decoder.set_max_table_size(usize::from(ceiling) * 64);
            status_reader.set_max_table_size(usize::from(ceiling) * 64);
            rest = after;
            continue;
        }
        let (block, after) = after.split_at(usize::from(len).min(after.len()));
        rest = after;
        let mut fields = Vec::new();
        if decoder
            .decode(block, |name, value| {
                fields.push((name.to_vec(), value.to_vec()))
            })
            .is_err()
        {
            // The relay ends the connection: the decoder's state is no longer defined.
            return;
        }
        let mut statuses = Vec::new();
        status_reader
            .decode_wanted(
                block,
                |name| name == b":status",
                |name, value| statuses.push((name.to_vec(), value.to_vec())),
            )
            .expect("what decodes whole also decodes with values skipped");
        let expected: Vec<_> = fields
            .iter()
            .filter(|(name, _)| name == b":status")
            .cloned()
            .collect();
        assert_eq!(statuses, expected);
        let mut encoded = Vec::new();
        for (i, (name, value)) in fields.iter().enumerate() {
            encode_field(name, value, i % 2 == 1, &mut encoded);
        }
        let mut again = Vec::new();
        Decoder::new(0)
            .decode(&encoded, |name, value| {
                again.push((name.to_vec(), value.to_vec()))
            })
            .expect("encode_field's output decodes");
        assert_eq!(again, fields);
    }
});
