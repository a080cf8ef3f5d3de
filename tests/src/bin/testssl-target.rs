//! A proxyd to scan: one backend behind the real proxyd, on loopback ports picked by the
//! kernel. Used by tests/testssl/run.sh.
//!
//! Prints one line, `READY <https address> <CA file> <name>`, then serves until its
//! standard input is closed (or it is killed).
//!
//! # Why not the local issuer's certificate
//!
//! The scan is about the proxy's TLS (protocols, suites, order, resumption, headers),
//! and testssl.sh also rates the served *certificate*. The local issuer's leaves are
//! short-lived (30 days) and carry no revocation information, by design: they stand in
//! for `tls internal` and are renewed by the proxy itself. testssl rates exactly that as
//! HIGH ("expires < 30 days", "neither CRL nor OCSP URI"), which says nothing about
//! the proxy. In production the public names get ACME certificates, so this target
//! serves a certificate shaped like a public CA's instead: a throw-away root and
//! intermediate made here, a 90-day ECDSA P-256 leaf for [`NAME`] with a CRL
//! distribution point (an `.invalid` host: testssl only fetches it with --phone-out,
//! which run.sh does not pass), dropped into the store as a file-based certificate
//! (`certs/<name>/fullchain.pem` = leaf + intermediate, `key.pem`), with the local
//! issuer off so that this is the only certificate proxyd can serve. The root is printed
//! in the READY line for run.sh to trust; the whole directory is removed on exit.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use tests::{Backend, Proxy};
use time::{Duration, OffsetDateTime};
use tokio::io::AsyncReadExt;

const NAME: &str = "testssl.test";
/// Lifetime of a Let's Encrypt certificate.
const LEAF_LIFETIME: Duration = Duration::days(90);
const CRL_URI: &str = "http://crl.testssl-ca.invalid/intermediate.crl";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("testssl-target-")
        .tempdir()?;
    let ca_path = dir.path().join("root-ca.pem");
    let pki = Pki::new()?;
    std::fs::write(&ca_path, &pki.root_pem)?;
    pki.drop_into_store(&dir.path().join("certs-store"))?;

    let backend = Backend::start("scanned").await;
    // HSTS spelled out (it is also the default), and the response headers a public site
    // should send: testssl rates a response without any of them as MEDIUM.
    let routes = format!(
        r#"[[route]]
hosts = ["{NAME}"]
upstreams = ["{}"]
hsts = true
hsts_max_age = "365d"
response_headers = {{ "X-Content-Type-Options" = "nosniff", "X-Frame-Options" = "DENY", "Content-Security-Policy" = "default-src 'none'; frame-ancestors 'none'", "Referrer-Policy" = "no-referrer" }}
"#,
        backend.addr()
    );
    let proxy = Proxy::builder(&routes)
        .dir(dir.path())
        .local_issuer(false)
        .start()
        .await;
    println!("READY {} {} {NAME}", proxy.https_addr(), ca_path.display());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(proxy);
    drop(dir);
    Ok(())
}

/// A root, an intermediate and a leaf for [`NAME`], as a public CA would issue them.
struct Pki {
    root_pem: String,
    chain_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let now = OffsetDateTime::now_utc();
        let ca_params = |cn: &str, path_len: u8, years: i64| {
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CountryName, "XX");
            dn.push(DnType::OrganizationName, "proxyd testssl throw-away CA");
            dn.push(DnType::CommonName, cn);
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.not_before = now - Duration::days(1);
            p.not_after = now + Duration::days(365 * years);
            p.serial_number = Some(random_serial());
            p
        };

        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params("testssl Root X1", 1, 10);
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut int_params = ca_params("testssl E1", 0, 3);
        int_params.use_authority_key_identifier_extension = true;
        int_params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec!["http://crl.testssl-ca.invalid/root.crl".into()],
        }];
        let int = int_params.signed_by(&int_key, &root_issuer)?;
        let int_issuer = Issuer::new(int_params, int_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut leaf = CertificateParams::new(vec![NAME.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, NAME);
        leaf.distinguished_name = dn;
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![CRL_URI.into()],
        }];
        leaf.not_before = now - Duration::hours(1);
        leaf.not_after = leaf.not_before + LEAF_LIFETIME;
        leaf.serial_number = Some(random_serial());
        let leaf_cert = leaf.signed_by(&leaf_key, &int_issuer)?;

        Ok(Pki {
            root_pem: root.pem(),
            // Leaf first, then the intermediate; never the root (clients have it).
            chain_pem: format!("{}{}", leaf_cert.pem(), int.pem()),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// `certs/<NAME>/{fullchain.pem,key.pem}` as certs-store/README.md says (directories
    /// 0700, key 0600, no meta.json: a manual certificate).
    fn drop_into_store(&self, store: &Path) -> anyhow::Result<()> {
        let dir = store.join("certs").join(NAME);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        std::fs::write(dir.join("fullchain.pem"), &self.chain_pem)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("key.pem"))?
            .write_all(self.key_pem.as_bytes())?;
        Ok(())
    }
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    certs::util::random_fill(&mut b);
    b[0] = (b[0] & 0x7f) | 0x01; // positive, and 16 bytes long
    SerialNumber::from_slice(&b)
}
