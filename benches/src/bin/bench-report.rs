//! Turns the raw measurements of `benches/compare.sh` into `benches/results/latest.md`:
//! medians over the rounds, spread, ratios to nginx and to the direct origin, CPU per
//! request of the server under test, memory, and which targets of issue 7 hold.
//!
//! ```text
//! bench-report --raw raw.tsv --mem mem.tsv --machine machine.txt > latest.md
//! ```
//! raw.tsv: `round test target requests rps p50_ms p99_ms cpu_s errors secs`
//! mem.tsv: `target idle_kib peak_kib held_kib held_conns before_kib`

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

struct Run {
    test: String,
    target: String,
    requests: f64,
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_s: f64,
    errors: f64,
}

struct Mem {
    target: String,
    idle: f64,
    peak: f64,
    held: f64,
    conns: u64,
    /// RSS just before the idle connections were opened (after the load tests).
    before: f64,
}

const TESTS: &[(&str, &str)] = &[
    (
        "h1",
        "HTTP/1.1 plaintext, keep-alive, 64 connections, 128 B responses (wrk)",
    ),
    (
        "h1_100k",
        "HTTP/1.1 plaintext, keep-alive, 64 connections, 100 KiB responses (wrk)",
    ),
    (
        "h1_tls",
        "HTTPS HTTP/1.1, keep-alive, 64 connections, 128 B (wrk)",
    ),
    (
        "h2_tls",
        "HTTPS HTTP/2, 64 connections x 10 streams, 128 B (h2load -m 10)",
    ),
    (
        "h2_tls_100k",
        "HTTPS HTTP/2, 64 connections x 10 streams, 100 KiB (h2load -m 10)",
    ),
    (
        "hs_full",
        "new TLS connection per request, full handshake, 16 concurrent (ab)",
    ),
    (
        "hs_resumed",
        "new TLS connection per request, resumed session, 16 concurrent (wrk, Connection: close)",
    ),
];
const ORDER: &[&str] = &["direct", "proxyd", "nginx", "haproxy", "caddy"];

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn arg(args: &[String], flag: &str) -> Result<String> {
    let i = args
        .iter()
        .position(|a| a == flag)
        .with_context(|| format!("{flag} FILE is required"))?;
    args.get(i + 1)
        .cloned()
        .with_context(|| format!("{flag} needs a value"))
}

fn fields(line: &str, n: usize, file: &str) -> Result<Vec<String>> {
    let f: Vec<String> = line.split('\t').map(str::to_string).collect();
    if f.len() < n {
        bail!("{file}: expected {n} fields in {line:?}");
    }
    Ok(f)
}

/// Medians of one (test, target) over its rounds.
#[derive(Clone, Copy)]
struct Summary {
    rps: f64,
    rps_min: f64,
    rps_max: f64,
    p50: f64,
    p99: f64,
    /// Server CPU microseconds per request.
    cpu_us: f64,
    errors: f64,
    rounds: usize,
}

fn summarise(runs: &[&Run]) -> Summary {
    let mut rps: Vec<f64> = runs.iter().map(|r| r.rps).collect();
    let mut p50: Vec<f64> = runs.iter().map(|r| r.p50).collect();
    let mut p99: Vec<f64> = runs.iter().map(|r| r.p99).collect();
    let mut cpu: Vec<f64> = runs
        .iter()
        .filter(|r| r.requests > 0.0)
        .map(|r| r.cpu_s / r.requests * 1e6)
        .collect();
    let rps_min = rps.iter().cloned().fold(f64::INFINITY, f64::min);
    let rps_max = rps.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Summary {
        rps: median(&mut rps),
        rps_min,
        rps_max,
        p50: median(&mut p50),
        p99: median(&mut p99),
        cpu_us: median(&mut cpu),
        errors: runs.iter().map(|r| r.errors).sum(),
        rounds: runs.len(),
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let r = x.round() as i64;
    let s = r.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if r < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let raw_file = arg(&args, "--raw")?;
    let mem_file = arg(&args, "--mem")?;
    let machine = std::fs::read_to_string(arg(&args, "--machine")?)?;

    let mut runs = Vec::new();
    for line in std::fs::read_to_string(&raw_file)?
        .lines()
        .filter(|l| !l.is_empty())
    {
        let f = fields(line, 10, &raw_file)?;
        let p = |i: usize| f[i].parse::<f64>().unwrap_or(f64::NAN);
        runs.push(Run {
            test: f[1].clone(),
            target: f[2].clone(),
            requests: p(3),
            rps: p(4),
            p50: p(5),
            p99: p(6),
            cpu_s: p(7),
            errors: p(8),
        });
    }
    let mut mems = Vec::new();
    for line in std::fs::read_to_string(&mem_file)?
        .lines()
        .filter(|l| !l.is_empty())
    {
        let f = fields(line, 5, &mem_file)?;
        let p = |i: usize| f[i].parse::<f64>().unwrap_or(f64::NAN);
        mems.push(Mem {
            target: f[0].clone(),
            idle: p(1),
            peak: p(2),
            held: p(3),
            conns: f[4].parse().unwrap_or(0),
            before: f.get(5).and_then(|v| v.parse().ok()).unwrap_or(p(1)),
        });
    }

    let mut targets: Vec<String> = Vec::new();
    for r in &runs {
        if !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
    }
    targets.sort_by_key(|t| ORDER.iter().position(|o| o == t).unwrap_or(ORDER.len()));

    let mut s: BTreeMap<(String, String), Summary> = BTreeMap::new();
    for (test, _) in TESTS {
        for t in &targets {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.test == *test && r.target == *t && r.rps > 0.0)
                .collect();
            if !rs.is_empty() {
                s.insert((test.to_string(), t.clone()), summarise(&rs));
            }
        }
    }
    let get = |test: &str, t: &str| s.get(&(test.to_string(), t.to_string())).copied();

    let mut o = String::new();
    writeln!(o, "# Side-by-side load benchmark: latest results\n")?;
    writeln!(
        o,
        "Written by `bash benches/compare.sh` (set-up and caveats: \
         [benches/README.md](../README.md)); do not edit by hand. Raw runs: `latest.tsv`, \
         `latest.mem.tsv`.\n"
    )?;
    writeln!(o, "```text\n{}```\n", machine)?;
    writeln!(
        o,
        "Each server under test runs one worker pinned to core 1; the load generator and the \
         origin (nginx, static files) share core 0. Figures are medians over the rounds; \
         *spread* is (max − min) / median of req/s. *CPU µs/req* is the user + system CPU \
         time of the server's processes (for `direct`, the origin itself) per request or, in \
         the handshake tests, per connection. On 2 cores the load generator's core \
         saturates first, so **req per CPU-s** (requests per second of the server's own CPU) \
         is the fairer throughput comparison; raw req/s is shown too.\n"
    )?;

    writeln!(o, "## Summary: requests/s (median)\n")?;
    write_matrix(&mut o, &targets, |test, t| get(test, t).map(|x| num(x.rps)))?;
    writeln!(o, "\n## Summary: requests per server CPU-second (median)\n")?;
    write_matrix(&mut o, &targets, |test, t| {
        get(test, t).map(|x| num(1e6 / x.cpu_us))
    })?;
    writeln!(o, "\n## Summary: p99 latency, ms (median)\n")?;
    write_matrix(&mut o, &targets, |test, t| {
        get(test, t).map(|x| format!("{:.2}", x.p99))
    })?;

    writeln!(o, "\n## Per test\n")?;
    for (test, desc) in TESTS {
        if !targets.iter().any(|t| get(test, t).is_some()) {
            continue;
        }
        writeln!(o, "### `{test}`: {desc}\n")?;
        writeln!(
            o,
            "| server | req/s | spread | vs nginx | vs direct | p50 ms | p99 ms | CPU µs/req | req per CPU-s | vs nginx | errors |"
        )?;
        writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        let nginx = get(test, "nginx");
        let direct = get(test, "direct");
        for t in &targets {
            let Some(x) = get(test, t) else { continue };
            let eff = 1e6 / x.cpu_us;
            writeln!(
                o,
                "| {t} | {} | {:.1} % | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {} |",
                num(x.rps),
                (x.rps_max - x.rps_min) / x.rps * 100.0,
                nginx.map_or("–".into(), |n| ratio(x.rps, n.rps)),
                direct.map_or("–".into(), |d| ratio(x.rps, d.rps)),
                x.p50,
                x.p99,
                x.cpu_us,
                num(eff),
                nginx.map_or("–".into(), |n| ratio(eff, 1e6 / n.cpu_us)),
                num(x.errors),
            )?;
        }
        writeln!(o)?;
    }

    if !mems.is_empty() {
        writeln!(o, "## Memory (RSS of all the server's processes, MiB)\n")?;
        writeln!(
            o,
            "*idle*: after start and one request; *peak*: VmHWM after all the load tests; \
             *before*: just before the idle connections are opened (after the load tests: \
             what the allocator kept); *with them*: RSS while the given number of TLS \
             keep-alive connections, each after one request, are held open (`idle-conns`); \
             *KiB per conn* = (with them − before) / connections. nginx is master + worker \
             (shared pages counted twice, as `ps` would).\n"
        )?;
        writeln!(o, "| server | idle | peak | before | idle TLS conns held | RSS with them | KiB per conn |")?;
        writeln!(o, "|---|---:|---:|---:|---:|---:|---:|")?;
        let mut ms: Vec<&Mem> = mems.iter().collect();
        ms.sort_by_key(|m| {
            ORDER
                .iter()
                .position(|o| *o == m.target)
                .unwrap_or(ORDER.len())
        });
        for m in ms {
            let per = if m.conns > 0 {
                format!("{:.1}", (m.held - m.before) / m.conns as f64)
            } else {
                "–".into()
            };
            writeln!(
                o,
                "| {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} |",
                m.target,
                m.idle / 1024.0,
                m.peak / 1024.0,
                m.before / 1024.0,
                num(m.conns as f64),
                m.held / 1024.0,
                per
            )?;
        }
        writeln!(o)?;
    }

    // Issue 7's targets, checked for proxyd.
    if targets.iter().any(|t| t == "proxyd") {
        writeln!(o, "## Targets (issue 7) for proxyd\n")?;
        writeln!(o, "| test | req/s ≥ best of nginx, HAProxy | p99 ≤ best of nginx, HAProxy | CPU/req < nginx |")?;
        writeln!(o, "|---|---|---|---|")?;
        for (test, _) in TESTS {
            let Some(p) = get(test, "proxyd") else {
                continue;
            };
            let others: Vec<Summary> = ["nginx", "haproxy"]
                .iter()
                .filter_map(|t| get(test, t))
                .collect();
            if others.is_empty() {
                continue;
            }
            let best_rps = others.iter().map(|x| x.rps).fold(0.0, f64::max);
            let best_p99 = others.iter().map(|x| x.p99).fold(f64::INFINITY, f64::min);
            let yes = |b: bool| if b { "yes" } else { "**no**" };
            let cpu = get(test, "nginx").map_or("–".to_string(), |n| {
                format!("{} ({:.2}x)", yes(p.cpu_us < n.cpu_us), p.cpu_us / n.cpu_us)
            });
            writeln!(
                o,
                "| `{test}` | {} ({:.2}x) | {} ({:.2} vs {:.2} ms) | {cpu} |",
                yes(p.rps >= best_rps),
                p.rps / best_rps,
                yes(p.p99 <= best_p99),
                p.p99,
                best_p99,
            )?;
        }
        let mem = |t: &str| mems.iter().find(|m| m.target == t);
        if let (Some(p), Some(n)) = (mem("proxyd"), mem("nginx")) {
            writeln!(
                o,
                "\nMemory below nginx: idle {} ({:.1} vs {:.1} MiB), peak {} ({:.1} vs {:.1} MiB), \
                 with idle connections {} ({:.1} vs {:.1} MiB).",
                if p.idle < n.idle { "yes" } else { "**no**" },
                p.idle / 1024.0,
                n.idle / 1024.0,
                if p.peak < n.peak { "yes" } else { "**no**" },
                p.peak / 1024.0,
                n.peak / 1024.0,
                if p.held < n.held { "yes" } else { "**no**" },
                p.held / 1024.0,
                n.held / 1024.0,
            )?;
        }
        let rounds = s.values().map(|x| x.rounds).max().unwrap_or(0);
        writeln!(o, "\n({rounds} rounds per figure.)")?;
    }
    print!("{o}");
    Ok(())
}

fn write_matrix(
    o: &mut String,
    targets: &[String],
    cell: impl Fn(&str, &str) -> Option<String>,
) -> Result<()> {
    write!(o, "| test |")?;
    for t in targets {
        write!(o, " {t} |")?;
    }
    writeln!(o)?;
    write!(o, "|---|")?;
    for _ in targets {
        write!(o, "---:|")?;
    }
    writeln!(o)?;
    for (test, _) in TESTS {
        if !targets.iter().any(|t| cell(test, t).is_some()) {
            continue;
        }
        write!(o, "| `{test}` |")?;
        for t in targets {
            write!(o, " {} |", cell(test, t).unwrap_or_else(|| "–".into()))?;
        }
        writeln!(o)?;
    }
    Ok(())
}
