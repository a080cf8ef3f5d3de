//! The ACME manager: one entry per certificate group, a loop that orders what is
//! missing and renews what is due, each order a task of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certs::util::{from_unix, random01, random_u64, unix};
use certs::{
    FailedValidation, Hold, HoldScope, IssuedCert, Ledger, Meta, OrderOutcome, OrderRecord,
    StoredCert,
};
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, Identifier, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};

use crate::budget::{self, Limits, Usage};
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
/// A ledger that cannot be read: look again after this (someone must fix it).
const LEDGER_RETRY: Duration = Duration::from_secs(300);
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
    /// The CA answered `rateLimited`: no order before this (unix seconds).
    rate_limited_until: Option<i64>,
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
    /// The CA answered `rateLimited`: no new order before this, not even a forced
    /// one (unix seconds; a hold of the whole account shows on every group).
    pub rate_limited_until: Option<i64>,
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

/// Whether a new order could be placed now ([`Manager::order_verdicts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderVerdict {
    /// It fits the CA's limits as kept locally.
    Allowed,
    /// The name is in no ACME group (a wildcard, another issuer's): never ordered.
    NotOrdered,
    /// A `rateLimited` hold of the CA or the local budget refuses it until `until`
    /// (unix seconds), for the reason `why`.
    Refused { until: i64, why: String },
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

    /// New orders ever placed with the account, from the store's ledger (`None`: it
    /// cannot be read).
    pub fn orders_recorded(&self) -> Option<u64> {
        let store = self.host.certs().store();
        store
            .read_ledger(&self.ledger_key())
            .ok()
            .map(|l| l.orders_total)
    }

    /// For `proxyctl certs preflight`: whether a new order for the group that holds
    /// each of `names` could be placed now, judged as [`Manager::process`] judges it
    /// (the group's id and names, the holds of the CA in its meta.json and in the
    /// ledger, the account's hold, the local budget of its limits). A name in no
    /// ACME group (a wildcard, a name with another issuer) is not ordered at all.
    /// `Err`: the ledger cannot be read (no order either). Reads the ledger once, from
    /// disk: call it off the async workers.
    pub fn order_verdicts(&self, names: &[String]) -> Result<Vec<OrderVerdict>, String> {
        let store = self.host.certs().store();
        let ledger = store
            .read_ledger(&self.ledger_key())
            .map_err(|e| e.to_string())?;
        let groups: Vec<Option<(String, Vec<String>)>> = {
            let entries = self.lock();
            names
                .iter()
                .map(|name| {
                    let name = certs::normalize_name(name);
                    entries
                        .iter()
                        .find(|(_, e)| e.names.contains(&name))
                        .map(|(id, e)| (id.clone(), e.names.clone()))
                })
                .collect()
        };
        let now = certs::util::unix_now();
        Ok(groups
            .into_iter()
            .map(|group| {
                let Some((id, names)) = group else {
                    return OrderVerdict::NotOrdered;
                };
                let meta = store.read_meta(&id).unwrap_or_default();
                if let Some((until, detail)) = rate_limit_hold(&ledger, &meta, &id, now) {
                    return OrderVerdict::Refused {
                        until,
                        why: format!("held by the CA's rate limit: {detail}"),
                    };
                }
                match budget::check(&ledger, &names, false, now, &Limits::LETS_ENCRYPT) {
                    Ok(()) => OrderVerdict::Allowed,
                    Err(r) => OrderVerdict::Refused {
                        until: r.until,
                        why: r.to_string(),
                    },
                }
            })
            .collect())
    }

    /// [`Manager::order_verdicts`] for one name.
    pub fn order_verdict(&self, name: &str) -> Result<OrderVerdict, String> {
        self.order_verdicts(&[name.to_owned()])
            .map(|mut v| v.pop().expect("one verdict per name"))
    }

    /// What the local budget of the CA's limits has used: the account's orders and
    /// each registered domain of the groups (`None`: the ledger cannot be read).
    pub fn budget(&self) -> Option<Vec<Usage>> {
        let ledger = self
            .host
            .certs()
            .store()
            .read_ledger(&self.ledger_key())
            .ok()?;
        let groups: Vec<Vec<String>> = self.lock().values().map(|e| e.names.clone()).collect();
        Some(budget::usage(
            &ledger,
            &groups,
            certs::util::unix_now(),
            &Limits::LETS_ENCRYPT,
        ))
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
                    rate_limited_until: meta.rate_limited_until,
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
        let now = SystemTime::now();
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
                    rate_limited_until: e.rate_limited_until.filter(|t| *t > unix(now)),
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
                e.rate_limited_until = m.rate_limited_until;
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
        // The ledger (orders placed, the CA's rate-limit holds). One that cannot be
        // read stops ordering: an empty one could spend the CA's limits twice.
        let ledger = match store.read_ledger(&self.ledger_key()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(cert = %id, "ACME: {e}; not ordering");
                meta.last_error = Some(e.to_string());
                return Outcome {
                    next_check: now + LEDGER_RETRY,
                    meta: Some(meta),
                    ..Outcome::default()
                };
            }
        };
        // A hold beyond the cap (written by hand, or while the clock was ahead) is
        // brought down to it on disk, so that it ends then and is not pushed back by
        // every later look.
        let mut ledger = ledger;
        let (meta_clamped, ledger_clamped) = clamp_holds(&mut ledger, &mut meta, unix(now));
        if meta_clamped {
            tracing::warn!(cert = %id, "ACME: a rate-limit hold beyond {}s ahead in meta.json; shortened", schedule::RATE_LIMIT_MAX.as_secs());
            if let Err(e) = store.write_meta(id, &meta) {
                tracing::warn!(cert = %id, "ACME: {e}");
            }
        }
        if ledger_clamped {
            tracing::warn!(cert = %id, "ACME: a rate-limit hold beyond {}s ahead in the ledger; shortened", schedule::RATE_LIMIT_MAX.as_secs());
            let mut copy = meta.clone();
            if let Err(e) = self.update_ledger(|l| clamp_holds(l, &mut copy, unix(now))) {
                tracing::warn!(cert = %id, "ACME: {e}");
            }
        }
        // The CA's `rateLimited` holds even a forced renewal: an order before it ends
        // only earns the same answer.
        if let Some((until, detail)) = rate_limit_hold(&ledger, &meta, id, unix(now)) {
            tracing::info!(cert = %id, until, "ACME: held by the CA's rate limit: {detail}");
            meta.rate_limited_until = Some(until);
            return Outcome {
                next_check: from_unix(until),
                meta: Some(meta),
                ..Outcome::default()
            };
        }
        // The CA's limits, kept locally: an order the CA would refuse is not placed
        // (forced or not), and the next look is when it fits.
        if let Err(r) = budget::check(
            &ledger,
            names,
            replaces.is_some(),
            unix(now),
            &Limits::LETS_ENCRYPT,
        ) {
            tracing::warn!(cert = %id, "ACME: {r}");
            meta.last_error = Some(r.to_string());
            meta.next_attempt = Some(r.until);
            if let Err(e) = store.write_meta(id, &meta) {
                tracing::warn!(cert = %id, "ACME: {e}");
            }
            return Outcome {
                next_check: from_unix(r.until),
                meta: Some(meta),
                ..Outcome::default()
            };
        }
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
        // The type the CA failed to validate last time goes second.
        let kind =
            preferred_challenge(self.config.challenge, meta.last_failed_challenge.as_deref());
        tracing::info!(cert = %id, names = ?names, challenge = %kind, profile = ?profile, "ACME: {what} certificate");
        let started = std::time::Instant::now();
        let mut attempt = Attempt::default();
        let order = self.order(id, names, profile.as_deref(), kind, replaces, &mut attempt);
        let (result, header_retry_after) = account::retry_after_scope(async {
            match tokio::time::timeout(ORDER_TIMEOUT, order).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout(ORDER_TIMEOUT)),
            }
        })
        .await;
        match result {
            Ok(cert) => {
                self.record_end(&attempt, OrderOutcome::Issued, None);
                self.orders_issued.fetch_add(1, Ordering::Relaxed);
                let renew_at =
                    schedule::fallback_renewal_time(cert.not_before, cert.not_after, random01());
                // The schedule first, then the certificate: `status` (proxyctl certs,
                // metrics) never shows a served certificate without its next renewal.
                if let Some(e) = self.lock().get_mut(id) {
                    e.renew_at = Some(renew_at);
                }
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
                    // Renewals keep to the type that worked.
                    last_failed_challenge: meta.last_failed_challenge.clone(),
                };
                if let Err(e) = store.write_meta(id, &meta) {
                    tracing::warn!(cert = %id, "ACME: {e}");
                }
                // Served last: the files (written by the order) and meta.json already
                // describe it, so whoever sees it served reads a settled store.
                self.host.certs().install(cert.clone());
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
                if e.is_challenge_failure() {
                    if let Some(k) = attempt.answered {
                        meta.last_failed_challenge = Some(k.to_string());
                    }
                }
                // The CA's rate limit outlasts the backoff: until its Retry-After (the
                // header, else a time in the detail, else RATE_LIMIT_DEFAULT).
                let backoff = schedule::retry_delay(meta.failures, random01(), time_left);
                let hold = e.rate_limited().map(|detail| {
                    let until = e
                        .retry_after()
                        .or(header_retry_after)
                        .unwrap_or(now + schedule::RATE_LIMIT_DEFAULT);
                    let until = unix(schedule::retry_at(now, backoff, Some(until)));
                    meta.rate_limited_until = Some(until);
                    Hold {
                        scope: hold_scope(id, detail),
                        until,
                        detail: detail.to_string(),
                    }
                });
                let at = match meta.rate_limited_until.filter(|_| hold.is_some()) {
                    Some(t) => from_unix(t),
                    None => schedule::retry_at(now, backoff, e.retry_after()),
                };
                self.record_end(&attempt, OrderOutcome::Failed, hold);
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

    /// One attempt, one new order: each authorization is answered with `kind`, or with
    /// the other type where the CA offers only that one. A failed validation ends the
    /// attempt (RFC 8555: it invalidates the authorization and the order); the next
    /// attempt starts with the other type. The certificate is saved before it is
    /// returned.
    async fn order(
        &self,
        id: &str,
        names: &[String],
        profile: Option<&str>,
        kind: ChallengeKind,
        replaces: Option<CertificateIdentifier<'static>>,
        attempt: &mut Attempt,
    ) -> Result<Arc<StoredCert>, Error> {
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let account = self.account().await?;
        let placed = self
            .new_order(
                &account,
                id,
                &identifiers,
                profile,
                replaces.clone(),
                attempt,
            )
            .await?;
        let mut order = match placed {
            Ok(o) => o,
            Err(e) if problem(&e, "accountDoesNotExist").is_some() => {
                // Refused, so no order yet: this is still the attempt's only one.
                tracing::warn!("ACME: the CA no longer knows our account; creating a new one");
                account::forget(self.host.certs().store(), &self.config);
                *self.account.lock().await = None;
                let account = self.account().await?;
                self.new_order(&account, id, &identifiers, profile, replaces, attempt)
                    .await?
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
            let offered = |k: ChallengeKind| authz.challenges.iter().any(|c| c.r#type == k.acme());
            let chosen = if offered(kind) { kind } else { kind.other() };
            let Some(mut challenge) = authz.challenge(chosen.acme()) else {
                return Err(Error::NoChallenge { kind, name });
            };
            attempt.answered = Some(chosen);
            let key_auth = challenge.key_authorization();
            match chosen {
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
                            if !attempt.failed.contains(&name) {
                                attempt.failed.push(name.clone());
                            }
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

    /// Places one new order. With `replaces` refused (e.g. `alreadyReplaced`: an
    /// error answer, so no order), one order without it. The inner result is the CA's
    /// answer; the outer error is a ledger that could not be written or the budget
    /// refusing the order (then nothing was sent).
    async fn new_order(
        &self,
        account: &Account,
        id: &str,
        identifiers: &[Identifier],
        profile: Option<&str>,
        replaces: Option<CertificateIdentifier<'static>>,
        attempt: &mut Attempt,
    ) -> Result<Result<instant_acme::Order, instant_acme::Error>, Error> {
        if let Some(r) = replaces {
            match self
                .place(account, id, identifiers, profile, Some(r), attempt)
                .await?
            {
                Err(e)
                    if problem(&e, "accountDoesNotExist").is_none()
                        && problem(&e, "rateLimited").is_none()
                        && matches!(e, instant_acme::Error::Api(_)) =>
                {
                    tracing::debug!("ACME: order with `replaces` refused ({e}); ordering without");
                }
                r => return Ok(r),
            }
        }
        self.place(account, id, identifiers, profile, None, attempt)
            .await
    }

    /// Sends one newOrder, recorded in the ledger *before* it is sent (a crash cannot
    /// forget it) and taken out again when the CA answers with an error (it created no
    /// order). A lost answer (network) stays counted: the CA may have created it.
    async fn place(
        &self,
        account: &Account,
        id: &str,
        identifiers: &[Identifier],
        profile: Option<&str>,
        replaces: Option<CertificateIdentifier<'static>>,
        attempt: &mut Attempt,
    ) -> Result<Result<instant_acme::Order, instant_acme::Error>, Error> {
        let mut names: Vec<String> = identifiers
            .iter()
            .filter_map(|i| match i {
                Identifier::Dns(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        let record = OrderRecord {
            at: certs::util::unix_now(),
            id: format!("{:016x}", random_u64()),
            cert: id.to_string(),
            names,
            replaces: replaces.is_some(),
            profile: profile.map(str::to_string),
            outcome: OrderOutcome::Placed,
        };
        let rid = record.id.clone();
        // The budget again, under the ledger's lock and in the update that records the
        // order: the check in `check` may be stale (other orders of this process, or
        // of another proxyd on the store, recorded since).
        let now = record.at;
        self.update_ledger(|l| {
            budget::check(
                l,
                &record.names,
                record.replaces,
                now,
                &Limits::LETS_ENCRYPT,
            )?;
            l.orders.push(record);
            l.orders_total += 1;
            Ok(())
        })
        .map_err(Error::Ledger)?
        .map_err(Error::Budget)?;
        let mut new_order = NewOrder::new(identifiers);
        if let Some(p) = profile {
            new_order = new_order.profile(p);
        }
        if let Some(r) = replaces {
            new_order = new_order.replaces(r);
        }
        // Known to the attempt before it is sent: however the attempt ends (no answer,
        // its timeout dropping it mid-request), record_end settles the record. An
        // order whose answer never came cannot have been finalized by us, so `failed`
        // (still one of the account's orders) is right; only a crash leaves `placed`.
        attempt.order = Some(rid.clone());
        let r = account.new_order(&new_order).await;
        match &r {
            Ok(_) => {
                self.orders_placed.fetch_add(1, Ordering::Relaxed);
            }
            Err(instant_acme::Error::Api(_)) => {
                let taken_out = self.update_ledger(|l| {
                    let before = l.orders.len();
                    l.orders.retain(|o| o.id != rid);
                    if l.orders.len() < before {
                        l.orders_total = l.orders_total.saturating_sub(1);
                    }
                });
                if let Err(e) = taken_out {
                    tracing::warn!(cert = %id, "ACME: a refused order stays counted: {e}");
                }
            }
            Err(_) => {}
        }
        Ok(r)
    }

    /// The ledger's name: the directory's, like the account file's.
    fn ledger_key(&self) -> String {
        account::slug(&self.config.directory)
    }

    fn update_ledger<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> Result<R, certs::StoreError> {
        self.host
            .certs()
            .store()
            .update_ledger(&self.ledger_key(), certs::util::unix_now(), f)
    }

    /// Writes how the attempt's order ended, its failed validations and the CA's hold.
    fn record_end(&self, attempt: &Attempt, outcome: OrderOutcome, hold: Option<Hold>) {
        if attempt.order.is_none() && attempt.failed.is_empty() && hold.is_none() {
            return;
        }
        let now = certs::util::unix_now();
        let r = self.update_ledger(|l| {
            if let Some(rid) = &attempt.order {
                if let Some(o) = l.orders.iter_mut().find(|o| &o.id == rid) {
                    o.outcome = outcome;
                }
            }
            for name in &attempt.failed {
                l.failed_validations.push(FailedValidation {
                    at: now,
                    name: name.clone(),
                });
            }
            if let Some(h) = hold {
                l.holds.retain(|x| x.scope != h.scope);
                l.holds.push(h);
            }
        });
        if let Err(e) = r {
            tracing::warn!("ACME: {e}");
        }
    }
}

/// What one attempt did, for the ledger and the next attempt.
#[derive(Debug, Default)]
struct Attempt {
    /// The ledger id of the attempt's (last) new order, set before it is sent.
    order: Option<String>,
    /// The challenge type answered (the last authorization's).
    answered: Option<ChallengeKind>,
    /// Names whose validation the CA reported as failed.
    failed: Vec<String>,
}

/// The configured type, unless the CA failed to validate it last time: then the other.
fn preferred_challenge(configured: ChallengeKind, last_failed: Option<&str>) -> ChallengeKind {
    if last_failed == Some(configured.to_string().as_str()) {
        configured.other()
    } else {
        configured
    }
}

/// Whom a `rateLimited` answer holds: the whole account for its new-orders limit
/// (Let's Encrypt: "too many new orders ... from this account"), else this certificate.
fn hold_scope(id: &str, detail: &str) -> HoldScope {
    if detail.to_ascii_lowercase().contains("new orders") {
        HoldScope::Account
    } else {
        HoldScope::Cert(id.to_string())
    }
}

/// Brings the rate-limit holds of `meta` and `ledger` that end more than
/// [`schedule::RATE_LIMIT_MAX`] after `now` down to that; (meta changed, ledger
/// changed). The caller writes them back, so the cap is fixed once and ends.
fn clamp_holds(ledger: &mut Ledger, meta: &mut Meta, now: i64) -> (bool, bool) {
    let cap = now.saturating_add(schedule::RATE_LIMIT_MAX.as_secs() as i64);
    let mut meta_changed = false;
    if let Some(t) = meta.rate_limited_until.filter(|t| *t > cap) {
        meta.rate_limited_until = Some(cap);
        meta_changed = t != cap;
    }
    let mut ledger_changed = false;
    for h in ledger.holds.iter_mut().filter(|h| h.until > cap) {
        h.until = cap;
        ledger_changed = true;
    }
    (meta_changed, ledger_changed)
}

/// The latest rate-limit hold on certificate `id` at `now` (unix seconds): its own
/// (`meta.json`, the ledger) or the account's. Capped like the backoff
/// ([`schedule::RATE_LIMIT_MAX`]), so a hold written by hand ends too.
fn rate_limit_hold(ledger: &Ledger, meta: &Meta, id: &str, now: i64) -> Option<(i64, String)> {
    let cap = now + schedule::RATE_LIMIT_MAX.as_secs() as i64;
    let own = meta
        .rate_limited_until
        .map(|t| (t, meta.last_error.clone().unwrap_or_default()));
    let held = ledger
        .holds
        .iter()
        .filter(|h| match &h.scope {
            HoldScope::Account => true,
            HoldScope::Cert(c) => c == id,
            // Not written by this client (no registered-domain holds yet).
            HoldScope::Domain(_) => false,
        })
        .map(|h| (h.until, h.detail.clone()));
    own.into_iter()
        .chain(held)
        .filter(|(t, _)| *t > now)
        .max_by_key(|(t, _)| *t)
        .map(|(t, d)| (t.min(cap), d))
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

    /// A manager for [`ISSUER`] (HTTP-01 first, no profile) on an empty store in a
    /// temporary directory, kept while the returned `TempDir` lives.
    fn manager_on_a_fresh_store() -> (Arc<Manager>, tempfile::TempDir) {
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
        (m, dir)
    }

    /// Review: a reload that changes a group's profile (or names) while that group's
    /// order is in flight must not be forgotten when the order, placed with the old
    /// profile, comes back: the group is looked at again at once (and re-ordered with
    /// the new profile), not at the next renewal weeks later.
    #[test]
    fn a_profile_changed_while_an_order_is_in_flight_is_ordered_after_it() {
        let (m, _dir) = manager_on_a_fresh_store();
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
    fn the_type_that_failed_last_goes_second() {
        use ChallengeKind::{Http01, TlsAlpn01};
        assert_eq!(preferred_challenge(Http01, None), Http01);
        assert_eq!(preferred_challenge(Http01, Some("http-01")), TlsAlpn01);
        assert_eq!(preferred_challenge(Http01, Some("tls-alpn-01")), Http01);
        assert_eq!(preferred_challenge(TlsAlpn01, Some("tls-alpn-01")), Http01);
        assert_eq!(preferred_challenge(TlsAlpn01, Some("garbage")), TlsAlpn01);
    }

    #[test]
    fn rate_limit_holds_of_the_cert_and_the_account_count_capped() {
        let now = 1_800_000_000;
        let mut ledger = Ledger::default();
        let mut meta = Meta::default();
        assert_eq!(rate_limit_hold(&ledger, &meta, "a.test", now), None);
        // Its own, from meta.json; a past one is none.
        meta.rate_limited_until = Some(now - 1);
        assert_eq!(rate_limit_hold(&ledger, &meta, "a.test", now), None);
        meta.rate_limited_until = Some(now + 60);
        meta.last_error = Some("limited".into());
        assert_eq!(
            rate_limit_hold(&ledger, &meta, "a.test", now),
            Some((now + 60, "limited".into()))
        );
        // Another certificate's hold is not ours; the account's is, and the later wins.
        ledger.holds.push(Hold {
            scope: HoldScope::Cert("b.test".into()),
            until: now + 500,
            detail: "b".into(),
        });
        assert_eq!(
            rate_limit_hold(&ledger, &meta, "a.test", now).unwrap().0,
            now + 60
        );
        ledger.holds.push(Hold {
            scope: HoldScope::Account,
            until: now + 100,
            detail: "too many new orders".into(),
        });
        assert_eq!(
            rate_limit_hold(&ledger, &meta, "a.test", now),
            Some((now + 100, "too many new orders".into()))
        );
        // A hold written far into the future (by hand, a CA bug) ends after the cap.
        meta.rate_limited_until = Some(now + 100 * 86_400);
        let cap = now + schedule::RATE_LIMIT_MAX.as_secs() as i64;
        assert_eq!(
            rate_limit_hold(&ledger, &meta, "a.test", now).unwrap().0,
            cap
        );
        // Review: "ends after the cap" must hold when time passes. The cap was taken
        // from each look's own `now`, so a hold 100 days ahead (or written while the
        // clock was ahead) was pushed back at every look and held for 100 days. `check`
        // now writes the clamped holds back (clamp_holds) at the first look.
        ledger.holds.push(Hold {
            scope: HoldScope::Account,
            until: now + 200 * 86_400,
            detail: "by hand".into(),
        });
        assert_eq!(clamp_holds(&mut ledger, &mut meta, now), (true, true));
        assert_eq!(clamp_holds(&mut ledger, &mut meta, now), (false, false));
        let later = cap + 1;
        assert_eq!(
            rate_limit_hold(&ledger, &meta, "a.test", later),
            None,
            "still held after the cap"
        );
        assert_eq!(
            hold_scope("a.test", "too many new orders (300) from this account"),
            HoldScope::Account
        );
        assert_eq!(
            hold_scope("a.test", "too many certificates (5) already issued"),
            HoldScope::Cert("a.test".into())
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

    /// A manager on a fresh store, and an account at a CA that is down (a loopback
    /// port nobody listens on): every request fails without an answer.
    async fn manager_with_a_ca_that_is_down() -> (Arc<Manager>, Account, tempfile::TempDir) {
        let (m, dir) = manager_on_a_fresh_store();
        // A CA that is down: a loopback port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = |p: &str| format!("https://127.0.0.1:{port}/{p}");
        let key = rcgen::KeyPair::generate().unwrap();
        let creds: instant_acme::AccountCredentials = serde_json::from_value(serde_json::json!({
            "id": url("acct/1"),
            "key_pkcs8": base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                key.serialize_der()
            ),
            "directory": null,
            "urls": {
                "newNonce": url("nonce"),
                "newAccount": url("account"),
                "newOrder": url("order"),
            },
        }))
        .unwrap();
        let account = Account::builder()
            .unwrap()
            .from_credentials(creds)
            .await
            .unwrap();
        (m, account, dir)
    }

    /// Review: a newOrder whose answer never came (the CA unreachable: refused, reset,
    /// timed out) cannot have been finalized by us, so it is no certificate. Recorded
    /// `placed` for ever, it counted as one: five attempts during a CA outage locked
    /// the names out for 7 days ("5 certificates for a.test in 7d").
    #[tokio::test]
    async fn new_orders_without_an_answer_do_not_count_as_certificates() {
        let (m, account, _dir) = manager_with_a_ca_that_is_down().await;
        let names = vec!["a.test".to_owned()];
        let ids = [Identifier::Dns("a.test".into())];
        for _ in 0..5 {
            // As `check` does: place, then record how the attempt ended.
            let mut attempt = Attempt::default();
            let sent = m
                .place(&account, "a.test", &ids, None, None, &mut attempt)
                .await
                .unwrap();
            assert!(sent.is_err());
            m.record_end(&attempt, OrderOutcome::Failed, None);
        }
        let ledger = m.host.certs().store().read_ledger(&m.ledger_key()).unwrap();
        // Still counted as orders (the CA may have created them)...
        assert_eq!(ledger.orders.len(), 5, "{ledger:?}");
        assert_eq!(ledger.orders_total, 5);
        // ...but not as certificates.
        let r = budget::check(
            &ledger,
            &names,
            false,
            certs::util::unix_now(),
            &Limits::LETS_ENCRYPT,
        );
        assert_eq!(r, Ok(()), "{ledger:#?}");
    }

    /// Review: the budget was checked on a ledger read before the order, and the order
    /// written in a later, separate update: two orders at once (the 4 concurrent
    /// orders of one proxyd, or two proxyd on one store) both saw room for one more
    /// and both were sent. The check must be made under the ledger's lock, in the
    /// update that records the order.
    #[tokio::test]
    async fn the_budget_is_checked_again_under_the_ledger_lock_when_recording_the_order() {
        let (m, account, _dir) = manager_with_a_ca_that_is_down().await;
        let now = certs::util::unix_now();
        m.update_ledger(|l| {
            for i in 0..4 {
                l.orders.push(OrderRecord {
                    at: now - 60 - i,
                    id: format!("seed{i}"),
                    cert: "a.test".into(),
                    names: vec!["a.test".into()],
                    replaces: false,
                    profile: None,
                    outcome: OrderOutcome::Issued,
                });
            }
        })
        .unwrap();
        // Both attempts checked the budget on this ledger: 4 of 5, room for one.
        let seen = m.host.certs().store().read_ledger(&m.ledger_key()).unwrap();
        let names = vec!["a.test".to_owned()];
        assert!(budget::check(&seen, &names, false, now, &Limits::LETS_ENCRYPT).is_ok());
        let ids = [Identifier::Dns("a.test".into())];
        let (mut one, mut two) = (Attempt::default(), Attempt::default());
        let first = m
            .place(&account, "a.test", &ids, None, None, &mut one)
            .await;
        assert!(matches!(first, Ok(Err(_))), "sent (and no answer)");
        let second = m
            .place(&account, "a.test", &ids, None, None, &mut two)
            .await;
        assert!(
            matches!(second, Err(Error::Budget(_))),
            "the 6th order for a.test in 7 days was sent: {:?}",
            second.map(|r| r.map(|_| ()))
        );
        let ledger = m.host.certs().store().read_ledger(&m.ledger_key()).unwrap();
        assert_eq!(ledger.orders.len(), 5, "{ledger:#?}");
    }

    /// Review: `order_verdict` (proxyctl certs preflight) ignored the hold of the CA
    /// kept in the certificate's meta.json (`rate_limited_until`), which `process`
    /// obeys: the preflight said "ok" while the manager would not order.
    #[tokio::test]
    async fn the_order_verdict_obeys_the_hold_in_meta_json() {
        let (m, _account, _dir) = manager_with_a_ca_that_is_down().await;
        m.set_groups(&[(vec!["a.test".to_owned(), "www.a.test".to_owned()], None)]);
        let until = certs::util::unix_now() + 3600;
        let meta = Meta {
            rate_limited_until: Some(until),
            last_error: Some("too many certificates".into()),
            ..Meta::default()
        };
        m.host.certs().store().write_meta("a.test", &meta).unwrap();
        for name in ["a.test", "www.a.test"] {
            match m.order_verdict(name) {
                Ok(OrderVerdict::Refused { until: t, why }) => {
                    assert_eq!(t, until, "{name}: {why}");
                    assert!(why.contains("too many certificates"), "{name}: {why}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// Review: a name in no ACME group (a wildcard, which `set_groups` leaves out, or
    /// a name with another issuer) is never ordered; `order_verdict` judged it as a
    /// group of its own ("a new order fits"), under an id that is no certificate id.
    #[tokio::test]
    async fn the_order_verdict_of_a_name_never_ordered() {
        let (m, _account, _dir) = manager_with_a_ca_that_is_down().await;
        m.set_groups(&[(vec!["a.test".to_owned(), "*.a.test".to_owned()], None)]);
        assert_eq!(m.order_verdict("a.test"), Ok(OrderVerdict::Allowed));
        assert_eq!(m.order_verdict("*.a.test"), Ok(OrderVerdict::NotOrdered));
        assert_eq!(m.order_verdict("b.test"), Ok(OrderVerdict::NotOrdered));
    }
}
