//! The real `proxyd` as a child process, on free loopback ports, in its own temp dir.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::client::{https_get, Alpn, Conn, Response};
use crate::locate_bin;

/// How long proxyd may take from spawn to listening on all its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemStatus {
    /// `VmRSS`: resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: peak resident since start, KiB.
    pub hwm_kib: u64,
}

pub fn mem_status(pid: u32) -> anyhow::Result<MemStatus> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in {path}"))?;
        let kib = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("bad line {line:?} in {path}"))?;
        Ok(kib)
    };
    Ok(MemStatus {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// A free port on 127.0.0.1 for a server about to be started (checked by binding it,
/// then released).
///
/// Taken outside the kernel's ephemeral range and never twice in this process. A port
/// from `bind(0)` goes back to the kernel's pool when released: under load (many tests
/// at once) another test's `bind(0)` or an outgoing connection got it before the server
/// it was picked for could bind it ("Address already in use"). Ports outside the range
/// are never handed out by the kernel, and the counter keeps two tests of this process
/// apart; the start depends on the PID to keep test processes run side by side apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let (lo, hi) = if eph_lo > 12000 {
        (10000, eph_lo - 1)
    } else {
        (eph_hi + 1, 65535)
    };
    if lo + 1000 <= hi {
        let span = hi - lo + 1;
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (lo + (start + n) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Options for [`Proxy`]. Start with [`Proxy::builder`].
pub struct ProxyBuilder {
    routes: String,
    dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    local_issuer: bool,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    store_tmpfs: Option<String>,
    /// Leave `--verify-served-interval` at proxyd's default (see `served_check_off`).
    served_check_default: bool,
}

impl ProxyBuilder {
    /// Start proxyd without `--verify-served-interval`, so that its default applies
    /// (the builder otherwise turns the served == stored check off).
    pub fn served_check_default(mut self) -> Self {
        self.served_check_default = true;
        self
    }

    /// Put the certificate store on its own tmpfs of this size (e.g. `"1m"`), mounted in
    /// a private mount namespace of proxyd (`unshare --map-root-user --mount`), so a test
    /// can fill it or make it read-only ([`Proxy::remount_store`]) without touching the
    /// machine. The store is then reached through `/proc/<pid>/root`.
    pub fn store_tmpfs(mut self, size: &str) -> Self {
        self.store_tmpfs = Some(size.to_owned());
        self
    }

    /// Work in this directory (kept afterwards) instead of a fresh temp dir.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The plain-HTTP listener's address (default: a free loopback port).
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// The TLS listener's address (default: a free loopback port).
    pub fn https_addr(mut self, addr: SocketAddr) -> Self {
        self.https = Some(addr);
        self
    }

    /// `--local-issuer on|off` (default on).
    pub fn local_issuer(mut self, on: bool) -> Self {
        self.local_issuer = on;
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// `--verify-served-interval 0` unless the test gave that flag: the served == stored
    /// check opens TLS connections of its own to the listener (counted in the handshake
    /// metrics, holding a slot of `--max-conns-per-ip`), which tests that count those
    /// would see. Tests of the check (`served.rs`) turn it on.
    fn served_check_off(&self) -> Vec<OsString> {
        if self.served_check_default || self.args.iter().any(|a| a == "--verify-served-interval") {
            vec![]
        } else {
            vec!["--verify-served-interval".into(), "0".into()]
        }
    }

    /// Spawn proxyd and wait until it reports itself ready on its admin socket (every
    /// one of its ports is a listening socket of that process; see `Proxy::ready`) and,
    /// with the local issuer, its CA is on disk. Panics with the tail of its log if it exits or is not
    /// ready in time. Ports that were picked here are picked again if proxyd could not
    /// bind them (another process took them in between).
    pub async fn start(self) -> Proxy {
        match self.try_start().await {
            Ok(proxy) => proxy,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// [`ProxyBuilder::start`] returning the failure instead of panicking.
    pub async fn try_start(self) -> anyhow::Result<Proxy> {
        let mut last = String::new();
        for _attempt in 0..3 {
            match self.attempt().await {
                Ok(proxy) => return Ok(proxy),
                Err(StartError::PortTaken(msg)) => last = msg,
                Err(StartError::Failed(msg)) => anyhow::bail!("{msg}"),
            }
        }
        anyhow::bail!("proxyd could not bind its ports three times:\n{last}")
    }

    async fn attempt(&self) -> Result<Proxy, StartError> {
        let (tmp, dir) = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d).expect("create proxy dir");
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("proxyd-test-")
                    .tempdir()
                    .expect("temp dir");
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let routes_path = dir.join("routes.toml");
        std::fs::write(&routes_path, &self.routes).expect("write routes.toml");
        let store = dir.join("certs-store");
        std::fs::create_dir_all(&store).expect("create certs-store");
        let log_path = dir.join("proxyd.log");
        let log = File::create(&log_path).expect("create proxyd.log");
        let http = self.http.unwrap_or_else(free_addr);
        let https = self.https.unwrap_or_else(free_addr);

        let proxyd = locate_bin("proxyd", "PROXYD_BIN");
        let mut cmd = match &self.store_tmpfs {
            None => Command::new(proxyd),
            Some(size) => {
                // unshare and sh exec: proxyd keeps the pid of the child.
                let mut c = Command::new("unshare");
                c.args(["--map-root-user", "--mount", "sh", "-c"])
                    .arg(r#"mount -t tmpfs -o "size=$1,mode=0700" tmpfs "$2" && shift 2 && exec "$@""#)
                    .arg("sh")
                    .arg(size)
                    .arg(&store)
                    .arg(proxyd);
                c
            }
        };
        cmd.arg("--routes")
            .arg(&routes_path)
            .arg("--certs-store")
            .arg(&store)
            .arg("--http")
            .arg(http.to_string())
            .arg("--https")
            .arg(https.to_string())
            .arg("--local-issuer")
            .arg(if self.local_issuer { "on" } else { "off" })
            // Never the system-wide defaults under /run/proxyd: tests run side by side.
            .arg("--admin-socket")
            .arg(dir.join("admin.sock"))
            .arg("--upgrade-socket")
            .arg(dir.join("upgrade.sock"))
            .args(&self.args)
            .args(self.served_check_off())
            .current_dir(&dir)
            // The log is a file read by people in test output: no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", cmd.get_program()));

        let store_in_ns = self.store_tmpfs.as_ref().map(|_| store.clone());
        let store = match &store_in_ns {
            Some(s) => Path::new(&format!("/proc/{}/root", child.id()))
                .join(s.strip_prefix("/").unwrap_or(s)),
            None => store,
        };
        let mut proxy = Proxy {
            child,
            _tmp: tmp,
            dir,
            routes_path,
            store,
            store_in_ns,
            log_path,
            http,
            https,
            local_issuer: self.local_issuer,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = proxy.child.try_wait().expect("try_wait") {
                let log = proxy.log();
                let msg = format!(
                    "proxyd exited before it was ready ({status}); its log:\n{}",
                    tail(&log, 60)
                );
                return Err(
                    if self.http.is_none()
                        && self.https.is_none()
                        && log.to_ascii_lowercase().contains("in use")
                    {
                        StartError::PortTaken(msg)
                    } else {
                        StartError::Failed(msg)
                    },
                );
            }
            // pingora retries a busy port for 30 s instead of exiting: meanwhile the port
            // answers, but not as proxyd. Fail at once (or pick new ports).
            if proxy.log().contains(" is in use") {
                let msg = format!(
                    "a port of proxyd (http {http}, https {https}) is taken; its log:\n{}",
                    proxy.log_tail(20)
                );
                return Err(if self.http.is_none() && self.https.is_none() {
                    StartError::PortTaken(msg)
                } else {
                    StartError::Failed(msg)
                });
            }
            if proxy.ready().await && !proxy.log().contains(" is in use") {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "proxyd not ready within {READY_TIMEOUT:?} (http {http}, https {https}); its log:\n{}",
                    proxy.log_tail(60)
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

enum StartError {
    PortTaken(String),
    Failed(String),
}

/// Ask the kernel to SIGKILL the child if the test process dies without dropping
/// [`Proxy`] (a killed test run must not leave daemons behind).
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A running proxyd. Dropping it kills and reaps the process (and prints the tail of its
/// log if the test is failing).
pub struct Proxy {
    child: Child,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    routes_path: PathBuf,
    store: PathBuf,
    /// With [`ProxyBuilder::store_tmpfs`]: the store's path inside proxyd's namespace.
    store_in_ns: Option<PathBuf>,
    log_path: PathBuf,
    http: SocketAddr,
    https: SocketAddr,
    local_issuer: bool,
}

impl Proxy {
    /// proxyd serving this routes file, with the local issuer, on free ports.
    pub async fn start(routes_toml: &str) -> Proxy {
        Proxy::builder(routes_toml).start().await
    }

    pub fn builder(routes_toml: &str) -> ProxyBuilder {
        ProxyBuilder {
            routes: routes_toml.to_owned(),
            dir: None,
            http: None,
            https: None,
            local_issuer: true,
            args: vec![],
            envs: vec![],
            store_tmpfs: None,
            served_check_default: false,
        }
    }

    /// Remount the store's tmpfs (see [`ProxyBuilder::store_tmpfs`]) read-only or
    /// read-write, from inside proxyd's namespaces.
    pub fn remount_store(&self, read_only: bool) {
        let dir = self
            .store_in_ns
            .as_ref()
            .expect("remount_store needs ProxyBuilder::store_tmpfs");
        let out = Command::new("nsenter")
            .args([
                "-t",
                &self.pid().to_string(),
                "-U",
                "-m",
                "--preserve-credentials",
            ])
            .args([
                "mount",
                "-o",
                if read_only {
                    "remount,ro"
                } else {
                    "remount,rw"
                },
            ])
            .arg(dir)
            .output()
            .expect("run nsenter");
        assert!(
            out.status.success(),
            "remounting the store failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Ready by proxyd's own account: its admin API's `GET /v1/health/ready` says that
    /// every `--https`/`--http` address is a listening socket of this very process. A
    /// port that merely accepts connections proves nothing: another process (another
    /// test run that picked the same free port) may hold it while this proxyd's pingora
    /// still retries it, and a test would then talk to a daemon that knows none of its
    /// names (a TLS access_denied alert).
    async fn ready(&self) -> bool {
        // The CA is written at start; with the local issuer a test needs it at once.
        if self.local_issuer && !std::fs::metadata(self.ca_path()).is_ok_and(|m| m.len() > 0) {
            return false;
        }
        admin_says_ready(&self.dir.join("admin.sock")).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https
    }

    /// The working directory (routes.toml, certs-store/, proxyd.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn routes_path(&self) -> &Path {
        &self.routes_path
    }

    pub fn certs_store(&self) -> &Path {
        &self.store
    }

    /// `<certs-store>/local-ca/ca.pem`
    pub fn ca_path(&self) -> PathBuf {
        self.store.join("local-ca").join("ca.pem")
    }

    /// The local issuer's CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path())
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.ca_path().display()))
    }

    /// Everything proxyd wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Current and peak resident memory of the proxyd process.
    pub fn mem(&self) -> MemStatus {
        mem_status(self.pid()).expect("proxyd memory status")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill (SIGKILL) and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Send a signal (e.g. `libc::SIGTERM`) to proxyd.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, sig);
        }
    }

    /// A TLS connection to the https listener with this SNI, trusting the local CA.
    pub async fn https(&self, sni: &str, alpn: Alpn) -> anyhow::Result<Conn> {
        Conn::https(self.https, &self.ca_pem(), sni, alpn).await
    }

    /// A plain HTTP/1.1 connection to the http listener.
    pub async fn http(&self) -> anyhow::Result<Conn> {
        Conn::http(self.http).await
    }

    /// `GET https://host/path` over a fresh connection (SNI = host, ALPN h2 + http/1.1).
    pub async fn get(&self, host: &str, path: &str) -> anyhow::Result<Response> {
        https_get(self.https, &self.ca_pem(), host, path).await
    }

    /// Shared handle of the CA for many requests.
    pub fn ca(&self) -> Arc<str> {
        self.ca_pem().into()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- proxyd log ({}), last lines ----\n{}\n---- end of proxyd log ----",
                self.log_path.display(),
                self.log_tail(60)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /v1/health/ready` on proxyd's admin socket: whether it answered 200 with
/// `"ready": true`. False when the socket is not there yet or does not answer in time.
async fn admin_says_ready(socket: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::UnixStream::connect(socket).await?;
        s.write_all(b"GET /v1/health/ready HTTP/1.1\r\nHost: proxyd\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let Ok(Ok(raw)) = tokio::time::timeout(Duration::from_secs(5), ask).await else {
        return false;
    };
    let raw = String::from_utf8_lossy(&raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return false;
    };
    head.starts_with("HTTP/1.1 200")
        && serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|v| v["ready"] == serde_json::Value::Bool(true))
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
