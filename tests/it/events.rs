//! Following jobs: Server-Sent Events (format, resume with `Last-Event-ID`, live
//! continuation), sync submits (`?wait=`), listing with filters and cursors, the event
//! log endpoint, privacy mode, and `etaSeconds`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::receiver::Receiver;
use crate::support::{self, Gateway, Sim, get_json, post_json};

const WAIT: Duration = Duration::from_secs(60);

/// One parsed Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    /// The id of a log entry (its seq); None for an output event (see `output_id`).
    id: Option<u64>,
    /// The id as sent: `N`, or `N.k` for output `k` of the terminal event at seq `N`.
    raw_id: Option<String>,
    event: String,
    data: Value,
}

/// A Server-Sent Events stream read chunk by chunk with reqwest.
struct SseStream {
    resp: reqwest::Response,
    buf: String,
    /// Every byte received.
    raw: String,
    ended: bool,
}

impl SseStream {
    async fn open(url: &str, last_event_id: Option<u64>) -> SseStream {
        SseStream::open_after(url, last_event_id.map(|id| id.to_string()).as_deref()).await
    }

    /// [`SseStream::open`] with any `Last-Event-ID` (an output's `N.k` too).
    async fn open_after(url: &str, last_event_id: Option<&str>) -> SseStream {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["x-accel-buffering"], "no");
        SseStream { resp, buf: String::new(), raw: String::new(), ended: false }
    }

    /// The next event (comments and `retry:` skipped), None when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut raw_id, mut event, mut data) = (None, None, None, None);
                for line in block.lines().filter(|l| !l.is_empty()) {
                    if let Some(v) = line.strip_prefix("id: ") {
                        // A seq, or `N.k` (an output of the event at seq N).
                        let (n, k) = v.split_once('.').unwrap_or((v, ""));
                        assert!(n.parse::<u64>().is_ok() && (k.is_empty() || k.parse::<u64>().is_ok()), "id {v:?}");
                        id = k.is_empty().then(|| n.parse::<u64>().unwrap());
                        raw_id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str::<Value>(v).expect("data is one line of JSON"));
                    } else {
                        assert!(line.starts_with(':') || line.starts_with("retry: "), "unexpected line {line:?}");
                    }
                }
                if let (Some(event), Some(data)) = (event, data) {
                    return Some(Sse { id, raw_id, event, data });
                }
            }
            if self.ended {
                assert!(self.buf.is_empty(), "stream ended inside an event: {:?}", self.buf);
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk()).await.expect("an event within the timeout");
            match chunk.expect("stream read") {
                Some(bytes) => {
                    let text = std::str::from_utf8(&bytes).expect("utf-8").to_string();
                    self.raw.push_str(&text);
                    self.buf.push_str(&text);
                }
                None => self.ended = true,
            }
        }
    }

    /// Read on until the raw stream contains `needle` (a comment line, say); the events
    /// read meanwhile stay for [`SseStream::next`].
    async fn wait_raw(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.raw.contains(needle) {
            assert!(!self.ended, "the stream ended without {needle:?}: {}", self.raw);
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk()).await;
            match chunk.unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}")).expect("stream read") {
                Some(bytes) => {
                    let text = std::str::from_utf8(&bytes).expect("utf-8").to_string();
                    self.raw.push_str(&text);
                    self.buf.push_str(&text);
                }
                None => self.ended = true,
            }
        }
    }

    /// Every remaining event until the stream ends.
    async fn rest(&mut self) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

fn events_url(gw: &Gateway, id: &str) -> String {
    format!("{}/jobs/{id}/events", gw.url())
}

fn ids(events: &[Sse]) -> Vec<u64> {
    events.iter().filter_map(|e| e.id).collect()
}

async fn log_seqs(gw: &Gateway, id: &str) -> Vec<u64> {
    let (status, logs) = get_json(&format!("{}/jobs/{id}/logs", gw.url())).await;
    assert_eq!(status, 200, "{logs}");
    logs["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// A finished job whose log goes on past its terminal event (a webhook attempt): a client
/// that had the terminal event and reconnects with its id gets the entries after it, then
/// the end of the stream, not a stream held open (and a stream slot held) for an event
/// that was already sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_past_the_terminal_event_ends_after_the_entries_that_follow_it() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 50).await;
    let receiver = Receiver::start().await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1")]).await;
    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "a heron"}, "callbackUrl": receiver.url("/h")});
    let id = gw.submit_ok(body).await;
    let events = SseStream::open(&events_url(&gw, &id), None).await.rest().await;
    let terminal = events.last().unwrap();
    assert_eq!(terminal.event, "succeeded", "{events:?}");
    let terminal_id = terminal.id.unwrap();
    support::eventually_within(WAIT, "a webhook attempt is logged after the terminal event", async || {
        let seqs = log_seqs(&gw, &id).await;
        if seqs.last().copied() != Some(terminal_id) { Ok(()) } else { Err(seqs) }
    })
    .await;
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        SseStream::open(&events_url(&gw, &id), Some(terminal_id)).await.rest().await
    })
    .await
    .expect("the resumed stream of a finished job ends");
    assert!(!again.is_empty() && again.iter().all(|e| e.event == "webhook"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_status_progress_and_the_terminal_event_then_close() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 300).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    // Three outputs, so that a stream resumed between two of them is tested.
    let job = json!({"workflowId": "icon_512", "inputs": {"prompt": "a lighthouse", "batch_size": 3}});
    let id = gw.submit_ok(job).await;
    let mut stream = SseStream::open(&events_url(&gw, &id), None).await;
    let events = stream.rest().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"status"), "{names:?}");
    assert_eq!(events[0].data["status"], "queued");
    assert!(events.iter().any(|e| e.event == "status" && e.data["status"] == "running"), "{names:?}");
    let progress = events.iter().find(|e| e.event == "progress").unwrap_or_else(|| panic!("progress: {names:?}"));
    assert!(progress.data["node"].is_string() && progress.data["percent"].is_number(), "{:?}", progress.data);
    let last = events.last().unwrap();
    assert_eq!(last.event, "succeeded", "{names:?}");
    assert_eq!(last.data["job"]["status"], "succeeded");
    let outputs = last.data["job"]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 3, "the terminal event carries the outputs");
    let n_output_events = events.iter().filter(|e| e.event == "output").count();
    assert_eq!(n_output_events, outputs.len(), "one output event per output");
    // Every durable log entry, in order, exactly once; output k carries the id `N.k` of
    // the terminal event (seq N) it precedes.
    let logged: Vec<Sse> = events.iter().filter(|e| e.event != "output").cloned().collect();
    assert_eq!(ids(&logged), log_seqs(&gw, &id).await);
    assert_eq!(last.id, ids(&events).last().copied());
    let terminal = last.id.unwrap();
    let output_ids: Vec<String> =
        events.iter().filter(|e| e.event == "output").filter_map(|e| e.raw_id.clone()).collect();
    let expected: Vec<String> = (0..outputs.len()).map(|k| format!("{terminal}.{k}")).collect();
    assert_eq!(output_ids, expected, "output k has the id N.k of the terminal event N");
    // A client that got the first output and reconnects with its id gets the rest of the
    // outputs, then the terminal event: nothing lost, nothing twice.
    let again = SseStream::open_after(&events_url(&gw, &id), Some(&expected[0])).await.rest().await;
    let resumed: Vec<(String, Option<String>)> = again.iter().map(|e| (e.event.clone(), e.raw_id.clone())).collect();
    let mut want: Vec<(String, Option<String>)> =
        expected[1..].iter().map(|k| ("output".into(), Some(k.clone()))).collect();
    want.push(("succeeded".into(), Some(terminal.to_string())));
    assert_eq!(resumed, want, "resumed after the first output");
    // One that got the terminal event is sent nothing again.
    let again = SseStream::open(&events_url(&gw, &id), Some(terminal)).await.rest().await;
    assert!(again.is_empty(), "{again:?}");

    // The raw format `curl -N` shows: a retry hint, then blocks of id/event/data lines.
    let raw = &stream.raw;
    assert!(raw.starts_with("retry: "), "{raw}");
    for block in raw.split("\n\n").filter(|b| !b.is_empty()).skip(1) {
        let lines: Vec<&str> = block.lines().collect();
        assert!(
            lines.iter().all(|l| l.starts_with("id: ")
                || l.starts_with("event: ")
                || l.starts_with("data: ")
                || l.starts_with(':')),
            "{block:?}"
        );
        if !block.starts_with(':') {
            assert!(
                lines[lines.len() - 2].starts_with("event: ") && lines[lines.len() - 1].starts_with("data: "),
                "{block:?}"
            );
        }
    }
    assert!(raw.ends_with("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_after_last_event_id_exactly_then_continue_live() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("SSE_HEARTBEAT_MS", "100")]).await;
    sim.faults(json!({"hang": 1})).await;
    let id = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}})).await;

    // First connection: read up to the dispatch, then go away.
    let mut first = SseStream::open(&events_url(&gw, &id), None).await;
    let mut seen = Vec::new();
    loop {
        let e = first.next().await.expect("the job is running before the stream ends");
        let running = e.data["status"] == "running";
        seen.push(e);
        if running {
            break;
        }
    }
    drop(first);
    let last = seen.last().unwrap().id.unwrap();

    // Reconnect with Last-Event-ID while the job hangs, then cancel it: the stream
    // resumes after `last` and continues live to the terminal event.
    // The stream subscribes to live events before it answers (api/sse.rs); a heartbeat
    // shows it is live while the job hangs, before the cancel.
    let mut second = SseStream::open(&events_url(&gw, &id), Some(last)).await;
    second.wait_raw(": ping\n\n").await;
    let (status, body) = post_json(&format!("{}/jobs/{id}/cancel", gw.url()), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let rest = second.rest().await;
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("canceled"), "{rest:?}");
    assert!(second.raw.contains(": ping\n\n"), "heartbeats while the job hangs");
    let mut all = ids(&seen);
    all.extend(ids(&rest));
    assert_eq!(all, log_seqs(&gw, &id).await, "no duplicates, no gaps");
    assert!(ids(&rest).iter().all(|&s| s > last));

    // `?lastEventId=` resumes the same way, and after the terminal event ends at once.
    let url = format!("{}?lastEventId={}", events_url(&gw, &id), seen[0].id.unwrap());
    let again = SseStream::open(&url, None).await.rest().await;
    assert_eq!(ids(&again), all[1..].to_vec());
    let end = SseStream::open(&events_url(&gw, &id), Some(*all.last().unwrap())).await.rest().await;
    assert!(end.is_empty(), "{end:?}");
    let (status, body) = get_json(&format!("{}?lastEventId=nope", events_url(&gw, &id))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sync_submit_answers_the_finished_job_or_202_after_the_wait() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "now"}});
    let (status, done) = post_json(&format!("{}/jobs?wait=30", gw.url()), &body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "succeeded");
    assert!(!done["outputs"].as_array().unwrap().is_empty(), "{done}");

    // A job that cannot finish in time: 202, then it finishes later.
    sim.faults(json!({"hang": 1})).await;
    let (status, pending) = post_json(&format!("{}/jobs?wait=0.5", gw.url()), &body).await;
    assert_eq!(status, 202, "{pending}");
    let id = pending["jobId"].as_str().unwrap().to_string();
    assert!(matches!(pending["status"].as_str(), Some("queued" | "running")), "{pending}");
    assert_eq!(pending["pollUrl"], format!("/jobs/{id}"));
    // While it runs, its workflow's observed duration gives an ETA.
    let running = gw.job(&id).await;
    assert!(running["etaSeconds"].is_number(), "{running}");
    let (status, _) = post_json(&format!("{}/jobs/{id}/cancel", gw.url()), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(gw.wait_terminal(&id, WAIT).await["status"], "canceled");
    let (status, later) = post_json(&format!("{}/jobs?wait=0.01", gw.url()), &body).await;
    if status == 202 {
        let later = gw.wait_terminal(later["jobId"].as_str().unwrap(), WAIT).await;
        assert_eq!(later["status"], "succeeded");
    } else {
        assert_eq!((status, later["status"].as_str()), (200, Some("succeeded")));
    }

    for bad in ["0", "-1", "301", "soon"] {
        let (status, err) = post_json(&format!("{}/jobs?wait={bad}", gw.url()), &body).await;
        assert_eq!(status, 400, "wait={bad}: {err}");
        assert_eq!(err["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(err["error"]["details"][0]["path"], "wait");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_jobs_filters_and_pages_without_duplicates_or_gaps() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let mut originals = Vec::new();
    for i in 0..7 {
        let workflow = if i % 2 == 0 { "icon_512" } else { "sprite_transparent_bg" };
        originals.push(gw.submit_ok(json!({"workflowId": workflow, "inputs": {"prompt": format!("job {i}")}})).await);
    }
    for id in &originals {
        gw.wait_terminal(id, WAIT).await;
    }

    // Pages of 3 while new jobs arrive between pages: exactly the originals, newest first.
    let mut listed: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{}/jobs?limit=3&cursor={c}", gw.url()),
            None => format!("{}/jobs?limit=3", gw.url()),
        };
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        listed.extend(page["jobs"].as_array().unwrap().iter().cloned());
        pages += 1;
        gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "newcomer"}})).await;
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let got: Vec<&str> = listed.iter().map(|j| j["jobId"].as_str().unwrap()).collect();
    let want: Vec<&str> = originals.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want, "every job once, newest first");

    let list = |query: String| {
        let url = format!("{}/jobs?{query}", gw.url());
        async move {
            let (status, v) = get_json(&url).await;
            assert_eq!(status, 200, "{url}: {v}");
            v["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    let sprites: HashSet<String> = list("workflowId=sprite_transparent_bg".into()).await.into_iter().collect();
    let want: HashSet<String> = originals.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(sprites, want);
    let succeeded = list("status=succeeded&limit=500".to_string()).await;
    assert!(originals.iter().all(|id| succeeded.contains(id)));
    assert!(list("status=failed,canceled".into()).await.is_empty());

    // Time bounds, as RFC 3339 and as milliseconds.
    let third = gw.job(&originals[2]).await;
    let created = third["createdAt"].as_str().unwrap().to_string();
    let all: Vec<Value> = {
        let (_, v) = get_json(&format!("{}/jobs?limit=500", gw.url())).await;
        v["jobs"].as_array().unwrap().clone()
    };
    let after: HashSet<String> = list(format!("after={created}")).await.into_iter().collect();
    let want: HashSet<String> = all
        .iter()
        .filter(|j| j["createdAt"].as_str().unwrap() > created.as_str())
        .map(|j| j["jobId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, want);
    let ms = all.iter().find(|j| j["jobId"] == originals[2].as_str()).map(|j| j["createdAt"].clone()).unwrap();
    assert_eq!(ms.as_str(), Some(created.as_str()));
    let before: HashSet<String> = list(format!("before={created}&limit=500")).await.into_iter().collect();
    let want: HashSet<String> = all
        .iter()
        .filter(|j| j["createdAt"].as_str().unwrap() < created.as_str())
        .map(|j| j["jobId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(before, want);
    assert_eq!(list("before=1000".into()).await, Vec::<String>::new());
    assert_eq!(list("after=1000&limit=500".into()).await.len(), all.len());

    for (query, param) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=abc", "cursor"),
        ("after=yesterday", "after"),
        ("before=2026-13-01T00:00:00Z", "before"),
        ("color=red", "color"),
    ] {
        let (status, err) = get_json(&format!("{}/jobs?{query}", gw.url())).await;
        assert_eq!(status, 400, "{query}: {err}");
        assert_eq!(err["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(err["error"]["details"][0]["path"], param, "{query}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_logs_list_the_job_history_in_order() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 200).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let id = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "logged"}})).await;
    gw.wait_terminal(&id, WAIT).await;
    let (status, logs) = get_json(&format!("{}/jobs/{id}/logs", gw.url())).await;
    assert_eq!(status, 200, "{logs}");
    let events = logs["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"queued"), "{types:?}");
    assert_eq!(types.get(1), Some(&"dispatched"), "{types:?}");
    assert!(types.contains(&"progress"), "{types:?}");
    assert_eq!(types.last(), Some(&"succeeded"), "{types:?}");
    assert_eq!(events[1]["backend"], format!("127-0-0-1-{}", sim.port), "the backend's default id");
    assert_eq!(events[1]["attempt"], 1);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["at"].as_str().is_some_and(|a| a.ends_with('Z'))));
    let (status, err) = get_json(&format!("{}/jobs/{}/logs", gw.url(), uuid_nil())).await;
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("JOB_NOT_FOUND")));
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

/// A workflow that fails on the backend with its `prompt` input as a model name (a
/// rejection's node details may name the value).
fn echoing_workflow() -> Value {
    json!({
        "id": "echo",
        "workflow": {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{prompt}}"}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                "sampler_name": "euler", "scheduler": "normal", "positive": ["4", 0], "negative": ["4", 0],
                "latent_image": ["2", 0], "denoise": 1.0}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["1", 1]}},
            "5": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
            "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "e"}}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_privacy_mode_keeps_prompt_text_out_of_logs_and_streams() {
    const SECRET: &str = "xyzzy-secret-lighthouse";
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("PRIVACY_MODE", "true")]).await;
    let (status, v) = post_json(&format!("{}/workflows", gw.url()), &echoing_workflow()).await;
    assert_eq!(status, 201, "{v}");
    let mut jobs = Vec::new();
    for workflow in ["icon_512", "echo"] {
        let id = gw.submit_ok(json!({"workflowId": workflow, "inputs": {"prompt": SECRET}})).await;
        gw.wait_terminal(&id, WAIT).await;
        jobs.push(id);
    }
    for id in &jobs {
        let r = reqwest::get(format!("{}/jobs/{id}/logs", gw.url())).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap();
        assert!(!text.contains("xyzzy"), "{text}");
        let mut stream = SseStream::open(&events_url(&gw, id), None).await;
        let events = stream.rest().await;
        assert!(!events.is_empty());
        assert!(!stream.raw.contains("xyzzy"), "{}", stream.raw);
    }
    // The log still says what happened.
    let (_, logs) = get_json(&format!("{}/jobs/{}/logs", gw.url(), jobs[1])).await;
    let last = logs["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "failed", "{logs}");
}

/// Progress enters a job's durable log at most every 500 ms, the first entry 500 ms into
/// the run: a run that ends sooner logs none (its progress was live only, in `GET
/// /jobs/{id}` and the event stream), so a short job costs no progress commit; a longer
/// run logs some. Each run has a simulator and a gateway of its own (their node times
/// differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_logged_only_for_runs_longer_than_the_log_interval() {
    let root = support::tempdir();
    let mut logged = Vec::new();
    for (name, node_delay_ms) in [("fast", 0), ("slow", 300)] {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let sim = Sim::start(&dir, node_delay_ms).await;
        let gw = Gateway::start(&dir, &sim.url(), &[]).await;
        let id = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "a lighthouse"}})).await;
        let done = gw.wait_terminal(&id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        let (status, logs) = get_json(&format!("{}/jobs/{id}/logs", gw.url())).await;
        assert_eq!(status, 200, "{logs}");
        let types: Vec<String> =
            logs["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap_or("?").to_string()).collect();
        assert!(types.contains(&"succeeded".to_string()), "{types:?}");
        logged.push(types.iter().filter(|t| *t == "progress").count());
    }
    assert_eq!(logged[0], 0, "a run of a few milliseconds logs no progress");
    assert!(logged[1] > 0, "a run of over 500 ms logs its progress");
}

/// The workflow of the preview test: an image sent as a binary WebSocket frame (as
/// ComfyUI's latent previews are), then a node that takes the simulator's node delay, so
/// the job still runs after the preview, then the output.
fn preview_workflow() -> Value {
    json!({"id": "ws_preview", "workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "p"}}}})
}

/// With `LIVE_PREVIEWS`, ComfyUI's preview frames of a running job reach its event stream
/// as `preview` events (a PNG as a data URL, no id: live only); without it they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_previews_reach_the_event_stream_only_when_asked() {
    use base64::Engine as _;
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 300).await;
    for live in [true, false] {
        let sub = dir.path().join(format!("gw-{live}"));
        std::fs::create_dir_all(&sub).unwrap();
        let gw = Gateway::start(&sub, &sim.url(), &[("LIVE_PREVIEWS", if live { "true" } else { "false" })]).await;
        let (status, v) = post_json(&format!("{}/workflows", gw.url()), &preview_workflow()).await;
        assert_eq!(status, 201, "{v}");
        let id = gw.submit_ok(json!({"workflowId": "ws_preview", "inputs": {}})).await;
        let mut stream = SseStream::open(&events_url(&gw, &id), None).await;
        let events = stream.rest().await;
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("succeeded"), "{events:?}");
        let previews: Vec<&Sse> = events.iter().filter(|e| e.event == "preview").collect();
        if !live {
            assert!(previews.is_empty(), "no previews unless LIVE_PREVIEWS: {previews:?}");
            continue;
        }
        let preview = previews.first().unwrap_or_else(|| panic!("a preview event: {events:?}"));
        assert_eq!(preview.raw_id, None, "a preview is not in the log");
        assert_eq!(preview.data["mediaType"], "image/png", "{:?}", preview.data);
        let url = preview.data["dataUrl"].as_str().unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(url.strip_prefix("data:image/png;base64,").expect("a PNG data URL"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} bytes", png.len());
        // The log holds no preview: a resumed stream does not replay it.
        let logged = get_json(&format!("{}/jobs/{id}/logs", gw.url())).await.1;
        assert!(!logged.to_string().contains("dataUrl"), "{logged}");
    }
}
