//! Open mode on a developer's laptop, webhook fairness and the small ones (issue 16, rows
//! 6, 7 and 9): a web page's cross-origin `text/plain` writes and a DNS-rebound `Host` are
//! refused while the gateway's own page and tools are served; one tenant's hanging webhook
//! receivers do not delay another tenant's delivery; workflow ids `.`/`..` are refused;
//! the database and privacy key files are private; the public `/health` says only up/ready.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Neighbour, SERVED_WITHIN};
use crate::support::receiver::Receiver;
use crate::support::{self, Gateway, Sim};

const ALICE_KEY: &str = "alice-key-0001";
const BOB_KEY: &str = "bob-key-000001";

/// One raw HTTP/1.1 request (`head` without the final blank line, `Host` included) with
/// `body`: the status and the body as JSON (Null if not JSON). Raw, so that `Host` and
/// dot-segment paths go out exactly as written.
async fn raw(port: u16, head: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SERVED_WITHIN, stream.read_to_end(&mut answer)).await.expect("answered").unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn workflow(id: &str) -> Value {
    json!({
        "id": id,
        "workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_refuses_cross_origin_writes_and_foreign_hosts_while_the_page_is_served() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let port = gw.port;
    let here = format!("127.0.0.1:{port}");
    let neighbour = Neighbour::new(&gw.url(), None);
    let job = json!({"workflowId": "icon_512", "inputs": {"prompt": "a lighthouse"}}).to_string();
    let evil_workflow = workflow("evil_page").to_string();

    // A page of another site posts text/plain (no preflight) to /workflows and /jobs.
    for (path, body) in [("/workflows", &evil_workflow), ("/jobs", &job)] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {here}\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n\
             Content-Type: text/plain;charset=UTF-8"
        );
        let (status, v) = raw(port, &head, body).await;
        assert_eq!((status, code(&v)), (403, "CROSS_ORIGIN_REFUSED"), "{path}: {v}");
        // Same origin (or a tool), but text/plain: still not JSON.
        let head = format!("POST {path} HTTP/1.1\r\nHost: {here}\r\nContent-Type: text/plain");
        let (status, v) = raw(port, &head, body).await;
        assert_eq!((status, code(&v)), (415, "UNSUPPORTED_MEDIA_TYPE"), "{path}: {v}");
        let head = format!("POST {path} HTTP/1.1\r\nHost: {here}");
        let (status, v) = raw(port, &head, body).await;
        assert_eq!((status, code(&v)), (415, "UNSUPPORTED_MEDIA_TYPE"), "{path} without a type: {v}");
        // Even JSON is refused from another origin (a CORS-enabled page would preflight).
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {here}\r\nOrigin: http://127.0.0.1:{}\r\nContent-Type: application/json",
            port + 1
        );
        let (status, v) = raw(port, &head, body).await;
        assert_eq!((status, code(&v)), (403, "CROSS_ORIGIN_REFUSED"), "{path} from another port: {v}");
    }
    // DNS rebinding: the page's own name resolved to 127.0.0.1; reads are refused too.
    for path in ["/jobs", "/workflows", "/health"] {
        let (status, v) = raw(port, &format!("GET {path} HTTP/1.1\r\nHost: rebind.evil.example:{port}"), "").await;
        assert_eq!((status, code(&v)), (403, "HOST_NOT_ALLOWED"), "{path}: {v}");
    }
    let head = format!("POST /jobs HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\nContent-Type: application/json");
    assert_eq!(raw(port, &head, &job).await.0, 403);

    // Nothing was created by any of it.
    let (status, _) = neighbour.get("/workflows/evil_page").await;
    assert_eq!(status, 404, "the refused workflow does not exist");
    let (status, listed) = neighbour.get("/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "no job was created: {listed}");

    // The neighbours: the dashboard (same origin), loopback names, and tools without Origin.
    let head = format!(
        "POST /jobs HTTP/1.1\r\nHost: {here}\r\nOrigin: http://{here}\r\nSec-Fetch-Site: same-origin\r\n\
         Content-Type: application/json"
    );
    let (status, v) = raw(port, &head, &job).await;
    assert!(status == 202 || status == 200, "the dashboard's submit: {status} {v}");
    let id = v["jobId"].as_str().unwrap().to_string();
    let cancel =
        format!("POST /jobs/{id}/cancel HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://localhost:{port}");
    let (status, v) = raw(port, &cancel, "").await;
    assert!(status == 200 || status == 409, "a POST without a body (cancel) keeps working: {status} {v}");
    for host in [format!("localhost:{port}"), format!("[::1]:{port}"), here.clone()] {
        let (status, v) = raw(port, &format!("GET /jobs/{id} HTTP/1.1\r\nHost: {host}"), "").await;
        assert_eq!(status, 200, "{host}: {v}");
    }
    let (status, v) = neighbour.post("/workflows", &workflow("neighbour_wf")).await;
    assert_eq!(status, 201, "{v}");
    let served = neighbour.probe_for(&["/jobs", &format!("/jobs/{id}")], Duration::from_secs(1)).await;
    assert!(served.worst < SERVED_WITHIN, "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_workflow_ids_are_refused_and_the_database_and_key_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("PRIVACY_MODE", "true")]).await;
    let neighbour = Neighbour::new(&gw.url(), None);
    for id in [".", ".."] {
        let (status, v) = neighbour.post("/workflows", &workflow(id)).await;
        assert_eq!((status, code(&v)), (400, "VALIDATION_ERROR"), "{id:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("dot segments"), "{v}");
        // PUT by a raw path (clients resolve `..` away; a raw one can send it).
        let head =
            format!("PUT /workflows/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json", gw.port);
        let (status, v) = raw(gw.port, &head, &workflow(id).to_string()).await;
        assert_eq!((status, code(&v)), (400, "VALIDATION_ERROR"), "PUT {id:?}: {v}");
    }
    // Dots inside an id stay fine.
    assert_eq!(neighbour.post("/workflows", &workflow("v1.2..3")).await.0, 201);
    for file in [gw.db.clone(), gw.db.with_extension("privacy-key")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is mode {mode:o}", file.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_health_says_only_up_and_ready() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let keys = format!("{ALICE_KEY}:user");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &keys)]).await;
    let public = Neighbour::new(&gw.url(), None);
    let (status, v) = public.get("/health").await;
    assert!(status == 200 || status == 503, "{status}: {v}");
    let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["ok", "ready", "status"], "{v}");
    assert!(!v.to_string().contains(&sim.url()), "no backend URL: {v}");
    // A wrong key is no key: still the public answer, not a 401 (probes keep working).
    let (status, v) = Neighbour::new(&gw.url(), Some("wrong-key-0001")).get("/health").await;
    assert!((status == 200 || status == 503) && v.get("comfyui").is_none(), "{status}: {v}");
    let (_, v) = Neighbour::new(&gw.url(), Some(ALICE_KEY)).get("/health").await;
    assert_eq!(v["comfyui"]["backends"][0]["url"], sim.url().as_str(), "details for a caller with a key: {v}");
    assert!(v["version"].is_string(), "{v}");
}

/// A receiver that accepts connections and never answers (nor closes them): how many it
/// accepted.
async fn hanging_receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_hanging_webhook_receivers_do_not_delay_anothers() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let keys = format!("{ALICE_KEY}:user,{BOB_KEY}:user");
    let env = [("API_KEYS", keys.as_str()), ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1"), ("CACHE_ENABLED", "false")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let (hang_port, accepted, hang_task) = hanging_receiver().await;
    let good = Receiver::start().await;
    let alice = Neighbour::new(&gw.url(), Some(ALICE_KEY));
    let bob = Neighbour::new(&gw.url(), Some(BOB_KEY));

    // The attack at full size: 40 jobs whose callbacks hang (each attempt holds its
    // slot for WEBHOOK_TIMEOUT_MS, 15 s); before, 16 slots x 15 s kept bob waiting 28 s.
    let mut alice_jobs = Vec::new();
    for i in 0..40 {
        let body = json!({
            "workflowId": "icon_512",
            "inputs": {"prompt": format!("hang {i}")},
            "callbackUrl": format!("http://127.0.0.1:{hang_port}/hook/{i}"),
        });
        let (status, v) = alice.post("/jobs", &body).await;
        assert_eq!(status, 202, "{v}");
        alice_jobs.push(v["jobId"].as_str().unwrap().to_string());
    }
    // Every one of alice's deliveries is due (her jobs finished) before bob's job exists.
    for id in &alice_jobs {
        support::eventually_within(Duration::from_secs(60), format!("alice's job {id} finishes"), async || {
            let (_, job) = alice.get(&format!("/jobs/{id}")).await;
            if job["status"] == "succeeded" { Ok(()) } else { Err(job) }
        })
        .await;
    }
    // An absence is checked over a window: more than 4 connections would have come by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n_hanging = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=4).contains(&n_hanging),
        "one destination holds WEBHOOK_DESTINATION_CONCURRENCY (4) slots at most, not all 16: {n_hanging}"
    );

    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "bob's"}, "callbackUrl": good.url("/bob")});
    let (status, v) = bob.post("/jobs", &body).await;
    assert_eq!(status, 202, "{v}");
    let submitted = Instant::now();
    let hits = good.wait_hits("/bob", 1, Duration::from_secs(10)).await;
    let took = hits[0].at.duration_since(submitted);
    assert!(took < SERVED_WITHIN, "bob's webhook waited {took:?} behind alice's hanging receivers");
    eprintln!("bob's webhook delivered {took:?} after his submit, with 40 of alice's hanging");
    // And the API serves both meanwhile.
    bob.probe_for(&["/jobs", &format!("/jobs/{}", v["jobId"].as_str().unwrap())], Duration::from_secs(1)).await;
    hang_task.abort();
}
