//! Crashes at the dangerous windows (engine/failpoints.rs, armed with `FAILPOINTS`; this
//! module is built with the `failpoints` feature that the test command enables): the
//! gateway aborts exactly there, is restarted without the crash point, and every job ends
//! as if nothing had happened: ComfyUI ran each prompt once, the outputs are stored once,
//! the webhook arrives (again, with the same id and body), an idempotent retry of a submit
//! whose answer was lost finds the job.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::receiver::Receiver;
use crate::support::{self, Gateway, Sim, get_json};

const WAIT: Duration = Duration::from_secs(60);

fn body(prompt: &str) -> Value {
    json!({"workflowId": "icon_512", "inputs": {"prompt": prompt, "seed": 7}})
}

/// Start a gateway with `point` armed to crash.
async fn armed(dir: &std::path::Path, sim: &Sim, point: &str, extra: &[(&str, &str)]) -> Gateway {
    let spec = format!("{point}=return");
    let mut env = vec![("FAILPOINTS", spec.as_str())];
    env.extend_from_slice(extra);
    Gateway::start(dir, &sim.url(), &env).await
}

/// Restart without any crash point.
async fn disarm_and_restart(gw: &mut Gateway) {
    gw.set_env("FAILPOINTS", None);
    gw.restart().await;
}

/// The prompt executed exactly once on the simulator, and nothing else did.
async fn ran_once(sim: &Sim, id: &str) {
    let ex = support::executions(&sim.executions().await);
    assert_eq!(ex, vec![(id.to_string(), 1)], "executions");
}

/// Crash after ComfyUI accepted the prompt, before the runner did anything with the
/// answer: after the restart the job is reconciled (found on the backend), not resubmitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_prompt_was_accepted_runs_it_once() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 300).await;
    let mut gw = armed(dir.path(), &sim, "runner-after-prompt", &[]).await;
    let id = gw.submit_ok(body("after prompt")).await;
    gw.wait_exit(WAIT).await;
    assert!(gw.proc_.log().contains("failpoint runner-after-prompt: crashing"), "{}", gw.proc_.log());
    // The dispatch record was committed before the POST: the job is running on restart.
    disarm_and_restart(&mut gw).await;
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", gw.proc_.log());
    assert_eq!(done["attempts"], 1, "reconciled, not resubmitted: {done}");
    ran_once(&sim, &id).await;
    // The metric of what reconciliation found (the bench's restart figure waits on it).
    let found = |outcome: &str| format!("comfyui_gateway_reconciliations_total{{outcome=\"{outcome}\"}}");
    let reattached = gw.metric(&found("reattached")).await;
    let collected = gw.metric(&found("collected")).await;
    assert_eq!(reattached + collected, 1.0, "one reconciliation: {reattached} reattached, {collected} collected");
    assert_eq!(gw.metric(&found("resubmitted")).await, 0.0);
}

/// Crash after every output was downloaded, before the success was committed: the
/// restarted gateway finds the prompt in ComfyUI's history and downloads the outputs again,
/// and the store holds them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_the_success_commit_stores_outputs_once() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let mut gw = armed(dir.path(), &sim, "runner-before-success-commit", &[]).await;
    let id = gw.submit_ok(body("before success")).await;
    gw.wait_exit(WAIT).await;
    assert!(gw.proc_.log().contains("failpoint runner-before-success-commit: crashing"), "{}", gw.proc_.log());
    disarm_and_restart(&mut gw).await;
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", gw.proc_.log());
    assert_eq!(done["attempts"], 1, "{done}");
    ran_once(&sim, &id).await;
    let outputs = done["outputs"].as_array().unwrap();
    assert!(!outputs.is_empty(), "{done}");
    for o in outputs {
        let r = reqwest::get(format!("{}{}", gw.url(), o["url"].as_str().unwrap())).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(blake3::hash(&r.bytes().await.unwrap()).to_hex().as_str(), o["hash"]);
    }
    let distinct: std::collections::HashSet<&str> = outputs.iter().map(|o| o["hash"].as_str().unwrap()).collect();
    assert_eq!(gw.metric("comfyui_gateway_blobs").await, distinct.len() as f64, "no blob stored twice or leaked");
}

/// Crash after the receiver answered 2xx, before the attempt was recorded: the delivery
/// is still pending after the restart and is made again with the same id and body (at
/// least once), then recorded as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_a_webhook_2xx_delivers_again_with_the_same_id() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let receiver = Receiver::start().await;
    let extra = [("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1"), ("WEBHOOK_RETRY_SCHEDULE", "200ms")];
    let mut gw = armed(dir.path(), &sim, "webhook-after-2xx", &extra).await;
    let mut b = body("after 2xx");
    b["callbackUrl"] = json!(receiver.url("/hook"));
    let id = gw.submit_ok(b).await;
    let first = receiver.wait_hits("/hook", 1, WAIT).await;
    gw.wait_exit(WAIT).await;
    assert!(gw.proc_.log().contains("failpoint webhook-after-2xx: crashing"), "{}", gw.proc_.log());
    disarm_and_restart(&mut gw).await;
    let hits = receiver.wait_hits("/hook", 2, WAIT).await;
    assert_eq!(hits[1].header("webhook-id"), first[0].header("webhook-id"));
    assert_eq!(hits[1].body, first[0].body, "the same body, byte for byte");
    assert_eq!(hits[1].json()["type"], "job.succeeded");
    let v = support::eventually_within(WAIT, "the delivery is recorded delivered", async || {
        let (status, v) = get_json(&format!("{}/jobs/{id}/webhooks", gw.url())).await;
        assert_eq!(status, 200, "{v}");
        if v["deliveries"][0]["state"] == "delivered" { Ok(v) } else { Err(v) }
    })
    .await;
    assert_eq!(v["deliveries"][0]["attempts"], 1, "the crashed attempt was never recorded: {v}");
    ran_once(&sim, &id).await;
}

/// Crash after the submit was committed, before the client got its answer: a retry with
/// the same `Idempotency-Key` after the restart finds the job instead of making another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_the_submit_answer_is_recovered_by_an_idempotent_retry() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let mut gw = armed(dir.path(), &sim, "api-after-submit-commit", &[]).await;
    let client = reqwest::Client::new();
    let post = |url: String| {
        client.post(format!("{url}/jobs")).header("idempotency-key", "order-42").json(&body("lost answer")).send()
    };
    assert!(post(gw.url()).await.is_err(), "the answer was lost with the process");
    gw.wait_exit(WAIT).await;
    assert!(gw.proc_.log().contains("failpoint api-after-submit-commit: crashing"), "{}", gw.proc_.log());
    disarm_and_restart(&mut gw).await;
    let r = post(gw.url()).await.unwrap();
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    let id = v["jobId"].as_str().unwrap().to_string();
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, list) = get_json(&format!("{}/jobs", gw.url())).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "one job: {list}");
    ran_once(&sim, &id).await;
}

/// A disk error on a commit stops the store, and the process exits (fail-stop) instead of
/// answering errors forever; the restart recovers everything acknowledged before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_error_stops_the_gateway_and_a_restart_recovers() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 10).await;
    let mut gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let before = gw.submit_ok(body("before the disk error")).await;
    assert_eq!(gw.wait_terminal(&before, WAIT).await["status"], "succeeded");
    gw.set_env("FAILPOINTS", Some("store-commit-fails=return"));
    gw.restart().await;
    let (status, v) = gw.submit(body("during the disk error")).await;
    assert_eq!(status, 500, "not acknowledged: {v}");
    assert_eq!(v["error"]["code"], "INTERNAL", "{v}");
    gw.wait_exit(WAIT).await;
    assert!(gw.proc_.log().contains("the database failed"), "{}", gw.proc_.log());
    disarm_and_restart(&mut gw).await;
    let done = gw.job(&before).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let after = gw.submit_ok(body("after the restart")).await;
    assert_eq!(gw.wait_terminal(&after, WAIT).await["status"], "succeeded");
}
