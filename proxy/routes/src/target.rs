//! Request methods and targets: which forms a reverse proxy takes (RFC 9112 3.2, RFC
//! 9113 8.3.1).
//!
//! The HTTP/1 parser already refuses a request line with extra or missing spaces,
//! control bytes or a version other than `HTTP/1.0` / `HTTP/1.1` (proxy/vendor/README.md);
//! what it lets through is checked here, for HTTP/1.x and HTTP/2 alike: a method that is
//! a token, and a target in one of the forms a server that is not a forward proxy
//! serves. `CONNECT` never gets here: pingora answers it with 405.

use std::fmt;

/// Why a request's method or target is refused (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// Empty, or a byte that is not a token character (RFC 9110 5.6.2).
    Method,
    /// Not origin-form (`/...`), absolute-form (HTTP/1.x only: `http://` or `https://`,
    /// an authority, then `/...`, `?...` or nothing) or `*`: a relative or authority-form
    /// target, another scheme, an absolute-form target over HTTP/2.
    Form,
    /// `*` with a method other than `OPTIONS`.
    Asterisk,
    /// A byte outside visible ASCII (space, control bytes, raw UTF-8).
    Character,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::Method => "method is not a token",
            TargetError::Form => "request target is neither origin-form nor absolute-form",
            TargetError::Asterisk => "`*` target with a method other than OPTIONS",
            TargetError::Character => "character not allowed in a request target",
        })
    }
}

impl std::error::Error for TargetError {}

/// The accepted forms of a request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query` (HTTP/1.x): the authority is checked as the host.
    Absolute,
    /// `*`, of `OPTIONS *`.
    Asterisk,
}

/// tchar of RFC 9110 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Check a request's method and target. `target` is the target as the client sent it:
/// the second word of an HTTP/1.x request line, or HTTP/2's `:path`; `absolute_form`
/// says whether absolute-form is allowed (HTTP/1.x yes, HTTP/2 no: its authority is
/// `:authority`). A fragment (`#...`) is not part of a target, but is tolerated as far
/// as bytes go: the parsers drop it before anything routes or forwards the request.
pub fn check_request_target(
    method: &[u8],
    target: &[u8],
    absolute_form: bool,
) -> Result<TargetForm, TargetError> {
    if method.is_empty() || !method.iter().copied().all(is_tchar) {
        return Err(TargetError::Method);
    }
    if !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(TargetError::Character);
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok(TargetForm::Asterisk)
        } else {
            Err(TargetError::Asterisk)
        };
    }
    if target.first() == Some(&b'/') {
        return Ok(TargetForm::Origin);
    }
    if !absolute_form {
        return Err(TargetError::Form);
    }
    let lower = |n: usize| target.get(..n).map(<[u8]>::to_ascii_lowercase);
    let rest = if lower(7).as_deref() == Some(b"http://") {
        &target[7..]
    } else if lower(8).as_deref() == Some(b"https://") {
        &target[8..]
    } else {
        return Err(TargetError::Form);
    };
    let authority_end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    if authority_end == 0 {
        return Err(TargetError::Form);
    }
    Ok(TargetForm::Absolute)
}

/// The target of an HTTP/1.x request head (the bytes as read): the second word of its
/// request line, after the empty lines a client may send first (RFC 9112 2.2). `None`
/// when the line is not `method SP target SP version`.
pub fn h1_request_target(head: &[u8]) -> Option<&[u8]> {
    let line = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())?;
    let mut words = line.split(|&b| b == b' ');
    let (_method, target, _version) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        for (method, target, h1, form) in [
            ("GET", "/", true, TargetForm::Origin),
            ("GET", "/a/b?c=d&e", false, TargetForm::Origin),
            ("POST", "//x", true, TargetForm::Origin),
            ("GET", "/a{b}|c^d`e\"f<g>", true, TargetForm::Origin),
            ("PROPFIND", "/remote.php/dav/", false, TargetForm::Origin),
            ("M-SEARCH", "/", true, TargetForm::Origin),
            ("OPTIONS", "*", true, TargetForm::Asterisk),
            ("OPTIONS", "*", false, TargetForm::Asterisk),
            ("GET", "http://a.test/x", true, TargetForm::Absolute),
            ("GET", "HTTPS://a.test:8443", true, TargetForm::Absolute),
            ("GET", "http://a.test?q", true, TargetForm::Absolute),
            ("GET", "/x#frag", true, TargetForm::Origin),
        ] {
            assert_eq!(
                check_request_target(method.as_bytes(), target.as_bytes(), h1),
                Ok(form),
                "{method} {target} (h1: {h1})"
            );
        }
    }

    #[test]
    fn refused_methods_and_targets() {
        use TargetError::*;
        for (method, target, h1, why) in [
            ("", "/", true, Method),
            ("G ET", "/", true, Method),
            ("GET\0", "/", true, Method),
            ("G(T", "/", true, Method),
            ("GÉT", "/", false, Method),
            ("GET", "", true, Form),
            ("GET", "a", true, Form),
            ("GET", "?q", true, Form),
            ("GET", "a.test:443", true, Form),
            ("GET", "#x", true, Form),
            ("GET", "ftp://a.test/", true, Form),
            ("GET", "http:/a.test/", true, Form),
            ("GET", "http:///x", true, Form),
            ("GET", "http://a.test/x", false, Form),
            ("GET", "*", true, Asterisk),
            ("DELETE", "*", false, Asterisk),
            ("options", "*", true, Asterisk),
            ("GET", "/a b", true, Character),
            ("GET", "/a\tb", true, Character),
            ("GET", "/a\rb", true, Character),
            ("GET", "/a\0b", false, Character),
            ("GET", "/caf\u{e9}", false, Character),
            ("GET", "/\x7f", false, Character),
        ] {
            assert_eq!(
                check_request_target(method.as_bytes(), target.as_bytes(), h1),
                Err(why),
                "{method:?} {target:?} (h1: {h1})"
            );
        }
    }

    #[test]
    fn h1_target_is_the_second_word_of_the_request_line() {
        for (head, want) in [
            ("GET /x HTTP/1.1\r\nHost: a\r\n\r\n", Some("/x")),
            ("\r\nGET /y HTTP/1.1\r\n\r\n", Some("/y")),
            ("GET * HTTP/1.1\n\n", Some("*")),
            ("GET /x#f HTTP/1.0\r\n\r\n", Some("/x#f")),
            ("GET  /x HTTP/1.1\r\n\r\n", None),
            ("GET /x\r\n\r\n", None),
            ("GET /x HTTP/1.1 x\r\n\r\n", None),
            ("", None),
        ] {
            assert_eq!(
                h1_request_target(head.as_bytes()),
                want.map(str::as_bytes),
                "{head:?}"
            );
        }
    }
}
