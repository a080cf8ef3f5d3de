//! `routes.toml` text -> [`RouteTable`], or every problem in it.
//!
//! The document is parsed with toml's spanned `DeTable` and walked by hand (rather than
//! through serde) so that one pass can report *all* unknown keys, wrong types and bad
//! values, each at its own position, and so that the raw file shape never leaks into the
//! validated types. The schema is documented in `routes.reference.toml`.

use std::ops::Range;
use std::sync::Arc;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::values::{self, RedirectTo};
use crate::{
    Diagnostic, Diagnostics, FastMap, HealthCheck, HostPattern, Hsts, IpNet, LbPolicy, PathSet,
    Policy, Redirect, Route, RouteTable, Target, Upstream,
};

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;

pub(crate) const TOP_KEYS: &[&str] = &["defaults", "route", "redirect"];

/// Keys of `[defaults]`, also accepted in a `[[route]]` as overrides.
pub const POLICY_KEYS: &[&str] = &[
    "max_body",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "idle_timeout",
    "websocket",
    "hsts",
    "hsts_max_age",
    "hsts_include_subdomains",
    "hsts_preload",
    "allow",
    "request_headers",
    "response_headers",
    "https_redirect",
    "lb",
    "health_check_path",
    "health_check_interval",
];

/// Keys only a `[[route]]` has (the policy keys come on top).
pub(crate) const ROUTE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "path",
    "strip_prefix",
    "upstreams",
    "acme_profile",
];

pub(crate) const REDIRECT_KEYS: &[&str] = &[
    "name",
    "hosts",
    "path",
    "to",
    "keep_path",
    "status",
    "https_redirect",
];

/// Parse and validate a routes file. `file` is only used in messages.
///
/// Returns every problem at once, in file order. Never panics.
pub fn parse(file: &str, text: &str) -> Result<RouteTable, Diagnostics> {
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let mut cx = Cx::new(file, text);
            let at = e.span().map_or(0, |s| s.start);
            cx.error(at, format!("invalid TOML: {}", e.message()));
            return Err(cx.into_diagnostics());
        }
    };
    let mut cx = Cx::new(file, text);
    let (routes, redirects) = cx.document(root.get_ref());
    if !cx.diags.is_empty() {
        return Err(cx.into_diagnostics());
    }
    Ok(build(routes, redirects))
}

/// Walk state: the file, the diagnostics found so far, the current context.
struct Cx<'a> {
    file: &'a str,
    /// Byte offset of the start of each line; computed on the first diagnostic (a valid
    /// file needs none).
    line_starts: std::cell::OnceCell<Vec<usize>>,
    text: &'a str,
    diags: Vec<(usize, Diagnostic)>,
    context: Context<'a>,
}

/// Which part of the file is being walked, for the context line of a diagnostic. Kept
/// as a reference and rendered only when a diagnostic is made: a valid file of 10 000
/// routes needs none of those lines.
#[derive(Clone, Copy)]
enum Context<'a> {
    Top,
    Defaults,
    /// `[[kind]]` number `n` (1-based) and its table.
    Item(&'static str, usize, &'a DeValue<'a>),
}

impl Context<'_> {
    /// `in [[route]] #3 (hosts = ["cloud.example.org"])`, `in [defaults]` or nothing.
    fn render(self) -> Option<String> {
        match self {
            Context::Top => None,
            Context::Defaults => Some("in [defaults]".into()),
            Context::Item(kind, n, item) => Some(item_context(kind, n, item)),
        }
    }
}

/// One `[[route]]` or `[[redirect]]` as walked: what it claims (its hosts with their
/// positions, its path, its id), which the duplicate checks borrow once every entry has
/// been walked, and the rest of the entry when all of it is valid.
struct Walked<'a, T> {
    hosts: Vec<(HostPattern, usize)>,
    path: Option<String>,
    /// The id, where it was given (`name`, or the entry's header), whether `name` gave it.
    id: Option<(String, usize, bool)>,
    context: Context<'a>,
    rest: Option<T>,
}

/// A host + path some entry claims, for the duplicate check: the path as written and
/// what it covers ([`crate::check::path_key`]).
struct Claim<'w, 'a> {
    host: &'w HostPattern,
    path: &'w str,
    key: std::borrow::Cow<'w, str>,
    at: usize,
    context: Context<'a>,
}

/// An id some entry claims, for the duplicate check.
struct IdClaim<'w, 'a> {
    id: &'w str,
    at: usize,
    explicit: bool,
    context: Context<'a>,
}

/// The fields of a valid route besides its claims.
struct RouteRest {
    strip_prefix: bool,
    acme_profile: Option<String>,
    upstreams: Vec<Upstream>,
    lb: LbPolicy,
    policy: Arc<Policy>,
}

/// The fields of a valid redirect besides its claims.
struct RedirectRest {
    to: String,
    keep_path: bool,
    status: u16,
    https_redirect: bool,
}

impl<'a, T> Walked<'a, T> {
    /// The valid entry's hosts (positions dropped), path, id and the rest.
    fn into_parts(self) -> Option<(Vec<HostPattern>, String, String, T)> {
        let rest = self.rest?;
        let hosts = self.hosts.into_iter().map(|(h, _)| h).collect();
        Some((hosts, self.path?, self.id?.0, rest))
    }
}

/// `[defaults]`: its keys, and the policy of every route that sets none of its own
/// (one `Arc` for all of them).
struct Defaults {
    keys: PolicyKeys,
    policy: Arc<Policy>,
    lb: LbPolicy,
}

impl<'a> Cx<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        Cx {
            file,
            line_starts: std::cell::OnceCell::new(),
            text,
            diags: Vec::new(),
            context: Context::Top,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let line_starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let line = line_starts.partition_point(|&s| s <= at);
        let start = line_starts[line - 1];
        (line, self.text[start..at].chars().count() + 1)
    }

    fn at_str(&self, at: usize) -> String {
        let (line, col) = self.position(at);
        format!("{}:{line}:{col}", self.file)
    }

    fn error(&mut self, at: usize, message: impl Into<String>) {
        let (line, col) = self.position(at);
        let d = Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
            context: self.context.render(),
        };
        self.diags.push((at, d));
    }

    fn into_diagnostics(mut self) -> Diagnostics {
        self.diags.sort_by_key(|(at, _)| *at);
        Diagnostics(self.diags.into_iter().map(|(_, d)| d).collect())
    }

    fn type_error(&mut self, key: &str, expected: &str, v: &Value) {
        self.error(
            v.span().start,
            format!("`{key}` must be {expected}, found {}", found(v.get_ref())),
        );
    }

    fn unknown_key(&mut self, key: &Spanned<std::borrow::Cow<str>>, expected: &[&str], note: &str) {
        let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
        self.error(
            key.span().start,
            format!(
                "unknown field `{}`{note}, expected one of {}",
                key.get_ref(),
                list.join(", ")
            ),
        );
    }

    // -- typed getters: `None` after reporting the problem -------------------------------

    fn bool(&mut self, key: &str, v: &Value) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(key, "a boolean (true or false)", v);
                None
            }
        }
    }

    fn str<'v>(&mut self, key: &str, v: &'v Value, expected: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.type_error(key, expected, v);
                None
            }
        }
    }

    /// Check a string value with `check`, reporting its message at the value.
    fn checked<T>(
        &mut self,
        key: &str,
        v: &Value,
        expected: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.str(key, v, expected)?;
        match check(s) {
            Ok(t) => Some(t),
            Err(msg) => {
                self.error(v.span().start, msg);
                None
            }
        }
    }

    /// An array of strings: each string element with its span, and whether all
    /// elements were strings. `None` if `v` is not an array.
    fn str_array<'v>(&mut self, key: &str, v: &'v Value) -> Option<(Vec<(&'v str, Span)>, bool)> {
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(key, "an array of strings", v);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), item.span())),
                other => {
                    ok = false;
                    self.error(
                        item.span().start,
                        format!("`{key}` must contain only strings, found {}", found(other)),
                    );
                }
            }
        }
        Some((out, ok))
    }

    // -- the document -----------------------------------------------------------------

    fn document(&mut self, root: &'a DeTable<'a>) -> (Vec<Route>, Vec<Redirect>) {
        let mut keys = PolicyKeys::default();
        if let Some(v) = root.get("defaults") {
            self.context = Context::Defaults;
            match v.get_ref() {
                DeValue::Table(t) => {
                    for (key, v) in entries(t) {
                        if !self.policy_key(&mut keys, key.get_ref(), v) {
                            self.unknown_key(key, POLICY_KEYS, "");
                        }
                    }
                }
                _ => {
                    self.context = Context::Top;
                    self.type_error("defaults", "a table ([defaults])", v);
                }
            }
            self.context = Context::Top;
        }
        let (policy, lb) = merge(&keys, &PolicyKeys::default());
        let defaults = Defaults {
            keys,
            policy: Arc::new(policy),
            lb,
        };

        let mut routes = Vec::new();
        let mut redirects = Vec::new();
        for (key, v) in entries(root) {
            match key.get_ref().as_ref() {
                "defaults" => {}
                "route" => {
                    let items = self.array_of_tables("route", v);
                    routes.reserve(items.len());
                    for (n, item) in items.into_iter().enumerate() {
                        self.context = Context::Item("route", n + 1, item.get_ref());
                        let before = self.diags.len();
                        if let Some(mut walked) = self.route(item, &defaults) {
                            if self.diags.len() != before {
                                walked.rest = None;
                            }
                            routes.push(walked);
                        }
                    }
                    self.context = Context::Top;
                }
                "redirect" => {
                    let items = self.array_of_tables("redirect", v);
                    redirects.reserve(items.len());
                    for (n, item) in items.into_iter().enumerate() {
                        self.context = Context::Item("redirect", n + 1, item.get_ref());
                        let before = self.diags.len();
                        if let Some(mut walked) = self.redirect(item, &defaults) {
                            if self.diags.len() != before {
                                walked.rest = None;
                            }
                            redirects.push(walked);
                        }
                    }
                    self.context = Context::Top;
                }
                _ => self.unknown_key(key, TOP_KEYS, ""),
            }
        }
        self.check_duplicates(&routes, &redirects);
        // Both arrays were walked in file order.
        let routes = routes
            .into_iter()
            .filter_map(Walked::into_parts)
            .map(|(hosts, path, id, r)| Route {
                id,
                hosts,
                path,
                strip_prefix: r.strip_prefix,
                acme_profile: r.acme_profile,
                upstreams: r.upstreams,
                lb: r.lb,
                policy: r.policy,
            })
            .collect();
        let redirects = redirects
            .into_iter()
            .filter_map(Walked::into_parts)
            .map(|(hosts, path, id, r)| Redirect {
                id,
                hosts,
                path,
                to: r.to,
                keep_path: r.keep_path,
                status: r.status,
                https_redirect: r.https_redirect,
            })
            .collect();
        (routes, redirects)
    }

    /// The items of `[[name]]`: an array whose items are tables.
    fn array_of_tables(&mut self, name: &str, v: &'a Value<'a>) -> Vec<&'a Value<'a>> {
        let expected = format!("an array of tables ([[{name}]])");
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(name, &expected, v);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            if item.get_ref().is_table() {
                out.push(item);
            } else {
                self.type_error(name, &expected, item);
            }
        }
        out
    }

    /// One `[defaults]` key into `keys`; `false` if `key` is not a policy key.
    fn policy_key(&mut self, keys: &mut PolicyKeys, key: &str, v: &Value) -> bool {
        const DURATION: &str = "a duration string (e.g. \"30s\")";
        let duration = |cx: &mut Self| cx.checked(key, v, DURATION, |s| values::duration(key, s));
        match key {
            "max_body" => {
                keys.max_body = match v.get_ref() {
                    DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                        Ok(n) if n < 0 => {
                            self.error(v.span().start, "`max_body` must not be negative");
                            None
                        }
                        Ok(n) if n <= u64::MAX as i128 => Some(Some(n as u64)),
                        _ => {
                            self.error(v.span().start, format!("`max_body` {i} is too large"));
                            None
                        }
                    },
                    DeValue::String(s) => match values::size(key, s) {
                        Ok(size) => Some(size),
                        Err(msg) => {
                            self.error(v.span().start, msg);
                            None
                        }
                    },
                    _ => {
                        self.type_error(key, "a number of bytes or a string like \"10m\"", v);
                        None
                    }
                }
            }
            "connect_timeout" => keys.connect_timeout = duration(self),
            "read_timeout" => keys.read_timeout = duration(self),
            "write_timeout" => keys.write_timeout = duration(self),
            "idle_timeout" => keys.idle_timeout = duration(self),
            "hsts_max_age" => keys.hsts_max_age = duration(self),
            "health_check_interval" => keys.health_check_interval = duration(self),
            "websocket" => keys.websocket = self.bool(key, v),
            "hsts" => keys.hsts = self.bool(key, v),
            "hsts_include_subdomains" => keys.hsts_include_subdomains = self.bool(key, v),
            "hsts_preload" => keys.hsts_preload = self.bool(key, v),
            "https_redirect" => keys.https_redirect = self.bool(key, v),
            "allow" => keys.allow = self.allow(v),
            "request_headers" => keys.request_headers = self.headers(key, v),
            "response_headers" => keys.response_headers = self.headers(key, v),
            "lb" => {
                keys.lb = self.checked(key, v, "a string", |s| match s {
                    "round_robin" => Ok(LbPolicy::RoundRobin),
                    "random" => Ok(LbPolicy::Random),
                    "ip_hash" => Ok(LbPolicy::IpHash),
                    _ => Err(format!(
                    "unknown `lb` policy `{s}`, expected one of `round_robin`, `random`, `ip_hash`"
                )),
                })
            }
            "health_check_path" => {
                keys.health_check_path = self.checked(key, v, "a string", values::health_check_path)
            }
            _ => return false,
        }
        true
    }

    fn allow(&mut self, v: &Value) -> Option<Vec<IpNet>> {
        let (items, mut ok) = self.str_array("allow", v)?;
        if items.is_empty() && ok {
            self.error(
                v.span().start,
                "`allow` is empty and would refuse every client; remove it to allow everyone",
            );
            return None;
        }
        let mut nets = Vec::new();
        for (s, span) in items {
            match values::cidr(s) {
                Ok(net) => nets.push(net),
                Err(msg) => {
                    self.error(span.start, msg);
                    ok = false;
                }
            }
        }
        ok.then_some(nets)
    }

    /// A header table: `{ "Name" = "value", ... }`, in file order.
    fn headers(&mut self, key: &str, v: &Value) -> Option<Vec<(String, String)>> {
        let DeValue::Table(t) = v.get_ref() else {
            self.type_error(key, "a table of header names to strings", v);
            return None;
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let mut first_at: Vec<usize> = Vec::new();
        let mut ok = true;
        for (name, value) in entries(t) {
            let name_at = name.span().start;
            if let Err(msg) = values::header_name(name.get_ref()) {
                self.error(name_at, msg);
                ok = false;
                continue;
            }
            if let Some(i) = out
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name.get_ref()))
            {
                let first = self.at_str(first_at[i]);
                self.error(
                    name_at,
                    format!(
                        "duplicate header `{}` in `{key}` (first at {first})",
                        name.get_ref()
                    ),
                );
                ok = false;
                continue;
            }
            let Some(s) = self.str(name.get_ref(), value, "a string (\"\" removes the header)")
            else {
                ok = false;
                continue;
            };
            if let Err(msg) = values::header_value(name.get_ref(), s) {
                self.error(value.span().start, msg);
                ok = false;
                continue;
            }
            out.push((name.get_ref().to_string(), s.to_string()));
            first_at.push(name_at);
        }
        ok.then_some(out)
    }

    /// `hosts`: required, non-empty; each a valid pattern.
    fn hosts(&mut self, table: &DeTable, header_at: usize) -> Vec<(HostPattern, usize)> {
        let Some(v) = table.get("hosts") else {
            self.error(header_at, "missing field `hosts`");
            return Vec::new();
        };
        let Some((items, all_strings)) = self.str_array("hosts", v) else {
            return Vec::new();
        };
        if items.is_empty() && all_strings {
            self.error(v.span().start, "`hosts` must not be empty");
        }
        let mut out = Vec::new();
        for (s, span) in items {
            match values::host_pattern(s) {
                Ok(h) => out.push((h, span.start)),
                Err(msg) => self.error(span.start, msg),
            }
        }
        out
    }

    /// `path`: optional, default `/`. `None` if invalid.
    fn path(&mut self, table: &DeTable) -> Option<String> {
        match table.get("path") {
            None => Some("/".into()),
            Some(v) => self.checked("path", v, "a string", values::route_path),
        }
    }

    /// `name`: optional; a non-empty string without whitespace or control characters.
    fn name(&mut self, table: &DeTable) -> Option<(String, usize)> {
        let v = table.get("name")?;
        let s = self.str("name", v, "a string")?;
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic()) {
            self.error(
                v.span().start,
                format!(
                    "invalid name `{}`: must be non-empty visible ASCII without spaces",
                    s.escape_debug()
                ),
            );
            return None;
        }
        Some((s.to_string(), v.span().start))
    }

    /// The id of an entry: its `name`, else `<main host><path>`.
    fn entry_id(
        name: Option<(String, usize)>,
        hosts: &[(HostPattern, usize)],
        path: Option<&str>,
        header_at: usize,
    ) -> Option<(String, usize, bool)> {
        match name {
            Some((name, at)) => Some((name, at, true)),
            None => Some((format!("{}{}", hosts.first()?.0, path?), header_at, false)),
        }
    }

    fn route(&mut self, item: &Value, defaults: &Defaults) -> Option<Walked<'a, RouteRest>> {
        let DeValue::Table(t) = item.get_ref() else {
            return None;
        };
        let header_at = item.span().start;
        let mut own = PolicyKeys::default();
        let mut strip_prefix = Some(false);
        let mut acme_profile = Some(None);
        for (key, v) in t.iter() {
            match key.get_ref().as_ref() {
                "name" | "hosts" | "path" | "upstreams" => {} // below
                "strip_prefix" => strip_prefix = self.bool("strip_prefix", v),
                "acme_profile" => {
                    acme_profile = self
                        .checked("acme_profile", v, "a string", values::acme_profile)
                        .map(Some)
                }
                k if self.policy_key(&mut own, k, v) => {}
                k => {
                    let note = if REDIRECT_KEYS.contains(&k) {
                        " in a [[route]] (it is a [[redirect]] key)"
                    } else {
                        ""
                    };
                    let expected: Vec<&str> =
                        ROUTE_KEYS.iter().chain(POLICY_KEYS).copied().collect();
                    self.unknown_key(key, &expected, note);
                }
            }
        }
        let name = self.name(t);
        let hosts = self.hosts(t, header_at);
        let path = self.path(t);
        let upstreams = self.upstreams(t, header_at);
        let id = Self::entry_id(name, &hosts, path.as_deref(), header_at);

        let (policy, lb) = if own.is_empty() {
            (defaults.policy.clone(), defaults.lb)
        } else {
            let (policy, lb) = merge(&defaults.keys, &own);
            (Arc::new(policy), lb)
        };
        let rest = match (strip_prefix, acme_profile, upstreams) {
            (Some(strip_prefix), Some(acme_profile), Some(upstreams)) => Some(RouteRest {
                strip_prefix,
                acme_profile,
                upstreams,
                lb,
                policy,
            }),
            _ => None,
        };
        Some(Walked {
            hosts,
            path,
            id,
            context: self.context,
            rest,
        })
    }

    /// `upstreams`: required, non-empty, no duplicates. Each item is a string
    /// (`"172.28.1.50:80"`, `"[fd00::1]:80"`, `"name:80"`) or a table
    /// `{ name = "...", port = 80, fallback = ["172.28.1.50", ...] }`.
    fn upstreams(&mut self, table: &DeTable, header_at: usize) -> Option<Vec<Upstream>> {
        const EXPECTED: &str =
            "an array of upstreams (\"host:port\" or { name = \"...\", port = 80 })";
        let Some(v) = table.get("upstreams") else {
            self.error(header_at, "missing field `upstreams`");
            return None;
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error("upstreams", EXPECTED, v);
            return None;
        };
        if items.is_empty() {
            self.error(v.span().start, "`upstreams` must not be empty");
            return None;
        }
        let mut ok = true;
        let mut out: Vec<Upstream> = Vec::with_capacity(items.len());
        for item in items.iter() {
            let parsed = match item.get_ref() {
                DeValue::String(s) => match values::upstream(s) {
                    Ok(u) => Some(u),
                    Err(msg) => {
                        self.error(item.span().start, msg);
                        None
                    }
                },
                DeValue::Table(t) => self.upstream_table(t, item.span().start),
                other => {
                    self.error(
                        item.span().start,
                        format!(
                            "`upstreams` must contain strings (\"host:port\") or tables ({{ name = \"...\", port = 80 }}), found {}",
                            found(other)
                        ),
                    );
                    None
                }
            };
            match parsed {
                // Same target twice (whatever the fallbacks): `host:port` is the key.
                Some(u) if out.iter().any(|o| o.to_string() == u.to_string()) => {
                    self.error(item.span().start, format!("duplicate upstream `{u}`"));
                    ok = false;
                }
                Some(u) => out.push(u),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `{ name = "gitlab-1.vrt.fsn", port = 80, fallback = ["172.28.1.2"] }`.
    fn upstream_table(&mut self, t: &DeTable, at: usize) -> Option<Upstream> {
        const KEYS: &[&str] = &["name", "port", "fallback"];
        let mut ok = true;
        for (key, _) in t.iter() {
            if !KEYS.contains(&key.get_ref().as_ref()) {
                self.unknown_key(key, KEYS, " in an upstream table");
                ok = false;
            }
        }
        let host = match t.get("name") {
            None => {
                self.error(at, "missing field `name` in upstream table");
                None
            }
            Some(v) => self.checked("name", v, "a string (a DNS name)", values::upstream_name),
        };
        let port = match t.get("port") {
            None => {
                self.error(at, "missing field `port` in upstream table");
                None
            }
            Some(v) => match v.get_ref() {
                DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                    Ok(p @ 1..=65535) => Some(p as u16),
                    _ => {
                        self.error(
                            v.span().start,
                            format!("invalid upstream `port` {i}, expected 1-65535"),
                        );
                        None
                    }
                },
                _ => {
                    self.type_error("port", "an integer (1-65535)", v);
                    None
                }
            },
        };
        let mut fallback = Vec::new();
        if let Some(v) = t.get("fallback") {
            match self.str_array("fallback", v) {
                None => ok = false,
                Some((items, all_strings)) => {
                    ok &= all_strings;
                    for (s, span) in items {
                        match values::fallback_addr(s) {
                            Ok(ip) if fallback.contains(&ip) => {
                                self.error(
                                    span.start,
                                    format!("duplicate fallback address `{ip}`"),
                                );
                                ok = false;
                            }
                            Ok(ip) => fallback.push(ip),
                            Err(msg) => {
                                self.error(span.start, msg);
                                ok = false;
                            }
                        }
                    }
                }
            }
        }
        let (host, port) = (host?, port?);
        ok.then_some(Upstream::Name {
            host,
            port,
            fallback,
        })
    }

    fn redirect(&mut self, item: &Value, defaults: &Defaults) -> Option<Walked<'a, RedirectRest>> {
        let DeValue::Table(t) = item.get_ref() else {
            return None;
        };
        let header_at = item.span().start;
        let mut keep_path = Some(false);
        let mut status = Some(308);
        let mut https_redirect = Some(defaults.keys.https_redirect.unwrap_or(true));
        for (key, v) in t.iter() {
            match key.get_ref().as_ref() {
                "name" | "hosts" | "path" | "to" => {} // below
                "keep_path" => keep_path = self.bool("keep_path", v),
                "https_redirect" => https_redirect = self.bool("https_redirect", v),
                "status" => status = self.status(v),
                k => {
                    let note = if POLICY_KEYS.contains(&k) || ROUTE_KEYS.contains(&k) {
                        " in a [[redirect]] (it applies to a [[route]])"
                    } else {
                        ""
                    };
                    self.unknown_key(key, REDIRECT_KEYS, note);
                }
            }
        }
        let name = self.name(t);
        let hosts = self.hosts(t, header_at);
        let path = self.path(t);
        let to = match t.get("to") {
            None => {
                self.error(header_at, "missing field `to`");
                None
            }
            Some(v) => self
                .checked("to", v, "a string", values::redirect_to)
                .and_then(|to| self.check_redirect_to(v, to, &hosts, path.as_deref(), keep_path)),
        };
        let id = Self::entry_id(name, &hosts, path.as_deref(), header_at);
        let rest = match (to, keep_path, status, https_redirect) {
            (Some(to), Some(keep_path), Some(status), Some(https_redirect)) => Some(RedirectRest {
                to: to.to,
                keep_path,
                status,
                https_redirect,
            }),
            _ => None,
        };
        Some(Walked {
            hosts,
            path,
            id,
            context: self.context,
            rest,
        })
    }

    fn status(&mut self, v: &Value) -> Option<u16> {
        const ALLOWED: &str = "301, 302, 303, 307 or 308";
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_error("status", &format!("an integer ({ALLOWED})"), v);
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n @ (301 | 302 | 303 | 307 | 308)) => Some(n as u16),
            _ => {
                self.error(
                    v.span().start,
                    format!("invalid redirect `status` {i}, expected {ALLOWED}"),
                );
                None
            }
        }
    }

    /// A redirect target that could never work: a query with `keep_path`, or a target
    /// that the redirect itself matches again (a loop).
    fn check_redirect_to(
        &mut self,
        v: &Value,
        to: RedirectTo,
        hosts: &[(HostPattern, usize)],
        path: Option<&str>,
        keep_path: Option<bool>,
    ) -> Option<RedirectTo> {
        if to.has_query && keep_path == Some(true) {
            self.error(
                v.span().start,
                format!("redirect target `{}` has a query or fragment, which `keep_path = true` cannot append to", to.to),
            );
            return None;
        }
        let same_host = match &to.host {
            None => true,
            Some(h) => hosts.iter().any(|(p, _)| p.matches(h)),
        };
        if let Some(path) = path {
            // The target as the request for it will be routed (`/%61` is `/a`).
            let to_path = crate::normalize_path(&to.path).unwrap_or(to.path.as_str().into());
            if same_host && crate::path_matches(path, &to_path) {
                self.error(
                    v.span().start,
                    format!(
                        "redirect target `{}` is matched by this redirect again (a redirect loop)",
                        to.to
                    ),
                );
                return None;
            }
        }
        Some(to)
    }

    /// Duplicate host+path pairs and duplicate ids, reported at the later one in the file.
    fn check_duplicates<R, D>(&mut self, routes: &[Walked<'a, R>], redirects: &[Walked<'a, D>]) {
        // Borrowed from the walked entries: no copy of any host, path or id.
        let mut claims: Vec<Claim> = Vec::with_capacity(routes.len() + redirects.len());
        let mut ids: Vec<IdClaim> = Vec::with_capacity(routes.len() + redirects.len());
        let walked = routes
            .iter()
            .map(|w| (&w.hosts, &w.path, &w.id, w.context))
            .chain(
                redirects
                    .iter()
                    .map(|w| (&w.hosts, &w.path, &w.id, w.context)),
            );
        for (hosts, path, id, context) in walked {
            if let Some(path) = path {
                let key = crate::path::decoded_base(crate::base(path));
                for (h, at) in hosts {
                    claims.push(Claim {
                        host: h,
                        path,
                        key: key.clone(),
                        at: *at,
                        context,
                    });
                }
            }
            if let Some((id, at, explicit)) = id {
                ids.push(IdClaim {
                    id,
                    at: *at,
                    explicit: *explicit,
                    context,
                });
            }
        }
        claims.sort_by_key(|c| c.at);
        let mut first: FastMap<(&HostPattern, &str), &Claim> = FastMap::default();
        first.reserve(claims.len());
        let mut found = Vec::new();
        for c in &claims {
            if let Some(f) = first.get(&(c.host, &*c.key)) {
                let msg = if f.path == c.path {
                    format!(
                        "duplicate route {}{} (first at {})",
                        c.host,
                        c.path,
                        self.at_str(f.at)
                    )
                } else {
                    let why = if crate::base(f.path) == crate::base(c.path) {
                        "a path ending in `/` also covers the path without it"
                    } else {
                        "an upstream that decodes escapes reads both as one path"
                    };
                    format!(
                        "duplicate route {}{}: it covers the same paths as {}{} (first at {}; {why})",
                        c.host,
                        c.path,
                        f.host,
                        f.path,
                        self.at_str(f.at)
                    )
                };
                found.push((c.at, msg, c.context));
            } else {
                first.insert((c.host, &*c.key), c);
            }
        }
        ids.sort_by_key(|c| c.at);
        let mut first: FastMap<&str, &IdClaim> = FastMap::default();
        first.reserve(ids.len());
        for c in &ids {
            match first.get(c.id) {
                // Two default ids are equal only if their first host and path are: the
                // host+path check has already reported that.
                Some(f) if !f.explicit && !c.explicit => {}
                Some(f) => {
                    let msg = format!(
                        "duplicate id `{}` (first at {}); give one of them a distinct `name`",
                        c.id,
                        self.at_str(f.at)
                    );
                    found.push((c.at, msg, c.context));
                }
                None => {
                    first.insert(c.id, c);
                }
            }
        }
        for (at, msg, context) in found {
            self.context = context;
            self.error(at, msg);
        }
        self.context = Context::Top;
    }
}

/// The entries of a table in file order (toml's map may be sorted by key), where the
/// order matters (the first of two duplicate headers). Elsewhere the table is walked in
/// its own order: every diagnostic carries its position and they are sorted at the end.
fn entries<'t, 'i>(
    t: &'t DeTable<'i>,
) -> Vec<(&'t Spanned<std::borrow::Cow<'i, str>>, &'t Value<'i>)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

/// "a string", "an integer", ...
fn found(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// `in [[route]] #3 (hosts = ["cloud.example.org"])`: which entry a message is about.
fn item_context(kind: &str, n: usize, item: &DeValue) -> String {
    let mut s = format!("in [[{kind}]] #{n}");
    let Some(t) = item.as_table() else { return s };
    let strings = |v: &Value| -> Option<Vec<String>> {
        let a = v.get_ref().as_array()?;
        a.iter()
            .map(|e| e.get_ref().as_str().map(|s| format!("{s:?}")))
            .collect()
    };
    if let Some(hosts) = t.get("hosts").and_then(strings).filter(|h| !h.is_empty()) {
        s.push_str(&format!(" (hosts = [{}])", hosts.join(", ")));
    } else if let Some(name) = t.get("name").and_then(|v| v.get_ref().as_str()) {
        s.push_str(&format!(" (name = {name:?})"));
    }
    s
}

/// The policy keys of `[defaults]` or of one route: `None` = not given.
#[derive(Debug, Default, PartialEq)]
struct PolicyKeys {
    /// `Some(None)` = "unlimited".
    max_body: Option<Option<u64>>,
    connect_timeout: Option<std::time::Duration>,
    read_timeout: Option<std::time::Duration>,
    write_timeout: Option<std::time::Duration>,
    idle_timeout: Option<std::time::Duration>,
    websocket: Option<bool>,
    hsts: Option<bool>,
    hsts_max_age: Option<std::time::Duration>,
    hsts_include_subdomains: Option<bool>,
    hsts_preload: Option<bool>,
    allow: Option<Vec<IpNet>>,
    request_headers: Option<Vec<(String, String)>>,
    response_headers: Option<Vec<(String, String)>>,
    https_redirect: Option<bool>,
    lb: Option<LbPolicy>,
    /// `Some(None)` = "" (TCP check).
    health_check_path: Option<Option<String>>,
    health_check_interval: Option<std::time::Duration>,
}

impl PolicyKeys {
    /// No key given: the route's policy is that of `[defaults]`.
    fn is_empty(&self) -> bool {
        *self == PolicyKeys::default()
    }
}

/// A route's keys over `[defaults]` over the built-in defaults.
fn merge(defaults: &PolicyKeys, own: &PolicyKeys) -> (Policy, LbPolicy) {
    let base = Policy::default();
    let base_hsts = base.hsts.clone().unwrap_or(Hsts {
        max_age: std::time::Duration::from_secs(365 * 86_400),
        include_subdomains: false,
        preload: false,
    });
    macro_rules! pick {
        ($field:ident, $fallback:expr) => {
            own.$field
                .clone()
                .or_else(|| defaults.$field.clone())
                .unwrap_or($fallback)
        };
    }
    let hsts = pick!(hsts, true).then(|| Hsts {
        max_age: pick!(hsts_max_age, base_hsts.max_age),
        include_subdomains: pick!(hsts_include_subdomains, base_hsts.include_subdomains),
        preload: pick!(hsts_preload, base_hsts.preload),
    });
    let policy = Policy {
        max_body: pick!(max_body, base.max_body),
        connect_timeout: pick!(connect_timeout, base.connect_timeout),
        read_timeout: pick!(read_timeout, base.read_timeout),
        write_timeout: pick!(write_timeout, base.write_timeout),
        idle_timeout: pick!(idle_timeout, base.idle_timeout),
        websocket: pick!(websocket, base.websocket),
        hsts,
        allow: own.allow.clone().or_else(|| defaults.allow.clone()),
        request_headers: merge_headers(&defaults.request_headers, &own.request_headers),
        response_headers: merge_headers(&defaults.response_headers, &own.response_headers),
        https_redirect: pick!(https_redirect, base.https_redirect),
        health_check: HealthCheck {
            http_path: pick!(health_check_path, base.health_check.http_path),
            interval: pick!(health_check_interval, base.health_check.interval),
        },
    };
    (policy, pick!(lb, LbPolicy::RoundRobin))
}

/// Defaults first, in file order; a route's header replaces the default of the same
/// name (case-insensitively) in place, other route headers follow in file order.
pub(crate) fn merge_headers(
    defaults: &Option<Vec<(String, String)>>,
    own: &Option<Vec<(String, String)>>,
) -> Vec<(String, String)> {
    let mut out = defaults.clone().unwrap_or_default();
    for (name, value) in own.iter().flatten() {
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(slot) => *slot = (name.clone(), value.clone()),
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}

/// Index the validated entries by host and path.
fn build(routes: Vec<Route>, redirects: Vec<Redirect>) -> RouteTable {
    let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
    let redirects: Vec<Arc<Redirect>> = redirects.into_iter().map(Arc::new).collect();
    let mut exact: FastMap<String, PathSet> = FastMap::default();
    let mut wildcard: FastMap<String, PathSet> = FastMap::default();
    exact.reserve(routes.len() + redirects.len());
    let targets = routes
        .iter()
        .map(|r| (&r.hosts, Target::Proxy(r.clone())))
        .chain(
            redirects
                .iter()
                .map(|r| (&r.hosts, Target::Redirect(r.clone()))),
        );
    for (hosts, target) in targets {
        for host in hosts {
            let set = match host {
                HostPattern::Exact(h) => exact.entry(h.clone()).or_default(),
                HostPattern::Wildcard(s) => wildcard.entry(s.clone()).or_default(),
            };
            set.entries
                .push((crate::base(target.path()).into(), target.clone()));
        }
    }
    for set in exact.values_mut().chain(wildcard.values_mut()) {
        // Stable: equal lengths keep file order (and never both match one path: equal
        // bases are duplicates, refused).
        set.entries
            .sort_by_key(|(base, _)| std::cmp::Reverse(base.len()));
    }
    RouteTable {
        exact,
        wildcard,
        routes,
        redirects,
    }
}
