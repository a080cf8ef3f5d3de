//! How certificates age: when a held certificate stops being good enough and is renewed
//! or replaced, which of several certificates for a name wins, and when to warn about
//! one nobody here can renew. Pure functions over times: no clock, no I/O (the caller
//! passes `now`), so the rules are unit-tested with any clock.
//!
//! This is the one place for the rules of the issuers the proxy runs itself or stands
//! in for. [`crate::CertManager::maintain`] applies them on a timer (the daemon's
//! `renewal.rs` drives it); the ACME CA's own renewal time (ARI window, else a third of
//! the lifetime left) is `acme::schedule`, which runs long before [`replace_at`] for an
//! ACME certificate comes.
//!
//! | source | renewed by | replaced at ([`replace_at`]) |
//! |---|---|---|
//! | [`Source::Local`] (the local CA) | the local issuer | a third of its lifetime left ([`local_renewal_at`]) |
//! | [`Source::External`] (an ACME directory) | the ACME manager, on its own schedule | [`expiry_margin`] before `not_after`: the local issuer stands in (`--acme-fallback local`) |
//! | [`Source::Manual`] (dropped in by an admin) | nobody: warned about from [`warn_at`] | [`expiry_margin`] before `not_after`: the local issuer stands in, when it is on |
//!
//! A certificate past its `replace_at` is still served while nothing better exists (an
//! expired certificate tells a client more than a failed handshake does).

use std::time::{Duration, SystemTime};

use crate::{ISSUER_LOCAL, ISSUER_MANUAL};

/// Longest [`expiry_margin`].
pub const EXPIRY_MARGIN_MAX: Duration = Duration::from_secs(3600);
/// Longest warning window of a manual certificate ([`warn_at`]).
pub const WARN_WINDOW_MAX: Duration = Duration::from_secs(30 * 86_400);
/// A manual certificate inside its warning window is logged about at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(86_400);

/// Who renews a certificate, from its `issuer` (meta.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Issued by the local CA: re-issued by the proxy.
    Local,
    /// Dropped in by an admin: the proxy cannot renew it.
    Manual,
    /// Any other issuer (an ACME directory URL): renewed by that issuer's client.
    External,
}

impl Source {
    pub fn of(issuer: &str) -> Source {
        match issuer {
            ISSUER_LOCAL => Source::Local,
            ISSUER_MANUAL => Source::Manual,
            _ => Source::External,
        }
    }
}

fn lifetime(not_before: SystemTime, not_after: SystemTime) -> Duration {
    not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO)
}

/// A local certificate is re-issued when a third of its lifetime is left (the ACME
/// rule without ARI, with no jitter: issuing locally costs nothing to anyone else).
pub fn local_renewal_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    not_after - lifetime(not_before, not_after) / 3
}

/// How long before its expiry a certificate the proxy cannot renew itself stops being
/// counted on: a thirtieth of its lifetime, at most [`EXPIRY_MARGIN_MAX`]. Enough for
/// the local issuer to stand in before clients see an expired certificate; short enough
/// that a certificate clients trust is served for as long as it is sure to be valid.
pub fn expiry_margin(not_before: SystemTime, not_after: SystemTime) -> Duration {
    (lifetime(not_before, not_after) / 30).min(EXPIRY_MARGIN_MAX)
}

/// When a certificate of `source` stops being usable for the names it covers, so that
/// another one is issued (locally) to replace it.
pub fn replace_at(source: Source, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    match source {
        Source::Local => local_renewal_at(not_before, not_after),
        Source::Manual | Source::External => not_after - expiry_margin(not_before, not_after),
    }
}

/// Valid at `now` and not yet at its [`replace_at`]: nothing needs to be issued for the
/// names it covers.
pub fn usable(
    source: Source,
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> bool {
    not_before <= now && now < replace_at(source, not_before, not_after)
}

/// Valid at `now` (a client with our clock accepts its dates).
pub fn valid(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    not_before <= now && now < not_after
}

/// From when a manual certificate is warned about: a third of its lifetime left, at
/// most [`WARN_WINDOW_MAX`] before it expires.
pub fn warn_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    not_after - (lifetime(not_before, not_after) / 3).min(WARN_WINDOW_MAX)
}

/// Whether a warning is due now, given when the last one was made.
pub fn warning_due(
    not_before: SystemTime,
    not_after: SystemTime,
    last_warned: Option<SystemTime>,
    now: SystemTime,
) -> bool {
    now >= warn_at(not_before, not_after)
        && last_warned.is_none_or(|at| now.duration_since(at).is_ok_and(|d| d >= WARN_EVERY))
}

/// The order of preference between certificates that cover the same name: valid at
/// `now` first, then the later expiry, then the greater id (so the outcome depends on
/// nothing else). A certificate not yet valid, or expired, never beats a valid one.
pub fn rank(
    id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> (bool, SystemTime, &str) {
    (valid(not_before, not_after, now), not_after, id)
}

/// The earliest of these times that is after `now`: when something about a certificate
/// changes (it becomes valid, due, expired, ...).
pub fn next_after(
    now: SystemTime,
    times: impl IntoIterator<Item = SystemTime>,
) -> Option<SystemTime> {
    times.into_iter().filter(|t| *t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + DAY * days as u32
    }

    fn secs(s: u64) -> SystemTime {
        t(0) + Duration::from_secs(s)
    }

    #[test]
    fn sources_come_from_the_issuer() {
        assert_eq!(Source::of("local"), Source::Local);
        assert_eq!(Source::of("manual"), Source::Manual);
        assert_eq!(
            Source::of("https://acme-v02.api.letsencrypt.org/directory"),
            Source::External
        );
    }

    #[test]
    fn local_certificates_are_renewed_with_a_third_of_their_life_left() {
        // 30 days: day 20. 30 seconds (a test lifetime): second 20.
        assert_eq!(local_renewal_at(t(0), t(30)), t(20));
        assert_eq!(local_renewal_at(secs(0), secs(30)), secs(20));
        assert_eq!(replace_at(Source::Local, t(0), t(30)), t(20));
        assert!(usable(Source::Local, t(0), t(30), t(19)));
        assert!(!usable(Source::Local, t(0), t(30), t(20)));
        // Degenerate dates: never usable, and no panic.
        assert_eq!(local_renewal_at(t(5), t(1)), t(1));
        assert!(!usable(Source::Local, t(5), t(1), t(3)));
    }

    #[test]
    fn others_are_replaced_just_before_they_expire() {
        // 90 days: an hour before (a thirtieth would be three days).
        let at = replace_at(Source::External, t(0), t(90));
        assert_eq!(at, t(90) - Duration::from_secs(3600));
        assert_eq!(replace_at(Source::Manual, t(0), t(90)), at);
        // 60 seconds: two seconds before.
        assert_eq!(replace_at(Source::External, secs(0), secs(60)), secs(58));
        assert!(usable(Source::External, t(0), t(90), t(89)));
        assert!(!usable(Source::External, t(0), t(90), at));
        assert!(!usable(Source::Manual, t(0), t(90), t(91)));
    }

    #[test]
    fn a_certificate_not_yet_valid_is_not_usable() {
        for s in [Source::Local, Source::Manual, Source::External] {
            assert!(!usable(s, t(10), t(100), t(9)), "{s:?}");
            assert!(usable(s, t(10), t(100), t(10)), "{s:?}");
        }
    }

    #[test]
    fn a_valid_certificate_always_ranks_above_one_that_is_not() {
        let now = t(50);
        let valid_short = rank("a", t(0), t(60), now);
        let not_yet_valid_long = rank("b", t(51), t(400), now);
        let expired = rank("c", t(0), t(49), now);
        assert!(valid_short > not_yet_valid_long);
        assert!(valid_short > expired);
        // Among valid ones the later expiry, then the id.
        assert!(rank("a", t(0), t(61), now) > valid_short);
        assert!(rank("b", t(0), t(60), now) > valid_short);
        // Among invalid ones too (an expired one that expired later says more).
        assert!(not_yet_valid_long > expired);
    }

    #[test]
    fn manual_certificates_are_warned_about_once_a_day_from_their_window() {
        // 90 days: warned from day 60 (a third left).
        assert_eq!(warn_at(t(0), t(90)), t(60));
        // A year: 30 days before, not four months.
        assert_eq!(warn_at(t(0), t(365)), t(335));
        assert!(!warning_due(t(0), t(90), None, t(59)));
        assert!(warning_due(t(0), t(90), None, t(60)));
        let warned = t(60) + Duration::from_secs(10);
        assert!(!warning_due(t(0), t(90), Some(warned), t(60) + DAY / 2));
        assert!(warning_due(t(0), t(90), Some(warned), warned + DAY));
        // After expiry as well.
        assert!(warning_due(t(0), t(90), Some(t(80)), t(95)));
    }

    #[test]
    fn next_after_skips_what_is_past() {
        assert_eq!(next_after(t(5), [t(1), t(9), t(7), t(5)]), Some(t(7)));
        assert_eq!(next_after(t(5), [t(1), t(5)]), None);
        assert_eq!(next_after(t(5), []), None);
    }
}
