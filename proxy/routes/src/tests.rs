//! Tests of the whole crate through its public API: diagnostics (snapshots of the
//! rendered text), the merged policies, lookup, and the repository's routes files.

use std::time::Duration;

use expect_test::{expect, Expect};
use proptest::prelude::*;

use crate::*;

/// Parse `text` as `routes.toml` and compare the rendered diagnostics (or `OK` and a
/// summary) with the snapshot. `UPDATE_EXPECT=1 cargo test -p routes` rewrites them.
fn check(text: &str, want: &Expect) {
    let got = match parse("routes.toml", text) {
        Ok(t) => format!(
            "OK: {} routes, {} redirects, names {:?}",
            t.routes.len(),
            t.redirects.len(),
            t.names()
        ),
        Err(d) => d.to_string(),
    };
    want.assert_eq(&got);
}

fn table(text: &str) -> RouteTable {
    parse("t.toml", text).unwrap_or_else(|d| panic!("{d}"))
}

// -- diagnostics -------------------------------------------------------------------------

#[test]
fn many_mistakes_are_all_reported_in_file_order() {
    check(
        r#"upstrem = 1

[defaults]
max_body = "10x"
connect_timeout = 5
hsts_max_age = "0d"
allow = ["172.28.1.0/16", "bogus"]
request_headers = { "X Foo" = "bar", "X-Ok" = "a\nb" }
lb = "least_conn"

[[route]]
hosts = ["cloud.example.org", "*.org"]
upstreams = ["172.28.1.51", "fd00::1:80"]
upstrem = ["x:1"]

[[route]]
name = "two"
hosts = []
path = "api"

[[route]]
hosts = ["cloud.example.org"]
upstreams = ["172.28.1.51:80"]

[[redirect]]
hosts = ["www.example.org"]
to = "example.org"
status = 200
max_body = "1m"

[[redirect]]
name = "two"
hosts = ["Cloud.Example.org."]
to = "/"
"#,
        &expect![[r#"
            error: routes.toml:1:1: unknown field `upstrem`, expected one of `defaults`, `route`, `redirect`
            error: routes.toml:4:12: invalid size `10x` for `max_body`, expected a number of bytes, "<n>k", "<n>m", "<n>g" or "unlimited"
              in [defaults]
            error: routes.toml:5:19: `connect_timeout` must be a duration string (e.g. "30s"), found an integer
              in [defaults]
            error: routes.toml:6:16: `hsts_max_age` must be greater than zero, found `0d`
              in [defaults]
            error: routes.toml:7:10: network `172.28.1.0/16` in `allow` has host bits set; did you mean `172.28.0.0/16`?
              in [defaults]
            error: routes.toml:7:27: invalid network `bogus` in `allow`, expected an address or address/prefix (e.g. "172.28.0.0/16")
              in [defaults]
            error: routes.toml:8:21: invalid header name `X Foo`: character ` ` is not allowed
              in [defaults]
            error: routes.toml:8:47: invalid value for header `X-Ok`: character `\n` is not allowed (visible ASCII, space and tab only)
              in [defaults]
            error: routes.toml:9:6: unknown `lb` policy `least_conn`, expected one of `round_robin`, `random`, `ip_hash`
              in [defaults]
            error: routes.toml:12:31: invalid host `*.org`: a wildcard needs at least two labels after `*.` (e.g. `*.example.org`)
              in [[route]] #1 (hosts = ["cloud.example.org", "*.org"])
            error: routes.toml:13:14: invalid upstream `172.28.1.51`: missing port, expected host:port (e.g. `172.28.1.50:80`)
              in [[route]] #1 (hosts = ["cloud.example.org", "*.org"])
            error: routes.toml:13:29: invalid upstream `fd00::1:80`: an IPv6 address must be in brackets (e.g. `[fd00::1]:80`)
              in [[route]] #1 (hosts = ["cloud.example.org", "*.org"])
            error: routes.toml:14:1: unknown field `upstrem`, expected one of `name`, `hosts`, `path`, `strip_prefix`, `upstreams`, `acme_profile`, `max_body`, `connect_timeout`, `read_timeout`, `write_timeout`, `idle_timeout`, `websocket`, `hsts`, `hsts_max_age`, `hsts_include_subdomains`, `hsts_preload`, `allow`, `request_headers`, `response_headers`, `https_redirect`, `lb`, `health_check_path`, `health_check_interval`
              in [[route]] #1 (hosts = ["cloud.example.org", "*.org"])
            error: routes.toml:16:1: missing field `upstreams`
              in [[route]] #2 (name = "two")
            error: routes.toml:18:9: `hosts` must not be empty
              in [[route]] #2 (name = "two")
            error: routes.toml:19:8: path `api` must start with `/`
              in [[route]] #2 (name = "two")
            error: routes.toml:22:10: duplicate route cloud.example.org/ (first at routes.toml:12:10)
              in [[route]] #3 (hosts = ["cloud.example.org"])
            error: routes.toml:27:6: invalid redirect target `example.org`: expected an absolute URL (`https://example.org/path`) or an absolute path (`/path`)
              in [[redirect]] #1 (hosts = ["www.example.org"])
            error: routes.toml:28:10: invalid redirect `status` 200, expected 301, 302, 303, 307 or 308
              in [[redirect]] #1 (hosts = ["www.example.org"])
            error: routes.toml:29:1: unknown field `max_body` in a [[redirect]] (it applies to a [[route]]), expected one of `name`, `hosts`, `path`, `to`, `keep_path`, `status`, `https_redirect`
              in [[redirect]] #1 (hosts = ["www.example.org"])
            error: routes.toml:32:8: duplicate id `two` (first at routes.toml:17:8); give one of them a distinct `name`
              in [[redirect]] #2 (hosts = ["Cloud.Example.org."])
            error: routes.toml:33:10: duplicate route cloud.example.org/ (first at routes.toml:12:10)
              in [[redirect]] #2 (hosts = ["Cloud.Example.org."])
            error: routes.toml:34:6: redirect target `/` is matched by this redirect again (a redirect loop)
              in [[redirect]] #2 (hosts = ["Cloud.Example.org."])"#]],
    );
}

#[test]
fn small_cases() {
    #[rustfmt::skip]
    let cases: &[(&str, Expect)] = &[
        ("", expect!["OK: 0 routes, 0 redirects, names []"]),
        ("# only a comment\n", expect!["OK: 0 routes, 0 redirects, names []"]),
        ("a = \n", expect!["error: routes.toml:1:5: invalid TOML: string values must be quoted, expected literal string"]),
        ("[defaults]\nwebsocket = true\nwebsocket = false\n", expect!["error: routes.toml:3:1: invalid TOML: duplicate key"]),
        ("[[route]\n", expect!["error: routes.toml:1:9: invalid TOML: unclosed array table, expected `]`"]),
        ("defaults = 3\n", expect!["error: routes.toml:1:12: `defaults` must be a table ([defaults]), found an integer"]),
        ("[route]\nhosts = [\"a.org\"]\n", expect!["error: routes.toml:1:1: `route` must be an array of tables ([[route]]), found a table"]),
        ("route = [1, {hosts = [\"a.example.org\"], upstreams = [\"10.0.0.1:80\"]}]\n", expect!["error: routes.toml:1:10: `route` must be an array of tables ([[route]]), found an integer"]),
        ("[[route]]\n", expect![[r#"
            error: routes.toml:1:1: missing field `hosts`
              in [[route]] #1
            error: routes.toml:1:1: missing field `upstreams`
              in [[route]] #1"#]]),
        ("[[redirect]]\nhosts = 'a.example.org'\n", expect![[r#"
            error: routes.toml:1:1: missing field `to`
              in [[redirect]] #1
            error: routes.toml:2:9: `hosts` must be an array of strings, found a string
              in [[redirect]] #1"#]]),
        ("[[route]]\nhosts = [\"bücher.example\", \"*\", 3]\nupstreams = [\"10.0.0.1:80\", \"10.0.0.1:80\"]\nto = \"/\"\nwebsocket = \"yes\"\n", expect![[r#"
            error: routes.toml:2:10: invalid host `bücher.example`: invalid character `ü`; write international names in punycode (`xn--...`)
              in [[route]] #1
            error: routes.toml:2:28: invalid host `*`: `*` is only allowed as the whole first label (`*.example.org`)
              in [[route]] #1
            error: routes.toml:2:33: `hosts` must contain only strings, found an integer
              in [[route]] #1
            error: routes.toml:3:29: duplicate upstream `10.0.0.1:80`
              in [[route]] #1
            error: routes.toml:4:1: unknown field `to` in a [[route]] (it is a [[redirect]] key), expected one of `name`, `hosts`, `path`, `strip_prefix`, `upstreams`, `acme_profile`, `max_body`, `connect_timeout`, `read_timeout`, `write_timeout`, `idle_timeout`, `websocket`, `hsts`, `hsts_max_age`, `hsts_include_subdomains`, `hsts_preload`, `allow`, `request_headers`, `response_headers`, `https_redirect`, `lb`, `health_check_path`, `health_check_interval`
              in [[route]] #1
            error: routes.toml:5:13: `websocket` must be a boolean (true or false), found a string
              in [[route]] #1"#]]),
        ("[defaults]\nresponse_headers = { \"X-Frame-Options\" = \"DENY\", \"x-frame-options\" = \"SAMEORIGIN\", Connection = \"close\", X-A = 1 }\n", expect![[r#"
            error: routes.toml:2:50: duplicate header `x-frame-options` in `response_headers` (first at routes.toml:2:22)
              in [defaults]
            error: routes.toml:2:84: header `Connection` is managed by the proxy and cannot be set
              in [defaults]
            error: routes.toml:2:112: `X-A` must be a string ("" removes the header), found an integer
              in [defaults]"#]]),
        ("[defaults]\nallow = []\nmax_body = -1\nrequest_headers = \"X-A: b\"\n", expect![[r#"
            error: routes.toml:2:9: `allow` is empty and would refuse every client; remove it to allow everyone
              in [defaults]
            error: routes.toml:3:12: `max_body` must not be negative
              in [defaults]
            error: routes.toml:4:19: `request_headers` must be a table of header names to strings, found a string
              in [defaults]"#]]),
        ("[[redirect]]\nhosts = [\"a.example.org\"]\npath = \"/old\"\nto = \"https://A.example.org/old/new?x=1\"\nkeep_path = true\nstatus = \"301\"\n", expect![[r#"
            error: routes.toml:4:6: redirect target `https://A.example.org/old/new?x=1` has a query or fragment, which `keep_path = true` cannot append to
              in [[redirect]] #1 (hosts = ["a.example.org"])
            error: routes.toml:6:10: `status` must be an integer (301, 302, 303, 307 or 308), found a string
              in [[redirect]] #1 (hosts = ["a.example.org"])"#]]),
        ("[[redirect]]\nhosts = [\"a.example.org\"]\npath = \"/old\"\nto = \"https://A.example.org/old/new\"\n", expect![[r#"
            error: routes.toml:4:6: redirect target `https://A.example.org/old/new` is matched by this redirect again (a redirect loop)
              in [[redirect]] #1 (hosts = ["a.example.org"])"#]]),
        ("[defaults]\nmax_body = 99999999999999999999999\n", expect![[r#"
            error: routes.toml:2:12: `max_body` 99999999999999999999999 is too large
              in [defaults]"#]]),
        // Same host and path written differently are the same route.
        ("[[route]]\nhosts = [\"A.example.org\", \"a.example.org.\"]\nupstreams = [\"10.0.0.1:80\"]\n", expect![[r#"
            error: routes.toml:2:27: duplicate route a.example.org/ (first at routes.toml:2:10)
              in [[route]] #1 (hosts = ["A.example.org", "a.example.org."])"#]]),
        // A name may collide with another entry's default id.
        ("[[route]]\nhosts = [\"a.example.org\"]\nupstreams = [\"10.0.0.1:80\"]\n[[route]]\nname = \"a.example.org/\"\nhosts = [\"b.example.org\"]\nupstreams = [\"10.0.0.1:80\"]\n", expect![[r#"
            error: routes.toml:5:8: duplicate id `a.example.org/` (first at routes.toml:1:1); give one of them a distinct `name`
              in [[route]] #2 (hosts = ["b.example.org"])"#]]),
        // Route paths are in the form request paths are matched in, or a located error
        // names the form to write: never a route that silently matches nothing.
        ("[[route]]\nhosts = [\"a.example.org\"]\npath = \"/%61dmin\"\nupstreams = [\"10.0.0.1:80\"]\n[[route]]\nhosts = [\"a.example.org\"]\npath = \"/a%2fb\"\nupstreams = [\"10.0.0.1:80\"]\n[[redirect]]\nhosts = [\"a.example.org\"]\npath = \"/admin;x\"\nto = \"/\"\n[[route]]\nhosts = [\"b.example.org\"]\npath = \"/a%2\"\nupstreams = [\"10.0.0.1:80\"]\n[[route]]\nhosts = [\"c.example.org\"]\npath = \"/a/%2e%2E/b\"\nupstreams = [\"10.0.0.1:80\"]\n[[route]]\nhosts = [\"d.example.org\"]\npath = '/a\\b'\nupstreams = [\"10.0.0.1:80\"]\n", expect![[r#"
            error: routes.toml:3:8: path `/%61dmin` is matched as `/admin` (request paths are matched with unreserved escapes like `%61` decoded and the hex digits of other escapes in upper case): write `/admin`
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:7:8: path `/a%2fb` is matched as `/a%2Fb` (request paths are matched with unreserved escapes like `%61` decoded and the hex digits of other escapes in upper case): write `/a%2Fb`
              in [[route]] #2 (hosts = ["a.example.org"])
            error: routes.toml:11:8: path `/admin;x` must not contain `;`: path parameters are removed from request paths before matching (`/a;x/b` is matched as `/a/b`); write `%3B` if it is part of a name
              in [[redirect]] #1 (hosts = ["a.example.org"])
            error: routes.toml:15:8: path `/a%2` has a bad percent-escape: `%` must be followed by two hex digits, and `%00` is refused
              in [[route]] #3 (hosts = ["b.example.org"])
            error: routes.toml:19:8: path `/a/%2e%2E/b` must not contain `.` or `..` segments (also percent-encoded)
              in [[route]] #4 (hosts = ["c.example.org"])
            error: routes.toml:23:8: path `/a\b` must not contain `\` (some upstreams read it as `/`)
              in [[route]] #5 (hosts = ["d.example.org"])"#]]),
        // `/api/` covers `/api` too, and `/a%2Fb` reads as `/a/b` to a decoding upstream:
        // one host cannot route either pair to two places.
        ("[[route]]\nhosts = [\"a.example.org\"]\npath = \"/api\"\nupstreams = [\"10.0.0.1:80\"]\n[[redirect]]\nhosts = [\"*.example.org\", \"a.example.org\"]\npath = \"/api/\"\nto = \"/\"\n[[route]]\nhosts = [\"a.example.org\"]\npath = \"/a/b\"\nupstreams = [\"10.0.0.1:80\"]\n[[route]]\nhosts = [\"a.example.org\"]\npath = \"/a%2Fb/\"\nupstreams = [\"10.0.0.1:80\"]\n", expect![[r#"
            error: routes.toml:6:27: duplicate route a.example.org/api/: it covers the same paths as a.example.org/api (first at routes.toml:2:10; a path ending in `/` also covers the path without it)
              in [[redirect]] #1 (hosts = ["*.example.org", "a.example.org"])
            error: routes.toml:14:10: duplicate route a.example.org/a%2Fb/: it covers the same paths as a.example.org/a/b (first at routes.toml:10:10; an upstream that decodes escapes reads both as one path)
              in [[route]] #3 (hosts = ["a.example.org"])"#]]),
        // Redirect loops through the bare path or an escape are loops too.
        ("[[redirect]]\nhosts = [\"a.example.org\"]\npath = \"/apps/\"\nto = \"/apps\"\n[[redirect]]\nhosts = [\"a.example.org\"]\npath = \"/b\"\nto = \"/%62/x\"\n[[redirect]]\nhosts = [\"a.example.org\"]\npath = \"/c\"\nto = \"/c;x\"\n", expect![[r#"
            error: routes.toml:4:6: redirect target `/apps` is matched by this redirect again (a redirect loop)
              in [[redirect]] #1 (hosts = ["a.example.org"])
            error: routes.toml:8:6: redirect target `/%62/x` is matched by this redirect again (a redirect loop)
              in [[redirect]] #2 (hosts = ["a.example.org"])
            error: routes.toml:12:6: redirect target `/c;x` is matched by this redirect again (a redirect loop)
              in [[redirect]] #3 (hosts = ["a.example.org"])"#]]),
        // Different paths on one host, and one path on different hosts, are fine.
        ("[[route]]\nhosts = [\"a.example.org\", \"*.example.org\"]\nupstreams = [\"10.0.0.1:80\"]\n[[route]]\nhosts = [\"a.example.org\"]\npath = \"/api\"\nupstreams = [\"10.0.0.1:80\"]\n", expect![[r#"OK: 2 routes, 0 redirects, names ["*.example.org", "a.example.org"]"#]]),
    ];
    for (text, want) in cases {
        check(text, want);
    }
}

#[test]
fn upstream_tables_name_a_dns_name_with_fallback_addresses() {
    let t = table(
        r#"
[[route]]
hosts = ["git.example.org"]
upstreams = [
    { name = "GitLab-1.vrt.fsn.", port = 80, fallback = ["172.28.1.2", "fd00:7fd7:e9a5:1::2"] },
    { name = "gitlab-2.vrt.fsn", port = 8080 },
    "172.28.1.3:80",
]
"#,
    );
    assert_eq!(
        t.routes[0].upstreams,
        [
            Upstream::Name {
                host: "gitlab-1.vrt.fsn".into(),
                port: 80,
                fallback: vec![
                    "172.28.1.2".parse().unwrap(),
                    "fd00:7fd7:e9a5:1::2".parse().unwrap()
                ],
            },
            Upstream::Name {
                host: "gitlab-2.vrt.fsn".into(),
                port: 8080,
                fallback: vec![],
            },
            Upstream::Addr("172.28.1.3:80".parse().unwrap()),
        ]
    );
    assert_eq!(t.routes[0].upstreams[0].to_string(), "gitlab-1.vrt.fsn:80");

    #[rustfmt::skip]
    let cases: &[(&str, Expect)] = &[
        ("[[route]]\nhosts = ['a.example.org']\nupstreams = [{ name = 'a.internal', port = 80, fallbak = ['10.0.0.1'] }]\n", expect![[r#"
            error: routes.toml:3:48: unknown field `fallbak` in an upstream table, expected one of `name`, `port`, `fallback`
              in [[route]] #1 (hosts = ["a.example.org"])"#]]),
        ("[[route]]\nhosts = ['a.example.org']\nupstreams = [{ name = '10.0.0.1' }, { port = 0, fallback = ['10.0.0.1:80', 'x', 3, '10.0.0.2', '10.0.0.2'] }, 7]\n", expect![[r#"
            error: routes.toml:3:14: missing field `port` in upstream table
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:23: invalid upstream name `10.0.0.1`: an IP address is written as a string upstream (e.g. `"10.0.0.1:80"`), not as `name`
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:37: missing field `name` in upstream table
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:46: invalid upstream `port` 0, expected 1-65535
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:61: invalid fallback address `10.0.0.1:80`: expected an IP address without port (e.g. `172.28.1.2` or `fd00::2`)
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:76: invalid fallback address `x`: expected an IP address without port (e.g. `172.28.1.2` or `fd00::2`)
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:81: `fallback` must contain only strings, found an integer
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:96: duplicate fallback address `10.0.0.2`
              in [[route]] #1 (hosts = ["a.example.org"])
            error: routes.toml:3:111: `upstreams` must contain strings ("host:port") or tables ({ name = "...", port = 80 }), found an integer
              in [[route]] #1 (hosts = ["a.example.org"])"#]]),
        // One target twice is a duplicate whatever its fallbacks.
        ("[[route]]\nhosts = ['a.example.org']\nupstreams = ['a.internal:80', { name = 'A.internal', port = 80, fallback = ['10.0.0.1'] }]\n", expect![[r#"
            error: routes.toml:3:31: duplicate upstream `a.internal:80`
              in [[route]] #1 (hosts = ["a.example.org"])"#]]),
        ("[[route]]\nhosts = ['a.example.org']\nupstreams = []\n", expect![[r#"
            error: routes.toml:3:13: `upstreams` must not be empty
              in [[route]] #1 (hosts = ["a.example.org"])"#]]),
    ];
    for (text, want) in cases {
        check(text, want);
    }
}

#[test]
fn columns_count_characters_and_crlf_lines_work() {
    let d = parse("f", "# ünïcödé\r\n[defaults]\r\nlb = 'ü'\r\n").unwrap_err();
    assert_eq!((d.0[0].line, d.0[0].col), (3, 6), "{d}");
}

#[test]
fn diagnostic_fields_are_filled() {
    let d = parse("etc/routes.toml", "[[route]]\nhosts = ['x.example.org']\n").unwrap_err();
    assert_eq!(
        d.0,
        vec![Diagnostic {
            file: "etc/routes.toml".into(),
            line: 1,
            col: 1,
            message: "missing field `upstreams`".into(),
            context: Some(r#"in [[route]] #1 (hosts = ["x.example.org"])"#.into()),
        }]
    );
}

// -- the validated values ------------------------------------------------------------------

#[test]
fn builtin_defaults_apply_to_a_bare_route() {
    let t = table("[[route]]\nhosts = ['a.example.org']\nupstreams = ['10.0.0.1:80']\n");
    let r = &t.routes[0];
    assert_eq!(r.id, "a.example.org/");
    assert_eq!(r.path, "/");
    assert!(!r.strip_prefix);
    assert_eq!(r.lb, LbPolicy::RoundRobin);
    assert_eq!(*r.policy, Policy::default());
    assert_eq!(r.policy.max_body, Some(10 * 1024 * 1024));
    assert_eq!(
        r.policy.hsts.as_ref().map(Hsts::header_value).as_deref(),
        Some("max-age=31536000")
    );
}

#[test]
fn route_keys_override_defaults() {
    let t = table(
        r#"
[defaults]
max_body = 1024
connect_timeout = "2s"
read_timeout = "250ms"
websocket = true
hsts_max_age = "1d"
hsts_preload = true
allow = ["10.0.0.0/8", "fd00::1"]
https_redirect = false
lb = "random"
health_check_path = "/health"
health_check_interval = "1m"

[[route]]
hosts = ["a.example.org"]
upstreams = ["10.0.0.1:80"]

[[route]]
name = "b"
hosts = ["b.example.org"]
path = "/app"
strip_prefix = true
upstreams = ["backend.internal:8080", "[fd00::2]:8080"]
max_body = "unlimited"
read_timeout = "2h"
write_timeout = "3d"
idle_timeout = "10s"
websocket = false
hsts = false
allow = ["192.168.0.0/24"]
https_redirect = true
lb = "ip_hash"
health_check_path = ""
"#,
    );
    let a = &t.routes[0].policy;
    assert_eq!(a.max_body, Some(1024));
    assert_eq!(a.connect_timeout, Duration::from_secs(2));
    assert_eq!(a.read_timeout, Duration::from_millis(250));
    assert_eq!(a.write_timeout, Duration::from_secs(60));
    assert!(a.websocket);
    assert_eq!(
        a.hsts.as_ref().unwrap().header_value(),
        "max-age=86400; preload"
    );
    let allow: Vec<String> = a.allow.iter().flatten().map(|n| n.to_string()).collect();
    assert_eq!(allow, ["10.0.0.0/8", "fd00::1/128"]);
    assert!(!a.https_redirect);
    assert_eq!(t.routes[0].lb, LbPolicy::Random);
    assert_eq!(a.health_check.http_path.as_deref(), Some("/health"));
    assert_eq!(a.health_check.interval, Duration::from_secs(60));

    let b = &t.routes[1];
    assert_eq!(
        (b.id.as_str(), b.path.as_str(), b.strip_prefix),
        ("b", "/app", true)
    );
    assert_eq!(
        b.upstreams,
        [
            Upstream::Name {
                host: "backend.internal".into(),
                port: 8080,
                fallback: vec![],
            },
            Upstream::Addr("[fd00::2]:8080".parse().unwrap()),
        ]
    );
    let p = &b.policy;
    assert_eq!(p.max_body, None);
    assert_eq!(p.connect_timeout, Duration::from_secs(2));
    assert_eq!(p.read_timeout, Duration::from_secs(7200));
    assert_eq!(p.write_timeout, Duration::from_secs(3 * 86400));
    assert_eq!(p.idle_timeout, Duration::from_secs(10));
    assert!(!p.websocket);
    assert_eq!(p.hsts, None);
    assert_eq!(p.allow, Some(vec!["192.168.0.0/24".parse().unwrap()]));
    assert!(p.https_redirect);
    assert_eq!(b.lb, LbPolicy::IpHash);
    assert_eq!(p.health_check.http_path, None);
}

#[test]
fn routes_without_policy_keys_share_the_defaults_policy() {
    let t = table(
        r#"
[defaults]
max_body = "1m"
read_timeout = "5s"
request_headers = { "X-A" = "1" }

[[route]]
hosts = ["a.example.org"]
upstreams = ["10.0.0.1:80"]

[[route]]
hosts = ["b.example.org"]
upstreams = ["10.0.0.2:80"]
strip_prefix = true

[[route]]
hosts = ["c.example.org"]
upstreams = ["10.0.0.3:80"]
read_timeout = "9s"

[[route]]
hosts = ["d.example.org"]
upstreams = ["10.0.0.4:80"]
lb = "random"
"#,
    );
    let [a, b, c, d] = &t.routes[..] else {
        panic!("4 routes")
    };
    // Only `[defaults]`: one policy for both, the defaults' values.
    assert!(Arc::ptr_eq(&a.policy, &b.policy));
    assert_eq!(a.policy.max_body, Some(1 << 20));
    assert_eq!(a.policy.read_timeout, Duration::from_secs(5));
    assert_eq!(a.policy.request_headers, [("X-A".into(), "1".into())]);
    assert_eq!(a.lb, LbPolicy::RoundRobin);
    // One key of its own: a policy of its own, the rest still from `[defaults]`.
    assert!(!Arc::ptr_eq(&a.policy, &c.policy));
    assert_eq!(c.policy.read_timeout, Duration::from_secs(9));
    assert_eq!(c.policy.max_body, Some(1 << 20));
    assert_eq!(c.policy.request_headers, a.policy.request_headers);
    assert_eq!(a.policy.read_timeout, Duration::from_secs(5));
    // `lb` is a policy key too: its own copy, equal policy, its own balancing.
    assert!(!Arc::ptr_eq(&a.policy, &d.policy));
    assert_eq!(d.policy, a.policy);
    assert_eq!((d.lb, a.lb), (LbPolicy::Random, LbPolicy::RoundRobin));
}

#[test]
fn hsts_keys_merge_one_by_one() {
    let t = table(
        "[defaults]\nhsts_include_subdomains = true\n[[route]]\nhosts = ['a.example.org']\nupstreams = ['10.0.0.1:80']\nhsts_max_age = '2d'\n",
    );
    assert_eq!(
        t.routes[0].policy.hsts.as_ref().unwrap().header_value(),
        "max-age=172800; includeSubDomains"
    );
}

#[test]
fn headers_merge_case_insensitively_in_file_order() {
    let t = table(
        r#"
[defaults]
request_headers = { "X-Zed" = "1", "X-Forwarded-Proto" = "https", "X-Keep" = "k" }
response_headers = { "X-Frame-Options" = "SAMEORIGIN" }

[[route]]
hosts = ["a.example.org"]
upstreams = ["10.0.0.1:80"]
request_headers = { "x-forwarded-proto" = "http", "X-New" = "n", "X-Zed" = "" }

[[route]]
hosts = ["b.example.org"]
upstreams = ["10.0.0.1:80"]
[route.response_headers]
"X-Robots-Tag" = "noindex"
"#,
    );
    let pairs = |v: &[(String, String)]| -> Vec<String> {
        v.iter().map(|(n, v)| format!("{n}={v}")).collect()
    };
    assert_eq!(
        pairs(&t.routes[0].policy.request_headers),
        ["X-Zed=", "x-forwarded-proto=http", "X-Keep=k", "X-New=n"]
    );
    assert_eq!(
        pairs(&t.routes[0].policy.response_headers),
        ["X-Frame-Options=SAMEORIGIN"]
    );
    assert_eq!(
        pairs(&t.routes[1].policy.request_headers),
        ["X-Zed=1", "X-Forwarded-Proto=https", "X-Keep=k"]
    );
    assert_eq!(
        pairs(&t.routes[1].policy.response_headers),
        ["X-Frame-Options=SAMEORIGIN", "X-Robots-Tag=noindex"]
    );
}

#[test]
fn redirects_parse_with_defaults_and_overrides() {
    let t = table(
        r#"
[defaults]
https_redirect = false

[[redirect]]
hosts = ["www.example.org"]
to = "https://example.org"
keep_path = true

[[redirect]]
name = "carddav"
hosts = ["cloud.example.org"]
path = "/.well-known/carddav"
to = "/remote.php/dav/"
status = 301
https_redirect = true
"#,
    );
    let www = &t.redirects[0];
    assert_eq!(
        **www,
        Redirect {
            id: "www.example.org/".into(),
            hosts: vec![HostPattern::Exact("www.example.org".into())],
            path: "/".into(),
            to: "https://example.org/".into(),
            keep_path: true,
            status: 308,
            https_redirect: false,
        }
    );
    let dav = &t.redirects[1];
    assert_eq!(
        (dav.id.as_str(), dav.status, dav.https_redirect),
        ("carddav", 301, true)
    );
    assert!(!dav.keep_path);
}

#[test]
fn redirect_locations() {
    let t = table(
        r#"
[[redirect]]
hosts = ["www.example.org"]
to = "https://example.org"
keep_path = true

[[redirect]]
hosts = ["cloud.example.org"]
path = "/.well-known/carddav"
to = "/remote.php/dav/"

[[redirect]]
hosts = ["old.example.org"]
path = "/docs/"
to = "https://docs.example.org/v2/"
keep_path = true
"#,
    );
    let [www, dav, docs] = &t.redirects[..] else {
        panic!()
    };
    assert_eq!(www.location("x", "/", None), "https://example.org/");
    assert_eq!(
        www.location("x", "/a/b", Some("q=1")),
        "https://example.org/a/b?q=1"
    );
    assert_eq!(www.location("x", "/a", Some("")), "https://example.org/a");
    assert_eq!(
        dav.location("cloud.example.org", "/.well-known/carddav", Some("x")),
        "https://cloud.example.org/remote.php/dav/"
    );
    assert_eq!(
        dav.location("cloud.example.org:8443", "/.well-known/carddav", None),
        "https://cloud.example.org:8443/remote.php/dav/"
    );
    assert_eq!(
        docs.location("x", "/docs/a/b", None),
        "https://docs.example.org/v2/a/b"
    );
    assert_eq!(
        docs.location("x", "/docs/", Some("p")),
        "https://docs.example.org/v2/?p"
    );
}

// -- lookup --------------------------------------------------------------------------------

const LOOKUP: &str = r#"
[[route]]
name = "apex"
hosts = ["example.org"]
upstreams = ["10.0.0.1:80"]

[[route]]
name = "cloud"
hosts = ["cloud.example.org", "nextcloud.example.org"]
upstreams = ["10.0.0.2:80"]

[[route]]
name = "any"
hosts = ["*.example.org"]
upstreams = ["10.0.0.3:80"]

[[route]]
name = "api"
hosts = ["cloud.example.org"]
path = "/api"
upstreams = ["10.0.0.4:80"]

[[route]]
name = "api-v2"
hosts = ["cloud.example.org"]
path = "/api/v2/"
upstreams = ["10.0.0.5:80"]

[[route]]
name = "only-path"
hosts = ["tools.example.org"]
path = "/grafana"
upstreams = ["10.0.0.6:80"]

[[redirect]]
name = "dav"
hosts = ["cloud.example.org"]
path = "/.well-known/carddav"
to = "/remote.php/dav/"

[[route]]
name = "v6"
hosts = ["[fd00::1]", "10.1.2.3"]
upstreams = ["10.0.0.7:80"]
"#;

#[test]
fn lookup_exact_wildcard_alias_and_longest_prefix() {
    let t = table(LOOKUP);
    let id = |host: &str, path: &str| t.lookup(host, path).map(|t| t.id().to_string());
    for (host, path, want) in [
        ("example.org", "/", Some("apex")),
        ("example.org", "/anything", Some("apex")),
        ("cloud.example.org", "/", Some("cloud")),
        ("nextcloud.example.org", "/api", Some("cloud")),
        ("cloud.example.org", "/api", Some("api")),
        ("cloud.example.org", "/api/", Some("api")),
        ("cloud.example.org", "/api/v1", Some("api")),
        ("cloud.example.org", "/apix", Some("cloud")),
        // `/api/v2/` covers the bare `/api/v2` too.
        ("cloud.example.org", "/api/v2", Some("api-v2")),
        ("cloud.example.org", "/api/v2x", Some("api")),
        ("cloud.example.org", "/api/v2/", Some("api-v2")),
        // Matched without `;parameters`, as Java servlet containers read the path.
        ("cloud.example.org", "/api;v=1/v2/x", Some("api-v2")),
        ("cloud.example.org", "/api/v2;x", Some("api-v2")),
        ("cloud.example.org", "/;x/api/v2/", Some("api-v2")),
        ("cloud.example.org", "/api/;x/v2", Some("api-v2")),
        ("cloud.example.org", "/apix;y", Some("cloud")),
        ("cloud.example.org", "/.well-known/carddav;x", Some("dav")),
        ("cloud.example.org", "/api/v2/x", Some("api-v2")),
        ("cloud.example.org", "/.well-known/carddav", Some("dav")),
        ("cloud.example.org", "/.well-known/carddavx", Some("cloud")),
        ("www.example.org", "/", Some("any")),
        ("a.b.example.org", "/", None),
        ("example.com", "/", None),
        ("org", "/", None),
        ("tools.example.org", "/grafana/d/1", Some("only-path")),
        // An exact host without a matching path falls back to the wildcard.
        ("tools.example.org", "/other", Some("any")),
        ("fd00::1", "/", Some("v6")),
        ("10.1.2.3", "/", Some("v6")),
    ] {
        assert_eq!(id(host, path).as_deref(), want, "{host}{path}");
    }
    assert!(matches!(
        t.lookup("cloud.example.org", "/.well-known/carddav"),
        Some(Target::Redirect(_))
    ));
    assert!(t.knows_host("cloud.example.org"));
    assert!(t.knows_host("x.example.org"));
    assert!(!t.knows_host("x.y.example.org"));
    assert_eq!(
        t.names(),
        [
            "*.example.org",
            "10.1.2.3",
            "cloud.example.org",
            "example.org",
            "fd00::1",
            "nextcloud.example.org",
            "tools.example.org"
        ]
    );
}

#[test]
fn path_sets_are_sorted_longest_prefix_first() {
    let t = table(LOOKUP);
    let bases: Vec<(&str, &str)> = t.exact["cloud.example.org"]
        .entries
        .iter()
        .map(|(b, t)| (&**b, t.path()))
        .collect();
    assert_eq!(
        bases,
        [
            ("/.well-known/carddav", "/.well-known/carddav"),
            ("/api/v2", "/api/v2/"),
            ("/api", "/api"),
            ("", "/")
        ]
    );
    assert_eq!(
        t.routes.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["apex", "cloud", "any", "api", "api-v2", "only-path", "v6"]
    );
}

#[test]
fn segment_aware_prefixes_and_strip_path() {
    assert!(path_matches("/api", "/api"));
    assert!(path_matches("/api", "/api/x"));
    assert!(!path_matches("/api", "/apix"));
    assert!(!path_matches("/api", "/ap"));
    assert!(path_matches("/api/", "/api/x"));
    assert!(path_matches("/", "/anything"));
    assert_eq!(strip_path("/app", "/app/x"), "/x");
    assert_eq!(strip_path("/app", "/app"), "/");
    assert_eq!(strip_path("/app/", "/app/x/y"), "/x/y");
    assert_eq!(strip_path("/", "/x"), "/x");
}

#[test]
fn a_prefix_ending_in_slash_covers_the_bare_path() {
    for prefix in ["/api/", "/api"] {
        for path in ["/api", "/api/", "/api/x", "/api;x", "/api;x/y", "/;x/api"] {
            assert!(path_matches(prefix, path), "{prefix} {path}");
        }
        for path in ["/apix", "/ap", "/apix/", "/apix;x", "/", ""] {
            assert!(!path_matches(prefix, path), "{prefix} {path}");
        }
    }
    assert_eq!(strip_path("/app/", "/app"), "/");
    assert_eq!(strip_path("/app/", "/app;x"), "/");
}

#[test]
fn strip_prefix_removes_the_covered_segments_with_their_parameters() {
    for (prefix, path, want) in [
        ("/app/", "/app;jsessionid=1/x", "/x"),
        ("/app", "/app;x", "/"),
        ("/app/", "/;s/app/x;y/z", "/x;y/z"),
        ("/n/web-1/", "/n;a/web-1;b/", "/"),
        ("/n/web-1/", "/n/web-1;b/graph?x", "/graph?x"),
        ("/app/", "/app/;x/y", "/;x/y"),
    ] {
        assert_eq!(strip_path(prefix, path), want, "{prefix} {path}");
    }
    // A redirect's kept path is cut the same way.
    let t = table(
        "[[redirect]]\nhosts = [\"a.test\"]\npath = \"/web-1\"\nto = \"/n/web-1/\"\nkeep_path = true\n",
    );
    let r = &t.redirects[0];
    for (path, want) in [
        ("/web-1", "https://a.test/n/web-1/"),
        ("/web-1;x", "https://a.test/n/web-1/"),
        ("/web-1;x/y", "https://a.test/n/web-1/y"),
        ("/web-1/y", "https://a.test/n/web-1/y"),
    ] {
        assert_eq!(r.location("a.test", path, None), want, "{path}");
    }
}

const ADMIN: &str = r#"
[[route]]
name = "public"
hosts = ["a.test"]
upstreams = ["10.0.0.1:80"]

[[route]]
name = "admin"
hosts = ["a.test"]
path = "/admin/"
upstreams = ["10.0.0.2:80"]
allow = ["10.0.0.0/8"]
"#;

/// What the daemon does with a request path: normalise, then route.
fn routed(t: &RouteTable, raw: &str) -> Result<Option<String>, PathError> {
    let path = normalize_path(raw)?;
    t.route("a.test", &path)
        .map(|t| t.map(|t| t.id().to_string()))
}

#[test]
fn path_parameters_and_the_bare_path_cannot_route_around_a_restricted_prefix() {
    let t = table(ADMIN);
    let admin = Ok(Some("admin".to_string()));
    let public = Ok(Some("public".to_string()));
    #[rustfmt::skip]
    let cases: &[(&str, Result<Option<String>, PathError>)] = &[
        ("/admin/secret", admin.clone()),
        // The bare path, and parameters on any segment (Tomcat, Jetty, Spring drop them).
        ("/admin", admin.clone()),
        ("/admin;x", admin.clone()),
        ("/admin;", admin.clone()),
        ("/admin;x/secret", admin.clone()),
        ("/admin;/secret", admin.clone()),
        ("/admin;a=b;c=d/secret", admin.clone()),
        ("/;x/admin/secret", admin.clone()),
        ("/;/admin", admin.clone()),
        ("/admin/;x/secret", admin.clone()),
        ("//admin;x//secret", admin.clone()),
        ("/%61dmin;x/secret", admin.clone()),
        ("/%61%64%6D%69%6E", admin.clone()),
        // `;` sent escaped is data to those containers, but `/admin;x` to an upstream
        // that decodes before it splits: refused either way.
        ("/admin%3Bx/secret", Err(PathError::Ambiguous)),
        ("/admin%3bx/secret", Err(PathError::Ambiguous)),
        ("/admin%2Fsecret", Err(PathError::Ambiguous)),
        ("/admin%2fsecret", Err(PathError::Ambiguous)),
        ("/%2Fadmin", Err(PathError::Ambiguous)),
        // A backslash is a separator to some upstreams.
        ("/admin\\secret", Err(PathError::Ambiguous)),
        ("/admin%5Csecret", Err(PathError::Ambiguous)),
        // Dot segments, with or without parameters, plain or escaped.
        ("/admin/..;/x", Err(PathError::DotSegment)),
        ("/x/..;/admin/secret", Err(PathError::DotSegment)),
        ("/./admin", Err(PathError::DotSegment)),
        ("/%2e%2e/admin", Err(PathError::DotSegment)),
        ("/x/.%2E;a/admin", Err(PathError::DotSegment)),
        // Not the admin prefix.
        ("/adminx", public.clone()),
        ("/adminx;/secret", public.clone()),
        ("/x;/admin", public.clone()),
        ("/x/admin", public.clone()),
        ("/", public.clone()),
    ];
    for (raw, want) in cases {
        assert_eq!(&routed(&t, raw), want, "{raw}");
    }
}

#[test]
fn route_paths_with_escapes_are_reachable_and_cannot_be_routed_around() {
    let t = table(
        r#"
[[route]]
name = "public"
hosts = ["a.test"]
upstreams = ["10.0.0.1:80"]

[[route]]
name = "cafe"
hosts = ["a.test"]
path = "/caf%C3%A9/"
upstreams = ["10.0.0.2:80"]

[[route]]
name = "slash"
hosts = ["a.test"]
path = "/a%2Fb"
upstreams = ["10.0.0.3:80"]
"#,
    );
    let id = |s: &str| Ok(Some(s.to_string()));
    for (raw, want) in [
        // A route path written with escapes (as non-ASCII must be) is reached ...
        ("/caf%C3%A9", id("cafe")),
        ("/caf%c3%a9/menu", id("cafe")),
        ("/caf%C3%A9;x/menu", id("cafe")),
        ("/a%2Fb/c", id("slash")),
        ("/a%2fb", id("slash")),
        // ... and its decoded reading cannot be used to route around it.
        ("/a/b/c", Ok(Some("public".into()))),
        ("/a%2F%62", id("slash")),
        ("/a\\b", Err(PathError::Ambiguous)),
        ("/caf%C3%A9x", Ok(Some("public".into()))),
    ] {
        assert_eq!(routed(&t, raw), want, "{raw}");
    }
}

// -- property tests --------------------------------------------------------------------------

const HOSTS: &[&str] = &[
    "a.example.org",
    "b.example.org",
    "x.a.example.org",
    "*.example.org",
    "*.a.example.org",
];
const PATHS: &[&str] = &["/", "/api", "/api/", "/api/v1", "/apix", "/b"];
const REQ_HOSTS: &[&str] = &[
    "a.example.org",
    "b.example.org",
    "c.example.org",
    "x.a.example.org",
    "y.a.example.org",
    "z.x.a.example.org",
    "example.org",
];
const REQ_PATHS: &[&str] = &[
    "",
    "/",
    "/api",
    "/api/",
    "/api/v1",
    "/api/v1/x",
    "/apix",
    "/apix/y",
    "/b",
    "/bc",
    "/b/",
    "/api;x",
    "/api;x/v1",
    "/api/v1;",
    "/;x/api/v1/y",
    "/api/;/v1",
    "/apix;/y",
    "/b;",
    "/;",
];

/// The non-empty segments of a path, each without its `;parameters`.
fn segments(path: &str) -> Vec<&str> {
    path.split('/')
        .map(|seg| seg.split(';').next().unwrap())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Independent statement of the rule: exact hosts before wildcards (one label only),
/// then the longest prefix whose segments begin the path's segments (parameters and
/// empty segments ignored; `/api` and `/api/` alike).
fn linear_scan(t: &RouteTable, host: &str, path: &str) -> Option<String> {
    let path_segments = segments(path);
    let prefix_ok = |prefix: &str| prefix == "/" || path_segments.starts_with(&segments(prefix));
    let host_ok = |h: &HostPattern, exact: bool| match h {
        HostPattern::Exact(e) => exact && e == host,
        HostPattern::Wildcard(s) => {
            !exact
                && host.ends_with(&format!(".{s}"))
                && !host[..host.len() - s.len() - 1].contains('.')
        }
    };
    let entries: Vec<(&Vec<HostPattern>, &str, &str)> = t
        .routes
        .iter()
        .map(|r| (&r.hosts, r.path.as_str(), r.id.as_str()))
        .chain(
            t.redirects
                .iter()
                .map(|r| (&r.hosts, r.path.as_str(), r.id.as_str())),
        )
        .collect();
    let best = |exact: bool| {
        entries
            .iter()
            .filter(|(hosts, p, _)| hosts.iter().any(|h| host_ok(h, exact)) && prefix_ok(p))
            .max_by_key(|(_, p, _)| p.len())
            .map(|(_, _, id)| id.to_string())
    };
    best(true).or_else(|| best(false))
}

/// A routes file from (is_redirect, host indexes, path index) entries, skipping
/// host+path pairs already taken (`/api` and `/api/` are one path).
fn routes_text(entries: &[(bool, Vec<usize>, usize)]) -> String {
    let mut taken = std::collections::HashSet::new();
    let mut text = String::new();
    for (n, (redirect, hosts, path)) in entries.iter().enumerate() {
        let path = PATHS[*path];
        let hosts: Vec<String> = hosts
            .iter()
            .map(|&h| HOSTS[h])
            .filter(|h| taken.insert((*h, segments(path))))
            .map(|h| format!("{h:?}"))
            .collect();
        if hosts.is_empty() {
            continue;
        }
        let hosts = hosts.join(", ");
        if *redirect {
            text += &format!("[[redirect]]\nname = \"e{n}\"\nhosts = [{hosts}]\npath = {path:?}\nto = \"https://elsewhere.example.net/\"\n");
        } else {
            text += &format!("[[route]]\nname = \"e{n}\"\nhosts = [{hosts}]\npath = {path:?}\nupstreams = [\"10.0.0.1:80\"]\n");
        }
    }
    text
}

proptest! {
    #[test]
    fn lookup_agrees_with_linear_scan(
        entries in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(0..HOSTS.len(), 1..3), 0..PATHS.len()),
            0..12,
        ),
        requests in prop::collection::vec((0..REQ_HOSTS.len(), 0..REQ_PATHS.len()), 1..20),
    ) {
        let text = routes_text(&entries);
        let t = parse("p.toml", &text).map_err(|d| TestCaseError::fail(format!("{d}\n{text}")))?;
        for (h, p) in requests {
            let (host, path) = (REQ_HOSTS[h], REQ_PATHS[p]);
            let fast = t.lookup(host, path).map(|t| t.id().to_string());
            prop_assert_eq!(fast, linear_scan(&t, host, path), "{}{}\n{}", host, path, text);
        }
    }

    #[test]
    fn diff_agrees_with_set_differences(
        old in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(0..HOSTS.len(), 1..3), 0..PATHS.len()),
            0..10,
        ),
        new in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(0..HOSTS.len(), 1..3), 0..PATHS.len()),
            0..10,
        ),
    ) {
        use std::collections::{BTreeMap, BTreeSet};
        let (old_text, new_text) = (routes_text(&old), routes_text(&new));
        let a = parse("a.toml", &old_text).map_err(|d| TestCaseError::fail(format!("{d}")))?;
        let b = parse("b.toml", &new_text).map_err(|d| TestCaseError::fail(format!("{d}")))?;
        let d = diff(&a, &b);
        // Reference: whole-set differences over ids and over `names()`.
        fn lists<T: PartialEq>(
            old: BTreeMap<&str, &T>,
            new: BTreeMap<&str, &T>,
        ) -> (Vec<String>, Vec<String>, Vec<String>) {
            let s = |v: Vec<&&str>| v.into_iter().map(|k| k.to_string()).collect();
            (
                s(new.keys().filter(|k| !old.contains_key(*k)).collect()),
                s(old.keys().filter(|k| !new.contains_key(*k)).collect()),
                s(new.iter().filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v)).map(|(k, _)| k).collect()),
            )
        }
        fn routes(t: &RouteTable) -> BTreeMap<&str, &Route> {
            t.routes.iter().map(|r| (r.id.as_str(), &**r)).collect()
        }
        fn redirects(t: &RouteTable) -> BTreeMap<&str, &Redirect> {
            t.redirects.iter().map(|r| (r.id.as_str(), &**r)).collect()
        }
        let (ra, rr, rc) = lists(routes(&a), routes(&b));
        let (da, dr, dc) = lists(redirects(&a), redirects(&b));
        prop_assert_eq!((&d.routes_added, &d.routes_removed, &d.routes_changed), (&ra, &rr, &rc));
        prop_assert_eq!((&d.redirects_added, &d.redirects_removed, &d.redirects_changed), (&da, &dr, &dc));
        let (na, nb): (BTreeSet<String>, BTreeSet<String>) =
            (a.names().into_iter().collect(), b.names().into_iter().collect());
        prop_assert_eq!(&d.names_added, &nb.difference(&na).cloned().collect::<Vec<_>>());
        prop_assert_eq!(&d.names_removed, &na.difference(&nb).cloned().collect::<Vec<_>>());
        let nothing = [&ra, &rr, &rc, &da, &dr, &dc].iter().all(|l| l.is_empty()) && na == nb;
        prop_assert_eq!(d.is_empty(), nothing);
        prop_assert!(old_text != new_text || d.is_empty());
    }

    /// strip_prefix and a redirect's kept path cut exactly the segments the match
    /// covered: what is left, read without parameters, is the rest of the path.
    #[test]
    fn strip_path_cuts_what_path_matches_covered(
        prefix in prop::sample::select(vec!["/", "/a", "/a/", "/a/b", "/ab", "/a/b/"]),
        path in "/(/|;|a|b|x|=){0,12}",
    ) {
        let rest = rest_after(prefix, &path);
        prop_assert_eq!(rest.is_some(), path_matches(prefix, &path), "{} {}", prefix, path);
        if let Some(rest) = rest {
            prop_assert!(rest.is_empty() || rest.starts_with('/'), "{} {} -> {}", prefix, path, rest);
            let whole = path::without_params(&path).into_owned();
            let joined = format!("{}{}", base(prefix), path::without_params(rest));
            let merged = path::without_params(&format!("{joined};")).into_owned();
            prop_assert_eq!(merged, path::without_params(&format!("{whole};")).into_owned(), "{} {}", prefix, path);
            let stripped = strip_path(prefix, &path);
            prop_assert!(stripped.starts_with('/') || base(prefix).is_empty());
        }
    }

    #[test]
    fn parse_never_panics_on_any_text(text in "\\PC{0,200}") {
        let _ = parse("f", &text);
    }

    #[test]
    fn parse_never_panics_on_mangled_routes_files(
        cut in 0usize..4000, len in 0usize..40, insert in "[\\[\\]\"'=.,{}\n*:/a-z0-9 ]{0,8}",
    ) {
        let base = include_str!("../../../routes.toml");
        let mut at = cut.min(base.len());
        while !base.is_char_boundary(at) { at -= 1; }
        let mut end = (at + len).min(base.len());
        while !base.is_char_boundary(end) { end -= 1; }
        let text = format!("{}{}{}", &base[..at], insert, &base[end..]);
        if let Err(d) = parse("f", &text) {
            prop_assert!(!d.0.is_empty());
            for diag in &d.0 {
                prop_assert!(diag.line >= 1 && diag.col >= 1);
                prop_assert!(diag.line <= text.lines().count() + 1, "{}", diag);
            }
        }
    }
}

// -- the repository's files ----------------------------------------------------------------

#[test]
fn repository_routes_toml_is_valid() {
    let t = parse("routes.toml", include_str!("../../../routes.toml"))
        .unwrap_or_else(|d| panic!("{d}"));
    assert!(t.routes.len() >= 8, "{}", t.routes.len());
    assert!(t.redirects.len() >= 3);
    let id = |host: &str, path: &str| t.lookup(host, path).map(|t| t.id().to_string());
    assert_eq!(
        id("www.example.org", "/x").as_deref(),
        Some("site-redirect")
    );
    assert!(
        matches!(t.lookup("cloud.example.org", "/.well-known/caldav"), Some(Target::Redirect(r)) if r.status == 301)
    );
    let Some(Target::Proxy(mon)) = t.lookup("monitoring.example.org", "/") else {
        panic!()
    };
    assert_eq!(
        mon.policy.allow,
        Some(vec![
            "172.28.0.0/16".parse().unwrap(),
            "fd00:7fd7:e9a5::/48".parse().unwrap()
        ])
    );
    let Some(Target::Proxy(chat)) = t.lookup("chat.example.org", "/api/v4/websocket") else {
        panic!()
    };
    assert!(chat.policy.websocket);
    assert_eq!(chat.upstreams[0].port(), 8065);
    assert_eq!(chat.policy.max_body, Some(50 << 20));
}

#[test]
fn reference_file_is_valid_and_documents_every_key() {
    let text = include_str!("../routes.reference.toml");
    parse("routes.reference.toml", text).unwrap_or_else(|d| panic!("{d}"));
    let keys = crate::parse::TOP_KEYS
        .iter()
        .chain(crate::parse::POLICY_KEYS)
        .chain(crate::parse::ROUTE_KEYS)
        .chain(crate::parse::REDIRECT_KEYS);
    for key in keys {
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} ="))
                || l.starts_with(&format!("[{key}]"))
                || l.starts_with(&format!("[[{key}]]"))
        });
        assert!(
            documented,
            "`{key}` is not documented in routes.reference.toml"
        );
    }
}

/// Review: HTTP/1 and HTTP/2 accept a path with raw UTF-8 (and `"`, `{`, `}`, `|`, `^`,
/// `[`, `]`), which an upstream reads as the percent-encoded form. A route path must be
/// written encoded (`/caf%C3%A9/`), so a request for the raw form went to the catch-all
/// and side-stepped the route's `allow`.
#[test]
fn raw_non_ascii_and_other_unencoded_bytes_are_matched_as_their_escapes() {
    let t = table(
        r#"
[[route]]
name = "public"
hosts = ["a.test"]
upstreams = ["10.0.0.1:80"]

[[route]]
name = "cafe"
hosts = ["a.test"]
path = "/caf%C3%A9/"
upstreams = ["10.0.0.2:80"]
allow = ["10.0.0.0/8"]

[[route]]
name = "quote"
hosts = ["a.test"]
path = "/a%22b%7Cc/"
upstreams = ["10.0.0.3:80"]
allow = ["10.0.0.0/8"]
"#,
    );
    let id = |s: &str| Ok(Some(s.to_string()));
    for (raw, want) in [
        ("/caf\u{e9}/menu", id("cafe")),
        ("/caf\u{e9}", id("cafe")),
        ("/caf\u{e9};x/menu", id("cafe")),
        ("/a\"b|c/x", id("quote")),
        ("/a%22b|c", id("quote")),
        ("/cafe\u{301}/x", id("public")),
    ] {
        assert_eq!(routed(&t, raw), want, "{raw}");
    }
    // What is forwarded: the encoded form, hex digits in upper case.
    for (raw, want) in [
        ("/caf\u{e9}/men\u{fc}", "/caf%C3%A9/men%C3%BC"),
        ("/a\"b{c}|d^e[f]`g", "/a%22b%7Bc%7D%7Cd%5Ee%5Bf%5D%60g"),
        ("/a\\b", "/a%5Cb"),
        ("/ok;a=b:c@d!$&'()*+,=~", "/ok;a=b:c@d!$&'()*+,=~"),
    ] {
        assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
        assert_eq!(normalize_path(want).unwrap(), want, "{want} is normal");
    }
}

#[test]
fn acme_profile_is_a_route_key_checked_for_syntax() {
    let t = parse(
        "r.toml",
        "[[route]]\nhosts = [\"a.test\"]\nupstreams = [\"127.0.0.1:1\"]\nacme_profile = \"shortlived\"\n\
         [[route]]\nhosts = [\"b.test\"]\nupstreams = [\"127.0.0.1:1\"]\n\
         [[redirect]]\nhosts = [\"c.test\"]\nto = \"https://a.test/\"\n",
    )
    .unwrap();
    assert_eq!(t.routes[0].acme_profile.as_deref(), Some("shortlived"));
    assert_eq!(t.routes[1].acme_profile, None);
    assert_eq!(
        t.certificate_groups_with_profiles(),
        vec![
            (vec!["a.test".to_string()], Some("shortlived".to_string())),
            (vec!["b.test".to_string()], None),
            (vec!["c.test".to_string()], None),
        ]
    );
    let e = parse(
        "r.toml",
        "[[route]]\nhosts = [\"a.test\"]\nupstreams = [\"127.0.0.1:1\"]\nacme_profile = \"short lived\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("r.toml:4:16") && e.contains("invalid acme_profile"),
        "{e}"
    );
}
