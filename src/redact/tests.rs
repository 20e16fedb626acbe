use std::time::Duration;

use super::*;

const KEY: &[u8] = b"sk-test-0123456789abcdef";

fn needles(list: &[&[u8]]) -> Arc<Needles> {
    Arc::new(Needles::new(list.iter().copied()).unwrap())
}

/// `input` streamed through a new masker, cut at `cuts` (increasing offsets): what came out, and the count.
fn stream(needles: &Arc<Needles>, input: &[u8], cuts: &[usize]) -> (Vec<u8>, u64) {
    let mut masker = Masker::new(Arc::clone(needles));
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([&input.len()]) {
        out.extend_from_slice(&masker.push(Bytes::copy_from_slice(&input[from..cut])));
        from = cut;
    }
    out.extend_from_slice(&masker.finish());
    (out, masker.redacted())
}

/// What masking must give, by brute force: every occurrence of every needle long enough, its bytes
/// masked; runs counted as matches taken by where they end (longest first) that begin past the last run.
fn reference(list: &[&[u8]], input: &[u8]) -> (Vec<u8>, u64) {
    let mut found = Vec::new();
    for needle in list.iter().filter(|needle| needle.len() >= MIN_NEEDLE) {
        for start in 0..input.len() {
            if input[start..].starts_with(needle) {
                found.push((start, start + needle.len()));
            }
        }
    }
    found.sort_by_key(|&(start, end)| (end, start));
    let mut out = input.to_vec();
    let (mut run_end, mut count) = (0, 0);
    for (start, end) in found {
        if start >= run_end {
            count += 1;
        }
        run_end = run_end.max(end);
        out[start..end].fill(b'*');
    }
    (out, count)
}

/// How many of `seen`'s last bytes could still begin one of `list`, by brute force.
fn longest_open_prefix(list: &[&[u8]], seen: &[u8]) -> usize {
    (1..seen.len().min(MAX_NEEDLE) + 1)
        .rev()
        .find(|&len| {
            let tail = &seen[seen.len() - len..];
            list.iter().any(|needle| {
                needle.len() >= MIN_NEEDLE && needle.len() > len && needle.starts_with(tail)
            })
        })
        .unwrap_or(0)
}

/// A tiny deterministic generator, so that the property tests need no crate and fail the same way again.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }

    /// Up to `most` increasing cut points in `0..=len`.
    fn cuts(&mut self, len: usize, most: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..self.below(most + 1))
            .map(|_| self.below(len + 1))
            .collect();
        cuts.sort_unstable();
        cuts
    }
}

fn masked(input: &[u8], range: Range<usize>) -> Vec<u8> {
    let mut out = input.to_vec();
    out[range].fill(b'*');
    out
}

#[test]
fn a_prefix_is_held_until_the_next_bytes_decide() {
    let needles = needles(&[KEY]);
    let mut masker = Masker::new(needles);
    assert_eq!(
        &masker.push(Bytes::from_static(b"key: sk-test-01"))[..],
        b"key: "
    );
    assert_eq!(masker.pending(), 10, "sk-test-01 could begin the key");
    assert_eq!(&masker.push(Bytes::from_static(b"2345"))[..], b"");
    assert_eq!(masker.pending(), 14);
    assert_eq!(
        &masker.push(Bytes::from_static(b"!, sk-"))[..],
        b"sk-test-012345!, ",
        "released unmasked once it is not the key"
    );
    assert_eq!(masker.pending(), 3);
    assert_eq!(&masker.finish()[..], b"sk-");
    assert_eq!(masker.redacted(), 0);
}

#[test]
fn only_what_could_begin_a_needle_is_held() {
    let needles = needles(&[b"abcdefgh"]);
    let mut masker = Masker::new(needles);
    assert_eq!(&masker.push(Bytes::from_static(b"xxabcab"))[..], b"xxabc");
    assert_eq!(masker.pending(), 2);
    assert_eq!(&masker.push(Bytes::from_static(b"x"))[..], b"abx");
    assert_eq!(masker.pending(), 0);
    assert_eq!(&masker.push(Bytes::from_static(b"abcdefg"))[..], b"");
    assert_eq!(masker.pending(), 7);
    assert_eq!(&masker.push(Bytes::from_static(b"habc"))[..], b"********");
    assert_eq!(masker.pending(), 3);
    assert_eq!(&masker.finish()[..], b"abc");
    assert_eq!(masker.redacted(), 1);
}

#[test]
fn a_needle_cut_at_every_offset_across_two_pushes_is_masked() {
    let needles = needles(&[KEY]);
    let body = [&b"{\"echo\":\""[..], KEY, b"\"}"].concat();
    let expected = masked(&body, 9..9 + KEY.len());
    for cut in 0..=body.len() {
        assert_eq!(
            stream(&needles, &body, &[cut]),
            (expected.clone(), 1),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_needle_in_one_byte_pushes_is_masked() {
    let needles = needles(&[KEY, b"Bearer sk-test-0123456789abcdef"]);
    let body = [&b"Authorization: Bearer "[..], KEY, b"\r\n", KEY].concat();
    let cuts: Vec<usize> = (1..body.len()).collect();
    let expected = [&b"Authorization: "[..], &[b'*'; 31], b"\r\n", &[b'*'; 24]].concat();
    assert_eq!(stream(&needles, &body, &cuts), (expected, 2));
    // And nothing waits longer than it must, byte after byte.
    let mut masker = Masker::new(needles);
    for (at, &byte) in body.iter().enumerate() {
        masker.push(Bytes::copy_from_slice(&[byte]));
        let open = longest_open_prefix(&[KEY, b"Bearer sk-test-0123456789abcdef"], &body[..=at]);
        assert_eq!(
            masker.pending(),
            open,
            "after {:?}",
            String::from_utf8_lossy(&body[..=at])
        );
    }
}

#[test]
fn overlapping_needles_are_all_masked() {
    // Two matches that overlap: leftmost-longest would report the first and let `ijkl` through.
    let needles_ = needles(&[b"abcdefgh", b"efghijkl"]);
    assert_eq!(
        stream(&needles_, b"-abcdefghijkl-", &[]),
        (masked(b"-abcdefghijkl-", 1..13), 1)
    );
    // One needle a prefix of another, one inside another.
    let needles_ = needles(&[b"sk-live-1234", b"sk-live-12345678", b"Bearer sk-live-1234"]);
    let body = b"Bearer sk-live-12345678 sk-live-1234x";
    let expected = b"*********************** ************x".to_vec();
    assert_eq!(stream(&needles_, body, &[]), (expected, 2));
}

#[test]
fn a_needle_that_ends_later_but_begins_earlier_is_masked_whole() {
    let needles_ = needles(&[b"cdefghij", b"abcdefghijk"]);
    for cut in 0..=13 {
        assert_eq!(
            stream(&needles_, b"-abcdefghijk-", &[cut]),
            (masked(b"-abcdefghijk-", 1..12), 1)
        );
    }
    let found = needles_.mask_all(b"-abcdefghijk-").unwrap();
    assert_eq!(
        (found.bytes, found.count),
        (masked(b"-abcdefghijk-", 1..12), 1)
    );
}

#[test]
fn a_whole_needle_still_holds_what_could_begin_another() {
    // `xxxxabcd` is a whole needle that no needle goes on from, yet its `abcd` begins the second one.
    let list: [&[u8]; 2] = [b"xxxxabcd", b"abcdyyyy"];
    let needles = needles(&list);
    let mut masker = Masker::new(Arc::clone(&needles));
    assert_eq!(&masker.push(Bytes::from_static(b"-xxxxabcd"))[..], b"-****");
    assert_eq!(masker.pending(), 4);
    assert_eq!(&masker.push(Bytes::from_static(b"yyyy-"))[..], b"********-");
    assert_eq!(masker.redacted(), 1);
    for cut in 0..=14 {
        assert_eq!(
            stream(&needles, b"-xxxxabcdyyyy-", &[cut]),
            reference(&list, b"-xxxxabcdyyyy-")
        );
    }
}

#[test]
fn a_needle_at_the_very_end_of_the_stream_is_masked() {
    let needles = needles(&[KEY]);
    let body = [&b"token="[..], KEY].concat();
    let mut masker = Masker::new(Arc::clone(&needles));
    let out = masker.push(Bytes::from(body.clone()));
    assert_eq!(
        masker.pending(),
        0,
        "a whole needle that none goes on from holds nothing back"
    );
    assert_eq!(out, masked(&body, 6..body.len()));
    assert!(masker.finish().is_empty());
    for cut in 0..=body.len() {
        assert_eq!(
            stream(&needles, &body, &[cut]),
            (masked(&body, 6..body.len()), 1)
        );
    }
}

#[test]
fn a_prefix_that_ends_the_stream_is_released_unmasked() {
    let needles = needles(&[KEY]);
    let body = b"token=sk-test-0123456789abcde";
    for cut in 0..=body.len() {
        assert_eq!(stream(&needles, body, &[cut]), (body.to_vec(), 0));
    }
}

#[test]
fn finish_ends_a_stream_and_the_next_push_begins_another() {
    let needles = needles(&[KEY]);
    let mut masker = Masker::new(needles);
    masker.push(Bytes::from_static(b"sk-test-0123"));
    assert_eq!(&masker.finish()[..], b"sk-test-0123");
    assert_eq!(
        &masker.push(Bytes::from_static(b"456789abcdef"))[..],
        b"456789abcdef",
        "no match across streams"
    );
    let out = masker.push(Bytes::copy_from_slice(KEY));
    assert_eq!(&out[..], &[b'*'; 24][..]);
    assert_eq!(masker.redacted(), 1);
}

#[test]
fn when_nothing_matches_the_input_itself_comes_back() {
    let needles = needles(&[KEY, b"Bearer sk-test-0123456789abcdef"]);
    let mut masker = Masker::new(needles);
    let input = Bytes::from(b"{\"data\": [1, 2, 3], \"next\": null}\n".repeat(1000));
    let out = masker.push(input.clone());
    assert_eq!(out.as_ptr(), input.as_ptr(), "not a copy");
    assert_eq!(out.len(), input.len());
    // With a tail held, the front of it.
    let input = Bytes::from(b"{\"data\": [1, 2, 3]} sk-te".repeat(1000));
    let out = masker.push(input.clone());
    assert_eq!(out.as_ptr(), input.as_ptr());
    assert_eq!(out.len(), input.len() - 5);
    assert_eq!(masker.pending(), 5);
}

#[test]
fn released_bytes_go_into_a_buffer_as_push_returns_them() {
    let list: [&[u8]; 3] = [KEY, b"Bearer sk-test-0123456789abcdef", b"efghijklmnop"];
    let needles = needles(&list);
    let mut rng = Lcg(7);
    for _ in 0..200 {
        let body = random_text(&mut rng, &list, 300);
        let cuts = rng.cuts(body.len(), 8);
        let mut masker = Masker::new(Arc::clone(&needles));
        let mut out = b"frame head".to_vec();
        let mut from = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            masker.push_into(&body[from..cut], &mut out);
            from = cut;
        }
        out.extend_from_slice(&masker.finish());
        assert_eq!(&out[..10], b"frame head", "what the buffer held stays");
        let expected = reference(&list, &body);
        assert_eq!((out[10..].to_vec(), masker.redacted()), expected);
    }
}

#[test]
fn no_needles_pass_everything_untouched() {
    let needles = Arc::new(Needles::new([]).unwrap());
    assert!(needles.is_empty());
    let mut masker = Masker::new(Arc::clone(&needles));
    let input = Bytes::from_static(b"anything at all");
    assert_eq!(masker.push(input.clone()).as_ptr(), input.as_ptr());
    let mut out = Vec::new();
    masker.push_into(b"anything", &mut out);
    assert_eq!(out, b"anything");
    assert!(masker.finish().is_empty());
    assert_eq!(needles.mask_all(b"anything"), None);
}

#[test]
fn short_needles_are_not_masked_and_long_ones_are_refused() {
    let needles = needles(&[b"", b"abc", b"1234567", b"12345678", b"12345678"]);
    assert_eq!(needles.len(), 1, "short ones and repeats dropped");
    assert_eq!(
        needles.mask_all(b"abc 1234567 12345678"),
        Some(Masked {
            bytes: b"abc 1234567 ********".to_vec(),
            count: 1
        })
    );
    let long = vec![b'x'; MAX_NEEDLE + 1];
    assert!(matches!(
        Needles::new([&long[..]]),
        Err(NeedlesError::TooLong(len)) if len == MAX_NEEDLE + 1
    ));
    let longest = vec![b'x'; MAX_NEEDLE];
    assert_eq!(Needles::new([&longest[..]]).unwrap().len(), 1);
}

#[test]
fn mask_all_says_when_nothing_matched_and_counts_runs() {
    let needles = needles(&[
        KEY,
        b"Bearer sk-test-0123456789abcdef",
        b"abcdefgh",
        b"efghijkl",
    ]);
    assert_eq!(
        needles.mask_all(b"Authorization: Bearer sk-test-0123"),
        None
    );
    let value = [&b"Bearer "[..], KEY, b", ", KEY, b" abcdefghijkl"].concat();
    let Masked { bytes, count } = needles.mask_all(&value).unwrap();
    assert_eq!(
        count, 3,
        "the header value with its key, the key, the two overlapping needles"
    );
    assert_eq!(bytes.len(), value.len());
    assert!(bytes.iter().all(|&b| b == b'*' || b == b',' || b == b' '));
}

#[test]
fn binary_needles_in_binary_data() {
    let list: [&[u8]; 3] = [
        b"\0\0\0\0\0\0\0\0\xff",
        b"\xff\xfe\0\x01\x02\x03\x04\x05",
        b"\r\n\r\n\0\0\0\0",
    ];
    let needles = needles(&list);
    let mut rng = Lcg(11);
    for _ in 0..300 {
        let body = random_text(&mut rng, &list, 200);
        let cuts = rng.cuts(body.len(), 6);
        assert_eq!(stream(&needles, &body, &cuts), reference(&list, &body));
    }
}

/// Random bytes of `needles`' own alphabet, with pieces of needles (whole, cut short, run together).
fn random_text(rng: &mut Lcg, needles: &[&[u8]], most: usize) -> Vec<u8> {
    let alphabet: Vec<u8> = needles.iter().flat_map(|n| n.iter().copied()).collect();
    let mut text = Vec::new();
    let len = rng.below(most);
    while text.len() < len {
        let needle = needles[rng.below(needles.len())];
        match rng.below(4) {
            0 => text.extend_from_slice(needle),
            1 => text.extend_from_slice(&needle[..rng.below(needle.len() + 1)]),
            2 => text.extend_from_slice(&needle[rng.below(needle.len() + 1)..]),
            _ => {
                let noise = rng.below(8);
                text.extend(rng.bytes(noise, &alphabet));
            }
        }
    }
    text
}

#[test]
fn streaming_cut_anywhere_is_masking_the_whole() {
    // Needles of a tiny alphabet overlap, nest and follow each other everywhere.
    let mut rng = Lcg(1);
    for round in 0..300 {
        let alphabet: &[u8] = if round % 2 == 0 { b"ab" } else { b"abc\0" };
        let list: Vec<Vec<u8>> = (0..1 + rng.below(6))
            .map(|_| {
                let len = MIN_NEEDLE + rng.below(8);
                rng.bytes(len, alphabet)
            })
            .collect();
        let list: Vec<&[u8]> = list.iter().map(Vec::as_slice).collect();
        let needles = needles(&list);
        for _ in 0..10 {
            let body = random_text(&mut rng, &list, 400);
            let expected = reference(&list, &body);
            let whole = needles
                .mask_all(&body)
                .map_or((body.clone(), 0), |m| (m.bytes, m.count));
            assert_eq!(whole, expected, "whole buffer, round {round}");
            let cuts = rng.cuts(body.len(), 12);
            let (out, count) = stream(&needles, &body, &cuts);
            assert_eq!(
                (out.len(), count),
                (body.len(), expected.1),
                "round {round}, cuts {cuts:?}"
            );
            assert_eq!(out, expected.0, "round {round}, cuts {cuts:?}");
            // And each push holds back exactly what could still begin a needle.
            let mut masker = Masker::new(Arc::clone(&needles));
            let mut from = 0;
            for &cut in &cuts {
                masker.push(Bytes::copy_from_slice(&body[from..cut]));
                from = cut;
                assert_eq!(
                    masker.pending(),
                    longest_open_prefix(&list, &body[..cut]),
                    "round {round}, at {cut}"
                );
            }
        }
    }
}

#[test]
fn many_needles_with_and_without_the_prefilter() {
    let mut rng = Lcg(3);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
    for (count, prefilter) in [(40, true), (200, false)] {
        let list: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let len = 8 + rng.below(60);
                rng.bytes(len, alphabet)
            })
            .collect();
        let list: Vec<&[u8]> = list.iter().map(Vec::as_slice).collect();
        let needles = needles(&list);
        let matcher = needles.matcher.as_ref().unwrap();
        // Over 128 prefixes Teddy gives up; under, it is there where the CPU has SIMD (SSSE3, Neon).
        if !prefilter {
            assert!(matcher.prefilter.is_none(), "{count} needles");
        }
        for _ in 0..50 {
            let mut body = rng.bytes(2000, alphabet);
            for _ in 0..rng.below(5) {
                let needle = list[rng.below(list.len())];
                let at = rng.below(body.len() - needle.len());
                body[at..at + needle.len()].copy_from_slice(needle);
            }
            let cuts = rng.cuts(body.len(), 10);
            let expected = reference(&list, &body);
            assert!(expected.1 > 0 || body == expected.0);
            assert_eq!(stream(&needles, &body, &cuts), expected);
        }
    }
}

#[test]
fn held_bytes_stay_within_the_longest_needle() {
    let list: [&[u8]; 2] = [b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", b"aaaaaaaac"];
    let needles = needles(&list);
    let mut masker = Masker::new(needles);
    let mut released = 0;
    // 4 MiB of `a`: every byte could begin a needle, yet only 31 wait.
    for _ in 0..1024 {
        released += masker.push(Bytes::from(vec![b'a'; 4096])).len();
        assert_eq!(masker.pending(), 31);
    }
    assert_eq!(released + masker.finish().len(), 4 << 20);
}

#[test]
fn an_sse_event_is_never_held() {
    let forms = Forms::of(KEY, &[b"Bearer sk-test-0123456789abcdef"]);
    let needles = Arc::new(Needles::new(forms.iter()).unwrap());
    let mut masker = Masker::new(needles);
    let event = b"data: {\"text\": \"sk-test-0123\"}\n\n";
    assert_eq!(&masker.push(Bytes::from_static(event))[..], event);
    assert_eq!(masker.pending(), 0);
}

#[test]
fn a_secret_and_its_header_values_are_masked_in_every_form() {
    let basic = [
        &b"Basic "[..],
        BASE64
            .encode([&b"x-access-token:"[..], KEY].concat())
            .as_bytes(),
    ]
    .concat();
    let bearer = [&b"Bearer "[..], KEY].concat();
    let forms = Forms::of(KEY, &[&bearer, &basic]);
    let needles = Arc::new(Needles::new(forms.iter()).unwrap());
    let credentials = &basic[6..];
    for echo in [
        &bearer[..],
        &basic[..],
        credentials,
        KEY,
        BASE64.encode(KEY).as_bytes(),
    ] {
        let body = [&b"{\"echo\": \""[..], echo, b"\"}"].concat();
        let expected = masked(&body, 10..10 + echo.len());
        assert_eq!(
            stream(&needles, &body, &[12]),
            (expected, 1),
            "{}",
            String::from_utf8_lossy(echo)
        );
    }
}

/// The characters of `encoded` (the base64 of bytes that hold the value at `at..at + len`) that depend only on
/// the value's bits.
fn value_characters(at: usize, len: usize) -> Range<usize> {
    (8 * at).div_ceil(6)..8 * (at + len) / 6
}

#[test]
fn a_secret_inside_longer_base64_is_masked_at_every_alignment() {
    let mut rng = Lcg(5);
    for len in [8, 9, 10, 20, 33] {
        let value = rng.bytes(len, b"abcdefghijklmnopqrstuvwxyz0123456789-_");
        let forms = Forms::of(&value, &[]);
        assert_eq!(forms.too_short(), 0);
        let needles = Arc::new(Needles::new(forms.iter()).unwrap());
        for before in 0..7 {
            for after in 0..4 {
                let plain = [
                    rng.bytes(before, b"user:{}\""),
                    value.clone(),
                    rng.bytes(after, b"\"}:@"),
                ]
                .concat();
                let encoded = BASE64.encode(&plain);
                let (out, count) = stream(&needles, encoded.as_bytes(), &[encoded.len() / 2]);
                assert_eq!(count, 1, "{before} bytes before, {after} after");
                let inner = value_characters(before, len);
                assert!(
                    out[inner.clone()].iter().all(|&b| b == b'*'),
                    "{before} bytes before, {after} after: {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        // Alone, with its padding, all of it.
        let alone = BASE64.encode(&value);
        assert_eq!(
            needles.mask_all(alone.as_bytes()).unwrap().bytes,
            vec![b'*'; alone.len()]
        );
    }
}

#[test]
fn short_forms_are_counted() {
    assert_eq!(
        Forms::of(b"abc", &[]).too_short(),
        5,
        "the value, its base64, its three inner base64 forms"
    );
    assert_eq!(Forms::of(b"", &[b"Basic "]).too_short(), 5);
    assert_eq!(
        Forms::of(KEY, &[b"Bearer sk-test-0123456789abcdef"]).too_short(),
        0
    );
}

fn forms(value: &[u8]) -> Forms {
    Forms::of(value, &[])
}

#[test]
fn a_replaced_value_stays_masked_until_its_time() {
    let redaction = Redaction::default();
    let t0 = Instant::now();
    let old: &[u8] = b"ghs_old_token_0000000000";
    let new: &[u8] = b"ghs_new_token_1111111111";
    redaction.set("github", forms(old), t0, t0).unwrap();
    let before = redaction.needles();
    let mut masker = Masker::new(Arc::clone(&before));
    let later = t0 + Duration::from_secs(1800);
    redaction
        .set(
            "github",
            forms(new),
            later,
            later + Duration::from_secs(600),
        )
        .unwrap();
    let now = redaction.needles();
    assert!(now.mask_all(old).is_some(), "the old token is still masked");
    assert!(now.mask_all(new).is_some());
    assert!(masker
        .push(Bytes::copy_from_slice(old))
        .iter()
        .all(|&b| b == b'*'));
    assert!(
        before.mask_all(new).is_none(),
        "a stream keeps the needles it began with"
    );
    // Another change once the old token's time is up drops it.
    let after = later + Duration::from_secs(601);
    redaction.set("stripe", forms(KEY), after, after).unwrap();
    let now = redaction.needles();
    assert!(now.mask_all(old).is_none());
    assert!(now.mask_all(new).is_some());
    assert!(now.mask_all(KEY).is_some());
}

#[test]
fn the_same_value_again_retires_nothing_and_a_gone_secret_stays_masked_for_a_while() {
    let redaction = Redaction::default();
    let t0 = Instant::now();
    let hour = Duration::from_secs(3600);
    redaction.set("openai", forms(KEY), t0, t0 + hour).unwrap();
    let count = redaction.needles().len();
    redaction.set("openai", forms(KEY), t0, t0 + hour).unwrap();
    assert_eq!(redaction.needles().len(), count);
    // Removed on a reload: masked until its time, then gone.
    redaction
        .set("openai", Forms::default(), t0, t0 + hour)
        .unwrap();
    assert!(redaction.needles().mask_all(KEY).is_some());
    redaction
        .set("other", forms(b"another secret"), t0 + hour, t0 + hour)
        .unwrap();
    assert!(redaction.needles().mask_all(KEY).is_none());
}

#[test]
fn at_most_a_few_retired_values_are_kept() {
    let redaction = Redaction::default();
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(86400);
    let values: Vec<Vec<u8>> = (0..7)
        .map(|n| format!("token-number-{n}").into_bytes())
        .collect();
    for value in &values {
        redaction.set("crm", forms(value), t0, far).unwrap();
    }
    let needles = redaction.needles();
    let kept: Vec<bool> = values
        .iter()
        .map(|v| needles.mask_all(v).is_some())
        .collect();
    assert_eq!(
        kept,
        [false, false, true, true, true, true, true],
        "{MAX_RETIRED} retired and the current one"
    );
}

#[test]
fn a_failed_build_changes_nothing() {
    let redaction = Redaction::default();
    let t0 = Instant::now();
    redaction.set("openai", forms(KEY), t0, t0).unwrap();
    let long = vec![b'x'; MAX_NEEDLE + 1];
    let error = redaction.set("openai", forms(&long), t0, t0).unwrap_err();
    assert!(matches!(error, NeedlesError::TooLong(_)));
    assert!(!error.to_string().contains("xxxxxxxx"), "never the value");
    let needles = redaction.needles();
    assert!(needles.mask_all(KEY).is_some());
    // And the next change still retires the value that was in force, not the refused one.
    redaction
        .set(
            "openai",
            forms(b"sk-next-value-000"),
            t0,
            t0 + Duration::from_secs(60),
        )
        .unwrap();
    assert!(redaction.needles().mask_all(KEY).is_some());
}

#[test]
fn needles_never_print_their_values() {
    let needles = needles(&[KEY]);
    let printed = format!("{needles:?}");
    assert!(!printed.contains("sk-test"), "{printed}");
}
