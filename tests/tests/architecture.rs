//! The architecture as a test: the `use crate::...` edges between the modules of
//! `lb-userspace/src` must be ones that the dependency table in docs/ARCHITECTURE.md allows, no
//! two modules may import each other round a circle, and no function in the proxy or the
//! providers may grow past 100 lines.
//!
//! Units are the top-level modules of the crate, and the rooms of `proxy` (`proxy::http1`,
//! `proxy::upstream`, ...): an edge from a room to something outside `proxy` is checked
//! against the `proxy` row. Items of the crate root (`lib.rs`: the clocks, `FastMap`) belong
//! to no module and are free to use. Test code (`tests.rs` files and `#[cfg(test)] mod tests`)
//! is left out: a test may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

#[test]
fn every_module_edge_is_allowed_by_the_documented_table() {
    let allowed = documented_table();
    let edges = module_edges(&source_root());
    let mut forbidden = Vec::new();
    for ((from, to), places) in &edges {
        if !edge_allowed(&allowed, from, to) {
            forbidden.push(format!("{from} -> {to} (at {})", places.join(", ")));
        }
    }
    assert!(
        forbidden.is_empty(),
        "imports that docs/ARCHITECTURE.md's dependency table does not allow:\n  {}\n\
         Either remove the import, or change the design and its table together.",
        forbidden.join("\n  ")
    );
    // The table names every module that exists, so a new module cannot slip past it.
    let units: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let missing: Vec<&&String> = units.iter().filter(|u| !allowed.contains_key(u.as_str())).collect();
    assert!(missing.is_empty(), "modules missing from the dependency table: {missing:?}");
}

#[test]
fn no_import_circle_between_modules() {
    let edges = module_edges(&source_root());
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().insert(to);
    }
    if let Some(circle) = find_circle(&graph) {
        let places: Vec<String> = circle
            .windows(2)
            .map(|pair| {
                let key = (pair[0].to_owned(), pair[1].to_owned());
                format!("{} -> {} (at {})", pair[0], pair[1], edges[&key][0])
            })
            .collect();
        panic!("import circle: {}\n  {}", circle.join(" -> "), places.join("\n  "));
    }
}

#[test]
fn no_function_in_the_proxy_or_the_providers_runs_past_100_lines() {
    let root = source_root();
    let mut long = Vec::new();
    for dir in ["proxy", "provider"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (name, line, length) in functions(&text) {
                if length > 100 {
                    long.push(format!("{}:{line} {name} ({length} lines)", relative(&root, &file)));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over 100 lines (split them into named steps):\n  {}",
        long.join("\n  ")
    );
}

/// The checker itself: edges found in `use` trees, inline paths and `super::` paths, and a
/// forbidden edge or a circle reported (so the tests above cannot pass by seeing nothing).
#[test]
fn the_checker_sees_use_trees_inline_paths_and_circles() {
    let text = "use crate::{config::Config, proxy::{body::{self, ProxyBody}, route}};\n\
                use super::{http1::server::Handler, upstream as up};\n\
                fn f() { crate::tls::shared(); super::super::metrics::x(); let _ = crate::now_ms(); }\n\
                #[cfg(test)]\nmod tests { use crate::cli::Cli; }\n";
    let module = ["proxy", "pipeline"].map(String::from).to_vec();
    let found: BTreeSet<String> = referenced_units(&module, text).into_iter().collect();
    let expected: BTreeSet<String> = [
        "config",
        "proxy::body",
        "proxy::route",
        "proxy::http1",
        "proxy::upstream",
        "tls",
        "metrics",
        "now_ms",
    ]
    .map(String::from)
    .into();
    assert_eq!(found, expected);

    let table =
        parse_table("| module | may use |\n| --- | --- |\n| `a` | `b` |\n| `b` | — |\n| `proxy` | `a` |\n");
    assert!(edge_allowed(&table, "a", "b"));
    assert!(!edge_allowed(&table, "b", "a"), "an edge the table does not list is refused");
    assert!(edge_allowed(&table, "proxy::x", "a"), "a room's edge out of proxy is proxy's");

    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    graph.entry("a").or_default().insert("b");
    graph.entry("b").or_default().insert("c");
    assert_eq!(find_circle(&graph), None);
    graph.entry("c").or_default().insert("a");
    assert_eq!(find_circle(&graph).map(|c| c.len()), Some(4), "a -> b -> c -> a");

    let lines: Vec<String> = std::iter::once("fn long() {".to_owned())
        .chain((0..100).map(|i| format!("    let _x{i} = {i};")))
        .chain([
            "}".to_owned(),
            "    pub async fn short(&self) -> u8 {".into(),
            "        1".into(),
            "    }".into(),
        ])
        .collect();
    let found = functions(&lines.join("\n"));
    assert_eq!(found, vec![("long".to_owned(), 1, 102), ("short".to_owned(), 103, 3)]);
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn source_root() -> PathBuf {
    workspace_root().join("lb-userspace/src")
}

fn relative(root: &Path, file: &Path) -> String {
    file.strip_prefix(root).unwrap_or(file).display().to_string()
}

/// `module -> modules it may use`, read from the table after the
/// `<!-- dependency-table -->` marker in docs/ARCHITECTURE.md.
fn documented_table() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/ARCHITECTURE.md")).unwrap();
    let start =
        doc.find("<!-- dependency-table -->").expect("docs/ARCHITECTURE.md has the dependency table marker");
    let table = parse_table(&doc[start..]);
    assert!(table.len() > 5, "the dependency table parsed to {table:?}");
    table
}

/// The first Markdown table in `text`: the first column names a module, the second lists
/// the modules it may use (code spans; anything else, such as a dash, means none).
fn parse_table(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let code_spans =
        |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    text.lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let module = code_spans(cells.get(1)?).into_iter().next()?;
            Some((module, code_spans(cells.get(2)?).into_iter().collect()))
        })
        .collect()
}

/// Whether `from` may use `to`. A room of `proxy` using something outside `proxy` is
/// checked against the `proxy` row.
fn edge_allowed(table: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let row = |module: &str| table.get(module).is_some_and(|uses| uses.contains(to));
    if from.starts_with("proxy::") && !to.starts_with("proxy::") {
        return to == "proxy" || row("proxy");
    }
    if !from.starts_with("proxy::") && to.starts_with("proxy::") {
        return table.get(from).is_some_and(|uses| uses.contains("proxy"));
    }
    row(from)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The module path of a source file: `proxy/http1/mod.rs` -> `[proxy, http1]`.
fn module_path(root: &Path, file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .strip_prefix(root)
        .unwrap()
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The unit a module path belongs to: its top-level module, or its room within `proxy` (a
/// path into `proxy` that names no room, such as a re-export, is `proxy` itself).
fn unit_of(path: &[String]) -> Option<String> {
    match path {
        [] => None,
        [top, room, ..] if top == "proxy" && proxy_rooms().contains(room) => Some(format!("proxy::{room}")),
        [top, ..] => Some(top.clone()),
    }
}

/// The rooms of `proxy`: its submodules, as files and folders.
fn proxy_rooms() -> &'static BTreeSet<String> {
    static ROOMS: std::sync::OnceLock<BTreeSet<String>> = std::sync::OnceLock::new();
    ROOMS.get_or_init(|| {
        std::fs::read_dir(source_root().join("proxy"))
            .unwrap()
            .flatten()
            .map(|entry| entry.path().with_extension("").file_name().unwrap().to_string_lossy().into_owned())
            .filter(|name| name != "mod")
            .collect()
    })
}

/// Every `(from unit, to unit)` edge in the crate with the files it appears in.
fn module_edges(root: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let root_items = root_items(root);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in rust_files(root) {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let module = module_path(root, &file);
        let Some(from) = unit_of(&module) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for to in referenced_units(&module, &text) {
            if to != from && !root_items.contains(&to) {
                let places = edges.entry((from.clone(), to)).or_default();
                let place = relative(root, &file);
                if !places.contains(&place) {
                    places.push(place);
                }
            }
        }
    }
    edges
}

/// Names defined in the crate root (`lib.rs`) other than its modules.
fn root_items(root: &Path) -> BTreeSet<String> {
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    lib.lines()
        .filter(|l| !l.trim_start().starts_with("pub mod") && !l.trim_start().starts_with("mod "))
        .filter_map(|l| {
            let rest = l.split_once(" fn ").or_else(|| l.split_once(" type "))?.1;
            Some(rest.split(|c: char| !c.is_alphanumeric() && c != '_').next()?.to_owned())
        })
        .collect()
}

/// The units that the code of module `module` refers to through `crate::`, `super::` and
/// `self::` paths (in `use` trees and inline), test modules left out.
fn referenced_units(module: &[String], text: &str) -> Vec<String> {
    let code = strip_comments(&without_test_module(text));
    let mut units = Vec::new();
    let mut add = |path: Vec<String>| {
        if let Some(unit) = unit_of(&path) {
            units.push(unit);
        }
    };
    // `use` declarations, whose trees may nest braces.
    let mut rest = code.as_str();
    while let Some(at) = find_keyword(rest, "use ") {
        let tail = &rest[at + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        for path in expand_use_tree(tail[..end].trim()) {
            if let Some(absolute) = resolve(module, &path) {
                add(absolute);
            }
        }
        rest = &tail[end..];
    }
    // Inline paths: `crate::a::b`, `super::a`, `super::super::a`.
    let code_without_uses = remove_use_declarations(&code);
    for start in path_starts(&code_without_uses) {
        let path: Vec<String> = code_without_uses[start..]
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("")
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(absolute) = resolve(module, &path) {
            add(absolute);
        }
    }
    units.sort();
    units.dedup();
    units
}

/// Where `crate::` or `super::` paths begin in `code` (not inside a longer identifier).
fn path_starts(code: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    for keyword in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(keyword) {
            let start = from + at;
            let before = code[..start].chars().next_back();
            let continues = before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if !continues {
                starts.push(start);
            }
            from = start + keyword.len();
        }
    }
    starts
}

/// An absolute module path for a path written in `module`: `crate::a::b` is `[a, b]`,
/// `super::x` is relative to the parent module, `self::x` to `module`. Other paths (std,
/// external crates) are `None`.
fn resolve(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let path: Vec<String> = path.iter().filter(|s| *s != "*").cloned().collect();
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "crate" => Some(rest.iter().filter(|s| *s != "self").cloned().collect()),
        "self" => Some(module.iter().chain(rest).filter(|s| *s != "self").cloned().collect()),
        "super" => {
            let mut base = module.to_vec();
            base.pop()?;
            let mut rest = rest;
            while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
                base.pop()?;
                rest = tail;
            }
            Some(base.into_iter().chain(rest.iter().cloned()).filter(|s| s != "self").collect())
        }
        _ => None,
    }
}

/// The paths a `use` tree names: `crate::{a::{b, c as d}, e}` -> `crate::a::b`,
/// `crate::a::c`, `crate::e`.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        for item in split_top_level(tree) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if let Some(open) = item.find('{') {
                let head: Vec<String> = item[..open]
                    .split("::")
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().to_owned())
                    .collect();
                let inner = &item[open + 1..item.rfind('}').unwrap_or(item.len())];
                let prefix: Vec<String> = prefix.iter().cloned().chain(head).collect();
                expand(&prefix, inner, out);
            } else {
                let name = item.split(" as ").next().unwrap_or(item);
                let path = prefix.iter().cloned().chain(name.split("::").map(|s| s.trim().to_owned()));
                out.push(path.filter(|s| !s.is_empty()).collect());
            }
        }
    }
    let mut out = Vec::new();
    expand(&[], tree, &mut out);
    out
}

fn split_top_level(tree: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0i32, 0, Vec::new());
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    items
}

/// The position of `keyword` at the start of a line's code (`use`, `pub use`, `pub(crate) use`).
fn find_keyword(text: &str, keyword: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let visibility_end = if trimmed.starts_with("pub(") {
            trimmed.find(") ").map(|i| i + 2)
        } else if trimmed.starts_with("pub ") {
            Some(4)
        } else {
            Some(0)
        };
        if let Some(v) = visibility_end
            && trimmed[v..].starts_with(keyword)
        {
            return Some(offset + (line.len() - trimmed.len()) + v);
        }
        offset += line.len();
    }
    None
}

fn remove_use_declarations(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = find_keyword(rest, "use ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        rest = &tail[tail.find(';').map_or(tail.len(), |e| e + 1)..];
    }
    out.push_str(rest);
    out
}

/// The text before the file's `#[cfg(test)] mod tests` (by convention the last item).
fn without_test_module(text: &str) -> String {
    let mut kept = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        kept.push(line);
    }
    kept.join("\n")
}

/// Line comments and doc comments removed (intra-doc links name paths that are not imports);
/// string literals are left, which is harmless for the paths we look for.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A circle in `graph`, as the list of its nodes with the first repeated at the end.
fn find_circle<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut circle = stack[at..].to_vec();
            circle.push(node);
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// `(name, first line, length in lines)` of every function in rustfmt-formatted `text`: a
/// function runs from its `fn` line to the closing brace at the same indentation.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let mut words = code.split_whitespace().peekable();
        let mut is_fn = false;
        for word in words.by_ref() {
            match word {
                "pub" | "async" | "unsafe" | "const" | "extern" => {}
                w if w.starts_with("pub(") => {}
                "fn" => {
                    is_fn = true;
                    break;
                }
                _ => break,
            }
        }
        if !is_fn || code.ends_with(';') {
            continue;
        }
        let Some(name) = words.next().and_then(|w| w.split(['(', '<']).next()) else { continue };
        if code.ends_with('}') {
            found.push((name.to_owned(), i + 1, 1));
            continue;
        }
        let closing = format!("{indent}}}");
        let Some(end) = lines[i..].iter().position(|l| *l == closing) else { continue };
        found.push((name.to_owned(), i + 1, end + 1));
    }
    found
}
