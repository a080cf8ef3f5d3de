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
