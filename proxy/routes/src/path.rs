//! Request paths: the form a request is routed by, and forwarded with.
//!
//! A route's `path` is matched against the request path as text, but the upstream acts
//! on its own reading of the path: most decode `%XX`, merge `//` and resolve `.` and
//! `..` (nginx, PHP front controllers, most frameworks), and Java servlet containers
//! (Tomcat, Jetty, Spring) also drop `;parameters` from every segment. Were the proxy
//! to route on the raw text, `/x/../admin`, `/%61dmin` or `/admin;x/secret` would reach
//! `/admin` through the route of `/` and skip the `allow` of a route for `/admin`. So:
//!
//! - [`normalize_path`] decodes percent-encoded unreserved characters (RFC 3986 6.2.2.2:
//!   the same URI), writes the hex digits of the escapes it keeps in upper case (6.2.2.1),
//!   escapes the bytes a path cannot hold unescaped that HTTP lets through (UTF-8, `"`,
//!   `{`, `|`, `\`, ...: an upstream reads `/café` as `/caf%C3%A9`),
//!   merges runs of `/`, and refuses dot segments (`.`, `..`, also percent-encoded, also
//!   between encoded slashes or backslashes, also as `..;x`), `%00` and malformed `%`
//!   escapes. The result is both what is routed and what is forwarded, so upstream and
//!   proxy agree on it. Parameters stay in what is forwarded (`;jsessionid=` is the
//!   application's).
//! - [`RouteTable::lookup`] matches route paths against the path with `;parameters`
//!   removed from every segment and the empty segments this leaves merged
//!   (`/admin;x/secret` and `/;x/admin/secret` are `/admin/secret`), as those
//!   containers do. A route path ending in `/` also covers the bare path: `/admin/`
//!   covers `/admin` and `/admin;x`, never `/adminx`.
//! - [`RouteTable::route`] looks that path up, and when it still holds escapes (`%2F`,
//!   `%3B`, ...) or a backslash also looks up its fully decoded reading (every escape
//!   decoded, `\` read as `/`, parameters removed) against the route paths read the same
//!   way: if the two pick different routes the request is refused, since an upstream
//!   that decodes `%2F` (or splits on `\`) would act on the other.
//!
//! Route paths in routes.toml must already be in the normal form of [`normalize_path`]
//! and hold no `;` (checked in `values::route_path`, with the form to write instead), so
//! a route path always means what a request path of the same text means.

use std::borrow::Cow;
use std::fmt;

use crate::{covers, PathSet, RouteTable, Target};

/// Why a request path is refused (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `.` or `..` segment, plain or percent-encoded.
    DotSegment,
    /// `%` not followed by two hex digits, or `%00`.
    BadEscape,
    /// Its decoded reading (`%2F` as `/`, ...) would pick another route.
    Ambiguous,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::DotSegment => "dot segment in the path",
            PathError::BadEscape => "bad percent-encoding in the path",
            PathError::Ambiguous => "the decoded path would take another route",
        })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A byte that may stand unescaped in a path (RFC 3986 3.3: `pchar` and `/`, plus `%`
/// of an escape). Any other byte that HTTP/1 or HTTP/2 lets through (UTF-8, `"`, `{`,
/// `|`, `\\`, ...) means the same to an upstream as its escape, and is written as one.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/%".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The escape at `i` (`b[i] == b'%'`), decoded.
fn escape_at(b: &[u8], i: usize) -> Result<u8, PathError> {
    match (
        b.get(i + 1).copied().and_then(hex),
        b.get(i + 2).copied().and_then(hex),
    ) {
        (Some(0), Some(0)) => Err(PathError::BadEscape),
        (Some(h), Some(l)) => Ok(h * 16 + l),
        _ => Err(PathError::BadEscape),
    }
}

/// Every `%XX` decoded (an upstream's reading of the path).
fn decode_all(path: &str) -> Result<Vec<u8>, PathError> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(escape_at(b, i)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A `.` or `..` segment once fully decoded, with `/` or `\` as separators and
/// `;parameters` ignored.
fn has_dot_segment(decoded: &[u8]) -> bool {
    decoded.split(|&c| c == b'/' || c == b'\\').any(|seg| {
        let seg = seg.split(|&c| c == b';').next().unwrap_or_default();
        seg == b"." || seg == b".."
    })
}

/// The path a request is routed by and forwarded with (see the module docs). Borrows
/// when nothing changes, which is the common case. Paths that do not start with `/`
/// (`*` of `OPTIONS *`) are returned as they are.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Ok(Cow::Borrowed(raw));
    }
    let b = raw.as_bytes();
    let suspicious = b.iter().any(|&c| c == b'%' || !is_path_char(c))
        || raw.contains("//")
        || raw.contains("/.");
    if !suspicious {
        return Ok(Cow::Borrowed(raw));
    }
    if has_dot_segment(&decode_all(raw)?) {
        return Err(PathError::DotSegment);
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let d = escape_at(b, i)?;
            if is_unreserved(d) {
                out.push(d as char);
            } else {
                out.push('%');
                out.push(char::from(b[i + 1].to_ascii_uppercase()));
                out.push(char::from(b[i + 2].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        if c == b'/' && out.ends_with('/') {
            i += 1;
            continue;
        }
        if is_path_char(c) {
            out.push(char::from(c));
        } else {
            // UTF-8 (byte by byte) and ASCII that must be escaped: as an upstream reads it.
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(c >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(c & 15)]));
        }
        i += 1;
    }
    Ok(if out == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(out)
    })
}

/// The path with `;parameters` removed from every segment, and the empty segments this
/// leaves (or that were there) merged: `/admin;x/secret` and `/;x/admin/secret` are
/// `/admin/secret`, `/admin/;x` is `/admin/`. Borrows (no work beyond one scan) when
/// there is no `;`, which is the common case.
pub(crate) fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        let name = seg.split(';').next().unwrap_or_default();
        if i > 0 && !out.ends_with('/') {
            out.push('/');
        }
        out.push_str(name);
    }
    Cow::Owned(out)
}

/// The reading of an upstream that decodes everything: every `%XX` decoded (bytes that
/// are not UTF-8 replaced), `\` read as `/`, runs of `/` merged, `;parameters` removed.
fn decoded_reading(path: &str) -> Result<String, PathError> {
    let decoded = decode_all(path)?;
    let decoded = String::from_utf8_lossy(&decoded);
    let mut merged = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        let c = if c == '\\' { '/' } else { c };
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    Ok(match without_params(&merged) {
        Cow::Borrowed(_) => merged,
        Cow::Owned(p) => p,
    })
}

/// A route path's base (without its trailing `/`, `""` for `/`) read as
/// [`decoded_reading`] reads a request path. Borrowed when there is nothing to decode.
pub(crate) fn decoded_base(base: &str) -> Cow<'_, str> {
    if !base.bytes().any(|c| c == b'%' || c == b'\\') {
        return Cow::Borrowed(base);
    }
    match decoded_reading(base) {
        Ok(mut d) => {
            while d.ends_with('/') {
                d.pop();
            }
            Cow::Owned(d)
        }
        // Route paths are checked by normalize_path when parsed: never reached.
        Err(_) => Cow::Borrowed(base),
    }
}

impl RouteTable {
    /// Look up a request: `host` normalised with [`crate::parse_request_host`], `path` with
    /// [`normalize_path`]. When the path still holds escapes or a backslash, its fully
    /// decoded reading must pick the same target among the route paths read the same
    /// way, or the request is [`PathError::Ambiguous`].
    pub fn route(&self, host: &str, path: &str) -> Result<Option<&Target>, PathError> {
        let target = self.lookup(host, path);
        if path.bytes().any(|c| c == b'%' || c == b'\\') {
            let decoded = decoded_reading(path)?;
            let other = self.lookup_decoded(host, &decoded);
            let same = match (target, other) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                return Err(PathError::Ambiguous);
            }
        }
        Ok(target)
    }

    /// [`RouteTable::lookup`] of a decoded reading, against decoded route paths.
    fn lookup_decoded(&self, host: &str, decoded: &str) -> Option<&Target> {
        if let Some(t) = self.exact.get(host).and_then(|s| s.find_decoded(decoded)) {
            return Some(t);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard
            .get(parent)
            .and_then(|s| s.find_decoded(decoded))
    }
}

impl PathSet {
    /// The target whose route path, decoded, is the longest to cover `decoded`. The
    /// entries are sorted by their length as written, which decoding can change: hence
    /// a scan of all of them (a few per host; only for paths with escapes).
    fn find_decoded(&self, decoded: &str) -> Option<&Target> {
        let mut best: Option<(usize, &Target)> = None;
        for (base, target) in &self.entries {
            let base = decoded_base(base);
            if covers(&base, decoded) && best.is_none_or(|(len, _)| base.len() > len) {
                best = Some((base.len(), target));
            }
        }
        best.map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/a/b",
            "/a.b/c..d/.e",
            "/x/",
            "/caf%C3%A9",
            "/a;b=c:d@e",
            "*",
        ] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_slashes_merged() {
        for (raw, want) in [
            ("/%61dmin", "/admin"),
            ("/%7Euser/%41%42", "/~user/AB"),
            ("//admin//x", "/admin/x"),
            ("/a%2Fb", "/a%2Fb"),
            // Escapes kept are written with upper-case hex digits (RFC 3986 6.2.2.1).
            ("/a%2fb%20c", "/a%2Fb%20c"),
            ("/a%3bx;y", "/a%3Bx;y"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/q%3F", "/q%3F"),
            // Parameters stay in what is forwarded.
            ("//admin;x//secret", "/admin;x/secret"),
        ] {
            assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
            assert_eq!(normalize_path(want).unwrap(), want, "{want} is normal");
        }
    }

    #[test]
    fn dot_segments_and_bad_escapes_are_refused() {
        for raw in [
            "/..",
            "/.",
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/%2e%2e/a",
            "/%2E./a",
            "/.%2e/a",
            "/a%2F..%2Fb",
            "/a\\..\\b",
            "/..;/admin",
            "/a/.;x/b",
        ] {
            assert_eq!(normalize_path(raw), Err(PathError::DotSegment), "{raw}");
        }
        for raw in ["/%", "/%4", "/%zz", "/a%00b", "/%G1"] {
            assert_eq!(normalize_path(raw), Err(PathError::BadEscape), "{raw}");
        }
    }

    #[test]
    fn parameters_are_removed_from_every_segment_and_empty_segments_merged() {
        for (path, want) in [
            ("/a/b", "/a/b"),
            ("/admin;x/secret", "/admin/secret"),
            ("/admin;/secret", "/admin/secret"),
            ("/admin;a=1;b=2", "/admin"),
            ("/;x/admin", "/admin"),
            ("/admin/;x", "/admin/"),
            ("/admin/;x/y", "/admin/y"),
            ("/a//b;", "/a/b"),
            ("/;", "/"),
            ("/a%3Bx", "/a%3Bx"),
        ] {
            assert_eq!(without_params(path), want, "{path}");
        }
        assert!(matches!(without_params("/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_decoded_reading_that_takes_another_route_is_ambiguous() {
        let table = crate::parse(
            "t.toml",
            "[[route]]\nhosts = [\"a.test\"]\nupstreams = [\"127.0.0.1:1\"]\n\n\
             [[route]]\nhosts = [\"a.test\"]\npath = \"/admin\"\nupstreams = [\"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let id = |p: &str| {
            table
                .route("a.test", p)
                .map(|t| t.map(|t| t.id().to_owned()))
        };
        assert_eq!(id("/%2Fadmin"), Err(PathError::Ambiguous));
        assert_eq!(id("/x%2Fy").unwrap(), id("/").unwrap());
        assert_eq!(id("/admin/a%2Fb").unwrap(), id("/admin").unwrap());
    }
}
