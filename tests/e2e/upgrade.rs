//! Binary upgrade: a new proxyd takes the listening sockets over from the running one
//! (`proxyd -u`, then SIGQUIT to the old) while traffic flows, and no request is lost.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tests::{free_addr, wait_until, Alpn, Backend, Conn, Proxy};

use crate::one_route;

/// Kills the new daemon when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_upgrade_under_traffic_loses_no_request() {
    let site = Backend::start("site").await;
    let dir = tempfile::tempdir().unwrap();
    let (http, https) = (free_addr(), free_addr());
    let mut old = Proxy::builder(&one_route(&["up.test"], &site, ""))
        .dir(dir.path())
        .arg("--grace-period")
        .arg("3")
        .http_addr(http)
        .https_addr(https)
        .start()
        .await;
    let ca = old.ca_pem();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, reconnects) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Requests that failed, by id: after the old process is gone, each is lost if the
    // upstream got it (the answer went missing) and refused if it never did (an HTTP/2
    // stream above a GOAWAY's last stream id, a request on a keep-alive connection the
    // old process closed): a client may send those again, as browsers and hyper's pool
    // do, and the next request here does.
    let errored = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut workers = Vec::new();
    for (w, alpn) in [Alpn::H1, Alpn::H1, Alpn::H2, Alpn::H2]
        .into_iter()
        .enumerate()
    {
        let (stop, ok, reconnects, errored, ca) = (
            stop.clone(),
            ok.clone(),
            reconnects.clone(),
            errored.clone(),
            ca.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::https(https, &ca, "up.test", alpn).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("{w}-{n}");
                let mut req =
                    tests::client::request(http::Method::GET, "up.test", "/", tests::body::empty());
                req.headers_mut()
                    .insert(tests::backend::REQUEST_ID_HEADER, id.parse().unwrap());
                match conn.send(req).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        // The old process asks HTTP/1.1 clients to go elsewhere with
                        // `Connection: close` on its last response.
                        if r.header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        {
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            conn = Conn::https(https, &ca, "up.test", alpn).await.unwrap();
                        }
                    }
                    Ok(r) => errored
                        .lock()
                        .unwrap()
                        .push((id, format!("status {}", r.status))),
                    Err(e) => {
                        errored.lock().unwrap().push((id, format!("{e:#}")));
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        conn = Conn::https(https, &ca, "up.test", alpn).await.unwrap();
                    }
                }
            }
        }));
    }
    wait_until(
        "traffic to flow",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async { (ok.load(Ordering::Relaxed) > 100).then_some(()) },
    )
    .await;

    // The new binary: the same flags plus -u. It waits on the upgrade socket for the
    // old one's listeners.
    let upgrade_sock = dir.path().join("upgrade.sock");
    let log = std::fs::File::create(dir.path().join("proxyd-new.log")).unwrap();
    let new = Command::new(tests::locate_bin("proxyd", "PROXYD_BIN"))
        .arg("--routes")
        .arg(dir.path().join("routes.toml"))
        .arg("--certs-store")
        .arg(dir.path().join("certs-store"))
        .arg("--http")
        .arg(http.to_string())
        .arg("--https")
        .arg(https.to_string())
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .arg("--upgrade-socket")
        .arg(&upgrade_sock)
        .arg("-u")
        .arg("--grace-period")
        .arg("3")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut new = Reaped(new);
    let new_pid = new.0.id();
    wait_until(
        "the new proxyd to wait on the upgrade socket",
        Duration::from_secs(20),
        Duration::from_millis(10),
        || async { upgrade_sock.exists().then_some(()) },
    )
    .await;
    let before = ok.load(Ordering::Relaxed);
    old.signal(libc::SIGQUIT);
    wait_until(
        "the old proxyd to exit",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let running = old.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await;
    assert!(
        matches!(new.0.try_wait(), Ok(None)),
        "the new proxyd died: {}",
        std::fs::read_to_string(dir.path().join("proxyd-new.log")).unwrap()
    );

    // Traffic goes on, now served by the new process.
    wait_until(
        "traffic through the new proxyd",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async { (ok.load(Ordering::Relaxed) > before + 200).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let fresh = tests::https_get(https, &ca, "up.test", "/").await.unwrap();
    assert_eq!(fresh.status, 200);
    let status = Command::new(tests::locate_bin("proxyctl", "PROXYCTL_BIN"))
        .arg("--socket")
        .arg(dir.path().join("admin.sock"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    assert_eq!(
        v["pid"], new_pid,
        "the admin socket answers from the new process: {v}"
    );

    // The old process has exited: every request it took has ended one way or the other.
    let errored = errored.lock().unwrap().clone();
    let lost: Vec<_> = errored
        .iter()
        .filter(|(id, _)| site.saw_request(id))
        .collect();
    eprintln!(
        "{} ok, {} refused before reaching the upstream, {} lost: {errored:?}",
        ok.load(Ordering::Relaxed),
        errored.len() - lost.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "requests lost during the upgrade: {lost:?}"
    );
    assert!(
        reconnects.load(Ordering::Relaxed) >= 1,
        "the old process never let its connections go"
    );
}
