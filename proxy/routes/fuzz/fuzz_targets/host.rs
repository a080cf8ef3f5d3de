//! `routes::parse_request_host` on any Host header or `:authority`: never panics; what it
//! accepts is made of letters, digits, `.-_:[]` only (nothing a forwarding header or a
//! log line could be broken by), normalises to a name a route could hold, reads back as
//! itself, and is the input with only case, one trailing dot, the port and IPv6
//! brackets (and IPv6 spelling) taken off.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(host) = routes::parse_request_host(raw) else {
        return;
    };
    assert!(
        raw.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)),
        "accepted junk: {raw:?}"
    );
    let name = host.name.as_ref();
    assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{raw:?} -> {name:?}");
    assert!(!name.ends_with('.'), "{raw:?} -> {name:?}");
    // A name a route can hold, in the very form the table keys it by.
    match routes::check::host(name) {
        Ok(routes::HostPattern::Exact(keyed)) => assert_eq!(keyed, name, "{raw:?}"),
        other => panic!("{raw:?} -> {name:?}, which a route reads as {other:?}"),
    }
    // What the proxy forwards (X-Forwarded-Host) is the same host again.
    let authority = host.authority();
    assert_eq!(
        routes::parse_request_host(&authority).as_ref(),
        Ok(&host),
        "{raw:?} -> {authority:?}"
    );
    // Nothing but the normalisation was taken off.
    let lower = raw.to_ascii_lowercase();
    let core = match lower.strip_prefix('[') {
        Some(inner) => inner.split_once(']').map(|(v6, _)| v6).unwrap(),
        None => lower.split(':').next().unwrap(),
    };
    let core = core.strip_suffix('.').unwrap_or(core);
    assert!(
        core == name
            || matches!(
                (core.parse::<std::net::Ipv6Addr>(), name.parse::<std::net::Ipv6Addr>()),
                (Ok(a), Ok(b)) if a == b
            ),
        "{raw:?} normalised to {name:?}"
    );
});
