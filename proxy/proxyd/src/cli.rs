//! Command-line flags of `proxyd`. These names are a contract: outside tests drive the
//! daemon through them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxyd",
    version,
    about = "HTTPS reverse proxy and TLS terminator"
)]
pub struct Args {
    /// The routing table.
    #[arg(long, default_value = "routes.toml", value_name = "FILE")]
    pub routes: PathBuf,

    /// Directory of certificates, keys and the local CA (the daemon's only state).
    #[arg(long, default_value = "certs-store", value_name = "DIR")]
    pub certs_store: PathBuf,

    /// Plain-HTTP listener (redirects to https, answers ACME HTTP-01). Repeatable.
    #[arg(long = "http", value_name = "ADDR", default_values_t = default_http())]
    pub http: Vec<SocketAddr>,

    /// HTTPS listener. Repeatable.
    #[arg(long = "https", value_name = "ADDR", default_values_t = default_https())]
    pub https: Vec<SocketAddr>,

    /// Unix socket of the admin API (used by `proxyctl`).
    #[arg(long, value_name = "PATH", default_value = "/run/proxyd/admin.sock")]
    pub admin_socket: PathBuf,

    /// Mode of the admin socket: 600 (owner only) or 660 (owner and group).
    #[arg(long, default_value = "600", value_parser = parse_mode, value_name = "MODE")]
    pub admin_socket_mode: u32,

    /// Validate the flags, the routes file and the certificate store (readable, or
    /// absent; every stored certificate and the local CA parse), change nothing, print
    /// the result, and exit before binding any port.
    #[arg(long)]
    pub check: bool,

    /// Issue certificates from the embedded local CA for names that have none.
    #[arg(long, value_enum, default_value_t = OnOff::On, value_name = "on|off")]
    pub local_issuer: OnOff,

    /// ACME directory: `letsencrypt`, `letsencrypt-staging` or a URL. Without it the
    /// local issuer serves every name.
    #[arg(long, value_name = "URL|letsencrypt|letsencrypt-staging")]
    pub acme_directory: Option<String>,

    /// Extra root certificate(s) (PEM) to trust for the ACME directory's HTTPS (test CAs).
    #[arg(long, value_name = "FILE")]
    pub acme_ca_root: Option<PathBuf>,

    /// Contact e-mail of the ACME account. Repeatable.
    #[arg(long, value_name = "EMAIL")]
    pub acme_contact: Vec<String>,

    /// Challenge tried first (the other one is tried when it fails).
    #[arg(long, value_enum, default_value_t = AcmeChallenge::Http01, value_name = "http-01|tls-alpn-01")]
    pub acme_challenge: AcmeChallenge,

    /// ACME profile ordered for routes that set no `acme_profile` (e.g. `classic`,
    /// `tlsserver`, `shortlived` at Let's Encrypt). Checked at start and reload against
    /// the profiles the CA's directory offers. Default: the CA's default profile.
    #[arg(long, value_name = "NAME")]
    pub acme_profile: Option<String>,

    /// External Account Binding key id (with --acme-eab-hmac).
    #[arg(long, value_name = "KID", requires = "acme_eab_hmac")]
    pub acme_eab_kid: Option<String>,

    /// External Account Binding MAC key, base64url (with --acme-eab-kid).
    #[arg(long, value_name = "KEY", requires = "acme_eab_kid")]
    pub acme_eab_hmac: Option<String>,

    /// With ACME: what serves a name until its ACME certificate arrives: the local
    /// issuer, or nothing (handshakes for it fail).
    #[arg(long, value_enum, default_value_t = AcmeFallback::Local, value_name = "local|none")]
    pub acme_fallback: AcmeFallback,

    /// This proxy's public address, where routed names must point (checked by
    /// `proxyctl certs preflight`). Repeatable. Default: the --http and --https
    /// addresses that are not wildcards (0.0.0.0, [::]).
    #[arg(long = "public-addr", value_name = "IP")]
    pub public_addr: Vec<std::net::IpAddr>,

    /// Port where the ACME CA validates HTTP-01: 80 with every public CA, another only
    /// with a test CA. `proxyctl certs preflight` fetches a one-off token from each
    /// name's addresses on it.
    #[arg(long, default_value_t = 80, value_name = "PORT")]
    pub acme_http_port: u16,

    /// Port written into http->https redirects (default: the port of the first --https
    /// address; omitted when it is 443).
    #[arg(long, value_name = "PORT")]
    pub public_https_port: Option<u16>,

    /// Name server for upstream DNS names (IP or IP:port, port 53 by default; UDP and
    /// TCP). Repeatable. Default: the servers of /etc/resolv.conf.
    #[arg(long = "dns-server", value_name = "ADDR", value_parser = parse_dns_server)]
    pub dns_server: Vec<SocketAddr>,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Access log: one line per request, JSON lines or the combined log format.
    #[arg(long, value_enum, default_value_t = AccessLogFormat::Json, value_name = "json|combined|off")]
    pub access_log_format: AccessLogFormat,

    /// Write the access log to this file (reopened on SIGUSR1, for logrotate) instead of
    /// stderr.
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<PathBuf>,

    /// How far (in bytes of lines, e.g. 8m) the access log's writer may fall behind the
    /// requests before lines are dropped (and counted) rather than held in memory.
    #[arg(long, default_value = "8m", value_parser = parse_size, value_name = "SIZE")]
    pub access_log_queue: usize,

    /// What a client can repeat at will (client errors) or a dead backend makes repeat
    /// (upstream failures), dropped access-log lines, and libraries' repeated warnings
    /// are summed up in the daemon's log once per this interval, one line each.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub log_summary_interval: std::time::Duration,

    /// Serve Prometheus metrics (`GET /metrics`) and a health page (`GET /health`) on
    /// this address, meant for an internal one. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Worker threads per listener service.
    #[arg(long, default_value_t = default_threads(), value_name = "N")]
    pub threads: usize,

    /// Seconds that in-flight requests get to finish after SIGTERM or SIGQUIT.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub grace_period: u64,

    /// HTTP/1.x: time a client gets to send a whole request head, from its first byte
    /// (slowloris); over it the connection gets 408 and is closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub client_header_timeout: std::time::Duration,

    /// HTTP/1.x: longest wait between two reads of a request body; over it the request
    /// fails with 408 and the connection is closed. Not applied to a websocket after its
    /// 101 (the route's read_timeout is the tunnel's idle limit).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub client_body_timeout: std::time::Duration,

    /// Largest request head (HTTP/1.x request line and headers; HTTP/2 decoded header
    /// list), e.g. 64k. Over it: 431 (HTTP/1.x) or a stream reset (HTTP/2).
    #[arg(long, default_value = "64k", value_parser = parse_size, value_name = "SIZE")]
    pub client_max_header_size: usize,

    /// Open connections per client address (IPv6: per /64) over all listeners; more are
    /// closed at once. 0: no limit.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_conns_per_ip: u32,

    /// How often the certificate store is checked (writable, files of the served
    /// certificates intact); problems show in `proxyctl status` and the log.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub store_check_interval: std::time::Duration,

    /// How often each routed name's certificate, as the HTTPS listeners serve it, is
    /// compared with the one on disk (also after every certificate change); `0`: off.
    #[arg(long, default_value = "5m", value_parser = parse_interval, value_name = "DURATION")]
    pub verify_served_interval: std::time::Duration,

    /// For tests only: the lifetime of certificates from the local CA (default 30 days),
    /// e.g. `20s`, to watch them renewed while the daemon runs.
    #[arg(long, hide = true, value_parser = parse_duration, value_name = "DURATION")]
    pub local_cert_lifetime: Option<std::time::Duration>,

    /// For tests only: the longest wait between two looks of the certificate timer
    /// (which also wakes whenever a certificate is due): how soon a certificate changed
    /// on disk by hand is served.
    #[arg(long, hide = true, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub cert_check_interval: std::time::Duration,

    /// Socket used to hand listeners to a new binary on upgrade (see README).
    #[arg(long, default_value = "/run/proxyd/upgrade.sock", value_name = "PATH")]
    pub upgrade_socket: PathBuf,

    /// Take the listening sockets over from a running proxyd (binary upgrade; see
    /// `proxyctl upgrade`).
    #[arg(short = 'u', long)]
    pub upgrade: bool,

    /// With --upgrade: serve the admin API on PATH instead of --admin-socket, which the
    /// old process still owns; `proxyctl upgrade` sets it, and renames PATH over
    /// --admin-socket once this process is ready.
    #[arg(long, value_name = "PATH", requires = "upgrade")]
    pub staging_admin_socket: Option<PathBuf>,

    /// Run in the background; the command returns once the daemon is ready (systemd
    /// `Type=forking`). Logs stay on the inherited stderr (the journal).
    #[arg(short = 'd', long)]
    pub daemon: bool,

    /// Where the daemon's PID is written (with --daemon).
    #[arg(long, default_value = "/run/proxyd/proxyd.pid", value_name = "PATH")]
    pub pid_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcmeChallenge {
    #[value(name = "http-01")]
    Http01,
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcmeFallback {
    Local,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessLogFormat {
    Json,
    Combined,
    Off,
}

fn default_http() -> Vec<SocketAddr> {
    vec!["0.0.0.0:80".parse().unwrap(), "[::]:80".parse().unwrap()]
}

fn default_https() -> Vec<SocketAddr> {
    vec!["0.0.0.0:443".parse().unwrap(), "[::]:443".parse().unwrap()]
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match s.trim_start_matches('0') {
        "600" => Ok(0o600),
        "660" => Ok(0o660),
        _ => Err(format!("`{s}`: the admin socket mode is 600 or 660")),
    }
}

fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("`{s}`: expected an IP address, with or without port (e.g. 172.28.0.53 or 127.0.0.1:5353)"))
}

/// `30s`, `500ms`, `5m`: the forms of durations in routes.toml.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    routes::check::duration("duration", s)
}

/// A duration, or `0` for none (off).
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_duration(s)
}

/// `65536`, `64k`, `1m`: the forms of sizes in routes.toml (not `unlimited`).
fn parse_size(s: &str) -> Result<usize, String> {
    match routes::check::size("size", s)? {
        Some(n) if n > 0 => usize::try_from(n).map_err(|_| format!("`{s}` is too large")),
        _ => Err(format!(
            "`{s}`: expected a size greater than zero, e.g. 64k"
        )),
    }
}
