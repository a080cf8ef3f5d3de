# Evaluates nixos/proxyd.nix without nixpkgs: a stub of the few `lib` functions it
# uses, option defaults filled in as the module system would, and example settings.
# Prints the systemd unit and the other config it produces (nix/check.sh checks it).
# This catches syntax, structure and typos in names; option types are not checked.
let
  lib = rec {
    mkEnableOption = description: { _option = true; default = false; inherit description; };
    mkOption = attrs: attrs // { _option = true; };
    mkIf = condition: content: if condition then content else { };
    optionals = condition: xs: if condition then xs else [ ];
    concatMap = f: xs: builtins.concatLists (map f xs);
    # As nixpkgs: safe strings stay as they are, others in single quotes.
    escapeShellArg = arg:
      let s = toString arg; in
      if builtins.match "[[:alnum:],._+:@%/-]+" s != null then s
      else "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] s}'";
    escapeShellArgs = xs: builtins.concatStringsSep " " (map escapeShellArg xs);
    types = {
      package = "package";
      path = "path";
      str = "str";
      bool = "bool";
      int = "int";
      listOf = t: "listOf ${t}";
      enum = xs: "enum";
    };
  };

  module = import ../nixos/proxyd.nix;
  options = (module { config = { }; inherit lib; pkgs = { }; }).options.services.proxyd;

  # Every option's default (nested option sets included), like the module system.
  defaults = opts: builtins.mapAttrs
    (name: o: if o ? _option then (o.default or null) else defaults o)
    opts;
  merge = a: b: a // builtins.mapAttrs
    (name: v: if builtins.isAttrs v && a ? ${name} && builtins.isAttrs a.${name} then merge a.${name} v else v)
    b;

  settings = {
    enable = true;
    package = "/nix/store/00000000000000000000000000000000-proxyd";
    routesFile = "/nix/store/00000000000000000000000000000000-routes.toml";
    dnsServers = [ "172.28.0.53" ];
    acme = { enable = true; contact = [ "mailto:ops@example.org" ]; };
  };
  cfg = merge (defaults options) settings;
in
(module { config.services.proxyd = cfg; inherit lib; pkgs = { }; }).config
