//! The crate's modules form layers: no module imports from a module that imports it back,
//! directly or through others, at any depth (top-level modules and folders, then the files
//! inside each folder). A shared type lives in the lowest module that needs it, never in the
//! mechanism that happened to use it first.
//!
//! The check reads `src/` as text: each `crate::` and `super::` path is
//! resolved to the longest module it names, or through the crate root's `pub use` lines; test
//! modules at the end of a file are not counted, and neither are a module's own ancestors or
//! descendants (a folder's `mod.rs` and its files are one unit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

fn module_of(relative: &Path) -> Option<Module> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?.strip_suffix(".rs")?.to_owned();
    if parts.first().map(String::as_str) == Some("bin") {
        return None;
    }
    match file.as_str() {
        "mod" => {}
        "lib" | "main" if parts.is_empty() => return None,
        _ => parts.push(file),
    }
    Some(parts)
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(Module, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if let Some(module) = module_of(path.strip_prefix(root).unwrap()) {
            out.push((module, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The code without line comments and without the test module that closes a file.
fn code(text: &str) -> String {
    let end = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(all(test, not(loom)))]\nmod tests",
    ]
    .iter()
    .filter_map(|marker| text.find(marker))
    .min()
    .unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers of a path `a::b::c` at the start of `s`, and how many bytes they and their
/// `::` separators take (a trailing `::` before a group included).
fn ident_path(s: &str) -> (Vec<String>, usize) {
    let (mut path, mut used) = (Vec::new(), 0);
    loop {
        let rest = &s[used..];
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        path.push(rest[..len].to_owned());
        used += len;
        if !s[used..].starts_with("::") {
            break;
        }
        used += 2;
    }
    (path, used)
}

/// Every path that follows `prefix` (`crate::` or `super::`), groups `{a, b::c}` expanded to
/// their first level.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let (path, used) = ident_path(rest);
        if let Some(group) = rest[used..].strip_prefix('{') {
            let (mut depth, mut item) = (1, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    let mut full = path.clone();
                    full.extend(ident_path(item.trim()).0);
                    out.push(full);
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            out.push(path);
        }
    }
    out
}

fn is_ancestor_or_same(a: &Module, b: &Module) -> bool {
    b.len() >= a.len() && b[..a.len()] == a[..]
}

#[test]
fn modules_form_layers_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();

    // Re-exports, at the crate root and in each folder's `mod.rs`: `pub use child::{Name, ..};`
    // makes `folder::Name` stand for the child module that defines it.
    let mut reexports: BTreeMap<(Module, String), Module> = BTreeMap::new();
    let roots = files
        .iter()
        .map(|(m, text)| (m.clone(), text.clone()))
        .filter(|(m, _)| !m.is_empty() && src.join(m.join("/")).is_dir())
        .chain([(
            Vec::new(),
            std::fs::read_to_string(src.join("lib.rs")).unwrap(),
        )]);
    for (folder, text) in roots {
        for statement in code(&text).split(';') {
            let statement = statement.trim();
            let Some(rest) = ["pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|p| statement.strip_prefix(p))
            else {
                continue;
            };
            for path in paths_after(&format!("crate::{rest}"), "crate::") {
                let Some((name, within)) = path.split_last() else {
                    continue;
                };
                let mut target = folder.clone();
                target.extend(within.iter().cloned());
                if modules.contains(&target) && target != folder {
                    reexports.insert((folder.clone(), name.clone()), target);
                }
            }
        }
    }
    let resolve = |path: &[String]| -> Option<Module> {
        let n = (0..=path.len())
            .rev()
            .find(|&n| n == 0 || modules.contains(&path[..n]))?;
        let module = path[..n].to_vec();
        match path
            .get(n)
            .and_then(|name| reexports.get(&(module.clone(), name.clone())))
        {
            Some(target) => Some(target.clone()),
            None if n == 0 => None,
            None => Some(module),
        }
    };

    let mut edges: BTreeSet<(Module, Module)> = BTreeSet::new();
    for (module, text) in &files {
        let code = code(text);
        let mut targets: Vec<Module> = paths_after(&code, "crate::")
            .iter()
            .filter_map(|p| resolve(p))
            .collect();
        let parent = &module[..module.len() - 1];
        targets.extend(paths_after(&code, "super::").iter().filter_map(|p| {
            let mut full = parent.to_vec();
            full.extend(p.iter().cloned());
            resolve(&full)
        }));
        for target in targets {
            if !is_ancestor_or_same(module, &target) && !is_ancestor_or_same(&target, module) {
                edges.insert((module.clone(), target));
            }
        }
    }
    assert!(
        edges
            .iter()
            .any(|(a, _)| a == &vec!["shard".to_owned(), "worker".to_owned()]),
        "the reader found no imports at all: {edges:?}"
    );

    // At each depth, modules below it count as their ancestor at that depth.
    let mut cycles = BTreeSet::new();
    let deepest = modules.iter().map(Vec::len).max().unwrap();
    for depth in 1..=deepest {
        let cut = |m: &Module| m[..m.len().min(depth)].to_vec();
        let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (a, b) in &edges {
            let (a, b) = (cut(a), cut(b));
            if !is_ancestor_or_same(&a, &b) && !is_ancestor_or_same(&b, &a) {
                graph.entry(a).or_default().insert(b);
            }
        }
        for start in graph.keys() {
            // Depth-first search for a path back to `start`.
            let mut stack = vec![(start.clone(), vec![start.join("::")])];
            let mut seen = BTreeSet::new();
            while let Some((node, trail)) = stack.pop() {
                for next in graph.get(&node).into_iter().flatten() {
                    let mut trail = trail.clone();
                    trail.push(next.join("::"));
                    if next == start {
                        cycles.insert(trail.join(" -> "));
                    } else if seen.insert(next.clone()) {
                        stack.push((next.clone(), trail));
                    }
                }
            }
        }
    }
    let cycles: Vec<_> = cycles.into_iter().collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
