//! Issue 13: what an attempt costs at the CA. One new order per attempt (a failed
//! challenge type does not buy a second order: the next attempt uses the other type),
//! every order recorded in the store's ledger before it is sent, and the CA's
//! `rateLimited` answer with its Retry-After obeyed, across a restart too.
//!
//! Orders are counted independently of proxyd: from pebble's log, and by
//! [`AcmeFront`], a front before pebble that answers newOrder with `rateLimited` while
//! told to.

use std::path::Path;
use std::time::Duration;

use tests::acme_front::AcmeFront;
use tests::pebble::PebbleOptions;
use tests::{free_addr, wait_until, Backend};

use crate::acme::{bench, meta, wait_served, Validate, ISSUE_WITHIN};
use crate::metrics::scrape;
use crate::one_route;
use crate::reload::proxyctl;

/// The store's ledger (there is one account, so one file).
fn ledger(store: &Path) -> serde_json::Value {
    let dir = store.join("acme").join("ledger");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap()
}

fn outcomes(ledger: &serde_json::Value) -> Vec<String> {
    ledger["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_failures(store: &Path, id: &str, n: u64) {
    let store = store.to_path_buf();
    let id = id.to_string();
    wait_until(
        &format!("{id}: {n} failure(s) recorded"),
        ISSUE_WITHIN,
        Duration::from_millis(50),
        || {
            let (store, id) = (store.clone(), id.clone());
            async move { (meta(&store, &id)["failures"] == n).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_challenge_type_costs_one_order_and_the_next_attempt_uses_the_other() {
    // HTTP-01 asked for, but pebble cannot reach it; TLS-ALPN-01 works.
    let b = bench(Validate::OnlyTlsAlpn01, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let metrics = free_addr();
    let proxy = b
        .proxy(&one_route(&["a.test"], &a, ""), "http-01")
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    let store = proxy.certs_store().to_path_buf();
    wait_failures(&store, "a.test", 1).await;
    // One attempt, one order (pebble's own count), recorded in the ledger.
    assert_eq!(b.pebble.orders(), 1, "{}", b.pebble.log_tail(30));
    let m = meta(&store, "a.test");
    assert_eq!(m["last_failed_challenge"], "http-01", "{m:#}");
    let l = ledger(&store);
    assert_eq!(outcomes(&l), ["failed"], "{l:#}");
    assert_eq!(l["orders_total"], 1, "{l:#}");
    assert_eq!(l["failed_validations"][0]["name"], "a.test", "{l:#}");
    assert_eq!(l["orders"][0]["names"], serde_json::json!(["a.test"]));
    // No second order within the attempt, nor a loop (the backoff is a minute).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.pebble.orders(), 1, "{}", proxy.log_tail(20));

    // The next attempt (forced here, rather than a minute of backoff) starts with
    // TLS-ALPN-01: one more order, and the certificate.
    let out = proxyctl(&proxy, &["certs", "renew", "a.test"]).await;
    assert!(out.status.success(), "{out:?}");
    let root = b.pebble.root_pem().await;
    wait_served(b.https, &root, "a.test").await;
    assert_eq!(b.pebble.orders(), 2, "{}", b.pebble.log_tail(30));
    assert!(
        proxy.log().contains("challenge=tls-alpn-01"),
        "{}",
        proxy.log_tail(30)
    );
    let l = ledger(&store);
    assert_eq!(outcomes(&l), ["failed", "issued"], "{l:#}");
    assert_eq!(l["orders_total"], 2, "{l:#}");
    assert_eq!(meta(&store, "a.test")["failures"], 0);

    // Counted in the admin view and the metrics.
    let out = proxyctl(&proxy, &["certs", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["acme"]["orders_placed"], 2, "{v:#}");
    assert_eq!(v["acme"]["orders_recorded"], 2, "{v:#}");
    let s = scrape(metrics).await;
    assert_eq!(s.get("proxyd_acme_orders_placed_total", &[]), 2.0);
    assert_eq!(s.get("proxyd_acme_orders_recorded", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_answer_holds_until_retry_after_across_a_restart() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let front = AcmeFront::start(&b.pebble).await;
    // Longer than the first backoff (60-66 s), so the hold is the CA's, not ours.
    const RETRY_AFTER: i64 = 75;
    front.rate_limit(Some(&RETRY_AFTER.to_string()));
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "");
    let dir = tempfile::tempdir().unwrap();
    let directory = front.directory_url();
    let metrics = free_addr();
    let start = || {
        b.proxy_with_directory(&routes, "http-01", &directory)
            .dir(dir.path())
            .arg("--metrics")
            .arg(metrics.to_string())
            .start()
    };
    let mut proxy = start().await;
    let store = proxy.certs_store().to_path_buf();
    let before = certs::util::unix_now();
    wait_failures(&store, "a.test", 1).await;
    let m = meta(&store, "a.test");
    let until = m["rate_limited_until"]
        .as_i64()
        .unwrap_or_else(|| panic!("{m:#}"));
    let after = certs::util::unix_now();
    assert!(
        until >= before + RETRY_AFTER && until <= after + RETRY_AFTER,
        "the hold is the CA's Retry-After ({RETRY_AFTER} s): {m:#}"
    );
    assert_eq!(m["next_attempt"].as_i64(), Some(until), "{m:#}");
    assert!(
        m["last_error"].as_str().unwrap().contains("rate limited"),
        "{m:#}"
    );
    assert_eq!((front.new_orders(), front.limited_answers()), (1, 1));
    // A refused order is no order: the ledger does not count it, and keeps the hold.
    let l = ledger(&store);
    assert_eq!(l["orders_total"], 0, "{l:#}");
    assert_eq!(l["holds"][0]["until"].as_i64(), Some(until), "{l:#}");

    // Not even a forced renewal orders while the hold lasts.
    let out = proxyctl(&proxy, &["certs", "renew", "a.test"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = proxyctl(&proxy, &["certs"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("held by the CA's rate limit until") && text.contains("rate limited"),
        "{text}"
    );

    // The CA would answer now, but the hold persists across a restart.
    front.forward();
    let _ = proxy.kill();
    drop(proxy);
    let proxy = start().await;
    // Forced, so the persisted backoff (also `until`) cannot be what holds it: only
    // the hold read back from the store does.
    let out = proxyctl(&proxy, &["certs", "renew", "a.test"]).await;
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        front.new_orders(),
        1,
        "ordered during the hold: {}",
        proxy.log_tail(20)
    );
    let out = proxyctl(&proxy, &["certs", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["groups"][0]["rate_limited_until"].as_i64(),
        Some(until),
        "{v:#}"
    );
    let held = scrape(metrics)
        .await
        .get("proxyd_acme_rate_limited_seconds", &[("cert", "a.test")]);
    assert!(held > 0.0 && held <= RETRY_AFTER as f64, "{held}");

    // After it, the order goes through.
    let root = b.pebble.root_pem().await;
    let left = (until - certs::util::unix_now()).max(0) as u64;
    tokio::time::timeout(
        Duration::from_secs(left) + ISSUE_WITHIN,
        wait_until_served(b.https, &root),
    )
    .await
    .expect("a.test issued after the hold");
    assert!(
        certs::util::unix_now() >= until,
        "issued before the hold ended"
    );
    assert_eq!(front.new_orders(), 2, "{}", proxy.log_tail(20));
    let l = ledger(proxy.certs_store());
    assert_eq!(outcomes(&l), ["issued"], "{l:#}");
    assert_eq!(meta(proxy.certs_store(), "a.test")["failures"], 0);
}

/// [`wait_served`] without its own deadline (the caller's is longer).
async fn wait_until_served(https: std::net::SocketAddr, root: &str) {
    loop {
        if crate::acme::served_by(https, root, "a.test").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_budget_refuses_an_order_the_ca_would_refuse() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "") + &one_route(&["b.example.org"], &a, "");
    // The ledger on disk before start: a.test was issued 5 times in the last days (the
    // CA's limit per identical set of names in 7 days), the oldest 6 days ago;
    // example.org counts 2 certificates (one of them an exempt ARI replacement).
    let dir = tempfile::tempdir().unwrap();
    let now = certs::util::unix_now();
    let day = 86_400;
    let slug: String = b
        .pebble
        .directory_url()
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let order = |at: i64, names: &[&str], replaces: bool| {
        serde_json::json!({
            "at": at, "id": format!("seed{at}"), "cert": names[0], "names": names,
            "replaces": replaces, "profile": null, "outcome": "issued",
        })
    };
    let mut orders: Vec<serde_json::Value> = (0..5)
        .map(|i| order(now - 6 * day + i * 3600, &["a.test"], false))
        .collect();
    orders.push(order(now - day, &["www.example.org"], false));
    orders.push(order(now - day, &["example.org"], true));
    let seeded = serde_json::json!({
        "orders": orders, "failed_validations": [], "holds": [], "orders_total": 7,
    });
    let ledger_dir = dir.path().join("certs-store/acme/ledger");
    std::fs::create_dir_all(&ledger_dir).unwrap();
    std::fs::write(ledger_dir.join(format!("{slug}.json")), seeded.to_string()).unwrap();

    let metrics = free_addr();
    let proxy = b
        .proxy(&routes, "http-01")
        .dir(dir.path())
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    let root = b.pebble.root_pem().await;
    // b.example.org fits and is issued; a.test is refused before any order.
    wait_served(b.https, &root, "b.example.org").await;
    let store = proxy.certs_store().to_path_buf();
    let m = wait_until(
        "a.test refused by the budget",
        ISSUE_WITHIN,
        Duration::from_millis(50),
        || {
            let store = store.clone();
            async move {
                let m = meta(&store, "a.test");
                m["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("local budget"))
                    .then_some(m)
            }
        },
    )
    .await;
    let e = m["last_error"].as_str().unwrap();
    assert!(e.contains("5 certificates for a.test in 7d"), "{m:#}");
    // Scheduled when the oldest of the five leaves the window, not retried in a loop.
    assert_eq!(
        m["next_attempt"].as_i64(),
        Some(now - 6 * day + 7 * day),
        "{m:#}"
    );
    assert_eq!(
        m["failures"], 0,
        "a refusal is not a failure at the CA: {m:#}"
    );
    // Pebble saw one order: b.example.org's.
    assert_eq!(b.pebble.orders(), 1, "{}", b.pebble.log_tail(20));
    // Forced, it is refused the same way.
    let out = proxyctl(&proxy, &["certs", "renew", "a.test"]).await;
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.pebble.orders(), 1, "{}", proxy.log_tail(20));

    // The budget in proxyctl certs and the metrics.
    let out = proxyctl(&proxy, &["certs"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("budget: account orders 1/300 per 3h")
            && text.contains("example.org certificates 2/50 per 7d")
            && text.contains("a.test certificates 5/50 per 7d")
            && text.contains("local budget"),
        "{text}"
    );
    let s = scrape(metrics).await;
    assert_eq!(
        s.get("proxyd_acme_budget_used", &[("scope", "account")]),
        1.0
    );
    assert_eq!(
        s.get("proxyd_acme_budget_used", &[("scope", "example.org")]),
        2.0
    );
    assert_eq!(
        s.get("proxyd_acme_budget_used", &[("scope", "a.test")]),
        5.0
    );

    // The preflight says the same before any order: a.test's budget is spent (until the
    // oldest order leaves the window), b.example.org's is not.
    let out = proxyctl(
        &proxy,
        &["certs", "preflight", "--json", "a.test", "b.example.org"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let budget = |name: &str| -> serde_json::Value {
        v["names"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| {
                n["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["check"] == "budget")
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no budget check for {name}: {v:#}"))
    };
    let spent = budget("a.test");
    assert_eq!(spent["result"], "fail", "{v:#}");
    let detail = spent["detail"].as_str().unwrap();
    assert!(
        detail.contains("5 certificates for a.test in 7d"),
        "{detail}"
    );
    let from = time::OffsetDateTime::from_unix_timestamp(now - 6 * day + 7 * day).unwrap();
    assert!(
        detail.contains(&format!(
            "{}-{:02}-{:02}T",
            from.year(),
            from.month() as u8,
            from.day()
        )),
        "{detail}"
    );
    assert_eq!(budget("b.example.org")["result"], "ok", "{v:#}");
}
