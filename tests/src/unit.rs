//! The shipped systemd unit (`proxy/proxyd/dist/proxyd.service`) run the way systemd runs
//! it, without systemd: `ExecStart` is `proxyd --daemon $PROXYD_ARGS` (`Type=forking`: the
//! command returns once the daemon serves, and `PIDFile=` names the daemon), `ExecReload`
//! is `proxyctl upgrade --reload-if-unchanged` with `PROXYD_ARGS` and `PROXYD_BIN` in its
//! environment (the unit's `EnvironmentFile`), and after a reload that exits 0 systemd
//! reads the PID file again. Everything they print goes to one file, as to the journal.
//!
//! The daemons are not children of the test (they fork, or outlive `proxyctl upgrade`):
//! every PID the unit ever had is killed when the [`Unit`] is dropped.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::proxy::{free_addr, tail};
use crate::locate_bin;

/// How long `proxyd --daemon` may take to return.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct UnitBuilder {
    routes: String,
    args: Vec<String>,
}

impl UnitBuilder {
    /// One more daemon flag in `PROXYD_ARGS` (no whitespace: systemd splits on it).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        let arg = arg.into();
        assert!(!arg.contains(char::is_whitespace), "{arg:?}");
        self.args.push(arg);
        self
    }

    /// `ExecStart`; panics with the journal unless it exits 0 and the PID file names a
    /// running daemon. Ports taken by someone else in the meantime are picked again.
    pub async fn start(self) -> Unit {
        let mut last = String::new();
        for _ in 0..3 {
            let tmp = tempfile::Builder::new()
                .prefix("proxyd-unit-")
                .tempdir()
                .expect("temp dir");
            let dir = tmp.path().to_path_buf();
            std::fs::write(dir.join("routes.toml"), &self.routes).expect("write routes.toml");
            let (http, https) = (free_addr(), free_addr());
            let p = |name: &str| dir.join(name).display().to_string();
            let mut args = vec![
                "--routes".into(),
                p("routes.toml"),
                "--certs-store".into(),
                p("certs-store"),
                "--http".into(),
                http.to_string(),
                "--https".into(),
                https.to_string(),
                "--admin-socket".into(),
                p("admin.sock"),
                "--upgrade-socket".into(),
                p("upgrade.sock"),
                "--pid-file".into(),
                p("proxyd.pid"),
            ];
            args.extend(self.args.iter().cloned());
            let mut unit = Unit {
                _tmp: tmp,
                dir,
                args,
                http,
                https,
                main_pid: 0,
                seen: Vec::new(),
            };
            let status = unit.exec_start().await;
            if let Ok(pid) = unit.read_pid_file() {
                unit.seen.push(pid);
            }
            match status {
                Some(s) if s.success() => {
                    unit.main_pid = unit.read_pid_file().unwrap_or_else(|e| {
                        panic!("ExecStart exited 0 but {e}; journal:\n{}", unit.journal())
                    });
                    assert!(
                        alive(unit.main_pid),
                        "ExecStart exited 0 but pid {} is not running; journal:\n{}",
                        unit.main_pid,
                        tail(&unit.journal(), 40)
                    );
                    return unit;
                }
                Some(s) if unit.journal().contains("cannot listen on") => {
                    last = format!("ExecStart: {s}:\n{}", tail(&unit.journal(), 20));
                }
                Some(s) => panic!(
                    "ExecStart `proxyd --daemon` failed ({s}); journal:\n{}",
                    tail(&unit.journal(), 60)
                ),
                None => panic!(
                    "ExecStart `proxyd --daemon` did not return within {START_TIMEOUT:?} \
                     (systemd would fail the start); journal:\n{}",
                    tail(&unit.journal(), 60)
                ),
            }
        }
        panic!("proxyd could not bind its ports three times:\n{last}")
    }
}

/// What `ExecReload` did.
#[derive(Debug)]
pub struct Reload {
    pub status: ExitStatus,
    /// What it (and the daemon it started) wrote to the journal meanwhile.
    pub output: String,
}

impl Reload {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

pub struct Unit {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    args: Vec<String>,
    http: SocketAddr,
    https: SocketAddr,
    /// The main PID as systemd holds it: read from the PID file after ExecStart and after
    /// each successful ExecReload, never otherwise.
    main_pid: u32,
    seen: Vec<u32>,
}

impl Unit {
    /// A unit serving this routes file, with the local issuer, on free loopback ports.
    pub fn builder(routes_toml: &str) -> UnitBuilder {
        UnitBuilder {
            routes: routes_toml.to_owned(),
            args: Vec::new(),
        }
    }

    /// `PROXYD_ARGS`, the daemon's flags (the unit's environment file).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https
    }

    pub fn main_pid(&self) -> u32 {
        self.main_pid
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("proxyd.pid")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn certs_store(&self) -> PathBuf {
        self.dir.join("certs-store")
    }

    pub fn ca_pem(&self) -> String {
        let path = self.certs_store().join("local-ca").join("ca.pem");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Everything ExecStart, ExecReload and the daemons printed so far.
    pub fn journal(&self) -> String {
        std::fs::read_to_string(self.journal_path()).unwrap_or_default()
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.log")
    }

    fn journal_file(&self) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal_path())
            .expect("open journal.log")
    }

    pub fn read_pid_file(&self) -> Result<u32, String> {
        let text = std::fs::read_to_string(self.pid_file())
            .map_err(|e| format!("cannot read {}: {e}", self.pid_file().display()))?;
        text.trim()
            .parse()
            .map_err(|_| format!("{} holds {text:?}", self.pid_file().display()))
    }

    /// The PID that answers `proxyctl status` on the admin socket.
    pub fn status_pid(&self) -> Option<u64> {
        let out = std::process::Command::new(locate_bin("proxyctl", "PROXYCTL_BIN"))
            .arg("--socket")
            .arg(self.admin_socket())
            .args(["--timeout", "5", "status", "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64()
    }

    async fn exec_start(&self) -> Option<ExitStatus> {
        let journal = self.journal_file();
        let mut launcher = tokio::process::Command::new(locate_bin("proxyd", "PROXYD_BIN"))
            .arg("--daemon")
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(journal.try_clone().expect("dup journal"))
            .stderr(journal)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn proxyd --daemon");
        tokio::time::timeout(START_TIMEOUT, launcher.wait())
            .await
            .ok()
            .map(|s| s.expect("wait for proxyd --daemon"))
    }

    /// `ExecReload` with this binary and these daemon flags (`PROXYD_BIN`,
    /// `PROXYD_ARGS`), plus `proxyctl upgrade` options. On exit 0 the main PID is read
    /// from the PID file again, as systemd does.
    pub async fn reload(&mut self, binary: &Path, args: &[String], options: &[&str]) -> Reload {
        let before = self.journal().len();
        let status = tokio::process::Command::new(locate_bin("proxyctl", "PROXYCTL_BIN"))
            .args(["upgrade", "--reload-if-unchanged"])
            .args(options)
            .env("PROXYD_BIN", binary)
            .env("PROXYD_ARGS", args.join(" "))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            // The new daemon writes here too, for as long as it lives: a file, not a
            // pipe that would stay open after proxyctl exits.
            .stdout(self.journal_file())
            .stderr(self.journal_file())
            .status()
            .await
            .expect("run proxyctl upgrade");
        let output = self.journal()[before..].to_owned();
        if status.success() {
            if let Ok(pid) = self.read_pid_file() {
                self.main_pid = pid;
                self.seen.push(pid);
            }
        }
        // A daemon that answers the admin socket is one to clean up too.
        if let Some(pid) = self.status_pid() {
            self.seen.push(pid as u32);
        }
        Reload { status, output }
    }
}

/// Running (not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

impl Drop for Unit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- journal ({}), last lines ----\n{}\n---- end of journal ----",
                self.journal_path().display(),
                tail(&self.journal(), 80)
            );
        }
        let mut pids = self.seen.clone();
        pids.extend(self.read_pid_file().ok());
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            // Only daemons of this unit: their command line names its directory.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(&*self.dir.to_string_lossy());
            if ours && alive(pid) {
                // SAFETY: kill(2) on a daemon this unit started (checked just above).
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}
