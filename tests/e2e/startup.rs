//! Start-up as the tests see it: `Proxy::start` returns a proxyd that serves its own
//! ports with its own certificates.

use tests::{Alpn, Backend, Conn, Proxy};

/// Proxyds told to use the same https port at the same moment (what two test processes
/// do when both pick a port that is free at that moment, e.g. two e2e runs side by
/// side): each passes proxyd's own bind check, then one listens and the others' pingora
/// retries the busy port. Whatever the timing, a proxy that `try_start` reports as
/// started answers a handshake for its own name with its own certificate, and only one
/// starts.
///
/// The harness once counted a port that accepted connections as ready, whoever held it
/// (the log line of the busy port could come after that check): a test then met the
/// other daemon, which has no certificate for the test's name and refuses the handshake
/// with an access_denied alert (seen in the soak test: "a first connection got a TLS
/// AccessDenied alert").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_racing_for_one_https_port_only_the_one_holding_it_starts() {
    const RIVALS: usize = 3;
    let backend = Backend::start("b").await;
    let mut trials_with_a_start = 0;
    for trial in 0..16 {
        let https = tests::free_addr();
        let names: Vec<String> = (0..RIVALS).map(|i| format!("p{i}.race.test")).collect();
        let starts = names.iter().map(|name| {
            Proxy::builder(&crate::one_route(&[name], &backend, ""))
                .https_addr(https)
                .try_start()
        });
        let proxies = futures_util::future::join_all(starts).await;
        let mut started = 0;
        for (proxy, name) in proxies.iter().zip(&names) {
            let Ok(proxy) = proxy else { continue };
            started += 1;
            if let Err(e) = Conn::https(https, &proxy.ca_pem(), name, Alpn::H1).await {
                panic!(
                    "trial {trial}: the proxy for {name} was reported started on {https}, \
                     but the handshake for its name failed: {e:#}"
                );
            }
        }
        assert!(
            started <= 1,
            "trial {trial}: {started} proxies started on {https}"
        );
        trials_with_a_start += started;
    }
    // None starts only when yet another process took the port meanwhile: not every time.
    assert!(trials_with_a_start > 0, "no proxy ever started");
}

/// What a proxyd that failed a start-up step left in its directory: no admin socket,
/// no pid file.
fn assert_nothing_left(dir: &std::path::Path, case: &str) {
    for name in ["admin.sock", "proxyd.pid"] {
        assert!(
            !dir.join(name).exists(),
            "{case}: a failed start left {name} behind"
        );
    }
}

/// `--metrics` on an address another process holds: proxyd fails at once with the
/// address and a non-zero exit, like a busy public port, instead of serving on
/// without its metrics (pingora retried the port, then its metrics thread panicked and
/// the daemon ran on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_address_in_use_fails_the_start_with_the_address() {
    let backend = Backend::start("b").await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = holder.local_addr().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = Proxy::builder(&crate::one_route(&["m.test"], &backend, ""))
        .dir(tmp.path())
        .arg("--metrics")
        .arg(metrics.to_string())
        .arg("--pid-file")
        .arg(tmp.path().join("proxyd.pid"))
        .try_start()
        .await
        .err()
        .expect("proxyd started with its --metrics address held by another process");
    let err = format!("{err:#}");
    assert!(
        err.contains(&format!("cannot listen on {metrics}")),
        "the error does not name the metrics address: {err}"
    );
    assert_nothing_left(tmp.path(), "metrics address in use");
}

/// A failure in a middle start-up step (the admin socket's directory cannot be made,
/// the access log cannot be opened) exits non-zero with the reason, leaving no
/// socket or pid file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_up_step_exits_with_its_reason_and_leaves_nothing() {
    let backend = Backend::start("b").await;
    let routes = crate::one_route(&["m.test"], &backend, "");
    // (case, --admin-socket under the dir, extra arguments, expected error)
    let cases: [(&str, &str, &[&str], &str); 2] = [
        (
            "admin socket under a file",
            "afile/sub/admin.sock",
            &[],
            "cannot create the admin socket's directory",
        ),
        (
            "access log in a missing directory",
            "admin.sock",
            &["--access-log", "no/such/dir/access.log"],
            "cannot open the access log",
        ),
    ];
    for (case, admin, extra, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("routes.toml"), &routes).unwrap();
        std::fs::create_dir(dir.join("store")).unwrap();
        std::fs::write(dir.join("afile"), "").unwrap();
        let mut cmd = tokio::process::Command::new(tests::locate_bin("proxyd", "PROXYD_BIN"));
        cmd.current_dir(dir)
            .args(["--routes", "routes.toml", "--certs-store", "store"])
            .args(["--local-issuer", "on"])
            .args(["--http", &tests::free_addr().to_string()])
            .args(["--https", &tests::free_addr().to_string()])
            .arg("--admin-socket")
            .arg(dir.join(admin))
            .arg("--upgrade-socket")
            .arg(dir.join("upgrade.sock"))
            .arg("--pid-file")
            .arg(dir.join("proxyd.pid"))
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{case}: proxyd still running after 60 s"))
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        assert!(err.contains(expected), "{case}: unclear error: {err}");
        assert_nothing_left(dir, case);
        assert!(
            !dir.join("afile/sub").exists() && !dir.join("upgrade.sock").exists(),
            "{case}: a failed start left something behind"
        );
    }
}
