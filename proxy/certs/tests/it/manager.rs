//! CertManager::ensure: issue only what is missing, reuse what is stored.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::{CertManager, CertResolver, LocalIssuer, Store};

use crate::util::{drop_in, self_signed, strings, temp_store};

fn manager(store: Store, local: bool) -> CertManager {
    let issuer = local.then(|| LocalIssuer::load_or_create(&store).unwrap());
    CertManager::new(store, issuer, Arc::new(CertResolver::new()))
}

#[test]
fn ensure_issues_only_missing_and_reuses_stored_ones() {
    let (_t, store) = temp_store();
    let root = store.root().to_path_buf();
    drop_in(
        &store,
        "manual.test",
        &self_signed(&["manual.test"], -1, 60, "manual"),
    );
    let m = manager(store, true);
    assert!(m.load().is_empty());
    let groups = vec![
        strings(&["a.test", "www.a.test"]),
        strings(&["manual.test"]),
        strings(&["b.test"]),
        strings(&["A.test."]), // a second route on a host already covered by the first group
    ];

    let first = m.ensure(&groups);
    assert_eq!(first.issued, ["a.test", "b.test"]);
    assert!(
        first.missing.is_empty() && first.errors.is_empty(),
        "{first:?}"
    );
    let a = m.resolver().lookup("www.a.test").unwrap();
    assert_eq!(
        (a.id.as_str(), a.names.clone()),
        ("a.test", strings(&["a.test", "www.a.test"]))
    );
    assert_eq!(m.resolver().lookup("manual.test").unwrap().issuer, "manual");

    let second = m.ensure(&groups);
    assert!(second.issued.is_empty(), "no re-issue: {second:?}");
    assert_eq!(
        m.resolver().lookup("www.a.test").unwrap().leaf_der(),
        a.leaf_der()
    );

    // A new process on the same store reuses the stored certificates too.
    let m2 = manager(Store::open(&root).unwrap(), true);
    let third = m2.ensure(&groups);
    assert!(third.issued.is_empty(), "{third:?}");
    assert_eq!(
        m2.resolver().lookup("www.a.test").unwrap().leaf_der(),
        a.leaf_der()
    );

    let ids: Vec<_> = m2.list().into_iter().map(|c| (c.id, c.issuer)).collect();
    assert_eq!(
        ids,
        [
            ("a.test".into(), "local".into()),
            ("b.test".into(), "local".into()),
            ("manual.test".into(), "manual".into())
        ]
    );
}

#[test]
fn ensure_issues_one_certificate_for_the_uncovered_names_of_a_group() {
    let (_t, store) = temp_store();
    drop_in(
        &store,
        "_wildcard.w.test",
        &self_signed(&["*.w.test"], -1, 60, "manual"),
    );
    let m = manager(store, true);
    let r = m.ensure(&[strings(&[
        "x.w.test",
        "w.test",
        "y.w.test",
        "api.other.test",
    ])]);
    assert_eq!(r.issued, ["w.test"], "{r:?}");
    let issued = m.resolver().lookup("w.test").unwrap();
    assert_eq!(issued.names, ["w.test", "api.other.test"]);
    assert_eq!(
        m.resolver().lookup("x.w.test").unwrap().id,
        "_wildcard.w.test"
    );
}

#[test]
fn ensure_counts_a_name_covered_exactly_as_a_client_would() {
    let (_t, store) = temp_store();
    drop_in(
        &store,
        "_wildcard.w.test",
        &self_signed(&["*.w.test", "exact.test"], -1, 60, "manual"),
    );
    let m = manager(store, true);
    let r = m.ensure(&[
        strings(&["a.w.test"]),   // one label under the wildcard: covered
        strings(&["a.b.w.test"]), // two labels under it: not
        strings(&["*.w.test"]),   // the wildcard itself: covered
        strings(&["*.x.w.test"]), // a wildcard one level down: not
        strings(&["Exact.test."]),
        strings(&["w.test"]), // the wildcard's parent: not
        // A certificate issued by this very call covers later groups too.
        strings(&["new.test", "*.new.test"]),
        strings(&["x.new.test"]),
    ]);
    assert_eq!(
        r.issued,
        ["a.b.w.test", "_wildcard.x.w.test", "w.test", "new.test"],
        "{r:?}"
    );
    assert_eq!(m.resolver().lookup("x.new.test").unwrap().id, "new.test");
    assert_eq!(
        m.resolver().lookup("exact.test").unwrap().id,
        "_wildcard.w.test"
    );
    let again = m.ensure(&[strings(&["a.b.w.test", "x.new.test", "a.w.test"])]);
    assert!(again.issued.is_empty(), "{again:?}");
}

#[test]
fn ensure_renews_local_certificates_with_a_third_of_their_life_left() {
    let (_t, store) = temp_store();
    // 30-day certificates with 5 days left (the local one from the store's local CA: a
    // certificate labelled local that the CA did not sign is an admin's).
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    let day = Duration::from_secs(86_400);
    let old_local = store
        .save(
            &ca.issue_at(&strings(&["local.test"]), SystemTime::now() - 25 * day)
                .unwrap(),
        )
        .unwrap();
    store
        .save(&self_signed(&["manual.test"], -25, 5, "manual"))
        .unwrap();
    let m = manager(store, true);
    let r = m.ensure(&[strings(&["local.test"]), strings(&["manual.test"])]);
    assert_eq!(
        r.issued,
        ["local.test"],
        "only the local one is renewed here: {r:?}"
    );
    let renewed = m.resolver().lookup("local.test").unwrap();
    assert_ne!(renewed.leaf_der(), old_local.leaf_der());
    let left = renewed.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(29 * 86400), "{left:?}");
    assert_eq!(m.list().len(), 2, "the renewal replaced the old directory");
}

#[test]
fn ensure_without_an_issuer_reports_missing_and_keeps_serving_what_it_has() {
    let (_t, store) = temp_store();
    drop_in(
        &store,
        "expired.test",
        &self_signed(&["expired.test"], -60, -1, "manual"),
    );
    drop_in(
        &store,
        "unrouted.test",
        &self_signed(&["unrouted.test"], -1, 60, "manual"),
    );
    let m = manager(store, false);
    let r = m.ensure(&[
        strings(&["new.test", "expired.test"]),
        strings(&["127.0.0.1", "bad/name"]),
    ]);
    assert!(r.issued.is_empty());
    assert_eq!(r.missing, ["expired.test", "new.test"]);
    assert_eq!(r.errors.len(), 2, "{r:?}");
    assert!(
        r.errors[0].contains("127.0.0.1") && r.errors[0].contains("IP address"),
        "{r:?}"
    );
    assert!(r.errors[1].contains("bad/name"), "{r:?}");
    // Nothing better exists: the expired certificate stays served. One for a name that
    // is not routed is not held (it stays on disk while valid).
    assert!(m.resolver().lookup("expired.test").is_some());
    assert!(m.resolver().lookup("unrouted.test").is_none());
    assert!(m.resolver().lookup("new.test").is_none());
    assert_eq!(r.released, ["unrouted.test"], "{r:?}");
    assert!(r.archived.is_empty(), "{r:?}");
}

#[test]
fn load_reports_problems_and_serves_the_rest() {
    let (_t, store) = temp_store();
    let d = drop_in(
        &store,
        "broken.test",
        &self_signed(&["broken.test"], -1, 60, "manual"),
    );
    std::fs::write(d.join("key.pem"), "").unwrap();
    drop_in(
        &store,
        "fine.test",
        &self_signed(&["fine.test"], -1, 60, "manual"),
    );
    let m = manager(store, false);
    let problems = m.load();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("broken.test/key.pem"), "{problems:?}");
    assert!(m.resolver().lookup("fine.test").is_some());
    assert!(m.resolver().lookup("broken.test").is_none());
}
