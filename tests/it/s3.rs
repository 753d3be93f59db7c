//! `STORAGE_PROVIDER=s3` against a real S3-compatible server: `s3s-fs` (crates.io; installed
//! by `scripts/ci-deps` into `<target dir>/tools/bin`, or named by `S3S_FS`), on port 0 with a temp dir, the
//! real gateway binary and the simulator. Objects are checked as files of s3s-fs's root
//! (`<root>/<bucket>/<key>`). Without s3s-fs the tests are skipped, saying so, except on
//! CI, where they fail ([`support::require`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{self, DeadPort, Gateway, Proc, Sim, eventually_within, get_json, register_invert};

const BUCKET: &str = "outputs";
const ACCESS_KEY: &str = "gateway-test";
const SECRET_KEY: &str = "gateway-test-secret";
const BOUND: Duration = Duration::from_secs(30);

/// Where s3s-fs is: `$S3S_FS`, `<target dir>/tools/bin/s3s-fs`, or on `PATH`.
fn s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS") {
        // An explicit choice: that file or nothing (`S3S_FS=none` tests the skip).
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let target = Path::new(support::BIN).parent()?.parent()?;
    let beside = target.join("tools/bin/s3s-fs");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

/// s3s-fs, through the tool gate ([`support::require`]).
fn s3s_or_skip() -> Option<PathBuf> {
    support::require("s3s-fs", s3s_fs())
}

/// An s3s-fs server with one bucket.
struct S3 {
    proc_: Proc,
    program: PathBuf,
    port: u16,
    root: PathBuf,
}

impl S3 {
    /// Start on `port`; 0 lets the system choose (read back from s3s-fs's log).
    async fn start(program: PathBuf, dir: &Path, port: u16) -> S3 {
        let root = dir.join("s3-root");
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let proc_ = S3::spawn(&program, dir, &root, port);
        let mut s3 = S3 { proc_, program, port, root };
        s3.wait_ready().await;
        s3
    }

    fn spawn(program: &Path, dir: &Path, root: &Path, port: u16) -> Proc {
        let args: Vec<String> = [
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
            &root.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = dir.join(format!("s3s-{port}-{}.log", uuid::Uuid::new_v4()));
        // s3s-fs logs the address it listens on at `info`, which it shows only when asked.
        Proc::spawn_program(program, "s3s-fs", dir, &args, &[("RUST_LOG".into(), "info".into())], log)
    }

    /// Wait until it logs the address it listens on: its port, when it was started on 0.
    async fn wait_ready(&mut self) {
        let addr = self.proc_.wait_logged_addr("server is running at http://").await;
        assert!(self.port == 0 || self.port == addr.port(), "s3s-fs on {addr}, not on {}", self.port);
        self.port = addr.port();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        self.proc_.kill9();
    }

    /// Kill -9 and start again on the same port (the gateway's `S3_ENDPOINT`): safe
    /// enough, for the reasons of [`support::Gateway::restart`].
    async fn restart(&mut self) {
        self.proc_.kill9();
        let dir = self.root.parent().unwrap().to_path_buf();
        self.proc_ = S3::spawn(&self.program, &dir, &self.root, self.port);
        self.wait_ready().await;
    }

    /// The object of a blob, as a file of s3s-fs's root.
    fn object(&self, hash: &str) -> PathBuf {
        self.root.join(BUCKET).join("blobs").join(hash)
    }

    /// Every object under `blobs/`.
    fn n_objects(&self) -> usize {
        std::fs::read_dir(self.root.join(BUCKET).join("blobs")).map(|d| d.count()).unwrap_or(0)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STORAGE_PROVIDER", "s3".to_string()),
            ("S3_ENDPOINT", self.url()),
            ("S3_BUCKET", BUCKET.to_string()),
            ("S3_ACCESS_KEY", ACCESS_KEY.to_string()),
            ("S3_SECRET_KEY", SECRET_KEY.to_string()),
            ("S3_REGION", "us-east-1".to_string()),
        ]
    }
}

async fn start_gateway(dir: &Path, sim: &Sim, s3: &S3, extra: &[(&str, &str)]) -> Gateway {
    let env = s3.env();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    Gateway::start(dir, &sim.url(), &all).await
}

fn icon(seed: u64, cache: bool) -> Value {
    json!({"workflowId": "icon_512", "inputs": {"prompt": "a bucket", "seed": seed}, "cache": cache})
}

async fn run(gw: &Gateway, body: Value) -> Value {
    let (status, v) = gw.submit(body).await;
    assert!(status == 202 || status == 200, "submit: {status} {v}");
    let job = gw.wait_terminal(v["jobId"].as_str().unwrap(), BOUND).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_inputs_live_in_the_bucket_by_hash_and_download_every_way() {
    let Some(program) = s3s_or_skip() else {
        return;
    };
    let dir = support::tempdir();
    let s3 = S3::start(program, dir.path(), 0).await;
    let sim = Sim::start(dir.path(), 0).await;
    let mut gw = start_gateway(dir.path(), &sim, &s3, &[]).await;
    let (_, caps) = get_json(&format!("{}/capabilities", gw.url())).await;
    assert_eq!(caps["storageProvider"], "s3");

    // The output is an object named by its hash, with the bytes the gateway serves.
    let job = run(&gw, icon(1, true)).await;
    let out = &job["outputs"][0];
    let hash = out["hash"].as_str().unwrap().to_string();
    let url = format!("{}{}", gw.url(), out["url"].as_str().unwrap());
    let object = std::fs::read(s3.object(&hash)).expect("the output is an object of the bucket");
    assert_eq!(blake3::hash(&object).to_hex().as_str(), hash);
    assert_eq!(s3.n_objects(), 1);

    // Whole, ETag, 304, Range, HEAD, ?format=base64, ?include=base64.
    let client = reqwest::Client::new();
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{hash}\""));
    assert_eq!(r.bytes().await.unwrap(), object);
    let r = client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 304);
    let r = client.get(&url).header("range", "bytes=10-1033").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 10-1033/{}", object.len()).as_str());
    assert_eq!(r.bytes().await.unwrap(), object[10..1034]);
    let r = client.get(&url).header("range", "bytes=-7").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), object[object.len() - 7..]);
    let r = client.head(&url).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], object.len().to_string().as_str());
    let (status, b64) = get_json(&format!("{url}?format=base64")).await;
    assert_eq!(status, 200);
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64["data"].as_str().unwrap()).unwrap(), object);
    let job_id = job["jobId"].as_str().unwrap().to_string();
    let (_, inlined) = get_json(&format!("{}/jobs/{job_id}?include=base64", gw.url())).await;
    let data = inlined["outputs"][0]["base64"].as_str().unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(data).unwrap(), object);

    // Identical outputs of another job are stored once; a cache hit shares the object.
    let again = run(&gw, icon(1, false)).await;
    assert_eq!(again["outputs"][0]["hash"], hash.as_str());
    assert_eq!(again["cached"], false);
    let hit = run(&gw, icon(1, true)).await;
    assert_eq!((hit["cached"].as_bool(), hit["outputs"][0]["hash"].as_str()), (Some(true), Some(hash.as_str())));
    assert_eq!(s3.n_objects(), 1, "one object for three jobs naming the same content");

    // An image input is an object too, and the runner uploads it to ComfyUI from there.
    register_invert(&gw).await;
    let inverted = run(&gw, support::invert_job(0)).await;
    assert_eq!(s3.n_objects(), 3, "the input and the inverted output");
    let inverted_hash = inverted["outputs"][0]["hash"].as_str().unwrap().to_string();
    assert!(s3.object(&inverted_hash).is_file());

    // A restart keeps everything; with S3_PRESIGN_TTL_SECONDS downloads redirect to a
    // presigned URL of the object, which s3s-fs serves with the same bytes.
    gw.set_env("S3_PRESIGN_TTL_SECONDS", Some("120"));
    gw.restart().await;
    let r = no_redirects().get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{}/{BUCKET}/blobs/{hash}?", s3.url())), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let presigned = reqwest::get(&location).await.unwrap();
    assert_eq!(presigned.status().as_u16(), 200);
    assert_eq!(presigned.bytes().await.unwrap(), object);
    let r = client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 304, "a cached copy is still good without a trip to the bucket");
    let (status, b64) = get_json(&format!("{url}?format=base64")).await;
    assert_eq!((status, b64["hash"].as_str()), (200, Some(hash.as_str())));

    // The bytes are not in redb: the rows say remote, without chunks; `check` is happy.
    gw.kill9();
    let store = comfyui_gateway::store::Store::open(&gw.db).unwrap();
    let h: [u8; 32] = blake3::Hash::from_hex(&hash).unwrap().into();
    let meta = store.blob_meta(&h).unwrap().unwrap();
    // Three jobs and the cache entry name it.
    assert!(meta.remote && meta.n_chunks == 0 && meta.n_refs == 4, "{meta:?}");
    store.verify_integrity().unwrap();
    drop(store);
    let out = support::bin().args(["check", "--json", "--database-url"]).arg(&gw.db).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["ok"].as_bool(), report["blobs"].as_u64()), (Some(true), Some(3)), "{report}");

    // `check --objects` also finds every object in the bucket, and names one that is gone.
    let check_objects = || {
        let mut cmd = support::bin();
        cmd.args(["check", "--json", "--objects", "--database-url"]).arg(&gw.db);
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, report, _) = check_objects();
    assert_eq!(
        (
            code,
            report["objectsChecked"].as_u64(),
            report["objectsMissing"].as_u64(),
            report["objectsOrphaned"].as_u64()
        ),
        (Some(0), Some(3), Some(0), Some(0)),
        "{report}"
    );
    std::fs::remove_file(s3.object(&inverted_hash)).unwrap();
    let (code, report, stderr) = check_objects();
    assert_eq!((code, report["ok"].as_bool(), report["objectsMissing"].as_u64()), (Some(1), Some(false), Some(1)));
    assert!(stderr.contains(&format!("missing object: blobs/{inverted_hash}")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_goes_with_the_last_job_naming_it_and_not_before() {
    let Some(program) = s3s_or_skip() else { return };
    let dir = support::tempdir();
    let s3 = S3::start(program, dir.path(), 0).await;
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("JOB_RETENTION_SECONDS", "2"), ("PRUNE_INTERVAL_MS", "100"), ("CACHE_ENABLED", "false")];
    let gw = start_gateway(dir.path(), &sim, &s3, &env).await;
    let first = run(&gw, icon(7, false)).await;
    let hash = first["outputs"][0]["hash"].as_str().unwrap().to_string();
    // Not synchronisation: the two jobs' ages must differ, so retention prunes them apart.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = run(&gw, icon(7, false)).await;
    assert_eq!(second["outputs"][0]["hash"], hash.as_str());
    let (first_id, second_id) = (first["jobId"].as_str().unwrap(), second["jobId"].as_str().unwrap());

    // The first job is pruned; the object stays while the second names it.
    let pruned = async |id: &str| {
        let what = format!("job {id} is pruned");
        eventually_within(BOUND, what, async || {
            let (status, v) = get_json(&format!("{}/jobs/{id}", gw.url())).await;
            if status == 404 { Ok(()) } else { Err(v) }
        })
        .await
    };
    pruned(first_id).await;
    let object_there = s3.object(&hash).is_file();
    let (status, _) = get_json(&format!("{}/jobs/{second_id}", gw.url())).await;
    if status == 200 {
        assert!(object_there, "the object was deleted while job {second_id} still named it");
    }

    // The last job goes: its object goes too, after the commit.
    pruned(second_id).await;
    eventually_within(BOUND, "the object of a blob nothing names is deleted", async || {
        let pending = gw.metric("comfyui_gateway_object_deletes_pending").await;
        let there = s3.object(&hash).exists();
        if !there && pending == 0.0 { Ok(()) } else { Err((there, pending)) }
    })
    .await;
    assert_eq!(s3.n_objects(), 0);
    assert_eq!(gw.metric("comfyui_gateway_blobs").await, 0.0);

    // The same content again: uploaded again, downloadable.
    let third = run(&gw, icon(7, false)).await;
    assert_eq!(third["outputs"][0]["hash"], hash.as_str());
    assert!(s3.object(&hash).is_file());
    let url = format!("{}{}", gw.url(), third["outputs"][0]["url"].as_str().unwrap());
    let bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_is_down_fails_the_start_and_downloads_cleanly() {
    let Some(program) = s3s_or_skip() else { return };
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let endpoint = DeadPort::new();

    // Nothing listens at S3_ENDPOINT: the gateway does not start, and says why in one line.
    let env = [
        ("PORT", "0".to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("COMFYUI_URL", sim.url()),
        ("DATABASE_URL", dir.path().join("down.redb").display().to_string()),
        ("STORAGE_PROVIDER", "s3".to_string()),
        ("S3_ENDPOINT", endpoint.url()),
        ("S3_BUCKET", BUCKET.to_string()),
        ("S3_ACCESS_KEY", ACCESS_KEY.to_string()),
        ("S3_SECRET_KEY", SECRET_KEY.to_string()),
    ];
    let envs: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut down = Proc::spawn_program(
        Path::new(support::BIN),
        "gateway",
        dir.path(),
        &["serve".to_string()],
        &envs,
        dir.path().join("down.log"),
    );
    down.wait_exit(BOUND).await;
    let log = down.log();
    assert!(log.contains("S3_ENDPOINT") && log.contains("not reachable"), "{log}");
    // A missing setting is named too.
    let mut missing = envs.clone();
    missing.retain(|(k, _)| k != "S3_BUCKET");
    let mut bad = Proc::spawn_program(
        Path::new(support::BIN),
        "gateway",
        dir.path(),
        &["serve".to_string()],
        &missing,
        dir.path().join("bad.log"),
    );
    bad.wait_exit(BOUND).await;
    assert!(bad.log().contains("S3_BUCKET: must be set"), "{}", bad.log());

    // Up at start, down later: downloads answer 503 STORAGE_UNAVAILABLE, never a panic.
    // On the endpoint the refused starts were given (see `support::Gateway::restart`).
    let port = endpoint.port;
    drop(endpoint);
    let mut s3 = S3::start(program, dir.path(), port).await;
    let gw = start_gateway(dir.path(), &sim, &s3, &[]).await;
    let job = run(&gw, icon(3, true)).await;
    let url = format!("{}{}", gw.url(), job["outputs"][0]["url"].as_str().unwrap());
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200);
    s3.stop();
    for (what, u) in [
        ("raw", url.clone()),
        ("range", url.clone()),
        ("base64", format!("{url}?format=base64")),
        ("inline", format!("{}/jobs/{}?include=base64", gw.url(), job["jobId"].as_str().unwrap())),
    ] {
        let mut req = reqwest::Client::new().get(&u);
        if what == "range" {
            req = req.header("range", "bytes=0-99");
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 503, "{what}: {body}");
        assert_eq!(body["error"]["code"], "STORAGE_UNAVAILABLE", "{what}: {body}");
        assert_eq!(body["error"]["retryable"], true, "{what}: {body}");
    }
    // A submit whose input image cannot be uploaded is refused the same way (nothing stored).
    register_invert(&gw).await;
    let (status, body) = gw.submit(support::invert_job(0)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("STORAGE_UNAVAILABLE")), "{body}");
    assert_eq!(get_json(&format!("{}/health", gw.url())).await.0, 200, "the gateway itself is fine");

    // A job that finishes while the bucket is down waits (its success commit is retried in
    // place) and succeeds once the bucket is back; so do the downloads.
    let waiting = gw.submit_ok(icon(4, true)).await;
    let logged = async |line: &str| {
        let what = || format!("the gateway logs {line:?}:\n{}", gw.proc_.log());
        eventually_within(BOUND, what, async || gw.proc_.log().contains(line).then_some(())).await
    };
    logged("the object storage refused the job's blobs").await;
    assert_eq!(gw.job(&waiting).await["status"], "running", "nothing is committed without its objects");
    s3.restart().await;
    let done = gw.wait_terminal(&waiting, BOUND).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(s3.object(done["outputs"][0]["hash"].as_str().unwrap()).is_file());
    let bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), job["outputs"][0]["hash"].as_str().unwrap());

    // An input image stored while the bucket was up, read at dispatch while it is down:
    // the runner tries again, and the job runs once the bucket is back.
    let mut sim = sim;
    sim.proc_.kill9();
    let queued = gw.submit_ok(support::invert_job(0)).await;
    s3.stop();
    sim.restart().await;
    logged("cannot read an input image from the object storage; trying again").await;
    s3.restart().await;
    let done = gw.wait_terminal(&queued, BOUND).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

/// A crash between an object's upload and the commit that references it (the failpoint
/// `store-object-uploaded`) leaves at most an orphan object: a submit's input image that
/// was never acknowledged, or the outputs of a job that is collected again after the
/// restart (ComfyUI ran it once) and then references the same object.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_upload_and_commit_leaves_at_most_an_orphan_object() {
    let Some(program) = s3s_or_skip() else {
        return;
    };
    let dir = support::tempdir();
    let s3 = S3::start(program, dir.path(), 0).await;
    let sim = Sim::start(dir.path(), 10).await;
    let mut gw = start_gateway(dir.path(), &sim, &s3, &[]).await;
    register_invert(&gw).await;
    let check = |db: &Path| -> Value {
        let mut cmd = support::bin();
        cmd.args(["check", "--json", "--objects", "--database-url"]).arg(db);
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap()
    };

    // A submit with an image: the input is uploaded, the gateway dies before the commit.
    gw.set_env("FAILPOINTS", Some("store-object-uploaded=return"));
    gw.restart().await;
    let submit = reqwest::Client::new().post(format!("{}/jobs", gw.url())).json(&support::invert_job(0)).send().await;
    assert!(submit.is_err() || !submit.unwrap().status().is_success(), "never acknowledged");
    gw.wait_exit(BOUND).await;
    assert!(gw.proc_.log().contains("failpoint store-object-uploaded: crashing"), "{}", gw.proc_.log());
    assert_eq!(s3.n_objects(), 1, "the orphan input object");
    let report = check(&gw.db);
    assert_eq!((report["ok"].as_bool(), report["blobs"].as_u64()), (Some(true), Some(0)), "{report}");
    assert_eq!(report["objectsOrphaned"], 1, "{report}");

    // A job's outputs: uploaded, then the crash; after the restart the job is collected
    // again from ComfyUI's history and its success references the object.
    gw.restart().await;
    let id = gw.submit_ok(icon(9, true)).await;
    gw.wait_exit(BOUND).await;
    let orphans = s3.n_objects();
    assert_eq!(orphans, 2, "the input and the output, neither referenced");
    gw.set_env("FAILPOINTS", None);
    gw.restart().await;
    let done = gw.wait_terminal(&id, BOUND).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", gw.proc_.log());
    assert_eq!(support::executions(&sim.executions().await), vec![(id.clone(), 1)], "ComfyUI ran it once");
    let hash = done["outputs"][0]["hash"].as_str().unwrap();
    assert!(s3.object(hash).is_file());
    assert_eq!(s3.n_objects(), 2, "the output object is the one uploaded before the crash");
    let bytes = reqwest::get(format!("{}{}", gw.url(), done["outputs"][0]["url"].as_str().unwrap()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hash);
    gw.kill9();
    let report = check(&gw.db);
    assert_eq!((report["ok"].as_bool(), report["blobs"].as_u64()), (Some(true), Some(1)), "{report}");
    assert_eq!((report["objectsMissing"].as_u64(), report["objectsOrphaned"].as_u64()), (Some(0), Some(1)), "{report}");
}

/// Churn on one content: jobs with the same output finish and are pruned (retention 1 s)
/// over and over, so the object is deleted and uploaded again while deletions are pending.
/// Whenever a job exists its output downloads with the right bytes (never a 5xx), and at
/// the end every blob row has its object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_racing_deletions_never_lose_a_referenced_object() {
    let Some(program) = s3s_or_skip() else { return };
    let dir = support::tempdir();
    let s3 = S3::start(program, dir.path(), 0).await;
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("JOB_RETENTION_SECONDS", "1"), ("PRUNE_INTERVAL_MS", "20"), ("CACHE_ENABLED", "false")];
    let mut gw = start_gateway(dir.path(), &sim, &s3, &env).await;
    let url = gw.url();
    let worker = |lane: u64| {
        let url = url.clone();
        async move {
            let client = reqwest::Client::new();
            let (mut served, mut reuploads) = (0, 0);
            for i in 0..12u64 {
                let r = client.post(format!("{url}/jobs")).json(&icon(21, false)).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 202);
                let id = r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string();
                let job = eventually_within(BOUND, format!("job {id} succeeds or is pruned"), async || {
                    let (status, v) = get_json(&format!("{url}/jobs/{id}")).await;
                    if status == 404 {
                        return Ok(None); // finished and pruned already
                    }
                    if v["status"] == "succeeded" {
                        return Ok(Some(v));
                    }
                    assert!(v["status"] == "queued" || v["status"] == "running", "{v}");
                    Err(v)
                })
                .await;
                if let Some(job) = job {
                    let out = &job["outputs"][0];
                    let r = client.get(format!("{url}{}", out["url"].as_str().unwrap())).send().await.unwrap();
                    match r.status().as_u16() {
                        200 => {
                            let bytes = r.bytes().await.unwrap();
                            assert_eq!(blake3::hash(&bytes).to_hex().as_str(), out["hash"].as_str().unwrap());
                            served += 1;
                        }
                        404 => {} // pruned between the two requests
                        other => panic!("job {id}: download answered {other}: {}", r.text().await.unwrap_or_default()),
                    }
                }
                // Both lanes pause together around the retention period: after a long pause
                // the last job naming the content is pruned (its object's deletion pending or
                // done) before the next upload; after one of about the period, the prune and
                // the next upload race.
                let pause_ms = [0u64, 1500, 1000, 300, 1020 + lane, 1500][(i % 6) as usize];
                if pause_ms > 1000 {
                    reuploads += 1;
                }
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            (served, reuploads)
        }
    };
    let (a, b) = tokio::join!(worker(0), worker(7));
    assert!(a.0 + b.0 >= 12, "most downloads were served: {a:?} {b:?}");
    // Every job goes, and so does the object, once nothing names it.
    eventually_within(BOUND, "the blob and its object go with the last job", async || {
        let (blobs, objects) = (gw.metric("comfyui_gateway_blobs").await, s3.n_objects());
        if blobs == 0.0 && objects == 0 { Ok(()) } else { Err((blobs, objects)) }
    })
    .await;
    let n_reaped = gw.proc_.log().matches("deleted the objects of unreferenced blobs").count();
    eprintln!("reaper passes that deleted: {n_reaped}; uploads after a gap: {a:?} {b:?}");
    assert!(n_reaped >= 2, "the content was deleted and uploaded again (and at the end): {n_reaped}");
    // And it comes back for a new job.
    let job = run(&gw, icon(21, false)).await;
    assert!(s3.object(job["outputs"][0]["hash"].as_str().unwrap()).is_file());
    gw.kill9();
    let mut cmd = support::bin();
    cmd.args(["check", "--json", "--objects", "--database-url"]).arg(&gw.db);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let report: Value = serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap();
    assert_eq!((report["ok"].as_bool(), report["objectsMissing"].as_u64()), (Some(true), Some(0)), "{report}");
}

/// The dashboard with presigned downloads: the gateway answers a download with a 307 to
/// the bucket, which the page may not read (its CSP allows its own origin only), so it
/// falls back to `?format=base64`; thumbnail and download still show the output's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_presigned_outputs() {
    let Some(program) = s3s_or_skip() else { return };
    let Some((chromium, script)) = crate::dashboard::browser_tools() else { return };
    let dir = support::tempdir();
    let s3 = S3::start(program, dir.path(), 0).await;
    let sim = Sim::start(dir.path(), 0).await;
    let key = "presigned-user-key-1";
    let keys = format!("{key}:user");
    let gw = start_gateway(dir.path(), &sim, &s3, &[("S3_PRESIGN_TTL_SECONDS", "300"), ("API_KEYS", &keys)]).await;
    let client = reqwest::Client::new();
    let r = client.post(format!("{}/jobs?wait=30", gw.url())).header("x-api-key", key).json(&icon(7, false));
    let job: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    let out = &job["outputs"][0];
    let url = format!("{}{}", gw.url(), out["url"].as_str().unwrap());
    let r = no_redirects().get(&url).header("x-api-key", key).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 307, "downloads are redirected to the bucket");

    let id = job["jobId"].as_str().unwrap();
    let envs = [
        ("SCENARIO", std::ffi::OsStr::new("presigned")),
        ("USER_KEY", std::ffi::OsStr::new(key)),
        ("JOB_ID", std::ffi::OsStr::new(id)),
    ];
    let seen = crate::dashboard::run_browser(&chromium, &script, &gw, &envs).await;
    assert_eq!(seen["job"], id);
    assert_eq!(seen["downloadName"], out["name"]);
    let saved = std::fs::read(seen["downloadPath"].as_str().unwrap()).unwrap();
    assert_eq!(blake3::hash(&saved).to_hex().as_str(), out["hash"].as_str().unwrap());
}
