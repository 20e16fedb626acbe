//! Fuzzes the redaction matcher (`sandbox::redact`): a stream cut into arbitrary pieces goes
//! through a `Masker`, and what comes out must be what a naive masker that sees the whole stream at once
//! makes: every occurrence of every needle (overlapping ones included, needles under `MIN_NEEDLE` bytes
//! left alone) replaced by as many `*`, every other byte as it was, nothing lost or added. After each
//! piece, exactly the longest end of the stream so far that could still begin a needle is held back (no
//! more, so streaming stays streaming; no less, so a needle cut between pieces is still caught). The
//! count for the audit record agrees with `Needles::mask_all` over the whole stream.
//!
//! Input: a flags byte (bit 0: bytes as they are, else mapped onto the letters `a` and `b`, so that random
//! streams hold needles often), a needle count byte (1 to 4), each needle as a length byte (1 to 40) and its
//! bytes, a count byte and that many piece lengths (0 to 255, used in turn; 0 pushes an empty piece, then
//! one byte), then the stream.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sandbox::redact::{Masker, Needles, MIN_NEEDLE};

fuzz_target!(|data: &[u8]| {
    let Some((flags, mut rest)) = data.split_first() else {
        return;
    };
    let map = |byte: u8| {
        if flags & 1 == 1 {
            byte
        } else {
            b'a' + byte % 2
        }
    };
    let Some((&count, after)) = rest.split_first() else {
        return;
    };
    rest = after;
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for _ in 0..count % 4 + 1 {
        let Some((&len, after)) = rest.split_first() else {
            return;
        };
        let len = usize::from(len % 40 + 1).min(after.len());
        needles.push(after[..len].iter().map(|&b| map(b)).collect());
        rest = &after[len..];
    }
    let Some((&pieces, after)) = rest.split_first() else {
        return;
    };
    let pieces = usize::from(pieces).min(after.len());
    let (lengths, stream) = after.split_at(pieces);
    let stream: Vec<u8> = stream.iter().map(|&b| map(b)).collect();

    let built = Arc::new(
        Needles::new(needles.iter().map(Vec::as_slice)).expect("needles of at most 40 bytes build"),
    );
    let needles: Vec<&[u8]> = needles
        .iter()
        .map(Vec::as_slice)
        .filter(|needle| needle.len() >= MIN_NEEDLE)
        .collect();

    let mut masker = Masker::new(built.clone());
    let mut out = Vec::new();
    let mut at = 0;
    let mut turn = 0;
    while at < stream.len() {
        let len = lengths
            .get(turn)
            .map_or(stream.len(), |&len| usize::from(len));
        turn = (turn + 1) % lengths.len().max(1);
        // An empty piece is pushed as one (a zero-length read or DATA frame), then the stream moves on.
        let end = (at + len.max(1)).min(stream.len());
        if len == 0 {
            out.extend_from_slice(&masker.push(Bytes::new()));
        }
        out.extend_from_slice(&masker.push(Bytes::copy_from_slice(&stream[at..end])));
        at = end;
        assert_eq!(
            masker.pending(),
            could_begin_a_needle(&stream[..at], &needles),
            "bytes held back after {at} of the stream"
        );
        assert_eq!(out.len() + masker.pending(), at, "bytes out and held");
    }
    out.extend_from_slice(&masker.finish());

    let expected = naive_mask(&stream, &needles);
    assert_eq!(out, expected, "streamed and masked whole differ");
    let whole = built.mask_all(&stream);
    assert_eq!(
        whole.as_ref().map_or(&stream, |masked| &masked.bytes),
        &expected,
        "mask_all and the naive masker differ"
    );
    assert_eq!(
        masker.redacted(),
        whole.map_or(0, |masked| masked.count),
        "the count streamed and the count of mask_all"
    );
});

/// Every occurrence of every needle masked, found by comparing at every offset.
fn naive_mask(stream: &[u8], needles: &[&[u8]]) -> Vec<u8> {
    let mut masked = stream.to_vec();
    for needle in needles {
        for start in 0..stream.len() {
            if stream[start..].starts_with(needle) {
                masked[start..start + needle.len()].fill(b'*');
            }
        }
    }
    masked
}

/// The length of the longest end of `seen` that is a proper prefix of a needle.
fn could_begin_a_needle(seen: &[u8], needles: &[&[u8]]) -> usize {
    needles
        .iter()
        .flat_map(|needle| {
            (1..needle.len().min(seen.len() + 1)).filter(|&len| seen.ends_with(&needle[..len]))
        })
        .max()
        .unwrap_or(0)
}
