//! ACME (RFC 8555): the only code of the project that talks to a certificate authority.
//!
//! Architecture invariant: no pingora here, and no other crate talks to the CA. The
//! daemon gives the [`Manager`] a [`Host`]: the certificate manager (store, resolver),
//! a place to publish HTTP-01 tokens, and the current certificate groups (the hosts of
//! each route). The manager then, on its own:
//!
//! - creates the account once per directory and keeps it in the store's `acme/accounts/`
//!   (0600, atomic writes), with contact, terms agreement and External Account Binding;
//! - orders one certificate per group (names of one route share one) as soon as a group
//!   appears, answering HTTP-01 (token map served on :80) or TLS-ALPN-01 (challenge
//!   certificate in the [`certs::CertResolver`], ALPN `acme-tls/1` on :443), one new
//!   order per attempt: when the CA fails to validate one type, the next attempt
//!   answers the other;
//! - records every order in the store's ledger before sending it, keeps the CA's limits
//!   locally ([`budget`]) and obeys its `rateLimited` answers until their Retry-After;
//! - saves each certificate with [`certs::Store::save`] and serves it at once
//!   ([`certs::CertManager::install`]: one resolver swap, no restart);
//! - orders each group with its ACME profile (the route's `acme_profile`, else
//!   `--acme-profile`, else the CA's default), checked against the directory's
//!   `meta.profiles` ([`directory`]) at start and reload, recorded in `meta.json` and
//!   kept on every renewal;
//! - renews inside the CA's ARI window (RFC 9773) when it has one, else when a third of
//!   the lifetime is left (half of it for lifetimes under 10 days), with jitter
//!   ([`schedule`]);
//! - backs off exponentially after failures (1 min doubling to 6 h, never more than a
//!   third of the time the served certificate has left), recorded in the
//!   store's `meta.json` *before* each order, so a crash loop cannot order again and
//!   again; a failed renewal leaves the old certificate served;
//! - takes an `flock(2)` lock per certificate (`acme/locks/<id>.lock`) so that two
//!   processes (e.g. old and new during a binary upgrade) never order the same one; the
//!   kernel drops the lock when its holder dies, so it is never stale.

mod account;
pub mod budget;
mod challenge;
mod config;
pub mod directory;
mod error;
mod lock;
mod manager;
pub mod schedule;

pub use challenge::tls_alpn_certificate;
pub use config::{
    contact_uri, directory_url, eab, ChallengeKind, Config, ConfigError, Eab, LETSENCRYPT,
    LETSENCRYPT_STAGING,
};
pub use error::Error;
pub use lock::FileLock;
pub use manager::{CertStatus, Manager, OrderVerdict};

/// What the daemon provides to the ACME manager.
pub trait Host: Send + Sync + 'static {
    /// The certificates: store, resolver (TLS-ALPN-01 answers) and what is served.
    fn certs(&self) -> &certs::CertManager;
    /// Serve `key_authorization` at `/.well-known/acme-challenge/<token>` on :80.
    fn publish_http01(&self, token: &str, key_authorization: &str);
    fn withdraw_http01(&self, token: &str);
    /// Changes whenever the route table (so possibly the groups) changes.
    fn generation(&self) -> u64;
    /// The certificate groups of the current route table: the hosts of each route,
    /// main name first, each with the route's `acme_profile` (`None`: the manager's
    /// default, `--acme-profile`).
    fn groups(&self) -> Vec<(Vec<String>, Option<String>)>;
}
