//! The soak test: mixed traffic for a while (HTTP/1.1 and HTTP/2 clients, large uploads
//! and downloads, websockets that stay busy and others that idle longer than the client
//! body timeout) across reloads, certificate renewals, an upstream restart and a DNS
//! change. Every request and
//! every byte is accounted for (nothing lost, nothing delivered twice) and the daemon's
//! RSS at the end is compared with its RSS once warm.
//!
//! CI runs the short form (`PROXYD_SOAK_SECS` unset: 40 s of traffic). The long form is
//! run by hand, e.g. `PROXYD_SOAK_SECS=600 cargo test -p tests --test e2e soak:: --
//! --nocapture`; its summary line goes to stderr and its figures to benches/RESULTS.md.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Method;
use tests::client::request;
use tests::{wss_connect, zeros, Alpn, Backend, Conn, DnsServer, Proxy};
use tokio_tungstenite::tungstenite::Message;

use crate::reload::proxyctl;

const A1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const A2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const UPLOAD: u64 = 4 << 20;
const DOWNLOAD: u64 = 8 << 20;
/// The local issuer's certificate lifetime (`--local-cert-lifetime`, test-only).
const CERT_LIFETIME: Duration = Duration::from_secs(15);
/// The proxy's `--client-body-timeout`: idle websockets stay silent longer than this.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);

fn soak_duration() -> Duration {
    let secs = std::env::var("PROXYD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(40);
    Duration::from_secs(secs.max(10))
}

/// What the clients saw, summed over all of them.
#[derive(Default)]
struct Tally {
    requests_ok: AtomicU64,
    /// Requests that carried a request id and were answered 200: each must have reached
    /// exactly one backend exactly once.
    with_id: AtomicU64,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    ws_messages: AtomicU64,
    ws_bytes: AtomicU64,
    failures: Mutex<Vec<String>>,
    failure_count: AtomicU64,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failure_count.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

fn table(generation: u64, app_port: u16, statics: &[&Backend], chat: &Backend) -> String {
    let statics: Vec<String> = statics
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    format!(
        r#"
[[route]]
name = "app"
hosts = ["app.soak.test"]
upstreams = [{{ name = "app.soak.test", port = {app_port}, fallback = ["{A1}"] }}]
request_headers = {{ "X-Generation" = "{generation}" }}
max_body = "64m"

[[route]]
name = "static"
hosts = ["static.soak.test"]
upstreams = [{statics}]

[[route]]
name = "chat"
hosts = ["chat.soak.test"]
upstreams = ["{chat}"]
websocket = true
read_timeout = "600s"
max_body = "64k"
"#,
        statics = statics.join(", "),
        chat = chat.addr(),
    )
}

/// One request on a keep-alive connection; a new connection when the proxy said
/// `Connection: close` or the connection broke. Returns the response on 200.
async fn exchange(
    conn: &mut Conn,
    connect: &(dyn Fn() -> futures_util::future::BoxFuture<'static, anyhow::Result<Conn>>
          + Send
          + Sync),
    req: http::Request<tests::Body>,
    what: &str,
    tally: &Tally,
) -> Option<tests::Response> {
    let result = conn.send(req).await;
    let mut reconnect = false;
    let out = match result {
        Ok(resp) if resp.status == 200 => {
            reconnect = resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            Some(resp)
        }
        Ok(resp) => {
            tally.fail(format!("{what}: status {} {}", resp.status, resp.text()));
            None
        }
        Err(e) => {
            tally.fail(format!("{what}: {e:#}"));
            reconnect = true;
            None
        }
    };
    if reconnect {
        match connect().await {
            Ok(c) => *conn = c,
            Err(e) => tally.fail(format!("reconnect after {what}: {e:#}")),
        }
    }
    out
}

/// Frame `i` of websocket `w`: its bytes tell a lost, duplicated or reordered frame.
fn frame(w: usize, i: u64, len: usize) -> Vec<u8> {
    crate::websocket::pattern(((w as u64) << 40) | i, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_across_reloads_restarts_and_dns_changes_loses_nothing() {
    let duration = soak_duration();
    // Upstreams: "app" by DNS (a1 on 127.0.0.1, then a2 on 127.0.0.2, same port); "static"
    // on two backends, one of which restarts; "chat" for the websockets.
    let (a1, a2) = loop {
        let a1 = Backend::start("a1").await;
        if let Ok(a2) = Backend::start_at("a2", SocketAddr::from((A2, a1.port()))).await {
            break (a1, a2);
        }
    };
    let mut s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let chat = Backend::start("chat").await;
    let dns = DnsServer::start().await;
    dns.set_ttl(1);
    dns.set("app.soak.test", &[A1]);

    let mut generation = 1;
    let proxy = Proxy::builder(&table(generation, a1.port(), &[&s1, &s2], &chat))
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .arg("--client-body-timeout")
        .arg(format!("{}s", BODY_TIMEOUT.as_secs()))
        // Certificates renewed while the run goes on (renewal at a third of the lifetime
        // left): every few seconds, a new one is served to new connections.
        .arg("--local-cert-lifetime")
        .arg(format!("{}s", CERT_LIFETIME.as_secs()))
        .start()
        .await;
    let ca: Arc<str> = proxy.ca();
    let addr = proxy.https_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = tokio::task::JoinSet::new();

    let connector = |alpn: Alpn| {
        let ca = ca.clone();
        Arc::new(
            move || -> futures_util::future::BoxFuture<'static, anyhow::Result<Conn>> {
                let ca = ca.clone();
                Box::pin(async move { Conn::https(addr, &ca, "app.soak.test", alpn).await })
            },
        )
    };

    // Small requests: two HTTP/1.1 and three HTTP/2 clients, each on a keep-alive
    // connection, alternating between the DNS-routed and the two-upstream route.
    for (w, alpn) in [Alpn::H1, Alpn::H1, Alpn::H2, Alpn::H2, Alpn::H2]
        .into_iter()
        .enumerate()
    {
        let (stop, tally, connect) = (stop.clone(), tally.clone(), connector(alpn));
        workers.spawn(async move {
            let mut conn = connect().await.expect("first connection");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let host = if n.is_multiple_of(2) {
                    "app.soak.test"
                } else {
                    "static.soak.test"
                };
                let id = format!("small-{w}-{n}");
                let req = http::Request::builder()
                    .method(Method::GET)
                    .uri(format!("/small/{w}/{n}"))
                    .header(http::header::HOST, host)
                    .header(tests::backend::REQUEST_ID_HEADER, &id)
                    .body(tests::empty())
                    .unwrap();
                if let Some(resp) = exchange(&mut conn, &*connect, req, &id, &tally).await {
                    let seen = resp.json();
                    if seen["path"] != format!("/small/{w}/{n}") {
                        tally.fail(format!("{id}: the backend saw {}", seen["path"]));
                    } else {
                        tally.requests_ok.fetch_add(1, Ordering::Relaxed);
                        tally.with_id.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    // Uploads (4 MiB, HTTP/1.1 with Content-Length and HTTP/2) and downloads (8 MiB).
    for (w, alpn) in [Alpn::H1, Alpn::H2].into_iter().enumerate() {
        let (stop, tally, connect) = (stop.clone(), tally.clone(), connector(alpn));
        workers.spawn(async move {
            let mut conn = connect().await.expect("first connection");
            conn.timeout = Duration::from_secs(60);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("upload-{w}-{n}");
                let mut req = request(Method::POST, "app.soak.test", "/upload", zeros(UPLOAD));
                req.headers_mut()
                    .insert(tests::backend::REQUEST_ID_HEADER, id.parse().unwrap());
                if let Some(resp) = exchange(&mut conn, &*connect, req, &id, &tally).await {
                    let got = resp.json()["body_len"].as_u64();
                    if got != Some(UPLOAD) {
                        tally.fail(format!("{id}: the backend got {got:?} bytes"));
                    } else {
                        tally.requests_ok.fetch_add(1, Ordering::Relaxed);
                        tally.with_id.fetch_add(1, Ordering::Relaxed);
                        tally.uploaded.fetch_add(UPLOAD, Ordering::Relaxed);
                    }
                }
                let what = format!("download-{w}-{n}");
                let req = request(
                    Method::GET,
                    "static.soak.test",
                    &format!("/bytes/{DOWNLOAD}"),
                    tests::empty(),
                );
                if let Some(resp) = exchange(&mut conn, &*connect, req, &what, &tally).await {
                    let len = resp.body.len() as u64;
                    if len != DOWNLOAD || resp.body.iter().any(|&b| b != 0) {
                        tally.fail(format!("{what}: {len} bytes, or not the bytes sent"));
                    } else {
                        tally.requests_ok.fetch_add(1, Ordering::Relaxed);
                        tally.downloaded.fetch_add(DOWNLOAD, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    // New connections, one every 250 ms, each with one request: they see the certificates
    // the renewals install (each handshake verified against the local CA).
    let leaves = Arc::new(Mutex::new(std::collections::HashSet::<Vec<u8>>::new()));
    {
        let (stop, tally, leaves, connect) = (
            stop.clone(),
            tally.clone(),
            leaves.clone(),
            connector(Alpn::H1),
        );
        workers.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let what = format!("fresh-{n}");
                let mut conn = match connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        tally.fail(format!("{what}: connect: {e:#}"));
                        continue;
                    }
                };
                if let Some(leaf) = conn.tls().and_then(|t| t.peer_certificates.first()) {
                    leaves.lock().unwrap().insert(leaf.to_vec());
                }
                match conn.get("app.soak.test", "/fresh").await {
                    Ok(r) if r.status == 200 => {
                        tally.requests_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => tally.fail(format!("{what}: status {}", r.status)),
                    Err(e) => tally.fail(format!("{what}: {e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    // Websockets: three busy (a 16 KiB frame every 50 ms: far past the route's 64k
    // max_body) and two that idle longer than the client body timeout between messages.
    // One tunnel each for the whole run: a closed tunnel is a failure.
    for w in 0..5usize {
        let (stop, tally, ca) = (stop.clone(), tally.clone(), ca.clone());
        let idle = w >= 3;
        workers.spawn(async move {
            let (ws, resp) = match wss_connect(addr, &ca, "chat.soak.test", "/chat").await {
                Ok(ws) => ws,
                Err(e) => return tally.fail(format!("websocket {w}: {e:#}")),
            };
            if resp.status() != 101 {
                return tally.fail(format!("websocket {w}: status {}", resp.status()));
            }
            let mut ws = ws;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pause = if idle {
                    BODY_TIMEOUT + Duration::from_secs(1)
                } else {
                    Duration::from_millis(50)
                };
                tokio::time::sleep(pause).await;
                i += 1;
                let len = if idle { 1024 } else { 16 * 1024 };
                let data = frame(w, i, len);
                if let Err(e) = ws.send(Message::binary(data.clone())).await {
                    return tally.fail(format!("websocket {w}, message {i}: send: {e}"));
                }
                match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
                    Ok(Some(Ok(m))) if m.clone().into_data()[..] == data[..] => {
                        tally.ws_messages.fetch_add(1, Ordering::Relaxed);
                        tally.ws_bytes.fetch_add(len as u64, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(m))) => {
                        return tally.fail(format!(
                            "websocket {w}, message {i}: echo altered ({} bytes)",
                            m.into_data().len()
                        ))
                    }
                    Ok(Some(Err(e))) => {
                        return tally.fail(format!("websocket {w}, message {i}: {e}"))
                    }
                    Ok(None) => {
                        return tally.fail(format!("websocket {w}: closed before message {i}"))
                    }
                    Err(_) => {
                        return tally.fail(format!("websocket {w}, message {i}: no echo in 15 s"))
                    }
                }
            }
            if let Err(e) = ws.close(None).await {
                tally.fail(format!("websocket {w}: close: {e}"));
            }
        });
    }

    // The operations: a reload every 1/15 of the run, the DNS answer moved at 30 %, one of
    // the two static upstreams restarted at 50 %; RSS taken once warm (20 %).
    let start = tokio::time::Instant::now();
    let at = |f: f64| start + duration.mul_f64(f);
    let mut reloads = 0u32;
    let mut dns_moved = false;
    let mut restarted = false;
    let mut warm_rss = None;
    let mut next_reload = at(1.0 / 15.0);
    while tokio::time::Instant::now() < at(1.0) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tokio::time::Instant::now();
        if now >= next_reload {
            generation += 1;
            std::fs::write(
                proxy.routes_path(),
                table(generation, a1.port(), &[&s1, &s2], &chat),
            )
            .unwrap();
            let out = proxyctl(&proxy, &["reload"]).await;
            assert!(
                out.status.success(),
                "reload {generation}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            reloads += 1;
            next_reload = now + duration / 15;
        }
        if warm_rss.is_none() && now >= at(0.2) {
            warm_rss = Some(proxy.mem().rss_kib);
        }
        if !dns_moved && now >= at(0.3) {
            dns.set("app.soak.test", &[A2]);
            dns_moved = true;
        }
        if !restarted && now >= at(0.5) {
            s1.restart_gracefully(Duration::from_secs(2)).await;
            restarted = true;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = workers.join_next().await {
        joined.expect("a client task panicked");
    }
    let end_rss = proxy.mem().rss_kib;
    let warm_rss = warm_rss.expect("RSS taken once warm");

    let certificates = leaves.lock().unwrap().len();
    let failures = tally.failure_count.load(Ordering::Relaxed);
    let requests = tally.requests_ok.load(Ordering::Relaxed);
    let with_id = tally.with_id.load(Ordering::Relaxed);
    let backends = [&a1, &a2, &s1, &s2];
    let seen: u64 = backends.iter().map(|b| b.request_ids_seen() as u64).sum();
    let duplicates: u64 = backends.iter().map(|b| b.duplicate_requests()).sum();
    eprintln!(
        "soak: {:?} of traffic; {requests} requests answered 200 ({with_id} with an id, {seen} \
         ids seen upstream, {duplicates} delivered twice); uploaded {} MiB, downloaded {} MiB; \
         {} websocket messages ({} KiB); {reloads} reloads; {certificates} certificates served in turn; upstream restart {restarted}, DNS \
         moved {dns_moved}; failures {failures}; RSS warm {warm_rss} KiB, end {end_rss} KiB",
        duration,
        tally.uploaded.load(Ordering::Relaxed) >> 20,
        tally.downloaded.load(Ordering::Relaxed) >> 20,
        tally.ws_messages.load(Ordering::Relaxed),
        tally.ws_bytes.load(Ordering::Relaxed) >> 10,
    );
    assert_eq!(
        failures,
        0,
        "failed requests: {:#?}",
        tally.failures.lock().unwrap()
    );
    assert!(reloads >= 10, "only {reloads} reloads");
    assert!(
        certificates >= 2,
        "no renewed certificate was served ({certificates} seen)"
    );
    assert_eq!(duplicates, 0, "requests delivered to an upstream twice");
    assert_eq!(
        seen, with_id,
        "requests answered 200 and requests seen upstream differ"
    );
    assert!(
        a1.requests() > 0 && a2.requests() > 0,
        "the DNS change did not move traffic"
    );
    assert!(
        s1.requests() > 0 && s2.requests() > 0,
        "both static upstreams serve"
    );
    assert!(tally.uploaded.load(Ordering::Relaxed) > 0);
    assert!(tally.downloaded.load(Ordering::Relaxed) > 0);
    // 5 tunnels: the busy ones carry far more than max_body, the idle ones outlive the body
    // timeout several times.
    assert!(tally.ws_bytes.load(Ordering::Relaxed) > 3 * 64 * 1024);
    // Upload bytes reached the app backends exactly (no retried or truncated body).
    assert_eq!(
        a1.body_bytes() + a2.body_bytes(),
        tally.uploaded.load(Ordering::Relaxed),
        "upload bytes sent and received upstream differ"
    );
    // RSS flat: after the traffic, no more than a quarter above the warm figure (allocator
    // slack), whatever the run's length.
    assert!(
        end_rss <= warm_rss + warm_rss / 4 + 8 * 1024,
        "RSS grew from {warm_rss} KiB (warm) to {end_rss} KiB (end)"
    );
}
