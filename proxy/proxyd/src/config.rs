//! The daemon's configuration: built once from the flags ([`crate::cli::Args`]) by
//! [`Config::from_args`], validated as a whole, then passed down. Nothing else reads
//! `Args`. Every problem is reported at once, each naming its flag, the way routes.toml's
//! are (`error: --flag: what`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{AccessLogFormat, AcmeChallenge, AcmeFallback, Args, LogFormat, OnOff};
use crate::data::guard::ClientLimits;
use crate::observe::access_log;

/// One problem with the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag it is about, e.g. `--acme-contact`.
    pub flag: &'static str,
    pub message: String,
}

/// Every problem with the flags, in the order the flags are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "error: {}: {}", e.flag, e.message)?;
        }
        let n = self.0.len();
        write!(f, "flags: {n} error{}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for ConfigErrors {}

/// The access log, unless `--access-log-format off`.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub format: access_log::Format,
    /// `None`: stderr.
    pub path: Option<PathBuf>,
    pub queue_bytes: usize,
}

/// The validated configuration. Paths are absolute (a daemon changes its working
/// directory).
#[derive(Debug, Clone)]
pub struct Config {
    pub routes: PathBuf,
    pub certs_store: PathBuf,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub admin_socket: PathBuf,
    pub admin_socket_mode: u32,
    /// `--upgrade`'s admin socket, served until this process is ready.
    pub staging_admin_socket: Option<PathBuf>,
    pub check: bool,
    pub local_issuer: bool,
    /// Shorter local certificates (tests only).
    pub local_cert_lifetime: Option<Duration>,
    /// The ACME client's configuration, with `--acme-directory`.
    pub acme: Option<acme::Config>,
    pub acme_fallback: AcmeFallback,
    /// Where routed names must point (`--public-addr`, else the listeners' addresses
    /// that are not wildcards); empty: unknown.
    pub public_addrs: Vec<std::net::IpAddr>,
    /// `--acme-http-port`: where the CA validates HTTP-01 (the preflight's self-check).
    pub acme_http_port: u16,
    /// Port in http->https redirects; `None` for 443.
    pub redirect_port: Option<u16>,
    pub dns_server: Vec<SocketAddr>,
    pub log_format: LogFormat,
    pub access_log: Option<AccessLogConfig>,
    pub log_summary_interval: Duration,
    pub metrics: Option<SocketAddr>,
    pub threads: usize,
    pub grace_period: u64,
    pub limits: ClientLimits,
    pub store_check_interval: Duration,
    pub cert_check_interval: Duration,
    /// The served == stored check's timer (`control/served.rs`); zero: off.
    pub verify_served_interval: Duration,
    pub upgrade_socket: PathBuf,
    pub upgrade: bool,
    pub daemon: bool,
    pub pid_file: PathBuf,
}

impl Config {
    /// Checks every flag and returns all problems at once.
    pub fn from_args(args: Args) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut error = |flag: &'static str, message: String| {
            errors.push(ConfigError { flag, message });
        };
        let cwd = std::env::current_dir();
        let mut absolute = |flag: &'static str, path: PathBuf| -> PathBuf {
            if path.is_absolute() {
                return path;
            }
            match &cwd {
                Ok(dir) => dir.join(path),
                Err(e) => {
                    error(flag, format!("{}: current directory: {e}", path.display()));
                    path
                }
            }
        };
        let routes = absolute("--routes", args.routes.clone());
        let certs_store = absolute("--certs-store", args.certs_store.clone());
        let admin_socket = absolute("--admin-socket", args.admin_socket.clone());
        let upgrade_socket = absolute("--upgrade-socket", args.upgrade_socket.clone());
        let pid_file = absolute("--pid-file", args.pid_file.clone());
        let staging_admin_socket = args
            .staging_admin_socket
            .clone()
            .map(|p| absolute("--staging-admin-socket", p));

        if args.https.is_empty() && args.http.is_empty() {
            error(
                "--http/--https",
                "no listener: give at least one --http or --https address".into(),
            );
        }
        // The same address twice (twice --http, or --http and --https): pingora would
        // share one socket between the two services, and a client would get plain HTTP
        // or TLS at random. Port 0 (the OS picks a port per listener) is never the same.
        let mut seen = std::collections::HashMap::new();
        for (flag, addr) in args
            .http
            .iter()
            .map(|a| ("--http", a))
            .chain(args.https.iter().map(|a| ("--https", a)))
        {
            if addr.port() == 0 {
                continue;
            }
            if let Some(first) = seen.insert(*addr, flag) {
                error(
                    flag,
                    format!("{addr}: already given as {first} (one listener per address)"),
                );
            }
        }
        let access_log = match args.access_log_format {
            AccessLogFormat::Off => {
                if args.access_log.is_some() {
                    error(
                        "--access-log",
                        "needs --access-log-format json or combined, not off".into(),
                    );
                }
                None
            }
            format => Some(AccessLogConfig {
                format: match format {
                    AccessLogFormat::Combined => access_log::Format::Combined,
                    _ => access_log::Format::Json,
                },
                path: args.access_log.clone(),
                queue_bytes: args.access_log_queue,
            }),
        };
        if let Some(life) = args.local_cert_lifetime {
            if life < Duration::from_secs(5) {
                error("--local-cert-lifetime", "at least 5s".into());
            }
        }
        let acme = acme_config(&args, &mut error);
        let acme_only = acme.is_some() && args.acme_fallback == AcmeFallback::None;
        let redirect_port = args
            .public_https_port
            .or_else(|| args.https.first().map(|a| a.port()))
            .filter(|p| *p != 443);
        if args.acme_http_port == 0 {
            error("--acme-http-port", "0 is no port".into());
        }
        let public_addrs = public_addrs(&args);
        let config = Config {
            routes,
            certs_store,
            http: args.http,
            https: args.https,
            admin_socket,
            admin_socket_mode: args.admin_socket_mode,
            staging_admin_socket,
            check: args.check,
            local_issuer: args.local_issuer == OnOff::On && !acme_only,
            local_cert_lifetime: args.local_cert_lifetime,
            acme,
            acme_fallback: args.acme_fallback,
            public_addrs,
            acme_http_port: args.acme_http_port,
            redirect_port,
            dns_server: args.dns_server,
            log_format: args.log_format,
            access_log,
            log_summary_interval: args.log_summary_interval,
            metrics: args.metrics,
            threads: args.threads.max(1),
            grace_period: args.grace_period,
            limits: ClientLimits {
                header_timeout: args.client_header_timeout,
                body_timeout: args.client_body_timeout,
                max_header_size: args.client_max_header_size,
                max_conns_per_ip: args.max_conns_per_ip,
            },
            store_check_interval: args.store_check_interval,
            cert_check_interval: args.cert_check_interval,
            verify_served_interval: args.verify_served_interval,
            upgrade_socket,
            upgrade: args.upgrade,
            daemon: args.daemon,
            pid_file,
        };
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The ACME flags -> `acme::Config`; `None` without `--acme-directory` (or with an error,
/// then reported through `error`).
/// `--public-addr`, else the --http and --https addresses that are not wildcards
/// (0.0.0.0 and [::] say nothing about where the names must point), each once.
fn public_addrs(args: &Args) -> Vec<std::net::IpAddr> {
    let mut addrs: Vec<std::net::IpAddr> = if args.public_addr.is_empty() {
        args.http
            .iter()
            .chain(&args.https)
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect()
    } else {
        args.public_addr.clone()
    };
    addrs.sort();
    addrs.dedup();
    addrs
}

fn acme_config(args: &Args, error: &mut impl FnMut(&'static str, String)) -> Option<acme::Config> {
    let Some(dir) = &args.acme_directory else {
        for (flag, given) in [
            ("--acme-ca-root", args.acme_ca_root.is_some()),
            ("--acme-contact", !args.acme_contact.is_empty()),
            ("--acme-eab-kid", args.acme_eab_kid.is_some()),
            ("--acme-profile", args.acme_profile.is_some()),
        ] {
            if given {
                error(flag, "needs --acme-directory".into());
            }
        }
        return None;
    };
    let mut ok = true;
    let mut fail = |flag: &'static str, message: String| {
        ok = false;
        error(flag, message);
    };
    let directory = acme::directory_url(dir)
        .map_err(|e| fail("--acme-directory", e.to_string()))
        .ok();
    if let Some(root) = &args.acme_ca_root {
        if let Err(e) = std::fs::metadata(root) {
            fail("--acme-ca-root", format!("{}: {e}", root.display()));
        }
    }
    let mut contact = Vec::new();
    for c in &args.acme_contact {
        match acme::contact_uri(c) {
            Ok(uri) => contact.push(uri),
            Err(e) => fail("--acme-contact", e.to_string()),
        }
    }
    let profile = match args
        .acme_profile
        .as_deref()
        .map(routes::check::acme_profile)
    {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            fail("--acme-profile", e);
            None
        }
    };
    let eab = acme::eab(args.acme_eab_kid.as_deref(), args.acme_eab_hmac.as_deref())
        .map_err(|e| fail("--acme-eab-kid/--acme-eab-hmac", e.to_string()))
        .ok()
        .flatten();
    Some(acme::Config {
        directory: directory.filter(|_| ok)?,
        ca_root: args.acme_ca_root.clone(),
        contact,
        challenge: match args.acme_challenge {
            AcmeChallenge::Http01 => acme::ChallengeKind::Http01,
            AcmeChallenge::TlsAlpn01 => acme::ChallengeKind::TlsAlpn01,
        },
        eab,
        profile,
    })
}

/// `--check`'s look at the certificate store, changing nothing: the directory is
/// readable (or, missing, can be created), and every entry of `certs/` parses (a
/// running daemon would move a corrupt one aside and not serve it). Every problem, one
/// per element. With `local_issuer`, the local CA (`local-ca/`) must load too.
pub fn check_store(dir: &Path, local_issuer: bool) -> Vec<String> {
    let mut problems = Vec::new();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Created at start: the nearest existing ancestor must be a writable directory.
            let parent = dir.ancestors().skip(1).find(|a| a.exists());
            match parent {
                Some(p) if p.is_dir() && writable(p) => {}
                Some(p) => problems.push(format!(
                    "{}: does not exist and cannot be created ({} is not a writable directory)",
                    dir.display(),
                    p.display()
                )),
                None => problems.push(format!("{}: does not exist", dir.display())),
            }
            return problems;
        }
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return problems;
        }
        Ok(m) if !m.is_dir() => {
            problems.push(format!("{}: not a directory", dir.display()));
            return problems;
        }
        Ok(_) => {}
    }
    if let Err(e) = std::fs::read_dir(dir) {
        problems.push(format!("{}: {e}", dir.display()));
        return problems;
    }
    // The local CA the daemon would load (or create, when absent) at start.
    if local_issuer {
        if let Err(e) = certs::LocalIssuer::check(&certs::Store::existing(dir)) {
            problems.push(format!("local CA: {e}"));
        }
    }
    let certs_dir = dir.join("certs");
    if !certs_dir.exists() {
        return problems;
    }
    let names = match std::fs::read_dir(&certs_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && !n.contains(".corrupt-"))
            .filter(|n| certs_dir.join(n).is_dir())
            .collect::<Vec<_>>(),
        Err(e) => {
            problems.push(format!("{}: {e}", certs_dir.display()));
            return problems;
        }
    };
    // Read as it is: `Store::open` would create missing subdirectories.
    let store = certs::Store::existing(dir);
    let mut names = names;
    names.sort();
    for id in names {
        if let Err(e) = store.load_one(&id) {
            problems.push(format!("certificate {id}: {e}"));
        }
    }
    problems
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn errors(flags: &[&str]) -> Vec<ConfigError> {
        let args =
            Args::try_parse_from(std::iter::once("proxyd").chain(flags.iter().copied())).unwrap();
        Config::from_args(args).unwrap_err().0
    }

    #[test]
    fn every_bad_flag_is_reported_at_once() {
        let e = errors(&[
            "--access-log-format",
            "off",
            "--access-log",
            "/tmp/x.log",
            "--local-cert-lifetime",
            "1s",
            "--acme-contact",
            "admin@example.org",
        ]);
        let flags: Vec<_> = e.iter().map(|e| e.flag).collect();
        assert_eq!(
            flags,
            ["--access-log", "--local-cert-lifetime", "--acme-contact"],
            "{e:?}"
        );
        let text = ConfigErrors(e).to_string();
        assert!(text.ends_with("flags: 3 errors"), "{text}");
    }

    fn config(flags: &[&str]) -> Config {
        let args =
            Args::try_parse_from(std::iter::once("proxyd").chain(flags.iter().copied())).unwrap();
        Config::from_args(args).unwrap()
    }

    #[test]
    fn public_addresses_default_to_the_listeners_that_are_not_wildcards() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(config(&[]).public_addrs.is_empty());
        let c = config(&[
            "--http",
            "0.0.0.0:80",
            "--http",
            "192.0.2.7:80",
            "--https",
            "192.0.2.7:443",
            "--https",
            "[2001:db8::7]:443",
        ]);
        assert_eq!(c.public_addrs, [ip("192.0.2.7"), ip("2001:db8::7")]);
        let c = config(&["--http", "192.0.2.7:80", "--public-addr", "198.51.100.1"]);
        assert_eq!(c.public_addrs, [ip("198.51.100.1")]);
        assert_eq!(c.acme_http_port, 80);
        let e = errors(&["--acme-http-port", "0"]);
        assert_eq!(e[0].flag, "--acme-http-port");
    }

    #[test]
    fn acme_flags_each_located() {
        let e = errors(&[
            "--acme-directory",
            "ftp://ca",
            "--acme-contact",
            "nobody",
            "--acme-ca-root",
            "/nonexistent/root.pem",
        ]);
        let flags: Vec<_> = e.iter().map(|e| e.flag).collect();
        assert_eq!(
            flags,
            ["--acme-directory", "--acme-ca-root", "--acme-contact"],
            "{e:?}"
        );
    }

    #[test]
    fn a_store_that_is_a_file_or_has_a_corrupt_entry_is_reported() {
        let tmp = std::env::temp_dir().join(format!("proxyd-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("store/certs/example.org")).unwrap();
        std::fs::write(tmp.join("file"), "x").unwrap();
        assert!(check_store(&tmp.join("missing"), true).is_empty());
        let p = check_store(&tmp.join("file"), true);
        assert!(p[0].ends_with("not a directory"), "{p:?}");
        std::fs::write(tmp.join("store/certs/example.org/fullchain.pem"), "garbage").unwrap();
        std::fs::write(tmp.join("store/certs/example.org/key.pem"), "garbage").unwrap();
        let p = check_store(&tmp.join("store"), true);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("certificate example.org: "), "{p:?}");
        // Nothing moved aside.
        assert!(tmp.join("store/certs/example.org/fullchain.pem").exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
