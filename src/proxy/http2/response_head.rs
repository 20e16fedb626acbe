//! A response's header block (head or trailers) on its way from the upstream to the client. Every block is
//! decoded, since the relay's table must follow the upstream's encoder, and passes as it came: the client's
//! table follows the same encoder. A response the relay masks has every field read: one that holds a
//! secret is written again with the secret masked, as the same kind of literal (so the client's table gets
//! the entry the upstream's got, masked, of the same size, and later blocks that refer to it pass as they
//! came). Also read: the status, and whether the body is in a content coding (which cannot be scanned).

use std::ops::Range;

use super::hpack::{self, Decoder, HpackError, Literal, Representation};
use crate::redact::messages::codings;
use crate::redact::Needles;

/// `:status` in the static table: the name of the status field of an answer the relay writes.
const STATUS_NAME: usize = 8;

/// What the relay read of a response's header block.
#[derive(Debug, Default)]
pub(super) struct ResponseHead {
    pub(super) status: Option<u16>,
    /// The codings of a Content-Encoding other than identity (a body that cannot be scanned), if any.
    pub(super) coded: Option<String>,
    /// Secrets masked in the block (runs, as `Needles::mask_all` counts them); when some were, the block
    /// to send in its place is the `masked` buffer given to [`read`].
    pub(super) masked: u64,
}

/// Buffers the relay keeps for [`read`], reused from block to block.
#[derive(Default)]
pub(super) struct Rewrite {
    /// The block with its secrets masked, when some were.
    pub(super) masked: Vec<u8>,
    /// The block's effect on a decoder's table alone, as an informational (103) head: what the client gets
    /// in place of a response the relay refuses, so that its table stays in step.
    pub(super) informational: Vec<u8>,
}

/// Decodes `block` with `decoder`. Without `needles` (a response that is not masked), only the status is
/// read; with them, every field is, and `rewrite` gets the masked block (when something was masked) and
/// the informational one.
pub(super) fn read(
    decoder: &mut Decoder,
    block: &[u8],
    needles: Option<&Needles>,
    rewrite: &mut Rewrite,
) -> Result<ResponseHead, HpackError> {
    let mut head = ResponseHead::default();
    let Some(needles) = needles else {
        decoder.decode_wanted(
            block,
            |name| name == b":status",
            |_, value| head.status = parse_status(value),
        )?;
        return Ok(head);
    };
    let Rewrite {
        masked,
        informational,
    } = rewrite;
    masked.clear();
    informational.clear();
    // Up to where `block` is in `masked` already; and where its fields begin (after size updates).
    let mut copied = 0;
    let mut fields_start = None;
    let mut status_indexed = false;
    let mut effect = Vec::new();
    decoder.decode_fields(
        block,
        |_| true,
        |field| {
            fields_start.get_or_insert(field.span.start);
            if field.name == b":status" {
                head.status = parse_status(field.value);
            }
            if field.name == b"content-encoding" {
                if let Some(codings) = codings([field.value]) {
                    head.coded = Some(codings);
                }
            }
            let name = needles.mask_all(field.name);
            let value = needles.mask_all(field.value);
            let count =
                name.as_ref().map_or(0, |m| m.count) + value.as_ref().map_or(0, |m| m.count);
            head.masked += count;
            let Representation::Literal(literal) = field.representation else {
                // A table entry: the client's copy was masked when it entered its table.
                return;
            };
            let name_index = if name.is_some() { 0 } else { field.name_index };
            let name = name.as_ref().map_or(field.name, |m| m.bytes.as_slice());
            let value = value.as_ref().map_or(field.value, |m| m.bytes.as_slice());
            if count > 0 {
                masked.extend_from_slice(block.get(copied..field.span.start).unwrap_or_default());
                hpack::encode_literal(literal, name_index, name, value, masked);
                copied = field.span.end;
            }
            if literal == Literal::Incremental {
                if field.name == b":status" {
                    // Same length (three digits): the entry is the size the upstream's table has.
                    status_indexed = true;
                    hpack::encode_literal(literal, name_index, name, b"103", &mut effect);
                } else {
                    hpack::encode_literal(literal, name_index, name, value, &mut effect);
                }
            }
        },
    )?;
    if head.masked > 0 {
        masked.extend_from_slice(block.get(copied..).unwrap_or_default());
    }
    let updates: Range<usize> = 0..fields_start.unwrap_or(block.len());
    informational.extend_from_slice(block.get(updates).unwrap_or_default());
    if !status_indexed {
        hpack::encode_literal(
            Literal::WithoutIndexing,
            STATUS_NAME,
            b":status",
            b"103",
            informational,
        );
    }
    // An incremental :status came first in the block, as every status does, so it does in `effect`.
    informational.extend_from_slice(&effect);
    Ok(head)
}

fn parse_status(value: &[u8]) -> Option<u16> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
