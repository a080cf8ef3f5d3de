//! Per-route client allow lists.

use std::time::Duration;

use http::{Method, Request};
use tests::{raw_tls, Alpn, Backend, Proxy};

use crate::one_route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_other_networks_with_403_and_admits_listed_ones() {
    let closed = Backend::start("closed").await;
    let open = Backend::start("open").await;
    let v6 = Backend::start("v6only").await;
    let routes = one_route(&["closed.test"], &closed, "allow = [\"10.0.0.0/8\"]")
        + &one_route(&["open.test"], &open, "allow = [\"127.0.0.0/8\"]")
        + &one_route(&["v6.test"], &v6, "allow = [\"::1\"]");
    let proxy = Proxy::start(&routes).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        let resp = proxy
            .https("closed.test", alpn)
            .await
            .unwrap()
            .get("closed.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 403, "{alpn:?}: {}", resp.text());
        assert!(
            !resp.text().contains("closed"),
            "403 carries the upstream's content"
        );

        let resp = proxy
            .https("open.test", alpn)
            .await
            .unwrap()
            .get("open.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{alpn:?}: {}", resp.text());
        assert_eq!(resp.backend(), "open");

        // 127.0.0.1 is not ::1.
        let resp = proxy
            .https("v6.test", alpn)
            .await
            .unwrap()
            .get("v6.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 403, "{alpn:?}: {}", resp.text());
    }
    assert_eq!(closed.requests(), 0);
    assert_eq!(v6.requests(), 0);
}

/// Regression (issue 11, item 6): with a catch-all route and an `/admin/` route behind an
/// allow list, `/admin;x/secret` (which Tomcat, Jetty and Spring read as `/admin/secret`)
/// and the bare `/admin` got 200 from the catch-all: prefixes were compared with the raw
/// path, and `/admin/` did not cover `/admin`. Every way round the prefix must now end
/// at the admin route (403 for this client) or be refused (400), never at the catch-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters_and_the_bare_path_cannot_get_past_an_allow_list() {
    let public = Backend::start("public").await;
    let admin = Backend::start("admin").await;
    let routes = one_route(&["a.test"], &public, "")
        + &one_route(
            &["a.test"],
            &admin,
            "path = \"/admin/\"\nallow = [\"10.0.0.0/8\"]",
        );
    let proxy = Proxy::start(&routes).await;

    // (path as sent, status; h2 too where an HTTP/2 client can send it)
    #[rustfmt::skip]
    let attempts: &[(&str, u16, bool)] = &[
        ("/admin/secret", 403, true),
        // The bare path and path parameters (the classic Tomcat bypasses).
        ("/admin", 403, true),
        ("/admin;x", 403, true),
        ("/admin;x/secret", 403, true),
        ("/admin;/secret", 403, true),
        ("/admin;jsessionid=1;a=b/secret", 403, true),
        ("/;x/admin/secret", 403, true),
        ("/admin/;x/secret", 403, true),
        ("//admin;x/secret", 403, true),
        ("//admin/", 403, true),
        ("/%61dmin/x", 403, true),
        ("/%61dmin;x/secret", 403, true),
        ("/%61%64%6d%69%6e", 403, true),
        ("/admin?x=/", 403, true),
        // Escaped `;`, `/` and `\`, read one way by the proxy and another by some
        // upstreams: refused.
        ("/admin%3Bx/secret", 400, true),
        ("/admin%3bx/secret", 400, true),
        ("/admin%2Fsecret", 400, true),
        ("/%2fadmin/secret", 400, true),
        ("/admin%5Csecret", 400, true),
        ("/admin\\secret", 400, false),
        // Dot segments, with parameters or escaped.
        ("/admin/..;/x", 400, true),
        ("/x/..;/admin/secret", 400, true),
        ("/./admin", 400, true),
        ("/./admin/", 400, true),
        ("/x/../admin/", 400, true),
        ("/%2e%2e/admin", 400, true),
        ("/x/%2E%2e;a/admin/secret", 400, true),
    ];
    for &(path, want, h2) in attempts {
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
            crate::hardening::status_of(&raw),
            Some(want),
            "h1 {path}: {}",
            String::from_utf8_lossy(&raw)
        );
        if h2 {
            let mut conn = proxy.https("a.test", Alpn::H2).await.unwrap();
            let resp = conn
                .send(
                    Request::builder()
                        .method(Method::GET)
                        .uri(format!("https://a.test{path}"))
                        .body(tests::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status, want, "h2 {path}: {}", resp.text());
        }
    }
    assert_eq!(public.requests(), 0, "a bypass reached the catch-all");
    assert_eq!(admin.requests(), 0, "the restricted upstream was reached");

    // Not the admin prefix: the catch-all, with the path (parameters included) as sent.
    // Paths are case-sensitive (RFC 3986, as nginx's `location`): `/ADMIN` is another
    // path, for the catch-all (documented in routes.reference.toml).
    for (path, seen) in [
        ("/ADMIN/secret", "/ADMIN/secret"),
        ("/Admin", "/Admin"),
        ("/adminx;a/b", "/adminx;a/b"),
        ("/x/admin;y", "/x/admin;y"),
        ("/jsp/a;jsessionid=1?q", "/jsp/a;jsessionid=1?q"),
    ] {
        for alpn in [Alpn::H1, Alpn::H2] {
            let resp = proxy
                .https("a.test", alpn)
                .await
                .unwrap()
                .get("a.test", path)
                .await
                .unwrap();
            assert_eq!(resp.status, 200, "{alpn:?} {path}: {}", resp.text());
            assert_eq!(resp.backend(), "public");
            assert_eq!(resp.seen_path(), seen, "{alpn:?} {path}");
        }
    }
}

/// Review (issue 11, item 6): HTTP/1 and HTTP/2 let a path hold raw UTF-8, which an
/// upstream reads as its escapes; a route path must be written escaped, so `/café/x`
/// went to the catch-all (200) past the `allow` of `/caf%C3%A9/`. Also tried here: the
/// absolute-form request-target, `OPTIONS *`, and escapes out of a stripped prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_utf8_absolute_form_and_stripped_prefixes_cannot_get_past_an_allow_list() {
    let public = Backend::start("public").await;
    let admin = Backend::start("admin").await;
    let netdata = Backend::start("netdata").await;
    let routes = one_route(&["a.test"], &public, "")
        + &one_route(
            &["a.test"],
            &admin,
            "path = \"/caf%C3%A9/\"\nallow = [\"10.0.0.0/8\"]",
        )
        + &one_route(
            &["a.test"],
            &netdata,
            "path = \"/n/web-1/\"\nstrip_prefix = true",
        );
    let proxy = Proxy::start(&routes).await;

    let raw = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").into_bytes()
    };
    // Raw UTF-8 in an HTTP/1 request line is not a valid request-target (RFC 9112 s3):
    // refused with 400 before routing (pingora-core's strict request line). HTTP/2 lets it
    // through in `:path`, where normalize_path escapes it (the h2 test below).
    for (req, want) in [
        (raw("/caf\u{e9}/secret"), 400),
        (raw("/caf\u{e9}"), 400),
        (raw("/caf\u{e9};x/secret"), 400),
        (raw("https://a.test/caf%C3%A9;x/secret"), 403),
        (raw("https://a.test/caf\u{e9}"), 400),
        (raw("https://a.test//caf%c3%a9/"), 403),
        (raw("https://a.test/x/..%2Fcaf%C3%A9/"), 400),
        (raw("/n/web-1/..%2F..%2Fcaf%C3%A9/"), 400),
        (raw("/n/web-1/%2e%2e/caf%C3%A9/"), 400),
        (raw("/n/web-1;x/..;/caf%C3%A9/"), 400),
    ] {
        let got = raw_tls(
            proxy.https_addr(),
            &proxy.ca_pem(),
            "a.test",
            &req,
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert_eq!(
            crate::hardening::status_of(&got),
            Some(want),
            "{}: {}",
            String::from_utf8_lossy(&req),
            String::from_utf8_lossy(&got)
        );
    }
    let mut conn = proxy.https("a.test", Alpn::H2).await.unwrap();
    let resp = conn
        .send(
            Request::builder()
                .method(Method::GET)
                .uri("https://a.test/caf\u{e9}/secret")
                .body(tests::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    // Refused before routing as well (routes::check_request_target).
    assert_eq!(resp.status, 400, "h2 raw UTF-8: {}", resp.text());
    assert_eq!(public.requests(), 0, "a bypass reached the catch-all");
    assert_eq!(admin.requests(), 0, "the restricted upstream was reached");
    assert_eq!(
        netdata.requests(),
        0,
        "a dot segment reached the stripped route"
    );

    // `OPTIONS *` is the catch-all's (it names no path), never the restricted route's.
    let req = b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    raw_tls(
        proxy.https_addr(),
        &proxy.ca_pem(),
        "a.test",
        req,
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(
        admin.requests(),
        0,
        "OPTIONS * reached the restricted upstream"
    );

    // What the upstream of a stripped prefix sees: the rest, with bytes a URI path may
    // not hold raw (`{`, `}`) escaped as an upstream reads them, query kept; a double escape stays one escape deep.
    for alpn in [Alpn::H1, Alpn::H2] {
        for (path, seen) in [
            ("/n/web-1/a{b}?q=%2F", "/a%7Bb%7D?q=%2F"),
            ("/n/web-1/%252e%252e/x", "/%252e%252e/x"),
            ("/n/web-1;a/b;c", "/b;c"),
            ("/n/web-1", "/"),
            ("/n/web-1?x", "/?x"),
        ] {
            let resp = proxy
                .https("a.test", alpn)
                .await
                .unwrap()
                .get("a.test", path)
                .await
                .unwrap();
            assert_eq!(resp.status, 200, "{alpn:?} {path}: {}", resp.text());
            assert_eq!(resp.backend(), "netdata", "{alpn:?} {path}");
            assert_eq!(resp.seen_path(), seen, "{alpn:?} {path}");
        }
    }
}
