//! Certificates age while the daemon runs: the timer that keeps every held certificate
//! usable with no restart and no reload.
//!
//! [`CertTimer`] calls [`certs::CertManager::maintain`] (the rules are
//! `certs::renewal`) when the manager says something is next due (a local certificate
//! reaches a third of its lifetime left, an ACME or manual one is about to expire, one
//! becomes valid or expires, an unrouted one expires and is archived), and at least every
//! `--cert-check-interval` (to see certificates changed on disk by hand). The work is file
//! I/O and key generation: on a blocking thread, never on the request path.
//!
//! ACME certificates are renewed by the ACME manager on its own schedule
//! (`acme::schedule`, long before they expire); this timer only lets the local issuer
//! stand in when that has failed until the last moment (`--acme-fallback local`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::data::state::Shared;

/// Woken this much after the time the manager named, so that it is past (certificate
/// dates are whole seconds, clocks differ in their last digits).
const SLACK: Duration = Duration::from_millis(20);

/// Background service: [`certs::CertManager::maintain`] when due, and every `interval`.
pub struct CertTimer {
    pub shared: Arc<Shared>,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for CertTimer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut missing = BTreeSet::new();
        loop {
            let shared = self.shared.clone();
            let report = tokio::task::spawn_blocking(move || shared.certs.maintain()).await;
            let wait = match report {
                Ok(report) => {
                    log(&report, &mut missing);
                    wait_until(report.next_due, SystemTime::now(), self.interval)
                }
                Err(e) => {
                    tracing::error!("certificate timer: {e}");
                    self.interval
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How long to sleep: until `next_due` (plus [`SLACK`]), at most `interval`.
fn wait_until(next_due: Option<SystemTime>, now: SystemTime, interval: Duration) -> Duration {
    match next_due {
        Some(at) => at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .saturating_add(SLACK)
            .min(interval),
        None => interval,
    }
}

/// One line per event; names without a certificate only when that list changes.
fn log(r: &certs::MaintainReport, missing: &mut BTreeSet<String>) {
    log_events(r);
    let now: BTreeSet<String> = r.ensure.missing.iter().cloned().collect();
    if now != *missing {
        if !now.is_empty() {
            tracing::warn!(names = ?now, "no usable certificate for these names (expired or missing, and none could be issued)");
        }
        *missing = now;
    }
}

/// One line per certificate issued, read again, released or archived, per error, store
/// problem and warning of a [`certs::CertManager::maintain`] report (also for the
/// store check, which calls it to repair).
pub(crate) fn log_events(r: &certs::MaintainReport) {
    for id in &r.ensure.issued {
        tracing::info!(cert = %id, "certificate issued from the local CA (renewal, or standing in for one about to expire)");
    }
    for id in &r.reread {
        tracing::info!(cert = %id, "certificate read again: its files changed or are new");
    }
    if !r.ensure.released.is_empty() {
        tracing::info!(certs = ?r.ensure.released, "certificates no longer held: a better one serves their names");
    }
    for id in &r.ensure.archived {
        tracing::info!(cert = %id, "certificate moved to the store's archive/");
    }
    for e in &r.ensure.errors {
        tracing::error!("certificate: {e}");
    }
    for p in &r.problems {
        tracing::warn!("certificate store: {p}");
    }
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_sleeps_until_the_next_event_at_most_the_interval() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let minute = Duration::from_secs(60);
        assert_eq!(wait_until(None, now, minute), minute);
        assert_eq!(
            wait_until(Some(now + Duration::from_secs(5)), now, minute),
            Duration::from_secs(5) + SLACK
        );
        assert_eq!(wait_until(Some(now + 3 * minute), now, minute), minute);
        // Already past (a slow run): at once.
        assert_eq!(wait_until(Some(now - minute), now, minute), SLACK);
    }
}
