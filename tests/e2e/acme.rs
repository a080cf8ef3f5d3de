//! ACME against a real CA: Debian's pebble and its mock DNS, started by each test on
//! loopback, validating on the proxy's own test ports. Every certificate is checked with
//! a real TLS client that trusts only pebble's root.
//!
//! Pebble validates on one HTTP port and one TLS port. A test that must prove one
//! challenge type points the other one at a port where nothing listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::client::{client_config, tls_connect};
use tests::pebble::{Pebble, PebbleOptions, EAB_HMAC, EAB_KID};
use tests::{free_addr, wait_until, Alpn, Backend, Conn, Proxy, ProxyBuilder};

use crate::one_route;
use crate::reload::proxyctl;

/// How long pebble may take to issue (validation delay off: about a second).
pub(crate) const ISSUE_WITHIN: Duration = Duration::from_secs(60);

pub(crate) struct Bench {
    pub(crate) pebble: Pebble,
    pub(crate) http: SocketAddr,
    pub(crate) https: SocketAddr,
}

/// Which proxy port pebble validates each challenge type on.
#[derive(Clone, Copy)]
pub(crate) enum Validate {
    /// Both types reach the proxy.
    Both,
    /// Only HTTP-01 can succeed (pebble's TLS-ALPN-01 port is dead).
    OnlyHttp01,
    /// Only TLS-ALPN-01 can succeed.
    OnlyTlsAlpn01,
}

pub(crate) async fn bench(validate: Validate, opts: PebbleOptions) -> Bench {
    let http = free_addr();
    let https = free_addr();
    let dead = free_addr().port();
    let (hp, tp) = match validate {
        Validate::Both => (http.port(), https.port()),
        Validate::OnlyHttp01 => (http.port(), dead),
        Validate::OnlyTlsAlpn01 => (dead, https.port()),
    };
    Bench {
        pebble: Pebble::start(hp, tp, opts).await,
        http,
        https,
    }
}

impl Bench {
    pub(crate) fn proxy(&self, routes: &str, challenge: &str) -> ProxyBuilder {
        self.proxy_with_directory(routes, challenge, &self.pebble.directory_url())
    }

    /// Like [`Bench::proxy`], with another directory URL (a front before pebble).
    pub(crate) fn proxy_with_directory(
        &self,
        routes: &str,
        challenge: &str,
        directory: &str,
    ) -> ProxyBuilder {
        Proxy::builder(routes)
            .http_addr(self.http)
            .https_addr(self.https)
            .arg("--acme-directory")
            .arg(directory)
            .arg("--acme-ca-root")
            .arg(self.pebble.https_ca_path())
            .arg("--acme-contact")
            .arg("admin@example.org")
            .arg("--acme-challenge")
            .arg(challenge)
            .env("RUST_LOG", "info,access=off")
    }
}

/// A TLS handshake with `name`, trusting only `root` (pebble's), then one GET.
pub(crate) async fn served_by(
    https: SocketAddr,
    root: &str,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    let config = client_config(root, Alpn::Both)?;
    let tls = tls_connect(https, config, name).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().map(|c| c.to_vec()));
    let mut conn = Conn::handshake(tls, true).await?;
    let r = conn.get(name, "/").await?;
    anyhow::ensure!(r.status == 200, "GET https://{name}/: {}", r.status);
    leaf.ok_or_else(|| anyhow::anyhow!("no certificate"))
}

/// Waits until `name` is served with a certificate that chains to `root`; returns it.
pub(crate) async fn wait_served(https: SocketAddr, root: &str, name: &str) -> Vec<u8> {
    let root = root.to_string();
    let name2 = name.to_string();
    wait_until(
        &format!("{name} served with a pebble certificate"),
        ISSUE_WITHIN,
        Duration::from_millis(20),
        || {
            let (root, name) = (root.clone(), name2.clone());
            async move { served_by(https, &root, &name).await.ok() }
        },
    )
    .await
}

pub(crate) fn meta(store: &Path, id: &str) -> serde_json::Value {
    let p = store.join("certs").join(id).join("meta.json");
    let p = if p.exists() {
        p
    } else {
        store
            .join("acme")
            .join("pending")
            .join(format!("{id}.json"))
    };
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn account_files(store: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(store.join("acme").join("accounts"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_fresh_store_gets_a_certificate_for_every_name_with_eab() {
    let b = bench(
        Validate::OnlyHttp01,
        PebbleOptions {
            eab: true,
            ..Default::default()
        },
    )
    .await;
    let a = Backend::start("a").await;
    let c = Backend::start("c").await;
    let routes = one_route(&["a.test", "www.a.test"], &a, "") + &one_route(&["c.test"], &c, "");
    let proxy = b
        .proxy(&routes, "http-01")
        .arg("--acme-eab-kid")
        .arg(EAB_KID)
        .arg("--acme-eab-hmac")
        .arg(EAB_HMAC)
        .start()
        .await;
    let root = b.pebble.root_pem().await;
    for name in ["a.test", "www.a.test", "c.test"] {
        wait_served(b.https, &root, name).await;
    }
    // One certificate per route: a.test and www.a.test share one.
    let store = proxy.certs_store();
    let m = meta(store, "a.test");
    assert_eq!(m["issuer"], b.pebble.directory_url());
    let mut names: Vec<String> = serde_json::from_value(m["names"].clone()).unwrap();
    names.sort();
    assert_eq!(names, ["a.test", "www.a.test"]);
    assert_eq!(m["failures"], 0);
    assert!(m["last_error"].is_null());
    assert_eq!(meta(store, "c.test")["issuer"], b.pebble.directory_url());
    assert!(!store.join("certs").join("www.a.test").exists());
    assert_eq!(mode(&store.join("certs/a.test/key.pem")), 0o600);
    let accounts = account_files(store);
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    assert_eq!(b.pebble.orders(), 2, "one order per route");

    // The admin view.
    let out = proxyctl(&proxy, &["certs", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v:#}");
    for g in groups {
        assert_eq!(g["issuer"], b.pebble.directory_url(), "{g:#}");
        assert!(g["not_after"].as_i64().unwrap() > 0);
        assert!(g["next_renewal"].as_i64().unwrap() < g["not_after"].as_i64().unwrap());
    }
    let out = proxyctl(&proxy, &["certs"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("a.test") && text.contains("renew"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_fresh_store_gets_a_certificate_for_every_name() {
    let b = bench(Validate::OnlyTlsAlpn01, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "")
        + &one_route(&["b.test"], &a, "")
        + &one_route(&["c.test", "d.test"], &a, "");
    // No local fallback: until the ACME certificate arrives, handshakes fail.
    let proxy = b
        .proxy(&routes, "tls-alpn-01")
        .local_issuer(false)
        .arg("--acme-fallback")
        .arg("none")
        .start()
        .await;
    let root = b.pebble.root_pem().await;
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        wait_served(b.https, &root, name).await;
    }
    assert_eq!(b.pebble.orders(), 3);
    assert!(
        !proxy.log().contains("trying http-01"),
        "{}",
        proxy.log_tail(30)
    );
    assert!(!proxy.certs_store().join("local-ca").join("ca.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_added_by_reload_gets_its_certificate_without_restart() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let proxy = b
        .proxy(&one_route(&["a.test"], &a, ""), "http-01")
        .start()
        .await;
    let root = b.pebble.root_pem().await;
    wait_served(b.https, &root, "a.test").await;
    let pid = proxy.pid();

    let routes = one_route(&["a.test"], &a, "") + &one_route(&["new.test"], &a, "");
    std::fs::write(proxy.routes_path(), routes).unwrap();
    let out = proxyctl(&proxy, &["reload"]).await;
    let reloaded = Instant::now();
    assert!(out.status.success(), "{out:?}");
    // The local issuer covers the name at once...
    let local = proxy.ca_pem();
    served_by(b.https, &local, "new.test")
        .await
        .expect("local certificate right after reload");
    // ...until the ACME certificate replaces it.
    wait_served(b.https, &root, "new.test").await;
    let took = reloaded.elapsed();
    assert_eq!(proxy.pid(), pid);
    eprintln!(
        "ACME-TIMING: reload -> new.test served with a pebble certificate in {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_renewal_swaps_the_served_certificate_with_no_failed_request() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let proxy = b
        .proxy(&one_route(&["a.test"], &a, ""), "http-01")
        .start()
        .await;
    let root = b.pebble.root_pem().await;
    let first = wait_served(b.https, &root, "a.test").await;

    // Steady traffic: two clients, each a new TLS connection per request, counting the
    // requests served with the first certificate and with any other.
    let stop = Arc::new(AtomicBool::new(false));
    let on_first = Arc::new(AtomicU64::new(0));
    let on_new = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, on_first, on_new, failed, root, https, first) = (
            stop.clone(),
            on_first.clone(),
            on_new.clone(),
            failed.clone(),
            root.clone(),
            b.https,
            first.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match served_by(https, &root, "a.test").await {
                    Ok(c) if c == first => on_first.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => on_new.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed during renewal: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Traffic flows before the renewal starts (counted, not assumed from a rate: a
    // loaded machine made few requests during a quick renewal, and a total of 40
    // requests was not reached).
    let count = |n: &Arc<AtomicU64>, at_least: u64, what: &'static str| {
        let n = n.clone();
        wait_until(what, ISSUE_WITHIN, Duration::from_millis(10), move || {
            let n = n.clone();
            async move { (n.load(Ordering::Relaxed) >= at_least).then_some(()) }
        })
    };
    count(&on_first, 20, "20 requests on the first certificate").await;
    let out = proxyctl(&proxy, &["certs", "renew", "a.test"]).await;
    assert!(out.status.success(), "{out:?}");
    let (root2, https) = (root.clone(), b.https);
    let second = wait_until(
        "a new certificate for a.test",
        ISSUE_WITHIN,
        Duration::from_millis(20),
        || {
            let (root, first) = (root2.clone(), first.clone());
            async move {
                served_by(https, &root, "a.test")
                    .await
                    .ok()
                    .filter(|c| *c != first)
            }
        },
    )
    .await;
    // Traffic goes on a little on the new certificate (the bound ends a hang only).
    count(&on_new, 20, "20 requests on the new certificate").await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_ne!(first, second);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the renewal"
    );
    assert_eq!(b.pebble.orders(), 2);
    // Unknown names are refused.
    let out = proxyctl(&proxy, &["certs", "renew", "nope.test"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_full_store_orders_nothing() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "") + &one_route(&["b.test"], &a, "");
    let dir = tempfile::tempdir().unwrap();
    let root = b.pebble.root_pem().await;
    let mut proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    let first = wait_served(b.https, &root, "a.test").await;
    wait_served(b.https, &root, "b.test").await;
    assert_eq!(b.pebble.orders(), 2);
    proxy.signal(libc::SIGTERM);
    let _ = proxy.kill();
    drop(proxy);

    let proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    // Served from the store at once, the very same certificate.
    assert_eq!(served_by(b.https, &root, "a.test").await.unwrap(), first);
    served_by(b.https, &root, "b.test").await.unwrap();
    // The manager has looked at both (it logs when it knows the CA has no ARI), and
    // placed no order. Then a quiet period of ticks, to catch a late order.
    wait_until(
        "the ACME manager's first pass",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let log = proxy.log();
            async move {
                log.contains("renewing at a third of the lifetime left")
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.pebble.orders(), 2, "{}", proxy.log_tail(20));
    assert_eq!(
        account_files(proxy.certs_store()).len(),
        1,
        "the account is reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_challenge_backs_off_instead_of_looping() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    // Nothing listens on 127.0.0.2: every validation of bad.test fails.
    b.pebble.set_a("bad.test", "127.0.0.2").await.unwrap();
    let a = Backend::start("a").await;
    let routes = one_route(&["good.test"], &a, "") + &one_route(&["bad.test"], &a, "");
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    let root = b.pebble.root_pem().await;
    wait_served(b.https, &root, "good.test").await;
    let store = proxy.certs_store().to_path_buf();
    wait_until(
        "bad.test's failure recorded",
        ISSUE_WITHIN,
        Duration::from_millis(50),
        || {
            let store = store.clone();
            async move { (meta(&store, "bad.test")["failures"] == 1).then_some(()) }
        },
    )
    .await;
    let m = meta(&store, "bad.test");
    let now = certs::util::unix_now();
    let next = m["next_attempt"].as_i64().unwrap();
    assert!(
        next >= now + 50 && next <= now + 70,
        "backoff of about a minute: {m:#}"
    );
    assert!(
        m["last_error"].as_str().unwrap().contains("bad.test"),
        "{m:#}"
    );
    // Still served, by the local issuer, meanwhile.
    served_by(b.https, &proxy.ca_pem(), "bad.test")
        .await
        .unwrap();
    // good.test: 1 order; bad.test: 1 attempt = 1 order (issue 13: never two).
    let orders = b.pebble.orders();
    assert_eq!(orders, 2, "{}", b.pebble.log_tail(40));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.pebble.orders(), orders, "orders go on: a loop");

    // The backoff survives a restart (a crash loop cannot burn the rate limit).
    let _ = proxy.kill();
    drop(proxy);
    let proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    wait_served(b.https, &root, "good.test").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        b.pebble.orders(),
        orders,
        "a restart ordered again: {}",
        proxy.log_tail(20)
    );
    let out = proxyctl(&proxy, &["certs", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == "bad.test")
        .unwrap()
        .clone();
    assert_eq!(bad["failures"], 1, "{bad:#}");
    assert!(bad["last_error"].is_string());

    // A renewal that fails keeps the old certificate: good.test's validations now fail.
    let before = served_by(b.https, &root, "good.test").await.unwrap();
    b.pebble.set_a("good.test", "127.0.0.2").await.unwrap();
    let out = proxyctl(&proxy, &["certs", "renew", "good.test"]).await;
    assert!(out.status.success(), "{out:?}");
    let store = proxy.certs_store().to_path_buf();
    wait_until(
        "good.test's failed renewal recorded",
        ISSUE_WITHIN,
        Duration::from_millis(50),
        || {
            let store = store.clone();
            async move { (meta(&store, "good.test")["failures"] == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        served_by(b.https, &root, "good.test").await.unwrap(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_issuance_leaves_a_store_the_next_start_reads() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "")
        + &one_route(&["b.test"], &a, "")
        + &one_route(&["c.test"], &a, "");
    let dir = tempfile::tempdir().unwrap();
    let root = b.pebble.root_pem().await;
    let mut proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    // Killed as soon as the first order reaches the CA: the orders are mid-flight.
    wait_until(
        "a first order",
        ISSUE_WITHIN,
        Duration::from_millis(1),
        || {
            let n = b.pebble.orders();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    proxy.kill();
    drop(proxy);

    let proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    for name in ["a.test", "b.test", "c.test"] {
        // Served at once (local fallback, or ACME when that order finished first)...
        let local = served_by(b.https, &proxy.ca_pem(), name).await;
        let acme = served_by(b.https, &root, name).await;
        assert!(local.is_ok() || acme.is_ok(), "{name}: {local:?} {acme:?}");
    }
    assert!(
        !proxy.log().contains("moved aside"),
        "{}",
        proxy.log_tail(30)
    );
    // ...and the interrupted orders are in backoff, which an admin can override.
    for name in ["a.test", "b.test", "c.test"] {
        let out = proxyctl(&proxy, &["certs", "renew", name]).await;
        assert!(out.status.success(), "{out:?}");
    }
    for name in ["a.test", "b.test", "c.test"] {
        wait_served(b.https, &root, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_certificate_file_is_moved_aside_and_replaced() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "");
    let dir = tempfile::tempdir().unwrap();
    let root = b.pebble.root_pem().await;
    let mut proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    let first = wait_served(b.https, &root, "a.test").await;
    proxy.kill();
    let store = proxy.certs_store().to_path_buf();
    drop(proxy);
    // Half a chain, as a torn write by some other tool would leave it.
    let chain = store.join("certs/a.test/fullchain.pem");
    let text = std::fs::read(&chain).unwrap();
    std::fs::write(&chain, &text[..text.len() / 2]).unwrap();

    let proxy = b.proxy(&routes, "http-01").dir(dir.path()).start().await;
    let second = wait_served(b.https, &root, "a.test").await;
    assert_ne!(first, second, "a new certificate was ordered");
    let aside: Vec<_> = std::fs::read_dir(store.join("certs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("a.test.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(proxy.log().contains("moved aside"));
    assert_eq!(b.pebble.orders(), 2);
}

#[test]
fn bad_acme_flags_stop_the_daemon_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[route]]\nhosts = [\"a.test\"]\nupstreams = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    for (args, want) in [
        (
            vec!["--acme-directory", "http://insecure.example/dir"],
            "https://",
        ),
        (
            vec![
                "--acme-directory",
                "letsencrypt",
                "--acme-contact",
                "nobody",
            ],
            "e-mail",
        ),
        (
            vec!["--acme-directory", "letsencrypt", "--acme-eab-kid", "k"],
            "--acme-eab-hmac",
        ),
        (vec!["--acme-contact", "a@b.org"], "--acme-directory"),
    ] {
        let out = std::process::Command::new(tests::locate_bin("proxyd", "PROXYD_BIN"))
            .arg("--routes")
            .arg(&routes)
            .arg("--check")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
