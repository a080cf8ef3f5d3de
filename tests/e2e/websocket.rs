//! Websocket upgrades through the proxy.

use futures_util::{SinkExt, StreamExt};
use tests::{wss_connect, Backend, Proxy};
use tokio_tungstenite::tungstenite::Message;

use crate::one_route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let chat = Backend::start("chat").await;
    let proxy = Proxy::start(&one_route(&["chat.test"], &chat, "websocket = true")).await;

    let (mut ws, resp) = wss_connect(
        proxy.https_addr(),
        &proxy.ca_pem(),
        "chat.test",
        "/socket?room=1",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get(tests::BACKEND_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some("chat")
    );

    for i in 0..20 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("echo within 10 s")
            .expect("stream open")
            .unwrap();
        assert_eq!(echo, Message::text(text));
    }
    // A binary frame larger than one TLS record.
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echo = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("echo within 10 s")
        .expect("stream open")
        .unwrap();
    assert_eq!(echo.into_data().as_ref(), &big[..]);

    ws.close(None).await.unwrap();
    assert_eq!(chat.websockets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_not_passed_when_route_disables_it() {
    let site = Backend::start("site").await;
    let proxy = Proxy::start(&one_route(&["site.test"], &site, "websocket = false")).await;

    let result = wss_connect(proxy.https_addr(), &proxy.ca_pem(), "site.test", "/socket").await;
    assert!(
        result.is_err(),
        "websocket handshake succeeded on a route with websocket = false"
    );
    assert_eq!(site.websockets(), 0, "the upstream saw an upgrade request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_tmp_many_fresh_websockets() {
    let mut bad = Vec::new();
    let wait: u64 = std::env::var("ZZ_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let n: usize = std::env::var("ZZ_N").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    for i in 0..n {
        let chat = Backend::start("chat").await;
        let proxy = Proxy::start(&one_route(&["chat.test"], &chat, "websocket = true")).await;
        let ca = proxy.ca_pem();
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        let (mut ws, _) = wss_connect(proxy.https_addr(), &ca, "chat.test", "/").await.unwrap();
        ws.send(Message::text("ping")).await.unwrap();
        let echo = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await;
        match echo {
            Ok(Some(Ok(m))) if m == Message::text("ping") => {}
            other => bad.push(format!("#{i}: {other:?}")),
        }
        let _ = ws.close(None).await;
    }
    assert!(bad.is_empty(), "{} of {n} failed: {bad:?}", bad.len());
}
