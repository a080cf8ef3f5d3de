//! Response bodies through the proxy's zero-copy body path (pingora-core: bodies handed
//! out from the buffer they were read into, and written to the client from those same
//! bytes, several chunks per vectored write): every byte arrives once, in order, on
//! kept-alive connections at both ends, whatever the upstream's read sizes; an upstream
//! that sends more than its `Content-Length` gets neither its extra bytes forwarded nor
//! its connection reused.

use std::time::Duration;

use tests::raw_upstream::{RawUpstream, Step};
use tests::{Alpn, Proxy};

/// A body no shifted, repeated or dropped chunk can pass for: byte `i` is a function of
/// `i` with a period (251) prime to every buffer size.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed ^ (i / 251) as u8)
        .collect()
}

/// Upstream connections that carried at least one request (health checks, TCP connects
/// only, carry none).
fn used_connections(upstream: &RawUpstream) -> usize {
    upstream.received().iter().filter(|b| !b.is_empty()).count()
}

fn route(host: &str, upstream: &RawUpstream) -> String {
    format!(
        "[[route]]\nhosts = [\"{host}\"]\nupstreams = [\"{}\"]\nread_timeout = \"5s\"\n",
        upstream.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_arrive_whole_over_kept_alive_connections() {
    // 300 000 bytes in reads of every size: with the head, a byte alone, odd sizes
    // around the body buffer's quarter (16 KiB, below which a read is copied) and
    // larger than the whole buffer (64 KiB), with pauses so they arrive as separate reads
    let body = pattern(300_000, 0x5a);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    let cuts = [
        0, 100, 101, 16_383, 16_385, 33_000, 100_000, 170_001, 300_000,
    ];
    let mut script = vec![Step::Send([head.as_bytes(), &body[..cuts[1]]].concat())];
    for w in cuts[1..].windows(2) {
        script.push(Step::Sleep(Duration::from_millis(5)));
        script.push(Step::Send(body[w[0]..w[1]].to_vec()));
    }
    let sized = RawUpstream::scripted(script).await;
    // 40 000 bytes and 9 more than its Content-Length, in one write
    let over_body = pattern(40_000, 0x33);
    let over = RawUpstream::scripted(vec![Step::Send(
        [
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                over_body.len()
            )
            .as_bytes(),
            &over_body,
            b"SMUGGLED!",
        ]
        .concat(),
    )])
    .await;
    let proxy = Proxy::start(&(route("sized.test", &sized) + &route("over.test", &over))).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        let mut conn = proxy.https("sized.test", alpn).await.unwrap();
        conn.timeout = Duration::from_secs(30);
        for round in 0..3 {
            let resp = conn.get("sized.test", "/big").await.unwrap();
            assert_eq!(resp.status, 200, "{alpn:?} round {round}");
            assert!(
                resp.body[..] == body[..],
                "{alpn:?} round {round}: {} bytes, first difference at {:?}",
                resp.body.len(),
                resp.body.iter().zip(&body).position(|(a, b)| a != b)
            );
        }
    }
    // the upstream connection was reused between the six requests (it is only ever
    // released after a whole, exact body)
    assert_eq!(sized.requests().len(), 6);
    assert!(
        used_connections(&sized) < 6,
        "{} upstream connections for 6 requests",
        used_connections(&sized)
    );

    for alpn in [Alpn::H1, Alpn::H2] {
        let mut conn = proxy.https("over.test", alpn).await.unwrap();
        conn.timeout = Duration::from_secs(30);
        for round in 0..2 {
            let resp = conn.get("over.test", "/over").await.unwrap();
            assert_eq!(resp.status, 200, "{alpn:?} round {round}");
            assert!(
                resp.body[..] == over_body[..],
                "{alpn:?} round {round}: body differs"
            );
        }
    }
    // never reused: the bytes past its Content-Length could be the start of a
    // response to the next request
    assert_eq!(used_connections(&over), 4, "{}", over.dump());
    assert_eq!(over.requests().len(), 4);
}
