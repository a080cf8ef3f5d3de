//! Health checks: an upstream that goes away gets no traffic, and gets it again when back.

use std::collections::HashMap;
use std::time::Duration;

use tests::{Alpn, Backend, Conn, Proxy};

use crate::upstreams;

/// One request through the proxy; the backend that answered. Any failure fails the test.
async fn one(conn: &mut Option<Conn>, proxy: &Proxy, phase: &str, n: usize) -> String {
    if conn.is_none() {
        *conn = Some(proxy.https("h.test", Alpn::H1).await.unwrap());
    }
    let resp = match conn.as_mut().unwrap().get("h.test", "/ping").await {
        Ok(r) => r,
        Err(e) => panic!("{phase}: request #{n} failed: {e:#}"),
    };
    assert_eq!(resp.status, 200, "{phase}: request #{n}: {}", resp.text());
    // Alternate between keep-alive and fresh client connections.
    if n.is_multiple_of(2) {
        *conn = None;
    }
    resp.backend()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_while_traffic_flows() {
    let mut a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = format!(
        "[defaults]\nhealth_check_interval = \"1s\"\n\n[[route]]\nhosts = [\"h.test\"]\nupstreams = {}\n",
        upstreams(&[&a, &b])
    );
    let proxy = Proxy::start(&routes).await;
    let mut conn = None;
    let mut n = 0;

    // Both serve.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not both upstreams got traffic: {seen:?}"
        );
        n += 1;
        *seen
            .entry(one(&mut conn, &proxy, "both up", n).await)
            .or_default() += 1;
    }

    // Kill a; for three health-check intervals every request still succeeds, on b.
    a.stop().await;
    let a_requests = a.requests();
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut after_kill = 0;
    while tokio::time::Instant::now() < until {
        n += 1;
        after_kill += 1;
        let who = one(&mut conn, &proxy, "a stopped", n).await;
        assert_eq!(
            who, "b",
            "request #{n} answered by {who} while a is stopped"
        );
        // Pace the traffic (this is load, not synchronisation).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(after_kill > 20, "only {after_kill} requests in 3 s");
    assert_eq!(a.requests(), a_requests);

    // Restart a on the same port: it gets traffic again, and nothing fails meanwhile.
    a.start_again().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        n += 1;
        if one(&mut conn, &proxy, "a restarted", n).await == "a" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a restarted but got no request within 15 s (health_check_interval = 1s)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.requests() > a_requests);
}
