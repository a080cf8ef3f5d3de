//! Inventory text -> [`Inventory`], or every problem in it, each at its position.
//!
//! The walk goes over the format-neutral tree of `tree`, so TOML and JSON give the same
//! messages at the same kind of position. Values that end up in routes.toml (policy
//! keys, host names, paths) are checked by the routes crate's own functions, so the
//! inventory accepts exactly what routes.toml accepts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use routes::{Diagnostic, Diagnostics, HostPattern};

use crate::tree::{self, Key, Node, Val};
use crate::{App, Format, Host, Inventory, IpNet, Policy, PolicyValue, Service};

pub(crate) const TOP_KEYS: &[&str] = &["internal_networks", "defaults", "host", "service"];
pub(crate) const HOST_KEYS: &[&str] = &["name", "site", "hypervisor", "ipv4", "ipv6", "dns"];
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "id",
    "name",
    "aliases",
    "redirect_from",
    "host",
    "port",
    "path",
    "strip_prefix",
    "acme_profile",
    "redirect_paths",
    "redirect_status",
    "app",
    "overrides",
];

/// Statuses a redirect can have (as routes.toml's `status`).
const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Parse and validate an inventory, in the format [`Format::detect`] finds. `file`
/// names it in messages and in the generated header.
///
/// Returns every problem at once, in file order. Never panics.
pub fn parse(file: &str, text: &str) -> Result<Inventory, Diagnostics> {
    parse_as(file, text, Format::detect(file, text))
}

/// [`parse`] in the given format.
pub fn parse_as(file: &str, text: &str, format: Format) -> Result<Inventory, Diagnostics> {
    let mut cx = Cx::new(file, text, format);
    let root = match format {
        Format::Toml => tree::from_toml(text),
        Format::Json => tree::from_json(text).map(|(root, duplicates)| {
            for d in duplicates {
                let first = cx.at_str(d.first);
                cx.error(
                    d.at,
                    format!("duplicate key `{}` (first at {first})", d.name),
                );
            }
            root
        }),
    };
    let root = match root {
        Ok(root) => root,
        Err((at, msg)) => {
            cx.error(at, msg);
            return Err(cx.into_diagnostics());
        }
    };
    let inventory = cx.document(&root);
    if !cx.diags.is_empty() {
        return Err(cx.into_diagnostics());
    }
    Ok(inventory)
}

/// Walk state: the file, the diagnostics so far, the current context line.
struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    format: Format,
    line_starts: Vec<usize>,
    diags: Vec<(usize, Diagnostic)>,
    context: Option<String>,
}

/// Where the parts of a host were written, for the cross-checks.
struct HostAt {
    name: usize,
    ipv4: usize,
    ipv6: usize,
    dns: usize,
    context: Option<String>,
}

/// Where the parts of a service were written.
struct ServiceAt {
    id: usize,
    /// Position of each of `name`, then `aliases`, then `redirect_from`, as listed.
    names: Vec<usize>,
    host: usize,
    app: usize,
    path: usize,
    strip_prefix: usize,
    /// Position of each of `redirect_paths`, in the order of the service's (sorted) list.
    redirect_paths: Vec<usize>,
    context: Option<String>,
}

impl<'a> Cx<'a> {
    fn new(file: &'a str, text: &'a str, format: Format) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Cx {
            file,
            text,
            format,
            line_starts,
            diags: Vec::new(),
            context: None,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= at);
        let start = self.line_starts[line - 1];
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
            context: self.context.clone(),
        };
        self.diags.push((at, d));
    }

    fn error_in(&mut self, context: &Option<String>, at: usize, message: impl Into<String>) {
        let saved = std::mem::replace(&mut self.context, context.clone());
        self.error(at, message);
        self.context = saved;
    }

    fn into_diagnostics(mut self) -> Diagnostics {
        self.diags.sort_by_key(|(at, _)| *at);
        Diagnostics(self.diags.into_iter().map(|(_, d)| d).collect())
    }

    fn type_error(&mut self, key: &str, expected: &str, v: &Node) {
        self.error(
            v.at,
            format!("`{key}` must be {expected}, found {}", v.val.kind()),
        );
    }

    fn unknown_key(&mut self, key: &Key, expected: &[&str], what: &str) {
        let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
        self.error(
            key.at,
            format!(
                "unknown field `{}`{what}, expected one of {}",
                key.name,
                list.join(", ")
            ),
        );
    }

    /// How an entry is named in context lines: `[[service]] #3` in TOML, the JSON
    /// pointer `/service/2` in JSON.
    fn entry_context(&self, kind: &str, index: usize, item: &Node) -> String {
        let mut s = match self.format {
            Format::Toml => format!("in [[{kind}]] #{}", index + 1),
            Format::Json => format!("in /{kind}/{index}"),
        };
        if let Some(name) = item.get("name").and_then(Node::as_str) {
            s.push_str(&format!(" (name = {name:?})"));
        }
        s
    }

    fn table_context(&self, key: &str) -> String {
        match self.format {
            Format::Toml => format!("in [{key}]"),
            Format::Json => format!("in /{key}"),
        }
    }

    // -- typed getters: `None` after reporting the problem ---------------------------

    fn str<'v>(&mut self, key: &str, v: &'v Node) -> Option<&'v str> {
        match &v.val {
            Val::Str(s) => Some(s),
            _ => {
                self.type_error(key, "a string", v);
                None
            }
        }
    }

    /// A string checked by `check`, whose message is reported at the value.
    fn checked<T>(
        &mut self,
        key: &str,
        v: &Node,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.str(key, v)?;
        check(s).map_err(|msg| self.error(v.at, msg)).ok()
    }

    /// An array of strings, each with its offset. Non-strings are reported.
    fn str_array<'v>(&mut self, key: &str, v: &'v Node) -> Vec<(&'v str, usize)> {
        let Val::Array(items) = &v.val else {
            self.type_error(key, "an array of strings", v);
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            match &item.val {
                Val::Str(s) => out.push((s.as_str(), item.at)),
                other => self.error(
                    item.at,
                    format!("`{key}` must contain only strings, found {}", other.kind()),
                ),
            }
        }
        out
    }

    /// The items of `[[kind]]` (an array of tables).
    fn array_of_tables<'v>(&mut self, kind: &str, v: &'v Node) -> Vec<&'v Node> {
        let expected = match self.format {
            Format::Toml => format!("an array of tables ([[{kind}]])"),
            Format::Json => "an array of objects".to_string(),
        };
        let Val::Array(items) = &v.val else {
            self.type_error(kind, &expected, v);
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            if matches!(item.val, Val::Table(_)) {
                out.push(item);
            } else {
                self.type_error(kind, &expected, item);
            }
        }
        out
    }

    fn entries<'v>(&mut self, key: &str, v: &'v Node) -> &'v [(Key, Node)] {
        match &v.val {
            Val::Table(entries) => entries,
            _ => {
                self.type_error(key, "a table", v);
                &[]
            }
        }
    }

    // -- the document -----------------------------------------------------------------

    fn document(&mut self, root: &Node) -> Inventory {
        let mut inv = Inventory {
            source: self
                .file
                .rsplit('/')
                .next()
                .unwrap_or(self.file)
                .to_string(),
            internal_networks: Vec::new(),
            defaults: Policy::default(),
            hosts: Vec::new(),
            services: Vec::new(),
        };
        let Val::Table(top) = &root.val else {
            self.error(root.at, "the inventory must be a table (a JSON object)");
            return inv;
        };
        let mut networks_at = None;
        let mut hosts = Vec::new();
        let mut services = Vec::new();
        for (key, v) in top {
            match key.name.as_str() {
                "internal_networks" => {
                    networks_at = Some(v.at);
                    inv.internal_networks = self.networks(v);
                }
                "defaults" => {
                    self.context = Some(self.table_context("defaults"));
                    inv.defaults = self.policy(v, "defaults");
                    self.context = None;
                }
                "host" => {
                    for (i, item) in self.array_of_tables("host", v).into_iter().enumerate() {
                        self.context = Some(self.entry_context("host", i, item));
                        if let Some(h) = self.host(item) {
                            hosts.push(h);
                        }
                    }
                    self.context = None;
                }
                "service" => {
                    for (i, item) in self.array_of_tables("service", v).into_iter().enumerate() {
                        self.context = Some(self.entry_context("service", i, item));
                        if let Some(s) = self.service(item) {
                            services.push(s);
                        }
                    }
                    self.context = None;
                }
                _ => self.unknown_key(key, TOP_KEYS, ""),
            }
        }
        self.check_hosts(&hosts);
        self.check_services(&hosts, &services, &inv.internal_networks, networks_at);
        inv.hosts = hosts.into_iter().map(|(h, _)| h).collect();
        inv.services = services.into_iter().map(|(s, _)| s).collect();
        inv
    }

    fn networks(&mut self, v: &Node) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (s, at) in self.str_array("internal_networks", v) {
            match routes::check::network(s) {
                Ok(net) if out.contains(&net) => {
                    self.error(at, format!("duplicate network `{net}`"))
                }
                Ok(net) => out.push(net),
                Err(msg) => self.error(at, msg.replace(" in `allow`", "")),
            }
        }
        if out.is_empty() && matches!(&v.val, Val::Array(a) if a.is_empty()) {
            self.error(
                v.at,
                "`internal_networks` is empty; remove it if there are none",
            );
        }
        out
    }

    /// A table of routes policy keys (`[defaults]`, a service's `overrides`). Each value
    /// is checked by the routes parser itself, as the one key of a `[defaults]` table.
    fn policy(&mut self, v: &Node, what: &str) -> Policy {
        let mut policy = Policy::default();
        for (key, value) in self.entries(what, v) {
            if !routes::check::POLICY_KEYS.contains(&key.name.as_str()) {
                let note = format!(" in `{what}` (route policy keys only)");
                self.unknown_key(key, routes::check::POLICY_KEYS, &note);
                continue;
            }
            let Some(pv) = self.policy_value(&key.name, value) else {
                continue;
            };
            let text = format!("[defaults]\n{} = {}\n", key.name, crate::render_value(&pv));
            match routes::parse("policy", &text) {
                Ok(_) => {
                    policy.set(&key.name, pv);
                }
                Err(d) => {
                    for diag in d.0 {
                        self.error(value.at, diag.message);
                    }
                }
            }
        }
        policy
    }

    /// The value as routes.toml will hold it; shapes TOML cannot carry are reported.
    fn policy_value(&mut self, key: &str, v: &Node) -> Option<PolicyValue> {
        Some(match &v.val {
            Val::Str(s) => PolicyValue::Str(s.clone()),
            Val::Int(i) => PolicyValue::Int(*i),
            Val::Float(f) if f.is_finite() => PolicyValue::Float(*f),
            Val::Bool(b) => PolicyValue::Bool(*b),
            Val::Array(items) => {
                let mut list = Vec::new();
                for item in items {
                    match &item.val {
                        Val::Str(s) => list.push(s.clone()),
                        other => {
                            self.error(
                                item.at,
                                format!(
                                    "`{key}` must contain only strings, found {}",
                                    other.kind()
                                ),
                            );
                            return None;
                        }
                    }
                }
                PolicyValue::List(list)
            }
            Val::Table(entries) => {
                let mut headers = Vec::new();
                for (name, value) in entries {
                    match &value.val {
                        Val::Str(s) => headers.push((name.name.clone(), s.clone())),
                        other => {
                            self.error(
                                value.at,
                                format!(
                                    "`{}` in `{key}` must be a string (\"\" removes the header), found {}",
                                    name.name,
                                    other.kind()
                                ),
                            );
                            return None;
                        }
                    }
                }
                crate::sort_headers(&mut headers);
                PolicyValue::Headers(headers)
            }
            Val::Null => {
                self.error(
                    v.at,
                    format!("`{key}` is null: leave the key out for the default"),
                );
                return None;
            }
            Val::Float(_) => {
                self.error(v.at, format!("`{key}` is out of range"));
                return None;
            }
            Val::Datetime => {
                self.error(v.at, format!("`{key}` cannot be a datetime"));
                return None;
            }
        })
    }

    fn host(&mut self, item: &Node) -> Option<(Host, HostAt)> {
        for (key, _) in self.entries("host", item) {
            if !HOST_KEYS.contains(&key.name.as_str()) {
                self.unknown_key(key, HOST_KEYS, " in a host");
            }
        }
        let mut at = HostAt {
            name: item.at,
            ipv4: 0,
            ipv6: 0,
            dns: 0,
            context: self.context.clone(),
        };
        let name = match item.get("name") {
            None => {
                self.error(item.at, "missing field `name`");
                None
            }
            Some(v) => {
                at.name = v.at;
                self.checked("name", v, |s| label_text("host name", s))
            }
        };
        let site = self.optional(item, "site", |s| label_text("site", s));
        let hypervisor = self.optional(item, "hypervisor", |s| label_text("hypervisor", s));
        let ipv4 = self.optional(item, "ipv4", |s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| match s.parse::<Ipv6Addr>() {
                    Ok(_) => format!("`{s}` is an IPv6 address: write it as `ipv6`"),
                    Err(_) => format!("invalid IPv4 address `{s}`"),
                })
        });
        let ipv6 = self.optional(item, "ipv6", |s| {
            s.parse::<Ipv6Addr>()
                .map_err(|_| match s.parse::<Ipv4Addr>() {
                    Ok(_) => format!("`{s}` is an IPv4 address: write it as `ipv4`"),
                    Err(_) => format!("invalid IPv6 address `{s}`"),
                })
        });
        let dns = self.optional(item, "dns", |s| {
            routes::check::upstream_name(s).map_err(|m| m.replace("upstream name", "DNS name"))
        });
        at.ipv4 = item.get("ipv4").map_or(0, |v| v.at);
        at.ipv6 = item.get("ipv6").map_or(0, |v| v.at);
        at.dns = item.get("dns").map_or(0, |v| v.at);
        let no_address = item.get("ipv4").is_none() && item.get("ipv6").is_none();
        if no_address {
            self.error(
                item.at,
                "a host needs an address: give `ipv4`, `ipv6` or both",
            );
        }
        let host = Host {
            name: name?,
            site: site?,
            hypervisor: hypervisor?,
            ipv4: ipv4?,
            ipv6: ipv6?,
            dns: dns?,
        };
        // Returned despite unknown keys or no address (both reported) so that the
        // services on it are checked against it.
        Some((host, at))
    }

    /// An optional string key: `Some(None)` when absent, `None` when invalid.
    fn optional<T>(
        &mut self,
        item: &Node,
        key: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match item.get(key) {
            None => Some(None),
            Some(v) => self.checked(key, v, check).map(Some),
        }
    }

    fn service(&mut self, item: &Node) -> Option<(Service, ServiceAt)> {
        for (key, _) in self.entries("service", item) {
            if !SERVICE_KEYS.contains(&key.name.as_str()) {
                self.unknown_key(key, SERVICE_KEYS, " in a service");
            }
        }
        let mut at = ServiceAt {
            id: item.at,
            names: Vec::new(),
            host: item.at,
            app: item.at,
            path: item.at,
            strip_prefix: item.at,
            redirect_paths: Vec::new(),
            context: self.context.clone(),
        };
        let name = match item.get("name") {
            None => {
                self.error(item.at, "missing field `name`");
                None
            }
            Some(v) => {
                at.names.push(v.at);
                self.checked("name", v, |s| match routes::check::host(s)? {
                    HostPattern::Wildcard(_) => Err(format!(
                        "the main name `{s}` cannot be a wildcard: put it in `aliases`"
                    )),
                    _ if s.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() => Err(format!(
                        "the main name `{s}` must be a DNS name, not an address: put it in `aliases`"
                    )),
                    h => Ok(h.to_string()),
                })
            }
        };
        let mut names = |cx: &mut Self, key: &str| -> Option<Vec<String>> {
            let Some(v) = item.get(key) else {
                return Some(Vec::new());
            };
            let before = cx.diags.len();
            let mut out = Vec::new();
            for (s, pos) in cx.str_array(key, v) {
                match routes::check::host(s) {
                    Ok(h) => {
                        out.push(h.to_string());
                        at.names.push(pos);
                    }
                    Err(msg) => cx.error(pos, msg),
                }
            }
            (cx.diags.len() == before).then_some(out)
        };
        let aliases = names(self, "aliases");
        let redirect_from = names(self, "redirect_from");
        let host = match item.get("host") {
            None => {
                self.error(item.at, "missing field `host`");
                None
            }
            Some(v) => {
                at.host = v.at;
                self.str("host", v).map(str::to_string)
            }
        };
        let port = match item.get("port") {
            None => Some(80),
            Some(v) => match v.val {
                Val::Int(p @ 1..=65535) => Some(p as u16),
                Val::Int(p) => {
                    self.error(v.at, format!("invalid `port` {p}, expected 1-65535"));
                    None
                }
                _ => {
                    self.type_error("port", "an integer (1-65535)", v);
                    None
                }
            },
        };
        let path = match item.get("path") {
            None => Some("/".to_string()),
            Some(v) => {
                at.path = v.at;
                self.checked("path", v, routes::check::path)
            }
        };
        let strip_prefix = match item.get("strip_prefix") {
            None => Some(false),
            Some(v) => {
                at.strip_prefix = v.at;
                match v.val {
                    Val::Bool(b) => Some(b),
                    _ => {
                        self.type_error("strip_prefix", "a boolean (true or false)", v);
                        None
                    }
                }
            }
        };
        let acme_profile = match item.get("acme_profile") {
            None => Some(None),
            Some(v) => self
                .checked("acme_profile", v, routes::check::acme_profile)
                .map(Some),
        };
        if strip_prefix == Some(true) && path.as_deref() == Some("/") {
            self.error(
                at.strip_prefix,
                "`strip_prefix` removes the service's `path`, which is `/`: give the prefix as `path`, or leave `strip_prefix` out",
            );
        }
        let redirect_paths = match item.get("redirect_paths") {
            None => Some(Vec::new()),
            Some(v) => {
                let before = self.diags.len();
                let mut out: Vec<(String, usize)> = Vec::new();
                for (p, pos) in self.str_array("redirect_paths", v) {
                    match routes::check::path(p) {
                        Ok(p) => match out.iter().find(|(q, _)| {
                            routes::check::path_key(q) == routes::check::path_key(&p)
                        }) {
                            Some((q, first)) => {
                                let msg = format!(
                                    "`{p}` is already in `redirect_paths` as `{q}` (at {})",
                                    self.at_str(*first)
                                );
                                self.error(pos, msg);
                            }
                            None => out.push((p, pos)),
                        },
                        Err(msg) => self.error(pos, msg),
                    }
                }
                out.sort();
                at.redirect_paths = out.iter().map(|(_, pos)| *pos).collect();
                (self.diags.len() == before).then(|| out.into_iter().map(|(p, _)| p).collect())
            }
        };
        let redirect_status = match item.get("redirect_status") {
            None => Some(301),
            Some(v) => {
                if item.get("redirect_paths").is_none() {
                    self.error(
                        v.at,
                        "`redirect_status` is the status of the `redirect_paths` redirects, and there are none",
                    );
                }
                match v.val {
                    Val::Int(n) if REDIRECT_STATUSES.iter().any(|s| i64::from(*s) == n) => {
                        Some(n as u16)
                    }
                    Val::Int(n) => {
                        self.error(
                            v.at,
                            format!(
                                "invalid `redirect_status` {n}, expected 301, 302, 303, 307 or 308"
                            ),
                        );
                        None
                    }
                    _ => {
                        self.type_error(
                            "redirect_status",
                            "an integer (301, 302, 303, 307 or 308)",
                            v,
                        );
                        None
                    }
                }
            }
        };
        let app = match item.get("app") {
            None => {
                self.error(item.at, "missing field `app`");
                None
            }
            Some(v) => {
                at.app = v.at;
                self.checked("app", v, |s| {
                    App::from_name(s).ok_or_else(|| {
                        let names: Vec<String> =
                            App::ALL.iter().map(|a| format!("`{a}`")).collect();
                        format!("unknown app `{s}`, expected one of {}", names.join(", "))
                    })
                })
            }
        };
        let overrides = match item.get("overrides") {
            None => Policy::default(),
            Some(v) => self.policy(v, "overrides"),
        };
        let id = match item.get("id") {
            None => name
                .as_ref()
                .zip(path.as_ref())
                .map(|(n, p)| default_id(n, p)),
            Some(v) => {
                at.id = v.at;
                self.checked("id", v, |s| {
                    if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()) {
                        Ok(s.to_string())
                    } else {
                        Err(format!(
                            "invalid id `{}`: must be non-empty visible ASCII without spaces",
                            s.escape_debug()
                        ))
                    }
                })
            }
        };
        if item.get("id").is_none() {
            at.id = at.names.first().copied().unwrap_or(item.at);
        }
        let service = Service {
            id: id?,
            name: name?,
            aliases: aliases?,
            redirect_from: redirect_from?,
            host: host?,
            port: port?,
            path: path?,
            strip_prefix: strip_prefix?,
            acme_profile: acme_profile?,
            redirect_paths: redirect_paths?,
            redirect_status: redirect_status?,
            app: app?,
            overrides,
        };
        // Returned despite unknown keys or bad overrides (reported) for the cross-checks.
        Some((service, at))
    }

    // -- cross-checks -----------------------------------------------------------------

    /// Host names, addresses and DNS names are each unique.
    fn check_hosts(&mut self, hosts: &[(Host, HostAt)]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<IpAddr, (&str, usize)> = HashMap::new();
        let mut dns: HashMap<&str, (&str, usize)> = HashMap::new();
        for (h, at) in hosts {
            if let Some(first) = names.insert(&h.name, at.name) {
                names.insert(&h.name, first);
                let msg = format!(
                    "duplicate host `{}` (first at {})",
                    h.name,
                    self.at_str(first)
                );
                self.error_in(&at.context, at.name, msg);
                continue;
            }
            let ips = [
                (h.ipv4.map(IpAddr::V4), at.ipv4),
                (h.ipv6.map(IpAddr::V6), at.ipv6),
            ];
            for (ip, pos) in ips {
                let Some(ip) = ip else { continue };
                match addrs.get(&ip) {
                    Some((other, first)) => {
                        let msg = format!(
                            "address `{ip}` is also host `{other}`'s (at {})",
                            self.at_str(*first)
                        );
                        self.error_in(&at.context, pos, msg);
                    }
                    None => {
                        addrs.insert(ip, (&h.name, pos));
                    }
                }
            }
            if let Some(d) = &h.dns {
                match dns.get(d.as_str()) {
                    Some((other, first)) => {
                        let msg = format!(
                            "DNS name `{d}` is also host `{other}`'s (at {})",
                            self.at_str(*first)
                        );
                        self.error_in(&at.context, at.dns, msg);
                    }
                    None => {
                        dns.insert(d, (&h.name, at.dns));
                    }
                }
            }
        }
    }

    /// Every service is on a known host; no two services (with what their presets add)
    /// claim the same name and path, or the same route id; `internal` needs networks.
    fn check_services(
        &mut self,
        hosts: &[(Host, HostAt)],
        services: &[(Service, ServiceAt)],
        networks: &[IpNet],
        networks_at: Option<usize>,
    ) {
        let known: Vec<&str> = hosts.iter().map(|(h, _)| h.name.as_str()).collect();
        // (host pattern, path) -> (position, what claimed it)
        let mut claims: Vec<((String, String), String, usize, String)> = Vec::new();
        let mut ids: Vec<(String, usize, bool)> = Vec::new();
        for (s, at) in services {
            if !known.contains(&s.host.as_str()) {
                let mut sorted = known.clone();
                sorted.sort_unstable();
                let msg = format!(
                    "service `{}` is on host `{}`, which is not in the inventory (hosts: {})",
                    s.name,
                    s.host,
                    if sorted.is_empty() {
                        "none".to_string()
                    } else {
                        sorted.join(", ")
                    }
                );
                self.error_in(&at.context, at.host, msg);
            }
            let preset = s.app.preset();
            if preset.internal_only && networks.is_empty() {
                let msg = match networks_at {
                    Some(_) => "app `internal` allows only `internal_networks`, which is empty".to_string(),
                    None => "app `internal` allows only the inventory's `internal_networks`, which it does not define".to_string(),
                };
                self.error_in(&at.context, at.app, msg);
            }

            // Redirects that would answer their own target (the routes parser refuses
            // them as loops).
            for (i, from) in s.redirect_from.iter().enumerate() {
                let pattern = routes::check::host(from);
                if pattern.is_ok_and(|p| p.matches(&s.name)) {
                    let pos = at
                        .names
                        .get(1 + s.aliases.len() + i)
                        .copied()
                        .unwrap_or(at.id);
                    let msg = format!(
                        "`{from}` in `redirect_from` matches the main name `{}`: it would redirect to itself",
                        s.name
                    );
                    self.error_in(&at.context, pos, msg);
                }
            }
            for r in &preset.redirects {
                let to = crate::expand::join(&s.path, r.to);
                if routes::path_matches(r.path, &to) {
                    let msg = format!(
                        "with this path, the redirect app `{}` adds on `{}` would point under itself (`{to}`)",
                        s.app, r.path
                    );
                    self.error_in(&at.context, at.path, msg);
                }
            }
            for (i, from) in s.redirect_paths.iter().enumerate() {
                if routes::path_matches(from, &s.path) {
                    let pos = at.redirect_paths.get(i).copied().unwrap_or(at.path);
                    let msg = format!(
                        "`{from}` in `redirect_paths` covers the service's path `{}`: the redirect would answer its own target",
                        s.path
                    );
                    self.error_in(&at.context, pos, msg);
                }
            }
            // A stripped prefix is the service's path; the routes a preset adds under
            // it would lose their whole path instead.
            if s.strip_prefix {
                if let Some(e) = preset.extra_routes.first() {
                    let msg = format!(
                        "`strip_prefix` cannot be used with app `{}`: it adds routes under the service's path (`{}`), which would be stripped whole; serve it at `/` of its own name",
                        s.app,
                        crate::expand::join(&s.path, e.path)
                    );
                    self.error_in(&at.context, at.strip_prefix, msg);
                }
            }

            // Names served (main name and aliases) at the service's path and at the
            // preset's paths; redirect_from names at `/`.
            let served = 1 + s.aliases.len();
            let all_names = std::iter::once(&s.name)
                .chain(&s.aliases)
                .chain(&s.redirect_from);
            for (i, name) in all_names.enumerate() {
                let pos = at.names.get(i).copied().unwrap_or(at.id);
                // (path, what claims it, where)
                let mut paths: Vec<(String, String, usize)> = Vec::new();
                if i < served {
                    paths.push((s.path.clone(), format!("service `{}`", s.id), pos));
                    for (p, p_at) in s.redirect_paths.iter().zip(&at.redirect_paths) {
                        let what = format!("`redirect_paths` of service `{}`", s.id);
                        paths.push((p.clone(), what, *p_at));
                    }
                    for e in &preset.extra_routes {
                        paths.push((
                            crate::expand::join(&s.path, e.path),
                            format!("service `{}` (app `{}` adds it)", s.id, s.app),
                            pos,
                        ));
                    }
                    for r in &preset.redirects {
                        paths.push((
                            r.path.to_string(),
                            format!("service `{}` (app `{}` adds it)", s.id, s.app),
                            pos,
                        ));
                    }
                } else {
                    let what = format!("service `{}` (redirect_from)", s.id);
                    paths.push(("/".into(), what, pos));
                }
                for (path, what, pos) in paths {
                    // `/a/` and `/a` cover the same request paths (so do `/a%2Fb` and
                    // `/a/b`): compared by what they cover, shown as written.
                    let key = (name.clone(), routes::check::path_key(&path));
                    let shown = format!("{name}{path}");
                    if let Some((_, first_shown, first, first_what)) =
                        claims.iter().find(|(k, ..)| *k == key)
                    {
                        let also = if *first_shown == shown {
                            String::new()
                        } else {
                            format!(" (as `{first_shown}`, which covers the same paths)")
                        };
                        let msg = format!(
                            "`{shown}` of {what} is already claimed by {first_what}{also} at {}",
                            self.at_str(*first)
                        );
                        self.error_in(&at.context, pos, msg);
                    } else {
                        claims.push((key, shown, pos, what));
                    }
                }
            }

            let mut own = vec![s.id.clone()];
            own.extend(
                preset
                    .extra_routes
                    .iter()
                    .map(|e| format!("{}-{}", s.id, e.suffix)),
            );
            own.extend(
                preset
                    .redirects
                    .iter()
                    .map(|r| format!("{}-{}", s.id, r.suffix)),
            );
            if !s.redirect_from.is_empty() {
                own.push(format!("{}-redirect", s.id));
            }
            own.extend(
                s.redirect_paths
                    .iter()
                    .map(|p| crate::expand::redirect_path_id(&s.id, p)),
            );
            let explicit = s.id != default_id(&s.name, &s.path);
            for id in own {
                if let Some((_, first, first_explicit)) = ids.iter().find(|(i, ..)| *i == id) {
                    // Two default ids are equal only if name and path are: reported above.
                    if !explicit && !first_explicit {
                        continue;
                    }
                    let msg = format!(
                        "duplicate route id `{id}` (first at {}); give one of the services a distinct `id`",
                        self.at_str(*first)
                    );
                    self.error_in(&at.context, at.id, msg);
                } else {
                    ids.push((id, at.id, explicit));
                }
            }
        }
    }
}

/// A service's id when it has none: the main name, and the path unless it is `/`.
fn default_id(name: &str, path: &str) -> String {
    match path {
        "/" => name.to_string(),
        p => format!("{name}{p}"),
    }
}

/// Host names, sites and hypervisors: they end up in comments and ids.
fn label_text(what: &str, s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid {what} `{}`: use lower-case letters, digits, `-`, `_` and `.`",
            s.escape_debug()
        ))
    }
}
