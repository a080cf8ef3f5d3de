//! `routes::parse` on any text: never panics; every diagnostic renders; a table it
//! accepts is consistent (each route is found at its own hosts and path, a table does
//! not differ from itself, and the names it serves are the certificate names).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match routes::parse("fuzz.toml", text) {
        Err(diags) => {
            assert!(!diags.0.is_empty(), "an error without a diagnostic");
            for d in &diags.0 {
                let rendered = d.to_string();
                assert!(rendered.contains("fuzz.toml:"), "{rendered}");
            }
        }
        Ok(table) => {
            assert!(routes::diff(&table, &table).is_empty());
            for route in &table.routes {
                for host in &route.hosts {
                    // A wildcard is looked up with one label in front of it.
                    let name = match host {
                        routes::HostPattern::Exact(h) => h.clone(),
                        routes::HostPattern::Wildcard(s) => format!("fuzz.{s}"),
                    };
                    let found = table.lookup(&name, &route.path).map(|t| t.id());
                    assert_eq!(found, Some(route.id.as_str()), "at {name}{}", route.path);
                }
            }
            let names = table.names();
            let mut from_groups: Vec<String> =
                table.certificate_groups().into_iter().flatten().collect();
            from_groups.sort();
            from_groups.dedup();
            for n in &from_groups {
                assert!(names.contains(n), "certificate name {n} is not served");
            }
        }
    }
});
