//! Certificates that age and routes that change: what `CertManager::ensure` (a reload)
//! and `CertManager::maintain` (the timer) hold, serve, renew, replace and archive. The
//! clock is the test's own (`ensure_at`, `maintain_at`, `LocalIssuer::issue_at`), so a
//! month passes in a millisecond.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::{renewal, CertManager, CertResolver, LocalIssuer, Meta, Store};

use crate::util::{drop_in, ls, self_signed, self_signed_between, strings, temp_store};

const DAY: Duration = Duration::from_secs(86_400);

/// Now, in whole seconds (what a certificate's dates can say).
fn now() -> SystemTime {
    certs::util::from_unix(certs::util::unix_now())
}

fn manager(store: Store, local: bool) -> CertManager {
    let issuer = local.then(|| LocalIssuer::load_or_create(&store).unwrap());
    CertManager::new(store, issuer, Arc::new(CertResolver::new()))
}

fn groups(names: &[&str]) -> Vec<Vec<String>> {
    names.iter().map(|n| strings(&[n])).collect()
}

fn held(m: &CertManager) -> Vec<String> {
    m.list().into_iter().map(|c| c.id).collect()
}

fn leaf(m: &CertManager, name: &str) -> Vec<u8> {
    m.resolver()
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} not served"))
        .leaf_der()
        .to_vec()
}

#[test]
fn held_certificates_follow_the_routes_and_come_back_from_disk() {
    let (_t, store) = temp_store();
    let certs_dir = store.certs_dir();
    let m = manager(store, true);
    let r = m.ensure(&groups(&["a.test", "b.test", "c.test"]));
    assert_eq!(r.issued, ["a.test", "b.test", "c.test"]);
    let c_leaf = leaf(&m, "c.test");

    // c.test's route goes: its certificate leaves the held set and the resolver, and
    // stays on disk (it is valid).
    let r = m.ensure(&groups(&["a.test", "b.test"]));
    assert_eq!(r.released, ["c.test"], "{r:?}");
    assert!(r.archived.is_empty() && r.issued.is_empty(), "{r:?}");
    assert_eq!(held(&m), ["a.test", "b.test"]);
    assert_eq!(m.certs().len(), 2);
    assert!(m.resolver().lookup("c.test").is_none());
    assert_eq!(ls(&certs_dir), ["a.test", "b.test", "c.test"]);

    // It comes back: the same certificate, read from disk, nothing issued.
    let r = m.ensure(&groups(&["a.test", "b.test", "c.test"]));
    assert!(r.issued.is_empty(), "{r:?}");
    assert_eq!(leaf(&m, "c.test"), c_leaf);

    // Churn: two tables of 10 names that swap 5, twenty times. The held set is always
    // the routed names; the store holds the 15 names ever routed, nothing more.
    let one: Vec<String> = (0..10).map(|i| format!("n{i}.test")).collect();
    let two: Vec<String> = (5..15).map(|i| format!("n{i}.test")).collect();
    for round in 0..20 {
        let table = if round % 2 == 0 { &one } else { &two };
        let groups: Vec<Vec<String>> = table.iter().map(|n| vec![n.clone()]).collect();
        let r = m.ensure(&groups);
        if round >= 2 {
            assert!(r.issued.is_empty(), "round {round}: {r:?}");
        }
        let mut want = table.clone();
        want.sort();
        assert_eq!(held(&m), want, "round {round}");
        assert_eq!(m.resolver().len(), 10, "round {round}");
    }
    assert_eq!(ls(&certs_dir).len(), 15 + 3);
}

#[test]
fn expired_certificates_of_removed_routes_are_archived() {
    let (_t, store) = temp_store();
    let root = store.root().to_path_buf();
    let m = manager(store, true);
    let t0 = now();
    m.ensure_at(&groups(&["a.test", "b.test"]), t0);
    let b_not_after = m.resolver().lookup("b.test").unwrap().not_after;
    let r = m.ensure_at(&groups(&["a.test"]), t0 + DAY);
    assert_eq!(
        (r.released.as_slice(), r.archived.len()),
        (&["b.test".to_string()][..], 0)
    );

    // A month on: b.test expired on disk, unrouted: archived, whole.
    let r = m.maintain_at(t0 + 31 * DAY);
    assert_eq!(r.ensure.archived, ["b.test"], "{r:?}");
    assert_eq!(ls(&root.join("certs")), ["a.test"]);
    let archived = ls(&root.join("archive"));
    let want = format!("b.test.expired-{}", certs::util::unix(b_not_after));
    assert_eq!(archived, std::slice::from_ref(&want));
    assert_eq!(
        ls(&root.join("archive").join(&want)),
        ["fullchain.pem", "key.pem", "meta.json"]
    );
    // a.test, routed, was renewed instead.
    assert_eq!(r.ensure.issued, ["a.test"], "{r:?}");
    // A fresh start on the store does not see b.test any more.
    let m2 = manager(Store::open(&root).unwrap(), false);
    m2.load();
    assert_eq!(held(&m2), ["a.test"]);
    // Archives older than the keeping time go.
    let (removed, problems) = m2
        .store()
        .prune_archive(b_not_after + certs::ARCHIVE_KEEP + DAY);
    assert_eq!((removed, problems.len()), (1, 0));
    assert!(ls(&root.join("archive")).is_empty());
}

#[test]
fn local_certificates_are_renewed_by_the_timer_with_a_third_of_their_life_left() {
    let (_t, store) = temp_store();
    let m = manager(store, true);
    let t0 = now();
    m.ensure_at(&groups(&["a.test"]), t0);
    let first = m.resolver().lookup("a.test").unwrap();
    let due = renewal::local_renewal_at(first.not_before, first.not_after);
    assert!(due > t0 + 19 * DAY && due < t0 + 21 * DAY, "{due:?}");

    // Nothing to do before; the timer is told when to come back.
    let r = m.maintain_at(t0 + 19 * DAY);
    assert!(r.ensure.issued.is_empty(), "{r:?}");
    assert_eq!(r.next_due, Some(due));
    assert_eq!(leaf(&m, "a.test"), first.leaf_der());

    // At the renewal point: a new certificate, served at once, the old one replaced.
    let r = m.maintain_at(due);
    assert_eq!(r.ensure.issued, ["a.test"], "{r:?}");
    let second = m.resolver().lookup("a.test").unwrap();
    assert_ne!(second.leaf_der(), first.leaf_der());
    assert!(second.not_after > first.not_after);
    assert_eq!(held(&m), ["a.test"]);
    assert!(r.next_due.unwrap() > due + 19 * DAY, "{r:?}");
}

#[test]
fn a_renewal_that_cannot_be_saved_keeps_the_old_certificate_and_is_counted() {
    let (_t, store) = temp_store();
    let certs_dir = store.certs_dir();
    let m = manager(store, true);
    let t0 = now();
    m.ensure_at(&groups(&["a.test"]), t0);
    let first = m.resolver().lookup("a.test").unwrap();
    let due = renewal::local_renewal_at(first.not_before, first.not_after);
    assert_eq!(m.error_count(), 0);

    // `certs/` is not a directory any more (root ignores modes; this fails for anyone):
    // the new certificate cannot be saved.
    let aside = certs_dir.with_file_name("certs.aside");
    std::fs::rename(&certs_dir, &aside).unwrap();
    std::fs::write(&certs_dir, b"not a directory").unwrap();
    let r = m.maintain_at(due);
    assert!(r.ensure.issued.is_empty(), "{r:?}");
    assert_eq!(r.ensure.errors.len(), 1, "{r:?}");
    assert!(r.ensure.errors[0].contains("a.test"), "{r:?}");
    assert_eq!(m.error_count(), 1);
    // Still held and served: the old certificate, not nothing.
    assert_eq!(held(&m), ["a.test"]);
    assert_eq!(leaf(&m, "a.test"), first.leaf_der());
    // Past its expiry it is still served, but covers nothing any more.
    let r = m.maintain_at(first.not_after);
    assert_eq!(r.ensure.missing, ["a.test"], "{r:?}");
    assert_eq!(m.error_count(), 2);
    assert_eq!(leaf(&m, "a.test"), first.leaf_der());

    // The disk is back: the next pass renews.
    std::fs::remove_file(&certs_dir).unwrap();
    std::fs::rename(&aside, &certs_dir).unwrap();
    let r = m.maintain_at(due + Duration::from_secs(60));
    assert_eq!(r.ensure.issued, ["a.test"], "{r:?}");
    assert_ne!(leaf(&m, "a.test"), first.leaf_der());
    assert_eq!(m.error_count(), 2);
}

#[test]
fn the_local_lifetime_can_be_short_for_tests_and_still_renews_ahead_of_expiry() {
    let (_t, store) = temp_store();
    let issuer = LocalIssuer::load_or_create(&store)
        .unwrap()
        .with_leaf_lifetime(Duration::from_secs(30));
    let m = CertManager::new(store, Some(issuer), Arc::new(CertResolver::new()));
    let t0 = now();
    m.ensure_at(&groups(&["a.test"]), t0);
    let c = m.resolver().lookup("a.test").unwrap();
    let life = c.not_after.duration_since(c.not_before).unwrap();
    // 30 s, backdated by a tenth (x509 times are whole seconds).
    assert!(
        life >= Duration::from_secs(32) && life <= Duration::from_secs(34),
        "{life:?}"
    );
    let r = m.maintain_at(t0 + Duration::from_secs(5));
    assert!(r.ensure.issued.is_empty(), "not renewed at once: {r:?}");
    let due = r.next_due.unwrap();
    assert!(
        due < c.not_after && due > t0 + Duration::from_secs(15),
        "{due:?}"
    );
    assert_eq!(m.maintain_at(due).ensure.issued, ["a.test"]);
}

#[test]
fn an_acme_certificate_about_to_expire_is_replaced_by_the_local_issuer() {
    let (_t, store) = temp_store();
    let t0 = now();
    let acme = "https://acme.test/directory";
    let not_after = t0 + 30 * DAY;
    store
        .save(&self_signed_between(
            &["a.test"],
            t0 - 60 * DAY,
            not_after,
            acme,
        ))
        .unwrap();
    // Its renewal has been failing: the backoff must survive the stand-in.
    let failing = Meta {
        names: strings(&["a.test"]),
        issuer: acme.into(),
        failures: 5,
        last_error: Some("connection refused".into()),
        next_attempt: Some(12345),
        ..Meta::default()
    };
    store.write_meta("a.test", &failing).unwrap();
    let m = manager(store, true);
    let r = m.ensure_at(&groups(&["a.test"]), t0);
    assert!(r.issued.is_empty(), "{r:?}");
    let margin = renewal::expiry_margin(t0 - 60 * DAY, not_after);
    assert_eq!(margin, Duration::from_secs(3600));

    // Two hours before its expiry it is still served...
    let r = m.maintain_at(not_after - 2 * margin);
    assert!(r.ensure.issued.is_empty(), "{r:?}");
    assert_eq!(m.resolver().lookup("a.test").unwrap().issuer, acme);
    assert_eq!(r.next_due, Some(not_after - margin));
    // ...then the local issuer stands in, before any client sees it expired.
    let r = m.maintain_at(not_after - margin);
    assert_eq!(r.ensure.issued, ["a.test"], "{r:?}");
    assert_eq!(m.resolver().lookup("a.test").unwrap().issuer, "local");
    let meta = m.store().read_meta("a.test").unwrap();
    assert_eq!(
        (meta.issuer.as_str(), meta.failures, meta.next_attempt),
        ("local", 5, Some(12345))
    );
}

#[test]
fn without_a_local_issuer_an_expired_acme_certificate_stays_served_and_is_reported() {
    let (_t, store) = temp_store();
    let t0 = now();
    let acme = "https://acme.test/directory";
    store
        .save(&self_signed_between(
            &["a.test"],
            t0 - 60 * DAY,
            t0 - DAY,
            acme,
        ))
        .unwrap();
    let m = manager(store, false);
    let r = m.ensure_at(&groups(&["a.test"]), t0);
    assert_eq!(r.missing, ["a.test"], "{r:?}");
    let r = m.maintain_at(t0 + DAY);
    assert_eq!(r.ensure.missing, ["a.test"], "{r:?}");
    assert!(r.ensure.archived.is_empty(), "routed: kept, {r:?}");
    assert_eq!(m.resolver().lookup("a.test").unwrap().issuer, acme);
    // Held, but it covers nothing for a client: the store check and readiness say so.
    assert_eq!(held(&m), ["a.test"]);
    assert_eq!(m.uncovered(&strings(&["a.test", "A.test."])), ["a.test"]);
}

#[test]
fn a_certificate_not_yet_valid_waits_while_a_local_one_serves() {
    let (_t, store) = temp_store();
    let t0 = now();
    // An admin's certificate valid from tomorrow, for a year.
    let valid_from = t0 + DAY;
    drop_in(
        &store,
        "a.test",
        &self_signed_between(&["a.test"], valid_from, t0 + 365 * DAY, "manual"),
    );
    // Under another id than the local one will get: keep them apart.
    std::fs::rename(
        store.certs_dir().join("a.test"),
        store.certs_dir().join("admin-a"),
    )
    .unwrap();
    let m = manager(store, true);
    let r = m.ensure_at(&groups(&["a.test"]), t0);
    assert_eq!(r.issued, ["a.test"], "{r:?}");
    assert_eq!(m.resolver().lookup("a.test").unwrap().issuer, "local");
    assert_eq!(held(&m), ["a.test"], "the early one is not held");
    // The timer comes back when it becomes valid, and serves it then.
    let r = m.maintain_at(t0 + Duration::from_secs(60));
    assert_eq!(r.next_due, Some(valid_from));
    let r = m.maintain_at(valid_from);
    assert_eq!(m.resolver().lookup("a.test").unwrap().id, "admin-a");
    assert_eq!(r.ensure.released, ["a.test"], "{r:?}");
    assert_eq!(held(&m), ["admin-a"]);
}

#[test]
fn an_expired_manual_certificate_is_archived_not_overwritten_when_the_local_issuer_replaces_it() {
    let (_t, store) = temp_store();
    let root = store.root().to_path_buf();
    let manual = self_signed(&["a.test"], -90, -1, "manual");
    drop_in(&store, "a.test", &manual);
    let m = manager(store, true);
    let r = m.ensure(&groups(&["a.test"]));
    assert_eq!(
        (r.issued.as_slice(), r.archived.as_slice()),
        (&["a.test".to_string()][..], &["a.test".to_string()][..])
    );
    assert_eq!(m.resolver().lookup("a.test").unwrap().issuer, "local");
    let archived = ls(&root.join("archive"));
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert!(archived[0].starts_with("a.test.replaced-"), "{archived:?}");
    assert_eq!(
        std::fs::read_to_string(
            root.join("archive")
                .join(&archived[0])
                .join("fullchain.pem")
        )
        .unwrap(),
        manual.chain_pem
    );
}

#[test]
fn a_manual_certificate_changed_on_disk_is_read_again_by_the_timer() {
    let (_t, store) = temp_store();
    let dir = drop_in(
        &store,
        "m.test",
        &self_signed(&["m.test"], -1, 60, "manual"),
    );
    let m = manager(store, true);
    m.ensure(&groups(&["m.test"]));
    let before = leaf(&m, "m.test");
    assert!(m.maintain().reread.is_empty());

    // The admin renews it in place: key first, then chain (each by rename).
    let renewed = self_signed(&["m.test"], -1, 90, "manual");
    for (file, text) in [
        ("key.pem", &renewed.key_pem),
        ("fullchain.pem", &renewed.chain_pem),
    ] {
        let tmp = dir.join(format!(".{file}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
    let r = m.maintain();
    assert_eq!(r.reread, ["m.test"], "{r:?}");
    assert!(r.ensure.issued.is_empty(), "{r:?}");
    assert_ne!(leaf(&m, "m.test"), before);
    assert_eq!(m.resolver().lookup("m.test").unwrap().issuer, "manual");

    // Half-written (key of another certificate): reported once, the old copy served.
    std::fs::write(
        dir.join("key.pem"),
        self_signed(&["x.test"], -1, 9, "m").key_pem,
    )
    .unwrap();
    let r = m.maintain();
    assert_eq!(r.problems.len(), 1, "{r:?}");
    assert!(m.maintain().problems.is_empty(), "reported once");
    assert_eq!(m.resolver().lookup("m.test").unwrap().issuer, "manual");

    // A directory dropped in while running is found by the next reload.
    let m2 = drop_in(
        m.store(),
        "new.test",
        &self_signed(&["new.test"], -1, 60, "manual"),
    );
    assert!(m2.exists());
    let r = m.ensure(&groups(&["m.test", "new.test"]));
    assert!(r.issued.is_empty(), "{r:?}");
    assert_eq!(m.resolver().lookup("new.test").unwrap().issuer, "manual");
}

#[test]
fn manual_certificates_close_to_expiry_are_warned_about_once_a_day() {
    let (_t, store) = temp_store();
    let t0 = now();
    drop_in(
        &store,
        "m.test",
        &self_signed_between(&["m.test"], t0 - 80 * DAY, t0 + 10 * DAY, "manual"),
    );
    let m = manager(store, true);
    m.ensure_at(&groups(&["m.test"]), t0);
    let r = m.maintain_at(t0);
    assert_eq!(r.warnings.len(), 1, "{r:?}");
    assert!(
        r.warnings[0].contains("m.test") && r.warnings[0].contains("10 days"),
        "{r:?}"
    );
    assert!(m.list()[0].expiring);
    assert!(m.maintain_at(t0 + DAY / 2).warnings.is_empty());
    let r = m.maintain_at(t0 + DAY);
    assert_eq!(r.warnings.len(), 1, "{r:?}");
}

#[test]
fn an_acme_certificate_for_a_route_that_went_away_is_not_held() {
    let (_t, store) = temp_store();
    let m = manager(store, false);
    m.ensure(&groups(&["a.test", "*.w.test"]));
    let acme = "https://acme.test/directory";
    let gone = m
        .store()
        .save(&self_signed(&["gone.test"], -1, 90, acme))
        .unwrap();
    m.install(gone);
    assert!(m.resolver().lookup("gone.test").is_none());
    assert!(held(&m).is_empty());
    for (names, id) in [
        (&["a.test"][..], "a.test"),
        (&["*.w.test"][..], "_wildcard.w.test"),
    ] {
        let c = m.store().save(&self_signed(names, -1, 90, acme)).unwrap();
        m.install(c);
        assert!(held(&m).contains(&id.to_string()), "{id}");
    }
    assert!(m.resolver().lookup("x.w.test").is_some());
}

// ---- Review: attacks on ageing and orphans ----

/// The warning about an expiring manual certificate says "replace
/// certs/<id>/fullchain.pem and key.pem". When the local issuer has already stood in,
/// that directory's meta.json says `local`: an admin's certificate put there must not be
/// taken for a local one and overwritten by a local renewal.
#[test]
fn review_a_manual_certificate_put_where_the_local_issuer_stood_in_is_not_overwritten() {
    let (_t, store) = temp_store();
    let t0 = now();
    drop_in(
        &store,
        "a.test",
        &self_signed(&["a.test"], -90, -1, "manual"),
    );
    let m = manager(store, true);
    let r = m.ensure_at(&groups(&["a.test"]), t0);
    assert_eq!(r.issued, ["a.test"], "{r:?}");
    // The admin follows the warning: new files in certs/a.test, meta.json untouched.
    let renewed = self_signed_between(&["a.test"], t0 - DAY, t0 + 365 * DAY, "manual");
    let dir = m.store().certs_dir().join("a.test");
    std::fs::write(dir.join("fullchain.pem"), &renewed.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &renewed.key_pem).unwrap();
    m.maintain_at(t0 + Duration::from_secs(60));
    let served = m.resolver().lookup("a.test").unwrap();
    assert_ne!(
        served.issuer, "local",
        "the admin's certificate is not the local CA's"
    );
    // Eight months on: the local CA's rule (a third of the lifetime left) must not apply.
    m.maintain_at(t0 + 250 * DAY);
    assert_eq!(
        std::fs::read_to_string(dir.join("fullchain.pem")).unwrap(),
        renewed.chain_pem,
        "the admin's certificate was overwritten by a local one"
    );
    assert_ne!(m.resolver().lookup("a.test").unwrap().issuer, "local");
}

/// An admin renews a manual certificate in place in its last hour and reloads at once,
/// before the timer has read the new files: the reload must not take the old dates for
/// the new certificate and archive it as "replaced".
#[test]
fn review_a_manual_certificate_renewed_on_disk_just_before_a_reload_is_not_archived() {
    let (_t, store) = temp_store();
    let root = store.root().to_path_buf();
    let t0 = now();
    let dir = drop_in(
        &store,
        "a.test",
        &self_signed_between(
            &["a.test"],
            t0 - 30 * DAY,
            t0 + Duration::from_secs(7200),
            "manual",
        ),
    );
    let m = manager(store, true);
    let r = m.ensure_at(&groups(&["a.test"]), t0);
    assert!(r.issued.is_empty(), "{r:?}");
    let renewed = self_signed_between(&["a.test"], t0 - DAY, t0 + 90 * DAY, "manual");
    std::fs::write(dir.join("fullchain.pem"), &renewed.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &renewed.key_pem).unwrap();
    // A reload 90 minutes later (inside the old one's last hour), no timer pass between.
    let r = m.ensure_at(&groups(&["a.test"]), t0 + Duration::from_secs(5400));
    assert!(r.issued.is_empty() && r.archived.is_empty(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("fullchain.pem")).unwrap(),
        renewed.chain_pem
    );
    assert!(!root.join("archive").exists() || ls(&root.join("archive")).is_empty());
    assert_eq!(m.resolver().lookup("a.test").unwrap().issuer, "manual");
}

/// An expired certificate held for another of its names must not hide, for a name a
/// valid wildcard covers, that wildcard (an exact name always beats a wildcard in the
/// resolver).
#[test]
fn review_an_expired_exact_certificate_does_not_hide_a_valid_wildcard() {
    let (_t, store) = temp_store();
    let t0 = now();
    drop_in(
        &store,
        "x.other.test",
        &self_signed_between(
            &["x.other.test", "a.wild.test"],
            t0 - 90 * DAY,
            t0 - DAY,
            "manual",
        ),
    );
    drop_in(
        &store,
        "wild",
        &self_signed(&["*.wild.test"], -1, 90, "manual"),
    );
    let m = manager(store, false);
    let r = m.ensure_at(&groups(&["x.other.test", "a.wild.test"]), t0);
    assert_eq!(r.missing, ["x.other.test"], "{r:?}");
    assert_eq!(m.resolver().lookup("a.wild.test").unwrap().id, "wild");
    assert_eq!(m.resolver().lookup("b.wild.test").unwrap().id, "wild");
    // Still served expired where nothing better exists.
    assert_eq!(
        m.resolver().lookup("x.other.test").unwrap().id,
        "x.other.test"
    );
}
