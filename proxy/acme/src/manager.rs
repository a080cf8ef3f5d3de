//! The ACME manager: one entry per certificate group, a loop that orders what is
//! missing and renews what is due, each order a task of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certs::util::{from_unix, random01, unix};
use certs::{IssuedCert, Meta, StoredCert};
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, Identifier, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};

use crate::challenge::{tls_alpn_certificate, Published};
use crate::directory::Profiles;
use crate::error::problem;
use crate::lock::FileLock;
use crate::schedule::{self, Window};
use crate::{account, ChallengeKind, Config, Error, Host};

/// How often the loop looks at the route generation and at due entries.
const TICK: Duration = Duration::from_millis(250);
/// Orders running at once.
const CONCURRENT_ORDERS: usize = 4;
/// One order, from new-order to the saved certificate, may take this long.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// Waiting for the CA to validate, and then to issue.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);
/// When another process holds a certificate's lock: look again after this.
const LOCKED_RETRY: Duration = Duration::from_secs(30);
/// A failed ARI query (network, CA error): fall back, and ask again after this.
const ARI_RETRY: Duration = Duration::from_secs(3600);
/// Bounds on the CA's Retry-After for ARI.
const ARI_RECHECK_MIN: Duration = Duration::from_secs(60);
const ARI_RECHECK_MAX: Duration = Duration::from_secs(24 * 3600);

const ARI_UNKNOWN: u8 = 0;
const ARI_YES: u8 = 1;
const ARI_NO: u8 = 2;

/// One certificate group as the manager sees it.
#[derive(Debug, Clone)]
struct Entry {
    names: Vec<String>,
    /// The ACME profile to order with (the route's, else `--acme-profile`).
    profile: Option<String>,
    /// The profile the stored certificate was ordered with (`meta.json`).
    issued_profile: Option<String>,
    /// When to look at it next (renewal time, backoff, recheck).
    next_check: SystemTime,
    /// When the current ACME certificate is to be renewed, once known.
    renew_at: Option<SystemTime>,
    ari_window: Option<Window>,
    failures: u32,
    last_attempt: Option<i64>,
    last_error: Option<String>,
    next_attempt: Option<i64>,
    force: bool,
    in_flight: bool,
    /// Names or profile changed (a reload) while an order was in flight: looked at
    /// again as soon as that order comes back (it was placed with the old ones).
    regrouped: bool,
}

/// A certificate group, for `proxyctl certs` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertStatus {
    /// Store id (main name).
    pub id: String,
    /// The names routed together (the ACME order asks for all of them).
    pub names: Vec<String>,
    /// The ACME profile ordered for this group (the route's `acme_profile`, else
    /// `--acme-profile`); `None`: the CA's default.
    pub profile: Option<String>,
    /// The profile the stored ACME certificate was ordered with.
    pub issued_profile: Option<String>,
    /// Issuer of the certificate served now: the directory URL, `local`, `manual`, or
    /// `None` when no certificate covers the names yet.
    pub issuer: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    /// Unix seconds: when the ACME certificate will be renewed (or ordered), once known.
    pub next_renewal: Option<i64>,
    /// The CA's ARI window, when it offers one (unix seconds).
    pub ari_window: Option<(i64, i64)>,
    pub failures: u32,
    pub last_attempt: Option<i64>,
    pub last_error: Option<String>,
    /// No new order before this (backoff), unix seconds.
    pub next_attempt: Option<i64>,
    pub ordering: bool,
}

/// The ACME client of the daemon. Create with [`Manager::new`], drive with
/// [`Manager::run`].
pub struct Manager {
    config: Config,
    host: Arc<dyn Host>,
    entries: Mutex<BTreeMap<String, Entry>>,
    account: tokio::sync::Mutex<Option<Account>>,
    wake: Notify,
    orders: Semaphore,
    ari: AtomicU8,
    orders_placed: AtomicU64,
    /// Finished orders: certificate issued, or failed (for metrics).
    orders_issued: AtomicU64,
    orders_failed: AtomicU64,
    /// Bumped after each finished attempt (success or failure), for waiters.
    attempts: watch::Sender<u64>,
    /// The profiles the directory offered when last read.
    offered: Mutex<Option<Profiles>>,
}

impl Manager {
    pub fn new(config: Config, host: Arc<dyn Host>) -> Arc<Manager> {
        Arc::new(Manager {
            config,
            host,
            entries: Mutex::new(BTreeMap::new()),
            account: tokio::sync::Mutex::new(None),
            wake: Notify::new(),
            orders: Semaphore::new(CONCURRENT_ORDERS),
            ari: AtomicU8::new(ARI_UNKNOWN),
            orders_placed: AtomicU64::new(0),
            orders_issued: AtomicU64::new(0),
            orders_failed: AtomicU64::new(0),
            attempts: watch::channel(0).0,
            offered: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The `issuer` recorded for certificates from this directory.
    pub fn issuer(&self) -> &str {
        &self.config.directory
    }

    /// New orders placed at the CA since start.
    pub fn orders_placed(&self) -> u64 {
        self.orders_placed.load(Ordering::Relaxed)
    }

    /// Finished orders since start: (certificate issued, failed).
    pub fn order_results(&self) -> (u64, u64) {
        (
            self.orders_issued.load(Ordering::Relaxed),
            self.orders_failed.load(Ordering::Relaxed),
        )
    }

    /// The profiles the directory offered when last read (`None`: not read yet).
    pub fn offered_profiles(&self) -> Option<Profiles> {
        self.offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks every profile in `wanted` (what names it, e.g. `route "cloud"`, and the
    /// profile) and `--acme-profile` against the directory's profiles: read again
    /// unless every one is among those read last. `Ok(None)` when all are offered,
    /// `Ok(Some(problems))` when some are not (one line each, naming the offered ones),
    /// `Err` when the directory could not be read (then nothing can be said).
    pub async fn check_profiles(
        &self,
        wanted: &[(String, String)],
    ) -> Result<Option<Vec<String>>, Error> {
        let mut all: Vec<(String, String)> = wanted.to_vec();
        if let Some(p) = &self.config.profile {
            all.push(("--acme-profile".into(), p.clone()));
        }
        if all.is_empty() {
            return Ok(None);
        }
        let known = self
            .offered_profiles()
            .filter(|o| all.iter().all(|(_, p)| o.contains_key(p)));
        let offered = match known {
            Some(o) => o,
            None => {
                let o = crate::directory::fetch_profiles(&self.config).await?;
                *self.offered.lock().unwrap_or_else(|p| p.into_inner()) = Some(o.clone());
                o
            }
        };
        let problems: Vec<String> = all
            .iter()
            .filter_map(|(what, p)| {
                crate::directory::check_profile(p, &offered, &self.config.directory)
                    .err()
                    .map(|e| format!("{what}: {e}"))
            })
            .collect();
        Ok((!problems.is_empty()).then_some(problems))
    }

    /// The directory's `meta`, read now (for `proxyctl certs preflight`: the CA's
    /// `caaIdentities`); the profiles read are kept for [`Manager::check_profiles`].
    pub async fn directory_meta(&self) -> Result<crate::directory::Meta, Error> {
        let meta = crate::directory::fetch_meta(&self.config).await?;
        *self.offered.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta.profiles.clone());
        Ok(meta)
    }

    /// This client's account URL at the CA (what a CAA `accounturi` must name), from
    /// the stored account; `None` before the first order created one.
    pub fn account_uri(&self) -> Option<String> {
        account::stored_uri(self.host.certs().store(), &self.config)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        certs::util::lock(&self.entries)
    }

    /// Runs until `shutdown` turns true: follows the route generation, orders what is
    /// missing at once, renews what is due.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut generation = None;
        loop {
            let g = self.host.generation();
            if generation != Some(g) {
                generation = Some(g);
                self.set_groups(&self.host.groups());
            }
            self.start_due();
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
            }
        }
    }

    /// Replaces the set of certificate groups (the hosts of each route, main name first).
    /// Wildcards are left to other issuers (HTTP-01 and TLS-ALPN-01 cannot prove them).
    /// New groups are looked at on the next tick.
    pub fn set_groups(&self, groups: &[(Vec<String>, Option<String>)]) {
        let mut wanted: BTreeMap<String, (Vec<String>, Option<String>)> = BTreeMap::new();
        for (group, profile) in groups {
            let mut names: Vec<String> = Vec::new();
            for raw in group {
                let n = certs::normalize_name(raw);
                if n.starts_with("*.") {
                    tracing::warn!(name = %n, "ACME: wildcard names need DNS-01, which this proxy does not do; not ordered");
                    continue;
                }
                if let Err(e) = certs::cert_id(&n) {
                    tracing::warn!("ACME: {e}; not ordered");
                    continue;
                }
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            let Some(first) = names.first() else { continue };
            let id = certs::cert_id(first).expect("checked above");
            let profile = profile.clone().or_else(|| self.config.profile.clone());
            wanted.insert(id, (names, profile));
        }
        let store = self.host.certs().store();
        let now = SystemTime::now();
        let mut entries = self.lock();
        entries.retain(|id, e| e.in_flight || wanted.contains_key(id));
        for (id, (names, profile)) in wanted {
            if let Some(e) = entries.get_mut(&id) {
                if e.names != names || e.profile != profile {
                    e.names = names;
                    e.profile = profile;
                    e.next_check = now;
                    e.renew_at = None;
                    e.regrouped = e.in_flight;
                }
                continue;
            }
            let meta = store.read_meta(&id).unwrap_or_default();
            entries.insert(
                id,
                Entry {
                    names,
                    profile,
                    issued_profile: meta.profile,
                    next_check: now,
                    renew_at: None,
                    ari_window: None,
                    failures: meta.failures,
                    last_attempt: meta.last_attempt,
                    last_error: meta.last_error,
                    next_attempt: meta.next_attempt,
                    force: false,
                    in_flight: false,
                    regrouped: false,
                },
            );
        }
    }

    /// Orders a new certificate for the group of `name` now, whatever its renewal time
    /// and backoff. Returns the group's id.
    pub fn renew_now(&self, name: &str) -> Result<String, Error> {
        let n = certs::normalize_name(name);
        let mut entries = self.lock();
        let Some((id, e)) = entries.iter_mut().find(|(_, e)| e.names.contains(&n)) else {
            return Err(Error::NotOrdered(n));
        };
        e.force = true;
        e.next_check = SystemTime::now();
        let id = id.clone();
        drop(entries);
        self.wake.notify_one();
        Ok(id)
    }

    /// A receiver that changes after every finished attempt.
    pub fn attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Every group with its served certificate and ACME state, sorted by id.
    pub fn status(&self) -> Vec<CertStatus> {
        let held = self.host.certs().certs();
        let entries = self.lock();
        entries
            .iter()
            .map(|(id, e)| {
                let served = best_cover(&held, &e.names, None);
                CertStatus {
                    id: id.clone(),
                    names: e.names.clone(),
                    profile: e.profile.clone(),
                    issued_profile: e.issued_profile.clone(),
                    issuer: served.map(|c| c.issuer.clone()),
                    not_after: served.map(|c| unix(c.not_after)),
                    next_renewal: e.renew_at.map(unix).or_else(|| {
                        let acme = best_cover(&held, &e.names, Some(self.issuer()));
                        acme.is_none().then(|| unix(e.next_check))
                    }),
                    ari_window: e.ari_window.map(|w| (unix(w.start), unix(w.end))),
                    failures: e.failures,
                    last_attempt: e.last_attempt,
                    last_error: e.last_error.clone(),
                    next_attempt: e.next_attempt,
                    ordering: e.in_flight,
                }
            })
            .collect()
    }

    fn start_due(self: &Arc<Self>) {
        let now = SystemTime::now();
        let mut due = Vec::new();
        {
            let mut entries = self.lock();
            for (id, e) in entries.iter_mut() {
                if !e.in_flight && (e.force || e.next_check <= now) {
                    e.in_flight = true;
                    due.push((
                        id.clone(),
                        e.names.clone(),
                        e.profile.clone(),
                        std::mem::take(&mut e.force),
                    ));
                }
            }
        }
        for (id, names, profile, force) in due {
            let me = self.clone();
            tokio::spawn(async move {
                let outcome = me.process(&id, &names, profile, force).await;
                me.finish(&id, outcome);
            });
        }
    }

    fn finish(&self, id: &str, o: Outcome) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(id) {
            e.in_flight = false;
            e.next_check = o.next_check;
            if std::mem::take(&mut e.regrouped) {
                // The order was placed with the names and profile from before a reload:
                // look again now (a backoff it recorded still holds).
                e.next_check = e.next_check.min(SystemTime::now());
            }
            if let Some(r) = o.renew_at {
                e.renew_at = Some(r);
            }
            if o.ari_window.is_some() {
                e.ari_window = o.ari_window;
            }
            if let Some(m) = o.meta {
                if o.issued {
                    e.issued_profile = m.profile.clone();
                }
                e.failures = m.failures;
                e.last_attempt = m.last_attempt;
                e.last_error = m.last_error;
                e.next_attempt = m.next_attempt;
            }
        }
        drop(entries);
        if o.attempted {
            self.attempts.send_modify(|n| *n += 1);
        }
    }

    /// Looks at one group: waits, renews or orders. Never panics, never returns early
    /// without a time to look again.
    async fn process(
        &self,
        id: &str,
        names: &[String],
        profile: Option<String>,
        force: bool,
    ) -> Outcome {
        let now = SystemTime::now();
        let held = self.host.certs().certs();
        let current = best_cover(&held, names, Some(self.issuer())).cloned();
        let mut ari_window = None;
        let mut replaces = None;
        if let Some(cert) = current.as_ref().filter(|c| now < c.not_after) {
            let (renew_at, recheck, window, id_for_ari) = self.renewal_time(cert, now).await;
            ari_window = window;
            replaces = id_for_ari;
            // A profile configured since the certificate was ordered: renew now.
            let issued_profile = self
                .host
                .certs()
                .store()
                .read_meta(id)
                .unwrap_or_default()
                .profile;
            let profile_changed = profile.is_some() && issued_profile != profile;
            if profile_changed && renew_at > now {
                tracing::info!(cert = %id, profile = ?profile, was = ?issued_profile, "ACME: the profile changed; renewing");
            }
            if !force && !profile_changed && renew_at > now {
                return Outcome {
                    next_check: renew_at.min(recheck),
                    renew_at: Some(renew_at),
                    ari_window,
                    ..Outcome::default()
                };
            }
        }

        // An order is due. Only one process orders a given certificate at a time.
        let store = self.host.certs().store();
        let lock_path = store.acme_dir().join("locks").join(format!("{id}.lock"));
        let _lock = match FileLock::try_acquire(&lock_path) {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::info!(cert = %id, "ACME: another process is ordering this certificate; looking again later");
                return Outcome::wait(now + LOCKED_RETRY);
            }
            Err(e) => {
                tracing::warn!(cert = %id, "ACME: lock {}: {e}", lock_path.display());
                return Outcome::wait(now + LOCKED_RETRY);
            }
        };
        // What another process may have done meanwhile: its backoff, its certificate.
        let mut meta = store.read_meta(id).unwrap_or_default();
        if !force {
            // Capped as when written (schedule::retry_at): a wait persisted before the
            // cap, or written by hand, ends too.
            let cap = now + schedule::RATE_LIMIT_MAX.max(schedule::BACKOFF_MAX * 2);
            if let Some(at) = meta
                .next_attempt
                .map(|t| from_unix(t).min(cap))
                .filter(|t| *t > now)
            {
                tracing::info!(cert = %id, until = unix(at), "ACME: backing off after {} failed attempt(s)", meta.failures);
                return Outcome {
                    next_check: at,
                    meta: Some(meta),
                    ..Outcome::default()
                };
            }
            if let Ok(Some(disk)) = store.load_one(id) {
                let fresher = current
                    .as_ref()
                    .is_none_or(|c| disk.not_after > c.not_after);
                if disk.issuer == self.issuer()
                    && fresher
                    && names.iter().all(|n| disk.covers(n))
                    && schedule::fallback_renewal_time(disk.not_before, disk.not_after, 0.0) > now
                {
                    tracing::info!(cert = %id, "ACME: another process saved a new certificate; serving it");
                    self.host.certs().install(disk);
                    return Outcome::wait(now);
                }
            }
        }

        let _permit = self.orders.acquire().await;
        // Written before the order: a crash during it cannot lead to an immediate retry.
        let failures_if_failed = meta.failures.saturating_add(1);
        // Retries never outrun expiry: the wait is capped by the served certificate's
        // time left.
        let time_left = current
            .as_ref()
            .and_then(|c| c.not_after.duration_since(now).ok());
        meta.last_attempt = Some(unix(now));
        meta.next_attempt = Some(unix(
            now + schedule::retry_delay(failures_if_failed, random01(), time_left),
        ));
        if meta.names.is_empty() {
            meta.names = names.to_vec();
        }
        if let Err(e) = store.write_meta(id, &meta) {
            tracing::error!(cert = %id, "ACME: cannot record the attempt ({e}); not ordering");
            return Outcome::wait(now + schedule::backoff(1, 0.0));
        }

        let what = if current.is_some() {
            "renewing"
        } else {
            "ordering"
        };
        tracing::info!(cert = %id, names = ?names, challenge = %self.config.challenge, profile = ?profile, "ACME: {what} certificate");
        let started = std::time::Instant::now();
        let order = self.order(names, profile.as_deref(), replaces);
        let result = match tokio::time::timeout(ORDER_TIMEOUT, order).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(ORDER_TIMEOUT)),
        };
        match result {
            Ok(cert) => {
                self.orders_issued.fetch_add(1, Ordering::Relaxed);
                let renew_at =
                    schedule::fallback_renewal_time(cert.not_before, cert.not_after, random01());
                // The schedule first, then the certificate: `status` (proxyctl certs,
                // metrics) never shows a served certificate without its next renewal.
                if let Some(e) = self.lock().get_mut(id) {
                    e.renew_at = Some(renew_at);
                }
                self.host.certs().install(cert.clone());
                let done = SystemTime::now();
                let meta = Meta {
                    names: cert.names.clone(),
                    issuer: cert.issuer.clone(),
                    not_after: unix(cert.not_after),
                    last_attempt: Some(unix(now)),
                    last_error: None,
                    next_attempt: None,
                    failures: 0,
                    profile: profile.clone(),
                    rate_limited_until: None,
                    last_failed_challenge: None,
                };
                if let Err(e) = store.write_meta(id, &meta) {
                    tracing::warn!(cert = %id, "ACME: {e}");
                }
                // With ARI, ask the CA again soon rather than trusting the fallback.
                let next_check = if self.ari.load(Ordering::Relaxed) == ARI_YES {
                    renew_at.min(done + ARI_RECHECK_MAX)
                } else {
                    renew_at
                };
                tracing::info!(
                    cert = %id,
                    names = ?cert.names,
                    profile = ?profile,
                    not_after = unix(cert.not_after),
                    took_ms = started.elapsed().as_millis() as u64,
                    "ACME: certificate issued and served"
                );
                Outcome {
                    next_check,
                    renew_at: Some(renew_at),
                    ari_window,
                    meta: Some(meta),
                    attempted: true,
                    issued: true,
                }
            }
            Err(e) => {
                self.orders_failed.fetch_add(1, Ordering::Relaxed);
                meta.failures = failures_if_failed;
                meta.last_error = Some(e.to_string());
                // The CA's rate limit, when it says until when, outlasts the backoff.
                let backoff = schedule::retry_delay(meta.failures, random01(), time_left);
                let at = schedule::retry_at(now, backoff, e.retry_after());
                let wait = at.duration_since(now).unwrap_or_default();
                meta.next_attempt = Some(unix(at));
                if let Err(we) = store.write_meta(id, &meta) {
                    tracing::warn!(cert = %id, "ACME: {we}");
                }
                let keeps = match &current {
                    Some(c) if SystemTime::now() < c.not_after => {
                        "; the current certificate is still served"
                    }
                    _ => "",
                };
                tracing::warn!(
                    cert = %id,
                    failures = meta.failures,
                    retry_in_s = wait.as_secs(),
                    "ACME: {what} failed: {e}{keeps}"
                );
                Outcome {
                    next_check: at,
                    ari_window,
                    meta: Some(meta),
                    attempted: true,
                    ..Outcome::default()
                }
            }
        }
    }

    /// When to renew `cert`: inside the CA's ARI window when it has one, else at a
    /// third of the lifetime left. Returns (renew at, look again at, ARI window, the
    /// certificate's ARI id for `replaces`).
    async fn renewal_time(
        &self,
        cert: &StoredCert,
        now: SystemTime,
    ) -> (
        SystemTime,
        SystemTime,
        Option<Window>,
        Option<CertificateIdentifier<'static>>,
    ) {
        let fallback = schedule::fallback_renewal_time(cert.not_before, cert.not_after, random01());
        if self.ari.load(Ordering::Relaxed) == ARI_NO {
            return (fallback, fallback, None, None);
        }
        let Some(leaf) = cert.key.cert.first() else {
            return (fallback, fallback, None, None);
        };
        let Ok(cert_id) = CertificateIdentifier::try_from(leaf) else {
            // No AKI: ARI cannot name this certificate.
            return (fallback, fallback, None, None);
        };
        let cert_id = cert_id.into_owned();
        let account = match self.account().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!("ACME: no account for ARI: {e}");
                return (fallback, now + ARI_RETRY, None, None);
            }
        };
        match account.renewal_info(&cert_id).await {
            Ok((info, retry_after)) => {
                self.ari.store(ARI_YES, Ordering::Relaxed);
                let window = Window {
                    start: info.suggested_window.start.into(),
                    end: info.suggested_window.end.into(),
                };
                let at = schedule::ari_renewal_time(
                    window,
                    now,
                    random01(),
                    cert.not_before,
                    cert.not_after,
                );
                let recheck = now + retry_after.clamp(ARI_RECHECK_MIN, ARI_RECHECK_MAX);
                (at, recheck, Some(window), Some(cert_id))
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                tracing::info!("ACME: the CA offers no renewal information (ARI); renewing at a third of the lifetime left");
                self.ari.store(ARI_NO, Ordering::Relaxed);
                (fallback, fallback, None, None)
            }
            Err(e) => {
                tracing::debug!("ACME: ARI query failed: {e}");
                (fallback, fallback.min(now + ARI_RETRY), None, None)
            }
        }
    }

    async fn account(&self) -> Result<Account, Error> {
        let mut cached = self.account.lock().await;
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let a = account::load_or_create(self.host.certs().store(), &self.config).await?;
        *cached = Some(a.clone());
        Ok(a)
    }

    /// One attempt: the configured challenge type, then the other one if the CA
    /// rejected the first. The certificate is saved before it is returned.
    async fn order(
        &self,
        names: &[String],
        profile: Option<&str>,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<Arc<StoredCert>, Error> {
        let first = self.config.challenge;
        match self
            .order_with(names, profile, first, replaces.clone())
            .await
        {
            Err(e1) if e1.is_challenge_failure() => {
                let other = first.other();
                tracing::warn!(names = ?names, "ACME: {first} failed ({e1}); trying {other}");
                self.order_with(names, profile, other, replaces)
                    .await
                    .map_err(|e2| Error::BothChallenges {
                        first,
                        first_error: Box::new(e1),
                        other,
                        other_error: Box::new(e2),
                    })
            }
            r => r,
        }
    }

    async fn order_with(
        &self,
        names: &[String],
        profile: Option<&str>,
        kind: ChallengeKind,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<Arc<StoredCert>, Error> {
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let account = self.account().await?;
        let mut order = match self
            .new_order(&account, &identifiers, profile, replaces.clone())
            .await
        {
            Ok(o) => o,
            Err(e) if problem(&e, "accountDoesNotExist").is_some() => {
                tracing::warn!("ACME: the CA no longer knows our account; creating a new one");
                account::forget(self.host.certs().store(), &self.config);
                *self.account.lock().await = None;
                let account = self.account().await?;
                self.new_order(&account, &identifiers, profile, replaces)
                    .await
                    .map_err(|e| Error::ca("new order", e, Error::NewOrder))?
            }
            Err(e) => return Err(Error::ca("new order", e, Error::NewOrder)),
        };

        let host: &dyn Host = &*self.host;
        let mut published = Published::new(host);
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authz =
                result.map_err(|e| Error::ca("authorization", e, Error::Authorization))?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => return Err(Error::AuthorizationState { name, status }),
            }
            let Some(mut challenge) = authz.challenge(kind.acme()) else {
                return Err(Error::NoChallenge { kind, name });
            };
            let key_auth = challenge.key_authorization();
            match kind {
                ChallengeKind::Http01 => published.http01(&challenge.token, key_auth.as_str()),
                ChallengeKind::TlsAlpn01 => {
                    let key = tls_alpn_certificate(&name, key_auth.digest().as_ref())?;
                    published.tls_alpn01(&name, key);
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|source| Error::ChallengeReady { name, source })?;
        }

        // First look after 100 ms, then 1.5 times longer each time (the CA's Retry-After
        // wins when it sends one): a validation that takes a moment is seen at once.
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(POLL_TIMEOUT);
        let status = order.poll_ready(&retry).await;
        let failed = match status {
            Ok(OrderStatus::Ready) => None,
            Ok(s) => Some(format!("order is {s:?}")),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            // The authorizations say which name failed and why (connection refused,
            // wrong answer, ...).
            let mut details = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut a)) = authorizations.next().await {
                if let Ok(state) = a.refresh().await {
                    let name = state.identifier().to_string();
                    for c in &state.challenges {
                        if let Some(p) = &c.error {
                            details.push(format!("{name}: {p}"));
                        }
                    }
                }
            }
            drop(published);
            let details = if details.is_empty() {
                why
            } else {
                details.join("; ")
            };
            return Err(Error::Validation(details));
        }
        drop(published);

        let key_pem = order
            .finalize()
            .await
            .map_err(|e| Error::ca("finalize", e, Error::Finalize))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| Error::ca("certificate", e, Error::Download))?;
        let cert = IssuedCert {
            names: names.to_vec(),
            chain_pem,
            key_pem,
            issuer: self.issuer().to_string(),
        };
        self.host.certs().store().save(&cert).map_err(Error::Save)
    }

    async fn new_order(
        &self,
        account: &Account,
        identifiers: &[Identifier],
        profile: Option<&str>,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<instant_acme::Order, instant_acme::Error> {
        let new_order = || {
            let o = NewOrder::new(identifiers);
            match profile {
                Some(p) => o.profile(p),
                None => o,
            }
        };
        self.orders_placed.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = replaces {
            match account.new_order(&new_order().replaces(r)).await {
                Ok(o) => return Ok(o),
                // e.g. alreadyReplaced: an order without `replaces` is still fine.
                Err(e) if problem(&e, "accountDoesNotExist").is_none() => {
                    tracing::debug!("ACME: order with `replaces` refused ({e}); ordering without");
                    self.orders_placed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        account.new_order(&new_order()).await
    }
}

struct Outcome {
    next_check: SystemTime,
    renew_at: Option<SystemTime>,
    ari_window: Option<Window>,
    meta: Option<Meta>,
    /// An order was attempted (it counts for [`Manager::attempts`]).
    attempted: bool,
    /// A certificate was issued (`meta` is its new bookkeeping).
    issued: bool,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            next_check: UNIX_EPOCH,
            renew_at: None,
            ari_window: None,
            meta: None,
            attempted: false,
            issued: false,
        }
    }
}

impl Outcome {
    fn wait(until: SystemTime) -> Outcome {
        Outcome {
            next_check: until,
            ..Outcome::default()
        }
    }
}

/// The certificate covering every name (of `issuer`, when given) that a client would be
/// served: valid now first, then the latest expiry (`certs::renewal::rank`).
fn best_cover<'a>(
    held: &'a [Arc<StoredCert>],
    names: &[String],
    issuer: Option<&str>,
) -> Option<&'a Arc<StoredCert>> {
    let now = SystemTime::now();
    held.iter()
        .filter(|c| issuer.is_none_or(|i| c.issuer == i))
        .filter(|c| names.iter().all(|n| c.covers(n)))
        .max_by_key(|c| (c.valid_at(now), c.not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://ca.test/directory";

    /// A certificate of `ISSUER` for `id` and `a.test`, saved as `certs/<id>`.
    fn saved(store: &certs::Store, id: &str, from: SystemTime, to: SystemTime) -> Arc<StoredCert> {
        let names = vec![id.to_owned(), "a.test".to_owned()];
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.not_before = time::OffsetDateTime::from(from);
        params.not_after = time::OffsetDateTime::from(to);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        store
            .save(&certs::IssuedCert {
                names,
                chain_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                issuer: ISSUER.into(),
            })
            .unwrap()
    }

    /// A host with an empty store, for driving the manager's bookkeeping.
    struct NoHost(certs::CertManager);
    impl Host for NoHost {
        fn certs(&self) -> &certs::CertManager {
            &self.0
        }
        fn publish_http01(&self, _: &str, _: &str) {}
        fn withdraw_http01(&self, _: &str) {}
        fn generation(&self) -> u64 {
            0
        }
        fn groups(&self) -> Vec<(Vec<String>, Option<String>)> {
            Vec::new()
        }
    }

    /// Review: a reload that changes a group's profile (or names) while that group's
    /// order is in flight must not be forgotten when the order, placed with the old
    /// profile, comes back: the group is looked at again at once (and re-ordered with
    /// the new profile), not at the next renewal weeks later.
    #[test]
    fn a_profile_changed_while_an_order_is_in_flight_is_ordered_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = certs::Store::open(dir.path()).unwrap();
        let host = NoHost(certs::CertManager::new(
            store,
            None,
            Arc::new(certs::CertResolver::new()),
        ));
        let config = Config {
            directory: ISSUER.into(),
            ca_root: None,
            contact: Vec::new(),
            challenge: ChallengeKind::Http01,
            eab: None,
            profile: None,
        };
        let m = Manager::new(config, Arc::new(host));
        let names = vec!["a.test".to_owned()];
        m.set_groups(&[(names.clone(), Some("old".into()))]);
        // The tick picks the group up and orders it with "old"...
        m.lock().get_mut("a.test").unwrap().in_flight = true;
        // ...a reload names "new" meanwhile...
        m.set_groups(&[(names.clone(), Some("new".into()))]);
        // ...and the order with "old" comes back, to be renewed in 60 days.
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60 * 86_400);
        m.finish(
            "a.test",
            Outcome {
                next_check: later,
                renew_at: Some(later),
                ari_window: None,
                meta: Some(Meta {
                    profile: Some("old".into()),
                    ..Meta::default()
                }),
                attempted: true,
                issued: true,
            },
        );
        let entries = m.lock();
        let e = &entries["a.test"];
        assert_eq!(e.profile.as_deref(), Some("new"));
        assert_eq!(e.issued_profile.as_deref(), Some("old"));
        assert!(
            e.next_check <= SystemTime::now(),
            "the profile change waits for the renewal: next check in {:?}",
            e.next_check.duration_since(now).unwrap_or_default()
        );
    }

    #[test]
    fn best_cover_prefers_a_certificate_valid_now_over_a_later_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = certs::Store::open(dir.path()).unwrap();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let names = vec!["a.test".to_owned()];
        // Valid now, and valid only from tomorrow on (with the later expiry).
        let valid = saved(&store, "one.test", now - day, now + 10 * day);
        let not_yet = saved(&store, "two.test", now + day, now + 90 * day);
        let held = vec![not_yet.clone(), valid.clone()];
        assert_eq!(
            best_cover(&held, &names, Some(ISSUER)).unwrap().id,
            valid.id
        );
        // Among certificates valid now, the later expiry.
        let longer = saved(&store, "three.test", now - day, now + 20 * day);
        let held = vec![valid, not_yet, longer.clone()];
        assert_eq!(
            best_cover(&held, &names, Some(ISSUER)).unwrap().id,
            longer.id
        );
        assert!(best_cover(&held, &names, Some("local")).is_none());
    }
}
