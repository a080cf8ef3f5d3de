//! The certificate store fails under a running proxy: read-only, full, files deleted or
//! corrupted. The proxy keeps serving from memory, says so in its log and in
//! `proxyctl status` (`store`), and recovers when the disk does.
//!
//! The store is a small tmpfs in a private mount namespace of proxyd
//! ([`tests::ProxyBuilder::store_tmpfs`]): made read-only with a remount, filled with a
//! file, never touching the machine's own mounts.

use std::time::Duration;

use tests::{wait_until, Alpn, Backend, Proxy};

use super::status_json;
use crate::one_route;

async fn start(a: &Backend) -> Proxy {
    Proxy::builder(&one_route(&["a.test"], a, ""))
        .store_tmpfs("2m")
        .arg("--store-check-interval")
        .arg("200ms")
        .start()
        .await
}

/// Wait until `proxyctl status` shows store problems matching `pred` (all of them, as
/// one string), and return them.
async fn wait_for_store(proxy: &Proxy, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_until(
        what,
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let v = status_json(proxy).await;
            let problems = v["store"]["problems"].to_string();
            pred(&problems).then_some(problems)
        },
    )
    .await
}

async fn wait_store_ok(proxy: &Proxy) {
    wait_for_store(proxy, "the store to be ok", |p| p == "[]").await;
}

async fn served(proxy: &Proxy, host: &str) {
    for alpn in [Alpn::H1, Alpn::H2] {
        let resp = proxy
            .https(host, alpn)
            .await
            .unwrap_or_else(|e| panic!("{host} not served over {alpn:?}: {e:#}"))
            .get(host, "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{host}: {}", resp.text());
    }
}

async fn reload(proxy: &Proxy) {
    let mut cmd = std::process::Command::new(tests::locate_bin("proxyctl", "PROXYCTL_BIN"));
    cmd.arg("--socket")
        .arg(proxy.dir().join("admin.sock"))
        .arg("reload");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Fill the store's tmpfs to the last byte; returns the file to remove to free it.
fn fill_up(proxy: &Proxy) -> std::path::PathBuf {
    use std::io::Write;
    let fill = proxy.certs_store().join("fill");
    let mut f = std::fs::File::create(&fill).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Whatever is left below one chunk.
    while f.write_all(&[0u8; 512]).is_ok() {}
    fill
}

fn cert_dir(proxy: &Proxy, id: &str) -> std::path::PathBuf {
    proxy.certs_store().join("certs").join(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_store_keeps_serving_reports_and_recovers() {
    let a = Backend::start("a").await;
    let proxy = start(&a).await;
    wait_store_ok(&proxy).await;
    served(&proxy, "a.test").await;

    proxy.remount_store(true);
    let problems = wait_for_store(&proxy, "a read-only store to be reported", |p| {
        p.contains("not writable") && p.to_lowercase().contains("read-only")
    })
    .await;
    eprintln!("read-only: {problems}");
    served(&proxy, "a.test").await;

    // A reload adds a name: its certificate cannot be saved, the rest is served.
    std::fs::write(
        proxy.routes_path(),
        one_route(&["a.test"], &a, "") + &one_route(&["b.test"], &a, ""),
    )
    .unwrap();
    reload(&proxy).await;
    wait_for_store(&proxy, "the uncovered name to be reported", |p| {
        p.contains("no certificate for b.test")
    })
    .await;
    assert!(
        proxy.https("b.test", Alpn::Both).await.is_err(),
        "b.test got a certificate that could not have been saved"
    );
    served(&proxy, "a.test").await;

    proxy.remount_store(false);
    wait_store_ok(&proxy).await;
    served(&proxy, "b.test").await;
    assert!(cert_dir(&proxy, "b.test").join("key.pem").is_file());
    let log = proxy.log();
    assert!(log.contains("certificate store: not writable"), "{log}");
    assert!(log.contains("all problems cleared"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_keeps_serving_reports_and_recovers() {
    let a = Backend::start("a").await;
    let proxy = start(&a).await;
    wait_store_ok(&proxy).await;

    let fill = fill_up(&proxy);
    let problems = wait_for_store(&proxy, "a full store to be reported", |p| {
        p.contains("not writable") && p.contains("No space left")
    })
    .await;
    eprintln!("full: {problems}");
    served(&proxy, "a.test").await;

    std::fs::remove_file(&fill).unwrap();
    wait_store_ok(&proxy).await;
    served(&proxy, "a.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_or_corrupted_certificate_files_are_served_from_memory_and_repaired() {
    let a = Backend::start("a").await;
    let proxy = start(&a).await;
    wait_store_ok(&proxy).await;
    let dir = cert_dir(&proxy, "a.test");
    let original = std::fs::read(dir.join("fullchain.pem")).unwrap();

    // Deleted while writable: served throughout, issued again and saved.
    std::fs::remove_dir_all(&dir).unwrap();
    served(&proxy, "a.test").await;
    wait_until(
        "the deleted certificate to be written again",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { dir.join("key.pem").is_file().then_some(()) },
    )
    .await;
    served(&proxy, "a.test").await;
    assert_ne!(std::fs::read(dir.join("fullchain.pem")).unwrap(), original);

    // Corrupted while the disk is full (a read-only disk could not be corrupted):
    // reported, served from memory; repaired once there is room again.
    let fill = fill_up(&proxy);
    std::fs::write(
        dir.join("fullchain.pem"),
        b"-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    let problems = wait_for_store(&proxy, "the corrupt file to be reported", |p| {
        p.contains("certs/a.test: unusable on disk")
    })
    .await;
    eprintln!("corrupt on a full disk: {problems}");
    served(&proxy, "a.test").await;
    std::fs::remove_file(fill).unwrap();
    wait_store_ok(&proxy).await;
    served(&proxy, "a.test").await;
    let text = std::fs::read_to_string(dir.join("fullchain.pem")).unwrap();
    assert!(
        !text.contains("garbage"),
        "the corrupt file was not replaced"
    );
    assert!(
        proxy.log().contains("issued a.test again"),
        "{}",
        proxy.log_tail(30)
    );
}
