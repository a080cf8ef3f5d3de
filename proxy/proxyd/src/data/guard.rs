//! Limits on what one client can hold, or make the proxy wait for.
//!
//! - [`ConnCap`]: at most `--max-conns-per-ip` connections per client address (IPv6 per
//!   /64), on every listener. Over the cap a new connection is closed at once, before
//!   any TLS or HTTP work.
//! - [`HeadGuard`] / [`GuardedStream`], HTTP/1.x only: the whole request head within
//!   `--client-header-timeout` of its first byte, and at most `--client-max-header-size`
//!   bytes. The stream also tells how a connection failed, for the client-error counts
//!   (`client_errors.rs`): a head cut short, timed out, too large or refused by the
//!   parser; over HTTP/2, no valid connection preface. pingora times each *read* of a head separately (60 s) and accepts heads up
//!   to 1 MiB, so a client sending a byte every few seconds (slowloris) would hold a
//!   connection for ever. Once the proxy has the head ([`request_started`], from
//!   `early_request_filter`) the stream stops counting, and pingora's per-read timeout
//!   becomes `--client-body-timeout` (idle time between two reads of the body);
//!   [`request_finished`] (from `logging`) arms it again for the next request of a
//!   keep-alive connection.
//! - HTTP/2: pingora has no read timeout for request bodies over HTTP/2, so a stream
//!   whose body stops would hold its upstream connection until the route's
//!   `read_timeout`. [`request_started`] gives such a request a [`BodyWatch`] (kept in
//!   the request context, fed by `request_body_filter`); when the body makes no
//!   progress for `--client-body-timeout` the client's whole connection is closed (one
//!   stream cannot be reset from outside pingora's session), through its
//!   [`GuardedStream`].
//! - [`h2_options`], [`server_options`]: HTTP/2 and keep-alive limits set explicitly, so
//!   that a pingora or h2 upgrade cannot loosen them silently.
//!
//! Nothing here is per request except two atomic stores; the connection counter takes a
//! mutex twice per connection (accept and close), never across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use certs::util::lock;
use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::data::client_errors::{ClientError, ClientErrors};
use crate::data::layer::Layer;

/// What one client may hold or make the proxy wait for (from the command line).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// From the first byte of a request head to its end (HTTP/1.x).
    pub header_timeout: Duration,
    /// Longest wait between two reads of a request body (HTTP/1.x).
    pub body_timeout: Duration,
    /// Largest request head (HTTP/1.x), and decoded header list (HTTP/2).
    pub max_header_size: usize,
    /// Open connections per client address (IPv6: per /64); 0: no limit.
    pub max_conns_per_ip: u32,
}

/// Requests served on one keep-alive HTTP/1.1 connection before it is closed (nginx's
/// `keepalive_requests` default).
pub const KEEPALIVE_REQUESTS: u32 = 1000;
/// An HTTP/2 connection with no open stream is closed after this long (as HTTP/1.1
/// keep-alive connections are by pingora).
pub const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent streams per HTTP/2 connection (nginx, HAProxy and pingora: 100).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may reset before the proxy even accepted them (rapid reset,
/// CVE-2023-44487): more and the connection gets GOAWAY(ENHANCE_YOUR_CALM).
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Resets the proxy may be made to send for the client's protocol errors before
/// GOAWAY(ENHANCE_YOUR_CALM).
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Bytes buffered per stream towards a client that does not read.
pub const H2_MAX_SEND_BUFFER: usize = 256 * 1024;

/// HTTP/2 settings of the public listeners.
pub fn h2_options(limits: &ClientLimits) -> H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(H2_MAX_SEND_BUFFER);
    o
}

/// Keep-alive and HTTP/2 idle limits of the public listeners.
pub fn server_options() -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    o.keepalive_request_limit = Some(KEEPALIVE_REQUESTS);
    o.h2_idle_timeout = Some(H2_IDLE_TIMEOUT);
    o
}

// ---------------------------------------------------------------------------------------
// Connections per client address

/// Open connections per client address, shared by every listener.
pub struct ConnCounter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
    rejected: AtomicU64,
    /// Unix seconds of the last warning (one line per 10 s at most).
    last_warning: AtomicU64,
}

impl ConnCounter {
    pub fn new(max: u32) -> Arc<ConnCounter> {
        Arc::new(ConnCounter {
            max,
            open: Mutex::new(HashMap::new()),
            rejected: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
        })
    }

    /// Connections refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Take a slot for `ip`; `None` when it already has `max` connections. The slot is
    /// given back when the returned guard is dropped.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let key = client_key(ip);
        if self.max > 0 {
            let mut open = lock(&self.open);
            let n = open.entry(key).or_insert(0);
            if *n >= self.max {
                drop(open);
                self.refused(key);
                return None;
            }
            *n += 1;
        }
        Some(ConnSlot {
            counter: self.clone(),
            key,
        })
    }

    fn refused(&self, key: IpAddr) {
        let total = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        let now = certs::util::unix_now().max(0) as u64;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                client = %key,
                max = self.max,
                refused_total = total,
                "connection refused: client is at --max-conns-per-ip"
            );
        }
    }
}

/// IPv4 (and IPv4-mapped IPv6) addresses count alone; IPv6 addresses count per /64, the
/// smallest block a client is usually given.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One open connection of a client; gives its slot back on drop.
pub struct ConnSlot {
    counter: Arc<ConnCounter>,
    key: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.counter.max == 0 {
            return;
        }
        let mut open = lock(&self.counter.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A listener layer that refuses a client's connection over the cap, then hands the
/// stream on untouched (holding the client's slot until the connection ends).
pub struct ConnCap {
    counter: Arc<ConnCounter>,
}

impl ConnCap {
    pub fn new(counter: Arc<ConnCounter>) -> ConnCap {
        ConnCap { counter }
    }
}

impl Layer for ConnCap {
    type Hold = Option<ConnSlot>;

    async fn accept(&self, stream: Stream) -> Option<(Stream, Option<ConnSlot>)> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(PingoraAddr::as_inet).map(|a| a.ip()));
        // Unix sockets and the like have no address: nothing to count.
        let slot = match ip {
            Some(ip) => Some(self.counter.acquire(ip)?),
            None => None,
        };
        Some((stream, slot))
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.x request heads

/// A listener layer (inside TLS) that wraps every client stream in a [`GuardedStream`]:
/// HTTP/1.x to bound request heads, HTTP/2 to be closed when a request body stalls.
pub struct HeadGuard {
    limits: ClientLimits,
    errors: Arc<ClientErrors>,
}

impl HeadGuard {
    pub fn new(limits: ClientLimits, errors: Arc<ClientErrors>) -> HeadGuard {
        HeadGuard { limits, errors }
    }
}

impl Layer for HeadGuard {
    type Hold = ();

    async fn accept(&self, stream: Stream) -> Option<(Stream, ())> {
        let stream: Stream = if stream.as_any().is::<GuardedStream>() {
            stream
        } else if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            Box::new(GuardedStream::new_h2(
                stream,
                self.limits,
                self.errors.clone(),
            ))
        } else {
            Box::new(GuardedStream::new(stream, self.limits, self.errors.clone()))
        };
        Some((stream, ()))
    }
}

const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const RESPONSE_431: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// An HTTP/1.x client stream that bounds the time and size of each request head. Every
/// other operation is the inner stream's.
#[derive(Debug)]
pub struct GuardedStream {
    inner: Stream,
    limits: ClientLimits,
    errors: Arc<ClientErrors>,
    /// Set while the proxy works on a request whose head it has (see module docs).
    in_request: AtomicBool,
    /// Requests the proxy started on this connection (see [`Head::seq`]).
    started: AtomicU32,
    /// The head being read (from its first byte until the proxy has it).
    head: Option<Head>,
    refused: bool,
    /// HTTP/2: how far the client's connection preface came.
    preface: Preface,
    /// HTTP/2: the connection's entry in [`H2_CONNS`], and its kill switch.
    h2: Option<(
        Arc<ConnWatch>,
        Pin<Box<tokio::sync::futures::OwnedNotified>>,
    )>,
}

/// An HTTP/2 client connection, as the request path finds it (by its addresses).
#[derive(Debug)]
pub struct ConnWatch {
    killed: AtomicBool,
    kill: Arc<tokio::sync::Notify>,
    body_timeout: Duration,
}

impl ConnWatch {
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_waiters();
    }
}

type ConnKey = (SocketAddr, SocketAddr);

/// Open HTTP/2 connections by (client, local) address: unique among live connections.
/// Locked when one opens or closes, and for requests that have a body to come.
static H2_CONNS: LazyLock<Mutex<HashMap<ConnKey, Weak<ConnWatch>>>> =
    LazyLock::new(Default::default);

fn conn_key(peer: Option<&PingoraAddr>, local: Option<&PingoraAddr>) -> Option<ConnKey> {
    Some((*peer?.as_inet()?, *local?.as_inet()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preface {
    /// Not an HTTP/2 connection.
    None,
    /// This many bytes of it came, all right so far.
    Reading(usize),
    /// All of it.
    Done,
    /// Bytes that are not the preface.
    Wrong,
}

#[derive(Debug)]
struct Head {
    /// `started` when its first byte came: once the proxy starts a request, the head
    /// was consumed, and the next bytes begin a new one.
    seq: u32,
    deadline: Pin<Box<tokio::time::Sleep>>,
    bytes: usize,
    /// The last bytes read, for an end of head split over two reads.
    tail: Vec<u8>,
    /// Its end was seen within the size limit: what follows is body or the next request.
    ended: bool,
}

/// Where the empty line ending a request head is, in `window` (`\n\n` or `\n\r\n`: the
/// parser also takes bare LF line ends).
fn head_end(window: &[u8]) -> bool {
    window.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && (window.get(i + 1) == Some(&b'\n') || window.get(i + 1..i + 3) == Some(&b"\r\n"[..]))
    })
}

impl GuardedStream {
    pub fn new(inner: Stream, limits: ClientLimits, errors: Arc<ClientErrors>) -> GuardedStream {
        GuardedStream {
            inner,
            limits,
            errors,
            in_request: AtomicBool::new(false),
            started: AtomicU32::new(0),
            head: None,
            refused: false,
            preface: Preface::None,
            h2: None,
        }
    }

    /// An HTTP/2 connection: no head accounting, but it can be closed from the request
    /// path ([`BodyWatch`]).
    pub fn new_h2(inner: Stream, limits: ClientLimits, errors: Arc<ClientErrors>) -> GuardedStream {
        let mut g = GuardedStream::new(inner, limits, errors);
        g.preface = Preface::Reading(0);
        let digest = g.inner.get_socket_digest();
        let key = digest
            .as_ref()
            .and_then(|d| conn_key(d.peer_addr(), d.local_addr()));
        if let Some(key) = key {
            let watch = Arc::new(ConnWatch {
                killed: AtomicBool::new(false),
                kill: Arc::default(),
                body_timeout: limits.body_timeout,
            });
            // Created now, so no kill is missed even before the first poll.
            let killed = Box::pin(watch.kill.clone().notified_owned());
            lock(&H2_CONNS).insert(key, Arc::downgrade(&watch));
            g.h2 = Some((watch, killed));
        }
        // Every read of an HTTP/2 connection is part of some request.
        g.in_request.store(true, Ordering::Relaxed);
        g
    }

    /// Answer (best effort: the response fits a socket buffer) and fail the read.
    fn refuse(&mut self, cx: &mut Context<'_>, timeout: bool) -> Poll<io::Result<()>> {
        if !self.refused {
            self.refused = true;
            self.errors.record(if timeout {
                ClientError::HeaderTimeout
            } else {
                ClientError::HeaderTooLarge
            });
            let response = if timeout { RESPONSE_408 } else { RESPONSE_431 };
            let _ = Pin::new(&mut self.inner).poll_write(cx, response);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        Poll::Ready(Err(if timeout {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "request head not complete within --client-header-timeout {:?}",
                    self.limits.header_timeout
                ),
            )
        } else {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "request head over --client-max-header-size {} bytes",
                    self.limits.max_header_size
                ),
            )
        }))
    }
}

/// The [`GuardedStream`] under an HTTP/1.x session, if any.
fn guarded(session: &pingora::proxy::Session) -> Option<&GuardedStream> {
    session
        .as_downstream()
        .stream()?
        .as_any()
        .downcast_ref::<GuardedStream>()
}

/// The proxy has a request head: stop timing it, and time the body's reads instead
/// (HTTP/1.x: pingora's read timeout; HTTP/2: the returned [`BodyWatch`], to keep in the
/// request context until the request ends).
pub fn request_started(session: &mut pingora::proxy::Session) -> Option<BodyWatch> {
    if session.is_http2() {
        if session.is_body_done() {
            return None;
        }
        return watch_h2_body(session);
    }
    let g = guarded(session)?;
    g.started.fetch_add(1, Ordering::Release);
    g.in_request.store(true, Ordering::Release);
    let body_timeout = g.limits.body_timeout;
    session.set_read_timeout(Some(body_timeout));
    None
}

/// An HTTP/1.x request that came with both `Transfer-Encoding` and `Content-Length`.
/// pingora removes the `Content-Length` before any hook sees the request, so this looks
/// at the raw head; only requests that have a `Transfer-Encoding` pay for it.
pub fn has_te_and_cl(session: &pingora::proxy::Session) -> bool {
    if session.is_http2()
        || !session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
    {
        return false;
    }
    let raw = session.as_downstream().to_h1_raw();
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.split(|&b| b == b':')
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case(b"content-length"))
    })
}

/// One `Content-Length` for the upstream. pingora accepts repeated identical values
/// (`Content-Length: 3` twice, or `3, 3`) and forwards them as they came; an upstream
/// may refuse or misread that, and the body limit would not see a number. Anything
/// pingora let through has one value: write it once.
pub fn collapse_content_length(session: &mut pingora::proxy::Session) -> pingora::Result<()> {
    let req = session.req_header();
    let values: Vec<&[u8]> = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if values.len() < 2 && !values.iter().any(|v| v.contains(&b',')) {
        return Ok(());
    }
    let first = values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.parse::<u64>().ok());
    match first {
        Some(n) => session
            .req_header_mut()
            .insert_header(http::header::CONTENT_LENGTH, n.to_string()),
        None => Err(pingora::Error::explain(
            pingora::ErrorType::HTTPStatus(400),
            "unreadable Content-Length",
        )),
    }
}

/// The request is over: the next bytes on this connection start a new head.
pub fn request_finished(session: &pingora::proxy::Session) {
    if let Some(g) = guarded(session) {
        g.in_request.store(false, Ordering::Release);
    }
}

impl GuardedStream {
    /// How the connection failed, if the client failed it: a head it never finished
    /// (or that the parser refused), or, over HTTP/2, no valid connection preface.
    fn failure(&self) -> Option<ClientError> {
        if self.refused {
            return None; // counted when refused
        }
        match self.preface {
            Preface::None => {}
            Preface::Done => return None,
            Preface::Reading(_) | Preface::Wrong => return Some(ClientError::H2Handshake),
        }
        let head = self.head.as_ref()?;
        if head.seq != self.started.load(Ordering::Acquire) {
            return None; // the proxy had it
        }
        Some(if head.ended {
            // Whole, yet never a request: pingora refused it (400, or 405 for CONNECT).
            ClientError::BadRequest
        } else {
            ClientError::PartialHead
        })
    }
}

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Drop for GuardedStream {
    fn drop(&mut self) {
        if let Some(why) = self.failure() {
            tracing::debug!(reason = why.as_str(), "client connection failed");
            self.errors.record(why);
        }
        let Some((watch, _)) = &self.h2 else {
            return;
        };
        let digest = self.inner.get_socket_digest();
        if let Some(key) = digest
            .as_ref()
            .and_then(|d| conn_key(d.peer_addr(), d.local_addr()))
        {
            let mut conns = lock(&H2_CONNS);
            // Only our own entry: the address pair may already be a new connection's.
            if conns
                .get(&key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(watch)))
            {
                conns.remove(&key);
            }
        }
    }
}

/// The body of one HTTP/2 request, watched for progress (see the module docs). Kept in
/// the request context; dropping it (the request ended) stops the watch.
#[derive(Debug)]
pub struct BodyWatch(Arc<BodyState>);

#[derive(Debug)]
struct BodyState {
    started: Instant,
    /// Milliseconds after `started` of the last body bytes.
    last: AtomicU64,
    done: AtomicBool,
}

impl BodyWatch {
    /// Body bytes arrived (`end`: the last of them).
    pub fn progress(&self, end: bool) {
        let s = &self.0;
        s.last
            .store(s.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if end {
            s.done.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for BodyWatch {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Relaxed);
    }
}

fn watch_h2_body(session: &pingora::proxy::Session) -> Option<BodyWatch> {
    let key = conn_key(session.client_addr(), session.server_addr())?;
    let conn = lock(&H2_CONNS).get(&key)?.clone();
    let timeout = conn.upgrade()?.body_timeout;
    let state = Arc::new(BodyState {
        started: Instant::now(),
        last: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let watched = state.clone();
    tokio::spawn(async move {
        loop {
            let last = watched.last.load(Ordering::Relaxed);
            let due = watched.started + Duration::from_millis(last) + timeout;
            tokio::time::sleep_until(due.into()).await;
            if watched.done.load(Ordering::Relaxed) {
                return;
            }
            if watched.last.load(Ordering::Relaxed) == last {
                if let Some(conn) = conn.upgrade() {
                    tracing::debug!("HTTP/2 request body stalled: closing the connection");
                    conn.kill();
                }
                return;
            }
        }
    });
    Some(BodyWatch(state))
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((watch, killed)) = &mut this.h2 {
            if watch.killed.load(Ordering::Acquire) || killed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a request body stalled over --client-body-timeout: connection closed",
                )));
            }
        }
        if let Preface::Reading(got) = this.preface {
            let before = buf.filled().len();
            let result = Pin::new(&mut this.inner).poll_read(cx, buf);
            let data = &buf.filled()[before..];
            let n = data.len().min(H2_PREFACE.len() - got);
            this.preface = if data[..n] != H2_PREFACE[got..got + n] {
                Preface::Wrong
            } else if got + n == H2_PREFACE.len() {
                Preface::Done
            } else {
                Preface::Reading(got + n)
            };
            return result;
        }
        if this.in_request.load(Ordering::Acquire) {
            this.head = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let started = this.started.load(Ordering::Acquire);
        if this.head.as_ref().is_some_and(|h| h.seq != started) {
            // The proxy started a request on it without reading on: the next bytes
            // begin a new head.
            this.head = None;
        }
        if let Some(head) = this.head.as_mut().filter(|h| !h.ended) {
            // Polled before reading, so the task is woken at the deadline.
            if head.deadline.as_mut().poll(cx).is_ready() {
                return this.refuse(cx, true);
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let data = &buf.filled()[before..];
        if data.is_empty() {
            return result;
        }
        let max = this.limits.max_header_size;
        let head = this.head.get_or_insert_with(|| Head {
            seq: started,
            deadline: Box::pin(tokio::time::sleep(this.limits.header_timeout)),
            bytes: 0,
            tail: Vec::new(),
            ended: false,
        });
        if head.ended {
            return result;
        }
        // The head must end within `max` bytes: look for its end in what is left of them.
        let room = max.saturating_sub(head.bytes);
        let mut window = std::mem::take(&mut head.tail);
        window.extend_from_slice(&data[..data.len().min(room)]);
        if head_end(&window) {
            head.ended = true;
        } else if data.len() > room {
            buf.set_filled(before);
            return this.refuse(cx, false);
        }
        head.bytes += data.len();
        head.tail = data[data.len().saturating_sub(2)..].to_vec();
        result
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    // Not forwarded: a peek would bypass the head accounting (pingora peeks only for
    // h2c, which is off).
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn slots_are_given_back_on_drop() {
        let counter = ConnCounter::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = counter.acquire(ip).unwrap();
        let _two = counter.acquire(ip).unwrap();
        assert!(counter.acquire(ip).is_none());
        assert!(counter.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(one);
        assert!(counter.acquire(ip).is_some());
        assert_eq!(counter.rejected(), 1);
    }

    #[test]
    fn head_end_takes_crlf_and_bare_lf() {
        assert!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_end(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(head_end(b"\n\r\n"));
        assert!(!head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_end(b"\r\r"));
    }

    #[test]
    fn zero_means_no_limit() {
        let counter = ConnCounter::new(0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| counter.acquire(ip).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
        assert!(counter.open.lock().unwrap().is_empty());
    }
}
