//! The admin API client: HTTP/1.1 over the daemon's Unix socket, JSON bodies.
//! Errors carry what an admin can act on, and each kind has its own exit status.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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
}

impl CallError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::NotRunning(_) => 3,
            CallError::PermissionDenied(_) => 4,
            CallError::Timeout(_) => 5,
            CallError::Protocol(_) => 1,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotRunning(m)
            | CallError::PermissionDenied(m)
            | CallError::Timeout(m)
            | CallError::Protocol(m) => f.write_str(m),
        }
    }
}

/// One request; returns the status code and the JSON body.
pub fn call(
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
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io_err)?;
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
    let json = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    Ok((status, json))
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

    #[test]
    fn missing_socket_is_not_running() {
        let dir = std::env::temp_dir().join(format!("proxyctl-test-{}", std::process::id()));
        let err = call(
            &dir.join("nope.sock"),
            "GET",
            "/v1/status",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
    }
}
