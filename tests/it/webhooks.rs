//! Webhooks end to end: the real gateway posts to a receiver in the test (hyper on
//! 127.0.0.1, allowed by `WEBHOOK_ALLOWED_DOMAINS=127.0.0.1`). Every delivery is verified
//! twice: by the Standard Webhooks algorithm in Rust and by the `standardwebhooks` package
//! from PyPI (`verify_webhooks.py`, which also checks `X-Signature`). Covered: terminal
//! webhooks of succeeded and failed jobs, `job.started`/`job.progress` when asked, retries
//! on a compressed schedule while the receiver is down, `Retry-After`, 410 disabling the
//! endpoint until a redelivery, kill -9 between completion and delivery (same
//! `webhook-id` after the restart), and callbacks refused at submit.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use comfyui_gateway::webhooks::sign::{SignedHeaders, SigningKey, verify};
use comfyui_gateway::wire::parse_rfc3339;
use serde_json::{Value, json};

use crate::support::receiver::{Answer, Hit, Receiver};
use crate::support::{self, Gateway, Sim, eventually_within, get_json, post_json};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env(schedule: &str) -> Vec<(&str, &str)> {
    vec![("WEBHOOK_SECRET", SECRET), ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1"), ("WEBHOOK_RETRY_SCHEDULE", schedule)]
}

fn job_body(callback: &str) -> Value {
    json!({"workflowId": "icon_512", "inputs": {"prompt": "a red fox"}, "callbackUrl": callback})
}

/// Verify every hit with the Rust algorithm and with the PyPI `standardwebhooks` package.
fn verify_all(hits: &[Hit]) {
    assert!(!hits.is_empty(), "nothing to verify");
    let key = SigningKey::parse(SECRET).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for h in hits {
        let headers = SignedHeaders {
            id: h.header("webhook-id").expect("webhook-id"),
            timestamp: h.header("webhook-timestamp").expect("webhook-timestamp"),
            signature: h.header("webhook-signature").expect("webhook-signature"),
        };
        assert!(headers.id.starts_with("msg_") && headers.id.len() == 36, "{}", headers.id);
        verify(&key, headers, &h.body, now, 300).unwrap_or_else(|e| panic!("{}: {e}", headers.id));
        assert_eq!(h.header("content-type"), Some("application/json"));
        assert!(h.header("user-agent").is_some_and(|u| u.starts_with("comfyui-gateway/")));
    }
    let list: Vec<Value> = hits
        .iter()
        .map(|h| json!({"headers": h.headers, "body_b64": base64::engine::general_purpose::STANDARD.encode(&h.body)}))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/verify_webhooks.py");
    let Some(python) = support::require_python(&["standardwebhooks.webhooks"]) else { return };
    let mut child = Command::new(python)
        .args([script, SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&list).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "standardwebhooks refused a delivery: {text}");
    assert_eq!(text.trim(), format!("verified {}", hits.len()));
}

/// `GET /jobs/{id}/webhooks`.
async fn deliveries(gw: &Gateway, job: &str) -> Vec<Value> {
    let (status, v) = get_json(&format!("{}/jobs/{job}/webhooks", gw.url())).await;
    assert_eq!(status, 200, "{v}");
    v["deliveries"].as_array().unwrap().clone()
}

/// Wait until the job's delivery of `event` satisfies `ok`; returns it.
async fn wait_delivery(gw: &Gateway, job: &str, event: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let what = || format!("{job}: its {event} delivery\n{}", gw.proc_.log());
    eventually_within(WAIT, what, async || {
        let list = deliveries(gw, job).await;
        list.iter().find(|d| d["event"] == event && ok(d)).cloned().ok_or(list)
    })
    .await
}

/// The `webhook` entries of the job's log.
async fn logged_attempts(gw: &Gateway, job: &str) -> Vec<Value> {
    let (status, v) = get_json(&format!("{}/jobs/{job}/logs", gw.url())).await;
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().unwrap().iter().filter(|e| e["type"] == "webhook").cloned().collect()
}

fn ms(v: &Value) -> u64 {
    parse_rfc3339(v.as_str().unwrap_or_else(|| panic!("a date: {v}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_started_and_progress_webhooks_carry_the_job_and_verify() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let receiver = Receiver::start().await;
    let gw = Gateway::start(dir.path(), &sim.url(), &env("300ms")).await;

    let ok = gw.submit_ok(job_body(&receiver.url("/ok"))).await;
    let hits = receiver.wait_hits("/ok", 1, WAIT).await;
    let done = gw.wait_terminal(&ok, WAIT).await;
    let v = hits[0].json();
    assert_eq!(v["type"], "job.succeeded");
    assert!(parse_rfc3339(v["timestamp"].as_str().unwrap()).is_some(), "{v}");
    assert_eq!(v["data"]["jobId"], ok.as_str());
    assert_eq!(v["data"]["status"], "succeeded");
    assert_eq!(v["data"]["outputs"].as_array().unwrap().len(), done["outputs"].as_array().unwrap().len());
    // Output URLs are absolute (PUBLIC_URL defaults to http://HOST:PORT) and download.
    let url = v["data"]["outputs"][0]["url"].as_str().unwrap();
    assert_eq!(url, format!("{}{}", gw.url(), done["outputs"][0]["url"].as_str().unwrap()));
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(blake3::hash(&r.bytes().await.unwrap()).to_hex().as_str(), v["data"]["outputs"][0]["hash"]);
    let d = wait_delivery(&gw, &ok, "job.succeeded", |d| d["state"] == "delivered").await;
    assert_eq!((d["attempts"].as_u64(), d["lastStatus"].as_u64()), (Some(1), Some(200)));
    assert_eq!(d["id"], hits[0].header("webhook-id").unwrap());
    assert!(d["nextAttemptAt"].is_null() && d["lastError"].is_null(), "{d}");
    let logged = logged_attempts(&gw, &ok).await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!((logged[0]["outcome"].as_str(), logged[0]["httpStatus"].as_u64()), (Some("delivered"), Some(200)));
    assert_eq!(logged[0]["webhookId"], d["id"]);

    // A failed job reports job.failed with its error.
    sim.faults(json!({"oom": 1})).await;
    let failed = gw.submit_ok(job_body(&receiver.url("/failed"))).await;
    let hits_failed = receiver.wait_hits("/failed", 1, WAIT).await;
    let v = hits_failed[0].json();
    assert_eq!(v["type"], "job.failed");
    assert_eq!(v["data"]["jobId"], failed.as_str());
    assert_eq!(v["data"]["error"]["code"], "COMFYUI_OOM", "{v}");

    // Asked for: job.started and job.progress too (each its own message and webhook-id).
    let mut body = job_body(&receiver.url("/all"));
    body["callbackEvents"] = json!(["job.started", "job.progress"]);
    let all = gw.submit_ok(body).await;
    gw.wait_terminal(&all, WAIT).await;
    let hits_all = eventually_within(WAIT, "job.started and job.succeeded arrive", async || {
        let hits = receiver.hits("/all");
        let types: Vec<Value> = hits.iter().map(|h| h.json()["type"].clone()).collect();
        if types.contains(&json!("job.succeeded")) && types.contains(&json!("job.started")) {
            Ok(hits)
        } else {
            Err(types)
        }
    })
    .await;
    let progress: Vec<Value> = hits_all.iter().map(Hit::json).filter(|v| v["type"] == "job.progress").collect();
    assert!(!progress.is_empty(), "progress milestones were sent");
    for p in &progress {
        let percent = p["data"]["progress"]["percent"].as_u64().unwrap();
        assert!([25, 50, 75, 100].contains(&percent), "{p}");
        assert!(p["data"]["progress"]["node"].is_string(), "{p}");
    }
    let ids: std::collections::HashSet<&str> = hits_all.iter().map(|h| h.header("webhook-id").unwrap()).collect();
    assert_eq!(ids.len(), hits_all.len(), "one webhook-id per message");
    assert_eq!(deliveries(&gw, &all).await.len(), hits_all.len());
    // Jobs that asked for nothing got only their terminal webhook.
    assert_eq!(receiver.hits("/ok").len(), 1);

    let mut every = hits;
    every.extend(hits_failed);
    every.extend(hits_all);
    verify_all(&every);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_retries_follow_the_schedule_then_deliver_or_give_up() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let mut receiver = Receiver::down();
    let never = Receiver::down();
    let gw = Gateway::start(dir.path(), &sim.url(), &env("300ms,600ms,1200ms")).await;
    let job = gw.submit_ok(job_body(&receiver.url("/late"))).await;
    let lost = gw.submit_ok(job_body(&never.url("/never"))).await;

    // Three refused attempts, then the receiver comes up before the fourth.
    eventually_within(WAIT, "three attempts are logged", async || {
        let logged = logged_attempts(&gw, &job).await;
        if logged.len() >= 3 { Ok(()) } else { Err(logged) }
    })
    .await;
    receiver.start_on().await;
    let hits = receiver.wait_hits("/late", 1, WAIT).await;
    let d = wait_delivery(&gw, &job, "job.succeeded", |d| d["state"] == "delivered").await;
    assert_eq!(d["attempts"], 4, "{d}");
    assert_eq!(d["id"], hits[0].header("webhook-id").unwrap());
    verify_all(&hits);

    // The log shows each attempt; the gaps follow the schedule within its ±10 % jitter.
    let logged = logged_attempts(&gw, &job).await;
    assert_eq!(logged.len(), 4, "{logged:?}");
    let outcomes: Vec<&str> = logged.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retrying", "retrying", "retrying", "delivered"]);
    for (i, wait_ms) in [300u64, 600, 1200].into_iter().enumerate() {
        let (this, next) = (&logged[i], &logged[i + 1]);
        assert_eq!(this["attempt"], i as u64 + 1);
        assert!(this["httpStatus"].is_null() && this["error"].as_str().unwrap().contains("request failed"), "{this}");
        // The log's `at` is when the attempt was committed, a little after it was made.
        let due = ms(&this["nextAttemptAt"]);
        let planned = due as i64 - ms(&this["at"]) as i64;
        let (lo, hi) = (wait_ms as i64 * 9 / 10 - 100, wait_ms as i64 * 11 / 10 + 1);
        assert!((lo..=hi).contains(&planned), "attempt {}: waits {planned} ms, not {wait_ms} ms ± 10 %", i + 1);
        let late = ms(&next["at"]) as i64 - due as i64;
        assert!((0..300).contains(&late), "attempt {} started {late} ms after it was due", i + 2);
    }

    // Nobody ever listens: four attempts (the first and three retries), then given up.
    let d = wait_delivery(&gw, &lost, "job.succeeded", |d| d["state"] == "failed").await;
    assert_eq!(d["attempts"], 4, "{d}");
    assert!(d["nextAttemptAt"].is_null() && d["lastError"].as_str().unwrap().contains("request failed"), "{d}");
    let logged = logged_attempts(&gw, &lost).await;
    assert_eq!(logged.last().unwrap()["outcome"], "failed");
    assert_eq!(logged.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_every_attempt_sends_the_same_body_and_id() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let receiver = Receiver::start().await;
    receiver.script("/busy", vec![Answer::retry_after(503, 2), Answer::status(500)]);
    let gw = Gateway::start(dir.path(), &sim.url(), &env("300ms,300ms,300ms")).await;
    let job = gw.submit_ok(job_body(&receiver.url("/busy"))).await;
    let hits = receiver.wait_hits("/busy", 3, WAIT).await;
    let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [503, 500, 200]);
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_millis(1950), "Retry-After: 2 was honoured: {gap:?}");
    let gap = hits[2].at - hits[1].at;
    assert!(gap < Duration::from_millis(1500), "no Retry-After: the schedule's 300 ms: {gap:?}");
    for h in &hits[1..] {
        assert_eq!(h.body, hits[0].body, "byte-identical body on every attempt");
        assert_eq!(h.header("webhook-id"), hits[0].header("webhook-id"));
    }
    verify_all(&hits);
    let d = wait_delivery(&gw, &job, "job.succeeded", |d| d["state"] == "delivered").await;
    assert_eq!(d["attempts"], 3);
    let logged = logged_attempts(&gw, &job).await;
    let statuses: Vec<Option<u64>> = logged.iter().map(|e| e["httpStatus"].as_u64()).collect();
    assert_eq!(statuses, [Some(503), Some(500), Some(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_until_a_redelivery() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let receiver = Receiver::start().await;
    receiver.script("/gone", vec![Answer::status(410)]);
    let gw = Gateway::start(dir.path(), &sim.url(), &env("300ms,300ms")).await;

    let first = gw.submit_ok(job_body(&receiver.url("/gone"))).await;
    receiver.wait_hits("/gone", 1, WAIT).await;
    let d = wait_delivery(&gw, &first, "job.succeeded", |d| d["state"] == "disabled").await;
    assert_eq!((d["attempts"].as_u64(), d["lastStatus"].as_u64()), (Some(1), Some(410)));
    assert_eq!(logged_attempts(&gw, &first).await.last().unwrap()["outcome"], "disabled");

    // A later job to the same endpoint is not sent at all.
    let second = gw.submit_ok(job_body(&receiver.url("/gone"))).await;
    let d = wait_delivery(&gw, &second, "job.succeeded", |d| d["state"] == "disabled").await;
    assert!(d["lastStatus"].is_null() && d["lastError"].as_str().unwrap().contains("410"), "{d}");
    // An absence is checked over a window longer than the retry schedule (300 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.hits("/gone").len(), 1, "no request after the 410");

    // A redelivery enables the endpoint again and sends with the same webhook-id.
    let url = format!("{}/jobs/{second}/webhook/redeliver", gw.url());
    let (status, v) = post_json(&url, &json!({})).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["deliveries"][0]["state"], "pending");
    assert_eq!(v["deliveries"][0]["id"], d["id"]);
    let hits = receiver.wait_hits("/gone", 2, WAIT).await;
    assert_eq!(hits[1].header("webhook-id"), d["id"].as_str());
    assert_eq!(hits[1].json()["data"]["jobId"], second.as_str());
    let after = wait_delivery(&gw, &second, "job.succeeded", |d| d["state"] == "delivered").await;
    assert_eq!(after["attempts"], 2);
    verify_all(&hits);
    // The redelivery is in the audit log.
    let audit = get_json(&format!("{}/audit?limit=1", gw.url())).await.1;
    assert_eq!(audit["entries"][0]["action"], "job.webhook.redeliver", "{audit}");
    assert_eq!(audit["entries"][0]["target"], second.as_str());
    // The first job's delivery stays as it was until it is redelivered itself.
    assert_eq!(deliveries(&gw, &first).await[0]["state"], "disabled");

    // No deliveries: 409; unknown job: 404.
    let plain = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}})).await;
    gw.wait_terminal(&plain, WAIT).await;
    let (status, v) = post_json(&format!("{}/jobs/{plain}/webhook/redeliver", gw.url()), &json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("CONFLICT")), "{v}");
    let missing = uuid::Uuid::new_v4();
    let (status, v) = post_json(&format!("{}/jobs/{missing}/webhook/redeliver", gw.url()), &json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("JOB_NOT_FOUND")), "{v}");
    let (status, _) = get_json(&format!("{}/jobs/{missing}/webhooks", gw.url())).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_completion_and_delivery_delivers_after_restart_with_the_same_id() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let mut receiver = Receiver::down();
    let mut gw = Gateway::start(dir.path(), &sim.url(), &env("500ms,500ms,500ms,500ms,500ms,500ms")).await;
    let job = gw.submit_ok(job_body(&receiver.url("/crash"))).await;
    gw.wait_terminal(&job, WAIT).await;
    // Completed, not delivered (the receiver is down): the outbox holds it.
    let before = wait_delivery(&gw, &job, "job.succeeded", |d| d["attempts"].as_u64() >= Some(1)).await;
    assert_eq!(before["state"], "pending", "{before}");
    gw.kill9();
    receiver.start_on().await;
    gw.restart().await;
    let hits = receiver.wait_hits("/crash", 1, WAIT).await;
    assert_eq!(hits[0].header("webhook-id"), before["id"].as_str(), "the same webhook-id after the restart");
    assert_eq!(hits[0].json()["data"]["jobId"], job.as_str());
    let after = wait_delivery(&gw, &job, "job.succeeded", |d| d["state"] == "delivered").await;
    assert!(after["attempts"].as_u64() > before["attempts"].as_u64());
    verify_all(&hits);
    // An absence is checked over a window longer than the retry schedule (500 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.hits("/crash").len(), 1, "delivered once");
}

/// Without WEBHOOK_SECRET deliveries go unsigned (and a warning says so at start); in
/// privacy mode the receiver still gets the inputs (opened from the sealed snapshot);
/// output URLs are under PUBLIC_URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_privacy_mode_and_public_url() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let receiver = Receiver::start().await;
    let env = [
        ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1"),
        ("PRIVACY_MODE", "true"),
        ("PUBLIC_URL", "https://gw.example.com/base/"),
    ];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let prompt = "a lighthouse, quietly-unique-7731";
    let job = gw
        .submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": prompt}, "callbackUrl": receiver.url("/p")}))
        .await;
    let hits = receiver.wait_hits("/p", 1, WAIT).await;
    let h = &hits[0];
    assert!(h.header("webhook-signature").is_none() && h.header("x-signature").is_none(), "{:?}", h.headers);
    assert!(h.header("webhook-id").unwrap().starts_with("msg_") && h.header("webhook-timestamp").is_some());
    let v = h.json();
    assert_eq!(v["data"]["inputs"]["prompt"], prompt, "revealed for the receiver: {v}");
    let url = v["data"]["outputs"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("https://gw.example.com/base/outputs/{job}/")), "{url}");
    assert!(gw.proc_.log().contains("WEBHOOK_SECRET is not set"), "{}", gw.proc_.log());
}

/// Killed while the first attempt waits for a slow receiver (nothing recorded yet): sent
/// again after the restart with the same webhook-id and the same body (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_the_first_attempt_sends_it_again_after_restart() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let receiver = Receiver::start().await;
    receiver.script("/slow", vec![Answer::slow(Duration::from_secs(30))]);
    let mut gw = Gateway::start(dir.path(), &sim.url(), &env("500ms")).await;
    let job = gw.submit_ok(job_body(&receiver.url("/slow"))).await;
    let first = receiver.wait_hits("/slow", 1, WAIT).await;
    let before = deliveries(&gw, &job).await;
    assert_eq!((before[0]["state"].as_str(), before[0]["attempts"].as_u64()), (Some("pending"), Some(0)));
    gw.kill9();
    gw.restart().await;
    let hits = receiver.wait_hits("/slow", 2, WAIT).await;
    assert_eq!(hits[1].header("webhook-id"), first[0].header("webhook-id"));
    assert_eq!(hits[1].header("webhook-id"), before[0]["id"].as_str());
    assert_eq!(hits[1].body, first[0].body, "the body is rebuilt byte for byte from the outbox");
    let after = wait_delivery(&gw, &job, "job.succeeded", |d| d["state"] == "delivered").await;
    assert_eq!(after["attempts"], 1, "the unrecorded attempt is not counted");
    verify_all(&hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_callbacks_are_refused_at_submit() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let listed = Gateway::start(dir.path(), &sim.url(), &[("WEBHOOK_ALLOWED_DOMAINS", "hooks.example.com")]).await;
    let dir2 = support::tempdir();
    let open = Gateway::start(dir2.path(), &sim.url(), &[]).await;
    for (gw, url, why) in [
        (&listed, "http://evil.example.net/hook", "not in WEBHOOK_ALLOWED_DOMAINS"),
        (&listed, "http://127.0.0.1:9/hook", "not in WEBHOOK_ALLOWED_DOMAINS"),
        (&open, "http://127.0.0.1:9/hook", "loopback"),
        (&open, "http://[::1]:9/hook", "loopback"),
        (&open, "http://169.254.169.254/latest/meta-data", "cloud metadata"),
        (&open, "http://10.0.0.7/hook", "private"),
    ] {
        let (status, v) = gw.submit(job_body(url)).await;
        assert_eq!(status, 400, "{url}: {v}");
        assert_eq!(v["error"]["code"], "CALLBACK_NOT_ALLOWED", "{url}: {v}");
        assert_eq!(v["error"]["details"]["path"], "/callbackUrl", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{url}: {v}");
    }
    let (status, v) = listed.submit(job_body("http://hooks.example.com.evil.net/x")).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("CALLBACK_NOT_ALLOWED")), "{v}");
}
