//! Host, alias, wildcard and longest-prefix routing; unknown hosts.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tests::{Alpn, Backend, Proxy};
use tokio_tungstenite::tungstenite::Message;

use crate::upstreams;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_alias_wildcard_and_longest_prefix() {
    let site = Backend::start("site").await;
    let api = Backend::start("api").await;
    let app = Backend::start("app").await;
    let other = Backend::start("other").await;
    let routes = format!(
        r#"
[[route]]
hosts = ["a.test", "alias.test", "*.wild.test"]
upstreams = {site}

[[route]]
hosts = ["a.test"]
path = "/api"
upstreams = {api}

[[route]]
hosts = ["a.test"]
path = "/app"
strip_prefix = true
upstreams = {app}

[[route]]
hosts = ["other.test"]
upstreams = {other}
"#,
        site = upstreams(&[&site]),
        api = upstreams(&[&api]),
        app = upstreams(&[&app]),
        other = upstreams(&[&other]),
    );
    let proxy = Proxy::start(&routes).await;

    // (SNI and Host, request path, backend, path the backend sees)
    let cases = [
        ("a.test", "/", "site", "/"),
        ("a.test", "/index.html?x=1", "site", "/index.html?x=1"),
        ("alias.test", "/x", "site", "/x"),
        ("foo.wild.test", "/y", "site", "/y"),
        ("a.test", "/api", "api", "/api"),
        ("a.test", "/api/v1/users?id=7", "api", "/api/v1/users?id=7"),
        // Whole segments only: /apix is not under /api.
        ("a.test", "/apix", "site", "/apix"),
        ("a.test", "/app/x?q=1", "app", "/x?q=1"),
        ("a.test", "/app", "app", "/"),
        ("a.test", "/app/", "app", "/"),
        ("other.test", "/api", "other", "/api"),
    ];
    for alpn in [Alpn::H1, Alpn::H2] {
        for (host, path, backend, seen) in cases {
            let mut conn = proxy.https(host, alpn).await.unwrap();
            let resp = conn.get(host, path).await.unwrap();
            assert_eq!(
                resp.status,
                200,
                "{host}{path} over {alpn:?}: {}",
                resp.text()
            );
            assert_eq!(resp.backend(), backend, "{host}{path} over {alpn:?}");
            assert_eq!(resp.seen_path(), seen, "{host}{path} over {alpn:?}");
        }
    }

    // Host header spelled differently from the route: upper case, with the port.
    let mut conn = proxy.https("a.test", Alpn::H1).await.unwrap();
    let host_with_port = format!("A.Test:{}", proxy.https_addr().port());
    let resp = conn.get(&host_with_port, "/api/z").await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.backend(), "api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_over_https_gets_421_without_another_sites_content() {
    let site = Backend::start("secret-site").await;
    let routes = format!(
        "[[route]]\nhosts = [\"a.test\", \"*.wild.test\"]\nupstreams = {}\n",
        upstreams(&[&site])
    );
    let proxy = Proxy::start(&routes).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        // SNI of a served name, Host of another (or of a wildcard's grandchild).
        for host in ["unknown.test", "a.b.wild.test", "wild.test"] {
            let mut conn = proxy.https("a.test", alpn).await.unwrap();
            let resp = conn.get(host, "/").await.unwrap();
            assert_eq!(
                resp.status,
                421,
                "Host {host} over {alpn:?}: {}",
                resp.text()
            );
            assert!(
                !resp.text().contains("secret-site"),
                "421 for {host} carries the other site's content: {}",
                resp.text()
            );
            assert!(resp.header(tests::BACKEND_HEADER).is_none());
        }
    }
    assert_eq!(
        site.requests(),
        0,
        "the upstream saw a request for a foreign Host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_over_http_gets_404_without_another_sites_content() {
    let site = Backend::start("secret-site").await;
    let routes = format!(
        "[[route]]\nhosts = [\"a.test\"]\nupstreams = {}\nhttps_redirect = false\n",
        upstreams(&[&site])
    );
    let proxy = Proxy::start(&routes).await;

    let resp = tests::http_get(proxy.http_addr(), "unknown.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert!(!resp.text().contains("secret-site"), "{}", resp.text());
    assert!(resp.header(tests::BACKEND_HEADER).is_none());
    assert_eq!(site.requests(), 0);

    // The routed name itself is proxied over plain http (https_redirect = false).
    let resp = tests::http_get(proxy.http_addr(), "a.test", "/plain")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.backend(), "secret-site");
    assert_eq!(resp.seen_header("x-forwarded-proto"), ["http"]);
}

/// Regression (issue 11, item 7): the 2020 configuration written as an inventory and
/// generated by `proxyctl routes generate`, then served by proxyd: netdata of several
/// hosts under `/n/<host>/` of one name, each with its prefix stripped (netdata serves
/// from `/`), `/<host>` redirected to `/n/<host>/`, and Mattermost's two websocket
/// paths. The inventory had no way to strip a prefix or declare a path redirect, the
/// Mattermost preset covered only `/api/v4/websocket`, a route path ending in `/` did
/// not cover the bare `/n/<host>` (which went to the catch-all), and path parameters
/// on the prefix were forwarded as part of the stripped path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_strips_path_prefixes_redirects_paths_and_opens_both_mattermost_websockets() {
    let site = Backend::start("site").await;
    let web1 = Backend::start("netdata-web-1").await;
    let mail1 = Backend::start("netdata-mail-1").await;
    let chat = Backend::start("chat").await;
    let inventory = format!(
        r#"
internal_networks = ["127.0.0.0/8"]

[[host]]
name = "lo"
ipv4 = "127.0.0.1"

[[service]]
id = "monitoring"
name = "mon.test"
host = "lo"
port = {site}
app = "internal"

[[service]]
id = "netdata-web-1"
name = "mon.test"
host = "lo"
port = {web1}
path = "/n/web-1/"
strip_prefix = true
redirect_paths = ["/web-1"]
app = "internal"

[[service]]
id = "netdata-mail-1"
name = "mon.test"
host = "lo"
port = {mail1}
path = "/n/mail-1/"
strip_prefix = true
redirect_paths = ["/mail-1"]
redirect_status = 308
app = "internal"

[[service]]
id = "chat"
name = "chat.test"
host = "lo"
port = {chat}
app = "mattermost"
"#,
        site = site.port(),
        web1 = web1.port(),
        mail1 = mail1.port(),
        chat = chat.port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inventory.toml");
    std::fs::write(&file, inventory).unwrap();
    let out = std::process::Command::new(tests::locate_bin("proxyctl", "PROXYCTL_BIN"))
        .args(["routes", "generate", "--inventory"])
        .arg(&file)
        .output()
        .unwrap();
    let routes = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{routes}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proxy = Proxy::start(&routes).await;

    // (request path, backend, path the backend sees)
    let cases = [
        ("/n/web-1/", "netdata-web-1", "/"),
        ("/n/web-1", "netdata-web-1", "/"),
        (
            "/n/web-1/api/v1/info?x=1",
            "netdata-web-1",
            "/api/v1/info?x=1",
        ),
        ("/n/web-1;s=1/api", "netdata-web-1", "/api"),
        ("/n;s/web-1/api;v=2", "netdata-web-1", "/api;v=2"),
        ("//n/web-1//api", "netdata-web-1", "/api"),
        ("/n/%77eb-1/api", "netdata-web-1", "/api"),
        ("/n/mail-1", "netdata-mail-1", "/"),
        ("/n/mail-1/dashboard.js", "netdata-mail-1", "/dashboard.js"),
        ("/n/web-10", "site", "/n/web-10"),
        ("/n", "site", "/n"),
        ("/web-10", "site", "/web-10"),
    ];
    let port = proxy.https_addr().port();
    for alpn in [Alpn::H1, Alpn::H2] {
        for (path, backend, seen) in cases {
            let mut conn = proxy.https("mon.test", alpn).await.unwrap();
            let resp = conn.get("mon.test", path).await.unwrap();
            assert_eq!(resp.status, 200, "{path} over {alpn:?}: {}", resp.text());
            assert_eq!(resp.backend(), backend, "{path} over {alpn:?}");
            assert_eq!(resp.seen_path(), seen, "{path} over {alpn:?}");
        }
        for (path, status, location) in [
            ("/web-1", 301, "/n/web-1/"),
            ("/web-1;x", 301, "/n/web-1/"),
            ("/web-1/x?y=1", 301, "/n/web-1/x?y=1"),
            ("/mail-1", 308, "/n/mail-1/"),
        ] {
            let mut conn = proxy.https("mon.test", alpn).await.unwrap();
            let resp = conn.get("mon.test", path).await.unwrap();
            assert_eq!(resp.status, status, "{path} over {alpn:?}: {}", resp.text());
            assert_eq!(
                resp.header("location").as_deref(),
                Some(format!("https://mon.test:{port}{location}").as_str()),
                "{path} over {alpn:?}"
            );
        }
    }
    let requests = site.requests() + web1.requests() + mail1.requests();

    // Both Mattermost websocket paths upgrade; the rest of the API does not.
    for path in ["/api/v4/websocket", "/api/v4/users/websocket"] {
        let (mut ws, resp) =
            tests::wss_connect(proxy.https_addr(), &proxy.ca_pem(), "chat.test", path)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert_eq!(resp.status(), 101, "{path}");
        ws.send(Message::text(path)).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo within 10 s")
            .expect("stream open")
            .unwrap();
        assert_eq!(echo, Message::text(path));
        ws.close(None).await.unwrap();
    }
    assert_eq!(chat.websockets(), 2);
    assert!(
        tests::wss_connect(
            proxy.https_addr(),
            &proxy.ca_pem(),
            "chat.test",
            "/api/v4/users/me"
        )
        .await
        .is_err(),
        "a websocket outside Mattermost's two paths"
    );
    assert_eq!(chat.websockets(), 2);
    // The redirects answered without asking any upstream.
    assert_eq!(
        site.requests() + web1.requests() + mail1.requests(),
        requests
    );
}
