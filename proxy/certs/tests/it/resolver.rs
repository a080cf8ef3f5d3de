//! SNI lookup: exact, one-label wildcard, unknown; later expiry wins.

use certs::CertResolver;

use crate::util::{self_signed, temp_store};

#[test]
fn resolver_exact_then_one_label_wildcard_then_nothing() {
    let (_t, store) = temp_store();
    let exact = store
        .save(&self_signed(&["a.test", "e.w.test"], -1, 30, "manual"))
        .unwrap();
    let wild = store
        .save(&self_signed(&["*.w.test"], -1, 30, "manual"))
        .unwrap();
    let r = CertResolver::new();
    assert!(
        r.lookup("a.test").is_none(),
        "empty before the first replace"
    );
    r.replace(&[exact.clone(), wild.clone()]);
    assert_eq!(r.len(), 3);

    for (sni, want) in [
        ("a.test", Some(&exact)),
        ("A.Test.", Some(&exact)),
        ("e.w.test", Some(&exact)), // exact beats the wildcard
        ("x.w.test", Some(&wild)),
        ("X.W.TEST.", Some(&wild)),
        ("w.test", None),     // a wildcard does not cover its parent
        ("y.x.w.test", None), // nor two labels
        (".w.test", None),
        ("nope.test", None),
        ("", None),
    ] {
        let got = r.lookup(sni).map(|c| c.id.clone());
        assert_eq!(got, want.map(|c| c.id.clone()), "{sni:?}");
    }

    // The whole map is replaced: what is not in the new set is gone.
    r.replace(std::slice::from_ref(&wild));
    assert!(r.lookup("a.test").is_none());
    assert!(r.lookup("x.w.test").is_some());
}

#[test]
fn resolver_prefers_the_later_expiry_whatever_the_order() {
    let (_t, store) = temp_store();
    let short = store
        .save(&self_signed(&["short.test", "both.test"], -1, 10, "manual"))
        .unwrap();
    let long = store
        .save(&self_signed(
            &["long.test", "both.test", "*.both.test"],
            -1,
            60,
            "manual",
        ))
        .unwrap();
    let r = CertResolver::new();
    for order in [[short.clone(), long.clone()], [long.clone(), short.clone()]] {
        r.replace(&order);
        assert_eq!(r.lookup("both.test").unwrap().id, "long.test");
        assert_eq!(r.lookup("short.test").unwrap().id, "short.test");
        assert_eq!(r.lookup("x.both.test").unwrap().id, "long.test");
    }
}

#[test]
fn resolver_never_prefers_a_certificate_not_yet_valid_or_expired_over_a_valid_one() {
    let (_t, store) = temp_store();
    // Valid now, for ten days.
    let valid = store
        .save(&self_signed(
            &["valid.test", "a.test", "b.test"],
            -1,
            10,
            "manual",
        ))
        .unwrap();
    // Valid from tomorrow for a year: a later expiry, but not usable today.
    let early = store
        .save(&self_signed(&["early.test", "a.test"], 1, 365, "manual"))
        .unwrap();
    // Expired yesterday.
    let expired = store
        .save(&self_signed(
            &["expired.test", "b.test", "c.test"],
            -60,
            -1,
            "manual",
        ))
        .unwrap();
    let r = CertResolver::new();
    for order in [
        [valid.clone(), early.clone(), expired.clone()],
        [expired.clone(), early.clone(), valid.clone()],
    ] {
        r.replace(&order);
        assert_eq!(r.lookup("a.test").unwrap().id, valid.id);
        assert_eq!(r.lookup("b.test").unwrap().id, valid.id);
        // With nothing better, what there is.
        assert_eq!(r.lookup("c.test").unwrap().id, expired.id);
    }
    // Once the early one is valid (ranked at a later time), it wins by its expiry.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2 * 86_400);
    r.replace_at(&[valid.clone(), early.clone()], later);
    assert_eq!(r.lookup("a.test").unwrap().id, early.id);
}
