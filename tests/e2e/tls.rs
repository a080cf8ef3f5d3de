//! Certificates chosen by SNI, ALPN, and handshakes for names the proxy does not serve.

use http::Version;
use tests::client::{client_config, tls_connect};
use tests::{Alpn, Backend, Proxy};

use crate::one_route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_get_their_own_certificate_over_h1_and_h2() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = one_route(&["a.test"], &a, "") + &one_route(&["b.test"], &b, "");
    let proxy = Proxy::start(&routes).await;

    for (name, other, backend) in [("a.test", "b.test", "a"), ("b.test", "a.test", "b")] {
        for (alpn, want_alpn, want_version) in [
            (Alpn::H1, "http/1.1", Version::HTTP_11),
            (Alpn::H2, "h2", Version::HTTP_2),
            (Alpn::Both, "h2", Version::HTTP_2),
        ] {
            let mut conn = proxy
                .https(name, alpn)
                .await
                .unwrap_or_else(|e| panic!("TLS to {name} offering {alpn:?}: {e:#}"));
            let tls = conn.tls().unwrap().clone();
            assert_eq!(
                tls.alpn_str().as_deref(),
                Some(want_alpn),
                "ALPN for {name} offering {alpn:?}"
            );
            let sans = tls.leaf_dns_names();
            assert!(
                sans.iter().any(|s| s == name),
                "certificate served for SNI {name} has SANs {sans:?}"
            );
            assert!(
                !sans.iter().any(|s| s == other),
                "certificate served for SNI {name} also names {other}: {sans:?}"
            );

            // Two requests on the same connection: keep-alive (h1) or two streams (h2).
            for _ in 0..2 {
                let resp = conn.get(name, "/hello").await.unwrap();
                assert_eq!(resp.status, 200, "{}", resp.text());
                assert_eq!(resp.version, want_version);
                assert_eq!(resp.backend(), backend);
                assert_eq!(resp.seen_path(), "/hello");
            }
        }
    }
    assert!(a.requests() >= 6 && b.requests() >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_run_concurrently_on_one_connection() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "")).await;
    let conn = proxy.https("a.test", Alpn::H2).await.unwrap();
    let sender = conn.h2_sender().expect("h2 negotiated");

    // Ten 300 ms requests in parallel finish well before 10 x 300 ms.
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .uri(format!("https://a.test/sleep/300?i={i}"))
                .body(tests::empty())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            tests::client::read_response(resp, None).await.unwrap()
        }));
    }
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "10 concurrent streams took {took:?}"
    );
    assert_eq!(a.requests(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_handshake_fails() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "")).await;
    let config = client_config(&proxy.ca_pem(), Alpn::Both).unwrap();

    // Sanity: the served name works with the same client configuration.
    tls_connect(proxy.https_addr(), config.clone(), "a.test")
        .await
        .expect("handshake for a routed name");

    for sni in ["unknown.test", "x.a.test", "test"] {
        let result = tls_connect(proxy.https_addr(), config.clone(), sni).await;
        assert!(
            result.is_err(),
            "TLS handshake with SNI {sni} succeeded, but no route serves it"
        );
    }
    assert_eq!(a.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_certificate_serves_one_label() {
    let w = Backend::start("w").await;
    let proxy = Proxy::start(&one_route(&["*.wild.test"], &w, "")).await;

    let mut conn = proxy.https("foo.wild.test", Alpn::Both).await.unwrap();
    let sans = conn.tls().unwrap().leaf_dns_names();
    assert!(
        sans.iter()
            .any(|s| s == "*.wild.test" || s == "foo.wild.test"),
        "SANs {sans:?}"
    );
    let resp = conn.get("foo.wild.test", "/").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend(), "w");

    let config = client_config(&proxy.ca_pem(), Alpn::Both).unwrap();
    for sni in ["a.b.wild.test", "wild.test"] {
        assert!(
            tls_connect(proxy.https_addr(), config.clone(), sni)
                .await
                .is_err(),
            "a certificate valid for {sni} was served, but *.wild.test covers one label only"
        );
    }
}
