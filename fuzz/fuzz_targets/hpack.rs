//! Fuzzes `sandbox::proxy::http2::hpack`: header blocks decoded in sequence on one `Decoder`, so that the
//! dynamic table carries from block to block as on a connection. Nothing may panic, and the fields of every
//! block that decodes, written again with `encode_field`, must read back the same from a fresh decoder
//! (whose table they must not need). A second decoder reads the same blocks asking only for `:status` (as the relay
//! reads responses): it must find the same `:status` fields, its table kept in step by the values it skips.
//! Each block the decoder accepts must also decode to the same fields on a published decoder
//! (`loona-hpack`) that has followed the same blocks and ceilings: code the relay does not share.
//!
//! Input: a byte giving the table size ceiling in units of 64 bytes, then blocks, each a length byte and
//! that many bytes (the last may be short). A length byte of 255 instead sets a new ceiling from the byte
//! after it, as a SETTINGS_HEADER_TABLE_SIZE taking effect between blocks would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loona_hpack::decoder::DecoderError;
use sandbox::proxy::http2::hpack::{encode_field, Decoder};

const NEW_CEILING: u8 = 255;

/// The reference decoder, and the dynamic table size it was last set to, which loona keeps to itself.
struct Reference {
    decoder: loona_hpack::Decoder<'static>,
    table_size: usize,
}

impl Reference {
    fn new(ceiling: usize) -> Reference {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(ceiling);
        decoder.set_max_table_size(ceiling);
        Reference {
            decoder,
            table_size: ceiling,
        }
    }

    /// A new SETTINGS_HEADER_TABLE_SIZE: a table larger than it shrinks at once, as the relay's does
    /// (RFC 7541 section 4.2 then obliges the encoder to confirm with an update).
    fn set_ceiling(&mut self, ceiling: usize) {
        self.decoder.set_max_allowed_table_size(ceiling);
        if self.table_size > ceiling {
            self.decoder.set_max_table_size(ceiling);
            self.table_size = ceiling;
        }
    }

    /// Decodes a block the relay's decoder accepted and returns its fields. A block of size updates
    /// alone is valid HPACK that loona refuses (`SizeUpdateAtEnd`) after applying them.
    fn decode(&mut self, block: &[u8], fields_expected: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut fields = Vec::new();
        let decoded = self.decoder.decode_with_cb(block, |name, value| {
            fields.push((name.into_owned(), value.into_owned()))
        });
        match decoded {
            Ok(()) => {}
            Err(DecoderError::SizeUpdateAtEnd) if fields_expected == 0 => {}
            Err(error) => {
                panic!("the relay's decoder accepted a block that loona refuses: {error:?}")
            }
        }
        if let Some(size) = leading_size_updates(block).last() {
            self.table_size = *size;
        }
        fields
    }
}

/// The sizes of the dynamic table size updates a block starts with (the only place the relay's decoder
/// accepts them): an HPACK integer with a 5-bit prefix after the pattern 001.
fn leading_size_updates(mut block: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    while let Some((&first, rest)) = block.split_first() {
        if first & 0xe0 != 0x20 {
            break;
        }
        let mut size = usize::from(first & 0x1f);
        block = rest;
        if size == 0x1f {
            let mut shift = 0;
            while let Some((&byte, rest)) = block.split_first() {
                block = rest;
                size += usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        sizes.push(size);
    }
    sizes
}

fuzz_target!(|data: &[u8]| {
    let Some((&ceiling, mut rest)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(usize::from(ceiling) * 64);
    let mut status_reader = Decoder::new(usize::from(ceiling) * 64);
    let mut reference = Reference::new(usize::from(ceiling) * 64);
    while let Some((&len, after)) = rest.split_first() {
        if len == NEW_CEILING {
            let Some((&ceiling, after)) = after.split_first() else {
                return;
            };
            decoder.set_max_table_size(usize::from(ceiling) * 64);
            status_reader.set_max_table_size(usize::from(ceiling) * 64);
            reference.set_ceiling(usize::from(ceiling) * 64);
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
        assert_eq!(
            reference.decode(block, fields.len()),
            fields,
            "the relay's decoder and loona read the block differently"
        );
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
