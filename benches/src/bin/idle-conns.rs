//! Opens many TLS keep-alive connections to a proxy, makes one HTTP/1.1 request on each
//! (so every connection has been through a handshake and a full request), then holds
//! them all idle until stdin closes or `--hold` seconds pass. Prints `ready N` on stdout
//! once all are open, so a script can measure the proxy's memory while they are held.
//!
//! ```text
//! idle-conns --addr 127.0.0.1:8443 --sni localhost --ca ca.pem --path /small --count 10000
//! idle-conns --plain --addr 127.0.0.1:8080 --path /small --count 10000   # no TLS
//! ```

use std::io::{BufReader, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

struct Opts {
    addr: SocketAddr,
    sni: String,
    ca: String,
    path: String,
    count: usize,
    parallel: usize,
    hold: u64,
    plain: bool,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        addr: "127.0.0.1:8443".parse()?,
        sni: "localhost".into(),
        ca: String::new(),
        path: "/small".into(),
        count: 10_000,
        parallel: 64,
        hold: 120,
        plain: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => o.addr = val()?.parse()?,
            "--sni" => o.sni = val()?,
            "--ca" => o.ca = val()?,
            "--path" => o.path = val()?,
            "--count" => o.count = val()?.parse()?,
            "--parallel" => o.parallel = val()?.parse()?,
            "--hold" => o.hold = val()?.parse()?,
            "--plain" => o.plain = true,
            _ => bail!("unknown flag {flag}"),
        }
    }
    if o.ca.is_empty() && !o.plain {
        bail!("--ca CA.pem is required");
    }
    Ok(o)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Handshake, one request, read the whole (Content-Length) response; return the stream.
async fn open(o: &Opts, tls: &TlsConnector) -> Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(o.addr).await?;
    tcp.set_nodelay(true)?;
    let mut s: Box<dyn Io> = if o.plain {
        Box::new(tcp)
    } else {
        let name = ServerName::try_from(o.sni.clone())?;
        Box::new(tls.connect(name, tcp).await?)
    };
    let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", o.path, o.sni);
    s.write_all(req.as_bytes()).await?;
    let mut r = TokioBufReader::new(&mut s);
    let mut line = String::new();
    let mut len = 0usize;
    let mut first = true;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed in the response head");
        }
        if first {
            if !line.starts_with("HTTP/1.1 200") {
                bail!("unexpected status line {line:?}");
            }
            first = false;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    if !r.buffer().is_empty() {
        bail!("more bytes than Content-Length");
    }
    Ok(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let o = Arc::new(opts()?);
    let mut roots = rustls::RootCertStore::empty();
    if !o.plain {
        let pem = std::fs::File::open(&o.ca).with_context(|| o.ca.clone())?;
        for c in rustls_pemfile_certs(BufReader::new(pem))? {
            roots.add(c)?;
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(certs::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(cfg));

    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(o.parallel));
    let mut set = JoinSet::new();
    for _ in 0..o.count {
        let permit = sem.clone().acquire_owned().await?;
        let (o, tls) = (o.clone(), tls.clone());
        set.spawn(async move {
            let r = open(&o, &tls).await;
            drop(permit);
            r
        });
    }
    let mut held = Vec::with_capacity(o.count);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("idle-conns: {errors} connections failed, first: {e:#}");
    }
    println!(
        "ready {} in {:.1}s",
        held.len(),
        start.elapsed().as_secs_f64()
    );
    std::io::stdout().flush()?;
    // Hold until stdin closes (or the time limit): the connections stay idle.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(o.hold), async {
        while stdin.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
    })
    .await;
    Ok(())
}

/// PEM certificates from a file (the CA the proxies' certificate is issued from).
fn rustls_pemfile_certs(
    r: impl std::io::BufRead,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let mut r = r;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut text)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .context("bad PEM")?;
    Ok(certs)
}
