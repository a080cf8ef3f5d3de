//! The shipped Grafana dashboard (`dist/grafana-dashboard.json`) against the daemon's
//! metrics: it is valid JSON, its panel ids are unique, and every `proxyd_*` series a
//! query names is one `observe/metrics.rs` registers (a renamed metric leaves an empty
//! panel nobody notices until the day it is needed).

use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../dist/grafana-dashboard.json");
const METRICS: &str = include_str!("../src/observe/metrics.rs");

/// The `proxyd_*` names in `text`, as written.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("proxyd_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_series_the_dashboard_queries_is_registered() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = String::new();
    for p in panels {
        let id = p["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        for t in p["targets"].as_array().into_iter().flatten() {
            queries.push_str(t["expr"].as_str().unwrap_or_default());
            queries.push('\n');
        }
    }
    let registered: BTreeSet<String> = names(METRICS)
        .into_iter()
        .filter(|n| METRICS.contains(&format!("\"{n}\"")))
        .collect();
    let queried = names(&queries);
    assert!(queried.len() > 20, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|q| {
            // Histograms are queried by their series' suffixes.
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| q.strip_suffix(s))
                .unwrap_or(q);
            !registered.contains(*q) && !registered.contains(base)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series no metric registers: {missing:?}"
    );
}
