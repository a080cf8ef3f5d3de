//! The routing table: parse, validate and look up.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of pingora, TLS or
//! the network. `parse` takes the text of a routes file and returns either a validated
//! [`RouteTable`] or *every* problem found, each with `file:line:col`. Everything the
//! daemon does per request against the table is [`RouteTable::route`]: a hash lookup
//! and a scan over the (few) path prefixes of one host ([`RouteTable::lookup`]), plus a
//! second reading for the rare path that holds escapes. How paths are matched (path
//! parameters, a prefix ending in `/`, escapes) is described in `path.rs`.
//!
//! The file format is documented, key by key, in `proxy/routes/routes.reference.toml`
//! (a test keeps it valid and complete). Modules: `parse` walks the spanned TOML
//! document and collects diagnostics, `values` checks single values (sizes, durations,
//! hosts, upstreams, headers, paths); what clients send is checked and normalised by
//! `host` (request hosts), `path` (request paths) and `target` (methods and request
//! targets), all pure.

// No unsafe in this crate; the workspace lints (Cargo.toml) say why others have some.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use ipnet::IpNet;

mod diff;
mod host;
mod parse;
mod path;
mod target;
#[cfg(test)]
mod tests;
mod values;

pub use diff::{diff, TableDiff};
pub use host::{parse_request_host, HostError, HostPattern, RequestHost};
pub use parse::parse;
pub use path::{normalize_path, PathError};
pub use target::{check_request_target, h1_request_target, TargetError, TargetForm};

/// Checks of single values, for tools that write routes files (the inventory
/// generator): the very functions the parser uses, with messages but no position.
pub mod check {
    use crate::{values, HostPattern, IpNet};

    /// The policy keys of `[defaults]` (also route keys), in the reference file's order.
    pub use crate::parse::POLICY_KEYS;

    /// A host pattern as in `hosts`: `cloud.example.org`, `*.example.org` or an IP.
    pub fn host(raw: &str) -> Result<HostPattern, String> {
        values::host_pattern(raw)
    }

    /// A route or redirect `path` prefix.
    pub fn path(raw: &str) -> Result<String, String> {
        values::route_path(raw)
    }

    /// What a (valid) route path covers, as a key: two route paths with the same key
    /// cover the same request paths (`/api` and `/api/`; `/a%2Fb` and `/a/b`, which an
    /// upstream that decodes escapes cannot tell apart), so one host cannot have both.
    pub fn path_key(path: &str) -> String {
        crate::path::decoded_base(crate::base(path)).into_owned()
    }

    /// The DNS name of an upstream (`name` of an upstream table), normalised.
    pub fn upstream_name(raw: &str) -> Result<String, String> {
        values::upstream_name(raw)
    }

    /// A network as in `allow`: `172.28.0.0/16`, `fd00::/48` or a bare address.
    pub fn network(raw: &str) -> Result<IpNet, String> {
        values::cidr(raw)
    }

    /// An ACME profile name as in `acme_profile` (its syntax; whether the CA offers it
    /// is the daemon's check).
    pub fn acme_profile(raw: &str) -> Result<String, String> {
        values::acme_profile(raw)
    }

    /// A duration as in `read_timeout`: `"500ms"`, `"30s"`, `"5m"`, ... (`key` names the
    /// setting in the message).
    pub fn duration(key: &str, raw: &str) -> Result<std::time::Duration, String> {
        values::duration(key, raw)
    }

    /// A size in bytes as in `max_body`: `"65536"`, `"64k"`, `"1m"`, `"1g"` (1024-based);
    /// `None` for `"unlimited"`.
    pub fn size(key: &str, raw: &str) -> Result<Option<u64>, String> {
        if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            return raw
                .parse()
                .map(Some)
                .map_err(|_| format!("size `{raw}` for `{key}` is too large"));
        }
        values::size(key, raw)
    }
}

/// The hash maps of the table and of the parser: foldhash (randomly seeded per
/// process) rather than SipHash. Their keys come from the routes file, so a client can
/// only probe them, never add colliding keys; host lookups and the map-building of a
/// 10 000-route reload are several times cheaper.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A validated routing table. Built only by [`parse`] (the default is the empty table
/// that an empty file gives); immutable afterwards.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Exact host name -> its path entries, longest prefix first.
    pub(crate) exact: FastMap<String, PathSet>,
    /// Wildcard suffix (`example.org` for `*.example.org`) -> path entries.
    pub(crate) wildcard: FastMap<String, PathSet>,
    /// All proxy routes, in file order.
    pub routes: Vec<Arc<Route>>,
    /// All redirects, in file order.
    pub redirects: Vec<Arc<Redirect>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PathSet {
    /// Base (the target's path without its trailing `/`, `""` for `/`, kept beside it so
    /// a lookup reads no route) and target, sorted by base length, longest first.
    pub(crate) entries: Vec<(Box<str>, Target)>,
}

/// What a (host, path) resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Proxy(Arc<Route>),
    Redirect(Arc<Redirect>),
}

impl Target {
    /// The id of the route or redirect (for logs and metrics).
    pub fn id(&self) -> &str {
        match self {
            Target::Proxy(r) => &r.id,
            Target::Redirect(r) => &r.id,
        }
    }

    /// The path prefix it was found under.
    pub fn path(&self) -> &str {
        match self {
            Target::Proxy(r) => &r.path,
            Target::Redirect(r) => &r.path,
        }
    }
}

/// One `[[route]]`: host names + path prefix -> upstreams, with its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Stable identifier for logs and metrics: `name` from the file, else
    /// `<main host><path>` (e.g. `cloud.example.org/`).
    pub id: String,
    /// Main name first, then aliases, as written (normalised to lower case).
    pub hosts: Vec<HostPattern>,
    /// Path prefix, always starting with `/`.
    pub path: String,
    /// Remove `path` from the request path before forwarding (keeping a leading `/`).
    pub strip_prefix: bool,
    /// The ACME profile to order this route's certificate with (`acme_profile`);
    /// `None`: the daemon's `--acme-profile`, else the CA's default.
    pub acme_profile: Option<String>,
    pub upstreams: Vec<Upstream>,
    pub lb: LbPolicy,
    /// Routes that set no policy key of their own share one `Policy` (that of
    /// `[defaults]`): a large table holds one copy instead of one per route.
    pub policy: Arc<Policy>,
}

/// One `[[redirect]]`: host names + path prefix -> a fixed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub id: String,
    pub hosts: Vec<HostPattern>,
    pub path: String,
    /// Absolute URL (`https://example.org/`; one written without a path gets `/`) or an
    /// absolute path (`/remote.php/dav/`) on the same host over https. See
    /// [`Redirect::location`].
    pub to: String,
    /// Append the rest of the request path (after `path`) and the query to `to`.
    pub keep_path: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// Redirects are answered on :80 too (without first going to https) when false.
    pub https_redirect: bool,
}

/// Per-route limits and behaviour. Every field has a default in `[defaults]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `None` = unlimited.
    pub max_body: Option<u64>,
    pub connect_timeout: Duration,
    /// Longest wait for the upstream between two reads (and for the response head).
    pub read_timeout: Duration,
    /// Longest wait to hand a chunk to the upstream.
    pub write_timeout: Duration,
    /// How long an idle upstream keep-alive connection stays in the pool.
    pub idle_timeout: Duration,
    pub websocket: bool,
    pub hsts: Option<Hsts>,
    /// `None` = every client; otherwise only these networks (others get 403).
    pub allow: Option<Vec<IpNet>>,
    /// Set (replace) on the request to the upstream, in file order: `[defaults]` first,
    /// then the route's own. An empty value means *remove* the header.
    pub request_headers: Vec<(String, String)>,
    /// Set (replace) on the response to the client, as `request_headers` (empty value =
    /// remove).
    pub response_headers: Vec<(String, String)>,
    /// Plain-HTTP requests get a 308 to https (true), or are proxied as they are (false).
    pub https_redirect: bool,
    pub health_check: HealthCheck,
}

impl Default for Policy {
    /// The built-in defaults, used for every key neither the route nor `[defaults]` sets.
    fn default() -> Self {
        Policy {
            max_body: Some(10 << 20),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            websocket: false,
            hsts: Some(Hsts {
                max_age: Duration::from_secs(365 * 86_400),
                include_subdomains: false,
                preload: false,
            }),
            allow: None,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            https_redirect: true,
            health_check: HealthCheck {
                http_path: None,
                interval: Duration::from_secs(5),
            },
        }
    }
}

impl Redirect {
    /// The `Location` of the response to a request for `path` (without query) and
    /// `query` (without `?`). `authority` is the host (and port, if not 443) clients reach
    /// this proxy's https listener by; it is used when `to` is a path on the same host.
    ///
    /// With `keep_path`, the part of `path` after the redirect's prefix and the query
    /// are appended to `to`, without doubling a `/`.
    pub fn location(&self, authority: &str, path: &str, query: Option<&str>) -> String {
        let mut loc = if self.to.starts_with('/') {
            format!("https://{authority}{}", self.to)
        } else {
            self.to.clone()
        };
        if self.keep_path {
            let rest = rest_after(&self.path, path).unwrap_or("");
            if loc.ends_with('/') && rest.starts_with('/') {
                loc.pop();
            }
            if !rest.is_empty() && !rest.starts_with('/') && !loc.ends_with('/') {
                loc.push('/');
            }
            loc.push_str(rest);
            if let Some(q) = query.filter(|q| !q.is_empty()) {
                loc.push('?');
                loc.push_str(q);
            }
        }
        loc
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    /// The `Strict-Transport-Security` header value.
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `None`: TCP connect only. `Some(path)`: HTTP GET, healthy on a status below 500.
    pub http_path: Option<String>,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    /// Consistent hashing on the client address (sticky sessions).
    IpHash,
}

/// `host:port` of one upstream, by IP literal or DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Upstream {
    Addr(SocketAddr),
    /// A DNS name, resolved by the daemon in the background. `fallback` (possibly
    /// empty) holds the addresses to use, with `port`, while the name does not resolve
    /// (written `{ name = "...", port = 80, fallback = ["172.28.1.2"] }`).
    Name {
        host: String,
        port: u16,
        fallback: Vec<IpAddr>,
    },
}

impl Upstream {
    pub fn port(&self) -> u16 {
        match self {
            Upstream::Addr(a) => a.port(),
            Upstream::Name { port, .. } => *port,
        }
    }
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Upstream::Addr(a) => Some(a.ip()),
            Upstream::Name { .. } => None,
        }
    }
}

impl fmt::Display for Upstream {
    /// `172.28.1.2:80`, `[fd00::2]:80` or `gitlab-1.vrt.fsn:80` (fallbacks not shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Addr(a) => write!(f, "{a}"),
            Upstream::Name { host, port, .. } => write!(f, "{host}:{port}"),
        }
    }
}

/// One problem found in a routes file, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// Optional context line, e.g. `in [[route]] #3 (hosts = ["cloud.example.org"])`.
    pub context: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error: {}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )?;
        if let Some(c) = &self.context {
            write!(f, "\n  {c}")?;
        }
        Ok(())
    }
}

/// Every problem of a rejected routes file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl RouteTable {
    /// Resolve a request. `host` must already be checked and normalised by
    /// [`parse_request_host`] (its `name`: lower case, no port, no trailing dot); `path` is
    /// the request path without query, normalised with [`normalize_path`]. Exact names win
    /// over wildcards; within a host the longest matching prefix wins, matched against the
    /// path without its `;parameters` (see [`path_matches`]). The daemon calls
    /// [`RouteTable::route`], which adds the check of the decoded reading.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Target> {
        // Allocates only for a path with `;`.
        let path = path::without_params(path);
        let path: &str = &path;
        if let Some(t) = self.exact.get(host).and_then(|s| s.find(path)) {
            return Some(t);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent).and_then(|s| s.find(path))
    }

    /// Every name (exact or `*.suffix`) the table serves, sorted, without duplicates:
    /// the names that need a certificate.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.exact.len() + self.wildcard.len());
        names.extend(self.exact.keys().cloned());
        names.extend(self.wildcard.keys().map(|s| format!("*.{s}")));
        names.sort();
        names
    }

    /// Groups of names that may share one certificate: the hosts of each route or
    /// redirect, main name first. A name appears in the first group that lists it.
    pub fn certificate_groups(&self) -> Vec<Vec<String>> {
        self.certificate_groups_with_profiles()
            .into_iter()
            .map(|(g, _)| g)
            .collect()
    }

    /// [`RouteTable::certificate_groups`], each with the route's `acme_profile`
    /// (redirects have none).
    pub fn certificate_groups_with_profiles(&self) -> Vec<(Vec<String>, Option<String>)> {
        let mut seen: std::collections::HashSet<&HostPattern, foldhash::fast::RandomState> =
            Default::default();
        seen.reserve(self.exact.len() + self.wildcard.len());
        let mut groups = Vec::new();
        let all_hosts = self
            .routes
            .iter()
            .map(|r| (&r.hosts, r.acme_profile.as_ref()))
            .chain(self.redirects.iter().map(|r| (&r.hosts, None)));
        for (hosts, profile) in all_hosts {
            let group: Vec<String> = hosts
                .iter()
                .filter(|h| seen.insert(h))
                .map(|h| h.to_string())
                .collect();
            if !group.is_empty() {
                groups.push((group, profile.cloned()));
            }
        }
        groups
    }

    /// Whether any route or redirect serves this (normalised) host.
    pub fn knows_host(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, parent)| self.wildcard.contains_key(parent))
    }
}

impl PathSet {
    /// `path` without parameters.
    fn find(&self, path: &str) -> Option<&Target> {
        self.entries
            .iter()
            .find(|(base, _)| covers(base, path))
            .map(|(_, t)| t)
    }
}

/// A route path without its trailing `/` (`""` for `/`): what it is matched by.
pub(crate) fn base(prefix: &str) -> &str {
    prefix.strip_suffix('/').unwrap_or(prefix)
}

/// Whether the route path of base `base` covers `path` (without parameters): whole
/// segments only.
pub(crate) fn covers(base: &str, path: &str) -> bool {
    base.is_empty()
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Segment-aware prefix match, on the path with `;parameters` removed from every
/// segment: `/api` matches `/api`, `/api/x` and `/api;v=1/x` but not `/apix`; `/api/`
/// matches the same (a prefix ending in `/` also covers the bare path); `/` matches
/// everything.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    covers(base(prefix), &path::without_params(path))
}

/// The rest of `path` after the segments the route path `prefix` covers: `""` or
/// starting with `/`; `None` when `prefix` does not cover `path`. The parameters of the
/// covered segments go with them, and empty segments among them are skipped, as
/// [`path_matches`] reads them: `/app;x/y` and `/;s/app/y` under `/app/` leave `/y`.
pub(crate) fn rest_after<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    let base = base(prefix);
    if !path.contains(';') {
        return match path.strip_prefix(base) {
            Some(rest) if base.is_empty() || rest.is_empty() || rest.starts_with('/') => Some(rest),
            _ => None,
        };
    }
    let mut rest = path;
    for want in base.split('/').filter(|s| !s.is_empty()) {
        loop {
            let r = rest.strip_prefix('/')?;
            let end = r.find('/').unwrap_or(r.len());
            let name = r[..end].split(';').next().unwrap_or_default();
            rest = &r[end..];
            if name.is_empty() {
                continue; // `//` or parameters only: merged away
            }
            if name != want {
                return None;
            }
            break;
        }
    }
    Some(rest)
}

/// The path sent upstream for a route with `strip_prefix`: the segments the route's
/// path covers removed (with their parameters), keeping a leading `/`: `/app/x` under
/// `/app` -> `/x`, `/app` -> `/`, `/app;s=1/x` -> `/x`. What follows is kept as it is.
pub fn strip_path<'a>(prefix: &str, path: &'a str) -> std::borrow::Cow<'a, str> {
    match rest_after(prefix, path) {
        Some("") => "/".into(),
        Some(rest) if rest.starts_with('/') => rest.into(),
        Some(rest) => format!("/{rest}").into(),
        None => path.into(),
    }
}
