//! The admin API client: HTTP/1.1 over the daemon's Unix socket, JSON bodies decoded
//! into the shared protocol types (`admin_api`). Errors carry what an admin can act on,
//! and each kind has its own exit status.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use admin_api::{ErrorReply, Request};
use serde::de::DeserializeOwned;

/// Why the daemon could not be asked.
#[derive(Debug)]
pub enum CallError {
    /// No socket, or nobody listening on it: exit 3.
    NotRunning(String),
    /// The socket exists but this user may not use it: exit 4.
    PermissionDenied(String),
    /// The daemon did not answer in time: exit 5.
    Timeout(String),
    /// The answer made no sense: exit 1.
    Protocol(String),
    /// The answer is JSON but not the reply this proxyctl knows (a daemon of another
    /// version?): exit 1. Names the endpoint and the field.
    BadReply(String),
}

impl CallError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::NotRunning(_) => 3,
            CallError::PermissionDenied(_) => 4,
            CallError::Timeout(_) => 5,
            CallError::Protocol(_) | CallError::BadReply(_) => 1,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotRunning(m)
            | CallError::PermissionDenied(m)
            | CallError::Timeout(m)
            | CallError::Protocol(m)
            | CallError::BadReply(m) => f.write_str(m),
        }
    }
}

/// One request of the admin API: the HTTP status and, decoded, either the request's
/// reply type `T` (for the statuses that carry it, see [`Request::has_reply_type`]) or
/// the daemon's [`ErrorReply`]. A body that does not decode is a [`CallError::BadReply`].
pub fn request<T: DeserializeOwned>(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(u16, Result<T, ErrorReply>), CallError> {
    let (method, path) = (request.method(), request.path());
    let (status, body) = call(socket, method, &path, timeout)?;
    decode(request, status, body)
        .map(|reply| (status, reply))
        .map_err(|e| {
            CallError::BadReply(format!(
                "proxyd's answer to {method} {path} ({status}) is not the reply this proxyctl \
                 (version {}) knows: {e}",
                env!("CARGO_PKG_VERSION")
            ))
        })
}

fn decode<T: DeserializeOwned>(
    request: &Request,
    status: u16,
    body: serde_json::Value,
) -> Result<Result<T, ErrorReply>, serde_json::Error> {
    if request.has_reply_type(status) {
        serde_json::from_value(body).map(Ok)
    } else {
        serde_json::from_value(body).map(Err)
    }
}

/// The largest answer read (the biggest real one, `certs` of a large table, is far
/// smaller).
const MAX_ANSWER: usize = 64 << 20;

/// One request; returns the status code and the JSON body.
fn call(
    socket: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), CallError> {
    let shown = socket.display();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CallError::NotRunning(format!(
            "proxyd is not running: no admin socket at {shown} (start it, or point --socket / PROXYCTL_SOCKET at its --admin-socket)"
        )),
        std::io::ErrorKind::ConnectionRefused => CallError::NotRunning(format!(
            "proxyd is not running: nothing listens on {shown} (a stale socket file?)"
        )),
        std::io::ErrorKind::PermissionDenied => CallError::PermissionDenied(format!(
            "permission denied on {shown}: run as the daemon's user or a member of the socket's group (proxyd --admin-socket-mode 660)"
        )),
        _ => CallError::NotRunning(format!("cannot connect to {shown}: {e}")),
    })?;
    let io_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            CallError::Timeout(format!(
                "proxyd did not answer within {}s on {shown} (raise --timeout?)",
                timeout.as_secs()
            ))
        }
        _ => CallError::Protocol(format!("talking to proxyd on {shown}: {e}")),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: proxyd\r\nUser-Agent: proxyctl/{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).map_err(io_err)?;
    // `timeout` bounds the whole answer, not each read (a daemon trickling a byte a
    // second would otherwise hold proxyctl for ever), and the answer's size is bounded.
    let deadline = std::time::Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io_err(std::io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
        if raw.len() > MAX_ANSWER {
            return Err(CallError::Protocol(format!(
                "bad answer from proxyd on {shown}: longer than {} MiB",
                MAX_ANSWER >> 20
            )));
        }
    }
    parse_response(&raw)
        .map_err(|m| CallError::Protocol(format!("bad answer from proxyd on {shown}: {m}")))
}

fn parse_response(raw: &[u8]) -> Result<(u16, serde_json::Value), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status line")?;
    let body = &raw[split + 4..];
    let mut json = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    defang(&mut json);
    Ok((status, json))
}

/// Every string of a reply (keys too) with its control characters but `\n` and `\t`
/// written out as `\u{..}`: the strings are text for an admin's terminal (messages,
/// names, a CA's error detail), where ESC, CSI, BEL or CR would clear the screen, set
/// the title or overwrite a line. Decode errors quote values, so this comes first.
fn defang(v: &mut serde_json::Value) {
    fn text(s: &str) -> Option<String> {
        let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
        s.contains(bad).then(|| {
            s.chars()
                .map(|c| {
                    if bad(c) {
                        c.escape_unicode().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
    }
    match v {
        serde_json::Value::String(s) => {
            if let Some(t) = text(s) {
                *s = t;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(defang),
        serde_json::Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut v) in old {
                defang(&mut v);
                o.insert(text(&k).unwrap_or(k), v);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_json() {
        let raw = b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":false}";
        let (s, v) = parse_response(raw).unwrap();
        assert_eq!(s, 422);
        assert_eq!(v["ok"], false);
        assert!(parse_response(b"garbage").is_err());
    }

    /// A reply with a renamed field is an error naming the field, not a silent null.
    #[test]
    fn a_reply_missing_a_field_does_not_decode() {
        let raw = b"HTTP/1.1 200 OK\r\n\r\n{\"live\": true}";
        let (status, body) = parse_response(raw).unwrap();
        let live: admin_api::Live = decode(&Request::Live, status, body).unwrap().unwrap();
        assert!(live.live);

        let raw = b"HTTP/1.1 200 OK\r\n\r\n{\"alive\": true}";
        let (status, body) = parse_response(raw).unwrap();
        let e = decode::<admin_api::Live>(&Request::Live, status, body).unwrap_err();
        assert!(e.to_string().contains("missing field `live`"), "{e}");

        // Another status carries the daemon's error reply.
        let raw = b"HTTP/1.1 404 Not Found\r\n\r\n{\"error\": \"no such admin endpoint\"}";
        let (status, body) = parse_response(raw).unwrap();
        let reply = decode::<admin_api::Live>(&Request::Live, status, body).unwrap();
        assert_eq!(reply.unwrap_err().error, "no such admin endpoint");
    }

    /// Review (issue 14): control characters in reply strings never reach a terminal.
    #[test]
    fn control_characters_in_replies_are_written_out() {
        let raw = "HTTP/1.1 500 x\r\n\r\n{\"error\": \"a\\u001b[2J\\r\\u0007\\u009b\\nb\\tc\", \"k\\u001b\": [\"\\u001b\"]}";
        let (_, v) = parse_response(raw.as_bytes()).unwrap();
        assert_eq!(v["error"], "a\\u{1b}[2J\\u{d}\\u{7}\\u{9b}\nb\tc");
        assert_eq!(v["k\\u{1b}"][0], "\\u{1b}");
    }

    #[test]
    fn missing_socket_is_not_running() {
        let dir = std::env::temp_dir().join(format!("proxyctl-test-{}", std::process::id()));
        let err = request::<admin_api::Status>(
            &dir.join("nope.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
    }
}
