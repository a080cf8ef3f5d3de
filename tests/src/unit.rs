//! The shipped systemd unit (`proxy/proxyd/dist/proxyd.service`) run the way systemd runs
//! it, without systemd. Its `ExecStartPre`, `ExecStart` and `ExecReload` command lines are
//! read from the shipped file, and `PROXYD_ARGS` from the shipped environment file
//! (`proxy/proxyd/dist/proxyd.env`, the unit's `EnvironmentFile`) with its paths moved
//! into a temporary directory and loopback listeners added; `/usr/bin/NAME` is the NAME
//! just built, and `$PROXYD_ARGS` is split on whitespace as systemd does.
//! `ExecStart` (`proxyd --daemon $PROXYD_ARGS`, `Type=forking`) returns once the daemon
//! serves and `PIDFile=` names the daemon; `ExecReload` (`proxyctl upgrade
//! --reload-if-unchanged`) gets `PROXYD_BIN`, the new binary a test installs, and after a
//! reload that exits 0 systemd reads the PID file again. Everything they print goes to
//! one file, as to the journal.
//!
//! The daemons are not children of the test (they fork, or outlive `proxyctl upgrade`):
//! every PID the unit ever had is killed when the [`Unit`] is dropped.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::locate_bin;
use crate::proxy::{free_addr, tail};

/// How long `proxyd --daemon` may take to return.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The shipped unit's commands and flags.
#[derive(Debug, Clone)]
pub struct Shipped {
    /// `ExecStartPre`, `ExecStart`, `ExecReload`, split on whitespace.
    pub exec_start_pre: Vec<String>,
    pub exec_start: Vec<String>,
    pub exec_reload: Vec<String>,
    /// `EnvironmentFile=`.
    pub environment_file: String,
    /// `PIDFile=`.
    pub pid_file: String,
    /// `PROXYD_ARGS` of the shipped environment file, split on whitespace.
    pub proxyd_args: Vec<String>,
}

fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/proxyd/dist")
}

impl Shipped {
    /// `proxy/proxyd/dist/proxyd.service` and `proxyd.env`, as systemd reads them.
    pub fn read() -> Result<Shipped, String> {
        let read = |name: &str| {
            let path = dist_dir().join(name);
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        Shipped::parse(&read("proxyd.service")?, &read("proxyd.env")?)
    }

    pub fn parse(service: &str, env: &str) -> Result<Shipped, String> {
        // Continuation lines joined, comments dropped.
        let service = service.replace("\\\n", " ");
        let setting = |key: &str| -> Result<String, String> {
            let mut found = service
                .lines()
                .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_owned());
            let v = found.next().ok_or(format!("the unit has no {key}="))?;
            if found.next().is_some() {
                return Err(format!("the unit has more than one {key}="));
            }
            Ok(v)
        };
        let words = |v: String| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let mut args = None;
        for line in env.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or(format!("environment file: not KEY=VALUE: {line:?}"))?;
            if key == "PROXYD_ARGS" {
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                args = Some(words(value.to_owned()));
            }
        }
        Ok(Shipped {
            exec_start_pre: words(setting("ExecStartPre")?),
            exec_start: words(setting("ExecStart")?),
            exec_reload: words(setting("ExecReload")?),
            environment_file: setting("EnvironmentFile")?,
            pid_file: setting("PIDFile")?,
            proxyd_args: args.ok_or("the environment file sets no PROXYD_ARGS")?,
        })
    }
}

/// A command line of the unit, run here: `/usr/bin/NAME` is the NAME just built, and
/// `$PROXYD_ARGS` these flags (systemd splits an unbraced variable on whitespace).
fn command(words: &[String], proxyd_args: &[String]) -> tokio::process::Command {
    let mut words = words.iter();
    let program = words.next().expect("an empty command line in the unit");
    let name = program
        .strip_prefix("/usr/bin/")
        .unwrap_or_else(|| panic!("the unit runs {program}, not a binary of /usr/bin"));
    let env = format!("{}_BIN", name.to_ascii_uppercase());
    let mut cmd = tokio::process::Command::new(locate_bin(name, &env));
    for w in words {
        if w == "$PROXYD_ARGS" {
            cmd.args(proxyd_args);
        } else {
            assert!(!w.contains('$'), "the unit uses {w}, unknown here");
            cmd.arg(w);
        }
    }
    cmd
}

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
            let shipped = Shipped::read().unwrap_or_else(|e| panic!("the shipped unit: {e}"));
            let mut args = shipped
                .proxyd_args
                .iter()
                .map(|a| moved(a, &dir))
                .collect::<Vec<_>>();
            args.extend([
                "--http".into(),
                http.to_string(),
                "--https".into(),
                https.to_string(),
            ]);
            args.extend(self.args.iter().cloned());
            let mut unit = Unit {
                _tmp: tmp,
                dir,
                args,
                shipped,
                http,
                https,
                main_pid: 0,
                seen: Vec::new(),
            };
            unit.exec_start_pre().await;
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

/// A path of the shipped flags, moved into the unit's directory (the other flags as
/// they are).
fn moved(arg: &str, dir: &Path) -> String {
    for prefix in [
        "/etc/proxyd/",
        "/var/lib/proxyd/",
        "/run/proxyd/",
        "/var/log/proxyd/",
    ] {
        if let Some(rest) = arg.strip_prefix(prefix) {
            return dir.join(rest).display().to_string();
        }
    }
    assert!(
        !arg.starts_with('/'),
        "the shipped PROXYD_ARGS name {arg}, which this harness does not move"
    );
    arg.to_owned()
}

pub struct Unit {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    args: Vec<String>,
    shipped: Shipped,
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

    /// `PIDFile=`, moved into the unit's directory.
    pub fn pid_file(&self) -> PathBuf {
        PathBuf::from(moved(&self.shipped.pid_file, &self.dir))
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn certs_store(&self) -> PathBuf {
        self.dir.join("certs-store")
    }

    pub fn ca_pem(&self) -> String {
        let path = self.certs_store().join("local-ca").join("ca.pem");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
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

    /// `ExecStartPre` (`--check`); panics with its output unless it exits 0.
    async fn exec_start_pre(&self) {
        let out = command(&self.shipped.exec_start_pre, &self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run ExecStartPre");
        assert!(
            out.status.success(),
            "ExecStartPre failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn exec_start(&self) -> Option<ExitStatus> {
        let journal = self.journal_file();
        let mut launcher = command(&self.shipped.exec_start, &self.args)
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

    /// `ExecReload` with this binary installed as `/usr/bin/proxyd` (`PROXYD_BIN`) and
    /// these daemon flags in the environment file (`PROXYD_ARGS`), plus `proxyctl
    /// upgrade` options. On exit 0 the main PID is read from the PID file again, as
    /// systemd does.
    pub async fn reload(&mut self, binary: &Path, args: &[String], options: &[&str]) -> Reload {
        let before = self.journal().len();
        let status = command(&self.shipped.exec_reload, &[])
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

/// The running (not zombie) processes of process group `pgid`, from `/proc`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            alive(pid)
                && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rfind(')')
                        .and_then(|i| s[i + 1..].split_whitespace().nth(2))
                        == Some(pgid.to_string().as_str())
                })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One place for the daemon's flags: every command of the shipped unit takes them
    /// from its environment file, and that file's PID file is the unit's.
    #[test]
    fn the_shipped_unit_takes_every_flag_from_its_environment_file() {
        let s = Shipped::read().unwrap();
        assert_eq!(s.environment_file, "/etc/proxyd/proxyd.env");
        assert_eq!(
            s.exec_start_pre,
            ["/usr/bin/proxyd", "$PROXYD_ARGS", "--check"]
        );
        assert_eq!(
            s.exec_start,
            ["/usr/bin/proxyd", "--daemon", "$PROXYD_ARGS"]
        );
        assert_eq!(
            s.exec_reload,
            ["/usr/bin/proxyctl", "upgrade", "--reload-if-unchanged"]
        );
        let flag = |name: &str| {
            s.proxyd_args
                .windows(2)
                .find(|w| w[0] == name)
                .map(|w| w[1].clone())
        };
        assert_eq!(flag("--pid-file").as_deref(), Some(s.pid_file.as_str()));
        assert!(flag("--routes").is_some() && flag("--certs-store").is_some());
        for set_by_the_unit in [
            "-d",
            "--daemon",
            "-u",
            "--upgrade",
            "--staging-admin-socket",
        ] {
            assert!(
                !s.proxyd_args.iter().any(|a| a == set_by_the_unit),
                "{set_by_the_unit} in PROXYD_ARGS"
            );
        }
        assert!(
            !dist_dir().join("proxyd-reload").exists(),
            "a second copy of the flags"
        );
    }

    #[test]
    fn unit_files_parse_as_systemd_reads_them() {
        let s = Shipped::parse(
            "[Service]\nPIDFile=/run/p.pid\nEnvironmentFile=/e\nExecStartPre=/usr/bin/proxyd $PROXYD_ARGS --check\n\
             ExecStart=/usr/bin/proxyd --daemon \\\n    $PROXYD_ARGS\nExecReload=/usr/bin/proxyctl upgrade\n",
            "# flags\n\nPROXYD_ARGS=\"--routes /etc/proxyd/r.toml  --pid-file /run/p.pid\"\n",
        )
        .unwrap();
        assert_eq!(
            s.exec_start,
            ["/usr/bin/proxyd", "--daemon", "$PROXYD_ARGS"]
        );
        assert_eq!(
            s.proxyd_args,
            ["--routes", "/etc/proxyd/r.toml", "--pid-file", "/run/p.pid"]
        );
        assert!(Shipped::parse("ExecStart=/x\n", "PROXYD_ARGS=\n").is_err());
        assert!(Shipped::parse(
            "PIDFile=/p\nEnvironmentFile=/e\nExecStartPre=/a\nExecStart=/b\nExecReload=/c\n",
            "OTHER=1\n"
        )
        .is_err());
        let dir = Path::new("/tmp/u");
        assert_eq!(moved("/run/proxyd/admin.sock", dir), "/tmp/u/admin.sock");
        assert_eq!(moved("--routes", dir), "--routes");
    }
}
