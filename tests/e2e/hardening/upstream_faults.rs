//! Upstreams that fail in every way a TCP peer can: hang, reset mid-response, trickle,
//! answer garbage or headers too large. Each gives the client a clean 502/504 (or, once
//! a response has started, a visibly cut one) within the configured timeout, and never
//! holds up other routes. (Refused connections, a reset before any answer and a slow
//! answer are in `upstream_errors.rs`.)

use std::time::{Duration, Instant};

use tests::raw_upstream::{RawUpstream, Step};
use tests::{Alpn, Backend, Proxy};

use super::others_are_served;
use crate::one_route;

fn route(host: &str, upstream: &RawUpstream, extra: &str) -> String {
    format!(
        "[[route]]\nhosts = [\"{host}\"]\nupstreams = [\"{}\"]\nread_timeout = \"1s\"\n{extra}\n",
        upstream.addr()
    )
}

/// GET over h1 and h2; each answer must come with `status` within `within`.
async fn expect_status(proxy: &Proxy, host: &str, status: u16, within: Duration) {
    for alpn in [Alpn::H1, Alpn::H2] {
        let started = Instant::now();
        let mut conn = proxy.https(host, alpn).await.unwrap();
        conn.timeout = within + Duration::from_secs(5);
        let resp = conn
            .get(host, "/fault")
            .await
            .unwrap_or_else(|e| panic!("{host} over {alpn:?}: no answer: {e:#}"));
        let took = started.elapsed();
        assert_eq!(resp.status, status, "{host} over {alpn:?}: {}", resp.text());
        assert!(
            took < within,
            "{host} over {alpn:?}: {status} after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_upstreams_get_502_or_504_in_time() {
    let ok = Backend::start("ok").await;
    let hang = RawUpstream::scripted(vec![Step::Hang]).await;
    let trickle = RawUpstream::scripted(vec![Step::Trickle(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        Duration::from_millis(1500),
    )])
    .await;
    let reset_in_head = RawUpstream::scripted(vec![
        Step::Send(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()),
        Step::Sleep(Duration::from_millis(50)),
        Step::Reset,
    ])
    .await;
    let garbage = RawUpstream::scripted(vec![
        Step::Send(b"HELLO THERE\r\nthis is not http\r\n\r\n".to_vec()),
        Step::Close,
    ])
    .await;
    let binary = RawUpstream::scripted(vec![
        Step::Send((0u8..=255).cycle().take(4096).collect()),
        Step::Close,
    ])
    .await;
    let bad_status = RawUpstream::scripted(vec![
        Step::Send(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
        Step::Close,
    ])
    .await;
    let two_lengths = RawUpstream::scripted(vec![
        Step::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nokEXTRA!!".to_vec(),
        ),
        Step::Close,
    ])
    .await;
    let huge_head = RawUpstream::scripted(vec![
        Step::Send(
            format!(
                "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
                "X-Huge: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
                    .repeat(32 * 1024)
            )
            .into_bytes(),
        ),
        Step::Close,
    ])
    .await;
    let routes = one_route(&["ok.test"], &ok, "")
        + &route("hang.test", &hang, "")
        + &route("trickle.test", &trickle, "")
        + &route("reset-head.test", &reset_in_head, "")
        + &route("garbage.test", &garbage, "")
        + &route("binary.test", &binary, "")
        + &route("bad-status.test", &bad_status, "")
        + &route("two-lengths.test", &two_lengths, "")
        + &route("huge-head.test", &huge_head, "");
    let proxy = Proxy::start(&routes).await;

    // read_timeout is 1 s: timeouts within ~1 s, broken answers at once.
    expect_status(&proxy, "hang.test", 504, Duration::from_millis(2500)).await;
    expect_status(&proxy, "trickle.test", 504, Duration::from_millis(2500)).await;
    for host in [
        "reset-head.test",
        "garbage.test",
        "binary.test",
        "bad-status.test",
        "two-lengths.test",
        "huge-head.test",
    ] {
        expect_status(&proxy, host, 502, Duration::from_millis(2500)).await;
    }
    others_are_served(&proxy, "ok.test").await;
}

/// Once the answer has started, a 502 is no longer possible: the client must see that
/// the response is cut (h1: connection closed short of Content-Length; h2: stream
/// reset), never a response that looks whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_cuts_the_response_visibly() {
    let ok = Backend::start("ok").await;
    let cut = RawUpstream::scripted(vec![
        Step::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
                "x".repeat(1000)
            )
            .into_bytes(),
        ),
        Step::Sleep(Duration::from_millis(100)),
        Step::Reset,
    ])
    .await;
    let stalled = RawUpstream::scripted(vec![
        Step::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
                "x".repeat(1000)
            )
            .into_bytes(),
        ),
        Step::Hang,
    ])
    .await;
    let routes = one_route(&["ok.test"], &ok, "")
        + &route("cut.test", &cut, "")
        + &route("stalled.test", &stalled, "");
    let proxy = Proxy::start(&routes).await;
    for host in ["cut.test", "stalled.test"] {
        for alpn in [Alpn::H1, Alpn::H2] {
            let started = Instant::now();
            let mut conn = proxy.https(host, alpn).await.unwrap();
            conn.timeout = Duration::from_secs(10);
            let result = conn.get(host, "/cut").await;
            let took = started.elapsed();
            match result {
                Err(e) => eprintln!("{host} over {alpn:?}: cut after {took:?}: {e:#}"),
                Ok(resp) => panic!(
                    "{host} over {alpn:?}: a cut response looked whole: {} with {} bytes",
                    resp.status,
                    resp.body.len()
                ),
            }
            assert!(
                took < Duration::from_secs(3),
                "{host} over {alpn:?}: cut after {took:?}"
            );
        }
    }
    others_are_served(&proxy, "ok.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_does_not_hold_up_other_routes() {
    let ok = Backend::start("ok").await;
    let hang = RawUpstream::scripted(vec![Step::Hang]).await;
    let routes = one_route(&["ok.test"], &ok, "")
        + &format!(
            "[[route]]\nhosts = [\"hang.test\"]\nupstreams = [\"{}\"]\nread_timeout = \"20s\"\n",
            hang.addr()
        );
    let proxy = Proxy::start(&routes).await;
    let ca = proxy.ca();
    // 60 requests waiting on the hanging upstream, over h1 and h2.
    let mut waiting = Vec::new();
    for i in 0..60 {
        let (addr, ca) = (proxy.https_addr(), ca.clone());
        waiting.push(tokio::spawn(async move {
            let alpn = if i % 2 == 0 { Alpn::H1 } else { Alpn::H2 };
            let mut conn = tests::Conn::https(addr, &ca, "hang.test", alpn)
                .await
                .unwrap();
            conn.timeout = Duration::from_secs(30);
            conn.get("hang.test", "/hang").await
        }));
    }
    tests::wait_until(
        "the hanging upstream to hold 60 requests",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (hang.requests().len() >= 60).then_some(()) },
    )
    .await;
    for _ in 0..5 {
        others_are_served(&proxy, "ok.test").await;
    }
    for w in waiting {
        w.abort();
    }
}
