//! The kill -9 campaign: the real gateway under a mixed load against the simulator,
//! killed with SIGKILL at uniformly random moments and restarted, over N cycles. An
//! ordinary test: the normal run makes a few kills, CI more (`.ci/run`), and
//! `scripts/kill-campaign --kills N` runs it alone, as long as asked.
//!
//! The load: submits of every priority (some with webhooks, some with an
//! `Idempotency-Key` that is retried after a lost answer), repeated requests that become
//! cache hits, jobs of a workflow with a WebAssembly plugin (with `wasm-plugins`), cancels and reads. A kill lands
//! at a uniform moment in `[0, KILL_CAMPAIGN_MAX_UP_MS]` after the process was started, so
//! some land during recovery itself. Every so often ComfyUI crashes too.
//!
//! After every kill, a copy of the database file as the kill left it is checked offline by
//! `comfyui-gateway check` (every index, counter and blob reference: no dangling reference,
//! no leaked blob); after every restart, every acknowledged job that is not yet known to be
//! finished, and a sample of the finished ones, is read back. At the end the load stops and
//! every acknowledged job must finish; then the whole history is checked:
//!
//! - **lost**: an acknowledged job missing or never finishing; an acknowledged cancel
//!   undone; an outbox delivery never made (webhook not received, or not recorded
//!   delivered).
//! - **duplicated**: a prompt executed twice by one ComfyUI incarnation, or more often than
//!   the job's attempts across incarnations; two jobs for one idempotent request.
//! - **impossible**: a state or event log no transition allows (a finished job changing
//!   state, a success without outputs or without an execution, a cache hit that ran, a
//!   failure without a code, more attempts than `MAX_ATTEMPTS`, an event after the terminal
//!   one), or a crash image failing the offline check.
//!
//! Settings (the test process's environment): `KILL_CAMPAIGN_KILLS` (5), `KILL_CAMPAIGN_SEED` (random),
//! `KILL_CAMPAIGN_MAX_UP_MS` (1500), `KILL_CAMPAIGN_CLIENTS` (4), `KILL_CAMPAIGN_PAUSE_MS` (mean
//! pause of a client between operations, 200), `KILL_CAMPAIGN_SIM_CRASH_EVERY` (25 kills;
//! 0 = never), `KILL_CAMPAIGN_KEEP` (keep the temp dir and say where).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::support::receiver::Receiver;
use crate::support::{self, Gateway, Sim};

const MAX_ATTEMPTS: u64 = 3;
const DRAIN: Duration = Duration::from_secs(300);

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// What a client was told about a job it submitted.
#[derive(Clone, Debug)]
struct Acked {
    /// `run`, `cache` or `plugin`.
    kind: &'static str,
    /// Whether it asked for webhooks.
    callback: bool,
    /// Answered 200 `cached: true`: born succeeded, never sent to ComfyUI.
    cached: bool,
}

/// An idempotent submit whose answer was lost: sent again after the restart.
#[derive(Clone, Debug)]
struct Retry {
    key: String,
    body: Value,
    acked: Acked,
}

/// Everything the clients learnt, shared by the load tasks.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, Acked>,
    /// Idempotency key → the job its first 2xx named.
    keys: HashMap<String, String>,
    retries: Vec<Retry>,
    /// Jobs seen finished, with the state seen.
    finished: HashMap<String, String>,
    /// Jobs whose cancel was answered `canceled`.
    canceled: HashSet<String>,
    /// Problems found, by kind, with a description each.
    lost: Vec<String>,
    duplicated: Vec<String>,
    impossible: Vec<String>,
    submits: u64,
    submit_errors: u64,
}

impl Ledger {
    /// Record a job's state as seen now; a finished job must never change.
    fn saw(&mut self, id: &str, job: &Value) {
        let status = job["status"].as_str().unwrap_or("?").to_string();
        if let Some(before) = self.finished.get(id)
            && *before != status
        {
            self.impossible.push(format!("{id}: was {before}, now {status}"));
        }
        if self.canceled.contains(id) && status != "canceled" {
            self.lost.push(format!("{id}: its cancel was acknowledged, now {status}"));
            self.canceled.remove(id);
        }
        if let Some(why) = impossible_state(job, self.acked.get(id)) {
            self.impossible.push(format!("{id}: {why}: {job}"));
        }
        if matches!(status.as_str(), "succeeded" | "failed" | "canceled") {
            self.finished.insert(id.to_string(), status);
        }
    }
}

/// A reason the job as shown is impossible, if it is.
fn impossible_state(job: &Value, acked: Option<&Acked>) -> Option<String> {
    let status = job["status"].as_str().unwrap_or("");
    let attempts = job["attempts"].as_u64().unwrap_or(0);
    if !matches!(status, "queued" | "running" | "succeeded" | "failed" | "canceled") {
        return Some(format!("unknown status {status:?}"));
    }
    if attempts > MAX_ATTEMPTS {
        return Some(format!("{attempts} attempts > MAX_ATTEMPTS {MAX_ATTEMPTS}"));
    }
    let outputs = job["outputs"].as_array().map_or(0, Vec::len);
    match status {
        "succeeded" if outputs == 0 => return Some("succeeded without outputs".into()),
        "failed" if job["error"]["code"].as_str().is_none() => return Some("failed without an error code".into()),
        "queued" | "running" | "failed" | "canceled" if outputs > 0 => return Some(format!("{status} with outputs")),
        _ => {}
    }
    if acked.is_some_and(|a| a.cached) && (status != "succeeded" || job["cached"] != true) {
        return Some("a cache hit that is not a cached success".into());
    }
    None
}

struct Shared {
    url: String,
    hook: String,
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
    client: reqwest::Client,
}

/// One load task: random operations until `stop`.
async fn client_task(shared: Arc<Shared>, seed: u64, pause_ms: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !shared.stop.load(Ordering::Relaxed) {
        // Paced so that the backlog stays near what the backend can run: the campaign is
        // about crashes under a steady load, not about a queue growing without end.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=2 * pause_ms))).await;
        let roll = rng.random_range(0..100);
        let ok = if roll < 55 {
            submit(&shared, &mut rng).await
        } else if roll < 65 {
            cancel(&shared, &mut rng).await
        } else {
            read(&shared, &mut rng).await
        };
        if !ok {
            // The gateway is down (killed, or not up yet): wait a little.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn submit_body(shared: &Shared, rng: &mut StdRng) -> (Value, Acked) {
    let priority = ["high", "normal", "low"][rng.random_range(0..3)];
    let tag = uuid::Uuid::new_v4().to_string();
    let roll = rng.random_range(0..100);
    let (mut body, kind) = if roll < 15 {
        // A handful of distinct requests asked again and again: cache hits after the first.
        let n = rng.random_range(0..4);
        (json!({"workflowId": "icon_512", "inputs": {"prompt": format!("cached {n}"), "seed": n}}), "cache")
    } else if roll < 25 && cfg!(feature = "wasm-plugins") {
        (
            json!({"workflowId": "guarded", "inputs": {"prompt": "a plugged fox", "aspectRatio": "1:1"}, "cache": false}),
            "plugin",
        )
    } else {
        let seed: u32 = rng.random();
        (json!({"workflowId": "icon_512", "inputs": {"prompt": "a fox under load", "seed": seed}}), "run")
    };
    body["priority"] = json!(priority);
    body["metadata"] = json!({"campaign": tag});
    let callback = rng.random_bool(0.4);
    if callback {
        body["callbackUrl"] = json!(shared.hook);
        if rng.random_bool(0.25) {
            body["callbackEvents"] = json!(["job.started"]);
        }
    }
    (body, Acked { kind, callback, cached: false })
}

/// POST /jobs; records the acknowledgement. False when the gateway did not answer.
async fn post_job(shared: &Shared, body: &Value, key: Option<&str>, mut acked: Acked) -> bool {
    let mut req = shared.client.post(format!("{}/jobs", shared.url)).json(body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let resp = async {
        let r = req.send().await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        Ok::<_, reqwest::Error>((status, v))
    }
    .await;
    let mut ledger = shared.ledger.lock().unwrap();
    ledger.submits += 1;
    match resp {
        Ok((status @ (200 | 202), v)) => {
            let id = v["jobId"].as_str().unwrap_or_default().to_string();
            acked.cached = status == 200 && v["cached"] == true;
            if let Some(key) = key {
                match ledger.keys.get(key).cloned() {
                    Some(first) if first != id => {
                        ledger.duplicated.push(format!("key {key}: job {first}, then job {id}"));
                    }
                    Some(_) => {}
                    None => {
                        ledger.keys.insert(key.to_string(), id.clone());
                    }
                }
            }
            if !ledger.acked.contains_key(&id) {
                ledger.acked.insert(id.clone(), acked);
            }
            // A 202 (and its replays) is the short answer `{jobId, status, pollUrl}`; only a
            // full job body (a 200) can be judged.
            if v.get("attempts").is_some() {
                ledger.saw(&id, &v);
            }
            true
        }
        Ok((status, v)) => {
            // A refusal is an answer too, but never for these well-formed bodies.
            ledger.impossible.push(format!("submit answered {status}: {v}"));
            true
        }
        Err(_) => {
            ledger.submit_errors += 1;
            if let Some(key) = key {
                ledger.retries.push(Retry { key: key.to_string(), body: body.clone(), acked });
            }
            false
        }
    }
}

async fn submit(shared: &Shared, rng: &mut StdRng) -> bool {
    // First any idempotent submit whose answer was lost.
    let retry = shared.ledger.lock().unwrap().retries.pop();
    if let Some(r) = retry {
        return post_job(shared, &r.body, Some(&r.key), r.acked).await;
    }
    let (body, acked) = submit_body(shared, rng);
    let key = rng.random_bool(0.3).then(|| format!("k-{}", uuid::Uuid::new_v4()));
    post_job(shared, &body, key.as_deref(), acked).await
}

fn pick(shared: &Shared, rng: &mut StdRng, unfinished: bool) -> Option<String> {
    let ledger = shared.ledger.lock().unwrap();
    let n = ledger.acked.len();
    if n == 0 {
        return None;
    }
    // Mostly recent jobs: those are the ones still moving.
    for _ in 0..8 {
        let i = n - 1 - rng.random_range(0..n.min(64));
        let id = ledger.acked.keys().nth(i).cloned()?;
        if !unfinished || !ledger.finished.contains_key(&id) {
            return Some(id);
        }
    }
    None
}

async fn cancel(shared: &Shared, rng: &mut StdRng) -> bool {
    let Some(id) = pick(shared, rng, true) else { return true };
    let resp = async {
        let r = shared.client.post(format!("{}/jobs/{id}/cancel", shared.url)).send().await?;
        let status = r.status().as_u16();
        Ok::<_, reqwest::Error>((status, r.json::<Value>().await?))
    }
    .await;
    let mut ledger = shared.ledger.lock().unwrap();
    match resp {
        Ok((200, v)) => {
            ledger.saw(&id, &v);
            if v["status"] == "canceled" {
                ledger.canceled.insert(id);
            }
            true
        }
        Ok((409, _)) => true, // already finished
        Ok((status, v)) => {
            ledger.impossible.push(format!("cancel {id} answered {status}: {v}"));
            true
        }
        Err(_) => false,
    }
}

async fn read(shared: &Shared, rng: &mut StdRng) -> bool {
    let Some(id) = pick(shared, rng, false) else { return true };
    match get_job(shared, &id).await {
        Ok((200, v)) => {
            shared.ledger.lock().unwrap().saw(&id, &v);
            true
        }
        Ok((status, v)) => {
            shared.ledger.lock().unwrap().lost.push(format!("{id}: GET answered {status}: {v}"));
            true
        }
        Err(_) => false,
    }
}

async fn get_job(shared: &Shared, id: &str) -> Result<(u16, Value), reqwest::Error> {
    let r = shared.client.get(format!("{}/jobs/{id}", shared.url)).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// Read back `ids` after a restart (16 at a time); a missing one is lost.
async fn verify_jobs(shared: &Arc<Shared>, ids: Vec<String>) {
    futures_util::stream::iter(ids)
        .for_each_concurrent(16, |id| {
            let shared = shared.clone();
            async move {
                let got = get_job(&shared, &id).await;
                let mut ledger = shared.ledger.lock().unwrap();
                match got {
                    Ok((200, v)) => ledger.saw(&id, &v),
                    Ok((status, v)) => ledger.lost.push(format!("{id}: after a restart GET answered {status}: {v}")),
                    Err(e) => ledger.lost.push(format!("{id}: after a restart GET failed: {e}")),
                }
            }
        })
        .await;
}

/// Wait until the gateway answers `/health`; the time since `spawned`, or `None` if it was
/// not up by `until` (or exited).
async fn wait_up(gw: &mut Gateway, spawned: Instant, until: Instant) -> Option<Duration> {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    let url = format!("{}/health", gw.url());
    loop {
        // The listener is bound before recovery, so a request may wait for it to end: bound
        // by `until`, or the kill would be postponed to the first moment after recovery.
        match tokio::time::timeout_at(until.into(), client.get(&url).send()).await {
            Ok(Ok(_)) => return Some(spawned.elapsed()),
            Err(_) => return None,
            Ok(Err(_)) => {}
        }
        if Instant::now() >= until || gw.proc_.exited() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `comfyui-gateway check --json` on a copy of the database as the kill left it.
fn check_image(db: &Path, scratch: &Path) -> Result<Value, String> {
    std::fs::copy(db, scratch).map_err(|e| format!("copy {}: {e}", db.display()))?;
    let out =
        support::bin().args(["check", "--json", "--database-url"]).arg(scratch).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let report: Value = serde_json::from_str(text.trim()).map_err(|_| {
        format!(
            "check printed no report (exit {:?}): {text}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if out.status.success() && report["ok"] == true { Ok(report) } else { Err(format!("check failed: {report}")) }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn wasm_b64(name: &str) -> Option<String> {
    let dir = match std::option_env!("PLUGINS_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/target/wasm32-wasip2/release"),
    };
    std::fs::read(dir.join(format!("{name}.wasm"))).ok().map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}

async fn register_plugin_workflow(gw: &Gateway) {
    let wasm = wasm_b64("prompt_guard").expect("plugins/ not built: run scripts/build-plugins");
    let body = json!({
        "id": "guarded",
        "workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "guarded"}}
        },
        "inputSchema": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string"},
                "width": {"type": "integer", "minimum": 16, "maximum": 512, "default": 64},
                "height": {"type": "integer", "minimum": 16, "maximum": 512, "default": 64}
            },
            "additionalProperties": false
        },
        "plugin": {"wasm": wasm, "config": {"blocked": ["forbidden"], "aspectRatios": true, "longSide": 64}}
    });
    let (status, v) = support::post_json(&format!("{}/workflows", gw.url()), &body).await;
    assert_eq!(status, 201, "{v}");
}

/// Executions per prompt id, summed over ComfyUI incarnations; a prompt run twice by one
/// incarnation is a duplicate.
fn absorb_executions(all: &mut HashMap<String, u64>, ex: Vec<(String, u64)>, ledger: &mut Ledger) {
    for (id, n) in ex {
        if n > 1 {
            ledger.duplicated.push(format!("{id}: executed {n} times by one ComfyUI"));
        }
        *all.entry(id).or_default() += n;
    }
}

/// The event log must read: queued first, one terminal event, nothing changing the state
/// after it, and the terminal event agreeing with the job.
fn check_log(id: &str, status: &str, events: &[Value]) -> Option<String> {
    if events.first().map(|e| &e["type"]) != Some(&json!("queued")) {
        return Some(format!("{id}: the log does not start with queued"));
    }
    let with_state: Vec<&str> = events.iter().filter_map(|e| e["status"].as_str()).collect();
    let terminal: Vec<&str> =
        with_state.iter().copied().filter(|s| matches!(*s, "succeeded" | "failed" | "canceled")).collect();
    if terminal != [status] {
        return Some(format!("{id}: terminal events {terminal:?} for a {status} job"));
    }
    if with_state.last() != Some(&status) {
        return Some(format!("{id}: a state change after the terminal event: {with_state:?}"));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_campaign() {
    let kills = setting("KILL_CAMPAIGN_KILLS", 5);
    let seed = setting("KILL_CAMPAIGN_SEED", rand::random::<u32>() as u64);
    let max_up = setting("KILL_CAMPAIGN_MAX_UP_MS", 1500);
    let clients = setting("KILL_CAMPAIGN_CLIENTS", 4);
    let pause_ms = setting("KILL_CAMPAIGN_PAUSE_MS", 200);
    let sim_crash_every = setting("KILL_CAMPAIGN_SIM_CRASH_EVERY", 25);
    let keep = std::env::var_os("KILL_CAMPAIGN_KEEP").is_some();
    println!(
        "kill campaign: {kills} kills, seed {seed}, kill at uniform [0, {max_up}] ms after start, {clients} clients \
         pausing {pause_ms} ms on average"
    );
    let tmp = support::tempdir();
    let dir = tmp.path().to_path_buf();
    let mut rng = StdRng::seed_from_u64(seed);

    let mut sim = Sim::start(&dir, 5).await;
    let receiver = Receiver::start().await;
    let mut gw = Gateway::start(
        &dir,
        &sim.url(),
        &[
            ("MAX_CONCURRENCY", "4"),
            ("MAX_ATTEMPTS", "3"),
            ("LOG_LEVEL", "warn"),
            ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1"),
            ("WEBHOOK_RETRY_SCHEDULE", "100ms,200ms,400ms,800ms,1s,2s,2s,2s,2s,2s,2s,2s"),
            ("WEBHOOK_TIMEOUT_MS", "2000"),
            ("PRUNE_INTERVAL_MS", "200"),
            // Short-lived cache entries: the pruner deletes them under the kills too.
            ("CACHE_TTL_SECONDS", "2"),
        ],
    )
    .await;
    if cfg!(feature = "wasm-plugins") {
        register_plugin_workflow(&gw).await;
    }
    let shared = Arc::new(Shared {
        url: gw.url(),
        hook: receiver.url("/hook"),
        ledger: Mutex::new(Ledger::default()),
        stop: AtomicBool::new(false),
        client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
    });
    let mut executions: HashMap<String, u64> = HashMap::new();
    let mut recovery_ms: Vec<f64> = Vec::new();
    let mut check_ms: Vec<f64> = Vec::new();
    let mut kills_in_recovery = 0u64;
    let mut sim_crashes = 0u64;
    let scratch = dir.join("crash-image.redb");
    let started = Instant::now();
    let mut spawned = Instant::now() - Duration::from_millis(100); // the first start is already up

    for k in 1..=kills {
        // Load from the moment it answers until the kill, at a uniform moment after spawn.
        let kill_at = spawned + Duration::from_millis(rng.random_range(0..=max_up));
        shared.stop.store(false, Ordering::Relaxed);
        let up = wait_up(&mut gw, spawned, kill_at).await;
        let tasks: Vec<_> = match up {
            Some(t) => {
                if k > 1 {
                    recovery_ms.push(t.as_secs_f64() * 1000.0);
                    // Everything not known finished, and a sample of what is, read back.
                    let ids = {
                        let ledger = shared.ledger.lock().unwrap();
                        let mut ids: Vec<String> =
                            ledger.acked.keys().filter(|id| !ledger.finished.contains_key(*id)).cloned().collect();
                        let done: Vec<&String> = ledger.finished.keys().collect();
                        for _ in 0..done.len().min(20) {
                            ids.push(done[rng.random_range(0..done.len())].clone());
                        }
                        ids
                    };
                    verify_jobs(&shared, ids).await;
                }
                (0..clients).map(|i| tokio::spawn(client_task(shared.clone(), seed ^ (k << 8) ^ i, pause_ms))).collect()
            }
            None => {
                kills_in_recovery += 1;
                Vec::new()
            }
        };
        tokio::time::sleep_until(kill_at.into()).await;
        gw.kill9();
        shared.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        // The crash image, checked offline.
        let t = Instant::now();
        match check_image(&gw.db, &scratch) {
            Ok(_) => check_ms.push(t.elapsed().as_secs_f64() * 1000.0),
            Err(e) => shared.ledger.lock().unwrap().impossible.push(format!("kill {k}: {e}")),
        }
        // Now and then ComfyUI crashes too (its executions record goes with it).
        if sim_crash_every > 0 && k % sim_crash_every == 0 {
            let ex = support::executions(&sim.executions().await);
            absorb_executions(&mut executions, ex, &mut shared.ledger.lock().unwrap());
            sim.restart().await;
            sim_crashes += 1;
        }
        gw.respawn();
        spawned = Instant::now();
        if k % 50 == 0 || k == kills {
            let l = shared.ledger.lock().unwrap();
            println!("  {k}/{kills} kills, {} acknowledged, {:.0} s", l.acked.len(), started.elapsed().as_secs_f64());
        }
    }

    // The last start: no more kills. Retries of lost idempotent answers go out, then the
    // load stops and every acknowledged job must finish.
    let up = wait_up(&mut gw, spawned, Instant::now() + Duration::from_secs(60)).await;
    let t = up.unwrap_or_else(|| panic!("the gateway did not come back:\n{}", gw.proc_.log()));
    recovery_ms.push(t.as_secs_f64() * 1000.0);
    shared.stop.store(false, Ordering::Relaxed);
    loop {
        let retry = shared.ledger.lock().unwrap().retries.pop();
        let Some(r) = retry else { break };
        assert!(post_job(&shared, &r.body, Some(&r.key), r.acked).await, "the gateway stopped answering");
    }
    // A short run on a loaded machine can have every kill land before the API answered:
    // then the load runs on the last start until a job is acknowledged, so that the checks
    // below have something to check.
    if shared.ledger.lock().unwrap().acked.is_empty() {
        let tasks: Vec<_> =
            (0..clients).map(|i| tokio::spawn(client_task(shared.clone(), seed ^ 0xface ^ i, pause_ms))).collect();
        support::eventually("a job is acknowledged on the last start", async || {
            (!shared.ledger.lock().unwrap().acked.is_empty()).then_some(())
        })
        .await;
        shared.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    let ids: Vec<String> = shared.ledger.lock().unwrap().acked.keys().cloned().collect();
    let mut pending: Vec<String> = ids.clone();
    // What is still pending after DRAIN is lost (below).
    let _ = support::poll_within(DRAIN, async || {
        verify_jobs(&shared, pending.clone()).await;
        let ledger = shared.ledger.lock().unwrap();
        pending.retain(|id| !ledger.finished.contains_key(id));
        if pending.is_empty() { Ok(()) } else { Err(pending.len()) }
    })
    .await;
    let mut ledger = std::mem::take(&mut *shared.ledger.lock().unwrap());
    for id in &pending {
        ledger.lost.push(format!("{id}: not finished {DRAIN:?} after the last restart"));
    }

    // The whole history of every job, its webhooks, and ComfyUI's executions.
    let client = &shared.client;
    let mut per_tag: HashMap<String, Vec<String>> = HashMap::new();
    let mut webhooks_expected = 0u64;
    let received: HashSet<(String, String)> = receiver
        .hits("/hook")
        .iter()
        .map(|h| {
            let v = h.json();
            (v["data"]["jobId"].as_str().unwrap_or("").to_string(), v["type"].as_str().unwrap_or("").to_string())
        })
        .collect();
    absorb_executions(&mut executions, support::executions(&sim.executions().await), &mut ledger);
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, acked) in &ledger.acked.clone() {
        let (status, job) = get_job(&shared, id).await.expect("GET job");
        if status != 200 {
            continue; // already counted as lost
        }
        let state = job["status"].as_str().unwrap_or("").to_string();
        *by_state.entry(state.clone()).or_default() += 1;
        *by_kind.entry(if acked.cached { "cache hit" } else { acked.kind }).or_default() += 1;
        if let Some(tag) = job["metadata"]["campaign"].as_str() {
            per_tag.entry(tag.to_string()).or_default().push(id.clone());
        }
        let ran = executions.get(id).copied().unwrap_or(0);
        let attempts = job["attempts"].as_u64().unwrap_or(0);
        if ran > attempts.max(1) {
            ledger.duplicated.push(format!("{id}: executed {ran} times in {attempts} attempts"));
        }
        if acked.cached && ran > 0 {
            ledger.impossible.push(format!("{id}: a cache hit was executed"));
        }
        if state == "succeeded" && !acked.cached && job["cached"] != true && ran == 0 {
            ledger.impossible.push(format!("{id}: succeeded without ComfyUI executing it"));
        }
        let logs: Value =
            client.get(format!("{}/jobs/{id}/logs", shared.url)).send().await.unwrap().json().await.unwrap();
        if let Some(why) = check_log(id, &state, logs["events"].as_array().map_or(&[][..], Vec::as_slice)) {
            ledger.impossible.push(why);
        }
        if acked.callback {
            webhooks_expected += 1;
            let wanted = format!("job.{state}");
            // Delivered means: received by the receiver and recorded delivered.
            let delivered = support::poll_within(Duration::from_secs(60), async || {
                let v: Value = client
                    .get(format!("{}/jobs/{id}/webhooks", shared.url))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let all_done = v["deliveries"].as_array().is_some_and(|d| {
                    !d.is_empty() && d.iter().all(|d| d["state"] == "delivered" || d["event"] != wanted.as_str())
                });
                let got = received.contains(&(id.clone(), wanted.clone()))
                    || receiver.hits("/hook").iter().any(|h| {
                        let b = h.json();
                        b["data"]["jobId"] == id.as_str() && b["type"] == wanted.as_str()
                    });
                if all_done && got { Ok(()) } else { Err(v) }
            })
            .await;
            if let Err(v) = delivered {
                ledger.lost.push(format!("{id}: webhook {wanted} not delivered: {v}"));
            }
        }
    }
    for (tag, jobs) in &per_tag {
        if jobs.len() > 1 {
            ledger.duplicated.push(format!("request {tag}: {} jobs {jobs:?}", jobs.len()));
        }
    }
    // The final database, checked offline after one more kill.
    gw.kill9();
    if let Err(e) = check_image(&gw.db, &scratch) {
        ledger.impossible.push(format!("final image: {e}"));
    }

    recovery_ms.sort_by(f64::total_cmp);
    check_ms.sort_by(f64::total_cmp);
    let acked = ledger.acked.len();
    println!("elapsed: {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "submits: {} ({} unanswered, killed in flight), acknowledged jobs by kind: {by_kind:?}",
        ledger.submits, ledger.submit_errors
    );
    println!("final states: {by_state:?}; acknowledged cancels: {}", ledger.canceled.len());
    println!(
        "ComfyUI crashes: {sim_crashes}; prompts executed: {}; webhooks expected: {webhooks_expected}, received: {}",
        executions.values().sum::<u64>(),
        receiver.hits("/hook").len()
    );
    println!(
        "kills during recovery (before the API answered): {kills_in_recovery}; crash images checked: {}",
        check_ms.len()
    );
    println!(
        "recovery time (start to API up): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
        percentile(&recovery_ms, 0.5),
        percentile(&recovery_ms, 0.99),
        recovery_ms.last().copied().unwrap_or(f64::NAN),
        recovery_ms.len()
    );
    for (name, list) in [("lost", &ledger.lost), ("duplicated", &ledger.duplicated), ("impossible", &ledger.impossible)]
    {
        for item in list.iter().take(20) {
            println!("{name}: {item}");
        }
    }
    if keep || !(ledger.lost.is_empty() && ledger.duplicated.is_empty() && ledger.impossible.is_empty()) {
        let kept = tmp.keep();
        println!("kept: {}", kept.display());
    }
    println!(
        "kill points: {kills}, acknowledged: {acked}, lost: {}, duplicated: {}, impossible: {}",
        ledger.lost.len(),
        ledger.duplicated.len(),
        ledger.impossible.len()
    );
    assert!(acked > 0, "nothing was acknowledged");
    assert!(
        ledger.lost.is_empty() && ledger.duplicated.is_empty() && ledger.impossible.is_empty(),
        "the campaign found problems (above)"
    );
}
