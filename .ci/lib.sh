# Shared by the .ci scripts: source it, don't run it.
# shellcheck shell=bash

# ensure_packages CMD:PACKAGE ...
# Installs (apt-get, noninteractive; sudo only when not root) the Debian package of every
# command that is not on PATH. `apt-get update` runs once, and only if something is missing.
ensure_packages() {
    local missing=() spec cmd pkg
    for spec in "$@"; do
        cmd=${spec%%:*}
        pkg=${spec#*:}
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    echo "ci: installing missing packages: ${missing[*]}" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# What every build needs: cmake for libz-ng-sys (pulled by pingora), a C compiler for ring
# and zstd, pkg-config for -sys crates, curl for the demo's instructions and smoke checks.
BUILD_PACKAGES=(cmake:cmake pkg-config:pkg-config cc:build-essential curl:curl)

# Start in the repository root, whatever the caller's directory.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
