//! Headers the proxy adds, removes and replaces, in both directions.

use std::time::Duration;

use http::Method;
use tests::{request, Alpn, Backend, Proxy};

use crate::one_route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_forwarded_headers_and_not_the_clients_forged_ones() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "")).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        let mut conn = proxy.https("a.test", alpn).await.unwrap();
        let mut req = request(Method::GET, "a.test", "/who", tests::empty());
        let h = req.headers_mut();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "7.7.7.7, 8.8.8.8".parse().unwrap());
        h.insert("x-real-ip", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        h.insert("x-forwarded-host", "evil.test".parse().unwrap());
        h.insert(
            "forwarded",
            "for=6.6.6.6;proto=http;host=evil.test".parse().unwrap(),
        );
        let resp = conn.send(req).await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());

        let ctx = format!("over {alpn:?}: upstream saw {}", resp.json()["headers"]);
        assert_eq!(resp.seen_header("x-forwarded-for"), ["127.0.0.1"], "{ctx}");
        assert_eq!(resp.seen_header("x-real-ip"), ["127.0.0.1"], "{ctx}");
        assert_eq!(resp.seen_header("x-forwarded-proto"), ["https"], "{ctx}");
        assert_eq!(resp.seen_header("x-forwarded-host"), ["a.test"], "{ctx}");
        let forwarded = resp.seen_header("forwarded");
        assert_eq!(forwarded.len(), 1, "{ctx}");
        let forwarded = forwarded[0].to_ascii_lowercase();
        assert!(
            forwarded.contains("for=127.0.0.1") || forwarded.contains("for=\"127.0.0.1\""),
            "{ctx}"
        );
        assert!(forwarded.contains("proto=https"), "{ctx}");
        assert!(
            forwarded.contains("host=a.test") || forwarded.contains("host=\"a.test\""),
            "{ctx}"
        );
        for forged in ["6.6.6.6", "7.7.7.7", "8.8.8.8", "evil.test"] {
            assert!(
                !resp.json()["headers"].to_string().contains(forged),
                "forged {forged} reached the upstream {ctx}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "")).await;

    // Exact bytes, so nothing in a client library adds or drops a header.
    let req = "GET /hop HTTP/1.1\r\n\
               Host: a.test\r\n\
               Connection: close, X-Secret-Hop\r\n\
               X-Secret-Hop: must-not-pass\r\n\
               Keep-Alive: timeout=5, max=100\r\n\
               TE: gzip\r\n\
               Proxy-Connection: keep-alive\r\n\
               Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
               X-End-To-End: passes\r\n\
               \r\n";
    let raw = tests::raw_tls(
        proxy.https_addr(),
        &proxy.ca_pem(),
        "a.test",
        req.as_bytes(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let json_start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let json_end = body.rfind('}').unwrap();
    let seen: serde_json::Value = serde_json::from_str(&body[json_start..=json_end]).unwrap();
    let headers = seen["headers"].as_object().unwrap();

    assert_eq!(
        headers["x-end-to-end"][0], "passes",
        "upstream saw {headers:?}"
    );
    for hop in ["x-secret-hop", "keep-alive", "te", "proxy-connection"] {
        assert!(
            !headers.contains_key(hop),
            "hop-by-hop header {hop} reached the upstream: {headers:?}"
        );
    }
    if let Some(conn) = headers.get("connection") {
        assert!(
            !conn
                .to_string()
                .to_ascii_lowercase()
                .contains("x-secret-hop"),
            "Connection options reached the upstream: {conn}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_on_https_responses_only() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let routes = one_route(&["a.test"], &a, "https_redirect = false")
        + &one_route(
            &["b.test"],
            &b,
            "hsts_include_subdomains = true\nhsts_max_age = \"1d\"",
        )
        + &one_route(&["c.test"], &c, "hsts = false");
    let proxy = Proxy::start(&routes).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        let resp = proxy
            .https("a.test", alpn)
            .await
            .unwrap()
            .get("a.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("strict-transport-security").as_deref(),
            Some("max-age=31536000"),
            "default HSTS over {alpn:?}"
        );
        // Also on error statuses the upstream answers.
        let resp = proxy
            .https("a.test", alpn)
            .await
            .unwrap()
            .get("a.test", "/status/404")
            .await
            .unwrap();
        assert_eq!(resp.status, 404);
        assert!(resp.header("strict-transport-security").is_some());

        let resp = proxy
            .https("b.test", alpn)
            .await
            .unwrap()
            .get("b.test", "/")
            .await
            .unwrap();
        assert_eq!(
            resp.header("strict-transport-security").as_deref(),
            Some("max-age=86400; includeSubDomains")
        );

        let resp = proxy
            .https("c.test", alpn)
            .await
            .unwrap()
            .get("c.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("strict-transport-security"),
            None,
            "hsts = false"
        );
    }

    // Never over plain http (RFC 6797 7.2), neither proxied nor redirected.
    let resp = tests::http_get(proxy.http_addr(), "a.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("strict-transport-security"), None);
    let resp = tests::http_get(proxy.http_addr(), "b.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 308);
    assert_eq!(resp.header("strict-transport-security"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_headers_are_set_and_removed() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
[defaults]
response_headers = {{ "X-Frame-Options" = "DENY", "X-Default-Only" = "d" }}
request_headers = {{ "X-Env" = "default" }}

{}"#,
        one_route(
            &["a.test"],
            &a,
            r#"request_headers = { "X-Env" = "test", "User-Agent" = "" }
response_headers = { "X-Default-Only" = "route", "X-Backend" = "", "X-Extra" = "1" }"#
        )
    );
    let proxy = Proxy::start(&routes).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        let mut conn = proxy.https("a.test", alpn).await.unwrap();
        let mut req = request(Method::GET, "a.test", "/h", tests::empty());
        req.headers_mut().insert("x-env", "prod".parse().unwrap());
        req.headers_mut()
            .insert("user-agent", "test-client/1".parse().unwrap());
        let resp = conn.send(req).await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());

        let seen = resp.json()["headers"].clone();
        assert_eq!(resp.seen_header("x-env"), ["test"], "upstream saw {seen}");
        assert!(
            resp.seen_header("user-agent").is_empty(),
            "upstream saw {seen}"
        );

        assert_eq!(resp.header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(resp.header("x-default-only").as_deref(), Some("route"));
        assert_eq!(resp.header("x-extra").as_deref(), Some("1"));
        assert_eq!(
            resp.header(tests::BACKEND_HEADER),
            None,
            "response_headers X-Backend = \"\" should remove the upstream's header"
        );
    }
}
