//! The inventory of the infrastructure (hosts, and the public web services on them) and
//! its expansion into `routes.toml`.
//!
//! Architecture invariant: like `routes`, this crate does no I/O. [`parse`] takes the
//! text of an inventory, TOML or JSON (the real inventory is Nix data, and
//! `nix eval --json` prints JSON), and returns a validated [`Inventory`] or *every*
//! problem found, each with `file:line:col` (for JSON also the JSON pointer of the
//! entry). [`expand`] renders the routes file: deterministic (hosts by name, services by
//! name and path, sets sorted; no timestamps), so that the committed `routes.toml` is
//! byte for byte what CI generates, and a diff between two generations is the change.
//!
//! What each kind of application needs behind the proxy lives in [`presets`], each
//! preset taken from the application's own reverse-proxy documentation; a service's
//! `overrides` win over its preset, and both over the inventory's `[defaults]`.
//!
//! The format is documented key by key in `proxy/inventory/inventory.reference.toml`
//! (a test keeps it valid and complete). Modules: `tree` reads TOML and JSON into one
//! tree with offsets, `load` walks it and collects diagnostics, `expand` writes
//! routes.toml.

// No unsafe in this crate; the workspace lints (Cargo.toml) say why others have some.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use routes::{Diagnostic, Diagnostics, IpNet};

mod expand;
mod load;
pub mod presets;
#[cfg(test)]
mod tests;
mod tree;

pub use expand::{expand, render_value};
pub use load::{parse, parse_as};

/// A validated inventory. Built only by [`parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The file name the inventory was read from, named in the generated header.
    pub source: String,
    /// The internal (WireGuard) networks: what `app = "internal"` services allow.
    pub internal_networks: Vec<IpNet>,
    /// Written as the `[defaults]` of routes.toml.
    pub defaults: Policy,
    /// In input order (expansion sorts).
    pub hosts: Vec<Host>,
    /// In input order (expansion sorts).
    pub services: Vec<Service>,
}

/// One machine on the internal network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub site: Option<String>,
    /// The machine it runs on, when it is a VM (informational).
    pub hypervisor: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Its name in the internal DNS. When set, routes name the upstream by it, with the
    /// addresses as fallback; otherwise routes use the addresses.
    pub dns: Option<String>,
}

/// One public web service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Route id in logs and metrics; default: the main name (and path).
    pub id: String,
    /// The main public name (never a wildcard).
    pub name: String,
    /// More names served by the same routes.
    pub aliases: Vec<String>,
    /// Names redirected (301, keeping the path) to the main name.
    pub redirect_from: Vec<String>,
    /// The host it runs on (a [`Host::name`]).
    pub host: String,
    pub port: u16,
    pub path: String,
    /// Remove `path` from the request path before forwarding (routes.toml's
    /// `strip_prefix`): an application that serves from `/` published under a prefix.
    pub strip_prefix: bool,
    /// The ACME profile of the service's certificate (routes.toml's `acme_profile`,
    /// written on each of its routes); `None`: proxyd's `--acme-profile`.
    pub acme_profile: Option<String>,
    /// Paths on the service's names (main name and aliases) answered with a redirect
    /// to the service's path, keeping the rest of the URL. Sorted, no duplicates.
    pub redirect_paths: Vec<String>,
    /// Status of the `redirect_paths` redirects (301, 302, 303, 307 or 308).
    pub redirect_status: u16,
    pub app: App,
    /// Route keys over the preset.
    pub overrides: Policy,
}

/// The kind of application behind a service, which selects its preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum App {
    Static,
    Php,
    Django,
    Flask,
    Nextcloud,
    Gitlab,
    Roundcube,
    Mattermost,
    /// Admin and monitoring pages: internal networks only.
    Internal,
}

impl App {
    pub const ALL: [App; 9] = [
        App::Static,
        App::Php,
        App::Django,
        App::Flask,
        App::Nextcloud,
        App::Gitlab,
        App::Roundcube,
        App::Mattermost,
        App::Internal,
    ];

    /// The name written in the inventory.
    pub fn name(self) -> &'static str {
        match self {
            App::Static => "static",
            App::Php => "php",
            App::Django => "django",
            App::Flask => "flask",
            App::Nextcloud => "nextcloud",
            App::Gitlab => "gitlab",
            App::Roundcube => "roundcube",
            App::Mattermost => "mattermost",
            App::Internal => "internal",
        }
    }

    pub fn from_name(name: &str) -> Option<App> {
        App::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value of a routes policy key, as it is written to routes.toml.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<String>),
    /// Header name -> value; kept sorted by lower-cased name.
    Headers(Vec<(String, String)>),
}

impl PolicyValue {
    pub fn str(s: &str) -> PolicyValue {
        PolicyValue::Str(s.to_string())
    }

    pub fn headers(pairs: &[(&str, &str)]) -> PolicyValue {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        sort_headers(&mut v);
        PolicyValue::Headers(v)
    }
}

fn sort_headers(h: &mut [(String, String)]) {
    h.sort_by(|a, b| {
        a.0.to_ascii_lowercase()
            .cmp(&b.0.to_ascii_lowercase())
            .then(a.0.cmp(&b.0))
    });
}

/// Route policy keys (those of routes.toml's `[defaults]`) with their values, iterated
/// in the order of `routes.reference.toml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Index into [`routes::check::POLICY_KEYS`] -> value.
    values: BTreeMap<usize, PolicyValue>,
}

impl Policy {
    /// Set `key`; `false` (and nothing set) if it is not a policy key.
    pub fn set(&mut self, key: &str, value: PolicyValue) -> bool {
        match key_index(key) {
            Some(i) => {
                self.values.insert(i, value);
                true
            }
            None => false,
        }
    }

    /// Builder form of [`Policy::set`], for presets. Panics on an unknown key (a
    /// programming error caught by the presets' tests).
    pub fn with(mut self, key: &str, value: PolicyValue) -> Policy {
        assert!(self.set(key, value), "`{key}` is not a routes policy key");
        self
    }

    pub fn get(&self, key: &str) -> Option<&PolicyValue> {
        self.values.get(&key_index(key)?)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &PolicyValue)> {
        self.values
            .iter()
            .map(|(i, v)| (routes::check::POLICY_KEYS[*i], v))
    }

    /// `over` on top of `self`: key by key, except header tables, which are merged by
    /// header name (case-insensitively; `over`'s value wins), as routes.toml merges a
    /// route's headers with `[defaults]`.
    pub fn merged(&self, over: &Policy) -> Policy {
        let mut out = self.clone();
        for (i, v) in &over.values {
            let merged = match (out.values.get(i), v) {
                (Some(PolicyValue::Headers(base)), PolicyValue::Headers(top)) => {
                    let mut h = base.clone();
                    for (name, value) in top {
                        h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                        h.push((name.clone(), value.clone()));
                    }
                    sort_headers(&mut h);
                    PolicyValue::Headers(h)
                }
                _ => v.clone(),
            };
            out.values.insert(*i, merged);
        }
        out
    }
}

fn key_index(key: &str) -> Option<usize> {
    routes::check::POLICY_KEYS.iter().position(|k| *k == key)
}

/// The input format. [`parse`] takes it from the file name (`.json`, `.toml`), else from
/// the first character (`{` is JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    pub fn detect(file: &str, text: &str) -> Format {
        let lower = file.to_ascii_lowercase();
        if lower.ends_with(".json") {
            Format::Json
        } else if lower.ends_with(".toml") {
            Format::Toml
        } else if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// Parse, expand, and check the result with the routes parser: the text of routes.toml
/// or every problem of the inventory. `file` names the inventory in messages and in the
/// generated header.
pub fn generate(file: &str, text: &str) -> Result<String, Diagnostics> {
    let inventory = parse(file, text)?;
    let out = expand(&inventory);
    // The inventory checks make this unreachable; should it ever fail, say so plainly
    // rather than write a routes file the daemon would refuse.
    if let Err(d) = routes::parse("routes.toml (generated)", &out) {
        return Err(Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            line: 1,
            col: 1,
            message: format!("internal error: the generated routes are invalid:\n{d}"),
            context: None,
        }]));
    }
    Ok(out)
}
