//! Benchmark (prints figures; not a test): `cargo bench --bench gateway`.
//!
//! 1. Durable submits per second: `POST /jobs` → 202 (after the redb fsync) with 1, 16
//!    and 64 concurrent clients, against a gateway whose backend is down (jobs stay
//!    queued, so only the submit path is measured).
//! 2. Added latency per job: the same rendered prompt run (a) directly against the
//!    simulator by a client doing what the gateway does (POST /prompt, WebSocket until
//!    `executing: null`, `/history`, `/view`), and (b) through the gateway (POST /jobs,
//!    then GET /jobs/:id every millisecond until `succeeded`). Both sequential, distinct
//!    seeds so ComfyUI's cache never answers.
//!
//! 3. Cache-hit submits: the same requests as in 2 again, each answered from the result
//!    cache (200, a job born `succeeded`; the simulator is not involved), sequential.
//!
//! Environment: `BENCH_SECONDS` (per concurrency level, default 3), `BENCH_RUNS`
//! (latency runs, default 200).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_comfyui-gateway");

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn spawn(args: &[&str], envs: &[(&str, String)]) -> Kill {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Kill(cmd.spawn().expect("spawn"))
}

async fn wait_up(url: &str) {
    let c = reqwest::Client::new();
    for _ in 0..400 {
        if c.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} did not come up");
}

fn gateway(dir: &Path, name: &str, backend: &str) -> (Kill, String) {
    let port = free_port();
    let envs = [
        ("PORT", port.to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("COMFYUI_URL", backend.to_string()),
        ("DATABASE_URL", dir.join(format!("{name}.redb")).display().to_string()),
        ("LOG_LEVEL", "warn".to_string()),
    ];
    (spawn(&["serve"], &envs), format!("http://127.0.0.1:{port}"))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn job_body(seed: u64) -> Value {
    json!({"workflowId": "icon_512", "inputs": {"prompt": "benchmark", "seed": seed}})
}

async fn submits(url: &str, clients: usize, seconds: u64) -> (f64, Vec<f64>) {
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, stop, url) = (http.clone(), stop.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = http.post(format!("{url}/jobs")).json(&job_body(c as u64 * 1_000_000 + i)).send().await;
                if r.map(|r| r.status().as_u16() == 202).unwrap_or(false) {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                i += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / elapsed, all)
}

/// The rendered prompt of icon_512 for a seed, exactly as the gateway would send it.
fn rendered_prompt(seed: u64) -> Value {
    let wf = comfyui_gateway::workflows::bundled::all().into_iter().find(|w| w.id == "icon_512").expect("icon_512");
    let compiled = comfyui_gateway::workflows::CompiledWorkflow::compile(&wf.template, Some(&wf.input_schema), None)
        .expect("compiles");
    let limits = comfyui_gateway::workflows::Limits { image_size_max: 2048, batch_size_max: 4 };
    compiled.prepare(&json!({"prompt": "benchmark", "seed": seed}), &limits, &mut rand::rng()).expect("prepares").prompt
}

async fn direct_run(sim: &str, http: &reqwest::Client, ws: &mut WsStream, client_id: &str, seed: u64) -> f64 {
    let prompt_id = uuid::Uuid::new_v4().to_string();
    let t = Instant::now();
    let body = json!({"prompt": rendered_prompt(seed), "prompt_id": prompt_id, "client_id": client_id});
    let r = http.post(format!("{sim}/prompt")).json(&body).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 200);
    while let Some(Ok(msg)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = msg {
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            if v["type"] == "executing" && v["data"]["node"].is_null() && v["data"]["prompt_id"] == prompt_id.as_str() {
                break;
            }
        }
    }
    let h: Value = http.get(format!("{sim}/history/{prompt_id}")).send().await.unwrap().json().await.unwrap();
    for node in h[&prompt_id]["outputs"].as_object().into_iter().flatten().map(|(_, v)| v) {
        for img in node["images"].as_array().into_iter().flatten() {
            let q = [
                ("filename", img["filename"].as_str().unwrap_or("")),
                ("subfolder", img["subfolder"].as_str().unwrap_or("")),
                ("type", img["type"].as_str().unwrap_or("output")),
            ];
            let bytes = http.get(format!("{sim}/view")).query(&q).send().await.unwrap().bytes().await.unwrap();
            assert!(!bytes.is_empty());
        }
    }
    t.elapsed().as_secs_f64() * 1000.0
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn gateway_run(gw: &str, http: &reqwest::Client, seed: u64) -> f64 {
    let t = Instant::now();
    let v: Value = http.post(format!("{gw}/jobs")).json(&job_body(seed)).send().await.unwrap().json().await.unwrap();
    let id = v["jobId"].as_str().expect("jobId").to_string();
    loop {
        let j: Value = http.get(format!("{gw}/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        match j["status"].as_str() {
            Some("succeeded") => break,
            Some("failed" | "canceled") => panic!("job failed: {j}"),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    t.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let runs: u64 = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "comfyui-gateway benchmark ({} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    // 1. Durable submits.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (_gw, url) = gateway(dir.path(), "submits", &dead);
    wait_up(&format!("{url}/health")).await;
    println!("\ndurable submits (POST /jobs -> 202 after fsync), {seconds}s per level");
    println!("{:>8} {:>12} {:>10} {:>10}", "clients", "submits/s", "p50 ms", "p99 ms");
    for clients in [1, 16, 64] {
        let (rate, lat) = submits(&url, clients, seconds).await;
        println!("{clients:>8} {rate:>12.0} {:>10.2} {:>10.2}", pct(&lat, 0.5), pct(&lat, 0.99));
    }
    drop(_gw);

    // 2. Added latency per job.
    let sim_port = free_port();
    let sim_dir = dir.path().join("sim");
    let _sim = spawn(
        &["sim", "--port", &sim_port.to_string(), "--node-delay-ms", "0", "--data-dir", &sim_dir.display().to_string()],
        &[],
    );
    let sim = format!("http://127.0.0.1:{sim_port}");
    wait_up(&format!("{sim}/system_stats")).await;
    let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let client_id = uuid::Uuid::new_v4().simple().to_string();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{sim_port}/ws?clientId={client_id}")).await.unwrap();
    let mut direct = Vec::new();
    for i in 0..runs {
        direct.push(direct_run(&sim, &http, &mut ws, &client_id, 10_000_000 + i).await);
    }
    let (_gw2, gw) = gateway(dir.path(), "latency", &sim);
    wait_up(&format!("{gw}/health")).await;
    // Let the gateway's backend probe and WebSocket come up.
    for _ in 0..200 {
        let h: Value = http.get(format!("{gw}/health")).send().await.unwrap().json().await.unwrap();
        if h["ok"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut via = Vec::new();
    for i in 0..runs {
        via.push(gateway_run(&gw, &http, 20_000_000 + i).await);
    }
    direct.sort_by(f64::total_cmp);
    via.sort_by(f64::total_cmp);
    println!("\nper-job latency, simulator with zero node delay, {runs} sequential jobs (icon_512, 512x512 PNG)");
    println!("{:>22} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!("{:>22} {:>10.2} {:>10.2}", "direct to simulator", pct(&direct, 0.5), pct(&direct, 0.99));
    println!("{:>22} {:>10.2} {:>10.2}", "through the gateway", pct(&via, 0.5), pct(&via, 0.99));
    println!(
        "{:>22} {:>10.2} {:>10.2}",
        "added by the gateway",
        pct(&via, 0.5) - pct(&direct, 0.5),
        pct(&via, 0.99) - pct(&direct, 0.99)
    );

    // 3. Cache hits: the jobs of part 2 again.
    let mut hits = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let r = http.post(format!("{gw}/jobs")).json(&job_body(20_000_000 + i)).send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert!(status == 200 && v["cached"] == true, "not a cache hit: {status} {v}");
        hits.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    hits.sort_by(f64::total_cmp);
    println!(
        "
cache-hit submits (POST /jobs -> 200, job born succeeded after fsync), {runs} sequential"
    );
    println!("{:>22} {:>10.2} {:>10.2}", "cache hit", pct(&hits, 0.5), pct(&hits, 0.99));
}
