//! Upstreams: per-route pools of backends, load balancing, and health checks.
//!
//! Health state lives in [`Registry`], keyed by socket address, and outlives route
//! tables: a reload that keeps an upstream keeps its health. So do the addresses of
//! upstream names, which the DNS service (`dns.rs`) keeps in the registry; a pool's
//! members are its IP upstreams plus, for each name, its current addresses (or its
//! fallback addresses while it does not resolve), republished whenever they change. The
//! request path only reads: one `ArcSwap` load of a pool's member list and a few
//! atomics.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use routes::{HealthCheck, LbPolicy, Route, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Consecutive failed checks that take a backend out.
const FALL: u32 = 2;

/// One upstream address and its health.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    fails: AtomicU32,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        // Optimistic: a new backend takes traffic until a check says otherwise.
        Backend {
            addr,
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A request could not connect: take the backend out now; the active check puts it
    /// back (passive health, like nginx's `max_fails=1`).
    pub fn report_connect_failure(&self) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(upstream = %self.addr, "upstream down: connection failed");
        }
        self.fails.fetch_add(1, Ordering::Relaxed);
    }

    fn record_check(&self, ok: bool, why: &str) {
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            if !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(upstream = %self.addr, "upstream back: health check passed");
            }
        } else {
            let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if fails >= FALL && self.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.addr, reason = why, "upstream down: health check failed");
            }
        }
    }
}

/// Every backend in use, by address, and what DNS last said about each upstream name.
/// Control plane only (never on the request path).
#[derive(Debug, Default)]
pub struct Registry {
    backends: Mutex<HashMap<SocketAddr, Arc<Backend>>>,
    names: Mutex<HashMap<String, NameState>>,
}

/// The DNS state of one upstream name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameState {
    /// The addresses of the last successful answer, sorted (empty before the first).
    pub addrs: Vec<IpAddr>,
    /// The last lookup failed (error, timeout, or no address).
    pub failing: bool,
}

impl Registry {
    pub fn get_or_create(&self, addr: SocketAddr) -> Arc<Backend> {
        let mut map = certs::util::lock(&self.backends);
        map.entry(addr)
            .or_insert_with(|| Arc::new(Backend::new(addr)))
            .clone()
    }

    /// Forget backends that nothing holds but this map: addresses DNS moved away from,
    /// and, after a reload, those only the replaced table used (`Shared::retire`).
    /// Safe against a concurrent reload: a pool takes its backends under the same lock.
    pub fn prune_unused(&self) {
        let mut map = certs::util::lock(&self.backends);
        map.retain(|_, b| Arc::strong_count(b) > 1);
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, NameState>> {
        certs::util::lock(&self.names)
    }

    pub fn name_state(&self, name: &str) -> Option<NameState> {
        self.names().get(name).cloned()
    }

    /// A successful answer (`addrs` non-empty). Returns the previous state.
    pub fn record_answer(&self, name: &str, mut addrs: Vec<IpAddr>) -> Option<NameState> {
        addrs.sort();
        addrs.dedup();
        self.names().insert(
            name.to_string(),
            NameState {
                addrs,
                failing: false,
            },
        )
    }

    /// A failed lookup: the last answer is kept (for names without fallback). Returns
    /// the previous state.
    pub fn record_failure(&self, name: &str) -> Option<NameState> {
        let mut names = self.names();
        let previous = names.get(name).cloned();
        let state = names.entry(name.to_string()).or_default();
        state.failing = true;
        previous
    }

    /// Forget the names no route uses any more.
    pub fn retain_names(&self, in_use: &BTreeSet<String>) {
        self.names().retain(|name, _| in_use.contains(name));
    }
}

/// The backends of one route and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    pub route_id: String,
    pub specs: Vec<Upstream>,
    pub lb: LbPolicy,
    pub health: HealthCheck,
    /// `Host` sent with HTTP health checks: the route's main name.
    pub health_host: String,
    pub check_timeout: Duration,
    members: ArcSwap<Vec<Arc<Backend>>>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool for `route`: its IP upstreams, and for each name the addresses DNS last
    /// gave (or its fallback addresses, before the first answer or while it fails).
    /// Never resolves anything: a name that does not resolve does not hold up a start
    /// or a reload.
    pub fn new(route: &Route, registry: &Registry) -> Pool {
        let members = addresses(&route.upstreams, registry)
            .into_iter()
            .map(|a| registry.get_or_create(a))
            .collect();
        Pool {
            route_id: route.id.clone(),
            specs: route.upstreams.clone(),
            lb: route.lb,
            health: route.policy.health_check.clone(),
            health_host: route
                .hosts
                .first()
                .map(|h| h.to_string())
                .unwrap_or_default(),
            check_timeout: route
                .policy
                .connect_timeout
                .min(route.policy.health_check.interval),
            members: ArcSwap::from_pointee(members),
            // Round-robin starts at the first member; random at a random point of its
            // sequence (from the one source of randomness), so that two pools, or two
            // runs, do not pick in the same order.
            next: AtomicUsize::new(match route.lb {
                LbPolicy::Random => certs::util::random_u64() as usize,
                _ => 0,
            }),
        }
    }

    /// Whether this pool can serve `route` unchanged (same upstreams and checks), so a
    /// reload may keep it, and with it its members and their health.
    pub fn fits(&self, route: &Route) -> bool {
        self.specs == route.upstreams
            && self.lb == route.lb
            && self.health == route.policy.health_check
            && self.check_timeout
                == route
                    .policy
                    .connect_timeout
                    .min(route.policy.health_check.interval)
    }

    pub fn members(&self) -> Arc<Vec<Arc<Backend>>> {
        self.members.load_full()
    }

    pub fn has_names(&self) -> bool {
        self.specs
            .iter()
            .any(|u| matches!(u, Upstream::Name { .. }))
    }

    /// The upstream names of this pool.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().filter_map(|u| match u {
            Upstream::Name { host, .. } => Some(host.as_str()),
            Upstream::Addr(_) => None,
        })
    }

    /// Recompute the members from the registry's name states and publish them (one
    /// atomic store) if they changed: new connections go to the new addresses, requests
    /// in flight keep theirs. Returns whether they changed.
    pub fn update_members(&self, registry: &Registry) -> bool {
        let addrs = addresses(&self.specs, registry);
        let old = self.members.load();
        if addrs.len() == old.len() && addrs.iter().zip(old.iter()).all(|(a, b)| *a == b.addr) {
            return false;
        }
        tracing::info!(route = %self.route_id, addrs = ?addrs, "upstream addresses changed");
        let members = addrs
            .into_iter()
            .map(|a| registry.get_or_create(a))
            .collect();
        self.members.store(Arc::new(members));
        true
    }

    /// Choose a backend: healthy ones first, skipping those already tried for this
    /// request; when every untried one is marked down, try one anyway rather than fail
    /// without trying.
    pub fn select(&self, client: Option<IpAddr>, tried: &[SocketAddr]) -> Option<Arc<Backend>> {
        let members = self.members.load();
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = match self.lb {
            LbPolicy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
            LbPolicy::Random => random_index(&self.next),
            LbPolicy::IpHash => client.map_or(0, |ip| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                ip.hash(&mut h);
                h.finish() as usize
            }),
        };
        let mut candidates = (0..n).map(|i| &members[(start.wrapping_add(i)) % n]);
        let untried = |b: &&Arc<Backend>| !tried.contains(&b.addr);
        candidates
            .clone()
            .filter(untried)
            .find(|b| b.is_healthy())
            .or_else(|| candidates.find(untried))
            .cloned()
    }
}

fn random_index(seed: &AtomicUsize) -> usize {
    // splitmix64 over a shared counter seeded by `certs::util::random_u64` (Pool::new):
    // no system call per request, lock-free, good enough to spread load.
    let mut z = (seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) as u64)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as usize
}

/// The addresses of `specs`, in order, without duplicates: IP upstreams as written;
/// a name's current addresses; while it has none (before its first answer) or its
/// lookups fail, its fallback addresses, or without fallback the last answer's.
fn addresses(specs: &[Upstream], registry: &Registry) -> Vec<SocketAddr> {
    let names = registry.names();
    let mut out: Vec<SocketAddr> = Vec::new();
    for spec in specs {
        match spec {
            Upstream::Addr(a) => out.push(*a),
            Upstream::Name {
                host,
                port,
                fallback,
            } => {
                let ips: &[IpAddr] = match names.get(host) {
                    Some(s) if !s.failing && !s.addrs.is_empty() => &s.addrs,
                    Some(s) if fallback.is_empty() => &s.addrs,
                    _ => fallback,
                };
                out.extend(ips.iter().map(|ip| SocketAddr::new(*ip, *port)));
            }
        }
    }
    let mut seen = HashSet::new();
    out.retain(|a| seen.insert(*a));
    out
}

/// The check of one backend, from the first pool that uses it.
struct CheckPlan {
    backend: Arc<Backend>,
    http_path: Option<String>,
    host: String,
    timeout: Duration,
}

/// Runs the due health checks of every backend of `pools`, concurrently.
/// `last` remembers when each address was checked.
///
/// Called every tick with every pool of the table: a tick where nothing is due only
/// walks the pools into one map of addresses (no strings copied, no check planned).
pub async fn run_checks<'a>(
    pools: impl Iterator<Item = &'a Arc<Pool>>,
    last: &mut HashMap<SocketAddr, Instant>,
) {
    // Per address: the shortest interval of the pools that use it, and the first pool.
    let mut seen: HashMap<SocketAddr, (Duration, &'a Arc<Pool>, Arc<Backend>)> =
        HashMap::with_capacity(last.len());
    for pool in pools {
        for b in pool.members().iter() {
            seen.entry(b.addr)
                .and_modify(|(interval, _, _)| *interval = (*interval).min(pool.health.interval))
                .or_insert_with(|| (pool.health.interval, pool, b.clone()));
        }
    }
    last.retain(|addr, _| seen.contains_key(addr));
    let now = Instant::now();
    let mut due = Vec::new();
    for (addr, (interval, pool, backend)) in seen {
        if last
            .get(&addr)
            .is_none_or(|t| now.duration_since(*t) >= interval)
        {
            last.insert(addr, now);
            due.push(CheckPlan {
                backend,
                http_path: pool.health.http_path.clone(),
                host: pool.health_host.clone(),
                timeout: pool.check_timeout,
            });
        }
    }
    let checks = due.into_iter().map(|p| async move {
        let result = tokio::time::timeout(p.timeout, check(&p)).await;
        let (ok, why) = match result {
            Ok(Ok(())) => (true, String::new()),
            Ok(Err(e)) => (false, e),
            Err(_) => (false, "timed out".to_string()),
        };
        p.backend.record_check(ok, &why);
    });
    futures_join_all(checks).await;
}

async fn check(p: &CheckPlan) -> Result<(), String> {
    let mut stream = TcpStream::connect(p.backend.addr)
        .await
        .map_err(|e| e.to_string())?;
    let Some(path) = &p.http_path else {
        return Ok(());
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: proxyd-health-check\r\nConnection: close\r\n\r\n",
        p.host
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = stream
            .read(&mut buf[n..])
            .await
            .map_err(|e| e.to_string())?;
        if got == 0 {
            break;
        }
        n += got;
    }
    // "HTTP/1.1 200 ..."
    let status = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status line".to_string())?;
    if status < 500 {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(addrs: &[&str], lb: LbPolicy) -> (Pool, Registry) {
        let reg = Registry::default();
        let text = format!(
            "[[route]]\nhosts=[\"a.test\"]\nupstreams=[{}]\nlb=\"{}\"\n",
            addrs
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(","),
            match lb {
                LbPolicy::RoundRobin => "round_robin",
                LbPolicy::Random => "random",
                LbPolicy::IpHash => "ip_hash",
            }
        );
        let table = routes::parse("t.toml", &text).unwrap();
        (Pool::new(&table.routes[0], &reg), reg)
    }

    #[test]
    fn round_robin_skips_unhealthy_and_tried() {
        let (p, _reg) = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            LbPolicy::RoundRobin,
        );
        let picks: Vec<u16> = (0..6)
            .map(|_| p.select(None, &[]).unwrap().addr.port())
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        p.members()[1].report_connect_failure();
        let picks: HashSet<u16> = (0..6)
            .map(|_| p.select(None, &[]).unwrap().addr.port())
            .collect();
        assert_eq!(picks, HashSet::from([1, 3]));
        let tried = [
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
        ];
        // Only the unhealthy one is left untried: it is tried rather than failing outright.
        assert_eq!(p.select(None, &tried).unwrap().addr.port(), 2);
        let all: Vec<SocketAddr> = p.members().iter().map(|b| b.addr).collect();
        assert!(p.select(None, &all).is_none());
    }

    #[test]
    fn ip_hash_is_sticky() {
        let (p, _reg) = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            LbPolicy::IpHash,
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = p.select(Some(ip), &[]).unwrap().addr;
        for _ in 0..10 {
            assert_eq!(p.select(Some(ip), &[]).unwrap().addr, first);
        }
    }

    #[test]
    fn random_spreads() {
        let (p, _reg) = pool(&["127.0.0.1:1", "127.0.0.1:2"], LbPolicy::Random);
        let picks: HashSet<u16> = (0..64)
            .map(|_| p.select(None, &[]).unwrap().addr.port())
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn random_pools_start_at_random_points() {
        // Seeded from the one source of randomness: two pools (or two runs) over the
        // same members do not pick in the same order.
        let members = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
        let picks = || {
            let (p, _reg) = pool(&members, LbPolicy::Random);
            (0..64)
                .map(|_| p.select(None, &[]).unwrap().addr.port())
                .collect::<Vec<_>>()
        };
        assert_ne!(picks(), picks());
    }

    fn addrs(p: &Pool) -> Vec<String> {
        p.members().iter().map(|b| b.addr.to_string()).collect()
    }

    #[test]
    fn names_use_their_answer_else_their_fallback_else_their_last_answer() {
        let reg = Registry::default();
        let text = r#"
[[route]]
hosts = ["a.test"]
upstreams = [
    "10.0.0.1:80",
    { name = "with.fallback", port = 81, fallback = ["10.0.0.9", "fd00::9"] },
    { name = "without.fallback", port = 82 },
]
"#;
        let table = routes::parse("t.toml", text).unwrap();
        // Before any answer: the fallback addresses, and nothing for the other name.
        let p = Pool::new(&table.routes[0], &reg);
        assert_eq!(addrs(&p), ["10.0.0.1:80", "10.0.0.9:81", "[fd00::9]:81"]);
        assert!(!p.update_members(&reg));

        reg.record_answer(
            "with.fallback",
            vec!["10.0.0.3".parse().unwrap(), "10.0.0.2".parse().unwrap()],
        );
        reg.record_answer("without.fallback", vec!["10.0.0.4".parse().unwrap()]);
        assert!(p.update_members(&reg));
        assert_eq!(
            addrs(&p),
            ["10.0.0.1:80", "10.0.0.2:81", "10.0.0.3:81", "10.0.0.4:82"]
        );
        // A reload builds its pools from the same answers.
        assert_eq!(addrs(&Pool::new(&table.routes[0], &reg)), addrs(&p));

        // DNS fails: the fallback where there is one, the last answer where not.
        reg.record_failure("with.fallback");
        reg.record_failure("without.fallback");
        assert!(p.update_members(&reg));
        assert_eq!(
            addrs(&p),
            ["10.0.0.1:80", "10.0.0.9:81", "[fd00::9]:81", "10.0.0.4:82"]
        );

        // Health survives: the same address is the same backend.
        let before = p.members()[0].clone();
        reg.record_answer("with.fallback", vec!["10.0.0.5".parse().unwrap()]);
        assert!(p.update_members(&reg));
        assert!(Arc::ptr_eq(&before, &p.members()[0]));
        // Backends nobody uses any more are forgotten.
        reg.prune_unused();
        assert_eq!(reg.backends.lock().unwrap().len(), 3);
        reg.retain_names(&BTreeSet::from(["with.fallback".to_string()]));
        assert_eq!(reg.name_state("without.fallback"), None);
    }

    #[tokio::test]
    async fn checks_take_out_and_put_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (p, _reg) = pool(&[&addr.to_string()], LbPolicy::RoundRobin);
        let pools = [Arc::new(p)];
        let mut last = HashMap::new();
        run_checks(pools.iter(), &mut last).await;
        assert!(pools[0].members()[0].is_healthy());
        drop(listener);
        for _ in 0..FALL {
            last.clear();
            run_checks(pools.iter(), &mut last).await;
        }
        assert!(!pools[0].members()[0].is_healthy());
        let _listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        last.clear();
        run_checks(pools.iter(), &mut last).await;
        assert!(pools[0].members()[0].is_healthy());
    }
}
