//! The ACME account: created once per directory, kept in `acme/accounts/` (0600).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use certs::util::unix_now;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, BodyWrapper, BytesResponse, ExternalAccountKey,
    HttpClient, NewAccount,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::lock::FileLock;
use crate::{Config, Error};

/// What `acme/accounts/<directory>.json` holds.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    contact: Vec<String>,
    /// Unix seconds.
    created: i64,
    credentials: AccountCredentials,
}

/// `acme/accounts/<host>_<path>.json` for a directory URL.
pub(crate) fn account_path(acme_dir: &Path, directory: &str) -> PathBuf {
    acme_dir
        .join("accounts")
        .join(format!("{}.json", slug(directory)))
}

/// The file-name-safe key of a directory URL: the account file's and the ledger's name.
pub(crate) fn slug(directory: &str) -> String {
    directory
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An HTTP client for the directory: the system roots, plus `--acme-ca-root`'s
/// certificates when given, wrapped in [`Recording`] (instant-acme does not hand the
/// CA's Retry-After on). ring only.
fn builder(config: &Config) -> Result<AccountBuilder, Error> {
    Ok(Account::builder_with_http(Box::new(Recording(
        http_client(config)?,
    ))))
}

tokio::task_local! {
    /// Where [`Recording`] notes the Retry-After of a 429 or 503 answer to a request
    /// made inside [`retry_after_scope`].
    static RETRY_AFTER: Arc<Mutex<Option<SystemTime>>>;
}

/// Runs `f` and returns, with its result, the latest Retry-After of a 429 or 503
/// answer the CA gave to a request `f` made (as a time; `None` when it sent none).
/// Task-local, so the orders running at once each see only their own answers.
pub(crate) async fn retry_after_scope<T>(f: impl Future<Output = T>) -> (T, Option<SystemTime>) {
    let cell = Arc::new(Mutex::new(None));
    let r = RETRY_AFTER.scope(cell.clone(), f).await;
    let at = *certs::util::lock(&cell);
    (r, at)
}

/// The HTTP client instant-acme uses, noting the CA's Retry-After (RFC 9110 section
/// 10.2.3: seconds or an HTTP date) on 429 and 503 answers for [`retry_after_scope`].
struct Recording(Box<dyn HttpClient>);

impl HttpClient for Recording {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        // Taken now: `request` is called from the task that awaits the answer.
        let cell = RETRY_AFTER.try_with(Arc::clone).ok();
        let fut = self.0.request(req);
        Box::pin(async move {
            let r = fut.await?;
            let status = r.parts.status;
            if let Some(cell) = cell {
                if status == http::StatusCode::TOO_MANY_REQUESTS
                    || status == http::StatusCode::SERVICE_UNAVAILABLE
                {
                    let at = r
                        .parts
                        .headers
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    if at.is_some() {
                        *certs::util::lock(&cell) = at;
                    }
                }
            }
            Ok(r)
        })
    }
}

/// A Retry-After value: delay-seconds or an HTTP date. `None` for anything else.
pub(crate) fn parse_retry_after(v: &str, now: SystemTime) -> Option<SystemTime> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = v.parse().ok()?;
        // Absurd values are capped later (schedule::retry_at); keep the sum finite.
        return now.checked_add(Duration::from_secs(secs.min(10 * 365 * 86_400)));
    }
    httpdate::parse_http_date(v).ok()
}

/// A plain HTTPS client for the CA: the system roots, plus `--acme-ca-root`'s
/// certificates when given. ring only.
pub(crate) fn http_client(config: &Config) -> Result<Box<dyn HttpClient>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(root) = &config.ca_root {
        let extra = CertificateDer::pem_file_iter(root)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|source| Error::CaRootRead {
                path: root.clone(),
                source,
            })?;
        if extra.is_empty() {
            return Err(Error::CaRootEmpty { path: root.clone() });
        }
        for c in extra {
            roots.add(c).map_err(|source| Error::CaRootCert {
                path: root.clone(),
                source,
            })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(certs::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::TlsClient)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

/// Loads the account for `config.directory` from the store, or creates it at the CA
/// (agreeing to its terms, with the contact and EAB given) and stores it. A lock file
/// keeps two processes from creating two accounts.
pub(crate) async fn load_or_create(
    store: &certs::Store,
    config: &Config,
) -> Result<Account, Error> {
    let path = account_path(&store.acme_dir(), &config.directory);
    let _lock = FileLock::acquire(&path.with_extension("lock"), Duration::from_secs(60))
        .await
        .map_err(Error::AccountLock)?;
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: StoredAccount =
                serde_json::from_slice(&bytes).map_err(|source| Error::AccountFile {
                    path: path.clone(),
                    source,
                })?;
            let account = builder(config)?
                .from_credentials(stored.credentials)
                .await
                .map_err(|source| Error::Directory {
                    directory: config.directory.clone(),
                    source,
                })?;
            if stored.contact != config.contact {
                let refs: Vec<&str> = config.contact.iter().map(String::as_str).collect();
                match account.update_contacts(&refs).await {
                    Ok(()) => {
                        let bytes = std::fs::read(&path).map_err(|source| Error::AccountStore {
                            path: path.clone(),
                            source,
                        })?;
                        let mut again: StoredAccount =
                            serde_json::from_slice(&bytes).map_err(|source| {
                                Error::AccountFile {
                                    path: path.clone(),
                                    source,
                                }
                            })?;
                        again.contact = config.contact.clone();
                        write(&path, &again)?;
                        tracing::info!(contact = ?config.contact, "ACME account contact updated");
                    }
                    Err(e) => tracing::warn!("ACME account contact not updated: {e}"),
                }
            }
            Ok(account)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let refs: Vec<&str> = config.contact.iter().map(String::as_str).collect();
            let eab = config
                .eab
                .as_ref()
                .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
            let (account, credentials) = builder(config)?
                .create(
                    &NewAccount {
                        contact: &refs,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    config.directory.clone(),
                    eab.as_ref(),
                )
                .await
                .map_err(|e| {
                    Error::ca("creating an ACME account", e, |source| {
                        Error::AccountCreate {
                            directory: config.directory.clone(),
                            source,
                        }
                    })
                })?;
            let stored = StoredAccount {
                directory: config.directory.clone(),
                contact: config.contact.clone(),
                created: unix_now(),
                credentials,
            };
            write(&path, &stored)?;
            tracing::info!(directory = %config.directory, id = %account.id(), "ACME account created");
            Ok(account)
        }
        Err(source) => Err(Error::AccountStore { path, source }),
    }
}

/// The URL of the stored account for `config`'s directory (RFC 8657 `accounturi`),
/// read from its file without asking the CA; `None` when there is none yet or it
/// cannot be read.
pub(crate) fn stored_uri(store: &certs::Store, config: &Config) -> Option<String> {
    let path = account_path(&store.acme_dir(), &config.directory);
    let bytes = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["credentials"]["id"].as_str().map(str::to_owned)
}

/// Moves the stored account aside (the CA no longer knows it), so that the next
/// [`load_or_create`] makes a new one.
pub(crate) fn forget(store: &certs::Store, config: &Config) {
    let path = account_path(&store.acme_dir(), &config.directory);
    let aside = path.with_extension(format!("json.unknown-{}", unix_now()));
    if let Err(e) = std::fs::rename(&path, &aside) {
        tracing::warn!("{}: could not move aside: {e}", path.display());
    }
}

fn write(path: &Path, account: &StoredAccount) -> Result<(), Error> {
    let json = serde_json::to_string_pretty(account).map_err(|source| Error::AccountFile {
        path: path.to_path_buf(),
        source,
    })? + "\n";
    if let Some(dir) = path.parent() {
        certs::fsutil::create_dir(dir).map_err(Error::AccountWrite)?;
    }
    certs::fsutil::write_atomic(path, json.as_bytes(), certs::fsutil::KEY_MODE)
        .map_err(Error::AccountWrite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_file_per_directory() {
        let p = account_path(
            Path::new("/s/acme"),
            "https://acme-v02.api.letsencrypt.org/directory",
        );
        assert_eq!(
            p,
            Path::new("/s/acme/accounts/acme-v02.api.letsencrypt.org_directory.json")
        );
        let p = account_path(Path::new("/s/acme"), "https://127.0.0.1:14000/dir");
        assert_eq!(p, Path::new("/s/acme/accounts/127.0.0.1_14000_dir.json"));
    }

    #[test]
    fn retry_after_as_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        for bad in ["", "-5", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        // Huge but numeric: capped, never an overflow.
        assert!(parse_retry_after("18446744073709551615", now).is_some());
    }

    /// Review: hostile Retry-After values (held): several values, signs, spaces,
    /// obsolete date forms, dates before the epoch; nothing panics, and what is not
    /// a delay or a date is none (the caller then holds for RATE_LIMIT_DEFAULT).
    #[test]
    fn hostile_retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for bad in [
            "120, 60",
            "+120",
            "1 20",
            "0x10",
            "120s",
            "Sun, 06 Nov 1994 08:49:37 GMT, 5",
            "Thu, 01 Jan 1960 00:00:00 GMT",
            "\u{1b}[2J",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        // RFC 850 and asctime forms are still HTTP dates; a past one is returned as
        // is (schedule::retry_at then keeps the backoff).
        assert!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now).is_some());
        assert!(parse_retry_after("Sun Nov  6 08:49:37 1994", now).is_some());
        assert_eq!(parse_retry_after(" 0 ", now), Some(now));
    }
}
