//! The daemon's own log (tracing, text or JSON, on stderr): its set-up, and what keeps
//! it readable when the proxy is under attack or a backend is down under load.
//!
//! **Invariant: no client can make the daemon write more than a fixed number of lines
//! per interval.** Whatever a client can repeat at will costs a counter, not a line:
//! - client-caused failures are counted (`client_errors.rs`), logged at debug, and
//!   summed up here in one info line per `--log-summary-interval`;
//! - upstream failures (the admin's business) are logged the first time for each route
//!   and upstream, then counted ([`Repeats`]) and summed up once per interval;
//! - lines the access log could not write are counted by its writer and summed up here;
//! - as a safety net for what pingora and other libraries log on their own (through
//!   the `log` bridge), each of their warn/error call sites writes at most
//!   [`LIBRARY_BURST`] lines per interval ([`LibraryLimit`]); the rest are counted and
//!   summed up. proxyd's own call sites are exempt: a reload's errors are all written.
//!
//! Access-log lines are not written here: see `access_log.rs`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use certs::util::lock;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::FilterExt, EnvFilter, Registry};

use crate::cli::LogFormat;
use crate::data::client_errors::{self, ClientError};

/// Lines one library call site (warn or error) may write per interval.
pub const LIBRARY_BURST: u64 = 10;

/// Crates of this workspace: their call sites are written deliberately, never limited.
const OWN_CRATES: [&str; 5] = ["proxyd", "acme", "certs", "routes", "inventory"];

pub fn init(format: LogFormat) {
    let _ = tracing_log::LogTracer::init();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => layer
            .with_target(true)
            .with_filter(filter.and(&*LIBRARY))
            .boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_filter(filter.and(&*LIBRARY))
            .boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

// ---------------------------------------------------------------------------------------
// Libraries' own lines

/// The limit on libraries' call sites, shared by the subscriber and [`Summaries`].
pub static LIBRARY: LazyLock<LibraryLimit> = LazyLock::new(LibraryLimit::default);

/// Lets each library call site (by file and line) write [`LIBRARY_BURST`] warn/error
/// lines per interval; counts the rest.
#[derive(Default)]
pub struct LibraryLimit {
    sites: Mutex<HashMap<u64, Site>>,
}

struct Site {
    target: String,
    location: String,
    /// Lines seen this interval (written or not).
    seen: u64,
}

impl LibraryLimit {
    /// Whether this line may be written now (`key`: its call site).
    fn admit(&self, meta: &Metadata<'_>) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        meta.target().hash(&mut h);
        meta.file().hash(&mut h);
        meta.line().hash(&mut h);
        let key = h.finish();
        let mut sites = lock(&self.sites);
        let site = sites.entry(key).or_insert_with(|| Site {
            target: meta.target().to_owned(),
            location: match (meta.file(), meta.line()) {
                (Some(f), Some(l)) => format!("{f}:{l}"),
                (Some(f), None) => f.to_owned(),
                _ => meta.name().to_owned(),
            },
            seen: 0,
        });
        site.seen += 1;
        site.seen <= LIBRARY_BURST
    }

    /// Ends an interval: `(target, file:line, lines not written)` of each call site
    /// that went over its burst.
    pub fn drain(&self) -> Vec<(String, String, u64)> {
        let mut sites = lock(&self.sites);
        let over = sites
            .values()
            .filter(|s| s.seen > LIBRARY_BURST)
            .map(|s| (s.target.clone(), s.location.clone(), s.seen - LIBRARY_BURST))
            .collect();
        sites.clear();
        over
    }
}

fn own(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    OWN_CRATES.contains(&krate)
}

/// Whether a call site can be limited: warn or error, not of this workspace. Events
/// bridged from `log` all share one call site per level (target `log`): those are
/// looked at one by one.
fn limited(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::WARN && !own(meta.target())
}

impl<S: Subscriber> Filter<S> for &LibraryLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if limited(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        !limited(meta) || self.admit(meta)
    }
}

// ---------------------------------------------------------------------------------------
// Repeated events of our own

/// Events that repeat under one key (a route and upstream): the first is logged at
/// once ([`Repeats::note`] says so), the others are counted by kind and summed up at
/// the end of the interval ([`Repeats::drain`]). A key with nothing to report is
/// forgotten, so its next event is logged at once again. Keys come from the
/// configuration (bounded); a lock is taken per event, on failure paths only.
pub struct Repeats<K> {
    entries: Mutex<HashMap<K, Tally>>,
}

#[derive(Default)]
struct Tally {
    /// Events since the last summary, by kind (a few fixed strings).
    counts: Vec<(&'static str, u64)>,
    last: String,
}

/// One key's events over an interval, for its summary line.
#[derive(Debug, PartialEq, Eq)]
pub struct Repeated<K> {
    pub key: K,
    pub total: u64,
    /// `502: 1200, connect failed (retried): 34`, largest first.
    pub by_kind: String,
    /// The text of the last one.
    pub last: String,
}

impl<K> Default for Repeats<K> {
    fn default() -> Self {
        Repeats {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Repeats<K> {
    /// One event. True when it is the first for `key` since its last quiet interval:
    /// the caller logs it now. Otherwise it is counted under `kind` with `detail()` as
    /// the latest text.
    pub fn note(&self, key: &K, kind: &'static str, detail: impl FnOnce() -> String) -> bool {
        let mut entries = lock(&self.entries);
        match entries.get_mut(key) {
            None => {
                entries.insert(key.clone(), Tally::default());
                true
            }
            Some(t) => {
                match t.counts.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => *n += 1,
                    None => t.counts.push((kind, 1)),
                }
                t.last = detail();
                false
            }
        }
    }

    /// Ends an interval: a summary per key with events since the last one; keys with
    /// none are forgotten.
    pub fn drain(&self) -> Vec<Repeated<K>> {
        let mut entries = lock(&self.entries);
        let mut out = Vec::new();
        entries.retain(|key, t| {
            if t.counts.is_empty() {
                return false;
            }
            let mut counts = std::mem::take(&mut t.counts);
            counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            out.push(Repeated {
                key: key.clone(),
                total: counts.iter().map(|(_, n)| n).sum(),
                by_kind: counts
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                last: std::mem::take(&mut t.last),
            });
            true
        });
        out
    }
}

// ---------------------------------------------------------------------------------------
// The summaries

/// Background: once per interval, one line each for what was counted instead of
/// logged (client errors, repeated upstream failures, access-log lines dropped,
/// libraries' lines over their burst). Nothing is written for a quiet interval.
pub struct Summaries {
    pub client_errors: Arc<client_errors::ClientErrors>,
    pub upstream_failures: Arc<Repeats<(String, String)>>,
    pub access_log: Option<Arc<crate::observe::access_log::AccessLog>>,
    pub interval: Duration,
}

impl Summaries {
    fn write(&self, state: &mut SummaryState) {
        let secs = self.interval.as_secs_f64();
        let now = self.client_errors.totals();
        if let Some((total, by_reason)) = client_errors::summary(&state.client_errors, &now) {
            tracing::info!(
                "{total} client errors in the last {secs} s: {by_reason} \
                 (proxyd_client_errors_total; each at RUST_LOG=debug)"
            );
        }
        state.client_errors = now;

        for r in self.upstream_failures.drain() {
            let (route, upstream) = &r.key;
            tracing::warn!(
                route = %route,
                upstream = %upstream,
                count = r.total,
                by = %r.by_kind,
                last_error = %r.last,
                "{} more upstream failures in the last {secs} s",
                r.total
            );
        }

        if let Some(log) = &self.access_log {
            let drops = log.drops();
            let queue_full = drops.queue_full - state.access_queue_full;
            let write_error = drops.write_error - state.access_write_error;
            if queue_full + write_error > 0 {
                tracing::warn!(
                    queue_full,
                    write_error,
                    last_write_error = %drops.last_write_error.as_deref().unwrap_or("-"),
                    "access log: {} lines dropped in the last {secs} s \
                     (proxyd_access_log_dropped_lines_total)",
                    queue_full + write_error
                );
            }
            state.access_queue_full = drops.queue_full;
            state.access_write_error = drops.write_error;
        }

        for (target, location, n) in LIBRARY.drain() {
            tracing::warn!(
                "{target} ({location}): {n} more lines from there not written in the last \
                 {secs} s (at most {LIBRARY_BURST} per interval)"
            );
        }
    }
}

#[derive(Default)]
struct SummaryState {
    client_errors: [u64; ClientError::ALL.len()],
    access_queue_full: u64,
    access_write_error: u64,
}

#[async_trait]
impl BackgroundService for Summaries {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut state = SummaryState::default();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.write(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_log_the_first_count_the_rest_and_forget_quiet_keys() {
        let r: Repeats<(&str, &str)> = Repeats::default();
        let key = ("a.test/", "10.0.0.1:80");
        assert!(r.note(&key, "502", || "refused".into()));
        for i in 0..5 {
            assert!(!r.note(&key, "502", || format!("refused {i}")));
        }
        assert!(!r.note(&key, "504", || "timed out".into()));
        assert!(r.note(&("b.test/", "-"), "500", String::new));
        assert_eq!(
            r.drain(),
            vec![Repeated {
                key,
                total: 6,
                by_kind: "502: 5, 504: 1".into(),
                last: "timed out".into(),
            }]
        );
        // b.test/ had nothing after its first line: forgotten, logged at once next time.
        assert!(r.note(&("b.test/", "-"), "500", String::new));
        // a.test/ is still known this interval, then quiet, then forgotten.
        assert!(!r.note(&key, "502", String::new));
        assert_eq!(r.drain().len(), 1);
        assert_eq!(r.drain(), vec![]);
        assert!(r.note(&key, "502", String::new));
    }

    #[test]
    fn only_libraries_warnings_and_errors_are_limited() {
        assert!(own("proxyd::proxy"));
        assert!(own("acme::manager"));
        assert!(own("certs"));
        assert!(!own("pingora_proxy"));
        assert!(!own("proxydx"));
        let limit = LibraryLimit::default();
        let meta = tracing::Metadata::new(
            "event",
            "pingora_proxy",
            Level::ERROR,
            Some("src/lib.rs"),
            Some(366),
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        assert!(limited(&meta));
        for _ in 0..LIBRARY_BURST {
            assert!(limit.admit(&meta));
        }
        for _ in 0..5 {
            assert!(!limit.admit(&meta));
        }
        assert_eq!(
            limit.drain(),
            vec![("pingora_proxy".into(), "src/lib.rs:366".into(), 5)]
        );
        // A new interval: the call site may write again.
        assert!(limit.admit(&meta));
        assert_eq!(limit.drain(), vec![]);
    }

    struct Callsite;
    static CALLSITE: Callsite = Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
}
