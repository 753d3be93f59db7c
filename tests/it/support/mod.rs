//! Test support: launch the real binary as a gateway or as the ComfyUI simulator (on
//! 127.0.0.1 port 0, each reporting the address it bound through `--addr-file`; a cleared
//! environment and a temporary working directory; killed by PID on drop), the one gate for
//! external tools ([`require`]), the one polling helper ([`eventually`]), and small HTTP
//! helpers.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod receiver;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_comfyui-gateway");

/// How long [`eventually`] waits by default: generous, so a slow machine is not a failure;
/// a test that passes waits only as long as its condition takes.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How often [`eventually`] looks.
const POLL: Duration = Duration::from_millis(20);

/// The variables a spawned process keeps from the test's environment: what finding
/// programs, the tools' user installs, locale, temp files, diagnostics and coverage need.
/// Nothing else passes: no gateway setting a developer exported can reach a test.
pub const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "LLVM_PROFILE_FILE",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "NODE_PATH",
];

/// A command for `program` with a cleared environment (only [`INHERITED`] kept) run in
/// `cwd`, an empty directory of the test: neither an exported variable nor a `.env` in the
/// repository (dotenvy reads `.env` from the working directory) changes what it does.
pub fn command(program: impl AsRef<OsStr>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().current_dir(cwd);
    for var in INHERITED {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd
}

/// The binary under test as a one-shot [`command`], run in a fresh empty working
/// directory that lives as long as this value (use it as a `Command`).
pub fn bin() -> Bin {
    let cwd = tempdir();
    Bin { cmd: command(BIN, cwd.path()), _cwd: cwd }
}

/// See [`bin`].
pub struct Bin {
    cmd: Command,
    _cwd: tempfile::TempDir,
}

impl std::ops::Deref for Bin {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.cmd
    }
}

impl std::ops::DerefMut for Bin {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }
}

/// A fresh, empty working directory under `dir` for one spawned process.
pub fn work_dir(dir: &Path) -> PathBuf {
    let cwd = dir.join(format!("cwd-{}", rand_u32()));
    std::fs::create_dir_all(&cwd).expect("working directory");
    cwd
}

/// Whether this test process runs in CI: `CI` set, not empty, not `false` or `0`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The one gate for what a test needs from outside the repository (a program, a Python or
/// npm package, a browser): `found` is what the caller looked up, `None` when missing. In
/// CI ([`in_ci`]) a missing tool fails the test; locally the test is skipped (the caller
/// returns on `None`), saying so on stderr past the test harness's capture.
pub fn require<T>(what: &str, found: Option<T>) -> Option<T> {
    if found.is_some() {
        return found;
    }
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("a test");
    assert!(!in_ci(), "{test}: {what} is missing on CI; scripts/ci-deps installs it");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {what} not found; run scripts/ci-deps");
    None
}

/// [`require`] for a program on `PATH` (or at a path): where it is.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    require(name, which(name))
}

/// Where the program `name` is: `name` itself when it is a path to a file, else the first
/// match on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// [`require`] for Python modules: `python3` when it imports every one of `modules`.
pub fn require_python(modules: &[&str]) -> Option<PathBuf> {
    let found = which("python3").filter(|python| {
        let import = format!("import {}", modules.join(", "));
        Command::new(python).args(["-c", &import]).output().is_ok_and(|o| o.status.success())
    });
    require(&format!("python3 with {}", modules.join(", ")), found)
}

/// What a probe of [`eventually`] returns: done (`Some`/`Ok`) or the observation so far.
pub trait Probe {
    /// The value when done.
    type Done;
    /// Done, or the observation to report if the deadline passes.
    fn done(self) -> Result<Self::Done, String>;
}

impl<T> Probe for Option<T> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_string())
    }
}

impl<T, E: Debug> Probe for Result<T, E> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// What [`eventually`] waits for, for its panic message: a text, or a closure that
/// describes it when the deadline has passed (to include a process's log as it is then).
pub trait What {
    /// The description.
    fn what(&self) -> String;
}

impl What for &str {
    fn what(&self) -> String {
        self.to_string()
    }
}

impl What for String {
    fn what(&self) -> String {
        self.clone()
    }
}

impl<F: Fn() -> String> What for F {
    fn what(&self) -> String {
        self()
    }
}

/// Call `probe` every 20 ms until it is done (`Some`/`Ok`), for at most [`DEADLINE`];
/// then panic with `what` and the last observation.
pub async fn eventually<P: Probe>(what: impl What, probe: impl AsyncFnMut() -> P) -> P::Done {
    eventually_within(DEADLINE, what, probe).await
}

/// [`eventually`] with its own deadline (a bound the test asserts).
pub async fn eventually_within<P: Probe>(within: Duration, what: impl What, probe: impl AsyncFnMut() -> P) -> P::Done {
    match poll_within(within, probe).await {
        Ok(done) => done,
        Err(last) => panic!("not within {within:?}: {}\nlast observed: {last}", what.what()),
    }
}

/// The loop of [`eventually_within`], for a caller that must clean up before it fails:
/// the value, or the last observation once `within` has passed.
pub async fn poll_within<P: Probe>(within: Duration, mut probe: impl AsyncFnMut() -> P) -> Result<P::Done, String> {
    let start = Instant::now();
    loop {
        let last = match probe().await.done() {
            Ok(done) => return Ok(done),
            Err(last) => last,
        };
        if start.elapsed() >= within {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A port on 127.0.0.1 that refuses connections: bound (so nobody else gets it while this
/// lives) but not listening.
pub struct DeadPort {
    socket: tokio::net::TcpSocket,
    /// The port.
    pub port: u16,
}

impl DeadPort {
    /// Bind port 0 without listening.
    pub fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // As every tokio listener: connections it accepts once listening then do not keep
        // another server (one that takes its place on this port) from binding it.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind port 0");
        let port = socket.local_addr().expect("local address").port();
        DeadPort { socket, port }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start listening on it.
    pub fn listen(self) -> tokio::net::TcpListener {
        self.socket.listen(1024).expect("listen")
    }
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    child: Option<Child>,
    /// What it is, for messages.
    pub name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, args: &[String], envs: &[(String, String)], log: PathBuf) -> Proc {
        Proc::spawn_program(Path::new(BIN), name, dir, args, envs, log)
    }

    /// Run `program` (not necessarily the binary under test) through [`command`] in a fresh
    /// working directory under `dir`, with `envs`, output into `log`.
    pub fn spawn_program(
        program: &Path,
        name: &str,
        dir: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: PathBuf,
    ) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = command(program, &work_dir(dir));
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
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

    /// Wait until the process has written the address it listens on into `addr_file`
    /// (`--addr-file`); panics if it exits first.
    pub async fn wait_addr(&mut self, addr_file: &Path) -> SocketAddr {
        let what = format!("{} writes {}", self.name, addr_file.display());
        eventually(what.as_str(), async || {
            if let Some(addr) = std::fs::read_to_string(addr_file).ok().and_then(|s| s.trim().parse().ok()) {
                return Ok(addr);
            }
            assert!(!self.exited(), "{} exited early:\n{}", self.name, self.log());
            Err("no address yet")
        })
        .await
    }
}

impl Proc {
    /// Wait until the process has logged `marker` followed by the address it listens on
    /// (for programs without `--addr-file`); panics if it exits first.
    pub async fn wait_logged_addr(&mut self, marker: &str) -> SocketAddr {
        let what = format!("{} logs {marker:?} and its address", self.name);
        eventually(what.as_str(), async || {
            let log = self.log();
            let logged = log.split(marker).nth(1).and_then(|rest| {
                let token = rest.split_whitespace().next()?;
                token.trim_end_matches('/').parse::<SocketAddr>().ok()
            });
            if let Some(addr) = logged {
                return Ok(addr);
            }
            assert!(!self.exited(), "{} exited early:\n{log}", self.name);
            Err("no address logged yet")
        })
        .await
    }
}

impl Proc {
    /// Wait until the process exits on its own, or panic after `within` with its log.
    pub async fn wait_exit(&mut self, within: Duration) {
        let log = self.log.clone();
        let name = self.name.clone();
        let what = || format!("{name} exits on its own:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        eventually_within(within, what, async || self.exited().then_some(())).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
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
    addr_file: PathBuf,
}

impl Sim {
    /// Start a simulator with `node_delay_ms` per non-trivial node.
    pub async fn start(dir: &Path, node_delay_ms: u64) -> Sim {
        Sim::start_with(dir, &["--node-delay-ms".into(), node_delay_ms.to_string()]).await
    }

    /// Start with extra flags, on port 0; answers once it listens.
    pub async fn start_with(dir: &Path, extra: &[String]) -> Sim {
        let data_dir = dir.join("sim-data");
        let addr_file = dir.join(format!("sim-{}.addr", rand_u32()));
        let mut proc_ = Sim::spawn(dir, 0, &data_dir, &addr_file, extra);
        let port = proc_.wait_addr(&addr_file).await.port();
        Sim { proc_, port, data_dir, extra: extra.to_vec(), addr_file }
    }

    /// Start with extra flags on `port`, where a test's gateway expects its backend (a
    /// port a [`DeadPort`] or an in-process stand-in held until now): safe enough, for the
    /// reasons of [`Gateway::restart`].
    pub async fn start_on(dir: &Path, port: u16, extra: &[String]) -> Sim {
        let data_dir = dir.join("sim-data");
        let addr_file = dir.join(format!("sim-{}.addr", rand_u32()));
        let mut proc_ = Sim::spawn(dir, port, &data_dir, &addr_file, extra);
        let addr = proc_.wait_addr(&addr_file).await;
        assert_eq!(addr.port(), port, "started on the port asked for");
        Sim { proc_, port, data_dir, extra: extra.to_vec(), addr_file }
    }

    fn spawn(dir: &Path, port: u16, data_dir: &Path, addr_file: &Path, extra: &[String]) -> Proc {
        let _ = std::fs::remove_file(addr_file);
        let mut args = vec![
            "sim".to_string(),
            "--port".into(),
            port.to_string(),
            "--addr-file".into(),
            addr_file.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend_from_slice(extra);
        let log = dir.join(format!("sim-{}.log", rand_u32()));
        Proc::spawn("simulator", dir, &args, &[], log)
    }

    /// Kill -9 and start again on the same port and data dir (ComfyUI crash + restart).
    /// The same port, because the gateway under test has this URL configured: safe enough,
    /// for the reasons of [`Gateway::restart`].
    pub async fn restart(&mut self) {
        self.proc_.kill9();
        let dir = self.data_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.proc_ = Sim::spawn(&dir, self.port, &self.data_dir, &self.addr_file, &self.extra);
        let addr = self.proc_.wait_addr(&self.addr_file).await;
        assert_eq!(addr.port(), self.port, "restarted on its port");
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
    addr_file: PathBuf,
}

impl Gateway {
    /// Start `serve` on port 0 with a fresh database in `dir`, against `backends`, plus
    /// extra env; answers once it listens.
    pub async fn start(dir: &Path, backends: &str, extra_env: &[(&str, &str)]) -> Gateway {
        let db = dir.join("gateway.redb");
        let mut envs = vec![
            ("PORT".to_string(), "0".to_string()),
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
        let addr_file = dir.join(format!("gateway-{}.addr", rand_u32()));
        let proc_ = Gateway::spawn(dir, &envs, &addr_file);
        let mut gw = Gateway { proc_, port: 0, db, envs, dir: dir.to_path_buf(), addr_file };
        gw.wait_ready().await;
        // Restarts keep the port: see [`Gateway::restart`].
        gw.set_env("PORT", Some(&gw.port.to_string()));
        gw
    }

    fn spawn(dir: &Path, envs: &[(String, String)], addr_file: &Path) -> Proc {
        let _ = std::fs::remove_file(addr_file);
        let log = dir.join(format!("gateway-{}.log", rand_u32()));
        let args = ["serve".to_string(), "--addr-file".into(), addr_file.display().to_string()];
        Proc::spawn("gateway", dir, &args, envs, log)
    }

    /// Wait until the (re)started gateway listens and serves.
    pub async fn wait_ready(&mut self) {
        let addr = self.proc_.wait_addr(&self.addr_file).await;
        assert!(
            self.port == 0 || self.port == addr.port(),
            "restarted on port {} instead of {}",
            addr.port(),
            self.port
        );
        self.port = addr.port();
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
        self.proc_.wait_exit(within).await
    }

    /// Kill it (if running) and start it again without waiting for it to answer.
    pub fn respawn(&mut self) {
        self.proc_.kill9();
        self.proc_ = Gateway::spawn(&self.dir, &self.envs, &self.addr_file);
    }

    /// Start it again with the same database and port. The same port, because the test's
    /// clients and webhook URLs hold it. Safe enough: every server of the tests binds port
    /// 0, which the system picks from the whole ephemeral range (some 28 000 ports), so
    /// another test taking this one in the moment between kill and restart is very
    /// unlikely; the listener sets `SO_REUSEADDR`, so connections in TIME_WAIT do not block
    /// it; and if the port is taken anyway, the restart fails loudly (the process exits
    /// "address in use", [`Proc::wait_addr`] panics with its log), never silently.
    pub async fn restart(&mut self) {
        self.respawn();
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

    /// The `/metrics` text, asked with an API key (authentication on).
    pub async fn metrics_as(&self, key: &str) -> String {
        let r = reqwest::Client::new().get(format!("{}/metrics", self.url())).header("x-api-key", key).send().await;
        r.unwrap().text().await.unwrap()
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
        let what = || format!("job {id} finishes\n{}", self.proc_.log());
        eventually_within(within, what, async || {
            let v = self.job(id).await;
            if matches!(v["status"].as_str(), Some("succeeded" | "failed" | "canceled")) { Ok(v) } else { Err(v) }
        })
        .await
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
/// `GET url` with these headers (a failure to connect panics, naming the URL).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

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
