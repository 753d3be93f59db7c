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

/// The part of a source file that is not test code: `tests*.rs` files are test code
/// whole; elsewhere an inline `#[cfg(test)] mod ... {` block and what follows it is cut.
fn production_code<'a>(path: &str, text: &'a str) -> &'a str {
    if path.rsplit('/').next().is_some_and(|name| name.starts_with("tests")) {
        return "";
    }
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let item = text[at + "#[cfg(test)]".len()..].trim_start().lines().next().unwrap_or("");
        if item.starts_with("mod ") && item.trim_end().ends_with('{') {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

/// Every task of the gateway is spawned through its one owner, `scheduler::Tasks`; only
/// these start threads or runtimes of their own: the store's writer thread, the plugin
/// runtime, the API's bulk pool, `main`'s runtime, and the simulator (a separate server).
/// Test code may spawn.
#[test]
fn every_task_is_spawned_through_its_owner() {
    let files = engine_files();
    let code: Vec<(String, String)> =
        files.iter().map(|(path, text)| (path.clone(), production_code(path, text).to_string())).collect();
    let sim = "engine/comfy/sim/";
    let rules: [(&str, &[&str]); 8] = [
        ("tokio::spawn", &[sim]),
        ("tokio::task::spawn(", &[sim]),
        ("spawn_local", &[sim]),
        ("JoinSet", &[sim]),
        ("TaskTracker", &["engine/scheduler/tasks.rs", sim]),
        ("thread::spawn", &[sim]),
        ("thread::Builder", &["engine/store/mod.rs", "engine/plugins/runtime.rs", sim]),
        ("runtime::Builder", &["engine/main.rs", "engine/plugins/runtime.rs", "engine/api/bulk.rs", sim]),
    ];
    for (needle, allowed) in rules {
        assert_eq!(offenders(&code, needle, allowed), Vec::<String>::new(), "{needle}");
    }
    // The cut keeps what precedes a test module and drops only the module.
    let sample = "fn a() {}\n#[cfg(test)]\nmod tests;\nfn b() {}\n#[cfg(test)]\nmod tests {\n    tokio::spawn(x);\n}\n";
    assert_eq!(production_code("engine/x.rs", sample), "fn a() {}\n#[cfg(test)]\nmod tests;\nfn b() {}\n");
    assert_eq!(production_code("engine/store/tests_faults.rs", sample), "");
}

/// Exit codes are chosen in one place (`cli::Failure::exit_code`) and the process exits in
/// one place (`main`); the simulator's crash faults (`exit(137)`) are its own.
#[test]
fn the_process_exits_in_one_place() {
    let files = engine_files();
    let code: Vec<(String, String)> =
        files.iter().map(|(path, text)| (path.clone(), production_code(path, text).to_string())).collect();
    assert_eq!(offenders(&code, "process::exit", &["engine/main.rs", "engine/comfy/sim/"]), Vec::<String>::new());
    assert_eq!(offenders(&code, "exit_code: ", &[]), Vec::<String>::new(), "a failure carries a kind, not a code");
}
