//! Real clients without reqwest: TCP, tokio-rustls and hyper's client connections, so a
//! test chooses the SNI, the ALPN offer, the Host header and the exact bytes on the wire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::body::{self, Body};

/// What the client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `[h2, http/1.1]`
    Both,
    /// `[h2]`
    H2,
    /// `[http/1.1]`
    H1,
    /// No ALPN extension at all.
    None,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::H1 => vec![b"http/1.1".to_vec()],
            Alpn::None => vec![],
        }
    }
}

/// Parse every certificate of a PEM document.
pub fn certs_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("bad PEM")?;
    if certs.is_empty() {
        bail!("no certificate in PEM");
    }
    Ok(certs)
}

/// A rustls client (ring) trusting only the CA(s) in `ca_pem`.
pub fn client_config(ca_pem: &str, alpn: Alpn) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert).context("CA certificate rejected")?;
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.protocols();
    Ok(Arc::new(config))
}

/// TCP connect then a TLS handshake with this SNI. Fails if the handshake fails (unknown
/// name, untrusted certificate, no common ALPN, ...).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(sni.to_owned()).context("bad SNI name")?;
    let tcp = tcp_connect(addr).await?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .map_err(|_| anyhow!("TLS handshake with {addr} (SNI {sni}) timed out"))?
    .with_context(|| format!("TLS handshake with {addr} (SNI {sni})"))?;
    Ok(tls)
}

pub async fn tcp_connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// What the TLS handshake settled on.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub sni: String,
    /// The negotiated ALPN protocol, e.g. `b"h2"`.
    pub alpn: Option<Vec<u8>>,
    /// The server's chain, leaf first.
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

impl TlsInfo {
    fn of(stream: &TlsStream<TcpStream>, sni: &str) -> TlsInfo {
        let (_, conn) = stream.get_ref();
        TlsInfo {
            sni: sni.to_owned(),
            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
            peer_certificates: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        }
    }

    pub fn alpn_str(&self) -> Option<String> {
        self.alpn
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// DNS names in the leaf certificate's subjectAltName.
    pub fn leaf_dns_names(&self) -> Vec<String> {
        self.peer_certificates
            .first()
            .map(|leaf| dns_names(leaf))
            .unwrap_or_default()
    }
}

/// DNS names in a certificate's subjectAltName.
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(cert.as_ref()) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `None` over plain HTTP.
    pub tls: Option<Arc<TlsInfo>>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (what a [`crate::Backend`] saw). Panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The id of the backend that answered, from its JSON body.
    pub fn backend(&self) -> String {
        self.json()["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("no backend in {}", self.text()))
            .to_owned()
    }

    /// Values of a request header as the backend saw it (lower-case name).
    pub fn seen_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The request path (with query) as the backend saw it.
    pub fn seen_path(&self) -> String {
        self.json()["path"].as_str().unwrap_or_default().to_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// One client connection (HTTP/1.1 or HTTP/2, over TLS or plain) that sends requests one
/// after the other (HTTP/2: [`Conn::h2_sender`] gives concurrent streams).
pub struct Conn {
    sender: Sender,
    tls: Option<Arc<TlsInfo>>,
    driver: JoinHandle<()>,
    /// Longest wait for one whole response (head and body).
    pub timeout: Duration,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    /// TLS to `addr` with this SNI, trusting `ca_pem`, offering `alpn`. Speaks HTTP/2 if
    /// the server picked `h2`, else HTTP/1.1.
    pub async fn https(
        addr: SocketAddr,
        ca_pem: &str,
        sni: &str,
        alpn: Alpn,
    ) -> anyhow::Result<Conn> {
        let stream = tls_connect(addr, client_config(ca_pem, alpn)?, sni).await?;
        let info = Arc::new(TlsInfo::of(&stream, sni));
        let h2 = info.alpn.as_deref() == Some(b"h2");
        let mut conn = Conn::handshake(stream, h2).await?;
        conn.tls = Some(info);
        Ok(conn)
    }

    /// Plain HTTP/1.1 over TCP.
    pub async fn http(addr: SocketAddr) -> anyhow::Result<Conn> {
        Conn::handshake(tcp_connect(addr).await?, false).await
    }

    /// HTTP/1.1 (or HTTP/2 with prior knowledge) over any stream.
    pub async fn handshake<S>(io: S, h2: bool) -> anyhow::Result<Conn>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let (sender, driver) = if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H2(sender), driver)
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            let driver = tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            (Sender::H1(sender), driver)
        };
        Ok(Conn {
            sender,
            tls: None,
            driver,
            timeout: Duration::from_secs(30),
        })
    }

    pub fn tls(&self) -> Option<&Arc<TlsInfo>> {
        self.tls.as_ref()
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// A cloneable HTTP/2 sender for concurrent streams on this connection.
    pub fn h2_sender(&self) -> Option<http2::SendRequest<Body>> {
        match &self.sender {
            Sender::H2(s) => Some(s.clone()),
            Sender::H1(_) => None,
        }
    }

    /// Send one request and read the whole response. The request may carry the target as
    /// an origin-form URI plus a `Host` header (see [`request`]) or as an absolute URI:
    /// HTTP/1.1 gets origin-form + `Host`, HTTP/2 gets `:authority` from the host.
    pub async fn send(&mut self, req: Request<Body>) -> anyhow::Result<Response> {
        let timeout = self.timeout;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tls = self.tls.clone();
        let fut = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await.context("connection closed")?;
                    s.send_request(to_h1(req)?).await?
                }
                Sender::H2(s) => {
                    s.ready().await.context("connection closed")?;
                    s.send_request(to_h2(req, scheme)?).await?
                }
            };
            read_response(resp, tls).await
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow!("no whole response within {timeout:?}"))?
    }

    /// Like [`Conn::send`], but tells a request that never left this client apart:
    /// [`Sent::NotSent`] when the connection was closed (by the server: HTTP/1.1
    /// keep-alive end, HTTP/2 GOAWAY) before the request was written. Clients send such a
    /// request again on a new connection (RFC 9113 8.7, RFC 9112 9.3.1), as browsers and
    /// hyper-util's pool do.
    pub async fn try_send(&mut self, req: Request<Body>) -> anyhow::Result<Sent> {
        let timeout = self.timeout;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tls = self.tls.clone();
        let fut = async {
            let sent = match &mut self.sender {
                Sender::H1(s) => match s.ready().await {
                    Ok(()) => s.try_send_request(to_h1(req)?).await,
                    Err(e) => return Ok(Sent::NotSent(e.into())),
                },
                Sender::H2(s) => match s.ready().await {
                    Ok(()) => s.try_send_request(to_h2(req, scheme)?).await,
                    Err(e) => return Ok(Sent::NotSent(e.into())),
                },
            };
            match sent {
                Ok(resp) => Ok(Sent::Answered(read_response(resp, tls).await?)),
                Err(e) if e.message().is_some() => Ok(Sent::NotSent(e.into_error().into())),
                Err(e) => Err(e.into_error().into()),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow!("no whole response within {timeout:?}"))?
    }

    /// `GET path` with this Host.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Response> {
        self.send(request(Method::GET, host, path, body::empty()))
            .await
    }
}

/// What [`Conn::try_send`] did.
pub enum Sent {
    Answered(Response),
    /// The request was never written: the connection had been closed.
    NotSent(anyhow::Error),
}

/// Read a hyper response to its end.
pub async fn read_response(
    resp: hyper::Response<hyper::body::Incoming>,
    tls: Option<Arc<TlsInfo>>,
) -> anyhow::Result<Response> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.context("reading response body")?;
    Ok(Response {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.to_bytes(),
        tls,
    })
}

/// A request with an origin-form target and a `Host` header.
pub fn request(method: Method, host: &str, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .body(body)
        .expect("valid request")
}

fn to_h1(mut req: Request<Body>) -> anyhow::Result<Request<Body>> {
    *req.version_mut() = Version::HTTP_11;
    if let Some(authority) = req.uri().authority().cloned() {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_str(authority.as_str())?);
        }
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        *req.uri_mut() = pq.parse()?;
    }
    Ok(req)
}

fn to_h2(mut req: Request<Body>, scheme: &str) -> anyhow::Result<Request<Body>> {
    *req.version_mut() = Version::HTTP_2;
    if req.uri().authority().is_none() {
        let host = req
            .headers_mut()
            .remove(header::HOST)
            .ok_or_else(|| anyhow!("HTTP/2 request needs a Host header or an absolute URI"))?;
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: Uri = format!("{scheme}://{}{pq}", host.to_str()?).parse()?;
        *req.uri_mut() = uri;
    }
    Ok(req)
}

/// One request over a fresh TLS connection: SNI = `host`, ALPN `[h2, http/1.1]`.
pub async fn https_get(
    addr: SocketAddr,
    ca_pem: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<Response> {
    Conn::https(addr, ca_pem, host, Alpn::Both)
        .await?
        .get(host, path)
        .await
}

/// One plain HTTP/1.1 request over a fresh connection.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Response> {
    Conn::http(addr).await?.get(host, path).await
}

/// Write `bytes` to a plain TCP connection and read what comes back until the peer closes
/// or `idle` passes without data.
pub async fn raw_tcp(addr: SocketAddr, bytes: &[u8], idle: Duration) -> anyhow::Result<Vec<u8>> {
    let stream = tcp_connect(addr).await?;
    raw_exchange(stream, bytes, idle).await
}

/// Like [`raw_tcp`], over TLS (ALPN `http/1.1`).
pub async fn raw_tls(
    addr: SocketAddr,
    ca_pem: &str,
    sni: &str,
    bytes: &[u8],
    idle: Duration,
) -> anyhow::Result<Vec<u8>> {
    let stream = tls_connect(addr, client_config(ca_pem, Alpn::H1)?, sni).await?;
    raw_exchange(stream, bytes, idle).await
}

/// Write `bytes`, then read until EOF or `idle` without data.
pub async fn raw_exchange<S>(mut stream: S, bytes: &[u8], idle: Duration) -> anyhow::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    stream.flush().await?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(idle, stream.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer still leaves the answer to look at.
            Ok(Err(_)) if !out.is_empty() => break,
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(out)
}
