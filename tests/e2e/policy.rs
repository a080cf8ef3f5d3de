//! Per-route client allow lists.

use tests::{Alpn, Backend, Proxy};

use crate::one_route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_other_networks_with_403_and_admits_listed_ones() {
    let closed = Backend::start("closed").await;
    let open = Backend::start("open").await;
    let v6 = Backend::start("v6only").await;
    let routes = one_route(&["closed.test"], &closed, "allow = [\"10.0.0.0/8\"]")
        + &one_route(&["open.test"], &open, "allow = [\"127.0.0.0/8\"]")
        + &one_route(&["v6.test"], &v6, "allow = [\"::1\"]");
    let proxy = Proxy::start(&routes).await;

    for alpn in [Alpn::H1, Alpn::H2] {
        let resp = proxy
            .https("closed.test", alpn)
            .await
            .unwrap()
            .get("closed.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 403, "{alpn:?}: {}", resp.text());
        assert!(
            !resp.text().contains("closed"),
            "403 carries the upstream's content"
        );

        let resp = proxy
            .https("open.test", alpn)
            .await
            .unwrap()
            .get("open.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{alpn:?}: {}", resp.text());
        assert_eq!(resp.backend(), "open");

        // 127.0.0.1 is not ::1.
        let resp = proxy
            .https("v6.test", alpn)
            .await
            .unwrap()
            .get("v6.test", "/")
            .await
            .unwrap();
        assert_eq!(resp.status, 403, "{alpn:?}: {}", resp.text());
    }
    assert_eq!(closed.requests(), 0);
    assert_eq!(v6.requests(), 0);
}
