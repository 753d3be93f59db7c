//! Backend faults, as a matrix: every fault the simulator can inject (`POST /sim/faults`,
//! or the process killed and restarted), transient (the next request only) and persistent,
//! against one job each, with small time limits so the whole file runs in seconds.
//!
//! Every cell checks the job's terminal state and error code, its attempts (never more
//! than `MAX_ATTEMPTS`), how often the simulator executed its prompt (`/sim/executions`),
//! that a stored output is an intact PNG, and that the job ended within a bounded time.
//! The expected outcomes follow SPEC §3 (exactly-once, restarts and outages, errors
//! classified) and ARCHITECTURE.md "Failure classification":
//!
//! | cell | fault | expected outcome |
//! |---|---|---|
//! | refused, brief | backend down at submit, back 0.8 s later | `succeeded`, attempts 1 (a refused connection is not an attempt), executed once |
//! | refused, past the time limit | backend killed mid-job, stays down | `failed` `COMFYUI_UNREACHABLE` after `COMFYUI_TIMEOUT_MS`, attempts 1 |
//! | `POST /prompt` 500, transient | `promptError: 1` | `succeeded`, attempts 2 (ambiguous answer: reconciled, found unknown twice, resubmitted), executed once |
//! | `POST /prompt` 500, persistent | `promptError: 100` | `failed` `COMFYUI_UNREACHABLE`, attempts = `MAX_ATTEMPTS`, never executed |
//! | `POST /upload/image` 500, transient | `uploadError: 1` | `succeeded`, attempts 1 (the upload is retried; the prompt was not sent yet), executed once |
//! | `POST /upload/image` 500, persistent | `uploadError: 100` | `failed` `COMFYUI_UNREACHABLE`, attempts 1, never executed |
//! | `POST /upload/image` hangs, transient | `uploadHang: 1` (stored, answer never comes) | `succeeded`, attempts 1 (upload retried after `COMFYUI_HTTP_TIMEOUT_MS`), executed once |
//! | `POST /upload/image` hangs, persistent | `uploadHang: 100` | `failed` `COMFYUI_UNREACHABLE`, attempts 1, never executed (not requeued forever) |
//! | `GET /history` 500, transient | `historyError: 1` | `succeeded`, attempts 1, executed once |
//! | `GET /history` 500, persistent | `historyError: 1000` | `failed` `COMFYUI_UNREACHABLE` after `COMFYUI_TIMEOUT_MS`, attempts 1, executed once |
//! | `GET /view` 500, transient | `viewError: 1` | `succeeded` (download retried), intact output, executed once |
//! | `GET /view` 500, persistent | `viewError: 100` | `failed` `COMFYUI_UNREACHABLE`, no output stored, executed once |
//! | `POST /prompt` hangs, transient | `promptHang: 1` (queued, answer never comes) | `succeeded`, attempts 1 (reconciled: found queued or finished), executed once |
//! | `POST /prompt` hangs, persistent | `promptHang: 100` | `succeeded`, attempts 1, executed once |
//! | `GET /history` hangs, transient | `historyHang: 1` | `succeeded`, attempts 1, executed once |
//! | `GET /history` hangs, persistent | `historyHang: 1000` | `failed` `COMFYUI_UNREACHABLE` after `COMFYUI_TIMEOUT_MS`, attempts 1 |
//! | `GET /view` hangs, transient | `viewHang: 1` | `succeeded` (download retried), intact output |
//! | `GET /view` hangs, persistent | `viewHang: 100` | `failed` `COMFYUI_UNREACHABLE`, no output stored |
//! | execution hangs | `hang: 1` | `failed` `COMFYUI_TIMEOUT` after `COMFYUI_TIMEOUT_MS`, the prompt interrupted, executed once |
//! | WebSocket drop mid-job | `dropWsAfterMs` | `succeeded`, attempts 1, executed once |
//! | ComfyUI crash mid-job | `crashOnNextExecution`, then restart | `succeeded`, attempts 2, executed once by the restarted backend |
//! | ComfyUI crashes on every execution | `--fault-crash-on-next-execution`, restarted each time | `failed` `COMFYUI_UNREACHABLE`, attempts = `MAX_ATTEMPTS` |
//! | garbage `/view` body, transient | `viewGarbage: 1` | `succeeded` with the real PNG (the HTML body is never stored) |
//! | garbage `/view` body, persistent | `viewGarbage: 100` | `failed` `COMFYUI_NODE_ERROR` naming the file and what came instead, no output stored |
//! | truncated `/view` body, transient | `viewTruncated: 1` | `succeeded` with the whole PNG |
//! | truncated `/view` body, persistent | `viewTruncated: 100` | `failed` `COMFYUI_UNREACHABLE`, no output stored, bounded (not a loop) |
//! | `/history` without outputs, transient | `historyNoOutputs: 1` | `succeeded` (the history is read again before concluding) |
//! | `/history` without outputs, persistent | `historyNoOutputs: 100` | `failed` `COMFYUI_NODE_ERROR` ("listed no saved output files"), executed once |
//! | `/queue` not understood, transient | `promptHang: 1` + `queueGarbage: 4` (HTML page, JSON of another shape, `queue_running` null, missing), the prompt still running | `succeeded`, attempts 1, submitted once (never read as an empty queue), executed once |
//! | `/queue` not understood, persistent | `promptHang: 1` + `queueGarbage: 1000` | `succeeded` (the finished prompt's history entry is taken), attempts 1, submitted once |
//! | `/history` not understood, transient | `promptHang: 1` + `historyGarbage: 2` / `4` (`[]`, `{"error": ...}`, HTML, `{"<id>": "pending"}`) | `succeeded`, attempts 1, submitted once (never "unknown"), executed once |
//! | `/history` not understood, persistent | `promptHang: 1` + `historyGarbage: 1000` | `failed` `COMFYUI_UNREACHABLE` ("not understood") at the time limit, submitted once |
//! | history entry without `status` / with `status_str: "running"`, transient | `historyNoStatus: 2`, `historyOddStatus: 2` | `succeeded` (not taken as a success or a failure until real), submitted once |
//! | the same, persistent | `historyNoStatus: 1000`, `historyOddStatus: 1000` | `failed` `COMFYUI_UNREACHABLE` ("not understood") at the time limit, submitted once, executed once |
//!
//! A job still *queued* while its backend is down waits without a time limit (nothing was
//! sent, no attempt is counted); the time limit starts when a prompt is submitted.
//!
//! Regression cells (the gateway got them wrong before the runner checked and retried
//! transfers): a transient upload or `/view` 500 failed the job `COMFYUI_NODE_ERROR`; a
//! garbage `/view` body was stored as the PNG output; a persistent truncated or hung `/view`
//! reconciled and downloaded again forever; a persistent hung upload requeued the job
//! forever; a transient `/history` without outputs failed the job. And before `/queue` and
//! `/history/{id}` were parsed strictly, a malformed `/queue` was an empty queue and a
//! history body of another shape "unknown" (two of them: a second `POST /prompt`), an entry
//! without `status` a success, and one with an odd `status_str` a failure.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, eventually_within};

/// `COMFYUI_TIMEOUT_MS` of the cells.
const TIMEOUT_MS: u64 = 2500;
/// `MAX_ATTEMPTS` of the cells.
const ATTEMPTS_MAX: u64 = 3;
/// The longest any cell may take from submit to a terminal state.
const BOUND: Duration = Duration::from_secs(20);
/// `COMFYUI_TIMEOUT_MS` of the cells that restart the backend mid-job: the restart must fit
/// in it however loaded the machine is.
const RESTART_ENV: &[(&str, &str)] = &[("COMFYUI_TIMEOUT_MS", "10000")];

/// A simulator and a gateway with small time limits.
struct Rig {
    _dir: tempfile::TempDir,
    sim: Sim,
    gw: Gateway,
}

impl Rig {
    async fn start(extra_env: &[(&str, &str)]) -> Rig {
        let dir = support::tempdir();
        let sim = Sim::start(dir.path(), 10).await;
        Rig::with_sim(dir, sim, extra_env).await
    }

    async fn with_sim(dir: tempfile::TempDir, sim: Sim, extra_env: &[(&str, &str)]) -> Rig {
        let timeout = TIMEOUT_MS.to_string();
        let attempts = ATTEMPTS_MAX.to_string();
        let mut env = vec![
            ("POLL_INTERVAL_MS", "50"),
            ("COMFYUI_HTTP_TIMEOUT_MS", "400"),
            ("COMFYUI_TIMEOUT_MS", timeout.as_str()),
            ("MAX_ATTEMPTS", attempts.as_str()),
            ("CACHE_ENABLED", "false"),
        ];
        env.extend_from_slice(extra_env);
        let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
        support::register_invert(&gw).await;
        Rig { _dir: dir, sim, gw }
    }

    /// Arm `fault` (after disarming everything), submit a job, wait for its end.
    async fn run(&self, fault: Value, body: Value) -> Outcome {
        self.sim.faults(json!({"reset": true})).await;
        self.sim.faults(fault).await;
        self.run_armed(body).await
    }

    async fn run_armed(&self, body: Value) -> Outcome {
        let start = Instant::now();
        let id = self.gw.submit_ok(body).await;
        self.finish(id, start).await
    }

    async fn finish(&self, id: String, start: Instant) -> Outcome {
        let job = self.gw.wait_terminal(&id, BOUND).await;
        let took = start.elapsed();
        self.sim.faults(json!({"reset": true})).await;
        Outcome { id, job, took }
    }

    /// How often the simulator started executing the job's prompt (0 if it never saw it).
    async fn executed(&self, id: &str) -> u64 {
        support::executions(&self.sim.executions().await)
            .into_iter()
            .find(|(p, _)| p == id)
            .map(|(_, n)| n)
            .unwrap_or(0)
    }

    /// Every output of a succeeded job downloads as a PNG that decodes completely.
    /// The job succeeded at its first attempt, ComfyUI ran it once, and its outputs are
    /// intact: what every transient fault must come to.
    async fn assert_clean_success(&self, o: &Outcome) {
        o.expect("succeeded", None, 1, &self.gw.proc_.log());
        assert_eq!(self.executed(&o.id).await, 1);
        self.assert_intact_outputs(o).await;
    }

    async fn assert_intact_outputs(&self, o: &Outcome) {
        let outputs = o.job["outputs"].as_array().cloned().unwrap_or_default();
        assert!(!outputs.is_empty(), "{}", o.job);
        for out in outputs {
            let url = format!("{}{}", self.gw.url(), out["url"].as_str().unwrap());
            let bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
            assert_eq!(bytes.len() as u64, out["size"].as_u64().unwrap_or(0), "{out}");
            assert!(png_decodes(&bytes), "output {out} is an intact PNG ({} bytes)", bytes.len());
        }
    }

    async fn assert_no_outputs(&self, o: &Outcome) {
        let (status, v) = support::get_json(&format!("{}/outputs/{}", self.gw.url(), o.id)).await;
        let listed = v["outputs"].as_array().map(Vec::len).unwrap_or(0);
        assert!(status == 200 && listed == 0 || status == 404, "no output stored: {status} {v}");
        assert!(o.job["outputs"].as_array().is_none_or(Vec::is_empty), "{}", o.job);
    }
}

struct Outcome {
    id: String,
    job: Value,
    took: Duration,
}

impl Outcome {
    /// The terminal state, the error code (None for a success) and the attempts.
    fn expect(&self, status: &str, code: Option<&str>, attempts: u64, log: &str) {
        let job = &self.job;
        // The observed outcome, for `--nocapture` runs (the test thread is named after the test).
        eprintln!(
            "[cell] {}: {} {} attempts={} in {} ms: {}",
            std::thread::current().name().unwrap_or("?"),
            job["status"],
            job["error"]["code"],
            job["attempts"],
            self.took.as_millis(),
            self.message()
        );
        assert_eq!(job["status"], status, "{job}\n{log}");
        assert_eq!(job["error"]["code"].as_str(), code, "{job}");
        assert_eq!(job["attempts"].as_u64(), Some(attempts), "{job}");
        assert!(attempts <= ATTEMPTS_MAX);
        if code.is_some() {
            let message = job["error"]["message"].as_str().unwrap_or("");
            assert!(message.len() > 10, "a clear message: {job}");
        }
        assert!(self.took < BOUND, "took {:?}", self.took);
    }

    fn message(&self) -> String {
        self.job["error"]["message"].as_str().unwrap_or("").to_string()
    }
}

fn png_decodes(bytes: &[u8]) -> bool {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let Ok(mut reader) = decoder.read_info() else { return false };
    let Some(size) = reader.output_buffer_size() else { return false };
    let mut buf = vec![0; size];
    reader.next_frame(&mut buf).is_ok() && reader.finish().is_ok()
}

fn icon(seed: u64) -> Value {
    json!({"workflowId": "icon_512", "inputs": {"prompt": "fault matrix", "seed": seed}})
}

async fn wait_until_executing(rig: &Rig, id: &str) {
    eventually_within(BOUND, format!("job {id} starts"), async || (rig.executed(id).await > 0).then_some(())).await
}

/// Refused connections: a backend down for a moment is waited for without an attempt;
/// one that stays down past the job's time limit fails the job `COMFYUI_UNREACHABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections() {
    let mut rig = Rig::start(&[]).await;
    // Brief: down at submit, back 0.8 s later.
    rig.sim.proc_.kill9();
    let start = Instant::now();
    let id = rig.gw.submit_ok(icon(1)).await;
    // Not synchronisation: the outage lasts 0.8 s, then the backend comes back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let waiting = rig.gw.job(&id).await;
    // Queued (or, for a moment, dispatched and about to be refused), never finished.
    assert!(
        matches!(waiting["status"].as_str(), Some("queued" | "running")),
        "waits while the backend is down: {waiting}"
    );
    rig.sim.restart().await;
    let o = rig.finish(id, start).await;
    rig.assert_clean_success(&o).await;

    // Past the time limit: killed mid-job, never back.
    rig.sim.faults(json!({"hang": 1})).await;
    let start = Instant::now();
    let id = rig.gw.submit_ok(icon(2)).await;
    wait_until_executing(&rig, &id).await;
    rig.sim.proc_.kill9();
    let o = rig.finish_down(id, start).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert!(o.took >= Duration::from_millis(TIMEOUT_MS), "waited for the time limit: {:?}", o.took);
    assert!(o.message().contains("unreachable"), "{}", o.message());
}

impl Rig {
    /// Like `finish`, for a backend that is down (its faults cannot be reset).
    async fn finish_down(&self, id: String, start: Instant) -> Outcome {
        let job = self.gw.wait_terminal(&id, BOUND).await;
        Outcome { id, job, took: start.elapsed() }
    }
}

/// 500 answers to `POST /prompt`: ambiguous, so reconciled; a prompt the backend never
/// took is resubmitted (an attempt) until `MAX_ATTEMPTS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_answers_500() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"promptError": 1}), icon(1)).await;
    o.expect("succeeded", None, 2, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 1);
    rig.assert_intact_outputs(&o).await;

    let o = rig.run(json!({"promptError": 100}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), ATTEMPTS_MAX, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 0);
}

/// 500 answers to `POST /upload/image`: the prompt was not sent, so the upload is retried
/// (no attempt counted); a backend that keeps failing it fails the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_answers_500() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"uploadError": 1}), support::invert_job(1)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"uploadError": 100}), support::invert_job(2)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert!(o.message().contains("500"), "{}", o.message());
    assert_eq!(rig.executed(&o.id).await, 0);
}

/// 500 answers to `GET /history/{id}`: looked at again; for longer than the job's time
/// limit, the job fails `COMFYUI_UNREACHABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_answers_500() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"historyError": 1}), icon(1)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"historyError": 1000}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 1);
}

/// 500 answers to `GET /view`: the download is retried; a backend that keeps failing it
/// fails the job without storing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_answers_500() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"viewError": 1}), icon(1)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"viewError": 100}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert!(o.message().contains("500"), "{}", o.message());
    assert_eq!(rig.executed(&o.id).await, 1);
    rig.assert_no_outputs(&o).await;
}

/// `POST /prompt` whose answer never comes (the prompt was queued): past
/// `COMFYUI_HTTP_TIMEOUT_MS` the job is reconciled and found, never submitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_answer_hangs() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"promptHang": 1}), icon(1)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"promptHang": 100}), icon(2)).await;
    rig.assert_clean_success(&o).await;
}

/// `GET /history/{id}` that never answers: past `COMFYUI_HTTP_TIMEOUT_MS` it is asked
/// again; for longer than the job's time limit, the job fails `COMFYUI_UNREACHABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_answer_hangs() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"historyHang": 1}), icon(1)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"historyHang": 1000}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 1);
}

/// `POST /upload/image` that never answers: the upload is tried again (no attempt: the
/// prompt was not sent); a backend that keeps hanging fails the job instead of taking it
/// back again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_answer_hangs() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"uploadHang": 1}), support::invert_job(3)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"uploadHang": 100}), support::invert_job(4)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 0);
}

/// `GET /view` that never answers: the download is tried again; a backend that keeps
/// hanging fails the job without storing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_answer_hangs() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"viewHang": 1}), icon(1)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"viewHang": 100}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 1);
    rig.assert_no_outputs(&o).await;
}

/// Execution that hangs past `COMFYUI_TIMEOUT_MS`: interrupted, `COMFYUI_TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_hangs_past_the_time_limit() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"hang": 1}), icon(1)).await;
    o.expect("failed", Some("COMFYUI_TIMEOUT"), 1, &rig.gw.proc_.log());
    assert!(o.took >= Duration::from_millis(TIMEOUT_MS), "{:?}", o.took);
    assert_eq!(rig.executed(&o.id).await, 1);
    // The backend was told to stop: its queue empties.
    eventually_within(BOUND, "the hung prompt is interrupted", async || {
        let (_, q) = support::get_json(&format!("{}/queue", rig.sim.url())).await;
        if q["queue_running"].as_array().is_some_and(Vec::is_empty) { Ok(()) } else { Err(q) }
    })
    .await;
}

/// The WebSocket drops mid-job: reconciled by polling, no resubmission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drop_mid_job() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"dropWsAfterMs": 30}), icon(1)).await;
    rig.assert_clean_success(&o).await;
}

/// ComfyUI crashes when it takes the prompt and comes back empty: resubmitted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_crash_mid_job() {
    let mut rig = Rig::start(RESTART_ENV).await;
    rig.sim.faults(json!({"crashOnNextExecution": true})).await;
    let start = Instant::now();
    let id = rig.gw.submit_ok(icon(1)).await;
    rig.sim.proc_.wait_exit(BOUND).await;
    rig.sim.restart().await;
    let o = rig.finish(id, start).await;
    o.expect("succeeded", None, 2, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 1, "executed once by the restarted backend");
    rig.assert_intact_outputs(&o).await;
}

/// ComfyUI crashes on every execution (restarted each time): `MAX_ATTEMPTS`, then
/// `COMFYUI_UNREACHABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_crashes_on_every_execution() {
    let dir = support::tempdir();
    let flags = ["--node-delay-ms".to_string(), "10".into(), "--fault-crash-on-next-execution".into()];
    let sim = Sim::start_with(dir.path(), &flags).await;
    let mut rig = Rig::with_sim(dir, sim, RESTART_ENV).await;
    let start = Instant::now();
    let id = rig.gw.submit_ok(icon(1)).await;
    // ComfyUI restarts after each crash, until the job is over.
    let job = eventually_within(BOUND, "the job finishes", async || {
        let job = rig.gw.job(&id).await;
        if matches!(job["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
            return Ok(job);
        }
        if rig.sim.proc_.exited() {
            rig.sim.restart().await;
        }
        Err(job)
    })
    .await;
    let o = Outcome { id, job, took: start.elapsed() };
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), ATTEMPTS_MAX, &rig.gw.proc_.log());
}

/// `/view` answers 200 with bytes that are not the PNG the file name says: downloaded
/// again; never stored; persistent → `COMFYUI_NODE_ERROR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_sends_garbage() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"viewGarbage": 1}), icon(1)).await;
    o.expect("succeeded", None, 1, &rig.gw.proc_.log());
    rig.assert_intact_outputs(&o).await;

    let o = rig.run(json!({"viewGarbage": 100}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_NODE_ERROR"), 1, &rig.gw.proc_.log());
    assert!(o.message().contains("PNG"), "{}", o.message());
    assert_eq!(rig.executed(&o.id).await, 1);
    rig.assert_no_outputs(&o).await;
}

/// `/view` bodies cut short (Content-Length says more, the connection closes): downloaded
/// again; never stored; persistent → `COMFYUI_UNREACHABLE`, not a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_truncated() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"viewTruncated": 1}), icon(1)).await;
    o.expect("succeeded", None, 1, &rig.gw.proc_.log());
    rig.assert_intact_outputs(&o).await;

    let o = rig.run(json!({"viewTruncated": 100}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert_eq!(rig.executed(&o.id).await, 1);
    rig.assert_no_outputs(&o).await;
}

/// A finished `/history` entry without its outputs: read again; persistent →
/// `COMFYUI_NODE_ERROR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_without_outputs() {
    let rig = Rig::start(&[]).await;
    let o = rig.run(json!({"historyNoOutputs": 1}), icon(1)).await;
    rig.assert_clean_success(&o).await;

    let o = rig.run(json!({"historyNoOutputs": 100}), icon(2)).await;
    o.expect("failed", Some("COMFYUI_NODE_ERROR"), 1, &rig.gw.proc_.log());
    assert!(o.message().contains("no saved output"), "{}", o.message());
    assert_eq!(rig.executed(&o.id).await, 1);
}

impl Rig {
    /// How many `POST /prompt` with the job's prompt id the simulator accepted: the
    /// exactly-once check of the cells whose faults feed the re-submit decision.
    async fn submitted(&self, id: &str) -> u64 {
        let executions = self.sim.executions().await;
        let records = executions["executions"].as_array().cloned().unwrap_or_default();
        records.iter().find(|e| e["promptId"] == id).and_then(|e| e["submitted"].as_u64()).unwrap_or(0)
    }

    /// Like `run`, also returning the faults still armed when the job ended (before the
    /// reset), so a cell can show that the job did meet the answers it was given.
    async fn run_counted(&self, fault: Value, body: Value) -> (Outcome, Value) {
        self.sim.faults(json!({"reset": true})).await;
        self.sim.faults(fault).await;
        let start = Instant::now();
        let id = self.gw.submit_ok(body).await;
        let job = self.gw.wait_terminal(&id, BOUND).await;
        let took = start.elapsed();
        let (_, left) = support::get_json(&format!("{}/sim/faults", self.sim.url())).await;
        self.sim.faults(json!({"reset": true})).await;
        (Outcome { id, job, took }, left)
    }

    /// The job ran once, was submitted once (never a second `POST /prompt`), and every
    /// count of the transient `fault` was served to it.
    async fn assert_exactly_once(&self, o: &Outcome, left: &Value, fault: &str) {
        assert_eq!(self.submitted(&o.id).await, 1, "one POST /prompt: {}\n{}", o.job, self.gw.proc_.log());
        assert_eq!(self.executed(&o.id).await, 1, "{}", o.job);
        assert_eq!(left[fault], 0, "the job met every {fault} answer: {left}");
    }
}

/// `GET /queue` answers 200 with what is not a queue (an HTML error page, JSON of another
/// shape, `queue_running` null or missing) while the job is reconciled and its prompt still
/// runs: never read as an empty queue, so never "unknown" and never a second
/// `POST /prompt`; the job reattaches once the answers are real again.
///
/// The simulator runs each model node for 600 ms here, so the prompt is still running
/// while reconciliation meets the faults; `promptHang: 1` sends the job to reconciliation
/// (the `POST /prompt` answer never comes, `COMFYUI_HTTP_TIMEOUT_MS` = 400 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_answers_not_understood() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 600).await;
    let rig = Rig::with_sim(dir, sim, RESTART_ENV).await;
    // Transient: every kind once, then the real queue (the job is still in it).
    let (o, left) = rig.run_counted(json!({"promptHang": 1, "queueGarbage": 4}), icon(1)).await;
    o.expect("succeeded", None, 1, &rig.gw.proc_.log());
    rig.assert_exactly_once(&o, &left, "queueGarbage").await;
    rig.assert_intact_outputs(&o).await;

    // Persistent: the queue is never understood, but the finished prompt's history entry
    // is taken as it is (a finished prompt is finished); still one submission.
    let (o, left) = rig.run_counted(json!({"promptHang": 1, "queueGarbage": 1000}), icon(2)).await;
    o.expect("succeeded", None, 1, &rig.gw.proc_.log());
    assert!(left["queueGarbage"].as_u64().is_some_and(|n| n < 1000), "the job met the fault: {left}");
    assert_eq!(rig.submitted(&o.id).await, 1, "one POST /prompt: {}", o.job);
    assert_eq!(rig.executed(&o.id).await, 1);
}

/// `GET /history/{id}` answers 200 with what is not a history (an HTML error page, JSON of
/// another shape, a list, the prompt mapped to a string) while the job is reconciled after
/// its prompt finished: never "unknown", never a second `POST /prompt`; the job is
/// collected once the answers are real; persistent → `COMFYUI_UNREACHABLE` at the job's
/// time limit, still submitted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_answers_not_understood() {
    let rig = Rig::start(&[]).await;
    // Two answers a lenient parser took for "unknown" (`[]`, then `{"error": ...}`): before
    // the parse was strict this cell resubmitted the prompt.
    let (o, left) = rig.run_counted(json!({"promptHang": 1, "historyGarbage": 2}), icon(1)).await;
    o.expect("succeeded", None, 1, &rig.gw.proc_.log());
    rig.assert_exactly_once(&o, &left, "historyGarbage").await;
    rig.assert_intact_outputs(&o).await;

    // Every kind once.
    let (o, left) = rig.run_counted(json!({"promptHang": 1, "historyGarbage": 4}), icon(2)).await;
    o.expect("succeeded", None, 1, &rig.gw.proc_.log());
    rig.assert_exactly_once(&o, &left, "historyGarbage").await;

    let (o, _) = rig.run_counted(json!({"promptHang": 1, "historyGarbage": 1000}), icon(3)).await;
    o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
    assert!(o.message().contains("not understood"), "{}", o.message());
    assert!(o.took >= Duration::from_millis(TIMEOUT_MS), "waited for the time limit: {:?}", o.took);
    assert_eq!(rig.submitted(&o.id).await, 1, "one POST /prompt: {}", o.job);
    assert_eq!(rig.executed(&o.id).await, 1);
}

/// A finished prompt's history entry without `status`, or with a `status_str` that is
/// neither success nor error: not taken as a success (nor as a failure); read again, and
/// collected once the entry is real; persistent → `COMFYUI_UNREACHABLE` at the job's time
/// limit, submitted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_entries_not_understood() {
    let rig = Rig::start(&[]).await;
    for fault in ["historyNoStatus", "historyOddStatus"] {
        let seed = if fault == "historyNoStatus" { 1 } else { 3 };
        let (o, left) = rig.run_counted(json!({fault: 2}), icon(seed)).await;
        o.expect("succeeded", None, 1, &rig.gw.proc_.log());
        rig.assert_exactly_once(&o, &left, fault).await;
        rig.assert_intact_outputs(&o).await;

        let (o, _) = rig.run_counted(json!({fault: 1000}), icon(seed + 1)).await;
        o.expect("failed", Some("COMFYUI_UNREACHABLE"), 1, &rig.gw.proc_.log());
        assert!(o.message().contains("not understood"), "{}", o.message());
        assert_eq!(rig.submitted(&o.id).await, 1, "one POST /prompt: {}", o.job);
        assert_eq!(rig.executed(&o.id).await, 1);
    }
}
