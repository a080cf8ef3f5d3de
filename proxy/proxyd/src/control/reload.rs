//! The control plane: reload the routes file (validate all, then swap once), and the
//! state `proxyctl status` reports. Used by the admin API and by SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use certs::util::{lock, unix_u64 as unix};

use routes::{Diagnostic, TableDiff};

use crate::control::store_watch::StoreHealth;
use crate::data::state::Shared;
use crate::observe::metrics::Metrics;
use crate::observe::readiness::Listeners;

/// What a reload (or a dry run) found: the admin API's reply, with the phases kept
/// typed for the log.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// Applied, valid (a dry run, or nothing to change), or rejected: see
    /// [`admin_api::ReloadOutcome`].
    pub outcome: admin_api::ReloadOutcome,
    pub generation: u64,
    /// One line for logs.
    pub message: String,
    pub duration_ms: f64,
    /// Where `duration_ms` went, step by step in order (`read`, `parse`, `diff`,
    /// `certificates`, `install`): wall-clock ms, and CPU ms of the thread that did the
    /// step (the two differ when the machine is busy). For benchmarks and slow reloads.
    pub phases: Vec<Phase>,
}

/// One step of a reload and its time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

/// Splits one reload's time into named steps. Every step runs on one thread (see
/// [`reload_blocking`]), so that thread's CPU clock tells the CPU each step took.
struct Phases {
    wall: Instant,
    cpu: f64,
    done: Vec<Phase>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            wall: Instant::now(),
            cpu: thread_cpu_ms(),
            done: Vec::new(),
        }
    }

    /// The step `name` ends now.
    fn mark(&mut self, name: &'static str) {
        let (wall, cpu) = (Instant::now(), thread_cpu_ms());
        self.done.push(Phase {
            name,
            wall_ms: wall.duration_since(self.wall).as_secs_f64() * 1000.0,
            cpu_ms: cpu - self.cpu,
        });
        (self.wall, self.cpu) = (wall, cpu);
    }
}

/// CPU time of the calling thread, in ms (0 if the clock cannot be read).
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
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
    /// With `--metrics`: reloads counted, route handles made before a table goes live.
    pub metrics: Option<Arc<Metrics>>,
    /// What the last certificate-store check found (written by `store_watch.rs`).
    pub store_health: Arc<StoreHealth>,
    started_at: SystemTime,
    last_reload: Mutex<Option<ReloadRecord>>,
    last_success: Mutex<Option<SystemTime>>,
    /// One reload at a time; concurrent callers queue.
    reloading: tokio::sync::Mutex<()>,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        routes_path: PathBuf,
        listeners: Listeners,
        metrics: Option<Arc<Metrics>>,
        store_health: Arc<StoreHealth>,
    ) -> Arc<Control> {
        Arc::new(Control {
            shared,
            routes_path,
            listeners,
            metrics,
            store_health,
            started_at: SystemTime::now(),
            last_reload: Mutex::new(None),
            last_success: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Re-read and validate the routes file, then swap the new table in (the admin
    /// API's `POST /v1/reload`, SIGHUP). An invalid file changes nothing. Recorded for
    /// `status`, logged and counted.
    pub async fn reload(&self, trigger: &'static str) -> ReloadOutcome {
        let outcome = self.run(Mode::Apply).await;
        let record = ReloadRecord {
            at: SystemTime::now(),
            ok: outcome.outcome.is_ok(),
            generation: outcome.generation,
            message: outcome.message.clone(),
            trigger,
        };
        match &outcome.outcome {
            admin_api::ReloadOutcome::Rejected { errors } => {
                tracing::error!(trigger, "reload: {}", outcome.message);
                for e in errors {
                    tracing::error!("{}", e.rendered);
                }
            }
            _ => {
                *lock(&self.last_success) = Some(record.at);
                tracing::info!(
                    trigger,
                    generation = outcome.generation,
                    duration_ms = outcome.duration_ms,
                    phases = %phases_line(&outcome.phases),
                    "reload: {}",
                    outcome.message
                );
            }
        }
        *lock(&self.last_reload) = Some(record);
        if let Some(m) = &self.metrics {
            m.reload_done(outcome.outcome.is_ok());
        }
        outcome
    }

    /// What a reload would change now (`GET /v1/diff`): validates the file and diffs
    /// it against the table in force, applying, recording and logging nothing.
    pub async fn diff(&self) -> ReloadOutcome {
        self.run(Mode::DryRun).await
    }

    async fn run(&self, mode: Mode) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        // All of it on one blocking thread: parsing and diffing a large table is tens of
        // ms of CPU (and issuing certificates more), which would otherwise hold up a
        // worker of the admin runtime.
        let (shared, path) = (self.shared.clone(), self.routes_path.clone());
        let metrics = self.metrics.clone();
        let mut outcome = tokio::task::spawn_blocking(move || {
            reload_blocking(&shared, metrics.as_deref(), &path, mode)
        })
        .await
        .unwrap_or_else(|e| {
            let error = Diagnostic {
                file: self.routes_path.display().to_string(),
                line: 0,
                col: 0,
                message: format!("the reload failed: {e}"),
                context: None,
            };
            self.rejected(vec![error])
        });
        outcome.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        outcome
    }

    fn rejected(&self, errors: Vec<Diagnostic>) -> ReloadOutcome {
        rejected(&self.shared, &self.routes_path, errors, Vec::new())
    }

    /// Everything `proxyctl status` shows (`GET /v1/status`).
    pub fn status(&self) -> admin_api::Status {
        let snapshot = self.shared.snapshot.load_full();
        let last = lock(&self.last_reload).clone();
        let last_success = *lock(&self.last_success);
        let mut upstreams = Vec::new();
        let mut healthy = 0;
        for route in &snapshot.table.routes {
            if let Some(pool) = snapshot.pools.get(&route.id) {
                for b in pool.members().iter() {
                    healthy += usize::from(b.is_healthy());
                    upstreams.push(admin_api::Upstream {
                        route: route.id.clone(),
                        address: b.addr.to_string(),
                        healthy: b.is_healthy(),
                    });
                }
            }
        }
        let certificates = self
            .shared
            .certs
            .list()
            .into_iter()
            .map(|c| admin_api::HeldCertificate {
                id: c.id,
                names: c.names,
                issuer: c.issuer,
                not_after: c.not_after,
            })
            .collect();
        admin_api::Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: unix(self.started_at),
            routes_file: self.routes_path.display().to_string(),
            generation: snapshot.generation,
            last_reload: last.map(|r| admin_api::LastReload {
                at: unix(r.at),
                ok: r.ok,
                generation: r.generation,
                trigger: r.trigger.into(),
                message: r.message,
            }),
            last_successful_reload: last_success.map(unix),
            listeners: admin_api::StatusListeners {
                https: self.listeners.https.iter().map(|a| a.to_string()).collect(),
                http: self.listeners.http.iter().map(|a| a.to_string()).collect(),
                admin: self.listeners.admin.display().to_string(),
            },
            routes: snapshot.table.routes.len(),
            redirects: snapshot.table.redirects.len(),
            names: snapshot.table.names().len(),
            upstreams_healthy: healthy,
            upstreams_total: upstreams.len(),
            upstreams,
            certificates,
            store: self.store_health.to_reply(),
        }
    }
}

/// Reload for real, or only say what a reload would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    DryRun,
}

impl ReloadOutcome {
    /// The admin API's reply (`POST /v1/reload`, `GET /v1/diff`).
    pub fn to_reply(&self) -> admin_api::ReloadReply {
        admin_api::ReloadReply {
            outcome: self.outcome.clone(),
            generation: self.generation,
            message: self.message.clone(),
            duration_ms: self.duration_ms,
            phases_ms: self
                .phases
                .iter()
                .map(|p| (p.name.to_string(), p.wall_ms))
                .collect(),
            phases_cpu_ms: self
                .phases
                .iter()
                .map(|p| (p.name.to_string(), p.cpu_ms))
                .collect(),
        }
    }
}

/// The wire form of a diff (the same lists, by the same names).
fn changes(d: TableDiff) -> admin_api::Changes {
    admin_api::Changes {
        routes_added: d.routes_added,
        routes_removed: d.routes_removed,
        routes_changed: d.routes_changed,
        redirects_added: d.redirects_added,
        redirects_removed: d.redirects_removed,
        redirects_changed: d.redirects_changed,
        names_added: d.names_added,
        names_removed: d.names_removed,
    }
}

fn error_report(e: Diagnostic) -> admin_api::ErrorReport {
    admin_api::ErrorReport {
        rendered: e.to_string(),
        file: e.file,
        line: e.line,
        col: e.col,
        message: e.message,
        context: e.context,
    }
}

/// The whole of one reload, on the calling (blocking) thread: read, parse, diff, then
/// (in [`Mode::Apply`]) certificates and the swap. The caller holds the one-at-a-time lock.
fn reload_blocking(
    shared: &Arc<Shared>,
    metrics: Option<&Metrics>,
    path: &Path,
    mode: Mode,
) -> ReloadOutcome {
    let mut phases = Phases::start();
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let error = Diagnostic {
                file,
                line: 0,
                col: 0,
                message: format!("cannot read the routes file: {e}"),
                context: None,
            };
            return rejected(shared, path, vec![error], phases.done);
        }
    };
    phases.mark("read");
    let parsed = routes::parse(&file, &text);
    phases.mark("parse");
    drop_later(text);
    let table = match parsed {
        Ok(table) => table,
        Err(d) => return rejected(shared, path, d.0, phases.done),
    };
    // ACME profiles against the CA's directory (read again only for a profile not
    // among those it offered last time). This is a blocking thread of the runtime.
    if let Some(m) = shared.acme.get() {
        let check = crate::control::acme_service::check_profiles(m, &table);
        if let Err(problems) = tokio::runtime::Handle::current().block_on(check) {
            let errors = problems
                .into_iter()
                .map(|message| Diagnostic {
                    file: file.clone(),
                    line: 0,
                    col: 0,
                    message,
                    context: None,
                })
                .collect();
            return rejected(shared, path, errors, phases.done);
        }
        phases.mark("acme profiles");
    }

    let old = shared.snapshot.load_full();
    let diff = routes::diff(&old.table, &table);
    // A map lookup per new name (a `*.x` name finds a wildcard certificate for x).
    let resolver = shared.certs.resolver();
    let certificates_needed: Vec<String> = diff
        .names_added
        .iter()
        .filter(|name| resolver.lookup(name).is_none())
        .cloned()
        .collect();
    let summary = summarize(&diff);
    let generation = old.generation;
    drop(old);
    phases.mark("diff");
    if mode == Mode::DryRun || diff.is_empty() {
        let mut certificates = String::new();
        if mode == Mode::Apply {
            // Routes unchanged, but a reload still reads the store again: an admin who
            // replaced a certificate's files in place reloads to have it served, as
            // with nginx (certs-store/README.md), and is told when that failed.
            let report = shared.certs.ensure(&table.certificate_groups());
            for e in &report.errors {
                tracing::error!("certificate: {e}");
            }
            // Nothing else in the reply names what was issued.
            certificates = certificate_notes(&report, true);
            phases.mark("certificates");
        }
        // Freeing a large table is no reason to keep the caller waiting either.
        drop_later(table);
        let message = match mode {
            Mode::Apply => format!("valid; nothing changed{certificates}"),
            Mode::DryRun => format!("valid; a reload would change: {summary}"),
        };
        return ReloadOutcome {
            outcome: admin_api::ReloadOutcome::Valid {
                changes: changes(diff),
                certificates_needed,
            },
            generation,
            message,
            duration_ms: 0.0,
            phases: phases.done,
        };
    }
    // Certificates first, so the new names have one when the table goes live.
    let report = shared.certs.ensure(&table.certificate_groups());
    for e in &report.errors {
        tracing::error!("certificate: {e}");
    }
    if !report.released.is_empty() || !report.archived.is_empty() {
        // Certificates follow the routes: those of removed names leave memory, the
        // resolver and metrics (kept on disk while valid, archived once expired).
        tracing::info!(
            released = report.released.len(),
            archived = ?report.archived,
            "reload: certificates no route uses are no longer held"
        );
    }
    phases.mark("certificates");
    if let Some(m) = metrics {
        // Handles for the new ids before requests can route to them.
        m.sync_routes(&table);
    }
    let (generation, replaced) = shared.install(table);
    phases.mark("install");
    // The new table is in force. The old one goes once the last request that still
    // holds it is done; freeing tens of thousands of routes and pools, and pruning the
    // backends only they used, takes a few ms, which no reload caller needs to wait for.
    let retiring = shared.clone();
    later(move || retiring.retire(replaced));
    let notes = certificate_notes(&report, false);
    ReloadOutcome {
        outcome: admin_api::ReloadOutcome::Applied {
            changes: changes(diff),
            certificates_needed,
            certificates_issued: report.issued,
        },
        generation,
        message: format!("applied generation {generation}: {summary}{notes}"),
        duration_ms: 0.0,
        phases: phases.done,
    }
}

/// What the certificates' part of a reload did that the admin must hear of, for the end
/// of its message: certificates issued, and what went wrong (files in the store that
/// could not be read, certificates that could not be issued). Empty when nothing did.
/// `issued`: whether to name those issued (an applied reload's reply lists them apart).
/// At most [`NOTES_SHOWN`] of each kind: the log has them all.
fn certificate_notes(report: &certs::EnsureReport, issued: bool) -> String {
    let mut notes = String::new();
    let mut add = |what: &str, items: &[String]| {
        if items.is_empty() {
            return;
        }
        // Paths and parse errors quote bytes from disk: no control byte reaches the
        // admin's terminal through proxyctl.
        let shown: String = items[..items.len().min(NOTES_SHOWN)]
            .join("; ")
            .chars()
            .flat_map(|c| {
                let escaped = c.is_control().then(|| c.escape_default());
                escaped
                    .into_iter()
                    .flatten()
                    .chain((!c.is_control()).then_some(c))
            })
            .collect();
        notes.push_str(&format!("; {what}: {shown}"));
        if items.len() > NOTES_SHOWN {
            notes.push_str(&format!(
                " (and {} more, see the log)",
                items.len() - NOTES_SHOWN
            ));
        }
    };
    if issued {
        add("certificates issued", &report.issued);
    }
    add("certificate store", &report.store_problems);
    add("certificate errors", &report.errors);
    notes
}

/// How many of each kind [`certificate_notes`] lists.
const NOTES_SHOWN: usize = 3;

/// The outcome for a file that could not be read or is invalid: nothing changes.
fn rejected(
    shared: &Shared,
    path: &Path,
    errors: Vec<Diagnostic>,
    phases: Vec<Phase>,
) -> ReloadOutcome {
    ReloadOutcome {
        generation: shared.snapshot.load().generation,
        message: format!(
            "{} rejected: {} error{}; the running table is unchanged",
            path.display(),
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        ),
        outcome: admin_api::ReloadOutcome::Rejected {
            errors: errors.into_iter().map(error_report).collect(),
        },
        duration_ms: 0.0,
        phases,
    }
}

/// `read 0.2/0.2 parse 20.1/19.8 ...` (wall/CPU ms), for the log.
fn phases_line(phases: &[Phase]) -> String {
    let parts: Vec<String> = phases
        .iter()
        .map(|p| format!("{} {:.1}/{:.1}", p.name, p.wall_ms, p.cpu_ms))
        .collect();
    parts.join(" ")
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

/// Drop `value` on a blocking thread rather than here (a large routes table or an old
/// snapshot: many small allocations to free).
fn drop_later<T: Send + 'static>(value: T) {
    later(move || drop(value));
}

/// Run `work` on a blocking thread of the runtime (at once, outside a runtime).
fn later(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(work);
        }
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_notes_name_a_few_of_each_kind_and_count_the_rest() {
        let ids = |n: usize| (0..n).map(|i| format!("c{i}.test")).collect::<Vec<_>>();
        assert_eq!(certificate_notes(&certs::EnsureReport::default(), true), "");
        let report = certs::EnsureReport {
            issued: ids(2),
            store_problems: vec!["certs/x\u{1b}[2J: bad PEM\r\n; not served".into()],
            errors: ids(100_000),
            ..Default::default()
        };
        let notes = certificate_notes(&report, true);
        assert!(
            notes.starts_with("; certificates issued: c0.test; c1.test; certificate store:"),
            "{notes}"
        );
        assert!(
            notes.contains("c2.test (and 99997 more, see the log)"),
            "{notes}"
        );
        assert!(notes.len() < 300, "{notes}");
        assert!(!notes.chars().any(char::is_control), "{notes}");
        assert!(
            notes.contains(r"certs/x\u{1b}[2J: bad PEM\r\n; not served"),
            "{notes}"
        );
        // An applied reload lists what it issued in its reply, not in its message.
        assert!(!certificate_notes(&report, false).contains("issued"));
    }
}
