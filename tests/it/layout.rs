//! The source tree's shape: no module imports one that imports it back, between files or
//! between folders, so every concern sits on the ones below it and a newcomer can read the
//! crate bottom-up. Reads `src/` and follows `crate::`, `super::` and `self::` paths (test
//! modules at the end of a file, and comments, are left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path (`["http", "tls"]`) and the file that defines it.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") || p == src.join("main.rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut segs: Vec<String> = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
                segs.pop();
            }
            out.insert(segs, p);
        }
    }
    out
}

/// The code of a file without its comments and its trailing test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(&tree).to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p).into_iter().map(move |tail| match tail.as_str() {
                "self" => prefix.trim_end_matches("::").to_owned(),
                _ => format!("{prefix}{tail}"),
            })
        })
        .collect()
}

/// Every `crate::`, `super::` or `self::` path in a file's code.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    // `use` statements, braces expanded.
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        out.extend(expand(&rest[..end]));
    }
    // Qualified paths anywhere else.
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            from = at + root.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let len = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - at);
            out.push(code[at..at + len].to_owned());
        }
    }
    out
}

/// The module file a path in `module` (a file or a folder's `mod.rs`) refers to.
fn resolve(
    path: &str,
    module: &[String],
    is_dir_module: bool,
    known: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match *segs.first()? {
        "crate" => Vec::new(),
        "self" if is_dir_module => module.to_vec(),
        // `self::` in a file module names its inline modules: the file itself.
        "self" => return Some(module.to_vec()),
        "super" => {
            let mut b = module.to_vec();
            b.pop();
            while segs.get(1) == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        _ => return None,
    };
    let mut found = known.contains_key(&base).then(|| base.clone());
    for s in &segs[1..] {
        base.push((*s).to_owned());
        if known.contains_key(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|x| x == m).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The file and folder graphs of `src/`.
fn graphs(src: &Path) -> [BTreeMap<String, BTreeSet<String>>; 2] {
    let known = modules(src);
    let (mut files, mut folders) = (BTreeMap::new(), BTreeMap::new());
    for (module, file) in &known {
        let is_dir_module = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let name = |m: &[String]| {
            if m.is_empty() {
                "lib".to_owned()
            } else {
                m.join("/")
            }
        };
        let from = name(module);
        let from_top = module.first().cloned().unwrap_or_else(|| "lib".into());
        files.entry(from.clone()).or_insert_with(BTreeSet::new);
        for p in paths(&code(&std::fs::read_to_string(file).unwrap())) {
            let Some(to) = resolve(&p, module, is_dir_module, &known) else {
                continue;
            };
            let to_name = name(&to);
            if to_name != from {
                files.get_mut(&from).unwrap().insert(to_name);
            }
            let to_top = to.first().cloned().unwrap_or_else(|| "lib".into());
            if to_top != from_top {
                folders
                    .entry(from_top.clone())
                    .or_insert_with(BTreeSet::new)
                    .insert(to_top);
            }
        }
    }
    [files, folders]
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let [files, folders] = graphs(&src);
    assert!(
        files.len() > 40 && files.values().map(BTreeSet::len).sum::<usize>() > 80,
        "the scan found too little to judge: {files:?}"
    );
    assert_eq!(cycle(&folders), None, "folders import each other");
    assert_eq!(cycle(&files), None, "files import each other");
}

#[test]
fn the_checker_sees_a_cycle_through_use_trees_and_super() {
    let dir = std::env::temp_dir().join(format!("rouse-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(
        dir.join("a/mod.rs"),
        "pub mod x;\nuse self::x::X;\n// use crate::b::B; (a comment)\n",
    )
    .unwrap();
    // x imports its parent back through a use tree; b reaches a, and a does not reach b.
    std::fs::write(dir.join("a/x.rs"), "use super::{Y, z::Z};\npub struct X;\n").unwrap();
    std::fs::write(dir.join("b.rs"), "fn f() { crate::a::x::X; }\n").unwrap();
    let [files, folders] = graphs(&dir);
    assert_eq!(cycle(&folders), None, "{folders:?}");
    assert_eq!(
        cycle(&files),
        Some(vec!["a".into(), "a/x".into(), "a".into()]),
        "{files:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
