//! ACME profiles and certificate lifetimes against the current pebble (ARI, profiles
//! with their own validity), built from `../shared/tools/pebble/` (see
//! `tests::pebble::Pebble::current`). Without that folder these tests say NOT RUN and
//! return (under `CI=true` they fail).

use std::time::Duration;

use tests::pebble::{Pebble, PebbleOptions};
use tests::Backend;

use crate::acme::{bench, meta, served_by, wait_served, Validate, ISSUE_WITHIN};
use crate::one_route;
use crate::reload::proxyctl;

const DAY90: u64 = 90 * 86_400;
const DAYS6: u64 = 6 * 86_400;

/// Pebble with a 90-day `default` and a 6-day `shortlived` profile, plus `extra`.
fn profiles(extra: &[(&'static str, u64)]) -> PebbleOptions {
    let mut p = vec![("default", DAY90), ("shortlived", DAYS6)];
    p.extend_from_slice(extra);
    PebbleOptions {
        profiles: p,
        ..Default::default()
    }
}

/// not_after - not_before of a DER certificate, in seconds (pebble: validity - 1).
fn lifetime(der: &[u8]) -> i64 {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("leaf parses");
    c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
}

fn certs_json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn group<'a>(certs: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    certs["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .unwrap_or_else(|| panic!("no group {id}: {certs:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_is_chosen_and_kept_on_renewal() {
    if Pebble::current("acme_lifetimes::a_profile_is_chosen_and_kept_on_renewal").is_none() {
        return;
    }
    let b = bench(Validate::Both, profiles(&[])).await;
    let a = Backend::start("a").await;
    let c = Backend::start("c").await;
    // a.test names its profile; c.test takes --acme-profile.
    let routes = one_route(&["a.test"], &a, "acme_profile = \"shortlived\"\n")
        + &one_route(&["c.test"], &c, "");
    let proxy = b
        .proxy(&routes, "http-01")
        .arg("--acme-profile")
        .arg("default")
        .start()
        .await;
    let root = b.pebble.root_pem().await;
    let first = wait_served(b.https, &root, "a.test").await;
    let other = wait_served(b.https, &root, "c.test").await;
    assert_eq!(lifetime(&first), DAYS6 as i64 - 1, "a.test: shortlived");
    assert_eq!(lifetime(&other), DAY90 as i64 - 1, "c.test: default");
    let store = proxy.certs_store();
    assert_eq!(meta(store, "a.test")["profile"], "shortlived");
    assert_eq!(meta(store, "c.test")["profile"], "default");

    // Shown by proxyctl certs (JSON and text).
    let certs = certs_json(&proxyctl(&proxy, &["--json", "certs"]).await);
    assert_eq!(
        group(&certs, "a.test")["profile"],
        "shortlived",
        "{certs:#}"
    );
    assert_eq!(group(&certs, "a.test")["issued_profile"], "shortlived");
    assert_eq!(group(&certs, "c.test")["profile"], "default");
    let text = proxyctl(&proxy, &["certs"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("profile shortlived"), "{text}");

    // A renewal orders the same profile again.
    let out = proxyctl(&proxy, &["certs", "renew", "a.test"]).await;
    assert!(out.status.success(), "{out:?}");
    let (root2, https) = (root.clone(), b.https);
    let second = tests::wait_until(
        "a renewed certificate for a.test",
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
    assert_eq!(lifetime(&second), DAYS6 as i64 - 1, "renewal: shortlived");
    assert_eq!(meta(store, "a.test")["profile"], "shortlived");
    assert_eq!(b.pebble.orders(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_profile_is_refused_at_start_and_at_reload() {
    if Pebble::current("acme_lifetimes::an_unknown_profile_is_refused_at_start_and_at_reload")
        .is_none()
    {
        return;
    }
    let b = bench(Validate::Both, profiles(&[])).await;
    let a = Backend::start("a").await;
    let offered = r#"it offers "default", "shortlived""#;

    // At start: a route's profile, and --acme-profile.
    let bad_route = one_route(&["a.test"], &a, "acme_profile = \"tlsserver\"\n");
    let e = b
        .proxy(&bad_route, "http-01")
        .try_start()
        .await
        .err()
        .expect("a route with an unknown profile must not start");
    let e = format!("{e:#}");
    assert!(
        e.contains(r#"ACME profile "tlsserver" is not offered"#) && e.contains(offered),
        "{e}"
    );
    let good_route = one_route(&["a.test"], &a, "acme_profile = \"shortlived\"\n");
    let e = b
        .proxy(&good_route, "http-01")
        .arg("--acme-profile")
        .arg("classic")
        .try_start()
        .await
        .err()
        .expect("an unknown --acme-profile must not start");
    let e = format!("{e:#}");
    assert!(
        e.contains("--acme-profile") && e.contains(r#""classic" is not offered"#),
        "{e}"
    );
    assert_eq!(
        b.pebble.orders(),
        0,
        "nothing ordered with a refused profile"
    );

    // At reload: rejected, the running table stays.
    let proxy = b.proxy(&good_route, "http-01").start().await;
    let root = b.pebble.root_pem().await;
    wait_served(b.https, &root, "a.test").await;
    let n = Backend::start("n").await;
    let bad = good_route.clone() + &one_route(&["new.test"], &n, "acme_profile = \"tlsserver\"\n");
    std::fs::write(proxy.routes_path(), bad).unwrap();
    let out = proxyctl(&proxy, &["reload"]).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(r#""tlsserver" is not offered"#) && said.contains(offered),
        "{said}"
    );
    // a.test still served, new.test not routed.
    served_by(b.https, &root, "a.test").await.unwrap();
    // (Once routed, the local issuer would serve it at once: no certificate, no route.)
    let local = served_by(b.https, &proxy.ca_pem(), "new.test").await;
    assert!(local.is_err(), "new.test routed after a rejected reload");
    // The same file with a profile the CA offers is taken.
    let fixed = good_route + &one_route(&["new.test"], &n, "acme_profile = \"default\"\n");
    std::fs::write(proxy.routes_path(), fixed).unwrap();
    let out = proxyctl(&proxy, &["reload"]).await;
    assert!(out.status.success(), "{out:?}");
    let cert = wait_served(b.https, &root, "new.test").await;
    assert_eq!(lifetime(&cert), DAY90 as i64 - 1);
}

/// A certificate of `life` seconds per renewal, renewed twice while a client makes one
/// new TLS connection per request (verifying against pebble's root, so an expired or
/// local certificate fails it) all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_renew_on_schedule_without_restart() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    if Pebble::current("acme_lifetimes::short_lived_certificates_renew_on_schedule_without_restart")
        .is_none()
    {
        return;
    }
    const LIFE: u64 = 60;
    let b = bench(Validate::Both, profiles(&[("minute", LIFE)])).await;
    let a = Backend::start("a").await;
    let proxy = b
        .proxy(
            &one_route(&["a.test"], &a, "acme_profile = \"minute\"\n"),
            "http-01",
        )
        .start()
        .await;
    let root = b.pebble.root_pem().await;
    let first = wait_served(b.https, &root, "a.test").await;

    // Every distinct leaf served, in order, with when it was first seen.
    type Seen = Vec<(Vec<u8>, std::time::SystemTime)>;
    let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new(vec![(
        first.clone(),
        std::time::SystemTime::now(),
    )]));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let client = {
        let (seen, stop, failed, root, https) = (
            seen.clone(),
            stop.clone(),
            failed.clone(),
            root.clone(),
            b.https,
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match served_by(https, &root, "a.test").await {
                    Ok(leaf) => {
                        let mut s = seen.lock().unwrap();
                        if s.last().is_none_or(|(l, _)| *l != leaf) {
                            s.push((leaf, std::time::SystemTime::now()));
                        }
                    }
                    Err(e) => {
                        eprintln!("request failed: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // Two renewals (the bound only ends a hang: three lifetimes).
    {
        let seen = seen.clone();
        tests::wait_until(
            "two renewals of a.test",
            Duration::from_secs(3 * LIFE),
            Duration::from_millis(100),
            move || {
                let n = seen.lock().unwrap().len();
                async move { (n >= 3).then_some(()) }
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while certificates were renewed:\n{}",
        proxy.log_tail(30)
    );
    let seen = seen.lock().unwrap().clone();
    for pair in seen.windows(2) {
        let (prev, next) = (&pair[0].0, &pair[1]);
        let (_, p) = x509_parser::parse_x509_certificate(prev).unwrap();
        let (_, n) = x509_parser::parse_x509_certificate(&next.0).unwrap();
        let renewed_at = next
            .1
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // Each renewal keeps the profile, and was served before the previous one
        // expired, after its ARI window opened (pebble: at issuance).
        assert_eq!(lifetime(&next.0), LIFE as i64 - 1);
        assert!(
            renewed_at <= p.validity().not_after.timestamp(),
            "served after expiry"
        );
        assert!(n.validity().not_before >= p.validity().not_before);
    }
    // One order per certificate: nothing ordered twice, no restart.
    assert_eq!(b.pebble.orders(), seen.len(), "{}", b.pebble.log_tail(30));
    assert!(proxy.log().contains("ACME: renewing certificate"));
    // The CA's ARI window is shown for the group.
    let certs = certs_json(&proxyctl(&proxy, &["--json", "certs"]).await);
    let g = group(&certs, "a.test");
    assert!(g["ari_window"].is_array(), "{certs:#}");
    assert_eq!(g["issued_profile"], "minute");
}

/// Review: a CA whose directory lists no profiles at all (Debian's pebble 2.4) while a
/// profile is configured, by a route or by `--acme-profile`: the start is refused with
/// an error that says so, and nothing is ordered (the profile is never dropped
/// silently to order the CA's default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_against_a_ca_without_profiles_is_refused_at_start() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let with = one_route(&["a.test"], &a, "acme_profile = \"shortlived\"\n");
    let e = b
        .proxy(&with, "http-01")
        .try_start()
        .await
        .err()
        .expect("a profile the CA cannot offer must not start");
    let e = format!("{e:#}");
    assert!(
        e.contains(r#"ACME profile "shortlived" is not offered"#)
            && e.contains("offers no profiles"),
        "{e}"
    );
    let without = one_route(&["a.test"], &a, "");
    let e = b
        .proxy(&without, "http-01")
        .arg("--acme-profile")
        .arg("classic")
        .try_start()
        .await
        .err()
        .expect("an --acme-profile the CA cannot offer must not start");
    let e = format!("{e:#}");
    assert!(
        e.contains("--acme-profile") && e.contains("offers no profiles"),
        "{e}"
    );
    assert_eq!(b.pebble.orders(), 0);
}

/// Review: a reload that changes a route's profile orders its certificate again at once
/// under the new profile (not at the next renewal), `proxyctl certs` shows it, and a
/// restart on the same store orders nothing more (the profile is kept in meta.json).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_the_profile_reorders_and_a_restart_keeps_it() {
    if Pebble::current(
        "acme_lifetimes::a_reload_changing_the_profile_reorders_and_a_restart_keeps_it",
    )
    .is_none()
    {
        return;
    }
    let b = bench(Validate::Both, profiles(&[])).await;
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let short = one_route(&["a.test"], &a, "acme_profile = \"shortlived\"\n");
    let mut proxy = b.proxy(&short, "http-01").dir(dir.path()).start().await;
    let root = b.pebble.root_pem().await;
    let first = wait_served(b.https, &root, "a.test").await;
    assert_eq!(lifetime(&first), DAYS6 as i64 - 1);

    let long = one_route(&["a.test"], &a, "acme_profile = \"default\"\n");
    std::fs::write(proxy.routes_path(), &long).unwrap();
    let out = proxyctl(&proxy, &["reload"]).await;
    assert!(out.status.success(), "{out:?}");
    let (root2, https) = (root.clone(), b.https);
    let second = tests::wait_until(
        "a.test ordered again with the new profile",
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
    assert_eq!(lifetime(&second), DAY90 as i64 - 1, "ordered with default");
    assert_eq!(meta(proxy.certs_store(), "a.test")["profile"], "default");
    let certs = certs_json(&proxyctl(&proxy, &["--json", "certs"]).await);
    assert_eq!(group(&certs, "a.test")["profile"], "default", "{certs:#}");
    assert_eq!(group(&certs, "a.test")["issued_profile"], "default");
    assert_eq!(b.pebble.orders(), 2);

    proxy.signal(libc::SIGTERM);
    let _ = proxy.kill();
    drop(proxy);
    let proxy = b.proxy(&long, "http-01").dir(dir.path()).start().await;
    assert_eq!(served_by(b.https, &root, "a.test").await.unwrap(), second);
    // The manager has looked at it once it shows the CA's ARI window (set after that
    // pass, and after any order of that pass).
    let p = &proxy;
    tests::wait_until(
        "the ACME manager's first pass after the restart",
        ISSUE_WITHIN,
        Duration::from_millis(100),
        || async move {
            let certs = certs_json(&proxyctl(p, &["--json", "certs"]).await);
            group(&certs, "a.test")["ari_window"]
                .is_array()
                .then_some(())
        },
    )
    .await;
    assert_eq!(b.pebble.orders(), 2, "{}", proxy.log_tail(20));
    let certs = certs_json(&proxyctl(&proxy, &["--json", "certs"]).await);
    assert_eq!(group(&certs, "a.test")["issued_profile"], "default");
}

/// Review: `meta.json` is a file on disk (an older version's, a hand edit, a restore):
/// whatever profile string it holds, `proxyctl certs` must not pass terminal control
/// bytes through to the admin's terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_profile_in_the_store_is_escaped_by_proxyctl_certs() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    // Every validation of a.test fails: the store's bookkeeping stays as it was.
    b.pebble.set_a("a.test", "127.0.0.2").await.unwrap();
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pending = dir.path().join("certs-store/acme/pending");
    std::fs::create_dir_all(&pending).unwrap();
    let hostile = "x\u{1b}]0;owned\u{7}\u{1b}[2J\r\nfake line";
    let m = serde_json::json!({ "names": ["a.test"], "profile": hostile });
    std::fs::write(pending.join("a.test.json"), m.to_string()).unwrap();
    let proxy = b
        .proxy(&one_route(&["a.test"], &a, ""), "http-01")
        .dir(dir.path())
        .start()
        .await;
    let p = &proxy;
    tests::wait_until(
        "a.test's failed attempt recorded",
        ISSUE_WITHIN,
        Duration::from_millis(100),
        || async move {
            let certs = certs_json(&proxyctl(p, &["--json", "certs"]).await);
            (group(&certs, "a.test")["failures"] == 1).then_some(())
        },
    )
    .await;
    let out = proxyctl(&proxy, &["certs"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'),
        "control bytes in proxyctl certs: {text:?}"
    );
    assert!(!text.contains("\nfake line"), "{text}");
}
