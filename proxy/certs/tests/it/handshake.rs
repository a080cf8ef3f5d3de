//! Real TLS handshakes on 127.0.0.1:0 against `server_config` + `CertResolver`.

use std::net::SocketAddr;
use std::sync::Arc;

use certs::{server_config, CertManager, CertResolver, LocalIssuer};
use rustls::client::ClientConfig;
use rustls::pki_types::ServerName;
use rustls::{HandshakeKind, ProtocolVersion, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::util::{strings, temp_store};

struct Server {
    addr: SocketAddr,
    manager: CertManager,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

/// A TLS server with local certificates for `a.test`, `b.test` and `*.w.test`. Each
/// connection answers one line: the SNI it saw.
async fn start() -> Server {
    let (dir, store) = temp_store();
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    let ca_pem = ca.ca_pem().to_string();
    let resolver = Arc::new(CertResolver::new());
    let manager = CertManager::new(store, Some(ca), resolver.clone());
    let r = manager.ensure(&[strings(&["a.test"]), strings(&["b.test", "*.w.test"])]);
    assert_eq!(r.issued, ["a.test", "b.test"], "{r:?}");

    let config = server_config(resolver, vec![b"h2".to_vec(), b"http/1.1".to_vec()]).unwrap();
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A failed handshake has already sent its alert.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                let mut buf = [0u8; 64];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(format!("{sni}\n").as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Server {
        addr,
        manager,
        ca_pem,
        _dir: dir,
    }
}

fn client(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

struct Seen {
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    suite: String,
    kind: Option<HandshakeKind>,
    answer: String,
}

async fn connect(addr: SocketAddr, cfg: &Arc<ClientConfig>, name: &str) -> std::io::Result<Seen> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = TlsConnector::from(cfg.clone())
        .connect(server_name, tcp)
        .await?;
    tls.write_all(b"hi\n").await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?; // also takes in the session tickets
    let conn = tls.get_ref().1;
    Ok(Seen {
        leaf: conn.peer_certificates().unwrap()[0].to_vec(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        suite: format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite()),
        kind: conn.handshake_kind(),
        answer,
    })
}

#[tokio::test]
async fn handshake_serves_the_right_certificate_for_each_sni() {
    let s = start().await;
    let cfg = client(&s.ca_pem, &[&rustls::version::TLS13]);
    for (sni, id) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.w.test", "b.test"),
        ("A.TEST", "a.test"),
    ] {
        let seen = connect(s.addr, &cfg, sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let want = s.manager.resolver().lookup(id).unwrap();
        assert_eq!(
            seen.leaf,
            want.leaf_der(),
            "{sni} got the certificate of {id}"
        );
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(seen.answer.trim(), sni.to_ascii_lowercase());
    }
}

#[tokio::test]
async fn unknown_sni_or_no_sni_fails_the_handshake_with_an_alert() {
    let s = start().await;
    let cfg = client(
        &s.ca_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    );
    for name in ["nope.test", "w.test", "y.x.w.test", "127.0.0.1"] {
        let err = match connect(s.addr, &cfg, name).await {
            Ok(_) => panic!("{name}: handshake should fail"),
            Err(e) => e.to_string(),
        };
        // rustls answers a `None` from the resolver with access_denied.
        assert!(
            err.contains("received fatal alert: AccessDenied"),
            "{name}: {err}"
        );
    }
    // The server is still fine afterwards.
    connect(s.addr, &cfg, "a.test").await.unwrap();
}

#[tokio::test]
async fn tls12_ecdhe_clients_connect_and_sessions_resume() {
    let s = start().await;
    for (versions, version) in [
        (&[&rustls::version::TLS12][..], ProtocolVersion::TLSv1_2),
        (&[&rustls::version::TLS13][..], ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client(&s.ca_pem, versions);
        let first = connect(s.addr, &cfg, "a.test").await.unwrap();
        assert_eq!(first.version, Some(version));
        assert_eq!(first.kind, Some(HandshakeKind::Full));
        if version == ProtocolVersion::TLSv1_2 {
            assert!(
                first.suite.starts_with("TLS_ECDHE_ECDSA_WITH_"),
                "{}",
                first.suite
            );
        }
        let second = connect(s.addr, &cfg, "a.test").await.unwrap();
        assert_eq!(
            second.kind,
            Some(HandshakeKind::Resumed),
            "{version:?} resumes"
        );
    }
}

/// A hand-made ClientHello, since rustls clients cannot speak TLS 1.1 or CBC.
fn client_hello(version: [u8; 2], suites: &[u16], sni: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    // server_name
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    push_ext(&mut ext, 0x0000, &sn);
    push_ext(&mut ext, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // groups: x25519, P-256
    push_ext(&mut ext, 0x000b, &[1, 0]); // ec_point_formats: uncompressed
    push_ext(&mut ext, 0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]); // sig algs: ecdsa_p256, rsa_pss
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut hs = vec![1]; // client_hello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn push_ext(out: &mut Vec<u8>, typ: u16, data: &[u8]) {
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// Sends `hello` and returns the alert description the server answers with.
async fn alert_for(addr: SocketAddr, hello: &[u8]) -> u8 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut resp = Vec::new();
    tcp.read_to_end(&mut resp).await.unwrap();
    assert!(resp.len() >= 7, "no alert, got {resp:02x?}");
    assert_eq!(
        resp[0], 0x15,
        "an alert record, not a ServerHello: {resp:02x?}"
    );
    assert_eq!(resp[5], 2, "fatal");
    resp[6]
}

#[tokio::test]
async fn tls11_and_cbc_only_clients_are_refused() {
    let s = start().await;
    const TLS_RSA_WITH_AES_128_CBC_SHA: u16 = 0x002f;
    const TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA: u16 = 0xc009;
    const TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256: u16 = 0xc027;
    const TLS_RSA_WITH_AES_128_GCM_SHA256: u16 = 0x009c; // AEAD, but no forward secrecy
    const TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: u16 = 0xc02b;
    let cbc = [
        TLS_RSA_WITH_AES_128_CBC_SHA,
        TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
        TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
    ];

    // TLS 1.1, even offering a suite we have: protocol_version (70).
    let tls11 = client_hello(
        [3, 2],
        &[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, cbc[1]],
        "a.test",
    );
    assert_eq!(alert_for(s.addr, &tls11).await, 70);
    // TLS 1.2 with only CBC suites, or only static-RSA key exchange: handshake_failure (40).
    assert_eq!(
        alert_for(s.addr, &client_hello([3, 3], &cbc, "a.test")).await,
        40
    );
    assert_eq!(
        alert_for(
            s.addr,
            &client_hello([3, 3], &[TLS_RSA_WITH_AES_128_GCM_SHA256], "a.test")
        )
        .await,
        40
    );

    // Control: the same hand-made hello with an ECDHE AEAD suite gets a ServerHello.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&client_hello(
        [3, 3],
        &[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
        "a.test",
    ))
    .await
    .unwrap();
    let mut head = [0u8; 6];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(
        (head[0], head[5]),
        (0x16, 2),
        "handshake record carrying a ServerHello"
    );
}

#[tokio::test]
async fn the_server_cipher_order_wins_over_the_clients() {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider};
    let s = start().await;
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut s.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    // Clients that list ChaCha20, then AES-256, then AES-128 (what a phone without
    // hardware AES sends) still get the server's first choice.
    for (version, client_order, want) in [
        (
            &rustls::version::TLS13,
            vec![
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_AES_128_GCM_SHA256,
            ],
            "TLS13_AES_128_GCM_SHA256",
        ),
        (
            &rustls::version::TLS12,
            vec![
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ),
    ] {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: client_order,
            ..default_provider()
        };
        let cfg = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let seen = connect(s.addr, &cfg, "a.test").await.unwrap();
        assert_eq!(seen.suite, want, "{:?}", version.version);
    }
    // A client that offers only the server's last TLS 1.3 choice still connects with it.
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![cs::TLS13_CHACHA20_POLY1305_SHA256],
        ..default_provider()
    };
    let cfg = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let seen = connect(s.addr, &cfg, "a.test").await.unwrap();
    assert_eq!(seen.suite, "TLS13_CHACHA20_POLY1305_SHA256");
}
