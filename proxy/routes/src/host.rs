//! Host names: patterns in the file, and the checked, normalised host of a request.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

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

/// The longest DNS name, without its trailing dot (RFC 1035 2.3.4, in text form).
const MAX_NAME: usize = 253;
/// The longest label of a DNS name.
const MAX_LABEL: usize = 63;

/// A request's host (the `Host` header, HTTP/2 `:authority`, or the authority of an
/// absolute-form target), checked by [`parse_request_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost<'a> {
    /// What routes are looked up by: a DNS name in lower case without its trailing dot,
    /// an IPv4 address, or an IPv6 address in its canonical form without brackets.
    pub name: Cow<'a, str>,
    /// The port, when the client sent one.
    pub port: Option<u16>,
}

impl RequestHost<'_> {
    /// `name[:port]` as the proxy tells the upstream (`X-Forwarded-Host`, `Forwarded:
    /// host=`): the checked name (bracketed when IPv6) and the client's port if it sent
    /// one. Never the client's bytes.
    pub fn authority(&self) -> String {
        let mut out = String::with_capacity(self.name.len() + 8);
        if self.name.contains(':') {
            out.push('[');
            out.push_str(&self.name);
            out.push(']');
        } else {
            out.push_str(&self.name);
        }
        if let Some(port) = self.port {
            out.push(':');
            out.push_str(&port.to_string());
        }
        out
    }
}

/// Why a request's host is refused (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Empty,
    /// `user@host`: no userinfo in an HTTP authority (RFC 9110 4.2.4).
    Userinfo,
    /// Not 1-5 digits of at most 65535 after the `:`.
    Port,
    /// `[...]` that is not an IPv6 address (zone ids and IPvFuture included), or an
    /// unbalanced bracket.
    Ipv6,
    /// Its last label is a number (or `0x` hex) but the whole is no dotted-quad IPv4
    /// address: `1.2.3`, `0x7f.1`, `256.0.0.1`, `01.2.3.4`.
    Ipv4,
    /// A character outside letters, digits, `-`, `_` and `.` (raw UTF-8, `%`, quotes,
    /// blanks, `;`, `,`, ...).
    Character,
    /// An empty label (`a..b`, `.a`, `a..`).
    EmptyLabel,
    /// A label longer than 63 characters, or a name longer than 253.
    Length,
    /// A label that starts or ends with `-`.
    Hyphen,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Empty => "empty host",
            HostError::Userinfo => "userinfo in the host",
            HostError::Port => "port is not a number of 0-65535",
            HostError::Ipv6 => "not an IPv6 address in brackets",
            HostError::Ipv4 => "numeric host that is not an IPv4 address",
            HostError::Character => "character not allowed in a host name",
            HostError::EmptyLabel => "empty label in the host name",
            HostError::Length => "host name or label too long",
            HostError::Hyphen => "label starts or ends with `-`",
        })
    }
}

impl std::error::Error for HostError {}

/// Check and normalise a request's host, before any lookup. Accepted:
///
/// - a DNS name: labels of 1-63 letters, digits, `-` (not first or last) and `_`
///   (internal names use it; routes may name it too), at most 253 characters, any case
///   (looked up in lower case), with or without one trailing dot (`a.example.` is the
///   fully qualified `a.example`). IDNs only as A-labels (`xn--...`);
/// - a dotted-quad IPv4 address (`127.0.0.1`; no leading zeros, no short or hex forms);
/// - an IPv6 address in brackets (`[::1]`; no zone id);
///
/// each with an optional `:port` of 1-5 digits, at most 65535. Everything else is
/// refused: userinfo (`user@host`), `%`, quotes, blanks, `;`, `,`, control bytes,
/// raw UTF-8, empty labels, an empty port, a bare IPv6 address, a name whose last label
/// is numeric but is no IPv4 address. Borrows when the host is already in its
/// normal form, which is the common case.
pub fn parse_request_host(raw: &str) -> Result<RequestHost<'_>, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.contains('@') {
        return Err(HostError::Userinfo);
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(HostError::Ipv6)?;
        let port = match after {
            "" => None,
            _ => Some(parse_port(after.strip_prefix(':').ok_or(HostError::Port)?)?),
        };
        // std's parser takes exactly the RFC 4291 text forms: no zone, no brackets.
        let ip: Ipv6Addr = v6.parse().map_err(|_| HostError::Ipv6)?;
        let canonical = ip.to_string();
        let name = if canonical == v6 {
            Cow::Borrowed(v6)
        } else {
            Cow::Owned(canonical)
        };
        return Ok(RequestHost { name, port });
    }
    // A second `:` (an IPv6 address without brackets) stays in the port and fails there.
    let (host, port) = match raw.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (raw, None),
    };
    let name = dns_name_or_ipv4(host)?;
    let port = port.map(parse_port).transpose()?;
    Ok(RequestHost { name, port })
}

fn parse_port(digits: &str) -> Result<u16, HostError> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::Port);
    }
    digits.parse().map_err(|_| HostError::Port)
}

/// A DNS name or a dotted-quad IPv4 address, lower-cased, without its trailing dot.
fn dns_name_or_ipv4(host: &str) -> Result<Cow<'_, str>, HostError> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(HostError::Length);
    }
    let mut upper = false;
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL {
            return Err(HostError::Length);
        }
        for b in label.bytes() {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
                b'A'..=b'Z' => upper = true,
                _ => return Err(HostError::Character),
            }
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::Hyphen);
        }
    }
    // As URL parsers do (WHATWG "ends in a number"): a name whose last label is a
    // number is an IPv4 address or nothing, so that `0x7f.1` or `127.1` cannot reach an
    // upstream that reads them as 127.0.0.1 while the proxy read a name.
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if (hex || last.bytes().all(|b| b.is_ascii_digit())) && name.parse::<Ipv4Addr>().is_err() {
        return Err(HostError::Ipv4);
    }
    Ok(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, Option<u16>) {
        let h = parse_request_host(raw).unwrap_or_else(|e| panic!("{raw:?} refused: {e}"));
        (h.name.into_owned(), h.port)
    }

    #[test]
    fn valid_hosts_are_normalised_case_port_dot_and_brackets() {
        for (raw, name, port) in [
            ("cloud.example.org", "cloud.example.org", None),
            ("Cloud.Example.ORG", "cloud.example.org", None),
            ("cloud.example.org:443", "cloud.example.org", Some(443)),
            ("cloud.example.org.", "cloud.example.org", None),
            ("CLOUD.example.org.:8443", "cloud.example.org", Some(8443)),
            ("plain", "plain", None),
            ("_acme._tcp.internal", "_acme._tcp.internal", None),
            ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
            ("a-b.c-d", "a-b.c-d", None),
            ("127.0.0.1", "127.0.0.1", None),
            ("127.0.0.1:80", "127.0.0.1", Some(80)),
            ("a.test:65535", "a.test", Some(65535)),
            ("a.test:0080", "a.test", Some(80)),
            ("[::1]", "::1", None),
            ("[::1]:8443", "::1", Some(8443)),
            ("[fd00::1]", "fd00::1", None),
            // Regression (host fuzz target): one canonical spelling of an IPv6 address.
            ("[0:0::1]:443", "::1", Some(443)),
            ("[FD00::A]", "fd00::a", None),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", None),
            ("0x7f.example", "0x7f.example", None),
            ("1.example", "1.example", None),
        ] {
            assert_eq!(ok(raw), (name.to_owned(), port), "{raw}");
        }
        let longest = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(longest.len(), 253);
        assert_eq!(ok(&longest).0, longest);
        assert_eq!(ok(&format!("{longest}.:1")).0, longest);
    }

    #[test]
    fn normal_hosts_are_borrowed() {
        for raw in ["a.test", "a.test:443", "a.test.", "127.0.0.1", "[::1]:1"] {
            assert!(
                matches!(parse_request_host(raw).unwrap().name, Cow::Borrowed(_)),
                "{raw}"
            );
        }
    }

    #[test]
    fn hostile_hosts_are_refused() {
        use HostError::*;
        let long_label = format!("{}.test", "a".repeat(64));
        let long_name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62)
        );
        for (raw, why) in [
            ("", Empty),
            (".", Empty),
            (":443", Empty),
            ("x\",for=\"[::1]\";host=\"a.wild.test", Character),
            ("a.test\"", Character),
            ("a test", Character),
            (" a.test", Character),
            ("a.test ", Character),
            ("a.test\t", Character),
            ("a;b.test", Character),
            ("a,b.test", Character),
            ("a%2eb.test", Character),
            ("a.test\r\nX: y", Character),
            ("a.test\0", Character),
            ("b\u{fc}cher.example", Character),
            ("a\\b.test", Character),
            ("a/b.test", Character),
            ("*.a.test", Character),
            ("user@a.test", Userinfo),
            ("user:pw@a.test:443", Userinfo),
            ("a.test:", Port),
            ("a.test:65536", Port),
            ("a.test:99999", Port),
            ("a.test:000080", Port),
            ("a.test:-1", Port),
            ("a.test:+80", Port),
            ("a.test:80:80", Port),
            ("a.test:8x", Port),
            ("::1", Empty),
            ("fd00::1:443", Port),
            ("[::1", Ipv6),
            ("[::1]]", Port),
            ("[::1]x", Port),
            ("[::1]:", Port),
            ("[::1]:80x", Port),
            ("[a.test]", Ipv6),
            ("[127.0.0.1]", Ipv6),
            ("[fe80::1%25eth0]", Ipv6),
            ("[fe80::1%eth0]", Ipv6),
            ("[v1.fe80::a+en1]", Ipv6),
            ("[]", Ipv6),
            ("::1]", Empty),
            ("a..b", EmptyLabel),
            (".a.test", EmptyLabel),
            ("a.test..", EmptyLabel),
            ("-a.test", Hyphen),
            ("a-.test", Hyphen),
            ("256.0.0.1", Ipv4),
            ("01.2.3.4", Ipv4),
            ("1.2.3", Ipv4),
            ("127.1", Ipv4),
            ("2130706433", Ipv4),
            ("0x7f.0.0.1", Ipv4),
            ("a.0x7f", Ipv4),
            ("a.0x", Ipv4),
            ("a.123", Ipv4),
            ("1.2.3.4.5", Ipv4),
        ] {
            assert_eq!(parse_request_host(raw), Err(why), "{raw:?}");
        }
        assert_eq!(parse_request_host(&long_label), Err(Length));
        assert_eq!(parse_request_host(&long_name), Err(Length));
        assert_eq!(parse_request_host(&"a.".repeat(40_000)), Err(Length));
    }

    #[test]
    fn authority_is_the_checked_host_with_the_clients_port() {
        for (raw, authority) in [
            ("A.Test", "a.test"),
            ("a.test.:0443", "a.test:443"),
            ("[0::1]:8443", "[::1]:8443"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1:80"),
        ] {
            let host = parse_request_host(raw).unwrap();
            assert_eq!(host.authority(), authority, "{raw}");
            assert_eq!(
                parse_request_host(&host.authority()),
                Ok(host.clone()),
                "{raw}: authority() reads back as the same host"
            );
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
