//! What identifies a leaf certificate, for comparing the one a listener serves with the
//! one the store holds (`proxyd`'s served == stored check): its SHA-256 fingerprint
//! (over the DER, as `openssl x509 -fingerprint -sha256` shows it) and its expiry.

use std::path::Path;

/// The most of a `fullchain.pem` read to find its leaf (a chain of a few certificates is
/// a few KiB): a file grown huge is an error, not that much memory on every check.
pub const MAX_CHAIN_FILE: u64 = 1 << 20;

/// A leaf certificate by fingerprint and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafId {
    /// SHA-256 of the DER, lower-case hex, 64 characters.
    pub sha256: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl LeafId {
    /// The identity of a DER certificate; `Err` when it does not parse as X.509.
    pub fn of_der(der: &[u8]) -> Result<LeafId, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("not X.509: {e}"))?;
        Ok(LeafId {
            sha256: sha256_hex(der),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The first 16 hex digits of the fingerprint: enough to tell two certificates apart
    /// in a log line or a table.
    pub fn short(&self) -> &str {
        &self.sha256[..16.min(self.sha256.len())]
    }

    /// The leaf (first certificate) of a `fullchain.pem` on disk, read now (nothing
    /// cached: a file changed behind the daemon's back shows).
    pub fn of_chain_file(path: &Path) -> Result<LeafId, String> {
        use std::io::Read;
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CHAIN_FILE + 1).read_to_end(&mut pem))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if pem.len() as u64 > MAX_CHAIN_FILE {
            return Err(format!(
                "{}: too large (over {} KiB; a chain is a few KiB)",
                path.display(),
                MAX_CHAIN_FILE / 1024
            ));
        }
        let first = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .ok_or_else(|| format!("{}: no certificate in it", path.display()))?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        LeafId::of_der(first.as_ref()).map_err(|e| format!("{}: leaf {e}", path.display()))
    }
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_the_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_leaf_from_der_and_from_its_chain_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path().join("store")).unwrap();
        let issuer = crate::LocalIssuer::load_or_create(&store).expect("a local CA");
        let issued = issuer.issue(&["a.test".to_string()]).expect("a leaf");
        let path = dir.path().join("fullchain.pem");
        std::fs::write(&path, &issued.chain_pem).unwrap();
        let from_file = LeafId::of_chain_file(&path).unwrap();
        let der = rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(LeafId::of_der(der.as_ref()).unwrap(), from_file);
        assert_eq!(from_file.sha256, sha256_hex(der.as_ref()));
        assert!(from_file.not_after > certs_now());
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(LeafId::of_chain_file(&path).is_err());
        assert!(LeafId::of_der(b"junk").is_err());
    }

    /// A `fullchain.pem` grown huge (a runaway write, a wrong file copied over it) is
    /// read by the check on every run: an error, not gigabytes in memory.
    #[test]
    fn a_huge_chain_file_is_refused_without_reading_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fullchain.pem");
        let f = std::fs::File::create(&path).unwrap();
        // Sparse: 64 GiB on paper, nothing on disk.
        f.set_len(64 << 30).unwrap();
        let e = LeafId::of_chain_file(&path).unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    fn certs_now() -> i64 {
        crate::util::unix_now()
    }
}
