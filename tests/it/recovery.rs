//! Crash recovery against the real binary: kill -9 of the gateway under load, kill -9 of
//! ComfyUI mid-job, a backend that is down at submit time, and the attempt bound.

use std::time::Duration;

use serde_json::json;

use crate::support::receiver::{Answer, Receiver};
use crate::support::{self, Gateway, Sim, eventually};

const WAIT: Duration = Duration::from_secs(120);

fn job_body(seed: usize) -> serde_json::Value {
    let priority = ["low", "normal", "high"][seed % 3];
    json!({"workflowId": "icon_512", "priority": priority, "inputs": {"prompt": "crash test", "seed": seed}})
}

/// Every acknowledged job survives a `kill -9` of the gateway and ComfyUI runs each
/// prompt exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kill9_loses_nothing_and_runs_nothing_twice() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 15).await;
    let mut gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_CONCURRENCY", "2")]).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(gw.submit_ok(job_body(i)).await);
    }
    // Kill while some jobs run and some are queued.
    eventually("five jobs started", async || {
        let ex = support::executions(&sim.executions().await);
        if ex.len() >= 5 { Ok(()) } else { Err(ex) }
    })
    .await;
    gw.kill9();
    let started_before_kill = support::executions(&sim.executions().await).len();
    assert!(started_before_kill < 50, "the kill happened mid-load ({started_before_kill} started)");
    gw.restart().await;
    for id in &ids {
        let done = gw.wait_terminal(id, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{done}\n{}", gw.proc_.log());
        assert_eq!(done["attempts"], 1, "no job was resubmitted: {done}");
    }
    let ex = support::executions(&sim.executions().await);
    assert_eq!(ex.len(), 50, "every job reached ComfyUI");
    for (id, count) in &ex {
        assert_eq!(*count, 1, "prompt {id} executed {count} times");
        assert!(ids.contains(id));
    }
}

/// ComfyUI is killed mid-job and comes back empty: the gateway notices, resubmits what
/// was lost (counted as an attempt) and every job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_crash_mid_job_resubmits_lost_jobs() {
    let dir = support::tempdir();
    let mut sim = Sim::start(dir.path(), 150).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_CONCURRENCY", "2")]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(gw.submit_ok(job_body(i)).await);
    }
    eventually("a job started", async || (!support::executions(&sim.executions().await).is_empty()).then_some(()))
        .await;
    sim.restart().await;
    for id in &ids {
        let done = gw.wait_terminal(id, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{done}\n{}", gw.proc_.log());
    }
    let resubmitted = futures_count(&gw, &ids, |j| j["attempts"].as_u64().unwrap_or(0) >= 2).await;
    assert!(resubmitted >= 1, "at least the job that was running was resubmitted");
    // The restarted simulator saw each job at most once.
    for (id, count) in support::executions(&sim.executions().await) {
        assert_eq!(count, 1, "{id} ran {count} times on the restarted backend");
    }
}

async fn futures_count(gw: &Gateway, ids: &[String], pred: impl Fn(&serde_json::Value) -> bool) -> usize {
    let mut n = 0;
    for id in ids {
        if pred(&gw.job(id).await) {
            n += 1;
        }
    }
    n
}

/// No backend at submit time: jobs are accepted and wait; they run once it comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_a_backend_that_is_down_at_submit_time() {
    let dir = support::tempdir();
    // The backend's address answers every probe 503 and records what it is sent, until
    // the simulator takes its place.
    let down = Receiver::start().await;
    down.script("/system_stats", vec![Answer::status(503); 10_000]);
    let url = format!("http://127.0.0.1:{}", down.port);
    let gw = Gateway::start(dir.path(), &url, &[]).await;
    let (status, health) = support::get_json(&format!("{}/health", gw.url())).await;
    assert_eq!(status, 503, "unhealthy while no backend answers: {health}");
    assert_eq!(health["comfyui"]["reachable"], false);
    let ids = [gw.submit_ok(job_body(1)).await, gw.submit_ok(job_body(2)).await];
    // The gateway keeps probing the backend after the jobs were queued (two probes more),
    // and its scheduler holds both jobs, dispatched nowhere: nothing was sent to the backend
    // but probes, no attempt was counted.
    let probes = down.hits("/system_stats").len();
    down.wait_hits("/system_stats", probes + 2, WAIT).await;
    let (_, health) = support::get_json(&format!("{}/health", gw.url())).await;
    assert_eq!(health["queueDepth"], 2, "{health}");
    assert_eq!(gw.metric("comfyui_gateway_job_attempts_total").await, 0.0);
    for id in &ids {
        assert_eq!(gw.job(id).await["status"], "queued");
    }
    let port = down.port;
    let sent = down.hits_all();
    assert!(
        sent.iter().all(|h| h.path == "/system_stats"),
        "only probes: {:?}",
        sent.iter().map(|h| &h.path).collect::<Vec<_>>()
    );
    assert_eq!(down.close().await, port);
    let sim = Sim::start_on(dir.path(), port, &["--node-delay-ms".into(), "5".into()]).await;
    for id in &ids {
        let done = gw.wait_terminal(id, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "a failed probe is not an attempt");
    }
    assert_eq!(support::executions(&sim.executions().await).len(), 2);
    let (status, _) = support::get_json(&format!("{}/health", gw.url())).await;
    assert_eq!(status, 200);
}

/// A backend that keeps losing the job exhausts MAX_ATTEMPTS: COMFYUI_UNREACHABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_lost_more_than_max_attempts_fails_unreachable() {
    let dir = support::tempdir();
    let mut sim = Sim::start(dir.path(), 400).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_ATTEMPTS", "1")]).await;
    let id = gw.submit_ok(job_body(1)).await;
    eventually("a job started", async || (!support::executions(&sim.executions().await).is_empty()).then_some(()))
        .await;
    sim.restart().await;
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "COMFYUI_UNREACHABLE");
    assert!(support::executions(&sim.executions().await).is_empty(), "not resubmitted beyond the bound");
}

/// The gateway restarts while ComfyUI still holds its prompts (one running, one pending):
/// recovery re-attaches to them instead of submitting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_reattaches_to_prompts_still_on_the_backend() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 250).await;
    let mut gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_CONCURRENCY", "2")]).await;
    let ids = [gw.submit_ok(job_body(1)).await, gw.submit_ok(job_body(2)).await, gw.submit_ok(job_body(3)).await];
    eventually("two jobs started", async || {
        let ex = support::executions(&sim.executions().await);
        if ex.len() >= 2 { Ok(()) } else { Err(ex) }
    })
    .await;
    gw.kill9();
    let (_, queue) = support::get_json(&format!("{}/queue", sim.url())).await;
    let on_backend =
        queue["queue_running"].as_array().unwrap().len() + queue["queue_pending"].as_array().unwrap().len();
    assert_eq!(on_backend, 2, "the backend still holds two prompts when the gateway comes back: {queue}");
    gw.restart().await;
    for id in &ids {
        let done = gw.wait_terminal(id, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "{done}");
    }
    for (id, count) in support::executions(&sim.executions().await) {
        assert_eq!(count, 1, "{id} executed {count} times");
    }
    let (_, log) = support::get_json(&format!("{}/jobs/{}", gw.url(), ids[0])).await;
    assert_eq!(log["status"], "succeeded");
}

/// The backend's WebSocket drops mid-job (no close frame): the job is reconciled by
/// polling and still finishes, executed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drop_mid_job_is_reconciled() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 100).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    sim.faults(json!({"dropWsAfterMs": 150})).await;
    let ids = [gw.submit_ok(job_body(1)).await, gw.submit_ok(job_body(2)).await];
    for id in &ids {
        let done = gw.wait_terminal(id, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "a dropped socket is not a lost prompt: {done}");
    }
    let ex = support::executions(&sim.executions().await);
    assert_eq!(ex.len(), 2);
    assert!(ex.iter().all(|(_, n)| *n == 1), "{ex:?}");
    assert!(gw.proc_.log().contains("backend websocket ended"), "the drop happened:\n{}", gw.proc_.log());
}
