//! Generators shared by the criterion benchmarks (`benches/benches/*.rs`): routing
//! tables and certificate sets of a given number of names, built deterministically so
//! that runs compare.
//!
//! A generated table of `n` names looks like a large real one: nine names in ten are
//! exact (`h<i>.s<j>.example`), one in ten is a wildcard (`*.w<i>.s<j>.example`); one
//! exact name in four also has `/api` and `/static/` routes besides `/`, and one in
//! twenty a `/old` redirect. Upstreams are IP literals, so nothing needs DNS.

use std::fmt::Write as _;

/// A generated routes file and the names it serves, by kind, for building queries.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The text of the routes file.
    pub toml: String,
    /// Exact names with only a `/` route.
    pub exact: Vec<String>,
    /// Exact names that also have `/api` and `/static/` routes.
    pub prefixed: Vec<String>,
    /// Suffixes of the wildcard names (`w7.s7.example` for `*.w7.s7.example`).
    pub wildcard: Vec<String>,
}

impl Generated {
    /// Every name served, wildcards written `*.suffix`.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.exact.clone();
        v.extend(self.prefixed.iter().cloned());
        v.extend(self.wildcard.iter().map(|s| format!("*.{s}")));
        v
    }
}

/// The name number `i` of a table: `(name, is_wildcard, has_path_prefixes)`.
fn name(i: usize) -> (String, bool, bool) {
    let site = i % 97;
    if i % 10 == 9 {
        (format!("w{i}.s{site}.example"), true, false)
    } else {
        (format!("h{i}.s{site}.example"), false, i.is_multiple_of(4))
    }
}

/// A routes file with `n` host names (see the crate docs for its shape).
pub fn routes_toml(n: usize) -> Generated {
    let mut g = Generated {
        toml: String::with_capacity(n * 120),
        exact: Vec::new(),
        prefixed: Vec::new(),
        wildcard: Vec::new(),
    };
    g.toml
        .push_str("[defaults]\nmax_body = \"10m\"\nread_timeout = \"60s\"\n");
    g.toml
        .push_str("response_headers = { \"X-Content-Type-Options\" = \"nosniff\" }\n\n");
    for i in 0..n {
        let (host, wildcard, prefixed) = name(i);
        let up = format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let pattern = if wildcard {
            format!("*.{host}")
        } else {
            host.clone()
        };
        let _ = write!(
            g.toml,
            "[[route]]\nhosts = [\"{pattern}\"]\nupstreams = [\"{up}\"]\n\n"
        );
        if prefixed {
            let _ = write!(
                g.toml,
                "[[route]]\nhosts = [\"{host}\"]\npath = \"/api\"\nstrip_prefix = true\n\
                 upstreams = [\"{up}\", \"127.0.0.1:9000\"]\nlb = \"ip_hash\"\n\n\
                 [[route]]\nhosts = [\"{host}\"]\npath = \"/static/\"\n\
                 upstreams = [\"{up}\"]\nmax_body = \"1k\"\n\n"
            );
        }
        if !wildcard && i % 20 == 1 {
            let _ = write!(
                g.toml,
                "[[redirect]]\nhosts = [\"{host}\"]\npath = \"/old\"\nto = \"/new/\"\n\
                 keep_path = true\n\n"
            );
        }
        match (wildcard, prefixed) {
            (true, _) => g.wildcard.push(host),
            (false, true) => g.prefixed.push(host),
            (false, false) => g.exact.push(host),
        }
    }
    g
}

/// `k` items picked from `items` by a fixed pseudo-random sequence (xorshift), so that
/// a benchmark walks the table rather than hitting one hot entry.
pub fn sample<T: Clone>(items: &[T], k: usize, seed: u64) -> Vec<T> {
    assert!(!items.is_empty(), "nothing to sample from");
    let mut x = seed | 1;
    (0..k)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            items[(x % items.len() as u64) as usize].clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tables_parse_and_have_every_kind() {
        for n in [10, 1_000] {
            let g = routes_toml(n);
            let table = routes::parse("gen.toml", &g.toml).unwrap_or_else(|d| panic!("{d}"));
            assert_eq!(table.names().len(), n);
            assert_eq!(g.names().len(), n);
            assert!(!g.exact.is_empty() && !g.prefixed.is_empty() && !g.wildcard.is_empty());
            let h = &g.prefixed[0];
            assert_eq!(table.lookup(h, "/api/x").unwrap().path(), "/api");
            assert_eq!(table.lookup(h, "/apix").unwrap().path(), "/");
            let w = format!("a.{}", g.wildcard[0]);
            assert!(table.lookup(&w, "/").is_some());
            assert!(table.lookup("nope.example", "/").is_none());
        }
    }
}
