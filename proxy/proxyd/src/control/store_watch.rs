//! The certificate store as the running daemon sees it.
//!
//! Certificates are served from memory: a store that turns read-only or full, or whose
//! files are deleted or corrupted, does not stop the proxy. It stops it from saving new
//! certificates, and what is lost on disk would be lost at the next restart. So every
//! `--store-check-interval` a background check ([`StoreWatch`]) looks at:
//!
//! - whether `certs/` is writable: a small probe file is created, fsynced and removed
//!   (this is what catches a read-only mount, a full disk and bad permissions);
//! - whether the files of every certificate held in memory are still there and usable
//!   (read-only: [`certs::Store::load_one`] moves nothing aside). Held means serving a
//!   routed name: certificates of removed routes that stay on disk are not read;
//! - with the local issuer, whether every routed name has a certificate valid now.
//!
//! Problems go to the log (a warning when one appears, an info line when all are gone)
//! and to `proxyctl status` (`store`: `ok`, `problems`, `checked_at`). When the store is
//! writable, it repairs what it can: names without a certificate are issued again (the
//! certificate timer's pass, [`certs::CertManager::maintain`], run at once), and a local
//! certificate whose files were lost is issued again and saved. Certificates from other
//! issuers (ACME, manual) cannot be written back (their keys are not kept in exportable
//! form): they stay reported until their files come back or are replaced.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::data::state::Shared;

/// The last check's findings (read by `status`).
#[derive(Default)]
pub struct StoreHealth {
    problems: ArcSwap<Vec<String>>,
    /// Unix seconds of the last check (0: none yet).
    checked_at: AtomicU64,
}

impl StoreHealth {
    /// Problems found by the last check, one line each (empty: all well).
    pub fn problems(&self) -> Vec<String> {
        self.problems.load().as_ref().clone()
    }

    /// The `store` part of `status`.
    pub fn to_reply(&self) -> admin_api::StoreHealth {
        let problems = self.problems();
        let at = self.checked_at.load(Ordering::Relaxed);
        admin_api::StoreHealth {
            ok: problems.is_empty(),
            problems,
            checked_at: (at > 0).then_some(at),
        }
    }

    fn record(&self, problems: Vec<String>) {
        let old: BTreeSet<String> = self.problems.load().iter().cloned().collect();
        for p in problems.iter().filter(|p| !old.contains(*p)) {
            tracing::warn!("certificate store: {p}");
        }
        if problems.is_empty() && !old.is_empty() {
            tracing::info!("certificate store: all problems cleared");
        }
        self.problems.store(Arc::new(problems));
        let now = certs::util::unix_now().max(0) as u64;
        self.checked_at.store(now, Ordering::Relaxed);
    }
}

/// Background service: [`check`] every `interval`.
pub struct StoreWatch {
    pub shared: Arc<Shared>,
    /// Where the findings go (read by `status`, see `reload.rs`).
    pub health: Arc<StoreHealth>,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for StoreWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let shared = self.shared.clone();
            // File I/O and, when repairing, key generation: off the runtime's workers.
            let problems = tokio::task::spawn_blocking(move || check(&shared))
                .await
                .unwrap_or_else(|e| vec![format!("the store check failed: {e}")]);
            self.health.record(problems);
        }
    }
}

/// One check (and repair, when the store is writable). Returns what is still wrong.
pub fn check(shared: &Shared) -> Vec<String> {
    let certs = &shared.certs;
    let store = certs.store();
    let mut problems = Vec::new();

    let writable = match probe(&store.certs_dir()) {
        Ok(()) => true,
        Err(e) => {
            problems.push(format!(
                "not writable: {e}; certificates are served from memory, new ones cannot be saved"
            ));
            false
        }
    };

    for held in certs.certs() {
        let lost = match store.load_one(&held.id) {
            Ok(Some(_)) => continue,
            Ok(None) => format!("certs/{}: missing on disk", held.id),
            Err(e) => format!("certs/{}: unusable on disk: {e}", held.id),
        };
        let local = held.issuer == certs::ISSUER_LOCAL;
        if writable && local {
            if let Some(issuer) = certs.local_issuer() {
                match issuer.issue(&held.names).and_then(|c| store.save(&c)) {
                    Ok(cert) => {
                        tracing::warn!(
                            "certificate store: {lost}; issued {} again from the local CA and saved it",
                            cert.id
                        );
                        certs.install(cert);
                        continue;
                    }
                    Err(e) => {
                        problems.push(format!("{lost}; issuing it again failed: {e}"));
                        continue;
                    }
                }
            }
        }
        problems.push(format!(
            "{lost}; served from memory until the next restart{}",
            if local {
                ""
            } else {
                " (not written back: the key is not kept in exportable form)"
            }
        ));
    }

    // Names routed but without a valid certificate, e.g. after a reload while the store
    // was read-only. The repair is the certificate timer's own pass (on the groups the
    // manager was last given, which a reload sets before its table goes live).
    if certs.local_issuer().is_some() {
        let snapshot = shared.snapshot.load_full();
        let uncovered = certs.uncovered(&snapshot.table.names());
        if !uncovered.is_empty() {
            if writable {
                let full = certs.maintain();
                crate::control::renewal::log_events(&full);
                let report = full.ensure;
                for e in &report.errors {
                    problems.push(format!("issuing: {e}"));
                }
                for name in &report.missing {
                    problems.push(format!("no certificate for {name}"));
                }
            } else {
                for name in uncovered {
                    problems.push(format!(
                        "no certificate for {name} (issued once the store is writable)"
                    ));
                }
            }
        }
    }
    problems
}

/// Create, fsync and remove a small file in `dir`.
fn probe(dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join(format!(
        ".probe-{}-{}",
        std::process::id(),
        certs::fsutil::random_hex(4)
    ));
    let result =
        certs::fsutil::write_new(&path, b"proxyd store check\n", 0o600).map_err(|e| e.to_string());
    // Also after a failed write (e.g. ENOSPC after create): leave nothing behind.
    let removed = std::fs::remove_file(&path);
    result?;
    removed.map_err(|e| format!("{}: {e}", path.display()))
}
