//! `--max-conns-per-ip`: one address cannot hold more connections than the cap, over
//! both listeners together; other addresses are served meanwhile; a closed connection
//! gives its slot back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tests::client::client_config;
use tests::{wait_until, Alpn, Backend, Conn, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::one_route;

const CAP: usize = 8;

async fn tcp_from(ip: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(to).await
}

/// A whole GET over plain HTTP from `ip`: `Some(status)`, or `None` when the proxy
/// closed the connection without an answer.
async fn plain_get_from(ip: IpAddr, proxy: &Proxy) -> Option<u16> {
    let mut s = tcp_from(ip, proxy.http_addr()).await.ok()?;
    let _ = s
        .write_all(b"GET /cap HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    super::status_of(&out)
}

/// A keep-alive HTTP/1.1 connection over plain TCP from `ip` that had one request
/// answered.
async fn plain_conn_from(ip: IpAddr, proxy: &Proxy) -> anyhow::Result<Conn> {
    let mut conn = Conn::handshake(tcp_from(ip, proxy.http_addr()).await?, false).await?;
    conn.timeout = Duration::from_secs(3);
    anyhow::ensure!(conn.get("a.test", "/held").await?.status == 200);
    Ok(conn)
}

/// The same over TLS.
async fn tls_conn_from(ip: IpAddr, proxy: &Proxy) -> anyhow::Result<Conn> {
    let tcp = tcp_from(ip, proxy.https_addr()).await?;
    let config = client_config(&proxy.ca_pem(), Alpn::H1)?;
    let tls = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from("a.test")?, tcp),
    )
    .await??;
    let mut conn = Conn::handshake(tls, false).await?;
    conn.timeout = Duration::from_secs(3);
    anyhow::ensure!(conn.get("a.test", "/held").await?.status == 200);
    Ok(conn)
}

/// A GET over TLS from `ip`; `Err` when the handshake or the request fails.
async fn tls_get_from(ip: IpAddr, proxy: &Proxy) -> anyhow::Result<u16> {
    let tcp = tcp_from(ip, proxy.https_addr()).await?;
    let config = client_config(&proxy.ca_pem(), Alpn::H1)?;
    let tls = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(ServerName::try_from("a.test")?, tcp),
    )
    .await??;
    let mut conn = Conn::handshake(tls, false).await?;
    conn.timeout = Duration::from_secs(3);
    Ok(conn.get("a.test", "/cap").await?.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_cap_are_closed_and_others_are_served() {
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, "https_redirect = false"))
        .arg("--max-conns-per-ip")
        .arg(CAP.to_string())
        .start()
        .await;
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();

    // The attacker holds the cap, half on each listener: keep-alive connections that
    // each had one request answered, so each is known to be counted. (A connection
    // closed just before, like the harness's readiness probe, may still hold its slot
    // for a moment: then an attempt is refused, and retried.)
    let mut held = Vec::new();
    while held.len() < CAP {
        let conn = if held.len() % 2 == 0 {
            plain_conn_from(attacker, &proxy).await
        } else {
            tls_conn_from(attacker, &proxy).await
        };
        if let Ok(conn) = conn {
            held.push(conn);
        }
    }
    // Now the cap is reached, deterministically.
    assert_eq!(plain_get_from(attacker, &proxy).await, None);
    assert!(
        tls_get_from(attacker, &proxy).await.is_err(),
        "a TLS connection over the cap was served"
    );
    let before = a.requests();
    for _ in 0..20 {
        assert_eq!(plain_get_from(attacker, &proxy).await, None);
    }
    assert_eq!(
        a.requests(),
        before,
        "a connection over the cap reached the upstream"
    );

    // Another address is served on both listeners.
    assert_eq!(plain_get_from(other, &proxy).await, Some(200));
    assert_eq!(tls_get_from(other, &proxy).await.unwrap(), 200);

    // One closed connection gives its slot back.
    drop(held.pop());
    wait_until(
        "a slot to come back after a connection closed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { (plain_get_from(attacker, &proxy).await == Some(200)).then_some(()) },
    )
    .await;
    drop(held);
    // All slots back: the full cap again, served.
    wait_until(
        "every slot to come back",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            tls_get_from(attacker, &proxy)
                .await
                .ok()
                .filter(|s| *s == 200)
        },
    )
    .await;
    assert!(
        proxy.log().contains("--max-conns-per-ip"),
        "no warning about refused connections in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_zero_means_no_limit() {
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, "https_redirect = false"))
        .arg("--max-conns-per-ip")
        .arg("0")
        .start()
        .await;
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(tcp_from(ip, proxy.http_addr()).await.unwrap());
    }
    assert_eq!(plain_get_from(ip, &proxy).await, Some(200));
}
