//! Binary upgrade as systemd runs it (`tests::unit`): `proxyd --daemon $PROXYD_ARGS`, then
//! `systemctl reload` = `proxyctl upgrade --reload-if-unchanged`, with HTTP/1.1 and
//! HTTP/2 keep-alive traffic flowing the whole time. The old daemon is told to stop only
//! once the new one serves; a new one that cannot start, fails on the store, is too slow,
//! or never gets ready is stopped instead, and the old one serves on as if nothing had
//! happened: not one request fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::client::Sent;
use tests::unit::{alive, group_members, Unit};
use tests::{free_addr, locate_bin, wait_until, Alpn, Backend, Conn};

use crate::one_route;

/// Keep-alive clients (two HTTP/1.1, two HTTP/2) sending requests in a loop, each with an
/// id the backend remembers.
/// proxyd's keep-alive limit per HTTP/1.1 connection (`guard::KEEPALIVE_REQUESTS`).
const KEEPALIVE_REQUESTS: u32 = 1000;

struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    /// Requests that failed, by id, with why.
    errored: Arc<Mutex<Vec<(String, String)>>>,
    /// New connections that failed (the site was not there).
    connect_errors: Arc<Mutex<Vec<String>>>,
    /// Requests never written because their keep-alive connection had just been
    /// closed, by id, with why; each was sent again on a new connection.
    unsent: Arc<Mutex<Vec<(String, String)>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// How traffic went.
struct Tally {
    ok: u64,
    reconnects: u64,
    errored: Vec<(String, String)>,
    connect_errors: Vec<String>,
    unsent: Vec<(String, String)>,
}

impl Traffic {
    async fn start(unit: &Unit) -> Traffic {
        let https = unit.https_addr();
        let ca: Arc<str> = unit.ca_pem().into();
        let t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            reconnects: Arc::new(AtomicU64::new(0)),
            errored: Arc::new(Mutex::new(Vec::new())),
            connect_errors: Arc::new(Mutex::new(Vec::new())),
            unsent: Arc::new(Mutex::new(Vec::new())),
            workers: Vec::new(),
        };
        let mut t = t;
        for (w, alpn) in [Alpn::H1, Alpn::H1, Alpn::H2, Alpn::H2]
            .into_iter()
            .enumerate()
        {
            let (stop, ok, reconnects, errored, connect_errors, unsent, ca) = (
                t.stop.clone(),
                t.ok.clone(),
                t.reconnects.clone(),
                t.errored.clone(),
                t.connect_errors.clone(),
                t.unsent.clone(),
                ca.clone(),
            );
            t.workers.push(tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                // Requests on the current connection: the proxy closes an HTTP/1.1
                // connection after its 1000th (its keep-alive limit, like nginx's
                // keepalive_requests), which is no sign of an upgrade.
                let mut on_conn = 0u32;
                let mut n = 0u64;
                // A request the client never wrote (its connection was closed first),
                // sent again on a new connection under a new id.
                let mut again: Option<String> = None;
                while !stop.load(Ordering::Relaxed) || again.is_some() {
                    let Some(c) = conn.as_mut() else {
                        match Conn::https(https, &ca, "up.test", alpn).await {
                            Ok(c) => {
                                conn = Some(c);
                                on_conn = 0;
                            }
                            Err(e) => {
                                connect_errors.lock().unwrap().push(format!("{e:#}"));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        continue;
                    };
                    let id = match again.take() {
                        Some(id) => format!("{id}-again"),
                        None => {
                            n += 1;
                            format!("{w}-{n}")
                        }
                    };
                    let mut req = tests::client::request(
                        http::Method::GET,
                        "up.test",
                        "/",
                        tests::body::empty(),
                    );
                    req.headers_mut()
                        .insert(tests::backend::REQUEST_ID_HEADER, id.parse().unwrap());
                    match c.try_send(req).await {
                        Ok(Sent::NotSent(e)) => {
                            unsent.lock().unwrap().push((id.clone(), format!("{e:#}")));
                            again = Some(id);
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                        Ok(Sent::Answered(r)) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            on_conn += 1;
                            // A stopping daemon asks HTTP/1.1 clients to go elsewhere
                            // with `Connection: close` on its last response.
                            if r.header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                            {
                                // At 1000 answered (1 + 999 reuses) or 1001 (1 + 1000
                                // reuses): the limit, whichever way pingora counts it.
                                if on_conn < KEEPALIVE_REQUESTS {
                                    reconnects.fetch_add(1, Ordering::Relaxed);
                                }
                                conn = None;
                            }
                        }
                        Ok(Sent::Answered(r)) => errored
                            .lock()
                            .unwrap()
                            .push((id, format!("status {}", r.status))),
                        // HTTP/2: a stream the old daemon's graceful GOAWAY (NO_ERROR)
                        // refused was not processed (RFC 9113 6.8) and is sent again, as
                        // browsers do; assert_no_failure checks the upstream never got it.
                        Err(e) if format!("{e:#}").contains("not a result of an error") => {
                            unsent.lock().unwrap().push((id.clone(), format!("{e:#}")));
                            again = Some(id);
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                        Err(e) => {
                            errored.lock().unwrap().push((id, format!("{e:#}")));
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
            }));
        }
        t.flowing(100).await;
        t
    }

    /// Wait until `n` more requests have succeeded.
    async fn flowing(&self, n: u64) {
        let before = self.ok.load(Ordering::Relaxed);
        wait_until(
            "requests to flow",
            Duration::from_secs(20),
            Duration::from_millis(10),
            || async { (self.ok.load(Ordering::Relaxed) >= before + n).then_some(()) },
        )
        .await;
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        Tally {
            ok: self.ok.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            errored: self.errored.lock().unwrap().clone(),
            connect_errors: self.connect_errors.lock().unwrap().clone(),
            unsent: self.unsent.lock().unwrap().clone(),
        }
    }
}

impl Tally {
    /// The site was not disturbed at all: no failure, and no connection closed under
    /// a client (the new daemon never took a listener, the old one never stopped).
    fn assert_untouched(&self, site: &Backend) {
        self.assert_no_failure(site);
        assert!(
            self.unsent.is_empty(),
            "connections were closed: {:?}",
            self.unsent
        );
        assert_eq!(self.reconnects, 0, "connections were closed");
    }

    /// Not one request failed and no connection was refused: through a good upgrade,
    /// clients see nothing but `Connection: close` on HTTP/1.1 (the old daemon letting
    /// its connections go) and a graceful GOAWAY on HTTP/2, after which they connect to
    /// the new daemon.
    ///
    /// A request a client never wrote because the connection had been closed just
    /// before (HTTP/2: after the GOAWAY) is sent again on a new connection, as browsers
    /// and hyper-util's pool do, and counts as a failure only if the upstream got the
    /// first one (then its answer was lost).
    fn assert_no_failure(&self, site: &Backend) {
        eprintln!(
            "{} requests ok, {} reconnects, {} sent again: {:?}",
            self.ok,
            self.reconnects,
            self.unsent.len(),
            self.unsent
        );
        let lost: Vec<_> = self
            .unsent
            .iter()
            .filter(|(id, _)| site.saw_request(id))
            .collect();
        assert!(
            lost.is_empty(),
            "requests sent again had reached the upstream: {lost:?}"
        );
        assert!(
            self.errored.is_empty() && self.connect_errors.is_empty(),
            "requests failed: {:?}; connections failed: {:?}",
            self.errored,
            self.connect_errors
        );
    }
}

fn proxyd() -> PathBuf {
    locate_bin("proxyd", "PROXYD_BIN")
}

/// An executable shell script in `dir` (a stand-in for a new binary).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A new binary at another path (the running daemon's executable is not it, so
/// ExecReload upgrades): a wrapper that runs the one just built.
fn new_binary(dir: &Path) -> PathBuf {
    script(
        dir,
        "proxyd-new",
        &format!("exec '{}' \"$@\"", proxyd().display()),
    )
}

/// The unit as it was before the failed reload: same main PID in the PID file, which
/// still runs and answers the admin socket, and no upgrade left behind.
fn assert_old_in_charge(unit: &Unit, old: u32) {
    assert_eq!(unit.main_pid(), old, "systemd's main PID changed");
    assert_eq!(unit.read_pid_file(), Ok(old), "the PID file changed");
    assert!(alive(old), "the old daemon is gone");
    assert_eq!(
        unit.status_pid(),
        Some(u64::from(old)),
        "the admin socket is not answered by the old daemon"
    );
    let staging = unit.dir().join("admin.sock.upgrade");
    assert!(!staging.exists(), "{} left behind", staging.display());
}

async fn started(site: &Backend) -> Unit {
    Unit::builder(&one_route(&["up.test"], site, ""))
        .arg("--grace-period")
        .arg("2")
        .start()
        .await
}

/// The good path, as `systemctl reload` after a flag was added to the environment file:
/// the new daemon takes over (the flag is in force), the old one drains and exits, and
/// no request is lost. Then a reload with nothing changed only re-reads the routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_upgrade_under_traffic_loses_no_request() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;

    let metrics = free_addr();
    let mut args = unit.args().to_vec();
    args.extend(["--metrics".to_string(), metrics.to_string()]);
    let reload = unit.reload(&proxyd(), &args, &[]).await;
    assert!(reload.ok(), "ExecReload failed: {}", reload.output);
    let new = unit.main_pid();
    assert_ne!(new, old, "systemd still follows the old daemon");
    assert!(alive(new));
    assert!(
        reload.output.contains(&format!("pid {old} handed")),
        "{}",
        reload.output
    );
    assert_eq!(
        unit.status_pid(),
        Some(u64::from(new)),
        "the admin socket answers from the new daemon"
    );
    // The flag added to PROXYD_ARGS is in force.
    let m = tests::http_get(metrics, "metrics", "/metrics")
        .await
        .unwrap();
    assert_eq!(m.status, 200);
    assert!(String::from_utf8_lossy(&m.body).contains("proxyd_requests_total"));

    wait_until(
        "the old daemon to exit",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { (!alive(old)).then_some(()) },
    )
    .await;
    // The old daemon's exit took nothing of the new one's with it.
    assert_eq!(unit.read_pid_file(), Ok(new));
    assert_eq!(unit.status_pid(), Some(u64::from(new)));
    traffic.flowing(200).await;
    let tally = traffic.stop().await;
    tally.assert_no_failure(&site);
    assert!(
        tally.reconnects >= 1,
        "the old daemon never let its connections go"
    );

    // Nothing changed: a routes reload by the same daemon.
    let reload = unit.reload(&proxyd(), &args, &[]).await;
    assert!(reload.ok(), "{}", reload.output);
    assert!(
        reload.output.contains("reloading its routes"),
        "{}",
        reload.output
    );
    assert_eq!(unit.main_pid(), new);
}

/// A new binary that exits at once, and the real one refusing an unknown flag: each
/// time ExecReload fails with the new process's own message, and the old daemon, never
/// told anything, serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_to_a_binary_that_cannot_start_leaves_the_old_daemon_serving() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;

    let broken = script(
        unit.dir(),
        "proxyd-broken",
        "echo 'proxyd-broken: cannot start' >&2; exit 1",
    );
    let args = unit.args().to_vec();
    let reload = unit.reload(&broken, &args, &[]).await;
    assert_eq!(reload.status.code(), Some(1), "{}", reload.output);
    assert!(
        reload.output.contains("proxyd-broken: cannot start"),
        "{}",
        reload.output
    );
    assert!(
        reload.output.contains(&format!("pid {old} keeps serving"))
            && reload
                .output
                .contains("exited (exit status: 1) before it was ready"),
        "{}",
        reload.output
    );
    assert_old_in_charge(&unit, old);
    traffic.flowing(100).await;

    let mut args = unit.args().to_vec();
    args.push("--no-such-flag".into());
    let reload = unit.reload(&proxyd(), &args, &[]).await;
    assert_eq!(reload.status.code(), Some(1), "{}", reload.output);
    assert!(
        reload
            .output
            .contains("unexpected argument '--no-such-flag'"),
        "{}",
        reload.output
    );
    assert_old_in_charge(&unit, old);
    traffic.flowing(100).await;
    traffic.stop().await.assert_untouched(&site);
}

/// The new daemon finds the store's local CA key corrupt (the running one loaded it at
/// its start): it refuses to start, and the old daemon serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_whose_new_daemon_fails_on_the_store_leaves_the_old_daemon_serving() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;

    let key = unit.certs_store().join("local-ca").join("ca.key");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    let args = unit.args().to_vec();
    let reload = unit.reload(&new_binary(unit.dir()), &args, &[]).await;
    assert_eq!(reload.status.code(), Some(1), "{}", reload.output);
    assert!(reload.output.contains("ca.key"), "{}", reload.output);
    assert!(
        reload.output.contains(&format!("pid {old} keeps serving")),
        "{}",
        reload.output
    );
    assert_old_in_charge(&unit, old);
    traffic.flowing(100).await;
    traffic.stop().await.assert_untouched(&site);
}

/// A new binary slow to start (here: a wrapper that waits before running it) is waited
/// for, and only then does the old daemon stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_waits_for_a_slow_new_daemon() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;

    let slow = script(
        unit.dir(),
        "proxyd-slow",
        &format!("sleep 3\nexec '{}' \"$@\"", proxyd().display()),
    );
    let args = unit.args().to_vec();
    let reload = unit.reload(&slow, &args, &[]).await;
    assert!(reload.ok(), "{}", reload.output);
    assert_ne!(unit.main_pid(), old);
    assert_eq!(unit.status_pid(), Some(u64::from(unit.main_pid())));
    wait_until(
        "the old daemon to exit",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { (!alive(old)).then_some(()) },
    )
    .await;
    traffic.flowing(100).await;
    traffic.stop().await.assert_no_failure(&site);
}

/// A new binary that is not ready within --ready-timeout is stopped (with whatever it
/// started: here the wrapper's `sleep`), and the old daemon serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_gives_up_on_a_new_daemon_not_ready_in_time() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;

    let too_slow = script(
        unit.dir(),
        "proxyd-too-slow",
        &format!("sleep 60\nexec '{}' \"$@\"", proxyd().display()),
    );
    let args = unit.args().to_vec();
    let started = std::time::Instant::now();
    let reload = unit
        .reload(&too_slow, &args, &["--ready-timeout", "2"])
        .await;
    assert_eq!(reload.status.code(), Some(1), "{}", reload.output);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        reload.output.contains("was not ready within 2s"),
        "{}",
        reload.output
    );
    // The wrapper's process group is gone, its `sleep` included.
    let pid: u32 = reload
        .output
        .split("stopped the new proxyd (pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no stopped pid in: {}", reload.output));
    let left = group_members(pid);
    assert!(
        left.is_empty(),
        "processes of the new daemon's group are left: {left:?}"
    );
    assert_old_in_charge(&unit, old);
    traffic.flowing(100).await;
    traffic.stop().await.assert_untouched(&site);
}

/// The new daemon takes the listeners (and serves on them beside the old one) but never
/// gets ready: one of its --https addresses is taken by another process. It is stopped
/// gracefully, the requests it took finish, and the old daemon serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_stops_a_new_daemon_that_took_the_listeners_but_never_got_ready() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = unit.args().to_vec();
    args.extend([
        "--https".to_string(),
        taken.local_addr().unwrap().to_string(),
    ]);
    let reload = unit
        .reload(&proxyd(), &args, &["--ready-timeout", "3"])
        .await;
    assert_eq!(reload.status.code(), Some(1), "{}", reload.output);
    assert!(
        reload.output.contains(&format!("pid {old} handed"))
            && reload.output.contains("was not ready within 3s")
            && reload.output.contains("is not listening")
            && reload.output.contains("SIGTERM"),
        "{}",
        reload.output
    );
    assert_old_in_charge(&unit, old);
    traffic.flowing(100).await;
    traffic.stop().await.assert_no_failure(&site);
    drop(taken);
}

/// `proxyd --daemon` (systemd's Type=forking) returns as soon as the daemon serves, with
/// its PID in the PID file; a daemon that cannot start makes it exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_returns_once_the_daemon_serves() {
    let site = Backend::start("site").await;
    let started = std::time::Instant::now();
    let unit = started_unit(&site).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "proxyd --daemon took {:?}",
        started.elapsed()
    );
    let r = tests::https_get(unit.https_addr(), &unit.ca_pem(), "up.test", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(unit.status_pid(), Some(u64::from(unit.main_pid())));

    // A bad routes file: exit 1 before any fork, with the error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), "[[route]]\nhosts = 1\n").unwrap();
    let out = std::process::Command::new(proxyd())
        .arg("--daemon")
        .arg("--routes")
        .arg(dir.path().join("routes.toml"))
        .arg("--pid-file")
        .arg(dir.path().join("proxyd.pid"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes.toml:2"));
}

async fn started_unit(site: &Backend) -> Unit {
    Unit::builder(&one_route(&["up.test"], site, ""))
        .start()
        .await
}

// ---- Review attacks ----

/// The processes whose command line names this unit's directory (its daemons and
/// the wrappers of new binaries), alive.
fn unit_processes(unit: &Unit) -> Vec<u32> {
    let dir = unit.dir().to_string_lossy().into_owned();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            pid != me
                && alive(pid)
                && String::from_utf8_lossy(
                    &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                )
                .contains(&dir)
        })
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `ExecReload` run by hand (another admin, a second `systemctl reload` racing):
/// `proxyctl upgrade` with the unit's environment, without going through `Unit`.
fn upgrade_command(unit: &Unit, binary: &Path, args: &[String]) -> std::process::Command {
    let mut cmd = std::process::Command::new(tests::locate_bin("proxyctl", "PROXYCTL_BIN"));
    cmd.args(["upgrade", "--reload-if-unchanged"])
        .env("PROXYD_BIN", binary)
        .env("PROXYD_ARGS", args.join(" "))
        .env("PROXYCTL_SOCKET", unit.admin_socket())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    cmd
}

/// A value with a space, quoted in the environment file as systemd expects
/// (`--access-log '/var/log/proxyd/access log'`): systemd unquotes it for ExecStart,
/// and the upgrade must start the new daemon with the very same words, not with
/// `'/var/log/proxyd/access` and `log'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_upgrade_splits_proxyd_args_as_systemd_does() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let log = unit.dir().join("access log.txt");
    // The shipped flags already name an access log: this one takes its place.
    let mut args = unit.args().to_vec();
    match args.iter().position(|a| a == "--access-log") {
        Some(i) => args[i + 1] = format!("'{}'", log.display()),
        None => args.extend(["--access-log".to_string(), format!("'{}'", log.display())]),
    }
    let reload = unit.reload(&proxyd(), &args, &[]).await;
    assert!(reload.ok(), "ExecReload failed: {}", reload.output);
    assert_ne!(unit.main_pid(), old);
    let r = tests::https_get(unit.https_addr(), &unit.ca_pem(), "up.test", "/quoted")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    wait_until(
        "the access log file named in PROXYD_ARGS to get the request",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|s| s.contains("/quoted"))
        },
    )
    .await;
    // Nothing changed since: a routes reload, not one more upgrade.
    let reload = unit.reload(&proxyd(), &args, &[]).await;
    assert!(reload.ok(), "{}", reload.output);
    assert!(
        reload.output.contains("reloading its routes"),
        "{}",
        reload.output
    );
}

/// Twenty upgrades in a row under traffic, each while the previous old daemon may still
/// be draining: every one succeeds, no request fails, and at the end one daemon is left
/// (no wrapper, no half-started daemon), holding no more descriptors than the first
/// upgraded one did, and no upgrade or staging socket is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_twenty_upgrades_leak_no_process_and_no_descriptor() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let traffic = Traffic::start(&unit).await;
    let new = new_binary(unit.dir());
    let args = unit.args().to_vec();
    let mut pids = vec![unit.main_pid()];
    for i in 0..20 {
        let reload = unit.reload(&new, &args, &[]).await;
        assert!(reload.ok(), "upgrade {i} failed: {}", reload.output);
        assert!(!pids.contains(&unit.main_pid()), "upgrade {i}: same pid");
        pids.push(unit.main_pid());
        traffic.flowing(20).await;
    }
    let last = unit.main_pid();
    traffic.flowing(100).await;
    let tally = traffic.stop().await;
    tally.assert_no_failure(&site);
    wait_until(
        "every old daemon to exit",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async { (unit_processes(&unit) == vec![last]).then_some(()) },
    )
    .await;
    assert_eq!(unit.status_pid(), Some(u64::from(last)));
    for left in [
        "admin.sock.upgrade",
        "upgrade.sock",
        "proxyd.pid.upgrade-tmp",
    ] {
        assert!(!unit.dir().join(left).exists(), "{left} left behind");
    }
    // A fresh daemon started the same way holds as many descriptors when idle.
    let fresh = {
        let mut u = started(&site).await;
        let args = u.args().to_vec();
        let reload = u.reload(&new, &args, &[]).await;
        assert!(reload.ok(), "{}", reload.output);
        let p = u.main_pid();
        let fds = open_fds(p);
        (u, fds)
    };
    let baseline = fresh.1;
    let fds = wait_until(
        "the last daemon's idle connections to close",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let n = open_fds(last);
            (n <= baseline + 4).then_some(n)
        },
    )
    .await;
    eprintln!("after 20 upgrades: {fds} descriptors; after one: {baseline}");
}

async fn echo(ws: &mut tests::ws::WsTls, text: String) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text.clone())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo within 10 s")
        .expect("websocket open")
        .unwrap();
    assert_eq!(got, Message::text(text));
}

/// A websocket and a large upload begun on the old daemon go on through an upgrade and
/// finish there, within its grace period: the new daemon takes new connections only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_websocket_and_upload_begun_before_an_upgrade_finish_on_the_old_daemon() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let site = Backend::start("site").await;
    let mut unit = Unit::builder(&one_route(&["up.test"], &site, "websocket = true"))
        .arg("--grace-period")
        .arg("20")
        .start()
        .await;
    let old = unit.main_pid();
    let ca = unit.ca_pem();
    let (mut ws, resp) = tests::wss_connect(unit.https_addr(), &ca, "up.test", "/chat")
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    echo(&mut ws, "before".into()).await;

    const HALF: usize = 2 << 20;
    let mut up = tests::client::tls_connect(
        unit.https_addr(),
        tests::client::client_config(&ca, Alpn::H1).unwrap(),
        "up.test",
    )
    .await
    .unwrap();
    up.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nhost: up.test\r\ncontent-length: {}\r\n\r\n",
            2 * HALF
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    up.write_all(&vec![b'a'; HALF]).await.unwrap();
    up.flush().await.unwrap();

    let new = new_binary(unit.dir());
    let args = unit.args().to_vec();
    let reload = unit.reload(&new, &args, &[]).await;
    assert!(reload.ok(), "{}", reload.output);
    assert_ne!(unit.main_pid(), old);
    assert!(
        alive(old),
        "the old daemon did not wait for its connections"
    );

    for i in 0..5 {
        echo(&mut ws, format!("after the upgrade {i}")).await;
    }
    up.write_all(&vec![b'b'; HALF]).await.unwrap();
    up.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&answer).contains("body_len") {
        let n = tokio::time::timeout(Duration::from_secs(20), up.read(&mut buf))
            .await
            .expect("an answer to the upload within 20 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"body_len\": {}", 2 * HALF))
            || answer.contains(&format!("\"body_len\":{}", 2 * HALF)),
        "{answer}"
    );
    ws.close(None).await.unwrap();
    // New connections reach the new daemon.
    let r = tests::https_get(unit.https_addr(), &ca, "up.test", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(unit.status_pid(), Some(u64::from(unit.main_pid())));
}

/// Two upgrades at once (a second admin, `systemctl reload` racing `proxyctl upgrade`):
/// at most one runs, the other says so; afterwards exactly one daemon serves, the one
/// the PID file names, and no request failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_two_racing_upgrades_leave_one_daemon() {
    let site = Backend::start("site").await;
    let unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;
    let new = new_binary(unit.dir());
    let args = unit.args().to_vec();
    // Output to files: the new daemon keeps its stdout and stderr open.
    let run = |name: &str| {
        let path = unit.dir().join(name);
        let f = std::fs::File::create(&path).unwrap();
        let mut c = upgrade_command(&unit, &new, &args);
        c.stdout(f.try_clone().unwrap()).stderr(f);
        tokio::task::spawn_blocking(move || {
            let status = c.status().unwrap();
            (status, std::fs::read_to_string(path).unwrap())
        })
    };
    let (a, b) = tokio::join!(run("a.log"), run("b.log"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.0.success() || b.0.success(),
        "both failed:\n{}\n{}",
        a.1,
        b.1
    );
    for (status, text) in [&a, &b] {
        assert!(
            status.success() || text.contains("another proxyctl upgrade is running"),
            "{text}"
        );
    }
    let main = unit.read_pid_file().unwrap();
    assert_ne!(main, old);
    assert_eq!(unit.status_pid(), Some(u64::from(main)));
    traffic.flowing(100).await;
    traffic.stop().await.assert_no_failure(&site);
    wait_until(
        "one daemon left",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { (unit_processes(&unit) == vec![main]).then_some(()) },
    )
    .await;
}

/// A PID file that names another live process (a stale file whose PID was reused, or a
/// hostile one): the upgrade refuses, signals nobody, and the daemon serves on. Junk in
/// the file is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_upgrade_with_a_pid_file_naming_another_process_signals_nobody() {
    let site = Backend::start("site").await;
    let mut unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;
    let mut stranger = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let new = new_binary(unit.dir());
    let args = unit.args().to_vec();
    for content in [
        format!("{}\n", stranger.id()),
        "1\n".to_string(),
        "0\n".to_string(),
        "-1\n".to_string(),
        format!("{old} {}\n", stranger.id()),
        String::new(),
        "\u{0}\u{ff}garbage".to_string(),
    ] {
        std::fs::write(unit.pid_file(), &content).unwrap();
        let reload = unit.reload(&new, &args, &[]).await;
        assert_eq!(
            reload.status.code(),
            Some(1),
            "{content:?}: {}",
            reload.output
        );
        assert!(
            alive(stranger.id()),
            "{content:?}: the stranger was signalled"
        );
        assert!(alive(old), "{content:?}: the daemon was signalled");
        assert_eq!(unit.status_pid(), Some(u64::from(old)));
        assert!(!unit.dir().join("admin.sock.upgrade").exists());
    }
    std::fs::write(unit.pid_file(), format!("{old}\n")).unwrap();
    traffic.flowing(50).await;
    traffic.stop().await.assert_untouched(&site);
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// `proxyctl upgrade` interrupted (Ctrl-C by an admin running it by hand, SIGTERM)
/// while the new daemon has taken the listeners but is not ready: the new daemon is
/// stopped, not left running on in its own session beside the old one, and the old
/// one serves on without a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_interrupted_upgrade_stops_the_new_daemon() {
    let site = Backend::start("site").await;
    let unit = started(&site).await;
    let old = unit.main_pid();
    let traffic = Traffic::start(&unit).await;
    // Never ready: one of its --https addresses is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = unit.args().to_vec();
    args.extend([
        "--https".to_string(),
        taken.local_addr().unwrap().to_string(),
    ]);
    let out = unit.dir().join("interrupted.log");
    let log = std::fs::File::create(&out).unwrap();
    let mut upgrade = upgrade_command(&unit, &proxyd(), &args)
        .args(["--ready-timeout", "60"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until(
        "the handover",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|s| s.contains(&format!("pid {old} handed")))
        },
    )
    .await;
    // SAFETY: kill(2) on the proxyctl this test started.
    unsafe { libc::kill(upgrade.id() as libc::pid_t, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || upgrade.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success(), "{status}");
    let mut left = unit_processes(&unit);
    for _ in 0..600 {
        if left == vec![old] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = unit_processes(&unit);
    }
    // What a failed run leaves behind is this test's own: stop it before asserting.
    for &pid in left.iter().filter(|&&p| p != old) {
        // SAFETY: kill(2) on a process started for this unit (its cmdline names the
        // unit's directory).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    assert_eq!(left, vec![old], "the new daemon was left running");
    assert_old_in_charge(&unit, old);
    traffic.flowing(100).await;
    traffic.stop().await.assert_no_failure(&site);
    drop(taken);
}
