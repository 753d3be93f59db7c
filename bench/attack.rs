//! Part 7 of the benchmark: a well-behaved client's latency while another client attacks
//! (issue 16, "Nobody stalls the gateway for anybody else"), and the gateway's peak RSS.
//!
//! One gateway with three API keys (an admin, the attacker, the neighbour) in front of a
//! simulator whose nodes take 60 s, so the attacker has a job that stays running for its
//! event streams and the neighbour's submits stay queued (only the API is measured). For
//! each attack the neighbour, from its own loopback address and connection pool, alternates
//! `GET /jobs/{id}` and `POST /jobs` for the measured time; p50/p99 of each are printed
//! beside the same figures with no attack. Targets: p99 under attack within 2x of p99
//! without; peak RSS under attack below 300 MB.
//!
//! The attacks, at the issue's sizes (`BENCH_ATTACK_SCALE` divides the counts):
//! - slow bodies: 1,100 connections send complete `POST /jobs` headers with
//!   `Content-Length: 100000`, then nothing;
//! - event streams: 2,000 `GET /jobs/{id}/events` on the attacker's running job;
//! - a million keys: two tasks posting 12 MB bodies of 1,000,000 unknown input keys in a loop;
//! - a looping plugin: four tasks submitting to a workflow whose `input-transform` spins
//!   (the hostile guest `spin` of `plugins/`; skipped when `scripts/build-plugins` has not run).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use super::{Gw, Table, env_num, p50_p99, pct, sim, sorted, wait_up};

const ADMIN: &str = "bench-admin-key-0001";
const ATTACKER: &str = "bench-attacker-key-01";
const NEIGHBOUR: &str = "bench-neighbour-key-1";

/// The attacker's connections come from this loopback address, the neighbour's from its own.
const ATTACKER_IP: [u8; 4] = [127, 0, 0, 2];
const NEIGHBOUR_IP: [u8; 4] = [127, 0, 0, 3];

/// A TCP connection to the gateway from `source`.
async fn connect_from(source: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The neighbour's latencies (ms, sorted) for `GET /jobs/{id}` and `POST /jobs`, and how
/// many of its requests failed or were refused.
struct Seen {
    get: Vec<f64>,
    post: Vec<f64>,
    failed: u64,
}

async fn neighbour(gw: &str, job: &str, seconds: f64, seed: &AtomicU64) -> Seen {
    let http = client_from(NEIGHBOUR_IP);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut get, mut post, mut failed) = (Vec::new(), Vec::new(), 0);
    while Instant::now() < until {
        let t = Instant::now();
        match http.get(format!("{gw}/jobs/{job}")).header("x-api-key", NEIGHBOUR).send().await {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
                get.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            _ => failed += 1,
        }
        let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "neighbour", "seed": seed.fetch_add(1, Ordering::Relaxed)}});
        let t = Instant::now();
        match http.post(format!("{gw}/jobs")).header("x-api-key", NEIGHBOUR).json(&body).send().await {
            Ok(r) if r.status() == 202 => {
                let _ = r.bytes().await;
                post.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Seen { get: sorted(get), post: sorted(post), failed }
}

/// An attack: started by `start`, stopped by setting the flag and awaiting the handles.
struct Attack {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Requests the attacker made and the statuses it got (status → count), for the table.
    statuses: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>>,
}

impl Attack {
    fn new() -> Attack {
        Attack { stop: Arc::new(AtomicBool::new(false)), tasks: Vec::new(), statuses: Default::default() }
    }

    /// Run `task` on the attacker's runtime: its own threads, so the attacker's work (12 MB
    /// bodies built and sent) does not delay the neighbour's requests inside this process;
    /// the two still share the machine's cores with the gateway, as real clients would.
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(attacker_runtime().spawn(task));
    }

    async fn end(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        let s = self.statuses.lock().expect("statuses");
        s.iter()
            .map(|(k, v)| if *k == 0 { format!("{v}x closed") } else { format!("{v}x {k}") })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The runtime attacks run on (two threads of their own), started once.
fn attacker_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("attacker")
            .enable_all()
            .build()
            .expect("attacker runtime")
    })
}

fn count(statuses: &std::sync::Mutex<std::collections::BTreeMap<u16, u64>>, status: u16) {
    *statuses.lock().expect("statuses").entry(status).or_default() += 1;
}

/// Read the status code of a raw response (0 when the connection closed first).
async fn raw_status(stream: &mut TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(n) if n >= 12 => std::str::from_utf8(&buf[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        _ => 0,
    }
}

/// `n` connections sending complete headers and no body.
fn slow_bodies(port: u16, n: usize) -> Attack {
    let head = format!(
        "POST /jobs HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {ATTACKER}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    );
    held_connections(port, n, head)
}

/// `n` event streams on `job`, held open (the bytes are read and dropped).
fn event_streams(port: u16, job: &str, n: usize) -> Attack {
    let head = format!(
        "GET /jobs/{job}/events HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {ATTACKER}\r\naccept: text/event-stream\r\n\r\n"
    );
    held_connections(port, n, head)
}

/// `n` connections from the attacker's address, each sending `head` and then holding the
/// connection: its status is counted, whatever follows is read and dropped until the
/// gateway closes it.
fn held_connections(port: u16, n: usize, head: String) -> Attack {
    let mut attack = Attack::new();
    let head = Arc::new(head);
    for _ in 0..n {
        let (statuses, head) = (attack.statuses.clone(), head.clone());
        attack.spawn(async move {
            let Ok(mut s) = connect_from(ATTACKER_IP, port).await else {
                count(&statuses, 0);
                return;
            };
            if s.write_all(head.as_bytes()).await.is_err() {
                count(&statuses, 0);
                return;
            }
            let status = raw_status(&mut s).await;
            count(&statuses, status);
            use tokio::io::AsyncReadExt;
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            std::future::pending::<()>().await;
        });
    }
    attack
}

/// The body of a submit with `keys` unknown input keys.
fn many_keys_body(keys: usize) -> Vec<u8> {
    let mut body = String::with_capacity(keys * 12 + 64);
    body.push_str(r#"{"workflowId":"icon_512","inputs":{"prompt":"x""#);
    for i in 0..keys {
        body.push_str(&format!(r#","k{i}":1"#));
    }
    body.push_str("}}");
    body.into_bytes()
}

/// `tasks` loops posting `body` to `path` as the attacker.
fn post_loop(gw: &str, path: &str, body: Arc<dyn Fn() -> Vec<u8> + Send + Sync>, tasks: usize) -> Attack {
    let mut attack = Attack::new();
    for _ in 0..tasks {
        let (stop, statuses, body) = (attack.stop.clone(), attack.statuses.clone(), body.clone());
        let url = format!("{gw}{path}");
        attack.spawn(async move {
            let http = client_from(ATTACKER_IP);
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(&url)
                    .header("x-api-key", ATTACKER)
                    .header("content-type", "application/json")
                    .body(body())
                    .send()
                    .await;
                match r {
                    Ok(r) => {
                        count(&statuses, r.status().as_u16());
                        let _ = r.bytes().await;
                    }
                    Err(_) => count(&statuses, 0),
                }
            }
        });
    }
    attack
}

fn spin_wasm() -> Option<String> {
    use base64::Engine as _;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/target/wasm32-wasip2/release/spin.wasm");
    std::fs::read(path).ok().map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}

async fn submit(http: &reqwest::Client, gw: &str, key: &str, body: &Value) -> String {
    let r = http.post(format!("{gw}/jobs")).header("x-api-key", key).json(body).send().await.expect("submit");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, 202, "submit: {v}");
    v["jobId"].as_str().expect("jobId").to_string()
}

/// Part 7: the table rows.
pub async fn run(dir: &Path, table: &mut Table) {
    let seconds = env_num("BENCH_SECONDS", 3) as f64 * 2.0;
    let scale = env_num("BENCH_ATTACK_SCALE", 1).max(1) as usize;
    let (_sim, sim_url) = sim(&dir.join("sim-attack"), 60_000);
    wait_up(&format!("{sim_url}/system_stats")).await;
    let keys = format!("{ADMIN}:admin,{ATTACKER}:user,{NEIGHBOUR}:user");
    let gw =
        Gw::start(&dir.join("attack.redb"), &sim_url, &[("API_KEYS", keys), ("PLUGIN_TIMEOUT_MS", "10000".into())]);
    wait_up(&format!("{}/health", gw.url)).await;
    let http = reqwest::Client::new();
    // The attacker's job takes the backend's one slot and stays running (60 s nodes).
    let running =
        submit(&http, &gw.url, ATTACKER, &json!({"workflowId": "icon_512", "inputs": {"prompt": "a", "seed": 1}}))
            .await;
    let mine =
        submit(&http, &gw.url, NEIGHBOUR, &json!({"workflowId": "icon_512", "inputs": {"prompt": "n", "seed": 2}}))
            .await;
    let spin = spin_wasm();
    if let Some(wasm) = &spin {
        let body = json!({
            "id": "looping",
            "workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}},
            "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": false},
            "plugin": {"wasm": wasm}
        });
        let r = http
            .post(format!("{}/workflows", gw.url))
            .header("x-api-key", ADMIN)
            .json(&body)
            .send()
            .await
            .expect("register");
        assert!(r.status().is_success(), "register looping: {}", r.text().await.unwrap_or_default());
    }
    let seed = AtomicU64::new(1_000);
    // Warm-up, then the baseline.
    neighbour(&gw.url, &mine, 1.0, &seed).await;
    let base = neighbour(&gw.url, &mine, seconds, &seed).await;
    println!(
        "\n7. a well-behaved client while another attacks ({seconds} s each; neighbour GET /jobs/{{id}} and POST /jobs)"
    );
    let row = |table: &mut Table, what: &str, seen: &Seen, attacker: String| {
        let within = |seen: &[f64], base: &[f64]| pct(seen, 0.99) <= 2.0 * pct(base, 0.99);
        let met = seen.failed == 0 && within(&seen.get, &base.get) && within(&seen.post, &base.post);
        table.row(
            format!(
                "{what}: neighbour ms (p50 / p99){}",
                if attacker.is_empty() { String::new() } else { format!("; attacker got {attacker}") }
            ),
            format!("GET {}, POST {}, {} failed", p50_p99(&seen.get), p50_p99(&seen.post), seen.failed),
            "p99 ≤ 2x no attack, 0 failed",
            Some(met),
        );
    };
    row(table, "no attack", &base, String::new());
    let rss = |table: &mut Table, what: &str| {
        let (now, peak) = gw.proc.rss_mb();
        table.row(
            format!("gateway RSS after {what}, MB (now / peak)"),
            format!("{now:.0} / {peak:.0}"),
            "peak < 300 MB",
            Some(peak < 300.0),
        );
    };

    type Start = Box<dyn Fn() -> Attack>;
    let attacks: Vec<(&str, Start)> = vec![
        (
            "slow bodies",
            Box::new({
                let port = gw.port;
                move || slow_bodies(port, 1_100 / scale)
            }),
        ),
        (
            "event streams",
            Box::new({
                let (port, running) = (gw.port, running.clone());
                move || event_streams(port, &running, 2_000 / scale)
            }),
        ),
        (
            "a million keys",
            Box::new({
                let url = gw.url.clone();
                let body = Arc::new(many_keys_body(1_000_000 / scale));
                move || {
                    let body = body.clone();
                    post_loop(&url, "/jobs", Arc::new(move || body.to_vec()), 2)
                }
            }),
        ),
    ];
    for (what, start) in &attacks {
        let attack = start();
        // Let the attack build up before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seen = neighbour(&gw.url, &mine, seconds, &seed).await;
        let attacker = attack.end().await;
        row(table, what, &seen, attacker);
        rss(table, what);
        // Let closed connections drain before the next attack.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if spin.is_some() {
        let body: Arc<dyn Fn() -> Vec<u8> + Send + Sync> =
            Arc::new(|| br#"{"workflowId":"looping","inputs":{"n":1},"cache":false}"#.to_vec());
        let attack = post_loop(&gw.url, "/jobs", body, 4);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seen = neighbour(&gw.url, &mine, seconds, &seed).await;
        let attacker = attack.end().await;
        row(table, "a looping plugin (4 at once)", &seen, attacker);
        rss(table, "a looping plugin");
    } else {
        println!("   (the looping plugin is skipped: run scripts/build-plugins first)");
    }
}
