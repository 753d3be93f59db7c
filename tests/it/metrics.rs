//! Observability through the real binary: `GET /metrics` after a succeeded and a failed
//! job passes `promtool check metrics` and counts the right things (jobs by state,
//! histograms per workflow, requests by route pattern), and JSON logs carry the
//! client's correlation id and the job id.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim};

const WAIT: Duration = Duration::from_secs(60);

/// The samples of a text exposition: `name{labels}` (as printed) → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &HashMap<String, f64>, series: &str) -> f64 {
    *all.get(series).unwrap_or_else(|| panic!("no sample {series}; have {:#?}", all.keys().collect::<Vec<_>>()))
}

/// `promtool check metrics` on `text`: its output, or `None` when the tool gate
/// ([`support::require_tool`]) skips it.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let promtool = support::require_tool("promtool")?;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), said))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_succeeded_and_a_failed_job_pass_promtool_and_count_right() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("LOG_FORMAT", "json")]).await;
    let submit = |seed: i64| {
        let gw = &gw;
        async move { gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "p", "seed": seed}})).await }
    };

    let ok = submit(1).await;
    assert_eq!(gw.wait_terminal(&ok, WAIT).await["status"], "succeeded");
    sim.faults(json!({"nodeError": 1})).await;
    let bad = submit(2).await;
    assert_eq!(gw.wait_terminal(&bad, WAIT).await["status"], "failed");
    let (status, _) = support::get_json(&format!("{}/no/such/path", gw.url())).await;
    assert_eq!(status, 404);

    let r = reqwest::get(format!("{}/metrics", gw.url())).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = r.text().await.unwrap();

    if let Some((passed, said)) = promtool_check(&text) {
        assert!(passed && said.trim().is_empty(), "promtool check metrics:\n{said}\n---\n{text}");
    }

    let all = samples(&text);
    for (state, n) in [("queued", 0.0), ("running", 0.0), ("succeeded", 1.0), ("failed", 1.0), ("canceled", 0.0)] {
        assert_eq!(sample(&all, &format!("comfyui_gateway_jobs{{state=\"{state}\"}}")), n, "{state}\n{text}");
    }
    for priority in ["high", "normal", "low", "other"] {
        assert_eq!(sample(&all, &format!("comfyui_gateway_queue_depth{{priority=\"{priority}\"}}")), 0.0);
    }
    assert_eq!(sample(&all, "comfyui_gateway_job_wait_seconds_count{workflow=\"icon_512\"}"), 2.0);
    assert_eq!(sample(&all, "comfyui_gateway_job_run_seconds_count{workflow=\"icon_512\"}"), 2.0);
    assert_eq!(
        sample(&all, "comfyui_gateway_job_run_seconds_bucket{workflow=\"icon_512\",le=\"+Inf\"}"),
        2.0,
        "buckets are cumulative"
    );
    let finished = |outcome: &str| {
        sample(&all, &format!("comfyui_gateway_jobs_finished_total{{outcome=\"{outcome}\",workflow=\"icon_512\"}}"))
    };
    assert_eq!((finished("succeeded"), finished("failed")), (1.0, 1.0));
    assert_eq!(sample(&all, "comfyui_gateway_job_attempts_total"), 2.0);
    assert_eq!(sample(&all, "comfyui_gateway_job_resubmissions_total"), 0.0);
    // Backends by id (by default `<host>-<port>`, dots as dashes), never by URL.
    let backend = format!("127-0-0-1-{}", sim.url().rsplit(':').next().unwrap());
    assert_eq!(sample(&all, &format!("comfyui_gateway_backend_up{{backend=\"{backend}\"}}")), 1.0);
    assert_eq!(sample(&all, &format!("comfyui_gateway_backend_in_flight{{backend=\"{backend}\"}}")), 0.0);
    assert!(!text.contains(&format!("backend=\"{}\"", sim.url())), "no URL as a label:\n{text}");

    assert_eq!(sample(&all, "comfyui_gateway_http_requests_total{route=\"/jobs\",status=\"202\"}"), 2.0);
    assert!(sample(&all, "comfyui_gateway_http_requests_total{route=\"/jobs/{id}\",status=\"200\"}") >= 2.0);
    assert_eq!(sample(&all, "comfyui_gateway_http_requests_total{route=\"unmatched\",status=\"404\"}"), 1.0);
    assert!(sample(&all, "comfyui_gateway_http_request_duration_seconds_count{route=\"/jobs/{id}\"}") >= 2.0);
    for id in [&ok, &bad] {
        assert!(!text.contains(id.as_str()), "no raw path (job id {id}) in a label:\n{text}");
    }
    assert!(!text.contains("/no/such/path"));
}

/// The JSON log lines of the gateway.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_json_logs_carry_the_correlation_id_and_the_job_id() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("LOG_FORMAT", "json")]).await;
    let correlation_id = "metrics-test_corr-0001";
    let r = reqwest::Client::new()
        .post(format!("{}/jobs", gw.url()))
        .header("x-correlation-id", correlation_id)
        .json(&json!({"workflowId": "icon_512", "inputs": {"prompt": "p", "seed": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.headers()["x-correlation-id"], correlation_id, "a well-formed client id is kept");
    let job = r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string();
    assert_eq!(gw.wait_terminal(&job, WAIT).await["status"], "succeeded");

    // An ill-formed one (too short, bad characters) is replaced by a fresh id.
    for bad in ["short", "has space in it", "semi;colon;value"] {
        let r = reqwest::Client::new()
            .get(format!("{}/health", gw.url()))
            .header("x-correlation-id", bad)
            .send()
            .await
            .unwrap();
        let echoed = r.headers()["x-correlation-id"].to_str().unwrap().to_string();
        assert_ne!(echoed, bad);
        assert_eq!(echoed.len(), 32, "a generated id: {echoed}");
    }

    let log = gw.proc_.log();
    let lines = json_lines(&log);
    assert!(!lines.is_empty(), "JSON logs:\n{log}");
    let access = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request" && l["fields"]["correlation_id"] == correlation_id)
        .unwrap_or_else(|| panic!("an access line with the correlation id:\n{log}"));
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["fields"]["method"], "POST");
    assert_eq!(access["fields"]["route"], "/jobs");
    assert_eq!(access["fields"]["status"], 202);
    assert!(access["fields"]["duration_ms"].is_number(), "{access}");
    assert_eq!(access["span"]["correlation_id"], correlation_id, "the request span carries it too: {access}");
    // Every access line names a route pattern, never a raw path with ids.
    for l in lines.iter().filter(|l| l["fields"]["message"] == "request") {
        let route = l["fields"]["route"].as_str().unwrap_or("");
        assert!(!route.contains(&job), "raw path in the access log: {l}");
    }
    let queued = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job queued" && l["fields"]["job"] == job.as_str())
        .unwrap_or_else(|| panic!("a `job queued` line:\n{log}"));
    assert_eq!(queued["span"]["correlation_id"], correlation_id, "it joins the request to the job: {queued}");
    let job_line = lines
        .iter()
        .find(|l| l["span"]["job"] == job.as_str() && l["fields"]["state"] == "succeeded")
        .unwrap_or_else(|| panic!("a job state line inside the job's span:\n{log}"));
    assert_eq!(job_line["span"]["name"], "job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_queue_depth_by_priority_while_the_backend_is_down() {
    let dir = support::tempdir();
    let dead_port = support::DeadPort::new();
    let dead = dead_port.url();
    let gw = Gateway::start(dir.path(), &dead, &[]).await;
    let mut ids = Vec::new();
    for priority in [json!("high"), json!("normal"), json!("low"), json!(7), json!("normal")] {
        let body = json!({"workflowId": "icon_512", "priority": priority, "inputs": {"prompt": "p"}});
        ids.push(gw.submit_ok(body).await);
    }
    let (status, _) = support::post_json(&format!("{}/jobs/{}/cancel", gw.url(), ids[4]), &json!({})).await;
    assert_eq!(status, 200);

    let text = reqwest::get(format!("{}/metrics", gw.url())).await.unwrap().text().await.unwrap();
    if let Some((passed, said)) = promtool_check(&text) {
        assert!(passed && said.trim().is_empty(), "promtool check metrics:\n{said}\n---\n{text}");
    }
    let all = samples(&text);
    for (priority, n) in [("high", 1.0), ("normal", 1.0), ("low", 1.0), ("other", 1.0)] {
        let series = format!("comfyui_gateway_queue_depth{{priority=\"{priority}\"}}");
        assert_eq!(sample(&all, &series), n, "{priority}\n{text}");
    }
    assert_eq!(sample(&all, "comfyui_gateway_jobs{state=\"queued\"}"), 4.0);
    assert_eq!(sample(&all, "comfyui_gateway_jobs{state=\"canceled\"}"), 1.0);
    assert_eq!(sample(&all, &format!("comfyui_gateway_backend_up{{backend=\"127-0-0-1-{}\"}}", dead_port.port)), 0.0);
    assert_eq!(sample(&all, "comfyui_gateway_jobs_finished_total{outcome=\"canceled\",workflow=\"icon_512\"}"), 1.0);
    assert_eq!(
        sample(&all, "comfyui_gateway_job_run_seconds_count{workflow=\"icon_512\"}"),
        0.0,
        "a job that never ran has no run time"
    );
    assert_eq!(sample(&all, "comfyui_gateway_job_attempts_total"), 0.0);
    assert_eq!(sample(&all, "comfyui_gateway_http_requests_total{route=\"/jobs/{id}/cancel\",status=\"200\"}"), 1.0);
}
