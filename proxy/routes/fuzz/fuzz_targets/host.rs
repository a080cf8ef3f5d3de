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
    assert_eq!(valid, n.as_ref(), "a valid host is its own normal form");
    assert_eq!(routes::normalize_host(&n), n, "normalising twice");
    // The input was that host, in one of the forms normalisation accepts.
    let t = raw.trim().to_ascii_lowercase();
    let forms = |h: &str| -> bool {
        let bare = [h.to_owned(), format!("{h}.")];
        let hosts: Vec<String> = if h.contains(':') {
            bare.iter().map(|b| format!("[{b}]")).collect()
        } else {
            bare.to_vec()
        };
        hosts.iter().any(|f| {
            t == *f
                || t.strip_prefix(f.as_str())
                    .and_then(|rest| rest.strip_prefix(':'))
                    // RFC 3986: port = *DIGIT (may be empty).
                    .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
        }) || (h.contains(':') && (t == h || t == format!("{h}.")))
    };
    assert!(forms(&n), "{raw:?} normalised to the routable {n:?}");
});
