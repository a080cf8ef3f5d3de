//! The module map of ARCHITECTURE.md, checked: every `crate::...` (and `super::...`)
//! path in a crate's sources is an edge from the file's module to the module it names.
//! In proxyd, `data` and `observe` never reach into `control`, and nothing reaches into
//! `server`; in every crate of the workspace, the modules form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path ("data::proxy", "" for the crate root) -> its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut p = prefix.to_vec();
                match stem {
                    "mod" => {}
                    "lib" | "main" if prefix.is_empty() => {}
                    _ => p.push(stem.to_owned()),
                }
                out.insert(p.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// The paths a use tree names: `a::{b, c::{d, self}}` -> `a::b`, `a::c::d`, `a::c`.
/// Returns them and how many bytes of `s` the tree took.
fn use_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut prefix = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        let skip = s[i..].len() - s[i..].trim_start().len();
        i += skip;
        let len = s[i..].find(|c: char| !ident(c)).unwrap_or(s.len() - i);
        if len > 0 {
            prefix.push(s[i..i + len].to_owned());
            i += len;
        }
        let rest = &s[i..];
        if rest.trim_start().starts_with("::") {
            i += rest.len() - rest.trim_start().len() + 2;
            continue;
        }
        if len == 0 && b.get(i) == Some(&b'{') {
            i += 1;
            let mut out = Vec::new();
            loop {
                let (paths, used) = use_tree(&s[i..]);
                for p in paths {
                    let mut full = prefix.clone();
                    full.extend(p.into_iter().filter(|x| x != "self"));
                    out.push(full);
                }
                i += used;
                let rest = &s[i..];
                i += rest.len() - rest.trim_start().len();
                match b.get(i) {
                    Some(b',') => {
                        i += 1;
                        let rest = &s[i..];
                        i += rest.len() - rest.trim_start().len();
                        if b.get(i) == Some(&b'}') {
                            i += 1;
                            return (out, i);
                        }
                    }
                    Some(b'}') => return (out, i + 1),
                    _ => return (out, i),
                }
            }
        }
        // A call or a macro names a function, not a module (`crate::parse(...)`).
        if matches!(rest.chars().next(), Some('(' | '!')) {
            prefix.pop();
        }
        return (vec![prefix], i);
    }
}

/// The modules that `module`'s file names, by the longest known prefix of each path.
fn edges(module: &str, file: &Path, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let text: String = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//") && l.trim() != "use super::*;")
        .collect::<Vec<_>>()
        .join("\n");
    let mut parent: Vec<String> = module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    parent.pop();
    let mut out = BTreeSet::new();
    for (start, root) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find(start) {
            let before = rest[..i].chars().last();
            rest = &rest[i + start.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                continue; // `$crate::`, `foo::super::`
            }
            // `super::super::x`: one level up per `super::`.
            let mut root = root.clone();
            while let Some(r) = rest.strip_prefix("super::") {
                root.pop();
                rest = r;
            }
            for path in use_tree(rest).0 {
                let mut t = root.clone();
                t.extend(path);
                let hit = (0..=t.len())
                    .rev()
                    .map(|n| t[..n].join("::"))
                    .find(|m| known.contains_key(m));
                if let Some(m) = hit {
                    if m != module && !m.is_empty() {
                        out.insert(m);
                    }
                }
            }
        }
    }
    out
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph(src: &Path) -> Graph {
    let known = modules(src);
    known
        .iter()
        .map(|(m, f)| (m.clone(), edges(m, f, &known)))
        .collect()
}

/// One cycle, as the list of modules on it, if there is any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        g: &Graph,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_owned());
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(m, g, &mut done, &mut Vec::new()))
}

/// Edges that break proxyd's layering.
fn forbidden(g: &Graph) -> Vec<String> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut bad = Vec::new();
    for (from, tos) in g {
        for to in tos {
            let why = if top(to) == "server" {
                "nothing imports server"
            } else if top(to) == "control" && matches!(top(from).as_str(), "data" | "observe") {
                "data and observe never import control"
            } else {
                continue;
            };
            bad.push(format!("{from} -> {to} ({why})"));
        }
    }
    bad
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn proxyd_layers_point_one_way() {
    let g = graph(&crate_src("proxyd"));
    // The parser sees the layout at all (a renamed folder must not make this vacuous).
    assert!(g["data::proxy"].contains("data::state"), "{g:#?}");
    assert!(g["server"].contains("control::reload"), "{g:#?}");
    let bad = forbidden(&g);
    assert!(bad.is_empty(), "forbidden imports:\n{}", bad.join("\n"));
}

#[test]
fn no_module_cycle_in_the_workspace() {
    for krate in ["routes", "certs", "acme", "proxyctl", "proxyd", "inventory"] {
        let g = graph(&crate_src(krate));
        if let Some(cycle) = find_cycle(&g) {
            panic!("{krate}: import cycle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_cycles_and_forbidden_edges() {
    // The layout before issue 14 had both; the checker must say so.
    let g: Graph = [
        (
            "data::state",
            vec!["observe::metrics", "control::store_watch"],
        ),
        ("observe::metrics", vec!["data::state"]),
        ("control::store_watch", vec!["data::state"]),
        ("control::admin", vec!["server"]),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.into_iter().map(str::to_owned).collect()))
    .collect();
    let cycle = find_cycle(&g).expect("a cycle");
    let paths = use_tree("x::{a::{self, B}, b::c, d}, more").0;
    assert_eq!(
        paths,
        [
            vec!["x", "a"],
            vec!["x", "a", "B"],
            vec!["x", "b", "c"],
            vec!["x", "d"]
        ]
    );
    assert_eq!(use_tree("parse(&text)").0, [Vec::<String>::new()]);
    assert!(cycle.contains(&"data::state".to_owned()), "{cycle:?}");
    let bad = forbidden(&g);
    assert_eq!(bad.len(), 2, "{bad:?}");
}

/// Review (issue 14): the checker on a scratch crate with one forbidden import written
/// each way it can be: it must flag every one. `super::super::` was read as a path
/// named `super`, so `use super::super::control::reload;` in `data/x.rs` passed.
#[test]
fn the_checker_sees_every_form_of_a_forbidden_import() {
    let forms = [
        "use crate::control::reload;",
        "use crate::{observe::metrics, control::reload};",
        "use crate::{\n    observe::{metrics},\n    control::{self, reload::Control},\n};",
        "pub use crate::control::reload::Control;",
        "fn f() { crate::control::reload::run(); }",
        "fn f() -> crate::control::reload::Control { todo!() }",
        "use super::super::control::reload;",
        "fn f() { super::super::control::reload::run(); }",
    ];
    for (i, form) in forms.iter().enumerate() {
        let root = std::env::temp_dir().join(format!("layout-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["data", "control", "observe"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (file, text) in [
            (
                "lib.rs",
                "pub mod control;\npub mod data;\npub mod observe;\n",
            ),
            ("control/mod.rs", "pub mod reload;\n"),
            (
                "control/reload.rs",
                "pub struct Control;\npub fn run() {}\n",
            ),
            ("observe/mod.rs", "pub mod metrics;\n"),
            ("observe/metrics.rs", ""),
            ("data/mod.rs", "pub mod x;\n"),
            // `super::` is `data`, `super::super::` the crate root.
            ("data/x.rs", form),
        ] {
            std::fs::write(root.join(file), text).unwrap();
        }
        let g = graph(&root);
        let bad = forbidden(&g);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(
            bad.iter().any(|b| b.starts_with("data::x -> control")),
            "not seen: {form}\n{g:#?}"
        );
    }
}
