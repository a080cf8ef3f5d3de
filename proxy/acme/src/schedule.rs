//! When to renew and when to try again: pure functions over times (no clock, no
//! randomness of their own: the caller passes `now` and a random number in `[0, 1)`).

use std::time::{Duration, SystemTime};

/// First wait after a failed attempt.
pub const BACKOFF_MIN: Duration = Duration::from_secs(60);
/// Longest wait between two failed attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// Share of the lifetime by which the fallback renewal time is spread (earlier).
pub const JITTER_SHARE: f64 = 0.05;

/// A renewal window suggested by the CA (RFC 9773, ARI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: SystemTime,
    pub end: SystemTime,
}

/// Certificates living less than this renew at half their lifetime instead of a third
/// (Let's Encrypt's `shortlived` profile is 160 hours; nginx's acme module does the same).
pub const SHORT_LIFETIME: Duration = Duration::from_secs(10 * 86_400);
/// Share of the lifetime kept free at the end of an ARI window that reaches further: a
/// window ending at expiry (a test CA's, or a CA's for very short certificates) would
/// otherwise leave no room to retry.
pub const ARI_TAIL_SHARE: u32 = 6;
/// The smallest wait after a failure when the backoff is capped by the time left.
pub const CAPPED_BACKOFF_MIN: Duration = Duration::from_secs(10);

/// RFC 9773 section 4.2: pick a uniformly random time inside the window; a time (or a
/// whole window) in the past means "now". An inverted window (end before start) is
/// treated as its start. The window is cut at `not_after - lifetime / ARI_TAIL_SHARE`
/// (see [`ARI_TAIL_SHARE`]); a window starting after that point means that point.
pub fn ari_renewal_time(
    window: Window,
    now: SystemTime,
    rand01: f64,
    not_before: SystemTime,
    not_after: SystemTime,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let latest = not_after - lifetime / ARI_TAIL_SHARE;
    let start = window.start.min(latest);
    let end = window.end.min(latest).max(start);
    let span = end.duration_since(start).unwrap_or(Duration::ZERO);
    let at = start + span.mul_f64(clamp01(rand01));
    at.max(now)
}

/// Without ARI: renew when a third of the lifetime is left (half of it for lifetimes
/// under [`SHORT_LIFETIME`]), spread earlier by up to [`JITTER_SHARE`] of the lifetime
/// so that certificates issued together do not all renew in the same second. Never
/// before `not_before`.
pub fn fallback_renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    rand01: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let left = if lifetime < SHORT_LIFETIME {
        lifetime / 2
    } else {
        lifetime / 3
    };
    let at = not_after - left;
    let jitter = lifetime.mul_f64(JITTER_SHARE * clamp01(rand01));
    (at - jitter).max(not_before)
}

/// The wait after `failures` failed attempts in a row while a certificate with
/// `time_left` before expiry is still served: [`backoff`], but never more than a third
/// of the time left (and not under [`CAPPED_BACKOFF_MIN`]), so that retries never
/// outrun expiry: a 160-hour certificate gets many tries between its renewal time and
/// its end. Without a certificate (or an expired one), the plain backoff.
pub fn retry_delay(failures: u32, rand01: f64, time_left: Option<Duration>) -> Duration {
    let b = backoff(failures, rand01);
    match time_left {
        Some(left) if !left.is_zero() => b.min((left / 3).max(CAPPED_BACKOFF_MIN)),
        _ => b,
    }
}

/// The longest wait a CA's "retry after" can impose (Let's Encrypt's longest rate-limit
/// window is 168 h): a problem text saying `retry after 9999-12-31 ...` (a CA bug, a
/// garbled detail) must not stop a certificate's renewals for good, and the wait is
/// persisted in the store, so a restart would not end it either.
pub const RATE_LIMIT_MAX: Duration = Duration::from_secs(7 * 86_400);

/// How long a `rateLimited` answer holds when the CA gives no time (neither a
/// Retry-After header nor a "retry after" in the problem's detail): an hour, the
/// shortest window of Let's Encrypt's limits (failed validations per hour).
pub const RATE_LIMIT_DEFAULT: Duration = Duration::from_secs(3600);

/// When to try again after a failure at `now`: after `backoff`, or at the CA's
/// `retry_after` when that is later, but never later than [`RATE_LIMIT_MAX`] (or the
/// backoff, if longer) from now.
pub fn retry_at(now: SystemTime, backoff: Duration, retry_after: Option<SystemTime>) -> SystemTime {
    let at = retry_after.map_or(now + backoff, |t| t.max(now + backoff));
    at.min(now + RATE_LIMIT_MAX.max(backoff))
}

/// How long to wait after `failures` failed attempts in a row (1 = the first failure):
/// [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`], then up to 10 % more (jitter).
pub fn backoff(failures: u32, rand01: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = BACKOFF_MIN.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    base + base.mul_f64(0.1 * clamp01(rand01))
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Review (issue 14): the CA's retry-after is honoured (never retried sooner), but
    /// a far-future or absurd one is capped at RATE_LIMIT_MAX; a past one is the backoff.
    #[test]
    fn retry_at_honours_the_ca_within_a_cap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let backoff = Duration::from_secs(120);
        assert_eq!(retry_at(now, backoff, None), now + backoff);
        // In the past: the backoff.
        let past = now - Duration::from_secs(3600);
        assert_eq!(retry_at(now, backoff, Some(past)), now + backoff);
        // Later than the backoff, within the cap: exactly what the CA asked.
        let ca = now + 3 * DAY;
        assert_eq!(retry_at(now, backoff, Some(ca)), ca);
        // Year 9999: capped.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert_eq!(retry_at(now, backoff, Some(far)), now + RATE_LIMIT_MAX);
        // The backoff itself is never cut.
        let long = RATE_LIMIT_MAX + DAY;
        assert_eq!(retry_at(now, long, Some(far)), now + long);
    }

    fn t(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + DAY * days as u32
    }

    #[test]
    fn ari_picks_inside_the_window() {
        let w = Window {
            start: t(60),
            end: t(62),
        };
        assert_eq!(ari_renewal_time(w, t(0), 0.0, t(0), t(90)), t(60));
        assert_eq!(ari_renewal_time(w, t(0), 0.5, t(0), t(90)), t(61));
        let late = ari_renewal_time(w, t(0), 0.999_999, t(0), t(90));
        assert!(late > t(61) && late < t(62), "{late:?}");
        // Out-of-range random numbers stay inside the window.
        assert_eq!(ari_renewal_time(w, t(0), 7.0, t(0), t(90)), t(62));
        assert_eq!(ari_renewal_time(w, t(0), -1.0, t(0), t(90)), t(60));
        assert_eq!(ari_renewal_time(w, t(0), f64::NAN, t(0), t(90)), t(60));
    }

    #[test]
    fn ari_window_in_the_past_means_now() {
        // Whole window past (e.g. the CA revoked early: RFC 9773 window moved back).
        let w = Window {
            start: t(1),
            end: t(2),
        };
        assert_eq!(ari_renewal_time(w, t(5), 0.3, t(0), t(90)), t(5));
        // Window open now, chosen time already past.
        let w = Window {
            start: t(4),
            end: t(8),
        };
        assert_eq!(ari_renewal_time(w, t(6), 0.25, t(0), t(90)), t(6));
        assert_eq!(ari_renewal_time(w, t(6), 0.75, t(0), t(90)), t(7));
    }

    #[test]
    fn ari_inverted_window_is_its_start() {
        let w = Window {
            start: t(10),
            end: t(9),
        };
        assert_eq!(ari_renewal_time(w, t(0), 0.9, t(0), t(90)), t(10));
    }

    #[test]
    fn fallback_is_a_third_of_the_lifetime_left() {
        // 90-day certificate: renew at day 60 without jitter.
        assert_eq!(fallback_renewal_time(t(0), t(90), 0.0), t(60));
        // 45 days: day 30. Under 10 days, half: 6 days (short-lived profile): day 3.
        assert_eq!(fallback_renewal_time(t(0), t(45), 0.0), t(30));
        assert_eq!(fallback_renewal_time(t(0), t(6), 0.0), t(3));
    }

    #[test]
    fn fallback_jitter_is_earlier_and_bounded() {
        let nb = t(0);
        let na = t(90);
        let latest = fallback_renewal_time(nb, na, 0.0);
        let earliest = fallback_renewal_time(nb, na, 0.999_999_9);
        assert!(earliest < latest);
        // 5 % of 90 days = 4.5 days.
        let spread = latest.duration_since(earliest).unwrap();
        assert!(spread <= DAY * 9 / 2 && spread > DAY * 4, "{spread:?}");
        for r in [0.1, 0.5, 0.9] {
            let at = fallback_renewal_time(nb, na, r);
            assert!(at >= earliest && at <= latest);
        }
    }

    #[test]
    fn fallback_degenerate_lifetimes() {
        // not_after before not_before: renew at once (at not_before, which is past).
        assert_eq!(fallback_renewal_time(t(5), t(1), 0.5), t(5));
        assert_eq!(fallback_renewal_time(t(5), t(5), 0.5), t(5));
    }

    #[test]
    fn backoff_doubles_from_minutes_to_hours_and_stops() {
        let m = |n: u64| Duration::from_secs(60 * n);
        assert_eq!(backoff(0, 0.0), m(1));
        assert_eq!(backoff(1, 0.0), m(1));
        assert_eq!(backoff(2, 0.0), m(2));
        assert_eq!(backoff(3, 0.0), m(4));
        assert_eq!(backoff(7, 0.0), m(64));
        assert_eq!(backoff(9, 0.0), m(256));
        assert_eq!(backoff(10, 0.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0.0), BACKOFF_MAX);
        // Jitter adds at most 10 %.
        let j = backoff(3, 0.999);
        assert!(
            j > m(4) && j < m(4) + m(4) / 10 + Duration::from_secs(1),
            "{j:?}"
        );
        // Monotonic.
        let mut prev = Duration::ZERO;
        for n in 1..30 {
            let b = backoff(n, 0.0);
            assert!(b >= prev);
            prev = b;
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// The lifetimes of 2026-2028 (Let's Encrypt's shortlived 160 h, a 7-day one,
    /// tlsserver 45 days, classic 64 days from 2027-02, classic 90 days today) and a
    /// 100-second test certificate: (lifetime, renewal time after issuance).
    fn lifetimes() -> Vec<(Duration, Duration)> {
        vec![
            (Duration::from_secs(100), Duration::from_secs(50)),
            (HOUR * 160, HOUR * 80),
            (DAY * 7, HOUR * 84),
            (DAY * 45, DAY * 30),
            (DAY * 64, DAY * 64 - DAY * 64 / 3),
            (DAY * 90, DAY * 60),
        ]
    }

    #[test]
    fn renewal_time_over_the_lifetimes_of_2026_to_2028() {
        for (lifetime, renew_after) in lifetimes() {
            let nb = t(0);
            let at = fallback_renewal_time(nb, nb + lifetime, 0.0);
            assert_eq!(at, nb + renew_after, "lifetime {lifetime:?}");
            // Jitter only ever makes it earlier, by at most 5 %.
            let early = fallback_renewal_time(nb, nb + lifetime, 0.999);
            assert!(early <= at && early >= at - lifetime / 20, "{lifetime:?}");
        }
    }

    #[test]
    fn retries_never_outrun_expiry() {
        // From the renewal time on, every attempt fails: count the tries before expiry,
        // with the worst jitter (the longest waits). Each lifetime gets several.
        for (lifetime, renew_after) in lifetimes() {
            let nb = t(0);
            let na = nb + lifetime;
            let mut now = nb + renew_after;
            let mut tries = 0;
            let mut failures = 0;
            while now < na {
                tries += 1;
                failures += 1;
                let left = na.duration_since(now).unwrap();
                let wait = retry_delay(failures, 0.999, Some(left));
                assert!(
                    wait <= (left / 3).max(CAPPED_BACKOFF_MIN),
                    "{lifetime:?}: {failures} failures, {left:?} left, waits {wait:?}"
                );
                now += wait;
            }
            let want = if lifetime < Duration::from_secs(1000) {
                4
            } else {
                10
            };
            assert!(
                tries >= want,
                "{lifetime:?}: only {tries} tries before expiry"
            );
        }
        // 160 hours: the first failures wait the plain backoff (minutes), not longer.
        assert_eq!(retry_delay(1, 0.0, Some(HOUR * 80)), BACKOFF_MIN);
        assert_eq!(retry_delay(10, 0.0, Some(HOUR * 80)), BACKOFF_MAX);
        // Two hours left: a third of it, not six hours.
        assert_eq!(retry_delay(10, 0.0, Some(HOUR * 2)), HOUR * 2 / 3);
        // No certificate, or an expired one: the plain backoff.
        assert_eq!(retry_delay(10, 0.0, None), BACKOFF_MAX);
        assert_eq!(retry_delay(10, 0.0, Some(Duration::ZERO)), BACKOFF_MAX);
    }

    #[test]
    fn an_ari_window_reaching_expiry_is_cut_before_its_end() {
        // A test CA's window for a 100 s certificate: the whole lifetime.
        let nb = t(0);
        let na = nb + Duration::from_secs(100);
        let w = Window { start: nb, end: na };
        let latest = na - Duration::from_secs(100) / ARI_TAIL_SHARE;
        assert_eq!(ari_renewal_time(w, nb, 1.0, nb, na), latest);
        assert_eq!(ari_renewal_time(w, nb, 0.0, nb, na), nb);
        // Let's Encrypt's window for 90 days (around day 60) is left as it is.
        let w = Window {
            start: t(59),
            end: t(61),
        };
        assert_eq!(ari_renewal_time(w, t(1), 0.5, t(0), t(90)), t(60));
        // A window that starts after the cut: the cut.
        let w = Window {
            start: t(88),
            end: t(89),
        };
        assert_eq!(ari_renewal_time(w, t(1), 0.5, t(0), t(90)), t(75));
    }
}
