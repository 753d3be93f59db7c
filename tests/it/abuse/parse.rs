//! A misbehaving backend (or a proxy in front of it) answering `/queue` and
//! `/history/{id}` with what ComfyUI never sends (an HTML error page with 200, JSON of
//! another shape) while several jobs reconcile against it. The "attacker" here is the
//! backend: what it must not get is a second `POST /prompt` for any job, and the
//! well-behaved neighbour must not be starved by the reconcile loops. Once the answers are
//! real again every job completes, each prompt submitted and executed once.
//!
//! Scale: the issue gives no figures for this part; 4 concurrent jobs against one
//! simulator, 3 s of malformed answers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Neighbour;
use crate::support::{self, Gateway, Sim};

fn record<'a>(executions: &'a Value, id: &str) -> Option<&'a Value> {
    executions["executions"].as_array()?.iter().find(|e| e["promptId"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_backend_answers_resubmit_nothing_and_starve_nobody() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let env = [
        ("POLL_INTERVAL_MS", "50"),
        ("COMFYUI_HTTP_TIMEOUT_MS", "400"),
        ("COMFYUI_TIMEOUT_MS", "30000"),
        ("MAX_CONCURRENCY", "4"),
        ("CACHE_ENABLED", "false"),
    ];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    // Every job's `POST /prompt` answer never comes (the prompt is queued and runs), so
    // every job reconciles, and meets only malformed `/queue` and `/history` answers.
    sim.faults(json!({"promptHang": 4, "queueGarbage": 100_000, "historyGarbage": 100_000})).await;
    let mut ids = Vec::new();
    for seed in 0..4 {
        let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "malformed answers", "seed": seed}});
        ids.push(gw.submit_ok(body).await);
    }

    let neighbour = Neighbour::new(&gw.url(), None);
    let job_path = format!("/jobs/{}", ids[0]);
    let served = neighbour.probe_for(&["/health", &job_path, "/jobs?limit=10"], Duration::from_secs(3)).await;
    eprintln!("neighbour under malformed backend answers: {served:?}");
    // The neighbour's own submit is accepted too (it queues behind the 4 in flight).
    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "neighbour", "seed": 99}});
    let (status, accepted) = neighbour.post("/jobs", &body).await;
    assert_eq!(status, 202, "{accepted}");

    let (_, faults) = support::get_json(&format!("{}/sim/faults", sim.url())).await;
    assert!(faults["queueGarbage"].as_u64().is_some_and(|n| n < 100_000), "the jobs met the fault: {faults}");
    let executions = sim.executions().await;
    for id in &ids {
        let job = gw.job(id).await;
        assert_eq!(job["status"], "running", "waits while the answers are not understood: {job}");
        let submitted = record(&executions, id).and_then(|r| r["submitted"].as_u64());
        assert_eq!(submitted, Some(1), "job {id}: one POST /prompt: {executions}");
    }

    // The answers are real again: every job is collected, none was submitted twice.
    sim.faults(json!({"reset": true})).await;
    ids.push(accepted["jobId"].as_str().expect("the neighbour's job id").to_string());
    let start = Instant::now();
    for id in &ids {
        let job = gw.wait_terminal(id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
    }
    eprintln!("all collected {:?} after the answers became real", start.elapsed());
    let executions = sim.executions().await;
    for id in &ids {
        let r = record(&executions, id).unwrap_or_else(|| panic!("job {id} never reached the simulator"));
        assert_eq!((r["submitted"].as_u64(), r["count"].as_u64()), (Some(1), Some(1)), "job {id}: {r}");
    }
}
