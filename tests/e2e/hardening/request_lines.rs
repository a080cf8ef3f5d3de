//! Invalid request lines and chunk framing (issue 11, item 3). RFC 9112 section 3: a
//! request line that does not match the grammar is refused with 400, never repaired
//! (pingora-core used to percent-escape `G ET /p` into a request for `ET%20/p`); and a
//! chunked body with broken framing gets a prompt 400, not silence until a timeout. The
//! upstream is a raw recorder: nothing of a refused request line may reach it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tests::client::tcp_connect;
use tests::raw_upstream::RawUpstream;
use tests::{raw_tcp, raw_tls, Proxy};

use super::{others_are_served, plain_route, status_of};

/// Request lines (with their line end) that are not `method SP request-target SP
/// HTTP-version CRLF` with a token method and a target in origin-form, absolute-form,
/// or `*` for OPTIONS.
fn invalid_request_lines() -> Vec<&'static str> {
    vec![
        "G ET /p HTTP/1.1\r\n",
        "GET  /p HTTP/1.1\r\n",
        "GET /p  HTTP/1.1\r\n",
        " GET /p HTTP/1.1\r\n",
        "GET /a b HTTP/1.1\r\n",
        "GET /p?q=a b HTTP/1.1\r\n",
        "GET /a\"b c\" HTTP/1.1\r\n",
        "GET /p HTTP/1.1 \r\n",
        "GET\t/p HTTP/1.1\r\n",
        "GET /p\tHTTP/1.1\r\n",
        "GET /a\tb HTTP/1.1\r\n",
        "GET /p HTTP/1.1\rX-Bare-Cr: 1\r\n",
        "GET /a\rb HTTP/1.1\r\n",
        "G(T /p HTTP/1.1\r\n",
        "GET p HTTP/1.1\r\n",
        "GET ?q HTTP/1.1\r\n",
        "GET a.test:80 HTTP/1.1\r\n",
        "GET * HTTP/1.1\r\n",
        "GET ftp://a.test/p HTTP/1.1\r\n",
        "GET http:/a.test/p HTTP/1.1\r\n",
        "GET /p HTTP/1.2\r\n",
        "GET /p\r\n",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_request_lines_get_400_and_nothing_reaches_the_upstream() {
    let upstream = RawUpstream::start().await;
    let healthy = tests::Backend::start("healthy").await;
    let routes =
        plain_route("a.test", upstream.addr(), "") + &crate::one_route(&["ok.test"], &healthy, "");
    let proxy = Proxy::start(&routes).await;
    for tls in [false, true] {
        for line in invalid_request_lines() {
            let head = format!("{line}Host: a.test\r\nConnection: close\r\n\r\n");
            let raw = if tls {
                raw_tls(
                    proxy.https_addr(),
                    &proxy.ca_pem(),
                    "a.test",
                    head.as_bytes(),
                    Duration::from_secs(3),
                )
                .await
            } else {
                raw_tcp(proxy.http_addr(), head.as_bytes(), Duration::from_secs(3)).await
            };
            let raw = raw.unwrap_or_default();
            assert_eq!(
                status_of(&raw),
                Some(400),
                "{line:?} (tls: {tls}): {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }
    assert!(
        upstream.received().iter().all(Vec::is_empty),
        "an invalid request line reached the upstream:\n{}",
        upstream.dump()
    );
    // What the grammar allows is still forwarded, as sent.
    let raw = raw_tcp(
        proxy.http_addr(),
        b"GET /a?q=b%20c HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 1, "{}", upstream.dump());
    assert_eq!(reqs[0].request_line(), "GET /a?q=b%20c HTTP/1.1");
    others_are_served(&proxy, "ok.test").await;
}

/// Chunked bodies whose framing is broken right after the head: each gets a 400 while
/// the client keeps its connection open and sends nothing more (the answer must not
/// wait for the client body timeout), and the upstream never gets a complete request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunk_framing_gets_a_prompt_400() {
    let upstream = RawUpstream::start().await;
    let healthy = tests::Backend::start("healthy").await;
    let routes =
        plain_route("a.test", upstream.addr(), "") + &crate::one_route(&["ok.test"], &healthy, "");
    // A client body timeout far beyond the wait below: only a prompt answer passes.
    let proxy = Proxy::builder(&routes)
        .arg("--client-body-timeout")
        .arg("300s")
        .start()
        .await;
    for (name, body) in [
        ("chunk line ended by a bare LF", "5;a=b\nhello\r\n0\r\n\r\n"),
        ("bare LF, nothing after it", "5;a=b\n"),
        ("bare LF without an extension", "5\nhello\r\n0\r\n\r\n"),
        (
            "control byte in an extension",
            "5;a=\x01\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size overflowing",
            "10000000000000000\r\nhello\r\n0\r\n\r\n",
        ),
        ("no CRLF after the data", "3\r\nabcdef\r\n0\r\n\r\n"),
        ("last chunk line ended by a bare LF", "0;a=b\n\r\n"),
    ] {
        let mut stream = tcp_connect(proxy.http_addr()).await.unwrap();
        let req = format!(
            "POST /chunks HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        // The write side stays open: a client waiting for its answer.
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while answer.len() < 12 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "{name}: no answer while the client waited (got {:?})",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(
            status_of(&answer),
            Some(400),
            "{name}: {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            upstream.requests().iter().all(|r| !r.complete),
            "{name}: a complete request reached the upstream:\n{}",
            upstream.dump()
        );
    }
    others_are_served(&proxy, "ok.test").await;
}

/// Review: what legitimate clients send still passes the stricter request line, as sent:
/// git's smart HTTP (`?service=`), Nextcloud's WebDAV methods, `OPTIONS *`, absolute-form,
/// empty lines before the request line, an HTTP/1.0 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_request_lines_are_forwarded_as_sent() {
    let upstream = RawUpstream::start().await;
    let proxy = Proxy::start(&plain_route("a.test", upstream.addr(), "")).await;
    // (request line sent, request line the upstream must get)
    let cases = [
        (
            "GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1",
            "GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1",
        ),
        (
            "GET /repo.git/info/refs?service=git-receive-pack HTTP/1.1",
            "GET /repo.git/info/refs?service=git-receive-pack HTTP/1.1",
        ),
        (
            "PROPFIND /remote.php/dav/files/u/ HTTP/1.1",
            "PROPFIND /remote.php/dav/files/u/ HTTP/1.1",
        ),
        (
            "MKCOL /remote.php/dav/files/u/new%20dir HTTP/1.1",
            "MKCOL /remote.php/dav/files/u/new%20dir HTTP/1.1",
        ),
        (
            "PROPPATCH /remote.php/dav/files/u/a.txt HTTP/1.1",
            "PROPPATCH /remote.php/dav/files/u/a.txt HTTP/1.1",
        ),
        (
            "MOVE /remote.php/dav/files/u/a.txt HTTP/1.1",
            "MOVE /remote.php/dav/files/u/a.txt HTTP/1.1",
        ),
        (
            "REPORT /remote.php/dav/ HTTP/1.1",
            "REPORT /remote.php/dav/ HTTP/1.1",
        ),
        ("OPTIONS * HTTP/1.1", "OPTIONS * HTTP/1.1"),
        (
            "GET http://a.test/abs?x=1 HTTP/1.1",
            "GET /abs?x=1 HTTP/1.1",
        ),
        ("\r\nGET /after-crlf HTTP/1.1", "GET /after-crlf HTTP/1.1"),
        ("GET /old HTTP/1.0", "GET /old HTTP/1.1"),
    ];
    for (i, (line, want)) in cases.iter().enumerate() {
        let head = format!(
            "{line}\r\nHost: a.test\r\nDestination: http://a.test/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_tcp(proxy.http_addr(), head.as_bytes(), Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(
            status_of(&raw),
            Some(200),
            "{line:?}: {:?}",
            String::from_utf8_lossy(&raw)
        );
        let reqs = upstream.requests();
        assert_eq!(reqs.len(), i + 1, "{}", upstream.dump());
        assert_eq!(reqs[i].request_line(), *want, "{line:?}");
    }
}

/// Review: `OPTIONS *` on a route that redirects plain HTTP to https. The redirect
/// used the asterisk as the path: `Location: https://r.test*` (a URI whose authority
/// is `r.test*`). The Location must be a URI of the host the request named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_asterisk_on_an_https_redirect_route_gets_a_valid_location() {
    let upstream = RawUpstream::start().await;
    let routes = format!(
        "[[route]]\nhosts = [\"r.test\"]\nupstreams = [\"{}\"]\n",
        upstream.addr()
    );
    let proxy = Proxy::builder(&routes)
        .arg("--public-https-port")
        .arg("443")
        .start()
        .await;
    let raw = raw_tcp(
        proxy.http_addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: r.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), Some(308), "{text}");
    let location = text
        .split("\r\n")
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("location"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no Location: {text}"));
    assert_eq!(location, "https://r.test/", "{text}");
    assert!(upstream.received().iter().all(Vec::is_empty));
}

/// Review: an invalid request pipelined behind a valid one on the same connection (one
/// write). The valid one is answered; nothing of the invalid one reaches the upstream
/// (pingora does not pipeline: it closes after the first answer, or refuses the second
/// head with 400, never forwarding it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_request_pipelined_behind_a_valid_one_never_reaches_the_upstream() {
    let upstream = RawUpstream::start().await;
    let proxy = Proxy::start(&plain_route("a.test", upstream.addr(), "")).await;
    let bad = [
        "G ET /bad HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "GET /bad x HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "GET /bad http/1.1\r\nHost: a.test\r\n\r\n",
        "GET /bad HTTP/1.1 \r\nHost: a.test\r\n\r\n",
        "GET /bad HTTP/1.1\r\nHost: x\",for=\"[::1]\r\n\r\n",
        "GET /bad HTTP/1.1\r\nHost: a.test\r\nX: a\r\n b\r\n\r\n",
        "POST /bad HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nhello\r\n0\r\n\r\n",
    ];
    for (i, bad) in bad.iter().enumerate() {
        for tls in [false, true] {
            let bytes = format!("GET /good HTTP/1.1\r\nHost: a.test\r\n\r\n{bad}");
            let raw = if tls {
                raw_tls(
                    proxy.https_addr(),
                    &proxy.ca_pem(),
                    "a.test",
                    bytes.as_bytes(),
                    Duration::from_secs(3),
                )
                .await
            } else {
                raw_tcp(proxy.http_addr(), bytes.as_bytes(), Duration::from_secs(3)).await
            }
            .unwrap_or_default();
            assert_eq!(
                status_of(&raw),
                Some(200),
                "{bad:?} (tls: {tls}): {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        let reqs = upstream.requests();
        assert_eq!(reqs.len(), 2 * (i + 1), "{bad:?}\n{}", upstream.dump());
        assert!(
            reqs.iter()
                .all(|r| r.request_line() == "GET /good HTTP/1.1"),
            "{bad:?}: something of it reached the upstream:\n{}",
            upstream.dump()
        );
    }
}
