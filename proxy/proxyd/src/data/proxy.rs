//! The request path: pingora's `ProxyHttp` over the current route snapshot.
//!
//! Per request: one `ArcSwap` load, one table lookup, `Arc` clones into the context.
//! No parsing of configuration, no file access, no locks.
//!
//! Failures: the client's (it went away, its body stalled or is too large, its request
//! is malformed) are counted in `client_errors` and logged at debug; the upstream's
//! (refused, reset, timed out, garbage) reach the log, the first for each route and
//! upstream at once and the rest summed up once per interval (`logging::Repeats`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use pingora::{Error, ErrorSource, ErrorType};
use routes::{Redirect, Route, Target, TargetForm};

use crate::data::client_errors::ClientError;
use crate::data::pages;
use crate::data::state::Shared;
use crate::data::upstream::{Backend, Pool};

const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Client-sent headers the proxy owns: whatever the client put there is dropped and
/// replaced with what the proxy saw.
const FORWARDING_HEADERS: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

/// One proxy service: `tls` is true for the :443 listeners.
pub struct Proxy {
    pub shared: Arc<Shared>,
    pub tls: bool,
    /// With `--metrics`.
    pub metrics: Option<Arc<crate::observe::metrics::Metrics>>,
    /// Unless `--access-log-format off`.
    pub access_log: Option<Arc<crate::observe::access_log::AccessLog>>,
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    /// The request's host, checked and normalised (routes::parse_request_host): what
    /// routes are looked up by.
    host: String,
    /// The port of the request's host, when the client sent one (for X-Forwarded-Host).
    host_port: Option<u16>,
    route: Option<Arc<Route>>,
    pool: Option<Arc<Pool>>,
    backend: Option<Arc<Backend>>,
    tried: Vec<std::net::SocketAddr>,
    client_ip: Option<IpAddr>,
    body_seen: u64,
    upstream_started: Option<Instant>,
    upstream_ttfb: Option<Duration>,
    /// Set when the proxy answered by itself (redirect, error page): the reason.
    local: Option<&'static str>,
    /// What the request matched (route or redirect), for the access log's `route`.
    target: Option<Target>,
    /// The matched id's metric handles (with `--metrics`; `None`: no match).
    route_metrics: Option<Arc<crate::observe::metrics::RouteMetrics>>,
    /// Counts an open websocket until the request ends.
    websocket: Option<crate::observe::metrics::GaugeGuard>,
    /// HTTP/2: the request body's progress, against --client-body-timeout (guard.rs).
    body_watch: Option<crate::data::guard::BodyWatch>,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            host: String::new(),
            host_port: None,
            route: None,
            pool: None,
            backend: None,
            tried: Vec::new(),
            client_ip: None,
            body_seen: 0,
            upstream_started: None,
            upstream_ttfb: None,
            local: None,
            target: None,
            route_metrics: None,
            websocket: None,
            body_watch: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // The head is in: from now on the body's reads are timed, not the head.
        ctx.body_watch = crate::data::guard::request_started(session);
        if crate::data::guard::has_te_and_cl(session) {
            // pingora would drop the Content-Length and go on (RFC 9112 6.3 allows it);
            // at the edge this is a smuggling attempt until proven otherwise.
            return Err(Error::explain(
                ErrorType::HTTPStatus(400),
                "request with both Transfer-Encoding and Content-Length",
            ));
        }
        crate::data::guard::collapse_content_length(session)?;
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.client_ip = client_ip(session);
        // Method and target first (RFC 9112 3.2): what the HTTP/1 parser lets through
        // and what HTTP/2's `:path` may hold, in the forms a reverse proxy serves.
        let form = match request_target_form(session) {
            Ok(form) => form,
            Err(e) => return self.refuse(session, ctx, "bad request target", &e).await,
        };
        // The host, before any lookup: a DNS name or IP literal with an optional port,
        // nothing else (routes::parse_request_host).
        let host = match request_host(session.req_header()) {
            Ok(raw) => routes::parse_request_host(raw).map_err(|e| e.to_string()),
            Err(why) => Err(why.to_owned()),
        };
        match host {
            Ok(host) => {
                ctx.host_port = host.port;
                ctx.host = host.name.into_owned();
            }
            Err(e) => return self.refuse(session, ctx, "bad host", &e).await,
        }
        if form == TargetForm::Absolute {
            // Forwarded in origin-form, as every upstream takes it: the authority is the
            // Host header, which must be the same (pingora-core checks it).
            let uri = session.req_header().uri.clone();
            session.req_header_mut().set_uri(uri);
        }
        // Routed and forwarded in one form, the one the upstream acts on (no dot
        // segments, unreserved escapes decoded, `//` merged): see routes::normalize_path.
        let path = match routes::normalize_path(session.req_header().uri.path()) {
            Ok(p) => p.into_owned(),
            Err(e) => return self.refuse(session, ctx, "bad path", &e).await,
        };
        if path != session.req_header().uri.path() {
            set_path(session.req_header_mut(), &path)?;
        }

        if !self.tls && path.starts_with(ACME_CHALLENGE_PREFIX) {
            return self
                .answer_http01(session, ctx, &path[ACME_CHALLENGE_PREFIX.len()..])
                .await;
        }

        let snapshot = self.shared.snapshot.load();
        let found = match snapshot.table.route(&ctx.host, &path) {
            Ok(found) => found,
            Err(e) => {
                drop(snapshot);
                return self.refuse(session, ctx, "bad path", &e).await;
            }
        };
        let Some(target) = found else {
            // Never another site's content: a plain page naming no site.
            ctx.local = Some("unknown host");
            let (status, page) = if self.tls {
                (421, pages::MISDIRECTED)
            } else {
                (404, pages::NOT_FOUND)
            };
            pages::send(session, status, page, &[]).await?;
            return Ok(true);
        };
        if let Some(m) = &self.metrics {
            ctx.route_metrics = Some(m.route(target.id()));
        }
        ctx.target = Some(target.clone());
        match target {
            Target::Redirect(r) => {
                let r = r.clone();
                drop(snapshot);
                if !self.tls && r.https_redirect {
                    return self.redirect_to_https(session, ctx).await;
                }
                self.answer_redirect(session, ctx, &r, &path).await
            }
            Target::Proxy(route) => {
                let route = route.clone();
                ctx.pool = snapshot.pools.get(&route.id).cloned();
                drop(snapshot);
                if !self.tls && route.policy.https_redirect {
                    return self.redirect_to_https(session, ctx).await;
                }
                let policy = &route.policy;
                if let Some(allow) = &policy.allow {
                    if !ctx
                        .client_ip
                        .is_some_and(|ip| allow.iter().any(|n| n.contains(&ip)))
                    {
                        ctx.local = Some("client not allowed");
                        ctx.route = Some(route);
                        pages::send(session, 403, pages::FORBIDDEN, &[]).await?;
                        return Ok(true);
                    }
                }
                if let (Some(max), Some(len)) =
                    (policy.max_body, content_length(session.req_header()))
                {
                    if len > max {
                        ctx.local = Some("body over limit");
                        self.shared.client_errors.record(ClientError::BodyTooLarge);
                        ctx.route = Some(route);
                        // The body is not read: close rather than drain it.
                        session.set_keepalive(None);
                        pages::send(session, 413, pages::TOO_LARGE, &[]).await?;
                        return Ok(true);
                    }
                }
                ctx.route = Some(route);
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.was_upgraded() {
            // After a 101 these are the client's bytes of a tunnel, not a request body:
            // no max_body, no body timeout. The route's read_timeout is the tunnel's idle
            // limit over both directions (vendored pingora-proxy, proxy_h1.rs).
            ctx.body_watch = None;
            return Ok(());
        }
        if let Some(w) = &ctx.body_watch {
            w.progress(end_of_stream);
        }
        if let Some(chunk) = body {
            ctx.body_seen += chunk.len() as u64;
            let limit = ctx.route.as_ref().and_then(|r| r.policy.max_body);
            if limit.is_some_and(|max| ctx.body_seen > max) {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route's max_body",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(pool)) = (&ctx.route, &ctx.pool) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "route has no upstream pool",
            ));
        };
        let Some(backend) = pool.select(ctx.client_ip, &ctx.tried) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                format!("no upstream available for route {}", route.id),
            ));
        };
        ctx.tried.push(backend.addr);
        let policy = &route.policy;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(policy.connect_timeout);
        o.total_connection_timeout = Some(policy.connect_timeout);
        o.read_timeout = Some(policy.read_timeout);
        o.write_timeout = Some(policy.write_timeout);
        o.idle_timeout = Some(policy.idle_timeout);
        if !policy.websocket {
            o.http_upstream_request_policy = HttpUpstreamRequestPolicy::deny_upgrades();
        }
        ctx.backend = Some(backend);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(b) = &ctx.backend {
            b.report_connect_failure();
        }
        // Nothing reached the upstream: safe to try another one, if any is left.
        let left = ctx
            .pool
            .as_ref()
            .is_some_and(|p| p.members().len() > ctx.tried.len());
        e.set_retry(left);
        if left {
            // The request goes on; its final outcome is logged by fail_to_proxy.
            self.upstream_failure(ctx, "connect failed, retried", &e);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for name in FORWARDING_HEADERS {
            req.remove_header(name);
        }
        let proto = if self.tls { "https" } else { "http" };
        // Never the client's bytes: the checked host, and its port if the client sent one.
        let host = forwarded_host(&ctx.host, ctx.host_port);
        if let Some(ip) = ctx.client_ip {
            let ip_s = ip.to_string();
            req.insert_header("x-forwarded-for", &ip_s)?;
            req.insert_header("x-real-ip", &ip_s)?;
            req.insert_header("forwarded", forwarded(ip, proto, &host))?;
        }
        req.insert_header("x-forwarded-proto", proto)?;
        req.insert_header("x-forwarded-host", &host)?;
        if let Some(port) = session
            .server_addr()
            .and_then(PingoraAddr::as_inet)
            .map(|a| a.port())
        {
            req.insert_header("x-forwarded-port", port.to_string())?;
        }
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if route.strip_prefix {
            let stripped = routes::strip_path(&route.path, req.uri.path());
            let pq = match req.uri.query() {
                Some(q) => format!("{stripped}?{q}"),
                None => stripped.into_owned(),
            };
            let uri = pq.parse::<http::Uri>().map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "rewriting path for strip_prefix",
                    e,
                )
            })?;
            req.set_uri(uri);
        }
        for (name, value) in &route.policy.request_headers {
            if value.is_empty() {
                req.remove_header(name.as_str());
            } else {
                req.insert_header(name.clone(), value.as_str())?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.upstream_ttfb.is_none() {
            ctx.upstream_ttfb = ctx.upstream_started.map(|t| t.elapsed());
        }
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && ctx.websocket.is_none() {
            ctx.websocket = ctx.route_metrics.as_ref().map(|m| m.websocket_opened());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if self.tls {
            if let Some(hsts) = &route.policy.hsts {
                resp.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.header_value())?;
            }
        }
        for (name, value) in &route.policy.response_headers {
            if value.is_empty() {
                resp.remove_header(name.as_str());
            } else {
                resp.insert_header(name.clone(), value.as_str())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = error_status(e);
        if code > 0 && session.response_written().is_none() {
            let page = match code {
                413 => pages::TOO_LARGE,
                408 => pages::REQUEST_TIMEOUT,
                502 => pages::BAD_GATEWAY,
                504 => pages::GATEWAY_TIMEOUT,
                400 => pages::BAD_REQUEST,
                _ => pages::INTERNAL,
            };
            if matches!(code, 400 | 408 | 413) {
                session.set_keepalive(None);
            }
            if let Err(we) = pages::send(session, code, page, &[]).await {
                tracing::debug!(error = %we, "could not send error page");
            }
        }
        match client_error(e, code) {
            Some(why) => {
                // The client's own business, not the admin's: counted, not logged.
                self.shared.client_errors.record(why);
                let route = ctx.route.as_ref().map_or("-", |r| r.id.as_str());
                tracing::debug!(route, reason = why.as_str(), status = code, error = %e, "client error");
            }
            None => self.upstream_failure(ctx, status_kind(code), e),
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // fail_to_proxy counts or logs it instead, with the route and upstream.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A retry: fail_to_connect logs connect failures (rate-limited); a reused
        // keep-alive connection the upstream had closed is routine.
        tracing::debug!(%error, "retrying the request");
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        crate::data::guard::request_finished(session);
        // Metrics and the access log (metrics.rs, access_log.rs): no lock, no I/O here.
        let metrics = self.metrics.as_deref();
        let access_log = self.access_log.as_deref();
        // A websocket's tunnel is over.
        ctx.websocket = None;
        if metrics.is_none() && access_log.is_none() {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let duration = ctx.started.elapsed();
        let bytes_in = session.body_bytes_read() as u64;
        let bytes_out = session.body_bytes_sent() as u64;
        if let Some(m) = metrics {
            let route = ctx.route_metrics.as_ref().unwrap_or(m.unrouted());
            route.observe(&crate::observe::metrics::RequestSample {
                status,
                duration,
                upstream: ctx.upstream_ttfb,
                bytes_in,
                bytes_out,
                upgraded: status == 101,
            });
        }
        let Some(log) = access_log else {
            return;
        };
        let h2 = session.is_http2();
        let req = session.req_header();
        let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|d| match d.version.as_ref() {
                "TLSv1_3" => "TLSv1.3",
                "TLSv1_2" => "TLSv1.2",
                other => other,
            });
        log.log(&crate::observe::access_log::Entry {
            client: ctx.client_ip,
            host: &ctx.host,
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query(),
            protocol: if h2 {
                "HTTP/2"
            } else if req.version == http::Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            },
            status,
            bytes_in,
            bytes_out,
            duration,
            upstream_time: ctx.upstream_ttfb,
            upstream: ctx.backend.as_ref().map(|b| b.addr),
            route: ctx.target.as_ref().map(|t| t.id()),
            tls,
            alpn: tls.map(|_| if h2 { "h2" } else { "http/1.1" }),
            local: ctx.local,
            referer: header(header::REFERER),
            user_agent: header(header::USER_AGENT),
        });
    }
}

impl Proxy {
    /// An upstream failure (or the proxy's own, 500): the first for this route and
    /// upstream is logged now, the next ones are summed up once per interval.
    fn upstream_failure(&self, ctx: &Ctx, kind: &'static str, e: &Error) {
        let route = ctx.route.as_ref().map_or("-", |r| r.id.as_str());
        let upstream = ctx
            .backend
            .as_ref()
            .map_or_else(|| "-".to_owned(), |b| b.addr.to_string());
        let key = (route.to_owned(), upstream);
        if self
            .shared
            .upstream_failures
            .note(&key, kind, || e.to_string())
        {
            tracing::warn!(
                route,
                upstream = %key.1,
                failure = kind,
                error = %e,
                "upstream failure (more of this route and upstream: summed up every --log-summary-interval)"
            );
        } else {
            tracing::debug!(route, upstream = %key.1, failure = kind, error = %e, "upstream failure");
        }
    }

    /// Answer 400 and close the connection: a request the proxy will not route (bad
    /// method, target, host or path). Nothing reaches an upstream.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        what: &'static str,
        e: &(dyn std::fmt::Display + Sync),
    ) -> Result<bool> {
        ctx.local = Some(what);
        self.shared.client_errors.record(ClientError::BadRequest);
        tracing::debug!(error = %e, "refused a request: {what}");
        session.set_keepalive(None);
        pages::send(session, 400, pages::BAD_REQUEST, &[]).await?;
        Ok(true)
    }

    async fn answer_http01(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        token: &str,
    ) -> Result<bool> {
        ctx.local = Some("acme http-01");
        let answer = self.shared.http01.load().get(token).cloned();
        match answer {
            Some(key_auth) => {
                pages::send_plain(session, 200, key_auth.into(), "application/octet-stream").await?
            }
            None => pages::send(session, 404, pages::NOT_FOUND, &[]).await?,
        }
        Ok(true)
    }

    async fn redirect_to_https(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.local = Some("https redirect");
        let port = self
            .shared
            .redirect_port
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let raw = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
        // absolute-form request targets carry scheme and authority: keep only the path.
        // `OPTIONS *` names no path: the site's root (never `https://host*`).
        let path_and_query = if raw.starts_with('/') {
            raw
        } else {
            session
                .req_header()
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| p.starts_with('/'))
                .unwrap_or("/")
                .to_owned()
        };
        let location = format!("https://{}{port}{path_and_query}", bracket_v6(&ctx.host));
        pages::send(session, 308, pages::REDIRECT, &[("location", location)]).await?;
        Ok(true)
    }

    async fn answer_redirect(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        r: &Redirect,
        path: &str,
    ) -> Result<bool> {
        ctx.local = Some("redirect");
        // A `to` that is a path stays on this host, over https.
        let port = self
            .shared
            .redirect_port
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let authority = format!("{}{port}", bracket_v6(&ctx.host));
        let location = r.location(&authority, path, session.req_header().uri.query());
        pages::send(
            session,
            r.status,
            pages::REDIRECT,
            &[("location", location)],
        )
        .await?;
        Ok(true)
    }
}

fn bracket_v6(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

/// The request's host as sent (to be checked): the authority of the target (HTTP/2
/// `:authority`; pingora-core has already checked that an HTTP/1 absolute-form
/// authority equals the Host header) or the Host header. An error when missing, not
/// visible ASCII, given twice, or when authority and header disagree (a
/// request-smuggling shape).
fn request_host(req: &RequestHeader) -> std::result::Result<&str, &'static str> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let (header, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err("two Host headers");
    }
    let header = match header.map(|v| v.to_str()) {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return Err("Host header is not visible ASCII"),
        None => None,
    };
    match (req.uri.authority().map(|a| a.as_str()), header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            Err(":authority and Host header differ")
        }
        (Some(a), _) => Ok(a),
        (None, Some(h)) => Ok(h),
        (None, None) => Err("no Host header"),
    }
}

/// The method and target of the request, checked (routes::check_request_target): for
/// HTTP/1.x the target as the request line holds it (pingora drops a fragment from it
/// before anything else sees it), for HTTP/2 the `:path`.
fn request_target_form(session: &Session) -> std::result::Result<TargetForm, routes::TargetError> {
    let req = session.req_header();
    let method = req.method.as_str().as_bytes();
    match session.as_downstream().as_http1() {
        Some(h1) => {
            let head = h1.get_headers_raw_bytes();
            let target = routes::h1_request_target(&head).ok_or(routes::TargetError::Form)?;
            routes::check_request_target(method, target, true)
        }
        None => routes::check_request_target(method, req.raw_path(), false),
    }
}

/// `host[:port]` for X-Forwarded-Host and `Forwarded: host=`: the checked host
/// (bracketed when IPv6) and the client's port, if it sent one.
fn forwarded_host(host: &str, port: Option<u16>) -> String {
    routes::RequestHost {
        name: host.into(),
        port,
    }
    .authority()
}

/// The `Forwarded` header (RFC 7239) of a request from `ip`: every value a token or a
/// quoted-string (`"` and `\` escaped), so nothing in it can add a pair or an element.
fn forwarded(ip: IpAddr, proto: &str, host: &str) -> String {
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    format!(
        "for={};proto={};host={}",
        forwarded_value(&node),
        forwarded_value(proto),
        forwarded_value(host)
    )
}

/// One value of a `Forwarded` pair: a token as it is, anything else as a quoted-string.
fn forwarded_value(v: &str) -> std::borrow::Cow<'_, str> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !v.is_empty() && v.bytes().all(tchar) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out.into()
}

/// Replace the path of the request target, keeping its query (and scheme and authority
/// of an absolute-form target).
fn set_path(req: &mut RequestHeader, path: &str) -> Result<()> {
    let pq = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "normalised path", e))?,
    );
    let uri = http::Uri::from_parts(parts)
        .map_err(|e| Error::because(ErrorType::InternalError, "normalised path", e))?;
    req.set_uri(uri);
    Ok(())
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(PingoraAddr::as_inet)
        .map(|a| a.ip().to_canonical())
}

/// Whether a failed request is the client's doing (with the status it gets, from
/// [`error_status`]), and why; `None`: the upstream's or the proxy's.
fn client_error(e: &Error, code: u16) -> Option<ClientError> {
    match code {
        0 => Some(ClientError::Disconnect),
        408 => Some(ClientError::BodyTimeout),
        413 => Some(ClientError::BodyTooLarge),
        400..=499 => Some(ClientError::BadRequest),
        _ if e.esource() == &ErrorSource::Downstream => Some(ClientError::BadRequest),
        _ => None,
    }
}

/// The kind of an upstream failure, for its summary (a few fixed strings).
fn status_kind(code: u16) -> &'static str {
    match code {
        502 => "502 bad gateway",
        504 => "504 gateway timeout",
        500 => "500 internal error",
        _ => "other",
    }
}

/// The status the client gets for a failed request (0: the client is gone).
fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout => 504,
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure => 502,
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => 504,
        // --client-body-timeout: the client stopped sending its body.
        ReadTimedout if e.esource() == &ErrorSource::Downstream => 408,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_values_are_tokens_or_quoted_strings() {
        for (v, want) in [
            ("https", "https"),
            ("127.0.0.1", "127.0.0.1"),
            ("a.test:8443", "\"a.test:8443\""),
            ("[::1]", "\"[::1]\""),
            ("x\",for=\"[::1]", "\"x\\\",for=\\\"[::1]\""),
            ("a\\b", "\"a\\\\b\""),
            ("", "\"\""),
        ] {
            assert_eq!(forwarded_value(v), want, "{v:?}");
        }
    }

    #[test]
    fn forwarded_header_has_one_element_of_three_pairs() {
        assert_eq!(
            forwarded("127.0.0.1".parse().unwrap(), "http", "a.test"),
            "for=127.0.0.1;proto=http;host=a.test"
        );
        assert_eq!(
            forwarded("::1".parse().unwrap(), "https", "[::1]:8443"),
            "for=\"[::1]\";proto=https;host=\"[::1]:8443\""
        );
        assert_eq!(forwarded_host("::1", Some(8443)), "[::1]:8443");
        assert_eq!(forwarded_host("a.test", None), "a.test");
    }
}
