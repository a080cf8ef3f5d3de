# NixOS module for proxyd on reverse-1.
#
#   imports = [ ./proxyd.nix ];
#   services.proxyd = {
#     enable = true;
#     package = pkgs.callPackage ./proxyd-package.nix { };   # builds proxyd and proxyctl
#     routesFile = ./routes.toml;                             # generated, checked in CI
#     dnsServers = [ "172.28.0.53" ];
#     acme = { enable = true; contact = [ "mailto:ops@example.org" ]; };
#   };
#
# The daemon's own log goes to the journal; the access log to /var/log/proxyd/access.log,
# rotated daily by logrotate (services.proxyd.accessLog).
#
# The routes file is linked to /etc/proxyd/routes.toml, a path that does not change,
# and listed in reloadTriggers: a deploy that changes only the routes makes activation
# run `systemctl reload proxyd`, i.e. `proxyctl reload`, which has the running daemon
# re-read the file, validate all of it and swap it in at once; on any error the running
# table stays and the reload (and the deploy) fails.
#
# A new package or changed flags do not restart the unit either (reloadIfChanged): the
# daemon's flags are one list (`args`), the unit's PROXYD_ARGS, read by ExecStartPre,
# ExecStart and ExecReload alike, and ExecReload is `proxyctl upgrade
# --reload-if-unchanged`. When the running daemon is not the package's proxyd with these
# flags, it starts the new one, which takes the listening sockets over, and tells the old
# one to stop only once the new one answers its readiness check; if the new one fails
# (flags, certificate store, not ready within 60 s) it is stopped, the old one keeps
# serving, and the reload (so the deploy) fails with the reason in the journal.
#
# Not built here (no nixpkgs on the development machines); CI parses it and evaluates
# it against a stub of nixpkgs' lib (nix/check.sh), which catches syntax and structure
# errors, not option-type ones.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.proxyd;
  inherit (lib) mkEnableOption mkIf mkOption optionals types;

  adminSocket = "/run/proxyd/admin.sock";
  pidFile = "/run/proxyd/proxyd.pid";
  store = "/var/lib/proxyd/certs-store";
  # In LogsDirectory (the only place under /var/log the unit may write).
  accessLogFile = "/var/log/proxyd/access.log";

  args =
    [ "--routes" "/etc/proxyd/routes.toml" "--certs-store" store "--admin-socket" adminSocket
      "--upgrade-socket" "/run/proxyd/upgrade.sock" "--pid-file" pidFile
      "--log-format" cfg.logFormat "--access-log-format" cfg.accessLog.format ]
    ++ optionals (cfg.accessLog.format != "off") [ "--access-log" accessLogFile ]
    ++ lib.concatMap (a: [ "--https" a ]) cfg.https
    ++ lib.concatMap (a: [ "--http" a ]) cfg.http
    ++ lib.concatMap (a: [ "--dns-server" a ]) cfg.dnsServers
    ++ [ "--local-issuer" (if cfg.localIssuer then "on" else "off") ]
    ++ optionals cfg.acme.enable (
      [ "--acme-directory" cfg.acme.directory "--acme-challenge" cfg.acme.challenge ]
      ++ lib.concatMap (c: [ "--acme-contact" c ]) cfg.acme.contact
    )
    ++ cfg.extraArgs;
  # systemd splits an unbraced $PROXYD_ARGS on whitespace, as `proxyctl upgrade` does.
  argsWithSpace = builtins.filter (a: builtins.match ".*[[:space:]].*" a != null) args;

  proxyd = "${cfg.package}/bin/proxyd";
  proxyctl = "${cfg.package}/bin/proxyctl";
in
{
  options.services.proxyd = {
    enable = mkEnableOption "proxyd, the HTTPS reverse proxy and TLS terminator";

    package = mkOption {
      type = types.package;
      description = "The package with bin/proxyd and bin/proxyctl.";
    };

    routesFile = mkOption {
      type = types.path;
      description = ''
        The routing table, generated from the inventory
        (proxyctl routes generate --inventory inventory.json -o routes.toml).
        Linked to /etc/proxyd/routes.toml.
      '';
    };

    https = mkOption {
      type = types.listOf types.str;
      default = [ "0.0.0.0:443" "[::]:443" ];
      description = "TLS listeners (--https).";
    };

    http = mkOption {
      type = types.listOf types.str;
      default = [ "0.0.0.0:80" "[::]:80" ];
      description = "Plain-HTTP listeners: redirects to https, ACME HTTP-01 (--http).";
    };

    dnsServers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "172.28.0.53" ];
      description = ''
        Name servers for upstream DNS names (--dns-server); empty: /etc/resolv.conf.
        Names that do not resolve use their fallback addresses from the inventory.
      '';
    };

    localIssuer = mkOption {
      type = types.bool;
      default = false;
      description = "Issue missing certificates from the embedded local CA (--local-issuer).";
    };

    logFormat = mkOption {
      type = types.enum [ "text" "json" ];
      default = "json";
      description = "Log format on stderr, i.e. in the journal (--log-format).";
    };

    accessLog = {
      format = mkOption {
        type = types.enum [ "json" "combined" "off" ];
        default = "json";
        description = ''
          Access log format (--access-log-format). The log, one line per request, is
          written to /var/log/proxyd/access.log (not the journal: a flood of requests
          must not push the daemon's own messages out of it) and rotated by logrotate.
        '';
      };
      rotate = mkOption {
        type = types.int;
        default = 14;
        description = "Rotated access logs kept (one a day, or one per 1 GiB).";
      };
    };

    acme = {
      enable = mkEnableOption "certificates from an ACME CA (Let's Encrypt by default)";
      directory = mkOption {
        type = types.str;
        default = "letsencrypt";
        description = "ACME directory URL, or letsencrypt / letsencrypt-staging (--acme-directory).";
      };
      challenge = mkOption {
        type = types.enum [ "http-01" "tls-alpn-01" ];
        default = "http-01";
        description = "Challenge type (--acme-challenge).";
      };
      contact = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "mailto:ops@example.org" ];
        description = "Account contacts (--acme-contact).";
      };
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More proxyd flags.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Open TCP 80 and 443.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [{
      assertion = argsWithSpace == [ ];
      message = "services.proxyd: flags cannot contain whitespace: ${toString argsWithSpace}";
    }];
    environment.etc."proxyd/routes.toml".source = cfg.routesFile;
    environment.systemPackages = [ cfg.package ];
    networking.firewall.allowedTCPPorts = optionals cfg.openFirewall [ 80 443 ];

    # logrotate renames the file, then SIGUSR1 (to the main process: proxyd itself) has
    # proxyd write out what it holds and reopen the path, creating the new file: no line
    # is lost or split. delaycompress: never compress a file proxyd may still be ending.
    services.logrotate = mkIf (cfg.accessLog.format != "off") {
      enable = true;
      settings.proxyd = {
        files = accessLogFile;
        frequency = "daily";
        maxsize = "1G";
        rotate = cfg.accessLog.rotate;
        missingok = true;
        notifempty = true;
        nocreate = true;
        compress = true;
        delaycompress = true;
        sharedscripts = true;
        postrotate = "/run/current-system/sw/bin/systemctl kill --kill-whom=main --signal=SIGUSR1 proxyd.service";
      };
    };

    systemd.services.proxyd = {
      description = "proxyd HTTPS reverse proxy";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # A new routes file alone is a reload, not a restart; so is a changed unit (a new
      # package, other flags): ExecReload upgrades to it without dropping a connection.
      reloadTriggers = [ cfg.routesFile ];
      reloadIfChanged = true;
      environment = {
        PROXYCTL_SOCKET = adminSocket;
        # The daemon's flags, in one place.
        PROXYD_ARGS = builtins.concatStringsSep " " args;
        # The binary ExecReload upgrades to.
        PROXYD_BIN = proxyd;
      };

      serviceConfig = {
        # `proxyd --daemon` returns once the daemon serves; systemd follows the PID
        # file, which an upgrade points at the new daemon.
        Type = "forking";
        PIDFile = pidFile;
        # The whole routes file is checked before any port is bound.
        ExecStartPre = "${proxyd} $PROXYD_ARGS --check";
        ExecStart = "${proxyd} --daemon $PROXYD_ARGS";
        # Same daemon and flags: re-read the routes file, validated whole; on any error
        # the running table stays and the reload fails (exit 1) with every error in the
        # journal. Otherwise a binary upgrade, which fails (exit 1, the reason in the
        # journal) and leaves the old daemon serving if the new one does not get ready.
        ExecReload = "${proxyctl} upgrade --reload-if-unchanged";
        # Up to 60 s for the new daemon to get ready, 40 s for a failed one to drain.
        TimeoutReloadSec = "120s";
        Restart = "on-failure";
        RestartSec = "2s";
        # In-flight requests get proxyd's grace period (30 s) on stop.
        TimeoutStopSec = "45s";
        KillSignal = "SIGTERM";

        DynamicUser = true;
        User = "proxyd";
        Group = "proxyd";
        # The certificate store: the daemon's only state (keys 0600, directory 0700).
        StateDirectory = "proxyd";
        StateDirectoryMode = "0700";
        # The access log (/var/log/proxyd/access.log, rotated by logrotate).
        LogsDirectory = "proxyd";
        LogsDirectoryMode = "0750";
        # Admin and upgrade sockets; proxyctl (root, or the proxyd group) reaches them.
        RuntimeDirectory = "proxyd";
        RuntimeDirectoryMode = "0750";
        UMask = "0077";

        # Ports below 1024 without root.
        AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
        CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
        NoNewPrivileges = true;

        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = false; # would drop CAP_NET_BIND_SERVICE in the host namespace
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" ];
        SystemCallErrorNumber = "EPERM";
        LimitNOFILE = 65536;
      };
    };
  };
}
