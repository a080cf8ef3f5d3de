//! The on-disk store and the local CA.

use std::fs;
use std::sync::Arc;

use certs::util::unix;
use certs::{LocalIssuer, Meta, Store};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::util::{drop_in, issue_and_save, ls, mode, self_signed, set_mode, temp_store};

#[test]
fn store_round_trip() {
    let (_t, store) = temp_store();
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    let saved = issue_and_save(&store, &ca, &["a.test", "WWW.a.test"]);
    assert_eq!(saved.id, "a.test");
    assert_eq!(saved.names, ["a.test", "www.a.test"]);
    assert_eq!(saved.issuer, "local");
    let dir = store.root().join("certs/a.test");
    assert_eq!(ls(&dir), ["fullchain.pem", "key.pem", "meta.json"]);
    assert_eq!(
        ls(&store.root().join("certs")),
        ["a.test"],
        "no temporaries left"
    );

    let meta: Meta = serde_json::from_slice(&fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta.names, ["a.test", "www.a.test"]);
    assert_eq!(meta.issuer, "local");
    assert_eq!(meta.not_after, unix(saved.not_after));
    assert_eq!((meta.last_attempt, meta.last_error), (None, None));

    // A new Store on the same directory sees the same certificate.
    let reopened = Store::open(store.root()).unwrap();
    let report = reopened.load_all();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.certs.len(), 1);
    let loaded = &report.certs[0];
    assert_eq!(
        (&loaded.id, &loaded.names, &loaded.issuer),
        (&saved.id, &saved.names, &saved.issuer)
    );
    assert_eq!(
        (loaded.not_before, loaded.not_after),
        (saved.not_before, saved.not_after)
    );
    assert_eq!(loaded.leaf_der(), saved.leaf_der());
    assert_eq!(loaded.key.cert.len(), 2, "leaf + local CA");
}

#[test]
fn keys_are_0600_and_directories_0700() {
    let (_t, store) = temp_store();
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    issue_and_save(&store, &ca, &["*.w.test"]);
    let root = store.root();
    for d in ["", "certs", "local-ca", "acme", "certs/_wildcard.w.test"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&root.join("local-ca/ca.key")), 0o600);
    assert_eq!(mode(&root.join("certs/_wildcard.w.test/key.pem")), 0o600);
    assert_eq!(mode(&root.join("local-ca/ca.pem")), 0o644);
}

#[test]
fn save_replaces_an_existing_certificate_whole() {
    let (_t, store) = temp_store();
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    let first = issue_and_save(&store, &ca, &["a.test", "old.a.test"]);
    let second = issue_and_save(&store, &ca, &["a.test", "new.a.test"]);
    assert_ne!(first.leaf_der(), second.leaf_der());
    assert_eq!(
        ls(&store.root().join("certs")),
        ["a.test"],
        "old directory and temporaries gone"
    );
    let report = store.load_all();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.certs.len(), 1);
    assert_eq!(report.certs[0].names, ["a.test", "new.a.test"]);
    assert_eq!(report.certs[0].leaf_der(), second.leaf_der());
}

#[test]
fn save_refuses_a_mismatched_pair_and_writes_nothing() {
    let (_t, store) = temp_store();
    let mut c = self_signed(&["a.test"], -1, 30, "manual");
    c.key_pem = self_signed(&["b.test"], -1, 30, "manual").key_pem;
    let err = store.save(&c).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(
        !err.contains("PRIVATE KEY"),
        "no key material in errors: {err}"
    );
    assert!(ls(&store.root().join("certs")).is_empty());
}

#[test]
fn corrupt_truncated_and_mismatched_entries_are_moved_aside_and_reported() {
    let (_t, store) = temp_store();
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    issue_and_save(&store, &ca, &["good.test"]);
    let certs_dir = store.root().join("certs");

    // Truncated chain: the write stopped half-way.
    let c = self_signed(&["truncated.test"], -1, 30, "manual");
    let d = drop_in(&store, "truncated.test", &c);
    fs::write(
        d.join("fullchain.pem"),
        &c.chain_pem[..c.chain_pem.len() / 2],
    )
    .unwrap();
    // Garbage key.
    let d = drop_in(
        &store,
        "badkey.test",
        &self_signed(&["badkey.test"], -1, 30, "manual"),
    );
    fs::write(
        d.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    // Key of another certificate.
    let mut c = self_signed(&["mismatch.test"], -1, 30, "manual");
    c.key_pem = self_signed(&["other.test"], -1, 30, "manual").key_pem;
    drop_in(&store, "mismatch.test", &c);
    // Half-written: the key never arrived.
    let d = drop_in(
        &store,
        "half.test",
        &self_signed(&["half.test"], -1, 30, "manual"),
    );
    fs::remove_file(d.join("key.pem")).unwrap();
    // Not PEM at all.
    let d = drop_in(
        &store,
        "junk.test",
        &self_signed(&["junk.test"], -1, 30, "manual"),
    );
    fs::write(d.join("fullchain.pem"), b"\x00\x01 not a certificate").unwrap();

    let report = store.load_all();
    let ids: Vec<_> = report.certs.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["good.test"], "only the good one is served");
    assert_eq!(report.problems.len(), 5, "{:#?}", report.problems);
    for (id, file, what) in [
        ("truncated.test", "fullchain.pem", "bad PEM"),
        ("badkey.test", "key.pem", "private key"),
        ("mismatch.test", "key.pem", "does not match"),
        ("half.test", "key.pem", "No such file"),
        ("junk.test", "fullchain.pem", "no CERTIFICATE"),
    ] {
        let p = report
            .problems
            .iter()
            .find(|p| p.contains(&format!("{id}/{file}")))
            .unwrap_or_else(|| panic!("no problem names {id}/{file}: {:#?}", report.problems));
        assert!(p.contains(what), "{p}");
        assert!(p.contains("moved aside"), "{p}");
        assert!(!certs_dir.join(id).exists(), "{id} still in place");
        assert!(
            ls(&certs_dir)
                .iter()
                .any(|n| n.starts_with(&format!("{id}.corrupt-"))),
            "{id} not moved aside: {:?}",
            ls(&certs_dir)
        );
    }

    // Moved-aside entries are left alone afterwards.
    let again = store.load_all();
    assert!(again.problems.is_empty(), "{:?}", again.problems);
    assert_eq!(again.certs.len(), 1);
}

#[test]
fn manual_certificate_is_served_with_notes_about_meta_and_mode() {
    let (_t, store) = temp_store();
    let dir = drop_in(
        &store,
        "manual.test",
        &self_signed(&["manual.test", "*.manual.test"], -1, 30, "x"),
    );
    let report = store.load_all();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.certs[0].issuer, "manual");
    assert_eq!(report.certs[0].names, ["manual.test", "*.manual.test"]);

    fs::write(dir.join("meta.json"), "{\"issuer\": ").unwrap();
    set_mode(&dir.join("key.pem"), 0o644);
    let report = store.load_all();
    assert_eq!(report.certs.len(), 1, "still served: {:?}", report.problems);
    assert_eq!(report.certs[0].issuer, "manual");
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report
        .problems
        .iter()
        .any(|p| p.contains("manual.test/meta.json")));
    assert!(report
        .problems
        .iter()
        .any(|p| p.contains("manual.test/key.pem") && p.contains("chmod 600")));

    // meta.json may say who issued it, but names come from the certificate.
    fs::write(
        dir.join("meta.json"),
        r#"{"issuer":"https://acme.test/dir","names":["evil.test"]}"#,
    )
    .unwrap();
    set_mode(&dir.join("key.pem"), 0o600);
    let report = store.load_all();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.certs[0].issuer, "https://acme.test/dir");
    assert_eq!(report.certs[0].names, ["manual.test", "*.manual.test"]);
}

#[test]
fn interrupted_directory_swap_is_repaired_on_load() {
    let (_t, store) = temp_store();
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    let saved = issue_and_save(&store, &ca, &["a.test"]);
    let certs_dir = store.root().join("certs");
    // The fallback path crashed between `a.test -> .old-a.test-*` and `.tmp-* -> a.test`.
    fs::rename(
        certs_dir.join("a.test"),
        certs_dir.join(".old-a.test-0123456789abcdef"),
    )
    .unwrap();
    fs::create_dir(certs_dir.join(".tmp-a.test-0123456789abcdef")).unwrap();
    let report = store.load_all();
    assert_eq!(report.certs.len(), 1, "{:?}", report.problems);
    assert_eq!(report.certs[0].leaf_der(), saved.leaf_der());
    assert!(
        report.problems.iter().any(|p| p.contains("restored")),
        "{:?}",
        report.problems
    );
    assert!(certs_dir.join("a.test").is_dir());
}

#[test]
fn local_issuer_persists_across_reopen() {
    let (_t, store) = temp_store();
    let first = LocalIssuer::load_or_create(&store).unwrap();
    let ca_pem = first.ca_pem().to_string();
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let early = first.issue(&["a.test".to_string()]).unwrap();
    drop(first);

    let reopened = Store::open(store.root()).unwrap();
    let second = LocalIssuer::load_or_create(&reopened).unwrap();
    assert_eq!(second.ca_pem(), ca_pem, "same CA after reopen");
    let late = second.issue(&["b.test".to_string()]).unwrap();

    // Both leaves verify (chain, name, serverAuth, dates) against the CA as first written.
    assert_verifies(&ca_pem, &early.chain_pem, "a.test");
    assert_verifies(&ca_pem, &late.chain_pem, "b.test");
}

#[test]
fn local_ca_certificate_is_remade_from_its_key_after_a_crash() {
    let (_t, store) = temp_store();
    let first = LocalIssuer::load_or_create(&store).unwrap();
    let leaf = first.issue(&["a.test".to_string()]).unwrap();
    let key_before = fs::read(store.root().join("local-ca/ca.key")).unwrap();
    fs::remove_file(store.root().join("local-ca/ca.pem")).unwrap();

    let again = LocalIssuer::load_or_create(&store).unwrap();
    assert_eq!(
        fs::read(store.root().join("local-ca/ca.key")).unwrap(),
        key_before,
        "key kept"
    );
    assert_eq!(
        fs::read_to_string(store.root().join("local-ca/ca.pem")).unwrap(),
        again.ca_pem()
    );
    // Same key and subject: a leaf of the old certificate still verifies.
    assert_verifies(again.ca_pem(), &leaf.chain_pem, "a.test");
}

#[test]
fn a_broken_local_ca_is_an_error_naming_the_file_not_replaced() {
    let (_t, store) = temp_store();
    LocalIssuer::load_or_create(&store).unwrap();
    let key = store.root().join("local-ca/ca.key");
    let pem = store.root().join("local-ca/ca.pem");

    let good_key = fs::read(&key).unwrap();
    fs::write(&key, "not a key").unwrap();
    let err = LocalIssuer::load_or_create(&store).unwrap_err().to_string();
    assert!(err.contains("local-ca/ca.key"), "{err}");

    fs::remove_file(&key).unwrap();
    let err = LocalIssuer::load_or_create(&store).unwrap_err().to_string();
    assert!(
        err.contains("local-ca/ca.key") && err.contains("missing"),
        "{err}"
    );
    assert!(pem.exists(), "the CA certificate is not replaced");

    // A key that is not the CA's.
    fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let err = LocalIssuer::load_or_create(&store).unwrap_err().to_string();
    assert!(
        err.contains("local-ca/ca.pem") && err.contains("does not match"),
        "{err}"
    );

    fs::write(&key, good_key).unwrap();
    LocalIssuer::load_or_create(&store).unwrap();
}

#[test]
fn issue_rejects_names_that_are_not_host_names() {
    let (_t, store) = temp_store();
    let ca = LocalIssuer::load_or_create(&store).unwrap();
    for bad in ["../etc", "a/b.test", "127.0.0.1", "", "*.*.test"] {
        let err = ca.issue(&[bad.to_string()]).unwrap_err().to_string();
        assert!(err.contains("invalid certificate name"), "{bad}: {err}");
    }
}

fn assert_verifies(ca_pem: &str, chain_pem: &str, name: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// ACME bookkeeping: pending while there is no certificate, then next to it; `load_one`
/// reads without moving anything.
#[test]
fn meta_is_pending_until_the_certificate_exists() {
    let (_t, store) = temp_store();
    assert!(store.read_meta("a.test").is_none());
    let m = Meta {
        names: vec!["a.test".into()],
        last_attempt: Some(100),
        last_error: Some("connection refused".into()),
        next_attempt: Some(160),
        failures: 1,
        ..Meta::default()
    };
    store.write_meta("a.test", &m).unwrap();
    let pending = store.root().join("acme/pending/a.test.json");
    assert!(pending.exists());
    assert_eq!(store.read_meta("a.test").unwrap(), m);
    assert!(store.load_one("a.test").unwrap().is_none());
    assert!(store.write_meta("../x", &m).is_err());

    let ca = LocalIssuer::load_or_create(&store).unwrap();
    issue_and_save(&store, &ca, &["a.test"]);
    // The meta now lives next to the certificate, and the pending file is gone. The
    // bookkeeping carries over: a local certificate standing in for an ACME one does
    // not reset the ACME backoff.
    assert!(!pending.exists());
    let carried = store.read_meta("a.test").unwrap();
    assert_eq!(carried.issuer, "local");
    assert_eq!(
        (carried.failures, carried.next_attempt, carried.last_error),
        (1, Some(160), Some("connection refused".to_string()))
    );
    let done = Meta {
        failures: 0,
        next_attempt: None,
        ..m.clone()
    };
    store.write_meta("a.test", &done).unwrap();
    assert_eq!(store.read_meta("a.test").unwrap(), done);
    let one = store.load_one("a.test").unwrap().unwrap();
    assert_eq!(one.names, ["a.test"]);
    // Still served after its meta was rewritten.
    assert_eq!(store.load_all().certs.len(), 1);

    // A damaged entry is an error for load_one, and stays where it is.
    fs::write(store.root().join("certs/a.test/fullchain.pem"), "garbage").unwrap();
    assert!(store.load_one("a.test").is_err());
    assert!(store.root().join("certs/a.test").exists());
}
