//! `proxyctl routes generate --inventory FILE [-o routes.toml] [--check]`: the
//! inventory (TOML, or JSON as `nix eval --json` prints it) expanded into routes.toml.
//!
//! Without `-o` the routes go to stdout. With `-o` the file is replaced atomically
//! (temp file, fsync, rename) and only when its content changes. `--check` changes
//! nothing: exit 0 when the file is exactly what the inventory generates, else exit 1
//! with a unified diff (file on disk -> generated) on stdout, so CI fails on a stale
//! routes.toml and shows what regenerating would change.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use super::{output, plural, print_json, read_text, Cli, Outcome};

#[derive(Debug, Subcommand)]
pub(crate) enum RoutesAction {
    /// Generate routes.toml from the inventory, deterministically (same inventory, same
    /// bytes).
    Generate {
        /// The inventory: TOML, or JSON (`nix eval --json`); by extension, else content.
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,

        /// Write the routes here (atomically, only if changed) instead of to stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,

        /// Write nothing: exit 1 with a unified diff when the output file is not what
        /// the inventory generates (for CI).
        #[arg(long, requires = "output")]
        check: bool,
    },
}

pub(crate) fn run(cli: &Cli, action: &RoutesAction) -> Result<Outcome> {
    match action {
        RoutesAction::Generate {
            inventory,
            output,
            check,
        } => generate(cli, inventory, output.as_deref(), *check),
    }
}

fn generate(cli: &Cli, inventory: &Path, out: Option<&Path>, check: bool) -> Result<Outcome> {
    let inv_name = inventory.display().to_string();
    let out_name = out.map(|p| p.display().to_string());
    let report = |v: serde_json::Value| -> Result<()> {
        let mut base = json!({"inventory": inv_name, "output": out_name});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), v.as_object()) {
            b.extend(extra.clone());
        }
        output(print_json(&base))?;
        Ok(())
    };

    let text = match read_text(inventory) {
        Ok(text) => text,
        Err(msg) => {
            if cli.json {
                report(json!({"ok": false, "errors": [{
                    "file": inv_name, "line": null, "col": null, "message": msg, "context": null,
                }]}))?;
            } else {
                output(writeln!(io::stderr(), "error: {inv_name}: {msg}"))?;
            }
            return Ok(Outcome::Failed);
        }
    };
    let routes = match inventory::generate(&inv_name, &text) {
        Ok(routes) => routes,
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
                report(json!({"ok": false, "errors": errors}))?;
            } else {
                let n = diags.0.len();
                let summary = format!("{inv_name}: {n} {}", plural(n, "error", "errors"));
                output(writeln!(io::stderr().lock(), "{diags}\n{summary}"))?;
            }
            return Ok(Outcome::Failed);
        }
    };

    let Some(out) = out else {
        if cli.json {
            report(json!({"ok": true, "routes": routes}))?;
        } else {
            output(io::stdout().lock().write_all(routes.as_bytes()))?;
        }
        return Ok(Outcome::Ok);
    };
    let out_name = out.display().to_string();
    let current = match std::fs::read(out) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {out_name}")),
    };
    let up_to_date = current.as_deref() == Some(routes.as_str());

    if check {
        if up_to_date {
            if cli.json {
                report(json!({"ok": true, "up_to_date": true, "diff": null}))?;
            } else {
                output(writeln!(
                    io::stdout(),
                    "{out_name}: up to date with {inv_name}"
                ))?;
            }
            return Ok(Outcome::Ok);
        }
        let old = current.as_deref().unwrap_or("");
        let diff = similar::TextDiff::from_lines(old, routes.as_str())
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{out_name} (on disk)"),
                &format!("{out_name} (generated from {inv_name})"),
            )
            .to_string();
        if cli.json {
            report(json!({"ok": false, "up_to_date": false, "diff": diff}))?;
        } else {
            output(io::stdout().lock().write_all(diff.as_bytes()))?;
            let why = if current.is_none() {
                "does not exist"
            } else {
                "is stale: it is not what the inventory generates"
            };
            output(writeln!(
                io::stderr(),
                "error: {out_name} {why} (diff above)\n  regenerate it: proxyctl routes generate --inventory {inv_name} -o {out_name}"
            ))?;
        }
        return Ok(Outcome::Failed);
    }

    if !up_to_date {
        write_atomically(out, routes.as_bytes())
            .with_context(|| format!("cannot write {out_name}"))?;
    }
    let counts = routes::parse(&out_name, &routes)
        .map(|t| (t.routes.len(), t.redirects.len()))
        .unwrap_or_default();
    if cli.json {
        report(json!({
            "ok": true, "changed": !up_to_date, "routes": counts.0, "redirects": counts.1,
        }))?;
    } else {
        output(writeln!(
            io::stdout(),
            "{out_name}: {} from {inv_name}: {} {}, {} {}",
            if up_to_date { "unchanged" } else { "written" },
            counts.0,
            plural(counts.0, "route", "routes"),
            counts.1,
            plural(counts.1, "redirect", "redirects"),
        ))?;
    }
    Ok(Outcome::Ok)
}

/// Write `bytes` to a temporary file beside `path`, fsync it, rename it over `path`,
/// and fsync the directory: readers see the old file or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // Keep the mode of the file it replaces (routes files are often 0644 on purpose).
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    #[test]
    fn generate_flags_parse_and_check_needs_an_output() {
        let cli = Cli::try_parse_from([
            "proxyctl",
            "routes",
            "generate",
            "--inventory",
            "inventory.toml",
            "-o",
            "routes.toml",
            "--check",
        ])
        .unwrap();
        let Command::Routes {
            action:
                RoutesAction::Generate {
                    inventory,
                    output,
                    check,
                },
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(inventory, PathBuf::from("inventory.toml"));
        assert_eq!(output, Some(PathBuf::from("routes.toml")));
        assert!(check);
        let e = Cli::try_parse_from([
            "proxyctl",
            "routes",
            "generate",
            "--inventory",
            "i",
            "--check",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
