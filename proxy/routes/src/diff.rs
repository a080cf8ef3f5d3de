//! What changes between two route tables: the summary a reload prints.

use std::collections::{BTreeMap, BTreeSet};

use crate::RouteTable;

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

/// Compare two tables.
pub fn diff(old: &RouteTable, new: &RouteTable) -> TableDiff {
    let (routes_added, routes_removed, routes_changed) = compare(
        old.routes.iter().map(|r| (r.id.as_str(), &**r)),
        new.routes.iter().map(|r| (r.id.as_str(), &**r)),
    );
    let (redirects_added, redirects_removed, redirects_changed) = compare(
        old.redirects.iter().map(|r| (r.id.as_str(), &**r)),
        new.redirects.iter().map(|r| (r.id.as_str(), &**r)),
    );
    let old_names: BTreeSet<String> = old.names().into_iter().collect();
    let new_names: BTreeSet<String> = new.names().into_iter().collect();
    TableDiff {
        routes_added,
        routes_removed,
        routes_changed,
        redirects_added,
        redirects_removed,
        redirects_changed,
        names_added: new_names.difference(&old_names).cloned().collect(),
        names_removed: old_names.difference(&new_names).cloned().collect(),
    }
}

type Lists = (Vec<String>, Vec<String>, Vec<String>);

fn compare<'a, T: PartialEq + 'a>(
    old: impl Iterator<Item = (&'a str, &'a T)>,
    new: impl Iterator<Item = (&'a str, &'a T)>,
) -> Lists {
    let old: BTreeMap<&str, &T> = old.collect();
    let new: BTreeMap<&str, &T> = new.collect();
    let added = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.to_string())
        .collect();
    (added, removed, changed)
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
