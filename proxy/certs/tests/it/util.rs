//! Test helpers: temporary stores and hand-made certificates.

use std::path::Path;
use std::sync::Arc;

use certs::{IssuedCert, LocalIssuer, Store, StoredCert};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use time::{Duration, OffsetDateTime};

/// A fresh store in a temporary directory (kept alive by the returned guard).
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("certs-store")).unwrap();
    (dir, store)
}

/// A self-signed certificate valid from `now + from_days` to `now + to_days`, labelled
/// with `issuer`: stands in for a manual or ACME certificate.
pub fn self_signed(names: &[&str], from_days: i64, to_days: i64, issuer: &str) -> IssuedCert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::days(from_days);
    params.not_after = now + Duration::days(to_days);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    IssuedCert {
        names,
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issuer: issuer.into(),
    }
}

/// A self-signed certificate valid from `not_before` to `not_after`, labelled with
/// `issuer` (for tests with a clock of their own).
pub fn self_signed_between(
    names: &[&str],
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
    issuer: &str,
) -> IssuedCert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params.not_before = OffsetDateTime::from(not_before);
    params.not_after = OffsetDateTime::from(not_after);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    IssuedCert {
        names,
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issuer: issuer.into(),
    }
}

/// Issues with the local CA and saves.
pub fn issue_and_save(store: &Store, ca: &LocalIssuer, names: &[&str]) -> Arc<StoredCert> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    store.save(&ca.issue(&names).unwrap()).unwrap()
}

/// Writes a certificate by hand, as an admin would (no meta.json).
pub fn drop_in(store: &Store, id: &str, cert: &IssuedCert) -> std::path::PathBuf {
    let dir = store.root().join("certs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fullchain.pem"), &cert.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
    set_mode(&dir.join("key.pem"), 0o600);
    dir
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Entry names of a directory, sorted.
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
