//! What can go wrong talking to the CA, one variant per step, each keeping its cause
//! (`#[source]`). The texts are the ones the daemon logs and `proxyctl certs` shows as
//! `last_error`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use instant_acme::{AuthorizationStatus, Problem};

use crate::ChallengeKind;

/// An error of the ACME client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP client for the directory could not be built.
    #[error("ACME HTTP client: {0}")]
    HttpClient(#[source] instant_acme::Error),
    /// `--acme-ca-root` could not be read as PEM.
    #[error("--acme-ca-root {}: {source}", path.display())]
    CaRootRead {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// `--acme-ca-root` holds no certificate.
    #[error("--acme-ca-root {}: no certificate", path.display())]
    CaRootEmpty { path: PathBuf },
    /// A certificate of `--acme-ca-root` is not a usable root.
    #[error("--acme-ca-root {}: {source}", path.display())]
    CaRootCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The TLS client for the directory could not be built.
    #[error("ACME TLS client: {0}")]
    TlsClient(#[source] rustls::Error),
    /// Another process kept the account's lock.
    #[error("account lock: {0}")]
    AccountLock(#[source] std::io::Error),
    /// The stored account file is not what this client wrote.
    #[error("{}: {source} (move it aside to create a new account)", path.display())]
    AccountFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Reading or writing the stored account failed.
    #[error("{}: {source}", path.display())]
    AccountStore {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the account file failed (the message names the file).
    #[error("{0}")]
    AccountWrite(#[source] certs::StoreError),
    /// The directory did not answer (or not as ACME) for a stored account.
    #[error("ACME directory {directory}: {source}")]
    Directory {
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    /// The directory could not be read (to check the configured profiles).
    #[error("ACME directory {directory}: {reason}")]
    DirectoryFetch { directory: String, reason: String },
    /// The CA refused to create the account.
    #[error("creating an ACME account at {directory}: {source}")]
    AccountCreate {
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    /// The CA refused the order.
    #[error("new order: {0}")]
    NewOrder(#[source] instant_acme::Error),
    /// The CA said `rateLimited` (RFC 8555 section 6.7): ordering again before
    /// `retry_after` (when the CA says) fails the same way.
    #[error("{step}: rate limited by the CA: {detail}")]
    RateLimited {
        step: &'static str,
        detail: String,
        /// From the problem's detail (`retry after 2025-01-02 03:04:05 UTC`, as Let's
        /// Encrypt writes it); instant-acme does not hand the Retry-After header on.
        retry_after: Option<SystemTime>,
        #[source]
        source: Box<instant_acme::Error>,
    },
    /// An authorization of the order could not be fetched.
    #[error("authorization: {0}")]
    Authorization(#[source] instant_acme::Error),
    /// An authorization is neither pending nor valid (e.g. already invalid).
    #[error("authorization for {name} is {status:?}")]
    AuthorizationState {
        name: String,
        status: AuthorizationStatus,
    },
    /// The CA offers no challenge of this type for the name.
    #[error("the CA offers no {kind} challenge for {name}")]
    NoChallenge { kind: ChallengeKind, name: String },
    /// The TLS-ALPN-01 certificate could not be made.
    #[error("TLS-ALPN-01 certificate for {name}: {source}")]
    ChallengeCertificate {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Telling the CA that the challenge is ready failed.
    #[error("{name}: {source}")]
    ChallengeReady {
        name: String,
        #[source]
        source: instant_acme::Error,
    },
    /// The CA did not validate the challenges: per name, what it said (connection
    /// refused, wrong answer, ...), or the order's state.
    #[error("{0}")]
    Validation(String),
    /// The CA refused the CSR.
    #[error("finalize: {0}")]
    Finalize(#[source] instant_acme::Error),
    /// The certificate could not be downloaded.
    #[error("certificate: {0}")]
    Download(#[source] instant_acme::Error),
    /// The issued certificate could not be saved (nothing served changes).
    #[error("saving: {0}")]
    Save(#[source] certs::StoreError),
    /// The whole order took longer than allowed.
    #[error("no certificate after {0:?}")]
    Timeout(Duration),
    /// The ledger of orders could not be read or written (nothing was sent).
    #[error("ACME ledger: {0}")]
    Ledger(#[source] certs::StoreError),
    /// The local budget of the CA's limits refuses the order (nothing was sent).
    #[error("{0}")]
    Budget(crate::budget::Refusal),
    /// `proxyctl certs renew` for a name no route asks a certificate for.
    #[error("{0}: not a name this proxy orders certificates for")]
    NotOrdered(String),
}

impl Error {
    /// The CA did not accept our answer to a challenge (or offered none): the other
    /// challenge type may work.
    pub fn is_challenge_failure(&self) -> bool {
        matches!(
            self,
            Error::AuthorizationState { .. }
                | Error::NoChallenge { .. }
                | Error::ChallengeReady { .. }
                | Error::Validation(_)
        )
    }

    /// When the CA said ordering again is pointless (rate limit with a time in its
    /// problem's detail), or the local budget refused the order until when.
    pub fn retry_after(&self) -> Option<SystemTime> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            Error::Budget(r) => u64::try_from(r.until)
                .ok()
                .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t)),
            _ => None,
        }
    }

    /// The CA's detail when it answered `rateLimited`.
    pub fn rate_limited(&self) -> Option<&str> {
        match self {
            Error::RateLimited { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// An error of the CA at `step`: [`Error::RateLimited`] when its problem document
    /// says `rateLimited`, else what `otherwise` makes of it.
    pub(crate) fn ca(
        step: &'static str,
        e: instant_acme::Error,
        otherwise: impl FnOnce(instant_acme::Error) -> Error,
    ) -> Error {
        match problem(&e, "rateLimited") {
            Some(p) => Error::RateLimited {
                step,
                detail: p.detail.clone().unwrap_or_default(),
                retry_after: p.detail.as_deref().and_then(retry_after_in),
                source: Box::new(e),
            },
            None => otherwise(e),
        }
    }
}

/// The problem document of `e` when its type is `urn:ietf:params:acme:error:<kind>`.
pub(crate) fn problem<'a>(e: &'a instant_acme::Error, kind: &str) -> Option<&'a Problem> {
    match e {
        instant_acme::Error::Api(p)
            if p.r#type
                .as_deref()
                .and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:"))
                == Some(kind) =>
        {
            Some(p)
        }
        _ => None,
    }
}

/// `... retry after 2025-01-02 03:04:05 UTC ...` in a problem's detail.
fn retry_after_in(detail: &str) -> Option<SystemTime> {
    let lower = detail.to_ascii_lowercase();
    let at = lower.find("retry after ")? + "retry after ".len();
    let text = detail.get(at..at + "2025-01-02 03:04:05".len())?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(text, &format).ok()?;
    Some(t.assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(json: &str) -> instant_acme::Error {
        instant_acme::Error::Api(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn rate_limited_problem_becomes_rate_limited_with_its_time() {
        let e = api(
            r#"{"type": "urn:ietf:params:acme:error:rateLimited", "status": 429,
                "detail": "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2025-01-02 03:04:05 UTC: see https://letsencrypt.org/docs/rate-limits/"}"#,
        );
        let e = Error::ca("new order", e, Error::NewOrder);
        let Error::RateLimited {
            step, retry_after, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(*step, "new order");
        let want = time::macros::datetime!(2025-01-02 03:04:05 UTC);
        assert_eq!(*retry_after, Some(want.into()));
        assert_eq!(e.retry_after(), Some(want.into()));
        assert!(e
            .to_string()
            .starts_with("new order: rate limited by the CA: too many"));
        assert!(!e.is_challenge_failure());
        // The cause is kept.
        let source = std::error::Error::source(&e).unwrap();
        assert!(source.to_string().contains("rateLimited"), "{source}");
    }

    /// Review (issue 14): hostile problem texts give a time or none, never a panic
    /// (the text is sliced by bytes after an ASCII-lowercased search).
    #[test]
    fn hostile_retry_after_texts() {
        for detail in [
            "retry after ",
            "retry after 99999-01-02 03:04:05 UTC",
            "retry after -2025-01-02 03:04:05 UTC",
            "retry after 2025-13-45 99:99:99 UTC",
            "retry after éééééééééééééééééééé",
            "RETRY AFTER 2025-01-02 03:04:0é",
            "retry after 18446744073709551616 seconds",
        ] {
            assert_eq!(retry_after_in(detail), None, "{detail}");
        }
        assert_eq!(
            retry_after_in("Retry After 9999-12-31 23:59:59 UTC"),
            Some(time::macros::datetime!(9999-12-31 23:59:59 UTC).into())
        );
    }

    #[test]
    fn rate_limited_without_a_time_has_none() {
        let e = api(r#"{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"}"#);
        let e = Error::ca("finalize", e, Error::Finalize);
        assert!(matches!(
            e,
            Error::RateLimited {
                retry_after: None,
                ..
            }
        ));
        assert_eq!(e.to_string(), "finalize: rate limited by the CA: slow down");
    }

    #[test]
    fn other_problems_keep_their_step() {
        let e = api(r#"{"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "no"}"#);
        let e = Error::ca("new order", e, Error::NewOrder);
        assert!(matches!(e, Error::NewOrder(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "new order: API error: no (urn:ietf:params:acme:error:rejectedIdentifier)"
        );
        // A type that merely ends like another is not it.
        let e = api(r#"{"type": "urn:example:notrateLimited"}"#);
        assert!(matches!(
            Error::ca("finalize", e, Error::Finalize),
            Error::Finalize(_)
        ));
        // Not a problem document at all.
        let e = instant_acme::Error::Str("nonce");
        assert!(matches!(
            Error::ca("certificate", e, Error::Download),
            Error::Download(_)
        ));
    }

    #[test]
    fn account_does_not_exist_is_found() {
        let e = api(r#"{"type": "urn:ietf:params:acme:error:accountDoesNotExist"}"#);
        assert!(problem(&e, "accountDoesNotExist").is_some());
        assert!(problem(&e, "rateLimited").is_none());
    }

    #[test]
    fn challenge_failures_allow_the_other_type() {
        let e = Error::NoChallenge {
            kind: ChallengeKind::Http01,
            name: "a.test".into(),
        };
        assert!(e.is_challenge_failure());
        assert_eq!(
            e.to_string(),
            "the CA offers no http-01 challenge for a.test"
        );
        assert!(Error::Validation("a.test: refused".into()).is_challenge_failure());
        assert!(!Error::Timeout(Duration::from_secs(1)).is_challenge_failure());
    }
}
