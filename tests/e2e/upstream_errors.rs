//! Answers when the upstream is not there, breaks the connection, or is too slow.

use std::time::{Duration, Instant};

use tests::{free_port, Alpn, Backend, Proxy};

use crate::one_route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_upstream_port_gets_502() {
    let port = free_port();
    let routes = format!(
        "[[route]]\nhosts = [\"down.test\"]\nupstreams = [\"127.0.0.1:{port}\"]\nconnect_timeout = \"2s\"\n"
    );
    let proxy = Proxy::start(&routes).await;
    for alpn in [Alpn::H1, Alpn::H2] {
        let started = Instant::now();
        let resp = proxy
            .https("down.test", alpn)
            .await
            .unwrap()
            .get("down.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 502, "{alpn:?}: {}", resp.text());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "502 took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_resetting_the_connection_gets_502() {
    // Accepts, reads the request head, then resets (SO_LINGER 0).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resetter = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.set_zero_linger();
                drop(stream);
            });
        }
    });
    let routes = format!("[[route]]\nhosts = [\"reset.test\"]\nupstreams = [\"{addr}\"]\n");
    let proxy = Proxy::start(&routes).await;
    for alpn in [Alpn::H1, Alpn::H2] {
        let resp = proxy
            .https("reset.test", alpn)
            .await
            .unwrap()
            .get("reset.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 502, "{alpn:?}: {}", resp.text());
    }
    resetter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504_after_read_timeout() {
    let slow = Backend::start("slow").await;
    let proxy = Proxy::start(&one_route(&["slow.test"], &slow, "read_timeout = \"1s\"")).await;

    // Within the timeout: answered.
    let resp = proxy.get("slow.test", "/sleep/100").await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());

    for alpn in [Alpn::H1, Alpn::H2] {
        let started = Instant::now();
        let resp = proxy
            .https("slow.test", alpn)
            .await
            .unwrap()
            .get("slow.test", "/sleep/3000")
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status, 504, "{alpn:?}: {}", resp.text());
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2900),
            "504 after {took:?}, read_timeout is 1s"
        );
    }
}
