//! Prometheus metrics (`--metrics ADDR`): counted on the data plane, served on a listener
//! of their own (`GET /metrics`, `GET /health`), never on the public ones.
//!
//! **Hot path.** Per request the proxy holds an `Arc<RouteMetrics>` (looked up once, in
//! `request_filter`, from a map rebuilt at each reload) and touches only its pre-resolved
//! handles: a few relaxed atomic adds, no label lookup, no lock, no allocation.
//!
//! **Bounded labels.** `route` is a route or redirect id from the routes file (`-` for
//! requests that matched none), `status` one of `1xx`..`5xx` or `other`, `listener`
//! `https` or `http`, `reason` one of [`TlsFailure`]'s, [`ClientError`]'s or the access
//! log's fixed names, `upstream` an address
//! of a configured upstream, `cert`/`name` a held certificate. Never a raw path, never a
//! client address. Series of routes removed by a reload are dropped.
//!
//! Gauges that describe state (generation, upstream health, certificates, ACME) are read
//! from the daemon's shared state when scraped, not maintained on the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use certs::util::unix_now;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use routes::RouteTable;

use crate::data::client_errors::ClientError;
use crate::data::layer::Layer;
use crate::data::state::Shared;
use crate::observe::access_log::{AccessLog, DropReason};
use crate::observe::readiness::Listeners;

/// Latency buckets (seconds): from a cached static file on the LAN to a slow upload.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `status` label values, by `status / 100` (index 0: no status or out of range).
const STATUS_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// `route` label of requests that matched no route or redirect.
pub const NO_ROUTE: &str = "-";

/// Why a TLS handshake failed: a fixed set, derived from the rustls error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// No certificate for the SNI name (or no SNI): the resolver had nothing.
    UnknownSni,
    /// The client offers no TLS version we accept (1.2, 1.3).
    ProtocolVersion,
    /// No cipher suite, key exchange group or signature scheme in common.
    NoSharedCipher,
    /// The client's ALPN list has none of ours.
    NoSharedAlpn,
    /// The client aborted with an alert (e.g. it does not trust our certificate).
    ClientAlert,
    /// Not TLS, or a broken handshake (plain HTTP on :443, garbage, misbehaviour).
    Invalid,
    /// The client closed or reset the connection before the handshake finished.
    Closed,
    /// No finished handshake within `tls::HANDSHAKE_TIMEOUT`.
    Timeout,
    Other,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 9] = [
        TlsFailure::UnknownSni,
        TlsFailure::ProtocolVersion,
        TlsFailure::NoSharedCipher,
        TlsFailure::NoSharedAlpn,
        TlsFailure::ClientAlert,
        TlsFailure::Invalid,
        TlsFailure::Closed,
        TlsFailure::Timeout,
        TlsFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::UnknownSni => "unknown_sni",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::NoSharedCipher => "no_shared_cipher",
            TlsFailure::NoSharedAlpn => "no_shared_alpn",
            TlsFailure::ClientAlert => "client_alert",
            TlsFailure::Invalid => "invalid",
            TlsFailure::Closed => "closed",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Other => "other",
        }
    }

    /// Classifies a failed handshake. pingora's rustls acceptor keeps only the text of
    /// the rustls error (`explain_err`), so this reads rustls's `Display` output; the
    /// unit tests pin it against real rustls errors, so a rustls upgrade that rewords
    /// them fails there rather than silently counting everything as `other`.
    pub fn classify(error_text: &str) -> TlsFailure {
        let e = error_text;
        if e.contains("no server certificate chain resolved") {
            TlsFailure::UnknownSni
        } else if e.contains("peer is incompatible") {
            const VERSION: [&str; 5] = [
                "Tls12NotOffered",
                "SupportedVersionsExtensionRequired",
                "ServerDoesNotSupportTls12Or13",
                "ServerTlsVersionIsDisabledByOurConfig",
                "Tls13RequiredForQuic",
            ];
            if VERSION.iter().any(|v| e.contains(v)) {
                TlsFailure::ProtocolVersion
            } else {
                TlsFailure::NoSharedCipher
            }
        } else if e.contains("peer doesn't support any known protocol") {
            TlsFailure::NoSharedAlpn
        } else if e.contains("received fatal alert: ProtocolVersion") {
            TlsFailure::ProtocolVersion
        } else if e.contains("received fatal alert") {
            TlsFailure::ClientAlert
        } else if [
            "received corrupt message",
            "received unexpected",
            "peer misbehaved",
            "peer sent excess record size",
            "cannot decrypt peer's message",
        ]
        .iter()
        .any(|s| e.contains(s))
        {
            TlsFailure::Invalid
        } else if [
            "eof",
            "EOF",
            "Connection reset",
            "Broken pipe",
            "connection closed",
            "ConnectionClosed",
        ]
        .iter()
        .any(|s| e.contains(s))
        {
            TlsFailure::Closed
        } else {
            TlsFailure::Other
        }
    }
}

/// The per-route handles, resolved once per route and reload.
pub struct RouteMetrics {
    /// Indexed like [`STATUS_CLASSES`].
    requests: [IntCounter; 6],
    duration: Histogram,
    upstream: Histogram,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    websockets: IntGauge,
}

/// What `Proxy::logging` knows about a finished request.
pub struct RequestSample {
    /// 0 when no response was sent (the client went away first).
    pub status: u16,
    pub duration: Duration,
    /// Time from choosing the upstream to its response header, when one came.
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// A websocket (101): its duration is the tunnel's lifetime, not a latency.
    pub upgraded: bool,
}

impl RouteMetrics {
    fn new(m: &Metrics, route: &str) -> RouteMetrics {
        RouteMetrics {
            requests: STATUS_CLASSES.map(|class| m.requests.with_label_values(&[route, class])),
            duration: m.duration.with_label_values(&[route]),
            upstream: m.upstream.with_label_values(&[route]),
            bytes_in: m.bytes_in.with_label_values(&[route]),
            bytes_out: m.bytes_out.with_label_values(&[route]),
            websockets: m.websockets.with_label_values(&[route]),
        }
    }

    /// Counts one finished request.
    #[inline]
    pub fn observe(&self, s: &RequestSample) {
        let class = match s.status {
            100..=599 => usize::from(s.status / 100),
            _ => 0,
        };
        self.requests[class].inc();
        if !s.upgraded {
            self.duration.observe(s.duration.as_secs_f64());
        }
        if let Some(u) = s.upstream {
            self.upstream.observe(u.as_secs_f64());
        }
        if s.bytes_in > 0 {
            self.bytes_in.inc_by(s.bytes_in);
        }
        if s.bytes_out > 0 {
            self.bytes_out.inc_by(s.bytes_out);
        }
    }

    /// An open websocket of this route, counted until the guard is dropped.
    pub fn websocket_opened(&self) -> GaugeGuard {
        GaugeGuard::new(self.websockets.clone())
    }
}

/// Holds one unit of a gauge (an open connection, an open websocket) until dropped.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(g: IntGauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric of the daemon, registered in a registry of its own.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream: HistogramVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    websockets: IntGaugeVec,
    connections_active: IntGaugeVec,
    connections: IntCounterVec,
    /// TLSv1.2, TLSv1.3, other.
    tls_handshakes: [IntCounter; 3],
    /// Indexed like [`TlsFailure::ALL`].
    tls_failures: [IntCounter; 9],
    reloads_ok: IntCounter,
    reloads_failed: IntCounter,
    reload_last_success: IntGauge,
    reload_last_failure: IntGauge,
    // Read at scrape time.
    /// Indexed like [`DropReason::ALL`].
    access_log_dropped: [IntCounter; 2],
    /// Indexed like [`ClientError::ALL`].
    client_errors: [IntCounter; ClientError::ALL.len()],
    generation: IntGauge,
    upstream_healthy: IntGaugeVec,
    cert_not_after: IntGaugeVec,
    cert_expiring: IntGaugeVec,
    cert_errors: IntCounter,
    served_mismatch: IntGaugeVec,
    served_unreachable: IntGaugeVec,
    /// match, mismatch, unreachable.
    served_checks: [IntCounter; 3],
    served_last_check: IntGauge,
    acme_orders_placed: IntCounter,
    acme_orders: IntCounterVec,
    acme_failures: IntGaugeVec,
    acme_backoff: IntGaugeVec,
    acme_rate_limited: IntGaugeVec,
    acme_orders_recorded: IntGauge,
    acme_budget_used: IntGaugeVec,
    acme_next_renewal: IntGaugeVec,
    /// Route id -> handles; swapped whole by [`Metrics::sync_routes`].
    routes: ArcSwap<HashMap<String, Arc<RouteMetrics>>>,
    unrouted: Arc<RouteMetrics>,
    /// Scrape-time gauges are reset and refilled: one scrape at a time.
    scrape: Mutex<()>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    v
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let v = HistogramVec::new(opts, labels).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    v
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "proxyd_requests_total",
            "Requests answered, by route (or redirect) id and status class.",
            &["route", "status"],
        );
        let duration = histogram_vec(
            &r,
            "proxyd_request_duration_seconds",
            "Time from the request header to the end of the response (websockets excluded).",
            &["route"],
        );
        let upstream = histogram_vec(
            &r,
            "proxyd_upstream_response_seconds",
            "Time from choosing an upstream to its response header (time to first byte).",
            &["route"],
        );
        let bytes_in = counter_vec(
            &r,
            "proxyd_request_body_bytes_total",
            "Request body bytes received from clients.",
            &["route"],
        );
        let bytes_out = counter_vec(
            &r,
            "proxyd_response_body_bytes_total",
            "Response body bytes sent to clients.",
            &["route"],
        );
        let websockets = gauge_vec(
            &r,
            "proxyd_websockets_active",
            "Websocket tunnels open now.",
            &["route"],
        );
        let connections_active = gauge_vec(
            &r,
            "proxyd_connections_active",
            "Client connections open now, by listener kind.",
            &["listener"],
        );
        let connections = counter_vec(
            &r,
            "proxyd_connections_total",
            "Client connections accepted, by listener kind.",
            &["listener"],
        );
        let tls = counter_vec(
            &r,
            "proxyd_tls_handshakes_total",
            "Completed TLS handshakes, by version.",
            &["version"],
        );
        let tls_failures = counter_vec(
            &r,
            "proxyd_tls_handshake_failures_total",
            "Failed TLS handshakes, by reason.",
            &["reason"],
        );
        let reloads = counter_vec(
            &r,
            "proxyd_reloads_total",
            "Reloads of the routes file (admin API or SIGHUP), by result.",
            &["result"],
        );
        let access_log_dropped = counter_vec(
            &r,
            "proxyd_access_log_dropped_lines_total",
            "Access log lines not written, by reason: queue_full (the writer fell behind), \
             write_error (the disk or stderr refused them).",
            &["reason"],
        );
        let client_errors = counter_vec(
            &r,
            "proxyd_client_errors_total",
            "Connections or requests that failed because of the client, by reason (logged \
             at debug only).",
            &["reason"],
        );
        let served_checks = counter_vec(
            &r,
            "proxyd_certificate_served_checks_total",
            "Connections of the served == stored check to the daemon's own HTTPS listeners, by \
             result (match, mismatch, unreachable).",
            &["result"],
        );
        let acme_orders = counter_vec(
            &r,
            "proxyd_acme_orders_total",
            "Finished ACME orders, by result (issued, failed).",
            &["result"],
        );
        let m = Metrics {
            tls_handshakes: ["TLSv1.2", "TLSv1.3", "other"].map(|v| tls.with_label_values(&[v])),
            tls_failures: TlsFailure::ALL.map(|f| tls_failures.with_label_values(&[f.as_str()])),
            reloads_ok: reloads.with_label_values(&["success"]),
            reloads_failed: reloads.with_label_values(&["failure"]),
            reload_last_success: gauge(
                &r,
                "proxyd_reload_last_success_timestamp_seconds",
                "When the table in force was loaded (start or last good reload), unix seconds.",
            ),
            reload_last_failure: gauge(
                &r,
                "proxyd_reload_last_failure_timestamp_seconds",
                "When a reload was last rejected, unix seconds (0: never).",
            ),
            access_log_dropped: DropReason::ALL.map(|why| {
                access_log_dropped.with_label_values(&[why.as_str()])
            }),
            client_errors: ClientError::ALL
                .map(|why| client_errors.with_label_values(&[why.as_str()])),
            generation: gauge(
                &r,
                "proxyd_routes_generation",
                "Generation of the route table in force (1 at start, +1 per applied reload).",
            ),
            upstream_healthy: gauge_vec(
                &r,
                "proxyd_upstream_healthy",
                "Upstream address health (1 up, 0 down), per route.",
                &["route", "upstream"],
            ),
            cert_not_after: gauge_vec(
                &r,
                "proxyd_certificate_not_after_seconds",
                "Expiry of each held certificate, per name it covers, unix seconds.",
                &["cert", "name", "issuer"],
            ),
            cert_expiring: gauge_vec(
                &r,
                "proxyd_certificate_expiring",
                "1 when a held certificate proxyd cannot renew (issuer manual) is close to its \
                 expiry or past it, else 0.",
                &["cert"],
            ),
            cert_errors: counter(
                &r,
                "proxyd_certificate_errors_total",
                "Certificates that could not be issued, renewed, saved or archived (at start, \
                 on reloads, on the renewal timer); what was served before stays served.",
            ),
            served_mismatch: gauge_vec(
                &r,
                "proxyd_certificate_served_mismatch",
                "1 when a listener serves another leaf for the name than the store holds on \
                 disk (or the store's cannot be read), 0 when they are the same; per routed \
                 name checked.",
                &["name"],
            ),
            served_unreachable: gauge_vec(
                &r,
                "proxyd_certificate_served_unreachable",
                "1 when the served == stored check could not reach a listener for the name \
                 (connect or handshake failed), else 0.",
                &["name"],
            ),
            served_checks: ["match", "mismatch", "unreachable"]
                .map(|v| served_checks.with_label_values(&[v])),
            served_last_check: gauge(
                &r,
                "proxyd_certificate_served_last_check_timestamp_seconds",
                "When the served == stored check last ran, unix seconds (0: not yet, or off).",
            ),
            acme_orders_placed: counter(
                &r,
                "proxyd_acme_orders_placed_total",
                "New orders the ACME CA created, since start.",
            ),
            acme_orders_recorded: gauge(
                &r,
                "proxyd_acme_orders_recorded",
                "New orders ever placed with the ACME account, from the store's ledger \
                 (-1: the ledger cannot be read).",
            ),
            acme_budget_used: gauge_vec(
                &r,
                "proxyd_acme_budget_used",
                "The local budget of the CA's limits: orders of the account in the last 3 h \
                 (scope=\"account\", of 300), certificates per registered domain in the last \
                 7 days (of 50).",
                &["scope"],
            ),
            acme_rate_limited: gauge_vec(
                &r,
                "proxyd_acme_rate_limited_seconds",
                "Seconds the CA's rateLimited answer still holds (no order before), per \
                 certificate; 0: none.",
                &["cert"],
            ),
            acme_failures: gauge_vec(
                &r,
                "proxyd_acme_consecutive_failures",
                "Failed ACME attempts in a row, per certificate.",
                &["cert"],
            ),
            acme_backoff: gauge_vec(
                &r,
                "proxyd_acme_backoff_seconds",
                "Seconds until the next ACME attempt is allowed (0: none pending), per certificate.",
                &["cert"],
            ),
            acme_next_renewal: gauge_vec(
                &r,
                "proxyd_acme_next_renewal_timestamp_seconds",
                "When the certificate will be renewed or ordered, unix seconds.",
                &["cert"],
            ),
            routes: ArcSwap::from_pointee(HashMap::new()),
            unrouted: Arc::new(RouteMetrics {
                requests: STATUS_CLASSES
                    .map(|class| requests.with_label_values(&[NO_ROUTE, class])),
                duration: duration.with_label_values(&[NO_ROUTE]),
                upstream: upstream.with_label_values(&[NO_ROUTE]),
                bytes_in: bytes_in.with_label_values(&[NO_ROUTE]),
                bytes_out: bytes_out.with_label_values(&[NO_ROUTE]),
                websockets: websockets.with_label_values(&[NO_ROUTE]),
            }),
            scrape: Mutex::new(()),
            requests,
            duration,
            upstream,
            bytes_in,
            bytes_out,
            websockets,
            connections_active,
            connections,
            acme_orders,
            registry: r,
        };
        let build = gauge_vec(
            &m.registry,
            "proxyd_build_info",
            "Always 1; the version in a label.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        gauge(
            &m.registry,
            "proxyd_start_time_seconds",
            "When the process started, unix seconds.",
        )
        .set(unix_now());
        m.reload_last_success.set(unix_now());
        Arc::new(m)
    }

    /// Makes handles for every route and redirect id of `table` (keeping those of ids
    /// that stay), and drops the series of ids that are gone. Called before the table
    /// is swapped in.
    pub fn sync_routes(&self, table: &RouteTable) {
        let old = self.routes.load_full();
        let ids = table
            .routes
            .iter()
            .map(|r| r.id.as_str())
            .chain(table.redirects.iter().map(|r| r.id.as_str()));
        let new: HashMap<String, Arc<RouteMetrics>> = ids
            .map(|id| {
                let m = old
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(RouteMetrics::new(self, id)));
                (id.to_string(), m)
            })
            .collect();
        for gone in old.keys().filter(|id| !new.contains_key(*id)) {
            let id = gone.as_str();
            for class in STATUS_CLASSES {
                let _ = self.requests.remove_label_values(&[id, class]);
            }
            let _ = self.duration.remove_label_values(&[id]);
            let _ = self.upstream.remove_label_values(&[id]);
            let _ = self.bytes_in.remove_label_values(&[id]);
            let _ = self.bytes_out.remove_label_values(&[id]);
            // Tunnels still open keep their gauge handle; the series goes.
            let _ = self.websockets.remove_label_values(&[id]);
        }
        self.routes.store(Arc::new(new));
    }

    /// The handles of a route or redirect id: one map lookup.
    #[inline]
    pub fn route(&self, id: &str) -> Arc<RouteMetrics> {
        match self.routes.load().get(id) {
            Some(m) => m.clone(),
            // Only between a table swap and its handles (never: sync_routes runs first),
            // or for an id from an older table still in flight.
            None => Arc::new(RouteMetrics::new(self, id)),
        }
    }

    /// The handles for requests that matched no route.
    pub fn unrouted(&self) -> &Arc<RouteMetrics> {
        &self.unrouted
    }

    /// Counts the outcome of one TLS handshake (`Err(_)`: it timed out).
    pub fn tls_handshake_done<S: pingora::protocols::Ssl, T>(
        &self,
        handshake: &Result<pingora::Result<S>, T>,
    ) {
        match handshake {
            Ok(Ok(tls)) => {
                let version = tls.get_ssl_digest();
                self.tls_handshake_ok(version.as_ref().map_or("", |d| d.version.as_ref()));
            }
            Ok(Err(e)) => self.tls_handshake_failed(TlsFailure::classify(&e.to_string())),
            Err(_) => self.tls_handshake_failed(TlsFailure::Timeout),
        }
    }

    pub fn tls_handshake_ok(&self, version: &str) {
        let i = match version {
            "TLSv1_3" | "TLSv1.3" => 1,
            "TLSv1_2" | "TLSv1.2" => 0,
            _ => 2,
        };
        self.tls_handshakes[i].inc();
    }

    pub fn tls_handshake_failed(&self, why: TlsFailure) {
        let i = TlsFailure::ALL
            .iter()
            .position(|f| *f == why)
            .unwrap_or(TlsFailure::ALL.len() - 1);
        self.tls_failures[i].inc();
    }

    /// A reload (admin API or SIGHUP) finished: applied or not, `ok` is whether the
    /// file was valid.
    pub fn reload_done(&self, ok: bool) {
        // A scrape reads series one by one (the time gauge sorts before the counter),
        // so it may see the new count with the old time; the next scrape sees both.
        if ok {
            self.reload_last_success.set(unix_now());
            self.reloads_ok.inc();
        } else {
            self.reload_last_failure.set(unix_now());
            self.reloads_failed.inc();
        }
    }

    /// Refreshes the scrape-time gauges from `shared` and renders everything in the
    /// Prometheus text format.
    pub fn render(&self, shared: &Shared, access_log: Option<&AccessLog>) -> String {
        let _one = certs::util::lock(&self.scrape);
        let snapshot = shared.snapshot.load_full();
        self.generation.set(snapshot.generation as i64);

        for (c, total) in self.client_errors.iter().zip(shared.client_errors.totals()) {
            catch_up(c, total);
        }
        if let Some(log) = access_log {
            let drops = log.drops();
            catch_up(&self.access_log_dropped[0], drops.queue_full);
            catch_up(&self.access_log_dropped[1], drops.write_error);
        }

        self.upstream_healthy.reset();
        for route in &snapshot.table.routes {
            if let Some(pool) = snapshot.pools.get(&route.id) {
                for b in pool.members().iter() {
                    self.upstream_healthy
                        .with_label_values(&[route.id.as_str(), &b.addr.to_string()])
                        .set(i64::from(b.is_healthy()));
                }
            }
        }

        self.cert_not_after.reset();
        self.cert_expiring.reset();
        catch_up(&self.cert_errors, shared.certs.error_count());
        for c in shared.certs.list() {
            for name in &c.names {
                self.cert_not_after
                    .with_label_values(&[c.id.as_str(), name.as_str(), c.issuer.as_str()])
                    .set(c.not_after as i64);
            }
            if c.issuer == certs::ISSUER_MANUAL {
                self.cert_expiring
                    .with_label_values(&[c.id.as_str()])
                    .set(i64::from(c.expiring));
            }
        }

        self.served_mismatch.reset();
        self.served_unreachable.reset();
        for (name, check) in shared.served.results().iter() {
            let state = check.outcome.state();
            self.served_mismatch
                .with_label_values(&[name.as_str()])
                .set(i64::from(state == admin_api::ServedState::Mismatch));
            self.served_unreachable
                .with_label_values(&[name.as_str()])
                .set(i64::from(state == admin_api::ServedState::Unreachable));
        }
        let counts = shared.served.counts();
        catch_up(&self.served_checks[0], counts.matched);
        catch_up(&self.served_checks[1], counts.mismatched);
        catch_up(&self.served_checks[2], counts.unreachable);
        self.served_last_check
            .set(shared.served.last_run().map_or(0, |t| t as i64));

        if let Some(acme) = shared.acme.get() {
            let placed = acme.orders_placed();
            let (issued, failed) = acme.order_results();
            catch_up(&self.acme_orders_placed, placed);
            catch_up(&self.acme_orders.with_label_values(&["issued"]), issued);
            catch_up(&self.acme_orders.with_label_values(&["failed"]), failed);
            self.acme_failures.reset();
            self.acme_backoff.reset();
            self.acme_rate_limited.reset();
            self.acme_budget_used.reset();
            for u in acme.budget().unwrap_or_default() {
                self.acme_budget_used
                    .with_label_values(&[u.scope.as_str()])
                    .set(i64::from(u.used));
            }
            self.acme_orders_recorded.set(
                acme.orders_recorded()
                    .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            );
            self.acme_next_renewal.reset();
            let now = unix_now();
            for g in acme.status() {
                let id = [g.id.as_str()];
                self.acme_failures
                    .with_label_values(&id)
                    .set(i64::from(g.failures));
                let backoff = match g.next_attempt {
                    Some(at) if g.failures > 0 => (at - now).max(0),
                    _ => 0,
                };
                self.acme_backoff.with_label_values(&id).set(backoff);
                self.acme_rate_limited
                    .with_label_values(&id)
                    .set(g.rate_limited_until.map_or(0, |t| (t - now).max(0)));
                if let Some(at) = g.next_renewal {
                    self.acme_next_renewal.with_label_values(&id).set(at);
                }
            }
        }

        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!("metrics: cannot render: {e}");
        }
        out
    }
}

/// Counters mirrored from another component's monotonic total.
fn catch_up(c: &IntCounter, total: u64) {
    let seen = c.get();
    if total > seen {
        c.inc_by(total - seen);
    }
}

/// A listener layer that counts its connections (`proxyd_connections_*`). pingora
/// keeps an HTTP/1.1 keep-alive connection and an HTTP/2 connection inside one
/// `process_new` call, so a call in progress is an open connection.
pub struct Counted {
    /// (accepted, open) of this listener kind, resolved once; `None` without metrics.
    handles: Option<(IntCounter, IntGauge)>,
}

impl Counted {
    pub fn new(metrics: Option<Arc<Metrics>>, listener: &'static str) -> Self {
        let handles = metrics.map(|m| {
            (
                m.connections.with_label_values(&[listener]),
                m.connections_active.with_label_values(&[listener]),
            )
        });
        Counted { handles }
    }
}

impl Layer for Counted {
    type Hold = Option<GaugeGuard>;

    async fn accept(&self, stream: Stream) -> Option<(Stream, Option<GaugeGuard>)> {
        let open = self.handles.as_ref().map(|(accepted, open)| {
            accepted.inc();
            GaugeGuard::new(open.clone())
        });
        Some((stream, open))
    }
}

/// The metrics listener: `GET /metrics` (Prometheus text format) and `GET /health`
/// (200 `ok` with the generation when ready, else 503 with why), for the monitoring host.
pub struct MetricsApp {
    pub metrics: Arc<Metrics>,
    pub shared: Arc<Shared>,
    pub listeners: Listeners,
    pub access_log: Option<Arc<AccessLog>>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, content_type, body) = match (&req.method, req.uri.path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics
                    .render(&self.shared, self.access_log.as_deref()),
            ),
            (&Method::GET | &Method::HEAD, "/health") => {
                let r = crate::observe::readiness::check(&self.shared, &self.listeners);
                if r.ready {
                    (
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        format!("ok generation={}\n", r.generation),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        format!("not ready: {}\n", r.problems.join("; ")),
                    )
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: GET /metrics or /health\n".to_string(),
            ),
        };
        let body = body.into_bytes();
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .header("cache-control", "no-store")
            .body(body)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What pingora's acceptor hands us: the rustls error, through tokio-rustls's
    /// io::Error, explained twice (`tls connect error: ..`, `TLS accept() failed: ..`).
    fn as_pingora(e: rustls::Error) -> String {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let inner = pingora::Error::explain(
            pingora::ErrorType::TLSHandshakeFailure,
            format!("tls connect error: {io}"),
        );
        let outer = pingora::Error::explain(
            pingora::ErrorType::TLSHandshakeFailure,
            format!("TLS accept() failed: {inner}"),
        );
        outer.to_string()
    }

    #[test]
    fn tls_failures_are_classified_from_real_rustls_errors() {
        use rustls::{AlertDescription as A, Error as E, PeerIncompatible as P};
        let cases = [
            (
                E::General("no server certificate chain resolved".into()),
                TlsFailure::UnknownSni,
            ),
            (
                E::PeerIncompatible(P::Tls12NotOfferedOrEnabled),
                TlsFailure::ProtocolVersion,
            ),
            (
                E::PeerIncompatible(P::SupportedVersionsExtensionRequired),
                TlsFailure::ProtocolVersion,
            ),
            (
                E::PeerIncompatible(P::NoCipherSuitesInCommon),
                TlsFailure::NoSharedCipher,
            ),
            (
                E::PeerIncompatible(P::NoKxGroupsInCommon),
                TlsFailure::NoSharedCipher,
            ),
            (E::NoApplicationProtocol, TlsFailure::NoSharedAlpn),
            (E::AlertReceived(A::UnknownCA), TlsFailure::ClientAlert),
            (
                E::AlertReceived(A::ProtocolVersion),
                TlsFailure::ProtocolVersion,
            ),
            (
                E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                TlsFailure::Invalid,
            ),
            (E::DecryptError, TlsFailure::Invalid),
            (E::HandshakeNotComplete, TlsFailure::Other),
        ];
        for (error, want) in cases {
            let text = as_pingora(error);
            assert_eq!(TlsFailure::classify(&text), want, "{text}");
        }
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(
            TlsFailure::classify(&format!("tls connect error: {eof}")),
            TlsFailure::Closed
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let reset = std::io::Error::from_raw_os_error(104).to_string() + &reset.to_string();
        assert_eq!(TlsFailure::classify(&reset), TlsFailure::Closed);
    }

    #[test]
    fn status_classes_and_unrouted_requests() {
        let m = Metrics::new();
        let table = routes::parse(
            "t.toml",
            "[[route]]\nhosts = [\"a.test\"]\nupstreams = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        m.sync_routes(&table);
        let a = m.route("a.test/");
        for status in [200, 204, 404, 413, 502, 0, 101] {
            a.observe(&RequestSample {
                status,
                duration: Duration::from_millis(3),
                upstream: Some(Duration::from_millis(2)),
                bytes_in: 10,
                bytes_out: 100,
                upgraded: status == 101,
            });
        }
        let get = |route: &str, class: &str| m.requests.with_label_values(&[route, class]).get();
        assert_eq!(get("a.test/", "2xx"), 2);
        assert_eq!(get("a.test/", "4xx"), 2);
        assert_eq!(get("a.test/", "5xx"), 1);
        assert_eq!(get("a.test/", "1xx"), 1);
        assert_eq!(get("a.test/", "other"), 1);
        // The websocket's lifetime is not a latency.
        assert_eq!(
            m.duration
                .with_label_values(&["a.test/"])
                .get_sample_count(),
            6
        );
        assert_eq!(m.bytes_out.with_label_values(&["a.test/"]).get(), 700);

        // A reload that drops the route drops its series.
        let empty = routes::parse("t.toml", "").unwrap();
        m.sync_routes(&empty);
        let families = m.registry.gather();
        let text = TextEncoder::new().encode_to_string(&families).unwrap();
        assert!(!text.contains("a.test/"), "{text}");
        m.unrouted().observe(&RequestSample {
            status: 421,
            duration: Duration::from_millis(1),
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            upgraded: false,
        });
        assert_eq!(get(NO_ROUTE, "4xx"), 1);
    }
}
