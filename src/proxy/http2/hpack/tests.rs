//! The HPACK codec against RFC 7541's examples (Appendix C), and what they do not show: bounds, malformed
//! blocks, table size updates and eviction, and the relay's own encoder.

use super::*;

type Fields = Vec<(String, String)>;

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|&(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
    let mut out = Vec::new();
    decoder.decode(block, |name, value| {
        out.push((
            String::from_utf8(name.to_vec()).unwrap(),
            String::from_utf8(value.to_vec()).unwrap(),
        ))
    })?;
    Ok(out)
}

/// The dynamic table, newest first, as (name, value, size); checks the running size too.
fn table(decoder: &Decoder) -> Vec<(String, String, usize)> {
    let entries: Vec<_> = decoder
        .table
        .entries
        .iter()
        .map(|entry| {
            let (name, value) = entry.split();
            (
                String::from_utf8(name.to_vec()).unwrap(),
                String::from_utf8(value.to_vec()).unwrap(),
                entry.size(),
            )
        })
        .collect();
    assert_eq!(
        decoder.table.size,
        entries.iter().map(|e| e.2).sum::<usize>()
    );
    assert!(decoder.table.size <= decoder.table.capacity);
    entries
}

fn entries(list: &[(&str, &str, usize)]) -> Vec<(String, String, usize)> {
    list.iter()
        .map(|&(name, value, size)| (name.to_owned(), value.to_owned(), size))
        .collect()
}

/// A Huffman encoder for the tests, from the same code table.
fn huffman_encode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut bits, mut pending) = (0u64, 0u32);
    for &byte in text {
        let (code, len) = CODES[usize::from(byte)];
        bits = bits << len | u64::from(code);
        pending += len;
        while pending >= 8 {
            pending -= 8;
            out.push((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        out.push((bits << (8 - pending)) as u8 | 0xff >> pending);
    }
    out
}

#[test]
fn integers_as_in_appendix_c1() {
    for (bytes, prefix_bits, value) in [
        (&[0x0a][..], 5, 10),
        (&[0x1f, 0x9a, 0x0a][..], 5, 1337),
        (&[0x2a][..], 7, 42),
        (&[0x7f, 0x00][..], 7, 127),
        (
            &[0x1f, 0xe0, 0xff, 0xff, 0xff, 0x0f][..],
            5,
            u32::MAX as usize,
        ),
    ] {
        let mut reader = Reader { rest: bytes };
        let first = reader.byte().unwrap();
        assert_eq!(
            reader.integer(first, prefix_bits),
            Ok(value),
            "{bytes:02x?}"
        );
        assert!(reader.rest.is_empty());
        let mut encoded = Vec::new();
        encode_integer(
            first & !((1 << prefix_bits) - 1),
            prefix_bits,
            value,
            &mut encoded,
        );
        assert_eq!(encoded, bytes);
    }
}

#[test]
fn integers_past_32_bits_or_five_continuation_bytes_are_refused() {
    for bytes in [
        &[0x1f, 0xe1, 0xff, 0xff, 0xff, 0x0f][..],
        &[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
        &[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00][..],
    ] {
        let mut reader = Reader { rest: bytes };
        let first = reader.byte().unwrap();
        assert_eq!(reader.integer(first, 5), Err(HpackError::IntegerOverflow));
    }
    let mut decoder = Decoder::new(4096);
    assert_eq!(
        decode(&mut decoder, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        Err(HpackError::IntegerOverflow)
    );
    assert_eq!(
        decode(&mut Decoder::new(4096), &[0xff, 0x80]),
        Err(HpackError::Truncated)
    );
}

#[test]
fn the_huffman_code_is_complete_and_every_nibble_emits_at_most_once() {
    let tree = code_tree();
    assert_eq!(tree.len(), 256);
    assert!(tree.iter().flatten().all(|&child| child != 0));
    assert_eq!(CODES.iter().map(|&(_, len)| len).min(), Some(5));
    assert_eq!(CODES[usize::from(EOS)], (0x3fff_ffff, 30));
    assert_eq!(huffman().accepting.iter().filter(|&&a| a).count(), 8);
}

#[test]
fn huffman_strings_of_appendix_c() {
    for (text, coded) in [
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("private", "aec3 771a 4b"),
        ("", ""),
    ] {
        assert_eq!(huffman_encode(text.as_bytes()), hex(coded), "{text}");
        let mut out = b"kept".to_vec();
        huffman_decode(&hex(coded), &mut out).unwrap();
        assert_eq!(out, [b"kept", text.as_bytes()].concat());
    }
}

#[test]
fn every_byte_value_round_trips_through_huffman() {
    let all: Vec<u8> = (0..=255).collect();
    let mut texts: Vec<Vec<u8>> = all.iter().map(|&b| vec![b]).collect();
    texts.push(all.clone());
    texts.push(all.iter().rev().copied().collect());
    texts.push(
        all.iter()
            .map(|&b| b.wrapping_mul(37))
            .cycle()
            .take(3000)
            .collect(),
    );
    for text in texts {
        let mut out = Vec::new();
        huffman_decode(&huffman_encode(&text), &mut out).unwrap();
        assert_eq!(out, text);
    }
}

#[test]
fn huffman_eos_and_bad_padding_are_refused() {
    let eos = |prefix: &[u8]| {
        // The text's padding and 32 more ones hold EOS's 30.
        let mut coded = huffman_encode(prefix);
        coded.extend_from_slice(&[0xff; 4]);
        coded
    };
    for coded in [eos(b""), eos(b"a"), eos(b"abc")] {
        assert_eq!(
            huffman_decode(&coded, &mut Vec::new()),
            Err(HpackError::HuffmanEos),
            "{coded:02x?}"
        );
    }
    // '0' is 00000: three bits of padding, which must be ones.
    assert_eq!(huffman_decode(&[0x07], &mut Vec::new()), Ok(()));
    assert_eq!(
        huffman_decode(&[0x00], &mut Vec::new()),
        Err(HpackError::HuffmanPadding)
    );
    assert_eq!(
        huffman_decode(&[0x06], &mut Vec::new()),
        Err(HpackError::HuffmanPadding)
    );
    // Eight or more bits of padding.
    assert_eq!(
        huffman_decode(&[0x07, 0xff], &mut Vec::new()),
        Err(HpackError::HuffmanPadding)
    );
    assert_eq!(
        huffman_decode(&[0xff], &mut Vec::new()),
        Err(HpackError::HuffmanPadding)
    );
    assert_eq!(
        huffman_decode(&[0xff; 3], &mut Vec::new()),
        Err(HpackError::HuffmanPadding)
    );
    // Two '0's (00000 00000), then six bits of padding: ones, or not.
    assert_eq!(huffman_decode(&[0x00, 0x3f], &mut Vec::new()), Ok(()));
    assert_eq!(
        huffman_decode(&[0x00, 0x00], &mut Vec::new()),
        Err(HpackError::HuffmanPadding)
    );
}

#[test]
fn the_four_representations_of_appendix_c2() {
    let mut decoder = Decoder::new(4096);
    let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    assert_eq!(
        decode(&mut decoder, &block),
        Ok(fields(&[("custom-key", "custom-header")]))
    );
    assert_eq!(
        table(&decoder),
        entries(&[("custom-key", "custom-header", 55)])
    );
    for (block, field) in [
        (
            "040c 2f73 616d 706c 652f 7061 7468",
            (":path", "/sample/path"),
        ),
        (
            "1008 7061 7373 776f 7264 0673 6563 7265 74",
            ("password", "secret"),
        ),
        ("82", (":method", "GET")),
    ] {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decode(&mut decoder, &hex(block)), Ok(fields(&[field])));
        assert!(table(&decoder).is_empty());
    }
}

/// Decodes `blocks` in turn on one decoder: each must give its fields and leave its table.
fn decode_in_turn(
    table_size: usize,
    blocks: &[&str],
    wants: &[Fields],
    tables: &[Vec<(String, String, usize)>],
) {
    let mut decoder = Decoder::new(table_size);
    for ((block, want), table_after) in blocks.iter().zip(wants).zip(tables) {
        assert_eq!(
            decode(&mut decoder, &hex(block)).as_ref(),
            Ok(want),
            "{block}"
        );
        assert_eq!(&table(&decoder), table_after, "{block}");
    }
}

#[test]
fn requests_of_appendix_c3_and_c4() {
    let first = fields(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]);
    let second = [first.clone(), fields(&[("cache-control", "no-cache")])].concat();
    let third = fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ]);
    let tables = [
        entries(&[(":authority", "www.example.com", 57)]),
        entries(&[
            ("cache-control", "no-cache", 53),
            (":authority", "www.example.com", 57),
        ]),
        entries(&[
            ("custom-key", "custom-value", 54),
            ("cache-control", "no-cache", 53),
            (":authority", "www.example.com", 57),
        ]),
    ];
    let c3 = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    let c4 = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];
    for blocks in [c3, c4] {
        decode_in_turn(
            4096,
            &blocks,
            &[first.clone(), second.clone(), third.clone()],
            &tables,
        );
    }
}

#[test]
fn responses_of_appendix_c5_and_c6_evict() {
    let date_1 = "Mon, 21 Oct 2013 20:13:21 GMT";
    let date_2 = "Mon, 21 Oct 2013 20:13:22 GMT";
    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    let location = "https://www.example.com";
    let first = fields(&[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", date_1),
        ("location", location),
    ]);
    let second = [fields(&[(":status", "307")]), first[1..].to_vec()].concat();
    let third = fields(&[
        (":status", "200"),
        ("cache-control", "private"),
        ("date", date_2),
        ("location", location),
        ("content-encoding", "gzip"),
        ("set-cookie", cookie),
    ]);
    let tables = [
        entries(&[
            ("location", location, 63),
            ("date", date_1, 65),
            ("cache-control", "private", 52),
            (":status", "302", 42),
        ]),
        entries(&[
            (":status", "307", 42),
            ("location", location, 63),
            ("date", date_1, 65),
            ("cache-control", "private", 52),
        ]),
        entries(&[
            ("set-cookie", cookie, 98),
            ("content-encoding", "gzip", 52),
            ("date", date_2, 65),
        ]),
    ];
    let c5 = [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a
         3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04
         677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49
         553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ];
    let c6 = [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e
         919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7
         821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed
         4ee5 b106 3d50 07",
    ];
    for blocks in [c5, c6] {
        decode_in_turn(
            256,
            &blocks,
            &[first.clone(), second.clone(), third.clone()],
            &tables,
        );
    }
}

#[test]
fn malformed_blocks_are_refused() {
    let long_name = [&[0x40, 0x7f, 0x00][..], &[b'a'; 100]].concat();
    for (block, error) in [
        ("80", HpackError::ZeroIndex),
        ("be", HpackError::IndexOutOfRange(62)),
        ("ff80 01", HpackError::IndexOutOfRange(255)),
        ("7e", HpackError::IndexOutOfRange(62)),
        ("82 00", HpackError::Truncated),
        ("41", HpackError::Truncated),
        ("400a 6375", HpackError::StringPastEnd(10)),
        ("0085 f1e3 c2e5", HpackError::StringPastEnd(5)),
        ("0001 617f ff01 6161", HpackError::StringPastEnd(382)),
        ("0081 00 00", HpackError::HuffmanPadding),
        ("0001 61 84 ffff ffff", HpackError::HuffmanEos),
        (
            "3fe2 1f",
            HpackError::SizeUpdateTooLarge {
                size: 4097,
                max: 4096,
            },
        ),
        ("82 20", HpackError::SizeUpdateNotAtStart),
        ("20 82 3f e1 1f", HpackError::SizeUpdateNotAtStart),
    ] {
        assert_eq!(
            decode(&mut Decoder::new(4096), &hex(block)),
            Err(error),
            "{block}"
        );
    }
    assert_eq!(
        decode(&mut Decoder::new(4096), &long_name),
        Err(HpackError::StringPastEnd(127))
    );
}

#[test]
fn size_updates_at_the_start_of_a_block() {
    let mut decoder = Decoder::new(4096);
    decode(
        &mut decoder,
        &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
    )
    .unwrap();
    // Any number of updates, and a block may end right after them.
    assert_eq!(
        decode(&mut decoder, &hex("3fe1 1f 20 3fe1 1f")),
        Ok(Vec::new())
    );
    assert!(table(&decoder).is_empty());
    assert_eq!(decoder.table.capacity, 4096);
    decode(&mut decoder, &hex("418c f1e3 c2e5 f23a 6ba0 ab90 f4ff")).unwrap();
    assert_eq!(
        decode(&mut decoder, &hex("be")),
        Ok(fields(&[(":authority", "www.example.com")]))
    );
    // 57 bytes no longer fit.
    assert_eq!(
        decode(&mut decoder, &hex("3f19 be")),
        Err(HpackError::IndexOutOfRange(62))
    );
}

#[test]
fn an_entry_larger_than_the_table_empties_it() {
    let mut decoder = Decoder::new(100);
    decode(&mut decoder, &hex("4003 6162 6303 6465 66")).unwrap();
    assert_eq!(table(&decoder), entries(&[("abc", "def", 38)]));
    let value = "x".repeat(70);
    let mut block = hex("4003 6162 63");
    encode_string(value.as_bytes(), &mut block);
    assert_eq!(decode(&mut decoder, &block), Ok(fields(&[("abc", &value)])));
    assert!(table(&decoder).is_empty());
}

#[test]
fn a_new_entry_may_take_its_name_from_the_entry_it_evicts() {
    // Room for one: "abc: def" (38), then a new entry named by index 62 replaces it.
    let mut decoder = Decoder::new(50);
    decode(&mut decoder, &hex("4003 6162 6303 6465 66")).unwrap();
    assert_eq!(
        decode(&mut decoder, &hex("7e03 7879 7a")),
        Ok(fields(&[("abc", "xyz")]))
    );
    assert_eq!(table(&decoder), entries(&[("abc", "xyz", 38)]));
}

#[test]
fn a_lower_ceiling_evicts_at_once_and_must_be_acknowledged() {
    let mut decoder = Decoder::new(256);
    for block in ["4803 3330 3258 0770 7269 7661 7465", "4803 3330 37"] {
        decode(&mut decoder, &hex(block)).unwrap();
    }
    assert_eq!(
        table(&decoder),
        entries(&[
            (":status", "307", 42),
            ("cache-control", "private", 52),
            (":status", "302", 42)
        ])
    );
    decoder.set_max_table_size(100);
    assert_eq!(
        table(&decoder),
        entries(&[(":status", "307", 42), ("cache-control", "private", 52)])
    );
    // The encoder owes an update to at most 100 before anything else.
    assert_eq!(
        decode(&mut decoder.clone_for_test(), &hex("be")),
        Err(HpackError::SizeUpdateMissing(100))
    );
    assert_eq!(
        decode(&mut decoder.clone_for_test(), &hex("")),
        Err(HpackError::SizeUpdateMissing(100))
    );
    assert_eq!(
        decode(&mut decoder.clone_for_test(), &hex("3f46")),
        Err(HpackError::SizeUpdateTooLarge {
            size: 101,
            max: 100
        })
    );
    assert_eq!(
        decode(&mut decoder, &hex("3f45 be")),
        Ok(fields(&[(":status", "307")]))
    );
    assert_eq!(
        decode(&mut decoder, &hex("bf")),
        Ok(fields(&[("cache-control", "private")]))
    );

    // Lowered twice between blocks: the smallest must be signalled, the last may follow it.
    decoder.set_max_table_size(50);
    decoder.set_max_table_size(4096);
    assert_eq!(table(&decoder), entries(&[(":status", "307", 42)]));
    assert_eq!(
        decode(&mut decoder.clone_for_test(), &hex("3f21")),
        Err(HpackError::SizeUpdateMissing(50))
    );
    assert_eq!(
        decode(&mut decoder, &hex("3f13 3fe1 1f be")),
        Ok(fields(&[(":status", "307")]))
    );
    assert_eq!(decoder.table.capacity, 4096);

    // A higher ceiling owes nothing.
    decoder.set_max_table_size(8192);
    assert_eq!(
        decode(&mut decoder, &hex("be")),
        Ok(fields(&[(":status", "307")]))
    );
}

#[test]
fn encoded_fields_decode_to_the_same_list_and_leave_no_table() {
    let long = "v".repeat(300);
    let list = [
        (":method", "GET", false),
        (":method", "PATCH", false),
        (":status", "200", false),
        (":status", "418", false),
        (":path", "/index.html", false),
        ("accept-encoding", "gzip, deflate", false),
        ("accept-encoding", "br", false),
        ("authorization", "Bearer secret", true),
        ("authorization", "", true),
        ("x-api-key", "secret", true),
        ("x-custom", long.as_str(), false),
        ("", "", false),
    ];
    let mut block = Vec::new();
    encode_size_update(0, &mut block);
    encode_size_update(4096, &mut block);
    for (name, value, sensitive) in list {
        encode_field(name.as_bytes(), value.as_bytes(), sensitive, &mut block);
    }
    let mut decoder = Decoder::new(4096);
    let want: Fields = list
        .iter()
        .map(|&(n, v, _)| (n.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(decode(&mut decoder, &block), Ok(want));
    assert!(table(&decoder).is_empty());
    assert_eq!(
        decode(&mut decoder, &hex("be")),
        Err(HpackError::IndexOutOfRange(62))
    );
}

#[test]
fn only_wanted_values_are_decoded_and_the_table_keeps_in_step() {
    let mut block = Vec::new();
    // Literal with incremental indexing, new name: enters the table even though it is not wanted.
    block.push(0x40);
    block.push(6);
    block.extend_from_slice(b"x-kept");
    block.push(3);
    block.extend_from_slice(b"one");
    // Without indexing, indexed name `date`, a Huffman value that holds EOS: never decoded.
    block.extend_from_slice(&[0x0f, 0x12, 0x84, 0xff, 0xff, 0xff, 0xff]);
    encode_field(b":status", b"201", false, &mut block);
    let mut skipping = Decoder::new(4096);
    let mut seen = Vec::new();
    skipping
        .decode_wanted(
            &block,
            |name| name == b":status",
            |name, value| seen.push((name.to_vec(), value.to_vec())),
        )
        .unwrap();
    assert_eq!(seen, [(b":status".to_vec(), b"201".to_vec())]);
    assert_eq!(
        decode(&mut Decoder::new(4096), &block),
        Err(HpackError::HuffmanEos),
        "decoded whole, the value is refused"
    );
    assert_eq!(
        decode(&mut skipping, &hex("be")),
        Ok(vec![("x-kept".to_owned(), "one".to_owned())])
    );
}

#[test]
fn the_name_index_finds_each_names_first_entry() {
    for (index, (name, _)) in (1..).zip(STATIC.iter()) {
        let first = STATIC.iter().position(|(n, _)| n == name).unwrap() + 1;
        assert_eq!(static_name_index(name), first, "{index}");
    }
    assert_eq!(static_name_index(b"x-unknown"), 0);
    assert_eq!(static_name_index(b""), 0);
}

#[test]
fn encoding_uses_the_static_table() {
    let encoded = |name: &str, value: &str, sensitive| {
        let mut out = Vec::new();
        encode_field(name.as_bytes(), value.as_bytes(), sensitive, &mut out);
        out
    };
    assert_eq!(encoded(":method", "GET", false), [0x82]);
    assert_eq!(encoded(":status", "500", true), [0x8e]);
    assert_eq!(encoded(":status", "201", false), hex("0803 3230 31"));
    assert_eq!(encoded("authorization", "ab", true), hex("1f08 0261 62"));
    assert_eq!(encoded("www-authenticate", "x", false), hex("0f2e 0178"));
    assert_eq!(encoded("x-a", "b", true), hex("1003 782d 6101 62"));
    let mut update = Vec::new();
    encode_size_update(4096, &mut update);
    assert_eq!(update, hex("3fe1 1f"));
}

impl Decoder {
    fn clone_for_test(&self) -> Decoder {
        let entries = self
            .table
            .entries
            .iter()
            .map(|entry| {
                let (name, value) = entry.split();
                Entry::new(name, value)
            })
            .collect();
        Decoder {
            table: Table {
                entries,
                size: self.table.size,
                capacity: self.table.capacity,
            },
            ceiling: self.ceiling,
            owed_update: self.owed_update,
            scratch: Vec::new(),
        }
    }
}
