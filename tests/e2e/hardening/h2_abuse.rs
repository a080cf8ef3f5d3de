//! HTTP/2 floods, written frame by frame: rapid reset, CONTINUATION flood, SETTINGS and
//! PING floods, too many streams. Each must cost the proxy bounded CPU and memory
//! (read from /proc), reach the upstream a bounded number of times, and leave other
//! clients served.

use std::time::{Duration, Instant};

use tests::hostile::cpu_time;
use tests::hostile::h2::{self, frame, get, header_block, Conn};
use tests::{Backend, Proxy};

use super::others_are_served;
use crate::one_route;

/// What an attack cost the proxy.
struct Cost {
    cpu: Duration,
    rss_growth_kib: i64,
    /// CPU used in the second after the attack ended (lingering work).
    cpu_after: Duration,
}

/// Run `attack` (a future does nothing until awaited) and measure the proxy meanwhile.
async fn measure<T>(proxy: &Proxy, attack: impl std::future::Future<Output = T>) -> (Cost, T) {
    let pid = proxy.pid();
    let rss_before = proxy.mem().rss_kib as i64;
    let cpu_before = cpu_time(pid);
    let out = attack.await;
    let cpu_end = cpu_time(pid);
    let rss_after = proxy.mem().rss_kib as i64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cost = Cost {
        cpu: cpu_end - cpu_before,
        rss_growth_kib: rss_after - rss_before,
        cpu_after: cpu_time(pid) - cpu_end,
    };
    (cost, out)
}

fn assert_bounded(name: &str, cost: &Cost, max_cpu: Duration) {
    eprintln!(
        "{name}: proxy CPU {:?}, RSS growth {} KiB, CPU in the second after {:?}",
        cost.cpu, cost.rss_growth_kib, cost.cpu_after
    );
    assert!(
        cost.cpu < max_cpu,
        "{name}: the attack cost {:?} of CPU",
        cost.cpu
    );
    assert!(
        cost.rss_growth_kib < 64 * 1024,
        "{name}: RSS grew by {} KiB",
        cost.rss_growth_kib
    );
    assert!(
        cost.cpu_after < Duration::from_millis(300),
        "{name}: the proxy kept working after the attack ({:?} in 1 s)",
        cost.cpu_after
    );
}

async fn setup() -> (Backend, Proxy) {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_route(&["a.test"], &a, "")).await;
    (a, proxy)
}

/// Write `frames` in batches until done or the proxy closes the connection; then read
/// what it said. Returns (frames read, closed by the proxy, batches written).
async fn flood(
    conn: &mut Conn,
    batches: usize,
    batch: impl Fn(usize) -> Vec<u8>,
) -> (Vec<h2::Frame>, bool, usize) {
    let mut written = 0;
    for i in 0..batches {
        if conn.send(&batch(i)).await.is_err() {
            break;
        }
        written += 1;
    }
    let (frames, closed) = conn.read_until_closed(Duration::from_secs(3)).await;
    (frames, closed, written)
}

fn goaway_code(frames: &[h2::Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == h2::GOAWAY)
        .and_then(|f| f.error_code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_bounded() {
    let (a, proxy) = setup().await;
    let mut conn = Conn::open(proxy.https_addr(), &proxy.ca_pem(), "a.test")
        .await
        .unwrap();
    const PAIRS: usize = 20_000;
    let (cost, (frames, closed, batches)) = measure(
        &proxy,
        flood(&mut conn, PAIRS / 100, |b| {
            let mut out = Vec::new();
            for i in 0..100 {
                let id = 2 * (b * 100 + i) as u32 + 1;
                out.extend(frame(
                    h2::HEADERS,
                    h2::END_HEADERS | h2::END_STREAM,
                    id,
                    &get("a.test", "/rapid-reset"),
                ));
                out.extend(frame(h2::RST_STREAM, 0, id, &h2::CANCEL.to_be_bytes()));
            }
            out
        }),
    )
    .await;
    eprintln!(
        "rapid reset: wrote {} of {PAIRS} HEADERS+RST pairs; closed {closed}, GOAWAY {:?}; upstream got {} requests",
        batches * 100,
        goaway_code(&frames),
        a.requests()
    );
    assert!(closed, "the proxy kept a rapid-reset connection open");
    assert!(
        a.requests() < 2_000,
        "{} of {PAIRS} reset requests reached the upstream",
        a.requests()
    );
    assert_bounded("rapid reset", &cost, Duration::from_secs(3));
    others_are_served(&proxy, "a.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off_with_bounded_memory() {
    let (a, proxy) = setup().await;
    let mut conn = Conn::open(proxy.https_addr(), &proxy.ca_pem(), "a.test")
        .await
        .unwrap();
    // One header of 16 KiB per CONTINUATION frame, never END_HEADERS: 160 MiB offered.
    let value = "v".repeat(16 * 1024 - 32);
    let block = header_block(&[("x-flood", &value)]);
    let (cost, (frames, closed, batches)) = measure(
        &proxy,
        flood(&mut conn, 10_000, |i| {
            if i == 0 {
                frame(h2::HEADERS, 0, 1, &get("a.test", "/continuation"))
            } else {
                frame(h2::CONTINUATION, 0, 1, &block)
            }
        }),
    )
    .await;
    eprintln!(
        "CONTINUATION flood: wrote {batches} frames ({} KiB); closed {closed}, GOAWAY {:?}",
        batches * 16,
        goaway_code(&frames)
    );
    assert!(closed, "the proxy kept a CONTINUATION flood open");
    assert!(
        batches < 10_000,
        "the proxy read 160 MiB of one header block"
    );
    assert_eq!(a.requests(), 0);
    assert_bounded("CONTINUATION flood", &cost, Duration::from_secs(2));
    others_are_served(&proxy, "a.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_cost_bounded_cpu_and_memory() {
    let (_a, proxy) = setup().await;
    for (name, kind) in [("SETTINGS", h2::SETTINGS), ("PING", h2::PING)] {
        let mut conn = Conn::open(proxy.https_addr(), &proxy.ca_pem(), "a.test")
            .await
            .unwrap();
        let one = if kind == h2::PING {
            frame(h2::PING, 0, 0, &[7u8; 8])
        } else {
            // A real setting each time (INITIAL_WINDOW_SIZE = 65535): work to apply.
            frame(h2::SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])
        };
        let batch: Vec<u8> = one.repeat(1000);
        let started = Instant::now();
        // 200 000 frames, and the attacker never reads the ACKs.
        let (cost, (frames, closed, batches)) =
            measure(&proxy, flood(&mut conn, 200, |_| batch.clone())).await;
        eprintln!(
            "{name} flood: wrote {} frames in {:?}; closed {closed}, GOAWAY {:?}",
            batches * 1000,
            started.elapsed(),
            goaway_code(&frames)
        );
        assert_bounded(&format!("{name} flood"), &cost, Duration::from_secs(3));
        others_are_served(&proxy, "a.test").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_concurrency_limit_are_refused() {
    let (a, proxy) = setup().await;
    let mut conn = Conn::open(proxy.https_addr(), &proxy.ca_pem(), "a.test")
        .await
        .unwrap();
    // The proxy says how many streams it takes.
    let mut advertised = None;
    for _ in 0..4 {
        match conn.read_frame(Duration::from_secs(3)).await {
            Ok(Some(f)) if f.kind == h2::SETTINGS && f.flags & h2::ACK == 0 => {
                for s in f.payload.chunks(6) {
                    if s.len() == 6 && u16::from_be_bytes([s[0], s[1]]) == 0x3 {
                        advertised = Some(u32::from_be_bytes(s[2..6].try_into().unwrap()));
                    }
                }
                break;
            }
            _ => {}
        }
    }
    assert_eq!(advertised, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // 300 uploads that never send their body: each holds a stream open.
    let head = header_block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "a.test"),
        (":path", "/held"),
        ("content-length", "10"),
    ]);
    let mut bytes = Vec::new();
    for i in 0..300u32 {
        bytes.extend(frame(h2::HEADERS, h2::END_HEADERS, 2 * i + 1, &head));
    }
    let _ = conn.send(&bytes).await;
    let (frames, closed) = conn.read_until_closed(Duration::from_secs(3)).await;
    let refused = frames.iter().filter(|f| f.kind == h2::RST_STREAM).count();
    eprintln!(
        "300 streams: {refused} RST_STREAM, GOAWAY {:?}, closed {closed}; upstream saw {} requests",
        goaway_code(&frames),
        a.requests()
    );
    assert!(
        a.requests() <= 100,
        "{} streams reached the upstream at once, over the limit of 100",
        a.requests()
    );
    assert!(
        refused >= 200 || goaway_code(&frames).is_some(),
        "streams over the limit were neither refused nor the connection closed"
    );
    others_are_served(&proxy, "a.test").await;
}
