//! Certificates: the on-disk store, the embedded local issuer, the SNI resolver and the
//! TLS policy of every public listener.
//!
//! Architecture invariant: this crate knows nothing of pingora or of routes files. Its
//! inputs are a directory and lists of host names; its outputs are a
//! [`rustls::ServerConfig`] and a [`CertResolver`] whose whole map is swapped at once.
//! All cryptography goes through rustls' *ring* provider ([`crypto_provider`]); rcgen is
//! built on *ring* too. Nothing here panics on a bad file: every problem names the file.
//!
//! - [`Store`]: the directory below, the proxy's only long-term state.
//! - [`LocalIssuer`]: an embedded CA, like Caddy's `tls internal`.
//! - [`CertResolver`]: SNI -> certificate; per handshake one `ArcSwap` load and a map lookup.
//! - [`CertManager`]: control plane. Loads the store, makes sure every routed name has a
//!   usable certificate (issuing locally when allowed), then swaps the resolver once; on
//!   a reload ([`CertManager::ensure`]) and on a timer ([`CertManager::maintain`]) it
//!   holds only the certificates of routed names and renews them as they age
//!   ([`renewal`] has the rules).
//! - [`server_config`]: TLS 1.2/1.3, AEAD suites with forward secrecy only, ALPN,
//!   session cache and rotating ticket keys.
//!
//! # On-disk layout
//!
//! ```text
//! certs-store/                 0700 subdirectories (the root is left as the admin made it)
//!   local-ca/ca.pem, ca.key    the local CA (ca.key 0600, PKCS#8 PEM)
//!   certs/<id>/fullchain.pem   leaf first, then intermediates
//!   certs/<id>/key.pem         0600, PKCS#8 PEM (PKCS#1 and SEC1 are accepted when dropped in)
//!   certs/<id>/meta.json       {"names":[..],"issuer":"local","not_after":<unix>,
//!                               "last_attempt":null,"last_error":null,
//!                               "next_attempt":null,"failures":0}
//!   acme/                      written by `proxy/acme`: accounts/, locks/,
//!                              pending/<id>.json (meta of a name with no certificate yet)
//!                              and ledger/<account>.json (orders, failed validations and
//!                              the CA's rate-limit holds: [`Ledger`])
//!   archive/<id>.<reason>-<t>  taken out of certs/ whole: `expired` (no route used it),
//!                              `replaced` (a manual one the local issuer replaced);
//!                              deleted after ARCHIVE_KEEP
//! ```
//!
//! `<id>` is the certificate's main name; `*.example.org` is stored as
//! `_wildcard.example.org`. Names and validity always come from the certificate itself;
//! `meta.json` only contributes `issuer` (`"manual"` when the file is missing, which is
//! how an admin drops a certificate in by hand) and the bookkeeping fields.
//!
//! # Writing atomically
//!
//! A certificate is written as a whole new directory `certs/.tmp-<id>-<rand>` (key.pem,
//! fullchain.pem, meta.json, each fsynced, then the directory fsynced) and then put in
//! place with one `rename(2)` when `<id>` is new, or with `renameat2(RENAME_EXCHANGE)`
//! when it replaces an existing one: the two directories swap atomically, so a reader
//! (or a crash) sees either the complete old certificate or the complete new one, never
//! a new key next to an old chain. The old one, now under the temporary name, is then
//! deleted and `certs/` fsynced. On file systems without `RENAME_EXCHANGE` the fallback
//! is two renames (`<id>` -> `.old-<id>-<rand>`, temporary -> `<id>`); a crash between
//! them is repaired by the next [`Store::load_all`], which renames an orphaned
//! `.old-<id>-*` back. Leftover `.tmp-*`/`.old-*` directories older than ten minutes are
//! deleted on load. Single files (the local CA) are written to a temporary file in the
//! same directory, fsynced, renamed and the directory fsynced; the CA key is written
//! before the CA certificate, and a missing certificate next to a present key is
//! re-created from the key.
//!
//! Per-file replacement inside an existing directory was rejected: a crash between the
//! key and the chain would leave a mismatched pair, and the certificate that was being
//! served would be lost rather than kept.
//!
//! On load, every entry is checked: the chain parses, the key parses, the key matches
//! the leaf. An entry that fails (corrupt, truncated, half-written, mismatched) is renamed
//! to `certs/<id>.corrupt-<unix-ts>`, reported, and never served. An unreadable entry
//! (e.g. permission denied) is reported but left where it is. So an admin dropping a
//! certificate in by hand should build the directory elsewhere (on the same file system)
//! and `mv` it into `certs/`.

pub mod fsutil;
mod leaf;
mod ledger;
mod local;
mod manager;
mod parse;
pub mod renewal;
mod resolver;
mod store;
mod tls;
pub mod util;

use std::path::PathBuf;

pub use leaf::{sha256_hex, LeafId};
pub use ledger::{
    FailedValidation, Hold, HoldScope, Ledger, OrderOutcome, OrderRecord, LEDGER_KEEP_SECS,
};
pub use local::{LocalIssuer, LEAF_LIFETIME, LOCAL_CA_NAME};
pub use manager::{CertInfo, CertManager, EnsureReport, MaintainReport};
pub use parse::{cert_id, normalize_name};
pub use resolver::{CertResolver, ACME_TLS_ALPN};
pub use store::{IssuedCert, LoadReport, Meta, Stamp, Store, StoredCert, ARCHIVE_KEEP};
pub use tls::{crypto_provider, install_crypto_provider, server_config, SESSION_CACHE_SIZE};

/// The `issuer` of certificates made by [`LocalIssuer`].
pub const ISSUER_LOCAL: &str = "local";
/// The `issuer` of a certificate dropped in by hand without a `meta.json`.
pub const ISSUER_MANUAL: &str = "manual";

/// Everything that can go wrong with certificates. Messages name the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be read, written, renamed or created.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file was read but its content is unusable.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// A host name that cannot be put in a certificate or a directory name.
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// A certificate handed to [`Store::save`] (or made by the issuer) is unusable.
    #[error("certificate for {names}: {reason}")]
    BadCert { names: String, reason: String },
    /// rcgen failed to build a key or certificate.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> StoreError {
        StoreError::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
