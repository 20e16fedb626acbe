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
