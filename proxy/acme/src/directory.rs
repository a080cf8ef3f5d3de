//! The CA's directory, read without an account: the profiles it offers (RFC draft
//! "ACME profiles", `meta.profiles`), which the daemon checks every configured profile
//! against at start and at reload, and the domain names it recognises in CAA records
//! (RFC 8555 section 9.7.6, `meta.caaIdentities`), which `proxyctl certs preflight`
//! checks names' CAA records against.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use instant_acme::BodyWrapper;

use crate::{Config, Error};

/// Bound on one directory fetch (a check at start or reload must not hang).
pub const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(15);

/// Profile name -> description, as the directory lists them (empty: no profiles).
pub type Profiles = BTreeMap<String, String>;

/// What the directory's `meta` says that this client uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub profiles: Profiles,
    /// `meta.caaIdentities`: the issuer domain names of CAA records that allow this CA
    /// (empty: the directory does not say).
    pub caa_identities: Vec<String>,
}

/// GETs the directory and returns its `meta.profiles`.
pub async fn fetch_profiles(config: &Config) -> Result<Profiles, Error> {
    fetch_meta(config).await.map(|m| m.profiles)
}

/// GETs the directory and returns what its `meta` says.
pub async fn fetch_meta(config: &Config) -> Result<Meta, Error> {
    let fail = |reason: String| Error::DirectoryFetch {
        directory: config.directory.clone(),
        reason,
    };
    let client = crate::account::http_client(config)?;
    let request = http::Request::get(&config.directory)
        .header(http::header::ACCEPT, "application/json")
        // RFC 8555 section 6.1: clients send one (and CAs may refuse requests without).
        .header(
            http::header::USER_AGENT,
            concat!("proxyd-acme/", env!("CARGO_PKG_VERSION")),
        )
        .body(BodyWrapper::<Bytes>::default())
        .map_err(|e| fail(e.to_string()))?;
    let fetch = async {
        let mut rsp = client
            .request(request)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !rsp.parts.status.is_success() {
            return Err(fail(format!("HTTP {}", rsp.parts.status)));
        }
        rsp.body.into_bytes().await.map_err(|e| fail(e.to_string()))
    };
    let body = tokio::time::timeout(DIRECTORY_TIMEOUT, fetch)
        .await
        .map_err(|_| fail(format!("no answer within {DIRECTORY_TIMEOUT:?}")))??;
    parse_meta(&body).map_err(fail)
}

/// `meta.profiles` of a directory document.
pub fn parse_profiles(body: &[u8]) -> Result<Profiles, String> {
    parse_meta(body).map(|m| m.profiles)
}

/// The `meta` of a directory document (a document without `newOrder` is no directory).
pub fn parse_meta(body: &[u8]) -> Result<Meta, String> {
    #[derive(serde::Deserialize)]
    struct Dir {
        #[serde(rename = "newOrder")]
        _new_order: String,
        #[serde(default)]
        meta: RawMeta,
    }
    #[derive(serde::Deserialize, Default)]
    struct RawMeta {
        #[serde(default)]
        profiles: Profiles,
        #[serde(default, rename = "caaIdentities")]
        caa_identities: Vec<String>,
    }
    serde_json::from_slice::<Dir>(body)
        .map(|d| Meta {
            profiles: d.meta.profiles,
            caa_identities: d.meta.caa_identities,
        })
        .map_err(|e| format!("not an ACME directory: {e}"))
}

/// `Err` with a message naming the offered profiles when `wanted` is not one of them.
pub fn check_profile(wanted: &str, offered: &Profiles, directory: &str) -> Result<(), String> {
    if offered.contains_key(wanted) {
        return Ok(());
    }
    if offered.is_empty() {
        return Err(format!(
            "ACME profile {wanted:?} is not offered by {directory}: it offers no profiles (remove the profile to take the CA's default)"
        ));
    }
    let names: Vec<String> = offered.keys().map(|k| format!("{k:?}")).collect();
    Err(format!(
        "ACME profile {wanted:?} is not offered by {directory}: it offers {}",
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_a_directory() {
        let body = br#"{"newOrder":"https://ca.test/new-order","meta":{"profiles":{"classic":"90 days","shortlived":"160 hours"},"caaIdentities":["ca.test"]}}"#;
        let p = parse_profiles(body).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["classic", "shortlived"]);
        assert!(parse_profiles(br#"{"newOrder":"x"}"#).unwrap().is_empty());
        assert!(parse_profiles(b"<html>").is_err());
        assert!(parse_profiles(br#"{"meta":{}}"#).is_err());
    }

    #[test]
    fn caa_identities_from_a_directory() {
        let body = br#"{"newOrder":"https://ca.test/new-order","meta":{"caaIdentities":["ca.test","Other.Test"]}}"#;
        let m = parse_meta(body).unwrap();
        assert_eq!(m.caa_identities, ["ca.test", "Other.Test"]);
        assert!(m.profiles.is_empty());
        let m = parse_meta(br#"{"newOrder":"x","meta":{"profiles":{}}}"#).unwrap();
        assert!(m.caa_identities.is_empty());
        assert!(parse_meta(br#"{"newOrder":"x","meta":{"caaIdentities":"ca.test"}}"#).is_err());
    }

    #[test]
    fn an_unknown_profile_names_the_offered_ones() {
        let p: Profiles = [("classic", ""), ("shortlived", "")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert!(check_profile("classic", &p, "https://ca.test/dir").is_ok());
        let e = check_profile("tlsserver", &p, "https://ca.test/dir").unwrap_err();
        assert_eq!(
            e,
            r#"ACME profile "tlsserver" is not offered by https://ca.test/dir: it offers "classic", "shortlived""#
        );
        let e = check_profile("x", &Profiles::new(), "https://ca.test/dir").unwrap_err();
        assert!(e.contains("offers no profiles"), "{e}");
    }
}
