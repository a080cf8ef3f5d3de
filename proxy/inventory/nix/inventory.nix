# The inventory as a Nix expression: the same content as the repository's
# inventory.toml, written the way an infrastructure repository that describes its
# machines in Nix would derive it. Only builtins, no nixpkgs, so it evaluates anywhere:
#
#   nix-instantiate --eval --strict --json inventory.nix > inventory.json
#   nix eval --json --file inventory.nix > inventory.json        # nix-command
#   proxyctl routes generate --inventory inventory.json -o routes.toml
#
# In the infrastructure repository, `hosts` would come from the machines' own
# configuration (e.g. each NixOS host's networking options) instead of being listed
# here; the inventory is just the part of that data the proxy needs.
let
  # One attribute per host; the attribute name is the host name.
  vm = site: v4: v6: name: {
    inherit site;
    hypervisor = "kvm-1";
    ipv4 = "172.28.1.${toString v4}";
    ipv6 = "fd00:7fd7:e9a5:1::${v6}";
    dns = "${name}.vrt.${site}";
  };
  hosts = {
    web-1 = vm "fsn" 50 "32" "web-1";
    nextcloud-1 = vm "fsn" 51 "33" "nextcloud-1";
    mail-1 = vm "fsn" 9 "9" "mail-1";
    gitlab-1 = vm "fsn" 2 "2" "gitlab-1";
    giraffe = { ipv4 = "172.28.3.1"; };
  };

  domain = "example.org";
  # id -> service; `name` is a label under `domain` unless given in full.
  services = {
    site = { name = domain; redirect_from = [ "www.${domain}" ]; host = "web-1"; app = "static"; };
    blog = { host = "web-1"; app = "php"; overrides.max_body = "32m"; };
    app = { host = "web-1"; app = "django"; overrides.read_timeout = "120s"; };
    chat = { host = "web-1"; port = 8065; app = "mattermost"; };
    cloud = { host = "nextcloud-1"; app = "nextcloud"; };
    webmail = { name = "mail.${domain}"; host = "mail-1"; app = "roundcube"; overrides.max_body = "25m"; };
    git = { host = "gitlab-1"; app = "gitlab"; };
    monitoring = { host = "giraffe"; app = "internal"; };
  };
in
{
  internal_networks = [ "172.28.0.0/16" "fd00:7fd7:e9a5::/48" ];
  defaults.response_headers."X-Powered-By" = "";
  host = builtins.attrValues (builtins.mapAttrs (name: h: h // { inherit name; }) hosts);
  service = builtins.attrValues (builtins.mapAttrs
    (id: s: { inherit id; name = "${id}.${domain}"; } // s)
    services);
}
