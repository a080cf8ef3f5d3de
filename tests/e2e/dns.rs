//! Upstream names resolved by DNS: a real DNS server on loopback (the harness's
//! `DnsServer`, queried by proxyd's hickory resolver through `--dns-server`), answers that
//! change while traffic flows, a name that does not resolve, and the fallback addresses
//! when the DNS server stops. Three backends share one port on 127.0.0.1, .2 and .3, so
//! that only the address DNS gives decides which one answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tests::{wait_until, Backend, DnsServer, Proxy};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Backends "a", "b", "c" on 127.0.0.1, .2 and .3, all on the same port.
async fn three_backends() -> (Backend, Backend, Backend) {
    for _ in 0..20 {
        let a = Backend::start("a").await;
        let port = a.port();
        let b = Backend::start_at("b", SocketAddr::from((B, port))).await;
        let c = Backend::start_at("c", SocketAddr::from((C, port))).await;
        if let (Ok(b), Ok(c)) = (b, c) {
            return (a, b, c);
        }
        // That port was taken on .2 or .3: try another one.
    }
    panic!("no port free on 127.0.0.1, .2 and .3 at once");
}

/// The backend that answers `GET https://host/` (a new connection each time).
async fn who(proxy: &Proxy, host: &str) -> String {
    let resp = proxy
        .get(host, "/")
        .await
        .unwrap_or_else(|e| panic!("GET https://{host}/: {e:#}"));
    assert_eq!(resp.status, 200, "GET https://{host}/: {}", resp.text());
    resp.backend()
}

async fn wait_for_backend(proxy: &Proxy, host: &str, want: &str, within: Duration, why: &str) {
    wait_until(
        &format!("{host} answered by {want} ({why})"),
        within,
        Duration::from_millis(50),
        || async { (who(proxy, host).await == want).then_some(()) },
    )
    .await;
}

/// Every one of `n` requests is answered by `want`.
async fn all_from(proxy: &Proxy, host: &str, want: &str, n: usize) {
    for i in 0..n {
        let got = who(proxy, host).await;
        assert_eq!(got, want, "request #{i} to {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_follows_dns_changes_without_reload_and_falls_back_when_dns_stops() {
    let (a, b, c) = three_backends().await;
    let port = a.port();
    let mut dns = DnsServer::start().await;
    dns.set_ttl(1);
    dns.set("app.dns.test", &[A]);
    let routes = format!(
        r#"
[[route]]
hosts = ["h.test"]
upstreams = [{{ name = "app.dns.test", port = {port}, fallback = ["{C}"] }}]
"#
    );
    let mut proxy = Proxy::builder(&routes)
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .start()
        .await;
    let pid = proxy.pid();

    // 1. The name resolves to A: traffic goes to A.
    wait_for_backend(
        &proxy,
        "h.test",
        "a",
        Duration::from_secs(10),
        "first answer",
    )
    .await;
    all_from(&proxy, "h.test", "a", 20).await;
    assert!(dns.queries() >= 1);

    // 2. The answer changes to B: new connections follow within about a TTL, with no
    //    reload, and A gets nothing more once B has answered.
    dns.set("app.dns.test", &[B]);
    wait_for_backend(
        &proxy,
        "h.test",
        "b",
        Duration::from_secs(10),
        "changed answer, TTL 1 s",
    )
    .await;
    let a_before = a.requests();
    all_from(&proxy, "h.test", "b", 20).await;
    assert_eq!(
        a.requests(),
        a_before,
        "A got requests after DNS moved to B"
    );
    assert_eq!(proxy.pid(), pid);
    assert!(proxy.is_running());

    // 3. The DNS server stops: once the answer has expired and the lookup fails, the
    //    fallback address (C) takes the traffic; every request meanwhile succeeds.
    dns.stop().await;
    wait_for_backend(
        &proxy,
        "h.test",
        "c",
        Duration::from_secs(30),
        "DNS server stopped",
    )
    .await;
    let b_before = b.requests();
    all_from(&proxy, "h.test", "c", 20).await;
    assert_eq!(
        b.requests(),
        b_before,
        "B got requests after the fallback took over"
    );
    assert!(c.requests() >= 21);
    let log = proxy.log();
    assert!(
        log.contains("cannot resolve upstream name"),
        "no warning about the failing name in the log:\n{}",
        proxy.log_tail(30)
    );
    assert_eq!(proxy.pid(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_do_not_resolve_fail_neither_start_nor_reload() {
    let (a, b, _c) = three_backends().await;
    let port = a.port();
    let dns = DnsServer::start().await;
    // Nothing is known yet: every query gets NXDOMAIN.
    let routes = |extra: &str| {
        format!(
            r#"
[[route]]
hosts = ["fallback.test"]
upstreams = [{{ name = "late.dns.test", port = {port}, fallback = ["{A}"] }}]

[[route]]
hosts = ["nothing.test"]
upstreams = ["nowhere.dns.test:{port}"]
{extra}"#
        )
    };
    let proxy = Proxy::builder(&routes(""))
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .start()
        .await;

    // Started; the name with a fallback is served from it at once, the one without
    // has no upstream yet (an error page, not a crash).
    all_from(&proxy, "fallback.test", "a", 5).await;
    let resp = proxy.get("nothing.test", "/").await.unwrap();
    assert!(resp.status.is_server_error(), "{}", resp.status);

    // A reload that brings another unresolvable name succeeds.
    let extra = format!(
        "\n[[route]]\nhosts = [\"new.test\"]\nupstreams = [{{ name = \"new.dns.test\", port = {port}, fallback = [\"{B}\"] }}]\n"
    );
    std::fs::write(proxy.routes_path(), routes(&extra)).unwrap();
    let socket = proxy.dir().join("admin.sock");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tests::locate_bin("proxyctl", "PROXYCTL_BIN"))
            .arg("--socket")
            .arg(socket)
            .arg("reload")
            .output()
            .expect("run proxyctl")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "reload failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    all_from(&proxy, "new.test", "b", 5).await;
    all_from(&proxy, "fallback.test", "a", 5).await;

    // When the name starts to resolve, its route follows DNS (B instead of the
    // fallback A), still without a reload.
    dns.set("late.dns.test", &[B]);
    wait_for_backend(
        &proxy,
        "fallback.test",
        "b",
        Duration::from_secs(15),
        "name resolves now",
    )
    .await;
    assert!(b.requests() >= 6);
}
