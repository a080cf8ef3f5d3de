//! Request smuggling shapes over HTTP/1.1, on the plain listener (a route with
//! `https_redirect = false`) and over TLS: each is refused (4xx or a closed connection)
//! before anything reaches the upstream, or forwarded in one unambiguous form. The
//! upstream is a raw recorder, so "unambiguous" is checked on the bytes it got.

use std::time::Duration;

use tests::raw_upstream::{RawRequest, RawUpstream};
use tests::{raw_tcp, raw_tls, Proxy};

use super::{others_are_served, plain_route, status_of};

/// The request an attacker tries to slip past the proxy.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 4xx (or a closed connection) and nothing at all reaches the upstream.
    Refused,
    /// 4xx or a closed connection; the head may have been forwarded (bodies stream),
    /// but the upstream never gets a complete request.
    RefusedInBody,
    /// Forwarded as exactly one complete request that passes this check.
    Forwarded(fn(&RawRequest) -> Result<(), String>),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    vec![
        case(
            "Content-Length and Transfer-Encoding",
            format!("POST /cl-te HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding then Content-Length",
            format!("POST /te-cl HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "two different Content-Lengths",
            format!("POST /cl-cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 41\r\n\r\nabc{SMUGGLED}"),
            Refused,
        ),
        case(
            "Content-Length list",
            format!("POST /cl-list HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3, 41\r\n\r\nabc{SMUGGLED}"),
            Refused,
        ),
        case(
            "signed Content-Length",
            format!("POST /cl-sign HTTP/1.1\r\nHost: a.test\r\nContent-Length: +3\r\n\r\nabc{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding not ending in chunked",
            format!("POST /te-identity HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "unknown Transfer-Encoding",
            format!("POST /te-x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "space before the colon of Transfer-Encoding",
            format!("POST /te-space HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /te-10 HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "chunk size not hex",
            format!("POST /chunk-zz HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            RefusedInBody,
        ),
        case(
            "chunk size overflowing 64 bits",
            format!("POST /chunk-big HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            RefusedInBody,
        ),
        case(
            "negative chunk size",
            format!("POST /chunk-neg HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            RefusedInBody,
        ),
        case(
            "chunk data longer than its size",
            format!("POST /chunk-long HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n{SMUGGLED}"),
            RefusedInBody,
        ),
        case(
            "obs-fold",
            format!("GET /fold HTTP/1.1\r\nHost: a.test\r\nX-Folded: a\r\n b\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "obs-fold hiding Transfer-Encoding",
            format!("POST /fold-te HTTP/1.1\r\nHost: a.test\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "bare CR in a header value",
            format!("GET /cr HTTP/1.1\r\nHost: a.test\r\nX-Cr: a\rTransfer-Encoding: chunked\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "bare CR ending a header line",
            format!("GET /cr-end HTTP/1.1\r\nHost: a.test\rX: y\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "header name with a space",
            format!("GET /name-space HTTP/1.1\r\nHost: a.test\r\nBad Name: x\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "header name with a separator",
            format!("GET /name-sep HTTP/1.1\r\nHost: a.test\r\nX(y): z\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "header name with a NUL",
            format!("GET /name-nul HTTP/1.1\r\nHost: a.test\r\nX\0Y: z\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "header name not ASCII",
            format!("GET /name-utf8 HTTP/1.1\r\nHost: a.test\r\nX-\u{e9}: z\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "empty header name",
            format!("GET /name-empty HTTP/1.1\r\nHost: a.test\r\n: z\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "absolute-form whose authority disagrees with Host",
            "GET http://b.test/abs HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Refused,
        ),
        case(
            "two Host headers",
            "GET /two-hosts HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            Refused,
        ),
        case(
            "HTTP/1.1 without Host",
            "GET /no-host HTTP/1.1\r\n\r\n",
            Refused,
        ),
        case(
            "request line over the head limit",
            format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "a".repeat(70 * 1024)),
            Refused,
        ),
        case(
            "header over the head limit",
            format!("GET /big-header HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n", "b".repeat(70 * 1024)),
            Refused,
        ),
        case(
            "too many headers",
            format!(
                "GET /many HTTP/1.1\r\nHost: a.test\r\n{}\r\n",
                (0..300).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ),
            Refused,
        ),
        // Accepted shapes: the upstream gets one request, re-framed by the proxy.
        case(
            "bare LF line ends",
            "GET /lf HTTP/1.1\nHost: a.test\nX-Lf: 1\n\n",
            Forwarded(|r| {
                if r.request_line() != "GET /lf HTTP/1.1" || r.header("x-lf") != ["1"] {
                    return Err("not the request sent".into());
                }
                if r.head.replace("\r\n", "").contains(['\r', '\n']) {
                    return Err("a bare LF or CR reached the upstream".into());
                }
                Ok(())
            }),
        ),
        case(
            "identical duplicate Content-Lengths",
            "POST /cl-same HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            Forwarded(|r| {
                if r.header("content-length") != ["3"] || r.body != b"abc" {
                    return Err(format!("framing {:?}, body {:?}", r.header("content-length"), r.body));
                }
                Ok(())
            }),
        ),
        case(
            "identical Content-Length list",
            "POST /cl-list-same HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3, 3\r\n\r\nabc",
            Forwarded(|r| {
                if r.header("content-length") != ["3"] || r.body != b"abc" {
                    return Err(format!("framing {:?}, body {:?}", r.header("content-length"), r.body));
                }
                Ok(())
            }),
        ),
        case(
            "chunked body with an extension and a trailer",
            "POST /chunk-ok HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
            Forwarded(|r| {
                if !r.header("content-length").is_empty() || r.body != b"abc" {
                    return Err(format!("framing {:?}, body {:?}", r.header("content-length"), r.body));
                }
                Ok(())
            }),
        ),
        case(
            "head just under the limit",
            format!("GET /big-ok HTTP/1.1\r\nHost: a.test\r\nCookie: {}\r\n\r\n", "c".repeat(60 * 1024)),
            Forwarded(|r| {
                if r.header("cookie").first().map_or(0, |c| c.len()) != 60 * 1024 {
                    return Err("the cookie did not arrive whole".into());
                }
                Ok(())
            }),
        ),
        case(
            "200 headers",
            format!(
                "GET /200-headers HTTP/1.1\r\nHost: a.test\r\n{}\r\n",
                (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ),
            Forwarded(|r| {
                if r.header("x-h199") != ["v"] {
                    return Err("headers lost".into());
                }
                Ok(())
            }),
        ),
    ]
}

/// Every request with a complete, single framing; none is the smuggled one.
fn assert_nothing_ambiguous(upstream: &RawUpstream) {
    for r in upstream.requests() {
        assert!(
            !r.request_line().contains("smuggled"),
            "a smuggled request reached the upstream:\n{}",
            upstream.dump()
        );
        let cl = r.header("content-length");
        let te = r.header("transfer-encoding");
        assert!(
            cl.len() <= 1 && (cl.is_empty() || te.is_empty()),
            "ambiguous framing reached the upstream ({cl:?}, {te:?}):\n{}",
            upstream.dump()
        );
        assert!(
            !r.head.split("\r\n").any(|l| l.starts_with([' ', '\t'])),
            "a folded header reached the upstream:\n{}",
            upstream.dump()
        );
    }
}

async fn run(proxy: &Proxy, upstream: &RawUpstream, tls: bool) {
    for c in cases() {
        let over = if tls { "TLS" } else { "plain" };
        let before = upstream.requests().len();
        let raw = if tls {
            raw_tls(
                proxy.https_addr(),
                &proxy.ca_pem(),
                "a.test",
                &c.bytes,
                Duration::from_secs(3),
            )
            .await
        } else {
            raw_tcp(proxy.http_addr(), &c.bytes, Duration::from_secs(3)).await
        };
        // A reset instead of an answer is a closed connection too.
        let raw = raw.unwrap_or_default();
        let status = status_of(&raw);
        let text = String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned();
        // Give a request that did get through time to arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let new: Vec<RawRequest> = upstream.requests().split_off(before);
        let ctx = format!("{} over {over}: answer {status:?} {text:?}", c.name);
        match c.expect {
            Expect::Refused => {
                assert!(
                    status.is_none_or(|s| (400..500).contains(&s)),
                    "{ctx}: expected a 4xx or a closed connection"
                );
                assert!(new.is_empty(), "{ctx}: reached the upstream: {new:?}");
            }
            Expect::RefusedInBody => {
                assert!(
                    status.is_none_or(|s| (400..500).contains(&s)),
                    "{ctx}: expected a 4xx or a closed connection"
                );
                assert!(
                    new.iter().all(|r| !r.complete),
                    "{ctx}: a complete request reached the upstream: {new:?}"
                );
            }
            Expect::Forwarded(check) => {
                assert_eq!(status, Some(200), "{ctx}");
                assert_eq!(new.len(), 1, "{ctx}: upstream got {new:?}");
                assert!(new[0].complete, "{ctx}: incomplete: {new:?}");
                if let Err(e) = check(&new[0]) {
                    panic!("{ctx}: {e}: upstream got {}", new[0].head);
                }
            }
        }
        assert_nothing_ambiguous(upstream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_or_forwarded_unambiguously_over_plain_http() {
    let upstream = RawUpstream::start().await;
    let healthy = tests::Backend::start("healthy").await;
    let routes =
        plain_route("a.test", upstream.addr(), "") + &crate::one_route(&["ok.test"], &healthy, "");
    let proxy = Proxy::start(&routes).await;
    run(&proxy, &upstream, false).await;
    others_are_served(&proxy, "ok.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_or_forwarded_unambiguously_over_tls() {
    let upstream = RawUpstream::start().await;
    let healthy = tests::Backend::start("healthy").await;
    let routes =
        plain_route("a.test", upstream.addr(), "") + &crate::one_route(&["ok.test"], &healthy, "");
    let proxy = Proxy::start(&routes).await;
    run(&proxy, &upstream, true).await;
    others_are_served(&proxy, "ok.test").await;
}

/// HTTP/2 to HTTP/1.1 downgrade shapes (H2.TE, H2.CL): the h2 layer refuses them, the
/// upstream never sees a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_with_conflicting_framing_never_reach_the_upstream_as_two() {
    use tests::hostile::h2::{self, frame, header_block};
    let upstream = RawUpstream::start().await;
    let healthy = tests::Backend::start("healthy").await;
    let routes =
        plain_route("a.test", upstream.addr(), "") + &crate::one_route(&["ok.test"], &healthy, "");
    let proxy = Proxy::start(&routes).await;
    let base = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "a.test"),
    ];
    /// What the shape is, its header block, its body.
    type Shape = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static [u8],
    );
    let shapes: Vec<Shape> = vec![
        (
            "transfer-encoding in h2",
            vec![(":path", "/h2-te"), ("transfer-encoding", "chunked")],
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        (
            "content-length shorter than DATA",
            vec![(":path", "/h2-cl"), ("content-length", "0")],
            b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        (
            "header value with CRLF",
            vec![
                (":path", "/h2-crlf"),
                ("x-injected", "a\r\nTransfer-Encoding: chunked"),
            ],
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        (
            "upper-case header name",
            vec![(":path", "/h2-upper"), ("Transfer-Encoding", "chunked")],
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
    ];
    for (name, extra, data) in shapes {
        let mut conn = h2::Conn::open(proxy.https_addr(), &proxy.ca_pem(), "a.test")
            .await
            .unwrap();
        let mut headers: Vec<(&str, &str)> = base.to_vec();
        headers.extend(extra);
        let mut bytes = frame(h2::HEADERS, h2::END_HEADERS, 1, &header_block(&headers));
        bytes.extend(frame(h2::DATA, h2::END_STREAM, 1, data));
        conn.send(&bytes).await.unwrap();
        let (frames, _) = conn.read_until_closed(Duration::from_secs(2)).await;
        // A 200 (HEADERS on stream 1 with :status 200) would mean it was proxied; then
        // the recorder must show one request without the smuggled one.
        let reset = frames
            .iter()
            .any(|f| (f.kind == h2::RST_STREAM && f.stream == 1) || f.kind == h2::GOAWAY);
        let requests = upstream.requests();
        assert!(
            requests
                .iter()
                .all(|r| !r.request_line().contains("smuggled")),
            "{name}: a smuggled request reached the upstream:\n{}",
            upstream.dump()
        );
        assert_nothing_ambiguous(&upstream);
        assert!(
            reset || requests.iter().any(|r| r.complete),
            "{name}: neither refused nor answered: {frames:?}"
        );
    }
    others_are_served(&proxy, "ok.test").await;
}
