//! The plain-http listener: 308 to https, except ACME HTTP-01 challenges.

use http::Method;
use tests::{request, Backend, Proxy};

use crate::one_route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_308_with_path_and_query_intact() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test", "*.wild.test"], &a, "")).await;
    let port = proxy.https_addr().port();

    let cases = [
        ("a.test", "/"),
        ("a.test", "/some/path?x=1&y=%20z"),
        ("a.test", "/deep/er/?q"),
        ("foo.wild.test", "/w?k=v"),
    ];
    for (host, path) in cases {
        let mut conn = proxy.http().await.unwrap();
        for method in [Method::GET, Method::POST, Method::HEAD] {
            let resp = conn
                .send(request(method.clone(), host, path, tests::empty()))
                .await
                .unwrap();
            assert_eq!(
                resp.status,
                308,
                "{method} http://{host}{path}: {}",
                resp.text()
            );
            assert_eq!(
                resp.header("location").as_deref(),
                Some(format!("https://{host}:{port}{path}").as_str()),
                "{method} http://{host}{path}"
            );
        }
    }
    // Host header with the http port: the redirect names the https port instead.
    let host = format!("a.test:{}", proxy.http_addr().port());
    let resp = tests::http_get(proxy.http_addr(), &host, "/p")
        .await
        .unwrap();
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location").unwrap(),
        format!("https://a.test:{port}/p")
    );
    assert_eq!(a.requests(), 0, "plain http reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_challenge_path_is_not_redirected() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "")).await;

    for path in [
        "/.well-known/acme-challenge/x",
        "/.well-known/acme-challenge/unknown-token-123",
    ] {
        let resp = tests::http_get(proxy.http_addr(), "a.test", path)
            .await
            .unwrap();
        assert_eq!(
            resp.status,
            404,
            "{path}: {} {:?}",
            resp.text(),
            resp.header("location")
        );
        assert_eq!(resp.header("location"), None);
    }
    // Its neighbours are redirected as usual.
    let resp = tests::http_get(proxy.http_addr(), "a.test", "/.well-known/other")
        .await
        .unwrap();
    assert_eq!(resp.status, 308);
    assert_eq!(a.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_route_www_to_apex_301_keeps_path() {
    let a = Backend::start("a").await;
    let routes = one_route(&["a.test"], &a, "")
        + r#"
[[redirect]]
hosts = ["www.a.test"]
to = "https://a.test"
keep_path = true
status = 301

[[redirect]]
hosts = ["a.test"]
path = "/old"
to = "/new/"
status = 302
"#;
    let proxy = Proxy::start(&routes).await;

    for alpn in [tests::Alpn::H1, tests::Alpn::H2] {
        let mut conn = proxy.https("www.a.test", alpn).await.unwrap();
        for (path, location) in [
            ("/", "https://a.test/"),
            ("/p/q?x=1&y=2", "https://a.test/p/q?x=1&y=2"),
        ] {
            let resp = conn.get("www.a.test", path).await.unwrap();
            assert_eq!(
                resp.status,
                301,
                "{alpn:?} www.a.test{path}: {}",
                resp.text()
            );
            assert_eq!(
                resp.header("location").as_deref(),
                Some(location),
                "{alpn:?} www.a.test{path}"
            );
        }

        // A path redirect on the routed host, without keep_path.
        let mut conn = proxy.https("a.test", alpn).await.unwrap();
        let resp = conn.get("a.test", "/old/thing?z").await.unwrap();
        assert_eq!(resp.status, 302, "{}", resp.text());
        let location = resp.header("location").unwrap();
        assert!(
            location == "/new/"
                || location.starts_with("https://a.test") && location.ends_with("/new/"),
            "Location {location}"
        );
        // Beside it, the route still proxies.
        let resp = conn.get("a.test", "/older").await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.backend(), "a");
    }
}
