//! What metrics and the access log add to each request, measured in process: the work
//! `Proxy::request_filter` (one handle lookup) and `Proxy::logging` (counters, histograms,
//! one formatted line handed to the writer) do per request. The writer thread's own cost
//! (write syscalls, batched) and the effect on a whole proxy are measured by
//! `benches/observability.sh`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use benches::{routes_toml, sample};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use proxyd::observe::access_log::{AccessLog, Entry, Format};
use proxyd::observe::metrics::{Metrics, RequestSample};

/// Route ids walked in turn, so the handle map is not one hot cache line.
const QUERIES: usize = 4096;

fn metrics(c: &mut Criterion) {
    let g = routes_toml(1_000);
    let table = routes::parse("gen.toml", &g.toml).expect("generated table is valid");
    let m = Metrics::new();
    m.sync_routes(&table);
    let ids: Vec<String> = table.routes.iter().map(|r| r.id.clone()).collect();
    let ids = sample(&ids, QUERIES, 7);
    let s = RequestSample {
        status: 200,
        duration: Duration::from_micros(840),
        upstream: Some(Duration::from_micros(610)),
        bytes_in: 0,
        bytes_out: 5_120,
        upgraded: false,
    };

    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("route_handle_lookup", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            m.route(black_box(&ids[i]))
        })
    });
    let one = m.route(&ids[0]);
    group.bench_function("observe_one_request", |b| {
        b.iter(|| one.observe(black_box(&s)))
    });
    group.bench_function("lookup_and_observe", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            m.route(black_box(&ids[i])).observe(black_box(&s))
        })
    });
    group.finish();
}

fn access_log(c: &mut Criterion) {
    let client = Some("203.0.113.7".parse().unwrap());
    let upstream = Some("10.20.0.5:8080".parse().unwrap());
    let entry = Entry {
        client,
        host: "cloud.example.org",
        method: "GET",
        path: "/remote.php/dav/files/alice/Documents/report.odt",
        query: Some("v=3"),
        protocol: "HTTP/2",
        status: 200,
        bytes_in: 0,
        bytes_out: 48_213,
        duration: Duration::from_micros(12_840),
        upstream_time: Some(Duration::from_micros(11_920)),
        upstream,
        route: Some("cloud.example.org/"),
        tls: Some("TLSv1.3"),
        alpn: Some("h2"),
        local: None,
        referer: Some("https://cloud.example.org/apps/files/"),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    };
    let mut group = c.benchmark_group("access_log");
    group.throughput(Throughput::Elements(1));
    for (name, format) in [("json", Format::Json), ("combined", Format::Combined)] {
        // /dev/null: the request path's share (format + queue); a real file only adds
        // work on the writer thread.
        let (log, writer) = AccessLog::start(
            format,
            Some("/dev/null".into()),
            proxyd::observe::access_log::DEFAULT_QUEUE_BYTES,
        )
        .expect("access log to /dev/null");
        writer.spawn();
        let log = Arc::new(log);
        group.bench_function(name, |b| b.iter(|| log.log(black_box(&entry))));
        log.flush(Duration::from_secs(5));
        assert_eq!(
            log.dropped_total(),
            0,
            "the writer fell behind: the figure would be the cost of dropping"
        );
    }
    group.finish();
}

criterion_group!(benches, metrics, access_log);
criterion_main!(benches);
