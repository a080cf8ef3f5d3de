//! Review attacks on the zero-copy response body paths (pingora-core: bodies handed out
//! from the read buffer, written to the client as vectored writes of the chunks' own
//! bytes, cut at `Content-Length`, chunked per batch), over the plain listener with a
//! strict HTTP/1.1 client: a client that stops reading and then takes a few bytes at a
//! time (every vectored write partial, resumed mid-piece), upstream bodies in many tiny
//! reads (many pieces per batch), chunked upstreams with extensions and trailers,
//! close-delimited upstreams (re-chunked to the client), an upstream that sends more or
//! less than its `Content-Length`, HEAD and 204 answers that come with a body, a 1xx
//! before the answer. After each, the next response on the same client connection must
//! be intact: every response is parsed strictly by its own framing, so one leftover,
//! missing or re-sent byte (or a zero-size chunk mid-body) breaks the next parse.

use std::time::Duration;

use tests::raw_upstream::{RawUpstream, Step};
use tests::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::plain_route;

/// Bytes no shifted, repeated or dropped piece can pass for (period 251, prime to every
/// buffer size).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed ^ (i / 251) as u8)
        .collect()
}

/// A strict HTTP/1.1 response reader over one client connection, taking at most a few
/// bytes per read while `slow` is left (a client with a tiny receive window).
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// Bytes still to be read in reads of 1 to 7 bytes.
    slow: usize,
    reads: usize,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// Chunk sizes as sent (chunked responses only).
    chunks: Vec<usize>,
    /// The body ended before its framing said (EOF mid-body).
    truncated: bool,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // the smallest receive buffer the kernel gives: the proxy's writes fill its
        // send buffer quickly and then come back partial
        socket.set_recv_buffer_size(1024).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
            slow: 0,
            reads: 0,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Read more into `buf`; false at EOF.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        self.reads += 1;
        let max = if self.slow > 0 {
            1 + self.reads % 7
        } else {
            64 * 1024
        };
        let mut tmp = vec![0u8; max];
        let read = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut tmp))
            .await
            .expect("the proxy went silent for 20 s mid-response");
        match read {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.slow = self.slow.saturating_sub(n);
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).collect::<Vec<_>>();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next final response (1xx skipped) to a request with `method`; `None`: the
    /// connection closed before a status line.
    async fn response(&mut self, method: &str) -> Option<Resp> {
        loop {
            let status_line = self.line().await?;
            let status: u16 = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
            let mut head = status_line.clone();
            let (mut cl, mut chunked) = (None, false);
            loop {
                let line = self.line().await.expect("EOF in a response head");
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("header line without ':'");
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    assert!(cl.is_none(), "two Content-Length: {head}");
                    cl = Some(value.parse::<usize>().expect("Content-Length"));
                }
                if name.eq_ignore_ascii_case("transfer-encoding") {
                    assert_eq!(value, "chunked", "{head}");
                    chunked = true;
                }
                head.push('\n');
                head.push_str(&line);
            }
            if (100..200).contains(&status) {
                continue;
            }
            assert!(!(chunked && cl.is_some()), "both framings: {head}");
            let mut resp = Resp {
                status,
                head,
                body: vec![],
                chunks: vec![],
                truncated: false,
            };
            if method == "HEAD" || status == 204 || status == 304 {
                return Some(resp);
            }
            if chunked {
                loop {
                    let Some(size_line) = self.line().await else {
                        resp.truncated = true;
                        return Some(resp);
                    };
                    let size = usize::from_str_radix(&size_line, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                    resp.chunks.push(size);
                    if size == 0 {
                        // no trailers are forwarded to an HTTP/1 client: the last CRLF
                        assert_eq!(
                            self.line().await.as_deref(),
                            Some(""),
                            "after the last chunk"
                        );
                        return Some(resp);
                    }
                    let Some(data) = self.exact(size).await else {
                        resp.truncated = true;
                        return Some(resp);
                    };
                    resp.body.extend_from_slice(&data);
                    assert_eq!(self.exact(2).await.as_deref(), Some(&b"\r\n"[..]));
                }
            } else if let Some(cl) = cl {
                while self.buf.len() < cl && self.fill().await {}
                let n = cl.min(self.buf.len());
                resp.body = self.buf.drain(..n).collect();
                resp.truncated = n < cl;
            } else {
                while self.fill().await {}
                resp.body = std::mem::take(&mut self.buf);
            }
            return Some(resp);
        }
    }

    /// Send `method` for `host`, stop reading for a while (the proxy's socket fills),
    /// then take the first `slow` bytes in reads of 1 to 7 bytes.
    async fn request(&mut self, method: &str, host: &str, slow: usize) -> Option<Resp> {
        self.send(format!("{method} /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await;
        if slow > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.slow = slow;
        self.response(method).await
    }
}

/// `body` as the upstream sends it: in pieces of 1 to `max` bytes, a short pause after
/// every few so they arrive as separate reads.
fn in_pieces(body: &[u8], max: usize) -> Vec<Step> {
    let mut steps = vec![];
    let (mut at, mut i) = (0, 0usize);
    while at < body.len() {
        let n = (1 + (i * 7919) % max).min(body.len() - at);
        steps.push(Step::Send(body[at..at + n].to_vec()));
        if i % 8 == 7 {
            steps.push(Step::Sleep(Duration::from_millis(1)));
        }
        at += n;
        i += 1;
    }
    steps
}

fn check_body(what: &str, resp: &Resp, want: &[u8]) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.head);
    assert!(!resp.truncated, "{what}: truncated at {}", resp.body.len());
    assert!(
        resp.body == want,
        "{what}: {} bytes (want {}), first difference at {:?}",
        resp.body.len(),
        want.len(),
        resp.body.iter().zip(want).position(|(a, b)| a != b)
    );
    // a zero-size chunk mid-body would have ended the parse early: only the last one
    if let Some(zero) = resp.chunks.iter().position(|&c| c == 0) {
        assert_eq!(
            zero,
            resp.chunks.len() - 1,
            "{what}: a 0-size chunk mid-body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framing_survives_slow_clients_and_hostile_upstream_framing() {
    // sized, in many tiny reads and a few large ones
    let sized_body = pattern(1_500_000, 0x11);
    let mut script = vec![Step::Send(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            sized_body.len()
        )
        .into_bytes(),
    )];
    script.extend(in_pieces(&sized_body[..200_000], 300));
    script.extend(in_pieces(&sized_body[200_000..], 40_000));
    let sized = RawUpstream::scripted(script).await;

    // chunked, tiny chunks with extensions, then trailers
    let chunked_body = pattern(300_000, 0x22);
    let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let (mut at, mut i) = (0, 0usize);
    while at < chunked_body.len() {
        let n = (1 + (i * 131) % 700).min(chunked_body.len() - at);
        let ext = if i % 3 == 0 { ";ext=\"a;b\"" } else { "" };
        wire.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        wire.extend_from_slice(&chunked_body[at..at + n]);
        wire.extend_from_slice(b"\r\n");
        at += n;
        i += 1;
    }
    wire.extend_from_slice(b"0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n");
    let chunked = RawUpstream::scripted(in_pieces(&wire, 2_000)).await;

    // close-delimited: re-chunked for an HTTP/1.1 client
    let close_body = pattern(1_000_000, 0x33);
    let mut script = vec![Step::Send(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec(),
    )];
    script.extend(in_pieces(&close_body, 20_000));
    script.push(Step::Close);
    let close = RawUpstream::scripted(script).await;

    // more than declared, in one read and in a later one
    let over_body = pattern(70_000, 0x44);
    let over_head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        over_body.len()
    );
    let over = RawUpstream::scripted(vec![
        Step::Send([over_head.as_bytes(), &over_body[..30_000]].concat()),
        Step::Sleep(Duration::from_millis(2)),
        Step::Send(
            [
                &over_body[30_000..],
                &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"[..],
            ]
            .concat(),
        ),
    ])
    .await;

    // HEAD and 204 answered with a body (in the same read as the head)
    let head_up = RawUpstream::scripted(vec![Step::Send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHEADBODY!".to_vec(),
    )])
    .await;
    let no_content = RawUpstream::scripted(vec![Step::Send(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nEVIL".to_vec(),
    )])
    .await;

    // a 1xx first
    let early = RawUpstream::scripted(vec![Step::Send(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            .to_vec(),
    )])
    .await;

    // less than declared, then the upstream closes
    let short = RawUpstream::scripted(vec![
        Step::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec()),
        Step::Send(pattern(50_000, 0x55)),
        Step::Close,
    ])
    .await;

    let extra = "read_timeout = \"10s\"";
    let routes = [
        plain_route("sized.test", sized.addr(), extra),
        plain_route("chunked.test", chunked.addr(), extra),
        plain_route("close.test", close.addr(), extra),
        plain_route("over.test", over.addr(), extra),
        plain_route("head.test", head_up.addr(), extra),
        plain_route("nocontent.test", no_content.addr(), extra),
        plain_route("early.test", early.addr(), extra),
        plain_route("short.test", short.addr(), extra),
    ]
    .concat();
    let proxy = Proxy::start(&routes).await;

    let mut c = Client::connect(proxy.http_addr()).await;
    for round in 0..2 {
        let slow = if round == 0 { 200_000 } else { 0 };
        let r = c.request("GET", "sized.test", slow).await.expect("sized");
        check_body(&format!("sized, round {round}"), &r, &sized_body);
        let r = c
            .request("GET", "chunked.test", slow)
            .await
            .expect("chunked");
        check_body(&format!("chunked, round {round}"), &r, &chunked_body);
        let r = c.request("GET", "close.test", slow).await.expect("close");
        check_body(&format!("close-delimited, round {round}"), &r, &close_body);
        let r = c.request("GET", "over.test", slow).await.expect("over");
        check_body(
            &format!("over Content-Length, round {round}"),
            &r,
            &over_body,
        );
        let r = c.request("HEAD", "head.test", 0).await.expect("head");
        assert_eq!(r.status, 200, "HEAD: {}", r.head);
        let r = c
            .request("GET", "head.test", 0)
            .await
            .expect("GET after HEAD");
        check_body("GET after HEAD", &r, b"HEADBODY!");
        let r = c.request("GET", "nocontent.test", 0).await.expect("204");
        assert_eq!(r.status, 204, "{}", r.head);
        let r = c.request("GET", "early.test", 0).await.expect("early");
        check_body(&format!("after a 103, round {round}"), &r, b"hello");
    }
    // no upstream connection left with bytes past its response was used again: every
    // answer of `over` and `nocontent` came with such bytes, `head`'s only to a HEAD
    for (name, up) in [
        ("over", &over),
        ("nocontent", &no_content),
        ("head", &head_up),
    ] {
        for conn in up.received() {
            let reqs = tests::raw_upstream::split_requests(&conn);
            for (i, r) in reqs.iter().enumerate() {
                let last = i + 1 == reqs.len();
                let clean_end = name == "head" && r.head.starts_with("GET ");
                assert!(
                    last || clean_end,
                    "{name}: a connection with bytes past its response was reused\n{}",
                    up.dump()
                );
            }
        }
    }
    assert_eq!(over.requests().len(), 2);
    assert_eq!(no_content.requests().len(), 2);

    // cut short: the client sees the body end early and the connection closed, never
    // a response that looks whole
    let r = c.request("GET", "short.test", 0).await;
    if let Some(r) = r {
        assert!(
            r.truncated || r.status >= 500,
            "short body passed for whole: {} ({} bytes)",
            r.head,
            r.body.len()
        );
    }
    assert!(
        c.response("GET").await.is_none(),
        "more after a cut-short body"
    );

    // and a fresh connection is served whole
    let mut c = Client::connect(proxy.http_addr()).await;
    let r = c
        .request("GET", "sized.test", 0)
        .await
        .expect("sized again");
    check_body("sized on a new connection", &r, &sized_body);
}

/// Bodies handed out as slices of the read buffer keep that buffer alive until written:
/// a big download to a client that keeps stopping must not pin more and more of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_download_to_a_stalling_client_keeps_memory_bounded() {
    const TOTAL: u64 = 256 << 20;
    let backend = tests::Backend::start("big").await;
    let proxy = Proxy::start(&plain_route(
        "big.test",
        backend.addr(),
        "read_timeout = \"30s\"",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.http_addr()).await.unwrap();
    stream
        .write_all(format!("GET /bytes/{TOTAL} HTTP/1.1\r\nHost: big.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut got, mut head, mut next_stall) = (0u64, Vec::new(), 0u64);
    let mut body = 0u64;
    loop {
        if body >= next_stall {
            // stop reading: the proxy's queues toward this client fill up
            tokio::time::sleep(Duration::from_millis(100)).await;
            next_stall += 16 << 20;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("proxy silent for 30 s")
            .unwrap();
        assert!(n > 0, "EOF after {body} body bytes");
        got += n as u64;
        if head.len() < 4 || !head.ends_with(b"\r\n\r\n") {
            // the head, byte by byte out of this read
            let mut i = 0;
            while i < n && !head.ends_with(b"\r\n\r\n") {
                head.push(buf[i]);
                i += 1;
            }
            assert!(buf[i..n].iter().all(|&b| b == 0), "non-zero body byte");
            body += (n - i) as u64;
        } else {
            assert!(buf[..n].iter().all(|&b| b == 0), "non-zero body byte");
            body += n as u64;
        }
        if body >= TOTAL {
            break;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, TOTAL, "{got} bytes read");
    let mem = proxy.mem();
    eprintln!(
        "256 MiB download: proxyd RSS {} KiB, peak {} KiB",
        mem.rss_kib, mem.hwm_kib
    );
    assert!(
        mem.hwm_kib < 100 * 1024,
        "proxyd's peak RSS {} KiB is over 100 MiB: the body was held",
        mem.hwm_kib
    );
}
