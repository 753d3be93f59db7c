//! The web dashboard: its files over HTTP (public, typed, cached by ETag, under a strict
//! Content-Security-Policy), and the page itself in a real headless browser
//! (`tests/browser/dashboard.mjs`: Debian's chromium driven by playwright-core, both
//! installed by `scripts/ci-deps`): signing in with a key, a job submitted from the form
//! generated from a workflow's schema (a field error shown next to its field, an image
//! input by file picker), followed live to `succeeded` with its thumbnail, a failed job's
//! error shown, an output downloaded, another user's key (and a user's JWT) seeing none of
//! those jobs, and an admin importing an SDXL export from ComfyUI, registering the proposal
//! and running it. Screenshots are saved under `<target>/tmp/dashboard/` for a person to
//! look at.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, get};

const ADMIN_KEY: &str = "dash-admin-key-01";
const USER_KEY: &str = "dash-alice-key-01";
const OTHER_KEY: &str = "dash-bob-key-0001";
const JWT_SECRET: &str = "a-dashboard-test-secret-of-32-bytes-or-more";

/// An HS256 token of the user `carol`, valid for 10 minutes.
fn carol_token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": "carol", "role": "user", "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_files_are_public_typed_and_revalidated() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let keys = format!("{ADMIN_KEY}:admin,{USER_KEY}:user");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &keys)]).await;

    // No credentials needed for the files: they hold no data.
    let page = get(&format!("{}/", gw.url()), &[]).await;
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("/ui/common.js") && html.contains("/ui/app.js") && html.contains("/ui/style.css"));
    for (file, media_type) in [
        ("common.js", "text/javascript"),
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let url = format!("{}/ui/{file}", gw.url());
        let r = get(&url, &[]).await;
        assert_eq!(r.status(), 200, "{file}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(media_type), "{file}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert!(!r.bytes().await.unwrap().is_empty());
        let again = get(&url, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), 304, "{file} revalidates");
        let head = reqwest::Client::new().head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200);
    }
    let missing = get(&format!("{}/ui/secrets.json", gw.url()), &[]).await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    // The API behind it still needs the key, and other unknown paths stay closed.
    assert_eq!(get(&format!("{}/jobs", gw.url()), &[]).await.status(), 401);
    assert_eq!(get(&format!("{}/ui", gw.url()), &[]).await.status(), 401);
    let post = reqwest::Client::new().post(format!("{}/", gw.url())).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

/// The browser and playwright-core, through the tool gate ([`support::require`]).
pub(crate) fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let script = root.join("tests/browser/dashboard.mjs");
    let ready = chromium.exists()
        && root.join("tests/browser/node_modules/playwright-core").is_dir()
        && support::which("node").is_some();
    support::require(
        "chromium, node and tests/browser/node_modules (playwright-core)",
        ready.then_some((chromium, script)),
    )
}

/// Where the browser script saves its screenshots (and downloads).
pub(crate) fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// Run `tests/browser/dashboard.mjs` against `gw` with `envs`: what it saw (its last line
/// of output, JSON). Panics with its error, its output and the gateway's log when it fails.
pub(crate) async fn run_browser(chromium: &Path, script: &Path, gw: &Gateway, envs: &[(&str, &OsStr)]) -> Value {
    let mut node = Command::new("node");
    node.arg(script).env("GATEWAY_URL", gw.url()).env("SHOT_DIR", shots_dir()).env("CHROMIUM", chromium);
    for (k, v) in envs {
        node.env(k, v);
    }
    // The script bounds every wait (60 s) and closes the browser on every path.
    let out = tokio::task::spawn_blocking(move || node.output().expect("node runs")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{stdout}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.proc_.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line")
}

/// An 8×8 PNG for the file picker.
fn png_file(dir: &Path) -> PathBuf {
    let uri = support::invert_job(9)["inputs"]["image"].as_str().unwrap().to_string();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(uri.split_once(',').unwrap().1).unwrap();
    let path = dir.join("picked.png");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_headless_browser() {
    let Some((chromium, script)) = browser_tools() else { return };
    let dir = support::tempdir();
    // Slow nodes, so that the job is seen running and its progress comes over the stream.
    let sim = Sim::start(dir.path(), 150).await;
    let keys = format!("{ADMIN_KEY}:admin,{USER_KEY}:user,{OTHER_KEY}:user");
    // A PUBLIC_URL of another origin (the page is opened at the gateway's own address): the
    // page follows its outputs by path, not by the absolute links the API then sends.
    let env = [("API_KEYS", keys.as_str()), ("JWT_SECRET", JWT_SECRET), ("PUBLIC_URL", "https://gw.example.com/base")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let client = reqwest::Client::new();
    let invert = json!({
        "id": "invert",
        "name": "Invert an image",
        "workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}
        },
        "inputSchema": {"type": "object", "required": ["image"], "additionalProperties": false,
            "properties": {"image": {"type": "string", "format": "image", "description": "The picture to invert."}}}
    });
    let r = client.post(format!("{}/workflows", gw.url())).header("x-api-key", ADMIN_KEY).json(&invert).send().await;
    assert_eq!(r.unwrap().status(), 201);
    // A job of the other user, which the first must not see.
    let r = client
        .post(format!("{}/jobs", gw.url()))
        .header("x-api-key", OTHER_KEY)
        .json(&support::invert_job(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let others: Value = r.json().await.unwrap();

    let image = png_file(dir.path());
    let import = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/sdxl_api.json");
    let token = carol_token();
    let envs = [
        ("JWT_TOKEN", OsStr::new(&token)),
        ("USER_KEY", OsStr::new(USER_KEY)),
        ("OTHER_KEY", OsStr::new(OTHER_KEY)),
        ("ADMIN_KEY", OsStr::new(ADMIN_KEY)),
        ("IMAGE_PATH", image.as_os_str()),
        ("IMPORT_FILE", import.as_os_str()),
    ];
    let seen = run_browser(&chromium, &script, &gw, &envs).await;
    let shots = shots_dir();
    eprintln!("dashboard screenshots: {}; page load: {}", shots.display(), seen["timing"]);

    // What the browser did, checked through the API.
    let job_as = |job: &Value, key: &'static str| {
        let url = format!("{}/jobs/{}", gw.url(), job.as_str().expect("a job id"));
        let r = client.get(url).header("x-api-key", key).send();
        async move {
            let r = r.await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for (job, workflow) in [(&seen["textJob"], "icon_512"), (&seen["uploadJob"], "invert")] {
        let (_, v) = job_as(job, USER_KEY).await;
        assert_eq!((v["status"].as_str(), v["workflowId"].as_str()), (Some("succeeded"), Some(workflow)), "{v}");
        assert_eq!(job_as(job, OTHER_KEY).await.0, 404, "the other user cannot read it either");
    }
    // The failed job's page showed the error code and message the API recorded, and the
    // failure in its event log.
    let (_, failed) = job_as(&seen["failedJob"], USER_KEY).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let alert = seen["failedAlert"].as_str().unwrap();
    for part in [&failed["error"]["code"], &failed["error"]["message"]] {
        assert!(alert.contains(part.as_str().unwrap()), "{alert:?} lacks {part}");
    }
    assert!(seen["failedEvents"].as_array().unwrap().contains(&json!("failed")), "{seen}");
    let (_, text) = job_as(&seen["textJob"], USER_KEY).await;
    assert_eq!(text["inputs"]["width"], 256, "the form sent the typed value");
    assert_eq!(text["inputs"]["seed"], 42);
    assert_eq!(text["inputs"]["prompt"], "a red fox, flat icon");
    // The downloaded file is the output's bytes.
    let upload_id = seen["uploadJob"].as_str().unwrap();
    let name = seen["downloadName"].as_str().unwrap();
    let served = client
        .get(format!("{}/outputs/{upload_id}/{name}", gw.url()))
        .header("x-api-key", USER_KEY)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(std::fs::read(seen["downloadPath"].as_str().unwrap()).unwrap(), served);
    // The other user's list had their own job and nothing else.
    assert!(others["jobId"].is_string());
    assert_eq!(seen["otherListed"], 1, "{seen}");
    assert_eq!(seen["backends"][0]["inFlight"].as_str().map(|s| s.ends_with("/ 1")), Some(true), "{seen}");
    // The imported workflow ran with what the form sent.
    let (_, v) = job_as(&seen["importedJob"], ADMIN_KEY).await;
    assert_eq!((v["workflowId"].as_str(), v["status"].as_str()), (Some("sdxl_imported"), Some("succeeded")), "{v}");
    assert_eq!(
        (v["inputs"]["prompt"].as_str(), v["inputs"]["steps"].as_i64()),
        (Some("a lighthouse at dusk"), Some(4))
    );
    for shot in ["job.png", "form.png", "jobs.png", "import.png", "backends.png", "queue.png"] {
        let bytes = std::fs::read(shots.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{shot} is a real screenshot");
    }
}
