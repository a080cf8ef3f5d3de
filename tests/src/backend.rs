//! A real HTTP/1.1 upstream on loopback that tells the test what it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::body::{self, Body};

/// Response header naming the backend that answered (also on websocket upgrades).
pub const BACKEND_HEADER: &str = "x-backend";

/// Request header whose value the backend remembers ([`Backend::saw_request`]): tells a
/// request the upstream never got from one whose answer was lost on the way back.
pub const REQUEST_ID_HEADER: &str = "x-test-request-id";

/// An HTTP/1.1 upstream bound to `127.0.0.1:0`.
///
/// Every request is answered with a JSON document describing what the backend saw:
/// `{"backend", "method", "path" (with query), "version", "headers": {name: [values]},
/// "body_len", "peer"}`. Special paths:
/// - `/sleep/<ms>`: waits that long, then answers;
/// - `/bytes/<n>`: streams `n` zero bytes (instead of the JSON document);
/// - `/status/<code>`: answers with that status.
///
/// A request with `Upgrade: websocket` becomes a websocket echo, except on these paths:
/// - `/ws-quiet`: a server that never speaks first: it reads every message and answers
///   only the text `count?`, with the number of data messages it got before it;
/// - `/ws-push/<ms>`: a server that sends a text message (`push <n>`) every `<ms>`
///   milliseconds, and echoes what it gets.
///
/// [`Backend::stop`] closes the listener and every connection; [`Backend::start_again`]
/// listens again on the same port.
pub struct Backend {
    id: Arc<str>,
    addr: SocketAddr,
    stats: Arc<Stats>,
    server: Option<Server>,
}

struct Server {
    /// `true`: finish the requests in progress first (see [`Backend::restart_gracefully`]).
    stop: oneshot::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    body_bytes: AtomicU64,
    websockets: AtomicU64,
    /// Websocket sessions running now (upgraded, not yet closed).
    websockets_open: AtomicU64,
    connections: AtomicU64,
    /// Values of [`REQUEST_ID_HEADER`] seen.
    request_ids: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Requests whose [`REQUEST_ID_HEADER`] value had been seen before (a retry that
    /// delivered a request twice).
    duplicate_ids: AtomicU64,
}

#[derive(Clone)]
struct Ctx {
    id: Arc<str>,
    stats: Arc<Stats>,
    peer: SocketAddr,
    /// Becomes `true` when the backend drains: each connection ends after its current
    /// response.
    draining: tokio::sync::watch::Receiver<bool>,
}

impl Backend {
    /// Start a backend with this id on a free loopback port.
    pub async fn start(id: &str) -> Backend {
        let listener = listen("127.0.0.1:0".parse().unwrap())
            .unwrap_or_else(|e| panic!("backend {id}: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener.local_addr().unwrap();
        let mut backend = Backend {
            id: id.into(),
            addr,
            stats: Arc::default(),
            server: None,
        };
        backend.spawn(listener);
        backend
    }

    /// Start a backend on this address, e.g. `127.0.0.2:<port of another backend>` so
    /// that two backends share a port on two loopback addresses (DNS tests). Fails if
    /// the address is taken.
    pub async fn start_at(id: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = listen(addr)?;
        let addr = listener.local_addr()?;
        let mut backend = Backend {
            id: id.into(),
            addr,
            stats: Arc::default(),
            server: None,
        };
        backend.spawn(listener);
        Ok(backend)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered or being answered (websocket upgrades included).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Request body bytes received so far, over all requests (counted as they arrive).
    pub fn body_bytes(&self) -> u64 {
        self.stats.body_bytes.load(Ordering::SeqCst)
    }

    /// Websocket upgrades accepted.
    pub fn websockets(&self) -> u64 {
        self.stats.websockets.load(Ordering::SeqCst)
    }

    /// Websocket sessions open now: upgraded, and not yet ended by either side.
    pub fn websockets_open(&self) -> u64 {
        self.stats.websockets_open.load(Ordering::SeqCst)
    }

    /// Whether a request with this [`REQUEST_ID_HEADER`] value reached this backend.
    pub fn saw_request(&self, id: &str) -> bool {
        self.stats.request_ids.lock().unwrap().contains(id)
    }

    /// Requests that carried a [`REQUEST_ID_HEADER`] value this backend had already seen.
    pub fn duplicate_requests(&self) -> u64 {
        self.stats.duplicate_ids.load(Ordering::SeqCst)
    }

    /// Distinct [`REQUEST_ID_HEADER`] values seen.
    pub fn request_ids_seen(&self) -> usize {
        self.stats.request_ids.lock().unwrap().len()
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Close the listener and every open connection (websockets included); returns once
    /// they are closed. The port stays reserved for [`Backend::start_again`] only by
    /// convention: nothing else in the tests binds it.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(false);
            let _ = server.task.await;
        }
    }

    /// Restart the way a well-behaved application server restarts (`systemctl restart`
    /// of one that drains): stop accepting, let the requests in progress finish and
    /// close each connection after its current response (websockets are closed), stay
    /// down for `down`, then listen again on the same port.
    pub async fn restart_gracefully(&mut self, down: Duration) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(true);
            let _ = server.task.await;
        }
        tokio::time::sleep(down).await;
        self.start_again().await;
    }

    /// Listen again on the same port after [`Backend::stop`]. Counters keep counting.
    pub async fn start_again(&mut self) {
        assert!(
            self.server.is_none(),
            "backend {} is already running",
            self.id
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match listen(self.addr) {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("backend {}: cannot bind {} again: {e}", self.id, self.addr),
            }
        };
        self.spawn(listener);
    }

    fn spawn(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let ctx = Ctx {
            id: self.id.clone(),
            stats: self.stats.clone(),
            peer: self.addr,
            draining: tokio::sync::watch::channel(false).1,
        };
        let task = tokio::spawn(accept_loop(listener, ctx, stopped));
        self.server = Some(Server { stop, task });
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Aborting the accept task drops the listener and the JoinSet, which aborts
            // every connection task.
            server.task.abort();
        }
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Rebinding the same port after stop() must not wait for TIME_WAIT to expire.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, mut ctx: Ctx, mut stopped: oneshot::Receiver<bool>) {
    let (drain, draining) = tokio::sync::watch::channel(false);
    ctx.draining = draining;
    let mut conns = JoinSet::new();
    let graceful = loop {
        tokio::select! {
            graceful = &mut stopped => break graceful.unwrap_or(false),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    ctx.stats.connections.fetch_add(1, Ordering::SeqCst);
                    let ctx = Ctx { peer, ..ctx.clone() };
                    conns.spawn(serve_connection(stream, ctx));
                }
                // EMFILE and friends: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    drop(listener);
    if graceful {
        let _ = drain.send(true);
        // Requests in progress finish; a connection that will not end is cut after 30 s.
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
    }
    conns.shutdown().await;
}

async fn serve_connection(stream: TcpStream, ctx: Ctx) {
    let _ = stream.set_nodelay(true);
    // The service hands the pending upgrade of a websocket request to this task, so the
    // echo runs inside the connection's task and stop() closes it like any connection.
    let (upgrades, mut upgraded) = mpsc::unbounded_channel();
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = service_ctx.clone();
        let upgrades = upgrades.clone();
        async move { Ok::<_, Infallible>(handle(req, ctx, upgrades).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut draining = ctx.draining.clone();
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = async { drop(draining.wait_for(|d| *d).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if served.is_err() {
        return;
    }
    if let Ok((on_upgrade, mode)) = upgraded.try_recv() {
        if let Ok(io) = on_upgrade.await {
            ctx.stats.websockets_open.fetch_add(1, Ordering::SeqCst);
            ws_serve(TokioIo::new(io), mode).await;
            ctx.stats.websockets_open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

type OnUpgrade = (hyper::upgrade::OnUpgrade, WsMode);

/// What a websocket session of the backend does (chosen by the request path).
#[derive(Debug, Clone, Copy)]
enum WsMode {
    Echo,
    Quiet,
    Push(Duration),
}

impl WsMode {
    fn from_path(path: &str) -> WsMode {
        if path == "/ws-quiet" {
            WsMode::Quiet
        } else if let Some(ms) = path.strip_prefix("/ws-push/") {
            WsMode::Push(Duration::from_millis(ms.parse().unwrap_or(1000)))
        } else {
            WsMode::Echo
        }
    }
}

async fn handle(
    mut req: Request<Incoming>,
    ctx: Ctx,
    upgrades: mpsc::UnboundedSender<OnUpgrade>,
) -> Response<Body> {
    ctx.stats.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(id) = req.headers().get(REQUEST_ID_HEADER) {
        let id = String::from_utf8_lossy(id.as_bytes()).into_owned();
        if !ctx.stats.request_ids.lock().unwrap().insert(id) {
            ctx.stats.duplicate_ids.fetch_add(1, Ordering::SeqCst);
        }
    }
    if is_websocket(req.headers()) {
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let accept = derive_accept_key(key.as_bytes());
        let mode = WsMode::from_path(req.uri().path());
        let _ = upgrades.send((hyper::upgrade::on(&mut req), mode));
        ctx.stats.websockets.fetch_add(1, Ordering::SeqCst);
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
        h.insert(BACKEND_HEADER, ctx.id.parse().unwrap());
        return resp;
    }

    let (parts, mut incoming) = req.into_parts();
    let mut body_len: u64 = 0;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_len += data.len() as u64;
                    ctx.stats
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("body error: {e}")),
        }
    }

    let path = parts.uri.path();
    let mut status = StatusCode::OK;
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        let mut resp = Response::new(body::zeros(n));
        resp.headers_mut()
            .insert(BACKEND_HEADER, ctx.id.parse().unwrap());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return resp;
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }

    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let seen = serde_json::json!({
        "backend": &*ctx.id,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
        "peer": ctx.peer.to_string(),
    });
    let mut resp = Response::new(body::full(seen.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(BACKEND_HEADER, ctx.id.parse().unwrap());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(Bytes::from(text.to_owned())));
    *resp.status_mut() = status;
    resp
}

async fn ws_serve<S>(io: S, mode: WsMode)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let mut received: u64 = 0;
    let mut pushed: u64 = 0;
    let mut ticks = match mode {
        WsMode::Push(every) => Some(tokio::time::interval_at(
            tokio::time::Instant::now() + every,
            every,
        )),
        _ => None,
    };
    loop {
        let tick = async {
            match ticks.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        let reply = tokio::select! {
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { break };
                match (&msg, mode) {
                    (Message::Close(_), _) => break,
                    // tungstenite answers pings itself.
                    (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => continue,
                    (Message::Text(t), WsMode::Quiet) if t.as_str() == "count?" => {
                        Message::text(received.to_string())
                    }
                    (_, WsMode::Quiet) => {
                        received += 1;
                        continue;
                    }
                    _ => msg,
                }
            }
            _ = tick => {
                pushed += 1;
                Message::text(format!("push {pushed}"))
            }
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
}
