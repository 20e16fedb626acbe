//! When to fetch a token, as pure functions of the time and a jitter in [0, 1) that the caller draws:
//! refresh once about half the lifetime has passed; never hand a token out in the last tenth of its
//! lifetime (at most the last 60 s); after a transient failure, back off from 1 s doubling to 30 s, or
//! longer if the endpoint said Retry-After; after a permanent one, wait at least 5 minutes. Jitter keeps
//! many daemons (or many secrets of one) from asking at the same instant.

use std::time::Duration;

use tokio::time::Instant;

use crate::secrets::exchange::{FailureKind, MAX_LIFETIME};

/// A token is not handed out in this last part of its lifetime: a request takes time to reach the
/// upstream, and clocks differ.
const UNUSABLE_TAIL_FRACTION: u32 = 10;
const MAX_UNUSABLE_TAIL: Duration = Duration::from_secs(60);
/// Refresh between 45% and 55% of the lifetime.
const REFRESH_JITTER: f64 = 0.1;
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The least time between two attempts that end in a permanent failure (invalid_client, invalid_grant,
/// 401...): asking again at once would only be refused again, and may lock the client out.
pub const PERMANENT_RETRY: Duration = Duration::from_secs(5 * 60);
/// A Retry-After longer than this is not waited out in full: a misconfigured endpoint should not stall a
/// secret for hours.
pub const MAX_RETRY_AFTER: Duration = PERMANENT_RETRY;
/// The least time between two refreshes forced by an upstream's 401: a sandbox could otherwise make the
/// daemon fetch a token per request.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Until when a token received at `received`, living `lifetime`, may be handed out.
pub fn usable_until(received: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(MAX_LIFETIME);
    let tail = (lifetime / UNUSABLE_TAIL_FRACTION).min(MAX_UNUSABLE_TAIL);
    received + (lifetime - tail)
}

/// When to fetch the next token: at half the lifetime, give or take a tenth of that half.
pub fn refresh_at(received: Instant, lifetime: Duration, jitter: f64) -> Instant {
    let half = lifetime.min(MAX_LIFETIME) / 2;
    let factor = 1.0 - REFRESH_JITTER + 2.0 * REFRESH_JITTER * jitter.clamp(0.0, 1.0);
    received + half.mul_f64(factor)
}

/// How long to wait after the `failures`-th failure in a row (1 for the first).
pub fn retry_delay(
    kind: FailureKind,
    failures: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let delay = match kind {
        // At least the full 5 minutes; up to a tenth more.
        FailureKind::Permanent => PERMANENT_RETRY.mul_f64(1.0 + 0.1 * jitter),
        // "Equal jitter": between half and all of the doubled delay, so that it never collapses to 0.
        FailureKind::Transient => {
            let doublings = failures.saturating_sub(1).min(16);
            let base = (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF);
            base.mul_f64(0.5 + 0.5 * jitter)
        }
    };
    delay.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

/// Whether an upstream's 401 may start a refresh now, given when the last forced one started.
pub fn may_force(last_forced: Option<Instant>, now: Instant) -> bool {
    last_forced.is_none_or(|last| now.saturating_duration_since(last) >= FORCED_REFRESH_INTERVAL)
}

#[cfg(test)]
mod tests;
