//! A small HTTPS front between proxyd and the real pebble, which cannot itself answer
//! `rateLimited`: every request is forwarded to pebble (Host kept, so pebble's URLs point
//! back at the front), except newOrder while [`AcmeFront::rate_limit`] is set, which gets
//! a `rateLimited` problem (429, with a Retry-After header). It counts every newOrder
//! request it sees, answered or forwarded: a count independent of proxyd's own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::body::{full, Body};
use crate::client::{Alpn, Conn};
use crate::pebble::Pebble;

/// Pebble's newOrder path (its directory's `newOrder`).
const NEW_ORDER_PATH: &str = "/order-plz";

#[derive(Default)]
struct State {
    new_orders: AtomicU64,
    limited_answers: AtomicU64,
    /// `Some(retry_after)`: answer newOrder with `rateLimited`; the header value
    /// (`None` inside: no Retry-After header).
    limit: Mutex<Option<Option<String>>>,
}

pub struct AcmeFront {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl AcmeFront {
    /// Listens on a free loopback port with pebble's own HTTPS certificate (so proxyd's
    /// `--acme-ca-root` of pebble trusts it) and forwards to `pebble`.
    pub async fn start(pebble: &Pebble) -> AcmeFront {
        let (cert, key) = pebble.https_cert_and_key();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let upstream = pebble.acme_addr();
        let ca = pebble.https_ca_pem().to_string();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, st, ca) = (acceptor.clone(), st.clone(), ca.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (st, ca) = (st.clone(), ca.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(req, &st, upstream, &ca).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        AcmeFront { addr, state, task }
    }

    /// `--acme-directory` for proxyd: pebble's directory, through the front.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.addr.port())
    }

    /// From now on, newOrder gets `rateLimited` with this Retry-After header value
    /// (`None`: no header). [`AcmeFront::forward`] ends it.
    pub fn rate_limit(&self, retry_after: Option<&str>) {
        *self.state.limit.lock().unwrap() = Some(retry_after.map(str::to_string));
    }

    /// newOrder goes to pebble again.
    pub fn forward(&self) {
        *self.state.limit.lock().unwrap() = None;
    }

    /// newOrder requests seen (answered `rateLimited` or forwarded).
    pub fn new_orders(&self) -> u64 {
        self.state.new_orders.load(Ordering::SeqCst)
    }

    /// newOrder requests answered with `rateLimited`.
    pub fn limited_answers(&self) -> u64 {
        self.state.limited_answers.load(Ordering::SeqCst)
    }
}

impl Drop for AcmeFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    st: &State,
    upstream: SocketAddr,
    ca: &str,
) -> Response<Body> {
    let is_new_order = req.method() == http::Method::POST && req.uri().path() == NEW_ORDER_PATH;
    if is_new_order {
        st.new_orders.fetch_add(1, Ordering::SeqCst);
        let limit = st.limit.lock().unwrap().clone();
        if let Some(retry_after) = limit {
            st.limited_answers.fetch_add(1, Ordering::SeqCst);
            let problem = serde_json::json!({
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s",
                "status": 429,
            });
            let mut r = Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header(header::CONTENT_TYPE, "application/problem+json");
            if let Some(v) = retry_after {
                r = r.header(header::RETRY_AFTER, v);
            }
            return r.body(full(problem.to_string())).unwrap();
        }
    }
    match forward(req, upstream, ca).await {
        Ok(r) => r,
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(full(format!("front: {e:#}")))
            .unwrap(),
    }
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    ca: &str,
) -> anyhow::Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let body: Bytes = body.collect().await?.to_bytes();
    let mut conn = Conn::https(upstream, ca, "localhost", Alpn::H1).await?;
    let mut out = Request::from_parts(parts, full(body));
    // The body is forwarded whole: let the client connection frame it.
    out.headers_mut().remove(header::TRANSFER_ENCODING);
    let r = conn.send(out).await?;
    let mut resp = Response::builder().status(r.status);
    for (k, v) in &r.headers {
        if k != header::TRANSFER_ENCODING && k != header::CONNECTION && k != header::CONTENT_LENGTH
        {
            resp = resp.header(k, v);
        }
    }
    Ok(resp.body(full(r.body)).unwrap())
}
