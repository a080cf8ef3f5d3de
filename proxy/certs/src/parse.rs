//! Names, and checking a chain + key pair. No file access here: callers say which file.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Lower case, one trailing dot removed. Borrows nothing: the result is stored.
pub fn normalize_name(name: &str) -> String {
    let n = name.trim();
    n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase()
}

/// Checks a normalised name for use in a certificate and as a directory name: DNS labels
/// of `a-z 0-9 - _`, 1..=63 bytes each, at most 253 in all, and at most one leading `*`
/// label (`*.example.org`).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address (clients send no SNI for it)".into());
    }
    let rest = match name.strip_prefix("*.") {
        Some(rest) => rest,
        None => name,
    };
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "character {c:?} not allowed (only a-z, 0-9, '-', '_', and a leading '*.')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// The store id (directory name) of a certificate whose main name is `name`:
/// the normalised name, with `*.example.org` written as `_wildcard.example.org`.
pub fn cert_id(name: &str) -> Result<String, crate::StoreError> {
    let n = normalize_name(name);
    check_name(&n).map_err(|reason| crate::StoreError::InvalidName {
        name: name.into(),
        reason,
    })?;
    Ok(match n.strip_prefix("*.") {
        Some(rest) => format!("_wildcard.{rest}"),
        None => n,
    })
}

/// Does a certificate name (`a.example.org` or `*.example.org`) cover `host`?
/// A wildcard covers exactly one more label; a wildcard host is covered only by the
/// same wildcard.
pub(crate) fn name_covers(cert_name: &str, host: &str) -> bool {
    if cert_name == host {
        return true;
    }
    match (cert_name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, parent))) => {
            !label.is_empty() && label != "*" && parent == suffix
        }
        _ => false,
    }
}

/// What a chain + key pair contains, once checked.
pub(crate) struct Parsed {
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key: Arc<CertifiedKey>,
}

/// Which of the two inputs a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Chain,
    Key,
}

pub(crate) fn parse_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut rd = pem;
    let chain = rustls_pemfile::certs(&mut rd)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(chain)
}

pub(crate) fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let mut rd = pem;
    match rustls_pemfile::private_key(&mut rd) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err("no PRIVATE KEY block".into()),
        // The error names the PEM section, never its content.
        Err(e) => Err(format!("bad PEM: {e}")),
    }
}

/// Parses the chain and the key, checks that the key matches the leaf, and reads the
/// leaf's DNS names and validity.
pub(crate) fn parse_pair(chain_pem: &[u8], key_pem: &[u8]) -> Result<Parsed, (Part, String)> {
    let chain = parse_chain(chain_pem).map_err(|e| (Part::Chain, e))?;
    let (names, not_before, not_after) = leaf_info(&chain[0]).map_err(|e| (Part::Chain, e))?;
    for (i, c) in chain.iter().enumerate().skip(1) {
        x509_parser::parse_x509_certificate(c).map_err(|e| {
            (
                Part::Chain,
                format!("certificate #{} of the chain: {e}", i + 1),
            )
        })?;
    }
    let key_der = parse_key(key_pem).map_err(|e| (Part::Key, e))?;
    let provider = crate::crypto_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| (Part::Key, format!("unusable private key: {e}")))?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err((
                Part::Key,
                "private key does not match the certificate".into(),
            ))
        }
        Err(e) => return Err((Part::Chain, format!("leaf certificate: {e}"))),
    }
    Ok(Parsed {
        names,
        not_before,
        not_after,
        key: Arc::new(key),
    })
}

/// DNS names (lower case, deduplicated, in certificate order) and validity of a leaf.
pub(crate) fn leaf_info(der: &[u8]) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("leaf certificate: {e}"))?;
    let mut names: Vec<String> = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subjectAltName: {e}"))?;
    for gn in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
            let n = normalize_name(n);
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    if names.is_empty() {
        return Err("leaf certificate has no DNS name in subjectAltName".into());
    }
    let v = cert.validity();
    Ok((
        names,
        crate::util::from_unix(v.not_before.timestamp()),
        crate::util::from_unix(v.not_after.timestamp()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert_eq!(cert_id("Cloud.Example.ORG.").unwrap(), "cloud.example.org");
        assert_eq!(cert_id("*.example.org").unwrap(), "_wildcard.example.org");
        for bad in [
            "",
            "a/b",
            "..",
            ".a",
            "a..b",
            "*.*.a",
            "a.*.b",
            "127.0.0.1",
            "-a.b",
            "a b",
        ] {
            assert!(cert_id(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn wildcard_covers_one_label() {
        assert!(name_covers("a.test", "a.test"));
        assert!(name_covers("*.a.test", "x.a.test"));
        assert!(name_covers("*.a.test", "*.a.test"));
        assert!(!name_covers("*.a.test", "a.test"));
        assert!(!name_covers("*.a.test", "y.x.a.test"));
        assert!(!name_covers("*.a.test", ".a.test"));
        assert!(!name_covers("x.a.test", "*.a.test"));
    }
}
