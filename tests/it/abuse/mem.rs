//! Memory per request is bounded by configuration, not by input (issue 16, row 3): a body
//! of a million unknown input keys is refused quickly with a small error body while a
//! neighbour is served; two such bodies at once do not stall `/health`; a 15 MB `metadata`
//! is refused; many bad fields give 50 details and a count of the rest.
//!
//! The gateway runs with its defaults (`MAX_INPUT_KEYS` 1024, `MAX_METADATA_BYTES` 16 KiB,
//! `MAX_BODY_BYTES` 16 MiB) in front of the simulator.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Neighbour, SERVED_WITHIN};
use crate::support::{self, Gateway, Sim};

/// The largest error body a refused request may get.
const ERROR_BODY_MAX: usize = 64 * 1024;

/// A `POST /jobs` body for the bundled `icon_512` workflow with `n` unknown input keys
/// besides its one required input (12 bytes a key at a million: the issue's 12 MB).
fn many_keys_body(n: usize) -> Vec<u8> {
    let mut body = String::with_capacity(n * 14 + 64);
    body.push_str(r#"{"workflowId":"icon_512","inputs":{"prompt":"a cat""#);
    for i in 0..n {
        body.push_str(&format!(r#","k{i:07}":1"#));
    }
    body.push_str("}}");
    body.into_bytes()
}

/// `POST /jobs` with a raw JSON body: status, body length, JSON body, time taken.
async fn post_body(base: &str, body: Vec<u8>) -> (u16, usize, Value, Duration) {
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{base}/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("POST /jobs answered");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let took = started.elapsed();
    (status, bytes.len(), serde_json::from_slice(&bytes).unwrap_or(Value::Null), took)
}

/// `(VmRSS, VmHWM)` of a process in MiB, from `/proc/PID/status`.
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A gateway with its defaults (plus `extra`) in front of a simulator (`/health` is 200
/// only with a reachable backend).
async fn gateway(dir: &std::path::Path, extra: &[(&str, &str)]) -> (Sim, Gateway) {
    let sim = Sim::start(dir, 0).await;
    let gw = Gateway::start(dir, &sim.url(), extra).await;
    (sim, gw)
}

/// The refusal of an over-wide `inputs`: 400 naming `/inputs` and `MAX_INPUT_KEYS`, small.
fn assert_key_cap_refusal(status: u16, len: usize, v: &Value) {
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "VALIDATION_ERROR", "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "/inputs", "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("MAX_INPUT_KEYS"), "{v}");
    assert!(len < ERROR_BODY_MAX, "the error body is {len} bytes");
}

/// The issue's attack at full size, not scaled down: 1,000,000 unknown keys (12 MB). The
/// gateway refuses it from a byte scan before parsing, well under a second in a debug
/// build. Before the caps: 42-77 s of CPU, a 72 MB error body and 2.3 GB peak RSS in a
/// release build. The RSS figures printed are the gateway's (`/proc/PID/status`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_input_keys_get_a_small_400_while_the_neighbour_is_served() {
    let dir = support::tempdir();
    let (_sim, gw) = gateway(dir.path(), &[]).await;
    let neighbour = Neighbour::new(&gw.url(), None);
    let (status, _) = neighbour.get("/health").await;
    assert_eq!(status, 200);
    let before = rss_mib(gw.proc_.pid());

    let body = many_keys_body(1_000_000);
    assert!(body.len() > 12_000_000, "{}", body.len());
    let base = gw.url();
    let attack = post_body(&base, body);
    let paths = ["/health", "/workflows"];
    let probe = neighbour.probe_for(&paths, Duration::from_secs(2));
    let ((status, len, v, took), served) = tokio::join!(attack, probe);
    assert_key_cap_refusal(status, len, &v);
    let peak = rss_mib(gw.proc_.pid());
    // A measurement, not synchronisation: the memory given back 2 s later is printed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(gw.proc_.pid());
    println!(
        "1,000,000 keys: 400 in {took:?}, {len} bytes; neighbour {} answers, worst {:?}; \
         RSS MiB before {} / right after {} / 2 s later {} (peak {})",
        served.answered, served.worst, before.0, peak.0, after.0, after.1
    );
    assert!(served.worst < SERVED_WITHIN);

    // The same refusal for keys hidden in nested objects and in `params`.
    let nested = json!({"workflowId": "icon_512", "inputs": {"prompt": "x", "deep": {"a": [{}]}},
        "params": (0..1100).map(|i| (format!("p{i}"), json!(i))).collect::<serde_json::Map<_, _>>()});
    let (status, len, v, _) = post_body(&gw.url(), nested.to_string().into_bytes()).await;
    assert_key_cap_refusal(status, len, &v);
}

/// Two concurrent wide bodies (the issue's 300k keys each, not scaled) beside a neighbour
/// probing `/health`: both refused, the neighbour within [`SERVED_WITHIN`] throughout
/// (before the caps, /health stalled 5.6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_wide_bodies_do_not_stall_health() {
    let dir = support::tempdir();
    let (_sim, gw) = gateway(dir.path(), &[]).await;
    let neighbour = Neighbour::new(&gw.url(), None);
    let base = gw.url();
    let attacks = async {
        let (a, b) = tokio::join!(post_body(&base, many_keys_body(300_000)), post_body(&base, many_keys_body(300_000)));
        [a, b]
    };
    let paths = ["/health"];
    let probe = neighbour.probe_for(&paths, Duration::from_secs(2));
    let (results, served) = tokio::join!(attacks, probe);
    for (status, len, v, took) in &results {
        assert_key_cap_refusal(*status, *len, v);
        println!("300,000 keys: 400 in {took:?}");
    }
    println!("neighbour: {} answers, worst {:?}", served.answered, served.worst);
}

/// A 15 MB `metadata` (under `MAX_BODY_BYTES`) is refused naming `/metadata`, as is one
/// just over `MAX_METADATA_BYTES`; one within it is accepted, and the neighbour is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_metadata_is_refused() {
    let dir = support::tempdir();
    let (_sim, gw) = gateway(dir.path(), &[("MAX_METADATA_BYTES", "16384")]).await;
    let neighbour = Neighbour::new(&gw.url(), None);
    let job = |metadata: Value| json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}, "metadata": metadata});

    let huge = job(json!({"blob": "m".repeat(15_000_000)})).to_string().into_bytes();
    assert!(huge.len() < 16 * 1024 * 1024, "under MAX_BODY_BYTES: {}", huge.len());
    let paths = ["/health"];
    let probe = neighbour.probe_for(&paths, Duration::from_secs(1));
    let base = gw.url();
    let ((status, len, v, _), _) = tokio::join!(post_body(&base, huge), probe);
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "/metadata", "{v}");
    assert!(len < ERROR_BODY_MAX, "{len}");

    // Many small keys count by their bytes too.
    let wide: serde_json::Map<String, Value> = (0..2000).map(|i| (format!("k{i}"), json!(i))).collect();
    let (status, _, v, _) = post_body(&gw.url(), job(Value::Object(wide)).to_string().into_bytes()).await;
    assert_eq!((status, &v["error"]["details"][0]["path"]), (400, &json!("/metadata")), "{v}");

    // Metadata within the cap is accepted, the neighbour's as anyone's.
    let (status, v) = neighbour.post("/jobs", &job(json!({"note": "m".repeat(16_000)}))).await;
    assert_eq!(status, 202, "metadata within the cap is accepted: {v}");
}

/// 300 unknown inputs (under `MAX_INPUT_KEYS`) are 300 problems: the error lists the first
/// 50 as details and counts the other 250 in `detailsOmitted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_bad_fields_give_fifty_details_and_a_count() {
    let dir = support::tempdir();
    let (_sim, gw) = gateway(dir.path(), &[]).await;
    let (status, len, v, _) = post_body(&gw.url(), many_keys_body(300)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
    let details = v["error"]["details"].as_array().expect("details is still a list");
    assert_eq!(details.len(), 50, "{v}");
    assert!(details.iter().all(|d| d["path"].as_str().is_some_and(|p| p.starts_with("/inputs/k"))), "{v}");
    assert_eq!(v["error"]["detailsOmitted"], 250, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("and 299 more"), "{v}");
    assert!(len < ERROR_BODY_MAX, "{len}");

    // A few problems: all listed, nothing omitted.
    let (status, _, v, _) = post_body(&gw.url(), many_keys_body(3)).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["details"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(v["error"].get("detailsOmitted").is_none(), "{v}");
}

/// A job's log is listed from `?after=SEQ` (how a log cut at `MAX_RESPONSE_BYTES` is
/// continued); a log that fits says no `nextAfter`; a bad `after` is a 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_logs_continue_after_a_seq() {
    let dir = support::tempdir();
    let (_sim, gw) = gateway(dir.path(), &[("MAX_RESPONSE_BYTES", "65536")]).await;
    let id = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}})).await;
    gw.wait_terminal(&id, Duration::from_secs(30)).await;
    let logs = format!("{}/jobs/{id}/logs", gw.url());
    let (status, all) = support::get_json(&logs).await;
    assert_eq!(status, 200, "{all}");
    let seqs: Vec<u64> = all["events"].as_array().unwrap().iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.len() >= 3, "{all}");
    assert!(all.get("nextAfter").is_none(), "{all}");
    let (status, rest) = support::get_json(&format!("{logs}?after={}", seqs[0])).await;
    assert_eq!(status, 200, "{rest}");
    let rest: Vec<u64> = rest["events"].as_array().unwrap().iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(rest, seqs[1..]);
    let (status, v) = support::get_json(&format!("{logs}?after=first")).await;
    assert_eq!((status, &v["error"]["details"][0]["path"]), (400, &json!("after")), "{v}");
}
