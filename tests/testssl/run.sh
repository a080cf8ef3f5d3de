#!/usr/bin/env bash
# Scan proxyd's TLS listener with testssl.sh, on loopback only.
#
#   bash tests/testssl/run.sh            # writes tests/testssl/report.{json,txt}
#
# Starts a real proxyd and one backend (the `testssl-target` binary of the tests crate),
# runs Debian's testssl.sh against it with the target's CA trusted, writes the JSON and
# text reports next to this script, and exits 1 when a finding is above LOW (severity
# MEDIUM, HIGH or CRITICAL). Commit the reports. The target serves a certificate shaped
# like a public CA's (90 days, CRL URI), not the local issuer's: README.md here says why.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../.ci/lib.sh
. "$here/../../.ci/lib.sh" # also changes to the repository root
ensure_packages "${BUILD_PACKAGES[@]}" testssl:testssl.sh hexdump:bsdextrautils

cargo build -q -p proxyd -p tests --bin proxyd --bin testssl-target
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

work=$(mktemp -d)
cleanup() {
    # EOF on its stdin makes the target stop proxyd and remove its directory (the CA
    # and the store); kill it only if it has not exited after a few seconds.
    exec 3>&- 2>/dev/null || true
    if [ -n "${pid:-}" ]; then
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
    fi
    case "${ca:-}" in */testssl-target-*/root-ca.pem) rm -rf "$(dirname "$ca")" ;; esac
    rm -rf "$work"
}
trap cleanup EXIT

# The target serves until its stdin closes: keep a pipe open on fd 3.
mkfifo "$work/in"
PROXYD_BIN="$target_dir/debug/proxyd" "$target_dir/debug/testssl-target" <"$work/in" >"$work/ready" 2>"$work/target.log" &
pid=$!
exec 3>"$work/in"
for _ in $(seq 300); do
    grep -q '^READY ' "$work/ready" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/target.log" >&2; exit 1; }
    sleep 0.1
done
read -r _ addr ca name <"$work/ready"
port=${addr##*:}
echo "testssl: scanning https://$name:$port/ (127.0.0.1), CA $ca" >&2

rm -f "$here/report.json" "$here/report.txt"
# --ip: never resolve the name; --add-ca: trust the local CA; no colour in the report.
testssl --quiet --color 0 --warnings off --nodns none --ip 127.0.0.1 \
    --add-ca "$ca" --jsonfile "$here/report.json" --logfile "$here/report.txt" \
    "https://$name:$port/" >/dev/null || true
[ -s "$here/report.json" ] || { echo "testssl: no report written" >&2; exit 1; }

# The port and the temporary paths change at every run: keep the reports diffable.
sed -i -e "s/:$port\b/:PORT/g" -e "s/\"port\" *: *\"$port\"/\"port\": \"PORT\"/" -e "s#$work#TMP#g" -e "s#$(dirname "$ca")#TMP#g" "$here/report.json" "$here/report.txt"

above_low=$(grep -E '"severity" *: *"(MEDIUM|HIGH|CRITICAL)"' "$here/report.json" || true)
if [ -n "$above_low" ]; then
    echo "testssl: findings above LOW:" >&2
    grep -E -B3 '"severity" *: *"(MEDIUM|HIGH|CRITICAL)"' "$here/report.json" >&2
    exit 1
fi
echo "testssl: no finding above LOW ($(grep -c '"severity"' "$here/report.json") checks); reports in tests/testssl/" >&2
