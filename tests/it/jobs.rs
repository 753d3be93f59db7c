//! End-to-end jobs through the real binary and the simulator: every bundled workflow,
//! downloads with hashes, priorities, per-backend concurrency, and failure codes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, eventually_within, get_json};

const WAIT: Duration = Duration::from_secs(60);

async fn download(gw: &Gateway, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = reqwest::get(format!("{}{url}", gw.url())).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bundled_workflow_runs_and_its_output_downloads_with_a_matching_hash() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let (status, list) = get_json(&format!("{}/workflows", gw.url())).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["workflows"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
    for id in ["sdxl_realism_v1", "sprite_transparent_bg", "icon_512"] {
        assert!(ids.contains(&id), "{id} is registered on first start: {ids:?}");
    }
    for id in ["sdxl_realism_v1", "sprite_transparent_bg", "icon_512"] {
        let job = gw.submit_ok(json!({"workflowId": id, "inputs": {"prompt": "a red fox", "seed": 7}})).await;
        let done = gw.wait_terminal(&job, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{id}: {done}\n{}", gw.proc_.log());
        assert_eq!(done["seed"], 7);
        let outputs = done["outputs"].as_array().unwrap();
        assert!(!outputs.is_empty(), "{id} has outputs");
        for o in outputs {
            let (status, headers, bytes) = download(&gw, o["url"].as_str().unwrap()).await;
            assert_eq!(status, 200);
            assert_eq!(bytes.len() as u64, o["size"].as_u64().unwrap());
            let hash = blake3::hash(&bytes).to_hex().to_string();
            assert_eq!(hash, o["hash"].as_str().unwrap(), "{id}: stored hash is the BLAKE3 of the bytes");
            assert_eq!(headers["etag"].to_str().unwrap(), format!("\"{hash}\""));
            assert_eq!(headers["content-type"], "image/png");
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{id}: a real PNG");
            // The listing agrees, and a matching If-None-Match is a 304.
            let r = reqwest::Client::new()
                .get(format!("{}{}", gw.url(), o["url"].as_str().unwrap()))
                .header("if-none-match", format!("\"{hash}\""))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 304);
        }
        let (status, listing) = get_json(&format!("{}/outputs/{job}", gw.url())).await;
        assert_eq!(status, 200);
        assert_eq!(listing["outputs"], done["outputs"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_seed_is_drawn_and_recorded_when_omitted() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let a = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}})).await;
    let b = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}})).await;
    let (a, b) = (gw.job(&a).await, gw.job(&b).await);
    let (sa, sb) = (a["seed"].as_i64().expect("seed recorded"), b["seed"].as_i64().expect("seed recorded"));
    assert_ne!(sa, sb, "two omitted seeds differ");
    assert_eq!(a["inputs"]["seed"], sa, "the drawn seed is in the rendered inputs");
}

/// Submit a job that occupies the only slot for a while, then jobs of each priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_are_honoured_and_a_backend_never_gets_more_than_its_limit() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 60).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_CONCURRENCY", "1")]).await;
    let submit = |priority: Value| {
        let gw = &gw;
        async move {
            gw.submit_ok(json!({"workflowId": "icon_512", "priority": priority, "inputs": {"prompt": "p", "seed": 1}}))
                .await
        }
    };
    let blocker = submit(json!("normal")).await;
    // Make sure the blocker is on the backend before the others arrive.
    eventually_within(WAIT, "the blocker leaves the queue", async || {
        let v = gw.job(&blocker).await;
        if v["status"] != "queued" { Ok(()) } else { Err(v) }
    })
    .await;
    let low = submit(json!("low")).await;
    let normal = submit(json!("normal")).await;
    let high = submit(json!("high")).await;
    let urgent = submit(json!(5)).await;
    let queued = gw.job(&low).await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["queuePosition"], 3, "low is behind urgent, high and normal");
    for id in [&blocker, &low, &normal, &high, &urgent] {
        assert_eq!(gw.wait_terminal(id, WAIT).await["status"], "succeeded");
    }
    let ex = sim.executions().await;
    let order: Vec<String> = support::executions(&ex).into_iter().map(|(id, _)| id).collect();
    assert_eq!(order, vec![blocker, urgent, high, normal, low], "arrival order at ComfyUI");
    assert_eq!(ex["maxQueueDepth"], 1, "never more than MAX_CONCURRENCY prompts at the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_over_two_backends_within_each_limit() {
    let dir = support::tempdir();
    let (d1, d2) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let s1 = Sim::start(&d1, 30).await;
    let s2 = Sim::start(&d2, 30).await;
    let gw = Gateway::start(dir.path(), &format!("{},{}", s1.url(), s2.url()), &[("MAX_CONCURRENCY", "2")]).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "p", "seed": i}})).await);
    }
    for id in &ids {
        assert_eq!(gw.wait_terminal(id, WAIT).await["status"], "succeeded");
    }
    let (e1, e2) = (s1.executions().await, s2.executions().await);
    let (n1, n2) = (support::executions(&e1).len(), support::executions(&e2).len());
    assert_eq!(n1 + n2, 12);
    assert!(n1 >= 3 && n2 >= 3, "both backends are used: {n1} / {n2}");
    assert!(e1["maxQueueDepth"].as_u64().unwrap() <= 2 && e2["maxQueueDepth"].as_u64().unwrap() <= 2);
    let (_, health) = get_json(&format!("{}/health", gw.url())).await;
    assert_eq!(health["comfyui"]["backends"].as_array().unwrap().len(), 2);
    assert_eq!(health["comfyui"]["backends"][0]["comfyuiVersion"], "0.3.64");
}

/// A workflow whose prompt ComfyUI rejects (HTTP 400) fails with COMFYUI_NODE_ERROR and the
/// per-node details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_with_their_codes() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("COMFYUI_TIMEOUT_MS", "1500")]).await;

    // A prompt ComfyUI rejects: EmptyImage width below its minimum.
    let bad = json!({
        "id": "bad_width",
        "workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bad"}}
        },
        "inputSchema": {"type": "object", "properties": {"width": {"type": "integer"}}, "required": ["width"]}
    });
    let (status, v) = support::post_json(&format!("{}/workflows", gw.url()), &bad).await;
    assert_eq!(status, 201, "{v}");
    let job = gw.submit_ok(json!({"workflowId": "bad_width", "inputs": {"width": 0}})).await;
    let done = gw.wait_terminal(&job, WAIT).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "COMFYUI_NODE_ERROR", "{done}");
    assert_eq!(done["error"]["details"]["nodeErrors"][0]["nodeId"], "1");
    assert_eq!(done["error"]["details"]["nodeErrors"][0]["type"], "value_smaller_than_min");
    // The message names the node, its class, the input and the reason.
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("node 1 (EmptyImage), input width: Value 0 smaller than min of"), "{message}");

    let run = |seed: i64| {
        let gw = &gw;
        async move { gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "p", "seed": seed}})).await }
    };

    // Out of memory while executing.
    sim.faults(json!({"oom": 1})).await;
    let done = gw.wait_terminal(&run(1).await, WAIT).await;
    assert_eq!(
        (done["status"].as_str(), done["error"]["code"].as_str()),
        (Some("failed"), Some("COMFYUI_OOM")),
        "{done}"
    );
    assert_eq!(done["error"]["retryable"], true);

    // A node raising at run time.
    sim.faults(json!({"nodeError": 1})).await;
    let done = gw.wait_terminal(&run(2).await, WAIT).await;
    assert_eq!(done["error"]["code"], "COMFYUI_NODE_ERROR", "{done}");
    assert_eq!(done["error"]["details"]["exceptionType"], "RuntimeError");

    // Hanging past COMFYUI_TIMEOUT_MS: interrupted, then COMFYUI_TIMEOUT.
    sim.faults(json!({"hang": 1})).await;
    let done = gw.wait_terminal(&run(3).await, WAIT).await;
    assert_eq!(done["error"]["code"], "COMFYUI_TIMEOUT", "{done}");

    // The backend keeps working afterwards.
    let done = gw.wait_terminal(&run(4).await, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

/// An interrupt issued on ComfyUI itself (not through the gateway) cancels the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_on_comfyui_cancels_the_job() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    sim.faults(json!({"hang": 1})).await;
    let job = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "p", "seed": 9}})).await;
    // Interrupt only once the prompt executes (hung) on ComfyUI, and the gateway runs it.
    eventually_within(WAIT, "the prompt executes on the simulator", async || {
        let ex = support::executions(&sim.executions().await);
        if ex.iter().any(|(id, _)| id == &job) { Ok(()) } else { Err(ex) }
    })
    .await;
    assert_eq!(gw.job(&job).await["status"], "running");
    let r = reqwest::Client::new().post(format!("{}/interrupt", sim.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let done = gw.wait_terminal(&job, WAIT).await;
    assert_eq!(done["status"], "canceled", "{done}");
}

/// Cancel through the gateway: queued at once, running by interrupting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_jobs() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    sim.faults(json!({"hang": 1})).await;
    let running = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "p", "seed": 1}})).await;
    let queued = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "p", "seed": 2}})).await;
    eventually_within(WAIT, "the first job runs", async || {
        let v = gw.job(&running).await;
        if v["status"] == "running" { Ok(()) } else { Err(v) }
    })
    .await;
    let (status, v) = support::post_json(&format!("{}/jobs/{queued}/cancel", gw.url()), &json!({})).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("canceled")), "{v}");
    let (status, _) = support::post_json(&format!("{}/jobs/{running}/cancel", gw.url()), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(gw.wait_terminal(&running, WAIT).await["status"], "canceled");
    let (status, v) = support::post_json(&format!("{}/jobs/{running}/cancel", gw.url()), &json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("CONFLICT")), "finished jobs cannot be canceled");
    let ex = support::executions(&sim.executions().await);
    assert!(!ex.iter().any(|(id, _)| id == &queued), "a canceled queued job never reaches ComfyUI");
}
