//! Start-up: check everything, then build the pingora server and its services.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use pingora::listeners::{ListenerConfig, TcpSocketOptions};
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use routes::RouteTable;

use std::os::unix::fs::PermissionsExt;

use crate::config::Config;
use crate::control::admin::{AdminApp, SighupReload};
use crate::control::reload::Control;
use crate::data::guard::{ConnCap, HeadGuard};
use crate::data::layer::Layer;
use crate::data::proxy::Proxy;
use crate::data::state::Shared;
use crate::data::tls::TlsHandshake;
use crate::data::upstream;
use crate::observe::access_log::{AccessLog, WriterService};
use crate::observe::metrics::{Counted, Metrics};
use crate::observe::readiness::Listeners;

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

/// Services, in the order they are added to pingora (which starts them in that order).
type Services = Vec<Box<dyn ServiceWithDependents>>;

/// The daemon. Returns only on a start-up error (or after `--check`); otherwise pingora
/// runs until a signal ends the process.
pub fn run(config: Config) -> anyhow::Result<()> {
    let table = load_routes(&config.routes)?;
    if config.check {
        return check(&config, &table);
    }
    let (manager, resolver) = open_certificates(&config, &table)?;
    let shared = Shared::new(table, manager, config.redirect_port);
    let observe = observability(&config, &shared)?;
    let acme = acme_service(&config, &shared);
    if let Some(m) = shared.acme.get() {
        crate::control::acme_service::check_profiles_at_start(m, &shared.snapshot.load().table)?;
    }
    let mut server = bootstrap(&config)?;

    let mut services = public_services(
        &config,
        &server,
        &shared,
        &observe,
        resolver,
        acme.is_some(),
    )?;
    services.extend(upstream_services(&config, &shared));
    services.extend(acme);
    let store_health = Arc::new(crate::control::store_watch::StoreHealth::default());
    let (admin, listeners) = admin_services(&config, &shared, &observe, store_health.clone())?;
    services.extend(admin);
    services.extend(metrics_service(&config, &shared, &observe, &listeners));
    services.extend(background_services(
        &config,
        &shared,
        observe,
        listeners,
        store_health,
    )?);
    server.add_services(services);

    tracing::info!(
        https = ?config.https,
        http = ?config.http,
        routes = shared.snapshot.load().table.routes.len(),
        "proxyd starting"
    );
    server.run_forever()
}

/// `--check`: checks the certificate store's readability (the routes are already
/// parsed) and prints one OK line per file; returns every store problem as one error.
fn check(config: &Config, table: &RouteTable) -> anyhow::Result<()> {
    let problems = crate::config::check_store(&config.certs_store, config.local_issuer);
    if !problems.is_empty() {
        let n = problems.len();
        bail!(
            "{}\n{}: {n} problem{} in the certificate store",
            problems
                .iter()
                .map(|p| format!("error: {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
            config.certs_store.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    println!(
        "{}: OK: {} routes, {} redirects, {} names",
        config.routes.display(),
        table.routes.len(),
        table.redirects.len(),
        table.names().len()
    );
    println!("{}: OK", config.certs_store.display());
    Ok(())
}

/// Opens the certificate store (and the local issuer, if enabled), serves what it holds
/// and issues what `table` lacks; returns the manager and the TLS resolver it feeds.
fn open_certificates(
    config: &Config,
    table: &RouteTable,
) -> anyhow::Result<(certs::CertManager, Arc<certs::CertResolver>)> {
    let store = certs::Store::open(&config.certs_store).with_context(|| {
        format!(
            "cannot open certificate store {}",
            config.certs_store.display()
        )
    })?;
    // Without the local issuer (`--local-issuer off`, or ACME with `--acme-fallback
    // none`), names wait for their ACME certificate.
    let issuer = if config.local_issuer {
        let issuer = certs::LocalIssuer::load_or_create(&store).context("local issuer")?;
        Some(match config.local_cert_lifetime {
            Some(life) => issuer.with_leaf_lifetime(life),
            None => issuer,
        })
    } else {
        None
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
    Ok((manager, resolver))
}

/// Metrics and the access log, handed to what uses them at construction.
struct Observability {
    metrics: Option<Arc<Metrics>>,
    access_log: Option<Arc<AccessLog>>,
    /// The access log's writer, a background service added last but one.
    access_log_writer: Option<GenBackgroundService<WriterService>>,
}

/// Creates the metrics (synced with the first route table) and opens the access log
/// file, before any port is bound; fails only when the access log cannot be opened.
fn observability(config: &Config, shared: &Shared) -> anyhow::Result<Observability> {
    let metrics = config.metrics.map(|_| Metrics::new());
    if let Some(m) = &metrics {
        m.sync_routes(&shared.snapshot.load().table);
    }
    let mut access_log = None;
    let access_log_writer = match &config.access_log {
        None => None,
        Some(c) => {
            let (log, writer) = AccessLog::start(c.format, c.path.clone(), c.queue_bytes)?;
            access_log = Some(Arc::new(log));
            Some(background_service("access log", writer))
        }
    };
    Ok(Observability {
        metrics,
        access_log,
        access_log_writer,
    })
}

/// With `--acme-*`: the ACME manager, registered in `shared`; returns its background
/// service (none without ACME).
fn acme_service(config: &Config, shared: &Arc<Shared>) -> Option<Box<dyn ServiceWithDependents>> {
    let acme_config = config.acme.clone()?;
    let manager = acme::Manager::new(
        acme_config,
        Arc::new(crate::control::acme_service::AcmeHost(shared.clone())),
    );
    let _ = shared.acme.set(manager.clone());
    Some(Box::new(background_service(
        "acme",
        crate::control::acme_service::AcmeService(manager),
    )))
}

/// Checks that every public port is free (not on upgrade) and returns the bootstrapped
/// pingora server, configured from `config`.
fn bootstrap(config: &Config) -> anyhow::Result<Server> {
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: config.upgrade_socket.display().to_string(),
        daemon: config.daemon,
        pid_file: config.pid_file.display().to_string(),
        // `proxyd -d` returns once the daemon serves (systemd Type=forking): the daemon
        // signals its launcher when ready (daemon.rs), else the launcher exits 1.
        daemon_wait_for_ready: true,
        daemon_ready_timeout_seconds: std::num::NonZeroU64::new(120),
        ..ServerConf::default()
    };
    // pingora retries a busy port for a long while (and meanwhile whoever holds it
    // answers; a busy --metrics address then panicked its thread and the daemon ran on
    // without metrics): fail at once with the address instead. Not on upgrade, where
    // the old process holds the ports and hands them over.
    if !config.upgrade {
        for addr in config
            .https
            .iter()
            .chain(&config.http)
            .chain(&config.metrics)
        {
            std::net::TcpListener::bind(addr).with_context(|| {
                format!("cannot listen on {addr} (in use by another process, or not permitted)")
            })?;
        }
    }
    let opt = Opt {
        upgrade: config.upgrade,
        daemon: config.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    Ok(server)
}

/// Builds the HTTPS and HTTP proxy services (TLS, client limits, connection counting);
/// returns those that have a listener. Fails only when the TLS configuration does.
fn public_services(
    config: &Config,
    server: &Server,
    shared: &Arc<Shared>,
    observe: &Observability,
    resolver: Arc<certs::CertResolver>,
    acme: bool,
) -> anyhow::Result<Services> {
    let metrics = &observe.metrics;
    let mut alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme {
        // TLS-ALPN-01 validations (answered by the resolver, closed by TlsHandshake).
        alpn.push(certs::ACME_TLS_ALPN.to_vec());
    }
    let tls_config = certs::server_config(resolver, alpn).context("TLS configuration")?;
    // Client limits (guard.rs): connections per address on both listeners, HTTP/1.x
    // head deadline and size inside TLS, hardened HTTP/2 and keep-alive settings.
    let limits = config.limits;
    let conns = crate::data::guard::ConnCounter::new(limits.max_conns_per_ip);
    let proxy = |tls| {
        let mut proxy = pingora::proxy::http_proxy(
            &server.configuration,
            Proxy {
                shared: shared.clone(),
                tls,
                metrics: metrics.clone(),
                access_log: observe.access_log.clone(),
            },
        );
        proxy.server_options = Some(crate::data::guard::server_options());
        proxy
    };
    let mut https_proxy = proxy(true);
    https_proxy.h2_options = Some(crate::data::guard::h2_options(&limits));
    let errors = &shared.client_errors;
    // Each listener: a stack of layers (data/layer.rs) over its proxy, outermost first.
    let https_app = Counted::new(metrics.clone(), "https").over(
        ConnCap::new(conns.clone()).over(
            TlsHandshake::new(tls_config, errors.clone())
                .with_metrics(metrics.clone())
                .over(HeadGuard::new(limits, errors.clone()).over(https_proxy)),
        ),
    );
    let mut https = Service::new("https".to_string(), https_app);
    for addr in &config.https {
        https.add_listener(public_listener(addr));
    }
    let http_app = Counted::new(metrics.clone(), "http")
        .over(ConnCap::new(conns).over(HeadGuard::new(limits, errors.clone()).over(proxy(false))));
    let mut http = Service::new("http".to_string(), http_app);
    for addr in &config.http {
        http.add_listener(public_listener(addr));
    }
    let mut services: Services = Vec::new();
    if !config.https.is_empty() {
        services.push(Box::new(https));
    }
    if !config.http.is_empty() {
        services.push(Box::new(http));
    }
    Ok(services)
}

/// Returns the upstream health checks and the DNS service. Upstream names are never
/// resolved here (a name that does not resolve must not fail a start).
fn upstream_services(config: &Config, shared: &Arc<Shared>) -> Services {
    let health = background_service(
        "upstream health",
        HealthService {
            shared: shared.clone(),
        },
    );
    let resolver = match crate::control::dns::resolver(&config.dns_server) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!("DNS: {e:#}: upstream names use their fallback addresses");
            None
        }
    };
    let dns = background_service(
        "upstream DNS",
        crate::control::dns::DnsService {
            shared: shared.clone(),
            resolver,
        },
    );
    vec![Box::new(health), Box::new(dns)]
}

/// Builds the control plane: returns the admin socket's service and the SIGHUP reload
/// service, and the listeners readiness checks look for. Fails when the admin socket's
/// directory cannot be made or SIGHUP cannot be handled.
fn admin_services(
    config: &Config,
    shared: &Arc<Shared>,
    observe: &Observability,
    store_health: Arc<crate::control::store_watch::StoreHealth>,
) -> anyhow::Result<(Services, Listeners)> {
    let control = Control::new(
        shared.clone(),
        config.routes.clone(),
        Listeners {
            https: config.https.clone(),
            http: config.http.clone(),
            admin: config.admin_socket.clone(),
        },
        observe.metrics.clone(),
        store_health,
    );
    // During an upgrade the old process still owns --admin-socket: this one answers on
    // the staging path until `proxyctl upgrade` moves it into place (handover.rs).
    let admin_path = config
        .staging_admin_socket
        .clone()
        .unwrap_or_else(|| config.admin_socket.clone());
    if let Some(dir) = admin_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the admin socket's directory {}",
                dir.display()
            )
        })?;
    }
    let handover = crate::control::handover::Handover::new(config.upgrade_socket.clone());
    let mut admin = Service::new(
        "admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(AdminApp {
            control: control.clone(),
            handover: handover.clone(),
            preflight: Arc::new(crate::control::preflight::Preflight {
                dns_servers: config.dns_server.clone(),
                public_addrs: config.public_addrs.clone(),
                http_port: config.acme_http_port,
            }),
        }),
    );
    admin.add_uds(
        &admin_path.display().to_string(),
        Some(std::fs::Permissions::from_mode(config.admin_socket_mode)),
    );
    let admin = crate::control::handover::WithListenFds {
        inner: admin,
        handover,
    };
    let listeners = control.listeners.clone();
    let sighup = background_service("SIGHUP reload", SighupReload::new(control)?);
    Ok((vec![Box::new(admin), Box::new(sighup)], listeners))
}

/// With `--metrics`: returns the service that answers Prometheus scrapes.
fn metrics_service(
    config: &Config,
    shared: &Arc<Shared>,
    observe: &Observability,
    listeners: &Listeners,
) -> Option<Box<dyn ServiceWithDependents>> {
    let (Some(addr), Some(m)) = (config.metrics, &observe.metrics) else {
        return None;
    };
    let mut service = Service::new(
        "metrics".to_string(),
        pingora::apps::http_app::HttpServer::new_app(crate::observe::metrics::MetricsApp {
            metrics: m.clone(),
            shared: shared.clone(),
            listeners: listeners.clone(),
            access_log: observe.access_log.clone(),
        }),
    );
    service.add_tcp_with_settings(&addr.to_string(), socket_options(&addr));
    Some(Box::new(service))
}

/// Returns the background services: the access log's writer, the daemon's ready signal
/// (with `-d`), log summaries, the certificate timer, the certificate store check and the served ==
/// stored check.
/// Fails only when the launcher's pipe cannot be made (`-d`).
fn background_services(
    config: &Config,
    shared: &Arc<Shared>,
    observe: Observability,
    listeners: Listeners,
    store_health: Arc<crate::control::store_watch::StoreHealth>,
) -> anyhow::Result<Services> {
    let mut services: Services = Vec::new();
    if let Some(writer) = observe.access_log_writer {
        services.push(Box::new(writer));
    }
    if config.daemon {
        // Still the launching process: pingora forks in run_forever.
        let launcher = crate::control::daemon::Launcher::before_fork()?;
        services.push(Box::new(background_service(
            "daemon ready",
            crate::control::daemon::NotifyLauncher {
                launcher,
                shared: shared.clone(),
                listeners,
            },
        )));
    }
    services.push(Box::new(background_service(
        "log summaries",
        crate::observe::logging::Summaries {
            client_errors: shared.client_errors.clone(),
            upstream_failures: shared.upstream_failures.clone(),
            access_log: observe.access_log,
            interval: config.log_summary_interval,
        },
    )));
    // Certificates age while the daemon runs (renewal.rs).
    services.push(Box::new(background_service(
        "certificate timer",
        crate::control::renewal::CertTimer {
            shared: shared.clone(),
            interval: config.cert_check_interval.max(Duration::from_millis(100)),
        },
    )));
    services.push(Box::new(background_service(
        "certificate store check",
        crate::control::store_watch::StoreWatch {
            shared: shared.clone(),
            health: store_health,
            interval: config.store_check_interval,
        },
    )));
    services.push(Box::new(background_service(
        "served == stored check",
        crate::control::served::ServedVerifier {
            shared: shared.clone(),
            listeners: config.https.clone(),
            interval: config.verify_served_interval,
            max_conns_per_ip: config.limits.max_conns_per_ip,
        },
    )));
    Ok(services)
}

/// Read buffer under each client connection (pingora's default is 64 KiB, held for as
/// long as the connection lives, idle or not). 16 KiB is one full TLS record per read
/// syscall; rustls reads 4 KiB at a time above it.
const CLIENT_READ_BUFFER: usize = 16 * 1024;

/// A public listener: its socket options and client read buffer.
fn public_listener(addr: &std::net::SocketAddr) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string())
        .tcp_socket_options(socket_options(addr))
        .l4_buffer(L4BufferSettings {
            read: Some(CLIENT_READ_BUFFER),
            write: None,
        })
}

fn socket_options(addr: &std::net::SocketAddr) -> TcpSocketOptions {
    let mut o = TcpSocketOptions::default();
    if addr.is_ipv6() {
        // [::]:443 and 0.0.0.0:443 are two listeners, not one dual-stack socket.
        o.ipv6_only = Some(true);
    }
    o
}

/// Background: health checks of every backend of the current snapshot (upstream names
/// are resolved by `dns::DnsService`).
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
            upstream::run_checks(snapshot.pools.values(), &mut last_checked).await;
        }
    }
}
