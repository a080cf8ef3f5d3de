//! The demo: two local backends behind a real proxyd with its local CA, on loopback.
//!
//! ```text
//! cargo build -p proxyd -p tests --bins && target/debug/demo          # until Ctrl-C
//! target/debug/demo --smoke                                           # self-check, exit
//! ```
//!
//! Ports: `DEMO_HTTPS_PORT` / `DEMO_HTTP_PORT`, else 8443 / 8080 when free, else any free
//! port. Files (routes.toml, certs-store/ with the CA, proxyd.log): `DEMO_DIR`, else
//! `target/demo/`. The CA is kept between runs, so a browser that trusts it once keeps
//! trusting it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use tests::{free_port, wss_connect, Backend, Proxy};
use tokio_tungstenite::tungstenite::Message;

const SITE: &str = "demo.localhost";
const WWW: &str = "www.demo.localhost";
const CHAT: &str = "chat.demo.localhost";

#[tokio::main]
async fn main() -> ExitCode {
    let mut smoke = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "-h" | "--help" => {
                println!("usage: demo [--smoke]\n\n  --smoke  start, check one request of each kind, stop (exit 0 if all worked)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("demo: unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    match run(smoke).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(smoke: bool) -> anyhow::Result<()> {
    let mut site = Backend::start("site").await;
    let mut chat = Backend::start("chat").await;
    let https_port = port("DEMO_HTTPS_PORT", 8443)?;
    let http_port = port("DEMO_HTTP_PORT", 8080)?;
    let dir = demo_dir();
    let routes = format!(
        r#"# Demo routes, written by the demo binary (see tests/src/bin/demo.rs).

[defaults]
health_check_interval = "2s"

[[route]]
name = "site"
hosts = ["{SITE}"]
upstreams = ["{site}"]

[[route]]
name = "chat"
hosts = ["{CHAT}"]
upstreams = ["{chat}"]
websocket = true

[[redirect]]
name = "www"
hosts = ["{WWW}"]
to = "https://{SITE}"
keep_path = true
status = 301
"#,
        site = site.addr(),
        chat = chat.addr(),
    );

    let proxy = Proxy::builder(&routes)
        .dir(&dir)
        .https_addr(SocketAddr::from(([127, 0, 0, 1], https_port)))
        .http_addr(SocketAddr::from(([127, 0, 0, 1], http_port)))
        .try_start()
        .await?;

    self_check(&proxy).await.with_context(|| {
        format!(
            "self-check through proxyd failed; its log ({}):\n{}",
            proxy.log_path().display(),
            proxy.log_tail(30)
        )
    })?;

    let ca = shown(&proxy.ca_path());
    let https = proxy.https_addr().port();
    let http = proxy.http_addr().port();
    println!(
        "\
proxyd is running (pid {pid}) and answered the self-check.

  https://{SITE}:{https}/             -> backend \"site\" ({site})
  https://{WWW}:{https}/         -> 301 to https://{SITE}/...
  wss://{CHAT}:{https}/          -> websocket echo on backend \"chat\" ({chat})
  http://{SITE}:{http}/              -> 308 to https

  CA certificate (trust it, or pass it to curl): {ca}
  routes:  {routes}
  log:     {log}

Try:
  curl --cacert {ca} --resolve {SITE}:{https}:127.0.0.1 https://{SITE}:{https}/
  curl -i --cacert {ca} --resolve {WWW}:{https}:127.0.0.1 'https://{WWW}:{https}/some/path?x=1'
  curl -i --resolve {SITE}:{http}:127.0.0.1 http://{SITE}:{http}/hello
",
        pid = proxy.pid(),
        site = site.addr(),
        chat = chat.addr(),
        routes = shown(proxy.routes_path()),
        log = shown(proxy.log_path()),
    );

    if smoke {
        println!("demo: smoke test passed");
    } else {
        println!("Press Ctrl-C to stop.");
        wait_for_stop().await;
        println!("demo: stopping");
    }
    drop(proxy);
    site.stop().await;
    chat.stop().await;
    Ok(())
}

/// One request of each kind through the proxy, as a client trusting only the local CA.
async fn self_check(proxy: &Proxy) -> anyhow::Result<()> {
    let resp = proxy.get(SITE, "/hello?from=demo").await?;
    if resp.status != 200 || resp.backend() != "site" {
        bail!(
            "GET https://{SITE}/ answered {}: {}",
            resp.status,
            resp.text()
        );
    }
    let resp = proxy.get(WWW, "/x").await?;
    if resp.status != 301 || resp.header("location").as_deref() != Some("https://demo.localhost/x")
    {
        bail!(
            "GET https://{WWW}/x answered {} (Location {:?})",
            resp.status,
            resp.header("location")
        );
    }
    let (mut ws, _) = wss_connect(proxy.https_addr(), &proxy.ca_pem(), CHAT, "/").await?;
    ws.send(Message::text("ping")).await?;
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .context("no websocket echo within 5 s")?;
    match echo {
        Some(Ok(m)) if m == Message::text("ping") => {}
        other => bail!("websocket echo: {other:?}"),
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// `$var` if set (must be free), else `preferred` if free, else any free port.
fn port(var: &str, preferred: u16) -> anyhow::Result<u16> {
    if let Ok(v) = std::env::var(var) {
        return match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => bail!("{var}={v:?} is not a port (1-65535)"),
        };
    }
    Ok(if TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        preferred
    } else {
        free_port()
    })
}

/// `$DEMO_DIR`, else `target/demo` (the demo runs from `target/<profile>/demo`).
fn demo_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DEMO_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut target = exe.parent().expect("exe dir").to_path_buf();
    if target.ends_with("deps") {
        target.pop();
    }
    target.pop();
    target.join("demo")
}

/// A path relative to the current directory when it is under it.
fn shown(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd)
        .unwrap_or(path)
        .display()
        .to_string()
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
