//! What the ACME client is told: directory, account details, challenge type.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;

/// Let's Encrypt production, by name.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt staging, by name.
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// A challenge type this client can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ChallengeKind {
    /// Token under `/.well-known/acme-challenge/` on the :80 listener.
    #[serde(rename = "http-01")]
    Http01,
    /// Certificate for ALPN `acme-tls/1` on the :443 listener (RFC 8737).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn other(self) -> ChallengeKind {
        match self {
            ChallengeKind::Http01 => ChallengeKind::TlsAlpn01,
            ChallengeKind::TlsAlpn01 => ChallengeKind::Http01,
        }
    }

    pub(crate) fn acme(self) -> instant_acme::ChallengeType {
        match self {
            ChallengeKind::Http01 => instant_acme::ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// External Account Binding (RFC 8555 section 7.3.4): key id and the decoded MAC key.
#[derive(Clone)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// The ACME client's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory URL (names already resolved by [`directory_url`]).
    pub directory: String,
    /// An extra root to trust for the directory's own HTTPS (e.g. pebble's).
    pub ca_root: Option<PathBuf>,
    /// Contact URIs (`mailto:...`).
    pub contact: Vec<String>,
    /// The challenge tried first; the other one is tried when it fails.
    pub challenge: ChallengeKind,
    pub eab: Option<Eab>,
    /// `--acme-profile`: the profile ordered for routes that name none (`acme_profile`);
    /// `None`: the CA's default.
    pub profile: Option<String>,
}

/// A configuration problem, for the daemon's start-up error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `letsencrypt`, `letsencrypt-staging`, or an `https://` URL.
pub fn directory_url(arg: &str) -> Result<String, ConfigError> {
    match arg.trim() {
        "letsencrypt" => Ok(LETSENCRYPT.into()),
        "letsencrypt-staging" => Ok(LETSENCRYPT_STAGING.into()),
        url if url.starts_with("https://") && url.len() > "https://".len() => Ok(url.into()),
        other => Err(ConfigError(format!(
            "--acme-directory {other:?}: expected letsencrypt, letsencrypt-staging or an https:// URL"
        ))),
    }
}

/// `admin@example.org` or `mailto:admin@example.org` -> `mailto:admin@example.org`.
pub fn contact_uri(arg: &str) -> Result<String, ConfigError> {
    let addr = arg.trim().strip_prefix("mailto:").unwrap_or(arg.trim());
    match addr.split_once('@') {
        Some((user, host))
            if !user.is_empty() && host.contains('.') && !addr.contains(char::is_whitespace) =>
        {
            Ok(format!("mailto:{addr}"))
        }
        _ => Err(ConfigError(format!(
            "--acme-contact {arg:?}: expected an e-mail address"
        ))),
    }
}

/// Both EAB flags or neither; the MAC key is base64url as CAs hand it out (padding and
/// the standard alphabet are accepted too).
pub fn eab(kid: Option<&str>, hmac: Option<&str>) -> Result<Option<Eab>, ConfigError> {
    match (kid, hmac) {
        (None, None) => Ok(None),
        (Some(kid), Some(hmac)) if !kid.trim().is_empty() => {
            let h = hmac.trim().trim_end_matches('=');
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(h))
                .map_err(|e| ConfigError(format!("--acme-eab-hmac: not base64url: {e}")))?;
            if key.is_empty() {
                return Err(ConfigError("--acme-eab-hmac: empty key".into()));
            }
            Ok(Some(Eab {
                kid: kid.trim().to_string(),
                hmac_key: key,
            }))
        }
        _ => Err(ConfigError(
            "--acme-eab-kid and --acme-eab-hmac go together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_by_name_or_url() {
        assert_eq!(directory_url("letsencrypt").unwrap(), LETSENCRYPT);
        assert_eq!(
            directory_url("letsencrypt-staging").unwrap(),
            LETSENCRYPT_STAGING
        );
        assert_eq!(
            directory_url("https://127.0.0.1:14000/dir").unwrap(),
            "https://127.0.0.1:14000/dir"
        );
        for bad in ["", "http://x/dir", "https://", "lets-encrypt", "ftp://x"] {
            assert!(directory_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contacts() {
        assert_eq!(contact_uri("a@b.org").unwrap(), "mailto:a@b.org");
        assert_eq!(contact_uri("mailto:a@b.org").unwrap(), "mailto:a@b.org");
        for bad in ["", "a", "@b.org", "a@b", "a b@c.org"] {
            assert!(contact_uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn eab_flags_go_together() {
        assert!(eab(None, None).unwrap().is_none());
        assert!(eab(Some("kid"), None).is_err());
        assert!(eab(None, Some("aGk")).is_err());
        let e = eab(
            Some("kid-1"),
            Some("zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.kid, "kid-1");
        assert_eq!(e.hmac_key.len(), 48);
        assert!(!format!("{e:?}").contains("zWND"));
        assert!(eab(Some("k"), Some("!!")).is_err());
    }
}
