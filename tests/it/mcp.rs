//! `/mcp` through the official MCP Python SDK (`mcp` on PyPI, pinned by `scripts/ci-deps`
//! in a venv of its own under `<target dir>/tools/mcp-venv`), in both of its connect modes:
//! protocol 2026-07-28 (stateless) and the older initialize handshake with a session.
//! Against the real binary and the simulator, with two user keys.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{self, Gateway, Sim};

/// The SDK's Python: `<target dir>/tools/mcp-venv/bin/python`.
fn mcp_python() -> Option<PathBuf> {
    let target = Path::new(support::BIN).parent()?.parent()?;
    let python = target.join("tools/mcp-venv/bin/python");
    python.is_file().then_some(python)
}

const USER: &str = "user-one-0123456789abcdef";
const OTHER: &str = "user-two-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_python_sdk_lists_runs_and_reads_jobs_as_the_rest_api_allows() {
    let Some(python) = support::require("the MCP Python SDK", mcp_python()) else { return };
    let dir = support::tempdir();
    // Nodes take long enough for progress to be reported.
    let sim = Sim::start(dir.path(), 400).await;
    let keys = format!("{USER}:user,{OTHER}:user");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", keys.as_str())]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/check.py");
    for mode in ["auto", "legacy"] {
        let url = format!("{}/mcp", gw.url());
        let out = tokio::task::spawn_blocking({
            let (python, script) = (python.clone(), script.clone());
            move || Command::new(python).arg(script).args([url.as_str(), USER, OTHER, mode]).output()
        })
        .await
        .unwrap()
        .expect("run the MCP client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{mode}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        let seen: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{mode}: {e}: {stdout}"));
        let tools: Vec<&str> = seen["tools"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        for name in ["icon_512", "sdxl_realism_v1", "sprite_transparent_bg", "get_job"] {
            assert!(tools.contains(&name), "{mode}: {tools:?}");
        }
        let props = seen["icon_schema_properties"].as_array().unwrap();
        assert!(props.iter().any(|p| p == "prompt") && props.iter().any(|p| p == "seed"), "{mode}: {props:?}");
        let run = &seen["run"];
        assert_eq!(run["is_error"], false, "{mode}: {seen}");
        assert_eq!(run["status"], "succeeded", "{mode}: {seen}");
        assert_eq!(
            (run["png"].as_bool(), run["image_mime"].as_str()),
            (Some(true), Some("image/png")),
            "{mode}: {seen}"
        );
        assert!(run["image_bytes"].as_u64().unwrap() > 1000, "{mode}: {seen}");
        let link = run["link"].as_str().unwrap();
        assert!(link.starts_with(&gw.url()) && link.contains("/outputs/"), "an absolute link: {link}");
        assert!(run["progress"].as_u64().unwrap() > 0, "{mode}: progress notifications: {seen}");
        assert_eq!(seen["retried_same_job"], true, "the same call again is the same job: {seen}");
        assert_eq!(seen["bad"]["is_error"], true, "{mode}: {seen}");
        assert!(seen["bad"]["text"].as_str().unwrap().starts_with("VALIDATION_ERROR: "), "{mode}: {seen}");
        assert_eq!(seen["own_get_job"]["status"], "succeeded", "{mode}: {seen}");
        assert_eq!(seen["other_get_job"]["is_error"], true, "{mode}: {seen}");
        assert!(seen["other_get_job"]["text"].as_str().unwrap().starts_with("JOB_NOT_FOUND: "), "{mode}: {seen}");
    }
}

/// One stateless (2026-07-28) JSON-RPC `tools/call` over raw HTTP: the JSON-RPC result.
async fn call_tool(url: &str, key: &str, tool: &str, arguments: Value) -> Value {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": tool, "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    let resp = reqwest::Client::new()
        .post(url)
        .header("x-api-key", key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .json(&body)
        .send()
        .await
        .expect("POST /mcp");
    assert_eq!(resp.status(), 200, "POST /mcp");
    let text = resp.text().await.unwrap();
    // JSON, or an event stream whose last `data:` line is the answer.
    let answer = text.lines().rev().find_map(|l| l.strip_prefix("data: ")).unwrap_or(text.as_str()).to_string();
    let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {text}"));
    answer["result"].clone()
}

/// A client flooding waiting workflow tool calls is refused beyond
/// `MAX_SYNC_WAITS_PER_CLIENT` (a tool error with `RATE_LIMITED`, before any job is made),
/// the caps `POST /jobs?wait=` counts against, while another client's call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_waiting_tool_calls_is_capped_and_a_neighbour_is_served() {
    const ATTACKERS: usize = 8;
    const WAITS: usize = 2;
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 400).await;
    let keys = format!("{USER}:user,{OTHER}:user");
    let env = [("API_KEYS", keys.as_str()), ("MAX_SYNC_WAITS_PER_CLIENT", "2"), ("MAX_CONNECTIONS_PER_IP", "1024")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let url = format!("{}/mcp", gw.url());
    let attack: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                call_tool(&url, USER, "icon_512", serde_json::json!({"prompt": "a flood", "seed": 100 + i})).await
            })
        })
        .collect();
    // The neighbour, once the flood is under way.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let served = call_tool(&url, OTHER, "icon_512", serde_json::json!({"prompt": "a neighbour", "seed": 7})).await;
    assert_ne!(served["isError"], true, "{served}");
    assert_eq!(served["structuredContent"]["status"], "succeeded", "{served}");
    assert!(served["content"].as_array().unwrap().iter().any(|c| c["type"] == "image"), "{served}");
    let mut refused = 0;
    for task in attack {
        let result = task.await.unwrap();
        if result["isError"] == true {
            let text = result["content"][0]["text"].as_str().unwrap();
            assert!(text.starts_with("RATE_LIMITED: "), "{result}");
            assert_eq!(
                result["structuredContent"]["error"]["details"]["limit"], "MAX_SYNC_WAITS_PER_CLIENT",
                "{result}"
            );
            refused += 1;
        } else {
            assert_eq!(result["structuredContent"]["status"], "succeeded", "{result}");
        }
    }
    assert_eq!(refused, ATTACKERS - WAITS, "all but the held waits are refused");
    // A refused call made no job.
    let list: Value =
        support::get(&format!("{}/jobs?limit=100", gw.url()), &[("x-api-key", USER)]).await.json().await.unwrap();
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(WAITS), "{list}");
}

/// The same call is the same job, except after a failure: a call repeated after its job
/// failed runs anew (a replay would hand the failure back until the key expires), and a
/// repeat of that run is the same job again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_repeated_after_its_job_failed_runs_anew() {
    let dir = support::tempdir();
    // The first prompt fails with a node error (not retried), the next ones succeed.
    let sim =
        Sim::start_with(dir.path(), &["--node-delay-ms".into(), "0".into(), "--fault-node-error".into(), "1".into()])
            .await;
    let keys = format!("{USER}:user");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", keys.as_str())]).await;
    let url = format!("{}/mcp", gw.url());
    let args = serde_json::json!({"prompt": "twice", "seed": 3});
    let failed = call_tool(&url, USER, "icon_512", args.clone()).await;
    assert_eq!(failed["isError"], true, "{failed}");
    assert_eq!(failed["structuredContent"]["status"], "failed", "{failed}");
    let anew = call_tool(&url, USER, "icon_512", args.clone()).await;
    assert_ne!(anew["isError"], true, "{anew}");
    assert_eq!(anew["structuredContent"]["status"], "succeeded", "{anew}");
    assert_ne!(anew["structuredContent"]["jobId"], failed["structuredContent"]["jobId"], "a new job");
    let again = call_tool(&url, USER, "icon_512", args).await;
    assert_eq!(again["structuredContent"]["jobId"], anew["structuredContent"]["jobId"], "the succeeded job, replayed");
}
