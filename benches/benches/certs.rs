//! Certificate resolution (SNI -> certificate) at 10, 1 000 and 100 000 names.
//!
//! Issuing 100 000 real certificates would take minutes, and the lookup never looks
//! inside one: it maps a name to an `Arc<StoredCert>`. So every `StoredCert` here is a
//! real entry (its own id and SAN names, as `Store::load_all` would give) sharing one
//! real ECDSA P-256 `CertifiedKey`. The lookup itself is the real
//! `certs::CertResolver::lookup`, the code `ResolvesServerCert::resolve` runs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use benches::{routes_toml, sample};
use certs::{CertResolver, StoredCert};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

const SIZES: [usize; 3] = [10, 1_000, 100_000];
const QUERIES: usize = 4096;

fn certified_key() -> Arc<CertifiedKey> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["bench.example".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = certs::crypto_provider()
        .key_provider
        .load_private_key(der)
        .unwrap();
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signer,
    ))
}

/// One `StoredCert` per name (wildcards included), all sharing `key`.
fn stored(names: &[String], key: &Arc<CertifiedKey>) -> Vec<Arc<StoredCert>> {
    let now = SystemTime::now();
    names
        .iter()
        .map(|n| {
            Arc::new(StoredCert {
                id: n.replace("*.", "_wildcard."),
                names: vec![n.clone()],
                issuer: "bench".into(),
                not_before: now,
                not_after: now + Duration::from_secs(30 * 86_400),
                key: key.clone(),
            })
        })
        .collect()
}

fn resolve(c: &mut Criterion) {
    let key = certified_key();
    let mut group = c.benchmark_group("cert_lookup");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let g = routes_toml(n);
        let resolver = CertResolver::new();
        resolver.replace(&stored(&g.names(), &key));
        assert_eq!(resolver.len(), n);
        let mut exact = g.exact.clone();
        exact.extend(g.prefixed.iter().cloned());
        let kinds: Vec<(&str, Vec<String>)> = vec![
            ("exact", sample(&exact, QUERIES, 1)),
            (
                "wildcard",
                sample(&g.wildcard, QUERIES, 2)
                    .into_iter()
                    .map(|s| format!("app.{s}"))
                    .collect(),
            ),
            // SNI in upper case: the normalisation allocates
            (
                "exact_uppercase",
                sample(&exact, QUERIES, 3)
                    .into_iter()
                    .map(|h| h.to_ascii_uppercase())
                    .collect(),
            ),
            (
                "miss",
                sample(&exact, QUERIES, 4)
                    .into_iter()
                    .map(|h| format!("x{h}"))
                    .collect(),
            ),
        ];
        for (kind, queries) in &kinds {
            for q in queries {
                assert_eq!(resolver.lookup(q).is_some(), *kind != "miss", "{kind} {q}");
            }
            group.bench_with_input(BenchmarkId::new(*kind, n), queries, |b, q| {
                let mut i = 0;
                b.iter(|| {
                    let r = resolver.lookup(black_box(&q[i % QUERIES]));
                    i += 1;
                    black_box(r)
                })
            });
        }
    }
    group.finish();

    // What a certificate reload costs: building and swapping the whole map.
    let mut group = c.benchmark_group("cert_replace");
    for n in SIZES {
        let certs = stored(&routes_toml(n).names(), &key);
        if n >= 100_000 {
            group.sample_size(10);
        }
        let resolver = CertResolver::new();
        group.bench_with_input(BenchmarkId::from_parameter(n), &certs, |b, certs| {
            b.iter(|| resolver.replace(black_box(certs)))
        });
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
