//! [`Inventory`] -> the text of routes.toml.
//!
//! Deterministic: hosts sorted by name, services by main name and path, aliases and
//! networks sorted, header tables sorted by name, keys in the order of
//! `routes.reference.toml`; no timestamps. The same inventory in any order, TOML or
//! JSON, gives the same bytes.

use std::fmt::Write as _;

use crate::presets::Preset;
use crate::{Host, Inventory, Policy, PolicyValue, Service};

/// Width the host section rules are padded to.
const RULE_WIDTH: usize = 88;

/// Render the routes file of a (validated) inventory.
pub fn expand(inv: &Inventory) -> String {
    let mut out = String::new();
    header(inv, &mut out);

    if !inv.defaults.is_empty() {
        out.push_str("\n[defaults]\n");
        policy_lines(&inv.defaults, &mut out);
    }

    let mut hosts: Vec<&Host> = inv.hosts.iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    for host in hosts {
        let mut services: Vec<&Service> = inv
            .services
            .iter()
            .filter(|s| s.host == host.name)
            .collect();
        if services.is_empty() {
            continue;
        }
        services.sort_by(|a, b| (&a.name, &a.path, &a.id).cmp(&(&b.name, &b.path, &b.id)));
        out.push('\n');
        host_rule(host, &mut out);
        for service in services {
            out.push('\n');
            service_entries(inv, host, service, &mut out);
        }
    }
    out
}

fn header(inv: &Inventory, out: &mut String) {
    let src = &inv.source;
    let _ = writeln!(
        out,
        "# Routing table of the reverse proxy, generated from {src}."
    );
    out.push_str("#\n");
    out.push_str("# GENERATED: do not edit by hand. Change the inventory, then regenerate:\n");
    let _ = writeln!(
        out,
        "#     proxyctl routes generate --inventory {src} -o routes.toml"
    );
    out.push_str("# CI fails when this file is not what the inventory generates (--check).\n");
    out.push_str("#\n");
    out.push_str("# Check it with:  proxyctl check routes.toml\n");
    out.push_str("# Schema:         proxy/routes/routes.reference.toml\n");
    out.push_str("# App presets:    proxy/inventory/src/presets.rs\n");
    if !inv.internal_networks.is_empty() {
        let mut nets = inv.internal_networks.clone();
        nets.sort();
        let nets: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            out,
            "# Internal networks (upstreams, app \"internal\"): {}",
            nets.join(", ")
        );
    }
}

/// `# --- web-1 (site fsn, on kvm-1): web-1.vrt.fsn, 172.28.1.50, fd00::32 ------`
fn host_rule(host: &Host, out: &mut String) {
    let mut where_: Vec<String> = Vec::new();
    if let Some(site) = &host.site {
        where_.push(format!("site {site}"));
    }
    if let Some(hv) = &host.hypervisor {
        where_.push(format!("on {hv}"));
    }
    let mut line = format!("# --- {}", host.name);
    if !where_.is_empty() {
        let _ = write!(line, " ({})", where_.join(", "));
    }
    let addrs: Vec<String> = host
        .dns
        .iter()
        .cloned()
        .chain(host.ipv4.map(|a| a.to_string()))
        .chain(host.ipv6.map(|a| a.to_string()))
        .collect();
    let _ = write!(line, ": {} ", addrs.join(", "));
    let pad = RULE_WIDTH.saturating_sub(line.chars().count()).max(3);
    line.extend(std::iter::repeat_n('-', pad));
    out.push_str(&line);
    out.push('\n');
}

fn service_entries(inv: &Inventory, host: &Host, s: &Service, out: &mut String) {
    let preset: Preset = s.app.preset();
    let _ = write!(
        out,
        "# {} -> {}:{}, app \"{}\"",
        display_name(s),
        host.name,
        s.port,
        s.app,
    );
    if s.strip_prefix {
        out.push_str(", path stripped");
    }
    if !s.overrides.is_empty() {
        let keys: Vec<&str> = s.overrides.iter().map(|(k, _)| k).collect();
        let _ = write!(out, " (overrides: {})", keys.join(", "));
    }
    let _ = writeln!(out, "\n#   {}", preset.summary);

    let mut base = preset.policy.clone();
    if preset.internal_only {
        let mut nets = inv.internal_networks.clone();
        nets.sort();
        base.set(
            "allow",
            PolicyValue::List(nets.iter().map(|n| n.to_string()).collect()),
        );
    }
    let upstreams = upstreams(host, s.port);
    let mut names = vec![s.name.clone()];
    let mut aliases = s.aliases.clone();
    aliases.sort();
    names.extend(aliases);

    route(
        &s.id,
        &names,
        &s.path,
        s.strip_prefix,
        s.acme_profile.as_deref(),
        &upstreams,
        &base.merged(&s.overrides),
        out,
    );
    for extra in &preset.extra_routes {
        out.push('\n');
        let policy = base.merged(&extra.policy).merged(&s.overrides);
        route(
            &format!("{}-{}", s.id, extra.suffix),
            &names,
            &join(&s.path, extra.path),
            false,
            s.acme_profile.as_deref(),
            &upstreams,
            &policy,
            out,
        );
    }
    for r in &preset.redirects {
        out.push('\n');
        redirect(
            &format!("{}-{}", s.id, r.suffix),
            &names,
            r.path,
            &join(&s.path, r.to),
            false,
            r.status,
            out,
        );
    }
    for from in &s.redirect_paths {
        out.push('\n');
        redirect(
            &redirect_path_id(&s.id, from),
            &names,
            from,
            &s.path,
            true,
            s.redirect_status,
            out,
        );
    }
    if !s.redirect_from.is_empty() {
        let mut from = s.redirect_from.clone();
        from.sort();
        let mut to = format!("https://{}{}", s.name, s.path);
        if !to.ends_with('/') {
            to.push('/');
        }
        out.push('\n');
        redirect(
            &format!("{}-redirect", s.id),
            &from,
            "/",
            &to,
            true,
            301,
            out,
        );
    }
}

fn display_name(s: &Service) -> String {
    match s.path.as_str() {
        "/" => s.name.clone(),
        p => format!("{}{p}", s.name),
    }
}

/// By DNS name with the addresses as fallback, or by the addresses.
fn upstreams(host: &Host, port: u16) -> String {
    let addrs: Vec<String> = host
        .ipv4
        .map(|a| a.to_string())
        .into_iter()
        .chain(host.ipv6.map(|a| a.to_string()))
        .collect();
    match &host.dns {
        Some(name) => {
            let fallback: Vec<String> = addrs.iter().map(|a| quote(a)).collect();
            format!(
                "[{{ name = {}, port = {port}, fallback = [{}] }}]",
                quote(name),
                fallback.join(", ")
            )
        }
        None => {
            let items: Vec<String> = host
                .ipv4
                .map(|a| quote(&format!("{a}:{port}")))
                .into_iter()
                .chain(host.ipv6.map(|a| quote(&format!("[{a}]:{port}"))))
                .collect();
            format!("[{}]", items.join(", "))
        }
    }
}

#[allow(clippy::too_many_arguments)] // one per routes.toml key it writes
fn route(
    id: &str,
    hosts: &[String],
    path: &str,
    strip_prefix: bool,
    acme_profile: Option<&str>,
    upstreams: &str,
    policy: &Policy,
    out: &mut String,
) {
    out.push_str("[[route]]\n");
    let _ = writeln!(out, "name = {}", quote(id));
    let _ = writeln!(out, "hosts = {}", list(hosts));
    if path != "/" {
        let _ = writeln!(out, "path = {}", quote(path));
    }
    if strip_prefix {
        out.push_str("strip_prefix = true\n");
    }
    if let Some(p) = acme_profile {
        let _ = writeln!(out, "acme_profile = {}", quote(p));
    }
    let _ = writeln!(out, "upstreams = {upstreams}");
    policy_lines(policy, out);
}

fn redirect(
    id: &str,
    hosts: &[String],
    path: &str,
    to: &str,
    keep_path: bool,
    status: u16,
    out: &mut String,
) {
    out.push_str("[[redirect]]\n");
    let _ = writeln!(out, "name = {}", quote(id));
    let _ = writeln!(out, "hosts = {}", list(hosts));
    if path != "/" {
        let _ = writeln!(out, "path = {}", quote(path));
    }
    let _ = writeln!(out, "to = {}", quote(to));
    if keep_path {
        out.push_str("keep_path = true\n");
    }
    let _ = writeln!(out, "status = {status}");
}

fn policy_lines(policy: &Policy, out: &mut String) {
    for (key, value) in policy.iter() {
        let _ = writeln!(out, "{key} = {}", render_value(value));
    }
}

/// A policy value as TOML (strings always in double quotes, header tables inline).
pub fn render_value(v: &PolicyValue) -> String {
    match v {
        PolicyValue::Str(s) => quote(s),
        PolicyValue::Int(i) => i.to_string(),
        PolicyValue::Float(f) => format!("{f:?}"),
        PolicyValue::Bool(b) => b.to_string(),
        PolicyValue::List(items) => list(items),
        PolicyValue::Headers(h) if h.is_empty() => "{}".to_string(),
        PolicyValue::Headers(h) => {
            let items: Vec<String> = h
                .iter()
                .map(|(n, v)| format!("{} = {}", quote(n), quote(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The id of the redirect of one of a service's `redirect_paths`: `<id>-redirect<path>`.
pub(crate) fn redirect_path_id(id: &str, path: &str) -> String {
    format!("{id}-redirect{path}")
}

/// A path under a prefix: `join("/", "/api")` = `/api`, `join("/chat", "/api")` =
/// `/chat/api`, `join("/chat/", "/api")` = `/chat/api`.
pub(crate) fn join(prefix: &str, path: &str) -> String {
    format!("{}{path}", prefix.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_joining() {
        assert_eq!(quote("a\"b\\c\u{7f}\n"), r#""a\"b\\c\u007F\n""#);
        assert_eq!(join("/", "/api"), "/api");
        assert_eq!(join("/chat", "/api"), "/chat/api");
        assert_eq!(join("/chat/", "/api"), "/chat/api");
        assert_eq!(
            render_value(&PolicyValue::headers(&[("b", "1"), ("A", "")])),
            r#"{ "A" = "", "b" = "1" }"#
        );
    }
}
