//! What each kind of application needs from the reverse proxy in front of it, taken
//! from the application's own reverse-proxy documentation (cited per preset). A preset
//! is a set of defaults: a service's `overrides` replace any of them.
//!
//! Only what the proxy must do differently from its own defaults is here. What every
//! application gets anyway is not repeated: proxyd always replaces `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP` and `Forwarded` (so each app's
//! "trusted proxy" setting must name reverse-1's internal address), keeps the `Host`
//! header, streams bodies without buffering, and sends HSTS over https.

use crate::{App, Policy, PolicyValue};

/// The routes one service becomes, before its overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub app: App,
    /// One line for the generated file and the docs.
    pub summary: &'static str,
    /// Keys for every route of the service.
    pub policy: Policy,
    /// Allow only the inventory's `internal_networks`.
    pub internal_only: bool,
    /// More routes on the service's names, under its path: one per path (a preset
    /// that needs websockets on several paths lists a route for each).
    pub extra_routes: Vec<ExtraRoute>,
    /// Fixed redirects on the service's names.
    pub redirects: Vec<PresetRedirect>,
}

/// A route the preset adds: `<service id>-<suffix>` at `<service path><path>`, with the
/// preset's policy plus `policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraRoute {
    pub suffix: &'static str,
    /// Relative to the service's path (starts with `/`).
    pub path: &'static str,
    pub policy: Policy,
}

/// A redirect the preset adds: `<service id>-<suffix>`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetRedirect {
    pub suffix: &'static str,
    /// At the root of the name, whatever the service's path (well-known URIs live there).
    pub path: &'static str,
    /// A path relative to the service's path (starts with `/`).
    pub to: &'static str,
    pub status: u16,
}

fn s(v: &str) -> PolicyValue {
    PolicyValue::str(v)
}

impl App {
    /// The preset of this kind of application.
    pub fn preset(self) -> Preset {
        let base = |summary| Preset {
            app: self,
            summary,
            policy: Policy::default(),
            internal_only: false,
            extra_routes: Vec::new(),
            redirects: Vec::new(),
        };
        match self {
            // A web server sending files: the proxy defaults fit.
            App::Static => base("static files: the proxy defaults"),

            // php.ini's post_max_size defaults to 8M, and PHP does not refuse a larger
            // body: it drops it, and the script sees empty $_POST and $_FILES
            // (https://www.php.net/manual/en/ini.core.php#ini.post-max-size). A 413
            // from the proxy at the same size is the honest answer. Raise both together.
            App::Php => Preset {
                policy: Policy::default().with("max_body", s("8m")),
                ..base("PHP behind php-fpm: bodies up to PHP's default post_max_size (8M)")
            },

            // Gunicorn's deployment guide (https://docs.gunicorn.org/en/stable/deploy.html)
            // asks the proxy for Host, X-Forwarded-For and X-Forwarded-Proto (always set
            // here); Django reads them with SECURE_PROXY_SSL_HEADER and
            // USE_X_FORWARDED_HOST (https://docs.djangoproject.com/en/stable/ref/settings/#secure-proxy-ssl-header),
            // Flask with ProxyFix (https://flask.palletsprojects.com/en/stable/deploying/proxy_fix/).
            // Gunicorn's worker timeout (30 s) is below the proxy's read timeout, so the
            // defaults fit.
            App::Django | App::Flask => {
                base("WSGI app (gunicorn/uWSGI): the proxy defaults; the app trusts X-Forwarded-*")
            }

            // Nextcloud admin manual:
            // - reverse proxy (https://docs.nextcloud.com/server/latest/admin_manual/configuration_server/reverse_proxy_configuration.html):
            //   behind a proxy, the proxy answers /.well-known/carddav and caldav with a
            //   301 to /remote.php/dav/ (service discovery for CalDAV/CardDAV clients);
            // - big file uploads (https://docs.nextcloud.com/server/latest/admin_manual/configuration_files/big_file_upload_configuration.html):
            //   the web server's body limit caps the largest upload and long uploads
            //   need long timeouts (chunk assembly at the end can take minutes);
            // - hardening (https://docs.nextcloud.com/server/latest/admin_manual/installation/harden_server.html):
            //   HSTS with max-age of at least 15552000 s (the default 365d is more);
            //   set here so a `hsts = false` in [defaults] cannot turn it off by accident.
            // Health: status.php answers without login (the clients poll it).
            App::Nextcloud => Preset {
                policy: Policy::default()
                    .with("max_body", s("unlimited"))
                    .with("read_timeout", s("1h"))
                    .with("write_timeout", s("1h"))
                    .with("hsts", PolicyValue::Bool(true))
                    .with("health_check_path", s("/status.php")),
                redirects: vec![
                    PresetRedirect {
                        suffix: "carddav",
                        path: "/.well-known/carddav",
                        to: "/remote.php/dav/",
                        status: 301,
                    },
                    PresetRedirect {
                        suffix: "caldav",
                        path: "/.well-known/caldav",
                        to: "/remote.php/dav/",
                        status: 301,
                    },
                ],
                ..base("Nextcloud: unlimited uploads, 1 h timeouts, CalDAV/CardDAV discovery, HSTS")
            },

            // GitLab's own NGINX (Linux package, https://docs.gitlab.com/omnibus/settings/nginx/,
            // template nginx-gitlab-http.conf.erb): `client_max_body_size 0` (git pushes
            // over HTTP can be large), `proxy_read_timeout 3600`, and the Upgrade and
            // Connection headers passed on every location, for ActionCable on /-/cable
            // and the web terminals (*.ws). Health: /-/health
            // (https://docs.gitlab.com/administration/monitoring/health_check/), a
            // liveness probe; from an address outside gitlab_rails['monitoring_whitelist']
            // it answers 404, which still counts as up (below 500).
            App::Gitlab => Preset {
                policy: Policy::default()
                    .with("max_body", s("unlimited"))
                    .with("read_timeout", s("1h"))
                    .with("websocket", PolicyValue::Bool(true))
                    .with("health_check_path", s("/-/health")),
                ..base("GitLab: unlimited pushes, 1 h reads, websockets (/-/cable, terminals)")
            },

            // Roundcube checks attachments against max_message_size, 100M in
            // config/defaults.inc.php ("Message size limit. Note that SMTP server(s) may
            // use a different value."); each attachment is one upload. Lower it per
            // service to the mail server's limit.
            App::Roundcube => Preset {
                policy: Policy::default().with("max_body", s("100m")),
                ..base("Roundcube: uploads up to its default max_message_size (100M)")
            },

            // Mattermost's NGINX guide
            // (https://docs.mattermost.com/deployment-guide/server/setup-nginx-proxy.html):
            // `location ~ /api/v[0-9]+/(users/)?websocket$` with the Upgrade headers,
            // `client_max_body_size 50M` and `proxy_read_timeout 600s` on both locations.
            // That location matches two paths of API v4, and a client may use either:
            // /api/v4/websocket and the older /api/v4/users/websocket; each gets a
            // websocket route. Health: /api/v4/system/ping (no login).
            App::Mattermost => Preset {
                policy: Policy::default()
                    .with("max_body", s("50m"))
                    .with("read_timeout", s("10m"))
                    .with("health_check_path", s("/api/v4/system/ping")),
                extra_routes: vec![
                    ExtraRoute {
                        suffix: "websocket",
                        path: "/api/v4/websocket",
                        policy: Policy::default().with("websocket", PolicyValue::Bool(true)),
                    },
                    ExtraRoute {
                        suffix: "users-websocket",
                        path: "/api/v4/users/websocket",
                        policy: Policy::default().with("websocket", PolicyValue::Bool(true)),
                    },
                ],
                ..base("Mattermost: 50 MB bodies, 10 min reads, websockets on /api/v4/[users/]websocket")
            },

            // Admin and monitoring pages: only clients on the internal (WireGuard)
            // networks; everyone else gets 403.
            App::Internal => Preset {
                internal_only: true,
                ..base("internal only: clients on the internal networks, 403 for others")
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset value is accepted by the routes parser, as a route key.
    #[test]
    fn every_preset_is_a_valid_route() {
        for app in App::ALL {
            let p = app.preset();
            assert_eq!(p.app, app);
            let mut policies = vec![p.policy.clone()];
            policies.extend(p.extra_routes.iter().map(|e| p.policy.merged(&e.policy)));
            for policy in policies {
                let mut text = String::from(
                    "[[route]]\nhosts = [\"a.example.org\"]\nupstreams = [\"10.0.0.1:80\"]\n",
                );
                for (k, v) in policy.iter() {
                    text += &format!("{k} = {}\n", crate::render_value(v));
                }
                routes::parse("preset", &text).unwrap_or_else(|d| panic!("{app}: {d}"));
            }
            for r in &p.redirects {
                assert!(r.path.starts_with('/') && r.to.starts_with('/'), "{app}");
            }
        }
    }
}
