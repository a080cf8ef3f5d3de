//! Regression: paths the upstream reads differently from the proxy. Before
//! `routes::normalize_path`, `/x/../admin` was routed by its text to the route of `/`,
//! whose upstream resolved it to `/admin`: the `allow` of the `/admin` route was skipped.
//! (Found with the `path` fuzz target of proxy/routes/fuzz.)

use std::time::Duration;

use http::{Method, Request};
use tests::{raw_tls, Alpn, Backend, Proxy};

use super::status_of;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_escapes_cannot_route_around_a_restricted_path() {
    let public = Backend::start("public").await;
    let admin = Backend::start("admin").await;
    let routes = format!(
        "[[route]]\nhosts = [\"a.test\"]\nupstreams = [\"{}\"]\n\n\
         [[route]]\nhosts = [\"a.test\"]\npath = \"/admin\"\nupstreams = [\"{}\"]\nallow = [\"10.0.0.0/8\"]\n",
        public.addr(),
        admin.addr()
    );
    let proxy = Proxy::start(&routes).await;

    // (path as sent, status, path the public upstream sees when it is 200)
    let cases: [(&str, u16, Option<&str>); 12] = [
        ("/admin/panel", 403, None),
        ("/x/../admin/panel", 400, None),
        ("/x/./../admin/panel", 400, None),
        ("/%2e%2e/admin/panel", 400, None),
        ("/x/%2E%2E/admin/panel", 400, None),
        ("/x%2F..%2Fadmin/panel", 400, None),
        ("/..;/admin/panel", 400, None),
        ("/%2Fadmin/panel", 400, None),
        ("//admin/panel", 403, None),
        ("/%61dmin/panel", 403, None),
        (
            "/docs/%7Euser/a%2Fb?q=%2e%2e",
            200,
            Some("/docs/~user/a%2Fb?q=%2e%2e"),
        ),
        ("/files//x", 200, Some("/files/x")),
    ];
    for (path, want, seen) in cases {
        // Raw bytes over HTTP/1.1 (no client library touches the path) ...
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let raw = raw_tls(
            proxy.https_addr(),
            &proxy.ca_pem(),
            "a.test",
            req.as_bytes(),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert_eq!(
            status_of(&raw),
            Some(want),
            "h1 {path}: {}",
            String::from_utf8_lossy(&raw)
        );
        if let Some(seen) = seen {
            let text = String::from_utf8_lossy(&raw);
            assert!(
                text.contains(&format!("\"path\":\"{seen}\"")),
                "h1 {path}: {text}"
            );
        }
        // ... and as an HTTP/2 :path.
        let mut conn = proxy.https("a.test", Alpn::H2).await.unwrap();
        let uri = format!("https://a.test{path}");
        let resp = conn
            .send(
                Request::builder()
                    .method(Method::GET)
                    .uri(uri)
                    .body(tests::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, want, "h2 {path}: {}", resp.text());
        if let Some(seen) = seen {
            assert_eq!(resp.seen_path(), seen, "h2 {path}");
        }
    }
    assert_eq!(admin.requests(), 0, "the restricted upstream was reached");
}
