//! The API docs page (`/docs`): its files over HTTP (public, typed, cached by ETag, under
//! the dashboard's Content-Security-Policy), and the page in headless chromium
//! (`tests/browser/docs.mjs`, through the dashboard test's launcher): reached from the
//! dashboard's header, a wrong key refused, then every operation and webhook of
//! `GET /openapi.json` listed, and `POST /jobs` showing its request body (`JobRequest`'s
//! properties, required marks, an example), with no script error and no CSP violation;
//! in open mode the same without a sign-in. Screenshots are saved under `<target>/tmp/docs/`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;

use serde_json::Value;

use crate::dashboard::{browser_tools, run_browser};
use crate::support::{self, Gateway, Sim, get};

const USER_KEY: &str = "docs-user-key-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_files_are_public_typed_and_revalidated() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &format!("{USER_KEY}:user"))]).await;
    let dashboard = get(&format!("{}/", gw.url()), &[]).await;
    let dashboard_csp = dashboard.headers()["content-security-policy"].clone();
    assert!(dashboard.text().await.unwrap().contains("href=\"/docs\""), "the dashboard links to the docs");

    // The page and its files need no key, and carry the dashboard's policy.
    for (path, media_type) in [
        ("/docs", "text/html; charset=utf-8"),
        ("/ui/docs.js", "text/javascript; charset=utf-8"),
        ("/ui/docs.css", "text/css; charset=utf-8"),
    ] {
        let url = format!("{}{path}", gw.url());
        let r = get(&url, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], media_type, "{path}");
        assert_eq!(h["content-security-policy"], dashboard_csp, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        let etag = h["etag"].to_str().unwrap().to_string();
        let body = r.bytes().await.unwrap();
        assert!(!body.is_empty());
        let again = get(&url, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), 304, "{path} revalidates");
        assert!(again.bytes().await.unwrap().is_empty());
        let head = reqwest::Client::new().head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], body.len().to_string().as_str(), "{path}");
        assert_eq!(head.headers()["etag"], etag.as_str());
    }
    let html = get(&format!("{}/docs", gw.url()), &[]).await.text().await.unwrap();
    for file in ["/ui/common.js", "/ui/docs.js", "/ui/docs.css", "/ui/style.css", "/openapi.json"] {
        assert!(html.contains(file), "the page names {file}");
    }
    // What the page shows stays behind the key; the page is read-only.
    assert_eq!(get(&format!("{}/openapi.json", gw.url()), &[]).await.status(), 401);
    assert_eq!(get(&format!("{}/openapi.json", gw.url()), &[("x-api-key", USER_KEY)]).await.status(), 200);
    assert_eq!(get(&format!("{}/docs/", gw.url()), &[]).await.status(), 401, "no other path is public");
    let post = reqwest::Client::new().post(format!("{}/docs", gw.url())).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}

/// The operations of a path or webhook map, as "METHOD path".
fn operations(paths: &Value) -> BTreeSet<String> {
    let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let mut out = BTreeSet::new();
    for (path, item) in paths.as_object().expect("a map") {
        for m in methods.iter().filter(|m| item.get(**m).is_some()) {
            out.insert(format!("{} {path}", m.to_uppercase()));
        }
    }
    out
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().expect("a list").iter().map(|s| s.as_str().expect("text").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_in_a_headless_browser() {
    let Some((chromium, _)) = browser_tools() else { return };
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &format!("{USER_KEY}:user"))]).await;
    let doc: Value = get(&format!("{}/openapi.json", gw.url()), &[("x-api-key", USER_KEY)]).await.json().await.unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docs");
    let seen = browse(&chromium, &gw, &shots, Some(USER_KEY)).await;
    assert!(seen["refused"].as_str().unwrap().contains("not accepted"), "{seen}");
    shows_the_document(&doc, &seen, &shots);
}

/// Open mode (no credentials configured): the page shows the document without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_in_open_mode() {
    let Some((chromium, _)) = browser_tools() else { return };
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let doc: Value = get(&format!("{}/openapi.json", gw.url()), &[]).await.json().await.unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docs/open");
    let seen = browse(&chromium, &gw, &shots, None).await;
    assert!(seen["refused"].is_null(), "{seen}");
    shows_the_document(&doc, &seen, &shots);
}

/// Run `tests/browser/docs.mjs` against `gw` (signing in with `key`): what it saw.
async fn browse(chromium: &Path, gw: &Gateway, shots: &Path, key: Option<&str>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/docs.mjs");
    let mut envs = vec![("SHOT_DIR", shots.as_os_str())];
    if let Some(key) = key {
        envs.push(("USER_KEY", OsStr::new(key)));
    }
    let seen = run_browser(chromium, &script, gw, &envs).await;
    eprintln!("docs screenshots: {}; page load: {} ms", shots.display(), seen["timing"]);
    seen
}

/// What the page showed is the document: every operation, webhook and schema, and
/// `POST /jobs` in full.
fn shows_the_document(doc: &Value, seen: &Value, shots: &Path) {
    // Every operation and webhook of the document, each once.
    let listed = seen["operations"].as_array().unwrap();
    assert_eq!(strings(&seen["operations"]), operations(&doc["paths"]));
    assert_eq!(listed.len(), operations(&doc["paths"]).len(), "each once");
    assert_eq!(strings(&seen["webhooks"]), operations(&doc["webhooks"]));
    assert_eq!(seen["tocLinks"].as_u64().unwrap() as usize, listed.len() + seen["webhooks"].as_array().unwrap().len());
    let schemas: BTreeSet<String> = doc["components"]["schemas"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(strings(&seen["schemas"]), schemas);

    // POST /jobs: JobRequest (the first of the body's anyOf; the others are per workflow)
    // resolved from its $ref, every property with its required mark.
    let post = &doc["paths"]["/jobs"]["post"];
    let reference = post["requestBody"]["content"]["application/json"]["schema"]["anyOf"][0]["$ref"].as_str().unwrap();
    let name = reference.rsplit('/').next().unwrap();
    assert_eq!(seen["jobRequestRef"], name);
    let schema = &doc["components"]["schemas"][name];
    let shown: BTreeSet<(String, bool)> = seen["jobRequest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["required"].as_bool().unwrap()))
        .collect();
    let required = strings(&schema["required"]);
    let expected: BTreeSet<(String, bool)> =
        schema["properties"].as_object().unwrap().keys().map(|k| (k.clone(), required.contains(k))).collect();
    assert_eq!(shown, expected);
    assert!(shown.contains(&("workflowId".to_string(), true)), "{shown:?}");
    let events = seen["callbackEventsText"].as_str().unwrap();
    // The events are a named enum, which the page expands where it is used.
    let items = &schema["properties"]["callbackEvents"]["items"];
    let event_enum = match items["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => items,
    };
    for event in event_enum["enum"].as_array().unwrap() {
        assert!(events.contains(event.as_str().unwrap()), "{event} in {events:?}");
    }
    // The example built from the schema has what the schema requires, and nothing it forbids.
    let example = seen["jobRequestExample"].as_object().expect("an example object");
    assert!(required.iter().all(|k| example.contains_key(k)), "{example:?}");
    assert!(example.keys().all(|k| schema["properties"].get(k).is_some()), "{example:?}");
    let multipart = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"].as_object().unwrap();
    assert_eq!(strings(&seen["multipart"]), multipart.keys().cloned().collect());
    let responses: BTreeSet<String> = post["responses"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(strings(&seen["jobResponses"]), responses);
    let params: BTreeSet<String> =
        post["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(strings(&seen["jobParams"]), params);

    // The filter: only the operations whose method, path or summary says "cancel".
    let filtered = strings(&seen["filtered"]);
    assert!(filtered.contains("POST /jobs/{jobId}/cancel"), "{filtered:?}");
    assert!(filtered.len() < listed.len() && seen["filteredToc"].as_u64().unwrap() as usize == filtered.len());
    assert_eq!(seen["schemaInView"], true);
    for shot in ["docs.png", "post-jobs.png"] {
        let bytes = std::fs::read(shots.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{shot} is a real screenshot");
    }
}
