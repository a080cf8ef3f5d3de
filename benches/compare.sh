#!/usr/bin/env bash
# Side-by-side load benchmark: proxyd against nginx, HAProxy and Caddy (Debian's), and the
# origin reached directly, on this machine, in one run. Not part of the test suite.
#
#   bash benches/compare.sh                  # full run (~25 min on 2 cores), writes
#                                            # benches/results/latest.md (+ latest.tsv)
#   ROUNDS=1 DURATION=3 IDLE_CONNS=500 bash benches/compare.sh   # quick smoke run
#
# Set-up (see benches/README.md): one nginx as the origin (static /small, 128 B, and
# /100k, 100 KiB) and the load generators share core 0; the proxy under test runs on
# core 1, one worker each, all with the same ECDSA P-256 certificate (made here with
# openssl) and upstream keep-alive. All proxies run for the whole benchmark (idle ones
# cost nothing) so that every test runs interleaved: round 1 A B C D E, round 2 B C D E
# A, ... Loopback only.
#
# Environment: ROUNDS (3), DURATION seconds per run (10), CONNS (64), HS_CONNS
# connections for handshake tests (16), IDLE_CONNS (10000), TARGETS ("direct proxyd
# nginx haproxy caddy"), TESTS (all, see below), OUT (benches/results/latest.md),
# KEEP_WORK=1 keeps the temporary directory, NO_BUILD=1 skips cargo build, PROXYD=path
# benchmarks a prebuilt proxyd (PROXYD_REV=label for the report).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
HS_CONNS=${HS_CONNS:-16}
IDLE_CONNS=${IDLE_CONNS:-10000}
TARGETS=${TARGETS:-"direct proxyd nginx haproxy caddy"}
TESTS=${TESTS:-"h1 h1_100k h1_tls h2_tls h2_tls_100k hs_full hs_resumed"}
OUT=${OUT:-benches/results/latest.md}
LOAD_CORE=0
PROXY_CORE=1
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[%4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- tools
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (load generator and proxy on separate cores)"
missing=()
for t in nginx:nginx-light haproxy:haproxy caddy:caddy wrk:wrk h2load:nghttp2-client \
    ab:apache2-utils openssl:openssl curl:curl taskset:util-linux; do
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

BIN=$ROOT/target/release
if [ -z "${NO_BUILD:-}" ]; then
    if [ -n "${PROXYD:-}" ]; then
        log "cargo build --release -p benches"
        cargo build --release -q -p benches --bins
    else
        log "cargo build --release -p proxyd -p benches (several minutes on a fresh tree)"
        cargo build --release -q -p proxyd -p benches --bins
    fi
fi
if [ -n "${PROXYD:-}" ]; then
    PROXYD_LABEL="$PROXYD (${PROXYD_REV:-prebuilt})"
else
    PROXYD=$BIN/proxyd
    PROXYD_LABEL="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- proxy 2>/dev/null || echo ' + uncommitted changes in proxy/')"
fi
[ -x "$PROXYD" ] && [ -x "$BIN/idle-conns" ] && [ -x "$BIN/bench-report" ] || die "missing binaries ($PROXYD, $BIN)"

# ------------------------------------------------------------------ work dir, clean-up
WORK=$(mktemp -d /tmp/proxybench.XXXXXX)
chmod 755 "$WORK" # nginx workers (www-data) read the static files; keys stay 0600
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
log "work directory $WORK, fd limit $(ulimit -n)"

# ------------------------------------------------------------ certificate (P-256)
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
    cat fullchain.pem leaf.key >haproxy.pem
    chmod 600 leaf.key haproxy.pem
)

# ------------------------------------------------------------------ ports and configs
ORIGIN_HTTP=18080 ORIGIN_HTTPS=18443
HAPROXY_MAXCONN=$(($(ulimit -n) / 2 - 100))
declare -A HTTP_PORT=([direct]=$ORIGIN_HTTP [proxyd]=21080 [nginx]=22080 [haproxy]=23080 [caddy]=24080)
declare -A HTTPS_PORT=([direct]=$ORIGIN_HTTPS [proxyd]=21443 [nginx]=22443 [haproxy]=23443 [caddy]=24443)
declare -A PIDOF=()

mkdir -p "$WORK/www" "$WORK/tmp"
head -c 128 /dev/zero | tr '\0' 'a' >"$WORK/www/small"
head -c 102400 /dev/zero | tr '\0' 'b' >"$WORK/www/100k"

# nginx's common part: one worker, no access log, long keep-alive on both sides.
nginx_main() {
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/$1.pid;
error_log $WORK/$1.error.log warn;
daemon off;
events { worker_connections 16384; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp/$1.body;
    proxy_temp_path $WORK/tmp/$1.proxy;
    fastcgi_temp_path $WORK/tmp/$1.fcgi;
    uwsgi_temp_path $WORK/tmp/$1.uwsgi;
    scgi_temp_path $WORK/tmp/$1.scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    ssl_certificate $WORK/fullchain.pem;
    ssl_certificate_key $WORK/leaf.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:20m;
    ssl_session_tickets on;
EOF
}

# The origin: static files, plain for the proxies, TLS for the direct reference.
{
    nginx_main origin
    cat <<EOF
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16;
    server {
        listen 127.0.0.1:$ORIGIN_HTTP backlog=4096;
        listen 127.0.0.1:$ORIGIN_HTTPS ssl http2 backlog=4096;
        root $WORK/www;
    }
}
EOF
} >"$WORK/origin.conf"

# nginx as the proxy: upstream keep-alive, buffers big enough for 100 KiB at once.
{
    nginx_main nginx
    cat <<EOF
    upstream origin {
        server 127.0.0.1:$ORIGIN_HTTP;
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:${HTTP_PORT[nginx]} backlog=4096;
        listen 127.0.0.1:${HTTPS_PORT[nginx]} ssl http2 backlog=4096;
        server_name localhost;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_buffer_size 16k;
            proxy_buffers 8 32k;
            proxy_busy_buffers_size 64k;
        }
    }
}
EOF
} >"$WORK/nginx.conf"

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    # HAProxy reserves two fds per connection and refuses to start when that exceeds
    # the fd limit (20000 here, and not raisable): at most ~9900 connections.
    maxconn $HAPROXY_MAXCONN
    tune.ssl.default-dh-param 2048
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse safe
frontend fe
    bind 127.0.0.1:${HTTP_PORT[haproxy]} backlog 4096
    bind 127.0.0.1:${HTTPS_PORT[haproxy]} ssl crt $WORK/haproxy.pem alpn h2,http/1.1 backlog 4096
    option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    default_backend origin
backend origin
    server o1 127.0.0.1:$ORIGIN_HTTP maxconn 1000
EOF

cat >"$WORK/Caddyfile" <<EOF
{
    admin off
    auto_https off
    servers {
        protocols h1 h2
    }
}
(proxy) {
    reverse_proxy 127.0.0.1:$ORIGIN_HTTP {
        transport http {
            keepalive 300s
            keepalive_idle_conns 256
            keepalive_idle_conns_per_host 256
        }
    }
}
https://localhost:${HTTPS_PORT[caddy]} {
    bind 127.0.0.1
    tls $WORK/fullchain.pem $WORK/leaf.key
    import proxy
}
http://localhost:${HTTP_PORT[caddy]} {
    bind 127.0.0.1
    import proxy
}
EOF

mkdir -p "$WORK/store/certs/localhost"
chmod 700 "$WORK/store"
cp "$WORK/fullchain.pem" "$WORK/store/certs/localhost/fullchain.pem"
install -m 600 "$WORK/leaf.key" "$WORK/store/certs/localhost/key.pem"
cat >"$WORK/routes.toml" <<EOF
# The benchmark's route: everything for localhost to the origin, on https and on
# plain http (https_redirect = false), without HSTS (the other proxies add none).
[defaults]
hsts = false
https_redirect = false

[[route]]
hosts = ["localhost"]
upstreams = ["127.0.0.1:$ORIGIN_HTTP"]
EOF

# -------------------------------------------------------------------------- start
# Processes of a target (main pid + children), for CPU and memory; found once at start.
declare -A ALLPIDS=()
pids_of() { echo "${ALLPIDS[$1]}"; }
find_pids() {
    local main=${PIDOF[$1]}
    echo "$main"
    local d
    for d in /proc/[0-9]*; do # children (nginx workers); no pgrep on a minimal Debian
        [ "$(awk '{ print $4 }' "$d/stat" 2>/dev/null)" = "$main" ] && echo "${d#/proc/}"
    done
    return 0
}
cpu_ticks() { # utime + stime of all processes of a target
    local t=0 p f
    for p in $(pids_of "$1"); do
        f=($(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null)) || continue
        t=$((t + f[11] + f[12]))
    done
    echo $t
}
mem_kib() { # sum of a /proc/PID/status field (VmRSS, VmHWM) over a target's processes
    local t=0 p v
    for p in $(pids_of "$1"); do
        v=$(awk -v k="$2:" '$1 == k { print $2 }' /proc/"$p"/status 2>/dev/null)
        t=$((t + ${v:-0}))
    done
    echo $t
}
wait_ready() { # target: wait until both listeners answer /small with 200
    local i code1 code2
    for i in $(seq 1 150); do
        code1=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://localhost:${HTTP_PORT[$1]}/small" || true)
        code2=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$WORK/ca.pem" "https://localhost:${HTTPS_PORT[$1]}/small" || true)
        [ "$code1" = 200 ] && [ "$code2" = 200 ] && return 0
        kill -0 "${PIDOF[$1]}" 2>/dev/null || die "$1 exited; see $WORK/$1.log"
        sleep 0.2
    done
    die "$1 not ready after 30 s (http $code1, https $code2); see $WORK/$1.log"
}
start() { # target core command...
    local name=$1 core=$2
    shift 2
    taskset -c "$core" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    PIDOF[$name]=$!
}

# Fixed ports, below the ephemeral range (32768+) so OS-chosen ports never collide.
for t in direct $TARGETS; do
    for p in "${HTTP_PORT[$t]}" "${HTTPS_PORT[$t]}"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p ($t) is already in use"; fi
    done
done
start direct $LOAD_CORE nginx -c "$WORK/origin.conf" -p "$WORK"
wait_ready direct
for t in $TARGETS; do
    case $t in
    direct) ;;
    proxyd)
        RUST_LOG=warn start proxyd $PROXY_CORE "$PROXYD" --routes "$WORK/routes.toml" \
            --certs-store "$WORK/store" --local-issuer off --threads 1 --grace-period 1 \
            --access-log-format off --max-conns-per-ip 0 \
            --https "127.0.0.1:${HTTPS_PORT[proxyd]}" --http "127.0.0.1:${HTTP_PORT[proxyd]}" \
            --admin-socket "$WORK/admin.sock" --upgrade-socket "$WORK/upgrade.sock" ;;
    nginx) start nginx $PROXY_CORE nginx -c "$WORK/nginx.conf" -p "$WORK" ;;
    haproxy) start haproxy $PROXY_CORE haproxy -db -f "$WORK/haproxy.cfg" ;;
    caddy)
        XDG_DATA_HOME=$WORK/caddy XDG_CONFIG_HOME=$WORK/caddy HOME=$WORK GOMAXPROCS=1 \
            start caddy $PROXY_CORE caddy run --config "$WORK/Caddyfile" --adapter caddyfile ;;
    *) die "unknown target $t" ;;
    esac
    [ "$t" = direct ] || wait_ready "$t"
done
sleep 2
for t in $TARGETS; do ALLPIDS[$t]=$(find_pids "$t"); done
declare -A IDLE_KIB=()
for t in $TARGETS; do IDLE_KIB[$t]=$(mem_kib "$t" VmRSS); done
log "all up: $(for t in $TARGETS; do printf '%s=%s ' "$t" "$(echo ${ALLPIDS[$t]} | tr ' ' ,)"; done)"

# ---------------------------------------------------------------------- the tests
RAW=$WORK/raw.tsv
: >"$RAW"
TCK=$(getconf CLK_TCK)
LOAD=(taskset -c "$LOAD_CORE")

ms() { # "1.23ms" / "850.00us" / "1.2s" -> milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}
# wrk output -> "requests rps p50_ms p99_ms errors"
parse_wrk() {
    local req rps p50 p99 err
    req=$(awk '/requests in/ { print $1 }' "$1")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$1")
    p50=$(ms "$(awk '$1 == "50%" { print $2 }' "$1")")
    p99=$(ms "$(awk '$1 == "99%" { print $2 }' "$1")")
    err=$(awk '/Socket errors:/ { gsub(",", ""); s = 0; for (i = 3; i <= NF; i += 2) s += $(i+1); print s }
               /Non-2xx or 3xx/ { print $NF }' "$1" | awk '{ s += $1 } END { print s + 0 }')
    echo "$req $rps $p50 $p99 $err"
}
# h2load output + per-request log -> same fields
parse_h2load() {
    local req rps err lat
    req=$(awk '/^requests:/ { print $8 }' "$1")
    rps=$(awk '/^finished in/ { print $4 }' "$1")
    err=$(awk '/^requests:/ { print $10 + $12 + $14 }' "$1")
    # log: start(us since epoch) status duration(us)
    lat=$(awk '{ print $3 }' "$2" | sort -n | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "0 0"; exit }
        i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
        i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
        printf "%.3f %.3f", a[i50] / 1000, a[i99] / 1000 }')
    echo "$req $rps $lat $err"
}
parse_ab() {
    local req rps p50 p99 err
    req=$(awk '/^Complete requests:/ { print $3 }' "$1")
    rps=$(awk '/^Requests per second:/ { print $4 }' "$1")
    p50=$(awk '$1 == "50%" { print $2 }' "$1")
    p99=$(awk '$1 == "99%" { print $2 }' "$1")
    err=$(awk '/^Failed requests:/ { f = $3 } /^Non-2xx responses:/ { n = $3 } END { print f + n }' "$1")
    echo "$req $rps ${p50:-0} ${p99:-0} $err"
}

run_one() { # round test target
    local r=$1 test=$2 t=$3 out=$WORK/out.txt lf=$WORK/h2.log res c0 c1 t0 t1
    local h=${HTTP_PORT[$t]} s=${HTTPS_PORT[$t]}
    : >"$lf"
    c0=$(cpu_ticks "$t")
    t0=$(date +%s.%N)
    case $test in
    h1) "${LOAD[@]}" wrk -t1 -c"$CONNS" -d"$DURATION"s --latency "http://localhost:$h/small" >"$out" 2>&1 ;;
    h1_100k) "${LOAD[@]}" wrk -t1 -c"$CONNS" -d"$DURATION"s --latency "http://localhost:$h/100k" >"$out" 2>&1 ;;
    h1_tls) "${LOAD[@]}" wrk -t1 -c"$CONNS" -d"$DURATION"s --latency "https://localhost:$s/small" >"$out" 2>&1 ;;
    h2_tls) "${LOAD[@]}" h2load -t1 -c"$CONNS" -m10 -D"$DURATION" --log-file="$lf" "https://localhost:$s/small" >"$out" 2>&1 ;;
    h2_tls_100k) "${LOAD[@]}" h2load -t1 -c"$CONNS" -m10 -D"$DURATION" --log-file="$lf" "https://localhost:$s/100k" >"$out" 2>&1 ;;
    # ab makes a new connection, with a full handshake, for every request
    hs_full) "${LOAD[@]}" ab -q -t"$DURATION" -n 100000000 -c"$HS_CONNS" "https://localhost:$s/small" >"$out" 2>&1 ;;
    # wrk reconnects after each response and resumes its TLS session each time
    hs_resumed) "${LOAD[@]}" wrk -t1 -c"$HS_CONNS" -d"$DURATION"s --latency -H "Connection: close" "https://localhost:$s/small" >"$out" 2>&1 ;;
    *) die "unknown test $test" ;;
    esac
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$t")
    case $test in
    h2*) res=$(parse_h2load "$out" "$lf") ;;
    hs_full) res=$(parse_ab "$out") ;;
    *) res=$(parse_wrk "$out") ;;
    esac
    set -- $res
    if [ -z "${1:-}" ] || [ "${1:-0}" = 0 ]; then
        log "  $test $t: no result; output kept in $WORK/fail-$test-$t-$r.txt"
        cp "$out" "$WORK/fail-$test-$t-$r.txt"
        set -- 0 0 0 0 0
    fi
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$test" "$t" "$1" "$2" "$3" "$4" \
        "$(awk -v c=$((c1 - c0)) -v k="$TCK" 'BEGIN { printf "%.3f", c / k }')" "$5" "$secs" >>"$RAW"
    log "  $test $t: $2 req/s, p50 $3 ms, p99 $4 ms, cpu $(((c1 - c0)))/${TCK}s, errors $5"
}

read -ra TL <<<"$TARGETS"
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS"
    for test in $TESTS; do
        n=${#TL[@]}
        for i in $(seq 0 $((n - 1))); do
            run_one "$r" "$test" "${TL[$(((i + r - 1) % n))]}"
        done
    done
done

# ------------------------------------------------------------------------- memory
MEM=$WORK/mem.tsv
: >"$MEM"
for t in $TARGETS; do
    peak=$(mem_kib "$t" VmHWM)
    before=$(mem_kib "$t" VmRSS)
    count=$IDLE_CONNS
    [ "$t" = haproxy ] && [ "$count" -gt $((HAPROXY_MAXCONN - 100)) ] && count=$((HAPROXY_MAXCONN - 100))
    coproc IDLE { taskset -c "$LOAD_CORE" "$BIN/idle-conns" --addr "127.0.0.1:${HTTPS_PORT[$t]}" \
        --sni localhost --ca "$WORK/ca.pem" --path /small --count "$count" --hold 300 2>"$WORK/idle-$t.err"; }
    idle_pid=$IDLE_PID
    PIDS+=("$idle_pid")
    ready= opened=
    read -r -t 240 ready opened rest <&"${IDLE[0]}" || true
    sleep 2
    held=$(mem_kib "$t" VmRSS)
    fd=${IDLE[1]}
    eval "exec $fd>&-" # closing its stdin releases the connections
    wait "$idle_pid" 2>/dev/null || true
    [ "${ready:-}" = ready ] || { opened=0; log "  idle-conns to $t failed: $(head -c 300 "$WORK/idle-$t.err")"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${IDLE_KIB[$t]}" "$peak" "$held" "${opened:-0}" "$before" >>"$MEM"
    log "  memory $t: idle ${IDLE_KIB[$t]} KiB, peak $peak KiB, before $before KiB, $opened idle TLS conns $held KiB"
    sleep 1
done

# ------------------------------------------------------------------------ report
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel: $(uname -sr)"
    echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "proxyd: $PROXYD_LABEL, release build"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "haproxy: $(haproxy -v | awk 'NR == 1 { print $3 }')"
    echo "caddy: $(caddy version | awk '{ print $1 }')"
    echo "wrk: $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'); h2load: $(h2load --version | awk '{ print $2 }'); ab: $(ab -V | awk 'NR == 1 { print $5 }')"
    echo "settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNS=$CONNS HS_CONNS=$HS_CONNS IDLE_CONNS=$IDLE_CONNS"
    echo "wall time: $(($(date +%s) - START)) s; load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$WORK/machine.txt"
mkdir -p "$(dirname "$OUT")"
"$BIN/bench-report" --raw "$RAW" --mem "$MEM" --machine "$WORK/machine.txt" >"$OUT"
cp "$RAW" "${OUT%.md}.tsv"
cp "$MEM" "${OUT%.md}.mem.tsv"
log "wrote $OUT (raw: ${OUT%.md}.tsv, ${OUT%.md}.mem.tsv)"
