//! The client examples of `examples/` run against a live gateway with API keys, so they
//! cannot rot: `curl.sh` (every endpoint, checked by its side effects), the Python client
//! (submit, Server-Sent Events with a resume, downloads checked byte for byte and by
//! BLAKE3) and its webhook receiver (a real delivery accepted, a tampered body and an old
//! timestamp refused), the Node client (when `node` and `examples/js/node_modules` are
//! present; required in CI), and the n8n workflow (structure checked, its HTTP Request
//! node replayed with its expressions substituted, its webhook path receiving the callback).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use comfyui_gateway::webhooks::sign::{SigningKey, standard_signature};
use serde_json::{Value, json};

use crate::support::receiver::Receiver;
use crate::support::{self, Gateway, Proc, Sim, eventually_within};

const WAIT: Duration = Duration::from_secs(60);
const ADMIN_KEY: &str = "examples-admin-key-0123";
const USER_KEY: &str = "examples-user-key-4567";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The repository's `examples/` directory.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A simulator and a gateway with an admin and a user key, signed webhooks allowed to
/// 127.0.0.1 and `localhost`.
async fn start(dir: &Path) -> (Sim, Gateway) {
    let sim = Sim::start(dir, 20).await;
    let keys = format!("{ADMIN_KEY}:admin,{USER_KEY}:user");
    let env = [
        ("API_KEYS", keys.as_str()),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1,localhost"),
        ("WEBHOOK_RETRY_SCHEDULE", "300ms"),
    ];
    let gw = Gateway::start(dir, &sim.url(), &env).await;
    // Ready: the backend has been probed (until then /health answers 503).
    let what = || format!("the gateway becomes healthy:\n{}", gw.proc_.log());
    eventually_within(WAIT, what, async || {
        let status = reqwest::get(format!("{}/health", gw.url())).await.unwrap().status();
        if status == 200 { Ok(()) } else { Err(status) }
    })
    .await;
    (sim, gw)
}

/// GET with an API key: status and body bytes.
async fn get_bytes(url: &str, key: &str) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new().get(url).header("x-api-key", key).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// GET JSON with an API key.
async fn get_json(url: &str, key: &str) -> (u16, Value) {
    let (status, body) = get_bytes(url, key).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A command for an example in a fresh working directory under `dir`, with a cleared
/// environment ([`support::command`]): only what the test sets reaches it.
fn example(program: &str, dir: &Path) -> Command {
    support::command(program, &support::work_dir(dir))
}

/// Run a command to its end off the async workers; its output.
async fn run(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap();
    out.unwrap_or_else(|e| panic!("run {shown}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every output of `job` is a file in `dir` with the bytes `GET /outputs/...` serves and
/// the BLAKE3 the listing gives; the number of files checked.
async fn assert_downloaded(gw: &Gateway, job: &str, dir: &Path) -> usize {
    let (status, listing) = get_json(&format!("{}/outputs/{job}", gw.url()), USER_KEY).await;
    assert_eq!(status, 200, "{listing}");
    let outputs = listing["outputs"].as_array().unwrap();
    assert!(!outputs.is_empty(), "{listing}");
    for o in outputs {
        let name = o["name"].as_str().unwrap();
        let saved = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name} in {}: {e}", dir.display()));
        let (status, served) = get_bytes(&format!("{}{}", gw.url(), o["url"].as_str().unwrap()), USER_KEY).await;
        assert_eq!(status, 200);
        assert!(saved == served, "{name}: the saved file differs from the served bytes");
        assert_eq!(blake3::hash(&saved).to_hex().as_str(), o["hash"], "{name}");
    }
    outputs.len()
}

/// The job id of the line `job <id> succeeded` the clients print last.
fn succeeded_job(out: &str) -> String {
    out.lines()
        .filter_map(|l| l.strip_prefix("job ").and_then(|r| r.strip_suffix(" succeeded")))
        .next_back()
        .unwrap_or_else(|| panic!("no `job ID succeeded` line:\n{out}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_tour_calls_every_endpoint_with_the_expected_status() {
    let dir = support::tempdir();
    let (_sim, gw) = start(dir.path()).await;
    let receiver = Receiver::start().await;
    let mut cmd = example("bash", dir.path());
    cmd.arg(examples_dir().join("curl.sh"))
        .env("GATEWAY_URL", gw.url())
        .env("GATEWAY_API_KEY", ADMIN_KEY)
        .env("CALLBACK_URL", receiver.url("/curl"));
    let out = run(cmd).await;
    let log = text(&out);
    assert!(out.status.success(), "curl.sh failed:\n{log}\n{}", gw.proc_.log());

    // Every operation of the route table (`routes::ROUTES`) was called (HEAD beside its
    // GET is enough once): an operation added there needs its step in curl.sh.
    let ops: Vec<(&str, &str)> = comfyui_gateway::api::routes::ROUTES
        .iter()
        .flat_map(|r| r.ops.iter().map(|o| (o.method.as_str(), r.pattern)))
        .collect();
    assert!(ops.len() >= 25, "the route table was not found: {ops:?}");
    let called: Vec<(&str, &str)> = log
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("==> ")?.split_whitespace();
            Some((words.next()?, words.next()?.split('?').next()?))
        })
        .collect();
    let matches = |pattern: &str, path: &str| {
        let (a, b): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
        a.len() == b.len() && a.iter().zip(&b).all(|(p, s)| p == s || p.starts_with('{') && !s.is_empty())
    };
    let heads = ops.iter().filter(|(m, _)| *m == "HEAD").count();
    let mut heads_called = 0;
    for (method, pattern) in &ops {
        let called = called.iter().any(|(m, path)| m == method && matches(pattern, path));
        if *method == "HEAD" {
            heads_called += usize::from(called);
            continue;
        }
        assert!(called, "curl.sh has no step for {method} {pattern}:\n{log}");
    }
    assert!(heads == 0 || heads_called > 0, "curl.sh calls no HEAD:\n{log}");
    for step in [
        "==> GET /health",
        "==> GET /capabilities",
        "==> GET /openapi.json",
        "==> GET /workflows ",
        "==> GET /workflows/icon_512",
        "==> POST /workflows ",
        "==> PUT /workflows/curl_example_invert",
        "==> DELETE /workflows/curl_example_invert",
        "==> POST /jobs ",
        "==> POST /jobs?wait=60",
        "==> GET /jobs?status=succeeded&workflowId=icon_512",
        "&cursor=",
        "/events   (Server-Sent Events",
        "event: succeeded",
        "/logs",
        "/cancel",
        "/webhooks",
        "/webhook/redeliver",
        "==> HEAD /outputs/",
        "HTTP 206",
        "HTTP 304",
        "?format=base64",
        "==> GET /metrics",
        "==> GET /audit",
        "==> GET /backends",
        "/drain",
        "/resume",
        "OK: every step answered as expected",
    ] {
        assert!(log.contains(step), "curl.sh did not show {step:?}:\n{log}");
    }
    // The import step runs only when the server has the route; either way it is shown.
    assert!(log.contains("/workflows/import"), "{log}");

    // Side effects: the jobs it names exist with the states it claims.
    let last = log.lines().find(|l| l.starts_with("OK: every step")).unwrap();
    let ids: Vec<&str> = last.split(|c: char| !(c.is_ascii_hexdigit() || c == '-')).filter(|w| w.len() == 36).collect();
    assert_eq!(ids.len(), 4, "{last}");
    for (id, status) in ids.iter().zip(["succeeded", "succeeded", "succeeded", "canceled"]) {
        let (code, job) = get_json(&format!("{}/jobs/{id}", gw.url()), ADMIN_KEY).await;
        assert_eq!((code, job["status"].as_str()), (200, Some(status)), "{job}");
    }
    // The multipart job ran the uploaded image through the workflow it registered.
    let (_, inverted) = get_json(&format!("{}/jobs/{}", gw.url(), ids[2]), ADMIN_KEY).await;
    assert_eq!(inverted["workflowId"], "curl_example_invert");
    // The workflow was removed at the end, the backends resumed.
    let (code, _) = get_json(&format!("{}/workflows/curl_example_invert", gw.url()), ADMIN_KEY).await;
    assert_eq!(code, 404);
    let (_, backends) = get_json(&format!("{}/backends", gw.url()), ADMIN_KEY).await;
    assert!(backends["backends"].as_array().unwrap().iter().all(|b| b["draining"] == false), "{backends}");
    // Its webhook was delivered, then redelivered with the same webhook-id.
    let hits = receiver.wait_hits("/curl", 2, WAIT).await;
    assert_eq!(hits[0].header("webhook-id"), hits[1].header("webhook-id"));
    assert_eq!(hits[0].json()["type"], "job.succeeded");
    // The admin actions are in the audit log.
    let (_, audit) = get_json(&format!("{}/audit?limit=50", gw.url()), ADMIN_KEY).await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["workflow.create", "workflow.update", "workflow.delete", "job.cancel", "backend.drain"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_follows_a_job_with_a_resume_and_downloads_verified_outputs() {
    let Some(_python) = python_example_ready() else { return };
    let dir = support::tempdir();
    let (_sim, gw) = start(dir.path()).await;
    let out_dir = dir.path().join("py-out");
    let mut cmd = example("python3", dir.path());
    cmd.arg(examples_dir().join("python/gateway_client.py"))
        .args(["--url", &gw.url(), "--api-key", USER_KEY, "submit", "--input", "prompt=a red fox", "--drop-after", "2"])
        .arg("--out")
        .arg(&out_dir);
    let out = run(cmd).await;
    let log = text(&out);
    assert!(out.status.success(), "gateway_client.py submit failed:\n{log}");
    assert!(log.contains("(reconnecting with Last-Event-ID: 2)"), "{log}");
    assert!(log.contains("] succeeded") && log.contains("verified"), "{log}");
    // The resumed stream repeated nothing: each event id is printed once.
    let ids: Vec<&str> =
        log.lines().filter_map(|l| l.strip_prefix('[')?.split(']').next()).filter(|i| *i != "-").collect();
    let unique: std::collections::HashSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{log}");
    let job = succeeded_job(&log);
    assert!(assert_downloaded(&gw, &job, &out_dir).await >= 1);

    // `demo`: the same with an in-process receiver as the callback, its delivery verified.
    let mut cmd = example("python3", dir.path());
    cmd.arg(examples_dir().join("python/gateway_client.py"))
        .args(["--url", &gw.url(), "--api-key", USER_KEY, "demo", "--secret", SECRET, "--out"])
        .arg(dir.path().join("demo-out"));
    let out = run(cmd).await;
    let log = text(&out);
    assert!(out.status.success(), "gateway_client.py demo failed:\n{log}");
    let job = succeeded_job(&log);
    assert!(log.contains(&format!("webhook job.succeeded for {job} verified")), "{log}");
    assert!(assert_downloaded(&gw, &job, &dir.path().join("demo-out")).await >= 1);

    // A failing request exits non-zero with the gateway's error.
    let mut cmd = example("python3", dir.path());
    cmd.arg(examples_dir().join("python/gateway_client.py")).args([
        "--url",
        &gw.url(),
        "--api-key",
        USER_KEY,
        "submit",
        "--workflow",
        "no_such_workflow",
    ]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("WORKFLOW_NOT_FOUND"), "{}", text(&out));
}

/// A Python receiver's stored delivery: its body and headers.
fn stored_delivery(store: &Path) -> Option<(Vec<u8>, Value)> {
    let entry = std::fs::read_dir(store).ok()?.filter_map(Result::ok).find(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("msg_") && name.ends_with(".json") && !name.ends_with(".headers.json")
    })?;
    let body = std::fs::read(entry.path()).ok()?;
    let headers_path = entry.path().with_extension("headers.json");
    let headers = serde_json::from_slice(&std::fs::read(headers_path).ok()?).ok()?;
    Some((body, headers))
}

/// POST `body` with the three signed headers to the receiver: its status.
async fn post_delivery(url: &str, id: &str, ts: &str, signature: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receiver_accepts_a_real_delivery_and_refuses_tampered_or_stale_ones() {
    let Some(python) = python_example_ready() else { return };
    let dir = support::tempdir();
    let (_sim, gw) = start(dir.path()).await;
    let store = dir.path().join("deliveries");
    let args: Vec<String> = vec![
        examples_dir().join("python/gateway_client.py").display().to_string(),
        "receive".into(),
        "--port".into(),
        "0".into(),
        "--secret".into(),
        SECRET.into(),
        "--store".into(),
        store.display().to_string(),
    ];
    // Unbuffered, so its log is complete when read.
    let envs = [("PYTHONUNBUFFERED".to_string(), "1".to_string())];
    let mut receiver =
        Proc::spawn_program(&python, "python receiver", dir.path(), &args, &envs, dir.path().join("py.log"));
    let addr = receiver.wait_logged_addr("listening on http://").await;
    let url = format!("http://127.0.0.1:{}/hook", addr.port());

    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "a webhook"}, "callbackUrl": url});
    let r = reqwest::Client::new()
        .post(format!("{}/jobs", gw.url()))
        .header("x-api-key", USER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let job = r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string();

    // The gateway's real delivery is verified and accepted (204).
    let what = || format!("a delivery is accepted:\n{}\n{}", receiver.log(), gw.proc_.log());
    let (delivered, headers) = eventually_within(WAIT, what, async || stored_delivery(&store)).await;
    let payload: Value = serde_json::from_slice(&delivered).unwrap();
    assert_eq!(
        (payload["type"].as_str(), payload["data"]["jobId"].as_str()),
        (Some("job.succeeded"), Some(job.as_str()))
    );
    let v = eventually_within(WAIT, "the delivery is recorded delivered", async || {
        let (_, v) = get_json(&format!("{}/jobs/{job}/webhooks", gw.url()), USER_KEY).await;
        if v["deliveries"][0]["state"] == "delivered" { Ok(v) } else { Err(v) }
    })
    .await;
    assert_eq!(v["deliveries"][0]["lastStatus"], 204, "{v}");
    let header = |name: &str| {
        let found = headers.as_object().unwrap().iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.and_then(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("{name} in {headers}")).to_string()
    };
    let (id, ts, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));

    // The same delivery again (a retry) is accepted as a duplicate.
    assert_eq!(post_delivery(&url, &id, &ts, &signature, delivered.clone()).await, 200);
    // One byte changed in the body: refused.
    let tampered = String::from_utf8(delivered.clone()).unwrap().replacen("succeeded", "succeedeD", 1);
    assert_eq!(post_delivery(&url, &id, &ts, &signature, tampered.into_bytes()).await, 401);
    // Another message id with the same signature: refused.
    assert_eq!(post_delivery(&url, "msg_other", &ts, &signature, delivered.clone()).await, 401);
    // Correctly signed but ten minutes old (a replay): refused; signed now: accepted.
    let key = SigningKey::parse(SECRET).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let old = standard_signature(&key, "msg_replayed", now - 600, &delivered);
    assert_eq!(post_delivery(&url, "msg_replayed", &(now - 600).to_string(), &old, delivered.clone()).await, 401);
    let fresh = standard_signature(&key, "msg_replayed", now, &delivered);
    assert_eq!(post_delivery(&url, "msg_replayed", &now.to_string(), &fresh, delivered.clone()).await, 204);
    // Signed with another key: refused.
    let other = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAA==").unwrap();
    let wrong = standard_signature(&other, "msg_wrong_key", now, &delivered);
    assert_eq!(post_delivery(&url, "msg_wrong_key", &now.to_string(), &wrong, delivered).await, 401);

    let log = receiver.log();
    assert_eq!(log.matches("rejected").count(), 4, "{log}");
    assert!(log.contains("webhook-timestamp is"), "{log}");
    assert!(log.contains(&format!("accepted {id} job.succeeded job={job}")), "{log}");
}

/// `python3` with `requests`, through the tool gate ([`support::require`]).
fn python_example_ready() -> Option<PathBuf> {
    support::require_python(&["requests"])
}

/// `node` with `examples/js/node_modules`, through the tool gate ([`support::require`]).
fn node_example_ready() -> Option<PathBuf> {
    let node = support::which("node").filter(|_| examples_dir().join("js/node_modules/eventsource").is_dir());
    support::require("node with examples/js/node_modules (npm ci)", node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_follows_a_job_and_downloads_its_outputs() {
    let Some(_node) = node_example_ready() else { return };
    let dir = support::tempdir();
    let (_sim, gw) = start(dir.path()).await;
    let out_dir = dir.path().join("js-out");
    let mut cmd = example("node", dir.path());
    cmd.arg(examples_dir().join("js/client.mjs"))
        .args(["--input", "prompt=a js fox", "--out"])
        .arg(&out_dir)
        .env("GATEWAY_URL", gw.url())
        .env("GATEWAY_API_KEY", USER_KEY);
    let out = run(cmd).await;
    let log = text(&out);
    assert!(out.status.success(), "client.mjs failed:\n{log}");
    assert!(log.contains("progress") || log.contains("dispatched: running"), "{log}");
    assert!(log.contains("] succeeded"), "{log}");
    let job = succeeded_job(&log);
    assert!(assert_downloaded(&gw, &job, &out_dir).await >= 1);

    // A wrong key: non-zero with the gateway's error.
    let mut cmd = example("node", dir.path());
    cmd.arg(examples_dir().join("js/client.mjs")).env("GATEWAY_URL", gw.url()).env("GATEWAY_API_KEY", "not-a-key-000");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("AUTH_FAILED"), "{}", text(&out));
}

/// The value at a `$json` path like `outputs[0].url` or `body.data.outputs[0]?.url`.
fn json_path<'a>(root: &'a Value, path: &str) -> &'a Value {
    let mut v = root;
    for part in path.split('.').map(|p| p.trim_end_matches('?')) {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, Some(rest.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (part, None),
        };
        v = &v[name];
        if let Some(i) = index {
            v = &v[i];
        }
    }
    v
}

/// Every `$json.<path>` an n8n Set node's assignments read resolves to a string in `input`.
fn assert_set_node_resolves(node: &Value, input: &Value) {
    let assignments = node["parameters"]["assignments"]["assignments"].as_array().unwrap();
    for a in assignments {
        let value = a["value"].as_str().unwrap();
        for expr in value.split("$json.").skip(1) {
            let path: String = expr.chars().take_while(|c| c.is_ascii_alphanumeric() || "_.[]?".contains(*c)).collect();
            let path = path.trim_end_matches('.');
            let found = json_path(input, path);
            assert!(found.is_string(), "{}: $json.{path} is {found} in {input}", node["name"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n8n_workflow_is_well_formed_and_its_request_runs_a_job() {
    let raw = std::fs::read_to_string(examples_dir().join("n8n/comfyui-gateway.json")).unwrap();
    let wf: Value = serde_json::from_str(&raw).expect("the n8n workflow is JSON");
    assert!(wf["name"].is_string());
    let nodes = wf["nodes"].as_array().expect("nodes");
    let mut names = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for n in nodes {
        assert!(names.insert(n["name"].as_str().expect("a node name")), "duplicate node name {}", n["name"]);
        assert!(ids.insert(n["id"].as_str().expect("a node id")), "duplicate node id {}", n["id"]);
        assert!(n["type"].as_str().is_some_and(|t| t.starts_with("n8n-nodes-base.")), "{n}");
        assert!(n["typeVersion"].is_number() && n["parameters"].is_object(), "{n}");
        assert_eq!(n["position"].as_array().map(Vec::len), Some(2), "{n}");
    }
    let connections = wf["connections"].as_object().expect("connections");
    for (from, outputs) in connections {
        assert!(names.contains(from.as_str()), "connection from unknown node {from}");
        for target in outputs["main"].as_array().unwrap().iter().flat_map(|o| o.as_array().unwrap()) {
            assert!(names.contains(target["node"].as_str().unwrap()), "connection to unknown node {target}");
            assert_eq!(target["type"], "main");
        }
    }
    let by_type = |t: &str| -> Vec<&Value> { nodes.iter().filter(|n| n["type"] == t).collect() };
    let [http] = by_type("n8n-nodes-base.httpRequest")[..] else { panic!("one HTTP Request node") };
    let [hook] = by_type("n8n-nodes-base.webhook")[..] else { panic!("one Webhook node") };
    let version = http["typeVersion"].as_f64().unwrap();
    assert!((4.0..5.0).contains(&version), "HTTP Request typeVersion 4.x: {version}");
    let p = &http["parameters"];
    assert_eq!(p["method"], "POST");
    assert_eq!(
        (p["authentication"].as_str(), p["genericAuthType"].as_str()),
        (Some("genericCredentialType"), Some("httpHeaderAuth"))
    );
    assert!(http["credentials"]["httpHeaderAuth"]["name"].is_string(), "{http}");
    assert_eq!((p["sendBody"].as_bool(), p["specifyBody"].as_str()), (Some(true), Some("json")));
    let hook_path = hook["parameters"]["path"].as_str().unwrap();
    assert_eq!(hook["parameters"]["httpMethod"], "POST");
    assert!(hook["webhookId"].is_string());

    // The node that feeds the request sets the prompt its body reads.
    let prompt_node = nodes.iter().find(|n| n["name"] == "Prompt").expect("the Prompt node");
    let prompt = prompt_node["parameters"]["assignments"]["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "prompt")
        .and_then(|a| a["value"].as_str())
        .expect("a prompt assignment");

    // Replay the request: n8n's expressions substituted, localhost:3000 → the test gateway,
    // localhost:5678 (n8n) → a receiver standing in for the Webhook node.
    let dir = support::tempdir();
    let (_sim, gw) = start(dir.path()).await;
    let receiver = Receiver::start().await;
    let n8n_base = receiver.url("");
    let url = p["url"].as_str().unwrap().replace("http://localhost:3000", &gw.url());
    assert!(url.starts_with(&gw.url()) && url.ends_with("/jobs?wait=60"), "{url}");
    let template = p["jsonBody"].as_str().unwrap().strip_prefix('=').expect("jsonBody is an expression");
    let mut body = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        body.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("a closed expression") + start;
        let expr = rest[start + 2..end].trim();
        match expr {
            "JSON.stringify($json.prompt)" => body.push_str(&serde_json::to_string(prompt).unwrap()),
            other => panic!("the test does not know the n8n expression {other:?}: teach it"),
        }
        rest = &rest[end + 2..];
    }
    body.push_str(rest);
    let body = body.replace("http://localhost:5678", n8n_base.trim_end_matches('/'));
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("jsonBody renders to JSON: {e}\n{body}"));
    let callback = body["callbackUrl"].as_str().unwrap();
    assert_eq!(callback, receiver.url(&format!("/webhook/{hook_path}")), "callbackUrl points at the Webhook node");

    let r = reqwest::Client::new()
        .post(&url)
        .header("x-api-key", USER_KEY)
        .json(&body)
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let job: Value = r.json().await.unwrap();
    assert_eq!((status, job["status"].as_str()), (200, Some("succeeded")), "{job}");
    assert_eq!(job["inputs"]["prompt"], prompt);
    let output_node = nodes.iter().find(|n| n["name"] == "Output URL").expect("the Output URL node");
    assert_set_node_resolves(output_node, &job);
    // Its expression (JavaScript, as n8n runs it) gives a URL whether the gateway answers
    // with a path (no PUBLIC_URL, as here) or with an absolute URL (PUBLIC_URL set).
    let path = job["outputs"][0]["url"].as_str().unwrap().to_string();
    assert!(path.starts_with("/outputs/"), "{path}");
    if let Some(node) = support::require_tool("node") {
        let expr = output_node["parameters"]["assignments"]["assignments"][0]["value"].as_str().unwrap();
        let expr = expr.strip_prefix("={{").and_then(|e| e.strip_suffix("}}")).expect("an n8n expression").trim();
        for (url, expected) in [
            (path.clone(), format!("http://localhost:3000{path}")),
            (format!("https://gw.example.com{path}"), format!("https://gw.example.com{path}")),
        ] {
            let input = json!({"outputs": [{"url": url}]});
            let out = std::process::Command::new(&node)
                .args(["-e", &format!("const $json = {input}; process.stdout.write(String({expr}))")])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "Output URL of {url}");
        }
    }
    let (code, _) = get_bytes(&format!("{}{}", gw.url(), job["outputs"][0]["url"].as_str().unwrap()), USER_KEY).await;
    assert_eq!(code, 200);

    // The callback arrives where the Webhook node listens, and its picker finds the URL.
    let hits = receiver.wait_hits(&format!("/webhook/{hook_path}"), 1, WAIT).await;
    let webhook_input = json!({"body": hits[0].json(), "headers": hits[0].headers});
    assert_eq!(webhook_input["body"]["type"], "job.succeeded");
    let picker = connections[hook["name"].as_str().unwrap()]["main"][0][0]["node"].as_str().unwrap();
    let picker = nodes.iter().find(|n| n["name"] == picker).unwrap();
    assert_set_node_resolves(picker, &webhook_input);
}
