//! The daemon's shared state: the current route snapshot (swapped whole) and the
//! long-lived parts that outlive a snapshot (upstream health, certificates).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use routes::RouteTable;

use crate::data::upstream::{Pool, Registry};

/// One generation of the routing table with its upstream pools. Immutable: a reload
/// builds a new one and stores it with one atomic swap; requests that already loaded
/// the old one finish on it.
#[derive(Debug)]
pub struct Snapshot {
    pub table: RouteTable,
    /// Route id -> its pool.
    pub pools: HashMap<String, Arc<Pool>>,
    pub generation: u64,
}

/// Everything the request path and the background services share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub certs: certs::CertManager,
    /// ACME HTTP-01 answers: token -> key authorization (filled by the ACME client).
    pub http01: ArcSwap<HashMap<String, String>>,
    /// Port to put in http->https redirects; `None` for 443.
    pub redirect_port: Option<u16>,
    /// The ACME client, when `--acme-directory` is given (set once at start).
    pub acme: std::sync::OnceLock<Arc<acme::Manager>>,
    /// Client-caused failures, counted instead of logged (`client_errors.rs`).
    pub client_errors: Arc<crate::data::client_errors::ClientErrors>,
    /// Upstream failures by (route id, upstream address): the first logged at once,
    /// the others summed up once per interval (`logging.rs`).
    pub upstream_failures: Arc<crate::observe::logging::Repeats<(String, String)>>,
    /// Served == stored: the findings of `control/served.rs`.
    pub served: Arc<crate::observe::served::ServedChecks>,
}

impl Shared {
    pub fn new(
        table: RouteTable,
        certs: certs::CertManager,
        redirect_port: Option<u16>,
    ) -> Arc<Shared> {
        let registry = Registry::default();
        let snapshot = build_snapshot(table, 1, &registry, None);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            certs,
            http01: ArcSwap::from_pointee(HashMap::new()),
            redirect_port,
            acme: std::sync::OnceLock::new(),
            client_errors: Default::default(),
            upstream_failures: Default::default(),
            served: Default::default(),
        })
    }

    /// Install a new validated table (metrics' handles for new route ids are made by the
    /// caller before, see `control/reload.rs`): pools of unchanged routes are kept (with their
    /// members and health), then the whole snapshot is swapped at once. Returns the new
    /// generation and the snapshot it replaced (for the caller to free where it suits).
    pub fn install(&self, table: RouteTable) -> (u64, Arc<Snapshot>) {
        let old = self.snapshot.load_full();
        let generation = old.generation + 1;
        let snapshot = build_snapshot(table, generation, &self.registry, Some(&old));
        drop(old);
        let replaced = self.snapshot.swap(Arc::new(snapshot));
        (generation, replaced)
    }

    /// Free a snapshot that [`Shared::install`] replaced, then forget the backends that
    /// no pool holds any more (those only the old table used). Not on a reload's
    /// critical path: see `control.rs`. Backends that requests still in flight on the
    /// old table hold stay until a later prune.
    pub fn retire(&self, replaced: Arc<Snapshot>) {
        drop(replaced);
        self.registry.prune_unused();
    }
}

fn build_snapshot(
    table: RouteTable,
    generation: u64,
    registry: &Registry,
    previous: Option<&Snapshot>,
) -> Snapshot {
    let pools = table
        .routes
        .iter()
        .map(|route| {
            let kept = previous
                .and_then(|s| s.pools.get(&route.id))
                .filter(|p| p.fits(route))
                .cloned();
            let pool = kept.unwrap_or_else(|| Arc::new(Pool::new(route, registry)));
            (route.id.clone(), pool)
        })
        .collect();
    Snapshot {
        table,
        pools,
        generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RouteTable {
        routes::parse("t.toml", text).unwrap()
    }

    #[test]
    fn install_keeps_unchanged_pools_with_their_health_and_retire_forgets_the_rest() {
        let dir = std::env::temp_dir().join(format!("proxyd-state-test-{}", std::process::id()));
        let store = certs::Store::open(&dir).unwrap();
        let certs = certs::CertManager::new(store, None, Arc::new(certs::CertResolver::new()));
        let a = r#"
[[route]]
name = "keep"
hosts = ["keep.test"]
upstreams = ["127.0.0.1:1"]
[[route]]
name = "move"
hosts = ["move.test"]
upstreams = ["127.0.0.1:2"]
"#;
        let shared = Shared::new(table(a), certs, None);
        let first = shared.snapshot.load_full();
        let keep = first.pools["keep"].clone();
        let down = keep.members()[0].clone();
        down.report_connect_failure();
        let moved = Arc::downgrade(&first.pools["move"].members()[0]);
        drop(first);

        let (generation, replaced) = shared.install(table(&a.replace(":2\"", ":3\"")));
        assert_eq!((generation, replaced.generation), (2, 1));
        let now = shared.snapshot.load_full();
        assert_eq!(now.generation, 2);
        assert!(
            Arc::ptr_eq(&now.pools["keep"], &keep),
            "an unchanged route keeps its pool"
        );
        assert!(
            !now.pools["keep"].members()[0].is_healthy(),
            "and its health"
        );
        assert_eq!(now.pools["move"].members()[0].addr.port(), 3);
        // The replaced snapshot holds the old backend until it is retired; then the
        // registry forgets it, and keeps the backends the new table uses.
        assert!(moved.upgrade().is_some());
        shared.retire(replaced);
        assert!(moved.upgrade().is_none());
        assert!(Arc::ptr_eq(
            &shared.registry.get_or_create(down.addr),
            &down
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
