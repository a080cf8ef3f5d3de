//! What changes between two route tables: the summary a reload prints.

use std::sync::Arc;

use crate::{FastMap, RouteTable};

/// Differences between an old and a new table, by route/redirect id and by name.
/// Every list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDiff {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    /// Same id, different hosts, path, upstreams or policy.
    pub routes_changed: Vec<String>,
    pub redirects_added: Vec<String>,
    pub redirects_removed: Vec<String>,
    pub redirects_changed: Vec<String>,
    /// Served names (exact or `*.suffix`) that the new table adds or drops.
    pub names_added: Vec<String>,
    pub names_removed: Vec<String>,
}

impl TableDiff {
    pub fn is_empty(&self) -> bool {
        *self == TableDiff::default()
    }
}

/// Compare two tables. Linear in their sizes: one hash map per side, no copy of either
/// table; only the lists it returns are allocated and sorted.
pub fn diff(old: &RouteTable, new: &RouteTable) -> TableDiff {
    let (routes_added, routes_removed, routes_changed) =
        compare(&old.routes, &new.routes, |r| &r.id);
    let (redirects_added, redirects_removed, redirects_changed) =
        compare(&old.redirects, &new.redirects, |r| &r.id);
    TableDiff {
        routes_added,
        routes_removed,
        routes_changed,
        redirects_added,
        redirects_removed,
        redirects_changed,
        names_added: names_only_in(new, old),
        names_removed: names_only_in(old, new),
    }
}

type Lists = (Vec<String>, Vec<String>, Vec<String>);

/// Added, removed and changed ids (ids are unique within a valid table), each sorted.
fn compare<T: PartialEq>(old: &[Arc<T>], new: &[Arc<T>], id: impl Fn(&T) -> &str) -> Lists {
    let old_by_id: FastMap<&str, &T> = old.iter().map(|e| (id(e), &**e)).collect();
    let new_ids: FastMap<&str, ()> = new.iter().map(|e| (id(e), ())).collect();
    let (mut added, mut changed) = (Vec::new(), Vec::new());
    for e in new {
        match old_by_id.get(id(e)) {
            None => added.push(id(e).to_string()),
            Some(o) if *o != &**e => changed.push(id(e).to_string()),
            Some(_) => {}
        }
    }
    let mut removed: Vec<String> = old
        .iter()
        .map(|e| id(e))
        .filter(|i| !new_ids.contains_key(i))
        .map(str::to_string)
        .collect();
    added.sort_unstable();
    removed.sort_unstable();
    changed.sort_unstable();
    (added, removed, changed)
}

/// The served names (as [`RouteTable::names`] spells them) of `a` that `b` does not
/// serve, sorted.
fn names_only_in(a: &RouteTable, b: &RouteTable) -> Vec<String> {
    let mut out: Vec<String> = a
        .exact
        .keys()
        .filter(|k| !b.exact.contains_key(*k))
        .cloned()
        .collect();
    out.extend(
        a.wildcard
            .keys()
            .filter(|k| !b.wildcard.contains_key(*k))
            .map(|s| format!("*.{s}")),
    );
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RouteTable {
        crate::parse("t.toml", text).unwrap()
    }

    #[test]
    fn reports_added_removed_changed_routes_and_names() {
        let old = table(
            r#"
[[route]]
name = "keep"
hosts = ["a.test"]
upstreams = ["127.0.0.1:1"]
[[route]]
name = "change"
hosts = ["b.test"]
upstreams = ["127.0.0.1:2"]
[[route]]
name = "drop"
hosts = ["c.test"]
upstreams = ["127.0.0.1:3"]
"#,
        );
        let new = table(
            r#"
[[route]]
name = "keep"
hosts = ["a.test"]
upstreams = ["127.0.0.1:1"]
[[route]]
name = "change"
hosts = ["b.test"]
upstreams = ["127.0.0.1:2"]
max_body = "1g"
[[route]]
name = "new"
hosts = ["d.test", "*.d.test"]
upstreams = ["127.0.0.1:4"]
[[redirect]]
hosts = ["www.a.test"]
to = "https://a.test"
"#,
        );
        let d = diff(&old, &new);
        assert_eq!(d.routes_added, ["new"]);
        assert_eq!(d.routes_removed, ["drop"]);
        assert_eq!(d.routes_changed, ["change"]);
        assert_eq!(d.redirects_added, ["www.a.test/"]);
        assert!(d.redirects_removed.is_empty() && d.redirects_changed.is_empty());
        assert_eq!(d.names_added, ["*.d.test", "d.test", "www.a.test"]);
        assert_eq!(d.names_removed, ["c.test"]);
        assert!(diff(&new, &new).is_empty());
    }
}
