#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable whatever
# else the machine is doing (wall-clock benchmarks on a shared 2-core box are not).
# proxyd and nginx (as a reverse proxy, one worker, upstream keep-alive) in front of the
# same nginx origin, loopback only, bounded by request count. Not part of the test suite.
#
#   bash benches/callgrind.sh                 # 128 B responses over HTTP/1.1 keep-alive
#   PROXYD=/path/to/proxyd bash benches/callgrind.sh
#   PATHS="/small /100k" bash benches/callgrind.sh
#   SERVERS=proxyd bash benches/callgrind.sh  # proxyd only (nginx: SERVERS=nginx)
#   KEEP=/tmp/cg bash benches/callgrind.sh    # keep the callgrind outputs there, for
#                                             # callgrind_annotate --inclusive=yes FILE
#
# Each server runs twice under callgrind, serving N1 and then N2 requests (ab -k, 16
# connections); (total(N2) - total(N1)) / (N2 - N1) is the cost of one request with the
# start-up and shutdown cancelled out. Only user-space instructions are counted: the
# kernel's share (syscalls, loopback TCP) is not, and is much the same for both.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-2000}
N2=${N2:-12000}
PATHS=${PATHS:-/small}
for t in valgrind:valgrind nginx:nginx-light ab:apache2-utils curl:curl; do
    command -v "${t%%:*}" >/dev/null || [ -x "/usr/sbin/${t%%:*}" ] || missing+=("${t#*:}")
done
if [ -n "${missing[*]:-}" ]; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"
if [ -z "${PROXYD:-}" ]; then
    cargo build --release -q -p proxyd
    PROXYD=target/release/proxyd
fi

work=$(mktemp -d /tmp/proxyd-callgrind.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN=$(free_port) NGINX=$(free_port) HTTP=$(free_port) HTTPS=$(free_port)

mkdir -p "$work/www" "$work/tmp"
head -c 128 /dev/zero | tr '\0' a >"$work/www/small"
head -c 102400 /dev/zero | tr '\0' b >"$work/www/100k"
nginx_conf() { # name body
    cat <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/tmp/$1-b; proxy_temp_path $work/tmp/$1-p;
    fastcgi_temp_path $work/tmp/$1-f; uwsgi_temp_path $work/tmp/$1-u; scgi_temp_path $work/tmp/$1-s;
    keepalive_requests 10000000;
    $2
}
EOF
}
nginx_conf origin "default_type application/octet-stream; sendfile on;
    server { listen 127.0.0.1:$ORIGIN; root $work/www; }" >"$work/origin.conf"
nginx_conf proxy "upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
    server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://origin;
        proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host;
        proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme;
        proxy_buffers 8 32k; } }" >"$work/nginx.conf"
cat >"$work/routes.toml" <<EOF
[defaults]
hsts = false
https_redirect = false

[[route]]
hosts = ["localhost"]
upstreams = ["127.0.0.1:$ORIGIN"]
EOF
nginx -c "$work/origin.conf" -p "$work" &
pids+=($!)

wait_http() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done; echo "not ready: $1" >&2; exit 1; }
wait_http "http://127.0.0.1:$ORIGIN/small"

# run NAME N URL: the callgrind total of one run serving N requests.
run() {
    local name=$1 n=$2 url=$3 out="$work/cg.$1.$2.out" pid
    case $name in
    proxyd) RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$PROXYD" \
        --routes "$work/routes.toml" --certs-store "$work/store" --threads 1 --grace-period 0 \
        --access-log-format off --max-conns-per-ip 0 --http "127.0.0.1:$HTTP" \
        --https "127.0.0.1:$HTTPS" --admin-socket "$work/admin.sock" \
        --upgrade-socket "$work/upgrade.sock" >"$work/$name.log" 2>&1 & ;;
    nginx) valgrind --tool=callgrind --callgrind-out-file="$out" nginx -c "$work/nginx.conf" \
        -p "$work" >"$work/$name.log" 2>&1 & ;;
    esac
    pid=$!
    wait_http "$url"
    ab -q -k -n "$n" -c 16 "$url" >"$work/ab.$name.$n" 2>&1
    if [ "$name" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/cg.$name.${3##*/}.$n.out"; fi
    grep -h '^summary:\|^totals:' "$out" | head -1 | awk '{ print $2 }'
}

echo "| server | path | instructions per request |"
echo "|---|---|---:|"
for path in $PATHS; do
    for name in ${SERVERS:-proxyd nginx}; do
        port=$([ "$name" = proxyd ] && echo "$HTTP" || echo "$NGINX")
        url="http://localhost:$port$path"
        a=$(run "$name" "$N1" "$url")
        b=$(run "$name" "$N2" "$url")
        echo "| $name | \`$path\` | $(((b - a) / (N2 - N1))) |"
    done
done
