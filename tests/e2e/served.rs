//! Served == stored: the daemon connects to its own HTTPS listener for each routed name
//! and compares the leaf it is served with the certificate on disk.
//!
//! - After start every name is served as stored: `proxyctl certs` says `served ok`,
//!   `proxyctl certs --check` exits 0, the mismatch gauge is 0.
//! - A certificate swapped on disk behind the daemon's back (a valid one the daemon has
//!   not read yet, or files the store's re-read rejects) is a mismatch within the check's
//!   interval: in `GET /v1/certs`, the metric, one log line, and `proxyctl certs --check`
//!   exits 1 naming it. Once the daemon serves what is stored (a reload reads the files
//!   again) it clears, with one more log line.
//! - A certificate closer to its expiry than `--expiry-threshold` fails `--check`.
//!
//! What is waited on is the admin API's state, never a fixed sleep.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tests::{http_get, wait_until, Backend, Proxy};

use crate::cert_ageing::{leaf_on_disk, try_served_leaf, Leaf};
use crate::one_route;
use crate::reload::proxyctl;

const POLL: Duration = Duration::from_millis(100);
const WITHIN: Duration = Duration::from_secs(30);

/// `GET /v1/certs` through `proxyctl --json certs`.
async fn certs_json(proxy: &Proxy) -> serde_json::Value {
    let out = proxyctl(proxy, &["--json", "certs"]).await;
    assert!(
        out.status.success(),
        "proxyctl certs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The `served` entry of `name`, once `pred` holds for it.
async fn wait_served(
    proxy: &Proxy,
    name: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(what, WITHIN, POLL, || async {
        let v = certs_json(proxy).await;
        v["served"]["names"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .filter(|n| pred(n))
            .cloned()
    })
    .await
}

async fn scrape(metrics: SocketAddr) -> String {
    let resp = wait_until("the metrics listener", WITHIN, POLL, || async {
        http_get(metrics, "monitoring", "/metrics").await.ok()
    })
    .await;
    assert_eq!(resp.status, 200);
    resp.text()
}

fn gauge(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `proxyctl certs --check ARGS`: (exit code, stdout).
async fn check(proxy: &Proxy, args: &[&str]) -> (i32, String) {
    let mut all = vec!["certs", "--check"];
    all.extend_from_slice(args);
    let out = proxyctl(proxy, &all).await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A self-signed certificate for `names` and its key, PEM: valid, but not from the
/// daemon's local CA.
fn other_certificate(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Replace a file of `certs/<id>/` the way a careless admin would not (atomically, so
/// the daemon never reads half a file; what it reads is what the test means).
fn replace(store: &Path, id: &str, file: &str, text: &str) {
    let dir = store.join("certs").join(id);
    let tmp = dir.join(format!(".{file}.test"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

async fn served(proxy: &Proxy, sni: &str) -> Leaf {
    try_served_leaf(proxy.https_addr(), sni)
        .await
        .unwrap_or_else(|e| panic!("{sni}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_equals_stored_after_start() {
    let a = Backend::start("a").await;
    let metrics = tests::free_addr();
    let routes = one_route(&["a.test", "www.a.test"], &a, "") + &one_route(&["b.test"], &a, "");
    let proxy = Proxy::builder(&routes)
        .arg("--verify-served-interval")
        .arg("1s")
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    for name in ["a.test", "www.a.test", "b.test"] {
        let n = wait_served(&proxy, name, "the first check", |n| {
            n["state"] != "unchecked"
        })
        .await;
        assert_eq!(n["state"], "match", "{n}");
        assert_eq!(n["reason"], serde_json::Value::Null, "{n}");
        assert_eq!(n["served_sha256"], n["stored_sha256"], "{n}");
        assert_eq!(n["served_sha256"].as_str().map(str::len), Some(64), "{n}");
    }
    let v = certs_json(&proxy).await;
    assert_eq!(v["served"]["interval_secs"], 1, "{v}");

    let out = proxyctl(&proxy, &["certs"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for id in ["a.test", "b.test"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}: {text}"));
        assert!(row.contains("served ok"), "{text}");
    }
    // Not a terminal: no colour codes.
    assert!(!text.contains('\x1b'), "{text:?}");

    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("certificates: OK: 3 names, 3 served == stored"),
        "{out}"
    );

    let text = scrape(metrics).await;
    assert_eq!(
        gauge(&text, "proxyd_certificate_served_mismatch{name=\"a.test\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        gauge(
            &text,
            "proxyd_certificate_served_checks_total{result=\"match\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{text}"
    );
    // The check's own connections are clean ones: no client error counted for them.
    for line in text
        .lines()
        .filter(|l| l.starts_with("proxyd_client_errors_total{"))
    {
        assert!(line.ends_with(" 0"), "{line}");
    }
    assert!(
        !proxy.log().contains("differs from the stored one"),
        "{}",
        proxy.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_a_mismatch_until_served() {
    let a = Backend::start("a").await;
    let metrics = tests::free_addr();
    let routes = one_route(&["a.test"], &a, "") + &one_route(&["b.test"], &a, "");
    let proxy = Proxy::builder(&routes)
        .arg("--verify-served-interval")
        .arg("1s")
        // The timer would read the new files again and serve them: not in this test's
        // window (a reload does it below).
        .arg("--cert-check-interval")
        .arg("1h")
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    let store = proxy.certs_store().to_path_buf();
    wait_served(&proxy, "a.test", "a first match", |n| n["state"] == "match").await;
    let before = served(&proxy, "a.test").await;

    // Behind the daemon's back: another valid certificate for a.test, key and chain.
    let (chain, key) = other_certificate(&["a.test"]);
    replace(&store, "a.test", "key.pem", &key);
    replace(&store, "a.test", "fullchain.pem", &chain);
    let swapped = leaf_on_disk(&store, "a.test");
    assert_ne!(swapped.serial, before.serial);

    let n = wait_served(&proxy, "a.test", "the mismatch", |n| {
        n["state"] == "mismatch"
    })
    .await;
    let reason = n["reason"].as_str().unwrap();
    assert!(reason.contains("certs/a.test on disk is"), "{n}");
    assert_ne!(n["served_sha256"], n["stored_sha256"], "{n}");
    // Still served: the check only looks.
    assert_eq!(served(&proxy, "a.test").await, before);
    // b.test was not touched.
    let b = wait_served(&proxy, "b.test", "b.test checked", |n| {
        n["state"] != "unchecked"
    })
    .await;
    assert_eq!(b["state"], "match", "{b}");

    let text = scrape(metrics).await;
    assert_eq!(
        gauge(&text, "proxyd_certificate_served_mismatch{name=\"a.test\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        gauge(&text, "proxyd_certificate_served_mismatch{name=\"b.test\"}"),
        Some(0.0),
        "{text}"
    );

    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a.test: MISMATCH"), "{out}");
    assert!(!out.contains("b.test"), "{out}");
    let table = proxyctl(&proxy, &["certs"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a.test") && l.contains("served MISMATCH")),
        "{table}"
    );

    // Several checks later, still one warning line: logged when it starts.
    let seen = certs_json(&proxy).await["served"]["last_run"]
        .as_u64()
        .unwrap();
    wait_until("two more checks", WITHIN, POLL, || async {
        let v = certs_json(&proxy).await;
        (v["served"]["last_run"].as_u64()? >= seen + 2).then_some(())
    })
    .await;
    let warnings = proxy
        .log()
        .matches("served certificate differs from the stored one")
        .count();
    assert_eq!(warnings, 1, "{}", proxy.log_tail(30));

    // A reload reads the changed files: the daemon serves what is stored again, and
    // the check says so (it runs after every change of what is served).
    // (This one also adds a route; one that changes nothing reads the store too:
    // cert_ageing::a_reload_with_unchanged_routes_serves_files_replaced_in_place.)
    let more = routes.clone() + &one_route(&["c.test"], &a, "");
    std::fs::write(proxy.routes_path(), more).unwrap();
    let out = proxyctl(&proxy, &["reload"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_served(&proxy, "a.test", "the mismatch to clear", |n| {
        n["state"] == "match"
    })
    .await;
    assert_eq!(served(&proxy, "a.test").await.serial, swapped.serial);
    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        proxy
            .log()
            .contains("served certificate is the stored one again"),
        "{}",
        proxy.log_tail(30)
    );
    let text = scrape(metrics).await;
    assert_eq!(
        gauge(&text, "proxyd_certificate_served_mismatch{name=\"a.test\"}"),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_store_rejects_are_a_lasting_mismatch() {
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--verify-served-interval")
        .arg("1s")
        // The timer re-reads the store every 200 ms: the broken files are read (and
        // rejected) long before the check looks.
        .arg("--cert-check-interval")
        .arg("200ms")
        .start()
        .await;
    let store = proxy.certs_store().to_path_buf();
    wait_served(&proxy, "a.test", "a first match", |n| n["state"] == "match").await;
    let before = served(&proxy, "a.test").await;

    // A chain whose key is not key.pem: the re-read refuses it, the old copy stays
    // served from memory, and what is on disk is not what is served.
    let (chain, _key) = other_certificate(&["a.test"]);
    replace(&store, "a.test", "fullchain.pem", &chain);

    let n = wait_served(&proxy, "a.test", "the mismatch", |n| {
        n["state"] == "mismatch"
    })
    .await;
    assert!(
        n["reason"]
            .as_str()
            .unwrap()
            .contains("certs/a.test on disk is"),
        "{n}"
    );
    assert_eq!(served(&proxy, "a.test").await, before);
    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a.test: MISMATCH"), "{out}");

    // It lasts: the timer keeps the old copy served, the check keeps finding it.
    let first = n["checked_at"].as_u64().unwrap();
    let later = wait_served(&proxy, "a.test", "a later check", |n| {
        n["checked_at"].as_u64().is_some_and(|t| t > first)
    })
    .await;
    assert_eq!(later["state"], "mismatch", "{later}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_closer_to_expiry_than_the_threshold_fails_the_check() {
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--verify-served-interval")
        .arg("1s")
        .arg("--local-cert-lifetime")
        .arg("1h")
        .start()
        .await;
    wait_served(&proxy, "a.test", "a first match", |n| n["state"] == "match").await;

    // An hour's certificate: fine against the default (an eighth of its lifetime) and
    // against 30 minutes, not against 2 hours.
    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(&proxy, &["--expiry-threshold", "30m"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(&proxy, &["--expiry-threshold", "2h"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("a.test: EXPIRING: certificate a.test expires in"),
        "{out}"
    );
    assert!(!out.contains("MISMATCH"), "{out}");

    // --json for scripts: the same verdict.
    let out = proxyctl(
        &proxy,
        &["--json", "certs", "--check", "--expiry-threshold", "2h"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(1), "{v}");

    // A threshold without --check is a usage error.
    let out = proxyctl(&proxy, &["certs", "--expiry-threshold", "2h"]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// The check's own connections come from loopback like any client's and count against
/// `--max-conns-per-ip`: a cap below the check's parallelism must not make the daemon
/// refuse itself and report its names unreachable (a false alarm that fails
/// `proxyctl certs --check` every interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_stays_under_a_small_max_conns_per_ip() {
    check_under_cap("2").await;
}

/// The smallest cap: one connection at a time, each opened only once the one before is
/// closed on both sides (else the daemon would still count it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_stays_under_a_max_conns_per_ip_of_one() {
    check_under_cap("1").await;
}

async fn check_under_cap(cap: &str) {
    let a = Backend::start("a").await;
    let names: Vec<String> = (0..6).map(|i| format!("n{i}.test")).collect();
    let routes: String = names
        .iter()
        .map(|n| one_route(&[n.as_str()], &a, ""))
        .collect();
    let proxy = Proxy::builder(&routes)
        .arg("--verify-served-interval")
        .arg("1s")
        .arg("--max-conns-per-ip")
        .arg(cap)
        .start()
        .await;
    // Two complete runs, so that the second cannot be the first's leftovers.
    for _ in 0..2 {
        let first = certs_json(&proxy).await["served"]["last_run"].as_u64();
        wait_until("a run of the check", WITHIN, POLL, || async {
            let v = certs_json(&proxy).await;
            (v["served"]["last_run"].as_u64() > first).then_some(())
        })
        .await;
    }
    let v = certs_json(&proxy).await;
    for n in v["served"]["names"].as_array().unwrap() {
        assert_eq!(n["state"], "match", "{n}");
    }
    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 0, "{out}");
}

/// The path production takes: `--verify-served-interval` not given (the harness turns
/// the check off for every other test), so its default (5 min) applies and the first run
/// comes at start. Over two listeners, one of them IPv6 loopback, and a wildcard route
/// (checked with a name under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_interval_checks_at_start_over_ipv6_and_a_wildcard() {
    let a = Backend::start("a").await;
    let v6 = std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = one_route(&["a.test"], &a, "") + &one_route(&["*.w.test"], &a, "");
    let metrics = tests::free_addr();
    let proxy = Proxy::builder(&routes)
        .served_check_default()
        .arg("--https")
        .arg(v6.to_string())
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    for name in ["a.test", "*.w.test"] {
        let n = wait_served(&proxy, name, "the first check", |n| {
            n["state"] != "unchecked"
        })
        .await;
        assert_eq!(n["state"], "match", "{n}");
    }
    let v = certs_json(&proxy).await;
    assert_eq!(v["served"]["interval_secs"], 300, "{v}");
    // Both listeners were asked, for both names: 4 connections that matched.
    let text = proxy.log();
    assert!(!text.contains("served == stored not checked"), "{text}");
    let m = scrape(metrics).await;
    assert!(
        gauge(
            &m,
            "proxyd_certificate_served_checks_total{result=\"match\"}"
        )
        .is_some_and(|n| n >= 4.0),
        "{m}"
    );
    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 served == stored"), "{out}");
}

/// A routed name for which the daemon holds no certificate at all (no local issuer, no
/// ACME, nothing in the store) is served with no TLS for it: `proxyctl certs --check`,
/// which monitoring relies on, must not call that OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_name_without_a_certificate_fails_the_check() {
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["bare.test"], &a, ""))
        .local_issuer(false)
        .arg("--verify-served-interval")
        .arg("1s")
        .start()
        .await;
    let (code, out) = check(&proxy, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bare.test: NO CERTIFICATE"), "{out}");
}
