//! The access log: one line per request, JSON lines or the combined log format, on stderr
//! (journald) or in a file that SIGUSR1 reopens (logrotate's `postrotate`).
//!
//! **The request path never waits for the disk.** A request formats its line and hands
//! it to a channel; one writer thread gathers lines and writes them out at least every
//! [`FLUSH_EVERY`]. The queue is bounded in bytes (`--access-log-queue`, default
//! [`DEFAULT_QUEUE_BYTES`]), not lines: if the writer falls that far behind (a stalled
//! disk), further lines are dropped rather than slowing requests or growing memory.
//!
//! **Every line is accounted for.** A line is written, or counted as dropped
//! (`proxyd_access_log_dropped_lines_total{reason}`): `queue_full` when the queue had no
//! room, `write_error` when the writer could not write it (disk full, I/O error, stderr
//! gone). The first write error is logged at once (at most once per [`ERROR_LINE_EVERY`]),
//! the counts once per `--log-summary-interval` (`logging::Summaries`). A line cut short
//! by a failed write is ended before the next one, so the file stays one line per line.
//!
//! **Reopen without losing lines.** SIGUSR1 only sets a flag (signal-hook, registered
//! at start, before any service runs). The writer sees it within [`IDLE_TICK`], writes
//! out what it holds into the old file (already renamed by logrotate: the descriptor
//! follows it), then opens the path anew and goes on there. Lines still queued go to the
//! new file. At process exit an `atexit` hook makes the writer flush before it returns.
//!
//! The writer thread is started by a pingora background service ([`WriterService`]), so
//! it runs in the process that serves (after `--daemon` forks); lines logged before it
//! starts wait in the channel.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// Bytes of lines the request path may queue ahead of the writer, by default.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;
/// Longest time a written line waits in the writer's buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// While lines wait to be written, the writer gathers more for this long without
/// parking on the channel (so the request path never has to wake it).
const BATCH_TICK: Duration = Duration::from_millis(20);
/// When idle, how often the writer looks at the reopen flag.
pub const IDLE_TICK: Duration = Duration::from_millis(200);
/// The writer writes out what it gathered once it holds this much.
const BUFFER: usize = 64 * 1024;
/// At most one "write failed" line per this long (the counts go to the summary).
pub const ERROR_LINE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Apache/nginx combined log format, with proxy fields appended.
    Combined,
}

/// Why a line was not written: a fixed set (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was over its byte budget: the writer fell behind.
    QueueFull,
    /// The writer could not write it (the disk is full, an I/O error, stderr closed).
    WriteError,
}

impl DropReason {
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::WriteError];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteError => "write_error",
        }
    }
}

/// Lines dropped since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops {
    pub queue_full: u64,
    pub write_error: u64,
    /// The error of the last failed write.
    pub last_write_error: Option<String>,
}

/// One finished request, as `Proxy::logging` sees it.
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2`, `HTTP/1.0`.
    pub protocol: &'static str,
    /// 0 when no response was sent (the client went away first).
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    /// Time to the upstream's response header.
    pub upstream_time: Option<Duration>,
    pub upstream: Option<SocketAddr>,
    /// Route or redirect id.
    pub route: Option<&'a str>,
    /// `TLSv1.3`, `TLSv1.2`; `None` on the plain listener.
    pub tls: Option<&'a str>,
    pub alpn: Option<&'a str>,
    /// Why the proxy answered by itself (redirect, unknown host, ...), if it did.
    pub local: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

enum Msg {
    Line(Vec<u8>),
    /// Write out everything, then answer.
    Flush(mpsc::Sender<()>),
}

/// What the request path and the writer share.
#[derive(Default)]
struct Counters {
    /// Bytes of lines sent and not yet taken by the writer.
    queued: AtomicUsize,
    queue_full: AtomicU64,
    write_error: AtomicU64,
    last_write_error: Mutex<Option<String>>,
}

/// The request path's handle: formats and queues lines.
pub struct AccessLog {
    format: Format,
    tx: Sender<Msg>,
    queue_bytes: usize,
    counters: Arc<Counters>,
}

/// Where the writer thread writes.
enum Sink {
    Stderr,
    File { path: PathBuf, file: File },
}

static EXIT_FLUSH: OnceLock<Sender<Msg>> = OnceLock::new();
/// The process the writer thread runs in (0: none yet): only that one flushes at exit.
static WRITER_PID: AtomicU32 = AtomicU32::new(0);

/// Starts the writer thread when pingora starts its services.
pub struct WriterService(Mutex<Option<Writer>>);

impl WriterService {
    /// Starts the writer thread (once; later calls do nothing). pingora calls it through
    /// [`BackgroundService::start`]; benchmarks call it directly.
    pub fn spawn(&self) {
        let Some(writer) = certs::util::lock(&self.0).take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                WRITER_PID.store(std::process::id(), Ordering::Relaxed);
                writer.run()
            });
        if let Err(e) = spawned {
            tracing::error!("access log: cannot start the writer thread: {e}");
        }
    }
}

#[async_trait]
impl BackgroundService for WriterService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.spawn();
    }
}

impl AccessLog {
    /// Opens `file` (or takes stderr) and registers SIGUSR1; the returned service starts
    /// the writer. `queue_bytes`: how far (in bytes of lines) the writer may fall
    /// behind before lines are dropped. Fails when the file cannot be opened: checked
    /// before any port is bound.
    pub fn start(
        format: Format,
        file: Option<PathBuf>,
        queue_bytes: usize,
    ) -> anyhow::Result<(AccessLog, WriterService)> {
        let sink = match file {
            None => Sink::Stderr,
            Some(path) => {
                let file = open(&path).map_err(|e| {
                    anyhow::anyhow!("cannot open the access log {}: {e}", path.display())
                })?;
                Sink::File { path, file }
            }
        };
        let reopen = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, reopen.clone())
            .map_err(|e| anyhow::anyhow!("cannot handle SIGUSR1: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            sink,
            rx,
            reopen,
            counters: counters.clone(),
            pending: Vec::with_capacity(BUFFER),
            pending_lines: 0,
            cut_short: false,
            failing: false,
            last_error_line: None,
        };
        if EXIT_FLUSH.set(tx.clone()).is_ok() {
            // SAFETY: registers a plain `extern "C" fn` with no arguments.
            unsafe {
                libc::atexit(flush_at_exit);
            }
        }
        let log = AccessLog {
            format,
            tx,
            queue_bytes,
            counters,
        };
        Ok((log, WriterService(Mutex::new(Some(writer)))))
    }

    /// Formats and queues one line; never blocks.
    pub fn log(&self, e: &Entry<'_>) {
        let mut line = Vec::with_capacity(384);
        match self.format {
            Format::Json => write_json(&mut line, e, SystemTime::now()),
            Format::Combined => write_combined(&mut line, e, SystemTime::now()),
        }
        line.push(b'\n');
        // What the line holds in memory until the writer takes it.
        let cost = line.capacity();
        let c = &self.counters;
        if c.queued.fetch_add(cost, Ordering::Relaxed) + cost > self.queue_bytes {
            c.queued.fetch_sub(cost, Ordering::Relaxed);
            c.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(Msg::Line(line)).is_err() {
            // No writer (it could not start): never written.
            c.queued.fetch_sub(cost, Ordering::Relaxed);
            c.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped since start, by reason.
    pub fn drops(&self) -> Drops {
        let c = &self.counters;
        Drops {
            queue_full: c.queue_full.load(Ordering::Relaxed),
            write_error: c.write_error.load(Ordering::Relaxed),
            last_write_error: certs::util::lock(&c.last_write_error).clone(),
        }
    }

    /// Lines dropped since start, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        let d = self.drops();
        d.queue_full + d.write_error
    }

    /// Writes out everything queued so far (waits at most `within`).
    pub fn flush(&self, within: Duration) {
        flush_through(&self.tx, within);
    }
}

fn flush_through(tx: &Sender<Msg>, within: Duration) {
    let (ack_tx, ack_rx) = mpsc::channel();
    if tx.send(Msg::Flush(ack_tx)).is_ok() {
        let _ = ack_rx.recv_timeout(within);
    }
}

extern "C" fn flush_at_exit() {
    if WRITER_PID.load(Ordering::Relaxed) != std::process::id() {
        return; // e.g. the parent of a --daemon fork: no writer here
    }
    if let Some(tx) = EXIT_FLUSH.get() {
        flush_through(tx, Duration::from_secs(2));
    }
}

fn open(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        // Client addresses: not for every local user.
        .mode(0o640)
        .open(path)
}

pub struct Writer {
    sink: Sink,
    rx: Receiver<Msg>,
    reopen: Arc<AtomicBool>,
    counters: Arc<Counters>,
    /// Whole lines gathered, not yet written.
    pending: Vec<u8>,
    pending_lines: u64,
    /// A failed write left part of a line in the file: end it before the next one.
    cut_short: bool,
    /// The last write failed.
    failing: bool,
    last_error_line: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        let mut unflushed_since: Option<Instant> = None;
        loop {
            let first = if unflushed_since.is_some() {
                std::thread::sleep(BATCH_TICK);
                match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.recv_timeout(IDLE_TICK) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut acks = Vec::new();
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    Msg::Line(line) => {
                        self.counters
                            .queued
                            .fetch_sub(line.capacity(), Ordering::Relaxed);
                        self.pending.extend_from_slice(&line);
                        self.pending_lines += 1;
                        if self.pending.len() >= BUFFER {
                            self.write_out();
                        }
                        unflushed_since.get_or_insert_with(Instant::now);
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
                next = self.rx.try_recv().ok();
            }
            let reopen = self.reopen.swap(false, Ordering::Relaxed);
            let due = unflushed_since.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
            if due || reopen || !acks.is_empty() {
                self.write_out();
                unflushed_since = None;
            }
            if reopen {
                self.reopen_file();
            }
            for ack in acks {
                let _ = ack.send(());
            }
        }
        self.write_out();
    }

    /// Writes the gathered lines; those it cannot write are counted as dropped.
    fn write_out(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let result = match &mut self.sink {
            Sink::Stderr => {
                write_lines(&mut io::stderr().lock(), &self.pending, &mut self.cut_short)
            }
            Sink::File { file, .. } => write_lines(file, &self.pending, &mut self.cut_short),
        };
        match result {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!("access log: writing again");
                }
            }
            Err((e, written)) => {
                let done = self.pending[..written]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64;
                let lost = self.pending_lines - done;
                self.counters.write_error.fetch_add(lost, Ordering::Relaxed);
                *certs::util::lock(&self.counters.last_write_error) = Some(e.to_string());
                self.failing = true;
                if self
                    .last_error_line
                    .is_none_or(|t| t.elapsed() >= ERROR_LINE_EVERY)
                {
                    self.last_error_line = Some(Instant::now());
                    tracing::error!(
                        lines = lost,
                        "access log: write failed ({e}): lines are dropped and counted \
                         (proxyd_access_log_dropped_lines_total) until it works again"
                    );
                }
            }
        }
        self.pending.clear();
        self.pending_lines = 0;
    }

    fn reopen_file(&mut self) {
        let Sink::File { path, file } = &mut self.sink else {
            return;
        };
        match open(path) {
            Ok(new) => {
                *file = new;
                // A new file starts with a whole line.
                self.cut_short = false;
                tracing::info!(file = %path.display(), "access log reopened (SIGUSR1)");
            }
            Err(e) => tracing::error!(
                file = %path.display(),
                "access log: cannot reopen ({e}); still writing to the old file"
            ),
        }
    }
}

/// Writes `lines` (whole lines) to `w`, after a newline if the last write cut a line
/// short. On failure: the error and how many bytes of `lines` were written.
fn write_lines(
    w: &mut impl Write,
    lines: &[u8],
    cut_short: &mut bool,
) -> Result<(), (io::Error, usize)> {
    if *cut_short {
        write_all(w, b"\n").map_err(|(e, _)| (e, 0))?;
        *cut_short = false;
    }
    let r = write_all(w, lines);
    if let Err((_, written)) = &r {
        *cut_short = *written > 0 && lines[*written - 1] != b'\n';
    }
    r
}

/// `write_all` that tells how far it got.
fn write_all(w: &mut impl Write, buf: &[u8]) -> Result<(), (io::Error, usize)> {
    let mut off = 0;
    while off < buf.len() {
        match w.write(&buf[off..]) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), off)),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, off)),
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: Option<IpAddr>,
    host: &'a str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    protocol: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    upstream: Option<SocketAddr>,
    route: Option<&'a str>,
    tls: Option<&'a str>,
    alpn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<&'a str>,
    referer: Option<&'a str>,
    user_agent: Option<&'a str>,
}

fn ms(d: Duration) -> f64 {
    // Microsecond precision prints short: 0.355, not 0.35512300000000004.
    d.as_micros() as f64 / 1000.0
}

fn write_json(out: &mut Vec<u8>, e: &Entry<'_>, now: SystemTime) {
    let time = rfc3339(now);
    let line = JsonLine {
        time: &time,
        client: e.client,
        host: e.host,
        method: e.method,
        path: e.path,
        query: e.query,
        protocol: e.protocol,
        status: e.status,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        duration_ms: ms(e.duration),
        upstream_ms: e.upstream_time.map(ms),
        upstream: e.upstream,
        route: e.route,
        tls: e.tls,
        alpn: e.alpn,
        local: e.local,
        referer: e.referer,
        user_agent: e.user_agent,
    };
    // Serializing plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
}

/// `client - - [time] "request" status bytes "referer" "user-agent"`, then the proxy's
/// own fields: `"host" route duration_s upstream_s upstream tls alpn` (`-` when none).
fn write_combined(out: &mut Vec<u8>, e: &Entry<'_>, now: SystemTime) {
    let dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
    match e.client {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
    let _ = write!(out, " - - [{}] \"", clf_time(now));
    escaped(out, e.method);
    out.push(b' ');
    escaped(out, e.path);
    if let Some(q) = e.query {
        out.push(b'?');
        escaped(out, q);
    }
    let _ = write!(out, " {}\" {} {} \"", e.protocol, e.status, e.bytes_out);
    escaped(out, e.referer.unwrap_or("-"));
    out.extend_from_slice(b"\" \"");
    escaped(out, e.user_agent.unwrap_or("-"));
    out.extend_from_slice(b"\" \"");
    escaped(out, e.host);
    out.extend_from_slice(b"\" ");
    escaped(out, e.route.unwrap_or("-"));
    let _ = write!(out, " {:.3}", e.duration.as_secs_f64());
    match e.upstream_time {
        Some(d) => {
            let _ = write!(out, " {:.3}", d.as_secs_f64());
        }
        None => out.extend_from_slice(b" -"),
    }
    let upstream = e.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let _ = write!(out, " {upstream} {} {}", dash(e.tls), dash(e.alpn));
}

/// Like nginx: `"`, `\`, control and non-ASCII bytes as `\xHH`, so a line stays one line
/// and a quoted field stays one field.
fn escaped(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// `2025-05-01T12:34:56.789Z` (milliseconds truncated, UTC).
fn rfc3339(t: SystemTime) -> String {
    const FORMAT: &[FormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    utc(t).format(FORMAT).unwrap_or_default()
}

/// `01/May/2025:12:34:56 +0000`
fn clf_time(t: SystemTime) -> String {
    const FORMAT: &[FormatItem<'static>] =
        format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    utc(t).format(FORMAT).unwrap_or_default()
}

/// `t` in UTC; a time before 1970 (a clock gone wrong) as 1970, like the log always did.
fn utc(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t.max(UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn times_in_both_formats() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day of a century leap year), 23:59:59.
        assert_eq!(rfc3339(at(951_868_799, 999)), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339(at(1_735_689_600, 5)), "2025-01-01T00:00:00.005Z");
        assert_eq!(clf_time(at(1_740_787_200, 0)), "01/Mar/2025:00:00:00 +0000");
        assert_eq!(clf_time(at(4_133_980_799, 0)), "31/Dec/2100:23:59:59 +0000");
        // 2100 is not a leap year.
        assert_eq!(clf_time(at(4_107_542_400, 0)), "01/Mar/2100:00:00:00 +0000");
    }

    fn entry() -> Entry<'static> {
        Entry {
            client: Some("2001:db8::1".parse().unwrap()),
            host: "cloud.example.org",
            method: "GET",
            path: "/a \"b\"",
            query: Some("x=1"),
            protocol: "HTTP/2",
            status: 200,
            bytes_in: 0,
            bytes_out: 1234,
            duration: Duration::from_micros(12_345),
            upstream_time: Some(Duration::from_micros(10_001)),
            upstream: Some("10.0.0.5:8080".parse().unwrap()),
            route: Some("cloud.example.org/"),
            tls: Some("TLSv1.3"),
            alpn: Some("h2"),
            local: None,
            referer: None,
            user_agent: Some("curl/8.0\n"),
        }
    }

    #[test]
    fn json_line_has_every_field() {
        let mut out = Vec::new();
        write_json(&mut out, &entry(), at(1_735_689_600, 0));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2025-01-01T00:00:00.000Z");
        assert_eq!(v["client"], "2001:db8::1");
        assert_eq!(v["path"], "/a \"b\"");
        assert_eq!(v["query"], "x=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["upstream_ms"], 10.001);
        assert_eq!(v["upstream"], "10.0.0.5:8080");
        assert_eq!(v["route"], "cloud.example.org/");
        assert_eq!(v["tls"], "TLSv1.3");
        assert_eq!(v["alpn"], "h2");
        assert!(v["referer"].is_null());
        assert!(v.get("local").is_none());
        assert!(!out.contains(&b'\n'));
    }

    /// Accepts `room` bytes, then fails like a full disk.
    struct Full {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.got.len());
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_short_by_a_full_disk_is_ended_before_the_next() {
        let mut disk = Full {
            got: Vec::new(),
            room: 4,
        };
        let mut cut = false;
        let (e, written) = write_lines(&mut disk, b"a\nbb\nccc\n", &mut cut).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(written, 4);
        assert!(cut);
        disk.room = 100;
        write_lines(&mut disk, b"d\n", &mut cut).unwrap();
        assert_eq!(disk.got, b"a\nbb\nd\n");
        assert!(!cut);
        // A write that fails on a line boundary leaves nothing to end.
        let mut disk = Full {
            got: Vec::new(),
            room: 2,
        };
        assert!(write_lines(&mut disk, b"a\nbb\n", &mut cut).is_err());
        assert!(!cut);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_every_line_is_counted() {
        // No writer runs: lines stay queued until the budget is spent.
        let budget = 16 * 1024;
        let (log, _writer) = AccessLog::start(Format::Json, None, budget).unwrap();
        let sent = 200;
        for _ in 0..sent {
            log.log(&entry());
        }
        let queued = log.counters.queued.load(Ordering::Relaxed);
        assert!(queued <= budget, "{queued} bytes queued");
        let per_line = queued as u64 / (sent - log.drops().queue_full);
        assert!(per_line >= 384, "{per_line} bytes a line");
        assert!(
            queued as u64 + per_line > budget as u64,
            "room was left: {queued}"
        );
        assert_eq!(log.drops().write_error, 0);
        assert_eq!(log.dropped_total(), log.drops().queue_full);
        assert!(log.drops().queue_full > 0);
    }

    #[test]
    fn combined_line_is_one_line_with_quoted_fields_escaped() {
        let mut out = Vec::new();
        write_combined(&mut out, &entry(), at(1_735_689_600, 0));
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "2001:db8::1 - - [01/Jan/2025:00:00:00 +0000] \"GET /a \\x22b\\x22?x=1 HTTP/2\" 200 1234 \
             \"-\" \"curl/8.0\\x0A\" \"cloud.example.org\" cloud.example.org/ 0.012 0.010 \
             10.0.0.5:8080 TLSv1.3 h2"
        );
    }
}
