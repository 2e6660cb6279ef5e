//! Dependencies between the top-level modules of `src/` point down only:
//! no module reaches, through any chain of `crate::` paths, back to itself,
//! only `master` (the master(8) adapter, on top) and the binary know
//! master(8), and only the two adapters on top (`master`, `serve`) know the
//! daemon's wiring. An import circle crept back once (config and shared, when the
//! Redis tier landed); this reads the real source tree so that it cannot
//! again unnoticed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level module a file of `src/` belongs to (`src/config/dir.rs`
/// and `src/config/mod.rs` are `config`, `src/error.rs` is `error`), or
/// `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules that `text` names as `crate::NAME`, outside
/// comments (doc comments may point anywhere).
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `$crate::` in macros and `tlsmgr_crate::` are not ours.
            let before = rest[..i].chars().last();
            if !name.is_empty()
                && !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '$')
            {
                names.insert(name);
            }
            rest = after;
        }
    }
    names
}

/// module -> the modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = g.entry(m.clone()).or_default();
        deps.extend(crate_paths(&text).into_iter().filter(|d| *d != m));
    }
    g
}

/// A circle through `start`, if any, as the path that closes it.
fn circle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let last = path.last().cloned().unwrap();
        for next in g.get(&last).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(g, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn the_checker_sees_paths_and_circles() {
    let text = "use crate::config::Config;\n// crate::daemon in a comment\n\
                let x = crate::store::fjall::open(); $crate::m!(); my_crate::x();";
    let names: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(names, ["config", "store"]);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(circle_from(&g, "a"), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(circle_from(&g, "a").unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let g = graph();
    // The tree is read: the modules the README's layout names are here.
    for m in [
        "protocol", "config", "store", "cache", "actors", "daemon", "master", "serve",
    ] {
        assert!(g.contains_key(m), "no module {m} in {:?}", g.keys());
    }
    let circles: Vec<String> = g
        .keys()
        .filter_map(|m| circle_from(&g, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn only_the_master_adapter_knows_master_and_nothing_below_knows_the_daemon() {
    let g = graph();
    for (m, deps) in &g {
        if m != "master" {
            assert!(!deps.contains("master"), "{m} imports master");
        }
        if !matches!(m.as_str(), "master" | "serve" | "daemon") {
            assert!(!deps.contains("daemon"), "{m} imports daemon");
        }
    }
    for low in ["protocol", "store", "config"] {
        let deps = &g[low];
        for high in ["actors", "daemon", "shared", "cache", "master"] {
            assert!(!deps.contains(high), "{low} imports {high}: {deps:?}");
        }
    }
}
