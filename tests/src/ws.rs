//! Websocket clients: over TLS through the proxy, or plain to a backend.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;
use tokio_tungstenite::WebSocketStream;

use crate::client::{client_config, tcp_connect, tls_connect, Alpn};

pub type WsTls = WebSocketStream<TlsStream<TcpStream>>;
pub type WsPlain = WebSocketStream<TcpStream>;

/// `wss://host/path` over TLS to `addr` (SNI = `host`, ALPN `http/1.1`: websockets are
/// upgraded over HTTP/1.1).
pub async fn wss_connect(
    addr: SocketAddr,
    ca_pem: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<(WsTls, WsResponse)> {
    let stream = tls_connect(addr, client_config(ca_pem, Alpn::H1)?, host).await?;
    let req = format!("wss://{host}{path}").into_client_request()?;
    let (ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .with_context(|| format!("websocket handshake with wss://{host}{path} via {addr}"))?;
    Ok((ws, resp))
}

/// `ws://host/path` over plain TCP to `addr`.
pub async fn ws_connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(WsPlain, WsResponse)> {
    let stream = tcp_connect(addr).await?;
    let req = format!("ws://{host}{path}").into_client_request()?;
    let (ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .with_context(|| format!("websocket handshake with ws://{host}{path} via {addr}"))?;
    Ok((ws, resp))
}
