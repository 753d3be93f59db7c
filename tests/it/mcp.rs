//! `/mcp` through the official MCP Python SDK (`mcp` on PyPI, pinned by `scripts/ci-deps`
//! in a venv of its own under `<target dir>/tools/mcp-venv`), in both of its connect modes:
//! protocol 2026-07-28 (stateless) and the older initialize handshake, and through the
//! stdio bridge (`comfyui-gateway mcp`). Against the real binary and the simulator, with
//! two user keys and an admin key.

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
const ADMIN: &str = "admin-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_python_sdk_lists_runs_and_reads_jobs_as_the_rest_api_allows() {
    let Some(python) = support::require("the MCP Python SDK", mcp_python()) else { return };
    let dir = support::tempdir();
    // Nodes take long enough for progress to be reported.
    let sim = Sim::start(dir.path(), 400).await;
    let keys = format!("{USER}:user,{OTHER}:user,{ADMIN}:admin");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", keys.as_str())]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/check.py");
    for mode in ["auto", "legacy", "stdio"] {
        let url = format!("{}/mcp", gw.url());
        let out = tokio::task::spawn_blocking({
            let (python, script) = (python.clone(), script.clone());
            move || {
                Command::new(python)
                    .arg(script)
                    .args([url.as_str(), USER, OTHER, ADMIN, mode, support::BIN])
                    .env_remove("GATEWAY_URL")
                    .env_remove("GATEWAY_API_KEY")
                    .output()
            }
        })
        .await
        .unwrap()
        .expect("run the MCP client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{mode}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        let seen: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{mode}: {e}: {stdout}"));
        let tools: Vec<&str> = seen["tools"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        for name in ["icon_512", "sdxl_realism_v1", "sprite_transparent_bg"].into_iter().chain([
            "list_workflows",
            "get_job",
            "list_jobs",
            "cancel_job",
            "get_output",
        ]) {
            assert!(tools.contains(&name), "{mode}: {tools:?}");
        }
        assert_eq!(seen["workflow_tools"]["icon_512"], "icon_512", "{mode}: {seen}");
        let props = seen["icon_schema_properties"].as_array().unwrap();
        assert!(props.iter().any(|p| p == "prompt") && props.iter().any(|p| p == "seed"), "{mode}: {props:?}");
        let job_id = seen["job_id"].as_str().unwrap();
        for (what, got) in [("run", &seen["run"]), ("get_output", &seen["get_output"])] {
            assert_eq!(got["is_error"], false, "{mode} {what}: {seen}");
            assert_eq!(
                (got["png"].as_bool(), got["image_mime"].as_str()),
                (Some(true), Some("image/png")),
                "{mode} {what}: {seen}"
            );
            assert!(got["image_bytes"].as_u64().unwrap() > 1000, "{mode} {what}: {seen}");
            let link = got["link"].as_str().unwrap();
            assert!(link.starts_with(&gw.url()) && link.contains(&format!("/outputs/{job_id}/")), "{mode}: {link}");
        }
        assert_eq!(seen["run"]["status"], "succeeded", "{mode}: {seen}");
        assert!(seen["run"]["progress"].as_u64().unwrap() > 0, "{mode}: progress notifications: {seen}");
        assert_eq!(seen["run"]["progress_increasing"], true, "{mode}: MCP progress only increases: {seen}");
        assert_eq!(seen["retried_same_job"], true, "the same call again is the same job: {seen}");
        assert_eq!(seen["bad"]["is_error"], true, "{mode}: {seen}");
        assert!(seen["bad"]["text"].as_str().unwrap().starts_with("VALIDATION_ERROR: "), "{mode}: {seen}");
        assert!(seen["unknown_tool"].as_str().unwrap().contains("Unknown tool"), "{mode}: {seen}");
        assert_eq!(seen["own_get_job"]["status"], "succeeded", "{mode}: {seen}");
        assert!(seen["get_output_missing"].as_str().unwrap().starts_with("NOT_FOUND: "), "{mode}: {seen}");
        assert!(seen["bad_list"].as_str().unwrap().starts_with("VALIDATION_ERROR: "), "{mode}: {seen}");
        let has = |list: &str| seen[list].as_array().unwrap().iter().any(|j| j == job_id);
        assert!(has("own_list"), "{mode}: {seen}");
        assert_eq!(seen["cancel"], "canceled", "{mode}: {seen}");
        if mode != "stdio" {
            // Ownership as over REST: another user sees, lists and cancels none of them; an
            // admin lists everybody's.
            assert_eq!(seen["other_get_job"]["is_error"], true, "{mode}: {seen}");
            assert!(seen["other_get_job"]["text"].as_str().unwrap().starts_with("JOB_NOT_FOUND: "), "{mode}: {seen}");
            assert!(!has("other_list"), "{mode}: {seen}");
            assert!(seen["other_cancel"].as_str().unwrap().starts_with("JOB_NOT_FOUND: "), "{mode}: {seen}");
            assert!(has("admin_list"), "{mode}: {seen}");
        }
        if mode == "legacy" {
            // Change notifications are a 2026-07-28 stream; older clients list again.
            continue;
        }
        assert_eq!(seen["listen_honored"], true, "{mode}: {seen}");
        assert_eq!(seen["registered"], 201, "{mode}: {seen}");
        assert_eq!(seen["list_changed"], "ToolsListChanged", "{mode}: {seen}");
        assert_eq!(seen["added_listed"], true, "{mode}: {seen}");
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

/// A `subscriptions/listen` request (protocol 2026-07-28) over raw HTTP: the open
/// response, its status checked by the caller.
async fn listen(url: &str, key: &str) -> reqwest::Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen",
        "params": {
            "notifications": {"toolsListChanged": true},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    reqwest::Client::new()
        .post(url)
        .header("x-api-key", key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(&body)
        .send()
        .await
        .expect("POST /mcp")
}

/// The next JSON-RPC message of an event stream whose `method` is `method`, skipping others.
async fn next_message(resp: &mut reqwest::Response, pending: &mut String, method: &str) -> Value {
    loop {
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
            if data.is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(&data.join("\n")).unwrap_or_else(|e| panic!("{e}: {event}"));
            if message["method"] == method {
                return message;
            }
        }
        let chunk = resp.chunk().await.expect("the stream").expect("the stream ended");
        pending.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
    }
}

/// Change subscriptions count against the event-stream caps: a client holding
/// `MAX_EVENT_STREAMS_PER_CLIENT` of them is refused another (until it closes one), while
/// another client's subscription is acknowledged and told when a workflow is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_subscriptions_are_capped_per_client_and_a_neighbour_is_told_of_changes() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let keys = format!("{USER}:user,{OTHER}:user,{ADMIN}:admin");
    let env = [("API_KEYS", keys.as_str()), ("MAX_EVENT_STREAMS_PER_CLIENT", "2")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let url = format!("{}/mcp", gw.url());
    const ACK: &str = "notifications/subscriptions/acknowledged";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut resp = listen(&url, USER).await;
        assert_eq!(resp.status(), 200);
        let ack = next_message(&mut resp, &mut String::new(), ACK).await;
        assert_eq!(ack["params"]["notifications"]["toolsListChanged"], true, "{ack}");
        held.push(resp);
    }
    let refused = listen(&url, USER).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
    assert_eq!(body["error"]["details"]["limit"], "MAX_EVENT_STREAMS_PER_CLIENT", "{body}");

    let mut neighbour = listen(&url, OTHER).await;
    assert_eq!(neighbour.status(), 200);
    let mut pending = String::new();
    next_message(&mut neighbour, &mut pending, ACK).await;
    let workflow = serde_json::json!({"id": "added_while_listening", "workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}});
    let created = reqwest::Client::new()
        .post(format!("{}/workflows", gw.url()))
        .header("x-api-key", ADMIN)
        .json(&workflow)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let told = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        next_message(&mut neighbour, &mut pending, "notifications/tools/list_changed"),
    )
    .await
    .expect("the neighbour is told of the change");
    assert_eq!(told["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen-1", "{told}");

    // A closed subscription gives its slot back.
    drop(held.pop());
    support::eventually_within(
        std::time::Duration::from_secs(10),
        || "a slot is given back".to_string(),
        async || {
            let status = listen(&url, USER).await.status();
            if status == 200 { Ok(()) } else { Err(status) }
        },
    )
    .await;
}

/// A workflow call that outlasts `MCP_WAIT_SECONDS` answers with the job as it stands and
/// its id; `get_job` then follows it to its end, and the same call again is that job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outlasting_its_wait_answers_with_the_job_to_follow() {
    let dir = support::tempdir();
    // icon_512 runs several nodes of 400 ms: longer than the 1 s wait.
    let sim = Sim::start(dir.path(), 400).await;
    let keys = format!("{USER}:user");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", keys.as_str()), ("MCP_WAIT_SECONDS", "1")]).await;
    let url = format!("{}/mcp", gw.url());
    let args = serde_json::json!({"prompt": "a slow one", "seed": 11});
    let started = std::time::Instant::now();
    let early = call_tool(&url, USER, "icon_512", args.clone()).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "answered after the wait");
    assert_ne!(early["isError"], true, "{early}");
    let status = early["structuredContent"]["status"].as_str().unwrap();
    assert!(status == "queued" || status == "running", "{early}");
    let job_id = early["structuredContent"]["jobId"].as_str().unwrap().to_string();
    let text = early["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("get_job") && text.contains(&job_id), "{text}");
    let done = support::eventually_within(
        std::time::Duration::from_secs(60),
        || "get_job sees the job succeed".to_string(),
        async || {
            let read = call_tool(&url, USER, "get_job", serde_json::json!({"jobId": job_id})).await;
            if read["structuredContent"]["status"] == "succeeded" { Ok(read) } else { Err(read) }
        },
    )
    .await;
    assert!(done["content"].as_array().unwrap().iter().any(|c| c["type"] == "image"), "{done}");
    let again = call_tool(&url, USER, "icon_512", args).await;
    assert_eq!(again["structuredContent"]["jobId"], job_id.as_str(), "{again}");
    assert_eq!(again["structuredContent"]["status"], "succeeded", "{again}");
}

/// `MCP_INLINE_IMAGE_BYTES` is the largest image a result inlines: at 0 every output comes
/// back as a link only (here a PNG of some kilobytes), still absolute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_over_the_inline_size_come_back_as_links_only() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let keys = format!("{USER}:user");
    let env = [("API_KEYS", keys.as_str()), ("MCP_INLINE_IMAGE_BYTES", "0")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let url = format!("{}/mcp", gw.url());
    let result = call_tool(&url, USER, "icon_512", serde_json::json!({"prompt": "links only", "seed": 5})).await;
    assert_eq!(result["structuredContent"]["status"], "succeeded", "{result}");
    let content = result["content"].as_array().unwrap();
    assert!(!content.iter().any(|c| c["type"] == "image"), "nothing inline: {result}");
    let link = content.iter().find(|c| c["type"] == "resource_link").expect("a link");
    assert!(link["uri"].as_str().unwrap().starts_with(&gw.url()), "{link}");
    assert_eq!(link["mimeType"], "image/png", "{link}");
    assert!(link["size"].as_u64().unwrap() > 0, "{link}");
}
