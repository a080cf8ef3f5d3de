//! Hostile clients, failing upstreams and a failing disk, against the real proxy.
//!
//! Every test asserts three things: what the attacker got (a status or a closed
//! connection), what the upstream saw (nothing ambiguous: [`tests::raw_upstream`] records
//! raw bytes), and that another client is served meanwhile.

mod conn_cap;
mod h2_abuse;
mod hosts;
mod log_bridge;
mod log_flood;
mod path_confusion;
mod request_lines;
mod response_bodies;
mod response_framing;
mod resumption;
mod slow_clients;
mod smuggling;
mod store_faults;
mod upstream_faults;

use std::net::SocketAddr;
use std::time::Duration;

use tests::{Alpn, Proxy};

/// A route to `upstream` for `host`, served on the plain listener too
/// (`https_redirect = false`), with extra keys.
pub fn plain_route(host: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[[route]]\nhosts = [\"{host}\"]\nupstreams = [\"{upstream}\"]\nhttps_redirect = false\n{extra}\n"
    )
}

/// The status of the first response in raw bytes (`None`: nothing, or not HTTP).
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw.get(..12.min(raw.len()))?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// A normal client on a fresh connection gets its answer from `host` quickly, over
/// HTTP/1.1 and HTTP/2: the proxy still serves others.
pub async fn others_are_served(proxy: &Proxy, host: &str) {
    for alpn in [Alpn::H1, Alpn::H2] {
        let started = std::time::Instant::now();
        let mut conn = proxy
            .https(host, alpn)
            .await
            .unwrap_or_else(|e| panic!("another client could not connect ({alpn:?}): {e:#}"));
        conn.timeout = Duration::from_secs(5);
        let resp = conn
            .get(host, "/still-serving")
            .await
            .unwrap_or_else(|e| panic!("another client was not served ({alpn:?}): {e:#}"));
        assert_eq!(
            resp.status,
            200,
            "another client ({alpn:?}): {}",
            resp.text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "another client waited {:?} ({alpn:?})",
            started.elapsed()
        );
    }
}

/// `proxyctl status --json` of this proxy.
pub async fn status_json(proxy: &Proxy) -> serde_json::Value {
    let mut cmd = std::process::Command::new(tests::locate_bin("proxyctl", "PROXYCTL_BIN"));
    cmd.arg("--socket")
        .arg(proxy.dir().join("admin.sock"))
        .args(["status", "--json"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run proxyctl"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "proxyctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}
