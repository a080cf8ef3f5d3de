//! Start-up: check everything, then build the pingora server and its services.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use routes::RouteTable;

use std::os::unix::fs::PermissionsExt;

use crate::admin::{AdminApp, SighupReload};
use crate::cli::{AcmeFallback, Args, OnOff};
use crate::control::{Control, Listeners};
use crate::proxy::Proxy;
use crate::state::Shared;
use crate::tls::TlsApp;
use crate::upstream;

/// Read and validate a routes file. Every problem is in the error, one per line.
pub fn load_routes(path: &Path) -> anyhow::Result<RouteTable> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read routes file {}", path.display()))?;
    routes::parse(&path.display().to_string(), &text).map_err(|d| {
        let n = d.0.len();
        anyhow::anyhow!(
            "{d}\n{}: {n} error{}",
            path.display(),
            if n == 1 { "" } else { "s" }
        )
    })
}

/// The daemon. Returns only on a start-up error (or after `--check`); otherwise pingora
/// runs until a signal ends the process.
pub fn run(args: Args) -> anyhow::Result<()> {
    let table = load_routes(&args.routes)?;
    let acme_config = crate::acme_service::config(&args)?;
    if args.check {
        println!(
            "{}: OK: {} routes, {} redirects, {} names",
            args.routes.display(),
            table.routes.len(),
            table.redirects.len(),
            table.names().len()
        );
        return Ok(());
    }
    if args.https.is_empty() && args.http.is_empty() {
        bail!("no listener: give at least one --http or --https address");
    }

    let store = certs::Store::open(&args.certs_store).with_context(|| {
        format!(
            "cannot open certificate store {}",
            args.certs_store.display()
        )
    })?;
    // With ACME and `--acme-fallback none`, names wait for their ACME certificate.
    let acme_only = acme_config.is_some() && args.acme_fallback == AcmeFallback::None;
    let issuer = match args.local_issuer {
        OnOff::On if !acme_only => {
            Some(certs::LocalIssuer::load_or_create(&store).context("local issuer")?)
        }
        _ => None,
    };
    let resolver = Arc::new(certs::CertResolver::new());
    let manager = certs::CertManager::new(store, issuer, resolver.clone());
    // Problems (corrupt entries moved aside, bad modes) are logged by the store itself.
    manager.load();
    let report = manager.ensure(&table.certificate_groups());
    for id in &report.issued {
        tracing::info!(cert = %id, "issued certificate from the local CA");
    }
    for e in &report.errors {
        tracing::error!("certificate: {e}");
    }
    if !report.missing.is_empty() {
        tracing::warn!(names = ?report.missing, "no certificate for these names: TLS handshakes for them will fail");
    }

    let redirect_port = args
        .public_https_port
        .or_else(|| args.https.first().map(|a| a.port()))
        .filter(|p| *p != 443);
    let shared = Shared::new(table, manager, redirect_port);
    let acme_service = acme_config.map(|config| {
        let manager = acme::Manager::new(
            config,
            Arc::new(crate::acme_service::AcmeHost(shared.clone())),
        );
        let _ = shared.acme.set(manager.clone());
        background_service("acme", crate::acme_service::AcmeService(manager))
    });

    let conf = ServerConf {
        threads: args.threads.max(1),
        grace_period_seconds: Some(args.grace_period),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: args.upgrade_socket.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: args.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_service.is_some() {
        // TLS-ALPN-01 validations (answered by the resolver, closed by TlsApp).
        alpn.push(certs::ACME_TLS_ALPN.to_vec());
    }
    let tls_config = certs::server_config(resolver, alpn).context("TLS configuration")?;
    let https_app = TlsApp::new(
        pingora::proxy::http_proxy(
            &server.configuration,
            Proxy {
                shared: shared.clone(),
                tls: true,
            },
        ),
        tls_config,
    );
    let mut https = Service::new("https".to_string(), https_app);
    for addr in &args.https {
        https.add_tcp_with_settings(&addr.to_string(), socket_options(addr));
    }
    let mut http = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy {
            shared: shared.clone(),
            tls: false,
        },
        "http",
    );
    for addr in &args.http {
        http.add_tcp_with_settings(&addr.to_string(), socket_options(addr));
    }
    let health = background_service(
        "upstream health",
        HealthService {
            shared: shared.clone(),
        },
    );

    let control = Control::new(
        shared.clone(),
        args.routes.clone(),
        Listeners {
            https: args.https.clone(),
            http: args.http.clone(),
            admin: args.admin_socket.clone(),
        },
    );
    if let Some(dir) = args
        .admin_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the admin socket's directory {}",
                dir.display()
            )
        })?;
    }
    let mut admin = Service::new(
        "admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(AdminApp {
            control: control.clone(),
        }),
    );
    admin.add_uds(
        &args.admin_socket.display().to_string(),
        Some(std::fs::Permissions::from_mode(args.admin_socket_mode)),
    );
    let sighup = background_service("SIGHUP reload", SighupReload { control });

    if !args.https.is_empty() {
        server.add_service(https);
    }
    if !args.http.is_empty() {
        server.add_service(http);
    }
    server.add_service(health);
    if let Some(acme_service) = acme_service {
        server.add_service(acme_service);
    }
    server.add_service(admin);
    server.add_service(sighup);
    tracing::info!(
        https = ?args.https,
        http = ?args.http,
        routes = shared.snapshot.load().table.routes.len(),
        "proxyd starting"
    );
    server.run_forever()
}

fn socket_options(addr: &std::net::SocketAddr) -> TcpSocketOptions {
    let mut o = TcpSocketOptions::default();
    if addr.is_ipv6() {
        // [::]:443 and 0.0.0.0:443 are two listeners, not one dual-stack socket.
        o.ipv6_only = Some(true);
    }
    o
}

/// Background: resolve upstream names and run health checks, for every pool of the
/// current snapshot.
struct HealthService {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_checked = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let snapshot = self.shared.snapshot.load_full();
            for pool in snapshot.pools.values() {
                upstream::refresh_names(pool, &self.shared.registry).await;
            }
            upstream::run_checks(snapshot.pools.values(), &mut last_checked).await;
        }
    }
}
