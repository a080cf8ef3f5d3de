//! Debian's `pebble` (ACME test CA) and `pebble-challtestsrv` (its mock DNS, answering
//! 127.0.0.1 for every name) as children on loopback, for the ACME tests.
//!
//! Pebble validates HTTP-01 on `httpPort` and TLS-ALPN-01 on `tlsPort` of the address
//! DNS gives: pass the proxy's test ports. Its HTTPS certificate is made here with rcgen
//! ([`Pebble::https_ca_path`] is what proxyd needs as `--acme-ca-root`); the issuing root
//! is new at every start and comes from the management API ([`Pebble::root_pem`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use http::Method;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::client::{Alpn, Conn, Response};
use crate::proxy::{free_addr, tail};
use crate::{full, request};

/// Longest start of pebble and challtestsrv (a bound on a hang, not a speed).
const STARTUP_WITHIN: Duration = Duration::from_secs(60);

/// Pebble's EAB example key (from its example config), for the EAB test.
pub const EAB_KID: &str = "kid-1";
pub const EAB_HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

/// Options for [`Pebble::start`].
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Require External Account Binding (key [`EAB_KID`] / [`EAB_HMAC`]).
    pub eab: bool,
    /// Keep pebble's 5 % bad-nonce rejections (clients must retry); off by default.
    pub nonce_reject: bool,
    /// Profiles (name, validity in seconds). Not empty: the current pebble
    /// ([`Pebble::current`]: ARI, profiles), which the test must have checked for.
    pub profiles: Vec<(&'static str, u64)>,
    /// The directory's `meta.caaIdentities`. Not empty: the current pebble (Debian's
    /// sends none), which the test must have checked for.
    pub caa_identities: Vec<&'static str>,
}

pub struct Pebble {
    pebble: Child,
    dns: Child,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    acme: SocketAddr,
    management: SocketAddr,
    dns_management: SocketAddr,
    https_ca_pem: String,
}

impl Pebble {
    /// Whether Debian's pebble is installed (`.ci/test` installs it).
    pub fn available() -> bool {
        Path::new("/usr/bin/pebble").is_file()
            && Path::new("/usr/bin/pebble-challtestsrv").is_file()
    }

    /// The current pebble (ARI, profiles with their own validity), built once from
    /// `../shared/tools/pebble/` into `target/pebble/pebble`. `None` where that folder
    /// is absent (a user's fresh clone): the caller reports its test as NOT RUN, loudly;
    /// under CI (`CI=true`) that absence is a failure (panic).
    pub fn current(test: &str) -> Option<PathBuf> {
        static BUILT: std::sync::Mutex<Option<Option<PathBuf>>> = std::sync::Mutex::new(None);
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = built.as_ref() {
            return report_current(test, b.clone());
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin = root.join("target/pebble/pebble");
        let script = root.join("../shared/tools/pebble/build.sh");
        let found = if bin.is_file() {
            Some(bin)
        } else if script.is_file() {
            let status = Command::new("bash")
                .arg(&script)
                .arg(&bin)
                .status()
                .expect("running ../shared/tools/pebble/build.sh");
            assert!(status.success(), "{}: {status}", script.display());
            Some(bin)
        } else {
            None
        };
        *built = Some(found.clone());
        report_current(test, found)
    }

    /// Starts the mock DNS and pebble, validating on these ports of 127.0.0.1, and waits
    /// until the directory answers.
    pub async fn start(http_port: u16, tls_port: u16, opts: PebbleOptions) -> Pebble {
        let binary = if opts.profiles.is_empty() && opts.caa_identities.is_empty() {
            assert!(
                Pebble::available(),
                "pebble is not installed: apt-get install -y pebble (bash .ci/test does it)"
            );
            PathBuf::from("/usr/bin/pebble")
        } else {
            Pebble::current("pebble with profiles or caaIdentities")
                .expect("the test checks Pebble::current() first")
        };
        let tmp = tempfile::Builder::new()
            .prefix("pebble-test-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();

        // Pebble's own HTTPS certificate: a throwaway CA and a leaf for localhost.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test HTTPS CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("https-ca.pem"), ca_cert.pem()).unwrap();

        let dns = free_addr();
        let dns_management = free_addr();
        let mut cmd = Command::new("/usr/bin/pebble-challtestsrv");
        cmd.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &dns.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &dns_management.to_string()]);
        let dns_child = spawn(cmd, &dir.join("challtestsrv.log"));

        let acme = free_addr();
        let management = free_addr();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": acme.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.join("cert.pem"),
                "privateKey": dir.join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": opts.eab,
            }
        });
        if opts.eab {
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ EAB_KID: EAB_HMAC });
        }
        if !opts.caa_identities.is_empty() {
            config["pebble"]["caaIdentities"] = serde_json::json!(opts.caa_identities);
        }
        if !opts.profiles.is_empty() {
            let profiles: serde_json::Map<String, serde_json::Value> = opts
                .profiles
                .iter()
                .map(|(name, validity)| {
                    let p = serde_json::json!({
                        "description": format!("{validity} s"),
                        "validityPeriod": validity,
                    });
                    (name.to_string(), p)
                })
                .collect();
            config["pebble"]["profiles"] = serde_json::Value::Object(profiles);
        }
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let mut cmd = Command::new(&binary);
        cmd.arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // No reuse of valid authorizations (50 % by default): every order is
            // validated, so a test that breaks validation sees it fail.
            .env("PEBBLE_AUTHZREUSE", "0")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                if opts.nonce_reject { "5" } else { "0" },
            );
        let pebble_child = spawn(cmd, &dir.join("pebble.log"));

        let mut pebble = Pebble {
            pebble: pebble_child,
            dns: dns_child,
            _tmp: tmp,
            dir,
            acme,
            management,
            dns_management,
            https_ca_pem: ca_cert.pem(),
        };
        // Pebble makes its root and intermediate keys before it listens: 11 s of CPU
        // time share at a load of 32 on 2 cores (it was 20 s for the whole start, and
        // timed out). The bound only ends a hang; a child that exits fails at once.
        let deadline = tokio::time::Instant::now() + STARTUP_WITHIN;
        loop {
            pebble.exited_early();
            let r = https_get(acme, &pebble.https_ca_pem, "localhost", "/dir").await;
            if r.is_ok_and(|r| r.status == 200)
                && tokio::net::TcpStream::connect(dns_management).await.is_ok()
            {
                return pebble;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pebble or challtestsrv not ready after {STARTUP_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics with its log if pebble or challtestsrv has exited (e.g. a port taken).
    fn exited_early(&mut self) {
        for (child, log) in [
            (&mut self.pebble, "pebble.log"),
            (&mut self.dns, "challtestsrv.log"),
        ] {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                panic!(
                    "{log}: exited before it was ready ({status}):\n{}",
                    tail(&text, 20)
                );
            }
        }
    }

    /// `--acme-directory` for proxyd.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.acme.port())
    }

    /// Pebble's ACME listener.
    pub fn acme_addr(&self) -> SocketAddr {
        self.acme
    }

    /// Pebble's own HTTPS certificate and key (for a front that proxyd must trust as it
    /// trusts pebble: [`crate::acme_front::AcmeFront`]).
    pub fn https_cert_and_key(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("cert.pem"), self.dir.join("key.pem"))
    }

    /// The CA of pebble's own HTTPS certificate, as PEM.
    pub fn https_ca_pem(&self) -> &str {
        &self.https_ca_pem
    }

    /// `--acme-ca-root` for proxyd: the CA of pebble's own HTTPS certificate.
    pub fn https_ca_path(&self) -> PathBuf {
        self.dir.join("https-ca.pem")
    }

    /// The root that issues this pebble's certificates (what a client must trust).
    pub async fn root_pem(&self) -> String {
        let r = https_get(self.management, &self.https_ca_pem, "localhost", "/roots/0")
            .await
            .expect("pebble management API /roots/0");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// The issuing intermediate.
    pub async fn intermediate_pem(&self) -> String {
        let r = https_get(
            self.management,
            &self.https_ca_pem,
            "localhost",
            "/intermediates/0",
        )
        .await
        .expect("pebble management API /intermediates/0");
        r.text()
    }

    /// Makes the mock DNS answer `ip` for `host` (e.g. 127.0.0.2, where nothing listens,
    /// so that every validation of that name fails).
    pub async fn set_a(&self, host: &str, ip: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": [ip] }).to_string();
        let mut conn = Conn::http(self.dns_management).await?;
        let r = conn
            .send(request(Method::POST, "localhost", "/add-a", full(body)))
            .await?;
        if r.status != 200 {
            bail!("challtestsrv /add-a: {} {}", r.status, r.text());
        }
        Ok(())
    }

    /// Everything pebble logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// New orders pebble has received (requests to its new-order endpoint).
    pub fn orders(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("POST /order-plz") || l.contains("POST /new-order"))
            .count()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- pebble log, last lines ----\n{}\n---- end of pebble log ----",
                self.log_tail(40)
            );
        }
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

/// One GET with a User-Agent (a current pebble answers 400 `malformed` without one).
async fn https_get(
    addr: SocketAddr,
    ca_pem: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<Response> {
    let mut req = request(Method::GET, host, path, crate::empty());
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("proxyd-tests"),
    );
    Conn::https(addr, ca_pem, host, Alpn::H1)
        .await?
        .send(req)
        .await
}

fn report_current(test: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    if found.is_none() {
        let msg = format!(
            "NOT RUN: {test}: needs the current pebble (ARI, profiles) from ../shared/tools/pebble/, which is absent"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true)"
        );
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    }
    found
}

fn spawn(mut cmd: Command, log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))
        .unwrap()
}
