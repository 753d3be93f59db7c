//! Test support: launch the real binary as a gateway or as the ComfyUI simulator (on
//! 127.0.0.1, temp dirs, killed by PID on drop), and small HTTP helpers.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod receiver;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_comfyui-gateway");

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    child: Option<Child>,
    /// What it is, for messages.
    pub name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, args: &[String], envs: &[(String, String)], log: PathBuf) -> Proc {
        Proc::spawn_program(Path::new(BIN), name, args, envs, log)
    }

    /// Run `program` (not necessarily the binary under test) with the developer's
    /// gateway configuration removed from its environment, output into `log`.
    pub fn spawn_program(program: &Path, name: &str, args: &[String], envs: &[(String, String)], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // Tests must not inherit the developer's configuration.
        for var in [
            "PORT",
            "HOST",
            "COMFYUI_URL",
            "DATABASE_URL",
            "MAX_CONCURRENCY",
            "LOG_LEVEL",
            "LOG_FORMAT",
            "API_KEYS",
            "API_KEYS_FILE",
            "JWT_SECRET",
            "JWT_PUBLIC_KEY",
            "METRICS_PUBLIC",
            "STORAGE_PROVIDER",
            "S3_ENDPOINT",
            "S3_BUCKET",
            "S3_ACCESS_KEY",
            "S3_SECRET_KEY",
            "S3_REGION",
            "S3_PREFIX",
            "S3_PRESIGN_TTL_SECONDS",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child: Some(child), name: name.to_string(), log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Wait until `url` answers any HTTP status.
pub async fn wait_http(url: &str, proc_: &mut Proc, within: Duration) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if client.get(url).timeout(Duration::from_secs(2)).send().await.is_ok() {
            return;
        }
        assert!(!proc_.exited(), "{} exited early:\n{}", proc_.name, proc_.log());
        assert!(start.elapsed() < within, "{} did not answer {url} within {within:?}:\n{}", proc_.name, proc_.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The simulator as a process.
pub struct Sim {
    /// The process.
    pub proc_: Proc,
    /// Its port.
    pub port: u16,
    /// Its data dir.
    pub data_dir: PathBuf,
    extra: Vec<String>,
}

impl Sim {
    /// Start a simulator on a free port with `node_delay_ms` per non-trivial node.
    pub async fn start(dir: &Path, node_delay_ms: u64) -> Sim {
        Sim::start_on(dir, free_port(), &["--node-delay-ms".into(), node_delay_ms.to_string()]).await
    }

    /// Start on a given port with extra flags.
    pub async fn start_on(dir: &Path, port: u16, extra: &[String]) -> Sim {
        let data_dir = dir.join("sim-data");
        let proc_ = Sim::spawn(dir, port, &data_dir, extra);
        let mut sim = Sim { proc_, port, data_dir, extra: extra.to_vec() };
        let url = format!("{}/system_stats", sim.url());
        wait_http(&url, &mut sim.proc_, Duration::from_secs(20)).await;
        sim
    }

    fn spawn(dir: &Path, port: u16, data_dir: &Path, extra: &[String]) -> Proc {
        let mut args = vec![
            "sim".to_string(),
            "--port".into(),
            port.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend_from_slice(extra);
        let log = dir.join(format!("sim-{port}-{}.log", std::process::id() ^ rand_u32()));
        Proc::spawn("simulator", &args, &[], log)
    }

    /// Kill -9 and start again on the same port and data dir (ComfyUI crash + restart).
    pub async fn restart(&mut self) {
        self.proc_.kill9();
        let dir = self.data_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.proc_ = Sim::spawn(&dir, self.port, &self.data_dir, &self.extra);
        let url = format!("{}/system_stats", self.url());
        wait_http(&url, &mut self.proc_, Duration::from_secs(20)).await;
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET /sim/executions`.
    pub async fn executions(&self) -> Value {
        get_json(&format!("{}/sim/executions", self.url())).await.1
    }

    /// `POST /sim/faults`.
    pub async fn faults(&self, body: Value) {
        let r = reqwest::Client::new().post(format!("{}/sim/faults", self.url())).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "sim faults: {}", r.status());
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// The gateway as a process.
pub struct Gateway {
    /// The process.
    pub proc_: Proc,
    /// Its port.
    pub port: u16,
    /// The database file.
    pub db: PathBuf,
    envs: Vec<(String, String)>,
    dir: PathBuf,
}

impl Gateway {
    /// Start `serve` with a fresh database in `dir`, against `backends`, plus extra env.
    pub async fn start(dir: &Path, backends: &str, extra_env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let db = dir.join("gateway.redb");
        let mut envs = vec![
            ("PORT".to_string(), port.to_string()),
            ("HOST".into(), "127.0.0.1".into()),
            ("COMFYUI_URL".into(), backends.to_string()),
            ("DATABASE_URL".into(), db.display().to_string()),
            ("POLL_INTERVAL_MS".into(), "100".into()),
            ("LOG_LEVEL".into(), "info".into()),
        ];
        for (k, v) in extra_env {
            envs.retain(|(ek, _)| ek != k);
            envs.push((k.to_string(), v.to_string()));
        }
        let proc_ = Gateway::spawn(dir, &envs);
        let mut gw = Gateway { proc_, port, db, envs, dir: dir.to_path_buf() };
        gw.wait_ready().await;
        gw
    }

    fn spawn(dir: &Path, envs: &[(String, String)]) -> Proc {
        let log = dir.join(format!("gateway-{}.log", rand_u32()));
        Proc::spawn("gateway", &["serve".to_string()], envs, log)
    }

    async fn wait_ready(&mut self) {
        let url = format!("{}/health", self.url());
        wait_http(&url, &mut self.proc_, Duration::from_secs(20)).await;
    }

    /// Kill -9 the gateway.
    pub fn kill9(&mut self) {
        self.proc_.kill9();
    }

    /// Set (or, with `None`, remove) an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.envs.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.envs.push((key.to_string(), v.to_string()));
        }
    }

    /// Wait until the process exits on its own (a crash point), or panic after `within`.
    pub async fn wait_exit(&mut self, within: Duration) {
        let start = Instant::now();
        while !self.proc_.exited() {
            assert!(start.elapsed() < within, "the gateway did not exit within {within:?}:\n{}", self.proc_.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kill it (if running) and start it again without waiting for it to answer.
    pub fn respawn(&mut self) {
        self.proc_.kill9();
        self.proc_ = Gateway::spawn(&self.dir, &self.envs);
    }

    /// Start it again with the same database and port.
    pub async fn restart(&mut self) {
        self.proc_.kill9();
        self.proc_ = Gateway::spawn(&self.dir, &self.envs);
        self.wait_ready().await;
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `POST /jobs`: the status and body.
    pub async fn submit(&self, body: Value) -> (u16, Value) {
        post_json(&format!("{}/jobs", self.url()), &body).await
    }

    /// `POST /jobs` that must be accepted: the job id.
    pub async fn submit_ok(&self, body: Value) -> String {
        let (status, v) = self.submit(body).await;
        assert_eq!(status, 202, "submit: {v}");
        v["jobId"].as_str().expect("jobId").to_string()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url())).await.unwrap().text().await.unwrap()
    }

    /// One sample of `/metrics` (see [`sample`]).
    pub async fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics().await, series)
    }

    /// `GET /jobs/:id`.
    pub async fn job(&self, id: &str) -> Value {
        let (status, v) = get_json(&format!("{}/jobs/{id}", self.url())).await;
        assert_eq!(status, 200, "job {id}: {v}");
        v
    }

    /// Poll until the job is terminal (or panic after `within`).
    pub async fn wait_terminal(&self, id: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.job(id).await;
            if matches!(v["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                return v;
            }
            assert!(start.elapsed() < within, "job {id} not finished within {within:?}: {v}\n{}", self.proc_.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Register the workflow `invert`: LoadImage → ImageInvert → SaveImage, one image input
/// (so its jobs upload an input).
pub async fn register_invert(gw: &Gateway) {
    let body = serde_json::json!({
        "id": "invert",
        "workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}
        },
        "inputSchema": {
            "type": "object",
            "properties": {"image": {"type": "string", "format": "image"}},
            "required": ["image"],
            "additionalProperties": false
        }
    });
    let (status, v) = post_json(&format!("{}/workflows", gw.url()), &body).await;
    assert_eq!(status, 201, "{v}");
}

/// A job of the `invert` workflow ([`register_invert`]) on an 8×8 RGB PNG given as a data
/// URI, its pixels varied by `seed`.
pub fn invert_job(seed: u8) -> serde_json::Value {
    use base64::Engine as _;
    let pixels: Vec<u8> = (0..8 * 8 * 3).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, 8, 8);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
    }
    let uri = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&png_bytes));
    serde_json::json!({"workflowId": "invert", "inputs": {"image": uri}})
}

/// The value of `series` (name with its labels, as printed) in a Prometheus text; 0 when
/// absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// GET, returning status and JSON (Null if not JSON).
pub async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::Client::new().get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// POST JSON, returning status and JSON.
pub async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// POST raw bytes with a content type, returning status and JSON.
pub async fn post_raw(url: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A temp dir for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("cgw-it-").tempdir().expect("tempdir")
}

/// The executions record of the simulator as `(promptId, count)` in arrival order.
pub fn executions(v: &Value) -> Vec<(String, u64)> {
    v["executions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["promptId"].as_str().unwrap_or("").to_string(), e["count"].as_u64().unwrap_or(0)))
        .collect()
}
