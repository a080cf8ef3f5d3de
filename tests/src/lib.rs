//! Test harness for the end-to-end tests and the demo: real upstreams ([`Backend`]), the
//! real daemon as a child process ([`Proxy`]), and real TLS, HTTP/1.1, HTTP/2 and
//! websocket clients, all on loopback with ports picked by the kernel.
//!
//! Nothing here sleeps to synchronise: readiness is polled against a deadline
//! ([`wait_until`]).

pub mod acme_front;
pub mod backend;
pub mod body;
pub mod client;
pub mod dns;
pub mod hostile;
pub mod pebble;
pub mod proxy;
pub mod raw_upstream;
pub mod unit;
pub mod ws;

#[cfg(test)]
mod selftest;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use backend::{Backend, BACKEND_HEADER};
pub use body::{empty, full, zeros, zeros_chunked, Body};
pub use client::{http_get, https_get, raw_tcp, raw_tls, request, Alpn, Conn, Response, TlsInfo};
pub use dns::DnsServer;
pub use proxy::{free_addr, free_port, mem_status, MemStatus, Proxy, ProxyBuilder};
pub use ws::{ws_connect, wss_connect};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A workspace binary: `$ENV_VAR` if set, else `target/<profile>/<name>` next to the
/// running executable (tests run from `target/<profile>/deps/`, binaries from
/// `target/<profile>/`). Panics with how to build it when it is missing.
pub fn locate_bin(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env_var}={} is not a file", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} not found at {} (or set {env_var}): build it first: cargo build -p {name}",
        path.display()
    );
    path
}

/// Poll `check` until it returns `Some`, every `every`, failing after `within` with `what`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}
