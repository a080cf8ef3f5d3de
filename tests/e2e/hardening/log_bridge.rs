//! The `log` bridge's max level follows the `RUST_LOG` filter (proxyd's
//! observe/logging.rs): pingora's `debug!` lines are stopped at the call site when the
//! filter does not want them, and still written when it does, for pingora's crates
//! alone or for everything.

use tests::raw_upstream::RawUpstream;
use tests::Proxy;

use super::plain_route;

async fn pingora_debug_lines(rust_log: &str) -> usize {
    let upstream = RawUpstream::start().await;
    let proxy = Proxy::builder(&plain_route("a.test", upstream.addr(), ""))
        .env("RUST_LOG", rust_log)
        .start()
        .await;
    let resp = proxy.get("a.test", "/").await.unwrap();
    assert_eq!(resp.status, 200, "{rust_log}");
    proxy
        .log()
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("pingora_"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_debug_lines_follow_the_log_filter() {
    assert_eq!(pingora_debug_lines("info").await, 0, "info");
    assert_eq!(pingora_debug_lines("info,pingora_core=info").await, 0);
    for filter in [
        "debug",
        "info,pingora_proxy=debug",
        "warn,pingora_core=trace",
    ] {
        assert!(
            pingora_debug_lines(filter).await > 0,
            "{filter}: no pingora debug line"
        );
    }
}
