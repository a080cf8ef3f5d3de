//! The admin API: HTTP/1.1 + JSON on a Unix socket (never TCP), served inside the same
//! pingora server. `proxyctl` is its client; `curl --unix-socket` works too.
//!
//! | method and path        | what                                              |
//! |------------------------|---------------------------------------------------|
//! | `GET /v1/status`       | generation, last reload, listeners, upstreams, certs |
//! | `POST /v1/reload`      | validate the routes file, then swap it in (422 if invalid) |
//! | `GET /v1/diff`         | what a reload would change, applying nothing      |
//! | `GET /v1/certs`        | certificates: names, issuer, not-after, next renewal, last error |
//! | `POST /v1/certs/renew?name=NAME` | order a new ACME certificate for NAME's group now |
//! | `POST /v1/certs/preflight?name=NAME` | why an ACME order for NAME (repeatable; none: every ACME name) would fail (`preflight.rs`) |
//! | `GET /v1/health/live`  | the process answers                               |
//! | `GET /v1/health/ready` | 200 when every listener is listening (table in force), else 503; certificates reported (`readiness.rs`) |
//! | `POST /v1/upgrade/handover` | send copies of the listening sockets to the process waiting on `--upgrade-socket`, and keep serving (`handover.rs`; `proxyctl upgrade`) |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use admin_api::Request;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::control::reload::Control;

pub struct AdminApp {
    pub control: Arc<Control>,
    pub handover: Arc<crate::control::handover::Handover>,
    pub preflight: Arc<crate::control::preflight::Preflight>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_owned();
        let request = Request::parse(req.method.as_str(), &path, req.uri.query());
        let Some(request) = request else {
            let error = admin_api::ErrorReply {
                error: format!("no such admin endpoint: {path}"),
            };
            return json_response(StatusCode::NOT_FOUND, &error);
        };
        // Every reply is one of admin_api's types (proxyctl decodes it into the same).
        match request {
            Request::Status => json_response(StatusCode::OK, &self.control.status()),
            Request::Reload => reload_response(&self.control.reload("admin api").await),
            Request::Diff => reload_response(&self.control.diff().await),
            Request::Certs => json_response(
                StatusCode::OK,
                &crate::control::acme_service::certs_reply(&self.control.shared),
            ),
            Request::Renew { name } => {
                match crate::control::acme_service::renew(&self.control.shared, &name) {
                    Ok(renewing) => json_response(StatusCode::ACCEPTED, &renewing),
                    Err((code, error)) => json_response(
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        &error,
                    ),
                }
            }
            Request::Preflight { names } => {
                match self.preflight.run(&self.control.shared, &names).await {
                    Ok(reply) => json_response(StatusCode::OK, &reply),
                    Err((code, error)) => json_response(
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        &error,
                    ),
                }
            }
            Request::Handover => {
                let (status, reply) = self.handover().await;
                json_response(status, &reply)
            }
            Request::Live => json_response(StatusCode::OK, &admin_api::Live { live: true }),
            Request::Ready => {
                let r =
                    crate::observe::readiness::check(&self.control.shared, &self.control.listeners);
                let status = if r.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(status, &r.to_reply())
            }
        }
    }
}

/// 200 for a valid file (applied or not), 422 for a rejected one.
fn reload_response(outcome: &crate::control::reload::ReloadOutcome) -> Response<Vec<u8>> {
    let status = if outcome.outcome.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    json_response(status, &outcome.to_reply())
}

impl AdminApp {
    async fn handover(&self) -> (StatusCode, admin_api::HandoverReply) {
        use crate::control::handover::HandoverError;
        let handover = self.handover.clone();
        let result = tokio::task::spawn_blocking(move || handover.hand_over())
            .await
            .unwrap_or_else(|e| Err(HandoverError::Send(format!("handover task: {e}"))));
        let socket = self.handover.upgrade_socket().display().to_string();
        match result {
            Ok(sent) => {
                tracing::info!(upgrade_socket = %socket, listeners = ?sent,
                    "listening sockets handed to a new process; still serving");
                (
                    StatusCode::OK,
                    admin_api::HandoverReply::Sent {
                        pid: std::process::id(),
                        sent,
                        upgrade_socket: socket,
                    },
                )
            }
            Err(e) => {
                tracing::warn!(upgrade_socket = %socket, "handover refused: {e}");
                let status = match e {
                    HandoverError::NobodyWaiting(_) | HandoverError::Busy => StatusCode::CONFLICT,
                    HandoverError::NotStarted => StatusCode::SERVICE_UNAVAILABLE,
                    HandoverError::Send(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (
                    status,
                    admin_api::HandoverReply::Refused {
                        error: e.to_string(),
                        upgrade_socket: socket,
                    },
                )
            }
        }
    }
}

/// The reply as pretty JSON. Encoded through `serde_json::Value`, whose maps keep their
/// keys sorted: the bytes stay what they were when replies were built with `json!`.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_value(body)
        .and_then(|v| serde_json::to_vec_pretty(&v))
        .unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

/// SIGHUP reloads the routes file, like `proxyctl reload` (for systemd's ExecReload
/// users who prefer a signal); the result goes to the log.
///
/// The signal is caught from [`SighupReload::new`] on, at start-up before any service
/// runs: a SIGHUP that arrives before this service's runtime is up (systemd reloading a
/// unit that has just started) is remembered and acted on, never the default action
/// (which would end the daemon).
pub struct SighupReload {
    control: Arc<Control>,
    early: Arc<AtomicBool>,
}

impl SighupReload {
    pub fn new(control: Arc<Control>) -> anyhow::Result<SighupReload> {
        let early = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, early.clone())
            .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;
        Ok(SighupReload { control, early })
    }
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload with proxyctl");
                return;
            }
        };
        // From here on tokio sees every SIGHUP; one that came before is in the flag.
        if self.early.swap(false, Ordering::AcqRel) {
            self.control.reload("SIGHUP").await;
        }
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.early.store(false, Ordering::Release);
                    self.control.reload("SIGHUP").await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
