//! Hostile hosts (issue 11, item 2): a Host header or HTTP/2 `:authority` that is not a
//! DNS name or an IP literal (with an optional port) is refused with 400 before any route
//! lookup, so nothing reaches an upstream; and what the proxy writes into `Forwarded` and
//! `X-Forwarded-Host` is built from the checked host, never from the client's bytes.
//! The upstream is a raw recorder: the assertions are on the bytes it got.

use std::time::Duration;

use tests::hostile::h2;
use tests::raw_upstream::RawUpstream;
use tests::{raw_tcp, raw_tls, Proxy};

use super::{others_are_served, plain_route, status_of};

/// The payload of the issue: on a wildcard route, a quote in the Host header closed the
/// `host="..."` of `Forwarded` and added a second, forged `for=`.
const INJECTION: &str = "x\",for=\"[::1]\";host=\"a.wild.test";

/// Host headers that are no DNS name or IP literal, each of which a wildcard
/// `*.wild.test` route would otherwise take (one label before `.wild.test`).
fn hostile_hosts() -> Vec<&'static str> {
    vec![
        INJECTION,
        "x;for=1.2.3.4.wild.test",
        "x\\.wild.test",
        "a b.wild.test",
        "a,b.wild.test",
        "user@a.wild.test",
        "a.wild.test:80:80",
        "a.wild.test:",
        "a.wild.test:http",
        "a.wild.test:99999",
        "%61.wild.test",
        "a..wild.test",
        "-a.wild.test",
        "a\u{e9}.wild.test",
        "[a.wild.test]",
    ]
}

async fn send(proxy: &Proxy, tls: bool, head: &str) -> Vec<u8> {
    let res = if tls {
        raw_tls(
            proxy.https_addr(),
            &proxy.ca_pem(),
            "a.wild.test",
            head.as_bytes(),
            Duration::from_secs(3),
        )
        .await
    } else {
        raw_tcp(proxy.http_addr(), head.as_bytes(), Duration::from_secs(3)).await
    };
    res.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_headers_are_refused_before_lookup_and_reach_no_upstream() {
    // (The health checker connects to the upstream but sends nothing: count bytes.)
    let upstream = RawUpstream::start().await;
    let healthy = tests::Backend::start("healthy").await;
    let routes = plain_route("*.wild.test", upstream.addr(), "")
        + &crate::one_route(&["ok.test"], &healthy, "");
    let proxy = Proxy::start(&routes).await;
    for tls in [false, true] {
        for host in hostile_hosts() {
            let head = format!("GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let raw = send(&proxy, tls, &head).await;
            assert_eq!(
                status_of(&raw),
                Some(400),
                "Host {host:?} (tls: {tls}): {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }
    assert!(
        upstream.received().iter().all(Vec::is_empty),
        "a hostile host reached the upstream:\n{}",
        upstream.dump()
    );
    others_are_served(&proxy, "ok.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_x_forwarded_host_carry_the_checked_host_not_the_clients_bytes() {
    let upstream = RawUpstream::start().await;
    let proxy = Proxy::start(&plain_route("*.wild.test", upstream.addr(), "")).await;
    // (Host as sent, X-Forwarded-Host and Forwarded the upstream must see)
    let cases = [
        (
            "A.Wild.Test.",
            "a.wild.test",
            "for=127.0.0.1;proto=http;host=a.wild.test",
        ),
        (
            "b.WILD.test:8080",
            "b.wild.test:8080",
            "for=127.0.0.1;proto=http;host=\"b.wild.test:8080\"",
        ),
    ];
    for (host, xfh, forwarded) in cases {
        let before = upstream.requests().len();
        let head = format!("GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let raw = send(&proxy, false, &head).await;
        assert_eq!(
            status_of(&raw),
            Some(200),
            "Host {host:?}: {:?}",
            String::from_utf8_lossy(&raw)
        );
        // The upstream answers only once it has recorded the whole request.
        let reqs = upstream.requests();
        assert_eq!(reqs.len(), before + 1, "{}", upstream.dump());
        let seen = &reqs[before];
        assert_eq!(seen.header("x-forwarded-host"), [xfh], "{}", seen.head);
        assert_eq!(seen.header("forwarded"), [forwarded], "{}", seen.head);
    }
    // The payload never gets that far.
    let head = format!("GET /p HTTP/1.1\r\nHost: {INJECTION}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&send(&proxy, false, &head).await), Some(400));
    assert_eq!(
        upstream.requests().len(),
        cases.len(),
        "{}",
        upstream.dump()
    );
}

/// The `:status` of an HTTP/2 response whose header block starts with an indexed
/// static-table status (RFC 7541 appendix A: indexes 8 to 14), as h2 encoders write it.
/// Send `block` as the headers of stream 1 (a whole request) and read the answer: its
/// status, or `None` when the stream or the connection was reset.
async fn h2_answer(conn: &mut h2::Conn, block: &[u8], what: &str) -> Option<u16> {
    conn.send(&h2::frame(
        h2::HEADERS,
        h2::END_HEADERS | h2::END_STREAM,
        1,
        block,
    ))
    .await
    .unwrap();
    loop {
        match conn.read_frame(Duration::from_secs(5)).await {
            Ok(Some(f)) if f.kind == h2::HEADERS && f.stream == 1 => return h2_status(&f.payload),
            Ok(Some(f)) if f.kind == h2::RST_STREAM && f.stream == 1 => return None,
            Ok(Some(f)) if f.kind == h2::GOAWAY => return None,
            Ok(Some(_)) => continue,
            other => panic!("{what}: no answer: {other:?}"),
        }
    }
}

fn h2_status(block: &[u8]) -> Option<u16> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let first = *block.first()?;
    (0x88..=0x8e)
        .contains(&first)
        .then(|| STATIC[(first - 0x88) as usize])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_h2_authorities_are_refused_before_lookup_and_reach_no_upstream() {
    let upstream = RawUpstream::start().await;
    let healthy = tests::Backend::start("healthy").await;
    let routes = plain_route("*.wild.test", upstream.addr(), "")
        + &crate::one_route(&["ok.test"], &healthy, "");
    let proxy = Proxy::start(&routes).await;
    // (authority, answer): 400 from the proxy's host check for authorities the h2 layer
    // takes (URI characters) that are still no host; a stream reset (None) where the h2
    // layer already refuses the authority itself.
    let cases = [
        ("x;for=1.2.3.4.wild.test", Some(400)),
        ("a,b.wild.test", Some(400)),
        ("user@a.wild.test", Some(400)),
        ("a.wild.test:", Some(400)),
        ("a..wild.test", Some(400)),
        ("x!$&'()*+=.wild.test", Some(400)),
        ("a.wild.test:99999", Some(400)),
        ("a.wild.test:80:80", None),
        ("%61.wild.test", None),
    ];
    let mut outcomes = Vec::new();
    for (authority, _) in cases {
        let mut conn = h2::Conn::open(proxy.https_addr(), &proxy.ca_pem(), "a.wild.test")
            .await
            .unwrap();
        let block = h2::get(authority, "/p");
        let status = h2_answer(&mut conn, &block, &format!(":authority {authority:?}")).await;
        outcomes.push((authority, status));
    }
    let want: Vec<_> = cases.to_vec();
    assert_eq!(outcomes, want, "(None: a stream reset)");
    assert!(
        upstream.received().iter().all(Vec::is_empty),
        "a hostile :authority reached the upstream:\n{}",
        upstream.dump()
    );
    others_are_served(&proxy, "ok.test").await;
}

/// Review: over HTTP/2 the host can come from `:authority`, from a `host` header, or
/// both. A `host` header that disagrees with `:authority`, a hostile `host` without
/// `:authority`, or neither, is refused before lookup; nothing reaches the upstream.
/// A `host` header alone (RFC 9113 8.3.1 allows it) is routed like `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_host_header_disagreeing_with_authority_or_hostile_is_refused() {
    let upstream = RawUpstream::start().await;
    let proxy = Proxy::start(&plain_route("*.wild.test", upstream.addr(), "")).await;
    let base = [(":method", "GET"), (":scheme", "https")];
    /// What the case is, its header block, the status expected (`None`: a reset).
    type Case = (&'static str, Vec<(&'static str, &'static str)>, Option<u16>);
    let cases: Vec<Case> = vec![
        (
            ":authority and host differ",
            vec![
                (":authority", "a.wild.test"),
                (":path", "/d"),
                ("host", "b.wild.test"),
            ],
            Some(400),
        ),
        (
            "hostile host, no :authority",
            vec![(":path", "/h"), ("host", INJECTION)],
            Some(400),
        ),
        (
            "two host headers, no :authority",
            vec![
                (":path", "/t"),
                ("host", "a.wild.test"),
                ("host", "b.wild.test"),
            ],
            Some(400),
        ),
        (
            "neither :authority nor host",
            vec![(":path", "/n")],
            Some(400),
        ),
        (
            "zone id in :authority",
            vec![(":authority", "[fe80::1%25eth0]"), (":path", "/z")],
            Some(400),
        ),
        (
            "host alone",
            vec![(":path", "/hostonly"), ("host", "A.Wild.Test.")],
            Some(200),
        ),
    ];
    for (name, rest, want) in cases {
        let before = upstream.received().iter().map(Vec::len).sum::<usize>();
        let mut conn = h2::Conn::open(proxy.https_addr(), &proxy.ca_pem(), "a.wild.test")
            .await
            .unwrap();
        let headers: Vec<_> = base.iter().copied().chain(rest).collect();
        let block = h2::header_block(&headers);
        let status = h2_answer(&mut conn, &block, name).await;
        assert_eq!(status, want, "{name}");
        if want != Some(200) {
            let after = upstream.received().iter().map(Vec::len).sum::<usize>();
            assert_eq!(
                before,
                after,
                "{name} reached the upstream:\n{}",
                upstream.dump()
            );
        }
    }
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 1, "{}", upstream.dump());
    assert_eq!(reqs[0].request_line(), "GET /hostonly HTTP/1.1");
    assert_eq!(reqs[0].header("x-forwarded-host"), ["a.wild.test"]);
}
