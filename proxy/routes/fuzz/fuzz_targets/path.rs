//! Request paths: the route the proxy picks for a path must be the route of the path
//! the upstream will act on. A lenient upstream (nginx, PHP front controllers, most
//! frameworks) percent-decodes the path, merges slashes and resolves `.` and `..`;
//! if the proxy routed on anything else, `/x/../admin` would reach `/admin` through the
//! route of `/` and skip `/admin`'s `allow`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static TABLE: LazyLock<routes::RouteTable> = LazyLock::new(|| {
    routes::parse(
        "fuzz.toml",
        r#"
[[route]]
hosts = ["a.test"]
upstreams = ["127.0.0.1:1"]

[[route]]
hosts = ["a.test"]
path = "/admin"
upstreams = ["127.0.0.1:2"]
allow = ["10.0.0.0/8"]

[[route]]
hosts = ["a.test"]
path = "/app/"
strip_prefix = true
upstreams = ["127.0.0.1:3"]

[[route]]
hosts = ["a.test"]
path = "/static"
upstreams = ["127.0.0.1:4"]
"#,
    )
    .expect("the fuzz table is valid")
});

/// The path a lenient upstream acts on: every `%XX` decoded, slashes merged, dot
/// segments resolved (RFC 3986 5.2.4). `None` when it is not UTF-8 after decoding.
fn backend_view(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                bytes.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        bytes.push(b[i]);
        i += 1;
    }
    let s = String::from_utf8(bytes).ok()?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = s.split('/').collect();
    for seg in &segments {
        match *seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            seg => out.push(seg),
        }
    }
    let mut path = format!("/{}", out.join("/"));
    let last = segments.last().copied().unwrap_or_default();
    if !out.is_empty() && matches!(last, "" | "." | "..") {
        path.push('/');
    }
    Some(path)
}

fn id(t: Option<&routes::Target>) -> Option<&str> {
    t.map(|t| t.id())
}

fuzz_target!(|raw: &str| {
    let raw = format!("/{raw}");
    let table = &*TABLE;
    // What the proxy does: normalise (or refuse), then route (or refuse).
    let Ok(path) = routes::normalize_path(&raw) else {
        return;
    };
    assert_eq!(
        routes::normalize_path(&path).as_deref(),
        Ok(path.as_ref()),
        "normalising {raw:?} twice"
    );
    let Ok(picked) = table.route("a.test", &path) else {
        return;
    };
    // What the upstream acts on, from what the client sent and from what the proxy
    // forwards: one and the same path, and it takes the route the proxy took.
    let Some(backend) = backend_view(&raw) else {
        return;
    };
    assert_eq!(backend_view(&path).as_deref(), Some(backend.as_str()), "{raw:?} forwarded as {path:?}");
    let acted_on = table.lookup("a.test", &backend);
    assert_eq!(
        id(picked),
        id(acted_on),
        "{raw:?} (forwarded as {path:?}) is routed as {:?} but the upstream acts on {backend:?}",
        id(picked)
    );
    // strip_prefix of the /app/ route sends a path that is itself normal.
    if let Some(routes::Target::Proxy(r)) = picked {
        if r.strip_prefix {
            let stripped = routes::strip_path(&r.path, &path);
            assert!(stripped.starts_with('/'), "{path:?} stripped to {stripped:?}");
            assert_eq!(routes::normalize_path(&stripped).as_deref(), Ok(stripped.as_ref()));
        }
    }
});
