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
