//! The control plane: reload the routes file (validate all, then swap once), and the
//! state `proxyctl status` reports. Used by the admin API and by SIGHUP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use routes::{Diagnostic, RouteTable, TableDiff};
use serde_json::{json, Value};

use crate::state::Shared;

/// Where the daemon listens (for `status`).
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub admin: PathBuf,
}

/// What a reload (or a dry run) found.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// The file was valid.
    pub ok: bool,
    /// The new table is in force (false for a dry run, an invalid file, or no change).
    pub applied: bool,
    pub generation: u64,
    pub diff: TableDiff,
    /// New names that no certificate covers yet.
    pub certificates_needed: Vec<String>,
    /// Certificates issued by the local CA for the new names.
    pub certificates_issued: Vec<String>,
    /// Every problem of an invalid file (file:line:col), or an I/O error.
    pub errors: Vec<Diagnostic>,
    /// One line for logs.
    pub message: String,
    pub duration_ms: f64,
}

#[derive(Debug, Clone)]
struct ReloadRecord {
    at: SystemTime,
    ok: bool,
    generation: u64,
    message: String,
    trigger: &'static str,
}

pub struct Control {
    pub shared: Arc<Shared>,
    pub routes_path: PathBuf,
    pub listeners: Listeners,
    started_at: SystemTime,
    last_reload: Mutex<Option<ReloadRecord>>,
    last_success: Mutex<Option<SystemTime>>,
    /// One reload at a time; concurrent callers queue.
    reloading: tokio::sync::Mutex<()>,
}

impl Control {
    pub fn new(shared: Arc<Shared>, routes_path: PathBuf, listeners: Listeners) -> Arc<Control> {
        Arc::new(Control {
            shared,
            routes_path,
            listeners,
            started_at: SystemTime::now(),
            last_reload: Mutex::new(None),
            last_success: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Re-read and validate the routes file; with `apply`, swap the new table in.
    /// An invalid file changes nothing.
    pub async fn reload(&self, apply: bool, trigger: &'static str) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        let mut outcome = match self.read().await {
            Err(errors) => ReloadOutcome {
                ok: false,
                applied: false,
                generation: self.shared.snapshot.load().generation,
                diff: TableDiff::default(),
                certificates_needed: Vec::new(),
                certificates_issued: Vec::new(),
                message: format!(
                    "{} rejected: {} error{}; the running table is unchanged",
                    self.routes_path.display(),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                ),
                errors,
                duration_ms: 0.0,
            },
            Ok(table) => self.apply(table, apply).await,
        };
        outcome.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        if apply {
            let record = ReloadRecord {
                at: SystemTime::now(),
                ok: outcome.ok,
                generation: outcome.generation,
                message: outcome.message.clone(),
                trigger,
            };
            if outcome.ok {
                *lock(&self.last_success) = Some(record.at);
                tracing::info!(
                    trigger,
                    generation = outcome.generation,
                    duration_ms = outcome.duration_ms,
                    "reload: {}",
                    outcome.message
                );
            } else {
                tracing::error!(trigger, "reload: {}", outcome.message);
                for e in &outcome.errors {
                    tracing::error!("{e}");
                }
            }
            *lock(&self.last_reload) = Some(record);
            if let Some(m) = self.shared.metrics.get() {
                m.reload_done(outcome.ok);
            }
        }
        outcome
    }

    async fn read(&self) -> Result<RouteTable, Vec<Diagnostic>> {
        let file = self.routes_path.display().to_string();
        let text = tokio::fs::read_to_string(&self.routes_path)
            .await
            .map_err(|e| {
                vec![Diagnostic {
                    file: file.clone(),
                    line: 0,
                    col: 0,
                    message: format!("cannot read the routes file: {e}"),
                    context: None,
                }]
            })?;
        routes::parse(&file, &text).map_err(|d| d.0)
    }

    async fn apply(&self, table: RouteTable, apply: bool) -> ReloadOutcome {
        let old = self.shared.snapshot.load_full();
        let diff = routes::diff(&old.table, &table);
        // A map lookup per new name (a `*.x` name finds a wildcard certificate for x).
        let resolver = self.shared.certs.resolver();
        let certificates_needed: Vec<String> = diff
            .names_added
            .iter()
            .filter(|name| resolver.lookup(name).is_none())
            .cloned()
            .collect();
        let summary = summarize(&diff);
        if !apply {
            return ReloadOutcome {
                ok: true,
                applied: false,
                generation: old.generation,
                diff,
                certificates_needed,
                certificates_issued: Vec::new(),
                errors: Vec::new(),
                message: format!("valid; a reload would change: {summary}"),
                duration_ms: 0.0,
            };
        }
        if diff.is_empty() {
            return ReloadOutcome {
                ok: true,
                applied: false,
                generation: old.generation,
                diff,
                certificates_needed,
                certificates_issued: Vec::new(),
                errors: Vec::new(),
                message: "valid; nothing changed".into(),
                duration_ms: 0.0,
            };
        }
        // Certificates first (local issuer: key generation is CPU work, off the
        // runtime's workers), so the new names have one when the table goes live.
        let groups = table.certificate_groups();
        let shared = self.shared.clone();
        let report = tokio::task::spawn_blocking(move || shared.certs.ensure(&groups))
            .await
            .unwrap_or_default();
        for e in &report.errors {
            tracing::error!("certificate: {e}");
        }
        let generation = self.shared.install(table);
        ReloadOutcome {
            ok: true,
            applied: true,
            generation,
            diff,
            certificates_needed,
            certificates_issued: report.issued,
            errors: Vec::new(),
            message: format!("applied generation {generation}: {summary}"),
            duration_ms: 0.0,
        }
    }

    /// Everything `proxyctl status` shows.
    pub fn status(&self) -> Value {
        let snapshot = self.shared.snapshot.load_full();
        let last = lock(&self.last_reload).clone();
        let last_success = *lock(&self.last_success);
        let mut upstreams = Vec::new();
        let mut healthy = 0;
        for route in &snapshot.table.routes {
            if let Some(pool) = snapshot.pools.get(&route.id) {
                for b in pool.members().iter() {
                    healthy += usize::from(b.is_healthy());
                    upstreams.push(json!({
                        "route": route.id,
                        "address": b.addr.to_string(),
                        "healthy": b.is_healthy(),
                    }));
                }
            }
        }
        let certificates: Vec<Value> = self
            .shared
            .certs
            .list()
            .into_iter()
            .map(|c| json!({"id": c.id, "names": c.names, "issuer": c.issuer, "not_after": c.not_after}))
            .collect();
        json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": unix(self.started_at),
            "routes_file": self.routes_path.display().to_string(),
            "generation": snapshot.generation,
            "last_reload": last.map(|r| json!({
                "at": unix(r.at),
                "ok": r.ok,
                "generation": r.generation,
                "trigger": r.trigger,
                "message": r.message,
            })),
            "last_successful_reload": last_success.map(unix),
            "listeners": {
                "https": self.listeners.https.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "http": self.listeners.http.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "admin": self.listeners.admin.display().to_string(),
            },
            "routes": snapshot.table.routes.len(),
            "redirects": snapshot.table.redirects.len(),
            "names": snapshot.table.names().len(),
            "upstreams_healthy": healthy,
            "upstreams_total": upstreams.len(),
            "upstreams": upstreams,
            "certificates": certificates,
            "store": self.shared.store_health.to_json(),
        })
    }
}

impl ReloadOutcome {
    pub fn to_json(&self) -> Value {
        let d = &self.diff;
        json!({
            "ok": self.ok,
            "applied": self.applied,
            "generation": self.generation,
            "message": self.message,
            "duration_ms": self.duration_ms,
            "changes": {
                "routes_added": d.routes_added,
                "routes_removed": d.routes_removed,
                "routes_changed": d.routes_changed,
                "redirects_added": d.redirects_added,
                "redirects_removed": d.redirects_removed,
                "redirects_changed": d.redirects_changed,
                "names_added": d.names_added,
                "names_removed": d.names_removed,
            },
            "certificates_needed": self.certificates_needed,
            "certificates_issued": self.certificates_issued,
            "errors": self.errors.iter().map(|e| json!({
                "file": e.file, "line": e.line, "col": e.col,
                "message": e.message, "context": e.context,
                "rendered": e.to_string(),
            })).collect::<Vec<_>>(),
        })
    }
}

fn summarize(d: &TableDiff) -> String {
    let parts: Vec<String> = [
        ("route added", d.routes_added.len()),
        ("route removed", d.routes_removed.len()),
        ("route changed", d.routes_changed.len()),
        ("redirect added", d.redirects_added.len()),
        ("redirect removed", d.redirects_removed.len()),
        ("redirect changed", d.redirects_changed.len()),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| {
        let (noun, verb) = what.split_once(' ').unwrap_or((what, ""));
        format!("{n} {noun}{} {verb}", if *n == 1 { "" } else { "s" })
    })
    .collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
