//! `proxyctl`: the admin CLI.
//!
//! Exit status: 0 ok, 1 rejected or failed, 2 usage error (clap's own). A closed stdout
//! (`proxyctl check | head`) is not an error. `--json` prints one JSON object per
//! command on stdout instead of text, for scripts.
//!
//! Adding a command: a variant in [`Command`], a function `fn name(&Cli, args) ->
//! Result<Outcome>` and one arm in [`run`].

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
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
    // Read by the commands that talk to the daemon (reload, status: a later issue).
    #[allow(dead_code)]
    #[arg(
        long,
        global = true,
        env = "PROXYCTL_SOCKET",
        default_value = "/run/proxyd/admin.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,

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
}

/// How a command ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Rejected input or a failed operation: exit 1.
    Failed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
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
        let Command::Check { file } = cli.command;
        assert_eq!(file, PathBuf::from("routes.toml"));
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        let e = Cli::try_parse_from(["proxyctl", "chek"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
