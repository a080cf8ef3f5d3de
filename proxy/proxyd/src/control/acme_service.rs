//! The daemon's side of ACME (the flags -> `acme::Config` are in `config.rs`): the [`acme::Host`] over
//! [`Shared`], the background service that runs the manager, and the certificate views of
//! the admin API. Everything that talks to the CA is in the `acme` crate.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

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

    fn groups(&self) -> Vec<(Vec<String>, Option<String>)> {
        self.0
            .snapshot
            .load()
            .table
            .certificate_groups_with_profiles()
    }
}

/// The `acme_profile`s of `table`: (which route, profile).
fn wanted_profiles(table: &routes::RouteTable) -> Vec<(String, String)> {
    let mut wanted: Vec<(String, String)> = table
        .routes
        .iter()
        .filter_map(|r| {
            r.acme_profile
                .as_ref()
                .map(|p| (format!("route {:?}", r.id), p.clone()))
        })
        .collect();
    wanted.sort();
    wanted
}

/// The profiles of `table` (and `--acme-profile`) against the CA's directory: `Err`
/// with one line per profile it does not offer, naming those it does. A directory that
/// cannot be read is no reason to refuse (the certificates held keep being served, and
/// an order with a bad profile fails with the CA's own error, shown in `proxyctl
/// certs`): logged, and `Ok`.
pub async fn check_profiles(
    manager: &acme::Manager,
    table: &routes::RouteTable,
) -> Result<(), Vec<String>> {
    match manager.check_profiles(&wanted_profiles(table)).await {
        Ok(None) => Ok(()),
        Ok(Some(problems)) => Err(problems),
        Err(e) => {
            tracing::warn!("ACME profiles not checked: {e}");
            Ok(())
        }
    }
}

/// [`check_profiles`] before the server runs (start-up has no runtime yet).
pub fn check_profiles_at_start(
    manager: &acme::Manager,
    table: &routes::RouteTable,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(check_profiles(manager, table))
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))
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
pub fn certs_reply(shared: &Shared) -> admin_api::Certs {
    let held = shared.certs.list();
    match shared.acme.get() {
        None => admin_api::Certs {
            acme: None,
            groups: None,
            certificates: held.into_iter().map(cert_info).collect(),
            served: crate::control::served::reply(shared),
        },
        Some(m) => {
            let groups = m.status();
            // Certificates that no routed group uses any more are listed too.
            let others = held
                .into_iter()
                .filter(|c| !groups.iter().any(|g| g.id == c.id))
                .map(cert_info)
                .collect();
            admin_api::Certs {
                acme: Some(admin_api::AcmeInfo {
                    directory: m.issuer().to_owned(),
                    challenge: m.config().challenge.to_string(),
                    orders_placed: m.orders_placed(),
                    orders_recorded: m.orders_recorded(),
                    budget: m
                        .budget()
                        .unwrap_or_default()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                }),
                groups: Some(groups.into_iter().map(cert_group).collect()),
                certificates: others,
                served: crate::control::served::reply(shared),
            }
        }
    }
}

fn cert_info(c: certs::CertInfo) -> admin_api::CertInfo {
    admin_api::CertInfo {
        id: c.id,
        names: c.names,
        issuer: c.issuer,
        not_before: c.not_before,
        not_after: c.not_after,
        replace_at: c.replace_at,
        expiring: c.expiring,
    }
}

fn cert_group(g: acme::CertStatus) -> admin_api::CertGroup {
    admin_api::CertGroup {
        id: g.id,
        names: g.names,
        profile: g.profile,
        issued_profile: g.issued_profile,
        issuer: g.issuer,
        not_after: g.not_after,
        next_renewal: g.next_renewal,
        ari_window: g.ari_window,
        failures: g.failures,
        last_attempt: g.last_attempt,
        last_error: g.last_error,
        next_attempt: g.next_attempt,
        rate_limited_until: g.rate_limited_until,
        ordering: g.ordering,
    }
}

/// `POST /v1/certs/renew?name=NAME`: 202 and what is renewed, or the HTTP status and
/// why not.
pub fn renew(
    shared: &Shared,
    name: &str,
) -> Result<admin_api::Renewing, (u16, admin_api::ErrorReply)> {
    let refuse = |code, error: String| Err((code, admin_api::ErrorReply { error }));
    if name.is_empty() {
        return refuse(400, "usage: POST /v1/certs/renew?name=NAME".into());
    }
    let Some(m) = shared.acme.get() else {
        return refuse(
            409,
            "ACME is off (no --acme-directory): nothing to renew".into(),
        );
    };
    match m.renew_now(name) {
        Ok(id) => Ok(admin_api::Renewing {
            renewing: id,
            name: name.to_owned(),
        }),
        Err(e) => refuse(404, e.to_string()),
    }
}
