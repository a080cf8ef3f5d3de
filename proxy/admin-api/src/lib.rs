//! The admin protocol of `proxyd`: every request of its admin API and every reply, as
//! types shared by the daemon (which builds its replies from them) and `proxyctl` (which
//! decodes every reply into them). A field renamed here changes both sides at once, and
//! a field renamed on one side only fails to compile.
//!
//! The transport is HTTP/1.1 with JSON bodies on a Unix socket; [`Request`] names the
//! method and path of each call, and which HTTP statuses carry its reply type (any
//! other status carries an [`ErrorReply`]).
//!
//! Decoding rules, for a `proxyctl` older or newer than the daemon:
//! - extra fields (from a newer daemon) are ignored;
//! - a missing field is an error (`missing field `pid``), also for fields that may be
//!   `null`: those are always sent, so a renamed one is caught, not read as "none";
//! - a reply that contradicts itself (a reload that is both rejected and applied) is an
//!   error too: [`ReloadOutcome`] has no way to say it.
//!
//! Times are Unix seconds. Maps are sent with their keys in sorted order (the daemon
//! encodes through `serde_json::Value`), so the JSON is the same byte for byte as before
//! this crate existed; the tests below pin it, one literal per message.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Every call of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /v1/status` -> [`Status`].
    Status,
    /// `POST /v1/reload`: validate the routes file, then swap it in -> [`ReloadReply`]
    /// (200 when valid, 422 when rejected).
    Reload,
    /// `GET /v1/diff`: what a reload would change, applying nothing -> [`ReloadReply`]
    /// (200 / 422 as for a reload; never [`ReloadOutcome::Applied`]).
    Diff,
    /// `GET /v1/certs` -> [`Certs`].
    Certs,
    /// `POST /v1/certs/renew?name=NAME`: order a new ACME certificate for NAME's group
    /// now -> [`Renewing`] (202), else an [`ErrorReply`] (400 no name, 409 ACME off,
    /// 404 no such certificate).
    Renew { name: String },
    /// `POST /v1/certs/preflight?name=A&name=B`: why an ACME order for these names
    /// (none: every name ACME orders for) would fail -> [`Preflight`] (200, whatever the
    /// checks found), else an [`ErrorReply`] (409 ACME off, 404 a name not routed, 400
    /// a bad query: an entry that is no host name, e.g. an empty `name=` or another
    /// key). A POST: it publishes a one-off HTTP-01 token while it runs.
    Preflight { names: Vec<String> },
    /// `GET /v1/health/live` -> [`Live`].
    Live,
    /// `GET /v1/health/ready` -> [`Readiness`] (200 ready, 503 not).
    Ready,
    /// `POST /v1/upgrade/handover`: send copies of the listening sockets to the process
    /// waiting on the upgrade socket -> [`HandoverReply`] (200 sent; 409 nobody waiting
    /// or busy, 503 not started, 500 failed: refused).
    Handover,
}

impl Request {
    pub fn method(&self) -> &'static str {
        match self {
            Request::Reload
            | Request::Renew { .. }
            | Request::Preflight { .. }
            | Request::Handover => "POST",
            _ => "GET",
        }
    }

    /// Path and query, as sent.
    pub fn path(&self) -> String {
        match self {
            Request::Status => "/v1/status".into(),
            Request::Reload => "/v1/reload".into(),
            Request::Diff => "/v1/diff".into(),
            Request::Certs => "/v1/certs".into(),
            Request::Renew { name } => format!("/v1/certs/renew?name={name}"),
            Request::Preflight { names } if names.is_empty() => "/v1/certs/preflight".into(),
            Request::Preflight { names } => {
                let query: Vec<String> = names.iter().map(|n| format!("name={n}")).collect();
                format!("/v1/certs/preflight?{}", query.join("&"))
            }
            Request::Live => "/v1/health/live".into(),
            Request::Ready => "/v1/health/ready".into(),
            Request::Handover => "/v1/upgrade/handover".into(),
        }
    }

    /// The request for a method, path and query; `None` for no such endpoint. A renewal
    /// without a `name=` in its query has an empty name (the daemon answers 400).
    pub fn parse(method: &str, path: &str, query: Option<&str>) -> Option<Request> {
        Some(match (method, path) {
            ("GET", "/v1/status") => Request::Status,
            ("POST", "/v1/reload") => Request::Reload,
            ("GET", "/v1/diff") => Request::Diff,
            ("GET", "/v1/certs") => Request::Certs,
            ("POST", "/v1/certs/renew") => Request::Renew {
                name: query
                    .unwrap_or("")
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("name="))
                    .unwrap_or("")
                    .to_owned(),
            },
            ("POST", "/v1/certs/preflight") => Request::Preflight {
                names: query
                    .unwrap_or("")
                    .split('&')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| kv.strip_prefix("name=").unwrap_or(kv).to_owned())
                    .collect(),
            },
            ("GET", "/v1/health/live") => Request::Live,
            ("GET", "/v1/health/ready") => Request::Ready,
            ("POST", "/v1/upgrade/handover") => Request::Handover,
            _ => return None,
        })
    }

    /// Whether a reply with this HTTP status has this request's reply type (else it is
    /// an [`ErrorReply`]).
    pub fn has_reply_type(&self, status: u16) -> bool {
        match self {
            Request::Reload | Request::Diff => matches!(status, 200 | 422),
            Request::Renew { .. } => status == 202,
            Request::Preflight { .. } => status == 200,
            Request::Ready => matches!(status, 200 | 503),
            Request::Handover => matches!(status, 200 | 409 | 500 | 503),
            Request::Status | Request::Certs | Request::Live => status == 200,
        }
    }
}

/// A field that may be `null` but must be present (serde would read a missing `Option`
/// as `None`, hiding a renamed field).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// The reply of any call that failed, and of an unknown endpoint (404).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// `GET /v1/health/live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// Always true: the process answers.
    pub live: bool,
}

/// `GET /v1/status`: everything `proxyctl status` shows (but readiness, its own call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    pub started_at: u64,
    pub routes_file: String,
    /// Of the table in force (1 at start, one more per applied reload).
    pub generation: u64,
    #[serde(deserialize_with = "present")]
    pub last_reload: Option<LastReload>,
    #[serde(deserialize_with = "present")]
    pub last_successful_reload: Option<u64>,
    pub listeners: StatusListeners,
    pub routes: usize,
    pub redirects: usize,
    pub names: usize,
    pub upstreams_healthy: usize,
    pub upstreams_total: usize,
    pub upstreams: Vec<Upstream>,
    pub certificates: Vec<HeldCertificate>,
    pub store: StoreHealth,
}

/// The last reload (applied or rejected; dry runs are not recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    pub at: u64,
    pub ok: bool,
    pub generation: u64,
    /// `admin api` or `SIGHUP`.
    pub trigger: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListeners {
    pub https: Vec<String>,
    pub http: Vec<String>,
    /// The admin socket's path.
    pub admin: String,
}

/// One backend of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub route: String,
    pub address: String,
    pub healthy: bool,
}

/// A certificate as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCertificate {
    pub id: String,
    pub names: Vec<String>,
    pub issuer: String,
    pub not_after: u64,
}

/// The certificate store's last check (`store_watch.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// No problems.
    pub ok: bool,
    pub problems: Vec<String>,
    /// `None` before the first check.
    #[serde(deserialize_with = "present")]
    pub checked_at: Option<u64>,
}

/// `GET /v1/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub generation: u64,
    /// Every `--https` and `--http` address.
    pub listeners: Vec<ListenerState>,
    /// How many certificates are held.
    pub certificates: usize,
    /// Routed names no certificate valid now covers (reported, not gating readiness).
    pub names_without_certificate: Vec<String>,
    /// Why not ready, one short phrase each.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerState {
    pub address: String,
    pub listening: bool,
}

/// `POST /v1/reload` and `GET /v1/diff`.
///
/// On the wire the outcome is the two booleans `ok` and `applied` beside `changes`,
/// `certificates_needed`, `certificates_issued` and `errors` (all always present, empty
/// where the outcome has none); [`ReloadOutcome`] is what they may say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "wire::Reload", try_from = "wire::Reload")]
pub struct ReloadReply {
    pub outcome: ReloadOutcome,
    /// The generation in force after the call.
    pub generation: u64,
    /// One line for people and logs.
    pub message: String,
    pub duration_ms: f64,
    /// Wall-clock ms of each step (`read`, `parse`, `diff`, `certificates`, `install`).
    pub phases_ms: BTreeMap<String, f64>,
    /// CPU ms of the thread that did each step.
    pub phases_cpu_ms: BTreeMap<String, f64>,
}

/// What a reload or a dry run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file was valid and its table is in force now.
    Applied {
        changes: Changes,
        /// New names that no certificate covers yet.
        certificates_needed: Vec<String>,
        /// Certificates issued by the local CA for the new names.
        certificates_issued: Vec<String>,
    },
    /// The file is valid and nothing was applied: a dry run (`changes` is what a reload
    /// would change), or a reload that found nothing to change (`changes` is empty).
    Valid {
        changes: Changes,
        certificates_needed: Vec<String>,
    },
    /// The file could not be read or is invalid: the running table is unchanged.
    Rejected { errors: Vec<ErrorReport> },
}

impl ReloadOutcome {
    /// The file was valid (a reload or dry run that was not rejected).
    pub fn is_ok(&self) -> bool {
        !matches!(self, ReloadOutcome::Rejected { .. })
    }
}

/// Differences between the table in force and the file, by id and by name; each list
/// sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub redirects_added: Vec<String>,
    pub redirects_removed: Vec<String>,
    pub redirects_changed: Vec<String>,
    pub names_added: Vec<String>,
    pub names_removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// One problem of a rejected routes file (line and col 0 for an I/O error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    #[serde(deserialize_with = "present")]
    pub context: Option<String>,
    /// The whole diagnostic as `proxyctl check` prints it.
    pub rendered: String,
}

/// `GET /v1/certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certs {
    /// `None` when ACME is off.
    #[serde(deserialize_with = "present")]
    pub acme: Option<AcmeInfo>,
    /// With ACME: every routed certificate group and its renewal state. Not sent when
    /// ACME is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<CertGroup>>,
    /// Certificates held; with ACME only those no group above lists.
    pub certificates: Vec<CertInfo>,
    /// Served == stored: what each listener serves for each routed name against the
    /// certificate on disk.
    pub served: ServedCheck,
}

/// The served == stored check (`--verify-served-interval`): for each routed name, the
/// leaf a TLS client gets from each of the daemon's own HTTPS listeners, compared with
/// the one in the store (read from disk) and the one held in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedCheck {
    /// Seconds between two checks on the timer; 0: the check is off.
    pub interval_secs: u64,
    /// When the last check finished (unix seconds); `None`: none yet.
    #[serde(deserialize_with = "present")]
    pub last_run: Option<u64>,
    /// Every routed name with a certificate held, sorted.
    pub names: Vec<ServedName>,
    /// Routed names for which no certificate is held at all (nothing to check: served
    /// without TLS for them), sorted. Absent from older daemons.
    #[serde(default)]
    pub uncovered: Vec<String>,
}

/// One routed name in the served == stored check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedName {
    /// The routed name (a wildcard route is checked with a name under it).
    pub name: String,
    /// The id of the certificate held for it.
    pub cert: String,
    /// Of the certificate held (unix seconds).
    pub not_before: i64,
    pub not_after: i64,
    pub state: ServedState,
    /// Why, when not `match`: one line.
    #[serde(deserialize_with = "present")]
    pub reason: Option<String>,
    /// When this name was last checked (unix seconds).
    #[serde(deserialize_with = "present")]
    pub checked_at: Option<u64>,
    /// SHA-256 of the leaf served then (the first listener that answered).
    #[serde(deserialize_with = "present")]
    pub served_sha256: Option<String>,
    /// SHA-256 of the leaf in `certs/<cert>/fullchain.pem` then.
    #[serde(deserialize_with = "present")]
    pub stored_sha256: Option<String>,
}

/// The outcome of the served == stored check for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedState {
    /// Every listener serves the leaf on disk, which is the one held.
    Match,
    /// A listener serves another leaf than the store's (or the store's cannot be read).
    Mismatch,
    /// A listener could not be reached or refused the handshake.
    Unreachable,
    /// Not checked yet (or the check is off).
    Unchecked,
}

impl ServedState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedState::Match => "match",
            ServedState::Mismatch => "mismatch",
            ServedState::Unreachable => "unreachable",
            ServedState::Unchecked => "unchecked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeInfo {
    /// The directory URL.
    pub directory: String,
    /// `http-01` or `tls-alpn-01`: the one tried first.
    pub challenge: String,
    /// New orders since start (orders the CA created).
    pub orders_placed: u64,
    /// New orders ever placed with the account, from the store's ledger
    /// (`acme/ledger/<directory>.json`); `None` when the ledger cannot be read.
    #[serde(deserialize_with = "present")]
    pub orders_recorded: Option<u64>,
    /// The local budget of the CA's limits, one line each (`account orders 3/300 per
    /// 3h`, `example.org certificates 7/50 per 7d`); empty when the ledger cannot be read.
    #[serde(default)]
    pub budget: Vec<String>,
}

/// A certificate held by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub id: String,
    pub names: Vec<String>,
    pub issuer: String,
    pub not_before: u64,
    pub not_after: u64,
    /// When the local issuer replaces it.
    pub replace_at: u64,
    /// One nobody here can renew (issuer `manual`) near or past its expiry.
    pub expiring: bool,
}

/// A routed certificate group and its ACME renewal state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertGroup {
    /// Store id (main name).
    pub id: String,
    pub names: Vec<String>,
    /// The ACME profile ordered (the route's `acme_profile`, else `--acme-profile`);
    /// `None`: the CA's default.
    #[serde(deserialize_with = "present")]
    pub profile: Option<String>,
    /// The profile the stored ACME certificate was ordered with.
    #[serde(deserialize_with = "present")]
    pub issued_profile: Option<String>,
    /// Of the certificate served now; `None` when none covers the names yet.
    #[serde(deserialize_with = "present")]
    pub issuer: Option<String>,
    #[serde(deserialize_with = "present")]
    pub not_after: Option<i64>,
    #[serde(deserialize_with = "present")]
    pub next_renewal: Option<i64>,
    /// The CA's renewal window (ARI), when it offers one.
    #[serde(deserialize_with = "present")]
    pub ari_window: Option<(i64, i64)>,
    /// Failed orders in a row.
    pub failures: u32,
    #[serde(deserialize_with = "present")]
    pub last_attempt: Option<i64>,
    #[serde(deserialize_with = "present")]
    pub last_error: Option<String>,
    /// No new order before this (backoff).
    #[serde(deserialize_with = "present")]
    pub next_attempt: Option<i64>,
    /// The CA answered `rateLimited`: no new order before this, not even a forced one.
    #[serde(deserialize_with = "present")]
    pub rate_limited_until: Option<i64>,
    /// An order is under way.
    pub ordering: bool,
}

/// `POST /v1/certs/renew?name=NAME`, accepted (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewing {
    /// The certificate (group id) being renewed.
    pub renewing: String,
    pub name: String,
}

/// `POST /v1/certs/preflight`: for each name, each check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preflight {
    /// The ACME directory the checks are for.
    pub directory: String,
    /// Its `meta.caaIdentities` (empty: it names none, or it could not be read).
    pub caa_identities: Vec<String>,
    /// Where the names must point: `--public-addr`, else the listeners' addresses that
    /// are not wildcards (empty: the DNS check cannot judge).
    pub public_addrs: Vec<String>,
    /// The port of the HTTP-01 self-check (`--acme-http-port`, 80 but for test CAs).
    pub http_port: u16,
    pub names: Vec<PreflightName>,
    /// No check failed (warnings allowed).
    pub ok: bool,
}

impl Preflight {
    /// Whether any check of any name failed (what `ok` says, recomputed).
    pub fn any_failed(&self) -> bool {
        self.names
            .iter()
            .flat_map(|n| &n.checks)
            .any(|c| c.result == CheckResult::Fail)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightName {
    pub name: String,
    pub checks: Vec<PreflightCheck>,
}

/// One check of one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightCheck {
    /// `dns` (A/AAAA point at this proxy), `caa` (CAA allows the CA), `http-01` (the
    /// name's port 80 reaches this proxy), `challenge` (a wildcard: no challenge this
    /// proxy answers can prove it) or `budget` (the CA's limits as kept locally: a
    /// `rateLimited` hold or the local budget refuses an order now).
    pub check: String,
    pub result: CheckResult,
    /// What was found, for a person (addresses, the CAA record, the HTTP answer).
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckResult {
    Ok,
    /// Cannot judge (not a failure).
    Warn,
    /// An order would fail for this reason.
    Fail,
    /// Not run (what it needs failed first).
    Skipped,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Ok => "ok",
            CheckResult::Warn => "warn",
            CheckResult::Fail => "FAIL",
            CheckResult::Skipped => "skipped",
        }
    }
}

/// `POST /v1/upgrade/handover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "wire::Handover", try_from = "wire::Handover")]
pub enum HandoverReply {
    /// The sockets were sent; the daemon keeps serving.
    Sent {
        pid: u32,
        /// The listeners handed over.
        sent: Vec<String>,
        upgrade_socket: String,
    },
    /// Nothing was sent.
    Refused {
        error: String,
        upgrade_socket: String,
    },
}

/// The JSON shapes of the replies whose Rust type is an enum.
mod wire {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub struct Reload {
        ok: bool,
        applied: bool,
        generation: u64,
        message: String,
        duration_ms: f64,
        phases_ms: BTreeMap<String, f64>,
        phases_cpu_ms: BTreeMap<String, f64>,
        changes: Changes,
        certificates_needed: Vec<String>,
        certificates_issued: Vec<String>,
        errors: Vec<ErrorReport>,
    }

    impl From<ReloadReply> for Reload {
        fn from(r: ReloadReply) -> Reload {
            let (ok, applied, changes, needed, issued, errors) = match r.outcome {
                ReloadOutcome::Applied {
                    changes,
                    certificates_needed,
                    certificates_issued,
                } => (
                    true,
                    true,
                    changes,
                    certificates_needed,
                    certificates_issued,
                    Vec::new(),
                ),
                ReloadOutcome::Valid {
                    changes,
                    certificates_needed,
                } => (
                    true,
                    false,
                    changes,
                    certificates_needed,
                    Vec::new(),
                    Vec::new(),
                ),
                ReloadOutcome::Rejected { errors } => (
                    false,
                    false,
                    Changes::default(),
                    Vec::new(),
                    Vec::new(),
                    errors,
                ),
            };
            Reload {
                ok,
                applied,
                generation: r.generation,
                message: r.message,
                duration_ms: r.duration_ms,
                phases_ms: r.phases_ms,
                phases_cpu_ms: r.phases_cpu_ms,
                changes,
                certificates_needed: needed,
                certificates_issued: issued,
                errors,
            }
        }
    }

    impl TryFrom<Reload> for ReloadReply {
        type Error = String;

        fn try_from(w: Reload) -> Result<ReloadReply, String> {
            let outcome = match (w.ok, w.applied) {
                (false, true) => return Err("a reload cannot be rejected and applied".into()),
                (false, false) => {
                    if !w.changes.is_empty()
                        || !w.certificates_needed.is_empty()
                        || !w.certificates_issued.is_empty()
                    {
                        return Err("a rejected reload lists changes or certificates".into());
                    }
                    ReloadOutcome::Rejected { errors: w.errors }
                }
                (true, _) if !w.errors.is_empty() => {
                    return Err("a valid reload lists errors".into())
                }
                (true, true) => ReloadOutcome::Applied {
                    changes: w.changes,
                    certificates_needed: w.certificates_needed,
                    certificates_issued: w.certificates_issued,
                },
                (true, false) => {
                    if !w.certificates_issued.is_empty() {
                        return Err("a reload that applied nothing issued certificates".into());
                    }
                    ReloadOutcome::Valid {
                        changes: w.changes,
                        certificates_needed: w.certificates_needed,
                    }
                }
            };
            Ok(ReloadReply {
                outcome,
                generation: w.generation,
                message: w.message,
                duration_ms: w.duration_ms,
                phases_ms: w.phases_ms,
                phases_cpu_ms: w.phases_cpu_ms,
            })
        }
    }

    #[derive(Serialize, Deserialize)]
    pub struct Handover {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        upgrade_socket: String,
    }

    impl From<HandoverReply> for Handover {
        fn from(r: HandoverReply) -> Handover {
            match r {
                HandoverReply::Sent {
                    pid,
                    sent,
                    upgrade_socket,
                } => Handover {
                    ok: true,
                    pid: Some(pid),
                    sent: Some(sent),
                    error: None,
                    upgrade_socket,
                },
                HandoverReply::Refused {
                    error,
                    upgrade_socket,
                } => Handover {
                    ok: false,
                    pid: None,
                    sent: None,
                    error: Some(error),
                    upgrade_socket,
                },
            }
        }
    }

    impl TryFrom<Handover> for HandoverReply {
        type Error = String;

        fn try_from(w: Handover) -> Result<HandoverReply, String> {
            match (w.ok, w.pid, w.sent, w.error) {
                (true, Some(pid), Some(sent), None) => Ok(HandoverReply::Sent {
                    pid,
                    sent,
                    upgrade_socket: w.upgrade_socket,
                }),
                (false, None, None, Some(error)) => Ok(HandoverReply::Refused {
                    error,
                    upgrade_socket: w.upgrade_socket,
                }),
                (true, ..) => {
                    Err("a handover that succeeded needs `pid` and `sent`, and no `error`".into())
                }
                (false, ..) => {
                    Err("a refused handover needs `error`, and no `pid` or `sent`".into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
