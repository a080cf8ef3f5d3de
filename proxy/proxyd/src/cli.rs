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

    /// Validate the routes file and the certificate store, print the result, and exit
    /// before binding any port.
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

    /// Port written into http->https redirects (default: the port of the first --https
    /// address; omitted when it is 443).
    #[arg(long, value_name = "PORT")]
    pub public_https_port: Option<u16>,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Worker threads per listener service.
    #[arg(long, default_value_t = default_threads(), value_name = "N")]
    pub threads: usize,

    /// Seconds that in-flight requests get to finish after SIGTERM or SIGQUIT.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub grace_period: u64,

    /// Socket used to hand listeners to a new binary on upgrade (see README).
    #[arg(long, default_value = "/run/proxyd/upgrade.sock", value_name = "PATH")]
    pub upgrade_socket: PathBuf,

    /// Take the listening sockets over from a running proxyd (binary upgrade).
    #[arg(short = 'u', long)]
    pub upgrade: bool,
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
