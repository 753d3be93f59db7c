//! Issue 16, row 4: plugins cannot touch the API's threads. A workflow whose plugin loops
//! forever in `input-transform` (`spin`) or `template-render` (`spin_render`) costs its own
//! submits and nothing else; a saturated plugin answers `503 PLUGIN_BUSY` with
//! `Retry-After` in bounded time; an `output-process` hook does not keep its backend slot.
//!
//! Scale: the issue saw the API frozen for the whole `PLUGIN_TIMEOUT_MS` (2-10 s) with 1-4
//! looping calls. Here 4 + 4 looping calls run at once with a 3 s limit (the neighbour's
//! bound is 5 s, so calls that held the API's two worker threads, 8 x 3 s / 2 = 12 s, would
//! starve it); the whole test file runs in about 15 s.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Neighbour, SERVED_WITHIN};
use crate::plugins::{graph, schema, wasm_b64};
use crate::support::{self, Gateway, Sim, post_json};

async fn register(gw: &Gateway, id: &str, plugin: Option<Value>) {
    let mut body = json!({"id": id, "workflow": graph(), "inputSchema": schema()});
    if let Some(p) = plugin {
        body["plugin"] = p;
    }
    let (status, v) = post_json(&format!("{}/workflows", gw.url()), &body).await;
    assert_eq!(status, 201, "{id}: {v}");
}

/// `POST /jobs` with the status, the `Retry-After` header and the body.
async fn submit(base: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = reqwest::Client::new().post(format!("{base}/jobs")).json(body).send().await.expect("POST /jobs");
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (status, retry_after, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn looping_plugins_cost_their_own_submits_and_the_api_keeps_serving() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let limit = Duration::from_secs(3);
    let env = [("PLUGIN_TIMEOUT_MS", "3000")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    register(&gw, "plain", None).await;
    register(&gw, "spin", Some(json!({"wasm": wasm_b64("spin")}))).await;
    register(&gw, "spin_render", Some(json!({"wasm": wasm_b64("spin_render")}))).await;
    let neighbour = Neighbour::new(&gw.url(), None);
    let (status, v) = neighbour.post("/jobs", &json!({"workflowId": "plain", "inputs": {}, "cache": false})).await;
    assert_eq!(status, 202, "{v}");
    let job = v["jobId"].as_str().expect("jobId").to_string();

    // The attack: 4 submits into each looping hook, all at once.
    let attack: Vec<_> = ["spin", "spin", "spin", "spin", "spin_render", "spin_render", "spin_render", "spin_render"]
        .into_iter()
        .map(|wf| {
            let base = gw.url();
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, _, v) = submit(&base, &json!({"workflowId": wf, "inputs": {"prompt": "x"}})).await;
                (wf, status, v, started.elapsed())
            })
        })
        .collect();
    // Let the calls start, then be the neighbour for as long as they loop. A head start,
    // not synchronisation: no metric shows plugin calls in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = neighbour.probe_for(&["/health", &format!("/jobs/{job}")], limit).await;
    // The neighbour also submits (and its job runs) while the plugins spin.
    let (status, v) = neighbour.post("/jobs", &json!({"workflowId": "plain", "inputs": {}, "cache": false})).await;
    assert_eq!(status, 202, "a submit beside the looping plugins: {v}");
    let second = v["jobId"].as_str().expect("jobId").to_string();

    for call in attack {
        let (wf, status, v, took) = call.await.unwrap();
        let hook = if wf == "spin" { "input-transform" } else { "template-render" };
        assert_eq!(
            (status, v["error"]["code"].as_str(), v["error"]["details"]["kind"].as_str()),
            (422, Some("PLUGIN_LIMIT_EXCEEDED"), Some("timeout")),
            "{wf}: {v}"
        );
        assert_eq!(v["error"]["details"]["hook"], hook, "{v}");
        assert!(took >= limit && took < limit + SERVED_WITHIN, "{wf}: the looping submit took {took:?}");
    }
    for id in [job, second] {
        let done = gw.wait_terminal(&id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    eprintln!("neighbour beside 8 looping plugin calls: {} answers, slowest {:?}", served.answered, served.worst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_plugin_answers_plugin_busy_in_bounded_time_and_others_run() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    // Three slots in all, two per plugin: `spin` can never take the third.
    let env = [
        ("PLUGIN_TIMEOUT_MS", "3000"),
        ("PLUGIN_CONCURRENCY", "3"),
        ("PLUGIN_CONCURRENCY_PER_PLUGIN", "2"),
        ("PLUGIN_QUEUE_WAIT_MS", "500"),
    ];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    register(&gw, "spin", Some(json!({"wasm": wasm_b64("spin")}))).await;
    register(&gw, "guarded", Some(json!({"wasm": wasm_b64("prompt_guard")}))).await;
    let attack: Vec<_> = (0..4)
        .map(|_| {
            let base = gw.url();
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, retry_after, v) =
                    submit(&base, &json!({"workflowId": "spin", "inputs": {"prompt": "x"}})).await;
                (status, retry_after, v, started.elapsed())
            })
        })
        .collect();
    // A head start for the four calls (no metric shows plugin slots in use).
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another plugin still finds a slot while `spin` holds all of its own and two more
    // `spin` calls wait (without per-plugin slots, one of them would have taken it).
    let neighbour = Neighbour::new(&gw.url(), None);
    let (status, v) = neighbour.post("/jobs", &json!({"workflowId": "guarded", "inputs": {"prompt": "a fox"}})).await;
    assert_eq!(status, 202, "{v}");
    let (mut busy, mut timed_out) = (0, 0);
    for call in attack {
        let (status, retry_after, v, took) = call.await.unwrap();
        match v["error"]["code"].as_str() {
            Some("PLUGIN_BUSY") => {
                busy += 1;
                assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{v}");
                assert_eq!(v["error"]["retryable"], true, "{v}");
                // PLUGIN_QUEUE_WAIT_MS (0.5 s), well before a slot frees (3 s).
                assert!(took < Duration::from_millis(2500), "a busy answer took {took:?}");
            }
            Some("PLUGIN_LIMIT_EXCEEDED") => timed_out += 1,
            _ => panic!("unexpected answer {status}: {v}"),
        }
    }
    assert_eq!((busy, timed_out), (2, 2), "two calls ran to their limit, two found no slot");
}

/// `output-process` runs with its backend slot given back: with one backend of one slot,
/// a second job runs to success while the first job's hook (3 s) still runs; the first then
/// succeeds with its outputs. Before, the second job waited for the hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_process_gives_the_backend_slot_to_the_next_job() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("PLUGIN_TIMEOUT_MS", "10000"), ("MAX_CONCURRENCY", "1")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    register(&gw, "plain", None).await;
    register(&gw, "slow", Some(json!({"wasm": wasm_b64("slow_output"), "config": {"ms": 3000}}))).await;
    let first = gw.submit_ok(json!({"workflowId": "slow", "inputs": {}, "cache": false})).await;
    let second = gw.submit_ok(json!({"workflowId": "plain", "inputs": {"width": 32}, "cache": false})).await;
    let started = Instant::now();
    let done = gw.wait_terminal(&second, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let slow = gw.job(&first).await;
    assert_eq!(slow["status"], "running", "the second job finished first, in {:?}: {slow}", started.elapsed());
    let slow = gw.wait_terminal(&first, Duration::from_secs(30)).await;
    assert_eq!(slow["status"], "succeeded", "{slow}");
    assert_eq!(slow["outputs"].as_array().map(Vec::len), Some(1), "{slow}");
}

/// A gateway killed while a job's output-process runs (its backend slot already given
/// back): after the restart the job, still `running` in the store, is collected from the
/// backend's history without running the prompt again, its hook runs again (its result was
/// never committed), and it succeeds; the backend's slot accounting is whole, so the next
/// jobs on the one-slot backend run too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_killed_in_output_process_is_recovered_once_and_the_slots_add_up() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("PLUGIN_TIMEOUT_MS", "10000"), ("MAX_CONCURRENCY", "1")];
    let mut gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    register(&gw, "plain", None).await;
    register(&gw, "slow", Some(json!({"wasm": wasm_b64("slow_output"), "config": {"ms": 2000}}))).await;
    let id = gw.submit_ok(json!({"workflowId": "slow", "inputs": {}, "cache": false})).await;
    support::eventually_within(Duration::from_secs(20), "the prompt runs", async || {
        let ex = support::executions(&sim.executions().await);
        if ex.iter().any(|(p, _)| *p == id) { Ok(()) } else { Err(ex) }
    })
    .await;
    // The prompt ran; its output is downloaded and the hook sleeps its 2 s: the backend's
    // slot is given back while the job still runs.
    support::eventually_within(Duration::from_secs(20), "the job is in its output hook", async || {
        let (_, v) = support::get_json(&format!("{}/backends", gw.url())).await;
        let job = gw.job(&id).await;
        if v["backends"][0]["inFlight"] == 0 && job["status"] == "running" { Ok(()) } else { Err((v, job)) }
    })
    .await;
    gw.restart().await;
    let done = gw.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["outputs"].as_array().map(Vec::len), Some(1), "{done}");
    let runs: u64 = support::executions(&sim.executions().await).iter().filter(|(p, _)| *p == id).map(|(_, n)| n).sum();
    assert_eq!(runs, 1, "the prompt ran once; only the hook ran again");
    let mut next = Vec::new();
    for width in [32, 48] {
        next.push(gw.submit_ok(json!({"workflowId": "plain", "inputs": {"width": width}, "cache": false})).await);
    }
    for id in next {
        assert_eq!(gw.wait_terminal(&id, Duration::from_secs(30)).await["status"], "succeeded");
    }
}
