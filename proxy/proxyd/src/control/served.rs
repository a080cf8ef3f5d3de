//! Served == stored: the daemon connects to each of its own HTTPS listeners, as a TLS
//! client, once per routed name (SNI), and compares the leaf it is served with the
//! certificate the store holds for that name on disk (`certs/<id>/fullchain.pem`, read
//! at each check) and with the one held in memory (the resolver's). A certificate
//! renewed but never served, a file swapped behind the daemon's back, a re-read that
//! failed, another process answering on our port: each shows as a mismatch.
//!
//! **Invariant: it only looks.** Nothing here changes what is served or stored; the
//! findings go to [`ServedChecks`] (log lines on a change of state, `GET /v1/certs`,
//! metrics). The chain's trust is not checked (it may be the local CA): only the
//! identity of the leaf (SHA-256 of its DER) and its expiry. The handshake's signature
//! is verified, so the listener does hold the key of the leaf it shows.
//!
//! When: after every change of what the resolver serves (an install by ACME, a reload,
//! a store re-read or renewal: [`certs::CertResolver::changes`]), and every
//! `--verify-served-interval` (0: never; the check is off). Bounded: at most
//! [`PARALLEL`] connections at once, each given [`CONNECT_TIMEOUT`] for TCP and TLS.
//! A wildcard listen address is reached on the loopback address of its family; each
//! connection is a full TLS handshake, counted in `proxyd_tls_handshakes_total` like
//! any other.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use certs::LeafId;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::data::state::Shared;
use crate::observe::served::{Counts, NameCheck, Outcome, ServedChecks};

/// Connections in flight at once.
pub const PARALLEL: usize = 8;
/// For TCP connect and the TLS handshake together, per connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection, once its leaf is had and close_notify sent, waits for the
/// daemon to close its side.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the resolver is looked at for a change (one atomic load).
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// The label put in front of a wildcard route's parent to check it (`*.example.org` is
/// checked as `served-check.example.org`).
const WILDCARD_LABEL: &str = "served-check";

/// What one listener answered: the leaf it served (DER), or why there is none.
type Answer = (SocketAddr, Result<Vec<u8>, String>);

/// Background service: runs [`check`] after every change of what is served and every
/// `interval` (zero: never).
pub struct ServedVerifier {
    pub shared: Arc<Shared>,
    /// The `--https` addresses.
    pub listeners: Vec<SocketAddr>,
    pub interval: Duration,
    /// `--max-conns-per-ip` (0: none): the check's connections come from loopback and
    /// count against it like any client's, so it opens at most half of it at once.
    pub max_conns_per_ip: u32,
}

#[async_trait]
impl BackgroundService for ServedVerifier {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let checks = self.shared.served.clone();
        checks.set_interval_secs(
            self.interval
                .as_secs()
                .max(u64::from(!self.interval.is_zero())),
        );
        if self.interval.is_zero() || self.listeners.is_empty() {
            tracing::info!("served == stored check off");
            return;
        }
        let targets: Vec<SocketAddr> = self.listeners.iter().map(|a| reachable(*a)).collect();
        let client = Arc::new(client_config());
        // The first run once the listeners accept (they start with this service).
        let mut seen = None;
        let mut next = Instant::now();
        loop {
            let changes = self.shared.certs.resolver().changes();
            if seen != Some(changes) || Instant::now() >= next {
                if seen.is_none() {
                    wait_listening(&self.shared, &self.listeners, &mut shutdown).await;
                }
                seen = Some(changes);
                next = Instant::now() + self.interval;
                let parallel = parallelism(self.max_conns_per_ip);
                // A run can take long (listeners that accept and never answer: one
                // CONNECT_TIMEOUT per name, `parallel` at a time): shutdown does not wait
                // for it.
                let (results, counts) = tokio::select! {
                    r = check(&self.shared, &targets, &client, parallel) => r,
                    _ = shutdown.changed() => return,
                };
                // What is served changed during the run (an install, a reload): what it
                // found may compare the new leaf with the old one. Run again at once
                // (`seen` is the count from before the run) rather than report it.
                if self.shared.certs.resolver().changes() != changes {
                    continue;
                }
                checks.record(
                    results,
                    counts,
                    certs::util::unix_u64(std::time::SystemTime::now()),
                );
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Until every `--https` address is a listening socket of this process (as readiness
/// reads it, without a connection), or shutdown.
async fn wait_listening(shared: &Shared, https: &[SocketAddr], shutdown: &mut ShutdownWatch) {
    let listeners = crate::observe::readiness::Listeners {
        https: https.to_vec(),
        ..Default::default()
    };
    for _ in 0..600 {
        let r = crate::observe::readiness::check(shared, &listeners);
        if r.listeners.iter().all(|(_, up)| *up) {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Connections the check opens at once: [`PARALLEL`], or half of `--max-conns-per-ip`
/// (at least one) when that is lower, so that the daemon never refuses its own check (a
/// connection just closed may still hold its slot for a moment).
pub fn parallelism(max_conns_per_ip: u32) -> usize {
    match max_conns_per_ip {
        0 => PARALLEL,
        cap => PARALLEL.min(usize::try_from(cap / 2).unwrap_or(PARALLEL).max(1)),
    }
}

/// Where to connect for a listen address: a wildcard address on the loopback address
/// of its family.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// The SNI that checks a routed name (a wildcard one by a name under it).
pub fn sni_for(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(parent) => format!("{WILDCARD_LABEL}.{parent}"),
        None => name.to_owned(),
    }
}

/// One run: every routed name with a certificate held, on every listener.
pub async fn check(
    shared: &Arc<Shared>,
    listeners: &[SocketAddr],
    client: &Arc<ClientConfig>,
    parallel: usize,
) -> (BTreeMap<String, NameCheck>, Counts) {
    let names = shared.snapshot.load().table.names();
    let resolver = shared.certs.resolver();
    let held: Vec<(String, String, Arc<certs::StoredCert>)> = names
        .into_iter()
        .filter_map(|name| {
            let sni = sni_for(&name);
            resolver.lookup(&sni).map(|c| (name, sni, c))
        })
        .collect();

    // The store's leaves, read now (file I/O: off the runtime's workers).
    let ids: Vec<String> = {
        let mut ids: Vec<String> = held.iter().map(|(_, _, c)| c.id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let dir = shared.certs.store().certs_dir();
    let stored: HashMap<String, Result<LeafId, String>> = tokio::task::spawn_blocking(move || {
        ids.into_iter()
            .map(|id| {
                let leaf = LeafId::of_chain_file(&dir.join(&id).join("fullchain.pem"));
                (id, leaf)
            })
            .collect()
    })
    .await
    .unwrap_or_default();

    // Every (name, listener), `parallel` at a time.
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (_, sni, _)) in held.iter().enumerate() {
        for addr in listeners {
            let (sni, addr, client, permits) =
                (sni.clone(), *addr, client.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let leaf = tokio::time::timeout(CONNECT_TIMEOUT, served_leaf(addr, &sni, client))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "no handshake within {}s",
                            CONNECT_TIMEOUT.as_secs()
                        ))
                    });
                (i, addr, leaf)
            });
        }
    }
    let mut served: Vec<Vec<Answer>> = vec![vec![]; held.len()];
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, addr, leaf)) = done {
            served[i].push((addr, leaf));
        }
    }

    let now = certs::util::unix_u64(std::time::SystemTime::now());
    let mut counts = Counts::default();
    let mut results = BTreeMap::new();
    for ((name, _, cert), mut answers) in held.into_iter().zip(served) {
        answers.sort_by_key(|(addr, _)| *addr);
        let on_disk = stored
            .get(&cert.id)
            .cloned()
            .unwrap_or_else(|| Err("not read".into()));
        let in_memory = cert.leaf_der().to_vec();
        let check = judge(&cert.id, &in_memory, &on_disk, &answers, &mut counts, now);
        results.insert(name, check);
    }
    (results, counts)
}

/// One name's outcome from what each listener served, the leaf held in memory and the
/// one on disk. The first mismatch found is the reason; a listener that could not be
/// reached is reported only when none mismatched.
fn judge(
    id: &str,
    in_memory: &[u8],
    on_disk: &Result<LeafId, String>,
    answers: &[Answer],
    counts: &mut Counts,
    now: u64,
) -> NameCheck {
    let mut mismatch: Option<String> = None;
    let mut unreachable: Option<String> = None;
    let mut served_fp: Option<String> = None;
    for (addr, answer) in answers {
        let der = match answer {
            Ok(der) => der,
            Err(e) => {
                counts.unreachable += 1;
                unreachable.get_or_insert_with(|| format!("{addr}: {e}"));
                continue;
            }
        };
        let served = LeafId::of_der(der);
        if served_fp.is_none() {
            served_fp = Some(certs::sha256_hex(der));
        }
        let problem = match (&served, on_disk) {
            (Err(e), _) => Some(format!("{addr} serves a leaf that does not parse: {e}")),
            (Ok(_), Err(e)) => Some(format!("certs/{id} on disk: {e}")),
            (Ok(s), Ok(d)) if s != d => Some(format!(
                "{addr} serves {} (until {}), certs/{id} on disk is {} (until {})",
                s.short(),
                date(s.not_after),
                d.short(),
                date(d.not_after)
            )),
            (Ok(s), Ok(_)) if der.as_slice() != in_memory => Some(format!(
                "{addr} serves {} (until {}), the daemon holds {} for it: another process \
                 answers on this address?",
                s.short(),
                date(s.not_after),
                &certs::sha256_hex(in_memory)[..16]
            )),
            _ => None,
        };
        match problem {
            Some(p) => {
                counts.mismatched += 1;
                mismatch.get_or_insert(p);
            }
            None => counts.matched += 1,
        }
    }
    let outcome = match (mismatch, unreachable) {
        (Some(m), _) => Outcome::Mismatch(m),
        (None, Some(u)) => Outcome::Unreachable(u),
        (None, None) if answers.is_empty() => {
            Outcome::Unreachable("no listener answered the check".into())
        }
        (None, None) => Outcome::Match,
    };
    NameCheck {
        cert: id.to_owned(),
        outcome,
        checked_at: now,
        served: served_fp,
        stored: on_disk.as_ref().ok().map(|l| l.sha256.clone()),
    }
}

/// The `served` part of `GET /v1/certs`: every routed name with a certificate held now,
/// with its last check (`unchecked` before the first, or when the check is off).
pub fn reply(shared: &Shared) -> admin_api::ServedCheck {
    let checks: &ServedChecks = &shared.served;
    let results = checks.results();
    let resolver = shared.certs.resolver();
    let routed = shared.snapshot.load().table.names();
    // None valid now, and none held at all (an expired one is in `names`, with its
    // expiry).
    let mut uncovered = shared.certs.uncovered(&routed);
    uncovered.retain(|n| resolver.lookup(&sni_for(n)).is_none());
    let names = routed
        .into_iter()
        .filter_map(|name| {
            let cert = resolver.lookup(&sni_for(&name))?;
            let last = results.get(&name);
            Some(admin_api::ServedName {
                cert: cert.id.clone(),
                not_before: certs::util::unix(cert.not_before),
                not_after: certs::util::unix(cert.not_after),
                state: last.map_or(admin_api::ServedState::Unchecked, |c| c.outcome.state()),
                reason: last.and_then(|c| c.outcome.reason().map(str::to_owned)),
                checked_at: last.map(|c| c.checked_at),
                served_sha256: last.and_then(|c| c.served.clone()),
                stored_sha256: last.and_then(|c| c.stored.clone()),
                name,
            })
        })
        .collect();
    admin_api::ServedCheck {
        interval_secs: checks.interval_secs(),
        last_run: checks.last_run(),
        names,
        uncovered,
    }
}

/// Unix seconds as `2026-12-25T16:10:41Z`.
pub(crate) fn date(unix: i64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The leaf `addr` serves for `sni` (DER), or why there is none.
async fn served_leaf(
    addr: SocketAddr,
    sni: &str,
    client: Arc<ClientConfig>,
) -> Result<Vec<u8>, String> {
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("SNI {sni:?}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| "no certificate served".to_string());
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tls.shutdown().await;
    // Until the daemon has closed its side too (it still counts the connection against
    // `--max-conns-per-ip` until then: the next one would be refused), for a moment.
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    leaf
}

/// A TLS client that takes any leaf (its identity is what is compared, not its trust),
/// verifies the handshake's signature with it, and never resumes a session (a resumed
/// session would show the leaf of the first one).
pub fn client_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring offers the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyLeaf(algorithms)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// Accepts any leaf; checks the handshake signatures against it.
#[derive(Debug)]
struct AnyLeaf(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyLeaf {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_reached_on_loopback() {
        let a: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert_eq!(reachable(a), "127.0.0.1:8443".parse().unwrap());
        let b: SocketAddr = "[::]:8443".parse().unwrap();
        assert_eq!(reachable(b), "[::1]:8443".parse().unwrap());
        let c: SocketAddr = "127.0.0.2:443".parse().unwrap();
        assert_eq!(reachable(c), c);
    }

    #[test]
    fn parallelism_stays_under_half_the_per_ip_cap() {
        assert_eq!(parallelism(0), PARALLEL);
        assert_eq!(parallelism(256), PARALLEL);
        assert_eq!(parallelism(6), 3);
        assert_eq!(parallelism(2), 1);
        assert_eq!(parallelism(1), 1);
    }

    #[test]
    fn wildcard_names_are_checked_under_their_parent() {
        assert_eq!(sni_for("*.example.org"), "served-check.example.org");
        assert_eq!(sni_for("a.example.org"), "a.example.org");
    }

    /// A name none of whose connections came back (a task that panicked, no listener)
    /// was not checked: not a match.
    #[test]
    fn judge_without_any_answer_is_no_match() {
        let mut counts = Counts::default();
        let none = judge("a.test", b"x", &Err("gone".into()), &[], &mut counts, 5);
        assert!(
            matches!(none.outcome, Outcome::Unreachable(_)),
            "{:?}",
            none.outcome
        );
    }

    #[test]
    fn judge_names_the_first_problem() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut counts = Counts::default();
        let bad = judge(
            "a.test",
            b"x",
            &Err("gone".into()),
            &[(addr, Err("connect: refused".into()))],
            &mut counts,
            5,
        );
        assert!(matches!(bad.outcome, Outcome::Unreachable(ref r) if r.contains("refused")));
        assert_eq!(counts.unreachable, 1);
    }
}
