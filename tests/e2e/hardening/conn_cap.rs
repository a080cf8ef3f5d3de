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

/// A TLS stream from `ip` to the HTTPS listener, handshake done, offering `alpn`.
async fn tls_from(
    ip: IpAddr,
    proxy: &Proxy,
    alpn: Alpn,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_from(ip, proxy.https_addr()).await?;
    let config = client_config(&proxy.ca_pem(), alpn)?;
    Ok(tokio::time::timeout(
        Duration::from_secs(3),
        tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from("a.test")?, tcp),
    )
    .await??)
}

/// Reads until the proxy closes (or 5 s pass): what a client that waits for the end sees.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
}

/// [`tls_from`], retried while earlier connections' slots are still being given back.
async fn tls_eventually(
    ip: IpAddr,
    proxy: &Proxy,
    alpn: Alpn,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    wait_until(
        "a TLS handshake",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { tls_from(ip, proxy, alpn).await.ok() },
    )
    .await
}

/// Connections from one address that end at every stage of the listener's layers (cap,
/// TLS handshake, head guard, HTTP/1.1, HTTP/2) each give their slot back exactly once:
/// afterwards the full cap is served again, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_come_back_from_connections_ending_at_every_stage() {
    const SMALL: usize = 4;
    let a = Backend::start("a").await;
    let proxy = Proxy::builder(&one_route(&["a.test"], &a, "https_redirect = false"))
        .arg("--max-conns-per-ip")
        .arg(SMALL.to_string())
        .arg("--client-header-timeout")
        .arg("1s")
        .start()
        .await;
    // Not the harness's address (its readiness probes hold slots on 127.0.0.1).
    let ip: IpAddr = "127.0.0.3".parse().unwrap();
    for _round in 0..3 {
        // At most SMALL at once, so none is refused by the cap itself.
        // TCP connect, then close at once, on both listeners; and reset.
        for _ in 0..SMALL {
            drop(tcp_from(ip, proxy.http_addr()).await.unwrap());
            drop(tcp_from(ip, proxy.https_addr()).await.unwrap());
            let s = tcp_from(ip, proxy.https_addr()).await.unwrap();
            s.set_zero_linger().unwrap();
            drop(s);
        }
        // Garbage instead of a ClientHello: the handshake fails, the proxy closes.
        let mut garbage = Vec::new();
        for _ in 0..SMALL {
            let mut s = tcp_from(ip, proxy.https_addr()).await.unwrap();
            s.write_all(b"\x16\x03\x01\x00\x05hello-not-tls\r\n\r\n")
                .await
                .unwrap();
            garbage.push(s);
        }
        for mut s in garbage {
            read_until_closed(&mut s).await;
        }
        // Half a ClientHello, then a reset mid-handshake.
        for _ in 0..SMALL {
            let mut s = tcp_from(ip, proxy.https_addr()).await.unwrap();
            s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                .await
                .unwrap();
            s.set_zero_linger().unwrap();
            drop(s);
        }
        // A whole TLS handshake, then a reset (h1 and h2 negotiated).
        for alpn in [Alpn::H1, Alpn::H2] {
            for _ in 0..SMALL / 2 {
                let tls = tls_eventually(ip, &proxy, alpn).await;
                tls.get_ref().0.set_zero_linger().unwrap();
                drop(tls);
            }
        }
        // A slow head over plain HTTP and over TLS, closed by --client-header-timeout.
        let mut slow_plain = Vec::new();
        let mut slow_tls = Vec::new();
        for i in 0..SMALL {
            if i % 2 == 0 {
                let mut s = tcp_from(ip, proxy.http_addr()).await.unwrap();
                s.write_all(b"GET /slow HTTP/1.1\r\nHo").await.unwrap();
                slow_plain.push(s);
            } else {
                let mut s = tls_eventually(ip, &proxy, Alpn::H1).await;
                s.write_all(b"GET /slow HTTP/1.1\r\nHo").await.unwrap();
                slow_tls.push(s);
            }
        }
        for mut s in slow_plain {
            read_until_closed(&mut s).await;
        }
        for mut s in slow_tls {
            read_until_closed(&mut s).await;
        }
        // Completed HTTP/1.1 requests, plain and TLS.
        for _ in 0..SMALL {
            wait_until(
                "a plain GET",
                Duration::from_secs(5),
                Duration::from_millis(50),
                || async { (plain_get_from(ip, &proxy).await == Some(200)).then_some(()) },
            )
            .await;
            wait_until(
                "a TLS GET",
                Duration::from_secs(5),
                Duration::from_millis(50),
                || async { tls_get_from(ip, &proxy).await.ok().filter(|s| *s == 200) },
            )
            .await;
        }
        // HTTP/2 connections with a request each, closed by the client.
        for _ in 0..SMALL {
            wait_until(
                "an HTTP/2 GET",
                Duration::from_secs(5),
                Duration::from_millis(50),
                || async {
                    let tls = tls_from(ip, &proxy, Alpn::H2).await.ok()?;
                    let mut conn = Conn::handshake(tls, true).await.ok()?;
                    conn.timeout = Duration::from_secs(3);
                    (conn.get("a.test", "/h2").await.ok()?.status == 200).then_some(())
                },
            )
            .await;
        }
    }

    // Every slot back: SMALL connections held at once are all served (closings above
    // may still be on their way: retried until they are).
    let held = wait_until(
        "every slot to come back after connections ended at every stage",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let mut held = Vec::new();
            for i in 0..SMALL {
                let conn = if i % 2 == 0 {
                    plain_conn_from(ip, &proxy).await
                } else {
                    tls_conn_from(ip, &proxy).await
                };
                held.push(conn.ok()?);
            }
            Some(held)
        },
    )
    .await;
    // And the cap still holds: exactly SMALL, no slot given back twice.
    assert_eq!(plain_get_from(ip, &proxy).await, None);
    assert!(tls_get_from(ip, &proxy).await.is_err());
    drop(held);
}
