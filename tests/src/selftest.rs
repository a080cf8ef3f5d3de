//! The harness tested on its own, without proxyd: backends, clients, websockets, TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Method;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{client_config, tls_connect};
use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_describes_the_request_it_saw() {
    let b = Backend::start("one").await;
    let mut conn = Conn::http(b.addr()).await.unwrap();
    let mut req = request(Method::PUT, "x.test", "/a/b?c=d", full(vec![1u8; 1234]));
    req.headers_mut().append("x-multi", "1".parse().unwrap());
    req.headers_mut().append("x-multi", "2".parse().unwrap());
    let resp = conn.send(req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header(BACKEND_HEADER).as_deref(), Some("one"));
    let seen = resp.json();
    assert_eq!(seen["backend"], "one");
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/a/b?c=d");
    assert_eq!(seen["body_len"], 1234);
    assert_eq!(resp.seen_header("x-multi"), ["1", "2"]);
    assert_eq!(resp.seen_header("host"), ["x.test"]);
    assert_eq!(b.requests(), 1);
    assert_eq!(b.body_bytes(), 1234);

    // Keep-alive: a second request on the same connection.
    let resp = conn.get("x.test", "/status/418").await.unwrap();
    assert_eq!(resp.status, 418);
    assert_eq!(b.requests(), 2);
    assert_eq!(b.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sleeps_and_streams_bytes() {
    let b = Backend::start("s").await;
    let started = Instant::now();
    let resp = http_get(b.addr(), "x", "/sleep/300").await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let resp = http_get(b.addr(), "x", "/bytes/1000000").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 1_000_000);
    assert_eq!(resp.header("content-length").as_deref(), Some("1000000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_counts_streamed_and_chunked_uploads() {
    let b = Backend::start("u").await;
    let mut conn = Conn::http(b.addr()).await.unwrap();
    let n = 50 * 1024 * 1024 + 7;
    let resp = conn
        .send(request(Method::POST, "x", "/", zeros(n)))
        .await
        .unwrap();
    assert_eq!(resp.json()["body_len"], n);
    assert_eq!(resp.seen_header("content-length"), [n.to_string()]);

    let resp = conn
        .send(request(Method::POST, "x", "/", zeros_chunked(100_000)))
        .await
        .unwrap();
    assert_eq!(resp.json()["body_len"], 100_000);
    assert_eq!(resp.seen_header("transfer-encoding"), ["chunked"]);
    assert_eq!(b.body_bytes(), n + 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_websocket_echo() {
    let b = Backend::start("ws").await;
    let (mut ws, resp) = ws_connect(b.addr(), "x.test", "/chat").await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()[BACKEND_HEADER], "ws");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().len(), 100_000);
    assert_eq!(b.websockets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_stop_closes_everything_and_restarts_on_the_same_port() {
    let mut b = Backend::start("r").await;
    let addr = b.addr();
    let mut conn = Conn::http(addr).await.unwrap();
    assert_eq!(conn.get("x", "/").await.unwrap().status, 200);
    let (mut ws, _) = ws_connect(addr, "x", "/").await.unwrap();

    b.stop().await;
    assert!(!b.is_running());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open after stop()"
    );
    assert!(
        conn.get("x", "/").await.is_err(),
        "keep-alive connection survived stop()"
    );
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("websocket not closed by stop()");
    assert!(!matches!(next, Some(Ok(Message::Text(_)))));

    b.start_again().await;
    assert_eq!(b.addr(), addr);
    let resp = http_get(addr, "x", "/again").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend(), "r");
    // GET, websocket upgrade, GET after the restart: counters survive stop().
    assert_eq!(b.requests(), 3);
}

/// A TLS front on loopback: rcgen CA + leaf for `a.test`, hyper auto (h1 + h2).
async fn tls_server() -> (std::net::SocketAddr, String) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["a.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();

    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let text = format!("{:?} {}", req.version(), req.uri());
                        Ok::<_, std::convert::Infallible>(http::Response::new(full(text)))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_speaks_h1_and_h2_and_reports_the_certificate() {
    let (addr, ca) = tls_server().await;
    for (alpn, want) in [
        (Alpn::H1, "HTTP/1.1"),
        (Alpn::H2, "HTTP/2.0"),
        (Alpn::Both, "HTTP/2.0"),
    ] {
        let mut conn = Conn::https(addr, &ca, "a.test", alpn).await.unwrap();
        let tls = conn.tls().unwrap().clone();
        assert_eq!(tls.leaf_dns_names(), ["a.test"]);
        let resp = conn.get("a.test", "/x?y").await.unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.text().starts_with(want), "{alpn:?}: {}", resp.text());
        // h2: the authority comes from the Host given to `request`.
        if want == "HTTP/2.0" {
            assert_eq!(resp.text(), "HTTP/2.0 https://a.test/x?y");
            assert!(conn.is_h2());
        } else {
            assert_eq!(resp.text(), "HTTP/1.1 /x?y");
        }
    }
    // A name the certificate does not cover, and an untrusted CA, both fail.
    let config = client_config(&ca, Alpn::Both).unwrap();
    assert!(tls_connect(addr, config, "b.test").await.is_err());
    let (_, other_ca) = tls_server().await;
    let config = client_config(&other_ca, Alpn::Both).unwrap();
    assert!(tls_connect(addr, config, "a.test").await.is_err());
}

#[test]
fn mem_status_reads_our_own_process() {
    let m = mem_status(std::process::id()).unwrap();
    assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_reads_until_close() {
    let b = Backend::start("raw").await;
    let out = raw_tcp(
        b.addr(),
        b"GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"path\":\"/r\""), "{text}");
}
