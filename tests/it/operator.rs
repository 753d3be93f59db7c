//! The conventions an operator expects of a daemon, on the real binary: logs into a file or
//! pipe carry no colour codes; an unreachable backend is logged at start; a misspelled
//! setting (exported or in `.env`) is named with the setting meant, a correct configuration
//! warns about nothing; clap's messages arrive whole (the missing argument, the "tip", the
//! usage line) with exit code 2; `HOST` takes a name; `serve --help` is grouped by topic.

use crate::support::{self, DeadPort, Gateway, Sim, eventually};

/// What a line of a misspelled setting looks like.
const UNKNOWN: &str = "unknown setting";

/// A gateway whose backend refuses connections, its logs into a file: the start line names
/// the backend and the error; no escape sequence anywhere; a correct configuration warns
/// about no unknown setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_logs_are_plain_and_a_dead_backend_is_logged_at_start() {
    let dir = support::tempdir();
    let dead = DeadPort::new();
    let gw = Gateway::start(dir.path(), &format!("{}#id=gpu-down", dead.url()), &[]).await;
    let line = eventually("the gateway logs the unreachable backend", async || {
        gw.proc_.log().lines().find(|l| l.contains("backend unreachable")).map(str::to_string)
    })
    .await;
    assert!(line.contains("WARN") && line.contains("gpu-down"), "names the backend: {line}");
    assert!(line.contains("error="), "says why: {line}");
    eventually("the gateway says it listens", async || gw.proc_.log().contains("listening").then_some(())).await;
    let log = gw.proc_.log();
    assert!(!log.contains('\x1b'), "no escape sequence in a log file:\n{log:?}");
    assert!(!log.contains(UNKNOWN), "a correct configuration warns about nothing:\n{log}");
    // Probed several times a second while down, logged again only after a minute.
    assert_eq!(gw.proc_.log().matches("backend unreachable").count(), 1, "{}", gw.proc_.log());
}

/// `COMFYUI_ULR` exported for `serve`, and `WEBHOOK_SECRTE` in a `.env` for another command:
/// each named once with the setting meant; `GATEWAY_URL` (the CLI's) is not unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_setting_is_named_with_the_setting_meant() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let env = [("COMFYUI_ULR", "http://127.0.0.1:1"), ("GATEWAY_URL", "http://127.0.0.1:1")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let expected = "unknown setting COMFYUI_ULR (did you mean COMFYUI_URL?)";
    eventually("serve warns about COMFYUI_ULR", async || gw.proc_.log().contains(expected).then_some(())).await;
    let log = gw.proc_.log();
    assert_eq!(log.matches(UNKNOWN).count(), 1, "only the typo:\n{log}");
    assert!(log.lines().any(|l| l.contains("WARN") && l.contains(expected)), "{log}");

    let cwd = support::tempdir();
    std::fs::write(cwd.path().join(".env"), "WEBHOOK_SECRTE=whsec_abc\nLOG_LEVEL=info\n").unwrap();
    let db = cwd.path().join("g.redb");
    let mut cmd = support::bin();
    cmd.current_dir(cwd.path()).args(["list-workflows", "--database-url", db.to_str().unwrap()]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("unknown setting WEBHOOK_SECRTE (did you mean WEBHOOK_SECRET?)"), "{stderr}");
    assert_eq!(stderr.matches(UNKNOWN).count(), 1, "{stderr}");
}

/// clap's whole message: the missing argument named with the usage line, a "tip" for a
/// misspelled flag, exit code 2; `--help` and `--version` exit 0.
#[test]
fn clap_messages_are_whole() {
    let run = |args: &[&str]| {
        let out = support::bin().args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, text) = run(&["add-workflow"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("the following required arguments were not provided"), "{text}");
    assert!(text.contains("<FILE>") && text.contains("--id <ID>"), "names what is missing: {text}");
    assert!(text.contains("Usage: comfyui-gateway add-workflow"), "{text}");
    assert_eq!(text.matches("error:").count(), 1, "{text}");
    let (code, text) = run(&["serve", "--prot", "3000"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("tip:") && text.contains("'--port'"), "suggests the flag meant: {text}");
    let (code, text) = run(&["serve", "--log-format"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--log-format <LOG_FORMAT>"), "{text}");
    for args in [&["--help"][..], &["--version"], &["serve", "--help"]] {
        assert_eq!(run(args).0, Some(0), "{args:?}");
    }
    let (_, help) = run(&["serve", "--help"]);
    for heading in ["Server:", "Backends:", "Storage:", "Limits:", "Authentication:", "Webhooks:", "Plugins:"] {
        assert!(help.contains(&format!("\n{heading}\n")), "serve --help has {heading}:\n{help}");
    }
}

/// `HOST=localhost` serves (on the loopback address the harness and clients use); a value
/// that is neither an address nor a name is refused naming `HOST` (no name is looked up in
/// DNS here: tests send nothing beyond 127.0.0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_takes_a_name() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("HOST", "localhost")]).await;
    let health = eventually("the gateway on HOST=localhost answers", async || {
        let (status, body) = support::get_json(&format!("{}/health", gw.url())).await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(health.is_object(), "{health}");
    let (code, text) = {
        let out = support::bin().args(["serve", "--host", "not a host"]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("HOST") && text.contains("not a host"), "{text}");
}

/// `scripts/run` (with `--bin`, no build) against a backend that lacks the checkpoint the
/// first job asks for: it prints the error code, the message, which file is missing, what
/// the backend has and what to do (`workflows/README.md`, `CHECKPOINT=`, `import-workflow`);
/// the gateway keeps serving, and stopping the script (SIGTERM, as Ctrl-C) stops it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_explains_a_failed_first_job_and_keeps_serving() {
    if support::require_tool("curl").is_none() {
        return;
    }
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run");
    let envs: Vec<(String, String)> = [
        ("PORT", "0".to_string()),
        ("COMFYUI_URL", sim.url()),
        ("DATABASE_URL", dir.path().join("run.redb").display().to_string()),
        ("CHECKPOINT", "missing_model.safetensors".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    let args = ["--bin".to_string(), support::BIN.to_string()];
    let mut run =
        support::Proc::spawn_program(&script, "scripts/run", dir.path(), &args, &envs, dir.path().join("run.log"));
    let log = eventually(
        || format!("scripts/run reports the job:\n{}", run.log()),
        async || run.log().contains("keeps running on").then(|| run.log()),
    )
    .await;
    assert!(log.contains(": failed"), "{log}");
    assert!(log.contains("error code: COMFYUI_NODE_ERROR"), "{log}");
    assert!(log.contains("message:    ComfyUI rejected the prompt"), "{log}");
    assert!(log.contains("lacks the checkpoint missing_model.safetensors"), "which file: {log}");
    assert!(log.contains("sd_xl_base_1.0.safetensors"), "what the backend has: {log}");
    for what_to_do in ["workflows/README.md", "CHECKPOINT=", "import-workflow", "Ctrl-C"] {
        assert!(log.contains(what_to_do), "says {what_to_do}: {log}");
    }
    let gateway = log.split("keeps running on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    let (status, _) = support::get_json(&format!("{gateway}/workflows")).await;
    assert_eq!(status, 200, "the gateway keeps serving after the report");
    assert!(!run.exited(), "the script waits on the gateway:\n{}", run.log());
    // Ctrl-C's SIGTERM sibling: the script stops, and takes the gateway with it.
    let pid = rustix::process::Pid::from_raw(run.pid() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    run.wait_exit(support::DEADLINE).await;
    eventually("the gateway stops with the script", async || {
        reqwest::get(format!("{gateway}/workflows")).await.is_err().then_some(())
    })
    .await;
}
