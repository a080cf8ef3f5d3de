//! A real browser among the clients: Debian's chromium, headless, trusting the proxy's
//! local CA through its NSS database the way a user would (no certificate flags). It
//! loads a page over HTTP/2 through proxyd; the page's script keeps a wss websocket
//! through the proxy that carries more than the route's `max_body` and idles longer than
//! `--client-body-timeout`, then posts what it saw to the backend, which the test reads.
//!
//! Needs `chromium` and `certutil` (Debian: chromium, libnss3-tools; `.ci/test` installs
//! them). Without them the test is skipped, except under `CI=true`, where it fails.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tests::Proxy;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes the page sends through the websocket (and gets back), in chunks of `CHUNK`.
const TOTAL: usize = 256 * 1024;
const CHUNK: usize = 16 * 1024;
/// The route's max_body: a quarter of what the tunnel carries.
const MAX_BODY: &str = "64k";
/// --client-body-timeout, and how long the page's websocket stays silent.
const BODY_TIMEOUT_S: u64 = 2;
const IDLE_MS: u64 = 4000;

/// The page: its script runs the websocket session and posts the outcome to /result.
/// `fill` is a xorshift stream per chunk, so a lost, altered or reordered chunk is seen.
fn page() -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>proxyd browser test</title></head>
<body><p id="state">running</p>
<script>
const TOTAL = {TOTAL}, CHUNK = {CHUNK}, IDLE_MS = {IDLE_MS};
function fill(i, n) {{
  const a = new Uint8Array(n);
  let x = ((i + 1) * 2654435761) >>> 0;
  for (let k = 0; k < n; k++) {{
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    a[k] = x & 255;
  }}
  return a;
}}
async function session(r) {{
  const ws = new WebSocket(`wss://${{location.host}}/ws`);
  ws.binaryType = "arraybuffer";
  const queue = [];
  let wake = null, closed = null;
  const poke = () => {{ if (wake) {{ const w = wake; wake = null; w(); }} }};
  ws.onmessage = (e) => {{ queue.push(e.data); poke(); }};
  ws.onclose = (e) => {{ closed = `websocket closed (code ${{e.code}})`; poke(); }};
  const next = async () => {{
    while (queue.length === 0) {{
      if (closed) throw new Error(`${{closed}} after ${{r.echoed}} bytes came back`);
      await new Promise((res) => (wake = res));
    }}
    return queue.shift();
  }};
  await new Promise((res, rej) => {{
    ws.onopen = res;
    ws.onerror = () => rej(new Error("websocket failed to open"));
  }});
  console.log("websocket open");
  const chunks = TOTAL / CHUNK;
  for (let i = 0; i < chunks; i++) {{ ws.send(fill(i, CHUNK)); r.sent += CHUNK; }}
  for (let i = 0; i < chunks; i++) {{
    const got = new Uint8Array(await next());
    const want = fill(i, CHUNK);
    if (got.length !== want.length || got.some((b, k) => b !== want[k])) r.mismatches++;
    r.echoed += got.length;
  }}
  console.log(`echoed ${{r.echoed}} bytes; idle for ${{IDLE_MS}} ms`);
  await new Promise((res) => setTimeout(res, IDLE_MS));
  ws.send("after idle");
  r.after_idle = await next();
  ws.close(1000, "done");
}}
async function run() {{
  const nav = performance.getEntriesByType("navigation")[0];
  const r = {{ protocol: nav ? nav.nextHopProtocol : null, sent: 0, echoed: 0,
               mismatches: 0, after_idle: null, error: null }};
  try {{ await session(r); }} catch (e) {{ r.error = String(e); }}
  console.log("result " + JSON.stringify(r));
  await fetch("/result", {{ method: "POST", headers: {{ "content-type": "application/json" }},
                           body: JSON.stringify(r) }});
  document.getElementById("state").textContent = "done";
}}
run();
</script></body></html>
"#
    )
}

/// The application behind the proxy: `/` the page, `/ws` a websocket echo, `POST
/// /result` the page's report (handed to the test).
async fn app(results: mpsc::UnboundedSender<Bytes>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let results = results.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let results = results.clone();
                    async move { Ok::<_, Infallible>(handle(req, results).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn handle(
    mut req: Request<Incoming>,
    results: mpsc::UnboundedSender<Bytes>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(body))
            .unwrap()
    };
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", page().into()),
        (Method::POST, "/result") => match req.into_body().collect().await {
            Ok(body) => {
                let _ = results.send(body.to_bytes());
                reply(StatusCode::NO_CONTENT, "text/plain", Bytes::new())
            }
            Err(_) => reply(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()),
        },
        (Method::GET, "/ws") => {
            let Some(key) = req.headers().get("sec-websocket-key") else {
                return reply(StatusCode::BAD_REQUEST, "text/plain", "no key".into());
            };
            let accept = derive_accept_key(key.as_bytes());
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(io) = on_upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = match msg {
                        Message::Text(_) | Message::Binary(_) => msg,
                        Message::Close(_) => break,
                        // tungstenite answers pings itself.
                        _ => continue,
                    };
                    if ws.send(echo).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        // favicon.ico and anything else.
        _ => reply(StatusCode::NOT_FOUND, "text/plain", Bytes::new()),
    }
}

/// `name` on PATH, if there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A headless chromium and its process group, killed (by its process group id) and
/// reaped on drop.
struct Chromium {
    child: Child,
    stderr: PathBuf,
}

impl Chromium {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        // dbus and GPU noise of a machine without a session bus or a GPU.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("dbus") && !l.contains("vaapi"))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The browser's helpers (zygote, renderer, GPU) share its process group.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: a signal to the process group this test created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- chromium stderr (filtered), last lines ----\n{}\n---- end ----",
                self.log()
            );
        }
    }
}

fn certutil(home: &Path, args: &[&str]) {
    let db = format!("sql:{}", home.join(".pki/nssdb").display());
    let out = Command::new("certutil")
        .arg("-d")
        .arg(&db)
        .args(args)
        .env("HOME", home)
        .output()
        .expect("running certutil");
    assert!(
        out.status.success(),
        "certutil {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh HOME whose NSS database trusts `ca_pem` for TLS servers (what a user does with
/// `certutil -A -t C,,`), and a chromium profile directory beside it.
fn browser_home(dir: &Path, ca_pem: &str) -> (PathBuf, PathBuf) {
    let home = dir.join("home");
    let profile = dir.join("profile");
    std::fs::create_dir_all(home.join(".pki/nssdb")).unwrap();
    std::fs::create_dir_all(&profile).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    certutil(&home, &["-N", "--empty-password"]);
    certutil(
        &home,
        &[
            "-A",
            "-t",
            "C,,",
            "-n",
            "proxytest",
            "-i",
            ca.to_str().unwrap(),
        ],
    );
    (home, profile)
}

fn start_chromium(binary: &Path, dir: &Path, ca_pem: &str, url: &str) -> Chromium {
    use std::os::unix::process::CommandExt;
    let (home, profile) = browser_home(dir, ca_pem);
    let stderr = dir.join("chromium.log");
    let mut cmd = Command::new(binary);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--host-resolver-rules=MAP app.test 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url)
    .env("HOME", &home)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&stderr).unwrap())
    .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A killed test run leaves no browser behind.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("starting chromium");
    Chromium { child, stderr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_page_over_h2_keeps_a_websocket_past_max_body_and_body_timeout() {
    let (Some(chromium), Some(_)) = (on_path("chromium"), on_path("certutil")) else {
        let why = "chromium or certutil not installed (Debian: apt-get install chromium \
                   libnss3-tools; bash .ci/test does it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    };
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let app = app(results_tx).await;
    let tmp = tempfile::tempdir().unwrap();
    let access_log = tmp.path().join("access.log");
    let routes = format!(
        "[[route]]\nhosts = [\"app.test\"]\nupstreams = [\"{app}\"]\nwebsocket = true\n\
         max_body = \"{MAX_BODY}\"\nread_timeout = \"60s\"\n"
    );
    let proxy = Proxy::builder(&routes)
        .arg("--client-body-timeout")
        .arg(format!("{BODY_TIMEOUT_S}s"))
        .arg("--access-log")
        .arg(&access_log)
        .start()
        .await;
    let url = format!("https://app.test:{}/", proxy.https_addr().port());
    let mut browser = start_chromium(&chromium, tmp.path(), &proxy.ca_pem(), &url);

    // The page's report: bounded, so a browser that never gets there fails the test
    // instead of hanging it (the page needs IDLE_MS plus its transfers).
    let report = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(120), results.recv()) => r
            .expect("no report from the page within 120 s")
            .expect("the app stopped"),
        status = wait_exit(&mut browser) => panic!("chromium exited before the page reported: {status:?}"),
    };
    let report: serde_json::Value = serde_json::from_slice(&report).expect("a JSON report");
    eprintln!("page report: {report}");
    assert_eq!(report["error"], serde_json::Value::Null, "{report}");
    assert_eq!(
        report["protocol"], "h2",
        "page not loaded over HTTP/2: {report}"
    );
    assert_eq!(report["sent"], TOTAL, "{report}");
    assert_eq!(report["echoed"], TOTAL, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["after_idle"], "after idle", "{report}");

    // The proxy's view: the page over HTTP/2, the websocket (HTTP/1.1, as pingora offers
    // no extended CONNECT) a 101 whose tunnel carried all of it.
    let lines = tests::wait_until(
        "the websocket's access log line",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let text = std::fs::read_to_string(&access_log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            lines.iter().any(|l| l["path"] == "/ws").then_some(lines)
        },
    )
    .await;
    let page = lines
        .iter()
        .find(|l| l["path"] == "/" && l["method"] == "GET")
        .expect("the page's access log line");
    assert_eq!(page["protocol"], "HTTP/2", "{page}");
    assert_eq!(page["status"], 200, "{page}");
    let ws = lines.iter().find(|l| l["path"] == "/ws").unwrap();
    assert_eq!(ws["status"], 101, "{ws}");
    assert!(ws["bytes_in"].as_u64().unwrap() >= TOTAL as u64, "{ws}");
    assert!(ws["bytes_out"].as_u64().unwrap() >= TOTAL as u64, "{ws}");
    drop(browser);
}

/// Resolves when the browser process exits (polled: std's Child has no async wait).
async fn wait_exit(browser: &mut Chromium) -> std::process::ExitStatus {
    loop {
        if let Some(status) = browser.child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
