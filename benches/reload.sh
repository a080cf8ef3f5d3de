#!/usr/bin/env bash
# Reload latency: from `proxyctl reload` to the new table in force (proxyctl returns after
# the swap), for tables of 10, 1 000 and 10 000 routes. Loopback only; bounded: ROUNDS
# reloads per size. Results go to benches/results/reload.md: the round trip, the daemon's
# own time (`duration_ms` of the reply) and CPU, and where it went (`phases_ms` and
# `phases_cpu_ms`: read, parse, diff, certificates, install), with the load average
# before and after each size (a busy machine inflates wall-clock times, not CPU times).
#
#   bash benches/reload.sh            # ROUNDS=30 SIZES="10 1000 10000" by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-30}
SIZES=${SIZES:-"10 1000 10000"}
OUT=${OUT:-benches/results/reload.md}

cargo build --release -q -p proxyd -p proxyctl
PROXYD=${PROXYD:-target/release/proxyd}    # or another build, to compare
PROXYCTL=${PROXYCTL:-target/release/proxyctl}
work=$(mktemp -d /tmp/proxyd-reload-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# A table of N routes (every 10th a wildcard, every 5th with a path prefix), all to one
# loopback port nobody listens on: health checks fail fast and touch nothing else.
# VARIANT changes one route's upstream so every reload really applies something.
table() {
    local n=$1 variant=$2
    awk -v n="$n" -v v="$variant" 'BEGIN {
        print "[defaults]\nhealth_check_interval = \"1h\"\n"
        for (i = 0; i < n; i++) {
            host = "site" i ".bench.test"
            if (i % 10 == 9) host = "*.w" i ".bench.test"
            path = (i % 5 == 4) ? "/app" i : "/"
            port = (i == 0) ? 9 + v : 9
            printf "[[route]]\nname = \"r%d\"\nhosts = [\"%s\"]\npath = \"%s\"\nupstreams = [\"127.0.0.1:%d\"]\n\n", i, host, path, port
        }
    }'
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# Each step of one reply (proxyctl's JSON, on one line or pretty): "name wall cpu" lines.
phases() {
    tr -d ' \n' | awk '{
        for (i = 1; i <= 2; i++) {
            key = (i == 1) ? "\"phases_ms\":{" : "\"phases_cpu_ms\":{"
            at = index($0, key); if (!at) continue
            body = substr($0, at + length(key)); body = substr(body, 1, index(body, "}") - 1)
            n = split(body, kv, ",")
            for (j = 1; j <= n; j++) { split(kv[j], f, ":"); gsub(/"/, "", f[1]); v[f[1], i] = f[2]; k[f[1]] = 1 }
        }
    } END { for (p in k) print p, v[p, 1], v[p, 2] }'
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

{
echo "# Reload latency"
echo
echo "\`bash benches/reload.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), release build."
echo "Each reload re-reads and validates the whole file, diffs it against the running table,"
echo "builds the new snapshot and swaps it; proxyctl returns after the swap. $ROUNDS reloads per size."
echo "In-daemon: wall-clock ms from the request to the swap, and CPU ms of the thread that did it."
echo
echo "| routes | file size | proxyctl round trip p50 (ms) | p90 (ms) | max (ms) | in-daemon p50 (ms) | in-daemon CPU p50 (ms) | daemon RSS after (MiB) | load avg (1 min) before/after |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$work/report.md"
: > "$work/phases.md"

for n in $SIZES; do
    table "$n" 0 > "$work/a.toml"
    table "$n" 1 > "$work/b.toml"
    cp "$work/a.toml" "$work/routes.toml"
    sock="$work/admin.sock"
    RUST_LOG=warn "$PROXYD" --routes "$work/routes.toml" --certs-store "$work/store" --local-issuer off \
        --https "127.0.0.1:$(free_port)" --http "127.0.0.1:$(free_port)" --threads 1 \
        --admin-socket "$sock" --upgrade-socket "$work/upgrade.sock" 2> "$work/proxyd-$n.log" &
    pid=$!
    for _ in $(seq 1 600); do
        "$PROXYCTL" --socket "$sock" status >/dev/null 2>&1 && break
        sleep 0.05
    done
    : > "$work/times"
    : > "$work/phase-times"
    load_before=$(load1)
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then cp "$work/b.toml" "$work/routes.toml"; else cp "$work/a.toml" "$work/routes.toml"; fi
        start=$(date +%s%N)
        json=$("$PROXYCTL" --socket "$sock" --json reload)
        end=$(date +%s%N)
        echo "$json" | grep -q '"applied": *true' || { echo "reload $r of $n routes not applied: $json" >&2; exit 1; }
        inner=$(echo "$json" | sed -n 's/.*"duration_ms": *\([0-9.e-]*\).*/\1/p')
        cpu=$(echo "$json" | phases | awk '{ s += $3 } END { printf "%.4f", s }')
        echo "$(( (end - start) / 1000 )) $inner $cpu" >> "$work/times"
        echo "$json" | phases >> "$work/phase-times"
    done
    load_after=$(load1)
    rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    size=$(du -h "$work/a.toml" | cut -f1)
    # p50/p90/max of the round trip, p50 of the in-daemon time (each column sorted alone).
    rt=$(cut -d' ' -f1 "$work/times" | sort -n | awk '{ v[NR] = $1 / 1000 } END { printf "%.1f | %.1f | %.1f", v[int((NR+1)/2)], v[int(NR*0.9)], v[NR] }')
    p50() { sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR+1)/2)] }'; }
    inner=$(cut -d' ' -f2 "$work/times" | p50)
    cpu=$(cut -d' ' -f3 "$work/times" | p50)
    echo "| $n | $size | $rt | $inner | $cpu | $rss | $load_before / $load_after |" >> "$work/report.md"
    row="| $n |"
    for p in read parse diff certificates install; do
        w=$(awk -v p="$p" '$1 == p { print $2 }' "$work/phase-times" | p50)
        c=$(awk -v p="$p" '$1 == p { print $3 }' "$work/phase-times" | p50)
        row="$row $w / $c |"
    done
    echo "$row" >> "$work/phases.md"
done
{
echo
echo "Where the in-daemon time goes, p50 per step, wall / CPU ms:"
echo
echo "| routes | read | parse | diff | certificates | install |"
echo "|---:|---:|---:|---:|---:|---:|"
cat "$work/phases.md"
} >> "$work/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$work/report.md" "$OUT"
cat "$OUT"
