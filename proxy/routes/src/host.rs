//! Host names: patterns in the file and normalisation of what clients send.

use std::borrow::Cow;
use std::fmt;

/// A host name as written in a route: `cloud.example.org` or `*.example.org`.
/// A wildcard matches exactly one more label (`a.example.org`, not `a.b.example.org`,
/// nor `example.org` itself), as a wildcard certificate does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*.`.
    Wildcard(String),
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(s) => host.split_once('.').is_some_and(|(_, p)| p == s),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Normalise a `Host` header or `:authority` (or an SNI name) for lookup: lower case,
/// port removed, one trailing dot removed, brackets of an IPv6 literal removed.
/// Borrows when nothing has to change, which is the common case.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let mut h = raw.trim();
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port or [v6]; anything else after the bracket is left in place, so that
        // `[::1]junk` matches no route (it used to be read as `::1`).
        if let Some((ip, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').unwrap_or(after);
            if after.is_empty()
                || after.starts_with(':') && port.bytes().all(|b| b.is_ascii_digit())
            {
                h = ip;
            }
        }
    } else if let Some((name, port)) = h.rsplit_once(':') {
        if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) {
            h = name;
        }
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.contains(':') {
        // An IPv6 literal in its one canonical spelling, as routes.toml holds it
        // (`[0:0::1]` is `::1`; found by the host fuzz target).
        if let Ok(ip) = h.parse::<std::net::Ipv6Addr>() {
            let canonical = ip.to_string();
            if canonical != h {
                return Cow::Owned(canonical);
            }
        }
    }
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_port_dot_and_brackets() {
        for (raw, want) in [
            ("Cloud.Example.ORG", "cloud.example.org"),
            ("cloud.example.org:443", "cloud.example.org"),
            ("cloud.example.org.", "cloud.example.org"),
            ("CLOUD.example.org.:8443", "cloud.example.org"),
            ("[::1]:8443", "::1"),
            ("[fd00::1]", "fd00::1"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("plain", "plain"),
            ("a.test:", "a.test"),
            ("[::1]:", "::1"),
            // Regression (host fuzz target): junk after the brackets was dropped.
            ("[::1]x", "[::1]x"),
            ("[::1]:80x", "[::1]:80x"),
            ("[0:0::1]:443", "::1"),
            ("[FD00::A]", "fd00::a"),
        ] {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
    }

    #[test]
    fn wildcard_matches_one_label() {
        let w = HostPattern::Wildcard("example.org".into());
        assert!(w.matches("a.example.org"));
        assert!(!w.matches("example.org"));
        assert!(!w.matches("a.b.example.org"));
    }
}
