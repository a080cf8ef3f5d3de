//! The TLS policy of every public listener.

use std::sync::{Arc, LazyLock};

use rustls::crypto::ring as ring_provider;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;

use crate::{CertResolver, StoreError};

/// Cipher suites offered, in the server's order of preference: AEAD with forward secrecy
/// only. TLS 1.3 suites are all ECDHE by construction; TLS 1.2 is limited to ECDHE key
/// exchange with AES-GCM or ChaCha20. Spelled out, rather than "the provider's defaults",
/// so that a rustls upgrade cannot widen the policy silently.
///
/// The order is the one [`server_config`] enforces (`ignore_client_order`), as in
/// Mozilla's "intermediate" profile: AES-128-GCM first (hardware AES on every server
/// CPU we run on, and 128-bit strength already matches the P-256/X25519 key exchange),
/// then AES-256-GCM, then ChaCha20-Poly1305; in TLS 1.2 the ECDSA suites before the RSA
/// ones (our certificates are ECDSA; rustls only considers the suites that fit the
/// served key anyway).
static CIPHER_SUITES: &[rustls::SupportedCipherSuite] = &[
    ring_provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ring_provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ring_provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ring_provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ring_provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ring_provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ring_provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ring_provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ring_provider::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Session-cache size of [`server_config`].
pub const SESSION_CACHE_SIZE: usize = 10_000;

static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..ring_provider::default_provider()
    })
});

/// The one crypto provider of this project: rustls' *ring* provider, restricted to the
/// cipher suites above. Everything in this crate uses it explicitly.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// Installs [`crypto_provider`] as the process default, for code (pingora, clients) that
/// builds rustls configs without naming a provider. Harmless when one is already installed.
pub fn install_crypto_provider() {
    let _ = CryptoProvider::install_default((*PROVIDER.as_ref()).clone());
}

/// The TLS policy of every public listener: TLS 1.2 and 1.3 only, AEAD cipher suites with
/// forward secrecy only, the given ALPN list (e.g. `[b"h2", b"http/1.1"]`), and
/// server-side resumption with both a session cache ([`SESSION_CACHE_SIZE`] entries) and
/// stateless tickets whose key rotates every 6 hours (rustls' ring `Ticketer`). Each call
/// makes a new ticket key: build the config once and share it.
///
/// The server's cipher-suite order wins over the client's (`ignore_client_order`, as
/// nginx's `ssl_prefer_server_ciphers on`): every suite offered is AEAD with forward
/// secrecy, so this is not about refusing weak ones, but about the negotiated suite being
/// decided here, the same for every client that supports it, rather than by whatever a
/// client happens to list first (and scanners such as testssl.sh rate a server without
/// its own order as a finding). The cost: a client without hardware AES that prefers
/// ChaCha20 still gets AES-GCM when it offers it (rustls has no BoringSSL-style
/// equal-preference groups); AES-GCM stays secure there, only slower.
pub fn server_config(
    resolver: Arc<CertResolver>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, StoreError> {
    let mut cfg = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn;
    cfg.ignore_client_order = true;
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    cfg.ticketer = ring_provider::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aead_forward_secret_suites() {
        let cfg = server_config(Arc::new(CertResolver::new()), vec![b"h2".to_vec()]).unwrap();
        let suites: Vec<String> = cfg
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(suites.len(), 9, "{suites:?}");
        for s in &suites {
            let tls13 = s.starts_with("TLS13_");
            let ecdhe =
                s.starts_with("TLS_ECDHE_ECDSA_WITH_") || s.starts_with("TLS_ECDHE_RSA_WITH_");
            let aead = s.contains("_GCM_") || s.contains("CHACHA20_POLY1305");
            assert!((tls13 || ecdhe) && aead, "suite {s} is outside the policy");
            assert!(!s.contains("CBC") && !s.contains("SHA1"), "{s}");
        }
        for s in cfg.crypto_provider().cipher_suites.iter() {
            let v = s.version().version;
            assert!(
                v == rustls::ProtocolVersion::TLSv1_3 || v == rustls::ProtocolVersion::TLSv1_2,
                "{v:?}"
            );
        }
        assert!(cfg.ticketer.enabled());
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn server_cipher_order_is_enforced_and_pinned() {
        let cfg = server_config(Arc::new(CertResolver::new()), vec![]).unwrap();
        assert!(
            cfg.ignore_client_order,
            "the server's suite order must win over the client's"
        );
        let suites: Vec<String> = cfg
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            suites,
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            ]
        );
    }
}
