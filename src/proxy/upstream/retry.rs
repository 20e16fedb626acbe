//! Whether a failed request may go again, and how: what the failure says about whether the upstream
//! processed it, which pooled connections the next attempt may take, and the pauses while an upstream
//! refuses connections (a restart).

use std::time::{Duration, Instant};

use http::header;
use http::{Response, Version};

use crate::proxy::upstream::replay::NotReplayable;

use super::error::SendError;

/// How many times a request the upstream did not process may go again: each time on a stream it refused,
/// above a GOAWAY, or on a connection that closed before the request was written.
pub(super) const MAX_RETRIES: u32 = 4;

/// How long after a first failed attempt to connect (refused, reset in the handshake: an upstream
/// restarting) a request keeps trying, with pauses from `FIRST_PAUSE` doubling up to `LONGEST_PAUSE`.
pub(super) const RECONNECT_FOR: Duration = Duration::from_secs(3);

pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(25);

pub(super) const LONGEST_PAUSE: Duration = Duration::from_millis(500);

/// Which pooled connections an attempt may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reuse {
    Any,
    /// Not an idle HTTP/1.1 connection.
    Http2,
    /// None: a new connection.
    Nothing,
}

/// How far a failed attempt got, as far as sending the request again goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The upstream did not process it: it was never written, or went on a stream above a GOAWAY's last
    /// stream id or refused with REFUSED_STREAM (RFC 9113 §8.7). Any request may go again.
    Unprocessed,
    /// No connection could be made (refused, or reset during the handshake): it may go again after a pause.
    NotConnected,
    /// The connection closed before any of the response arrived: the upstream may have processed it, so
    /// only an idempotent request goes again, and once (RFC 9110 §9.2.2).
    Closed,
    /// Anything else (a response began, a certificate or protocol error): never sent again.
    Final,
}

/// How far a request on an HTTP/2 stream got, from the error that ended the stream before its response.
pub(super) fn http2_failure(error: &h2::Error) -> Failure {
    // h2 fails the streams above a GOAWAY's last stream id with the GOAWAY itself, and those at or below
    // it (which the upstream may have processed) with the I/O error that ends the connection.
    let above_goaway = error.is_go_away() && error.is_remote();
    let refused =
        error.is_reset() && error.is_remote() && error.reason() == Some(h2::Reason::REFUSED_STREAM);
    if above_goaway || refused {
        Failure::Unprocessed
    } else if error.is_io() {
        Failure::Closed
    } else {
        Failure::Final
    }
}

/// How far a request on an HTTP/1.1 connection got, from hyper's error for a request it did write (or
/// began to).
pub(super) fn http1_failure(error: &hyper::Error) -> Failure {
    let io = std::error::Error::source(error)
        .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() || io {
        Failure::Closed
    } else {
        Failure::Final
    }
}

/// Whether a failure to connect came before anything could be sent, and may be over soon (an upstream
/// restarting refuses connections, or resets those it accepted as it stops).
pub(super) fn connect_failure(error: &SendError) -> Failure {
    use std::io::ErrorKind::*;
    let transient = |error: &std::io::Error| {
        matches!(
            error.kind(),
            ConnectionRefused | ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
        )
    };
    match error {
        SendError::Connect(error) if transient(error) => Failure::NotConnected,
        SendError::Http2(error) if error.get_io().is_some_and(transient) => Failure::NotConnected,
        _ => Failure::Final,
    }
}

/// Pauses between attempts to connect, for `RECONNECT_FOR` after the first failure.
#[derive(Default)]
pub(super) struct Reconnect {
    pub(super) first_failure: Option<Instant>,
    pub(super) next_pause: Duration,
}

impl Reconnect {
    /// How long to wait before the next attempt; None once `RECONNECT_FOR` has passed.
    pub(super) fn pause(&mut self) -> Option<Duration> {
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        if since.elapsed() >= RECONNECT_FOR {
            return None;
        }
        let pause = self.next_pause.max(FIRST_PAUSE);
        self.next_pause = (pause * 2).min(LONGEST_PAUSE);
        Some(pause)
    }
}

pub(super) fn not_sent_again(why: String, error: SendError) -> SendError {
    SendError::NotSentAgain {
        why,
        source: Box::new(error),
    }
}

pub(super) fn not_replayable(why: NotReplayable, error: SendError) -> SendError {
    not_sent_again(why.to_string(), error)
}

/// Whether an HTTP/1 response ends its connection (RFC 9112 §9.3).
pub(super) fn closes_after<B>(response: &Response<B>) -> bool {
    let says = |token: &str| {
        response
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|option| option.trim().eq_ignore_ascii_case(token))
    };
    match response.version() {
        Version::HTTP_11 => says("close"),
        _ => !says("keep-alive"),
    }
}
