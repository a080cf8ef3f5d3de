//! Route lookup and routes-file parsing at 10, 1 000 and 100 000 names.
//!
//! `lookup/*` is what every request does (after `parse_request_host`); `parse/*` is what a
//! start or a reload does: TOML, validation of every value, and building the maps.

use std::hint::black_box;
use std::time::Duration;

use benches::{routes_toml, sample};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 3] = [10, 1_000, 100_000];
/// Queries per kind, walked in turn so a big table is not one hot cache line.
const QUERIES: usize = 4096;

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let g = routes_toml(n);
        let table = routes::parse("gen.toml", &g.toml).expect("generated table is valid");
        let kinds: Vec<(&str, Vec<(String, &str)>)> = vec![
            // exact host, `/` route: the common case
            (
                "exact",
                sample(&g.exact, QUERIES, 1)
                    .into_iter()
                    .map(|h| (h, "/index.html"))
                    .collect(),
            ),
            // exact host with three prefixes; the longest (`/api`) wins
            (
                "exact_prefix",
                sample(&g.prefixed, QUERIES, 2)
                    .into_iter()
                    .map(|h| (h, "/api/v1/users/42"))
                    .collect(),
            ),
            // no exact entry, found through `*.parent`
            (
                "wildcard",
                sample(&g.wildcard, QUERIES, 3)
                    .into_iter()
                    .map(|s| (format!("app.{s}"), "/"))
                    .collect(),
            ),
            // unknown host: both maps probed
            (
                "miss",
                sample(&g.exact, QUERIES, 4)
                    .into_iter()
                    .map(|h| (format!("x{h}"), "/"))
                    .collect(),
            ),
        ];
        for (kind, queries) in &kinds {
            let expect_hit = *kind != "miss";
            for (h, p) in queries {
                assert_eq!(table.lookup(h, p).is_some(), expect_hit, "{kind} {h}{p}");
            }
            group.bench_with_input(BenchmarkId::new(*kind, n), queries, |b, q| {
                let mut i = 0;
                b.iter(|| {
                    let (h, p) = &q[i % QUERIES];
                    i += 1;
                    black_box(table.lookup(black_box(h), black_box(p)))
                })
            });
        }
        // What the proxy does per request: check and normalise the Host header, then
        // look up.
        let raw: Vec<String> = sample(&g.exact, QUERIES, 5)
            .into_iter()
            .map(|h| format!("{h}:443"))
            .collect();
        group.bench_with_input(BenchmarkId::new("normalize+exact", n), &raw, |b, q| {
            let mut i = 0;
            b.iter(|| {
                let h = routes::parse_request_host(&q[i % QUERIES]).expect("valid host");
                i += 1;
                black_box(table.lookup(&h.name, "/index.html"))
            })
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for n in SIZES {
        let g = routes_toml(n);
        group.throughput(Throughput::Bytes(g.toml.len() as u64));
        if n >= 100_000 {
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(20));
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &g.toml, |b, text| {
            b.iter(|| routes::parse("gen.toml", black_box(text)).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, parse);
criterion_main!(benches);
