//! End to end: the real `proxyd` binary (built first: `cargo build -p proxyd`), real
//! upstreams, real TLS, HTTP/1.1, HTTP/2 and websocket clients, all on loopback ports
//! picked by the kernel. Every test starts its own backends and its own proxyd.
//!
//! One test binary (not one per file) so cargo links once and runs them side by side.

mod acme;
mod acme_lifetimes;
mod acme_orders;
mod body_limits;
mod browser;
mod cert_ageing;
mod check;
mod dns;
mod hardening;
mod headers;
mod health;
mod http_listener;
mod metrics;
mod policy;
mod preflight;
mod reload;
mod routing;
mod served;
mod soak;
mod startup;
mod tls;
mod upgrade;
mod upstream_errors;
mod websocket;

use tests::Backend;

/// The upstreams of these backends as a TOML array: `["127.0.0.1:4711", ...]`.
pub fn upstreams(backends: &[&Backend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    format!("[{}]", items.join(", "))
}

/// One route for `hosts` to one backend, with extra keys appended to the `[[route]]`.
pub fn one_route(hosts: &[&str], backend: &Backend, extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "[[route]]\nhosts = [{}]\nupstreams = {}\n{extra}\n",
        hosts.join(", "),
        upstreams(&[backend])
    )
}
