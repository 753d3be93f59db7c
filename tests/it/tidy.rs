//! Architecture invariants, checked on the source (ARCHITECTURE.md "Invariants"):
//! only `store` imports redb; only `api` (and the simulator, which is a server of its own)
//! uses hyper and matchit; only the plugin runtime uses wasmtime, and only `plugins/mod.rs`
//! names the `wasm-plugins` feature; only `config` reads the environment; every source
//! file starts with a `//!` doc comment; every cap setting is listed in the resource rule;
//! and the rest below, each test naming its rule.

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

/// Only `storage/s3.rs` uses object_store, and only `storage/mod.rs` names the `s3`
/// feature: the rest of the gateway is the same in a build without it.
#[test]
fn only_storage_uses_object_store_and_names_its_feature() {
    let files = engine_files();
    assert_eq!(offenders(&files, "object_store::", &["engine/storage/s3.rs"]), Vec::<String>::new());
    assert_eq!(offenders(&files, "feature = \"s3\"", &["engine/storage/mod.rs"]), Vec::<String>::new());
}

#[test]
fn only_configuration_reads_the_environment() {
    let files = engine_files();
    for needle in ["std::env::", "env::var", "env::set_var", "env::vars"] {
        assert_eq!(offenders(&files, needle, &["engine/config.rs"]), Vec::<String>::new(), "{needle}");
    }
    // `.env` is loaded once, by the binary, before the arguments are parsed.
    assert_eq!(offenders(&files, "dotenvy", &["engine/main.rs"]), Vec::<String>::new());
}

#[test]
fn every_source_file_says_what_it_is_for() {
    for (path, text) in engine_files() {
        assert!(text.trim_start().starts_with("//!"), "{path} starts with a //! comment");
    }
}

/// The resource rule of ARCHITECTURE.md lists every cap: each setting named `MAX_*`,
/// `*_CONCURRENCY*` or `*_PER_*` of `serve` (`MAX_ATTEMPTS` bounds retries, not a share).
/// The names come from clap itself (`#[arg(long, env)]` derives them from the field names).
#[test]
fn every_cap_setting_is_in_the_resource_rule() {
    use clap::Args;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let start = architecture.find("- Resource rule:").expect("ARCHITECTURE.md states the resource rule");
    let rule = &architecture[start..];
    let rule = &rule[..rule[2..].find("\n- ").map_or(rule.len(), |end| end + 2)];
    let serve = comfyui_gateway::config::ServeArgs::augment_args(clap::Command::new("serve"));
    let settings: Vec<String> =
        serve.get_arguments().filter_map(|a| a.get_env()).map(|env| env.to_string_lossy().into_owned()).collect();
    assert!(settings.len() > 60 && settings.iter().any(|s| s == "S3_BUCKET"), "found the settings: {settings:?}");
    let mut caps: Vec<&str> = settings
        .iter()
        .map(String::as_str)
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

/// ARCHITECTURE.md leaves numbers to the code: it names constants and settings instead, and
/// every name it cites in backticks (an `UPPER_SNAKE` constant or setting of the engine or
/// the tests, an `engine/` path) exists, so renaming one without the map fails here.
#[test]
fn every_name_the_architecture_cites_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut files = engine_files();
    let mut tests = Vec::new();
    sources(&root.join("tests/it"), &mut tests);
    files.extend(tests.iter().map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap())));
    let config = std::fs::read_to_string(root.join("engine/config.rs")).unwrap();
    let cited: Vec<&str> = architecture.split('`').skip(1).step_by(2).collect();
    assert!(cited.len() > 100, "found the cited names");
    let mut missing = Vec::new();
    for name in cited.iter().filter(|name| !name.contains('*')) {
        let name = name.trim_end_matches('/');
        if name.starts_with("engine/") {
            if !root.join(name).exists() {
                missing.push(name.to_string());
            }
            continue;
        }
        let is_constant = name.len() > 3
            && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && name.contains('_');
        if !is_constant {
            continue;
        }
        let field = format!("pub {}:", name.to_ascii_lowercase());
        let known = files
            .iter()
            .any(|(_, text)| text.contains(&format!("const {name}:")) || text.contains(&format!("\"{name}\"")))
            || config.contains(&field);
        if !known {
            missing.push(name.to_string());
        }
    }
    assert!(missing.is_empty(), "ARCHITECTURE.md cites names the code does not have: {missing:?}");
}

/// The engine's sources without their tests ([`production_code`]).
fn non_test_sources() -> Vec<(String, String)> {
    engine_files()
        .into_iter()
        .map(|(path, text)| {
            let code = production_code(&path, &text).to_string();
            (path, code)
        })
        .collect()
}

/// Only `comfy` knows ComfyUI's JSON (ARCHITECTURE.md "Invariants"): outside `engine/comfy/`,
/// no source names a key of ComfyUI's messages and prompts or a node class it recognizes;
/// the rest of the gateway reads prompts through `comfy::graph` and answers through
/// `comfy::protocol`. Unit-test modules build fixtures in ComfyUI's format and are not
/// checked: files of tests (`tests.rs`, `tests_*.rs`) and a trailing `#[cfg(test)] mod tests`.
/// Allowed beside them: `api/openapi.rs` (the contract describes the API-format workflow a
/// client sends) and `store/fuzzing.rs` (sample records for the fuzz targets).
#[test]
fn only_comfy_knows_comfyui_json() {
    const NEEDLES: &[&str] = &[
        "\"class_type\"",
        "\"_meta\"",
        "\"__value__\"",
        "\"KSampler\"",
        "\"KSamplerAdvanced\"",
        "\"CheckpointLoaderSimple\"",
        "\"CLIPTextEncode\"",
        "\"EmptyLatentImage\"",
        "\"LoadImage\"",
        "\"SaveImage\"",
        "\"PreviewImage\"",
        "\"folder_type\"",
        "\"prompt_id\"",
        "\"node_errors\"",
        "\"status_str\"",
        "\"execution_error\"",
        "\"execution_interrupted\"",
        "\"executing\"",
    ];
    const ALLOWED: &[&str] = &["engine/comfy/", "engine/api/openapi.rs", "engine/store/fuzzing.rs"];
    let files = non_test_sources();
    // The needles are found where they live (the check can fail).
    let comfy =
        files.iter().filter(|(p, _)| p.starts_with("engine/comfy/")).map(|(_, t)| t.as_str()).collect::<String>();
    for needle in ["\"class_type\"", "\"KSampler\"", "\"prompt_id\"", "\"status_str\"", "\"node_errors\""] {
        assert!(comfy.contains(needle), "engine/comfy/ names {needle}");
    }
    for needle in NEEDLES {
        assert_eq!(offenders(&files, needle, ALLOWED), Vec::<String>::new(), "{needle} outside engine/comfy/");
    }
}

/// Every state change of a job goes through `scheduler::state::apply` (ARCHITECTURE.md
/// "Invariants"; a cache hit is its `Event::CacheHit`): outside `scheduler/state.rs` a job's
/// state is only set once, when `Job::new_queued` makes a job born queued. Tests and the
/// fuzzers' sample records (`store/fuzzing.rs`) are not checked.
#[test]
fn only_the_state_machine_changes_a_jobs_state() {
    let files = non_test_sources();
    let allowed = ["engine/scheduler/state.rs", "engine/domain.rs", "engine/store/fuzzing.rs"];
    for needle in ["state = JobState::", "state: JobState::"] {
        assert_eq!(offenders(&files, needle, &allowed), Vec::<String>::new(), "{needle}");
    }
    let domain = &files.iter().find(|(p, _)| p == "engine/domain.rs").expect("engine/domain.rs").1;
    let births: Vec<&str> = domain.matches("state: JobState::").collect();
    assert_eq!(births.len(), 1, "engine/domain.rs sets a job's state only in Job::new_queued");
    assert!(domain.contains("state: JobState::Queued,"), "a job is born queued");
    let machine = &files.iter().find(|(p, _)| p == "engine/scheduler/state.rs").expect("state.rs").1;
    assert!(machine.contains("Event::CacheHit"), "the state machine models cache hits");
}

/// `#[arg(long, env)]` derives a setting's flag and variable from its field: an explicit name
/// in `config.rs` or `cli.rs` is one that differs from the field's (`GATEWAY_URL`), never a
/// repeat of it.
#[test]
fn settings_names_are_derived_not_repeated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut repeated = Vec::new();
    for file in ["engine/config.rs", "engine/cli.rs"] {
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        for (attr, rest) in source.split("#[arg(").skip(1).filter_map(|chunk| chunk.split_once(")]")) {
            let Some(field) = rest.trim_start().strip_prefix("pub ").and_then(|f| f.split(':').next()) else {
                continue;
            };
            for derived in [
                format!("long = \"{}\"", field.replace('_', "-")),
                format!("env = \"{}\"", field.to_uppercase()),
                format!("value_name = \"{}\"", field.to_uppercase()),
            ] {
                if attr.contains(&derived) {
                    repeated.push(format!("{file}: {field}: {derived}"));
                }
            }
        }
        assert!(source.contains("#[arg(long, env"), "found the settings of {file}");
    }
    assert_eq!(repeated, Vec::<String>::new(), "write `#[arg(long, env)]`: clap derives these names");
}

/// One SSRF gate: only `ssrf.rs` resolves client-given hosts, classifies addresses and pins
/// connections (image inputs and webhooks both go through it).
#[test]
fn one_ssrf_gate() {
    let files = engine_files();
    for needle in ["lookup_host", "resolve_to_addrs", "to_ipv4_mapped", "fn forbidden_reason"] {
        assert_eq!(offenders(&files, needle, &["engine/ssrf.rs"]), Vec::<String>::new(), "{needle}");
    }
}

/// One backoff formula: retry loops ask `backoff::Backoff` for their pauses instead of
/// doubling or shifting a duration by hand.
#[test]
fn one_backoff_formula() {
    let files = engine_files();
    for needle in ["* 2).min(", "*= 2", "<< ("] {
        assert_eq!(offenders(&files, needle, &["engine/backoff.rs"]), Vec::<String>::new(), "{needle}");
    }
}

/// Dates are read and written by crates (`time` for RFC 3339, `httpdate` for HTTP-dates),
/// not by hand: no civil-calendar arithmetic, no month-name tables.
#[test]
fn no_hand_written_dates() {
    let files = engine_files();
    for needle in ["719_468", "146_097", "\"Jan\"", "\"GMT\"", "days_from_civil", "civil_from"] {
        assert_eq!(offenders(&files, needle, &[]), Vec::<String>::new(), "{needle}");
    }
}

/// SHA-256, HMAC and constant-time comparison come from aws-lc-rs (already there for TLS
/// and JWTs): no second implementation beside it.
#[test]
fn one_crypto_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = engine_files();
    for needle in ["sha2::", "subtle::", "hmac::Hmac", "use hmac"] {
        assert_eq!(offenders(&files, needle, &[]), Vec::<String>::new(), "{needle}");
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for krate in ["sha2", "subtle", "hmac"] {
        let direct = manifest.lines().any(|line| line.split(['=', ' ']).next() == Some(krate));
        assert!(!direct, "{krate} is a direct dependency of Cargo.toml; use aws-lc-rs");
    }
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
    let code = non_test_sources();
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
    let code = non_test_sources();
    assert_eq!(offenders(&code, "process::exit", &["engine/main.rs", "engine/comfy/sim/"]), Vec::<String>::new());
    assert_eq!(offenders(&code, "exit_code: ", &[]), Vec::<String>::new(), "a failure carries a kind, not a code");
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

/// `serve --help` is grouped by topic: every visible setting has a help heading.
#[test]
fn every_setting_has_a_help_heading() {
    use clap::Args;
    let serve = comfyui_gateway::config::ServeArgs::augment_args(clap::Command::new("serve"));
    let bare: Vec<String> = serve
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_help_heading().is_none())
        .map(|a| a.get_id().to_string())
        .collect();
    assert_eq!(bare, Vec::<String>::new(), "give these a `help_heading` (config.rs)");
}

/// Text logs are coloured only on a terminal (`config::log_colours`): the one place that
/// sets the formatter's colours is `main`, through it.
#[test]
fn logs_are_coloured_only_through_log_colours() {
    let files = engine_files();
    assert_eq!(offenders(&files, "with_ansi(", &["engine/main.rs"]), Vec::<String>::new());
    let main = files.iter().find(|(p, _)| p == "engine/main.rs").map(|(_, t)| t.as_str()).unwrap();
    assert!(main.contains("with_ansi(colours)") && main.contains("log_colours(std::io::stderr().is_terminal())"));
}

/// The text of `fn name` in `text`: from its signature to the first line that closes it.
fn function_body<'a>(text: &'a str, signature: &str) -> &'a str {
    let start = text.find(signature).unwrap_or_else(|| panic!("{signature} exists"));
    let rest = &text[start..];
    let end = rest.find("\n}\n").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// Liveness never depends on a backend or the store (a liveness probe must not restart a
/// gateway because ComfyUI is down): `/livez` always answers 200 and reads neither; the
/// probes are public and exempt from rate limits, like `/health`.
#[test]
fn liveness_depends_on_nothing_but_the_process() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let handlers = std::fs::read_to_string(root.join("engine/api/handlers.rs")).unwrap();
    let livez = function_body(&handlers, "pub fn livez(");
    for needle in ["backend", "store_ok", "SERVICE_UNAVAILABLE", "?"] {
        assert!(!livez.contains(needle), "/livez must not depend on {needle:?}:\n{livez}");
    }
    use comfyui_gateway::api::routes::{Access, ROUTES};
    let routes = std::fs::read_to_string(root.join("engine/api/routes.rs")).unwrap();
    let handle = function_body(&routes, "pub async fn handle(");
    let exempt = handle.lines().find(|l| l.contains("let is_probe")).expect("the rate limit's exemption");
    assert!(exempt.contains(".rate_limited"), "the exemption comes from the table: {exempt}");
    let unlimited: Vec<&str> = ROUTES.iter().filter(|r| !r.rate_limited).map(|r| r.pattern).collect();
    assert_eq!(unlimited, ["/health", "/livez", "/readyz"], "the probes, and only they, are not rate limited");
    for route in ROUTES.iter().filter(|r| !r.rate_limited) {
        for op in route.ops {
            assert!(matches!(op.access, Access::Public | Access::PublicOrCaller), "{} is public", route.pattern);
        }
    }
}

/// Metric labels (ARCHITECTURE.md): a backend is labelled by its id, never its URL; every
/// literal value handed to a closed-enum counter is one of the values it starts at zero.
#[test]
fn metric_labels_are_backend_ids_and_listed_closed_values() {
    let files = non_test_sources();
    let metrics = &files.iter().find(|(p, _)| p == "engine/metrics.rs").expect("engine/metrics.rs").1;
    for needle in [".url", "url:"] {
        assert!(!metrics.contains(needle), "engine/metrics.rs names a URL ({needle})");
    }
    for (call, list) in [
        (".reconciled(\"", "RECONCILE_OUTCOMES"),
        (".storage_refused(\"", "REFUSAL_REASONS"),
        (".http_open(\"", "OPEN_KINDS"),
    ] {
        let declared = metrics.lines().find(|l| l.contains(&format!("const {list}"))).expect(list);
        let mut n_calls = 0;
        for (path, text) in &files {
            for value in text.split(call).skip(1).filter_map(|rest| rest.split('"').next()) {
                n_calls += 1;
                assert!(declared.contains(&format!("\"{value}\"")), "{path}: {call}{value}\") is not in {list}");
            }
        }
        assert!(n_calls > 0, "found the calls of {call}");
    }
}

/// A backup copies every table: each `TableDefinition` of `store/tables.rs` is in the
/// backup's list (`store/backup.rs`, `c!(NAME)`), and the list names no other. (The copy
/// also refuses, at run time, a file holding a table it does not list.)
#[test]
fn a_backup_copies_every_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tables = std::fs::read_to_string(root.join("engine/store/tables.rs")).unwrap();
    let backup = std::fs::read_to_string(root.join("engine/store/backup.rs")).unwrap();
    let defined: Vec<&str> = tables
        .lines()
        .filter(|l| l.contains("TableDefinition<") && l.trim_start().starts_with("pub(crate) const "))
        .filter_map(|l| l.trim_start().strip_prefix("pub(crate) const ")?.split(':').next())
        .collect();
    assert!(defined.len() >= 20, "found the tables: {defined:?}");
    let copied: Vec<&str> = backup.lines().filter_map(|l| l.trim().strip_prefix("c!(")?.strip_suffix("),")).collect();
    let mut a = defined.clone();
    let mut b = copied.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "store/tables.rs defines, store/backup.rs copies");
}

/// One route table (`api/routes.rs`, `ROUTES`): no role decision falls through a `_ =>`
/// default (an operation without an `Access` does not compile, and every match on access
/// and handlers is exhaustive); every operation of the table is in the OpenAPI document
/// (HEAD is documented on its GET); no path is documented that the table does not route.
/// (`examples` checks that `examples/curl.sh` calls every operation.)
#[test]
fn one_route_table_without_defaults_fully_documented() {
    use comfyui_gateway::api::routes::ROUTES;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let routes = std::fs::read_to_string(root.join("engine/api/routes.rs")).unwrap();
    for signature in ["fn resolve(", "fn need(", "fn authenticate(", "async fn route(", "async fn dispatch("] {
        let body = function_body(&routes, signature);
        assert!(!body.contains("_ =>"), "routes.rs `{signature}` has a `_ =>` default:\n{body}");
    }
    // The table's own shape: one entry per pattern, one operation per method, HEAD only
    // beside a GET that it mirrors (same access and handler).
    for (i, route) in ROUTES.iter().enumerate() {
        assert!(!route.ops.is_empty(), "{} takes no method", route.pattern);
        assert!(ROUTES[..i].iter().all(|r| r.pattern != route.pattern), "{} is listed twice", route.pattern);
        for (j, op) in route.ops.iter().enumerate() {
            assert!(route.ops[..j].iter().all(|o| o.method != op.method), "{} {} twice", op.method, route.pattern);
        }
        if let Some(head) = route.op(&http::Method::HEAD) {
            let get = route.op(&http::Method::GET).unwrap_or_else(|| panic!("HEAD {} without GET", route.pattern));
            assert_eq!((head.access, head.handler), (get.access, get.handler), "HEAD {} mirrors GET", route.pattern);
        }
    }
    // Parameter names differ (`{id}` in the table, `{jobId}` in the document).
    let shape = |path: &str| -> String {
        path.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect::<Vec<_>>().join("/")
    };
    let doc = comfyui_gateway::api::openapi::document(&[], "/");
    let paths = doc["paths"].as_object().expect("the document has paths");
    let documented: std::collections::BTreeMap<String, &serde_json::Value> =
        paths.iter().map(|(p, v)| (shape(p), v)).collect();
    for route in ROUTES {
        let item =
            documented.get(&shape(route.pattern)).unwrap_or_else(|| panic!("{} is not documented", route.pattern));
        for op in route.ops {
            let method =
                if op.method == http::Method::HEAD { "get".into() } else { op.method.as_str().to_ascii_lowercase() };
            assert!(item[method.as_str()].is_object(), "{} {} is not documented", op.method, route.pattern);
        }
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            assert!(
                item[method].is_null() || route.ops.iter().any(|o| o.method.as_str().eq_ignore_ascii_case(method)),
                "{method} {} is documented but not routed",
                route.pattern
            );
        }
    }
    let routed: Vec<String> = ROUTES.iter().map(|r| shape(r.pattern)).collect();
    for path in documented.keys() {
        assert!(routed.contains(path), "{path} is documented but not routed");
    }
}

/// The dashboard and the API docs page are served from the binary only: every file of
/// `engine/api/dashboard/` is compiled in (`include_bytes!` in `api/dashboard.rs`), and
/// their scripts put what the server sends into the page as text, never as HTML or code
/// (no `innerHTML`, `outerHTML`, `insertAdjacentHTML`, `document.write`, `eval`, `new
/// Function`, string timers), so the strict CSP never has to allow inline script or `eval`.
#[test]
fn the_web_pages_are_embedded_and_build_no_html_from_text() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rust = std::fs::read_to_string(root.join("engine/api/dashboard.rs")).unwrap();
    let mut n_scripts = 0;
    for entry in std::fs::read_dir(root.join("engine/api/dashboard")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(rust.contains(&format!("include_bytes!(\"dashboard/{name}\")")), "{name} is not served");
        if name.ends_with(".js") {
            n_scripts += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for needle in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "Function(",
                "setTimeout('",
                "setTimeout(\"",
            ] {
                assert!(!text.contains(needle), "{name} uses {needle}");
            }
        }
    }
    assert!(n_scripts >= 2, "found the dashboard's and the docs page's scripts");
}

/// Links to the gateway are made in one place, `domain::Links` (absolute under
/// `PUBLIC_URL` when set; webhooks always absolute): outside it, no production source
/// spells a path of a job or an output as a string, except the route table's patterns
/// (`api/routes.rs`) and the OpenAPI document's paths (`api/openapi.rs`). So a new link in
/// an answer cannot bypass `PUBLIC_URL`.
#[test]
fn links_are_made_in_one_place() {
    let code = non_test_sources();
    let allowed = ["engine/domain.rs", "engine/api/routes.rs", "engine/api/openapi.rs"];
    for needle in ["\"/jobs/", "\"/outputs/", "\"/jobs?", "\"/outputs?"] {
        let found = offenders(&code, needle, &allowed);
        assert!(found.is_empty(), "{needle} spelled outside domain::Links: {found:?}");
    }
}

/// Request bodies are parsed into the `wire::request` types (`wire::parse`: serde, the
/// offending field's JSON pointer in the error), never read field by field: the production
/// code of `api/handlers.rs` names no request member in a `.get("…")`-style lookup except
/// what the types cannot carry: `metadata` (the `MAX_METADATA_BYTES` cap, checked on the
/// parsed object before the typed parse), `requestId` (the idempotency key inside the
/// free-form metadata), `workflow` (an import body with it holds options, without it is
/// the export itself) and the `idempotency-key` header. The hand-written readers are gone
/// and each body-taking handler parses with `wire::parse`.
#[test]
fn handlers_read_request_bodies_only_through_wire_types() {
    let code = non_test_sources();
    let handlers = code.iter().find(|(p, _)| p == "engine/api/handlers.rs").map(|(_, t)| t.as_str()).unwrap();
    let allowed = ["metadata", "requestId", "workflow", "idempotency-key"];
    let mut named = Vec::new();
    for call in [".get(\"", ".get_mut(\"", ".contains_key(\"", ".remove(\"", ".entry(\"", ".pointer(\""] {
        for (at, _) in handlers.match_indices(call) {
            let rest = &handlers[at + call.len()..];
            let name = &rest[..rest.find('"').expect("a closed string")];
            if !allowed.contains(&name) {
                named.push(format!("{call}{name}\")"));
            }
        }
    }
    assert_eq!(
        named,
        Vec::<String>::new(),
        "request fields read by name in api/handlers.rs; add them to wire::request"
    );
    for gone in ["fn reject_unknown", "fn opt_string", "fn req_string", "fn opt_object", "_FIELDS: &[&str]"] {
        assert!(!handlers.contains(gone), "{gone} is back in api/handlers.rs");
    }
    for (handler, body) in [
        ("pub fn job_fields(", "JobRequest"),
        ("pub async fn create_workflow(", "WorkflowDefinition"),
        ("pub async fn update_workflow(", "WorkflowUpdate"),
        ("pub async fn import_workflow(", "WorkflowImport"),
    ] {
        let text = function_body(handlers, handler);
        assert!(text.contains(&format!("wire::parse::<request::{body}>")), "{handler} parses a {body}");
    }
}

/// Responses are wire types (`engine/wire`): the API's handlers, its reply helpers, the
/// event stream, the downloads and the webhooks serialize them and build no JSON by hand.
/// The one `json!` allowed there is an error's free-form `details`; no JSON value is
/// patched member by member (`body["x"] = ...`) on its way out.
#[test]
fn no_handler_builds_response_json_by_hand() {
    let code = non_test_sources();
    let files = [
        "engine/api/handlers.rs",
        "engine/api/reply.rs",
        "engine/api/sse.rs",
        "engine/api/download.rs",
        "engine/webhooks/send.rs",
    ];
    let mut found = Vec::new();
    for file in files {
        let text = code.iter().find(|(p, _)| p == file).map(|(_, t)| t.as_str()).unwrap_or_else(|| panic!("{file}"));
        for (at, _) in text.match_indices("json!(") {
            let before = &text[at.saturating_sub(40)..at];
            if !before.trim_end_matches("serde_json::").ends_with(".with_details(") {
                found.push(format!("{file}: json! at byte {at}"));
            }
        }
        for (at, _) in text.match_indices("\"] = ") {
            found.push(format!("{file}: a JSON member set by hand at byte {at}"));
        }
        for builder in ["fn job_json", "fn event_json", "fn output_json", "fn delivery_json", "fn backend_json"] {
            if text.contains(builder) {
                found.push(format!("{file}: {builder} is back"));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new(), "build a wire type (engine/wire) instead");
    // Only the API layer and wire know the wire types' JSON; webhooks use wire, not api.
    let send = code.iter().find(|(p, _)| p == "engine/webhooks/send.rs").map(|(_, t)| t.as_str()).unwrap();
    assert!(!send.contains("crate::api"), "webhooks build their body from wire types, not from api");
    assert!(send.contains("WebhookPayload"));
}
