//! Limits on what one client can hold, or make the proxy wait for.
//!
//! - [`ConnCap`]: at most `--max-conns-per-ip` connections per client address (IPv6 per
//!   /64), on every listener. Over the cap a new connection is closed at once, before
//!   any TLS or HTTP work.
//! - [`HeadGuard`] / [`GuardedStream`], HTTP/1.x only: the whole request head within
//!   `--client-header-timeout` of its first byte, and at most `--client-max-header-size`
//!   bytes. pingora times each *read* of a head separately (60 s) and accepts heads up
//!   to 1 MiB, so a client sending a byte every few seconds (slowloris) would hold a
//!   connection for ever. Once the proxy has the head ([`request_started`], from
//!   `early_request_filter`) the stream stops counting, and pingora's per-read timeout
//!   becomes `--client-body-timeout` (idle time between two reads of the body);
//!   [`request_finished`] (from `logging`) arms it again for the next request of a
//!   keep-alive connection.
//! - [`h2_options`], [`server_options`]: HTTP/2 and keep-alive limits set explicitly, so
//!   that a pingora or h2 upgrade cannot loosen them silently.
//!
//! Nothing here is per request except two atomic stores; the connection counter takes a
//! mutex twice per connection (accept and close), never across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

impl ClientLimits {
    pub fn from_args(args: &crate::cli::Args) -> ClientLimits {
        ClientLimits {
            header_timeout: args.client_header_timeout,
            body_timeout: args.client_body_timeout,
            max_header_size: args.client_max_header_size,
            max_conns_per_ip: args.max_conns_per_ip,
        }
    }
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
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
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
        let mut open = self.counter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A listener app that refuses a client's connection over the cap, then hands the
/// stream on untouched.
pub struct ConnCap<A> {
    inner: Arc<A>,
    counter: Arc<ConnCounter>,
}

impl<A> ConnCap<A> {
    pub fn new(inner: A, counter: Arc<ConnCounter>) -> ConnCap<A> {
        ConnCap {
            inner: Arc::new(inner),
            counter,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnCap<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(PingoraAddr::as_inet).map(|a| a.ip()));
        // Unix sockets and the like have no address: nothing to count.
        let _slot = match ip {
            Some(ip) => Some(self.counter.acquire(ip)?),
            None => None,
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.x request heads

/// A listener app (inside TLS) that wraps every HTTP/1.x stream in a [`GuardedStream`].
/// HTTP/2 streams pass as they are: the h2 settings bound their headers.
pub struct HeadGuard<A> {
    inner: Arc<A>,
    limits: ClientLimits,
}

impl<A> HeadGuard<A> {
    pub fn new(inner: A, limits: ClientLimits) -> HeadGuard<A> {
        HeadGuard {
            inner: Arc::new(inner),
            limits,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let stream: Stream = if h2 || stream.as_any().is::<GuardedStream>() {
            stream
        } else {
            Box::new(GuardedStream::new(stream, self.limits))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
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
    /// Set while the proxy works on a request whose head it has (see module docs).
    in_request: AtomicBool,
    /// The head being read: its deadline and the bytes read so far.
    head: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    refused: bool,
}

impl GuardedStream {
    pub fn new(inner: Stream, limits: ClientLimits) -> GuardedStream {
        GuardedStream {
            inner,
            limits,
            in_request: AtomicBool::new(false),
            head: None,
            refused: false,
        }
    }

    /// Answer (best effort: the response fits a socket buffer) and fail the read.
    fn refuse(&mut self, cx: &mut Context<'_>, timeout: bool) -> Poll<io::Result<()>> {
        if !self.refused {
            self.refused = true;
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

/// The proxy has a request head: stop timing it, and time the body's reads instead.
pub fn request_started(session: &mut pingora::proxy::Session) {
    let Some(g) = guarded(session) else {
        return;
    };
    g.in_request.store(true, Ordering::Release);
    let body_timeout = g.limits.body_timeout;
    session.set_read_timeout(Some(body_timeout));
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

/// The request is over: the next bytes on this connection start a new head.
pub fn request_finished(session: &pingora::proxy::Session) {
    if let Some(g) = guarded(session) {
        g.in_request.store(false, Ordering::Release);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.in_request.load(Ordering::Acquire) {
            this.head = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if let Some((deadline, bytes)) = &mut this.head {
            // The parser wants more of a head that is already over the limit.
            if *bytes > this.limits.max_header_size {
                return this.refuse(cx, false);
            }
            // Polled before reading, so the task is woken at the deadline.
            if deadline.as_mut().poll(cx).is_ready() {
                return this.refuse(cx, true);
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            match &mut this.head {
                Some((_, bytes)) => *bytes += n,
                None => {
                    let deadline = Box::pin(tokio::time::sleep(this.limits.header_timeout));
                    this.head = Some((deadline, n));
                }
            }
        }
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
    fn zero_means_no_limit() {
        let counter = ConnCounter::new(0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| counter.acquire(ip).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
        assert!(counter.open.lock().unwrap().is_empty());
    }
}
