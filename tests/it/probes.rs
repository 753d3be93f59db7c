//! Operator conventions: `/livez` (the process answers, whatever the backends) and
//! `/readyz` (the store works and a backend is reachable), both public and never rate
//! limited; `/metrics` with backend ids, `build_info` and known label values at zero; the
//! owner file next to the database, and the CLI's fallback refusing a gateway that holds
//! another database.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, DeadPort, Gateway, Sim, eventually, get_json};

/// A key, so that the probes are shown to be public.
const KEYS: &str = "admin-key-0123456789abcdef:admin";

/// A liveness probe never fails because ComfyUI is down; readiness says which check
/// failed, without the backend's URL; once a backend answers, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_is_up_while_readyz_waits_for_a_backend() {
    let dir = support::tempdir();
    let down = DeadPort::new();
    let port = down.port;
    let env = [("API_KEYS", KEYS), ("RATE_LIMIT_MAX", "1"), ("RATE_LIMIT_WINDOW_MS", "60000")];
    let gw = Gateway::start(dir.path(), &down.url(), &env).await;
    let http = reqwest::Client::new();
    // More requests than RATE_LIMIT_MAX, without credentials: never 401, never 429.
    for _ in 0..3 {
        let resp = http.get(format!("{}/livez", gw.url())).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("ratelimit").is_none(), "probes are not rate limited");
        let live: Value = resp.json().await.unwrap();
        assert_eq!(live["status"], "up");
        assert_eq!(live["version"], env!("CARGO_PKG_VERSION"));
        let id = live["database"].as_str().unwrap_or_default();
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{live}");

        let resp = http.get(format!("{}/readyz", gw.url())).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().get("ratelimit").is_none(), "probes are not rate limited");
        let text = resp.text().await.unwrap();
        let ready: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(ready, json!({"status": "not_ready", "checks": {"store": "ok", "backends": "unreachable"}}));
        assert!(!text.contains(&port.to_string()), "no backend address in a public answer: {text}");
    }
    // The limit holds elsewhere: the probes did not use it up, and a second call is over it.
    let with_key =
        |path: &str| http.get(format!("{}{path}", gw.url())).header("x-api-key", "admin-key-0123456789abcdef");
    assert_eq!(with_key("/capabilities").send().await.unwrap().status(), 200);
    assert_eq!(with_key("/capabilities").send().await.unwrap().status(), 429);
    // The CLI probes (the container's HEALTHCHECK is `health --live`), without a key.
    let (code, out) = health_cli(&gw.url(), "--live");
    assert_eq!(code, 0, "alive while the backend is down: {out}");
    assert!(out.contains("\"up\""), "{out}");
    let (code, out) = health_cli(&gw.url(), "--ready");
    assert_eq!(code, 1, "not ready while the backend is down: {out}");
    assert!(out.contains("not ready (503"), "{out}");

    drop(down);
    let _sim = Sim::start_on(dir.path(), port, &["--node-delay-ms".into(), "5".into()]).await;
    let ready = eventually("/readyz answers 200 once the simulator is up", async || {
        let (status, v) = get_json(&format!("{}/readyz", gw.url())).await;
        if status == 200 { Ok(v) } else { Err(format!("{status} {v}")) }
    })
    .await;
    assert_eq!(ready, json!({"status": "ready", "checks": {"store": "ok", "backends": "ok"}}));
    let (status, _) = get_json(&format!("{}/livez", gw.url())).await;
    assert_eq!(status, 200);
    let (code, out) = health_cli(&gw.url(), "--ready");
    assert_eq!(code, 0, "{out}");
}

/// `comfyui-gateway health PROBE --server-url URL`: its exit code, stdout and stderr.
fn health_cli(url: &str, probe: &str) -> (i32, String) {
    let out = support::bin().args(["health", probe, "--server-url", url]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Before any job: `build_info`, the backend by its id, and zero-valued series for the
/// closed enums and for each registered workflow (bundled at start, or added later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_backends_by_id_and_start_known_series_at_zero() {
    let dir = support::tempdir();
    let down = DeadPort::new();
    let gw = Gateway::start(dir.path(), &format!("{}#id=gpu1", down.url()), &[]).await;
    let text = gw.metrics().await;
    let version = env!("CARGO_PKG_VERSION");
    let plugins = cfg!(feature = "wasm-plugins");
    let mut expected = vec![
        format!("comfyui_gateway_build_info{{plugins=\"{plugins}\",version=\"{version}\"}} 1"),
        "comfyui_gateway_backend_up{backend=\"gpu1\"} 0".to_string(),
        "comfyui_gateway_backend_draining{backend=\"gpu1\"} 0".to_string(),
        "comfyui_gateway_job_attempts_total 0".to_string(),
        "comfyui_gateway_cache_lookups_total{result=\"miss\"} 0".to_string(),
        "comfyui_gateway_storage_refusals_total{reason=\"disk_full\"} 0".to_string(),
        "comfyui_gateway_job_wait_seconds_count{workflow=\"icon_512\"} 0".to_string(),
    ];
    for outcome in ["succeeded", "failed", "canceled"] {
        expected.push(format!("comfyui_gateway_jobs_finished_total{{outcome=\"{outcome}\",workflow=\"icon_512\"}} 0"));
    }
    for outcome in ["reattached", "collected", "resubmitted"] {
        expected.push(format!("comfyui_gateway_reconciliations_total{{outcome=\"{outcome}\"}} 0"));
    }
    for outcome in ["delivered", "retrying", "failed", "disabled"] {
        expected.push(format!("comfyui_gateway_webhook_attempts_total{{outcome=\"{outcome}\"}} 0"));
    }
    for line in &expected {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains(&down.url()), "no backend URL in a label:\n{text}");

    // A workflow registered while running has its series at the next scrape.
    support::register_invert(&gw).await;
    let text = gw.metrics().await;
    let line = "comfyui_gateway_jobs_finished_total{outcome=\"failed\",workflow=\"invert\"} 0";
    assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
}

/// Run the binary once with `args` and `env`: exit code, stdout, stderr.
fn cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = support::bin().args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn owner_file(db: &Path) -> std::path::PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".gateway.json");
    path.into()
}

/// Two gateways with two databases on one machine: the CLI, finding a database locked,
/// acts through the gateway that holds it (found by its owner file, or `GATEWAY_URL`) and
/// refuses any other, naming both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_fallback_refuses_a_gateway_holding_another_database() {
    let (dir_a, dir_b) = (support::tempdir(), support::tempdir());
    let down = DeadPort::new();
    let gw_a = Gateway::start(dir_a.path(), &down.url(), &[]).await;
    let mut gw_b = Gateway::start(dir_b.path(), &down.url(), &[]).await;
    let id_of =
        async |gw: &Gateway| get_json(&format!("{}/livez", gw.url())).await.1["database"].as_str().unwrap().to_string();
    let (id_a, id_b) = (id_of(&gw_a).await, id_of(&gw_b).await);
    assert_ne!(id_a, id_b);

    // Each gateway says, next to its database, where it listens and which database it holds.
    let owner: Value = serde_json::from_str(&std::fs::read_to_string(owner_file(&gw_a.db)).unwrap()).unwrap();
    assert_eq!(owner, json!({"url": gw_a.url(), "database": id_a}));

    let db_a = gw_a.db.display().to_string();
    let wf = dir_a.path().join("wf.json");
    let template = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}}
    });
    std::fs::write(&wf, template.to_string()).unwrap();
    let add = ["add-workflow", wf.to_str().unwrap(), "--id", "only_in_a"];
    let env_a = [("DATABASE_URL", db_a.as_str())];

    // The owner file finds A, whatever GATEWAY_URL says.
    let (code, out, err) = cli(&["list-workflows"], &[env_a[0], ("GATEWAY_URL", &gw_b.url())]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("icon_512"), "{out}");

    // A stale owner file (A crashed, B now answers there): B is asked and refused.
    let stale = json!({"url": gw_b.url(), "database": id_a}).to_string();
    std::fs::write(owner_file(&gw_a.db), &stale).unwrap();
    let (port_b, url_b) = (gw_b.port.to_string(), gw_b.url());
    for (args, env) in [
        (&["list-workflows"][..], vec![env_a[0]]),
        (&["list-workflows"][..], vec![env_a[0], ("PORT", port_b.as_str())]),
        (&add[..], vec![env_a[0], ("GATEWAY_URL", url_b.as_str())]),
    ] {
        let (code, out, err) = cli(args, &env);
        assert_eq!(code, Some(1), "{args:?} {env:?}: {out}{err}");
        assert!(out.is_empty(), "nothing listed or registered: {out}");
        for said in [id_a.as_str(), id_b.as_str(), gw_b.url().as_str(), db_a.as_str()] {
            assert!(err.contains(said), "the refusal names {said}: {err}");
        }
    }
    let (_, b_workflows) = get_json(&format!("{}/workflows", gw_b.url())).await;
    assert!(!b_workflows.to_string().contains("only_in_a"), "nothing registered into B: {b_workflows}");

    // With the owner file pointing nowhere, GATEWAY_URL naming A is checked and used.
    let nowhere = json!({"url": down.url(), "database": id_a}).to_string();
    std::fs::write(owner_file(&gw_a.db), &nowhere).unwrap();
    let (code, out, err) = cli(&add, &[env_a[0], ("GATEWAY_URL", &gw_a.url())]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("only_in_a version 1") && out.contains(&gw_a.url()), "{out}");

    // No owner file: the CLI cannot tell which gateway holds the database, and says so.
    std::fs::remove_file(owner_file(&gw_a.db)).unwrap();
    let (code, out, err) = cli(&["list-workflows"], &[env_a[0], ("GATEWAY_URL", &gw_a.url())]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(".gateway.json"), "{err}");

    // A clean shutdown removes the owner file; a restart writes it again.
    assert!(owner_file(&gw_b.db).is_file());
    let term = std::process::Command::new("kill").args(["-TERM", &gw_b.proc_.pid().to_string()]).status().unwrap();
    assert!(term.success());
    gw_b.wait_exit(Duration::from_secs(30)).await;
    assert!(!owner_file(&gw_b.db).exists(), "removed at a clean shutdown");
    gw_b.restart().await;
    let owner: Value = serde_json::from_str(&std::fs::read_to_string(owner_file(&gw_b.db)).unwrap()).unwrap();
    assert_eq!(owner, json!({"url": gw_b.url(), "database": id_b}), "the same database keeps its id");
}
