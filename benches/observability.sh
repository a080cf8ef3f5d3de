#!/usr/bin/env bash
# The cost of metrics and access logging on proxyd's hot path. Not part of the test suite.
#
#   bash benches/observability.sh            # 3 interleaved rounds of 10 s (~5 min), writes
#                                            # benches/results/observability.md (+ .tsv)
#   ROUNDS=1 DURATION=3 bash benches/observability.sh     # quick smoke run
#
# Four release proxyd instances run side by side, each with one worker pinned to core 1,
# in front of one nginx origin (static 128-byte file) that shares core 0 with the load
# generator (wrk for HTTP/1.1 plain and TLS, h2load for HTTP/2):
#   bare     --access-log-format off                     (no metrics, no access log)
#   metrics  --metrics ADDR --access-log-format off
#   log      --access-log FILE (JSON lines)
#   both     --metrics ADDR --access-log FILE
# Every test runs each instance in turn, in a rotating order, round after round. Reported:
# requests/s (median and spread), p99 latency, and proxyd's CPU time per request (user +
# system of the whole process, writer thread included, from /proc/PID/stat): on 2 cores the
# load generator saturates first, so CPU per request is the figure to compare. Loopback only.
#
# Environment: ROUNDS (3), DURATION seconds per run (10), CONNS (64), TESTS ("h1 h1_tls
# h2_tls"), OUT (benches/results/observability.md), NO_BUILD=1 skips cargo build,
# PROXYD=path benchmarks a prebuilt binary, KEEP_WORK=1 keeps the temporary directory,
# PORT_BASE (31000; ports PORT_BASE..PORT_BASE+42 must be free), NO_CRITERION=1 skips the
# in-process figures (criterion, benches/benches/observability.rs, on core 1 after the load
# runs): the request path's own share, metric handle lookup + observe and one formatted
# access log line.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
TESTS=${TESTS:-"h1 h1_tls h2_tls"}
OUT=${OUT:-benches/results/observability.md}
VARIANTS=(bare metrics log both)
LOAD_CORE=0
PROXY_CORE=1
START=$(date +%s)

log() { printf '[%4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(nproc)" -ge 2 ] || die "needs 2 cores (load generator and proxy on separate cores)"
missing=()
for t in nginx:nginx-light wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl taskset:util-linux; do
    command -v "${t%%:*}" >/dev/null || [ -x "/usr/sbin/${t%%:*}" ] || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"
getent ahosts localhost | head -1 | grep -q '^127\.0\.0\.1' ||
    die "localhost must resolve to 127.0.0.1 first (the clients connect by name for SNI)"

if [ -n "${PROXYD:-}" ]; then
    LABEL="$PROXYD (prebuilt)"
else
    PROXYD=$ROOT/target/release/proxyd
    if [ -z "${NO_BUILD:-}" ]; then
        log "cargo build --release -p proxyd"
        cargo build --release -q -p proxyd
    fi
    LABEL="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- proxy 2>/dev/null || echo ' + uncommitted changes in proxy/')"
fi
[ -x "$PROXYD" ] || die "no proxyd at $PROXYD"

WORK=$(mktemp -d /tmp/obsbench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP_WORK:-}" ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# -------------------------------------------------------- certificate, origin, routes
(
    cd "$WORK"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=bench CA" -out ca.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl ecparam -name prime256v1 -genkey -noout -out leaf.ec.key 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in leaf.ec.key -out leaf.key
    openssl req -new -key leaf.key -subj "/CN=localhost" -out leaf.csr
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -sha256 -extfile leaf.ext -out leaf.pem 2>/dev/null
    cat leaf.pem ca.pem >fullchain.pem
    chmod 600 leaf.key
)
ORIGIN=${PORT_BASE:-31000}
mkdir -p "$WORK/www" "$WORK/tmp"
head -c 128 /dev/zero | tr '\0' 'a' >"$WORK/www/small"
cat >"$WORK/origin.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/origin.pid;
error_log $WORK/origin.error.log warn;
daemon off;
events { worker_connections 16384; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    open_file_cache max=16;
    server {
        listen 127.0.0.1:$ORIGIN backlog=4096;
        root $WORK/www;
    }
}
EOF
mkdir -p "$WORK/store/certs/localhost"
chmod 700 "$WORK/store"
cp "$WORK/fullchain.pem" "$WORK/store/certs/localhost/fullchain.pem"
install -m 600 "$WORK/leaf.key" "$WORK/store/certs/localhost/key.pem"
cat >"$WORK/routes.toml" <<EOF
[defaults]
hsts = false
https_redirect = false

[[route]]
hosts = ["localhost"]
upstreams = ["127.0.0.1:$ORIGIN"]
EOF

# ------------------------------------------------------------------ start everything
B=$ORIGIN
declare -A HTTP=([bare]=$((B + 10)) [metrics]=$((B + 20)) [log]=$((B + 30)) [both]=$((B + 40)))
declare -A HTTPS=([bare]=$((B + 11)) [metrics]=$((B + 21)) [log]=$((B + 31)) [both]=$((B + 41)))
declare -A METRICS=([metrics]=$((B + 22)) [both]=$((B + 42)))
declare -A PID=()
# Another benchmark on this machine may hold ports: refuse to measure someone else's proxy.
for port in $ORIGIN "${HTTP[@]}" "${HTTPS[@]}" "${METRICS[@]}"; do
    [ -z "$(ss -Htln "sport = :$port")" ] || die "port $port is taken (set PORT_BASE)"
done
taskset -c $LOAD_CORE nginx -c "$WORK/origin.conf" -p "$WORK" &
PIDS+=($!)
for v in "${VARIANTS[@]}"; do
    extra=()
    case $v in
    bare) extra=(--access-log-format off) ;;
    metrics) extra=(--metrics "127.0.0.1:${METRICS[metrics]}" --access-log-format off) ;;
    log) extra=(--access-log "$WORK/access-log.log") ;;
    both) extra=(--metrics "127.0.0.1:${METRICS[both]}" --access-log "$WORK/access-both.log") ;;
    esac
    RUST_LOG=warn taskset -c $PROXY_CORE "$PROXYD" --routes "$WORK/routes.toml" \
        --certs-store "$WORK/store" --local-issuer off --threads 1 --grace-period 1 \
        --max-conns-per-ip 0 --https "127.0.0.1:${HTTPS[$v]}" --http "127.0.0.1:${HTTP[$v]}" \
        --admin-socket "$WORK/$v.admin.sock" --upgrade-socket "$WORK/$v.upgrade.sock" \
        "${extra[@]}" 2>"$WORK/$v.stderr" &
    PID[$v]=$!
    PIDS+=($!)
done
for v in "${VARIANTS[@]}"; do
    for _ in $(seq 100); do
        curl -sk -o /dev/null "https://localhost:${HTTPS[$v]}/small" && break
        sleep 0.1
    done
    curl -sfk -o /dev/null "https://localhost:${HTTPS[$v]}/small" || die "$v did not come up: $(tail -5 "$WORK/$v.stderr")"
    ss -Htlnp "sport = :${HTTPS[$v]}" | grep -q "pid=${PID[$v]}," || die "port ${HTTPS[$v]} is not $v's"
done
log "proxyd $LABEL: ${VARIANTS[*]} up; $ROUNDS rounds x ${DURATION}s, tests: $TESTS"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run TEST VARIANT -> "rps p99_ms requests"
run() {
    local test=$1 v=$2 out
    case $test in
    h1 | h1_tls)
        local url="http://localhost:${HTTP[$v]}/small"
        [ "$test" = h1_tls ] && url="https://localhost:${HTTPS[$v]}/small"
        out=$(taskset -c $LOAD_CORE wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url")
        awk '
            /Requests\/sec:/ { rps = $2 }
            / requests in / { n = $1 }
            $1 == "99%" { v = $2; u = v; gsub(/[0-9.]/, "", u); sub(/[a-z]+$/, "", v);
                p99 = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }
            END { printf "%.0f %.2f %d\n", rps, p99, n }' <<<"$out"
        ;;
    h2_tls)
        out=$(taskset -c $LOAD_CORE h2load -c "$CONNS" -m 10 -D "$DURATION" \
            "https://localhost:${HTTPS[$v]}/small" 2>&1)
        # "finished in 10.00s, 61234.50 req/s, ..." ; "requests: N total, N started, N done,
        # N succeeded"; "time for request:  min max mean sd +/- sd" (no p99: mean + 2 sd)
        awk '
            /^finished in/ { rps = $4 }
            /^requests:/ { n = $8 }
            /^time for request:/ { m = $6; s = $7
                mu = m; gsub(/[0-9.]/, "", mu); sub(/[a-z]+$/, "", m)
                su = s; gsub(/[0-9.]/, "", su); sub(/[a-z]+$/, "", s)
                m = (mu == "us") ? m / 1000 : (mu == "s") ? m * 1000 : m
                s = (su == "us") ? s / 1000 : (su == "s") ? s * 1000 : s
                p99 = m + 2 * s }
            END { printf "%.0f %.2f %d\n", rps, p99, n }' <<<"$out"
        ;;
    esac
}

RAW=$WORK/raw.tsv
: >"$RAW"
TICK=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for test in $TESTS; do
        # Rotate the order each round so no variant always runs first or last.
        n=${#VARIANTS[@]}
        for i in $(seq 0 $((n - 1))); do
            v=${VARIANTS[$(((i + round + ${#test}) % n))]}
            before=$(cpu_ticks "${PID[$v]}")
            read -r rps p99 reqs < <(run "$test" "$v")
            after=$(cpu_ticks "${PID[$v]}")
            cpu_us=$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$reqs" 'BEGIN { printf "%.2f", n ? t / hz * 1e6 / n : 0 }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$test" "$v" "$rps" "$p99" "$reqs" "$cpu_us" >>"$RAW"
            log "round $round $test $v: $rps req/s, p99 $p99 ms, $cpu_us us CPU/request"
            sleep 1
        done
    done
done

# ---------------------------------------------------------- sanity: nothing was lost
sleep 1
total_of() { awk -v v="$1" '$3 == v { n += $6 } END { print n + 0 }' "$RAW"; }
lines_log=$(wc -l <"$WORK/access-log.log")
lines_both=$(wc -l <"$WORK/access-both.log")
scraped=$(curl -s "http://127.0.0.1:${METRICS[both]}/metrics" |
    awk '/^proxyd_requests_total\{/ { n += $2 } END { printf "%d", n }')
dropped=$(curl -s "http://127.0.0.1:${METRICS[both]}/metrics" |
    awk '/^proxyd_access_log_dropped_lines_total/ { print $2 }')

# -------------------------------------------------- in process: the request path's share
CRIT=$WORK/criterion.txt
: >"$CRIT"
if [ -z "${NO_CRITERION:-}" ]; then
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    log "criterion: benches/benches/observability.rs on core $PROXY_CORE"
    taskset -c $PROXY_CORE cargo bench -q -p benches --bench observability -- \
        --warm-up-time 1 --measurement-time 5 2>/dev/null |
        awk '/^(metrics|access_log)\// { name = $1 } /time:/ && name { print name "\t" $(NF - 3) " " $(NF - 2); name = "" }' \
            >"$CRIT" || log "criterion failed; the report has no in-process figures"
fi

# -------------------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
cp "$RAW" "${OUT%.md}.tsv"
{
    echo "# Cost of metrics and access logging"
    echo
    echo "Written by \`benches/observability.sh\` on $(date -u +%Y-%m-%d): proxyd $LABEL, release"
    echo "build, one worker on core $PROXY_CORE; nginx origin and load generator on core $LOAD_CORE;"
    echo "$CONNS connections, 128-byte responses; $ROUNDS interleaved rounds of ${DURATION} s; medians"
    echo "(min-max in brackets). CPU is proxyd's whole process (access-log writer thread"
    echo "included) per request, in microseconds. Δ is against \`bare\` in the same test."
    echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo);"
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| test | variant | requests/s | Δ req/s | p99 ms | CPU µs/req | Δ CPU |"
    echo "|---|---|---|---|---|---|---|"
    for test in $TESTS; do
        for v in "${VARIANTS[@]}"; do
            awk -F'\t' -v t="$test" -v v="$v" '
                function median(a, n,   i, j, x) {
                    for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
                }
                $2 == t && $3 == "bare" { br[++nb] = $4; bc[nb] = $7 }
                $2 == t && $3 == v { r[++n] = $4; p[n] = $5; c[n] = $7
                    if (min == "" || $4 < min) min = $4; if ($4 > max) max = $4 }
                END {
                    mr = median(r, n); mp = median(p, n); mc = median(c, n)
                    for (i = 1; i <= nb; i++) { r2[i] = br[i]; c2[i] = bc[i] }
                    b = median(r2, nb); bcpu = median(c2, nb)
                    dr = (v == "bare") ? "" : sprintf("%+.1f%%", (mr / b - 1) * 100)
                    dc = (v == "bare") ? "" : sprintf("%+.1f%%", (mc / bcpu - 1) * 100)
                    printf "| %s | %s | %.0f (%.0f-%.0f) | %s | %.2f | %.2f | %s |\n", t, v, mr, min, max, dr, mp, mc, dc
                }' "$RAW"
        done
    done
    echo
    echo "h2_tls p99 is h2load's mean + 2 standard deviations (h2load prints no percentile)."
    echo
    echo "Nothing lost: \`log\` served $(total_of log) requests counted by the load generators and"
    echo "wrote $lines_log lines; \`both\` $(total_of both) requests, $lines_both lines, $scraped in"
    echo "\`proxyd_requests_total\`, ${dropped:-?} lines dropped (the generators do not count the"
    echo "requests still in flight when a run ends, so lines may exceed their count slightly)."
    if [ -s "$CRIT" ]; then
        echo
        echo "## In process: what each request pays (criterion, core $PROXY_CORE)"
        echo
        echo "\`cargo bench -p benches --bench observability\` (median time per call): the metric"
        echo "handle lookup in \`request_filter\` (1 000 routes, ids walked in turn), one request's"
        echo "counters and histograms in \`logging()\`, and one access log line formatted and queued"
        echo "(the writer thread, on the same core, writes to /dev/null)."
        echo
        echo "| benchmark | time per request |"
        echo "|---|---|"
        awk -F'\t' '{ printf "| %s | %s |\n", $1, $2 }' "$CRIT"
    fi
} >"$OUT"
log "wrote $OUT"
cat "$OUT"
