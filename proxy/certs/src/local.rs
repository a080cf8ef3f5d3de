//! The embedded local CA, like Caddy's `tls internal`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::fsutil::{self, KEY_MODE, PUBLIC_MODE};
use crate::parse;
use crate::store::{IssuedCert, Store};
use crate::{StoreError, ISSUER_LOCAL};

/// Common name of the local CA.
pub const LOCAL_CA_NAME: &str = "proxyd local CA";
const CA_LIFETIME: Duration = Duration::days(3650);
/// Lifetime of a leaf issued by the local CA.
pub const LEAF_LIFETIME: Duration = Duration::days(30);
/// Backdating, for clocks a little behind ours: an hour, or a tenth of a (test) lifetime
/// when that is shorter, so that a third of the lifetime is still well ahead.
const BACKDATE: Duration = Duration::hours(1);

/// Embedded local CA: ECDSA P-256, about ten years, kept in the store
/// (`local-ca/ca.pem`, `local-ca/ca.key` 0600).
pub struct LocalIssuer {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_not_after: OffsetDateTime,
    leaf_lifetime: Duration,
}

impl fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("ca_not_after", &self.ca_not_after)
            .field("leaf_lifetime", &self.leaf_lifetime)
            .finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// Loads the CA from the store, or creates it when neither file exists. Writes the key
    /// first, so a crash can leave a key without a certificate (the certificate is then
    /// made again from the key) but never a certificate without its key. A corrupt or
    /// mismatched CA is an error, not replaced: clients may already trust it.
    pub fn load_or_create(store: &Store) -> Result<LocalIssuer, StoreError> {
        let dir = store.local_ca_dir();
        fsutil::create_dir(&dir)?;
        let key_path = dir.join("ca.key");
        let pem_path = dir.join("ca.pem");
        let key_pem = read_optional(&key_path)?;
        let cert_pem = read_optional(&pem_path)?;
        match (key_pem, cert_pem) {
            (None, None) => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                fsutil::write_atomic(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
                let issuer = Self::self_sign(key, &pem_path)?;
                tracing::info!("created local CA {}", pem_path.display());
                Ok(issuer)
            }
            (None, Some(_)) => Err(StoreError::bad_file(
                &key_path,
                format!(
                    "missing, but {} exists; restore the key, or delete both files to create a new \
                     local CA (clients will have to trust the new one)",
                    pem_path.display()
                ),
            )),
            (Some(key_pem), None) => {
                let key = load_key(&key_path, &key_pem)?;
                tracing::warn!(
                    "{} missing; making it again from {}",
                    pem_path.display(),
                    key_path.display()
                );
                Self::self_sign(key, &pem_path)
            }
            (Some(key_pem), Some(cert_pem)) => {
                let key = load_key(&key_path, &key_pem)?;
                Self::from_files(key, cert_pem, &pem_path)
            }
        }
    }

    /// What [`LocalIssuer::load_or_create`] would find in `store`, writing nothing: `Ok`
    /// when the CA is usable or absent (it would be created), else the error that would
    /// stop the daemon at start (`proxyd --check`).
    pub fn check(store: &Store) -> Result<(), StoreError> {
        let dir = store.local_ca_dir();
        let key_path = dir.join("ca.key");
        let pem_path = dir.join("ca.pem");
        let key_pem = read_optional(&key_path)?;
        let cert_pem = read_optional(&pem_path)?;
        match (key_pem, cert_pem) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(StoreError::bad_file(
                &key_path,
                format!("missing, but {} exists", pem_path.display()),
            )),
            (Some(key_pem), None) => load_key(&key_path, &key_pem).map(drop),
            (Some(key_pem), Some(cert_pem)) => {
                let key = load_key(&key_path, &key_pem)?;
                Self::from_files(key, cert_pem, &pem_path).map(drop)
            }
        }
    }

    fn self_sign(key: KeyPair, pem_path: &Path) -> Result<LocalIssuer, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, LOCAL_CA_NAME);
        dn.push(DnType::OrganizationName, "proxyd");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let ca_pem = cert.pem();
        fsutil::write_atomic(pem_path, ca_pem.as_bytes(), PUBLIC_MODE)?;
        Ok(LocalIssuer {
            ca_not_after: params.not_after,
            issuer: Issuer::new(params, key),
            ca_pem,
            leaf_lifetime: LEAF_LIFETIME,
        })
    }

    fn from_files(
        key: KeyPair,
        ca_pem: String,
        pem_path: &Path,
    ) -> Result<LocalIssuer, StoreError> {
        let bad = |reason: String| StoreError::bad_file(pem_path, reason);
        let chain = parse::parse_chain(ca_pem.as_bytes()).map_err(bad)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad("does not match the key in ca.key".into()));
        }
        if !cert.is_ca() {
            return Err(bad(
                "not a CA certificate (basicConstraints CA:FALSE)".into()
            ));
        }
        let ca_not_after =
            OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
                .map_err(|e| bad(format!("notAfter: {e}")))?;
        if ca_not_after <= OffsetDateTime::now_utc() {
            tracing::warn!(
                "local CA {} expired; delete local-ca/ to create a new one (clients must trust it again)",
                pem_path.display()
            );
        }
        let issuer = Issuer::from_ca_cert_der(&chain[0], key)
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
        Ok(LocalIssuer {
            issuer,
            ca_pem,
            ca_not_after,
            leaf_lifetime: LEAF_LIFETIME,
        })
    }

    /// The CA certificate, PEM: what clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Leaves last `lifetime` instead of [`LEAF_LIFETIME`]. For tests of renewal (the
    /// daemon's hidden `--local-cert-lifetime`): seconds instead of days.
    pub fn with_leaf_lifetime(mut self, lifetime: std::time::Duration) -> LocalIssuer {
        self.leaf_lifetime = Duration::try_from(lifetime).unwrap_or(LEAF_LIFETIME);
        self
    }

    /// How long its leaves are valid (from issuance; see [`LocalIssuer::issue`]).
    pub fn leaf_lifetime(&self) -> std::time::Duration {
        std::time::Duration::try_from(self.leaf_lifetime).unwrap_or_default()
    }

    /// Issues an ECDSA P-256 leaf for `names` (main name first; wildcards allowed), valid
    /// for 30 days (or [`LocalIssuer::with_leaf_lifetime`]; not past the CA), serverAuth.
    /// The chain is leaf + CA.
    pub fn issue(&self, names: &[String]) -> Result<IssuedCert, StoreError> {
        self.issue_at(names, std::time::SystemTime::now())
    }

    /// [`LocalIssuer::issue`] as if the time were `now` (for tests with a clock of their
    /// own).
    pub fn issue_at(
        &self,
        names: &[String],
        now: std::time::SystemTime,
    ) -> Result<IssuedCert, StoreError> {
        let mut clean: Vec<String> = Vec::with_capacity(names.len());
        for n in names {
            let norm = parse::normalize_name(n);
            parse::check_name(&norm).map_err(|reason| StoreError::InvalidName {
                name: n.clone(),
                reason,
            })?;
            if !clean.contains(&norm) {
                clean.push(norm);
            }
        }
        if clean.is_empty() {
            return Err(StoreError::BadCert {
                names: "(none)".into(),
                reason: "no names".into(),
            });
        }
        let now = OffsetDateTime::from(now);
        let mut params = CertificateParams::new(clean.clone())?;
        let mut dn = DistinguishedName::new();
        if clean[0].len() <= 64 {
            dn.push(DnType::CommonName, clean[0].as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE.min(self.leaf_lifetime / 10);
        params.not_after = (now + self.leaf_lifetime).min(self.ca_not_after);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain_pem = cert.pem();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.ca_pem);
        Ok(IssuedCert {
            names: clean,
            chain_pem,
            key_pem: key.serialize_pem(),
            issuer: ISSUER_LOCAL.into(),
        })
    }
}

fn read_optional(path: &PathBuf) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

fn load_key(path: &Path, pem: &str) -> Result<KeyPair, StoreError> {
    // rcgen's error names only the PEM problem, never key bytes.
    KeyPair::from_pem(pem)
        .map_err(|e| StoreError::bad_file(path, format!("not a usable private key: {e}")))
}

/// 16 random bytes, positive.
fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    crate::util::random_fill(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}
