use super::*;

const SECRET: &[u8] = b"sk-test-0123456789abcdef";

fn needles() -> Arc<Needles> {
    Arc::new(Needles::new([SECRET]).unwrap())
}

/// A frame as a server (or, with `key`, a client) writes it.
fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, fin, opcode, payload);
    if let Some(key) = key {
        let at = out.len() - payload.len();
        out[1] |= 0x80;
        let masked: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        out.truncate(at);
        out.extend_from_slice(&key);
        out.extend_from_slice(&masked);
    }
    out
}

/// Reads frames back: (fin, opcode, payload) each, and messages joined from them.
fn frames(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (first, second) = (bytes[0], bytes[1]);
        assert_eq!(second & 0x80, 0, "the client gets unmasked frames");
        let (len, at) = match second & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            len => (len as usize, 2),
        };
        frames.push((
            first & 0x80 != 0,
            first & 0x0f,
            bytes[at..at + len].to_vec(),
        ));
        bytes = &bytes[at + len..];
    }
    frames
}

fn messages(frames: &[(bool, u8, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    let mut current: Option<(u8, Vec<u8>)> = None;
    for (fin, opcode, payload) in frames {
        if *opcode >= 8 {
            messages.push((*opcode, payload.clone()));
            continue;
        }
        let message = current.get_or_insert_with(|| (*opcode, Vec::new()));
        if *opcode != 0 {
            assert_eq!(message.1.len(), 0, "a new message inside another");
        }
        message.1.extend_from_slice(payload);
        if *fin {
            messages.extend(current.take());
        }
    }
    assert!(current.is_none(), "a message left open");
    messages
}

fn through(input: &[u8], cuts: &[usize]) -> (Vec<u8>, u64) {
    let mut masker = TunnelMasker::new(needles(), true);
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([&input.len()]) {
        masker.push(&input[from..cut], &mut out).unwrap();
        from = cut;
    }
    masker.finish(&mut out);
    (out, masker.redacted())
}

#[test]
fn a_secret_split_across_the_frames_of_a_message_and_across_reads_is_masked() {
    let stars = vec![b'*'; SECRET.len()];
    let mut input = frame(false, 1, b"you sent sk-test-01", None);
    input.extend(frame(true, 0, b"23456789abcdef, thanks", None));
    input.extend(frame(true, 2, &[b"bin ".as_slice(), SECRET].concat(), None));
    let want = vec![
        (1, [b"you sent ".as_slice(), &stars, b", thanks"].concat()),
        (2, [b"bin ".as_slice(), &stars].concat()),
    ];
    for cut in 0..=input.len() {
        let (out, count) = through(&input, &[cut]);
        assert_eq!(messages(&frames(&out)), want, "cut at {cut}");
        assert_eq!(count, 2);
    }
    // One byte at a time: held bytes come out in later frames, never past the message's end.
    let cuts: Vec<usize> = (1..input.len()).collect();
    let (out, _) = through(&input, &cuts);
    assert_eq!(messages(&frames(&out)), want);
}

#[test]
fn control_frames_pass_whole_between_fragments_and_are_masked() {
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b"bye ".as_slice(), SECRET].concat());
    let mut input = frame(false, 1, b"part one ", None);
    input.extend(frame(true, 9, SECRET, None));
    input.extend(frame(true, 0, b"part two", None));
    input.extend(frame(true, 8, &close, None));
    let (out, count) = through(&input, &[]);
    let stars = vec![b'*'; SECRET.len()];
    let mut masked_close = 1000u16.to_be_bytes().to_vec();
    masked_close.extend_from_slice(&[b"bye ".as_slice(), &stars].concat());
    assert_eq!(
        messages(&frames(&out)),
        [
            (9, stars.clone()),
            (1, b"part one part two".to_vec()),
            (8, masked_close)
        ]
    );
    assert_eq!(count, 2);
}

#[test]
fn a_masked_or_long_frame_is_read_and_sent_on_unmasked() {
    let long: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut payload = long.clone();
    payload.extend_from_slice(SECRET);
    let input = frame(true, 2, &payload, Some([1, 2, 3, 4]));
    let (out, _) = through(&input, &[3, 100, 65_000]);
    let mut want = long;
    want.extend_from_slice(&[b'*'; SECRET.len()]);
    assert_eq!(messages(&frames(&out)), [(2, want)]);
}

#[test]
fn what_cannot_be_scanned_is_refused() {
    let refused = |input: Vec<u8>| {
        let mut masker = TunnelMasker::new(needles(), true);
        masker.push(&input, &mut Vec::new()).unwrap_err()
    };
    // permessage-deflate sets RSV1 on a compressed message.
    let mut compressed = frame(true, 1, b"\x0a\x0b", None);
    compressed[0] |= 0x40;
    assert_eq!(refused(compressed), Unscannable::Extension);
    assert!(matches!(
        refused(frame(true, 0, b"x", None)),
        Unscannable::Framing(_)
    ));
    assert!(matches!(
        refused(frame(false, 9, b"x", None)),
        Unscannable::Framing(_)
    ));
    assert!(matches!(
        refused(frame(true, 3, b"x", None)),
        Unscannable::Framing(_)
    ));
    let mut two_starts = frame(false, 1, b"x", None);
    two_starts.extend(frame(true, 1, b"y", None));
    assert!(matches!(refused(two_starts), Unscannable::Framing(_)));
}

#[test]
fn other_protocols_are_one_stream() {
    let mut masker = TunnelMasker::new(needles(), false);
    let mut out = Vec::new();
    masker.push(b"raw sk-test-0123", &mut out).unwrap();
    assert_eq!(out, b"raw ");
    masker.push(b"456789abcdef and", &mut out).unwrap();
    masker.push(b" sk-test", &mut out).unwrap();
    masker.finish(&mut out);
    assert_eq!(
        out,
        [b"raw ".as_slice(), &[b'*'; SECRET.len()], b" and sk-test"].concat()
    );
    assert_eq!(masker.redacted(), 1);
}
