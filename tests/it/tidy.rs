//! Architecture invariants, checked on the source (ARCHITECTURE.md "Invariants"):
//! only `store` imports redb; only `api` (and the simulator, which is a server of its own)
//! uses hyper and matchit; only the plugin runtime uses wasmtime, and only `plugins/mod.rs`
//! names the `wasm-plugins` feature; only `config`/`cli`/`main` read the environment; every source
//! file starts with a `//!` doc comment; every cap setting is listed in the resource rule.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read engine/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn engine_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("engine"), &mut files);
    assert!(files.len() > 20, "found the sources");
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn offenders(files: &[(String, String)], needle: &str, allowed: &[&str]) -> Vec<String> {
    files
        .iter()
        .filter(|(path, text)| text.contains(needle) && !allowed.iter().any(|a| path.starts_with(a)))
        .map(|(path, _)| path.clone())
        .collect()
}

#[test]
fn only_the_store_touches_redb() {
    let files = engine_files();
    assert_eq!(offenders(&files, "redb::", &["engine/store/"]), Vec::<String>::new());
}

#[test]
fn only_the_api_and_the_simulator_serve_http() {
    let files = engine_files();
    for needle in ["hyper::", "matchit::", "hyper_util::", "multer::"] {
        assert_eq!(offenders(&files, needle, &["engine/api/", "engine/comfy/sim/"]), Vec::<String>::new(), "{needle}");
    }
}

#[test]
fn only_the_plugin_runtime_uses_wasmtime_and_only_plugins_names_its_feature() {
    let files = engine_files();
    for needle in ["wasmtime::", "wasmtime_wasi::"] {
        let allowed = ["engine/plugins/runtime.rs", "engine/plugins/sandbox.rs", "engine/plugins/tests.rs"];
        assert_eq!(offenders(&files, needle, &allowed), Vec::<String>::new(), "{needle}");
    }
    // The rest of the gateway is the same in a build without `wasm-plugins`.
    assert_eq!(offenders(&files, "feature = \"wasm-plugins\"", &["engine/plugins/mod.rs"]), Vec::<String>::new());
}

#[test]
fn only_configuration_reads_the_environment() {
    let files = engine_files();
    assert_eq!(
        offenders(&files, "std::env::var", &["engine/config.rs", "engine/cli.rs", "engine/main.rs"]),
        Vec::<String>::new()
    );
}

#[test]
fn every_source_file_says_what_it_is_for() {
    for (path, text) in engine_files() {
        assert!(text.trim_start().starts_with("//!"), "{path} starts with a //! comment");
    }
}

/// The resource rule of ARCHITECTURE.md lists every cap: each setting named `MAX_*`,
/// `*_CONCURRENCY*` or `*_PER_*` in `config.rs` (`MAX_ATTEMPTS` bounds retries, not a share).
#[test]
fn every_cap_setting_is_in_the_resource_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("engine/config.rs")).unwrap();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let start = architecture.find("- Resource rule:").expect("ARCHITECTURE.md states the resource rule");
    let rule = &architecture[start..];
    let rule = &rule[..rule[2..].find("\n- ").map_or(rule.len(), |end| end + 2)];
    let mut caps: Vec<&str> = config
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| {
            (name.starts_with("MAX_") || name.contains("_CONCURRENCY") || name.contains("_PER_"))
                && *name != "MAX_ATTEMPTS"
        })
        .collect();
    caps.sort_unstable();
    caps.dedup();
    assert!(caps.len() > 15, "found the cap settings: {caps:?}");
    let missing: Vec<&&str> = caps.iter().filter(|name| !rule.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "caps missing from ARCHITECTURE.md's resource rule: {missing:?}");
}

/// No test is switched off with an ignore attribute: a slow test takes its size from the
/// test's environment (the kill -9 campaign: `KILL_CAMPAIGN_KILLS`) and runs in every run.
#[test]
fn no_test_is_ignored() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("engine"), &mut files);
    sources(&root.join("tests"), &mut files);
    // Spelled in two pieces, so that this file does not match itself.
    let needle = concat!("#[", "ignore");
    let found: Vec<String> = files
        .iter()
        .filter(|p| std::fs::read_to_string(p).unwrap().contains(needle))
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert_eq!(found, Vec::<String>::new(), "ignored tests");
}

/// The harness's rules, on `tests/`: the binary under test is spawned only through
/// `support` (cleared environment, temporary working directory, port 0 with `--addr-file`),
/// no port is picked by binding and releasing it, and `support::require` alone decides
/// whether a missing tool skips or fails (it alone reads `CI`).
#[test]
fn the_harness_spawns_gates_and_binds_in_one_place() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("tests"), &mut files);
    let support = root.join("tests/it/support");
    // Each needle spelled in pieces, so that this file does not match itself.
    let rules = [
        (concat!("Command::new(", "BIN"), "spawns the binary without support::bin or support::command"),
        (concat!("Command::new(support::", "BIN"), "spawns the binary without support::bin or support::command"),
        (concat!("Command::new(crate::support::", "BIN"), "spawns the binary without support::bin or support::command"),
        (concat!("free", "_port"), "picks a port by binding and releasing it"),
        (concat!("(\"C", "I\")"), "reads CI itself instead of support::require"),
    ];
    let mut found = Vec::new();
    for path in files.iter().filter(|p| !p.starts_with(&support)) {
        let text = std::fs::read_to_string(path).unwrap();
        for (needle, why) in rules {
            if text.contains(needle) {
                found.push(format!("{}: {why}", path.strip_prefix(root).unwrap().display()));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new());
}
