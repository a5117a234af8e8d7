//! The workspace's shape, checked: no module of a crate depends on itself through others
//! (no cycles, at the top level of each crate and inside each folder module), and the client
//! crate, which platform vendors embed, builds without the server's dependencies.
//!
//! Module edges are read from the source: `crate::NAME` anywhere in a module's files, and
//! `super::NAME` in a folder module's files, outside comments. That is how every module here
//! names another (the house style imports through `crate::`), so a new edge cannot hide.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `path` (or `path` itself).
fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).expect("read a source folder") {
        let entry = entry.expect("a folder entry").path();
        if entry.is_dir() {
            files.extend(rust_files(&entry));
        } else if entry.extension().is_some_and(|e| e == "rs") {
            files.push(entry);
        }
    }
    files
}

/// Source text without `//` comments (doc comments name modules freely).
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read a source file");
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names following `prefix` in `code` (`crate::api::x` gives `api` for `crate::`).
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        names.push(&rest[..end]);
    }
    names
}

/// The modules directly inside `folder` (files and sub-folders; `lib`, `main` and `mod` are
/// the folder itself), each with its files.
fn modules_in(folder: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(folder).expect("read a source folder") {
        let path = entry.expect("a folder entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a UTF-8 name")
            .to_owned();
        if path.is_file() && path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        if ["lib", "main", "mod"].contains(&name.as_str()) {
            continue;
        }
        modules
            .entry(name)
            .or_insert_with(Vec::new)
            .extend(rust_files(&path));
    }
    modules
}

/// The edges between the modules of `folder`: `crate::` + `path_prefix` + NAME, and
/// `super::NAME` from a file directly in a folder module (one level down).
fn edges(folder: &Path, path_prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules_in(folder);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, files) in &modules {
        let targets = graph.entry(name.clone()).or_default();
        for file in files {
            let code = code_of(file);
            let mut named = names_after(&code, &format!("crate::{path_prefix}"));
            if file.parent() == Some(folder) {
                // A file beside its siblings names them through `super::`.
                named.extend(names_after(&code, "super::"));
            }
            for target in named {
                if target != name && modules.contains_key(target) {
                    targets.insert(target.to_owned());
                }
            }
        }
    }
    graph
}

/// The cycles of `graph`: each strongly connected set of more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are on one cycle when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(at) = todo.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for (module, from_it) in &reached {
        let mut cycle: Vec<String> = from_it
            .iter()
            .filter(|other| reached[other].contains(*module))
            .cloned()
            .collect();
        if cycle.len() > 1 {
            cycle.sort();
            if !found.contains(&cycle) {
                found.push(cycle);
            }
        }
    }
    found
}

/// Every source folder whose modules must not form a cycle, with the path its modules are
/// named by from elsewhere in the crate.
fn folders() -> Vec<(PathBuf, String)> {
    let mut folders = vec![(root().join("src"), String::new())];
    let crates = std::fs::read_dir(root().join("crates")).expect("read crates/");
    for member in crates {
        let src = member.expect("a member").path().join("src");
        if !src.is_dir() {
            continue;
        }
        folders.push((src.clone(), String::new()));
        for (name, _) in modules_in(&src) {
            let sub = src.join(&name);
            if sub.is_dir() {
                folders.push((sub, format!("{name}::")));
            }
        }
    }
    folders
}

#[test]
fn no_module_depends_on_itself() {
    let mut problems = Vec::new();
    for (folder, prefix) in folders() {
        for cycle in cycles(&edges(&folder, &prefix)) {
            problems.push(format!("{}: {}", folder.display(), cycle.join(" <-> ")));
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles (break each by moving what both sides need below them):\n{}",
        problems.join("\n")
    );
}

/// The checker itself finds a cycle, and reads `super::` and `crate::` edges.
#[test]
fn the_cycle_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("lib.rs", "pub mod a; pub mod b; pub mod c;");
    write(
        "a.rs",
        "use crate::b::X; // crate::c in a comment is no edge",
    );
    write("b.rs", "fn f() { super::a::g() }");
    write("c.rs", "use crate::a::Y;");
    let graph = edges(dir.path(), "");
    assert_eq!(
        graph["a"],
        BTreeSet::from(["b".to_owned()]),
        "comments are not edges"
    );
    assert_eq!(cycles(&graph), vec![vec!["a".to_owned(), "b".to_owned()]]);
}

/// What a platform vendor pulls in with the client crate: none of the box's crates.
#[test]
fn the_client_builds_without_the_server() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "hallrelay-client",
            "-e",
            "normal,features",
            "--prefix",
            "none",
        ])
        .current_dir(root())
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut crates: BTreeSet<&str> = BTreeSet::new();
    for line in tree.lines() {
        if let Some(name) = line.split_whitespace().next() {
            crates.insert(name);
        }
    }
    for forbidden in [
        "redb",
        "rcgen",
        "prometheus-client",
        "clap",
        "indicatif",
        "hallrelay-store",
        "hallrelay-server",
    ] {
        assert!(
            !crates.contains(forbidden),
            "the client crate depends on {forbidden}"
        );
    }
    assert!(
        !tree.contains("hyper feature \"server\""),
        "the client crate builds hyper's server"
    );
    assert!(crates.contains("hyper"), "the tree was read: {tree}");
}

/// The files under `dir` whose code (outside comments) names any of `names`, as paths
/// relative to `dir`.
fn files_naming(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = rust_files(dir)
        .into_iter()
        .filter(|file| {
            let code = code_of(file);
            names
                .iter()
                .any(|name| !names_after(&code, name).is_empty())
        })
        .map(|file| file.strip_prefix(dir).expect("under dir").to_owned())
        .collect();
    found.sort();
    found
}

/// Issue 21: the box never decrypts an answer. Only the reference cloud, which plays the
/// platform, links the envelope crate's opening: in the server crate, only `platform/` and
/// `cloud.rs` may name `hallrelay_envelope`; the API the box serves names neither of them
/// (so no re-export brings `open` into it), and the store never names the crate.
#[test]
fn the_box_has_no_path_to_decryption() {
    let problems = decryption_paths(
        &root().join("crates/server/src"),
        &root().join("crates/store"),
    );
    assert!(
        problems.is_empty(),
        "the box must never decrypt answers (the platform does):\n{}",
        problems.join("\n")
    );
}

/// What [`the_box_has_no_path_to_decryption`] finds wrong in a server crate's `src` and a
/// store crate's folder.
fn decryption_paths(server_src: &Path, store: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for file in files_naming(server_src, &["hallrelay_envelope"]) {
        if !(file.starts_with("platform") || file == Path::new("cloud.rs")) {
            problems.push(format!(
                "crates/server/src/{} names hallrelay_envelope: only platform/ and cloud.rs may",
                file.display()
            ));
        }
    }
    for file in files_naming(
        &server_src.join("api"),
        &["crate::platform", "crate::cloud"],
    ) {
        problems.push(format!(
            "crates/server/src/api/{} reaches the platform's code, which may decrypt",
            file.display()
        ));
    }
    for file in files_naming(&store.join("src"), &["hallrelay_envelope"]) {
        problems.push(format!(
            "crates/store/src/{} names hallrelay_envelope",
            file.display()
        ));
    }
    let manifest = std::fs::read_to_string(store.join("Cargo.toml")).expect("the store's manifest");
    if manifest.contains("hallrelay-envelope") {
        problems.push("crates/store/Cargo.toml depends on hallrelay-envelope".into());
    }
    problems
}

/// The check sees a box API that opens an envelope, one that reaches the platform's code,
/// and a store that names the crate, and lets the platform's code and comments be.
#[test]
fn the_decryption_check_sees_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let (server, store) = (dir.path().join("server"), dir.path().join("store"));
    for folder in [
        server.join("api"),
        server.join("platform"),
        store.join("src"),
    ] {
        std::fs::create_dir_all(folder).unwrap();
    }
    let write = |path: PathBuf, text: &str| std::fs::write(path, text).unwrap();
    write(store.join("Cargo.toml"), "[dependencies]\nredb = \"4\"\n");
    write(store.join("src/lib.rs"), "//! never hallrelay_envelope\n");
    write(server.join("cloud.rs"), "use hallrelay_envelope::open;\n");
    write(
        server.join("platform/answers.rs"),
        "fn f() { hallrelay_envelope::open(); }\n",
    );
    write(
        server.join("api/routes.rs"),
        "// hallrelay_envelope::open in a comment\n",
    );
    assert_eq!(decryption_paths(&server, &store), Vec::<String>::new());

    write(
        server.join("api/routes.rs"),
        "fn put() { let _ = hallrelay_envelope::open(b, k, r, s); }\n",
    );
    write(
        server.join("api/console.rs"),
        "use crate::platform::answers;\n",
    );
    write(store.join("src/lib.rs"), "use hallrelay_envelope as e;\n");
    write(
        store.join("Cargo.toml"),
        "[dependencies]\nhallrelay-envelope.workspace = true\n",
    );
    let problems = decryption_paths(&server, &store);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].contains("api/routes.rs names hallrelay_envelope"),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains("api/console.rs reaches the platform"),
        "{problems:#?}"
    );
}
