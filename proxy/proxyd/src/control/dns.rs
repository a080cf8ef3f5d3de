//! Upstream names resolved in the background with hickory-resolver, against the
//! configured name servers (`--dns-server`, default: /etc/resolv.conf).
//!
//! One background service for all pools: each name of the current snapshot is looked
//! up when its last answer's TTL runs out (at least [`MIN_TTL`], at most [`MAX_TTL`]
//! later), [`RETRY`] after a failure, and at once when a reload brings a new name. The
//! answers go into the [`Registry`](crate::data::upstream::Registry), and every pool with names
//! republishes its members when they change: new connections go to the new addresses
//! with no reload. While a name does not resolve, its pools use its `fallback` addresses
//! (or, without fallback, its last answer). Nothing here is on the request path, and
//! no start or reload ever waits for DNS.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::data::state::Shared;

/// Shortest time an answer is used before it is asked again (TTL 0 included).
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest time an answer is used, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Time before a failed lookup is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// Give up on one lookup (all servers and attempts) after this long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the service looks for due names and new ones (after a reload).
const TICK: Duration = Duration::from_millis(250);

/// The resolver: `servers` (UDP and TCP, port given or 53), or the system's
/// configuration (/etc/resolv.conf) when empty.
pub fn resolver(servers: &[SocketAddr]) -> anyhow::Result<TokioResolver> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider).context("reading the system DNS configuration")?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            provider,
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // The resolver's cache must not hold an answer longer than we would.
    opts.positive_max_ttl = Some(MAX_TTL);
    opts.negative_max_ttl = Some(RETRY);
    builder.build().context("building the DNS resolver")
}

/// When to look a name up again after an answer valid until `valid_until`.
pub fn next_lookup(now: Instant, valid_until: Instant) -> Instant {
    now + valid_until
        .saturating_duration_since(now)
        .clamp(MIN_TTL, MAX_TTL)
}

type Answer = Result<(Vec<IpAddr>, Instant), String>;

/// The background service. Without a resolver (the system configuration could not be
/// read), every name counts as failing: routes use their fallback addresses.
pub struct DnsService {
    pub shared: Arc<Shared>,
    pub resolver: Option<TokioResolver>,
}

#[async_trait]
impl BackgroundService for DnsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Answer)>();
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some((name, answer)) = rx.recv() => {
                    in_flight.remove(&name);
                    let next = self.record(&name, answer);
                    due.insert(name, next);
                }
                _ = shutdown.changed() => return,
            }
            let snapshot = self.shared.snapshot.load_full();
            let names: BTreeSet<String> = snapshot
                .pools
                .values()
                .flat_map(|p| p.names().map(str::to_string).collect::<Vec<_>>())
                .collect();
            due.retain(|n, _| names.contains(n));
            self.shared.registry.retain_names(&names);

            let now = Instant::now();
            for name in &names {
                if in_flight.contains(name) || due.get(name).is_some_and(|t| *t > now) {
                    continue;
                }
                let Some(resolver) = &self.resolver else {
                    let next = self.record(name, Err("no DNS resolver".into()));
                    due.insert(name.clone(), next);
                    continue;
                };
                in_flight.insert(name.clone());
                let (resolver, tx, name) = (resolver.clone(), tx.clone(), name.clone());
                tokio::spawn(async move {
                    let answer = lookup(&resolver, &name).await;
                    let _ = tx.send((name, answer));
                });
            }

            // Publish: each pool with names compares and stores only on change (a
            // reload's new pools are covered on the next tick at the latest).
            let mut changed = false;
            for pool in snapshot.pools.values().filter(|p| p.has_names()) {
                changed |= pool.update_members(&self.shared.registry);
            }
            if changed {
                self.shared.registry.prune_unused();
            }
        }
    }
}

async fn lookup(resolver: &TokioResolver, name: &str) -> Answer {
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name)).await {
        Ok(Ok(found)) => {
            let mut ips: Vec<IpAddr> = found.iter().collect();
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                Err("no A or AAAA record".into())
            } else {
                Ok((ips, found.valid_until()))
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
    }
}

impl DnsService {
    /// Store an answer or a failure; log changes (not every repeat). Returns when to
    /// look the name up again.
    fn record(&self, name: &str, answer: Answer) -> Instant {
        let now = Instant::now();
        let registry = &self.shared.registry;
        match answer {
            Ok((ips, valid_until)) => {
                let next = next_lookup(now, valid_until);
                let previous = registry.record_answer(name, ips.clone());
                let state = registry.name_state(name);
                match previous {
                    Some(p) if p.failing => tracing::info!(
                        name, addrs = ?ips, "upstream name resolves again"
                    ),
                    Some(p) if Some(&p) == state.as_ref() => {}
                    _ => tracing::info!(
                        name, addrs = ?ips, ttl_s = (next - now).as_secs(), "upstream name resolved"
                    ),
                }
                next
            }
            Err(why) => {
                let previous = registry.record_failure(name);
                if !previous.is_some_and(|p| p.failing) {
                    tracing::warn!(
                        name,
                        error = %why,
                        "cannot resolve upstream name: its routes use its fallback addresses (or its last answer) until it resolves"
                    );
                } else {
                    tracing::debug!(name, error = %why, "upstream name still does not resolve");
                }
                now + RETRY
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_clamped() {
        let now = Instant::now();
        assert_eq!(next_lookup(now, now), now + MIN_TTL);
        assert_eq!(
            next_lookup(now, now + Duration::from_secs(30)),
            now + Duration::from_secs(30)
        );
        assert_eq!(
            next_lookup(now, now + Duration::from_secs(86_400)),
            now + MAX_TTL
        );
        assert_eq!(
            next_lookup(now + Duration::from_secs(5), now),
            now + Duration::from_secs(5) + MIN_TTL
        );
    }
}
