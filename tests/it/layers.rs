//! The layering rule of the crate docs, checked on the source: every
//! `crate::`, `super::` and `self::` path outside test modules is an arrow
//! to the module it names, and no arrow may point up a layer or close a
//! loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the top, each the folders (top-level modules) it holds. A
/// module's layer is its folder's: `src/ops/gc/plan.rs` is an operation
/// because it lives under `ops/`, whatever it is called.
const LAYERS: &[(&str, &[&str])] = &[
    ("interface", &["main", "cli"]),
    ("operations", &["ops"]),
    (
        "formats and protocols",
        &["archive", "journal", "remote", "sample", "trust"],
    ),
    ("storage", &["db", "store"]),
    ("model", &["model", "process"]),
];

/// `lib.rs` only declares the folders and re-exports: it is the crate's
/// front door, above every layer.
const ROOT: &str = "lib";

fn layer_of(module: &str) -> Option<usize> {
    let folder = module.split("::").next().unwrap_or(module);
    LAYERS
        .iter()
        .position(|(_, folders)| folders.contains(&folder))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/archive/mod.rs` → `archive`, `src/db/gc.rs` → `db::gc`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The source without line comments and without `#[cfg(test)] mod … { … }`.
fn code_of(text: &str) -> String {
    let uncommented: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = uncommented.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let head = after.trim_start();
        let is_mod = head.starts_with("mod ") || head.starts_with("pub(crate) mod ");
        match (is_mod, after.find('{')) {
            (true, Some(open)) => {
                let mut depth = 0;
                let mut end = after.len();
                for (i, c) in after[open..].char_indices() {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                rest = &after[end..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Every path starting at `crate`, `super` or `self`, as (anchor, segments);
/// a `{a, b::c}` group yields one path per item. A `use` of a bare path
/// (`pub use lease::Lease` in a `mod.rs`) counts as starting at `self`.
fn paths(code: &str) -> Vec<(&str, Vec<String>)> {
    let mut found = Vec::new();
    for (anchor, pattern) in [
        ("crate", "crate::"),
        ("super", "super::"),
        ("self", "self::"),
        ("self", "use "),
    ] {
        let mut from = 0;
        while let Some(at) = code[from..].find(pattern) {
            let start = from + at;
            from = start + pattern.len();
            let before = code[..start].chars().next_back();
            if pattern == "use "
                && ["crate", "super", "self"]
                    .iter()
                    .any(|a| code[from..].starts_with(a))
            {
                continue;
            }
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut segs = Vec::new();
            let mut pos = from;
            loop {
                let n = ident_len(&code[pos..]);
                if n == 0 {
                    break;
                }
                segs.push(code[pos..pos + n].to_string());
                pos += n;
                if !code[pos..].starts_with("::") {
                    break;
                }
                pos += 2;
            }
            if code[pos..].starts_with('{') {
                let close = code[pos..].find('}').map_or(code.len(), |i| pos + i);
                for item in code[pos + 1..close].split(',') {
                    let item = item.trim();
                    let mut full = segs.clone();
                    for seg in item.split("::") {
                        let n = ident_len(seg);
                        if n == 0 || &seg[..n] == "self" {
                            break;
                        }
                        full.push(seg[..n].to_string());
                    }
                    found.push((anchor, full));
                }
            } else {
                found.push((anchor, segs));
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .into_iter()
        .map(|f| (module_of(&src, &f), f))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let parts: Vec<String> = match module.as_str() {
            "lib" | "main" => Vec::new(),
            m => m.split("::").map(String::from).collect(),
        };
        let mut to = BTreeSet::new();
        for (anchor, segs) in paths(&code) {
            let base: Vec<String> = match anchor {
                "crate" => Vec::new(),
                "super" => parts[..parts.len().saturating_sub(1)].to_vec(),
                _ => parts.clone(),
            };
            let target = (1..=segs.len()).rev().find_map(|k| {
                let candidate = [base.as_slice(), &segs[..k]].concat().join("::");
                modules.contains_key(&candidate).then_some(candidate)
            });
            if let Some(target) = target.filter(|t| t != module) {
                to.insert(target);
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

/// The first loop found, as the modules along it.
fn find_loop(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

#[test]
fn every_module_has_a_layer_and_no_arrow_points_up() {
    let edges = graph();
    assert!(
        edges.contains_key("journal::recovery"),
        "{:?}",
        edges.keys()
    );
    let mut problems = Vec::new();
    for (from, targets) in &edges {
        if from == ROOT {
            continue;
        }
        let Some(lf) = layer_of(from) else {
            problems.push(format!("{from} has no layer"));
            continue;
        };
        for to in targets {
            if layer_of(to).is_some_and(|lt| lt < lf) {
                problems.push(format!(
                    "{from} ({}) imports {to} ({})",
                    LAYERS[lf].0,
                    LAYERS[layer_of(to).unwrap()].0
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_module_graph_has_no_import_loop() {
    let edges = graph();
    assert!(
        edges["archive::check"].contains("archive::streamed"),
        "the graph sees `super::` paths"
    );
    assert!(
        edges["journal::recovery"].contains("db"),
        "the graph sees `crate::` paths"
    );
    assert_eq!(find_loop(&edges), None);
}

/// `src/` holds `lib.rs`, `main.rs` and the layers' folders, each maybe with
/// its module file beside it (`sample.rs` for `sample/`), and nothing else:
/// a new file has to choose its layer by choosing its folder.
#[test]
fn the_source_root_holds_only_the_layer_folders() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let folders: Vec<&str> = LAYERS.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let mut stray = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".rs");
        let known = match stem {
            Some(stem) => {
                ["lib", "main"].contains(&stem)
                    || (folders.contains(&stem) && src.join(stem).is_dir())
            }
            None => path.is_dir() && folders.contains(&name.as_str()),
        };
        if !known {
            stray.push(name);
        }
    }
    assert!(stray.is_empty(), "not in a layer's folder: {stray:?}");
    for folder in folders.iter().filter(|f| **f != "main") {
        assert!(src.join(folder).is_dir(), "{folder}/ is listed but absent");
    }
}

/// Modules import from the module that defines a thing, never through the
/// names `lib.rs` re-exports (`crate::Registry`): such a path hides the
/// arrow from the graph above and would let any layer reach any other.
#[test]
fn no_module_imports_through_the_root_re_exports() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == ROOT {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for (anchor, segs) in paths(&code) {
            let first = segs.first().map(String::as_str).unwrap_or("");
            if anchor == "crate" && !modules.contains(first) {
                problems.push(format!("{module} uses crate::{}", segs.join("::")));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
