use super::*;
use std::cell::Cell;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// The first flight of `curl --resolve api.Example.COM:PORT:127.0.0.1 https://api.Example.COM:PORT/`
/// (curl 7.88.1, OpenSSL 3.0.19), captured on 127.0.0.1. curl lowercases the name itself.
const CURL_HELLO_HEX: &[&str] = &[
    "1603010200010001fc030376a17f467ded0b8aacefb9bbb7eeb6e674e5154f4d81600c1397493211a4b50e20",
    "5bee054f25532039e461b189a3e8863acdf2a9d86d7cb8e5875cc7a527abffc5003e130213031301c02cc030",
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d",
    "003c0035002f00ff0100017500000014001200000f6170692e6578616d706c652e636f6d000b000403000102",
    "000a00160014001d0017001e00190018010001010102010301040010000e000c02683208687474702f312e31",
    "001600000017000000310000000d002a0028040305030603080708080809080a080b08040805080604010501",
    "0601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d002035",
    "c2b022dd7f13cae556511d80a34cc7474b6d2c64a3ab9ec8370622825ae162001500ae000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000",
];

fn curl_hello() -> Vec<u8> {
    let hex: String = CURL_HELLO_HEX.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

fn vec8(data: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::try_from(data.len()).unwrap()];
    v.extend_from_slice(data);
    v
}

fn vec16(data: &[u8]) -> Vec<u8> {
    let mut v = u16be(data.len()).to_vec();
    v.extend_from_slice(data);
    v
}

fn server_name_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend(vec16(name));
    }
    vec16(&list)
}

fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
    vec16(&protocols.iter().flat_map(|p| vec8(p)).collect::<Vec<_>>())
}

/// legacy_version, random, session_id, cipher_suites and compression_methods of a TLS 1.3 client.
fn fixed_fields() -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend([0x5a; 32]);
    b.extend(vec8(&[0xa5; 32]));
    b.extend(vec16(&[0x13, 0x01, 0x13, 0x02, 0x13, 0x03]));
    b.extend(vec8(&[0]));
    b
}

fn extensions_block(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (kind, data) in extensions {
        block.extend(kind.to_be_bytes());
        block.extend(vec16(data));
    }
    vec16(&block)
}

fn handshake(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut m = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
    m.extend_from_slice(body);
    m
}

fn message(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = fixed_fields();
    body.extend(extensions_block(extensions));
    handshake(&body)
}

/// Cuts `message` into handshake records: the first fragments take `sizes` in turn, the last size
/// repeats until the message is used up.
fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = message;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes[i.min(sizes.len() - 1)].min(rest.len());
        let (fragment, tail) = rest.split_at(size);
        wire.extend([CONTENT_HANDSHAKE, 3, 1]);
        wire.extend(u16be(fragment.len()));
        wire.extend(fragment);
        rest = tail;
        i += 1;
    }
    wire
}

/// What a current browser-like client sends, with an X25519MLKEM768 key share so that it needs more
/// than one TCP segment.
fn modern_extensions(sni: Option<&[u8]>, alpn: &[&[u8]]) -> Vec<(u16, Vec<u8>)> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        exts.push((EXT_SERVER_NAME, server_name_ext(&[(0, name)])));
    }
    exts.push((10, vec16(&[0x11, 0xec, 0x00, 0x1d, 0x00, 0x17])));
    exts.push((13, vec16(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01])));
    let mut shares = vec![0x11, 0xec];
    shares.extend(vec16(&[0x42; 1216]));
    shares.extend([0x00, 0x1d]);
    shares.extend(vec16(&[0x24; 32]));
    exts.push((51, vec16(&shares)));
    exts.push((43, vec8(&[0x03, 0x04, 0x03, 0x03])));
    // A GREASE encrypted_client_hello, as Chrome sends.
    exts.push((
        0xfe0d,
        [
            &[0, 0, 1, 0, 1, 0x55][..],
            &vec16(&[0x33; 32]),
            &vec16(&[0x77; 208]),
        ]
        .concat(),
    ));
    if !alpn.is_empty() {
        exts.push((EXT_ALPN, alpn_ext(alpn)));
    }
    exts
}

fn modern_wire(sni: &str) -> Vec<u8> {
    let exts = modern_extensions(Some(sni.as_bytes()), &[H2, HTTP11]);
    records(&message(&exts), &[MAX_FRAGMENT_LEN])
}

fn with_sni(name: &[u8]) -> Vec<u8> {
    let exts = [(EXT_SERVER_NAME, server_name_ext(&[(0, name)]))];
    records(&message(&exts), &[MAX_FRAGMENT_LEN])
}

fn complete(wire: &[u8]) -> ClientHello {
    match parse(wire) {
        Ok(Progress::Complete(hello)) => hello,
        other => panic!("expected a complete hello, got {other:?}"),
    }
}

fn error(wire: &[u8]) -> HelloError {
    match parse(wire) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// `wire` is exactly one ClientHello: every proper prefix must ask for more, and never for more
/// than the rest of it (else waiting for that many bytes would hang).
fn assert_prefixes_need_more(wire: &[u8]) -> ClientHello {
    for cut in 0..wire.len() {
        match parse(&wire[..cut]) {
            Ok(Progress::NeedAtLeast(n)) => {
                assert!(n >= 1 && cut + n <= wire.len(), "cut {cut}: need {n}")
            }
            other => panic!("cut {cut} of {}: {other:?}", wire.len()),
        }
    }
    complete(wire)
}

#[test]
fn sni_and_alpn() {
    let wire = modern_wire("api.example.com");
    assert!(wire.len() > 1460, "meant to span TCP segments");
    let hello = complete(&wire);
    assert_eq!(hello.sni.as_deref(), Some("api.example.com"));
    assert_eq!(hello.alpn, vec![H2.to_vec(), HTTP11.to_vec()]);
}

#[test]
fn no_sni_no_alpn() {
    let exts = modern_extensions(None, &[]);
    let hello = complete(&records(&message(&exts), &[MAX_FRAGMENT_LEN]));
    assert_eq!(hello.sni, None);
    assert!(hello.alpn.is_empty());
    // TLS 1.2 and older may leave out the extensions block entirely.
    let hello = complete(&records(&handshake(&fixed_fields()), &[MAX_FRAGMENT_LEN]));
    assert_eq!(hello.sni, None);
    assert!(hello.alpn.is_empty());
}

#[test]
fn ip_literal_sni_is_no_sni() {
    for ip in [
        "127.0.0.1",
        "10.0.0.1.",
        "::1",
        "fd00:5ba:d::2",
        "127.1",
        "0x7f.1",
        "1.2.3.0X1F",
    ] {
        assert_eq!(complete(&with_sni(ip.as_bytes())).sni, None, "{ip}");
    }
}

#[test]
fn sni_is_lowercased_without_trailing_dot() {
    for (raw, want) in [
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("Localhost", "localhost"),
        ("_acme-challenge.example.com", "_acme-challenge.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("1.2.3.example", "1.2.3.example"),
        ("0xfoo.example.0xg", "0xfoo.example.0xg"),
    ] {
        assert_eq!(
            complete(&with_sni(raw.as_bytes())).sni.as_deref(),
            Some(want)
        );
    }
    let longest = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    assert_eq!(longest.len(), 253);
    assert_eq!(
        complete(&with_sni(longest.as_bytes())).sni,
        Some(longest.clone())
    );
    let dotted = format!("{longest}.");
    assert_eq!(complete(&with_sni(dotted.as_bytes())).sni, Some(longest));
}

#[test]
fn bad_sni_is_refused() {
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(62),
    ]
    .join(".");
    let bad: [&[u8]; 15] = [
        b"",
        b".",
        b"example.com..",
        b"a..example.com",
        b".example.com",
        b"exa\0mple.com",
        "bücher.example".as_bytes(),
        b"exa mple.com",
        b"*.example.com",
        b"example.com/evil",
        b"-a.example.com",
        b"a-.example.com",
        b"[::1]",
        long_label.as_bytes(),
        long_name.as_bytes(),
    ];
    for name in bad {
        assert!(
            matches!(error(&with_sni(name)), HelloError::BadSni(_)),
            "{name:?}"
        );
    }
}

#[test]
fn server_name_extension_is_strict() {
    let shapes = [
        vec16(&[]),
        server_name_ext(&[(0, b"a.example"), (0, b"b.example")]),
        server_name_ext(&[(0, b"a.example"), (1, b"b.example")]),
        server_name_ext(&[(1, b"a.example")]),
        [server_name_ext(&[(0, b"a.example")]), vec![0]].concat(),
        vec![0, 5, 0, 0, 9, b'a', b'b'],
        vec![0],
    ];
    for data in shapes {
        let wire = records(&message(&[(EXT_SERVER_NAME, data.clone())]), &[100]);
        assert!(matches!(error(&wire), HelloError::Malformed(_)), "{data:?}");
    }
}

#[test]
fn alpn_extension_is_strict() {
    let shapes = [
        vec16(&[]),
        vec16(&[0]),
        vec16(&[2, b'h', b'2', 0]),
        vec16(&[3, b'h', b'2']),
        [alpn_ext(&[H2]), vec![0]].concat(),
        vec![0],
    ];
    for data in shapes {
        let wire = records(&message(&[(EXT_ALPN, data.clone())]), &[100]);
        assert!(matches!(error(&wire), HelloError::Malformed(_)), "{data:?}");
    }
}

#[test]
fn repeated_extension_is_refused() {
    for kind in [EXT_SERVER_NAME, EXT_ALPN, 51, 0xffff] {
        let data = match kind {
            EXT_SERVER_NAME => server_name_ext(&[(0, b"a.example")]),
            EXT_ALPN => alpn_ext(&[H2]),
            _ => vec![],
        };
        let exts = [(kind, data.clone()), (13, vec![]), (kind, data)];
        let wire = records(&message(&exts), &[MAX_FRAGMENT_LEN]);
        assert!(matches!(error(&wire), HelloError::Malformed(_)), "{kind}");
    }
}

#[test]
fn hello_across_records() {
    let small = message(&[
        (EXT_SERVER_NAME, server_name_ext(&[(0, b"api.example.com")])),
        (EXT_ALPN, alpn_ext(&[H2])),
    ]);
    let modern = message(&modern_extensions(Some(b"api.example.com"), &[H2]));
    // Tiny fragments split the handshake header itself across records; the small message keeps
    // the every-prefix check quick.
    let cuts: [(&[u8], &[usize]); 10] = [
        (&small, &[1]),
        (&small, &[2]),
        (&small, &[3]),
        (&small, &[4]),
        (&small, &[5]),
        (&small, &[7]),
        (&modern, &[100]),
        (&modern, &[1000]),
        (&modern, &[3, 1400]),
        (&modern, &[1500, 1]),
    ];
    for (msg, sizes) in cuts {
        let whole = complete(&records(msg, &[MAX_FRAGMENT_LEN]));
        let wire = records(msg, sizes);
        assert_eq!(assert_prefixes_need_more(&wire), whole, "{sizes:?}");
    }
}

#[test]
fn every_prefix_needs_more() {
    for wire in [
        modern_wire("api.example.com"),
        with_sni(b"a.example"),
        records(&handshake(&fixed_fields()), &[MAX_FRAGMENT_LEN]),
        curl_hello(),
    ] {
        assert_prefixes_need_more(&wire);
    }
    assert!(matches!(parse(b""), Ok(Progress::NeedAtLeast(9))));
    assert!(matches!(parse(&[22]), Ok(Progress::NeedAtLeast(8))));
}

#[test]
fn bytes_after_the_hello_are_ignored() {
    let mut wire = modern_wire("api.example.com");
    let hello = complete(&wire);
    // Middlebox-compatibility ChangeCipherSpec and an early-data record.
    wire.extend([20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xde, 0xad]);
    assert_eq!(complete(&wire), hello);
}

#[test]
fn real_curl_hello() {
    let wire = curl_hello();
    let hello = assert_prefixes_need_more(&wire);
    assert_eq!(hello.sni.as_deref(), Some("api.example.com"));
    assert_eq!(hello.alpn, vec![H2.to_vec(), HTTP11.to_vec()]);
    // The same message re-cut into small records parses the same.
    let msg = &wire[RECORD_HEADER_LEN..];
    assert_eq!(assert_prefixes_need_more(&records(msg, &[3, 50])), hello);
}

#[test]
fn bad_record_layer() {
    let msg = message(&modern_extensions(Some(b"a.example"), &[H2]));
    let good = records(&msg, &[200]);
    let malformed = |wire: &[u8]| matches!(error(wire), HelloError::Malformed(_));
    assert!(malformed(&[22, 3, 1, 0, 0]));
    assert!(malformed(&[22, 3, 1, 0x40, 0x01]));
    // An alert, or a bad version, in the second record.
    for (at, byte) in [(205, 21), (205, 23), (206, 2)] {
        let mut wire = good.clone();
        wire[at] = byte;
        assert!(malformed(&wire), "{at}");
        assert!(malformed(&wire[..=at]), "{at} alone");
    }
    // A handshake message of another type.
    let mut wire = good.clone();
    wire[5] = 2;
    assert!(malformed(&wire[..6]));
}

#[test]
fn bad_handshake_lengths() {
    let msg = message(&modern_extensions(Some(b"a.example"), &[H2]));
    let malformed = |wire: &[u8]| matches!(error(wire), HelloError::Malformed(_));
    // The message claims one byte less than its record holds.
    let mut short = msg.clone();
    short[3] -= 1;
    assert!(malformed(&records(&short, &[MAX_FRAGMENT_LEN])));
    // One byte more: the record is complete, the rest must come in another record.
    let mut long = msg.clone();
    long[3] += 1;
    let wire = records(&long[..long.len()], &[MAX_FRAGMENT_LEN]);
    assert!(matches!(
        parse(&wire),
        Ok(Progress::NeedAtLeast(n)) if n == RECORD_HEADER_LEN + 1
    ));
    // Each fixed field broken in turn.
    let fixed = fixed_fields();
    let mut bodies = vec![
        vec![],
        vec![3],
        vec![2, 0],
        fixed[..20].to_vec(),
        fixed[..fixed.len() - 1].to_vec(),
    ];
    let mut body = fixed.clone();
    body[34] = 33;
    body.extend([0; 1]);
    bodies.push(body);
    let mut body = fixed.clone();
    body[67..69].copy_from_slice(&[0, 5]);
    bodies.push(body);
    let mut body = fixed.clone();
    body[67..69].copy_from_slice(&[0, 0]);
    body.drain(69..75);
    bodies.push(body);
    let mut body = fixed.clone();
    body[75] = 0;
    body.pop();
    bodies.push(body);
    // The extensions block: overrunning, short, trailing data, a truncated extension header.
    let block = extensions_block(&[(13, vec![1, 2])]);
    for (len, tail) in [(7, &[][..]), (5, &[]), (6, &[0][..]), (2, &[])] {
        let mut body = fixed.clone();
        body.extend(u16be(len));
        body.extend(&block[2..]);
        body.extend(tail);
        bodies.push(body);
    }
    let mut body = fixed.clone();
    body.extend([0, 3, 0, 13, 0]);
    bodies.push(body);
    let mut body = fixed.clone();
    body.extend(vec16(&[0, 13, 0, 9, 1, 2]));
    bodies.push(body);
    for body in bodies {
        let wire = records(&handshake(&body), &[MAX_FRAGMENT_LEN]);
        assert!(malformed(&wire), "{body:?}");
    }
}

#[test]
fn oversized_hello() {
    // An announced length that cannot fit is refused from the headers alone.
    assert!(matches!(
        error(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
        HelloError::TooLarge
    ));
    assert!(matches!(
        error(&[22, 3, 1, 0, 4, 1, 0, 0xff, 0xf8]),
        HelloError::TooLarge
    ));
    // Exactly MAX_HELLO_LEN on the wire is accepted, one byte more is not.
    let padded = |pad: usize| {
        let mut exts = modern_extensions(Some(b"big.example"), &[H2]);
        exts.push((21, vec![0; pad]));
        records(&message(&exts), &[MAX_FRAGMENT_LEN])
    };
    let base = padded(0).len();
    // 4 full-size records: 4 headers of overhead.
    let pad = MAX_HELLO_LEN - 4 * RECORD_HEADER_LEN - (base - RECORD_HEADER_LEN);
    let wire = padded(pad);
    assert_eq!(wire.len(), MAX_HELLO_LEN);
    assert_eq!(complete(&wire).sni.as_deref(), Some("big.example"));
    let wire = padded(pad + 1);
    assert_eq!(wire.len(), MAX_HELLO_LEN + 1);
    assert!(matches!(error(&wire), HelloError::TooLarge));
    // Small enough a message, made too large by tiny records.
    let wire = records(&padded(11_000)[RECORD_HEADER_LEN..], &[1]);
    assert!(matches!(error(&wire), HelloError::TooLarge));
    assert!(matches!(
        error(&wire[..MAX_HELLO_LEN + 1]),
        HelloError::TooLarge
    ));
}

#[test]
fn not_tls() {
    let inputs: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"G",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        // SSLv2 CLIENT-HELLO framing.
        &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
        &[0x16, 0x00, 0x01],
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
    ];
    for input in inputs {
        let e = error(input);
        assert!(matches!(e, HelloError::NotTls(_)), "{input:?}: {e}");
        assert!(e.to_string().starts_with("not TLS: "));
    }
}

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    const INTERESTING: [u8; 8] = [0, 1, 3, 0x16, 0x3f, 0x40, 0x80, 0xff];
    let mut v = base.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(v.len());
        match rng.below(8) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => v[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 if v.len() > 1 => {
                let at = at.min(v.len() - 2);
                let value: u16 = match rng.below(4) {
                    0 => 0,
                    1 => 0xffff,
                    2 => 0x4000,
                    _ => u16::from_be_bytes([v[at], v[at + 1]]).wrapping_add(1),
                };
                v[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
            3 => v.insert(at, rng.next() as u8),
            4 if !v.is_empty() => {
                v.remove(at);
            }
            5 => v.truncate(at),
            6 => {
                let len = rng.below(40).min(v.len() - at);
                let chunk = v[at..at + len].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, chunk);
            }
            _ if !v.is_empty() => v[at] = v[at].wrapping_sub(1),
            _ => {}
        }
    }
    v
}

/// A deterministic stand-in for cargo-fuzz on stable: mutations of valid hellos must never panic,
/// and the answers for a byte string and its prefixes must agree the way peek() relies on.
#[test]
fn mutated_hellos_are_consistent() {
    let small = message(&[
        (EXT_SERVER_NAME, server_name_ext(&[(0, b"a.example")])),
        (EXT_ALPN, alpn_ext(&[H2, HTTP11])),
    ]);
    let bases = [
        records(&small, &[MAX_FRAGMENT_LEN]),
        records(&small, &[3, 40]),
        records(&handshake(&fixed_fields()), &[MAX_FRAGMENT_LEN]),
        curl_hello(),
        modern_wire("api.example.com"),
    ];
    let mut rng = Rng(0x5ba_c0ff_ee15_600d);
    let (mut complete_n, mut need_n, mut error_n) = (0, 0, 0);
    let started = Instant::now();
    for round in 0..200_000 {
        let wire = mutate(&mut rng, &bases[round % bases.len()]);
        match parse(&wire) {
            Ok(Progress::Complete(hello)) => {
                complete_n += 1;
                let cut = rng.below(wire.len());
                match parse(&wire[..cut]) {
                    Ok(Progress::NeedAtLeast(n)) => assert!(cut + n <= wire.len()),
                    Ok(Progress::Complete(early)) => assert_eq!(early, hello),
                    Err(e) => panic!("prefix {cut} of a complete hello: {e}: {wire:?}"),
                }
            }
            Ok(Progress::NeedAtLeast(n)) => {
                need_n += 1;
                assert!(n >= 1 && wire.len() + n <= MAX_HELLO_LEN);
                let cut = rng.below(wire.len());
                if let Err(e) = parse(&wire[..cut]) {
                    panic!("an error is final, yet prefix {cut} fails ({e}): {wire:?}");
                }
                let mut longer = wire.clone();
                longer.resize(wire.len() + n - 1, rng.next() as u8);
                assert!(
                    !matches!(parse(&longer), Ok(Progress::Complete(_))),
                    "completed with fewer bytes than announced: {wire:?}"
                );
            }
            Err(_) => error_n += 1,
        }
    }
    eprintln!(
        "200000 mutations in {:?}: {complete_n} complete, {need_n} need more, {error_n} errors",
        started.elapsed()
    );
    assert!(complete_n > 10_000 && need_n > 10_000 && error_n > 10_000);
}

async fn connected() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.set_nodelay(true).unwrap();
    (client, server)
}

/// Writes `pieces` with a pause before each but the first, then half-closes.
fn send_slowly(mut client: TcpStream, pieces: Vec<Vec<u8>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            client.write_all(piece).await.unwrap();
        }
        client.shutdown().await.unwrap();
    })
}

/// Peeks, then checks that the socket still yields every byte the client sent.
async fn peek_then_read_all(server: &mut TcpStream, sent: &[u8]) -> (ClientHello, usize) {
    let attempts = Cell::new(0);
    let hello = tokio::time::timeout(
        Duration::from_secs(10),
        peek_observed(server, || attempts.set(attempts.get() + 1)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(get_rcvlowat(server.as_fd()).unwrap(), 1);
    let mut received = Vec::new();
    server.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, sent, "peek consumed or altered bytes");
    (hello, attempts.get())
}

#[tokio::test]
async fn peek_pieces_without_consuming() {
    let (client, mut server) = connected().await;
    let mut sent = modern_wire("api.example.com");
    // Early data after the hello must stay in the socket too.
    sent.extend([23, 3, 3, 0, 3, 1, 2, 3]);
    let in_sni = sent.windows(7).position(|w| w == b"example").unwrap();
    let pieces = vec![
        sent[..3].to_vec(),
        sent[3..in_sni].to_vec(),
        sent[in_sni..].to_vec(),
    ];
    let writer = send_slowly(client, pieces);
    let (hello, attempts) = peek_then_read_all(&mut server, &sent).await;
    writer.await.unwrap();
    assert_eq!(hello.sni.as_deref(), Some("api.example.com"));
    assert_eq!(hello.alpn, vec![H2.to_vec(), HTTP11.to_vec()]);
    assert!(attempts <= 4, "{attempts} looks for 3 pieces");
}

#[tokio::test]
async fn peek_two_records() {
    let (client, mut server) = connected().await;
    let msg = message(&modern_extensions(Some(b"Two.Records.Example."), &[HTTP11]));
    let sent = records(&msg, &[700]);
    let second = 5 + 700;
    let writer = send_slowly(
        client,
        vec![sent[..second].to_vec(), sent[second..].to_vec()],
    );
    let (hello, _) = peek_then_read_all(&mut server, &sent).await;
    writer.await.unwrap();
    assert_eq!(hello.sni.as_deref(), Some("two.records.example"));
    assert_eq!(hello.alpn, vec![HTTP11.to_vec()]);
}

#[tokio::test]
async fn peek_hello_larger_than_first_buffer() {
    let (client, mut server) = connected().await;
    let mut exts = modern_extensions(Some(b"big.example"), &[H2]);
    exts.push((21, vec![0; 40_000]));
    let sent = records(&message(&exts), &[MAX_FRAGMENT_LEN]);
    let writer = send_slowly(client, vec![sent.clone()]);
    let (hello, _) = peek_then_read_all(&mut server, &sent).await;
    writer.await.unwrap();
    assert_eq!(hello.sni.as_deref(), Some("big.example"));
}

#[tokio::test]
async fn slow_client_does_not_spin() {
    let (mut client, server) = connected().await;
    let wire = modern_wire("api.example.com");
    client.write_all(&wire[..100]).await.unwrap();
    let drip = tokio::spawn(async move {
        for byte in &wire[100..110] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&[*byte]).await.unwrap();
        }
        // Keep the connection open past the reader's timeout.
        tokio::time::sleep(Duration::from_millis(500)).await;
        client
    });
    let attempts = Cell::new(0);
    let outcome = tokio::time::timeout(
        Duration::from_millis(400),
        peek_observed(&server, || attempts.set(attempts.get() + 1)),
    )
    .await;
    assert!(
        outcome.is_err(),
        "an incomplete hello must keep peek pending"
    );
    // A wakeup per dripped byte would be 11 looks; a busy loop, thousands.
    assert!(
        (1..=3).contains(&attempts.get()),
        "{} looks",
        attempts.get()
    );
    assert_eq!(get_rcvlowat(server.as_fd()).unwrap(), 1);
    drop(drip.await.unwrap());
}

#[tokio::test]
async fn eof_mid_hello() {
    let wire = modern_wire("api.example.com");
    // FIN right behind the data, FIN after a pause (while peek waits on SO_RCVLOWAT), and FIN
    // without any data.
    for pieces in [
        vec![wire[..100].to_vec()],
        vec![wire[..100].to_vec(), vec![]],
        vec![],
    ] {
        let (client, server) = connected().await;
        let writer = send_slowly(client, pieces);
        let attempts = Cell::new(0);
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            peek_observed(&server, || attempts.set(attempts.get() + 1)),
        )
        .await
        .unwrap();
        writer.await.unwrap();
        let e = outcome.unwrap_err();
        assert!(matches!(e, HelloError::Closed), "{e}");
        assert_eq!(e.to_string(), "closed before the ClientHello was complete");
        assert!(attempts.get() <= 3, "{} looks", attempts.get());
        assert_eq!(get_rcvlowat(server.as_fd()).unwrap(), 1);
    }
}

#[tokio::test]
async fn peek_refuses_plain_http() {
    let (client, server) = connected().await;
    let writer = send_slowly(client, vec![b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()]);
    let e = tokio::time::timeout(Duration::from_secs(10), peek(&server))
        .await
        .unwrap()
        .unwrap_err();
    writer.await.unwrap();
    assert!(matches!(e, HelloError::NotTls(_)), "{e}");
}
