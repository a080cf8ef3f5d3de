//! Control plane: which certificates are served, and issuing the missing ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use crate::parse;
use crate::{CertResolver, LocalIssuer, Store, StoredCert, ISSUER_LOCAL};

/// Holds the current certificates and makes sure each routed name has one.
/// Nothing here is on the request path: a `Mutex` serialises loads and ensures, and the
/// resolver is swapped once per call.
pub struct CertManager {
    store: Store,
    local_issuer: Option<LocalIssuer>,
    resolver: Arc<CertResolver>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    loaded: bool,
    /// id -> certificate: everything loaded or issued, routed or not.
    certs: BTreeMap<String, Arc<StoredCert>>,
}

/// The result of [`CertManager::ensure`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct EnsureReport {
    /// Ids of the certificates issued by this call.
    pub issued: Vec<String>,
    /// Names that still have no usable certificate (sorted, once each).
    pub missing: Vec<String>,
    /// What went wrong (issuing, saving, invalid names), one line each.
    pub errors: Vec<String>,
}

/// One certificate, for `proxyctl certs` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub id: String,
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_after: u64,
}

impl CertManager {
    /// Opens nothing itself; `local_issuer` = `Some(..)` allows issuing missing certs locally.
    pub fn new(
        store: Store,
        local_issuer: Option<LocalIssuer>,
        resolver: Arc<CertResolver>,
    ) -> Self {
        CertManager {
            store,
            local_issuer,
            resolver,
            state: Mutex::new(State::default()),
        }
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the store, serves what it holds (one resolver swap), and returns the
    /// problems found (each also logged with `tracing::warn`).
    pub fn load(&self) -> Vec<String> {
        let mut state = self.lock();
        let problems = self.load_locked(&mut state);
        let all: Vec<_> = state.certs.values().cloned().collect();
        self.resolver.replace(&all);
        problems
    }

    fn load_locked(&self, state: &mut State) -> Vec<String> {
        let report = self.store.load_all();
        for p in &report.problems {
            tracing::warn!("certificate store: {p}");
        }
        state.certs = report
            .certs
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        state.loaded = true;
        report.problems
    }

    /// For every group of names (the hosts of one route, main name first), makes sure a
    /// usable certificate covers each name: a stored one that covers it, is valid now and
    /// (for local ones) has more than a third of its lifetime left. Otherwise, with a local
    /// issuer, issues one certificate for the group's uncovered names, saves it and uses
    /// it. Then swaps the resolver once. Loads the store first if [`CertManager::load`]
    /// was never called. Certificates for names no longer routed stay served.
    ///
    /// A certificate that is no longer usable but could not be replaced stays served (an
    /// expired certificate tells a client more than a failed handshake); its names are
    /// reported in `missing`. Nothing is logged above debug level: the caller logs the
    /// report.
    pub fn ensure(&self, groups: &[Vec<String>]) -> EnsureReport {
        let mut state = self.lock();
        if !state.loaded {
            self.load_locked(&mut state);
        }
        let mut report = EnsureReport::default();
        let now = SystemTime::now();
        // Which certificates may cover a name, by name: one map lookup per routed name
        // instead of a scan of every held certificate (quadratic with 10 000 of each).
        let mut index = NameIndex::default();
        for c in state.certs.values() {
            index.add(c);
        }
        for group in groups {
            let mut uncovered: Vec<String> = Vec::new();
            for raw in group {
                let name = parse::normalize_name(raw);
                if let Err(reason) = parse::check_name(&name) {
                    report
                        .errors
                        .push(format!("{raw:?}: no certificate possible: {reason}"));
                    continue;
                }
                if uncovered.contains(&name)
                    || index.candidates(&name).any(|c| usable_for(c, &name, now))
                {
                    continue;
                }
                uncovered.push(name);
            }
            if uncovered.is_empty() {
                continue;
            }
            let Some(issuer) = &self.local_issuer else {
                report.missing.extend(uncovered);
                continue;
            };
            match issuer.issue(&uncovered).and_then(|c| self.store.save(&c)) {
                Ok(cert) => {
                    tracing::debug!(
                        "issued local certificate {} for {} (until {})",
                        cert.id,
                        cert.names.join(", "),
                        parse::system_to_unix(cert.not_after)
                    );
                    report.issued.push(cert.id.clone());
                    index.add(&cert);
                    if let Some(replaced) = state.certs.insert(cert.id.clone(), cert) {
                        index.remove(&replaced);
                    }
                }
                Err(e) => {
                    report.errors.push(format!(
                        "issuing a local certificate for {}: {e}",
                        uncovered.join(", ")
                    ));
                    report.missing.extend(uncovered);
                }
            }
        }
        report.missing.sort();
        report.missing.dedup();
        let all: Vec<_> = state.certs.values().cloned().collect();
        self.resolver.replace(&all);
        report
    }

    /// Serves a certificate saved by another issuer (ACME) at once: it replaces the one
    /// held under the same id, and the resolver is swapped once.
    pub fn install(&self, cert: Arc<StoredCert>) {
        let mut state = self.lock();
        state.certs.insert(cert.id.clone(), cert);
        let all: Vec<_> = state.certs.values().cloned().collect();
        self.resolver.replace(&all);
    }

    /// The certificates held (loaded or issued), sorted by id.
    pub fn list(&self) -> Vec<CertInfo> {
        self.lock()
            .certs
            .values()
            .map(|c| CertInfo {
                id: c.id.clone(),
                names: c.names.clone(),
                issuer: c.issuer.clone(),
                not_after: parse::system_to_unix(c.not_after).max(0) as u64,
            })
            .collect()
    }

    /// The certificates held, sorted by id.
    pub fn certs(&self) -> Vec<Arc<StoredCert>> {
        self.lock().certs.values().cloned().collect()
    }
}

/// Held certificates by each name they carry (`a.example.org`, `*.example.org`).
#[derive(Default)]
struct NameIndex {
    by_name: HashMap<String, Vec<Arc<StoredCert>>>,
}

impl NameIndex {
    fn add(&mut self, cert: &Arc<StoredCert>) {
        for n in &cert.names {
            self.by_name
                .entry(n.clone())
                .or_default()
                .push(cert.clone());
        }
    }

    fn remove(&mut self, cert: &Arc<StoredCert>) {
        for n in &cert.names {
            if let Some(v) = self.by_name.get_mut(n) {
                v.retain(|c| !Arc::ptr_eq(c, cert));
            }
        }
    }

    /// Every certificate that can cover `host` (see `parse::name_covers`): those that
    /// carry the name itself, and for `label.parent` those that carry `*.parent`.
    fn candidates<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Arc<StoredCert>> {
        let wildcard = match host.split_once('.') {
            Some((label, parent)) if !label.is_empty() && label != "*" => {
                self.by_name.get(&format!("*.{parent}"))
            }
            _ => None,
        };
        self.by_name.get(host).into_iter().chain(wildcard).flatten()
    }
}

/// Covers `name`, is valid at `now`, and, when issued locally, has more than a third of
/// its lifetime left (other issuers renew on their own schedule).
fn usable_for(cert: &StoredCert, name: &str, now: SystemTime) -> bool {
    if !cert.covers(name) || now < cert.not_before || now >= cert.not_after {
        return false;
    }
    if cert.issuer != ISSUER_LOCAL {
        return true;
    }
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    let left = cert.not_after.duration_since(now).unwrap_or_default();
    left * 3 > lifetime
}
