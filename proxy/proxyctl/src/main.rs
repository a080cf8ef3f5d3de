//! `proxyctl`: the admin CLI.
//!
//! Exit status: 0 ok, 1 rejected or failed, 2 usage error (clap's own), 3 proxyd not
//! running (no admin socket, or nobody listening), 4 permission denied on the socket,
//! 5 timeout waiting for proxyd. A closed stdout
//! (`proxyctl check | head`) is not an error. `--json` prints one JSON object per
//! command on stdout instead of text, for scripts.
//!
//! Adding a command: a variant in [`Command`], a function `fn name(&Cli, args) ->
//! Result<Outcome>` and one arm in [`run`].

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod client;
mod generate;
mod upgrade;

use admin_api::{ErrorReply, ReloadOutcome, ReloadReply, Request};
use anyhow::Result;
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "proxyctl",
    version,
    about = "Check and control the proxyd reverse proxy"
)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// The admin socket of a running proxyd.
    #[arg(
        long,
        global = true,
        env = "PROXYCTL_SOCKET",
        default_value = "/run/proxyd/admin.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,

    /// Seconds to wait for proxyd's answer.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a routes file offline: report every problem, change nothing.
    Check {
        /// The routes file.
        #[arg(default_value = "routes.toml")]
        file: PathBuf,
    },
    /// Re-read the daemon's routes file, validate it, and swap it in; print what changed
    /// (or every error, leaving the running table in place).
    Reload,
    /// What a reload would change now, applying nothing.
    Diff,
    /// Generation, last reload, listeners, upstream health, certificates.
    Status,
    /// Certificates: names, issuer, not-after, next renewal, last error, and whether
    /// each is served as stored.
    Certs {
        #[command(subcommand)]
        action: Option<CertsAction>,
        /// For monitoring and CI: print one line per problem (a name served with another
        /// certificate than the stored one, a listener the check could not reach, a name
        /// closer to expiry than the threshold, or without a certificate) and exit 1 if
        /// there is any, 0 otherwise.
        #[arg(long)]
        check: bool,
        /// With --check: how close to its expiry a certificate may be, e.g. `14d`, `36h`.
        /// Default: an eighth of each certificate's lifetime, at most 14 days (11 days
        /// for 90-day certificates, 20 hours for 160-hour ones).
        #[arg(long, requires = "check", value_parser = parse_threshold, value_name = "DURATION")]
        expiry_threshold: Option<std::time::Duration>,
    },
    /// Routes generated from the inventory (offline, no daemon needed).
    Routes {
        #[command(subcommand)]
        action: generate::RoutesAction,
    },
    /// Replace the running proxyd by a new binary (with the flags in PROXYD_ARGS) without
    /// dropping a connection: the old one stops only once the new one serves; if the new
    /// one fails, it is stopped and the old one keeps serving (exit 1). systemd's
    /// ExecReload.
    Upgrade(upgrade::UpgradeArgs),
}

#[derive(Debug, Subcommand)]
enum CertsAction {
    /// Order a new ACME certificate for NAME (and the other names of its route) now,
    /// ignoring its renewal time and backoff.
    Renew {
        /// A name of the certificate.
        name: String,
    },
    /// Why an ACME order for these names would fail, before placing one: A/AAAA records
    /// not pointing at this proxy, a CAA record forbidding the CA, port 80 not reaching
    /// this proxy. One line per name and check; exit 0 when no check failed, 1 when
    /// one did (warnings: cannot judge).
    Preflight {
        /// Routed names (default: every name ACME orders certificates for).
        names: Vec<String>,
    },
}

/// How a command ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Rejected input or a failed operation: exit 1.
    Failed,
    /// Another documented status (the daemon could not be asked).
    Exit(u8),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "proxyctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Output that nobody reads any more is not an error: the command's outcome (and exit
/// status) stays what it was.
fn output(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn run(cli: &Cli) -> Result<Outcome> {
    match &cli.command {
        Command::Check { file } => check(cli, file),
        Command::Reload => reload(cli, Request::Reload),
        Command::Diff => reload(cli, Request::Diff),
        Command::Status => status(cli),
        Command::Certs {
            action: None,
            check: false,
            ..
        } => certs(cli),
        Command::Certs {
            action: None,
            check: true,
            expiry_threshold,
        } => certs_check(cli, *expiry_threshold),
        Command::Certs {
            action: Some(CertsAction::Renew { name }),
            ..
        } => certs_renew(cli, name),
        Command::Certs {
            action: Some(CertsAction::Preflight { names }),
            ..
        } => certs_preflight(cli, names),
        Command::Routes { action } => generate::run(cli, action),
        Command::Upgrade(opts) => upgrade::run(cli, opts),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `proxyctl check [FILE]`.
fn check(cli: &Cli, file: &Path) -> Result<Outcome> {
    let name = file.display().to_string();
    let text = match read_text(file) {
        Ok(text) => text,
        Err(msg) => {
            if cli.json {
                let errors = [json!({
                    "file": name, "line": null, "col": null, "message": msg, "context": null,
                })];
                output(print_json(&check_json(&name, None, &errors)))?;
            } else {
                output(writeln!(io::stderr(), "error: {name}: {msg}"))?;
            }
            return Ok(Outcome::Failed);
        }
    };
    match routes::parse(&name, &text) {
        Ok(table) => {
            let (routes, redirects, names) = (
                table.routes.len(),
                table.redirects.len(),
                table.names().len(),
            );
            if cli.json {
                output(print_json(&check_json(
                    &name,
                    Some((routes, redirects, names)),
                    &[],
                )))?;
            } else {
                output(writeln!(
                    io::stdout(),
                    "{name}: OK: {routes} {}, {redirects} {}, {names} {}",
                    plural(routes, "route", "routes"),
                    plural(redirects, "redirect", "redirects"),
                    plural(names, "name", "names"),
                ))?;
            }
            Ok(Outcome::Ok)
        }
        Err(diags) => {
            if cli.json {
                let errors: Vec<_> = diags
                    .0
                    .iter()
                    .map(|d| {
                        json!({
                            "file": d.file, "line": d.line, "col": d.col,
                            "message": d.message, "context": d.context,
                        })
                    })
                    .collect();
                output(print_json(&check_json(&name, None, &errors)))?;
            } else {
                let n = diags.0.len();
                let summary = format!("{name}: {n} {}", plural(n, "error", "errors"));
                output(writeln!(io::stderr().lock(), "{diags}\n{summary}"))?;
            }
            Ok(Outcome::Failed)
        }
    }
}

/// The whole file as UTF-8, or a message saying why not (with the position of the
/// first invalid byte).
fn read_text(file: &Path) -> std::result::Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let col = valid.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("not valid UTF-8 (line {line}, column {col})")
    })
}

/// `{"file", "ok", "routes", "redirects", "names", "errors"}`; counts are null on failure.
fn check_json(
    file: &str,
    counts: Option<(usize, usize, usize)>,
    errors: &[serde_json::Value],
) -> serde_json::Value {
    json!({
        "file": file,
        "ok": counts.is_some(),
        "routes": counts.map(|c| c.0),
        "redirects": counts.map(|c| c.1),
        "names": counts.map(|c| c.2),
        "errors": errors,
    })
}

fn print_json(v: &serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    out.flush()
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Review: the last error carries the CA's problem detail (a `rateLimited`
    /// answer's, now kept in the ledger and meta.json too) and file contents: bytes
    /// chosen by the CA or whoever edits the store must not drive the terminal.
    #[test]
    fn a_last_error_with_control_bytes_does_not_reach_the_terminal_raw() {
        let g: admin_api::CertGroup = serde_json::from_value(serde_json::json!({
            "id": "a.test", "names": ["a.test"], "profile": null, "issued_profile": null,
            "issuer": null, "not_after": null, "next_renewal": null, "ari_window": null,
            "failures": 1, "last_attempt": null, "next_attempt": null,
            "rate_limited_until": null, "ordering": false,
            "last_error": "new order: rate limited: too many\u{1b}[2J\u{1b}]0;owned\u{7}\r\nfake line",
        }))
        .unwrap();
        let line = last_error_line(&g).unwrap();
        assert!(
            !line.chars().any(|c| c.is_control()),
            "control bytes in {line:?}"
        );
        assert!(line.contains("rate limited: too many"), "{line}");
    }

    #[test]
    fn the_ari_window_is_shown_when_the_ca_gave_one() {
        let group = |window: serde_json::Value| -> admin_api::CertGroup {
            serde_json::from_value(serde_json::json!({
                "id": "a.test", "names": ["a.test"], "profile": null, "issued_profile": null,
                "issuer": null, "not_after": null, "next_renewal": null, "ari_window": window,
                "failures": 0, "last_attempt": null, "next_attempt": null,
                "rate_limited_until": null, "ordering": false, "last_error": null,
            }))
            .unwrap()
        };
        assert_eq!(ari_window_line(&group(serde_json::Value::Null)), None);
        let line =
            ari_window_line(&group(serde_json::json!([1_800_000_000, 1_800_086_400]))).unwrap();
        assert!(
            line.contains(&unix_time(Some(1_800_000_000)))
                && line.contains(&unix_time(Some(1_800_086_400))),
            "{line}"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_defaults_to_routes_toml_and_globals_go_anywhere() {
        let cli =
            Cli::try_parse_from(["proxyctl", "check", "--json", "--socket", "/tmp/s"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
        let Command::Check { file } = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(file, PathBuf::from("routes.toml"));
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        let e = Cli::try_parse_from(["proxyctl", "chek"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}

/// Ask the daemon; on failure print why (or a JSON error) and give the exit status.
/// Else the HTTP status and the decoded reply (`T`, or the daemon's error reply).
fn ask<T: DeserializeOwned>(cli: &Cli, request: &Request) -> Result<Answer<T>> {
    ask_at(cli, &cli.socket, request)
}

/// What [`ask`] gives: the HTTP status and the reply, or the exit status after a failure
/// already reported.
type Answer<T> = std::result::Result<(u16, std::result::Result<T, ErrorReply>), Outcome>;

fn ask_at<T: DeserializeOwned>(cli: &Cli, socket: &Path, request: &Request) -> Result<Answer<T>> {
    match client::request(socket, request, std::time::Duration::from_secs(cli.timeout)) {
        Ok(answer) => Ok(Ok(answer)),
        Err(e) => {
            if cli.json {
                output(print_json(&json!({"ok": false, "error": e.to_string()})))?;
            } else {
                output(writeln!(io::stderr(), "proxyctl: {e}"))?;
            }
            Ok(Err(Outcome::Exit(e.exit_code())))
        }
    }
}

/// The daemon's error reply: printed (as JSON with `--json`), exit 1.
fn refused(cli: &Cli, e: &ErrorReply) -> Result<Outcome> {
    if cli.json {
        output(print_json(&to_json(e)))?;
    } else {
        output(writeln!(io::stderr(), "proxyctl: {}", e.error))?;
    }
    Ok(Outcome::Failed)
}

/// `proxyctl reload` and `proxyctl diff`: the same reply, applied or not.
fn reload(cli: &Cli, request: Request) -> Result<Outcome> {
    reload_at(cli, &cli.socket, request)
}

fn reload_at(cli: &Cli, socket: &Path, request: Request) -> Result<Outcome> {
    let (status, reply) = match ask_at::<ReloadReply>(cli, socket, &request)? {
        Ok((status, Ok(reply))) => (status, reply),
        Ok((_, Err(e))) => return refused(cli, &e),
        Err(outcome) => return Ok(outcome),
    };
    let ok = status == 200 && reply.outcome.is_ok();
    if cli.json {
        output(print_json(&to_json(&reply)))?;
        return Ok(if ok { Outcome::Ok } else { Outcome::Failed });
    }
    let (changes, needed, issued) = match &reply.outcome {
        ReloadOutcome::Applied {
            changes,
            certificates_needed,
            certificates_issued,
        } if ok => (changes, certificates_needed, &certificates_issued[..]),
        ReloadOutcome::Valid {
            changes,
            certificates_needed,
        } if ok => (changes, certificates_needed, &[][..]),
        ReloadOutcome::Rejected { errors } => {
            let mut err = io::stderr().lock();
            for e in errors {
                output(writeln!(err, "{}", e.rendered))?;
            }
            output(writeln!(err, "{}", reply.message))?;
            return Ok(Outcome::Failed);
        }
        _ => {
            output(writeln!(io::stderr(), "{} ({status})", reply.message))?;
            return Ok(Outcome::Failed);
        }
    };
    let mut out = io::stdout().lock();
    output(writeln!(out, "{}", reply.message))?;
    for (items, label) in [
        (&changes.routes_added, "+ route"),
        (&changes.routes_removed, "- route"),
        (&changes.routes_changed, "~ route"),
        (&changes.redirects_added, "+ redirect"),
        (&changes.redirects_removed, "- redirect"),
        (&changes.redirects_changed, "~ redirect"),
        (&changes.names_added, "+ name"),
        (&changes.names_removed, "- name"),
    ] {
        for item in items {
            output(writeln!(out, "  {label} {item}"))?;
        }
    }
    for name in needed {
        output(writeln!(out, "  certificate needed for {name}"))?;
    }
    for id in issued {
        output(writeln!(out, "  certificate issued: {id}"))?;
    }
    Ok(Outcome::Ok)
}

/// `status --json`: the status reply, with the readiness reply as `ready` when the
/// daemon gave one.
#[derive(serde::Serialize)]
struct StatusOutput<'a> {
    #[serde(flatten)]
    status: &'a admin_api::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready: Option<&'a admin_api::Readiness>,
}

/// `proxyctl status`.
fn status(cli: &Cli) -> Result<Outcome> {
    let v = match ask::<admin_api::Status>(cli, &Request::Status)? {
        Ok((_, Ok(v))) => v,
        Ok((_, Err(e))) => return refused(cli, &e),
        Err(outcome) => return Ok(outcome),
    };
    // Readiness is an endpoint of its own (what a load balancer asks); shown here too.
    // A daemon that cannot answer it is shown without; one that answers nonsense is an
    // error.
    let ready = match client::request::<admin_api::Readiness>(
        &cli.socket,
        &Request::Ready,
        std::time::Duration::from_secs(cli.timeout),
    ) {
        Ok((_, Ok(r))) => Some(r),
        Ok((_, Err(_))) => None,
        Err(e @ client::CallError::BadReply(_)) => {
            output(writeln!(io::stderr(), "proxyctl: {e}"))?;
            return Ok(Outcome::Exit(e.exit_code()));
        }
        Err(_) => None,
    };
    if cli.json {
        output(print_json(&to_json(&StatusOutput {
            status: &v,
            ready: ready.as_ref(),
        })))?;
        return Ok(Outcome::Ok);
    }
    let mut out = io::stdout().lock();
    output(writeln!(
        out,
        "proxyd {} (pid {}), generation {}, routes file {}",
        v.version, v.pid, v.generation, v.routes_file
    ))?;
    if let Some(r) = &ready {
        if r.ready {
            output(writeln!(out, "ready: yes"))?;
        } else {
            output(writeln!(out, "ready: NO: {}", r.problems.join("; ")))?;
        }
        if !r.names_without_certificate.is_empty() {
            output(writeln!(
                out,
                "names without a certificate (handshakes fail): {}",
                r.names_without_certificate.join(", ")
            ))?;
        }
    }
    match &v.last_reload {
        Some(r) => output(writeln!(
            out,
            "last reload: {} ({}, via {}, at {}): {}",
            if r.ok { "ok" } else { "REJECTED" },
            format_args!("generation {}", r.generation),
            r.trigger,
            unix_time(Some(r.at)),
            r.message
        ))?,
        None => output(writeln!(
            out,
            "last reload: none since start at {}",
            unix_time(Some(v.started_at))
        ))?,
    }
    let l = &v.listeners;
    output(writeln!(
        out,
        "listeners: https {} · http {} · admin {}",
        json_text(&l.https),
        json_text(&l.http),
        l.admin
    ))?;
    output(writeln!(
        out,
        "routes: {} · redirects: {} · names: {} · upstreams healthy: {}/{}",
        v.routes, v.redirects, v.names, v.upstreams_healthy, v.upstreams_total
    ))?;
    for u in &v.upstreams {
        let state = if u.healthy { "up" } else { "DOWN" };
        output(writeln!(
            out,
            "  {:<5} {:<40} {}",
            state, u.address, u.route
        ))?;
    }
    let problems = &v.store.problems;
    if problems.is_empty() {
        output(writeln!(out, "store: ok"))?;
    } else {
        output(writeln!(out, "store: {} PROBLEM(S)", problems.len()))?;
        for p in problems {
            output(writeln!(out, "  {p}"))?;
        }
    }
    output(writeln!(out, "certificates:"))?;
    for c in &v.certificates {
        output(writeln!(
            out,
            "  {:<30} until {}  {}  {}",
            c.id,
            unix_time(Some(c.not_after)),
            c.issuer,
            json_text(&c.names)
        ))?;
    }
    Ok(Outcome::Ok)
}

/// `proxyctl certs`.
fn certs(cli: &Cli) -> Result<Outcome> {
    let v = match ask::<admin_api::Certs>(cli, &Request::Certs)? {
        Ok((_, Ok(v))) => v,
        Ok((_, Err(e))) => return refused(cli, &e),
        Err(outcome) => return Ok(outcome),
    };
    if cli.json {
        output(print_json(&to_json(&v)))?;
        return Ok(Outcome::Ok);
    }
    let color = use_color();
    let mut out = io::stdout().lock();
    match &v.acme {
        Some(a) => {
            output(writeln!(
                out,
                "ACME: {} ({} first), {} orders since start, {} recorded in the store",
                a.directory,
                a.challenge,
                a.orders_placed,
                a.orders_recorded
                    .map_or_else(|| "? (ledger unreadable)".to_string(), |n| n.to_string())
            ))?;
            if !a.budget.is_empty() {
                // From the store (registered domains): no control bytes to the terminal.
                output(writeln!(
                    out,
                    "  budget: {}",
                    a.budget.join(", ").escape_debug()
                ))?;
            }
        }
        None => output(writeln!(
            out,
            "ACME: off (local issuer and certificates dropped in by hand)"
        ))?,
    }
    let secs = |t: Option<i64>| t.and_then(|t| u64::try_from(t).ok());
    for g in v.groups.iter().flatten() {
        let served = Served::of(&v.served, &g.id);
        output(writeln!(
            out,
            "{:<30} {:<10} until {}  renew {}  served {}  {}",
            g.id,
            g.issuer
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(60)
                .collect::<String>(),
            unix_time(secs(g.not_after)),
            if g.ordering {
                "now (ordering)".to_string()
            } else {
                unix_time(secs(g.next_renewal))
            },
            served.word(color),
            json_text(&g.names)
        ))?;
        served.explain(&mut out)?;
        if g.profile.is_some() || g.issued_profile.is_some() {
            let issued = match (&g.issued_profile, &g.profile) {
                (Some(i), Some(p)) if i == p => String::new(),
                // meta.json is a file on disk: no control bytes to the terminal.
                (Some(i), _) => format!(" (served certificate ordered with {})", i.escape_debug()),
                (None, _) => String::new(),
            };
            output(writeln!(
                out,
                "  profile {}{issued}",
                g.profile
                    .as_deref()
                    .unwrap_or("(CA default)")
                    .escape_debug()
            ))?;
        }
        if let Some(line) = ari_window_line(g) {
            output(writeln!(out, "{line}"))?;
        }
        if let Some(t) = g.rate_limited_until {
            output(writeln!(
                out,
                "  held by the CA's rate limit until {} (no order before, not even a forced one)",
                unix_time(secs(Some(t)))
            ))?;
        }
        if let Some(line) = last_error_line(g) {
            output(writeln!(out, "{line}"))?;
        }
    }
    for c in &v.certificates {
        let served = Served::of(&v.served, &c.id);
        output(writeln!(
            out,
            "{:<30} {:<10} until {}  renew -  served {}  {}",
            c.id,
            c.issuer,
            unix_time(Some(c.not_after)),
            served.word(color),
            json_text(&c.names)
        ))?;
        served.explain(&mut out)?;
    }
    if v.served.interval_secs == 0 {
        output(writeln!(
            out,
            "served == stored: off (--verify-served-interval 0)"
        ))?;
    }
    Ok(Outcome::Ok)
}

/// Whether a certificate is served as stored, over the names it serves.
struct Served<'a> {
    /// The worst state of its names (`None`: no name checked).
    state: Option<admin_api::ServedState>,
    /// The first problem's name and reason.
    problem: Option<(&'a str, &'a str)>,
}

impl<'a> Served<'a> {
    fn of(check: &'a admin_api::ServedCheck, cert: &str) -> Served<'a> {
        use admin_api::ServedState as S;
        let rank = |s: S| match s {
            S::Unchecked => 0,
            S::Match => 1,
            S::Unreachable => 2,
            S::Mismatch => 3,
        };
        let mut out = Served {
            state: None,
            problem: None,
        };
        for n in check.names.iter().filter(|n| n.cert == cert) {
            if out.state.is_none_or(|s| rank(n.state) > rank(s)) {
                out.state = Some(n.state);
                if let Some(r) = &n.reason {
                    out.problem = Some((n.name.as_str(), r.as_str()));
                }
            }
        }
        out
    }

    /// `ok`, `MISMATCH`, `UNREACHABLE` or `-`; in red on a terminal when not ok.
    fn word(&self, color: bool) -> String {
        use admin_api::ServedState as S;
        let word = match self.state {
            Some(S::Match) => return "ok".into(),
            None | Some(S::Unchecked) => return "-".into(),
            Some(S::Mismatch) => "MISMATCH",
            Some(S::Unreachable) => "UNREACHABLE",
        };
        if color {
            format!("\x1b[31m{word}\x1b[0m")
        } else {
            word.into()
        }
    }

    /// The reason on a line of its own, under the certificate's.
    fn explain(&self, out: &mut impl Write) -> Result<()> {
        if let Some((name, reason)) = self.problem {
            // Built from files on disk and peers' answers: no control bytes to a terminal.
            output(writeln!(
                out,
                "  served {}: {}",
                name.escape_debug(),
                reason.escape_debug()
            ))?;
        }
        Ok(())
    }
}

/// Colours only for a person: stdout a terminal, and no `NO_COLOR`.
fn use_color() -> bool {
    use std::io::IsTerminal;
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `--expiry-threshold`: a duration as in routes.toml (`14d`, `36h`).
fn parse_threshold(s: &str) -> Result<std::time::Duration, String> {
    routes::check::duration("--expiry-threshold", s)
}

/// The default expiry threshold for a certificate of this lifetime: an eighth of it, at
/// most 14 days. Renewals happen at a third of the lifetime left, ARI windows end at a
/// sixth at the latest: closer than an eighth means renewal is late.
fn default_threshold(lifetime_secs: i64) -> i64 {
    (lifetime_secs / 8).clamp(0, 14 * 86_400)
}

/// What `proxyctl certs --check` reports: one line per problem (empty: all well).
fn check_problems(
    v: &admin_api::Certs,
    threshold: Option<std::time::Duration>,
    now: i64,
) -> Vec<String> {
    use admin_api::ServedState as S;
    let mut problems = Vec::new();
    for n in &v.served.names {
        let why = n.reason.as_deref().unwrap_or("").escape_debug().to_string();
        match n.state {
            S::Mismatch => problems.push(format!(
                "{}: MISMATCH: served certificate is not the stored one: {why}",
                n.name.escape_debug()
            )),
            S::Unreachable => problems.push(format!(
                "{}: UNREACHABLE: served == stored not checked: {why}",
                n.name.escape_debug()
            )),
            S::Match | S::Unchecked => {}
        }
        let limit = match threshold {
            Some(t) => i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            None => default_threshold(n.not_after - n.not_before),
        };
        let left = n.not_after - now;
        if left < limit {
            problems.push(format!(
                "{}: EXPIRING: certificate {} {} (not_after {}), threshold {}",
                // The id is a directory name on disk: no control bytes to the terminal.
                n.name.escape_debug(),
                n.cert.escape_debug(),
                if left <= 0 {
                    "has expired".to_string()
                } else {
                    format!("expires in {}", roughly(left))
                },
                unix_time(u64::try_from(n.not_after).ok()),
                roughly(limit)
            ));
        }
    }
    for name in &v.served.uncovered {
        problems.push(format!(
            "{}: NO CERTIFICATE: routed, none held for it",
            name.escape_debug()
        ));
    }
    for g in v.groups.iter().flatten() {
        // Its names are listed above one by one when the daemon says which.
        if g.not_after.is_none() && !g.names.iter().any(|n| v.served.uncovered.contains(n)) {
            problems.push(format!(
                "{}: NO CERTIFICATE: none covers {} yet",
                g.id,
                json_text(&g.names)
            ));
        }
    }
    problems
}

/// `3 days`, `20 hours`, `5 minutes`: rounded down (a threshold or time left is never
/// shown larger than it is).
fn roughly(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 2 * 86_400 {
        format!("{} days", s / 86_400)
    } else if s >= 2 * 3600 {
        format!("{} hours", s / 3600)
    } else {
        format!("{} minutes", s / 60)
    }
}

/// `proxyctl certs --check [--expiry-threshold DURATION]`.
fn certs_check(cli: &Cli, threshold: Option<std::time::Duration>) -> Result<Outcome> {
    let v = match ask::<admin_api::Certs>(cli, &Request::Certs)? {
        Ok((_, Ok(v))) => v,
        Ok((_, Err(e))) => return refused(cli, &e),
        Err(outcome) => return Ok(outcome),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let problems = check_problems(&v, threshold, now);
    let checked = v
        .served
        .names
        .iter()
        .filter(|n| n.state == admin_api::ServedState::Match)
        .count();
    if cli.json {
        output(print_json(&json!({
            "ok": problems.is_empty(),
            "problems": problems,
            "names": v.served.names.len(),
            "served_as_stored": checked,
            "served_check": v.served.interval_secs > 0,
        })))?;
    } else {
        let mut out = io::stdout().lock();
        for p in &problems {
            output(writeln!(out, "{p}"))?;
        }
        let check = if v.served.interval_secs == 0 {
            " (served == stored check off)".to_string()
        } else {
            format!(", {checked} served == stored")
        };
        if problems.is_empty() {
            output(writeln!(
                out,
                "certificates: OK: {} names{check}",
                v.served.names.len()
            ))?;
        } else {
            output(writeln!(
                out,
                "certificates: {} problem{}{check}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ))?;
        }
    }
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

/// The `ARI window` line of a certificate group, when the CA suggested one (RFC 9773).
fn ari_window_line(g: &admin_api::CertGroup) -> Option<String> {
    let (start, end) = g.ari_window?;
    let secs = |t: i64| u64::try_from(t).ok();
    Some(format!(
        "  ARI window {} to {} (the CA's suggested renewal time)",
        unix_time(secs(start)),
        unix_time(secs(end))
    ))
}

/// The `last error` line of a certificate group, when it has one.
fn last_error_line(g: &admin_api::CertGroup) -> Option<String> {
    let e = g.last_error.as_ref()?;
    let secs = |t: Option<i64>| t.and_then(|t| u64::try_from(t).ok());
    Some(format!(
        "  last error ({} in a row, at {}; next attempt {}): {}",
        g.failures,
        unix_time(secs(g.last_attempt)),
        unix_time(secs(g.next_attempt)),
        // The CA's problem detail, files on disk: no control bytes to the terminal.
        e.escape_debug()
    ))
}

/// What proxyctl sends the daemon as a NAME: letters, digits, `.`, `-` and `_` only
/// (the daemon checks it against the routes).
fn looks_like_host_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
}

/// `proxyctl certs renew NAME`.
fn certs_renew(cli: &Cli, name: &str) -> Result<Outcome> {
    if !looks_like_host_name(name) {
        output(writeln!(
            io::stderr(),
            "proxyctl: {name:?} is not a host name"
        ))?;
        return Ok(Outcome::Failed);
    }
    let request = Request::Renew {
        name: name.to_owned(),
    };
    let v = match ask::<admin_api::Renewing>(cli, &request)? {
        Ok((_, Ok(v))) => v,
        Ok((_, Err(e))) => return refused(cli, &e),
        Err(outcome) => return Ok(outcome),
    };
    if cli.json {
        output(print_json(&to_json(&v)))?;
    } else {
        output(writeln!(
            io::stdout(),
            "renewing {} (certificate {}): see proxyctl certs",
            name,
            v.renewing
        ))?;
    }
    Ok(Outcome::Ok)
}

/// `proxyctl certs preflight [NAME...]`.
fn certs_preflight(cli: &Cli, names: &[String]) -> Result<Outcome> {
    for name in names {
        if !looks_like_host_name(name.strip_prefix("*.").unwrap_or(name)) {
            output(writeln!(
                io::stderr(),
                "proxyctl: {name:?} is not a host name"
            ))?;
            return Ok(Outcome::Failed);
        }
    }
    let request = Request::Preflight {
        names: names.to_vec(),
    };
    let v = match ask::<admin_api::Preflight>(cli, &request)? {
        Ok((_, Ok(v))) => v,
        Ok((_, Err(e))) => return refused(cli, &e),
        Err(outcome) => return Ok(outcome),
    };
    // A reply whose `ok` contradicts its checks counts as failed either way.
    let failed = v.any_failed() || !v.ok;
    if cli.json {
        output(print_json(&to_json(&v)))?;
    } else {
        let mut out = io::stdout().lock();
        let width = v.names.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for n in &v.names {
            for c in &n.checks {
                output(writeln!(
                    out,
                    "{:<width$}  {:<9} {:<7} {}",
                    n.name,
                    c.check,
                    c.result.as_str(),
                    // DNS answers and HTTP answers: no control bytes to the terminal.
                    printable(&c.detail),
                ))?;
            }
        }
        let failing = v
            .names
            .iter()
            .filter(|n| {
                n.checks
                    .iter()
                    .any(|c| c.result == admin_api::CheckResult::Fail)
            })
            .count();
        output(writeln!(
            out,
            "preflight for {}: {} name{}, {}",
            v.directory,
            v.names.len(),
            if v.names.len() == 1 { "" } else { "s" },
            match failing {
                0 => "no check failed".to_string(),
                n => format!("{n} would fail"),
            }
        ))?;
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

/// `text` with control characters escaped.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A reply as JSON for `--json` (keys sorted, as the daemon sends them).
fn to_json(reply: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(reply).unwrap_or_default()
}

/// A value as compact JSON (lists of names and addresses in the text output).
fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Unix seconds as an ISO-8601 UTC date (no time-zone database needed); `-` for none.
fn unix_time(secs: Option<u64>) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(i64::try_from(s).ok()?).ok())
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn unix_time_renders_utc_dates() {
        assert_eq!(super::unix_time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::unix_time(Some(1_798_215_041)),
            "2026-12-25T16:10:41Z"
        );
        assert_eq!(super::unix_time(Some(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(super::unix_time(None), "-");
    }
}

#[cfg(test)]
mod check_tests {
    use admin_api::{Certs, ServedCheck, ServedName, ServedState};

    use super::{check_problems, default_threshold};

    const DAY: i64 = 86_400;

    fn name(n: &str, state: ServedState, reason: Option<&str>, life: (i64, i64)) -> ServedName {
        ServedName {
            name: n.into(),
            cert: n.into(),
            not_before: life.0,
            not_after: life.1,
            state,
            reason: reason.map(Into::into),
            checked_at: Some(1),
            served_sha256: None,
            stored_sha256: None,
        }
    }

    fn certs(names: Vec<ServedName>) -> Certs {
        Certs {
            acme: None,
            groups: None,
            certificates: vec![],
            served: ServedCheck {
                interval_secs: 300,
                last_run: Some(1),
                names,
                uncovered: vec![],
            },
        }
    }

    /// An expired certificate (still held: nothing better was issued) is a problem
    /// under any threshold, and says so; a 160-hour one past its default threshold too.
    #[test]
    fn expired_and_short_lived_certificates_fail_the_check() {
        let now = 1_000 * DAY;
        let v = certs(vec![
            name(
                "gone.test",
                ServedState::Match,
                None,
                (now - 90 * DAY, now - 60),
            ),
            // 160 h, 19 h left: under an eighth (20 h).
            name(
                "short.test",
                ServedState::Match,
                None,
                (now - 141 * 3600, now + 19 * 3600),
            ),
            // 160 h, 21 h left: fine.
            name(
                "fine.test",
                ServedState::Match,
                None,
                (now - 139 * 3600, now + 21 * 3600),
            ),
        ]);
        let p = check_problems(&v, None, now);
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p[0].starts_with("gone.test: EXPIRING") && p[0].contains("has expired"),
            "{p:?}"
        );
        assert!(p[1].starts_with("short.test: EXPIRING"), "{p:?}");
        // The smallest threshold still catches the expired one.
        let p = check_problems(&v, Some(std::time::Duration::from_secs(1)), now);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("has expired"), "{p:?}");
    }

    /// A certificate id is a directory name under `certs/` (any UTF-8 a file system
    /// takes): with control bytes or a newline it must not reach the terminal raw, nor
    /// split one problem into two lines for a monitoring script.
    #[test]
    fn hostile_ids_and_names_are_escaped_in_check_lines() {
        let now = 1_000 * DAY;
        let mut n = name(
            "a.test",
            ServedState::Mismatch,
            Some("r"),
            (now - 150 * 3600, now + 3600),
        );
        n.cert = "x\u{1b}[2J\nFAKE: ok".into();
        n.name = "b.test\u{7}".into();
        let p = check_problems(&certs(vec![n]), None, now);
        assert_eq!(p.len(), 2, "{p:#?}");
        for line in &p {
            assert!(
                !line.chars().any(|c| c.is_control()),
                "control bytes in {line:?}"
            );
        }
    }

    #[test]
    fn the_default_threshold_is_an_eighth_of_the_lifetime_at_most_14_days() {
        assert_eq!(default_threshold(160 * 3600), 20 * 3600);
        assert_eq!(default_threshold(90 * DAY), 90 * DAY / 8);
        assert_eq!(default_threshold(365 * DAY), 14 * DAY);
        assert_eq!(default_threshold(-5), 0);
    }

    #[test]
    fn mismatches_unreachable_listeners_and_near_expiry_are_problems() {
        let now = 1_000 * DAY;
        let fresh = (now - DAY, now + 89 * DAY);
        let v = certs(vec![
            name("ok.test", ServedState::Match, None, fresh),
            name("unchecked.test", ServedState::Unchecked, None, fresh),
            name("bad.test", ServedState::Mismatch, Some("x\u{1b}[2J"), fresh),
            name(
                "down.test",
                ServedState::Unreachable,
                Some("refused"),
                fresh,
            ),
            // 160 h, 10 h left: below its eighth (20 h).
            name(
                "short.test",
                ServedState::Match,
                None,
                (now - 150 * 3600, now + 10 * 3600),
            ),
        ]);
        let p = check_problems(&v, None, now);
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].starts_with("bad.test: MISMATCH") && !p[0].contains('\u{1b}'),
            "{p:?}"
        );
        assert!(p[1].starts_with("down.test: UNREACHABLE"), "{p:?}");
        assert!(p[2].starts_with("short.test: EXPIRING"), "{p:?}");
        // A fixed threshold applies to all: 100 days catches every name.
        let all = check_problems(
            &v,
            Some(std::time::Duration::from_secs(100 * DAY as u64)),
            now,
        );
        assert_eq!(all.iter().filter(|l| l.contains("EXPIRING")).count(), 5);
        // All well: nothing.
        assert!(check_problems(
            &certs(vec![name("ok.test", ServedState::Match, None, fresh)]),
            None,
            now
        )
        .is_empty());
    }
}
