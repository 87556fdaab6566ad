//! The shape of the code, as ARCHITECTURE.md draws it: the module graph of `src/` (every
//! `crate::` and `super::` path outside test modules) has no import circle, no module imports
//! one of a higher layer, and no command imports another command; no source file is longer
//! than 400 lines (the Inception network excepted) and no function outside tests longer than
//! 80. `cargo test layout` runs these checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first; a module may import its own layer's siblings and anything below,
/// except that the commands never import each other.
const LAYERS: [(&str, &[&str]); 6] = [
    ("entry", &["main", "cli"]),
    ("commands", &["train", "sample", "edit", "eval", "bench", "info"]),
    (
        "model and run files",
        &["diffusion_model", "checkpoint", "draw", "cuda_graph", "shard", "score", "learner", "run_dir", "trace"],
    ),
    ("configuration", &["config"]),
    ("maths and data", &["model", "diffusion", "data", "optim", "ema", "seed"]),
    (
        "support",
        &[
            "error",
            "choice",
            "device",
            "dist",
            "precision",
            "interrupt",
            "fsutil",
            "grid",
            "plot",
            "reverse_pictures",
            "tensorboard",
            "logging",
        ],
    ),
];

type Module = Vec<String>;

/// Every module of `src/` with its source outside `#[cfg(test)]`, comment lines dropped.
fn modules() -> BTreeMap<Module, (PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut m: Module = rel.iter().map(|s| s.to_string_lossy().to_string()).collect();
            if m.last().is_some_and(|l| l == "mod") {
                m.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code: String = text
                .lines()
                .take_while(|l| !l.starts_with("#[cfg(test)]"))
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            out.insert(m, (p, code));
        }
    }
    out
}

/// The paths a source names after `crate::` or `super::`, resolved from module `m`, `use`
/// groups `{a, b::c}` expanded.
fn paths_named(m: &Module, code: &str) -> Vec<Module> {
    fn ident(s: &str) -> (&str, &str) {
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
        (&s[..end], &s[end..])
    }
    /// Paths of `rest` (what follows `base::`), pushed with `base` in front.
    fn walk(base: &Module, mut rest: &str, out: &mut Vec<Module>) {
        let mut path = base.clone();
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let (mut depth, mut start) = (0, 0);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            walk(&path, group[start..i].trim(), out);
                            return;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            walk(&path, group[start..i].trim(), out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            let (id, tail) = ident(rest);
            if id.is_empty() {
                break;
            }
            path.push(id.to_string());
            match tail.strip_prefix("::") {
                Some(t) => rest = t,
                None => break,
            }
        }
        out.push(path);
    }
    let mut out = Vec::new();
    for (kw, base) in [("crate::", Vec::new()), ("super::", m[..m.len().saturating_sub(1)].to_vec())] {
        let mut at = 0;
        while let Some(i) = code[at..].find(kw) {
            let start = at + i;
            at = start + kw.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            walk(&base, &code[at..], &mut out);
        }
    }
    out
}

/// module -> the modules it imports (the longest module prefix of each path named). A
/// module's own parent and children are left out: a folder's `mod.rs` and its files are one
/// unit (the files use the types their `mod.rs` declares them beside); siblings are not.
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules();
    let mut g = BTreeMap::new();
    for (m, (_, code)) in &mods {
        let mut to = BTreeSet::new();
        for p in paths_named(m, code) {
            if let Some(t) = (1..=p.len()).rev().map(|n| p[..n].to_vec()).find(|q| mods.contains_key(q)) {
                let related = t.starts_with(m) || m.starts_with(&t);
                if !related {
                    to.insert(t);
                }
            }
        }
        g.insert(m.clone(), to);
    }
    g
}

fn name(m: &Module) -> String {
    m.join("::")
}

/// The circles of a graph, each as `a -> b -> a`.
fn circles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    // Depth-first search; a back edge closes a circle, reported with its modules.
    fn visit(
        m: &Module,
        g: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        path: &mut Vec<Module>,
        circles: &mut Vec<String>,
    ) {
        state.insert(m.clone(), 1);
        path.push(m.clone());
        for t in &g[m] {
            match state.get(t).copied().unwrap_or(0) {
                0 => visit(t, g, state, path, circles),
                1 => {
                    let from = path.iter().position(|p| p == t).unwrap();
                    let names: Vec<String> = path[from..].iter().chain([t]).map(name).collect();
                    circles.push(names.join(" -> "));
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m.clone(), 2);
    }
    let (mut state, mut found) = (BTreeMap::new(), Vec::new());
    for m in g.keys() {
        if !state.contains_key(m) {
            visit(m, g, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// No circle between files (siblings in a folder included), nor between the top-level
/// modules (a folder counted as one: `generate -> train::epoch_end` and `train -> generate`
/// would close one).
#[test]
fn the_module_graph_has_no_circle() {
    let g = graph();
    let found = circles(&g);
    assert!(found.is_empty(), "import circles between files:\n{}", found.join("\n"));
    let mut top: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, to) in &g {
        let entry = top.entry(m[..1].to_vec()).or_default();
        entry.extend(to.iter().filter(|t| t[0] != m[0]).map(|t| t[..1].to_vec()));
    }
    for to in top.clone().values() {
        for t in to {
            top.entry(t.clone()).or_default();
        }
    }
    let found = circles(&top);
    assert!(found.is_empty(), "import circles between top-level modules:\n{}", found.join("\n"));
    // The parse sees the imports: a few known edges.
    let edge = |a: &str, b: &str| g[&a.split("::").map(String::from).collect::<Module>()].iter().any(|t| name(t) == b);
    assert!(edge("learner::streams", "diffusion::loss") && edge("sample", "checkpoint") && edge("config", "model"));
}

#[test]
fn modules_import_only_their_own_layer_and_below() {
    let layer = |m: &Module| -> usize {
        LAYERS
            .iter()
            .position(|(_, ms)| ms.contains(&m[0].as_str()))
            .unwrap_or_else(|| panic!("module {} is in no layer of tests/integration/layout.rs", name(m)))
    };
    let mut bad = Vec::new();
    for (m, to) in graph() {
        if m[0] == "lib" {
            continue;
        }
        for t in to.iter().filter(|t| t[0] != m[0]) {
            let (a, b) = (layer(&m), layer(t));
            if b < a || (b == a && LAYERS[a].0 == "commands") {
                bad.push(format!("{} ({}) imports {} ({})", name(&m), LAYERS[a].0, name(t), LAYERS[b].0));
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layers:\n{}", bad.join("\n"));
}

#[test]
fn no_file_over_400_lines_and_no_function_over_80() {
    let mut bad = Vec::new();
    for (m, (path, code)) in modules() {
        let text = std::fs::read_to_string(&path).unwrap();
        let all = text.lines().count();
        if all > 400 && name(&m) != "score::inception" {
            bad.push(format!("{}: {all} lines", path.display()));
        }
        let _ = code;
        // Functions are measured as they stand on screen, comments included.
        let lines: Vec<&str> = text.lines().take_while(|l| !l.starts_with("#[cfg(test)]")).collect();
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i];
            let t = l.trim_start();
            let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "pub(super) fn ", "unsafe fn ", "pub unsafe fn "]
                .iter()
                .any(|p| t.starts_with(p));
            if !is_fn || t.ends_with(';') || t.ends_with('}') {
                i += 1;
                continue;
            }
            let indent = l.len() - t.len();
            let close = format!("{}}}", " ".repeat(indent));
            let end = (i + 1..lines.len()).find(|&k| lines[k] == close).unwrap_or(lines.len() - 1);
            if end - i + 1 > 80 {
                bad.push(format!("{}:{}: a function of {} lines", path.display(), i + 1, end - i + 1));
            }
            i = end + 1;
        }
    }
    assert!(bad.is_empty(), "too long:\n{}", bad.join("\n"));
}
