//! Parsers for the scalar values of a routes file: sizes, durations, networks, host
//! patterns, upstreams, header names and values, paths and redirect targets.
//!
//! Each takes the text as written and returns the typed value or a complete message
//! (without position: the caller knows the span). None of them panics on any input.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::{HostPattern, Upstream};

const SIZE_FORMS: &str = "a number of bytes, \"<n>k\", \"<n>m\", \"<n>g\" or \"unlimited\"";
const DURATION_FORMS: &str = "\"<n>ms\", \"<n>s\", \"<n>m\", \"<n>h\" or \"<n>d\" (e.g. \"30s\")";

/// `max_body` given as a string: `"<n>k|m|g"` (1024-based, case-insensitive) or
/// `"unlimited"` (`None`). Plain integers are handled by the caller.
pub(crate) fn size(key: &str, raw: &str) -> Result<Option<u64>, String> {
    let lower = raw.to_ascii_lowercase();
    if lower == "unlimited" {
        return Ok(None);
    }
    let bad = || format!("invalid size `{raw}` for `{key}`, expected {SIZE_FORMS}");
    let (digits, shift) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 10),
        Some(b'm') => (&lower[..lower.len() - 1], 20),
        Some(b'g') => (&lower[..lower.len() - 1], 30),
        _ => return Err(bad()),
    };
    let n = decimal(digits).ok_or_else(bad)?;
    n.checked_mul(1u64 << shift)
        .map(Some)
        .ok_or_else(|| format!("size `{raw}` for `{key}` is too large"))
}

/// A duration: `"<n>ms|s|m|h|d"`, one unit, integer `n > 0`.
pub(crate) fn duration(key: &str, raw: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration `{raw}` for `{key}`, expected {DURATION_FORMS}");
    let (digits, unit_ms): (&str, u64) = if let Some(d) = raw.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = raw.strip_suffix('s') {
        (d, 1_000)
    } else if let Some(d) = raw.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = raw.strip_suffix('h') {
        (d, 3_600_000)
    } else if let Some(d) = raw.strip_suffix('d') {
        (d, 86_400_000)
    } else {
        return Err(bad());
    };
    let n = decimal(digits).ok_or_else(bad)?;
    if n == 0 {
        return Err(format!("`{key}` must be greater than zero, found `{raw}`"));
    }
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{raw}` for `{key}` is too large"))
}

/// Non-empty ASCII digits only (no sign, no spaces, no underscores).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A client network for `allow`: `addr/prefix` without host bits, or a bare address
/// (taken as /32 or /128).
pub(crate) fn cidr(raw: &str) -> Result<IpNet, String> {
    if raw.contains('/') {
        let net: IpNet = raw.parse().map_err(|_| {
            format!("invalid network `{raw}` in `allow`, expected an address or address/prefix (e.g. \"172.28.0.0/16\")")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "network `{raw}` in `allow` has host bits set; did you mean `{}`?",
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        let ip: IpAddr = raw.parse().map_err(|_| {
            format!("invalid network `{raw}` in `allow`, expected an address or address/prefix (e.g. \"172.28.0.0/16\")")
        })?;
        Ok(IpNet::from(ip))
    }
}

/// A host pattern as written in `hosts`: a DNS name, `*.` + a name of at least two
/// labels, or an IP literal (IPv6 with or without brackets). Lower-cased; one trailing
/// dot removed; IP literals in canonical form.
pub(crate) fn host_pattern(raw: &str) -> Result<HostPattern, String> {
    // One allocation for the common case: the lower-cased text becomes the pattern.
    let mut lower = raw.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower.pop();
    }
    let s = lower.as_str();
    if let Some(inner) = s.strip_prefix('[') {
        return match inner
            .strip_suffix(']')
            .and_then(|v6| v6.parse::<Ipv6Addr>().ok())
        {
            Some(ip) => Ok(HostPattern::Exact(ip.to_string())),
            None => Err(format!(
                "invalid host `{raw}`: not an IPv6 address in brackets"
            )),
        };
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(HostPattern::Exact(ip.to_string()));
    }
    if let Some(suffix) = s.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(format!(
                "invalid host `{raw}`: `*` is only allowed as the whole first label (`*.example.org`)"
            ));
        }
        dns_name(suffix).map_err(|why| format!("invalid host `{raw}`: {why}"))?;
        if !suffix.contains('.') {
            return Err(format!(
                "invalid host `{raw}`: a wildcard needs at least two labels after `*.` (e.g. `*.example.org`)"
            ));
        }
        lower.drain(..2);
        return Ok(HostPattern::Wildcard(lower));
    }
    if s.contains('*') {
        return Err(format!(
            "invalid host `{raw}`: `*` is only allowed as the whole first label (`*.example.org`)"
        ));
    }
    dns_name(s).map_err(|why| format!("invalid host `{raw}`: {why}"))?;
    if looks_like_ipv4(s) {
        return Err(format!("invalid host `{raw}`: not a valid IPv4 address"));
    }
    Ok(HostPattern::Exact(lower))
}

/// All labels numeric: meant as an IPv4 address (and not a valid one if we got here).
fn looks_like_ipv4(s: &str) -> bool {
    s.split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks a lower-case DNS name (no trailing dot): labels of 1-63 characters of
/// `[a-z0-9_-]`, not starting or ending with `-`, at most 253 characters in all.
fn dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty name".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "name is {} characters long, at most 253 are allowed",
            s.len()
        ));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err("empty label (`..`, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
        {
            return Err(if c.is_ascii() {
                format!("invalid character `{}`", c.escape_debug())
            } else {
                format!(
                    "invalid character `{c}`; write international names in punycode (`xn--...`)"
                )
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
    }
    Ok(())
}

/// An upstream: `IPv4:port`, `[IPv6]:port` or `dnsname:port`, port 1-65535.
pub(crate) fn upstream(raw: &str) -> Result<Upstream, String> {
    if raw.contains("://") {
        return Err(format!(
            "invalid upstream `{raw}`: write host:port without a scheme (e.g. `172.28.1.50:80`)"
        ));
    }
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!(
                "invalid port `0` in upstream `{raw}`, expected 1-65535"
            ));
        }
        return Ok(Upstream::Addr(addr));
    }
    if raw.starts_with('[') {
        return Err(format!(
            "invalid upstream `{raw}`, expected [IPv6 address]:port"
        ));
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(format!(
            "invalid upstream `{raw}`: missing port, expected host:port (e.g. `172.28.1.50:80`)"
        ));
    };
    if host.contains(':') {
        return Err(format!(
            "invalid upstream `{raw}`: an IPv6 address must be in brackets (e.g. `[fd00::1]:80`)"
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => {
            return Err(format!(
                "invalid port `{port}` in upstream `{raw}`, expected 1-65535"
            ))
        }
    };
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    dns_name(name).map_err(|why| format!("invalid upstream `{raw}`: {why}"))?;
    if looks_like_ipv4(name) {
        return Err(format!(
            "invalid upstream `{raw}`: not a valid IPv4 address"
        ));
    }
    Ok(Upstream::Name {
        host: name.to_string(),
        port,
        fallback: Vec::new(),
    })
}

/// The `name` of an upstream table (`{ name = "gitlab-1.vrt.fsn", port = 80 }`): a DNS
/// name, lower-cased, without a trailing dot. IP literals belong in the string form.
pub(crate) fn upstream_name(raw: &str) -> Result<String, String> {
    if raw.parse::<IpAddr>().is_ok() || looks_like_ipv4(raw) {
        return Err(format!(
            "invalid upstream name `{raw}`: an IP address is written as a string upstream (e.g. `\"{raw}:80\"`), not as `name`"
        ));
    }
    let lower = raw.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    dns_name(name).map_err(|why| format!("invalid upstream name `{raw}`: {why}"))?;
    Ok(name.to_string())
}

/// One `fallback` address of an upstream table: a bare IPv4 or IPv6 address (the port
/// is the table's `port`).
pub(crate) fn fallback_addr(raw: &str) -> Result<IpAddr, String> {
    let bare = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    bare.parse::<IpAddr>().map_err(|_| {
        format!("invalid fallback address `{raw}`: expected an IP address without port (e.g. `172.28.1.2` or `fd00::2`)")
    })
}

/// Header fields the proxy itself manages (connection framing and upgrades): setting
/// them from the routes file would break the connection, so they are rejected.
const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// An HTTP header name: a non-empty token (RFC 9110 `tchar`s).
pub(crate) fn header_name(raw: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if raw.is_empty() {
        return Err("empty header name".into());
    }
    if let Some(c) = raw.chars().find(|&c| !c.is_ascii() || !tchar(c as u8)) {
        return Err(format!(
            "invalid header name `{}`: character `{}` is not allowed",
            raw.escape_debug(),
            c.escape_debug()
        ));
    }
    if MANAGED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(raw)) {
        return Err(format!(
            "header `{raw}` is managed by the proxy and cannot be set"
        ));
    }
    Ok(())
}

/// An HTTP header value: visible ASCII, space and tab (no CR, LF or other controls).
pub(crate) fn header_value(name: &str, raw: &str) -> Result<(), String> {
    match raw.chars().find(|&c| !(c == ' ' || c == '\t' || c.is_ascii_graphic())) {
        None => Ok(()),
        Some(c) => Err(format!(
            "invalid value for header `{name}`: character `{}` is not allowed (visible ASCII, space and tab only)",
            c.escape_debug()
        )),
    }
}

/// The `path` of a route or redirect: a prefix starting with `/`, visible ASCII, without
/// `?`, `#`, `//`, or `.`/`..` segments.
pub(crate) fn route_path(raw: &str) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err(format!("path `{}` must start with `/`", raw.escape_debug()));
    }
    if let Some(c) = raw.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(if c.is_ascii() {
            format!(
                "path `{}` must not contain whitespace or control characters",
                raw.escape_debug()
            )
        } else {
            format!("path `{raw}` must be ASCII: percent-encode `{c}`")
        });
    }
    if raw.contains('?') || raw.contains('#') {
        return Err(format!(
            "path `{raw}` must not contain `?` or `#` (paths are matched without the query)"
        ));
    }
    if raw.contains("//") {
        return Err(format!("path `{raw}` must not contain `//`"));
    }
    if raw.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "path `{raw}` must not contain `.` or `..` segments"
        ));
    }
    if raw.contains(';') {
        return Err(format!(
            "path `{raw}` must not contain `;`: path parameters are removed from request paths before matching (`/a;x/b` is matched as `/a/b`); write `%3B` if it is part of a name"
        ));
    }
    if raw.contains('\\') {
        return Err(format!(
            "path `{raw}` must not contain `\\` (some upstreams read it as `/`)"
        ));
    }
    // Request paths are matched in the form normalize_path gives them: a route path in
    // another form would never match, so the form to write is named instead.
    match crate::normalize_path(raw) {
        Ok(normal) if normal == raw => Ok(raw.to_string()),
        Ok(normal) => Err(format!(
            "path `{raw}` is matched as `{normal}` (request paths are matched with unreserved escapes like `%61` decoded and the hex digits of other escapes in upper case): write `{normal}`"
        )),
        Err(crate::PathError::BadEscape) => Err(format!(
            "path `{raw}` has a bad percent-escape: `%` must be followed by two hex digits, and `%00` is refused"
        )),
        Err(_) => Err(format!(
            "path `{raw}` must not contain `.` or `..` segments (also percent-encoded)"
        )),
    }
}

/// `health_check_path`: `""` (TCP connect check) or a path (with optional query)
/// starting with `/`, visible ASCII, no `#`.
pub(crate) fn health_check_path(raw: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    if !raw.starts_with('/') || raw.contains('#') || !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "invalid `health_check_path` `{}`: expected a path starting with `/`, visible ASCII, no `#` (or \"\" for a TCP check)",
            raw.escape_debug()
        ));
    }
    Ok(Some(raw.to_string()))
}

/// A validated redirect `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedirectTo {
    /// As stored in [`crate::Redirect::to`]: an authority-only URL gets a `/` path.
    pub(crate) to: String,
    /// Host of an absolute URL (normalised), `None` for a same-host path.
    pub(crate) host: Option<String>,
    /// The path part (without query), for loop detection.
    pub(crate) path: String,
    pub(crate) has_query: bool,
}

/// `to` of a redirect: an absolute `http(s)://` URL or an absolute path.
pub(crate) fn redirect_to(raw: &str) -> Result<RedirectTo, String> {
    let forms =
        "expected an absolute URL (`https://example.org/path`) or an absolute path (`/path`)";
    if let Some(c) = raw.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(if c.is_ascii() {
            format!(
                "invalid redirect target `{}`: whitespace and control characters are not allowed",
                raw.escape_debug()
            )
        } else {
            format!("invalid redirect target `{raw}`: must be ASCII, percent-encode `{c}`")
        });
    }
    if raw.starts_with("//") {
        return Err(format!("invalid redirect target `{raw}`: {forms}"));
    }
    if raw.starts_with('/') {
        let path = raw.split(['?', '#']).next().unwrap_or(raw);
        return Ok(RedirectTo {
            to: raw.to_string(),
            host: None,
            path: path.to_string(),
            has_query: raw.contains('?') || raw.contains('#'),
        });
    }
    let lower = raw.to_ascii_lowercase();
    let scheme_len = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        return Err(format!("invalid redirect target `{raw}`: {forms}"));
    };
    let rest = &raw[scheme_len..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!(
            "invalid redirect target `{raw}`: user info (`user@`) is not allowed"
        ));
    }
    let host = authority_host(authority)
        .map_err(|why| format!("invalid redirect target `{raw}`: {why}"))?;
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    let to = if tail.is_empty() {
        format!("{}/", raw)
    } else {
        raw.to_string()
    };
    Ok(RedirectTo {
        to,
        host: Some(host),
        path: path.to_string(),
        has_query: tail.contains('?') || tail.contains('#'),
    })
}

/// `host[:port]` or `[v6][:port]` of a URL; returns the normalised host.
fn authority_host(authority: &str) -> Result<String, String> {
    if authority.is_empty() {
        return Err("missing host".into());
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.split_once(']') {
            Some((h, "")) => (format!("{h}]"), None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (format!("{h}]"), Some(p)),
                None => return Err("bad IPv6 literal".into()),
            },
            None => return Err("bad IPv6 literal".into()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(format!("invalid port `{p}`")),
        }
    }
    match host_pattern(&host) {
        Ok(HostPattern::Exact(h)) => Ok(h),
        Ok(HostPattern::Wildcard(_)) => Err("a wildcard is not a host".into()),
        Err(e) => Err(e),
    }
}

/// `acme_profile`: the name of an ACME profile (RFC draft "ACME profiles"; Let's
/// Encrypt's `classic`, `tlsserver`, `shortlived`): 1 to 64 letters, digits, `.`, `_`
/// or `-`. Whether the CA offers it is checked by the daemon against its directory.
pub fn acme_profile(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid acme_profile `{}`: expected a profile name such as \"tlsserver\" (letters, digits, '.', '_', '-'; at most 64)",
            s.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (raw, want) in [
            ("10m", Some(10 << 20)),
            ("10M", Some(10 << 20)),
            ("1k", Some(1024)),
            ("2G", Some(2 << 30)),
            ("0k", Some(0)),
            ("unlimited", None),
            ("Unlimited", None),
        ] {
            assert_eq!(size("max_body", raw), Ok(want), "{raw}");
        }
        for raw in [
            "",
            "m",
            "10",
            "10 m",
            "10mb",
            "-1m",
            "1.5m",
            "+1m",
            "10t",
            "１m",
            "99999999999999999g",
        ] {
            assert!(size("max_body", raw).is_err(), "{raw}");
        }
        assert_eq!(
            size("max_body", "10x").unwrap_err(),
            "invalid size `10x` for `max_body`, expected a number of bytes, \"<n>k\", \"<n>m\", \"<n>g\" or \"unlimited\""
        );
    }

    #[test]
    fn durations() {
        for (raw, ms) in [
            ("5s", 5_000),
            ("250ms", 250),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("365d", 365 * 86_400_000),
        ] {
            assert_eq!(duration("t", raw), Ok(Duration::from_millis(ms)), "{raw}");
        }
        for raw in [
            "",
            "s",
            "5",
            "5 s",
            "5S",
            "1h30m",
            "1.5s",
            "-5s",
            "5sec",
            "ms",
            "99999999999999999999d",
        ] {
            assert!(duration("t", raw).is_err(), "{raw}");
        }
        assert_eq!(
            duration("read_timeout", "0s").unwrap_err(),
            "`read_timeout` must be greater than zero, found `0s`"
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("172.28.0.0/16").unwrap().to_string(), "172.28.0.0/16");
        assert_eq!(
            cidr("fd00:7fd7:e9a5::/48").unwrap().to_string(),
            "fd00:7fd7:e9a5::/48"
        );
        assert_eq!(cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(
            cidr("172.28.1.0/16").unwrap_err(),
            "network `172.28.1.0/16` in `allow` has host bits set; did you mean `172.28.0.0/16`?"
        );
        for raw in [
            "",
            "172.28.0.0/33",
            "172.28.0/16",
            "example.org",
            "fd00::/129",
            "1.2.3.4/",
        ] {
            assert!(cidr(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn hosts() {
        let exact = |s: &str| Ok(HostPattern::Exact(s.into()));
        let wild = |s: &str| Ok(HostPattern::Wildcard(s.into()));
        assert_eq!(
            host_pattern("Cloud.Example.ORG"),
            exact("cloud.example.org")
        );
        assert_eq!(host_pattern("example.org."), exact("example.org"));
        assert_eq!(
            host_pattern("*.cloud.example.org"),
            wild("cloud.example.org")
        );
        assert_eq!(host_pattern("*.Example.org."), wild("example.org"));
        assert_eq!(
            host_pattern("_dmarc.example.org"),
            exact("_dmarc.example.org")
        );
        assert_eq!(host_pattern("localhost"), exact("localhost"));
        assert_eq!(host_pattern("172.28.1.50"), exact("172.28.1.50"));
        assert_eq!(host_pattern("FD00:0::1"), exact("fd00::1"));
        assert_eq!(host_pattern("[fd00::1]"), exact("fd00::1"));
        assert_eq!(
            host_pattern(&format!("{}.org", "a".repeat(63))),
            exact(&format!("{}.org", "a".repeat(63)))
        );
        for raw in [
            "",
            ".",
            "*",
            "*.",
            "*.org",
            "a.*.b",
            "*foo.org",
            "*.*.example.org",
            "foo*.example.org",
            "-a.example.org",
            "a-.example.org",
            "a..example.org",
            ".example.org",
            "example.org..",
            "exa mple.org",
            "bücher.example",
            "example.org:443",
            "[fd00::1",
            "[1.2.3.4]",
            "300.1.1.1",
            "1.2.3",
        ] {
            assert!(host_pattern(raw).is_err(), "{raw:?}");
        }
        let long_label = format!("{}.org", "a".repeat(64));
        assert!(host_pattern(&long_label).is_err());
        let long_name = vec!["a".repeat(60); 5].join(".");
        assert_eq!(long_name.len(), 304);
        assert!(host_pattern(&long_name).is_err());
        assert_eq!(
            host_pattern("*.org").unwrap_err(),
            "invalid host `*.org`: a wildcard needs at least two labels after `*.` (e.g. `*.example.org`)"
        );
        assert_eq!(
            host_pattern("a.*.b").unwrap_err(),
            "invalid host `a.*.b`: `*` is only allowed as the whole first label (`*.example.org`)"
        );
    }

    #[test]
    fn upstreams() {
        assert_eq!(
            upstream("172.28.1.51:80"),
            Ok(Upstream::Addr("172.28.1.51:80".parse().unwrap()))
        );
        assert_eq!(
            upstream("[fd00:7fd7:e9a5:1::33]:80"),
            Ok(Upstream::Addr("[fd00:7fd7:e9a5:1::33]:80".parse().unwrap()))
        );
        assert_eq!(
            upstream("Nextcloud-1.vrt.fsn:8080"),
            Ok(Upstream::Name {
                host: "nextcloud-1.vrt.fsn".into(),
                port: 8080,
                fallback: vec![],
            })
        );
        assert_eq!(upstream("localhost:65535").unwrap().port(), 65535);
        for raw in [
            "",
            "172.28.1.51",
            "172.28.1.51:0",
            "172.28.1.51:65536",
            "172.28.1.51:-1",
            "172.28.1.51:+80",
            "fd00::1:80",
            "[fd00::1]",
            "[fd00::1]:0",
            "http://172.28.1.51:80",
            "host:",
            ":80",
            "*.example.org:80",
            "bad_host!:80",
            "300.1.1.1:80",
        ] {
            assert!(upstream(raw).is_err(), "{raw:?}");
        }
        assert_eq!(
            upstream("fd00::1:80").unwrap_err(),
            "invalid upstream `fd00::1:80`: an IPv6 address must be in brackets (e.g. `[fd00::1]:80`)"
        );
    }

    #[test]
    fn upstream_names_and_fallbacks() {
        assert_eq!(
            upstream_name("GitLab-1.vrt.fsn."),
            Ok("gitlab-1.vrt.fsn".into())
        );
        for bad in [
            "",
            "172.28.1.2",
            "fd00::2",
            "300.1.1.1",
            "a..b",
            "*.example.org",
            "a b",
        ] {
            assert!(upstream_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            fallback_addr("172.28.1.2"),
            Ok("172.28.1.2".parse().unwrap())
        );
        assert_eq!(fallback_addr("[fd00::2]"), Ok("fd00::2".parse().unwrap()));
        assert_eq!(fallback_addr("fd00::2"), Ok("fd00::2".parse().unwrap()));
        for bad in ["", "172.28.1.2:80", "gitlab-1", "[fd00::2]:80"] {
            assert!(fallback_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_names_and_values() {
        for ok in [
            "X-Foo",
            "x-forwarded-proto",
            "Strict-Transport-Security",
            "a!#$%&'*+-.^_`|~9",
        ] {
            assert_eq!(header_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "X Foo",
            "X-Foo:",
            "Ä",
            "X(Foo)",
            "Transfer-Encoding",
            "connection",
        ] {
            assert!(header_name(bad).is_err(), "{bad}");
        }
        assert_eq!(header_value("X", "SAMEORIGIN"), Ok(()));
        assert_eq!(header_value("X", "a b\tc"), Ok(()));
        assert_eq!(header_value("X", ""), Ok(()));
        for bad in ["a\r\nb", "a\nb", "\u{7f}", "é"] {
            assert!(header_value("X", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        for ok in [
            "/",
            "/api",
            "/api/",
            "/.well-known/carddav",
            "/a%20b",
            "/a.b/c..d",
            "/caf%C3%A9",
            "/a%2Fb",
            "/a%3Bb",
        ] {
            assert_eq!(route_path(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "api",
            "/a b",
            "/a?b",
            "/a#b",
            "//a",
            "/a//b",
            "/a/../b",
            "/..",
            "/a/./b",
            "/ü",
            "/a\tb",
            "/a;b",
            "/a;",
            "/a\\b",
            "/%61",
            "/a%2fb",
            "/a%",
            "/a%00",
            "/%2e%2e/a",
            "/a/.%2E",
        ] {
            assert!(route_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(health_check_path(""), Ok(None));
        assert_eq!(
            health_check_path("/status.php?x=1"),
            Ok(Some("/status.php?x=1".into()))
        );
        assert!(health_check_path("status").is_err());
        assert!(health_check_path("/a b").is_err());
    }

    #[test]
    fn redirect_targets() {
        let t = redirect_to("/remote.php/dav/").unwrap();
        assert_eq!(
            (t.to.as_str(), t.host, t.path.as_str()),
            ("/remote.php/dav/", None, "/remote.php/dav/")
        );
        let t = redirect_to("https://Example.org").unwrap();
        assert_eq!(t.to, "https://Example.org/");
        assert_eq!(t.host.as_deref(), Some("example.org"));
        assert_eq!(t.path, "/");
        let t = redirect_to("http://example.org:8080/a?b=c").unwrap();
        assert_eq!(
            (t.host.as_deref(), t.path.as_str(), t.has_query),
            (Some("example.org"), "/a", true)
        );
        let t = redirect_to("https://[fd00::1]:8443/x").unwrap();
        assert_eq!(t.host.as_deref(), Some("fd00::1"));
        for bad in [
            "",
            "example.org",
            "//example.org/",
            "ftp://example.org/",
            "https://",
            "https:///x",
            "https://user@example.org/",
            "https://*.example.org/",
            "https://example.org:0/",
            "https://example.org:x/",
            "https://exa mple.org/",
            "/a b",
            "https://[fd00::1/",
        ] {
            assert!(redirect_to(bad).is_err(), "{bad:?}");
        }
    }
}
