//! The shape of the code, checked like behaviour: no two modules of `src/` import each other in
//! a loop (a child importing from its parent `mod.rs` while the parent imports the child counts),
//! the layouts (README, docs/development.md) name every module, and imports come in three groups (std, other crates,
//! this crate) as `rustfmt.toml` says. Imports are read from the source text: `use` trees and
//! inline `crate::`/`super::` paths, test modules left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path inside the crate, e.g. `["upstream", "pool"]`; the crate root is empty.
type ModPath = Vec<String>;

struct Module {
    file: PathBuf,
    /// The source with comments, string literals and `#[cfg(test)]` modules removed.
    code: String,
}

#[test]
fn no_two_modules_import_each_other_in_a_loop() {
    let modules = modules_of(Path::new("src"));
    let graph = import_graph(&modules);
    let loops = loops_in(&graph);
    let described: Vec<String> = loops
        .iter()
        .map(|l| {
            let names: Vec<String> = l.iter().map(|m| file_of(&modules, m)).collect();
            names.join(" <-> ")
        })
        .collect();
    assert!(described.is_empty(), "import loops: {described:#?}");
    // The reader works: the known one-way arrows are seen.
    assert!(graph[&path("api::classify")].contains(&path("api::body")));
    assert!(graph[&path("classify")].contains(&path("upstream")));
    assert!(graph[&path("upstream::pool")].contains(&path("upstream::endpoint")));
}

/// The `## Layout` section of a Markdown file.
fn layout_section(file: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_else(|| panic!("{file} has a Layout section"))
        .to_owned()
}

#[test]
fn the_layouts_name_every_module_of_src() {
    let full = layout_section("docs/development.md");
    let missing: Vec<String> = modules_of(Path::new("src"))
        .values()
        .map(|m| m.file.display().to_string())
        .filter(|file| !full.contains(file.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/development.md's layout: {missing:?}"
    );
    // The README's short list names each folder and top-level file of src/.
    let short = layout_section("README.md");
    let missing: Vec<String> = std::fs::read_dir("src")
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.display().to_string();
            if path.is_dir() {
                format!("`{name}/`")
            } else {
                format!("`{name}`")
            }
        })
        .filter(|name| !short.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the README's layout: {missing:?}"
    );
}

/// `group_imports = "StdExternalCrate"` is nightly-only in rustfmt; this is its check on stable.
#[test]
fn imports_come_in_three_groups_std_then_crates_then_this_crate() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        files.extend(rust_files(Path::new(dir)));
    }
    let mut misplaced = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        if let Err(why) = imports_grouped(&source) {
            misplaced.push(format!("{}: {why}", file.display()));
        }
    }
    assert!(
        misplaced.is_empty(),
        "imports out of their group: {misplaced:#?}"
    );
}

#[test]
fn the_grouping_check_sees_a_mixed_group_and_a_wrong_order() {
    let good = "use std::fmt;\n\nuse serde::Serialize;\nuse tokio::{\n    net::TcpListener,\n};\n\nuse crate::x;\nuse super::y;\n";
    assert_eq!(imports_grouped(good), Ok(()));
    let mixed = "use std::fmt;\nuse serde::Serialize;\n";
    assert!(imports_grouped(mixed).is_err());
    let reversed = "use crate::x;\n\nuse std::fmt;\n";
    assert!(imports_grouped(reversed).is_err());
}

/// Std (0), other crates (1), this crate (2), for one top-level `use`.
fn import_group(statement: &str) -> u8 {
    let path = statement
        .trim_start_matches("pub(crate) ")
        .trim_start_matches("pub ")
        .trim_start_matches("use ")
        .trim_start_matches("::");
    let root = path.split(['{', ':', ';', ' ']).next().unwrap_or("");
    match root {
        "std" | "core" | "alloc" => 0,
        "crate" | "super" | "self" => 2,
        _ => 1,
    }
}

/// Checks the top-level `use` statements of a file: within each run of them (broken only by
/// blank lines) the groups never go back, and a new group starts after a blank line. A child
/// module named without `self::` counts as another crate, as rustfmt counts it.
fn imports_grouped(source: &str) -> Result<(), String> {
    let mut last: Option<(u8, bool)> = None; // (group, a blank line since)
    let mut lines = source.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        // Re-exports (`pub use`) are the module's public face, listed on their own.
        let is_use = line.starts_with("use ");
        if line.trim().is_empty() {
            if let Some((_, blank)) = last.as_mut() {
                *blank = true;
            }
            continue;
        }
        if !is_use {
            last = None;
            continue;
        }
        let mut statement = line.to_owned();
        while !statement.trim_end().ends_with(';') {
            let Some((_, more)) = lines.next() else { break };
            statement.push_str(more);
        }
        let group = import_group(&statement);
        if let Some((before, blank)) = last {
            if group < before {
                return Err(format!(
                    "line {}: `{line}` comes after a later group",
                    number + 1
                ));
            }
            if group != before && !blank {
                return Err(format!(
                    "line {}: `{line}` needs a blank line before it",
                    number + 1
                ));
            }
        }
        last = Some((group, false));
    }
    Ok(())
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let file = entry.unwrap().path();
            if file.is_dir() {
                pending.push(file);
            } else if file.extension().is_some_and(|e| e == "rs") {
                files.push(file);
            }
        }
    }
    files
}

#[test]
fn the_reader_sees_loops_and_resolves_use_trees() {
    let mut modules = BTreeMap::new();
    for (name, code) in [
        ("a", "mod b; use b::{self, Thing as T};"),
        ("a::b", "use super::Other; fn f() { crate::c::go(); }"),
        ("c", "use crate::{a::b::X, d}; // use crate::a::Y;"),
        ("d", ""),
    ] {
        modules.insert(
            path(name),
            Module {
                file: PathBuf::from(name),
                code: strip(code),
            },
        );
    }
    let graph = import_graph(&modules);
    assert_eq!(graph[&path("a")], BTreeSet::from([path("a::b")]));
    assert_eq!(graph[&path("a::b")], BTreeSet::from([path("a"), path("c")]));
    assert_eq!(graph[&path("c")], BTreeSet::from([path("a::b"), path("d")]));
    assert_eq!(loops_in(&graph).len(), 1, "a <-> a::b <-> c");
}

fn path(name: &str) -> ModPath {
    name.split("::").map(str::to_owned).collect()
}

fn file_of(modules: &BTreeMap<ModPath, Module>, m: &ModPath) -> String {
    modules[m].file.display().to_string()
}

/// Every library module under `dir` (the binary's `main.rs` is another crate).
fn modules_of(dir: &Path) -> BTreeMap<ModPath, Module> {
    let mut modules = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let file = entry.unwrap().path();
            if file.is_dir() {
                pending.push(file);
                continue;
            }
            let relative = file.strip_prefix(dir).unwrap();
            if file.extension().is_none_or(|e| e != "rs") || relative == Path::new("main.rs") {
                continue;
            }
            let mut segments: ModPath = relative
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            let code = strip(&std::fs::read_to_string(&file).unwrap());
            modules.insert(segments, Module { file, code });
        }
    }
    modules
}

/// Removes comments, string and char literals, and `#[cfg(test)]` modules.
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if raw_string_hashes(&chars, i).is_some() => {
                let hashes = raw_string_hashes(&chars, i).unwrap_or(0);
                let closing: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                i += hashes + 2;
                while i < chars.len() && !chars[i..].starts_with(&closing) {
                    i += 1;
                }
                i += closing.len();
                out.push_str("\"\"");
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n'), not a lifetime ('a): closed within three characters.
            '\'' if chars.get(i + 2) == Some(&'\'') || chars.get(i + 1) == Some(&'\\') => {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    without_test_modules(&out)
}

/// At a raw string's `r` (`r"`, `r#"`, ...): how many `#` it opens with.
fn raw_string_hashes(chars: &[char], at: usize) -> Option<usize> {
    let starts_word = at == 0 || !(chars[at - 1].is_alphanumeric() || chars[at - 1] == '_');
    let hashes = chars[at + 1..].iter().take_while(|c| **c == '#').count();
    (starts_word && chars.get(at + 1 + hashes) == Some(&'"')).then_some(hashes)
}

fn without_test_modules(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let item_end = rest.find([';', '{']).map_or(rest.len(), |e| at + e);
        if !out[at..item_end].contains("mod ") || out.as_bytes().get(item_end) != Some(&b'{') {
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let mut depth = 0;
        let mut end = item_end;
        for (offset, c) in out[item_end..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = item_end + offset + 1;
                break;
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// Which modules each module imports (itself excluded).
fn import_graph(modules: &BTreeMap<ModPath, Module>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let known: BTreeSet<&ModPath> = modules.keys().collect();
    modules
        .iter()
        .map(|(me, module)| {
            let mut paths = paths_in(&module.code);
            // Inline paths through a child module, `child::item(...)`.
            for child in known
                .iter()
                .filter(|k| k.len() == me.len() + 1 && k.starts_with(me))
            {
                let name = &child[me.len()];
                if has_path_start(&module.code, &format!("{name}::")) {
                    paths.push(vec![name.clone()]);
                }
            }
            let targets = paths
                .into_iter()
                .filter_map(|p| resolve(me, &p, &known))
                .filter(|target| target != me)
                .collect();
            (me.clone(), targets)
        })
        .collect()
}

/// Every path the code names: each leaf of each `use` tree, and inline `crate::`/`super::` paths.
fn paths_in(code: &str) -> Vec<ModPath> {
    let mut paths = Vec::new();
    let mut rest = code;
    let mut other = String::new();
    while let Some(at) = find_word(rest, "use") {
        other.push_str(&rest[..at]);
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        expand_use_tree(&rest[at + 3..end], &mut Vec::new(), &mut paths);
        rest = &rest[(end + 1).min(rest.len())..];
    }
    other.push_str(rest);
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = other[from..].find(anchor).map(|a| from + a) {
            let before = other[..at].chars().next_back();
            let tail = &other[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                paths.push(
                    tail[..len]
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            from = at + len.max(1);
        }
    }
    paths
}

/// Whether `prefix` starts a path somewhere in `code` (not the tail of a longer one).
fn has_path_start(code: &str, prefix: &str) -> bool {
    code.match_indices(prefix).any(|(at, _)| {
        code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
    })
}

/// The position of `word` as a whole word followed by whitespace (a `use` statement).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find(word).map(|a| from + a) {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        let starts = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if starts && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands `a::b::{c, d::{e, f as g}, self}` into `a::b::c`, `a::b::d::e`, ...
fn expand_use_tree(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<ModPath>) {
    let tree = tree.trim().trim_start_matches("::");
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        let leaf: Vec<String> = path
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut full = prefix.clone();
        // `{self, ...}` names the prefix itself.
        if leaf != ["self"] || prefix.is_empty() {
            full.extend(leaf);
        }
        if !full.is_empty() {
            out.push(full);
        }
        return;
    };
    let head: Vec<String> = tree[..open]
        .split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let depth_before = prefix.len();
    prefix.extend(head);
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand_use_tree(&inner[start..i], prefix, out);
                start = i + 1;
            }
            _ => {}
        }
    }
    expand_use_tree(&inner[start..], prefix, out);
    prefix.truncate(depth_before);
}

/// The deepest known module a path from module `me` names, or `None` for other crates.
fn resolve(me: &ModPath, path: &[String], known: &BTreeSet<&ModPath>) -> Option<ModPath> {
    let mut base: ModPath;
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &rest[1..];
        }
        Some("super" | "self") => {
            base = me.clone();
            while let Some(step) = rest.first().map(String::as_str) {
                match step {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A child module of `me` named without `self::` (2018 paths); else another crate.
            let mut child = me.clone();
            child.push(first.to_owned());
            if !known.contains(&child) {
                return None;
            }
            base = me.clone();
        }
        None => return None,
    }
    for segment in rest {
        let mut deeper = base.clone();
        deeper.push(segment.clone());
        if !known.contains(&deeper) {
            break;
        }
        base = deeper;
    }
    Some(base)
}

/// Every set of two or more modules that reach each other (Tarjan's strongly connected
/// components).
fn loops_in(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g ModPath) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let Some((w, _)) = self.graph.get_key_value(w) else {
                    continue;
                };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}
