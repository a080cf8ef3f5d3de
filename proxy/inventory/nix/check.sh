#!/usr/bin/env bash
# Checks of the Nix side with the Nix tools Debian ships (nix-bin; no nixpkgs here).
# Run by .ci/test after the build, from anywhere:
#   1. inventory.nix evaluates to the committed inventory.json (which the inventory
#      crate's tests expand to the committed routes.toml);
#   2. nixos/proxyd.nix parses, and evaluates against a stub of nixpkgs' lib
#      (module-check.nix), and the access log its unit writes is the file its
#      logrotate settings rotate;
#   3. the proxyd command line the module writes (ExecStartPre, with --check) is
#      accepted by the proxyd just built, on the repository's routes.toml.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
# Debian's nix-bin config names a build group that need not exist; nothing is built.
export NIX_CONFIG="build-users-group ="
eval_nix() { nix-instantiate --eval --strict --json "$@"; }

# 1.
if ! diff -u "$here/inventory.json" <(eval_nix "$here/inventory.nix"; echo); then
    echo "nix/check: inventory.json is not what inventory.nix evaluates to; regenerate:" >&2
    echo "  nix-instantiate --eval --strict --json proxy/inventory/nix/inventory.nix > proxy/inventory/nix/inventory.json; echo >> proxy/inventory/nix/inventory.json" >&2
    exit 1
fi

# 2.
nix-instantiate --parse "$here/../nixos/proxyd.nix" >/dev/null
failed=$(eval_nix -E "map (a: a.message) (builtins.filter (a: !a.assertion) (import $here/module-check.nix).assertions)")
if [[ $failed != "[]" ]]; then
    echo "nix/check: the module's assertions fail: $failed" >&2
    exit 1
fi
unit=$(eval_nix "$here/module-check.nix" -A systemd.services.proxyd.serviceConfig)
for want in '"ExecReload":"/nix/store/00000000000000000000000000000000-proxyd/bin/proxyctl upgrade --reload-if-unchanged"' \
    '"ExecStart":"/nix/store/00000000000000000000000000000000-proxyd/bin/proxyd --daemon $PROXYD_ARGS"' \
    '"Type":"forking"' '"PIDFile":"/run/proxyd/proxyd.pid"' \
    '"AmbientCapabilities":["CAP_NET_BIND_SERVICE"]' '"StateDirectory":"proxyd"' \
    '"CapabilityBoundingSet":["CAP_NET_BIND_SERVICE"]' '"NoNewPrivileges":true' \
    '"LogsDirectory":"proxyd"'; do
    if [[ $unit != *"$want"* ]]; then
        echo "nix/check: the module's unit lacks $want:" >&2
        echo "$unit" >&2
        exit 1
    fi
done

# The daemon's flags (one place: the unit's PROXYD_ARGS) write the access log to a file.
flags=$(eval_nix "$here/module-check.nix" -A systemd.services.proxyd.environment.PROXYD_ARGS)
if [[ $flags != *'--access-log /var/log/proxyd/access.log'* ]]; then
    echo "nix/check: the module's PROXYD_ARGS lack --access-log /var/log/proxyd/access.log: $flags" >&2
    exit 1
fi

# The access log the unit writes is the file logrotate rotates, and its postrotate has
# the main process (proxyd) reopen it.
rotate=$(eval_nix "$here/module-check.nix" -A services.logrotate.settings.proxyd)
for want in '"files":"/var/log/proxyd/access.log"' '"delaycompress":true' \
    '"postrotate":"/run/current-system/sw/bin/systemctl kill --kill-whom=main --signal=SIGUSR1 proxyd.service"'; do
    if [[ $rotate != *"$want"* ]]; then
        echo "nix/check: the module's logrotate settings lack $want:" >&2
        echo "$rotate" >&2
        exit 1
    fi
done

# 3. ExecStartPre with the unit's PROXYD_ARGS expanded (split on whitespace, as systemd
#    does with an unbraced $PROXYD_ARGS).
unquote() { local v=${1#\"}; echo "${v%\"}"; }
pre=$(unquote "$(eval_nix "$here/module-check.nix" -A systemd.services.proxyd.serviceConfig.ExecStartPre)")
args=$(unquote "$(eval_nix "$here/module-check.nix" -A systemd.services.proxyd.environment.PROXYD_ARGS)")
pre=${pre//\$PROXYD_ARGS/$args}
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
pre=${pre//\/nix\/store\/00000000000000000000000000000000-proxyd\/bin/$root/target/debug}
pre=${pre//\/etc\/proxyd\/routes.toml/$root/routes.toml}
pre=${pre//\/var\/lib\/proxyd\/certs-store/$store/certs-store}
pre=${pre//\/var\/log\/proxyd/$store}
pre=${pre//\/run\/proxyd/$store}
eval "$pre" >/dev/null
echo "nix/check: inventory.nix = inventory.json; nixos/proxyd.nix evaluates; its proxyd command line is accepted"
