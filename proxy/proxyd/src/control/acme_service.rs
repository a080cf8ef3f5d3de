//! The daemon's side of ACME (the flags -> `acme::Config` are in `config.rs`): the [`acme::Host`] over
//! [`Shared`], the background service that runs the manager, and the certificate views of
//! the admin API. Everything that talks to the CA is in the `acme` crate.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};

use crate::data::state::Shared;

/// [`acme::Host`] over the daemon's shared state. (Shared holds the manager and the
/// manager holds this: a cycle, on purpose, for objects that live as long as the process.)
pub struct AcmeHost(pub Arc<Shared>);

impl acme::Host for AcmeHost {
    fn certs(&self) -> &certs::CertManager {
        &self.0.certs
    }

    fn publish_http01(&self, token: &str, key_authorization: &str) {
        self.0.http01.rcu(|m| {
            let mut m = (**m).clone();
            m.insert(token.to_string(), key_authorization.to_string());
            m
        });
    }

    fn withdraw_http01(&self, token: &str) {
        self.0.http01.rcu(|m| {
            let mut m = (**m).clone();
            m.remove(token);
            m
        });
    }

    fn generation(&self) -> u64 {
        self.0.snapshot.load().generation
    }

    fn groups(&self) -> Vec<Vec<String>> {
        self.0.snapshot.load().table.certificate_groups()
    }
}

/// Background service: orders and renews certificates for as long as the server runs.
pub struct AcmeService(pub Arc<acme::Manager>);

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, shutdown: ShutdownWatch) {
        tracing::info!(directory = %self.0.issuer(), challenge = %self.0.config().challenge, "ACME client running");
        self.0.clone().run(shutdown).await
    }
}

/// `GET /v1/certs`: every certificate held, and with ACME every routed group with its
/// renewal state.
pub fn certs_json(shared: &Shared) -> Value {
    let held = shared.certs.list();
    match shared.acme.get() {
        None => json!({ "acme": null, "certificates": held }),
        Some(m) => {
            let groups = m.status();
            // Certificates that no routed group uses any more are listed too.
            let others: Vec<_> = held
                .into_iter()
                .filter(|c| !groups.iter().any(|g| g.id == c.id))
                .collect();
            json!({
                "acme": { "directory": m.issuer(), "challenge": m.config().challenge, "orders_placed": m.orders_placed() },
                "groups": groups,
                "certificates": others,
            })
        }
    }
}

/// `POST /v1/certs/renew?name=NAME`: (HTTP status, body).
pub fn renew(shared: &Shared, query: Option<&str>) -> (u16, Value) {
    let name = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .unwrap_or("");
    if name.is_empty() {
        return (
            400,
            json!({"error": "usage: POST /v1/certs/renew?name=NAME"}),
        );
    }
    let Some(m) = shared.acme.get() else {
        return (
            409,
            json!({"error": "ACME is off (no --acme-directory): nothing to renew"}),
        );
    };
    match m.renew_now(name) {
        Ok(id) => (202, json!({"renewing": id, "name": name})),
        Err(e) => (404, json!({"error": e})),
    }
}
