//! `proxyctl certs preflight`: each cause of a failing ACME order found before any
//! order, on loopback. The proxy resolves through a DNS server the test runs
//! (`tests::DnsServer`, A and CAA records), reads `caaIdentities` from a real pebble's
//! directory, and fetches its one-off token through the name's addresses on the port
//! pebble validates HTTP-01 on (`--acme-http-port`).
//!
//! The names, each failing for one cause only (or none):
//! - `www.good.test`: A 127.0.0.1 (the proxy), CAA on its parent `good.test` naming the
//!   CA: every check passes;
//! - `elsewhere.test`: A 127.0.0.2, where nothing listens: DNS (and so :80) fails;
//! - `caa.test`: A 127.0.0.1, CAA naming another CA: CAA fails;
//! - `port80.test`: A 127.0.0.3, a public address of the proxy by `--public-addr`, but
//!   another server answers its port there: the :80 check fails.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};

use tests::pebble::{Pebble, PebbleOptions};
use tests::{Backend, DnsServer, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::acme::{bench, Validate};
use crate::one_route;
use crate::reload::proxyctl;

const CA: &str = "ca.preflight.test";

/// Requests another server received (the head of each, as read).
type Seen = Arc<Mutex<Vec<String>>>;

/// Another HTTP server on `addr`: every request gets 200 and a body of its own; the
/// requests are kept in the returned list.
async fn other_server(addr: SocketAddr) -> (tokio::task::JoinHandle<()>, Seen) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let seen = Seen::default();
    let kept = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nnot a token")
                    .await;
            });
        }
    });
    (task, seen)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `--json certs preflight NAMES`: the exit status and the reply.
async fn preflight_json(proxy: &Proxy, names: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["--json", "certs", "preflight"];
    args.extend_from_slice(names);
    let o = proxyctl(proxy, &args).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "preflight {names:?}: not JSON ({e}): {}\n{}",
            stdout(&o),
            stderr(&o)
        )
    });
    (o.status.code(), v)
}

/// (result, detail) of `check` of `name` in a reply.
fn result<'a>(v: &'a serde_json::Value, name: &str, check: &str) -> (&'a str, &'a str) {
    let n = v["names"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {v:#}"));
    let c = n["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no {check} check for {name} in {v:#}"));
    (c["result"].as_str().unwrap(), c["detail"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_fails_for_each_cause_and_passes_a_good_name() {
    if Pebble::current("preflight::preflight_fails_for_each_cause_and_passes_a_good_name").is_none()
    {
        return;
    }
    let b = bench(
        Validate::Both,
        PebbleOptions {
            caa_identities: vec![CA],
            ..Default::default()
        },
    )
    .await;
    let port = b.http.port();
    let (other, seen) = other_server(SocketAddr::from(([127, 0, 0, 3], port))).await;
    let dns = DnsServer::start().await;
    dns.set("www.good.test", &[[127, 0, 0, 1].into()]);
    dns.set_caa(
        "good.test",
        &[(0, "issue", CA), (0, "iodef", "mailto:a@good.test")],
    );
    dns.set("elsewhere.test", &[[127, 0, 0, 2].into()]);
    dns.set("caa.test", &[[127, 0, 0, 1].into()]);
    dns.set_caa("caa.test", &[(0, "issue", "other-ca.example; account=1")]);
    dns.set("port80.test", &[[127, 0, 0, 3].into()]);
    // Hostile DNS: 25 addresses (the proxy's and 24 where nothing listens).
    let many: Vec<std::net::Ipv4Addr> = std::iter::once([127, 0, 0, 1].into())
        .chain((1..=24).map(|i| [127, 0, 2, i].into()))
        .collect();
    dns.set("many.test", &many);

    let backend = Backend::start("a").await;
    let routes = one_route(
        &[
            "www.good.test",
            "elsewhere.test",
            "caa.test",
            "port80.test",
            "many.test",
        ],
        &backend,
        "",
    );
    let proxy = b
        .proxy(&routes, "http-01")
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .arg("--acme-http-port")
        .arg(port.to_string())
        .arg("--public-addr")
        .arg("127.0.0.1")
        .arg("--public-addr")
        .arg("127.0.0.3")
        .start()
        .await;

    // All good: exit 0, one line per check.
    let o = proxyctl(&proxy, &["certs", "preflight", "www.good.test"]).await;
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", stderr(&o));
    for check in ["dns", "caa", "http-01"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("www.good.test") && l.contains(check) && l.contains(" ok ")),
            "{check} ok:\n{text}"
        );
    }
    let (code, v) = preflight_json(&proxy, &["www.good.test"]).await;
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["caa_identities"], serde_json::json!([CA]));
    assert_eq!(result(&v, "www.good.test", "dns").0, "ok", "{v:#}");
    let (r, detail) = result(&v, "www.good.test", "caa");
    assert_eq!(r, "ok", "{v:#}");
    assert!(detail.contains("good.test CAA 0 issue"), "{detail}");
    assert_eq!(result(&v, "www.good.test", "http-01").0, "ok", "{v:#}");

    // A record elsewhere: the DNS check fails naming the address.
    let (code, v) = preflight_json(&proxy, &["elsewhere.test"]).await;
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["ok"], false);
    let (r, detail) = result(&v, "elsewhere.test", "dns");
    assert_eq!(r, "fail", "{v:#}");
    assert!(detail.contains("127.0.0.2"), "{detail}");
    assert_eq!(result(&v, "elsewhere.test", "caa").0, "ok", "{v:#}");
    assert_eq!(result(&v, "elsewhere.test", "http-01").0, "fail", "{v:#}");

    // CAA naming another CA: the CAA check fails naming the record; the rest passes.
    let (code, v) = preflight_json(&proxy, &["caa.test"]).await;
    assert_eq!(code, Some(1), "{v:#}");
    let (r, detail) = result(&v, "caa.test", "caa");
    assert_eq!(r, "fail", "{v:#}");
    assert!(detail.contains("other-ca.example"), "{detail}");
    assert!(detail.contains(CA), "{detail}");
    assert_eq!(result(&v, "caa.test", "dns").0, "ok", "{v:#}");
    assert_eq!(result(&v, "caa.test", "http-01").0, "ok", "{v:#}");

    // :80 answered by another server: the self-check fails; DNS (a public address)
    // and CAA (none) pass.
    let (code, v) = preflight_json(&proxy, &["port80.test"]).await;
    assert_eq!(code, Some(1), "{v:#}");
    let (r, detail) = result(&v, "port80.test", "http-01");
    assert_eq!(r, "fail", "{v:#}");
    assert!(detail.contains(&format!("127.0.0.3:{port}")), "{detail}");
    assert_eq!(result(&v, "port80.test", "dns").0, "ok", "{v:#}");
    assert_eq!(result(&v, "port80.test", "caa").0, "ok", "{v:#}");

    // The stranger got exactly what a CA would send: the challenge path, the name as
    // Host; and the one-off token is withdrawn: the proxy no longer answers it.
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let head = &asked[0];
    let token = head
        .strip_prefix("GET /.well-known/acme-challenge/")
        .and_then(|r| r.split_once(" HTTP/1.1\r\n"))
        .map(|(t, _)| t.to_owned())
        .unwrap_or_else(|| panic!("not a challenge request: {head:?}"));
    assert!(
        token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token:?}"
    );
    assert!(
        head.contains(&format!("\r\nHost: port80.test:{port}\r\n")),
        "{head:?}"
    );
    let path = format!("/.well-known/acme-challenge/{token}");
    let r = tests::http_get(b.http, "port80.test", &path).await.unwrap();
    assert_eq!(
        r.status, 404,
        "token {token} still served after the preflight"
    );

    // A name with many addresses: a bounded number fetched (the rest reported as not
    // checked), not one connection per address the DNS server chose to send.
    let (code, v) = preflight_json(&proxy, &["many.test"]).await;
    assert_eq!(code, Some(1), "{v:#}");
    let (r, detail) = result(&v, "many.test", "http-01");
    assert_eq!(r, "fail", "{v:#}");
    assert!(detail.contains("9 more addresses not checked"), "{detail}");
    assert_eq!(detail.matches("127.0.2.").count(), 15, "{detail}");

    // No name: every ACME name; text output, exit 1, the failing names counted.
    let o = proxyctl(&proxy, &["certs", "preflight"]).await;
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}{}", stderr(&o));
    for name in [
        "www.good.test",
        "elsewhere.test",
        "caa.test",
        "port80.test",
        "many.test",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name}:\n{text}");
    }
    assert!(text.contains("5 names, 4 would fail"), "{text}");

    // A name no route lists: an error naming it.
    let o = proxyctl(
        &proxy,
        &["certs", "preflight", "www.good.test", "nowhere.test"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nowhere.test"), "{}", stderr(&o));

    // The DNS server was really asked (A and CAA, the parents of www.good.test).
    assert!(dns.queries() > 8, "{} queries", dns.queries());
    other.abort();
}

/// Debian's pebble sends no `caaIdentities`: a CAA record that restricts issuance cannot
/// be judged (a warning, exit 0); without any CAA record there is nothing to judge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_caa_identities_a_restricting_record_is_a_warning() {
    let b = bench(Validate::Both, PebbleOptions::default()).await;
    let dns = DnsServer::start().await;
    dns.set("a.test", &[[127, 0, 0, 1].into()]);
    dns.set_caa("a.test", &[(0, "issue", CA)]);
    dns.set("b.test", &[[127, 0, 0, 1].into()]);
    let backend = Backend::start("a").await;
    let routes = one_route(&["a.test", "b.test"], &backend, "");
    // No --public-addr: the listeners' addresses (127.0.0.1) are the public ones.
    let proxy = b
        .proxy(&routes, "http-01")
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .arg("--acme-http-port")
        .arg(b.http.port().to_string())
        .start()
        .await;
    let (code, v) = preflight_json(&proxy, &[]).await;
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["caa_identities"], serde_json::json!([]));
    assert_eq!(v["public_addrs"], serde_json::json!(["127.0.0.1"]));
    let (r, detail) = result(&v, "a.test", "caa");
    assert_eq!(r, "warn", "{v:#}");
    assert!(detail.contains("cannot judge"), "{detail}");
    assert_eq!(result(&v, "b.test", "caa").0, "ok", "{v:#}");
    for name in ["a.test", "b.test"] {
        assert_eq!(result(&v, name, "dns").0, "ok", "{v:#}");
        assert_eq!(result(&v, name, "http-01").0, "ok", "{v:#}");
    }
}

/// Without ACME there is no CA to check against: refused, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acme_preflight_is_refused() {
    let backend = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &backend, "")).await;
    let o = proxyctl(&proxy, &["certs", "preflight"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ACME is off"), "{}", stderr(&o));
}

/// A server on `addr` that answers every connection with `answer` (`None`: reads the
/// request and never answers); counts the connections it accepted.
async fn stranger(
    addr: SocketAddr,
    answer: Option<Vec<u8>>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match answer {
                    Some(a) => {
                        let _ = s.write_all(&a).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            });
        }
    });
    (task, accepted)
}

/// Hostile answers, from DNS and from port 80: nothing of them reaches the terminal raw,
/// a CAA tag in capitals counts, a redirect is reported and not followed, a slow or huge
/// answer fails in bounded time and size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_fail_cleanly_and_reach_no_terminal() {
    if Pebble::current("preflight::hostile_answers_fail_cleanly_and_reach_no_terminal").is_none() {
        return;
    }
    let b = bench(
        Validate::Both,
        PebbleOptions {
            caa_identities: vec![CA],
            ..Default::default()
        },
    )
    .await;
    let port = b.http.port();
    // Where a followed redirect would land: must never be connected to.
    let (target, followed) = stranger(SocketAddr::from(([127, 0, 0, 8], port)), None).await;
    let redirect = format!(
        "HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.8:{port}/\x1b[2J\r\nContent-Length: 0\r\n\r\n"
    );
    let (redirector, _) = stranger(
        SocketAddr::from(([127, 0, 0, 4], port)),
        Some(redirect.into_bytes()),
    )
    .await;
    let (slow, _) = stranger(SocketAddr::from(([127, 0, 0, 5], port)), None).await;
    let mut huge = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n".to_vec();
    huge.resize(1 << 20, b'x');
    let (flood, _) = stranger(SocketAddr::from(([127, 0, 0, 6], port)), Some(huge)).await;

    let dns = DnsServer::start().await;
    let hostile_value = format!(
        "other.test; x=\"\x1b]0;owned\x07\x1b[31m\r\n\u{202e}{}",
        "v".repeat(1000)
    );
    dns.set("caa-hostile.test", &[[127, 0, 0, 1].into()]);
    dns.set_caa("caa-hostile.test", &[(0, "issue", &hostile_value)]);
    dns.set("caa-upper.test", &[[127, 0, 0, 1].into()]);
    dns.set_caa("caa-upper.test", &[(0, "ISSUE", "other.test")]);
    dns.set("acct.test", &[[127, 0, 0, 1].into()]);
    let other_account = format!("{CA}; accounturi=https://localhost/my-account/nobody");
    dns.set_caa("acct.test", &[(0, "issue", &other_account)]);
    // A CNAME loop (never resolves: fails, in bounded time) and a chain that ends at
    // the proxy (passes through).
    dns.set_cname("loop.test", "loop2.test");
    dns.set_cname("loop2.test", "loop.test");
    dns.set_cname("alias.test", "alias2.test");
    dns.set_cname("alias2.test", "www.alias.test");
    dns.set("www.alias.test", &[[127, 0, 0, 1].into()]);
    // A right, AAAA failing (SERVFAIL): the CA cannot look it up either.
    dns.set("v6fail.test", &[[127, 0, 0, 1].into()]);
    dns.servfail_aaaa("v6fail.test");
    dns.set("redirect.test", &[[127, 0, 0, 4].into()]);
    dns.set("slow.test", &[[127, 0, 0, 5].into()]);
    dns.set("huge.test", &[[127, 0, 0, 6].into()]);
    let names = [
        "caa-hostile.test",
        "caa-upper.test",
        "redirect.test",
        "slow.test",
        "huge.test",
    ];
    let backend = Backend::start("a").await;
    let mut routed = names.to_vec();
    routed.extend([
        "acct.test",
        "loop.test",
        "alias.test",
        "v6fail.test",
        "*.wild.test",
    ]);
    let proxy = b
        .proxy(&one_route(&routed, &backend, ""), "http-01")
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .arg("--acme-http-port")
        .arg(port.to_string())
        .arg("--public-addr")
        .arg("127.0.0.1")
        .start()
        .await;

    let o = proxyctl(&proxy, &["certs", "preflight"]).await;
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}{}", stderr(&o));
    // acct.test: a failure once the proxy has its account, a warning before.
    assert!(
        text.contains("9 names, 7 would fail") || text.contains("9 names, 8 would fail"),
        "{text}"
    );
    for bad in ['\x1b', '\x07', '\r', '\u{202e}'] {
        assert!(!text.contains(bad), "{bad:?} reached the terminal:\n{text}");
    }
    let (_, v) = preflight_json(&proxy, &names).await;
    let (r, detail) = result(&v, "caa-hostile.test", "caa");
    assert_eq!(r, "fail", "{v:#}");
    assert!(detail.contains("other.test"), "{detail}");
    assert!(
        !detail.contains('\x1b') && !detail.contains('\r'),
        "{detail:?}"
    );
    assert_eq!(result(&v, "caa-upper.test", "caa").0, "fail", "{v:#}");
    // RFC 8657 accounturi naming another account than this proxy's: never ok.
    let (_, v2) = preflight_json(&proxy, &["acct.test", "loop.test", "alias.test"]).await;
    let (r, detail) = result(&v2, "loop.test", "dns");
    assert_eq!(r, "fail", "{detail}");
    // A wildcard, asked for by name (the default leaves it out): no challenge this
    // proxy answers can prove it; its CAA is its base name's.
    let (code, v4) = preflight_json(&proxy, &["*.wild.test"]).await;
    assert_eq!(code, Some(1), "{v4:#}");
    assert_eq!(result(&v4, "*.wild.test", "challenge").0, "fail", "{v4:#}");
    assert!(result(&v4, "*.wild.test", "caa").0 != "fail", "{v4:#}");
    // Never ordered by ACME (the manager leaves wildcards out): no budget to judge.
    assert_eq!(result(&v4, "*.wild.test", "budget").0, "skipped", "{v4:#}");
    let (_, v3) = preflight_json(&proxy, &["v6fail.test"]).await;
    let (r, detail) = result(&v3, "v6fail.test", "dns");
    assert_eq!(r, "fail", "an AAAA lookup failure was hidden: {v3:#}");
    assert!(detail.contains("AAAA"), "{detail}");
    let (r, detail) = result(&v2, "alias.test", "dns");
    assert_eq!(r, "ok", "{detail}");
    assert_eq!(result(&v2, "alias.test", "http-01").0, "ok", "{v2:#}");
    let (r, detail) = result(&v2, "acct.test", "caa");
    match r {
        "fail" => assert!(detail.contains("another account"), "{detail}"),
        "warn" => assert!(detail.contains("has none yet"), "{detail}"),
        _ => panic!("accounturi of another account passed: {v2:#}"),
    }
    let (r, detail) = result(&v, "redirect.test", "http-01");
    assert_eq!(r, "fail", "{v:#}");
    assert!(
        detail.contains("HTTP 301") && detail.contains("not followed"),
        "{detail}"
    );
    assert!(!detail.contains('\x1b'), "{detail:?}");
    let (r, detail) = result(&v, "slow.test", "http-01");
    assert_eq!(r, "fail", "{v:#}");
    assert!(detail.contains("no answer within"), "{detail}");
    let (r, detail) = result(&v, "huge.test", "http-01");
    assert_eq!(r, "fail", "{v:#}");
    assert!(detail.contains("answer longer than"), "{detail}");
    assert_eq!(
        followed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
    for t in [target, redirector, slow, flood] {
        t.abort();
    }
}
