//! SNI -> certificate. The only code of this crate on the handshake path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::renewal;
use crate::store::StoredCert;

#[derive(Default)]
struct CertMap {
    /// Exact name -> certificate.
    exact: HashMap<String, Arc<StoredCert>>,
    /// `example.org` for a certificate naming `*.example.org`.
    wildcard: HashMap<String, Arc<StoredCert>>,
}

/// SNI -> certificate, swapped at runtime as a whole. Implements
/// [`rustls::server::ResolvesServerCert`]: no SNI or an unknown name gives `None`, so the
/// handshake fails cleanly (rustls sends an access_denied alert).
pub struct CertResolver {
    map: ArcSwap<CertMap>,
    /// ACME TLS-ALPN-01 (RFC 8737) challenge certificates by name, answered only to
    /// clients that offer ALPN `acme-tls/1`. Empty but for the seconds of a validation.
    acme: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// How many times the map changed (a swap that serves other certificates than the
    /// one before): what the daemon's served == stored check watches to run after every
    /// install, reload and store re-read.
    changes: AtomicU64,
}

/// The ALPN protocol of TLS-ALPN-01 validations.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl Default for CertResolver {
    fn default() -> Self {
        CertResolver::new()
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.map.load();
        f.debug_struct("CertResolver")
            .field("exact", &m.exact.len())
            .field("wildcard", &m.wildcard.len())
            .finish()
    }
}

impl CertResolver {
    pub fn new() -> CertResolver {
        CertResolver {
            map: ArcSwap::from_pointee(CertMap::default()),
            acme: ArcSwap::from_pointee(HashMap::new()),
            changes: AtomicU64::new(0),
        }
    }

    /// How many swaps so far changed what is served (a swap with the same certificates
    /// for the same names does not count).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Answers TLS-ALPN-01 validations for `name` with `key` (a self-signed certificate
    /// with the acmeIdentifier extension) until [`CertResolver::remove_acme_challenge`].
    pub fn set_acme_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let name = normalize(name).into_owned();
        self.acme.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.clone(), key.clone());
            m
        });
    }

    pub fn remove_acme_challenge(&self, name: &str) {
        let name = normalize(name);
        self.acme.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(name.as_ref());
            m
        });
    }

    /// [`CertResolver::replace_at`] now.
    pub fn replace(&self, certs: &[Arc<StoredCert>]) {
        self.replace_at(certs, SystemTime::now())
    }

    /// Replaces the whole map in one atomic store. Each cert is indexed under every SAN
    /// name it has. When two certs cover a name, the one valid at `now` wins, then the
    /// one with the later `not_after`, then the later id ([`renewal::rank`]: the outcome
    /// does not depend on the order given, and a certificate not yet valid or expired
    /// never beats a valid one; an exact name whose certificate is not valid falls back to
    /// a valid wildcard). Validity changes with time: the caller replaces the map
    /// again when a certificate becomes valid or expires (`CertManager::maintain`).
    pub fn replace_at(&self, certs: &[Arc<StoredCert>], now: SystemTime) {
        fn rank(c: &StoredCert, now: SystemTime) -> (bool, SystemTime, &str) {
            renewal::rank(&c.id, c.not_before, c.not_after, now)
        }
        let mut map = CertMap::default();
        for cert in certs {
            for name in &cert.names {
                let (table, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut map.wildcard, suffix),
                    None => (&mut map.exact, name.as_str()),
                };
                match table.get(key) {
                    Some(cur) if rank(cur, now) >= rank(cert, now) => {}
                    _ => {
                        table.insert(key.to_string(), cert.clone());
                    }
                }
            }
        }
        // At lookup an exact name beats a wildcard: not when the exact certificate is
        // not valid at `now` and the wildcard one is (an expired certificate held for
        // another of its names must not hide a valid wildcard).
        let CertMap { exact, wildcard } = &mut map;
        exact.retain(|name, c| {
            c.valid_at(now)
                || !name
                    .split_once('.')
                    .and_then(|(_, parent)| wildcard.get(parent))
                    .is_some_and(|w| w.valid_at(now))
        });
        let old = self.map.swap(Arc::new(map));
        if !same_certs(&old, &self.map.load()) {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Exact name first, then `*.parent` (one label only). Input normalised: lower case,
    /// trailing dot removed.
    pub fn lookup(&self, sni: &str) -> Option<Arc<StoredCert>> {
        let name = normalize(sni);
        let map = self.map.load();
        if let Some(c) = map.exact.get(name.as_ref()) {
            return Some(c.clone());
        }
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() || label == "*" {
            return None;
        }
        map.wildcard.get(parent).cloned()
    }

    /// How many names (exact + wildcard) are served.
    pub fn len(&self) -> usize {
        let m = self.map.load();
        m.exact.len() + m.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The same certificate objects under the same names.
fn same_certs(a: &CertMap, b: &CertMap) -> bool {
    fn same(a: &HashMap<String, Arc<StoredCert>>, b: &HashMap<String, Arc<StoredCert>>) -> bool {
        a.len() == b.len()
            && a.iter()
                .all(|(name, c)| b.get(name).is_some_and(|d| Arc::ptr_eq(c, d)))
    }
    same(&a.exact, &b.exact) && same(&a.wildcard, &b.wildcard)
}

fn normalize(sni: &str) -> Cow<'_, str> {
    let n = sni.strip_suffix('.').unwrap_or(sni);
    if n.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(n.to_ascii_lowercase())
    } else {
        Cow::Borrowed(n)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name()?;
        if client_hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
        {
            // A TLS-ALPN-01 validation: the challenge certificate or nothing, never the
            // certificate served to browsers.
            return self.acme.load().get(normalize(sni).as_ref()).cloned();
        }
        let found = self.lookup(sni);
        if found.is_none() {
            tracing::debug!("no certificate for SNI {sni:?}");
        }
        found.map(|c| c.key.clone())
    }
}
