//! Control plane: which certificates are held and served, issuing the missing ones, and
//! keeping both current as the routes change ([`CertManager::ensure`], on every reload)
//! and as certificates age ([`CertManager::maintain`], on a timer).
//!
//! The manager knows every certificate directory of the store (an [`Entry`] each: its
//! names and dates), but holds (keeps the key of, serves, reports) only the ones that
//! serve a routed name: for each routed name the best certificate by
//! [`renewal::rank`]. The others stay on disk, known by names and dates only, for as
//! long as they are valid (a route that comes back gets its certificate again without an
//! order), and go to `archive/` once they have expired.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use crate::renewal::{self, Source};
use crate::store::Stamp;
use crate::{parse, CertResolver, LocalIssuer, Store, StoredCert};

/// Holds the current certificates and makes sure each routed name has one.
/// Nothing here is on the request path: a `Mutex` serialises loads, ensures and
/// maintenance, and the resolver is swapped once per call.
pub struct CertManager {
    store: Store,
    local_issuer: Option<LocalIssuer>,
    resolver: Arc<CertResolver>,
    state: Mutex<State>,
    /// Errors reported by [`CertManager::ensure`] and [`CertManager::maintain`] since
    /// start (a failed issue, save or archive): the daemon's
    /// `proxyd_certificate_errors_total`.
    errors: AtomicU64,
    /// The local CA's certificate (DER), when there is a local issuer: a certificate
    /// whose meta.json says `local` but whose chain does not carry it was put there by
    /// hand (see [`CertManager::vet`]).
    local_ca: Option<Vec<u8>>,
}

/// One certificate directory of the store, as this process last read it.
struct Entry {
    id: String,
    names: Vec<String>,
    issuer: String,
    source: Source,
    not_before: SystemTime,
    not_after: SystemTime,
    /// Its files when they were read: a different stamp means they changed.
    stamp: Stamp,
    /// The certificate with its key while it is held (serves a routed name); `None`
    /// while it only sits on disk.
    cert: Option<Arc<StoredCert>>,
}

impl Entry {
    fn new(cert: Arc<StoredCert>, stamp: Stamp, held: bool) -> Entry {
        Entry {
            id: cert.id.clone(),
            names: cert.names.clone(),
            issuer: cert.issuer.clone(),
            source: Source::of(&cert.issuer),
            not_before: cert.not_before,
            not_after: cert.not_after,
            stamp,
            cert: held.then_some(cert),
        }
    }

    fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| parse::name_covers(n, host))
    }

    fn usable(&self, now: SystemTime) -> bool {
        renewal::usable(self.source, self.not_before, self.not_after, now)
    }

    fn rank(&self, now: SystemTime) -> (bool, SystemTime, &str) {
        renewal::rank(&self.id, self.not_before, self.not_after, now)
    }
}

#[derive(Default)]
struct State {
    loaded: bool,
    /// Every certificate directory known, by id: held or only on disk.
    entries: BTreeMap<String, Entry>,
    /// Directories that could not be read, with their stamp then: looked at again only
    /// once their files change (and reported once).
    unreadable: BTreeMap<String, Stamp>,
    /// The certificate groups of the routes, normalised, from the last
    /// [`CertManager::ensure`]; `None` before the first (everything loaded is held).
    groups: Option<Vec<Vec<String>>>,
    /// The routed names, and `*.parent` for each routed `label.parent`: what a
    /// certificate must name to be worth holding (see [`CertManager::install`]).
    routed: HashSet<String>,
    /// Manual certificates warned about, and when.
    warned: HashMap<String, SystemTime>,
    /// When `archive/` was last pruned.
    pruned: Option<SystemTime>,
}

/// The result of [`CertManager::ensure`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct EnsureReport {
    /// Ids of the certificates issued by this call.
    pub issued: Vec<String>,
    /// Names that still have no usable certificate (sorted, once each).
    pub missing: Vec<String>,
    /// What went wrong (issuing, saving, archiving, invalid names), one line each.
    pub errors: Vec<String>,
    /// Ids of the certificates no longer held: they serve no routed name any more (or
    /// a better one does). They stay on disk while valid.
    pub released: Vec<String>,
    /// Ids of the certificates moved to `archive/`: expired and serving no routed name,
    /// or an admin's certificate the local issuer replaced.
    pub archived: Vec<String>,
    /// [`CertManager::ensure`] only: files in `certs/`, new or changed, that could not be
    /// read (what was served before stays served). [`CertManager::maintain`] reports
    /// these in [`MaintainReport::problems`].
    pub store_problems: Vec<String>,
}

/// The result of [`CertManager::maintain`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct MaintainReport {
    /// Issued, missing, released, archived: as for a reload.
    pub ensure: EnsureReport,
    /// Ids of the certificates read again: new in `certs/`, or whose files changed.
    pub reread: Vec<String>,
    /// Entries of `certs/` that cannot be read (each reported once, until it changes).
    pub problems: Vec<String>,
    /// Manual certificates close to (or past) their expiry, which the proxy cannot
    /// renew; each at most once per [`renewal::WARN_EVERY`].
    pub warnings: Vec<String>,
    /// When something will next change (a certificate becomes valid, due for renewal,
    /// expired, ...): call [`CertManager::maintain`] again then.
    pub next_due: Option<SystemTime>,
}

/// One certificate, for `proxyctl certs` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub id: String,
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// Unix seconds: when the proxy stops counting on it and the local issuer replaces
    /// it (for a local certificate, its renewal; for others, just before expiry).
    pub replace_at: u64,
    /// A certificate nobody here can renew (issuer `manual`) that is close to its
    /// expiry or past it (see [`renewal::warn_at`]).
    pub expiring: bool,
}

impl CertManager {
    /// Opens nothing itself; `local_issuer` = `Some(..)` allows issuing missing certs locally.
    pub fn new(
        store: Store,
        local_issuer: Option<LocalIssuer>,
        resolver: Arc<CertResolver>,
    ) -> Self {
        let local_ca = local_issuer.as_ref().and_then(|i| {
            rustls_pemfile::certs(&mut i.ca_pem().as_bytes())
                .next()
                .and_then(Result::ok)
                .map(|der| der.as_ref().to_vec())
        });
        CertManager {
            store,
            local_issuer,
            resolver,
            state: Mutex::new(State::default()),
            errors: AtomicU64::new(0),
            local_ca,
        }
    }

    /// A certificate read from the store, as the manager should treat it: one labelled
    /// `local` (meta.json) whose chain does not carry the local CA is an admin's (e.g.
    /// new files put in a directory where the local issuer once stood in, as the expiry
    /// warning says to do): it is `manual`, never renewed (overwritten) by the local
    /// issuer, and archived when replaced.
    fn vet(&self, cert: Arc<StoredCert>) -> Arc<StoredCert> {
        let Some(ca) = &self.local_ca else {
            return cert;
        };
        if cert.issuer != crate::ISSUER_LOCAL || cert.key.cert.iter().any(|c| c.as_ref() == ca) {
            return cert;
        }
        tracing::debug!(
            "certificate {}: meta.json says local, but it is not from the local CA: manual",
            cert.id
        );
        Arc::new(StoredCert {
            id: cert.id.clone(),
            names: cert.names.clone(),
            issuer: crate::ISSUER_MANUAL.to_string(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            key: cert.key.clone(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn resolver(&self) -> &Arc<CertResolver> {
        &self.resolver
    }

    pub fn local_issuer(&self) -> Option<&LocalIssuer> {
        self.local_issuer.as_ref()
    }

    /// How many errors [`CertManager::ensure`] and [`CertManager::maintain`] reported
    /// since this manager was made (each a certificate that could not be issued, saved
    /// or archived; what was served before stays served).
    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }

    /// Loads the store, serves what it holds (one resolver swap), and returns the
    /// problems found (each also logged with `tracing::warn`). Until the first
    /// [`CertManager::ensure`] says what is routed, every certificate is held.
    pub fn load(&self) -> Vec<String> {
        let mut state = self.lock();
        let problems = self.load_locked(&mut state);
        self.publish(&state, SystemTime::now());
        problems
    }

    fn load_locked(&self, state: &mut State) -> Vec<String> {
        let report = self.store.load_all();
        for p in &report.problems {
            tracing::warn!("certificate store: {p}");
        }
        let held = state.groups.is_none();
        state.entries = report
            .certs
            .into_iter()
            .map(|c| {
                let stamp = self.store.stamp(&c.id);
                (c.id.clone(), Entry::new(self.vet(c), stamp, held))
            })
            .collect();
        state.unreadable.clear();
        state.loaded = true;
        report.problems
    }

    /// For every group of names (the hosts of one route, main name first), makes sure a
    /// usable certificate covers each name ([`renewal::usable`]: valid now, and not yet
    /// due for renewal or replacement), taking it from the store when one there covers
    /// it. Otherwise, with a local issuer, issues one certificate for the group's
    /// uncovered names, saves it and uses it. Then holds exactly the certificates that
    /// serve a routed name, archives the expired ones that serve none, and swaps the
    /// resolver once. Loads the store first if [`CertManager::load`] was never called,
    /// and reads new directories in `certs/` (an admin's drop-in) when there are any.
    ///
    /// The groups are kept: [`CertManager::maintain`] works on them until the next call.
    ///
    /// A certificate that is no longer usable but could not be replaced stays served (an
    /// expired certificate tells a client more than a failed handshake); its names are
    /// reported in `missing`. Nothing is logged above debug level: the caller logs the
    /// report.
    pub fn ensure(&self, groups: &[Vec<String>]) -> EnsureReport {
        self.ensure_at(groups, SystemTime::now())
    }

    /// [`CertManager::ensure`] as if the time were `now`.
    pub fn ensure_at(&self, groups: &[Vec<String>], now: SystemTime) -> EnsureReport {
        let mut state = self.lock();
        let mut store_problems = Vec::new();
        if !state.loaded {
            self.load_locked(&mut state);
        } else {
            // New directories and changed files alike: an admin who renews a manual
            // certificate in place and reloads at once must not have the old dates
            // judged (and the new certificate archived as replaced).
            let mut seen = MaintainReport::default();
            self.reread_changed(&mut state, &mut seen);
            for p in &seen.problems {
                tracing::warn!("certificate store: {p}");
            }
            for id in &seen.reread {
                tracing::info!(cert = %id, "certificate store: read {id} again (new or changed)");
            }
            store_problems = seen.problems;
        }
        let mut report = EnsureReport {
            store_problems,
            ..EnsureReport::default()
        };
        let mut clean = Vec::with_capacity(groups.len());
        for group in groups {
            let mut names: Vec<String> = Vec::with_capacity(group.len());
            for raw in group {
                let name = parse::normalize_name(raw);
                if let Err(reason) = parse::check_name(&name) {
                    report
                        .errors
                        .push(format!("{raw:?}: no certificate possible: {reason}"));
                    continue;
                }
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            if !names.is_empty() {
                clean.push(names);
            }
        }
        state.groups = Some(clean);
        self.select(&mut state, now, &mut report);
        self.count_errors(report.errors.len());
        report
    }

    fn count_errors(&self, n: usize) {
        self.errors.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// What a timer calls: reads what changed in the store (new directories, and
    /// certificates whose files changed, e.g. an admin's renewed certificate), renews the
    /// local certificates due for it and lets the local issuer stand in for those about
    /// to expire ([`renewal::replace_at`]), re-ranks what is served (a certificate that
    /// became valid or expired), archives what expired unrouted, and warns about manual
    /// certificates close to their expiry. Works on the groups of the last
    /// [`CertManager::ensure`] (before the first, it only serves what it holds).
    ///
    /// `next_due` in the report says when to call it again at the latest (the caller
    /// may call it more often, e.g. to notice files that change).
    pub fn maintain(&self) -> MaintainReport {
        self.maintain_at(SystemTime::now())
    }

    /// [`CertManager::maintain`] as if the time were `now`.
    pub fn maintain_at(&self, now: SystemTime) -> MaintainReport {
        let mut state = self.lock();
        let mut report = MaintainReport::default();
        if !state.loaded {
            report.problems = self.load_locked(&mut state);
        } else {
            self.reread_changed(&mut state, &mut report);
        }
        if state.groups.is_some() {
            self.select(&mut state, now, &mut report.ensure);
            self.count_errors(report.ensure.errors.len());
        } else {
            self.publish(&state, now);
        }
        if state.pruned.is_none_or(|at| {
            now.duration_since(at)
                .is_ok_and(|d| d >= renewal::WARN_EVERY)
        }) {
            state.pruned = Some(now);
            let (_, problems) = self.store.prune_archive(now);
            report.problems.extend(problems);
        }
        let State {
            entries, warned, ..
        } = &mut *state;
        warned.retain(|id, _| entries.get(id).is_some_and(|e| e.cert.is_some()));
        for e in entries.values() {
            if e.cert.is_none() || e.source != Source::Manual {
                continue;
            }
            if renewal::warning_due(e.not_before, e.not_after, warned.get(&e.id).copied(), now) {
                warned.insert(e.id.clone(), now);
                report.warnings.push(self.warning(e, now));
            }
        }
        report.next_due = renewal::next_after(
            now,
            entries.values().flat_map(|e| {
                let mut times = vec![e.not_before, e.not_after];
                if e.cert.is_some() {
                    times.push(renewal::replace_at(e.source, e.not_before, e.not_after));
                    if e.source == Source::Manual {
                        times.push(renewal::warn_at(e.not_before, e.not_after));
                        if let Some(at) = warned.get(&e.id) {
                            times.push(*at + renewal::WARN_EVERY);
                        }
                    }
                }
                times
            }),
        );
        report
    }

    fn warning(&self, e: &Entry, now: SystemTime) -> String {
        let names = e.names.join(", ");
        let not_after = crate::util::unix(e.not_after);
        let then = match &self.local_issuer {
            Some(_) => "the local CA stands in for it from then on",
            None => "it will be served expired (no local issuer)",
        };
        match e.not_after.duration_since(now) {
            Ok(left) => format!(
                "certificate {} ({names}, issuer manual) expires in {} (not_after {not_after}) and \
                 proxyd cannot renew it: replace certs/{}/fullchain.pem and key.pem; {then}",
                e.id,
                roughly(left),
                e.id
            ),
            Err(_) => format!(
                "certificate {} ({names}, issuer manual) expired (not_after {not_after}) and proxyd \
                 cannot renew it: replace certs/{}/fullchain.pem and key.pem",
                e.id, e.id
            ),
        }
    }

    /// Serves a certificate saved by another issuer (ACME) at once: it replaces the one
    /// known under the same id, and the resolver is swapped once. It is held only if it
    /// names a routed name (an order that finished after its route went away is kept on
    /// disk, not served).
    pub fn install(&self, cert: Arc<StoredCert>) {
        let mut state = self.lock();
        let held = state.groups.is_none() || cert.names.iter().any(|n| state.routed.contains(n));
        let stamp = self.store.stamp(&cert.id);
        state
            .entries
            .insert(cert.id.clone(), Entry::new(cert, stamp, held));
        self.publish(&state, SystemTime::now());
    }

    /// The certificates held (serving a routed name), sorted by id.
    pub fn list(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        self.lock()
            .entries
            .values()
            .filter(|e| e.cert.is_some())
            .map(|e| CertInfo {
                id: e.id.clone(),
                names: e.names.clone(),
                issuer: e.issuer.clone(),
                not_before: crate::util::unix_u64(e.not_before),
                not_after: crate::util::unix_u64(e.not_after),
                replace_at: crate::util::unix_u64(renewal::replace_at(
                    e.source,
                    e.not_before,
                    e.not_after,
                )),
                expiring: e.source == Source::Manual
                    && now >= renewal::warn_at(e.not_before, e.not_after),
            })
            .collect()
    }

    /// The certificates held, sorted by id.
    pub fn certs(&self) -> Vec<Arc<StoredCert>> {
        self.lock()
            .entries
            .values()
            .filter_map(|e| e.cert.clone())
            .collect()
    }

    /// The names among `names` that no held certificate valid now covers (sorted).
    pub fn uncovered(&self, names: &[String]) -> Vec<String> {
        let now = SystemTime::now();
        let state = self.lock();
        let mut index = NameIndex::default();
        for e in state.entries.values() {
            if e.cert.is_some() && renewal::valid(e.not_before, e.not_after, now) {
                index.add(e);
            }
        }
        let mut out: Vec<String> = names
            .iter()
            .map(|n| parse::normalize_name(n))
            .filter(|n| {
                !index
                    .candidates(n)
                    .any(|id| state.entries.get(id).is_some_and(|e| e.covers(n)))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The selection at the heart of [`CertManager::ensure`] and
    /// [`CertManager::maintain`], over the kept groups.
    fn select(&self, state: &mut State, now: SystemTime, report: &mut EnsureReport) {
        let groups = state.groups.take().unwrap_or_default();
        // Which certificates may cover a name, by name: one map lookup per routed name
        // instead of a scan of every certificate (quadratic with 10 000 of each).
        let mut index = NameIndex::default();
        for e in state.entries.values() {
            index.add(e);
        }
        let mut chosen: BTreeSet<String> = BTreeSet::new();
        let mut routed: HashSet<String> = HashSet::new();
        for group in &groups {
            let mut uncovered: Vec<String> = Vec::new();
            for name in group {
                routed.insert(name.clone());
                if let Some((_, parent)) = name.split_once('.') {
                    routed.insert(format!("*.{parent}"));
                }
                let (usable, best) = self.pick(&mut state.entries, &index, name, now);
                if usable {
                    chosen.extend(best);
                } else {
                    uncovered.push(name.clone());
                }
            }
            if uncovered.is_empty() {
                continue;
            }
            let Some(issuer) = &self.local_issuer else {
                for name in &uncovered {
                    chosen.extend(self.pick(&mut state.entries, &index, name, now).1);
                }
                report.missing.extend(uncovered);
                continue;
            };
            match self.issue(state, issuer, &uncovered, now, report) {
                Ok(id) => {
                    tracing::debug!("issued local certificate {id} for {}", uncovered.join(", "));
                    if let Some(e) = state.entries.get(&id) {
                        index.add(e);
                    }
                    report.issued.push(id);
                }
                Err(e) => {
                    report.errors.push(format!(
                        "issuing a local certificate for {}: {e}",
                        uncovered.join(", ")
                    ));
                    report.missing.extend(uncovered.iter().cloned());
                }
            }
            for name in &uncovered {
                chosen.extend(self.pick(&mut state.entries, &index, name, now).1);
            }
        }
        report.missing.sort();
        report.missing.dedup();
        state.groups = Some(groups);
        state.routed = routed;

        // Let go of what serves no routed name; archive it once expired.
        let mut gone = Vec::new();
        for (id, e) in state.entries.iter_mut() {
            if chosen.contains(id) {
                continue;
            }
            if e.cert.take().is_some() {
                report.released.push(id.clone());
            }
            if now >= e.not_after {
                gone.push(id.clone());
            }
        }
        for id in gone {
            let not_after = state.entries[&id].not_after;
            // Its files changed since they were read (another process renewed it, an
            // admin replaced it): not archived on old dates; the next pass reads them.
            if self.store.stamp(&id) != state.entries[&id].stamp {
                continue;
            }
            match self.store.archive(&id, "expired", not_after) {
                Ok(to) => {
                    tracing::debug!("archived expired certificate {id} to {}", to.display());
                    state.entries.remove(&id);
                    report.archived.push(id);
                }
                // Gone already (deleted by hand): forget it.
                Err(crate::StoreError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::NotFound =>
                {
                    state.entries.remove(&id);
                }
                Err(e) => report.errors.push(format!("archiving {id}: {e}")),
            }
        }
        self.publish(state, now);
    }

    /// For `name`: whether a usable certificate covers it, and the certificate that
    /// serves it (the best by rank; loaded from the store if it was not held). An entry
    /// whose files can no longer be loaded is forgotten and the next best taken.
    fn pick(
        &self,
        entries: &mut BTreeMap<String, Entry>,
        index: &NameIndex,
        name: &str,
        now: SystemTime,
    ) -> (bool, Option<String>) {
        loop {
            let mut usable = false;
            let mut best: Option<&Entry> = None;
            for e in index.candidates(name).filter_map(|id| entries.get(id)) {
                if !e.covers(name) {
                    continue;
                }
                usable |= e.usable(now);
                if best.is_none_or(|b| e.rank(now) > b.rank(now)) {
                    best = Some(e);
                }
            }
            let Some(best) = best else {
                return (false, None);
            };
            if best.cert.is_some() {
                return (usable, Some(best.id.clone()));
            }
            let id = best.id.clone();
            let stamp = self.store.stamp(&id);
            match self.store.load_one(&id) {
                Ok(Some(cert)) => {
                    // Read again: what it now is (its files may have changed meanwhile).
                    entries.insert(id, Entry::new(self.vet(cert), stamp, true));
                }
                Ok(None) | Err(_) => {
                    tracing::debug!("certificate {id} could not be read back; forgotten");
                    entries.remove(&id);
                }
            }
        }
    }

    /// Issues one local certificate for `names` and saves it. An admin's (manual)
    /// certificate under the same id is archived first, not overwritten, and put back
    /// if the save fails. Returns the id.
    fn issue(
        &self,
        state: &mut State,
        issuer: &LocalIssuer,
        names: &[String],
        now: SystemTime,
        report: &mut EnsureReport,
    ) -> Result<String, crate::StoreError> {
        let issued = issuer.issue_at(names, now)?;
        let id = parse::cert_id(&issued.names[0])?;
        let mut archived = None;
        if let Some(e) = state
            .entries
            .get(&id)
            .filter(|e| e.source == Source::Manual)
        {
            if self.store.stamp(&id) != e.stamp {
                return Err(crate::StoreError::BadCert {
                    names: names.join(", "),
                    reason: format!(
                        "certs/{id} changed on disk since it was read; not replaced (the \
                         next pass reads it again)"
                    ),
                });
            }
            archived = Some(self.store.archive(&id, "replaced", now)?);
        }
        match self.store.save(&issued) {
            Ok(cert) => {
                if archived.is_some() {
                    report.archived.push(id.clone());
                }
                let stamp = self.store.stamp(&id);
                state
                    .entries
                    .insert(id.clone(), Entry::new(cert, stamp, true));
                Ok(id)
            }
            Err(e) => {
                if let Some(from) = archived {
                    if let Err(back) = self.store.unarchive(&from, &id) {
                        report.errors.push(format!(
                            "putting {} back as certs/{id}: {back}",
                            from.display()
                        ));
                    }
                }
                Err(e)
            }
        }
    }

    /// One resolver swap: the held certificates, ranked at `now`.
    fn publish(&self, state: &State, now: SystemTime) {
        let held: Vec<Arc<StoredCert>> = state
            .entries
            .values()
            .filter_map(|e| e.cert.clone())
            .collect();
        self.resolver.replace_at(&held, now);
    }

    /// On the timer and on a reload: every directory of `certs/` whose files changed (or that is new) is
    /// read again; what vanished and is not held is forgotten (a held certificate whose
    /// files vanished stays served: the store check reports and repairs it).
    fn reread_changed(&self, state: &mut State, report: &mut MaintainReport) {
        let ids = match self.store.list_ids() {
            Ok(ids) => ids,
            Err(e) => {
                report.problems.push(e.to_string());
                return;
            }
        };
        let present: HashSet<&str> = ids.iter().map(String::as_str).collect();
        state
            .entries
            .retain(|id, e| e.cert.is_some() || present.contains(id.as_str()));
        state
            .unreadable
            .retain(|id, _| present.contains(id.as_str()));
        for id in &ids {
            let stamp = self.store.stamp(id);
            if state.entries.get(id).is_some_and(|e| e.stamp == stamp)
                || state.unreadable.get(id) == Some(&stamp)
            {
                continue;
            }
            match self.store.load_one(id) {
                Ok(Some(cert)) => {
                    let held = state.entries.get(id).is_some_and(|e| e.cert.is_some());
                    state.unreadable.remove(id);
                    state
                        .entries
                        .insert(id.clone(), Entry::new(self.vet(cert), stamp, held));
                    report.reread.push(id.clone());
                }
                Ok(None) => {}
                Err(e) => {
                    state.unreadable.insert(id.clone(), stamp);
                    report.problems.push(format!(
                        "{e}; not served{}",
                        if state.entries.get(id).is_some_and(|e| e.cert.is_some()) {
                            " (the copy read before is served meanwhile)"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
    }
}

/// `10 days`, `5 hours`, `3 minutes`: rounded up, so "1 day" never hides 23 hours.
fn roughly(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 2 * 86_400 {
        (s.div_ceil(86_400), "days")
    } else if s >= 2 * 3600 {
        (s.div_ceil(3600), "hours")
    } else {
        (s.div_ceil(60).max(1), "minutes")
    };
    format!("{n} {unit}")
}

/// Certificates by each name they carry (`a.example.org`, `*.example.org`), by id.
#[derive(Default)]
struct NameIndex {
    by_name: HashMap<String, Vec<String>>,
}

impl NameIndex {
    fn add(&mut self, e: &Entry) {
        for n in &e.names {
            self.by_name
                .entry(n.clone())
                .or_default()
                .push(e.id.clone());
        }
    }

    /// The ids of every certificate that can cover `host` (see `parse::name_covers`):
    /// those that carry the name itself, and for `label.parent` those that carry
    /// `*.parent`. May name an id twice, or one that is gone: callers look each up.
    fn candidates<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a String> {
        let wildcard = match host.split_once('.') {
            Some((label, parent)) if !label.is_empty() && label != "*" => {
                self.by_name.get(&format!("*.{parent}"))
            }
            _ => None,
        };
        self.by_name.get(host).into_iter().chain(wildcard).flatten()
    }
}
