//! Observability: the metrics listener (`--metrics`), scraped after real traffic; the
//! access log (`--access-log`, `--access-log-format`) and its reopening on SIGUSR1;
//! readiness on the admin API and on the metrics listener's `/health`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::reload::proxyctl;
use certs::util::unix_now;
use futures_util::SinkExt;
use http::{header, Method};
use tests::client::{client_config, tls_connect};
use tests::{free_addr, free_port, http_get, raw_tcp, request, wait_until, wss_connect};
use tests::{Alpn, Backend, Proxy};
use tokio_tungstenite::tungstenite::Message;

use crate::one_route;

const SOON: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// One scrape, parsed: `name{labels}` lines into (name, labels, value).
pub(crate) struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    pub(crate) fn parse(text: &str) -> Scrape {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let mut labels = BTreeMap::new();
                    // Values here never hold `",` (route ids, addresses, reasons).
                    for pair in rest.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                    (name.to_string(), labels)
                }
            };
            out.push((name, labels, value));
        }
        Scrape(out)
    }

    /// The value of the one series of `name` whose labels include `labels`; 0 if none.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} series",
            found.len()
        );
        found.first().copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.iter().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

pub(crate) async fn scrape(addr: SocketAddr) -> Scrape {
    let resp = wait_until("the metrics listener", SOON, POLL, || async {
        http_get(addr, "monitoring", "/metrics").await.ok()
    })
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    Scrape::parse(&resp.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_and_status_class_with_latency_histograms() {
    let a = Backend::start("a").await;
    let dead = free_port();
    let routes = one_route(&["a.test"], &a, "max_body = \"1k\"")
        + &format!(
            "[[route]]\nhosts = [\"down.test\"]\nupstreams = [\"127.0.0.1:{dead}\"]\nconnect_timeout = \"2s\"\n"
        );
    let metrics = free_addr();
    let proxy = Proxy::builder(&routes)
        .arg("--metrics")
        .arg(metrics.to_string())
        .arg("--access-log-format")
        .arg("off")
        .start()
        .await;

    // 2xx: three GETs and a POST with a 100-byte body, over h2 and h1.
    let mut h2 = proxy.https("a.test", Alpn::H2).await.unwrap();
    let mut h1 = proxy.https("a.test", Alpn::H1).await.unwrap();
    for conn in [&mut h2, &mut h1] {
        assert_eq!(conn.get("a.test", "/hello").await.unwrap().status, 200);
    }
    assert_eq!(h2.get("a.test", "/again").await.unwrap().status, 200);
    let post = request(Method::POST, "a.test", "/form", tests::zeros(100));
    assert_eq!(h1.send(post).await.unwrap().status, 200);
    // 4xx: the upstream's 404, and the proxy's own 413 (over max_body, never forwarded).
    assert_eq!(h2.get("a.test", "/status/404").await.unwrap().status, 404);
    let big = request(Method::POST, "a.test", "/upload", tests::zeros(2048));
    let mut conn = proxy.https("a.test", Alpn::H1).await.unwrap();
    assert_eq!(conn.send(big).await.unwrap().status, 413);
    // 5xx: a route whose only upstream is not listening.
    let resp = proxy.get("down.test", "/").await.unwrap();
    assert_eq!(resp.status, 502);
    // 3xx on the plain listener (same route), and a name no route has (no route label).
    let resp = http_get(proxy.http_addr(), "a.test", "/x").await.unwrap();
    assert_eq!(resp.status, 308);
    let resp = http_get(proxy.http_addr(), "nobody.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 404);

    // A request is counted when it is over, which may be just after its client has it.
    let s = wait_until("nine requests counted", SOON, POLL, || async {
        let s = scrape(metrics).await;
        let n: f64 =
            s.0.iter()
                .filter(|(n, _, _)| n == "proxyd_requests_total")
                .map(|(_, _, v)| v)
                .sum();
        (n >= 9.0).then_some(s)
    })
    .await;
    let req = |route: &str, class: &str| {
        s.get(
            "proxyd_requests_total",
            &[("route", route), ("status", class)],
        )
    };
    assert_eq!(req("a.test/", "2xx"), 4.0);
    assert_eq!(req("a.test/", "3xx"), 1.0);
    assert_eq!(req("a.test/", "4xx"), 2.0);
    assert_eq!(req("a.test/", "5xx"), 0.0);
    assert_eq!(req("down.test/", "5xx"), 1.0);
    assert_eq!(req("-", "4xx"), 1.0);

    // Every answered request is in the duration histogram; only those that reached the
    // upstream are in the upstream one (not the 413, not the redirect).
    let a_route = [("route", "a.test/")];
    assert_eq!(
        s.get("proxyd_request_duration_seconds_count", &a_route),
        7.0
    );
    assert_eq!(
        s.get(
            "proxyd_request_duration_seconds_bucket",
            &[("route", "a.test/"), ("le", "+Inf")]
        ),
        7.0
    );
    let sum = s.get("proxyd_request_duration_seconds_sum", &a_route);
    assert!(sum > 0.0 && sum < 30.0, "duration sum {sum}");
    assert_eq!(
        s.get("proxyd_upstream_response_seconds_count", &a_route),
        5.0
    );
    assert!(
        s.get(
            "proxyd_upstream_response_seconds_bucket",
            &[("route", "a.test/"), ("le", "1")]
        ) == 5.0,
        "five loopback upstream answers, each under a second"
    );
    assert_eq!(
        s.get(
            "proxyd_upstream_response_seconds_count",
            &[("route", "down.test/")]
        ),
        0.0
    );
    assert_eq!(s.get("proxyd_request_body_bytes_total", &a_route), 100.0);
    assert!(s.get("proxyd_response_body_bytes_total", &a_route) > 100.0);

    // Connections, TLS, upstream health, certificates, generation.
    assert!(s.get("proxyd_connections_total", &[("listener", "https")]) >= 4.0);
    assert!(s.get("proxyd_connections_total", &[("listener", "http")]) >= 2.0);
    // The h2 connection is still open (the 413 closed its own).
    assert!(s.get("proxyd_connections_active", &[("listener", "https")]) >= 1.0);
    assert!(s.get("proxyd_tls_handshakes_total", &[("version", "TLSv1.3")]) >= 4.0);
    let a_addr = a.addr().to_string();
    assert_eq!(
        s.get(
            "proxyd_upstream_healthy",
            &[("route", "a.test/"), ("upstream", &a_addr)]
        ),
        1.0
    );
    let dead_addr = format!("127.0.0.1:{dead}");
    assert_eq!(
        s.get(
            "proxyd_upstream_healthy",
            &[("route", "down.test/"), ("upstream", &dead_addr)]
        ),
        0.0
    );
    assert!(s.has(
        "proxyd_upstream_healthy",
        &[("route", "down.test/"), ("upstream", &dead_addr)]
    ));
    let not_after = s.get(
        "proxyd_certificate_not_after_seconds",
        &[("name", "a.test"), ("issuer", "local")],
    );
    assert!(
        not_after > unix_now() as f64 + 86_400.0,
        "a.test's certificate expires at {not_after}"
    );
    assert_eq!(s.get("proxyd_routes_generation", &[]), 1.0);
    assert!(s.get("proxyd_start_time_seconds", &[]) > 0.0);
    // No client address and no raw path is ever a label.
    for (_, labels, _) in &s.0 {
        for v in labels.values() {
            assert!(v != "127.0.0.1" && !v.starts_with("/"), "label value {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_failures_are_counted_by_reason() {
    let a = Backend::start("a").await;
    let metrics = free_addr();
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    let ca = proxy.ca_pem();
    let addr = proxy.https_addr();

    // A name the proxy has no certificate for.
    let e = tls_connect(
        addr,
        client_config(&ca, Alpn::Both).unwrap(),
        "unknown.test",
    )
    .await
    .unwrap_err();
    eprintln!("unknown SNI: {e:#}");
    // An ALPN list with none of ours.
    let mut odd = (*client_config(&ca, Alpn::Both).unwrap()).clone();
    odd.alpn_protocols = vec![b"spdy/3".to_vec()];
    tls_connect(addr, Arc::new(odd), "a.test")
        .await
        .unwrap_err();
    // Plain HTTP on the TLS port.
    raw_tcp(
        addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .ok();
    // And one that works.
    assert_eq!(proxy.get("a.test", "/").await.unwrap().status, 200);

    let s = wait_until("three failures counted", SOON, POLL, || async {
        let s = scrape(metrics).await;
        let total: f64 = ["unknown_sni", "no_shared_alpn", "invalid"]
            .iter()
            .map(|r| s.get("proxyd_tls_handshake_failures_total", &[("reason", r)]))
            .sum();
        (total >= 3.0).then_some(s)
    })
    .await;
    let fail = |reason| s.get("proxyd_tls_handshake_failures_total", &[("reason", reason)]);
    assert_eq!(fail("unknown_sni"), 1.0);
    assert_eq!(fail("no_shared_alpn"), 1.0);
    assert_eq!(fail("invalid"), 1.0);
    assert_eq!(
        fail("other"),
        0.0,
        "a failure fell through the classification"
    );
    assert_eq!(fail("timeout"), 0.0);
    assert_eq!(
        s.get("proxyd_tls_handshakes_total", &[("version", "TLSv1.3")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_are_a_gauge_per_route() {
    let chat = Backend::start("chat").await;
    let metrics = free_addr();
    let proxy = Proxy::builder(&one_route(&["chat.test"], &chat, "websocket = true"))
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    let (mut ws, resp) = wss_connect(proxy.https_addr(), &proxy.ca_pem(), "chat.test", "/ws")
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let route = [("route", "chat.test/")];
    let s = scrape(metrics).await;
    assert_eq!(s.get("proxyd_websockets_active", &route), 1.0);
    ws.send(Message::text("bye")).await.unwrap();
    ws.close(None).await.unwrap();
    drop(ws);
    let s = wait_until("the websocket gauge back at 0", SOON, POLL, || async {
        let s = scrape(metrics).await;
        (s.get("proxyd_websockets_active", &route) == 0.0).then_some(s)
    })
    .await;
    assert_eq!(
        s.get(
            "proxyd_requests_total",
            &[("route", "chat.test/"), ("status", "1xx")]
        ),
        1.0
    );
    // A tunnel's lifetime is not a request latency.
    assert_eq!(s.get("proxyd_request_duration_seconds_count", &route), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_counted_and_series_follow_the_table() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let metrics = free_addr();
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    assert_eq!(proxy.get("a.test", "/").await.unwrap().status, 200);
    let started = unix_now() as f64;
    let s = scrape(metrics).await;
    assert_eq!(s.get("proxyd_reloads_total", &[("result", "success")]), 0.0);
    assert_eq!(
        s.get("proxyd_reload_last_failure_timestamp_seconds", &[]),
        0.0
    );

    // A good reload: a.test goes, b.test comes.
    std::fs::write(proxy.routes_path(), one_route(&["b.test"], &b, "")).unwrap();
    proxy.signal(libc::SIGHUP);
    let s = wait_until("generation 2", SOON, POLL, || async {
        let s = scrape(metrics).await;
        (s.get("proxyd_routes_generation", &[]) == 2.0
            && s.get("proxyd_reloads_total", &[("result", "success")]) == 1.0
            && s.get("proxyd_reload_last_success_timestamp_seconds", &[]) >= started.floor())
        .then_some(s)
    })
    .await;
    assert!(
        !s.has("proxyd_requests_total", &[("route", "a.test/")]),
        "the series of a removed route stay"
    );
    assert!(s.has("proxyd_upstream_healthy", &[("route", "b.test/")]));
    assert_eq!(proxy.get("b.test", "/").await.unwrap().status, 200);

    // A bad one: counted, nothing else changes.
    std::fs::write(proxy.routes_path(), "[[route]]\nhosts = 1\n").unwrap();
    proxy.signal(libc::SIGHUP);
    let s = wait_until("a failed reload counted", SOON, POLL, || async {
        let s = scrape(metrics).await;
        // A scrape is no snapshot: it can read the time gauge before the reload sets it
        // and the counter after, so both are waited for. So is the b.test request: it is
        // counted when its logging phase ends, which can be after the client has the
        // answer (seen under CI's load).
        (s.get("proxyd_reloads_total", &[("result", "failure")]) == 1.0
            && s.get("proxyd_reload_last_failure_timestamp_seconds", &[]) >= started.floor()
            && s.get(
                "proxyd_requests_total",
                &[("route", "b.test/"), ("status", "2xx")],
            ) >= 1.0)
            .then_some(s)
    })
    .await;
    assert_eq!(s.get("proxyd_routes_generation", &[]), 2.0);
    assert_eq!(
        s.get(
            "proxyd_requests_total",
            &[("route", "b.test/"), ("status", "2xx")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_page_and_readiness_say_the_listeners_are_up() {
    let a = Backend::start("a").await;
    let metrics = free_addr();
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--metrics")
        .arg(metrics.to_string())
        .start()
        .await;
    let health = wait_until("GET /health", SOON, POLL, || async {
        http_get(metrics, "monitoring", "/health").await.ok()
    })
    .await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.text(), "ok generation=1\n");
    let other = http_get(metrics, "monitoring", "/").await.unwrap();
    assert_eq!(other.status, 404);

    // The admin API's readiness, through proxyctl.
    let out = proxyctl(&proxy, &["status", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ready = &v["ready"];
    assert_eq!(ready["ready"], true, "{ready}");
    let listeners = ready["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 2, "{ready}");
    assert!(listeners.iter().all(|l| l["listening"] == true), "{ready}");
    assert_eq!(ready["names_without_certificate"], serde_json::json!([]));
    let out = proxyctl(&proxy, &["status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nready: yes\n"), "{text}");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_lines_carry_the_request_fields() {
    let a = Backend::start("a").await;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("access.log");
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--access-log")
        .arg(&log)
        .start()
        .await;

    let mut h2 = proxy.https("a.test", Alpn::H2).await.unwrap();
    let mut req = request(Method::GET, "a.test", "/hello?x=1", tests::empty());
    req.headers_mut()
        .insert(header::USER_AGENT, "metrics-test/1".parse().unwrap());
    req.headers_mut()
        .insert(header::REFERER, "https://a.test/".parse().unwrap());
    let first = h2.send(req).await.unwrap();
    assert_eq!(first.status, 200);
    let mut h1 = proxy.https("a.test", Alpn::H1).await.unwrap();
    assert_eq!(h1.get("a.test", "/status/404").await.unwrap().status, 404);
    let plain = http_get(proxy.http_addr(), "nobody.test", "/x")
        .await
        .unwrap();
    assert_eq!(plain.status, 404);

    let got = wait_until("three access log lines", SOON, POLL, || async {
        let l = lines(&log);
        (l.len() >= 3).then_some(l)
    })
    .await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let v: Vec<serde_json::Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let by_path = |path: &str| {
        v.iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {got:#?}"))
    };

    let h2_line = by_path("/hello");
    assert!(
        h2_line["time"].as_str().unwrap().ends_with('Z'),
        "{h2_line}"
    );
    assert_eq!(h2_line["client"], "127.0.0.1");
    assert_eq!(h2_line["host"], "a.test");
    assert_eq!(h2_line["method"], "GET");
    assert_eq!(h2_line["path"], "/hello");
    assert_eq!(h2_line["query"], "x=1");
    assert_eq!(h2_line["protocol"], "HTTP/2");
    assert_eq!(h2_line["status"], 200);
    assert_eq!(h2_line["bytes_out"], first.body.len() as u64);
    assert_eq!(h2_line["bytes_in"], 0);
    assert_eq!(h2_line["upstream"], a.addr().to_string());
    assert_eq!(h2_line["route"], "a.test/");
    assert_eq!(h2_line["tls"], "TLSv1.3");
    assert_eq!(h2_line["alpn"], "h2");
    assert_eq!(h2_line["user_agent"], "metrics-test/1");
    assert_eq!(h2_line["referer"], "https://a.test/");
    let total = h2_line["duration_ms"].as_f64().unwrap();
    let upstream = h2_line["upstream_ms"].as_f64().unwrap();
    assert!(
        total > 0.0 && upstream > 0.0 && upstream <= total,
        "{h2_line}"
    );

    let h1_line = by_path("/status/404");
    assert_eq!(h1_line["status"], 404);
    assert_eq!(h1_line["protocol"], "HTTP/1.1");
    assert_eq!(h1_line["alpn"], "http/1.1");
    assert!(h1_line.get("query").is_none(), "{h1_line}");

    let plain_line = by_path("/x");
    assert_eq!(plain_line["status"], 404);
    assert_eq!(plain_line["host"], "nobody.test");
    assert!(plain_line["route"].is_null() && plain_line["upstream"].is_null());
    assert!(plain_line["tls"].is_null() && plain_line["alpn"].is_null());
    assert_eq!(plain_line["local"], "unknown host");

    // Not on stderr as well.
    assert!(!proxy.log().contains("/hello"), "{}", proxy.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_log_format_on_stderr() {
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--access-log-format")
        .arg("combined")
        .start()
        .await;
    let mut h1 = proxy.https("a.test", Alpn::H1).await.unwrap();
    assert_eq!(
        h1.get("a.test", "/page?q=%22x%22").await.unwrap().status,
        200
    );
    let line = wait_until("the combined line", SOON, POLL, || async {
        proxy
            .log()
            .lines()
            .find(|l| l.contains("/page?q="))
            .map(str::to_owned)
    })
    .await;
    let prefix = "127.0.0.1 - - [";
    assert!(line.starts_with(prefix), "{line}");
    assert!(
        line.contains("] \"GET /page?q=%22x%22 HTTP/1.1\" 200 "),
        "{line}"
    );
    let upstream = a.addr().to_string();
    assert!(
        line.contains(" \"-\" \"-\" \"a.test\" a.test/ ")
            && line.ends_with(&format!(" {upstream} TLSv1.3 http/1.1")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_reopened_on_sigusr1_without_losing_a_line() {
    let a = Backend::start("a").await;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("access.log");
    let rotated = tmp.path().join("access.log.1");
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--access-log")
        .arg(&log)
        .start()
        .await;
    let sent = Arc::new(AtomicU64::new(0));

    // Traffic that goes on while the file is renamed and reopened.
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = Vec::new();
    for _ in 0..2 {
        let mut conn = proxy.https("a.test", Alpn::H2).await.unwrap();
        let (stop, sent) = (stop.clone(), sent.clone());
        background.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = conn.get("a.test", "/bg").await.unwrap();
                assert_eq!(r.status, 200);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut conn = proxy.https("a.test", Alpn::H1).await.unwrap();
    for _ in 0..30 {
        assert_eq!(conn.get("a.test", "/before").await.unwrap().status, 200);
        sent.fetch_add(1, Ordering::Relaxed);
    }
    wait_until("the 30 lines in the first file", SOON, POLL, || async {
        let n = lines(&log)
            .iter()
            .filter(|l| l.contains("\"/before\""))
            .count();
        (n == 30).then_some(())
    })
    .await;

    // logrotate: rename, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    proxy.signal(libc::SIGUSR1);
    wait_until("the log reopened at its path", SOON, POLL, || async {
        log.exists().then_some(())
    })
    .await;
    for _ in 0..30 {
        assert_eq!(conn.get("a.test", "/after").await.unwrap().status, 200);
        sent.fetch_add(1, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    for t in background {
        t.await.unwrap();
    }
    let sent = sent.load(Ordering::Relaxed);

    let (old, new) = wait_until(
        "every request in one of the two files",
        SOON,
        POLL,
        || async {
            let (old, new) = (lines(&rotated), lines(&log));
            (old.len() + new.len() >= sent as usize).then_some((old, new))
        },
    )
    .await;
    assert_eq!(old.len() + new.len(), sent as usize, "lines duplicated");
    for line in old.iter().chain(new.iter()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("torn line ({e}): {line}"));
    }
    let count = |lines: &[String], path: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("\"path\":\"{path}\"")))
            .count()
    };
    assert_eq!(
        count(&old, "/before"),
        30,
        "lines before the rename stay there"
    );
    assert_eq!(
        count(&new, "/after"),
        30,
        "lines after the reopen go to the new file"
    );
    assert!(
        proxy.log().contains("access log reopened"),
        "{}",
        proxy.log_tail(20)
    );
    eprintln!(
        "{sent} requests: {} lines in the rotated file, {} in the new one",
        old.len(),
        new.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_that_cannot_be_written_are_counted_as_dropped() {
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    let a = Backend::start("a").await;
    let metrics = free_addr();
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--metrics")
        .arg(metrics.to_string())
        .arg("--access-log")
        .arg("/dev/full")
        .arg("--log-summary-interval")
        .arg("1s")
        .start()
        .await;
    const REQUESTS: usize = 200;
    let mut conn = proxy.https("a.test", Alpn::H1).await.unwrap();
    for _ in 0..REQUESTS {
        // Requests do not notice: they never wait for the disk.
        assert_eq!(conn.get("a.test", "/").await.unwrap().status, 200);
    }
    let dropped = wait_until("every line counted as dropped", SOON, POLL, || async {
        let s = scrape(metrics).await;
        let write_error = s.get(
            "proxyd_access_log_dropped_lines_total",
            &[("reason", "write_error")],
        );
        (write_error >= REQUESTS as f64).then_some(s)
    })
    .await;
    // Exactly one per request (the scrapes above are not logged), none for another reason.
    assert_eq!(
        dropped.get(
            "proxyd_access_log_dropped_lines_total",
            &[("reason", "write_error")]
        ),
        REQUESTS as f64
    );
    assert_eq!(
        dropped.get(
            "proxyd_access_log_dropped_lines_total",
            &[("reason", "queue_full")]
        ),
        0.0
    );
    // The daemon's log says so once, with the cause, then sums it up: not a line each.
    wait_until("a summary of the dropped lines", SOON, POLL, || async {
        proxy
            .log()
            .lines()
            .any(|l| l.contains("lines dropped in the last") && l.contains("write_error="))
            .then_some(())
    })
    .await;
    let log = proxy.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("access log: write failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(failed[0].contains("No space left on device"), "{log}");
}

/// The systemd unit this repository ships (proxy/proxyd/dist): its access log goes to a
/// file in its LogsDirectory, not the journal, and the shipped logrotate snippet rotates
/// that very file the way proxyd reopens it (rename, then SIGUSR1 to the main process).
/// Then the rotation itself, as the snippet does it, on a proxyd started with the
/// unit's access-log flag moved into a temporary directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_unit_logs_requests_to_a_file_the_shipped_logrotate_rotates() {
    let dist = tests::workspace_root().join("proxy/proxyd/dist");
    let unit = std::fs::read_to_string(dist.join("proxyd.service")).unwrap();
    let unit = unit.replace("\\\n", " ");
    let setting = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in proxyd.service"))
            .to_owned()
    };
    // The daemon's flags: the unit's one environment file (PROXYD_ARGS).
    let shipped = tests::unit::Shipped::read().unwrap();
    let flags = &shipped.proxyd_args;
    let access_log = flags
        .iter()
        .position(|f| f == "--access-log")
        .map(|i| flags[i + 1].as_str())
        .unwrap_or_else(|| panic!("the unit logs requests to the journal: {flags:?}"));
    let logs_dir = format!("/var/log/{}/", setting("LogsDirectory"));
    assert!(
        access_log.starts_with(&logs_dir),
        "{access_log} is not in the unit's LogsDirectory ({logs_dir}): ProtectSystem=strict refuses it"
    );

    let rotate = std::fs::read_to_string(dist.join("proxyd.logrotate")).unwrap();
    let rule: Vec<&str> = rotate
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rule[0], format!("{access_log} {{"), "{rotate}");
    // Renamed, never copied and truncated (which loses lines), compressed a rotation
    // later (proxyd may still end its last lines in it), reopened by the main process
    // (SIGUSR1 to anything else in the unit, e.g. ExecReload's script, would kill it).
    for directive in ["nocreate", "delaycompress"] {
        assert!(rule.contains(&directive), "no {directive}: {rotate}");
    }
    assert!(!rule.contains(&"copytruncate"), "{rotate}");
    let post = rule
        .iter()
        .position(|l| *l == "postrotate")
        .expect("postrotate");
    assert_eq!(rule[post + 2], "endscript");
    let postrotate = rule[post + 1];
    assert!(
        postrotate.contains("systemctl kill --kill-whom=main --signal=SIGUSR1 proxyd.service"),
        "{rotate}"
    );
    // The script itself runs here (sh -c, as logrotate does), with a `systemctl` that
    // answers for a unit whose main process is this test's proxyd: `is-active` from a
    // state file, `kill` as kill(1) on that process.
    let bin = tmp_bin_dir();
    let active = bin.path().join("active");
    let run_postrotate = |pid: u32| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(postrotate)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
            .env("UNIT_ACTIVE", &active)
            .env("UNIT_MAIN_PID", pid.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postrotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // The rotation, on a proxyd with the unit's flag (its directory moved here).
    let a = Backend::start("a").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(access_log.strip_prefix(&logs_dir).unwrap());
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .arg("--access-log")
        .arg(&file)
        .start()
        .await;
    let mut conn = proxy.https("a.test", Alpn::H1).await.unwrap();
    assert_eq!(conn.get("a.test", "/day-1").await.unwrap().status, 200);
    wait_until("the first line", SOON, POLL, || async {
        (lines(&file).len() == 1).then_some(())
    })
    .await;
    let rotated = file.with_extension("log.1");
    std::fs::rename(&file, &rotated).unwrap();
    // A stopped unit: nothing to signal, and not a failure for logrotate.
    run_postrotate(proxy.pid());
    assert!(!file.exists(), "signalled while the unit was inactive");
    std::fs::write(&active, "").unwrap();
    run_postrotate(proxy.pid());
    wait_until("the file reopened at its path", SOON, POLL, || async {
        file.exists().then_some(())
    })
    .await;
    assert_eq!(conn.get("a.test", "/day-2").await.unwrap().status, 200);
    wait_until("the next line in the new file", SOON, POLL, || async {
        (lines(&file).len() == 1).then_some(())
    })
    .await;
    assert!(lines(&rotated)[0].contains("/day-1"));
    assert!(lines(&file)[0].contains("/day-2"));
}

/// A directory holding a `systemctl` for the postrotate script: `is-active` succeeds while
/// the file `$UNIT_ACTIVE` exists (fails like systemd's when it does not), `kill` sends
/// SIGUSR1 to `$UNIT_MAIN_PID` (fails like systemd's "No main process" when inactive).
fn tmp_bin_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("systemctl");
    std::fs::write(
        &script,
        r#"#!/bin/sh
case " $* " in
  *" is-active "*) [ -e "$UNIT_ACTIVE" ] || exit 3 ;;
  *" kill "*) [ -e "$UNIT_ACTIVE" ] || { echo "Failed to kill unit: No main process to kill" >&2; exit 1; }
              case " $* " in *" --signal=SIGUSR1 "*) exec kill -USR1 "$UNIT_MAIN_PID" ;; esac; exit 2 ;;
  *) exit 2 ;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
