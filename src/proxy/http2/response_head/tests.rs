use super::*;
use crate::proxy::http2::machine::TABLE_SIZE;

const SECRET: &[u8] = b"sk-test-0123456789abcdef";

fn needles() -> Needles {
    Needles::new([SECRET, b"www.example.com".as_slice()]).unwrap()
}

fn decoded(decoder: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    decoder
        .decode(block, |name, value| {
            fields.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ))
        })
        .unwrap();
    fields
}

fn field(name: &str, value: &str) -> (String, String) {
    (name.into(), value.into())
}

/// A response head as an upstream's encoder might write it: `:status: 200` from the static table, the
/// secret echoed in a field it adds to its table, a type it does not, and (RFC 7541 C.4.1) a
/// Huffman-coded `www.example.com` it adds.
fn first_block() -> Vec<u8> {
    let mut block = vec![0x88];
    hpack::encode_literal(Literal::Incremental, 0, b"x-echo", SECRET, &mut block);
    hpack::encode_literal(
        Literal::WithoutIndexing,
        31,
        b"content-type",
        b"text/plain",
        &mut block,
    );
    block.extend_from_slice(&[
        0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ]);
    block
}

#[test]
fn a_field_with_a_secret_is_written_again_masked_and_the_tables_stay_in_step() {
    let needles = needles();
    let mut relay = Decoder::new(TABLE_SIZE);
    let mut client = Decoder::new(TABLE_SIZE);
    let mut rewrite = Rewrite::default();
    let block = first_block();
    let head = read(&mut relay, &block, Some(&needles), &mut rewrite).unwrap();
    assert_eq!(head.status, Some(200));
    assert_eq!(head.masked, 2);
    assert_eq!(head.coded, None);
    let stars = "*".repeat(SECRET.len());
    assert_eq!(
        decoded(&mut client, &rewrite.masked),
        [
            field(":status", "200"),
            field("x-echo", &stars),
            field("content-type", "text/plain"),
            field(":authority", "***************"),
        ]
    );
    // The next block refers to both entries the first added: it passes as it came, and the client's
    // table, which got them masked, gives them masked.
    let second = [0x88, 0xbf, 0xbe];
    let head = read(&mut relay, &second, Some(&needles), &mut rewrite).unwrap();
    assert_eq!(head.masked, 2, "counted, although nothing is written again");
    assert_eq!(
        decoded(&mut client, &second),
        [
            field(":status", "200"),
            field("x-echo", &stars),
            field(":authority", "***************"),
        ]
    );
    let mut plain = Vec::new();
    relay
        .decode(&second, |_, value| {
            plain.push(String::from_utf8_lossy(value).into_owned())
        })
        .unwrap();
    assert_eq!(
        plain[1].as_bytes(),
        SECRET,
        "the relay's own table is the upstream's"
    );
}

#[test]
fn without_needles_only_the_status_is_read() {
    let mut relay = Decoder::new(TABLE_SIZE);
    let mut rewrite = Rewrite::default();
    let head = read(&mut relay, &first_block(), None, &mut rewrite).unwrap();
    assert_eq!((head.status, head.masked), (Some(200), 0));
    assert!(rewrite.masked.is_empty());
}

#[test]
fn a_coded_response_is_told_and_its_table_effect_kept_for_the_client() {
    let needles = needles();
    let mut relay = Decoder::new(TABLE_SIZE);
    let mut client = Decoder::new(TABLE_SIZE);
    let mut rewrite = Rewrite::default();
    // A size update first, a status the static table lacks added to the table, the coding added too.
    let mut block = vec![0x3f, 0xe1, 0x1f];
    hpack::encode_literal(Literal::Incremental, 8, b":status", b"201", &mut block);
    hpack::encode_literal(
        Literal::Incremental,
        26,
        b"content-encoding",
        b"gzip",
        &mut block,
    );
    hpack::encode_literal(Literal::NeverIndexed, 0, b"x-echo", SECRET, &mut block);
    let head = read(&mut relay, &block, Some(&needles), &mut rewrite).unwrap();
    assert_eq!(head.status, Some(201));
    assert_eq!(head.coded.as_deref(), Some("gzip"));
    assert_eq!(
        decoded(&mut client, &rewrite.informational),
        [field(":status", "103"), field("content-encoding", "gzip")]
    );
    // Both tables now hold two entries of the same sizes: a later reference decodes on both sides.
    let later = [0x88, 0xbe];
    assert_eq!(
        decoded(&mut client, &later),
        [field(":status", "200"), field("content-encoding", "gzip")]
    );
    read(&mut relay, &later, Some(&needles), &mut rewrite).unwrap();

    let mut identity = Vec::new();
    hpack::encode_literal(
        Literal::WithoutIndexing,
        26,
        b"",
        b"identity",
        &mut identity,
    );
    let head = read(&mut relay, &identity, Some(&needles), &mut rewrite).unwrap();
    assert_eq!(head.coded, None);
}
