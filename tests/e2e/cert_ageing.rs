//! Certificates age while the daemon runs, and the held ones follow the routes.
//!
//! - Local certificates are renewed on the daemon's timer, with no reload or restart:
//!   the certificate a client is served changes (`--local-cert-lifetime`, a hidden flag
//!   for tests, makes them live seconds instead of 30 days).
//! - A reload lets go of the certificates no routed name uses: they leave the resolver,
//!   `proxyctl certs` and `proxyd_certificate_not_after_seconds`, stay on disk while
//!   valid (a route that comes back gets the same certificate again) and go to
//!   `certs-store/archive/` once expired.
//! - A renewal that fails (the store is read-only) keeps the old certificate served, is
//!   logged and counted, and is retried until it succeeds.
//!
//! What is served is read from the handshake itself ([`served_leaf`]), with a client that
//! records the leaf whatever its dates, so an expired certificate can be seen too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::util::unix_now;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tests::client::tls_connect;
use tests::{http_get, wait_until, Backend, Proxy};

use crate::one_route;
use crate::reload::proxyctl;

const POLL: Duration = Duration::from_millis(100);
/// Generous: a renewal is due within seconds of these short lifetimes.
const WITHIN: Duration = Duration::from_secs(60);

/// The parts of a served leaf certificate the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub(crate) serial: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) names: Vec<String>,
}

impl Leaf {
    pub(crate) fn parse(der: &[u8]) -> Leaf {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).expect("a served leaf parses");
        Leaf {
            serial: cert.raw_serial_as_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            names: tests::client::dns_names(&CertificateDer::from(der.to_vec())),
        }
    }

    fn expired(&self) -> bool {
        unix_now() >= self.not_after
    }
}

/// Accepts any certificate and remembers the leaf: for reading what the proxy serves,
/// dates included (a trusting client is used wherever the content matters).
#[derive(Debug)]
struct Recorder {
    leaf: Mutex<Option<Vec<u8>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The leaf the proxy presents for `sni` on a fresh connection (no resumption: a new
/// client each time), or why there is none.
pub(crate) async fn try_served_leaf(addr: SocketAddr, sni: &str) -> anyhow::Result<Leaf> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        leaf: Mutex::new(None),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let _tls = tls_connect(addr, Arc::new(config), sni).await?;
    let der = recorder.leaf.lock().unwrap().take();
    Ok(Leaf::parse(&der.ok_or_else(|| anyhow::anyhow!("no leaf"))?))
}

async fn served_leaf(proxy: &Proxy, sni: &str) -> Leaf {
    try_served_leaf(proxy.https_addr(), sni)
        .await
        .unwrap_or_else(|e| panic!("{sni}: {e:#}"))
}

/// The leaf of `certs-store/certs/<id>/fullchain.pem`.
pub(crate) fn leaf_on_disk(store: &Path, id: &str) -> Leaf {
    let pem = std::fs::read_to_string(store.join("certs").join(id).join("fullchain.pem"))
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    let chain = tests::client::certs_from_pem(&pem).unwrap();
    Leaf::parse(chain[0].as_ref())
}

/// A request over a client that trusts only the local CA (and checks the dates).
async fn trusted_get(proxy: &Proxy, host: &str) {
    let resp = proxy
        .get(host, "/")
        .await
        .unwrap_or_else(|e| panic!("{host}: {e:#}"));
    assert_eq!(resp.status, 200, "{host}: {}", resp.text());
}

async fn proxyctl_json(proxy: &Proxy, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = proxyctl(proxy, &all).await;
    assert!(
        out.status.success(),
        "proxyctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

async fn reload(proxy: &Proxy, routes: &str) -> serde_json::Value {
    std::fs::write(proxy.routes_path(), routes).unwrap();
    let v = proxyctl_json(proxy, &["reload"]).await;
    assert_eq!(v["applied"], true, "{v}");
    v
}

/// The ids of the certificates the daemon holds (`proxyctl certs`), sorted.
async fn held(proxy: &Proxy) -> Vec<String> {
    let v = proxyctl_json(proxy, &["certs"]).await;
    let mut ids: Vec<String> = v["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("no certificates in {v}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The `cert` labels of `proxyd_certificate_not_after_seconds`, sorted, once each.
async fn certs_in_metrics(metrics: SocketAddr) -> Vec<String> {
    let text = scrape(metrics).await;
    let mut certs: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("proxyd_certificate_not_after_seconds{"))
        .map(|l| {
            let (_, rest) = l.split_once("cert=\"").expect("a cert label");
            rest.split('"').next().unwrap().to_owned()
        })
        .collect();
    certs.sort();
    certs.dedup();
    certs
}

async fn scrape(metrics: SocketAddr) -> String {
    let resp = wait_until("the metrics listener", WITHIN, POLL, || async {
        http_get(metrics, "monitoring", "/metrics").await.ok()
    })
    .await;
    assert_eq!(resp.status, 200);
    resp.text()
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the scrape"))
}

fn certs_on_disk(store: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(store.join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    ids.sort();
    ids
}

fn archived(store: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(store.join("archive")) {
        Ok(dir) => dir.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_certificates_are_renewed_while_the_daemon_runs() {
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--local-cert-lifetime")
        .arg("12s")
        .start()
        .await;
    let first = served_leaf(&proxy, "a.test").await;
    assert_eq!(first.names, ["a.test"]);
    assert!(
        first.not_after - first.not_before <= 14,
        "the test lifetime is not in force: {first:?}"
    );
    trusted_get(&proxy, "a.test").await;

    // No reload, no restart: the timer renews it and the next handshake shows it.
    let second = wait_until("the served certificate to be renewed", WITHIN, POLL, || {
        let first = first.clone();
        let proxy = &proxy;
        async move {
            let now = served_leaf(proxy, "a.test").await;
            (now.serial != first.serial).then_some(now)
        }
    })
    .await;
    assert_eq!(second.names, ["a.test"]);
    assert!(
        second.not_after > first.not_after,
        "{first:?} -> {second:?}"
    );
    // Renewed ahead of expiry (at a third of its life left), not after it.
    assert!(
        second.not_before < first.not_after,
        "the renewal came after the old certificate expired: {first:?} -> {second:?}"
    );
    trusted_get(&proxy, "a.test").await;
    // The store holds what is served, and nothing was reloaded.
    let status = proxyctl_json(&proxy, &["status"]).await;
    assert_eq!(status["generation"], 1, "{status}");
    let on_disk = leaf_on_disk(proxy.certs_store(), "a.test");
    assert!(
        on_disk.not_after >= second.not_after,
        "{on_disk:?} vs {second:?}"
    );
    assert!(
        proxy.log().contains("certificate issued from the local CA"),
        "{}",
        proxy.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_removed_routes_leave_memory_and_metrics_at_the_reload() {
    let a = Backend::start("a").await;
    let metrics = tests::free_addr();
    let ab = one_route(&["a.test"], &a, "") + &one_route(&["b.test"], &a, "");
    let bc = one_route(&["b.test"], &a, "") + &one_route(&["c.test"], &a, "");
    let proxy = Proxy::builder(&ab)
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    let store = proxy.certs_store().to_path_buf();
    assert_eq!(held(&proxy).await, ["a.test", "b.test"]);
    assert_eq!(certs_in_metrics(metrics).await, ["a.test", "b.test"]);
    let a_first = served_leaf(&proxy, "a.test").await;

    // a.test goes, c.test comes: the held set and the metrics follow at once.
    reload(&proxy, &bc).await;
    assert_eq!(held(&proxy).await, ["b.test", "c.test"]);
    assert_eq!(certs_in_metrics(metrics).await, ["b.test", "c.test"]);
    assert!(
        try_served_leaf(proxy.https_addr(), "a.test").await.is_err(),
        "a.test is no longer routed: no certificate for it"
    );
    // Still valid: kept on disk, not archived.
    assert_eq!(certs_on_disk(&store), ["a.test", "b.test", "c.test"]);
    assert!(archived(&store).is_empty(), "{:?}", archived(&store));

    // Back and forth: a.test gets the same certificate again from disk (no new one), and
    // the held set never grows beyond the routed names.
    for round in 0..4 {
        let v = reload(&proxy, &ab).await;
        assert_eq!(v["certificates_issued"], serde_json::json!([]), "{v}");
        assert_eq!(held(&proxy).await, ["a.test", "b.test"], "round {round}");
        assert_eq!(certs_in_metrics(metrics).await, ["a.test", "b.test"]);
        assert_eq!(served_leaf(&proxy, "a.test").await, a_first);
        trusted_get(&proxy, "a.test").await;

        reload(&proxy, &bc).await;
        assert_eq!(held(&proxy).await, ["b.test", "c.test"], "round {round}");
        assert_eq!(certs_in_metrics(metrics).await, ["b.test", "c.test"]);
        trusted_get(&proxy, "c.test").await;
    }
    assert_eq!(certs_on_disk(&store), ["a.test", "b.test", "c.test"]);
    let status = proxyctl_json(&proxy, &["status"]).await;
    assert_eq!(
        status["store"]["problems"],
        serde_json::json!([]),
        "{status}"
    );
    assert_eq!(
        status["ready"]["names_without_certificate"],
        serde_json::json!([]),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_of_a_removed_route_is_archived_and_the_store_stays_readable() {
    let a = Backend::start("a").await;
    let ab = one_route(&["a.test"], &a, "") + &one_route(&["b.test"], &a, "");
    let b = one_route(&["b.test"], &a, "");
    let proxy = Proxy::builder(&ab)
        .arg("--local-cert-lifetime")
        .arg("6s")
        .start()
        .await;
    let store = proxy.certs_store().to_path_buf();
    reload(&proxy, &b).await;
    assert_eq!(held(&proxy).await, ["b.test"]);
    let a_cert = leaf_on_disk(&store, "a.test");

    // Once expired, the orphan goes to archive/ (the one held keeps being renewed).
    let moved = wait_until(
        "the expired certificate of a.test to be archived",
        WITHIN,
        POLL,
        || async {
            let found: Vec<PathBuf> = archived(&store)
                .into_iter()
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("a.test.expired-")
                })
                .collect();
            (!store.join("certs/a.test").exists() && !found.is_empty()).then_some(found)
        },
    )
    .await;
    assert!(a_cert.expired(), "archived before it expired: {a_cert:?}");
    assert_eq!(moved.len(), 1, "{moved:?}");
    // Archived whole (a certificate an admin can still look at), not deleted.
    let chain = std::fs::read_to_string(moved[0].join("fullchain.pem")).unwrap();
    let leaf = Leaf::parse(tests::client::certs_from_pem(&chain).unwrap()[0].as_ref());
    assert_eq!(leaf, a_cert);
    assert_eq!(certs_on_disk(&store), ["b.test"]);

    // b.test was never let go; the store reads cleanly.
    trusted_get(&proxy, "b.test").await;
    let status = proxyctl_json(&proxy, &["status"]).await;
    assert_eq!(
        status["store"]["problems"],
        serde_json::json!([]),
        "{status}"
    );

    // a.test comes back: a new certificate, not the archived one.
    let v = reload(&proxy, &ab).await;
    assert_eq!(
        v["certificates_issued"],
        serde_json::json!(["a.test"]),
        "{v}"
    );
    let again = served_leaf(&proxy, "a.test").await;
    assert_ne!(again.serial, a_cert.serial);
    trusted_get(&proxy, "a.test").await;
    assert_eq!(held(&proxy).await, ["a.test", "b.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_renewal_keeps_the_old_certificate_served_and_is_counted() {
    let a = Backend::start("a").await;
    let metrics = tests::free_addr();
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .store_tmpfs("2m")
        .arg("--local-cert-lifetime")
        .arg("8s")
        .arg("--cert-check-interval")
        .arg("500ms")
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    trusted_get(&proxy, "a.test").await;
    let errors = |text: &str| metric_value(text, "proxyd_certificate_errors_total");
    assert_eq!(errors(&scrape(metrics).await), 0.0);

    // The store turns read-only: the renewal cannot be saved.
    proxy.remount_store(true);
    let old = served_leaf(&proxy, "a.test").await;
    wait_until("the failed renewal to be counted", WITHIN, POLL, || async {
        (errors(&scrape(metrics).await) >= 1.0).then_some(())
    })
    .await;
    assert!(
        proxy
            .log()
            .contains("issuing a local certificate for a.test"),
        "the failure is not logged:\n{}",
        proxy.log_tail(30)
    );
    // The old certificate is still served, not dropped.
    assert_eq!(served_leaf(&proxy, "a.test").await, old);

    // Past its expiry: an expired certificate covers no name (readiness says so), and it
    // is still what a client is shown (more useful than a failed handshake).
    wait_until(
        "a.test to be reported without a valid certificate",
        WITHIN,
        POLL,
        || async {
            let v = proxyctl_json(&proxy, &["status"]).await;
            (v["ready"]["names_without_certificate"] == serde_json::json!(["a.test"])).then_some(())
        },
    )
    .await;
    assert!(old.expired(), "{old:?}");
    assert_eq!(served_leaf(&proxy, "a.test").await, old);

    // The disk recovers: the next try renews, with no reload.
    proxy.remount_store(false);
    let renewed = wait_until("the renewal after recovery", WITHIN, POLL, || async {
        let now = served_leaf(&proxy, "a.test").await;
        (now.serial != old.serial).then_some(now)
    })
    .await;
    assert!(!renewed.expired(), "{renewed:?}");
    trusted_get(&proxy, "a.test").await;
    let v = proxyctl_json(&proxy, &["status"]).await;
    assert_eq!(
        v["ready"]["names_without_certificate"],
        serde_json::json!([]),
        "{v}"
    );
    assert_eq!(v["generation"], 1, "{v}");
}

/// New connections meet a certificate whatever the certificate machinery is doing: back
/// to back handshakes for a name that stays routed, while the timer renews its
/// certificate every few seconds, reloads add and remove another route (issuing,
/// releasing and taking back certificates) and the store check runs often. Every
/// handshake succeeds (the resolver is swapped whole, never without the name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_handshakes_never_fail_across_renewals_reloads_and_store_checks() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let a = Backend::start("a").await;
    let routes = |other: &str| {
        format!(
            "{}{}",
            one_route(&["a.test"], &a, ""),
            one_route(&[other], &a, "")
        )
    };
    let proxy = Proxy::builder(&routes("b.test"))
        .arg("--local-cert-lifetime")
        .arg("6s")
        .arg("--store-check-interval")
        .arg("200ms")
        .start()
        .await;
    let addr = proxy.https_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let serials = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (stop, handshakes, failures, serials) = (
            stop.clone(),
            handshakes.clone(),
            failures.clone(),
            serials.clone(),
        );
        clients.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match try_served_leaf(addr, "a.test").await {
                    Ok(leaf) => {
                        serials.lock().unwrap().insert(leaf.serial);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{e:#}")),
                }
                handshakes.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Reloads, back and forth, until the certificate of a.test was renewed twice.
    let mut reloads = 0u32;
    wait_until("two renewals of a.test's certificate", WITHIN, POLL, || {
        reloads += 1;
        let other = if reloads.is_multiple_of(2) {
            "b.test"
        } else {
            "c.test"
        };
        let (proxy, serials, routes) = (&proxy, serials.clone(), routes(other));
        async move {
            reload(proxy, &routes).await;
            (serials.lock().unwrap().len() >= 3).then_some(())
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = clients.join_next().await {
        joined.expect("a client task panicked");
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} handshakes failed, e.g. {:?}\n{}",
        failures.len(),
        handshakes.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)],
        proxy.log_tail(30)
    );
    assert!(reloads >= 2, "{reloads} reloads");
}

/// An admin replaces a certificate's files in place (built elsewhere, `mv`, as
/// certs-store/README.md says) and runs `proxyctl reload` with the routes unchanged: the
/// new certificate is served when the reload answers, not a timer tick later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_unchanged_routes_serves_files_replaced_in_place() {
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "");
    let proxy = Proxy::builder(&routes).start().await;
    // Another store's certificate for the same name: a different key and serial.
    let other = Proxy::builder(&routes).start().await;
    let before = served_leaf(&proxy, "a.test").await;
    let replacement = leaf_on_disk(other.certs_store(), "a.test");
    assert_ne!(before.serial, replacement.serial);

    let dir = proxy.certs_store().join("certs").join("a.test");
    let from = other.certs_store().join("certs").join("a.test");
    for file in ["key.pem", "fullchain.pem"] {
        let staged = dir.join(format!(".{file}.new"));
        std::fs::copy(from.join(file), &staged).unwrap();
        std::fs::rename(&staged, dir.join(file)).unwrap();
    }
    let v = proxyctl_json(&proxy, &["reload"]).await;
    assert_eq!(
        (&v["ok"], &v["applied"]),
        (&true.into(), &false.into()),
        "{v}"
    );
    assert_eq!(served_leaf(&proxy, "a.test").await, replacement);
    // The new key with it: a client trusting only the other store's CA gets through.
    let resp = tests::https_get(proxy.https_addr(), &other.ca_pem(), "a.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
}

/// The same in-place replacement gone wrong (a truncated copy): the reload keeps serving
/// the certificate read before, and its answer says the replacement was not taken, so
/// the admin who reloads to have it served is not told "nothing changed" and left there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_unchanged_routes_reports_a_replacement_it_could_not_read() {
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "");
    let proxy = Proxy::builder(&routes).start().await;
    let before = served_leaf(&proxy, "a.test").await;

    let dir = proxy.certs_store().join("certs").join("a.test");
    let staged = dir.join(".fullchain.pem.new");
    std::fs::write(&staged, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    std::fs::rename(&staged, dir.join("fullchain.pem")).unwrap();
    let v = proxyctl_json(&proxy, &["reload"]).await;
    assert_eq!(
        (&v["ok"], &v["applied"]),
        (&true.into(), &false.into()),
        "{v}"
    );
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("a.test") && message.contains("not served"),
        "{message}"
    );
    assert_eq!(served_leaf(&proxy, "a.test").await, before);
}
