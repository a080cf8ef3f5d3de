//! README.md's flag table, checked against the flags `proxyd --help` prints (clap's
//! `Command` built from `cli::Args`, the same one `--help` renders): every flag shown by
//! `--help` has a row and every row names a flag of `--help`; a row's short flag, whether
//! it takes a value, and its stated default match clap's. `--help`/`--version` (clap's
//! own) and hidden (tests-only) flags are left out.
//!
//! The table's shape: one flag per row, `| `--flag VALUE` | default | meaning |`. The
//! default cell is either a list of backticked values (`` `0.0.0.0:443`, `[::]:443` ``),
//! which must be clap's default values in order, or prose (`off`, `stderr`, "the servers of
//! `/etc/resolv.conf`") for a flag without a fixed default, or empty.

use std::collections::BTreeMap;

use clap::CommandFactory;

const README: &str = include_str!("../../../README.md");
const HEADER: &str = "| flag | default | meaning |";

/// Flags whose clap default is computed on the machine running the daemon; the README
/// states in prose what it is computed from.
const MACHINE_DEFAULTS: [(&str, &str); 1] = [("--threads", "cores")];

#[derive(Debug)]
struct Row {
    line: usize,
    short: Option<char>,
    takes_value: bool,
    default: String,
}

/// The cells of a markdown table row, `\|` kept as a literal `|`.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// The backticked parts of a cell, and whether the cell is nothing else (separated by
/// commas and spaces).
fn backticked(cell: &str) -> (Vec<String>, bool) {
    let parts: Vec<&str> = cell.split('`').collect();
    let code = parts
        .iter()
        .skip(1)
        .step_by(2)
        .map(|s| s.to_string())
        .collect();
    let only = parts.len() % 2 == 1
        && parts
            .iter()
            .step_by(2)
            .all(|s| s.chars().all(|c| c == ',' || c.is_whitespace()));
    (code, only)
}

/// The rows of README's flag table, by long flag; every malformed row is an error.
fn readme_table(readme: &str) -> (BTreeMap<String, Row>, Vec<String>) {
    let mut rows = BTreeMap::new();
    let mut errors = Vec::new();
    let mut lines = readme.lines().enumerate();
    let Some((start, _)) = lines.by_ref().find(|(_, l)| l.trim() == HEADER) else {
        return (rows, vec![format!("README.md: no table headed `{HEADER}`")]);
    };
    lines.next(); // |---|---|---|
    for (i, line) in lines {
        if !line.trim_start().starts_with('|') {
            break;
        }
        let n = i + 1;
        let c = cells(line);
        if c.len() != 3 {
            errors.push(format!("README.md:{n}: {} cells, expected 3", c.len()));
            continue;
        }
        let (names, _) = backticked(&c[0]);
        let mut long = None;
        let mut short = None;
        let mut takes_value = false;
        for name in &names {
            let mut words = name.split_whitespace();
            let flag = words.next().unwrap_or("");
            if let Some(l) = flag.strip_prefix("--") {
                if long.is_some() {
                    errors.push(format!("README.md:{n}: more than one long flag in a row"));
                }
                long = Some(format!("--{l}"));
                takes_value = words.next().is_some();
            } else if let Some(s) = flag.strip_prefix('-').filter(|s| s.chars().count() == 1) {
                short = s.chars().next();
            } else {
                errors.push(format!("README.md:{n}: `{name}` is not a flag"));
            }
        }
        let Some(long) = long else {
            errors.push(format!("README.md:{n}: no long flag in `{}`", c[0]));
            continue;
        };
        let row = Row {
            line: n,
            short,
            takes_value,
            default: c[1].clone(),
        };
        if let Some(old) = rows.insert(long.clone(), row) {
            errors.push(format!(
                "README.md:{n}: {long} already has a row (line {})",
                old.line
            ));
        }
    }
    if rows.is_empty() && errors.is_empty() {
        errors.push(format!("README.md:{}: the flag table is empty", start + 1));
    }
    (rows, errors)
}

/// Every difference between `--help`'s flags and README's table, one line each.
fn drift(readme: &str) -> Vec<String> {
    let (mut rows, mut errors) = readme_table(readme);
    let cmd = proxyd::cli::Args::command();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || id == "help" || id == "version" {
            continue;
        }
        let Some(long) = arg.get_long().map(|l| format!("--{l}")) else {
            errors.push(format!("{id}: a flag without a long name"));
            continue;
        };
        let Some(row) = rows.remove(&long) else {
            errors.push(format!(
                "{long}: in `proxyd --help`, missing from README.md"
            ));
            continue;
        };
        let at = format!("README.md:{}: {long}", row.line);
        if row.short != arg.get_short() {
            errors.push(format!(
                "{at}: short flag {:?} in README.md, {:?} in --help",
                row.short,
                arg.get_short()
            ));
        }
        let takes_value = arg.get_action().takes_values();
        if row.takes_value != takes_value {
            errors.push(format!(
                "{at}: README.md says it {} a value, --help says it {}",
                if row.takes_value { "takes" } else { "takes no" },
                if takes_value { "does" } else { "does not" },
            ));
        }
        let defaults: Vec<String> = if takes_value {
            arg.get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect()
        } else {
            Vec::new() // a switch's "false"
        };
        let (stated, only_code) = backticked(&row.default);
        if let Some((_, prose)) = MACHINE_DEFAULTS.iter().find(|(f, _)| *f == long) {
            if row.default != *prose {
                errors.push(format!(
                    "{at}: default `{}` in README.md, expected \"{prose}\" (computed at start)",
                    row.default
                ));
            }
        } else if !defaults.is_empty() {
            if !only_code || stated != defaults {
                errors.push(format!(
                    "{at}: default \"{}\" in README.md, {defaults:?} in --help",
                    row.default
                ));
            }
        } else if only_code && !stated.is_empty() {
            errors.push(format!(
                "{at}: README.md states the default {stated:?}, --help has none \
                 (write prose, e.g. \"the servers of `/etc/resolv.conf`\", for a computed one)"
            ));
        }
    }
    for (long, row) in rows {
        errors.push(format!(
            "README.md:{}: {long}: not a flag of `proxyd --help`",
            row.line
        ));
    }
    errors
}

#[test]
fn readme_flag_table_matches_help() {
    let errors = drift(README);
    assert!(
        errors.is_empty(),
        "README.md's flag table and `proxyd --help` differ:\n{}",
        errors.join("\n")
    );
}

/// The checker itself: a table that drifts is caught, each way.
#[test]
fn drift_is_reported_by_flag() {
    let with = |f: &dyn Fn(&str) -> String| drift(&f(README));
    // A row removed.
    let e = with(&|r| {
        r.lines()
            .filter(|l| !l.starts_with("| `--routes "))
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert!(
        e.iter()
            .any(|e| e.starts_with("--routes: in `proxyd --help`, missing")),
        "{e:?}"
    );
    // A default changed.
    let e = with(&|r| {
        r.replace(
            "| `--grace-period SECONDS` | `30` |",
            "| `--grace-period SECONDS` | `31` |",
        )
    });
    assert!(
        e.iter().any(|e| e.contains("--grace-period: default")),
        "{e:?}"
    );
    // A flag that does not exist.
    let e = with(&|r| {
        r.replace(
            "| `--threads N` |",
            "| `--no-such-flag` | | nothing |\n| `--threads N` |",
        )
    });
    assert!(
        e.iter().any(|e| e.contains("--no-such-flag: not a flag")),
        "{e:?}"
    );
}

/// `--check`'s help names everything `--check` validates (config.rs: the flags through
/// `Config::from_args`, then the routes file, then `check_store`).
#[test]
fn check_help_names_what_it_validates() {
    let cmd = proxyd::cli::Args::command();
    let check = cmd.get_arguments().find(|a| a.get_id() == "check").unwrap();
    let help = check.get_help().unwrap().to_string();
    for what in ["flags", "routes file", "certificate store"] {
        assert!(
            help.contains(what),
            "--check's help omits the {what}: {help}"
        );
    }
}
