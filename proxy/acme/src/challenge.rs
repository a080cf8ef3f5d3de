//! Publishing challenge answers where the daemon's listeners find them, and taking them
//! down again whatever happens to the order.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::{Error, Host};

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 section 3): self-signed, the name
/// as its only SAN, and the critical acmeIdentifier extension holding the SHA-256 of
/// the key authorization.
pub fn tls_alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, Error> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| Error::ChallengeCertificate {
        name: name.to_string(),
        source: e,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.into()))?;
    let mut params =
        CertificateParams::new(vec![name.to_string()]).map_err(|e| failed(e.into()))?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| failed(e.into()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // `CertifiedKey::from_der` refuses the critical extension; `new` does not look.
    let signing = certs::crypto_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| failed(e.into()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Everything one order published; withdrawn on drop.
pub(crate) struct Published<'a> {
    host: &'a dyn Host,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl<'a> Published<'a> {
    pub(crate) fn new(host: &'a dyn Host) -> Self {
        Published {
            host,
            tokens: Vec::new(),
            names: Vec::new(),
        }
    }

    pub(crate) fn http01(&mut self, token: &str, key_authorization: &str) {
        self.host.publish_http01(token, key_authorization);
        self.tokens.push(token.to_string());
    }

    pub(crate) fn tls_alpn01(&mut self, name: &str, key: Arc<CertifiedKey>) {
        self.host.certs().resolver().set_acme_challenge(name, key);
        self.names.push(name.to_string());
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.host.withdraw_http01(t);
        }
        for n in &self.names {
            self.host.certs().resolver().remove_acme_challenge(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    #[test]
    fn tls_alpn_certificate_has_the_critical_acme_identifier() {
        let digest = [7u8; 32];
        let key = tls_alpn_certificate("a.test", &digest).unwrap();
        let (_, cert) = X509Certificate::from_der(key.cert[0].as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some(n.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["a.test"]);
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // OCTET STRING (32 bytes) holding the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
