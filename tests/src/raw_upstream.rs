//! A raw-TCP HTTP/1.1 upstream that keeps every byte it receives, and can misbehave.
//!
//! [`crate::Backend`] is a real hyper server: it parses, rejects and normalises what it
//! gets, so it cannot prove that nothing ambiguous reached it. [`RawUpstream`] records the
//! bytes of every connection as they came; [`split_requests`] cuts them into requests by
//! the framing a strict HTTP/1.1 server would use (Content-Length or chunked), so a test
//! can assert how many requests arrived, with which heads, and that no smuggled one did.
//!
//! After each complete request it plays a [`Step`] script: by default a small 200 with
//! `Connection: close`; fault tests use scripts that hang, reset mid-response, trickle,
//! or send garbage.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One action of the upstream once it has a whole request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Write these bytes one at a time, `every` apart.
    Trickle(Vec<u8>, Duration),
    Sleep(Duration),
    /// Close with a TCP reset (SO_LINGER 0).
    Reset,
    /// Close normally (FIN).
    Close,
    /// Keep the connection open, say nothing, until the test ends.
    Hang,
}

impl Step {
    /// `HTTP/1.1 200 OK` with `body`, `Content-Length` and `Connection: close`.
    pub fn ok(body: &str) -> Step {
        Step::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }
}

/// A request as a strict HTTP/1.1 server would cut it out of a connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// Request line and header lines, without the final empty line.
    pub head: String,
    /// The body, decoded from chunked when it was chunked.
    pub body: Vec<u8>,
    /// Whether the framing was complete (all of Content-Length, or the last chunk).
    pub complete: bool,
}

impl RawRequest {
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    /// Values of a header (name case-insensitive), as sent.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// What each accepted connection sent, in order of arrival (shared with its task).
type Recorded = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A recording, scriptable upstream on `127.0.0.1:0`. Stops when dropped.
pub struct RawUpstream {
    addr: SocketAddr,
    conns: Recorded,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Answers every request with a small 200 and closes the connection.
    pub async fn start() -> RawUpstream {
        RawUpstream::scripted(vec![Step::ok("ok"), Step::Close]).await
    }

    /// Plays `script` after each complete request (the connection is kept only as long
    /// as the script does not close it).
    pub async fn scripted(script: Vec<Step>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let conns: Recorded = Arc::default();
        let recorded = conns.clone();
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let log: Arc<Mutex<Vec<u8>>> = Arc::default();
                recorded.lock().unwrap().push(log.clone());
                tasks.spawn(serve(stream, log, script.clone()));
                while tasks.try_join_next().is_some() {}
            }
        });
        RawUpstream { addr, conns, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// The bytes received on each connection, in accept order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Every request received, over all connections.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.received()
            .iter()
            .flat_map(|b| split_requests(b))
            .collect()
    }

    /// Everything received, over all connections, as (lossy) text: for messages.
    pub fn dump(&self) -> String {
        self.received()
            .iter()
            .enumerate()
            .map(|(i, b)| format!("--- connection {i} ---\n{}", String::from_utf8_lossy(b)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<u8>>>, script: Arc<Vec<Step>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = 0;
    loop {
        // Play the script once per complete request in what came so far.
        let complete = {
            let bytes = log.lock().unwrap();
            split_requests(&bytes).iter().filter(|r| r.complete).count()
        };
        while answered < complete {
            answered += 1;
            for step in script.iter() {
                match step {
                    Step::Send(b) => {
                        if stream.write_all(b).await.is_err() {
                            return;
                        }
                    }
                    Step::Trickle(b, every) => {
                        for byte in b {
                            if stream.write_all(&[*byte]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(*every).await;
                        }
                    }
                    Step::Sleep(d) => tokio::time::sleep(*d).await,
                    Step::Reset => {
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    Step::Close => {
                        let _ = stream.shutdown().await;
                        // Keep recording whatever still comes (a smuggled request).
                        drain(&mut stream, &log).await;
                        return;
                    }
                    Step::Hang => {
                        drain(&mut stream, &log).await;
                        // The peer closed: hold our side open all the same.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.lock().unwrap().extend_from_slice(&buf[..n]),
        }
    }
}

/// Record what the peer still sends until it closes.
async fn drain(stream: &mut TcpStream, log: &Mutex<Vec<u8>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => log.lock().unwrap().extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
}

/// Cut the bytes of one connection into requests, as a strict HTTP/1.1 server would:
/// heads end at CRLF CRLF, bodies are framed by `Transfer-Encoding: chunked` or
/// `Content-Length` (none: no body). The last request may be incomplete.
pub fn split_requests(mut bytes: &[u8]) -> Vec<RawRequest> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some(end) = find(bytes, b"\r\n\r\n") else {
            out.push(RawRequest {
                head: String::from_utf8_lossy(bytes).into_owned(),
                body: Vec::new(),
                complete: false,
            });
            break;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut req = RawRequest {
            head,
            body: Vec::new(),
            complete: true,
        };
        let chunked = req
            .header("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            let (body, used, complete) = dechunk(bytes);
            req.body = body;
            req.complete = complete;
            bytes = &bytes[used..];
        } else if let Some(len) = req
            .header("content-length")
            .first()
            .and_then(|v| v.parse::<usize>().ok())
        {
            let take = len.min(bytes.len());
            req.body = bytes[..take].to_vec();
            req.complete = take == len;
            bytes = &bytes[take..];
        }
        let complete = req.complete;
        out.push(req);
        if !complete {
            break;
        }
    }
    out
}

/// Decode a chunked body: (data, bytes used, complete).
fn dechunk(bytes: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&bytes[at..], b"\r\n") else {
            return (body, bytes.len(), false);
        };
        let line = String::from_utf8_lossy(&bytes[at..at + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (body, bytes.len(), false);
        };
        at += eol + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(eol) = find(&bytes[at..], b"\r\n") else {
                    return (body, bytes.len(), false);
                };
                at += eol + 2;
                if eol == 0 {
                    return (body, at, true);
                }
            }
        }
        if bytes.len() < at + size + 2 {
            body.extend_from_slice(&bytes[at.min(bytes.len())..bytes.len().min(at + size)]);
            return (body, bytes.len(), false);
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_length_and_chunked_framing() {
        let bytes =
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET /d HTTP/1.1\r\n";
        let reqs = split_requests(bytes);
        let lines: Vec<_> = reqs.iter().map(|r| r.request_line().to_owned()).collect();
        assert_eq!(
            lines,
            [
                "POST /a HTTP/1.1",
                "GET /b HTTP/1.1",
                "POST /c HTTP/1.1",
                "GET /d HTTP/1.1"
            ]
        );
        assert_eq!(reqs[0].body, b"abc");
        assert_eq!(reqs[2].body, b"hi");
        assert!(reqs[2].complete);
        assert!(!reqs[3].complete);
    }

    #[test]
    fn incomplete_bodies_are_marked() {
        let reqs = split_requests(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(reqs.len(), 1);
        assert!(!reqs[0].complete);
        let reqs = split_requests(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
        assert!(!reqs[0].complete);
        assert_eq!(reqs[0].body, b"ab");
    }
}
