//! HPACK (RFC 7541), the header compression of HTTP/2, for the frame relay around it (`proxy::http2`).
//!
//! The relay reads every header block both peers send and writes its own, so it needs an HPACK codec it
//! can drive frame by frame. The h2 crate's is private, and the published HPACK crates do not fit a
//! daemon that decodes every request of every sandbox: loona-hpack and hpack build a HashMap-based Huffman
//! decoder per string and walk it bit by bit, httlib-hpack drains a Vec per field (quadratic in the
//! number of fields), and nahpack needs nightly.
//!
//! This module owns a decoder's dynamic table, which must stay in step with the peer's encoder for the
//! whole connection; a Huffman decoder driven by a table built once from the code of Appendix B; and the
//! encoding of single fields. The relay's encoder keeps no dynamic table: what it writes is a static-table
//! index or a literal that is never added to a table, which costs some bytes but leaves it no state to
//! keep in step with anyone.
//!
//! Everything decoded is hostile input: every index and length is checked, integers are bounded,
//! nothing panics, and every error is a value (the relay answers each with COMPRESSION_ERROR).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::OnceLock;

/// RFC 7541 section 4.1: what an entry costs in the dynamic table beyond its name and value.
const ENTRY_OVERHEAD: usize = 32;

/// RFC 7541 Appendix A. Index `i` (from 1) is `STATIC[i - 1]`; the dynamic table's indices follow.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// RFC 7541 Appendix B: the Huffman code of each symbol (the 256 byte values, then EOS), as the code's
/// bits right-aligned and their number. The comments give each row's first symbol.
#[rustfmt::skip]
const CODES: [(u32, u32); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), // 0
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), // 4
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), // 8
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), // 12
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), // 16
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), // 20
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), // 24
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28), // 28
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), // 32
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), // 36
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), // 40
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), // 44
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), // 48
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), // 52
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), // 56
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), // 60
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), // 64
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), // 68
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), // 72
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), // 76
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), // 80
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), // 84
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), // 88
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), // 92
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), // 96
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), // 100
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), // 104
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), // 108
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), // 112
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), // 116
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), // 120
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), // 124
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), // 128
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), // 132
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), // 136
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), // 140
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), // 144
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23), // 148
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), // 152
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), // 156
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), // 160
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), // 164
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), // 168
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), // 172
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), // 176
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), // 180
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), // 184
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), // 188
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), // 192
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), // 196
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), // 200
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), // 204
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), // 208
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), // 212
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), // 216
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), // 220
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), // 224
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), // 228
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), // 232
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), // 236
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), // 240
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), // 244
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), // 248
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), // 252
    (0x3fffffff, 30), // 256
];

/// The symbol that ends the code (30 ones); inside a string it is an error, its first bits are padding.
const EOS: u16 = 256;

/// Why a header block could not be decoded. Each one is a COMPRESSION_ERROR for the whole connection:
/// the dynamic table can no longer be trusted to match the peer's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("HPACK integer larger than 2^32 - 1")]
    IntegerOverflow,
    #[error("header block ends inside a field representation")]
    Truncated,
    #[error("HPACK index 0")]
    ZeroIndex,
    #[error("HPACK index {0} is past the end of the header table")]
    IndexOutOfRange(usize),
    #[error("HPACK string of {0} bytes runs past the end of the header block")]
    StringPastEnd(usize),
    #[error("Huffman-coded string contains EOS")]
    HuffmanEos,
    #[error("Huffman-coded string does not end with 0 to 7 bits of ones")]
    HuffmanPadding,
    #[error("dynamic table size update to {size} above the allowed {max}")]
    SizeUpdateTooLarge { size: usize, max: usize },
    #[error("dynamic table size update after a header field")]
    SizeUpdateNotAtStart,
    #[error("header table size lowered to {0}, but the block does not start with an update to at most that")]
    SizeUpdateMissing(usize),
}

/// The decoding side of one direction of a connection: the dynamic table the peer's encoder fills.
pub struct Decoder {
    table: Table,
    /// The SETTINGS_HEADER_TABLE_SIZE in force: no size update may go above it.
    ceiling: usize,
    /// When a new ceiling fell below the table's size, the smallest such ceiling: RFC 7541 section 4.2
    /// obliges the encoder to start its next block with an update to at most that, and one that does
    /// not has a table of another size than ours.
    owed_update: Option<usize>,
    /// Huffman-decoded names and values, reused so that a block costs no allocation per field.
    scratch: Vec<u8>,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE this decoder's peer was told (the initial size of
    /// the dynamic table, and the ceiling for size updates). HTTP/2's default is 4096.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: Table {
                entries: VecDeque::new(),
                size: 0,
                capacity: max_table_size,
            },
            ceiling: max_table_size,
            owed_update: None,
            scratch: Vec::new(),
        }
    }

    /// Changes the ceiling (a new SETTINGS_HEADER_TABLE_SIZE took effect). If the table is now larger
    /// than the ceiling, it is shrunk (evicting) at once, and the next block must start with a size
    /// update to at most the new ceiling.
    pub fn set_max_table_size(&mut self, max: usize) {
        self.ceiling = max;
        if self.table.capacity > max {
            self.table.set_capacity(max);
            self.owed_update = Some(self.owed_update.map_or(max, |owed| owed.min(max)));
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads concatenated), calling
    /// `field(name, value)` for each field in order. Decodes the whole block even when it is huge,
    /// because the dynamic table must stay in step with the encoder; the caller counts and limits. On
    /// error, the decoder's state is unspecified (the caller ends the connection).
    pub fn decode(
        &mut self,
        block: &[u8],
        field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        self.decode_wanted(block, |_| true, field)
    }

    /// Like [`Decoder::decode`], but calls `field` only for the fields whose name is `wanted`, and does
    /// not decode the values of the others that it need not keep (those that do not enter the table):
    /// the relay reads a response's status and passes the rest on as it came.
    pub fn decode_wanted(
        &mut self,
        block: &[u8],
        wanted: impl Fn(&[u8]) -> bool,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        self.decode_fields(block, wanted, |found| field(found.name, found.value))
    }

    /// Like [`Decoder::decode_wanted`], with how and where the block wrote each field: the relay writes
    /// a response's block again, field by field as it came, when one of them held a secret.
    pub fn decode_fields(
        &mut self,
        block: &[u8],
        wanted: impl Fn(&[u8]) -> bool,
        mut field: impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        let mut reader = Reader { rest: block };
        let mut smallest_update = None;
        while let Some(&first) = reader.rest.first() {
            if first & 0xe0 != 0x20 {
                break;
            }
            reader.byte()?;
            let size = reader.integer(first, 5)?;
            if size > self.ceiling {
                return Err(HpackError::SizeUpdateTooLarge {
                    size,
                    max: self.ceiling,
                });
            }
            self.table.set_capacity(size);
            smallest_update = Some(smallest_update.map_or(size, |s: usize| s.min(size)));
        }
        if let Some(owed) = self.owed_update.take() {
            if smallest_update.is_none_or(|size| size > owed) {
                return Err(HpackError::SizeUpdateMissing(owed));
            }
        }
        let Decoder { table, scratch, .. } = self;
        while !reader.rest.is_empty() {
            let start = block.len() - reader.rest.len();
            let first = reader.byte()?;
            let end = |reader: &Reader<'_>| block.len() - reader.rest.len();
            match first {
                0x80..=0xff => {
                    let (name, value) = table.field(reader.integer(first, 7)?)?;
                    if wanted(name) {
                        field(Field {
                            name,
                            value,
                            representation: Representation::Indexed,
                            name_index: 0,
                            span: start..end(&reader),
                        });
                    }
                }
                0x40..=0x7f => {
                    let (name_index, name, value) =
                        reader.literal(first, 6, table, scratch, |_| true)?;
                    let span = start..end(&reader);
                    // A copy made before the insertion: the name may be that of an entry it evicts.
                    let entry = Entry::new(name, value);
                    let (name, value) = entry.split();
                    if wanted(name) {
                        field(Field {
                            name,
                            value,
                            representation: Representation::Literal(Literal::Incremental),
                            name_index,
                            span,
                        });
                    }
                    table.insert(entry);
                }
                0x20..=0x3f => return Err(HpackError::SizeUpdateNotAtStart),
                // Without indexing (0000) and never indexed (0001): neither touches the table.
                0x00..=0x1f => {
                    let (name_index, name, value) =
                        reader.literal(first, 4, table, scratch, &wanted)?;
                    if wanted(name) {
                        let kind = if first & 0x10 == 0 {
                            Literal::WithoutIndexing
                        } else {
                            Literal::NeverIndexed
                        };
                        field(Field {
                            name,
                            value,
                            representation: Representation::Literal(kind),
                            name_index,
                            span: start..end(&reader),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// One field of a header block as [`Decoder::decode_fields`] read it.
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub representation: Representation,
    /// A literal's name as a table index (static or dynamic), or 0 for a name written out.
    pub name_index: usize,
    /// Where in the block it is written.
    pub span: Range<usize>,
}

/// How a field is written (RFC 7541 section 6): a table entry, or a literal of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    Indexed,
    Literal(Literal),
}

/// A literal field's kind: whether it enters the decoder's table, and whether it may ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Literal {
    Incremental,
    WithoutIndexing,
    NeverIndexed,
}

/// The dynamic table (RFC 7541 section 2.3.2), newest entry first.
struct Table {
    entries: VecDeque<Entry>,
    /// The sum of the entries' sizes, never above `capacity`.
    size: usize,
    /// The maximum size the encoder last set (or the initial SETTINGS_HEADER_TABLE_SIZE).
    capacity: usize,
}

impl Table {
    /// The field at an HPACK index: the static table's, then the dynamic table's.
    fn field(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        let Some(position) = index.checked_sub(1) else {
            return Err(HpackError::ZeroIndex);
        };
        if let Some(&(name, value)) = STATIC.get(position) {
            return Ok((name, value));
        }
        self.entries
            .get(position - STATIC.len())
            .map(Entry::split)
            .ok_or(HpackError::IndexOutOfRange(index))
    }

    fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict_to(capacity);
    }

    /// Section 4.4: room is made by evicting the oldest entries, and an entry larger than the whole
    /// table empties it without being added.
    fn insert(&mut self, entry: Entry) {
        let Some(room) = self.capacity.checked_sub(entry.size()) else {
            self.entries.clear();
            self.size = 0;
            return;
        };
        self.evict_to(room);
        self.size += entry.size();
        self.entries.push_front(entry);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(oldest) = self.entries.pop_back() else {
                break;
            };
            self.size -= oldest.size();
        }
    }
}

/// A dynamic table entry: name and value in one allocation, since a client adds some with every request.
struct Entry {
    field: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Entry {
        let mut field = Vec::with_capacity(name.len() + value.len());
        field.extend_from_slice(name);
        field.extend_from_slice(value);
        Entry {
            field: field.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    fn split(&self) -> (&[u8], &[u8]) {
        self.field
            .split_at_checked(self.name_len)
            .unwrap_or_default()
    }

    fn size(&self) -> usize {
        self.field.len() + ENTRY_OVERHEAD
    }
}

/// A string literal once read: raw bytes borrowed where they are (the block, or the table for an indexed
/// name), or Huffman-decoded ones in the decoder's scratch buffer, named by their place there because
/// decoding the value may still move that buffer.
enum Text<'a> {
    Bytes(&'a [u8]),
    Scratch(Range<usize>),
}

impl<'a> Text<'a> {
    fn get<'s>(self, scratch: &'s [u8]) -> &'s [u8]
    where
        'a: 's,
    {
        match self {
            Text::Bytes(bytes) => bytes,
            Text::Scratch(range) => scratch.get(range).unwrap_or_default(),
        }
    }
}

/// The unread rest of a header block.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, HpackError> {
        let (&byte, rest) = self.rest.split_first().ok_or(HpackError::Truncated)?;
        self.rest = rest;
        Ok(byte)
    }

    /// Section 5.1: an integer whose first `prefix_bits` bits are the low bits of `first` (already read).
    /// Values past 2^32 - 1 are refused, which also bounds the continuation bytes to five.
    fn integer(&mut self, first: u8, prefix_bits: u32) -> Result<usize, HpackError> {
        let max = (1u8 << prefix_bits) - 1;
        if first & max < max {
            return Ok(usize::from(first & max));
        }
        let mut value = u64::from(max);
        for shift in (0..=28).step_by(7) {
            let byte = self.byte()?;
            value += u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return u32::try_from(value)
                    .ok()
                    .and_then(|value| usize::try_from(value).ok())
                    .ok_or(HpackError::IntegerOverflow);
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    /// Section 5.2: a string literal, raw or Huffman-coded (decoded onto the end of `scratch`).
    fn string(&mut self, scratch: &mut Vec<u8>) -> Result<Text<'a>, HpackError> {
        let first = self.byte()?;
        let len = self.integer(first, 7)?;
        let (bytes, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(HpackError::StringPastEnd(len))?;
        self.rest = rest;
        if first & 0x80 == 0 {
            return Ok(Text::Bytes(bytes));
        }
        let start = scratch.len();
        huffman_decode(bytes, scratch)?;
        Ok(Text::Scratch(start..scratch.len()))
    }

    /// Section 6.2: the rest of a literal field whose first byte, `first`, ends in a name index of
    /// `prefix_bits` bits (0 for a literal name).
    /// `decode_value(name)`: whether the value is needed; when not, it is skipped undecoded (and empty).
    fn literal<'t>(
        &mut self,
        first: u8,
        prefix_bits: u32,
        table: &'t Table,
        scratch: &'t mut Vec<u8>,
        decode_value: impl Fn(&[u8]) -> bool,
    ) -> Result<(usize, &'t [u8], &'t [u8]), HpackError>
    where
        'a: 't,
    {
        scratch.clear();
        let name_index = self.integer(first, prefix_bits)?;
        let name = match name_index {
            0 => self.string(scratch)?,
            index => Text::Bytes(table.field(index)?.0),
        };
        let value = match &name {
            Text::Bytes(name) if !decode_value(name) => self.skip_string()?,
            Text::Scratch(range)
                if !decode_value(scratch.get(range.clone()).unwrap_or_default()) =>
            {
                self.skip_string()?
            }
            _ => self.string(scratch)?,
        };
        let scratch: &'t [u8] = scratch;
        Ok((name_index, name.get(scratch), value.get(scratch)))
    }

    /// Passes over a string literal without decoding it.
    fn skip_string(&mut self) -> Result<Text<'a>, HpackError> {
        let first = self.byte()?;
        let len = self.integer(first, 7)?;
        self.rest = self.rest.get(len..).ok_or(HpackError::StringPastEnd(len))?;
        Ok(Text::Bytes(&[]))
    }
}

/// The Huffman decoder, as a state machine over nibbles: its states are the internal nodes of the code
/// tree (256 of them for 257 symbols), and a table lookup per nibble replaces four steps down the tree.
struct Huffman {
    /// `steps[node * 16 + nibble]`: `NEXT` holds the next node times 16 (the start of its row, so that
    /// the lookup chain, which bounds the speed, is one `|` per nibble), then a symbol and flags.
    steps: [u32; 4096],
    /// The nodes a string may end in: the root, and the nodes 1 to 7 ones below it (valid padding,
    /// section 5.2).
    accepting: [bool; 256],
}

/// The parts of a step: the next row, the symbol, and the flags below.
const NEXT: u32 = 0xfff;
const SYMBOL_SHIFT: u32 = 16;
/// The step outputs its symbol. At most one per step: no code is shorter than five bits.
const EMIT: u32 = 1 << 24;
/// The step decodes EOS.
const EOS_SEEN: u32 = 1 << 25;

fn huffman() -> &'static Huffman {
    static HUFFMAN: OnceLock<Huffman> = OnceLock::new();
    HUFFMAN.get_or_init(build_huffman)
}

/// A child in [`code_tree`]: a leaf holds its symbol.
const LEAF: u16 = 0x8000;

/// The code tree of [`CODES`]: `tree[node][bit]` is the child, `LEAF | symbol` or another node's number.
/// Node 0 is the root, which is no one's child, so a 0 would be a missing child (the code is complete:
/// there is none).
fn code_tree() -> Vec<[u16; 2]> {
    let mut tree = vec![[0u16; 2]];
    for (symbol, &(code, len)) in (0u16..).zip(CODES.iter()) {
        let mut node = 0;
        for shift in (1..len).rev() {
            let bit = ((code >> shift) & 1) as usize;
            node = match tree[node][bit] {
                0 => {
                    tree.push([0; 2]);
                    tree[node][bit] = (tree.len() - 1) as u16;
                    tree.len() - 1
                }
                child => usize::from(child),
            };
        }
        tree[node][(code & 1) as usize] = LEAF | symbol;
    }
    tree
}

fn build_huffman() -> Huffman {
    let tree = code_tree();
    let mut huffman = Huffman {
        steps: [0; 4096],
        accepting: [false; 256],
    };
    for (node, (row, children)) in huffman.steps.chunks_mut(16).zip(&tree).enumerate() {
        for (nibble, step) in row.iter_mut().enumerate() {
            let mut at = node;
            let mut children = *children;
            for shift in (0..4).rev() {
                let child = children[(nibble >> shift) & 1];
                at = if child & LEAF == 0 {
                    usize::from(child)
                } else if child == LEAF | EOS {
                    *step |= EOS_SEEN;
                    0
                } else {
                    *step |= EMIT | (u32::from(child & !LEAF) << SYMBOL_SHIFT);
                    0
                };
                children = tree[at];
            }
            *step |= (at * 16) as u32;
        }
    }
    let mut at = 0;
    for _ in 0..8 {
        huffman.accepting[at] = true;
        at = usize::from(tree[at][1]);
    }
    huffman
}

/// Section 5.2: appends the Huffman-decoded `src` to `out`.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = huffman();
    // Every symbol takes at least five bits, so this is all the room the output can need.
    out.reserve(src.len() * 8 / 5);
    let mut row = 0;
    let mut seen = 0;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            // Never out of bounds: the mask changes nothing (both are at most NEXT) but lets that be seen.
            let step = huffman.steps[(row | usize::from(nibble)) & NEXT as usize];
            if step & EMIT != 0 {
                out.push((step >> SYMBOL_SHIFT) as u8);
            }
            seen |= step;
            row = (step & NEXT) as usize;
        }
    }
    if seen & EOS_SEEN != 0 {
        return Err(HpackError::HuffmanEos);
    }
    if huffman.accepting.get(row / 16) != Some(&true) {
        return Err(HpackError::HuffmanPadding);
    }
    Ok(())
}

/// Appends one field: a full static-table match (RFC 7541 Appendix A, e.g. ":method: GET", ":status: 200")
/// as an indexed field; else, a literal WITHOUT indexing (or NEVER INDEXED when `sensitive`) with the name
/// as a static-table index when the static table has that name, else a literal name. Strings are written
/// as raw (non-Huffman) literals. Names are written as given (the caller passes lowercase).
///
/// Stateless, like [`encode_size_update`]: the relay's encoder keeps no dynamic table.
pub fn encode_field(name: &[u8], value: &[u8], sensitive: bool, out: &mut Vec<u8>) {
    let name_index = static_name_index(name);
    if name_index > 0 {
        // Entries of one name are next to each other in the static table.
        let same_name = STATIC[name_index - 1..]
            .iter()
            .take_while(|(static_name, _)| *static_name == name);
        for (index, (_, static_value)) in (name_index..).zip(same_name) {
            if *static_value == value {
                encode_integer(0x80, 7, index, out);
                return;
            }
        }
    }
    encode_integer(if sensitive { 0x10 } else { 0x00 }, 4, name_index, out);
    if name_index == 0 {
        encode_string(name, out);
    }
    encode_string(value, out);
}

/// Appends a literal field of kind `literal`, its name as table index `name_index` (or, when 0, written
/// out), both strings raw. The relay writes a response's field again so: the same kind, so that the
/// client's table gets what the upstream's got (masked, so the same size).
pub fn encode_literal(
    literal: Literal,
    name_index: usize,
    name: &[u8],
    value: &[u8],
    out: &mut Vec<u8>,
) {
    match literal {
        Literal::Incremental => encode_integer(0x40, 6, name_index, out),
        Literal::WithoutIndexing => encode_integer(0x00, 4, name_index, out),
        Literal::NeverIndexed => encode_integer(0x10, 4, name_index, out),
    }
    if name_index == 0 {
        encode_string(name, out);
    }
    encode_string(value, out);
}

/// The first static-table index of `name`, or 0: a match the compiler turns into a switch on the length,
/// where a scan of the table would compare every entry (this runs for every field the relay writes).
fn static_name_index(name: &[u8]) -> usize {
    match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => 0,
    }
}

/// Appends a dynamic table size update (RFC 7541 section 6.3).
pub fn encode_size_update(size: usize, out: &mut Vec<u8>) {
    encode_integer(0x20, 5, size, out);
}

/// Section 5.1: `value` in a first byte that starts with `first`'s flags and ends in `prefix_bits` bits.
fn encode_integer(first: u8, prefix_bits: u32, value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn encode_string(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer(0x00, 7, bytes.len(), out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests;
