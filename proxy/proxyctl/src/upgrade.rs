//! `proxyctl upgrade`: a new proxyd binary takes over from the running one, and the
//! running one is told to stop only once the new one serves. systemd's `ExecReload`.
//!
//! 1. The daemon's flags are `PROXYD_ARGS` (the unit's `EnvironmentFile`, the variable
//!    its `ExecStart` expands), split into words as systemd splits `$PROXYD_ARGS`
//!    (whitespace, '...' and "..." quoting, backslash).
//!    `--pid-file`, `--admin-socket` and `--upgrade-socket` are read from them.
//! 2. The running daemon is the PID in `--pid-file`, and must be the process answering
//!    on `--admin-socket`.
//! 3. With `--reload-if-unchanged`, when it runs this binary with these flags, this is a
//!    routes reload (`POST /v1/reload`) and nothing else.
//! 4. The new binary starts with `--upgrade --staging-admin-socket <admin socket>.upgrade`
//!    and the flags, in a session of its own, writing to our stdout and stderr (the
//!    journal). When it waits on `--upgrade-socket`, the old daemon sends it copies of
//!    its listening sockets and keeps serving (`POST /v1/upgrade/handover`): both accept
//!    on the same sockets for a moment.
//! 5. Once the new daemon answers `GET /v1/health/ready` on its staging admin socket:
//!    its admin socket is renamed over `--admin-socket`, its PID written to `--pid-file`
//!    (systemd reads it after a successful reload), then the old daemon gets SIGTERM: it
//!    stops accepting and finishes its requests within its grace period.
//!
//! Any failure before step 5 (the new binary exits, fails on a flag or the store, is not
//! ready within `--ready-timeout`, this command gets SIGINT, SIGTERM or SIGHUP): the new process is stopped by PID (its process group)
//! (SIGKILL while it holds no socket; SIGTERM, a graceful stop, once it may be serving),
//! the PID file and the admin socket are left alone, the old daemon never noticed, and
//! the exit status is 1 with why.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use admin_api::{ErrorReply, HandoverReply, Readiness, Request, Status};

use crate::client::{self, CallError};
use crate::json_text;
use crate::{output, print_json, Cli, Outcome};

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The new proxyd binary.
    #[arg(
        long,
        env = "PROXYD_BIN",
        default_value = "/usr/bin/proxyd",
        value_name = "PATH"
    )]
    binary: PathBuf,

    /// When the running daemon already runs BINARY with PROXYD_ARGS, re-read its routes
    /// file instead (what `systemctl reload` means then).
    #[arg(long)]
    reload_if_unchanged: bool,

    /// Seconds the new daemon gets, from its start, to take the listeners and answer its
    /// readiness check; then it is stopped and the old one keeps serving.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    ready_timeout: u64,

    /// Seconds a new daemon that may already serve requests gets to finish them when
    /// the upgrade fails (SIGTERM), before SIGKILL.
    #[arg(long, default_value_t = 40, value_name = "SECONDS")]
    stop_timeout: u64,
}

/// The flags `proxyctl upgrade` adds itself (removed from PROXYD_ARGS and from the
/// running daemon's command line before the two are compared).
const DAEMON_FLAGS: [&str; 4] = ["-d", "--daemon", "-u", "--upgrade"];
const STAGING_FLAG: &str = "--staging-admin-socket";

/// What the upgrade needs from the daemon's flags (proxyd's defaults otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DaemonPaths {
    pid_file: PathBuf,
    admin_socket: PathBuf,
    upgrade_socket: PathBuf,
}

impl DaemonPaths {
    fn from_args(args: &[String], cwd: &Path) -> Result<DaemonPaths> {
        let value = |flag: &str, default: &str| -> Result<PathBuf> {
            let mut found = None;
            let mut it = args.iter();
            while let Some(a) = it.next() {
                if a == flag {
                    found = Some(
                        it.next()
                            .ok_or_else(|| anyhow!("PROXYD_ARGS: {flag} without a value"))?
                            .clone(),
                    );
                } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                    found = Some(v.to_owned());
                }
            }
            // proxyd makes relative paths absolute against its working directory, which
            // is ours for the new daemon.
            Ok(cwd.join(found.as_deref().unwrap_or(default)))
        };
        Ok(DaemonPaths {
            pid_file: value("--pid-file", "/run/proxyd/proxyd.pid")?,
            admin_socket: value("--admin-socket", "/run/proxyd/admin.sock")?,
            upgrade_socket: value("--upgrade-socket", "/run/proxyd/upgrade.sock")?,
        })
    }

    /// Where the new daemon serves its admin API until it takes over.
    fn staging_socket(&self) -> PathBuf {
        let mut s = self.admin_socket.clone().into_os_string();
        s.push(".upgrade");
        PathBuf::from(s)
    }
}

/// `$PROXYD_ARGS` split into words as systemd splits an unbraced variable on a command
/// line: at whitespace, except inside '...' or "..." (the quotes are removed), and a
/// backslash takes the next character as it is. An unterminated quote or a trailing
/// backslash is refused (systemd would guess).
fn split_like_systemd(raw: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', _) => {
                let next = chars
                    .next()
                    .ok_or_else(|| anyhow!("PROXYD_ARGS ends with a backslash"))?;
                word.get_or_insert_with(String::new).push(next);
            }
            (c, Some(q)) if c == q => quote = None,
            (c, Some(_)) => word.get_or_insert_with(String::new).push(c),
            ('\'' | '"', None) => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (c, None) if c.is_whitespace() => words.extend(word.take()),
            (c, None) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(q) = quote {
        bail!("PROXYD_ARGS: a {q} is not closed: {raw}");
    }
    words.extend(word);
    Ok(words)
}

/// The daemon's flags as the unit passes them, minus the ones this command sets.
fn daemon_args(raw: &str) -> Result<Vec<String>> {
    let args = split_like_systemd(raw)?;
    if args
        .iter()
        .any(|a| a == STAGING_FLAG || a.starts_with(&format!("{STAGING_FLAG}=")))
    {
        bail!("PROXYD_ARGS must not set {STAGING_FLAG}: proxyctl upgrade sets it");
    }
    Ok(comparable(args.into_iter()))
}

/// Flags without the ones an upgrade adds, for comparing with a running daemon's.
fn comparable(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if DAEMON_FLAGS.contains(&a.as_str()) || a.starts_with(&format!("{STAGING_FLAG}=")) {
            continue;
        }
        if a == STAGING_FLAG {
            args.next();
            continue;
        }
        out.push(a);
    }
    out
}

/// `proxyctl upgrade`.
pub fn run(cli: &Cli, opts: &UpgradeArgs) -> Result<Outcome> {
    let report = |outcome: Outcome, v: serde_json::Value, line: String| -> Result<Outcome> {
        if cli.json {
            output(print_json(&v))?;
        } else if outcome == Outcome::Ok {
            output(writeln!(std::io::stdout(), "{line}"))?;
        } else {
            output(writeln!(std::io::stderr(), "proxyctl upgrade: {line}"))?;
        }
        Ok(outcome)
    };
    let plan = match Plan::new(opts) {
        Ok(plan) => plan,
        Err(e) => {
            return report(
                Outcome::Failed,
                json!({"ok": false, "error": format!("{e:#}")}),
                format!("{e:#}"),
            )
        }
    };
    match plan.execute(cli, opts) {
        Ok(Done::Upgraded { old, new }) => report(
            Outcome::Ok,
            json!({"ok": true, "action": "upgraded", "old_pid": old, "new_pid": new,
                   "binary": opts.binary.display().to_string()}),
            format!(
                "upgraded: pid {new} ({}) serves; pid {old} finishes its requests and exits",
                opts.binary.display()
            ),
        ),
        Ok(Done::Reloaded(outcome)) => Ok(outcome),
        Err(Failure { old, code, msg }) => {
            let line = match old {
                Some(old) => format!("failed, pid {old} keeps serving: {msg}"),
                None => format!("failed: {msg}"),
            };
            report(
                code,
                json!({"ok": false, "old_pid": old, "error": msg}),
                line,
            )
        }
    }
}

enum Done {
    Upgraded { old: u32, new: u32 },
    Reloaded(Outcome),
}

struct Failure {
    /// The daemon that keeps serving, when there is one.
    old: Option<u32>,
    code: Outcome,
    msg: String,
}

fn fail<T>(old: Option<u32>, msg: impl Into<String>) -> std::result::Result<T, Failure> {
    Err(Failure {
        old,
        code: Outcome::Failed,
        msg: msg.into(),
    })
}

struct Plan {
    args: Vec<String>,
    paths: DaemonPaths,
}

impl Plan {
    fn new(opts: &UpgradeArgs) -> Result<Plan> {
        let raw = std::env::var("PROXYD_ARGS").map_err(|_| {
            anyhow!(
                "PROXYD_ARGS is not set: it holds the daemon's flags (the unit reads it from \
                 /etc/proxyd/proxyd.env); run this through `systemctl reload proxyd`, or set it"
            )
        })?;
        let args = daemon_args(&raw)?;
        let cwd = std::env::current_dir().context("current directory")?;
        let paths = DaemonPaths::from_args(&args, &cwd)?;
        if !opts.binary.is_file() {
            bail!("no new binary at {}", opts.binary.display());
        }
        Ok(Plan { args, paths })
    }

    fn execute(&self, cli: &Cli, opts: &UpgradeArgs) -> std::result::Result<Done, Failure> {
        let p = &self.paths;
        // One upgrade at a time (systemd runs one reload at a time; people may not).
        let lock_path = sibling(&p.pid_file, ".upgrade.lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .or_else(|e| fail(None, format!("cannot open {}: {e}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return fail(
                None,
                format!(
                    "another proxyctl upgrade is running (it holds {})",
                    lock_path.display()
                ),
            );
        }

        let old = read_pid(&p.pid_file).or_else(|e| fail(None, e))?;
        if !alive(old) {
            return fail(
                None,
                format!(
                    "pid {old} from {} is not running: nothing to upgrade (start proxyd)",
                    p.pid_file.display()
                ),
            );
        }
        let timeout = Duration::from_secs(cli.timeout);
        let status = match call_old::<Status>(old, &p.admin_socket, &Request::Status, timeout)? {
            (_, Ok(status)) => status,
            (code, Err(e)) => {
                return fail(
                    Some(old),
                    format!("pid {old} did not give its status ({code}): {}", e.error),
                )
            }
        };
        if status.pid != old {
            return fail(
                Some(old),
                format!(
                    "{} says pid {old}, but pid {} answers on {}; fix the PID file or the flags",
                    p.pid_file.display(),
                    status.pid,
                    p.admin_socket.display()
                ),
            );
        }

        let running_exe = std::fs::read_link(format!("/proc/{old}/exe")).ok();
        let new_exe = std::fs::canonicalize(&opts.binary).ok();
        let same_binary = running_exe.is_some() && running_exe == new_exe;
        let same_args = running_args(old).is_some_and(|a| a == self.args);
        if opts.reload_if_unchanged && same_binary && same_args {
            eprintln!(
                "proxyctl upgrade: pid {old} runs {} with these flags: reloading its routes",
                opts.binary.display()
            );
            return crate::reload_at(cli, &p.admin_socket, Request::Reload)
                .map(Done::Reloaded)
                .or_else(|e| fail(Some(old), format!("{e:#}")));
        }
        eprintln!(
            "proxyctl upgrade: pid {old} runs {}{}; starting {}",
            running_exe
                .as_deref()
                .map_or("an unknown binary".into(), |e| e.display().to_string()),
            if same_args { "" } else { " with other flags" },
            opts.binary.display()
        );

        // An upgrade socket left by an earlier attempt must not pass for the new daemon
        // waiting on it. Then ask the old daemon whether it can hand over at all: with
        // nobody waiting it says so (409) at once; one older than the handover has no
        // such endpoint (404), and must be restarted once.
        remove_if_exists(&p.upgrade_socket).or_else(|e| fail(Some(old), e))?;
        match call_old::<HandoverReply>(old, &p.admin_socket, &Request::Handover, timeout)? {
            (409, _) => {}
            (404, _) => {
                return fail(
                    Some(old),
                    format!(
                        "the running proxyd (pid {old}, version {}) cannot hand its sockets over \
                         without stopping (no /v1/upgrade/handover); restart it once \
                         (`systemctl restart proxyd`), later upgrades keep every connection",
                        json_text(&status.version)
                    ),
                )
            }
            (code, reply) => {
                return fail(
                    Some(old),
                    format!(
                        "pid {old} refused a handover ({code}): {}",
                        json_text(&handover_error(&reply))
                    ),
                )
            }
        }

        let staging = p.staging_socket();
        remove_if_exists(&staging).or_else(|e| fail(Some(old), e))?;
        let mut cmd = Command::new(&opts.binary);
        cmd.arg("--upgrade")
            .arg(STAGING_FLAG)
            .arg(&staging)
            .args(&self.args)
            .stdin(Stdio::null());
        // A session of its own, as a daemon: it outlives this command, and its process
        // group is what a failed upgrade stops. The umask of pingora's daemon mode.
        // SAFETY: setsid and umask are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::umask(0o007);
                Ok(())
            });
        }
        // Interrupted (Ctrl-C, SIGTERM, the terminal gone) while the new daemon is
        // undecided: stop it as on any failure, rather than leave it running on in a
        // session of its own, maybe beside the old one on the shared sockets.
        interrupt::catch();
        let child = cmd.spawn().or_else(|e| {
            fail(
                Some(old),
                format!("cannot start {}: {e}", opts.binary.display()),
            )
        })?;
        let mut new = NewDaemon {
            child,
            handed_over: false,
            staging: staging.clone(),
            upgrade_socket: p.upgrade_socket.clone(),
            stop_timeout: Duration::from_secs(opts.stop_timeout),
        };
        let ready_timeout = Duration::from_secs(opts.ready_timeout);
        let new_pid = match self.wait_ready(&mut new, old, ready_timeout, timeout) {
            Ok(pid) => pid,
            Err(msg) => {
                let stopped = new.stop();
                return fail(Some(old), format!("{msg}{stopped}"));
            }
        };

        // Take over: admin socket, then PID file (what systemd reads after the reload),
        // then the old daemon stops.
        let pid_tmp = sibling(&p.pid_file, ".upgrade-tmp");
        let taken = std::fs::write(&pid_tmp, format!("{new_pid}\n"))
            .map_err(|e| format!("cannot write {}: {e}", pid_tmp.display()))
            .and_then(|()| {
                std::fs::rename(&staging, &p.admin_socket).map_err(|e| {
                    format!(
                        "cannot move {} over {}: {e}",
                        staging.display(),
                        p.admin_socket.display()
                    )
                })
            });
        if let Err(msg) = taken {
            let _ = std::fs::remove_file(&pid_tmp);
            let stopped = new.stop();
            return fail(Some(old), format!("{msg}{stopped}"));
        }
        if let Err(e) = std::fs::rename(&pid_tmp, &p.pid_file) {
            // The new daemon owns the admin socket now: keep it, say what is wrong.
            return Err(Failure {
                old: None,
                code: Outcome::Failed,
                msg: format!(
                    "pid {new_pid} serves and owns {}, but {} could not be written ({e}); \
                     pid {old} still runs: write {new_pid} into the PID file, then `kill -TERM {old}`",
                    p.admin_socket.display(),
                    p.pid_file.display()
                ),
            });
        }
        // SAFETY: kill(2); `old` was checked above to be the daemon answering on the
        // admin socket.
        unsafe {
            libc::kill(old as libc::pid_t, libc::SIGTERM);
        }
        new.leave_running();
        Ok(Done::Upgraded { old, new: new_pid })
    }

    /// Hand the sockets over once the new daemon waits for them, then wait for its
    /// readiness. Returns the PID that answers (the new daemon, or a process of its
    /// group when BINARY is a wrapper that forks).
    fn wait_ready(
        &self,
        new: &mut NewDaemon,
        old: u32,
        ready_timeout: Duration,
        timeout: Duration,
    ) -> std::result::Result<u32, String> {
        let p = &self.paths;
        let deadline = Instant::now() + ready_timeout;
        let pid = new.child.id();
        let mut last = String::from("it did not start waiting for the listeners");
        // What its readiness check last said: kept when a later call only times out.
        let mut said = false;
        loop {
            if let Some(sig) = interrupt::caught() {
                return Err(format!("interrupted by signal {sig}"));
            }
            match new.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "the new proxyd (pid {pid}) exited ({status}) before it was ready; \
                         its messages are above"
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot watch the new proxyd (pid {pid}): {e}")),
            }
            if !new.handed_over {
                if p.upgrade_socket.exists() {
                    // From here on, it may hold (and serve on) the listeners.
                    new.handed_over = true;
                    match client::request::<HandoverReply>(
                        &p.admin_socket,
                        &Request::Handover,
                        timeout,
                    ) {
                        Ok((200, Ok(HandoverReply::Sent { sent, .. }))) => {
                            eprintln!(
                                "proxyctl upgrade: pid {old} handed {} to pid {pid}, and keeps serving",
                                json_text(&sent)
                            );
                            last = "it took the listeners but did not answer its readiness check"
                                .into();
                        }
                        Ok((code, reply)) => {
                            new.handed_over = false;
                            return Err(format!(
                                "pid {old} did not hand its sockets over ({code}): {}",
                                json_text(&handover_error(&reply))
                            ));
                        }
                        Err(e) => return Err(format!("handover by pid {old}: {e}")),
                    }
                }
            } else {
                // Each call may run past the deadline by up to 1 s (a loaded machine).
                let left = deadline.saturating_duration_since(Instant::now());
                let t = left.clamp(Duration::from_secs(1), Duration::from_secs(2));
                match client::request::<Readiness>(&new.staging, &Request::Ready, t) {
                    Ok((200, Ok(r))) if r.ready => {
                        match client::request::<Status>(&new.staging, &Request::Status, t) {
                            Ok((200, Ok(s))) => {
                                let answering = s.pid;
                                if answering == pid || process_group(answering) == Some(pid) {
                                    return Ok(answering);
                                }
                                said = true;
                                last = format!(
                                    "pid {answering}, not the new proxyd, answers on {}",
                                    new.staging.display()
                                );
                            }
                            Ok((code, _)) => last = format!("its status answered {code}"),
                            Err(e) if !said => last = e.to_string(),
                            Err(_) => {}
                        }
                    }
                    Ok((_, r)) => {
                        said = true;
                        last = match r {
                            Ok(r) => format!("not ready: {}", json_text(&r.problems)),
                            Err(e) => format!("not ready: {}", e.error),
                        };
                    }
                    Err(CallError::NotRunning(_)) if !said => {
                        last = format!(
                            "it took the listeners but its admin API does not answer on {}",
                            new.staging.display()
                        );
                    }
                    Err(e) if !said => last = e.to_string(),
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the new proxyd (pid {pid}) was not ready within {}s (--ready-timeout): {last}",
                    ready_timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP recorded instead of ending `proxyctl upgrade` at once.
mod interrupt {
    use std::sync::atomic::{AtomicI32, Ordering};

    static CAUGHT: AtomicI32 = AtomicI32::new(0);

    extern "C" fn record(sig: libc::c_int) {
        CAUGHT.store(sig, Ordering::SeqCst);
    }

    pub fn catch() {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only stores into an atomic (async-signal-safe).
            unsafe {
                libc::signal(
                    sig,
                    record as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
        }
    }

    pub fn caught() -> Option<i32> {
        Some(CAUGHT.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }
}

/// The new daemon while the upgrade is undecided.
struct NewDaemon {
    child: Child,
    /// It may hold the listeners (and serve on them).
    handed_over: bool,
    staging: PathBuf,
    upgrade_socket: PathBuf,
    stop_timeout: Duration,
}

impl NewDaemon {
    /// Stop it and everything it started (its process group), and say how (nothing
    /// when it had exited by itself).
    fn stop(&mut self) -> String {
        let pid = self.child.id();
        let group = -(pid as libc::pid_t);
        let running = self.child.try_wait().ok().flatten().is_none();
        let how = if !running {
            // SAFETY: kill(2) on the process group this command created (setsid): what
            // a wrapper may have left behind.
            unsafe { libc::kill(group, libc::SIGKILL) };
            String::new()
        } else if self.handed_over {
            // It may be serving requests on the shared sockets: a graceful stop, like the
            // old daemon's after a good upgrade.
            // SAFETY: kill(2) on the process group this command created (setsid).
            unsafe { libc::kill(group, libc::SIGTERM) };
            let until = Instant::now() + self.stop_timeout;
            loop {
                let _ = self.child.try_wait();
                if !group_alive(pid) {
                    break format!(
                        "; stopped the new proxyd (pid {pid}, SIGTERM: its requests finished)"
                    );
                }
                if Instant::now() >= until {
                    // SAFETY: kill(2) on the process group this command created.
                    unsafe { libc::kill(group, libc::SIGKILL) };
                    break format!(
                        "; stopped the new proxyd (pid {pid}; SIGKILL after {}s of SIGTERM)",
                        self.stop_timeout.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            // SAFETY: as above; it holds no listener yet, nothing to drain.
            unsafe { libc::kill(group, libc::SIGKILL) };
            format!("; stopped the new proxyd (pid {pid})")
        };
        let _ = self.child.wait();
        // What the new binary started (a wrapper's children) goes too: SIGKILL whatever
        // of the group is left, and wait until nothing is (bounded; a zombie is gone once
        // its new parent reaps it).
        // SAFETY: kill(2) on the process group this command created (setsid).
        unsafe { libc::kill(group, libc::SIGKILL) };
        let until = Instant::now() + Duration::from_secs(5);
        while group_alive(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&self.staging);
        let _ = std::fs::remove_file(&self.upgrade_socket);
        how
    }

    /// The upgrade succeeded: it runs on after this command.
    fn leave_running(self) {
        std::mem::forget(self.child);
    }
}

fn call_old<T: serde::de::DeserializeOwned>(
    old: u32,
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> std::result::Result<(u16, std::result::Result<T, ErrorReply>), Failure> {
    client::request(socket, request, timeout).map_err(|e| Failure {
        old: None,
        code: Outcome::Exit(e.exit_code()),
        msg: format!("cannot ask the running proxyd (pid {old}): {e}"),
    })
}

/// Why a handover was refused (the daemon's error, from either reply type).
fn handover_error(reply: &std::result::Result<HandoverReply, ErrorReply>) -> Option<String> {
    match reply {
        Ok(HandoverReply::Refused { error, .. }) => Some(error.clone()),
        Ok(HandoverReply::Sent { .. }) => None,
        Err(e) => Some(e.error.clone()),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_pid(path: &Path) -> std::result::Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the PID file {}: {e} (is proxyd running? its --pid-file?)",
            path.display()
        )
    })?;
    text.trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("{} holds no PID: {:?}", path.display(), text.trim()))
}

fn alive(pid: u32) -> bool {
    // Not a zombie either: /proc/PID/stat's state.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A process of group `pgid` still runs (not a zombie), from `/proc`.
fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| alive(pid) && process_group(pid) == Some(pgid))
}

/// The process group of a process (`/proc/PID/stat`, field 5).
fn process_group(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The running daemon's flags, comparable with PROXYD_ARGS.
fn running_args(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut parts = raw
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    parts.next()?; // argv[0]
    let mut args: Vec<String> = parts.collect();
    if args.last().is_some_and(String::is_empty) {
        args.pop();
    }
    Some(comparable(args.into_iter()))
}

fn remove_if_exists(path: &Path) -> std::result::Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn paths_come_from_the_daemon_flags_or_its_defaults() {
        let cwd = Path::new("/srv");
        let p = DaemonPaths::from_args(&[], cwd).unwrap();
        assert_eq!(p.pid_file, Path::new("/run/proxyd/proxyd.pid"));
        assert_eq!(p.admin_socket, Path::new("/run/proxyd/admin.sock"));
        assert_eq!(p.upgrade_socket, Path::new("/run/proxyd/upgrade.sock"));
        assert_eq!(
            p.staging_socket(),
            Path::new("/run/proxyd/admin.sock.upgrade")
        );
        let p = DaemonPaths::from_args(
            &strings(
                "--routes r.toml --pid-file run/p.pid --admin-socket=/a/s --upgrade-socket /u",
            ),
            cwd,
        )
        .unwrap();
        assert_eq!(p.pid_file, Path::new("/srv/run/p.pid"));
        assert_eq!(p.admin_socket, Path::new("/a/s"));
        assert_eq!(p.upgrade_socket, Path::new("/u"));
        assert!(DaemonPaths::from_args(&strings("--pid-file"), cwd).is_err());
    }

    /// systemd unquotes `$PROXYD_ARGS` when it splits it for ExecStart: the upgrade must
    /// start the new daemon with the very same words.
    #[test]
    fn proxyd_args_are_split_as_systemd_splits_them() {
        assert_eq!(
            split_like_systemd(
                " --access-log '/var/log/proxyd/access log' --routes \"/etc/p d/r.toml\"\t-x a\\ b "
            )
            .unwrap(),
            [
                "--access-log",
                "/var/log/proxyd/access log",
                "--routes",
                "/etc/p d/r.toml",
                "-x",
                "a b"
            ]
        );
        assert_eq!(
            split_like_systemd("a'b c'd \"\" e\\\"f '\\'' ").unwrap(),
            ["ab cd", "", "e\"f", "'"]
        );
        assert!(split_like_systemd("--routes 'r.toml").is_err());
        assert!(split_like_systemd("--routes r.toml\\").is_err());
        assert_eq!(
            daemon_args("--access-log '/l/a b' -d").unwrap(),
            ["--access-log", "/l/a b"]
        );
    }

    #[test]
    fn flags_the_upgrade_sets_are_left_out_of_the_comparison() {
        assert_eq!(
            daemon_args("  --routes r.toml -d --metrics 127.0.0.1:9\t--daemon -u ").unwrap(),
            strings("--routes r.toml --metrics 127.0.0.1:9")
        );
        // What a daemon started by an earlier upgrade shows in /proc/PID/cmdline.
        assert_eq!(
            comparable(
                strings("--upgrade --staging-admin-socket /a.upgrade --routes r.toml").into_iter()
            ),
            strings("--routes r.toml")
        );
        assert!(daemon_args("--staging-admin-socket /x").is_err());
        assert!(daemon_args("--staging-admin-socket=/x").is_err());
    }

    #[test]
    fn reads_its_own_command_line_and_process_group() {
        let me = std::process::id();
        assert!(running_args(me).is_some());
        assert!(process_group(me).is_some());
        assert!(alive(me));
        assert!(group_alive(process_group(me).unwrap()));
        // A child in a group of its own: gone (reaped) means its group is empty.
        let mut child = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!group_alive(pid));
        assert!(read_pid(Path::new("/nonexistent/proxyd.pid")).is_err());
    }
}
