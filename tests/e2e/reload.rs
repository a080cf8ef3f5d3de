//! Hot reload and the admin API: `proxyctl reload/diff/status` against the real daemon
//! while traffic flows.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tests::{wait_until, wss_connect, Alpn, Backend, Conn, Proxy};
use tokio_tungstenite::tungstenite::Message;

use crate::upstreams;

/// Run proxyctl against this proxy's admin socket.
pub(crate) async fn proxyctl(proxy: &Proxy, args: &[&str]) -> Output {
    let socket = proxy.dir().join("admin.sock");
    proxyctl_at(&socket, args).await
}

async fn proxyctl_at(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(tests::locate_bin("proxyctl", "PROXYCTL_BIN"));
    cmd.arg("--socket").arg(socket).args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run proxyctl"))
        .await
        .unwrap()
}

/// Failed requests: a count and the first few messages (a broken run must not eat memory).
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Failures {
    fn push(&self, msg: String) {
        if self.count.fetch_add(1, Ordering::Relaxed) < 10 {
            self.first.lock().unwrap().push(msg);
        }
    }

    fn take(&self) -> (u64, Vec<String>) {
        (
            self.count.load(Ordering::Relaxed),
            std::mem::take(&mut self.first.lock().unwrap()),
        )
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Replace the routes file as a deploy would (whole file, then rename).
fn write_routes(proxy: &Proxy, text: &str) {
    let tmp = proxy.dir().join("routes.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, proxy.routes_path()).unwrap();
}

/// `r.test` -> `backend`, tagged so the upstream can tell which table routed it, plus a
/// route that never changes.
fn table(tag: &str, backend: &Backend, steady: &Backend) -> String {
    format!(
        "[[route]]\nname = \"r\"\nhosts = [\"r.test\"]\nupstreams = {}\nrequest_headers = {{ \"X-Table\" = \"{tag}\" }}\n\n\
         [[route]]\nname = \"steady\"\nhosts = [\"steady.test\"]\nupstreams = {}\nwebsocket = true\n",
        upstreams(&[backend]),
        upstreams(&[steady]),
    )
}

/// Four problems (an empty upstream list, a bad CIDR, an unknown key and so a missing
/// `upstreams`): the answer must list all of them.
const INVALID: &str = r#"
[[route]]
name = "r"
hosts = ["r.test"]
upstreams = []
allow = ["300.1.2.3/8"]

[[route]]
hosts = ["steady.test"]
upstrem = ["127.0.0.1:1"]
"#;

fn assert_all_errors_reported(out: &Output) {
    let stderr = text(&out.stderr);
    let located = stderr
        .lines()
        .filter(|l| l.starts_with("error: ") && l.contains("routes.toml:"))
        .count();
    assert!(
        located >= 4,
        "expected every error with file:line:col, got:\n{stderr}"
    );
    assert!(stderr.contains("unchanged"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_steady_traffic_lose_no_request_and_route_as_the_table_says() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let steady = Backend::start("steady").await;
    let one = table("one", &a, &steady);
    let two = table("two", &b, &steady);
    let proxy = Proxy::start(&one).await;
    let ca = proxy.ca_pem();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    let mut workers = Vec::new();
    for (i, alpn) in [Alpn::H1, Alpn::H1, Alpn::H2, Alpn::H2]
        .into_iter()
        .enumerate()
    {
        let (stop, ok, failures, ca) = (stop.clone(), ok.clone(), failures.clone(), ca.clone());
        let addr = proxy.https_addr();
        workers.push(tokio::spawn(async move {
            // Keep-alive: one connection for the whole run.
            let mut conn = Conn::https(addr, &ca, "r.test", alpn).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let host = if n.is_multiple_of(2) {
                    "r.test"
                } else {
                    "steady.test"
                };
                match conn.get(host, &format!("/w{i}/{n}")).await {
                    Ok(resp) if resp.status == 200 => {
                        // After guard::KEEPALIVE_REQUESTS (1000) requests on one HTTP/1.1
                        // connection the proxy says `Connection: close`: as every client
                        // does, go on with a new connection.
                        if resp
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        {
                            match Conn::https(addr, &ca, "r.test", alpn).await {
                                Ok(c) => conn = c,
                                Err(e) => failures.push(format!("reconnect: {e:#}")),
                            }
                        }
                        let backend = resp.backend();
                        let tag = resp.seen_header("x-table");
                        let consistent = match backend.as_str() {
                            "a" => tag == ["one"],
                            "b" => tag == ["two"],
                            "steady" => host == "steady.test",
                            _ => false,
                        };
                        if consistent {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures
                                .push(format!("{host}: backend {backend} with X-Table {tag:?}"));
                        }
                    }
                    Ok(resp) => {
                        failures.push(format!("{host}: status {} {}", resp.status, resp.text()))
                    }
                    Err(e) => {
                        failures.push(format!("{host}: {e:#}"));
                        // A broken connection stays broken: open a new one.
                        match Conn::https(addr, &ca, "r.test", alpn).await {
                            Ok(c) => conn = c,
                            Err(e) => failures.push(format!("reconnect: {e:#}")),
                        }
                    }
                }
            }
        }));
    }

    let mut valid_reloads = 0;
    for i in 0..120 {
        match i % 4 {
            1 | 3 => {
                write_routes(&proxy, INVALID);
                let out = proxyctl(&proxy, &["reload"]).await;
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "invalid file accepted:\n{}",
                    text(&out.stdout)
                );
                assert_all_errors_reported(&out);
            }
            k => {
                let (file, want) = if k == 0 { (&two, "b") } else { (&one, "a") };
                write_routes(&proxy, file);
                let out = proxyctl(&proxy, &["reload"]).await;
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "reload failed: {}",
                    text(&out.stderr)
                );
                assert!(
                    text(&out.stdout).contains("applied generation"),
                    "{}",
                    text(&out.stdout)
                );
                assert!(
                    text(&out.stdout).contains("~ route r"),
                    "{}",
                    text(&out.stdout)
                );
                valid_reloads += 1;
                // In force at once: a new connection after the answer gets the new table.
                let resp = tests::https_get(proxy.https_addr(), &ca, "r.test", "/after")
                    .await
                    .unwrap();
                assert_eq!(resp.backend(), want, "after reload {i}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (count, first) = failures.take();
    assert_eq!(count, 0, "failed requests, the first ones: {first:#?}");
    let served = ok.load(Ordering::Relaxed);
    assert!(
        served > 200,
        "too little traffic to mean anything: {served}"
    );
    assert!(a.requests() > 0 && b.requests() > 0);

    let status = proxyctl(&proxy, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["generation"], 1 + valid_reloads);
    assert_eq!(
        v["last_reload"]["ok"], false,
        "the last reload was of the invalid file"
    );
    assert_eq!(v["routes"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_keeps_echoing_across_50_reloads_of_other_routes() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let chat = Backend::start("chat").await;
    let proxy = Proxy::start(&table("one", &a, &chat)).await;
    let (mut ws, _) = wss_connect(proxy.https_addr(), &proxy.ca_pem(), "steady.test", "/ws")
        .await
        .unwrap();
    for i in 0..50 {
        let (tag, backend) = if i % 2 == 0 { ("two", &b) } else { ("one", &a) };
        write_routes(&proxy, &table(tag, backend, &chat));
        let out = proxyctl(&proxy, &["reload"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let msg = format!("still there after reload {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("socket open")
            .unwrap();
        assert_eq!(echo, Message::text(msg));
    }
    assert_eq!(chat.websockets(), 1, "the websocket was never re-opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_is_rejected_and_the_old_table_keeps_serving() {
    let a = Backend::start("a").await;
    let steady = Backend::start("steady").await;
    let proxy = Proxy::start(&table("one", &a, &steady)).await;
    write_routes(&proxy, INVALID);

    let diff = proxyctl(&proxy, &["diff"]).await;
    assert_eq!(diff.status.code(), Some(1));
    assert_all_errors_reported(&diff);

    let out = proxyctl(&proxy, &["reload", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["applied"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4, "{v:#}");
    assert!(errors
        .iter()
        .all(|e| e["line"].as_u64().unwrap() > 0 && e["col"].as_u64().unwrap() > 0));

    let resp = tests::https_get(proxy.https_addr(), &proxy.ca_pem(), "r.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.backend(), "a");
    let status = proxyctl(&proxy, &["status"]).await;
    let shown = text(&status.stdout);
    assert!(shown.contains("generation 1"), "{shown}");
    assert!(shown.contains("REJECTED"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_changes_without_applying_and_new_names_get_certificates() {
    let a = Backend::start("a").await;
    let steady = Backend::start("steady").await;
    let proxy = Proxy::start(&table("one", &a, &steady)).await;
    let added = format!(
        "{}\n[[route]]\nname = \"new\"\nhosts = [\"new.test\"]\nupstreams = {}\n",
        table("one", &a, &steady),
        upstreams(&[&a])
    );
    write_routes(&proxy, &added);

    let out = proxyctl(&proxy, &["diff"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("+ route new") && shown.contains("+ name new.test"),
        "{shown}"
    );
    assert!(shown.contains("certificate needed for new.test"), "{shown}");
    // Not applied: the name is unknown still (and has no certificate).
    assert!(
        tests::https_get(proxy.https_addr(), &proxy.ca_pem(), "new.test", "/")
            .await
            .is_err()
    );

    let out = proxyctl(&proxy, &["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("certificate issued: new.test"),
        "{}",
        text(&out.stdout)
    );
    let resp = tests::https_get(proxy.https_addr(), &proxy.ca_pem(), "new.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.backend(), "a");

    let again = proxyctl(&proxy, &["reload"]).await;
    assert!(
        text(&again.stdout).contains("nothing changed"),
        "{}",
        text(&again.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_like_proxyctl() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let steady = Backend::start("steady").await;
    let proxy = Proxy::start(&table("one", &a, &steady)).await;
    write_routes(&proxy, &table("two", &b, &steady));
    // SAFETY: signalling our own child by its PID.
    assert_eq!(unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) }, 0);
    // The daemon swaps the table first and records the reload after (SIGHUP has no
    // answer to wait on): wait for the record, which comes last, then check the rest.
    // Waiting on the swap (r.test answered by b) raced with the record under load.
    let v = wait_until(
        "status to record the SIGHUP reload",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let out = proxyctl(&proxy, &["status", "--json"]).await;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["last_reload"].is_object().then_some(v)
        },
    )
    .await;
    assert_eq!(v["last_reload"]["trigger"], "SIGHUP", "{v:#}");
    assert_eq!(v["last_reload"]["ok"], true, "{v:#}");
    assert_eq!(v["generation"], 2, "{v:#}");
    assert_eq!(v["upstreams_total"], 2, "{v:#}");
    let resp = tests::https_get(proxy.https_addr(), &proxy.ca_pem(), "r.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.backend(), "b", "the SIGHUP reload is not in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxyctl_says_why_it_cannot_reach_the_daemon() {
    let dir = tempfile::tempdir().unwrap();

    // No daemon: exit 3, and says what to do.
    let out = proxyctl_at(&dir.path().join("missing.sock"), &["status"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );

    // A daemon that never answers: exit 5 after --timeout.
    let socket = dir.path().join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let out = proxyctl_at(&socket, &["--timeout", "1", "reload"]).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("did not answer"),
        "{}",
        text(&out.stderr)
    );
    drop(listener);

    // A socket this user may not use: exit 4. Root passes permission checks, so the
    // client runs as nobody there.
    let a = Backend::start("a").await;
    let steady = Backend::start("steady").await;
    let proxy = Proxy::start(&table("one", &a, &steady)).await;
    let socket = proxy.dir().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.mode() & 0o777,
        0o600,
        "admin socket must be 0600 by default"
    );
    let bin = tests::locate_bin("proxyctl", "PROXYCTL_BIN");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    // The socket's directory must be reachable for the permission check to be the socket's.
    std::fs::set_permissions(proxy.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    cmd.arg("--socket").arg(&socket).arg("status");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    if is_root || !socket_owned_by_us(&socket) {
        assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("permission denied"),
            "{}",
            text(&out.stderr)
        );
    }
}

fn socket_owned_by_us(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        // SAFETY: geteuid has no preconditions and cannot fail.
        .map(|m| m.uid() == unsafe { libc::geteuid() })
        .unwrap_or(false)
}

/// Ask `socket` one admin request; the raw body of the answer.
async fn admin_body(socket: &Path, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: proxyd\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (_, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    body.to_owned()
}

/// A fake admin API on a Unix socket: a request for `path` gets `status` and `body`,
/// any other an unknown endpoint's 404.
fn fake_admin(
    socket: &Path,
    path: &'static str,
    status: &'static str,
    body: String,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                // The request has no body: its head is all there is to read.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let asked = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if asked == path {
                    (status, body)
                } else {
                    (
                        "404 Not Found",
                        r#"{"error": "no such admin endpoint"}"#.to_owned(),
                    )
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    })
}

/// A reply with a renamed field, or one that contradicts itself, is an error that names
/// the endpoint and the problem (exit 1), never a silent null or a wrong "ok".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxyctl_refuses_a_reply_it_cannot_decode() {
    let a = Backend::start("a").await;
    let steady = Backend::start("steady").await;
    let proxy = Proxy::start(&table("one", &a, &steady)).await;
    let real = proxy.dir().join("admin.sock");
    let status = admin_body(&real, "GET", "/v1/status").await;
    let diff = admin_body(&real, "GET", "/v1/diff").await;
    assert!(status.contains("\"pid\": "), "{status}");
    assert!(diff.contains("\"applied\": false"), "{diff}");
    let dir = tempfile::tempdir().unwrap();

    // The real replies decode, from the fake server as from the daemon.
    let socket = dir.path().join("same.sock");
    let server = fake_admin(&socket, "/v1/status", "200 OK", status.clone());
    let out = proxyctl_at(&socket, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(pid "), "{}", text(&out.stdout));
    server.abort();

    // `pid` renamed: status fails, naming the endpoint and the field.
    let socket = dir.path().join("renamed.sock");
    let server = fake_admin(
        &socket,
        "/v1/status",
        "200 OK",
        status.replace("\"pid\"", "\"process\""),
    );
    let out = proxyctl_at(&socket, &["status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("GET /v1/status") && err.contains("missing field `pid`"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    server.abort();

    // A reload that says it was both rejected and applied.
    let socket = dir.path().join("contradiction.sock");
    let both = diff
        .replace("\"applied\": false", "\"applied\": true")
        .replace("\"ok\": true", "\"ok\": false");
    let server = fake_admin(&socket, "/v1/reload", "200 OK", both);
    let out = proxyctl_at(&socket, &["reload"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("POST /v1/reload") && err.contains("rejected and applied"),
        "{err}"
    );
    server.abort();
}

/// A fake admin socket that answers every request with the raw bytes `answer` and
/// closes; with `None`, accepts and never answers (the connection held open).
fn raw_admin(socket: &Path, answer: Option<Vec<u8>>) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            match &answer {
                Some(a) => {
                    let _ = s.write_all(a).await;
                }
                None => held.push(s),
            }
        }
    })
}

/// Review (issue 14): what a broken or hostile daemon can answer. A cut reply, an HTML
/// 500 page: a clear error, exit 1. A socket that accepts and never answers: exit 5
/// after `--timeout`, not a hang. Control bytes in a string of the reply (an error
/// message from the CA, say): escape sequences (clear screen, set the terminal title)
/// and CR (overwrite the line) must not reach the terminal raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxyctl_survives_broken_and_hostile_replies() {
    let dir = tempfile::tempdir().unwrap();
    let ok_head = |len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };

    // Cut mid-JSON.
    let socket = dir.path().join("cut.sock");
    let body = r#"{"live": tr"#;
    let server = raw_admin(
        &socket,
        Some(format!("{}{body}", ok_head(body.len() + 10)).into_bytes()),
    );
    let out = proxyctl_at(&socket, &["status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not JSON"), "{err}");
    server.abort();

    // A proxy's HTML error page.
    let socket = dir.path().join("html.sock");
    let page = "<html><body>500 Internal Server Error</body></html>";
    let server = raw_admin(
        &socket,
        Some(
            format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                page.len()
            )
            .into_bytes(),
        ),
    );
    let out = proxyctl_at(&socket, &["reload"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not JSON"), "{err}");
    server.abort();

    // Accepts, never answers.
    let socket = dir.path().join("mute.sock");
    let server = raw_admin(&socket, None);
    let out = proxyctl_at(&socket, &["--timeout", "1", "status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("did not answer within 1s"), "{err}");
    server.abort();

    // Answers, but one byte at a time, slower than the whole answer may take.
    let socket = dir.path().join("trickle.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let trickle = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        for b in b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"live\": true}"
            .iter()
            .cycle()
        {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let out = proxyctl_at(&socket, &["--timeout", "2", "status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("did not answer within 2s"), "{err}");
    trickle.abort();

    // Control bytes in the daemon's error message, printed for the admin.
    let socket = dir.path().join("escapes.sock");
    let body = r#"{"error": "boom\u001b[2J\u001b]0;owned\u0007\rfake: all fine\u009b31m"}"#;
    let server = raw_admin(
        &socket,
        Some(
            format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        ),
    );
    let out = proxyctl_at(&socket, &["status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("boom") && err.contains("fake: all fine"),
        "{err}"
    );
    for bad in ['\u{1b}', '\u{7}', '\r', '\u{9b}'] {
        assert!(!err.contains(bad), "{bad:?} printed raw: {err:?}");
    }
    // With --json the JSON encoder escapes them: still no raw control byte.
    let out = proxyctl_at(&socket, &["--json", "status"]).await;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains('\u{1b}') && !all.contains('\r'), "{all:?}");
    server.abort();
}
