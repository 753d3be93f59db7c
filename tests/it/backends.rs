//! The backend pool against two real simulators: per-backend limits and ids from
//! `COMFYUI_URL` fragments, workflow affinity, `GET /backends`, durable drains with their
//! roles and audit entries, and jobs moved off a backend that died (kill -9) or was
//! partitioned (SIGSTOP), with the stray prompt removed when it came back.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, eventually_within, get_json, post_json};

const WAIT: Duration = Duration::from_secs(60);

/// Two simulators in their own dirs, each `node_delay_ms` per model node.
async fn two_sims(dir: &Path, node_delay_ms: u64) -> (Sim, Sim) {
    let (d1, d2) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    (Sim::start(&d1, node_delay_ms).await, Sim::start(&d2, node_delay_ms).await)
}

/// `COMFYUI_URL` naming them `a` and `b` with their limits.
fn pool(a: &Sim, max_a: u32, b: &Sim, max_b: u32) -> String {
    format!("{}#id=a&max={max_a},{}/#max={max_b}&id=b", a.url(), b.url())
}

fn icon(seed: u64) -> Value {
    json!({"workflowId": "icon_512", "inputs": {"prompt": "pool", "seed": seed}})
}

fn sprite(seed: u64) -> Value {
    json!({"workflowId": "sprite_transparent_bg", "inputs": {"prompt": "pool", "seed": seed}})
}

/// `GET /backends` (open mode): the list.
async fn backends(gw: &Gateway) -> Vec<Value> {
    let (status, v) = get_json(&format!("{}/backends", gw.url())).await;
    assert_eq!(status, 200, "{v}");
    v["backends"].as_array().expect("backends").clone()
}

/// Wait until every backend in the gateway's view is healthy or draining (probes done).
async fn wait_backends_up(gw: &Gateway) {
    eventually_within(WAIT, "every backend comes up", async || {
        let list = backends(gw).await;
        if list.iter().all(|b| b["reachable"] == true) { Ok(()) } else { Err(list) }
    })
    .await
}

/// Wait until the job is running, and return it.
async fn wait_running(gw: &Gateway, id: &str) -> Value {
    eventually_within(WAIT, format!("job {id} runs"), async || {
        let v = gw.job(id).await;
        match v["status"].as_str() {
            Some("running") => Ok(v),
            Some("queued") => Err(v),
            _ => panic!("job {id} should be running: {v}"),
        }
    })
    .await
}

/// Wait until the simulator has started executing the prompt.
async fn wait_executing(sim: &Sim, id: &str) {
    eventually_within(WAIT, format!("job {id} executes on {}", sim.url()), async || {
        let ex = support::executions(&sim.executions().await);
        if ex.iter().any(|(p, n)| p == id && *n > 0) { Ok(()) } else { Err(ex) }
    })
    .await
}

/// How many times `sim` executed the prompt.
async fn executed(sim: &Sim, id: &str) -> u64 {
    support::executions(&sim.executions().await).into_iter().find(|(p, _)| p == id).map_or(0, |(_, n)| n)
}

fn by_id<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("backend {id} in {list:?}"))
}

/// A succeeded job with at least one stored output.
fn assert_done_with_outputs(job: &Value, log: &str) {
    assert_eq!(job["status"], "succeeded", "{job}\n{log}");
    assert!(!job["outputs"].as_array().unwrap().is_empty(), "succeeded with outputs: {job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_within_each_backends_own_limit_and_get_backends_reports_them() {
    let dir = support::tempdir();
    let (sa, sb) = two_sims(dir.path(), 40).await;
    let gw = Gateway::start(dir.path(), &pool(&sa, 1, &sb, 2), &[("MAX_CONCURRENCY", "4")]).await;
    wait_backends_up(&gw).await;
    let mut ids = Vec::new();
    for i in 0..9 {
        // Two workflows, so that affinity and load both play.
        ids.push(gw.submit_ok(if i % 3 == 0 { sprite(i) } else { icon(i) }).await);
    }
    let mut on = std::collections::HashMap::<String, u32>::new();
    for id in &ids {
        let done = gw.wait_terminal(id, WAIT).await;
        assert_done_with_outputs(&done, &gw.proc_.log());
        *on.entry(done["backend"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(on.get("a").is_some_and(|&n| n >= 1) && on.get("b").is_some_and(|&n| n >= 1), "both ran jobs: {on:?}");
    let (ea, eb) = (sa.executions().await, sb.executions().await);
    assert_eq!(ea["maxQueueDepth"], 1, "a's own max=1 holds");
    assert!(eb["maxQueueDepth"].as_u64().unwrap() <= 2, "b's own max=2 holds: {eb}");
    let ran = support::executions(&ea).len() + support::executions(&eb).len();
    assert_eq!(ran, 9, "every job executed on exactly one backend");

    let list = backends(&gw).await;
    assert_eq!(list.len(), 2);
    let (a, b) = (by_id(&list, "a"), by_id(&list, "b"));
    assert_eq!(a["url"], sa.url());
    assert_eq!(b["url"], sb.url(), "the fragment and trailing slash are not part of the URL");
    for (backend, max) in [(a, 1), (b, 2)] {
        assert_eq!(backend["state"], "healthy", "{backend}");
        assert_eq!(backend["draining"], false);
        assert!(backend["drainedAt"].is_null());
        assert_eq!(backend["inFlight"], 0);
        assert_eq!(backend["maxConcurrency"], max);
        assert_eq!(backend["comfyuiVersion"], "0.3.64");
        assert!(backend["latencyMs"]["probe"].as_u64().is_some(), "probe latency: {backend}");
        assert!(backend["latencyMs"]["run"].as_u64().is_some_and(|ms| ms > 0), "run latency: {backend}");
        assert!(backend["lastError"].is_null() || backend["lastError"].is_string());
        let recent: Vec<&str> =
            backend["recentWorkflows"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(!recent.is_empty() && recent.iter().all(|w| ["icon_512", "sprite_transparent_bg"].contains(w)));
    }
    // /health keeps its shape; metrics have the per-backend levels.
    let (_, health) = get_json(&format!("{}/health", gw.url())).await;
    assert_eq!(health["comfyui"]["backends"].as_array().unwrap().len(), 2);
    assert_eq!(
        (health["comfyui"]["backends"][1]["id"].as_str(), health["comfyui"]["backends"][1]["state"].as_str()),
        (Some("b"), Some("healthy"))
    );
    let metrics = gw.metrics().await;
    // Labelled by id, as the API and the jobs name them.
    for id in ["a", "b"] {
        assert_eq!(support::sample(&metrics, &format!("comfyui_gateway_backend_up{{backend=\"{id}\"}}")), 1.0);
        let draining = format!("comfyui_gateway_backend_draining{{backend=\"{id}\"}} 0");
        assert!(metrics.lines().any(|l| l == draining), "{draining} in\n{metrics}");
    }
}

/// Jobs of a workflow keep going to the backend that ran it while it has room, even when
/// another backend is less loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_sticks_to_the_backend_that_ran_it_while_it_has_room() {
    let dir = support::tempdir();
    let (sa, sb) = two_sims(dir.path(), 300).await;
    let gw = Gateway::start(dir.path(), &pool(&sa, 2, &sb, 2), &[]).await;
    wait_backends_up(&gw).await;
    // Both idle: the first in COMFYUI_URL order takes it.
    let first = gw.submit_ok(icon(1)).await;
    let done = gw.wait_terminal(&first, WAIT).await;
    assert_eq!(done["backend"], "a", "{done}");
    // Another workflow: cold everywhere, both idle, so `a` again; it keeps `a` at 1/2.
    let other = gw.submit_ok(sprite(2)).await;
    assert_eq!(wait_running(&gw, &other).await["backend"], "a");
    // icon_512 again: `a` ran it and has room, so it wins over the idle `b`.
    let warm = gw.submit_ok(icon(3)).await;
    assert_eq!(wait_running(&gw, &warm).await["backend"], "a", "affinity beats the lighter load");
    assert_eq!(gw.job(&other).await["status"], "running", "the test needs `a` busy meanwhile");
    // `a` is full now: the next one goes to `b`.
    let overflow = gw.submit_ok(icon(4)).await;
    assert_eq!(wait_running(&gw, &overflow).await["backend"], "b", "a full backend takes nothing");
    for id in [&other, &warm, &overflow] {
        assert_done_with_outputs(&gw.wait_terminal(id, WAIT).await, &gw.proc_.log());
    }
    assert_eq!(executed(&sa, &warm).await, 1);
    assert_eq!(executed(&sb, &overflow).await, 1);
}

/// Drain: running jobs finish there, new ones go elsewhere; the drain outlives a restart
/// and is audit-logged; resume brings work back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_takes_no_new_jobs_finishes_its_own_and_stays_drained_after_a_restart() {
    let dir = support::tempdir();
    let (sa, sb) = two_sims(dir.path(), 250).await;
    let mut gw = Gateway::start(dir.path(), &pool(&sa, 1, &sb, 1), &[]).await;
    wait_backends_up(&gw).await;
    let running = gw.submit_ok(icon(1)).await;
    assert_eq!(wait_running(&gw, &running).await["backend"], "a");
    wait_executing(&sa, &running).await;

    let (status, drained) = post_json(&format!("{}/backends/a/drain", gw.url()), &json!({})).await;
    assert_eq!(status, 200, "{drained}");
    assert_eq!((drained["id"].as_str(), drained["state"].as_str()), (Some("a"), Some("draining")));
    assert_eq!(drained["inFlight"], 1, "its running job stays");
    // Draining twice is fine.
    assert_eq!(post_json(&format!("{}/backends/a/drain", gw.url()), &json!({})).await.0, 200);
    let later: Vec<String> = [gw.submit_ok(icon(2)).await, gw.submit_ok(sprite(3)).await].into();
    let done = gw.wait_terminal(&running, WAIT).await;
    assert_done_with_outputs(&done, &gw.proc_.log());
    assert_eq!(done["backend"], "a", "the running job finished where it was");
    for id in &later {
        let job = gw.wait_terminal(id, WAIT).await;
        assert_done_with_outputs(&job, &gw.proc_.log());
        assert_eq!(job["backend"], "b", "nothing new lands on the drained backend: {job}");
        assert_eq!(executed(&sa, id).await, 0);
    }
    let (status, err) = post_json(&format!("{}/backends/nope/drain", gw.url()), &json!({})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("BACKEND_NOT_FOUND")), "{err}");
    let (status, err) = post_json(&format!("{}/backends/nope/resume", gw.url()), &json!({})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("BACKEND_NOT_FOUND")), "{err}");

    // A restart keeps the drain.
    gw.restart().await;
    wait_backends_up(&gw).await;
    let a = by_id(&backends(&gw).await, "a").clone();
    assert_eq!((a["state"].as_str(), a["draining"].as_bool()), (Some("draining"), Some(true)), "{a}");
    assert_eq!(a["drainedAt"], drained["drainedAt"], "the first drain's time, kept across the restart");
    assert!(drained["drainedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{drained}");
    let after_restart = gw.submit_ok(icon(4)).await;
    assert_eq!(gw.wait_terminal(&after_restart, WAIT).await["backend"], "b");

    // Resume: `a` takes work again (with `b` busy, the next job must go to `a`).
    let (status, resumed) = post_json(&format!("{}/backends/a/resume", gw.url()), &json!({})).await;
    assert_eq!((status, resumed["state"].as_str()), (200, Some("healthy")), "{resumed}");
    let busy = gw.submit_ok(sprite(5)).await;
    let busy_on = wait_running(&gw, &busy).await["backend"].as_str().unwrap().to_string();
    let next = gw.submit_ok(sprite(6)).await;
    let next_on = wait_running(&gw, &next).await["backend"].as_str().unwrap().to_string();
    let mut on = [busy_on, next_on];
    on.sort();
    assert_eq!(on, ["a".to_string(), "b".to_string()], "both backends take work after the resume");
    for id in [&busy, &next] {
        assert_done_with_outputs(&gw.wait_terminal(id, WAIT).await, &gw.proc_.log());
    }
    gw.restart().await;
    assert_eq!(by_id(&backends(&gw).await, "a")["draining"], false, "the resume is durable too");

    // The audit log holds both actions (open mode: no actor).
    let (status, audit) = get_json(&format!("{}/audit", gw.url())).await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(actions, vec![("backend.resume", "a"), ("backend.drain", "a"), ("backend.drain", "a")], "newest first");
}

/// Roles: `GET /backends` for any authenticated caller; drain and resume for admins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_needs_the_admin_role_and_backends_needs_credentials() {
    const ADMIN: &str = "admin-key-pool-01";
    const USER: &str = "user-key-pool-01";
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let keys = format!("{ADMIN}:admin,{USER}:user");
    let gw = Gateway::start(dir.path(), &format!("{}#id=gpu1", sim.url()), &[("API_KEYS", &keys)]).await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, key: Option<&str>| {
        let mut r = client.request(method, format!("{}{path}", gw.url()));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    let (status, v) = call(Method::GET, "/backends", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("AUTH_FAILED")));
    let (status, v) = call(Method::GET, "/backends", Some(USER)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["backends"][0]["id"], "gpu1");
    for path in ["/backends/gpu1/drain", "/backends/gpu1/resume", "/backends/nope/drain"] {
        let (status, v) = call(Method::POST, path, None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("AUTH_FAILED")), "{path}");
        let (status, v) = call(Method::POST, path, Some(USER)).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("FORBIDDEN")), "{path}");
    }
    let (status, v) = call(Method::POST, "/backends/nope/drain", Some(ADMIN)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("BACKEND_NOT_FOUND")));
    let (status, v) = call(Method::POST, "/backends/gpu1/drain", Some(ADMIN)).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("draining")), "{v}");
    let (status, v) = call(Method::GET, "/backends", Some(USER)).await;
    assert_eq!((status, v["backends"][0]["state"].as_str()), (200, Some("draining")));
    let (status, v) = call(Method::GET, "/audit", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let entry = &v["entries"][0];
    assert_eq!((entry["action"].as_str(), entry["target"].as_str()), (Some("backend.drain"), Some("gpu1")));
    assert_eq!(entry["role"], "admin");
    let (status, v) = call(Method::GET, "/backends/gpu1/drain", Some(ADMIN)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (405, Some("METHOD_NOT_ALLOWED")));
}

/// kill -9 of a backend with jobs on it: after `BACKEND_DEAD_AFTER_MS` they move to the
/// other backend and succeed there, each counted as one more attempt; none is lost, none
/// finished without outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_a_killed_backend_move_to_the_other_one_within_the_dead_after_window() {
    const DEAD_AFTER_MS: u64 = 2_000;
    let dir = support::tempdir();
    let (mut sa, sb) = two_sims(dir.path(), 400).await;
    let env = [("BACKEND_DEAD_AFTER_MS", "2000"), ("COMFYUI_TIMEOUT_MS", "120000")];
    let gw = Gateway::start(dir.path(), &pool(&sa, 2, &sb, 1), &env).await;
    wait_backends_up(&gw).await;
    // Two on `a` (its limit), one on `b`, one waiting.
    let on_a: Vec<String> = [gw.submit_ok(icon(1)).await, gw.submit_ok(icon(2)).await].into();
    for id in &on_a {
        assert_eq!(wait_running(&gw, id).await["backend"], "a");
    }
    let on_b = gw.submit_ok(sprite(3)).await;
    assert_eq!(wait_running(&gw, &on_b).await["backend"], "b");
    let waiting = gw.submit_ok(sprite(4)).await;
    wait_executing(&sa, &on_a[0]).await;

    sa.proc_.kill9();
    let killed = Instant::now();
    let what = || format!("the jobs move off the killed backend\n{}", gw.proc_.log());
    let moved_at = eventually_within(WAIT, what, async || {
        let jobs = [gw.job(&on_a[0]).await, gw.job(&on_a[1]).await];
        for j in &jobs {
            assert!(j["status"] != "failed" && j["status"] != "canceled", "{j}\n{}", gw.proc_.log());
        }
        // Moved: back in the queue (no backend) or already on `b`.
        if jobs.iter().all(|j| j["backend"] != "a") { Ok(killed.elapsed()) } else { Err(jobs) }
    })
    .await;
    assert!(moved_at >= Duration::from_millis(DEAD_AFTER_MS), "not before BACKEND_DEAD_AFTER_MS: {moved_at:?}");
    assert!(moved_at < Duration::from_millis(DEAD_AFTER_MS) * 5, "moved soon after: {moved_at:?}");

    for id in on_a.iter().chain([&on_b, &waiting]) {
        let done = gw.wait_terminal(id, WAIT).await;
        assert_done_with_outputs(&done, &gw.proc_.log());
        assert_eq!(done["backend"], "b", "{done}");
        assert_eq!(executed(&sb, id).await, 1, "{id} ran once on b");
    }
    for id in &on_a {
        let done = gw.job(id).await;
        assert_eq!(done["attempts"], 2, "the move counted an attempt: {done}");
        let (_, logs) = get_json(&format!("{}/jobs/{id}/logs", gw.url())).await;
        let requeued: Vec<&Value> =
            logs["events"].as_array().unwrap().iter().filter(|e| e["type"] == "requeued").collect();
        assert_eq!(requeued.len(), 1, "{logs}");
    }
    let a = by_id(&backends(&gw).await, "a").clone();
    assert_eq!((a["state"].as_str(), a["inFlight"].as_u64()), (Some("down"), Some(0)), "{a}");
    assert!(a["lastError"].is_string(), "{a}");
}

/// A partitioned backend (SIGSTOP: connections hang, the WebSocket looks open): its job
/// moves after `BACKEND_DEAD_AFTER_MS`; when the box comes back still holding the prompt,
/// the gateway removes it there before dispatching to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_backend_loses_the_moved_prompt_when_it_comes_back() {
    let dir = support::tempdir();
    let (sa, sb) = two_sims(dir.path(), 1_500).await;
    let env = [("BACKEND_DEAD_AFTER_MS", "1500"), ("COMFYUI_HTTP_TIMEOUT_MS", "800")];
    let gw = Gateway::start(dir.path(), &pool(&sa, 1, &sb, 1), &env).await;
    wait_backends_up(&gw).await;
    let id = gw.submit_ok(icon(1)).await;
    assert_eq!(wait_running(&gw, &id).await["backend"], "a");
    wait_executing(&sa, &id).await;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &sa.proc_.pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig}");
    };
    // (A stopped simulator still dies by the SIGKILL of its drop if an assertion fails.)
    signal("-STOP");
    let what = || format!("the job moves to b\n{}", gw.proc_.log());
    eventually_within(WAIT, what, async || {
        let v = gw.job(&id).await;
        if v["backend"] == "b" { Ok(()) } else { Err(v) }
    })
    .await;
    signal("-CONT");
    // Back: its queue is cleared of our prompt (interrupted there), and it is healthy again.
    let what = || format!("the stray prompt goes and a is healthy\n{}", gw.proc_.log());
    eventually_within(WAIT, what, async || {
        let (_, queue) = get_json(&format!("{}/queue", sa.url())).await;
        let holds = queue.to_string().contains(&id);
        let up = by_id(&backends(&gw).await, "a")["state"] == "healthy";
        if !holds && up { Ok(()) } else { Err(queue) }
    })
    .await;
    assert!(gw.proc_.log().contains("removed a prompt of ours"), "{}", gw.proc_.log());
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_done_with_outputs(&done, &gw.proc_.log());
    assert_eq!((done["backend"].as_str(), done["attempts"].as_u64()), (Some("b"), Some(2)));
    assert_eq!(executed(&sb, &id).await, 1);
}

/// A job recorded on a backend that is no longer configured is requeued at start (one
/// more attempt) and runs on a configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_backend_removed_from_the_configuration_runs_on_another_after_a_restart() {
    let dir = support::tempdir();
    let (sa, sb) = two_sims(dir.path(), 400).await;
    let mut gw = Gateway::start(dir.path(), &pool(&sa, 1, &sb, 1), &[]).await;
    wait_backends_up(&gw).await;
    let id = gw.submit_ok(icon(1)).await;
    assert_eq!(wait_running(&gw, &id).await["backend"], "a");
    wait_executing(&sa, &id).await;
    gw.kill9();
    gw.set_env("COMFYUI_URL", Some(&format!("{}#id=b", sb.url())));
    gw.restart().await;
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_done_with_outputs(&done, &gw.proc_.log());
    assert_eq!((done["backend"].as_str(), done["attempts"].as_u64()), (Some("b"), Some(2)), "{done}");
    assert_eq!(executed(&sb, &id).await, 1);
    let (_, logs) = get_json(&format!("{}/jobs/{id}/logs", gw.url())).await;
    let requeued = logs["events"].as_array().unwrap().iter().find(|e| e["type"] == "requeued").cloned();
    assert!(requeued.is_some_and(|e| e.to_string().contains("no longer configured")), "{logs}");
}
