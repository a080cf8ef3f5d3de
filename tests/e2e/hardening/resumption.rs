//! TLS session resumption: TLS 1.3 tickets, TLS 1.2 tickets and the TLS 1.2 session-ID
//! cache all resume (an abbreviated handshake, as rustls' `handshake_kind` reports).
//! Ticket keys rotate every 6 hours inside rustls' ring `Ticketer`; that schedule is not
//! configurable, so it is not driven here.

use std::sync::Arc;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use tests::client::{certs_from_pem, tls_connect};
use tests::{Backend, Conn, Proxy};

use crate::one_route;

fn config(
    proxy: &Proxy,
    version: &'static SupportedProtocolVersion,
    tls12: Tls12Resumption,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(&proxy.ca_pem()).unwrap() {
        roots.add(c).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::in_memory_sessions(64).tls12_resumption(tls12);
    Arc::new(config)
}

/// Two connections with the same client config: the kinds of their handshakes.
async fn two_handshakes(proxy: &Proxy, config: Arc<ClientConfig>) -> Vec<HandshakeKind> {
    let mut kinds = Vec::new();
    for i in 0..2 {
        let tls = tls_connect(proxy.https_addr(), config.clone(), "a.test")
            .await
            .unwrap();
        kinds.push(tls.get_ref().1.handshake_kind().expect("handshake done"));
        // A request, so that a TLS 1.3 ticket sent after the handshake is read.
        let mut conn = Conn::handshake(tls, false).await.unwrap();
        let resp = conn.get("a.test", &format!("/resume/{i}")).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_with_tickets_and_with_the_session_cache() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "")).await;
    for (what, version, tls12) in [
        (
            "TLS 1.3 ticket",
            &rustls::version::TLS13,
            Tls12Resumption::SessionIdOrTickets,
        ),
        (
            "TLS 1.2 ticket",
            &rustls::version::TLS12,
            Tls12Resumption::SessionIdOrTickets,
        ),
        (
            "TLS 1.2 session-ID cache",
            &rustls::version::TLS12,
            Tls12Resumption::SessionIdOnly,
        ),
    ] {
        let kinds = two_handshakes(&proxy, config(&proxy, version, tls12)).await;
        assert_eq!(kinds[0], HandshakeKind::Full, "{what}: first handshake");
        assert_eq!(kinds[1], HandshakeKind::Resumed, "{what}: second handshake");
    }
}

/// A ticket is only good for the proxy whose key made it: a second proxyd (its own
/// ticket key and cache) makes a full handshake for the same client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_another_proxy_is_not_resumed() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let first = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .dir(dir.path())
        .start()
        .await;
    let cfg = config(
        &first,
        &rustls::version::TLS13,
        Tls12Resumption::SessionIdOrTickets,
    );
    let kinds = two_handshakes(&first, cfg.clone()).await;
    assert_eq!(kinds[1], HandshakeKind::Resumed);
    drop(first);
    // Same store (same certificate and CA), new process. The client keys its sessions
    // by server name, so it offers the first proxy's ticket.
    let second = Proxy::builder(&one_route(&["a.test"], &a, ""))
        .dir(dir.path())
        .start()
        .await;
    let tls = tls_connect(second.https_addr(), cfg, "a.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
}
