//! The harness's own promises: a spawned gateway sees only the environment its test gives
//! it (plus [`support::INHERITED`]) and runs in an empty temporary directory, so neither a
//! developer's exported variables nor a `.env` where the tests are run (dotenvy reads `.env`
//! from the working directory) changes a test.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;

use crate::support::{self, DeadPort, Gateway};

/// An API key only a leaked `.env` would configure.
const DOTENV_KEY: &str = "dotenv-key-0001";

/// A valid webhook secret only a leaked exported variable would configure.
const EXPORTED_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The test [`this_test_process_cannot_reach_a_spawned_gateway`] runs again in a hostile
/// place: a working directory with a `.env` setting `API_KEYS`, and `WEBHOOK_SECRET`
/// exported. Through the harness, its gateway must see neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotenv_and_exported_variables_do_not_reach_a_spawned_gateway() {
    let hostile = support::tempdir();
    std::fs::write(hostile.path().join(".env"), format!("API_KEYS={DOTENV_KEY}:admin\nLOG_LEVEL=error\n")).unwrap();
    let test = "harness::this_test_process_cannot_reach_a_spawned_gateway";
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--test-threads=1"])
        .current_dir(hostile.path())
        .env("WEBHOOK_SECRET", EXPORTED_SECRET)
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "in a hostile environment:\n{text}");
    assert!(text.contains("1 passed"), "the test ran:\n{text}");
}

/// A gateway started through the harness: open mode (no `API_KEYS` from a `.env`), no
/// `WEBHOOK_SECRET` (from an exported variable), no variable but the kept ones and those the
/// test set, and an empty working directory of its own under the test's temp dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_test_process_cannot_reach_a_spawned_gateway() {
    let dir = support::tempdir();
    let backend = DeadPort::new();
    let gw = Gateway::start(dir.path(), &backend.url(), &[("MAX_CONCURRENCY", "3")]).await;

    let (status, v) = support::get_json(&format!("{}/jobs", gw.url())).await;
    assert_eq!(status, 200, "open mode: no API_KEYS came from a .env: {v}");
    let log = gw.proc_.log();
    assert!(log.contains("WEBHOOK_SECRET is not set"), "no exported WEBHOOK_SECRET came through:\n{log}");
    assert!(!log.contains(DOTENV_KEY), "{log}");

    let pid = gw.proc_.pid();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the gateway's environment");
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).split('=').next().unwrap_or("").to_string())
        .collect();
    let set_by_test =
        ["PORT", "HOST", "COMFYUI_URL", "DATABASE_URL", "POLL_INTERVAL_MS", "LOG_LEVEL", "MAX_CONCURRENCY"];
    let allowed: HashSet<&str> = support::INHERITED.iter().chain(set_by_test.iter()).copied().collect();
    let foreign: Vec<&String> = names.iter().filter(|n| !allowed.contains(n.as_str())).collect();
    assert!(foreign.is_empty(), "variables the test did not give the gateway: {foreign:?}");
    assert!(names.iter().any(|n| n == "MAX_CONCURRENCY"), "the test's own variables do pass: {names:?}");

    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("the gateway's working directory");
    assert!(cwd.starts_with(dir.path()), "{} is not under the test's temp dir", cwd.display());
    assert!(!cwd.join(".env").exists() && cwd != Path::new(env!("CARGO_MANIFEST_DIR")), "{}", cwd.display());
}
