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
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_token_is_not_handed_out_in_its_last_tenth_nor_its_last_minute() {
        let t0 = Instant::now();
        // An hour: the last 60 s (a tenth would be 6 minutes).
        assert_eq!(usable_until(t0, HOUR), t0 + Duration::from_secs(3540));
        // Ten minutes: the last minute is also its last tenth.
        assert_eq!(usable_until(t0, HOUR / 6), t0 + Duration::from_secs(540));
        // Five seconds (the test server's): the last half second.
        assert_eq!(
            usable_until(t0, Duration::from_secs(5)),
            t0 + Duration::from_millis(4500)
        );
        assert_eq!(usable_until(t0, Duration::ZERO), t0);
        assert_eq!(
            usable_until(t0, Duration::MAX),
            t0 + MAX_LIFETIME - MAX_UNUSABLE_TAIL
        );
    }

    #[test]
    fn refresh_comes_at_half_life_with_jitter_and_before_the_token_is_unusable() {
        let t0 = Instant::now();
        assert_eq!(refresh_at(t0, HOUR, 0.5), t0 + HOUR / 2);
        assert_eq!(refresh_at(t0, HOUR, 0.0), t0 + Duration::from_secs(1620));
        assert_eq!(refresh_at(t0, HOUR, 1.0), t0 + Duration::from_secs(1980));
        assert_eq!(refresh_at(t0, HOUR, 7.0), t0 + Duration::from_secs(1980));
        for lifetime in [1, 5, 60, 600, 3600, 86_400].map(Duration::from_secs) {
            for jitter in [0.0, 0.5, 0.999] {
                let refresh = refresh_at(t0, lifetime, jitter);
                assert!(refresh > t0 && refresh < usable_until(t0, lifetime));
            }
        }
    }

    #[test]
    fn transient_failures_back_off_from_one_second_doubling_to_thirty() {
        let full = |n| retry_delay(FailureKind::Transient, n, None, 1.0);
        let seconds: Vec<u64> = (1..=7).map(|n| full(n).as_secs()).collect();
        assert_eq!(seconds, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(full(u32::MAX), MAX_BACKOFF);
        // Jitter takes up to half away, never all of it.
        assert_eq!(
            retry_delay(FailureKind::Transient, 1, None, 0.0),
            Duration::from_millis(500)
        );
        assert_eq!(
            retry_delay(FailureKind::Transient, 4, None, 0.5),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_five_minutes() {
        let t = FailureKind::Transient;
        assert_eq!(
            retry_delay(t, 1, Some(Duration::from_secs(20)), 0.0),
            Duration::from_secs(20)
        );
        assert_eq!(
            retry_delay(t, 6, Some(Duration::from_secs(2)), 1.0),
            MAX_BACKOFF
        );
        assert_eq!(retry_delay(t, 1, Some(HOUR), 0.0), MAX_RETRY_AFTER);
    }

    #[test]
    fn permanent_failures_wait_five_minutes_or_a_little_more() {
        let p = FailureKind::Permanent;
        assert_eq!(retry_delay(p, 1, None, 0.0), PERMANENT_RETRY);
        assert_eq!(retry_delay(p, 9, None, 1.0), Duration::from_secs(330));
        assert_eq!(
            retry_delay(p, 1, Some(Duration::from_secs(1)), 0.0),
            PERMANENT_RETRY
        );
    }

    #[test]
    fn an_upstream_401_forces_a_refresh_at_most_every_ten_seconds() {
        let t0 = Instant::now();
        assert!(may_force(None, t0));
        assert!(!may_force(Some(t0), t0 + Duration::from_secs(9)));
        assert!(may_force(Some(t0), t0 + FORCED_REFRESH_INTERVAL));
        assert!(!may_force(Some(t0 + HOUR), t0));
    }
}
