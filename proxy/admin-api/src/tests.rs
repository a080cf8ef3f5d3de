//! One test per message: a JSON literal in the daemon's exact output format (pretty,
//! keys sorted, as `json!` built it before this crate) decodes into the type and encodes
//! back to the same text. A field renamed in a type fails its test.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;

/// Decode `literal`, encode it the daemon's way, and compare the text.
fn round_trip<T: Serialize + DeserializeOwned + Debug>(literal: &str) -> T {
    let decoded: T = serde_json::from_str(literal).unwrap_or_else(|e| panic!("{e}"));
    let value = serde_json::to_value(&decoded).unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&value).unwrap(),
        literal.trim()
    );
    decoded
}

fn decode_err<T: DeserializeOwned + Debug>(json: &str) -> String {
    serde_json::from_str::<T>(json).unwrap_err().to_string()
}

const STATUS: &str = r#"
{
  "certificates": [
    {
      "id": "a.test",
      "issuer": "local",
      "names": [
        "a.test",
        "www.a.test"
      ],
      "not_after": 1798215041
    }
  ],
  "generation": 3,
  "last_reload": {
    "at": 1764950000,
    "generation": 3,
    "message": "applied generation 3: 1 route added",
    "ok": true,
    "trigger": "admin api"
  },
  "last_successful_reload": 1764950000,
  "listeners": {
    "admin": "/run/proxyd/admin.sock",
    "http": [
      "127.0.0.1:8080"
    ],
    "https": [
      "127.0.0.1:8443",
      "[::1]:8443"
    ]
  },
  "names": 2,
  "pid": 4242,
  "redirects": 0,
  "routes": 1,
  "routes_file": "/etc/proxyd/routes.toml",
  "started_at": 1764940000,
  "store": {
    "checked_at": null,
    "ok": true,
    "problems": []
  },
  "upstreams": [
    {
      "address": "127.0.0.1:9000",
      "healthy": true,
      "route": "a"
    }
  ],
  "upstreams_healthy": 1,
  "upstreams_total": 1,
  "version": "0.1.0"
}"#;

#[test]
fn status() {
    let s: Status = round_trip(STATUS);
    assert_eq!(s.pid, 4242);
    assert_eq!(s.last_reload.unwrap().trigger, "admin api");
    assert_eq!(s.store.checked_at, None);
}

#[test]
fn status_at_start_and_with_store_problems() {
    round_trip::<Status>(
        r#"
{
  "certificates": [],
  "generation": 1,
  "last_reload": null,
  "last_successful_reload": null,
  "listeners": {
    "admin": "/tmp/a.sock",
    "http": [],
    "https": []
  },
  "names": 0,
  "pid": 1,
  "redirects": 0,
  "routes": 0,
  "routes_file": "routes.toml",
  "started_at": 1,
  "store": {
    "checked_at": 1764950000,
    "ok": false,
    "problems": [
      "certs/ is not writable: read-only file system"
    ]
  },
  "upstreams": [],
  "upstreams_healthy": 0,
  "upstreams_total": 0,
  "version": "0.1.0"
}"#,
    );
}

#[test]
fn a_missing_field_is_an_error_naming_it() {
    let renamed = STATUS.replace("\"pid\"", "\"process_id\"");
    assert!(decode_err::<Status>(&renamed).contains("missing field `pid`"));
    // A field that may be null must still be there.
    let renamed = STATUS.replace("\"last_reload\"", "\"previous_reload\"");
    assert!(decode_err::<Status>(&renamed).contains("missing field `last_reload`"));
    let renamed = STATUS.replace("\"checked_at\"", "\"checked\"");
    assert!(decode_err::<Status>(&renamed).contains("missing field `checked_at`"));
}

#[test]
fn extra_fields_from_a_newer_daemon_are_ignored() {
    let newer = STATUS.replacen('{', "{\n  \"uptime_s\": 12,", 1);
    let s: Status = serde_json::from_str(&newer).unwrap();
    assert_eq!(s, serde_json::from_str::<Status>(STATUS).unwrap());
}

const APPLIED: &str = r#"
{
  "applied": true,
  "certificates_issued": [
    "b.test"
  ],
  "certificates_needed": [
    "b.test"
  ],
  "changes": {
    "names_added": [
      "b.test"
    ],
    "names_removed": [],
    "redirects_added": [],
    "redirects_changed": [],
    "redirects_removed": [],
    "routes_added": [
      "b"
    ],
    "routes_changed": [],
    "routes_removed": []
  },
  "duration_ms": 12.5,
  "errors": [],
  "generation": 2,
  "message": "applied generation 2: 1 route added",
  "ok": true,
  "phases_cpu_ms": {
    "certificates": 8.0,
    "diff": 0.1,
    "install": 0.2,
    "parse": 1.5,
    "read": 0.05
  },
  "phases_ms": {
    "certificates": 9.0,
    "diff": 0.1,
    "install": 0.25,
    "parse": 2.0,
    "read": 0.1
  }
}"#;

#[test]
fn reload_applied() {
    let r: ReloadReply = round_trip(APPLIED);
    let ReloadOutcome::Applied {
        changes,
        certificates_issued,
        ..
    } = &r.outcome
    else {
        panic!("{r:?}");
    };
    assert_eq!(changes.routes_added, ["b"]);
    assert_eq!(certificates_issued, &["b.test"]);
    assert_eq!(r.phases_ms["parse"], 2.0);
}

#[test]
fn reload_rejected() {
    let r: ReloadReply = round_trip(
        r#"
{
  "applied": false,
  "certificates_issued": [],
  "certificates_needed": [],
  "changes": {
    "names_added": [],
    "names_removed": [],
    "redirects_added": [],
    "redirects_changed": [],
    "redirects_removed": [],
    "routes_added": [],
    "routes_changed": [],
    "routes_removed": []
  },
  "duration_ms": 0.8,
  "errors": [
    {
      "col": 1,
      "context": "in [[route]] #2 (hosts = [\"steady.test\"])",
      "file": "routes.toml",
      "line": 12,
      "message": "unknown field `upstrem`",
      "rendered": "error: routes.toml:12:1: unknown field `upstrem`\n  in [[route]] #2 (hosts = [\"steady.test\"])"
    },
    {
      "col": 0,
      "context": null,
      "file": "routes.toml",
      "line": 0,
      "message": "cannot read the routes file: No such file or directory (os error 2)",
      "rendered": "error: routes.toml:0:0: cannot read the routes file: No such file or directory (os error 2)"
    }
  ],
  "generation": 1,
  "message": "routes.toml rejected: 2 errors; the running table is unchanged",
  "ok": false,
  "phases_cpu_ms": {
    "parse": 0.5,
    "read": 0.1
  },
  "phases_ms": {
    "parse": 0.6,
    "read": 0.1
  }
}"#,
    );
    assert!(!r.outcome.is_ok());
}

#[test]
fn diff_and_unchanged_are_valid_and_not_applied() {
    let r: ReloadReply = round_trip(
        r#"
{
  "applied": false,
  "certificates_issued": [],
  "certificates_needed": [
    "c.test"
  ],
  "changes": {
    "names_added": [
      "c.test"
    ],
    "names_removed": [],
    "redirects_added": [],
    "redirects_changed": [],
    "redirects_removed": [],
    "routes_added": [],
    "routes_changed": [
      "a"
    ],
    "routes_removed": []
  },
  "duration_ms": 3.0,
  "errors": [],
  "generation": 4,
  "message": "valid; a reload would change: 1 route changed",
  "ok": true,
  "phases_cpu_ms": {
    "diff": 0.1,
    "parse": 1.0,
    "read": 0.1
  },
  "phases_ms": {
    "diff": 0.1,
    "parse": 1.0,
    "read": 0.1
  }
}"#,
    );
    assert!(matches!(r.outcome, ReloadOutcome::Valid { .. }));
    assert!(r.outcome.is_ok());
}

#[test]
fn a_contradictory_reload_reply_is_an_error() {
    let both = APPLIED.replace("\"ok\": true", "\"ok\": false");
    assert!(decode_err::<ReloadReply>(&both).contains("rejected and applied"));
    let renamed = APPLIED.replace("\"applied\"", "\"done\"");
    assert!(decode_err::<ReloadReply>(&renamed).contains("missing field `applied`"));
}

#[test]
fn readiness() {
    let r: Readiness = round_trip(
        r#"
{
  "certificates": 2,
  "generation": 1,
  "listeners": [
    {
      "address": "127.0.0.1:8443",
      "listening": true
    },
    {
      "address": "127.0.0.1:8080",
      "listening": false
    }
  ],
  "names_without_certificate": [
    "new.test"
  ],
  "problems": [
    "127.0.0.1:8080 is not listening"
  ],
  "ready": false
}"#,
    );
    assert!(!r.ready);
}

#[test]
fn live() {
    assert!(round_trip::<Live>("{\n  \"live\": true\n}").live);
}

#[test]
fn certs_without_acme_has_no_groups() {
    let c: Certs = round_trip(
        r#"
{
  "acme": null,
  "certificates": [
    {
      "expiring": false,
      "id": "a.test",
      "issuer": "local",
      "names": [
        "a.test"
      ],
      "not_after": 1798215041,
      "not_before": 1764950000,
      "replace_at": 1787000000
    }
  ],
  "served": {
    "interval_secs": 300,
    "last_run": 1764950100,
    "names": [
      {
        "cert": "a.test",
        "checked_at": 1764950100,
        "name": "a.test",
        "not_after": 1798215041,
        "not_before": 1764950000,
        "reason": "served 0123456789abcdef (until 2026-12-25T16:10:41Z), stored fedcba9876543210 (until 2026-12-26T16:10:41Z)",
        "served_sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "state": "mismatch",
        "stored_sha256": "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
      }
    ],
    "uncovered": []
  }
}"#,
    );
    assert_eq!(c.groups, None);
    assert_eq!(c.served.names[0].state, ServedState::Mismatch);
}

#[test]
fn certs_with_acme() {
    let c: Certs = round_trip(
        r#"
{
  "acme": {
    "budget": [
      "account orders 3/300 per 3h",
      "a.test certificates 2/50 per 7d"
    ],
    "challenge": "http-01",
    "directory": "https://127.0.0.1:14000/dir",
    "orders_placed": 3,
    "orders_recorded": 41
  },
  "certificates": [],
  "groups": [
    {
      "ari_window": [
        1790000000,
        1790086400
      ],
      "failures": 1,
      "id": "a.test",
      "issued_profile": "shortlived",
      "issuer": "https://127.0.0.1:14000/dir",
      "last_attempt": 1764950000,
      "last_error": "order failed: rateLimited",
      "names": [
        "a.test",
        "b.a.test"
      ],
      "next_attempt": 1764950600,
      "next_renewal": 1790000000,
      "not_after": 1798215041,
      "ordering": false,
      "profile": "shortlived",
      "rate_limited_until": 1764953600
    },
    {
      "ari_window": null,
      "failures": 0,
      "id": "new.test",
      "issued_profile": null,
      "issuer": null,
      "last_attempt": null,
      "last_error": null,
      "names": [
        "new.test"
      ],
      "next_attempt": null,
      "next_renewal": null,
      "not_after": null,
      "ordering": true,
      "profile": null,
      "rate_limited_until": null
    }
  ],
  "served": {
    "interval_secs": 0,
    "last_run": null,
    "names": [],
    "uncovered": [
      "bare.test"
    ]
  }
}"#,
    );
    let groups = c.groups.unwrap();
    assert_eq!(groups[0].ari_window, Some((1790000000, 1790086400)));
    assert_eq!(groups[1].issuer, None);
    assert_eq!(groups[0].profile.as_deref(), Some("shortlived"));
    assert_eq!(groups[1].issued_profile, None);
}

#[test]
fn renewing_and_errors() {
    round_trip::<Renewing>("{\n  \"name\": \"b.a.test\",\n  \"renewing\": \"a.test\"\n}");
    round_trip::<ErrorReply>("{\n  \"error\": \"no such admin endpoint: /v1/nope\"\n}");
}

#[test]
fn handover() {
    let sent: HandoverReply = round_trip(
        r#"
{
  "ok": true,
  "pid": 4242,
  "sent": [
    "127.0.0.1:8443",
    "127.0.0.1:8080"
  ],
  "upgrade_socket": "/run/proxyd/upgrade.sock"
}"#,
    );
    assert!(matches!(sent, HandoverReply::Sent { pid: 4242, .. }));
    let refused: HandoverReply = round_trip(
        r#"
{
  "error": "nobody waits on /run/proxyd/upgrade.sock",
  "ok": false,
  "upgrade_socket": "/run/proxyd/upgrade.sock"
}"#,
    );
    assert!(matches!(refused, HandoverReply::Refused { .. }));
    let e = decode_err::<HandoverReply>(r#"{"ok": true, "upgrade_socket": "/s"}"#);
    assert!(e.contains("needs `pid` and `sent`"), "{e}");
}

#[test]
fn preflight() {
    let p = round_trip::<Preflight>(
        r#"
{
  "caa_identities": [
    "ca.test"
  ],
  "directory": "https://127.0.0.1:14000/dir",
  "http_port": 80,
  "names": [
    {
      "checks": [
        {
          "check": "dns",
          "detail": "resolves to 127.0.0.2, not to this proxy (127.0.0.1)",
          "result": "fail"
        },
        {
          "check": "caa",
          "detail": "no CAA record: any CA may issue",
          "result": "ok"
        },
        {
          "check": "http-01",
          "detail": "no address",
          "result": "skipped"
        }
      ],
      "name": "a.test"
    }
  ],
  "ok": false,
  "public_addrs": [
    "127.0.0.1"
  ]
}"#,
    );
    assert!(p.any_failed());
    let e = decode_err::<Preflight>(
        r#"{"directory":"d","caa_identities":[],"public_addrs":[],"http_port":80,"names":[{"name":"a","checks":[{"check":"dns","detail":"","result":"bad"}]}],"ok":true}"#,
    );
    assert!(e.contains("unknown variant `bad`"), "{e}");
}

#[test]
fn requests_parse_back_from_their_method_and_path() {
    for r in [
        Request::Status,
        Request::Reload,
        Request::Diff,
        Request::Certs,
        Request::Renew {
            name: "a.test".into(),
        },
        Request::Preflight { names: vec![] },
        Request::Preflight {
            names: vec!["a.test".into(), "b.test".into()],
        },
        Request::Live,
        Request::Ready,
        Request::Handover,
    ] {
        let path = r.path();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path.as_str(), None),
        };
        assert_eq!(Request::parse(r.method(), path, query), Some(r));
    }
    assert_eq!(Request::parse("GET", "/v1/reload", None), None);
    assert_eq!(
        Request::parse("POST", "/v1/certs/renew", None),
        Some(Request::Renew { name: "".into() })
    );
}
