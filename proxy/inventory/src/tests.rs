//! Tests through the public API: the shipped inventory and routes.toml, determinism,
//! TOML/JSON equivalence, every kind of error with its position (snapshots of the
//! rendered diagnostics), and the reference file.

use expect_test::{expect, expect_file, Expect};

use crate::*;

const SHIPPED: &str = include_str!("../../../inventory.toml");
const SHIPPED_JSON_FROM_NIX: &str = include_str!("../nix/inventory.json");
const REFERENCE: &str = include_str!("../inventory.reference.toml");

fn gen(file: &str, text: &str) -> String {
    generate(file, text).unwrap_or_else(|d| panic!("{d}"))
}

/// Parse `text` as `file` and compare the rendered diagnostics (or `OK` and a
/// summary) with the snapshot. `UPDATE_EXPECT=1 cargo test -p inventory` rewrites them.
fn check(file: &str, text: &str, want: &Expect) {
    let got = match parse(file, text) {
        Ok(inv) => format!(
            "OK: {} hosts, {} services",
            inv.hosts.len(),
            inv.services.len()
        ),
        Err(d) => d.to_string(),
    };
    want.assert_eq(&got);
}

// -- the repository's files ------------------------------------------------------------

/// The committed routes.toml is exactly what the committed inventory generates. To
/// regenerate: `proxyctl routes generate --inventory inventory.toml -o routes.toml`
/// (or `UPDATE_EXPECT=1 cargo test -p inventory`).
#[test]
fn shipped_inventory_generates_shipped_routes_toml_byte_for_byte() {
    expect_file!["../../../routes.toml"].assert_eq(&gen("inventory.toml", SHIPPED));
}

#[test]
fn shipped_routes_route_as_the_inventory_says() {
    let t = routes::parse("routes.toml", &gen("inventory.toml", SHIPPED))
        .unwrap_or_else(|d| panic!("{d}"));
    let target = |host: &str, path: &str| t.lookup(host, path).cloned().unwrap();
    let route = |host: &str, path: &str| match target(host, path) {
        routes::Target::Proxy(r) => r,
        other => panic!("{host}{path}: {other:?}"),
    };
    // Mattermost: websockets only on its API path; 50m bodies on both.
    let ws = route("chat.example.org", "/api/v4/websocket");
    assert_eq!(ws.id, "chat-websocket");
    assert!(ws.policy.websocket);
    assert!(!route("chat.example.org", "/").policy.websocket);
    assert_eq!(ws.policy.max_body, Some(50 << 20));
    let users_ws = route("chat.example.org", "/api/v4/users/websocket");
    assert_eq!(users_ws.id, "chat-users-websocket");
    assert!(users_ws.policy.websocket);
    // Upstreams by DNS name with the inventory's addresses as fallback.
    assert_eq!(
        ws.upstreams,
        [routes::Upstream::Name {
            host: "web-1.vrt.fsn".into(),
            port: 8065,
            fallback: vec![
                "172.28.1.50".parse().unwrap(),
                "fd00:7fd7:e9a5:1::32".parse().unwrap()
            ],
        }]
    );
    // A host without a DNS name is reached by address.
    let mon = route("monitoring.example.org", "/");
    assert_eq!(mon.upstreams[0].to_string(), "172.28.3.1:80");
    assert_eq!(mon.policy.allow.as_ref().map(Vec::len), Some(2));
    // Overrides win over presets; presets over the defaults.
    assert_eq!(
        route("mail.example.org", "/").policy.max_body,
        Some(25 << 20)
    );
    assert_eq!(
        route("blog.example.org", "/").policy.max_body,
        Some(32 << 20)
    );
    assert_eq!(route("git.example.org", "/").policy.max_body, None);
    assert_eq!(
        route("cloud.example.org", "/").policy.response_headers,
        [("X-Powered-By".to_string(), String::new())]
    );
    // Redirects: CalDAV/CardDAV discovery, www to the apex keeping the path.
    let routes::Target::Redirect(dav) = target("cloud.example.org", "/.well-known/caldav") else {
        panic!()
    };
    assert_eq!((dav.to.as_str(), dav.status), ("/remote.php/dav/", 301));
    let routes::Target::Redirect(www) = target("www.example.org", "/a/b") else {
        panic!()
    };
    assert_eq!(
        www.location("example.org", "/a/b", Some("c=d")),
        "https://example.org/a/b?c=d"
    );
}

/// The Nix expression of the same inventory (nix/inventory.nix; CI checks that
/// nix/inventory.json is what it evaluates to) generates the same routes.
#[test]
fn json_from_nix_generates_the_same_routes_as_the_toml() {
    let from_toml = gen("inventory.toml", SHIPPED);
    let from_json = gen("inventory.json", SHIPPED_JSON_FROM_NIX);
    assert_eq!(
        from_json,
        from_toml.replace("inventory.toml", "inventory.json")
    );
}

#[test]
fn reference_file_is_valid_and_documents_every_key_and_app() {
    let out = gen("inventory.reference.toml", REFERENCE);
    routes::parse("routes.toml", &out).unwrap_or_else(|d| panic!("{d}"));
    let keys = load::TOP_KEYS
        .iter()
        .chain(load::HOST_KEYS)
        .chain(load::SERVICE_KEYS);
    for key in keys {
        let documented = REFERENCE.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} ="))
                || l.starts_with(&format!("[{key}]"))
                || l.starts_with(&format!("[[{key}]]"))
        });
        assert!(
            documented,
            "`{key}` is not documented in inventory.reference.toml"
        );
    }
    for app in App::ALL {
        assert!(
            REFERENCE.contains(&format!("#   \"{app}\"")),
            "app `{app}` is not documented in inventory.reference.toml"
        );
    }
}

// -- determinism -------------------------------------------------------------------------

/// The shipped inventory as a JSON value (through toml's serde support).
fn shipped_value() -> serde_json::Value {
    toml::from_str(SHIPPED).unwrap()
}

/// JSON text with every object's keys in reverse order (serde_json's own maps sort).
fn json_reversed_keys(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        serde_json::to_string(k).unwrap(),
                        json_reversed_keys(v)
                    )
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        serde_json::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(json_reversed_keys).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Reorder every array the generator must not depend on, by a seeded shuffle.
fn shuffled(mut v: serde_json::Value, seed: u64) -> serde_json::Value {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut shuffle = |a: &mut Vec<serde_json::Value>| {
        for i in (1..a.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            a.swap(i, (state >> 33) as usize % (i + 1));
        }
    };
    let obj = v.as_object_mut().unwrap();
    if let Some(serde_json::Value::Array(services)) = obj.get_mut("service") {
        // Two aliases on one service, so there is an order to change.
        let blog = services.iter_mut().find(|s| s["id"] == "blog").unwrap();
        blog.as_object_mut().unwrap().insert(
            "aliases".into(),
            serde_json::json!(["b.example.net", "a.example.net"]),
        );
    }
    for key in ["host", "service", "internal_networks"] {
        if let Some(serde_json::Value::Array(a)) = obj.get_mut(key) {
            shuffle(a);
        }
    }
    if let Some(serde_json::Value::Array(services)) = obj.get_mut("service") {
        for s in services.iter_mut() {
            for key in ["aliases", "redirect_from"] {
                if let Some(serde_json::Value::Array(a)) = s.get_mut(key) {
                    shuffle(a);
                }
            }
        }
    }
    v
}

#[test]
fn generation_is_deterministic_under_reordering() {
    let base = shuffled(shipped_value(), 0);
    let want = gen("inventory.json", &serde_json::to_string(&base).unwrap());
    for seed in 1..20 {
        let v = shuffled(shipped_value(), seed);
        // Arrays reordered, keys in serde_json's order.
        assert_eq!(
            gen("inventory.json", &serde_json::to_string(&v).unwrap()),
            want,
            "seed {seed}"
        );
        // ... and every object's keys reversed.
        assert_eq!(
            gen("inventory.json", &json_reversed_keys(&v)),
            want,
            "seed {seed}"
        );
        // ... and as TOML.
        let toml_text = toml::to_string(&v).unwrap();
        assert_eq!(
            gen("inventory.toml", &toml_text).replace("inventory.toml", "inventory.json"),
            want,
            "seed {seed} as TOML:\n{toml_text}"
        );
    }
}

#[test]
fn json_and_toml_of_the_same_content_give_the_same_routes() {
    let json = serde_json::to_string_pretty(&shipped_value()).unwrap();
    assert_eq!(
        gen("inventory.json", &json),
        gen("inventory.toml", SHIPPED).replace("inventory.toml", "inventory.json")
    );
    // Detected without the extension, too.
    assert_eq!(Format::detect("inventory", &json), Format::Json);
    assert_eq!(Format::detect("inventory", SHIPPED), Format::Toml);
}

// -- errors, each with its location --------------------------------------------------------

const TWO_HOSTS: &str = r#"
internal_networks = ["172.28.0.0/16"]

[[host]]
name = "web-1"
ipv4 = "172.28.1.50"

[[host]]
name = "db-1"
ipv4 = "172.28.1.60"
"#;

#[test]
fn toml_errors_are_all_reported_with_file_line_col() {
    #[rustfmt::skip]
    let cases: &[(&str, Expect)] = &[
        (TWO_HOSTS, expect!["OK: 2 hosts, 0 services"]),
        ("hosts = []\n[[host]]\nname = \"a\"\nipv4 = \"10.0.0.1\"\nadress = \"x\"\n", expect![[r#"
            error: inventory.toml:1:1: unknown field `hosts`, expected one of `internal_networks`, `defaults`, `host`, `service`
            error: inventory.toml:5:1: unknown field `adress` in a host, expected one of `name`, `site`, `hypervisor`, `ipv4`, `ipv6`, `dns`
              in [[host]] #1 (name = "a")"#]]),
        // Dangling reference, with the hosts there are.
        (&format!("{TWO_HOSTS}\n[[service]]\nname = \"a.example.org\"\nhost = \"web-2\"\napp = \"static\"\n"), expect![[r#"
            error: inventory.toml:14:8: service `a.example.org` is on host `web-2`, which is not in the inventory (hosts: db-1, web-1)
              in [[service]] #1 (name = "a.example.org")"#]]),
        // Two services claiming one name (case and trailing dot do not make it another).
        (&format!("{TWO_HOSTS}\n[[service]]\nname = \"a.example.org\"\nhost = \"web-1\"\napp = \"static\"\n\n[[service]]\nname = \"A.example.org.\"\nhost = \"db-1\"\napp = \"php\"\n"), expect![[r#"
            error: inventory.toml:18:8: `a.example.org/` of service `a.example.org` is already claimed by service `a.example.org` at inventory.toml:13:8
              in [[service]] #2 (name = "A.example.org.")"#]]),
        // An alias against a path a preset adds; ids a preset adds.
        (&format!("{TWO_HOSTS}\n[[service]]\nid = \"chat\"\nname = \"chat.example.org\"\nhost = \"web-1\"\napp = \"mattermost\"\n\n[[service]]\nid = \"chat-websocket\"\nname = \"ws.example.org\"\naliases = [\"chat.example.org\"]\npath = \"/api/v4/websocket\"\nhost = \"db-1\"\napp = \"static\"\n"), expect![[r#"
            error: inventory.toml:19:6: duplicate route id `chat-websocket` (first at inventory.toml:13:6); give one of the services a distinct `id`
              in [[service]] #2 (name = "ws.example.org")
            error: inventory.toml:21:12: `chat.example.org/api/v4/websocket` of service `chat-websocket` is already claimed by service `chat` (app `mattermost` adds it) at inventory.toml:14:8
              in [[service]] #2 (name = "ws.example.org")"#]]),
        // Bad values of every kind, all reported.
        ("[[host]]\nname = \"Web 1\"\nipv4 = \"fd00::1\"\nipv6 = \"172.28.1.1\"\ndns = \"web_1..fsn\"\n\n[[host]]\nname = \"x\"\n\n[[service]]\nname = \"*.example.org\"\naliases = [\"ok.example.org\", \"bad host\", 7]\nhost = 3\nport = 0\npath = \"api\"\napp = \"wordpress\"\noverrides = { max_body = \"10x\", websocket = \"yes\", lb = \"fastest\", upstreams = [] }\n", expect![[r#"
            error: inventory.toml:2:8: invalid host name `Web 1`: use lower-case letters, digits, `-`, `_` and `.`
              in [[host]] #1 (name = "Web 1")
            error: inventory.toml:3:8: `fd00::1` is an IPv6 address: write it as `ipv6`
              in [[host]] #1 (name = "Web 1")
            error: inventory.toml:4:8: `172.28.1.1` is an IPv4 address: write it as `ipv4`
              in [[host]] #1 (name = "Web 1")
            error: inventory.toml:5:7: invalid DNS name `web_1..fsn`: empty label (`..`, or a leading dot)
              in [[host]] #1 (name = "Web 1")
            error: inventory.toml:7:1: a host needs an address: give `ipv4`, `ipv6` or both
              in [[host]] #2 (name = "x")
            error: inventory.toml:11:8: the main name `*.example.org` cannot be a wildcard: put it in `aliases`
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:12:30: invalid host `bad host`: invalid character ` `
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:12:42: `aliases` must contain only strings, found an integer
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:13:8: `host` must be a string, found an integer
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:14:8: invalid `port` 0, expected 1-65535
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:15:8: path `api` must start with `/`
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:16:7: unknown app `wordpress`, expected one of `static`, `php`, `django`, `flask`, `nextcloud`, `gitlab`, `roundcube`, `mattermost`, `internal`
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:17:26: invalid size `10x` for `max_body`, expected a number of bytes, "<n>k", "<n>m", "<n>g" or "unlimited"
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:17:45: `websocket` must be a boolean (true or false), found a string
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:17:57: unknown `lb` policy `fastest`, expected one of `round_robin`, `random`, `ip_hash`
              in [[service]] #1 (name = "*.example.org")
            error: inventory.toml:17:68: unknown field `upstreams` in `overrides` (route policy keys only), expected one of `max_body`, `connect_timeout`, `read_timeout`, `write_timeout`, `idle_timeout`, `websocket`, `hsts`, `hsts_max_age`, `hsts_include_subdomains`, `hsts_preload`, `allow`, `request_headers`, `response_headers`, `https_redirect`, `lb`, `health_check_path`, `health_check_interval`
              in [[service]] #1 (name = "*.example.org")"#]]),
        // Hosts clash by name, address and DNS name; `internal` needs the networks.
        ("[[host]]\nname = \"a\"\nipv4 = \"10.0.0.1\"\ndns = \"a.internal\"\n\n[[host]]\nname = \"b\"\nipv4 = \"10.0.0.1\"\ndns = \"A.internal\"\n\n[[host]]\nname = \"a\"\nipv6 = \"fd00::1\"\n\n[[service]]\nname = \"admin.example.org\"\nhost = \"a\"\napp = \"internal\"\n", expect![[r#"
            error: inventory.toml:8:8: address `10.0.0.1` is also host `a`'s (at inventory.toml:3:8)
              in [[host]] #2 (name = "b")
            error: inventory.toml:9:7: DNS name `a.internal` is also host `a`'s (at inventory.toml:4:7)
              in [[host]] #2 (name = "b")
            error: inventory.toml:12:8: duplicate host `a` (first at inventory.toml:2:8)
              in [[host]] #3 (name = "a")
            error: inventory.toml:18:7: app `internal` allows only the inventory's `internal_networks`, which it does not define
              in [[service]] #1 (name = "admin.example.org")"#]]),
        // Redirects that would loop; an address as the main name.
        (&format!("{TWO_HOSTS}\n[[service]]\nname = \"www.example.org\"\nredirect_from = [\"*.example.org\"]\npath = \"/.well-known/caldav\"\nhost = \"web-1\"\napp = \"nextcloud\"\n\n[[service]]\nname = \"172.28.1.60\"\nhost = \"db-1\"\napp = \"static\"\n"), expect![[r#"
            error: inventory.toml:13:8: `www.example.org/.well-known/caldav` of service `www.example.org/.well-known/caldav` (app `nextcloud` adds it) is already claimed by service `www.example.org/.well-known/caldav` at inventory.toml:13:8
              in [[service]] #1 (name = "www.example.org")
            error: inventory.toml:14:18: `*.example.org` in `redirect_from` matches the main name `www.example.org`: it would redirect to itself
              in [[service]] #1 (name = "www.example.org")
            error: inventory.toml:15:8: with this path, the redirect app `nextcloud` adds on `/.well-known/caldav` would point under itself (`/.well-known/caldav/remote.php/dav/`)
              in [[service]] #1 (name = "www.example.org")
            error: inventory.toml:20:8: the main name `172.28.1.60` must be a DNS name, not an address: put it in `aliases`
              in [[service]] #2 (name = "172.28.1.60")"#]]),
        ("[[host]\n", expect!["error: inventory.toml:1:8: invalid TOML: unclosed array table, expected `]`"]),
        ("host = 3\nservice = [1]\ndefaults = { hsts = 1 }\ninternal_networks = [\"10.0.0.1/8\"]\n", expect![[r#"
            error: inventory.toml:1:8: `host` must be an array of tables ([[host]]), found an integer
            error: inventory.toml:2:12: `service` must be an array of tables ([[service]]), found an integer
            error: inventory.toml:3:21: `hsts` must be a boolean (true or false), found an integer
              in [defaults]
            error: inventory.toml:4:22: network `10.0.0.1/8` has host bits set; did you mean `10.0.0.0/8`?"#]]),
    ];
    for (text, want) in cases {
        check("inventory.toml", text, want);
    }
}

#[test]
fn json_errors_have_line_col_and_the_json_pointer() {
    #[rustfmt::skip]
    let cases: &[(&str, Expect)] = &[
        ("{\"host\": [{\"name\": \"a\", \"ipv4\": \"10.0.0.1\"}],\n \"service\": [{\"name\": \"a.example.org\", \"host\": \"b\", \"app\": \"static\", \"ports\": 80}]}\n", expect![[r#"
            error: inventory.json:2:48: service `a.example.org` is on host `b`, which is not in the inventory (hosts: a)
              in /service/0 (name = "a.example.org")
            error: inventory.json:2:70: unknown field `ports` in a service, expected one of `id`, `name`, `aliases`, `redirect_from`, `host`, `port`, `path`, `strip_prefix`, `acme_profile`, `redirect_paths`, `redirect_status`, `app`, `overrides`
              in /service/0 (name = "a.example.org")"#]]),
        // Syntax errors come from serde_json, at its line and column.
        ("{\n  \"host\": [\n    {\"name\": \"a\",}\n  ]\n}\n", expect!["error: inventory.json:3:18: invalid JSON: key must be a string"]),
        // serde_json keeps the last of two equal keys silently; here it is an error.
        ("{\"host\": [{\"name\": \"a\", \"ipv4\": \"10.0.0.1\", \"ipv4\": \"10.0.0.2\"}]}", expect!["error: inventory.json:1:45: duplicate key `ipv4` (first at inventory.json:1:25)"]),
        ("{\"defaults\": {\"max_body\": null, \"read_timeout\": 1.5, \"allow\": [\"10.0.0.0/8\", false]}}", expect![[r#"
            error: inventory.json:1:27: `max_body` is null: leave the key out for the default
              in /defaults
            error: inventory.json:1:49: `read_timeout` must be a duration string (e.g. "30s"), found a float
              in /defaults
            error: inventory.json:1:78: `allow` must contain only strings, found a boolean
              in /defaults"#]]),
        ("[1, 2]", expect!["error: inventory.json:1:1: the inventory must be a table (a JSON object)"]),
    ];
    for (text, want) in cases {
        check("inventory.json", text, want);
    }
}

// -- semantics ---------------------------------------------------------------------------

#[test]
fn overrides_merge_over_presets_and_header_tables_merge_by_name() {
    let text = r#"
[defaults]
response_headers = { "X-Frame-Options" = "DENY" }

[[host]]
name = "h"
ipv6 = "fd00::5"

[[service]]
id = "c"
name = "c.example.org"
aliases = ["*.c.example.org"]
redirect_from = ["old.example.org"]
path = "/nc"
port = 8080
host = "h"
app = "nextcloud"
overrides = { max_body = 1024, hsts = false, response_headers = { "x-robots-tag" = "none" } }
"#;
    let out = gen("i.toml", text);
    let t = routes::parse("routes.toml", &out).unwrap_or_else(|d| panic!("{d}"));
    let Some(routes::Target::Proxy(r)) = t.lookup("a.c.example.org", "/nc/x") else {
        panic!("{out}")
    };
    assert_eq!(r.policy.max_body, Some(1024));
    assert_eq!(r.policy.hsts, None);
    assert_eq!(r.policy.read_timeout, std::time::Duration::from_secs(3600));
    assert_eq!(r.upstreams[0].to_string(), "[fd00::5]:8080");
    assert_eq!(
        r.policy.response_headers,
        [
            ("X-Frame-Options".to_string(), "DENY".to_string()),
            ("x-robots-tag".to_string(), "none".to_string())
        ]
    );
    // Well-known redirects stay at the root; their target is under the service's path.
    let Some(routes::Target::Redirect(d)) = t.lookup("c.example.org", "/.well-known/carddav")
    else {
        panic!("{out}")
    };
    assert_eq!(d.to, "/nc/remote.php/dav/");
    let Some(routes::Target::Redirect(old)) = t.lookup("old.example.org", "/x") else {
        panic!("{out}")
    };
    assert_eq!(old.location("p", "/x", None), "https://c.example.org/nc/x");
}

/// Regression (issue 11, item 7): the 2020 configuration, netdata of several hosts under
/// `/n/<host>/` of one name with the prefix stripped and `/<host>` redirected there, and
/// Mattermost's two websocket paths, could not be written as an inventory.
#[test]
fn path_prefixes_can_be_stripped_and_paths_redirected() {
    let text = r#"
internal_networks = ["172.28.0.0/16"]

[[host]]
name = "web-1"
ipv4 = "172.28.1.50"

[[host]]
name = "mail-1"
ipv4 = "172.28.1.9"

[[service]]
id = "monitoring"
name = "mon.example.org"
host = "web-1"
app = "internal"

[[service]]
id = "netdata-web-1"
name = "mon.example.org"
host = "web-1"
port = 19999
path = "/n/web-1/"
strip_prefix = true
redirect_paths = ["/web-1", "/w1"]
app = "internal"

[[service]]
id = "netdata-mail-1"
name = "mon.example.org"
host = "mail-1"
port = 19999
path = "/n/mail-1"
strip_prefix = true
redirect_paths = ["/mail-1"]
redirect_status = 308
app = "internal"

[[service]]
id = "chat"
name = "chat.example.org"
host = "web-1"
port = 8065
app = "mattermost"
"#;
    let out = gen("i.toml", text);
    let t = routes::parse("routes.toml", &out).unwrap_or_else(|d| panic!("{d}"));
    let target = |host: &str, path: &str| t.route(host, path).unwrap().cloned();
    // (request path, route id, path sent upstream)
    for (path, id, upstream_path) in [
        ("/n/web-1/", "netdata-web-1", "/"),
        ("/n/web-1", "netdata-web-1", "/"),
        ("/n/web-1/api/v1/info", "netdata-web-1", "/api/v1/info"),
        ("/n/web-1;x/api", "netdata-web-1", "/api"),
        ("/n/mail-1/", "netdata-mail-1", "/"),
        ("/n/mail-1/dashboard.js", "netdata-mail-1", "/dashboard.js"),
        ("/n/web-10", "monitoring", "/n/web-10"),
        ("/", "monitoring", "/"),
    ] {
        let Some(routes::Target::Proxy(r)) = target("mon.example.org", path) else {
            panic!("{path}:\n{out}")
        };
        assert_eq!(r.id, id, "{path}");
        assert!(r.policy.allow.is_some(), "{path}");
        let sent = if r.strip_prefix {
            routes::strip_path(&r.path, path).into_owned()
        } else {
            path.to_string()
        };
        assert_eq!(sent, upstream_path, "{path}");
    }
    // (request path and query, Location, status)
    for (path, query, location, status) in [
        ("/web-1", None, "https://mon.example.org/n/web-1/", 301),
        ("/web-1/", None, "https://mon.example.org/n/web-1/", 301),
        (
            "/w1/x",
            Some("y=1"),
            "https://mon.example.org/n/web-1/x?y=1",
            301,
        ),
        ("/mail-1", None, "https://mon.example.org/n/mail-1", 308),
        ("/mail-1/a", None, "https://mon.example.org/n/mail-1/a", 308),
    ] {
        let Some(routes::Target::Redirect(r)) = target("mon.example.org", path) else {
            panic!("{path}:\n{out}")
        };
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.location("mon.example.org", path, query), location);
    }
    assert!(
        out.contains("name = \"netdata-web-1-redirect/w1\""),
        "{out}"
    );
    // Mattermost: a websocket route on each of its two paths, not on the rest.
    for (path, id, ws) in [
        ("/api/v4/websocket", "chat-websocket", true),
        ("/api/v4/users/websocket", "chat-users-websocket", true),
        ("/api/v4/users/me", "chat", false),
    ] {
        let Some(routes::Target::Proxy(r)) = target("chat.example.org", path) else {
            panic!("{path}:\n{out}")
        };
        assert_eq!((r.id.as_str(), r.policy.websocket), (id, ws), "{path}");
    }
}

#[test]
fn strip_prefix_and_redirect_paths_errors_are_located() {
    #[rustfmt::skip]
    let cases: &[(&str, Expect)] = &[
        // strip_prefix of `/`; with a preset that adds routes under the path.
        (&format!("{TWO_HOSTS}\n[[service]]\nname = \"a.example.org\"\nhost = \"web-1\"\nstrip_prefix = true\napp = \"static\"\n\n[[service]]\nname = \"chat.example.org\"\npath = \"/chat\"\nhost = \"web-1\"\nstrip_prefix = true\napp = \"mattermost\"\n\n[[service]]\nname = \"b.example.org\"\nhost = \"db-1\"\nstrip_prefix = \"yes\"\napp = \"static\"\n"), expect![[r#"
            error: inventory.toml:15:16: `strip_prefix` removes the service's `path`, which is `/`: give the prefix as `path`, or leave `strip_prefix` out
              in [[service]] #1 (name = "a.example.org")
            error: inventory.toml:22:16: `strip_prefix` cannot be used with app `mattermost`: it adds routes under the service's path (`/chat/api/v4/websocket`), which would be stripped whole; serve it at `/` of its own name
              in [[service]] #2 (name = "chat.example.org")
            error: inventory.toml:28:16: `strip_prefix` must be a boolean (true or false), found a string
              in [[service]] #3 (name = "b.example.org")"#]]),
        // A redirect path that covers the service's own path (a loop); one that another
        // service serves; two that cover the same paths; bad paths and statuses.
        (&format!("{TWO_HOSTS}\n[[service]]\nname = \"m.example.org\"\npath = \"/n/web-1/\"\nredirect_paths = [\"/n\", \"/db-1/\", \"/\"]\nhost = \"web-1\"\napp = \"static\"\n\n[[service]]\nname = \"m.example.org\"\npath = \"/db-1\"\nhost = \"db-1\"\napp = \"static\"\n"), expect![[r#"
            error: inventory.toml:15:19: `/n` in `redirect_paths` covers the service's path `/n/web-1/`: the redirect would answer its own target
              in [[service]] #1 (name = "m.example.org")
            error: inventory.toml:15:35: `/` in `redirect_paths` covers the service's path `/n/web-1/`: the redirect would answer its own target
              in [[service]] #1 (name = "m.example.org")
            error: inventory.toml:20:8: `m.example.org/db-1` of service `m.example.org/db-1` is already claimed by `redirect_paths` of service `m.example.org/n/web-1/` (as `m.example.org/db-1/`, which covers the same paths) at inventory.toml:15:25
              in [[service]] #2 (name = "m.example.org")"#]]),
        (&format!("{TWO_HOSTS}\n[[service]]\nname = \"m.example.org\"\npath = \"/n/web-1/\"\nredirect_paths = [\"/x\", \"/x/\", \"/%61\", \"/b;c\", 3]\nredirect_status = 200\nhost = \"web-1\"\napp = \"static\"\n\n[[service]]\nname = \"n.example.org\"\nhost = \"db-1\"\nredirect_status = 308\napp = \"static\"\n"), expect![[r#"
            error: inventory.toml:15:25: `/x/` is already in `redirect_paths` as `/x` (at inventory.toml:15:19)
              in [[service]] #1 (name = "m.example.org")
            error: inventory.toml:15:32: path `/%61` is matched as `/a` (request paths are matched with unreserved escapes like `%61` decoded and the hex digits of other escapes in upper case): write `/a`
              in [[service]] #1 (name = "m.example.org")
            error: inventory.toml:15:40: path `/b;c` must not contain `;`: path parameters are removed from request paths before matching (`/a;x/b` is matched as `/a/b`); write `%3B` if it is part of a name
              in [[service]] #1 (name = "m.example.org")
            error: inventory.toml:15:48: `redirect_paths` must contain only strings, found an integer
              in [[service]] #1 (name = "m.example.org")
            error: inventory.toml:16:19: invalid `redirect_status` 200, expected 301, 302, 303, 307 or 308
              in [[service]] #1 (name = "m.example.org")
            error: inventory.toml:23:19: `redirect_status` is the status of the `redirect_paths` redirects, and there are none
              in [[service]] #2 (name = "n.example.org")"#]]),
        // Services on one name at `/a` and `/a/` cover the same paths.
        (&format!("{TWO_HOSTS}\n[[service]]\nname = \"m.example.org\"\npath = \"/a\"\nhost = \"web-1\"\napp = \"static\"\n\n[[service]]\nname = \"m.example.org\"\npath = \"/a/\"\nhost = \"db-1\"\napp = \"static\"\n"), expect![[r#"
            error: inventory.toml:19:8: `m.example.org/a/` of service `m.example.org/a/` is already claimed by service `m.example.org/a` (as `m.example.org/a`, which covers the same paths) at inventory.toml:13:8
              in [[service]] #2 (name = "m.example.org")"#]]),
    ];
    for (text, want) in cases {
        check("inventory.toml", text, want);
    }
}

#[test]
fn acme_profile_is_written_on_every_route_of_the_service() {
    let text = r#"
internal_networks = ["172.28.0.0/16"]

[[host]]
name = "web-1"
ipv4 = "172.28.1.50"

[[service]]
name = "a.example.org"
host = "web-1"
port = 80
app = "static"
acme_profile = "shortlived"

[[service]]
name = "b.example.org"
host = "web-1"
port = 80
app = "static"
"#;
    let out = gen("inventory.toml", text);
    let table = routes::parse("routes.toml", &out).unwrap_or_else(|d| panic!("{d}\n{out}"));
    for r in &table.routes {
        let want = r.hosts[0]
            .to_string()
            .starts_with("a.")
            .then(|| "shortlived".to_string());
        assert_eq!(r.acme_profile, want, "{out}");
    }
    let e = inventory_err(&text.replace("\"shortlived\"", "\"short lived\""));
    assert!(
        e.contains("inventory.toml:13:16") && e.contains("invalid acme_profile"),
        "{e}"
    );
}

fn inventory_err(text: &str) -> String {
    crate::generate("inventory.toml", text)
        .unwrap_err()
        .to_string()
}
