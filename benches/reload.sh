#!/usr/bin/env bash
# Reload latency: from `proxyctl reload` to the new table in force (proxyctl returns after
# the swap), for tables of 10, 1 000 and 10 000 routes. Loopback only; bounded: ROUNDS
# reloads per size. Results go to benches/results/reload.md.
#
#   bash benches/reload.sh            # ROUNDS=30 SIZES="10 1000 10000" by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-30}
SIZES=${SIZES:-"10 1000 10000"}
OUT=${OUT:-benches/results/reload.md}

cargo build --release -q -p proxyd -p proxyctl
PROXYD=target/release/proxyd
PROXYCTL=target/release/proxyctl
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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

{
echo "# Reload latency"
echo
echo "\`bash benches/reload.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), release build."
echo "Each reload re-reads and validates the whole file, diffs it against the running table,"
echo "builds the new snapshot and swaps it; proxyctl returns after the swap. $ROUNDS reloads per size."
echo
echo "| routes | file size | proxyctl round trip p50 (ms) | p90 (ms) | max (ms) | in-daemon p50 (ms) | daemon RSS after (MiB) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
} > "$work/report.md"

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
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then cp "$work/b.toml" "$work/routes.toml"; else cp "$work/a.toml" "$work/routes.toml"; fi
        start=$(date +%s%N)
        json=$("$PROXYCTL" --socket "$sock" --json reload)
        end=$(date +%s%N)
        echo "$json" | grep -q '"applied": *true' || { echo "reload $r of $n routes not applied: $json" >&2; exit 1; }
        inner=$(echo "$json" | sed -n 's/.*"duration_ms": *\([0-9.]*\).*/\1/p')
        echo "$(( (end - start) / 1000 )) $inner" >> "$work/times"
    done
    rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    size=$(du -h "$work/a.toml" | cut -f1)
    # p50/p90/max of the round trip, p50 of the in-daemon time (each column sorted alone).
    rt=$(cut -d' ' -f1 "$work/times" | sort -n | awk '{ v[NR] = $1 / 1000 } END { printf "%.1f | %.1f | %.1f", v[int((NR+1)/2)], v[int(NR*0.9)], v[NR] }')
    inner=$(cut -d' ' -f2 "$work/times" | sort -g | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR+1)/2)] }')
    echo "| $n | $size | $rt | $inner | $rss |" >> "$work/report.md"
done
mkdir -p "$(dirname "$OUT")"
cp "$work/report.md" "$OUT"
cat "$OUT"
