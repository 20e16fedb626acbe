//! Redaction: the secrets a response gives back are masked before the sandbox sees them (DESIGN, invariant 1).
//!
//! - [`Forms`]: the byte strings that give one secret away (its value, the header values it is injected in,
//!   their base64), derived once per secret value.
//! - [`Needles`]: every form a sandbox must not see, in one Aho-Corasick automaton, built when the sandbox
//!   starts or a secret changes, never per request. Immutable: [`Redaction`] swaps a new one in whole.
//! - [`Masker`]: one direction of one stream (a response body, a tunnel's server-to-client bytes). Each
//!   match is replaced by as many `*`, so lengths, Content-Length and framing stay valid.
//! - [`Needles::mask_all`]: a small buffer at once (a header value, a status reason, a trailer).
//!
//! Around this core: [`profiles`] (what each sandbox masks, and keeping it up to date when a secret
//! changes), [`messages`] (a response as hyper carries it: headers, reason, body) and [`tunnel`] (an
//! upgraded connection's server-to-client bytes). The HTTP/2 relay masks its frames itself
//! (`proxy::http2`).
//!
//! # What is masked
//! Every occurrence of every needle, overlapping ones included: the automaton reports all of them
//! (Aho-Corasick's standard semantics), and the union of their bytes is masked. Leftmost-longest or
//! leftmost-first semantics would report one match of a group that overlaps and skip the others: with
//! `abcdefgh` and `efghijkl` in `abcdefghijkl`, the second needle's `ijkl` would pass. A stream also
//! cannot use them without looking ahead, since a longer match may still be coming. Where several needles
//! end at one byte only the longest counts, since the others lie inside it; each run of masked bytes counts
//! once in [`Masker::redacted`] (an echoed `Bearer sk-...` is one redaction, not one for the header value
//! and one for the key inside it).
//!
//! Needles under [`MIN_NEEDLE`] bytes are not masked: an empty or 3-byte value would mask ordinary text all
//! over every response, and a value that short is no secret anyway (it can be guessed). [`Redaction::set`]
//! logs each secret that has such forms, by name. Needles over [`MAX_NEEDLE`] bytes are refused with an error:
//! the masker holds back up to a needle's length, so that length is what bounds its memory.
//!
//! # What is held back
//! Only the longest suffix of what the stream has shown so far that is a proper prefix of some needle:
//! those bytes could still begin a match, all others are released at once. The automaton's state tells
//! that length exactly (a table by state, built with the automaton), so nothing waits on a fixed window.
//! A suffix that never completes is released unmasked by the next push that rules it out, or by
//! [`Masker::finish`] at the end of the stream: it is not the secret. An SSE event ends in a newline, and
//! only a needle that holds a newline (a multi-line secret such as a PEM key; never a header value) can
//! make bytes that end in one wait, so events are not delayed.
//!
//! # Base64
//! Base64 turns each 3 bytes into 4 characters, so how a value encodes depends on where it starts in its
//! 3-byte group: 0, 1 or 2 bytes before it (its alignment). For each alignment, the characters that depend
//! only on the value's bits are one fixed string (for a value of n bytes, about 4n/3 - 2 characters), and
//! that string appears verbatim in the base64 of anything that holds the value at that alignment: the
//! three of them are needles, so the value is caught inside any longer base64 text, whatever comes before or
//! after it (a basic auth `user:pass`, a JSON document an upstream encoded). Not masked there: the one or two
//! characters at each end that mix the value's bits with its neighbours' (at most 4 bits of the value at
//! each end). The base64 of the value alone, padding included, is a needle too, so when it stands alone
//! the last characters are masked as well. Not caught: another alphabet (base64url, as in JWTs), base64
//! cut into lines (MIME's 76 columns) where a line break falls inside the value, and any other transform
//! (percent-encoding, JSON escapes, hex, a value cut short).
//!
//! # Secret material
//! Our own copies (each [`Forms`], and the bytes a [`Masker`] holds back, which may begin a secret) are zeroed
//! when dropped. Aho-Corasick keeps its own copies that cannot be: the automaton's transitions spell out every
//! needle, the prefilter keeps each needle's first [`MIN_NEEDLE`] bytes, and building goes through a
//! trie that is freed without being zeroed. So zeroing here narrows where secrets linger in the daemon's
//! memory (which also holds them in rendered headers and TLS buffers); it is no boundary.
//!
//! # When a secret changes
//! A stream keeps the [`Needles`] it started with ([`Masker::new`] takes an `Arc`), so a response that began
//! before a change is masked to its end with the values that were live when it began. [`Redaction::set`]
//! builds the new needles and swaps them in; the secret's previous forms stay in them until a time the
//! caller gives: for a minted token, the old token's own expiry (after that it opens nothing) but at least
//! as long as a response to a request that carried it may still begin. Retired forms are dropped when a
//! later change finds them past their time, and at most [`MAX_RETIRED`] are kept per secret. The caller
//! must swap the needles in before it injects the new value, so that every response whose request carried
//! a value starts with needles that hold it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous;
use aho_corasick::{packed, Anchored, Input, MatchKind, Span};
use base64::engine::general_purpose::{STANDARD as BASE64, STANDARD_NO_PAD};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use zeroize::{Zeroize, Zeroizing};

pub mod messages;
pub mod profiles;
pub mod tunnel;

/// Shorter needles are not masked (see the module's documentation).
pub const MIN_NEEDLE: usize = 8;
/// Longer needles are refused: a masker holds back up to a needle's length, and the table of how much
/// counts in 16 bits.
pub const MAX_NEEDLE: usize = u16::MAX as usize;
/// Retired values kept per secret: a secret refreshed again and again does not grow the automaton forever.
pub const MAX_RETIRED: usize = 4;
const MASK: u8 = b'*';

/// The byte strings that give one secret away, each a needle. Zeroed when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Forms(Vec<Zeroizing<Vec<u8>>>);

impl Forms {
    /// The forms of a secret `value` that the daemon injects in the header values `injected` (as sent, such
    /// as `Bearer sk-...` or `Basic dXNlcjpwYXNz`): the value; its base64 alone and at each alignment inside
    /// longer base64; each header value; and each header value's credentials after its scheme (the
    /// `dXNlcjpwYXNz` of basic auth, which an upstream may echo without `Basic `).
    pub fn of(value: &[u8], injected: &[&[u8]]) -> Forms {
        let mut forms = Forms::default();
        forms.add(value.to_vec());
        forms.add_base64(value);
        for header in injected {
            forms.add(header.to_vec());
            if let Some(space) = header.iter().position(|&byte| byte == b' ') {
                forms.add(header[space + 1..].to_vec());
            }
        }
        forms
    }

    /// How many of these forms are too short to be masked.
    pub fn too_short(&self) -> usize {
        self.0.iter().filter(|form| form.len() < MIN_NEEDLE).count()
    }

    fn add(&mut self, form: Vec<u8>) {
        self.0.push(Zeroizing::new(form));
    }

    /// The base64 of `value` alone, and for each alignment the characters that only `value`'s bits decide.
    fn add_base64(&mut self, value: &[u8]) {
        self.add(BASE64.encode(value).into_bytes());
        for before in 0..3 {
            // The value after `before` bytes, filled up to whole 3-byte groups; the filler's bits only
            // reach the characters that are cut off below. Sized at once: growing would leave copies.
            let len = (before + value.len()).div_ceil(3) * 3;
            let mut grouped = Zeroizing::new(Vec::with_capacity(len));
            grouped.resize(before, 0);
            grouped.extend_from_slice(value);
            grouped.resize(len, 0);
            let encoded = Zeroizing::new(STANDARD_NO_PAD.encode(&*grouped));
            // The value's bits are 8*before .. 8*(before + value.len()); a character is 6 bits.
            let first = (8 * before).div_ceil(6);
            let end = 8 * (before + value.len()) / 6;
            if let Some(inner) = encoded.as_bytes().get(first..end) {
                self.add(inner.to_vec());
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|form| form.as_slice())
    }
}

/// Why a set of needles could not be built. The new values must then not be injected: they would not be
/// masked.
#[derive(Debug, thiserror::Error)]
pub enum NeedlesError {
    #[error("a secret's form is {0} bytes long; the most that can be masked is {MAX_NEEDLE}")]
    TooLong(usize),
    #[error("the secrets' forms do not fit in one automaton: {0}")]
    Automaton(String),
}

/// The needles one sandbox masks, in one automaton. Immutable; empty when there is nothing to mask.
#[derive(Default)]
pub struct Needles {
    matcher: Option<Matcher>,
    count: usize,
}

/// A whole buffer, masked.
#[derive(Debug, PartialEq, Eq)]
pub struct Masked {
    pub bytes: Vec<u8>,
    /// Runs of masked bytes, as [`Masker::redacted`] counts them.
    pub count: u64,
}

impl Needles {
    /// The needles `values`, less those under [`MIN_NEEDLE`] bytes and repeats; an error when one is over
    /// [`MAX_NEEDLE`] or the automaton cannot be built.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Needles, NeedlesError> {
        let mut needles = Vec::new();
        for value in values {
            if value.len() > MAX_NEEDLE {
                return Err(NeedlesError::TooLong(value.len()));
            }
            if value.len() >= MIN_NEEDLE {
                needles.push(value);
            }
        }
        needles.sort_unstable();
        needles.dedup();
        if needles.is_empty() {
            return Ok(Needles::default());
        }
        Ok(Needles {
            matcher: Some(Matcher::build(&needles)?),
            count: needles.len(),
        })
    }

    /// How many needles there are (after repeats and short ones are dropped).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Nothing to mask: a stream can pass untouched.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `value` with every match masked, or `None` when nothing matched. For buffers that arrive whole
    /// (header values, a status reason, trailers). A search of its own (the automaton's overlapping
    /// iterator, nothing held; the prefilter only says whether to search at all), so that it can check a
    /// [`Masker`]: streaming a buffer cut anywhere gives the same bytes and the same count.
    pub fn mask_all(&self, value: &[u8]) -> Option<Masked> {
        let matcher = self.matcher.as_ref()?;
        // Every needle begins with one of the prefilter's patterns: where none occurs, none does. This
        // runs on every header of every response, most of which hold no needle's beginning.
        if let Some(prefilter) = &matcher.prefilter {
            prefilter.find_in(value, Span::from(0..value.len()))?;
        }
        let mut runs = Runs::default();
        let mut bytes: Option<Vec<u8>> = None;
        let mut mask = |start: usize, end: usize| {
            let fresh = runs.add(start as u64, end as u64);
            let bytes = bytes.get_or_insert_with(|| value.to_vec());
            if let Some(masked) = bytes.get_mut(fresh.start as usize..fresh.end as usize) {
                masked.fill(MASK);
            }
        };
        let Ok(matches) = matcher.nfa.try_find_overlapping_iter(Input::new(value)) else {
            // Only an automaton built for other semantics refuses an overlapping search; were it ever
            // so, nothing of the value would pass.
            return Some(Masked {
                bytes: vec![MASK; value.len()],
                count: 1,
            });
        };
        // Matches come by where they end; of those that end together only the longest counts.
        let mut longest: Option<(usize, usize)> = None;
        for found in matches {
            longest = match longest {
                Some((start, end)) if end == found.end() => Some((start.min(found.start()), end)),
                Some((start, end)) => {
                    mask(start, end);
                    Some((found.start(), found.end()))
                }
                None => Some((found.start(), found.end())),
            };
        }
        if let Some((start, end)) = longest {
            mask(start, end);
        }
        let count = runs.count;
        bytes.map(|bytes| Masked { bytes, count })
    }
}

impl fmt::Debug for Needles {
    /// Counts only: the automaton spells out the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Needles")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// The automaton, with what a stream needs to know of its states.
struct Matcher {
    nfa: contiguous::NFA,
    start: StateID,
    /// Finds where a needle may begin, far faster than walking every byte (Teddy, SIMD: 7 GB/s of CPU
    /// against 0.17 for the walk, on random data); `None` over 128 distinct needle prefixes (some 30
    /// secrets) or without SIMD, and then every byte is walked.
    prefilter: Option<packed::Searcher>,
    /// By state: how many of the last bytes seen could still begin a needle (see [`Matcher::hold`]).
    holds: Box<[u16]>,
    longest: usize,
}

impl Matcher {
    fn build(needles: &[&[u8]]) -> Result<Matcher, NeedlesError> {
        let failed = |error: &dyn fmt::Display| NeedlesError::Automaton(error.to_string());
        // A contiguous NFA, not a DFA: a tenth of the memory or less (a DFA of 60 needles of 60 bytes
        // takes about 2 MiB), and where the prefilter skips ahead its slower steps barely count.
        let nfa = contiguous::NFA::builder()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(needles)
            .map_err(|error| failed(&error))?;
        let start = nfa
            .start_state(Anchored::No)
            .map_err(|error| failed(&error))?;
        let longest = needles.iter().map(|needle| needle.len()).max().unwrap_or(0);
        // Every needle begins with one of these; their number, not the needles', is what the prefilter
        // has to tell apart. Its own heuristic refuses more than 64 patterns, but up to its limit of 128
        // it still beats walking every byte. (Aho-Corasick's built-in prefilter is off: on random data
        // it picks "rare" bytes that are not rare and is slower than no prefilter at all.)
        let mut prefixes: Vec<&[u8]> = needles.iter().map(|n| &n[..MIN_NEEDLE]).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        let prefilter = packed::Config::new()
            .heuristic_pattern_limits(false)
            .builder()
            .extend(prefixes)
            .build();
        Ok(Matcher {
            holds: holds(&nfa, start, needles, longest),
            nfa,
            start,
            prefilter,
            longest,
        })
    }

    /// Walks `input` from state `sid` and returns the state after it. For each byte where a needle ends,
    /// calls `found` with the offset just past that byte and the length of the longest needle ending there.
    fn walk(&self, mut sid: StateID, input: &[u8], mut found: impl FnMut(usize, usize)) -> StateID {
        // In the start state nothing seen can still be part of a match, so the walk may jump to where the
        // prefilter says a needle may begin. The prefilter sees only `input`, so it finds the needles that
        // begin before `limit` (they end inside `input`); one that begins after may end in the next input,
        // and only the automaton's state carries it over. So the last bytes are always walked.
        let limit = input.len().saturating_sub(self.longest - 1);
        let mut at = 0;
        if sid == self.start {
            at = self.skip(input, at, limit);
        }
        while let Some(&byte) = input.get(at) {
            sid = self.nfa.next_state(Anchored::No, sid, byte);
            at += 1;
            if self.nfa.is_match(sid) {
                found(at, self.longest_match(sid));
            } else if sid == self.start {
                at = self.skip(input, at, limit);
            }
        }
        sid
    }

    /// From the start state at `at`: where the walk may go on, that is where a needle may begin, but not
    /// past `limit`.
    fn skip(&self, input: &[u8], at: usize, limit: usize) -> usize {
        let Some(prefilter) = &self.prefilter else {
            return at;
        };
        if at >= limit {
            return at;
        }
        match prefilter.find_in(input, Span::from(at..input.len())) {
            Some(found) => found.start().clamp(at, limit),
            None => limit,
        }
    }

    fn longest_match(&self, sid: StateID) -> usize {
        (0..self.nfa.match_len(sid))
            .map(|index| self.nfa.pattern_len(self.nfa.match_pattern(sid, index)))
            .max()
            .unwrap_or(0)
    }

    /// How many of the last bytes seen, in state `sid`, could still begin a needle: the longest suffix of
    /// the stream that is a proper prefix of some needle.
    fn hold(&self, sid: StateID) -> usize {
        self.holds
            .get(sid.as_usize())
            .map_or(self.longest - 1, |&hold| usize::from(hold))
    }
}

/// For each state, [`Matcher::hold`]. A state stands for the longest suffix of the stream that is a prefix of
/// some needle (a node of the needles' trie), and walking a needle's first k bytes from the start state
/// reaches the node of those k bytes. A node that some needle goes on from holds all its bytes. A node
/// that none goes on from (a whole needle) holds what its longest proper suffix that is a node holds: with
/// needles `xxxxabcd` and `abcdyyyy`, the stream `xxxxabcd` must hold `abcd`.
fn holds(nfa: &contiguous::NFA, start: StateID, needles: &[&[u8]], longest: usize) -> Box<[u16]> {
    // Node: its depth, and whether some needle goes on from it.
    let mut nodes: HashMap<StateID, (u16, bool)> = HashMap::new();
    let mut ends = Vec::with_capacity(needles.len());
    for needle in needles {
        let mut sid = start;
        for (index, &byte) in needle.iter().enumerate() {
            sid = nfa.next_state(Anchored::No, sid, byte);
            // Needles are at most MAX_NEEDLE (u16::MAX) bytes long.
            let depth = u16::try_from(index + 1).unwrap_or(u16::MAX);
            let node = nodes.entry(sid).or_insert((depth, false));
            node.1 |= index + 1 < needle.len();
        }
        ends.push((*needle, sid));
    }
    let size = nodes
        .keys()
        .chain([&start])
        .map(|sid| sid.as_usize() + 1)
        .max()
        .unwrap_or(0);
    // A state never seen here cannot be reached; were it reached, holding all that any needle could need
    // would be the safe answer.
    let unknown = u16::try_from(longest - 1).unwrap_or(u16::MAX);
    let mut holds = vec![unknown; size];
    fn set(holds: &mut [u16], sid: StateID, hold: u16) {
        if let Some(slot) = holds.get_mut(sid.as_usize()) {
            *slot = hold;
        }
    }
    set(&mut holds, start, 0);
    for (&sid, &(depth, goes_on)) in &nodes {
        if goes_on {
            set(&mut holds, sid, depth);
        }
    }
    // Whole needles, shortest first: the proper suffix a needle falls back to, when it is a whole needle
    // too, is shorter, so its hold is known by then.
    ends.retain(|(_, sid)| nodes.get(sid).is_some_and(|&(_, goes_on)| !goes_on));
    ends.sort_by_key(|(needle, _)| needle.len());
    for (needle, sid) in ends {
        let fallback = needle[1..].iter().fold(start, |state, &byte| {
            nfa.next_state(Anchored::No, state, byte)
        });
        let hold = holds.get(fallback.as_usize()).copied().unwrap_or(unknown);
        set(&mut holds, sid, hold);
    }
    holds.into_boxed_slice()
}

/// Masked runs: where the last one begins and ends, and how many there were. A match that begins inside the
/// last run extends it, any other begins a new one.
#[derive(Default)]
struct Runs {
    start: u64,
    end: u64,
    count: u64,
}

impl Runs {
    /// Notes a match over `start..end` (stream offsets, matches by where they end); returns the range to
    /// mask, which leaves out the last run where it can.
    fn add(&mut self, start: u64, end: u64) -> Range<u64> {
        if start >= self.end {
            self.count += 1;
            (self.start, self.end) = (start, end);
            return start..end;
        }
        // A needle can end after the last run and begin before it: in `abcdefghijk`, `cdefghij` ends
        // first, and `abcdefghijk` begins before it.
        let fresh = if start < self.start {
            start..end
        } else {
            self.end..end.max(self.end)
        };
        self.start = self.start.min(start);
        self.end = self.end.max(end);
        fresh
    }
}

/// Masks one stream's secrets as its bytes arrive: one per direction of a stream (a response body, the
/// server-to-client side of a tunnel). Holds back at most the longest needle's length, however long the
/// stream.
pub struct Masker {
    needles: Arc<Needles>,
    /// `None` when there is nothing to mask.
    state: Option<StateID>,
    /// Seen, not released: the bytes that could still begin a needle, masked where a match covered them.
    held: Zeroizing<Vec<u8>>,
    /// Bytes pushed so far: the stream offset where the next push begins.
    seen: u64,
    runs: Runs,
}

impl Masker {
    pub fn new(needles: Arc<Needles>) -> Masker {
        let matcher = needles.matcher.as_ref();
        Masker {
            state: matcher.map(|matcher| matcher.start),
            // Never grown, so never copied: what it holds may begin a secret.
            held: Zeroizing::new(Vec::with_capacity(matcher.map_or(0, |m| m.longest))),
            needles,
            seen: 0,
            runs: Runs::default(),
        }
    }

    /// The next bytes of the stream in; out, the bytes that can be released now, masked. When nothing is
    /// held and nothing in `input` matches, that is `input` itself or the front of it, not a copy.
    pub fn push(&mut self, input: Bytes) -> Bytes {
        if input.is_empty() || self.state.is_none() {
            return input;
        }
        // The held bytes go out first; with none, `input` is copied only once something in it must be masked.
        let mut joined = (!self.held.is_empty()).then(|| {
            let mut joined = BytesMut::with_capacity(self.held.len() + input.len());
            joined.extend_from_slice(&self.held);
            joined.extend_from_slice(&input);
            joined
        });
        let hold = self.scan(&input, |range| {
            let joined = joined.get_or_insert_with(|| BytesMut::from(&input[..]));
            if let Some(masked) = joined.get_mut(range) {
                masked.fill(MASK);
            }
        });
        match joined {
            None => {
                let release = input.len() - hold;
                self.keep(&input[release..]);
                input.slice(..release)
            }
            Some(mut joined) => {
                let release = joined.len() - hold;
                let mut tail = joined.split_off(release);
                self.keep(&tail);
                tail.as_mut().zeroize();
                joined.freeze()
            }
        }
    }

    /// As [`Masker::push`], for a caller that copies anyway (the HTTP/2 relay builds its frames in one
    /// buffer): the released bytes are appended to `out`.
    pub fn push_into(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.state.is_none() {
            out.extend_from_slice(input);
            return;
        }
        if input.is_empty() {
            return;
        }
        let mark = out.len();
        out.extend_from_slice(&self.held);
        out.extend_from_slice(input);
        let joined = &mut out[mark..];
        let hold = self.scan(input, |range| {
            if let Some(masked) = joined.get_mut(range) {
                masked.fill(MASK);
            }
        });
        let release = out.len() - hold;
        self.keep(&out[release..]);
        out[release..].zeroize();
        out.truncate(release);
    }

    /// The end of the stream: the bytes still held, released as they are (a prefix that never became a
    /// needle is not the secret). What is pushed next is a new stream.
    pub fn finish(&mut self) -> Bytes {
        let tail = Bytes::copy_from_slice(&self.held);
        self.clear_held();
        self.state = self.needles.matcher.as_ref().map(|matcher| matcher.start);
        tail
    }

    /// The needles this stream is masked with (those in force when it began).
    pub fn needles(&self) -> &Needles {
        &self.needles
    }

    /// How many bytes are held back: pushed, not yet released.
    pub fn pending(&self) -> usize {
        self.held.len()
    }

    /// How many times something was masked (a run of masked bytes counts once), for the audit record.
    pub fn redacted(&self) -> u64 {
        self.runs.count
    }

    /// Walks `input`, the stream's next bytes, and calls `mask` with each range of `held ++ input` to mask;
    /// returns how many bytes at the end of `held ++ input` to hold back.
    fn scan(&mut self, input: &[u8], mut mask: impl FnMut(Range<usize>)) -> usize {
        let total = self.held.len() + input.len();
        let (Some(matcher), Some(state)) = (&self.needles.matcher, self.state) else {
            return 0;
        };
        let base = self.seen;
        // The stream offset of the first held byte. A match never reaches further back: what it needs
        // before `input` is a proper prefix of it that the stream ended with, which is what was held.
        let origin = base.saturating_sub(self.held.len() as u64);
        let runs = &mut self.runs;
        let state = matcher.walk(state, input, |end, len| {
            let end = base + end as u64;
            let fresh = runs.add(end.saturating_sub(len as u64), end);
            let from = fresh.start.max(origin);
            mask((from - origin) as usize..(fresh.end.max(from) - origin) as usize);
        });
        self.state = Some(state);
        self.seen = base + input.len() as u64;
        matcher.hold(state).min(total)
    }

    fn keep(&mut self, tail: &[u8]) {
        self.clear_held();
        self.held.extend_from_slice(tail);
    }

    /// Zeroes what was held (beyond it, the capacity was zeroed when it was last cleared).
    fn clear_held(&mut self) {
        self.held.as_mut_slice().zeroize();
        self.held.clear();
    }
}

/// What a sandbox masks, kept up to date as its secrets change: each secret's forms by name, the forms of
/// the values it replaced until their time is up, and the needles built from them all.
#[derive(Default)]
pub struct Redaction {
    secrets: Mutex<BTreeMap<String, Entry>>,
    needles: RwLock<Arc<Needles>>,
}

#[derive(Clone)]
struct Entry {
    current: Forms,
    /// Replaced forms and until when they stay, oldest first.
    retired: VecDeque<(Instant, Forms)>,
}

impl Redaction {
    /// The needles in force; a stream keeps the ones it started with.
    pub fn needles(&self) -> Arc<Needles> {
        Arc::clone(&self.needles.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sets secret `name`'s forms (empty forms: the secret is gone) and swaps in needles built anew. Its
    /// previous forms, when they differ, stay masked until `keep_previous_until`; retired forms whose time
    /// is up by `now` are dropped. On an error nothing changes, and the new value must not be injected.
    pub fn set(
        &self,
        name: &str,
        forms: Forms,
        now: Instant,
        keep_previous_until: Instant,
    ) -> Result<(), NeedlesError> {
        let mut secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        let short = forms.too_short();
        if short > 0 {
            tracing::warn!(
                secret = name,
                forms = short,
                "some forms of this secret are under {MIN_NEEDLE} bytes: too short to mask without masking \
                 ordinary text, so a response may show them"
            );
        }
        // Built on a copy, so that a failure leaves everything as it was.
        let mut next = secrets.clone();
        let entry = next.entry(name.to_string()).or_insert_with(|| Entry {
            current: Forms::default(),
            retired: VecDeque::new(),
        });
        if entry.current != forms {
            let previous = std::mem::replace(&mut entry.current, forms);
            if !previous.0.is_empty() {
                entry.retired.push_back((keep_previous_until, previous));
            }
            if entry.retired.len() > MAX_RETIRED {
                entry.retired.pop_front();
            }
        }
        for entry in next.values_mut() {
            entry.retired.retain(|(until, _)| *until > now);
        }
        next.retain(|_, entry| !entry.current.0.is_empty() || !entry.retired.is_empty());
        let needles = Needles::new(next.values().flat_map(|entry| {
            entry
                .retired
                .iter()
                .flat_map(|(_, forms)| forms.iter())
                .chain(entry.current.iter())
        }))?;
        *secrets = next;
        *self.needles.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(needles);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
