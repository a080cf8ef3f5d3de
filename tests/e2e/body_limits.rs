//! Request bodies: streamed without buffering, and refused over `max_body`.

use std::time::Duration;

use http::Method;
use tests::{request, Alpn, Backend, Proxy};

use crate::one_route;

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_through_with_bounded_memory() {
    let sink = Backend::start("sink").await;
    let proxy = Proxy::start(&one_route(&["up.test"], &sink, "max_body = \"unlimited\"")).await;
    let before = proxy.mem();

    let mut conn = proxy.https("up.test", Alpn::H1).await.unwrap();
    conn.timeout = Duration::from_secs(600);
    let started = std::time::Instant::now();
    let resp = conn
        .send(request(
            Method::POST,
            "up.test",
            "/upload",
            tests::zeros(GIB),
        ))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["body_len"], GIB, "{}", resp.text());
    assert_eq!(sink.body_bytes(), GIB);

    let after = proxy.mem();
    eprintln!(
        "1 GiB upload in {took:?} ({:.0} MiB/s); proxyd RSS {} KiB before, {} KiB after, peak {} KiB",
        GIB as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        before.rss_kib,
        after.rss_kib,
        after.hwm_kib
    );
    assert!(
        after.hwm_kib < 100 * 1024,
        "proxyd's peak RSS {} KiB is over 100 MiB: the body was buffered",
        after.hwm_kib
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_max_body_gets_413_and_nothing_reaches_upstream() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "max_body = \"10k\"")).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        // At the limit: passes.
        let mut conn = proxy.https("a.test", alpn).await.unwrap();
        let resp = conn
            .send(request(
                Method::POST,
                "a.test",
                "/ok",
                tests::zeros(10 * 1024),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{alpn:?}: {}", resp.text());
        assert_eq!(resp.json()["body_len"], 10 * 1024);

        let before = a.requests();
        let mut conn = proxy.https("a.test", alpn).await.unwrap();
        let resp = conn
            .send(request(
                Method::POST,
                "a.test",
                "/big",
                tests::zeros(10 * 1024 + 1),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status, 413, "{alpn:?}: {}", resp.text());
        assert_eq!(
            a.requests(),
            before,
            "a request over the limit reached the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_max_body_gets_413() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "max_body = \"10k\"")).await;

    // Under the limit without a length: passes.
    let mut conn = proxy.https("a.test", Alpn::H1).await.unwrap();
    let resp = conn
        .send(request(
            Method::POST,
            "a.test",
            "/ok",
            tests::zeros_chunked(8 * 1024),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["body_len"], 8 * 1024);

    // Over it: 413, and the upstream never gets a whole body.
    let mut conn = proxy.https("a.test", Alpn::H1).await.unwrap();
    let resp = conn
        .send(request(
            Method::POST,
            "a.test",
            "/big",
            tests::zeros_chunked(64 * 1024),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(
        a.body_bytes() < 8 * 1024 + 64 * 1024,
        "the upstream received the whole over-limit body"
    );
}
