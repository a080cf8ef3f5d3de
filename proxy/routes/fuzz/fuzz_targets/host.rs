//! `routes::normalize_host` on any Host header, `:authority` or SNI: never panics, never
//! leaves upper case, and only ever removes what normalisation is for: surrounding
//! blanks, case, one trailing dot, a `:port` (digits, maybe none), the brackets of an IPv6 literal. Whatever
//! else a client puts in the header must stay, so that it cannot match a route.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let n = routes::normalize_host(raw);
    assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "{raw:?} -> {n:?}");
    let Ok(routes::HostPattern::Exact(valid)) = routes::check::host(&n) else {
        // Not something a route could name: it matches nothing.
        return;
    };
    if valid != n.as_ref() {
        // e.g. `a..` -> `a.`, which a route names as `a`: looked up as `a.`, it matches
        // nothing (fails closed).
        return;
    }
    assert_eq!(routes::normalize_host(&n), n, "normalising twice");
    // The input was that host, in one of the forms normalisation accepts: `h`, `h.`,
    // `h:port`, `h.:port`, and for IPv6 `[h]`, `[h]:port` or `h`, with `h` any spelling
    // of the same address.
    let t = raw.trim().to_ascii_lowercase();
    let port_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mut cores: Vec<&str> = vec![t.as_str()];
    if let Some((h, p)) = t.rsplit_once(':') {
        if port_ok(p) {
            cores.push(h);
        }
    }
    if let Some(inner) = t.strip_prefix('[') {
        if let Some((h, after)) = inner.split_once(']') {
            if after.is_empty() || after.strip_prefix(':').is_some_and(port_ok) {
                cores.push(h);
            }
        }
    }
    let same = |core: &str| {
        let core = core.strip_suffix('.').unwrap_or(core);
        core == n.as_ref()
            || matches!(
                (core.parse::<std::net::Ipv6Addr>(), n.parse::<std::net::Ipv6Addr>()),
                (Ok(a), Ok(b)) if a == b
            )
    };
    assert!(cores.iter().any(|c| same(c)), "{raw:?} normalised to the routable {n:?}");
});
