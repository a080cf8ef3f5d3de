//! README.md's proxyctl table, checked against the built binary's help (`proxyctl ... -h`):
//! every command that runs on its own has a row `proxyctl <command> ...`, every row names a
//! command, and a row names every option of its command (by `--long` or `-s`) and no other;
//! the paragraph after the table names every global option.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const README: &str = include_str!("../../../README.md");
const HEADER: &str = "| command | what |";

/// An option as (long, short).
type Opt = (String, Option<String>);
/// README rows: command path -> (line, flags named in the row).
type Rows = BTreeMap<String, (usize, BTreeSet<String>)>;

/// What `proxyctl <path> -h` lists.
struct Help {
    /// Subcommands (without clap's `help`).
    commands: Vec<String>,
    /// `<COMMAND>` in the usage line: the command does nothing on its own.
    needs_command: bool,
    /// Options as (long, short), without `--help`/`--version`.
    options: Vec<Opt>,
}

fn help(path: &[String]) -> Help {
    let out = Command::new(env!("CARGO_BIN_EXE_proxyctl"))
        .args(path)
        .arg("-h")
        .output()
        .expect("run proxyctl -h");
    assert!(out.status.success(), "proxyctl {path:?} -h: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut h = Help {
        commands: Vec::new(),
        needs_command: text.contains("<COMMAND>"),
        options: Vec::new(),
    };
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        match section {
            "Commands:" if first != "help" => h.commands.push(first.to_owned()),
            "Options:" => {
                let words: Vec<&str> = line.split_whitespace().collect();
                let long = words.iter().find(|w| w.starts_with("--"));
                let short = words
                    .first()
                    .filter(|w| !w.starts_with("--") && w.starts_with('-'))
                    .map(|w| w.trim_end_matches(',').to_owned());
                if let Some(long) = long {
                    if *long != "--help" && *long != "--version" {
                        h.options.push((long.to_string(), short));
                    }
                }
            }
            _ => {}
        }
    }
    h
}

/// Every command path that runs on its own ("check", "certs", "certs renew", ...), with
/// its own options (the global ones taken out).
fn commands() -> (BTreeMap<String, Vec<Opt>>, Vec<String>) {
    let top = help(&[]);
    let global: Vec<String> = top.options.iter().map(|(l, _)| l.clone()).collect();
    let mut out = BTreeMap::new();
    let mut todo: Vec<Vec<String>> = top.commands.iter().map(|c| vec![c.clone()]).collect();
    while let Some(path) = todo.pop() {
        let h = help(&path);
        for c in &h.commands {
            let mut p = path.clone();
            p.push(c.clone());
            todo.push(p);
        }
        if !h.needs_command {
            let own = h
                .options
                .into_iter()
                .filter(|(l, _)| !global.contains(l))
                .collect();
            out.insert(path.join(" "), own);
        }
    }
    (out, global)
}

/// The table's rows: command path -> (line, flags named in the first cell).
fn readme_rows(readme: &str) -> (Rows, Vec<String>) {
    let mut rows = BTreeMap::new();
    let mut errors = Vec::new();
    let mut lines = readme.lines().enumerate();
    if lines.by_ref().find(|(_, l)| l.trim() == HEADER).is_none() {
        return (rows, vec![format!("README.md: no table headed `{HEADER}`")]);
    }
    lines.next();
    for (i, line) in lines {
        if !line.starts_with('|') {
            break;
        }
        let n = i + 1;
        let cell = line.split('|').nth(1).unwrap_or("").trim();
        let Some(usage) = cell
            .strip_prefix("`proxyctl ")
            .and_then(|c| c.strip_suffix('`'))
        else {
            errors.push(format!("README.md:{n}: `{cell}` is not `proxyctl ...`"));
            continue;
        };
        let words: Vec<&str> = usage.split_whitespace().collect();
        let path: Vec<&str> = words
            .iter()
            .take_while(|w| {
                w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
            })
            .copied()
            .collect();
        let flags = words
            .iter()
            .map(|w| w.trim_matches(|c| c == '[' || c == ']' || c == ','))
            .filter(|w| w.starts_with('-'))
            .map(str::to_owned)
            .collect();
        if let Some((old, _)) = rows.insert(path.join(" "), (n, flags)) {
            errors.push(format!(
                "README.md:{n}: `proxyctl {}` already has a row (line {old})",
                path.join(" ")
            ));
        }
    }
    (rows, errors)
}

fn drift(readme: &str) -> Vec<String> {
    let (mut rows, mut errors) = readme_rows(readme);
    let (commands, global) = commands();
    for (path, options) in &commands {
        let Some((line, mut flags)) = rows.remove(path) else {
            errors.push(format!(
                "proxyctl {path}: in --help, missing from README.md"
            ));
            continue;
        };
        for (long, short) in options {
            let named = flags.remove(long) | short.as_ref().is_some_and(|s| flags.remove(s));
            if !named {
                errors.push(format!(
                    "README.md:{line}: proxyctl {path}: option {long} missing"
                ));
            }
        }
        for f in flags {
            errors.push(format!(
                "README.md:{line}: proxyctl {path}: {f} is not one of its options"
            ));
        }
    }
    for (path, (line, _)) in rows {
        errors.push(format!(
            "README.md:{line}: `proxyctl {path}` is not a command of proxyctl"
        ));
    }
    // The paragraph after the table: the options every command takes.
    let after = readme
        .split(HEADER)
        .nth(1)
        .and_then(|t| t.split("\n\n").nth(1))
        .unwrap_or("");
    for g in global {
        if !after.contains(&format!("`{g}")) {
            errors.push(format!(
                "global option {g}: not named after README.md's proxyctl table"
            ));
        }
    }
    errors
}

#[test]
fn readme_command_table_matches_help() {
    let errors = drift(README);
    assert!(
        errors.is_empty(),
        "README.md's proxyctl table and `proxyctl --help` differ:\n{}",
        errors.join("\n")
    );
}

/// The checker itself: a row dropped, or an option dropped from a row, is caught.
#[test]
fn drift_is_reported_by_command() {
    let without_status: String = README
        .lines()
        .filter(|l| !l.starts_with("| `proxyctl status`"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = drift(&without_status);
    assert!(
        e.iter()
            .any(|e| e.starts_with("proxyctl status: in --help, missing")),
        "{e:?}"
    );
    let e = drift(&README.replace("[--reload-if-unchanged]", ""));
    assert!(
        e.iter()
            .any(|e| e.contains("proxyctl upgrade: option --reload-if-unchanged missing")),
        "{e:?}"
    );
}
