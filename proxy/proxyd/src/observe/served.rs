//! The findings of the served == stored check (the check itself is
//! `control/served.rs`): per routed name, whether every HTTPS listener serves the leaf
//! that the store holds on disk. Read by `GET /v1/certs` (`proxyctl certs`) and the
//! metrics (`proxyd_certificate_served_*`).
//!
//! A name that turns bad (mismatch, unreachable) is logged once, with a warning, when
//! it turns; once more (info) when it is good again. Nothing is logged on a tick that
//! changes nothing, so a lasting mismatch costs one line, not one per check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// What one check found for one name (over all listeners).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every listener serves the stored leaf, which is the one held in memory.
    Match,
    /// A listener serves another leaf than the store's, or the store's cannot be read.
    Mismatch(String),
    /// A listener could not be reached or refused the handshake (and none mismatched).
    Unreachable(String),
}

impl Outcome {
    pub fn state(&self) -> admin_api::ServedState {
        match self {
            Outcome::Match => admin_api::ServedState::Match,
            Outcome::Mismatch(_) => admin_api::ServedState::Mismatch,
            Outcome::Unreachable(_) => admin_api::ServedState::Unreachable,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Match => None,
            Outcome::Mismatch(r) | Outcome::Unreachable(r) => Some(r),
        }
    }
}

/// One name's last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameCheck {
    /// The id of the certificate held for it when checked.
    pub cert: String,
    pub outcome: Outcome,
    /// Unix seconds.
    pub checked_at: u64,
    /// SHA-256 of the leaf served (the first listener that answered).
    pub served: Option<String>,
    /// SHA-256 of the leaf on disk.
    pub stored: Option<String>,
}

/// Connections made by the check, by result (`proxyd_certificate_served_checks_total`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub matched: u64,
    pub mismatched: u64,
    pub unreachable: u64,
}

/// The check's findings, replaced whole after each run.
#[derive(Default)]
pub struct ServedChecks {
    /// Seconds between two runs on the timer; 0: off. Set once at start.
    interval_secs: AtomicU64,
    by_name: ArcSwap<BTreeMap<String, NameCheck>>,
    /// Unix seconds of the last run's end (0: none yet).
    last_run: AtomicU64,
    matched: AtomicU64,
    mismatched: AtomicU64,
    unreachable: AtomicU64,
}

impl ServedChecks {
    pub fn set_interval_secs(&self, secs: u64) {
        self.interval_secs.store(secs, Ordering::Relaxed);
    }

    pub fn interval_secs(&self) -> u64 {
        self.interval_secs.load(Ordering::Relaxed)
    }

    /// The last run's findings, by name.
    pub fn results(&self) -> Arc<BTreeMap<String, NameCheck>> {
        self.by_name.load_full()
    }

    /// Unix seconds of the last run's end.
    pub fn last_run(&self) -> Option<u64> {
        Some(self.last_run.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Connections since start: (match, mismatch, unreachable).
    pub fn counts(&self) -> Counts {
        Counts {
            matched: self.matched.load(Ordering::Relaxed),
            mismatched: self.mismatched.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
        }
    }

    /// A run's findings replace the last ones; names that turned bad or good are logged.
    pub fn record(&self, results: BTreeMap<String, NameCheck>, counts: Counts, at: u64) {
        let old = self.by_name.load_full();
        for (name, now) in &results {
            let before = old.get(name).map(|c| &c.outcome);
            let same_kind = before.is_some_and(|b| b.state() == now.outcome.state());
            match &now.outcome {
                Outcome::Mismatch(why) if !same_kind => tracing::warn!(
                    name = %name,
                    cert = %now.cert,
                    "served certificate differs from the stored one: {why}"
                ),
                Outcome::Unreachable(why) if !same_kind => tracing::warn!(
                    name = %name,
                    "served == stored not checked: {why}"
                ),
                Outcome::Match if before.is_some_and(|b| *b != Outcome::Match) => {
                    tracing::info!(
                        name = %name,
                        cert = %now.cert,
                        "served certificate is the stored one again"
                    )
                }
                _ => {}
            }
        }
        self.by_name.store(Arc::new(results));
        self.matched.fetch_add(counts.matched, Ordering::Relaxed);
        self.mismatched
            .fetch_add(counts.mismatched, Ordering::Relaxed);
        self.unreachable
            .fetch_add(counts.unreachable, Ordering::Relaxed);
        self.last_run.store(at, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(outcome: Outcome) -> NameCheck {
        NameCheck {
            cert: "a.test".into(),
            outcome,
            checked_at: 1,
            served: None,
            stored: None,
        }
    }

    #[test]
    fn findings_replace_the_last_and_counts_add_up() {
        let s = ServedChecks::default();
        assert!(s.results().is_empty());
        assert_eq!(s.last_run(), None);
        let one = Counts {
            matched: 2,
            mismatched: 1,
            unreachable: 0,
        };
        s.record(
            BTreeMap::from([("a.test".into(), check(Outcome::Mismatch("x".into())))]),
            one,
            10,
        );
        s.record(
            BTreeMap::from([("b.test".into(), check(Outcome::Match))]),
            one,
            20,
        );
        assert_eq!(s.results().keys().collect::<Vec<_>>(), ["b.test"]);
        assert_eq!(s.last_run(), Some(20));
        assert_eq!(
            s.counts(),
            Counts {
                matched: 4,
                mismatched: 2,
                unreachable: 0
            }
        );
    }
}
