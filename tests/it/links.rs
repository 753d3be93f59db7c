//! Links (issue 19, item 6): with `PUBLIC_URL` set, every link to the gateway in every
//! answer of a job's life is absolute under it (a generic walker over every string, so a
//! new field is covered without naming it); without it the API's links stay paths, as
//! before, and webhooks stay absolute; the OpenAPI document's `servers`;
//! `POST /jobs?wait=&include=base64` inlines the outputs' bytes, and a client flooding such
//! submits is capped by the sync-wait cap while another client is served.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::receiver::Receiver;
use crate::support::{self, Gateway, Sim, get_json};

const WAIT: Duration = Duration::from_secs(60);

/// A public URL with a path, as behind a proxy that mounts the gateway under `/base`.
const PUBLIC: &str = "https://gw.example.com/base";

/// One answer of the walk: what was asked, and the JSON (or a header as a string).
struct Answer {
    what: String,
    body: Value,
    /// The answer must carry at least one link (a job, an output listing, a 202...).
    has_links: bool,
}

/// The first segments of the gateway's routes (`/jobs`, `/outputs`, ...), from its
/// OpenAPI document: a string that starts with one of them is a path to the gateway.
async fn route_prefixes(gw: &Gateway) -> Vec<String> {
    let (status, doc) = get_json(&format!("{}/openapi.json", gw.url())).await;
    assert_eq!(status, 200, "{doc}");
    let mut prefixes: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|p| p.split('/').nth(1).filter(|s| !s.is_empty()).map(|s| format!("/{s}")))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    assert!(prefixes.contains(&"/jobs".to_string()) && prefixes.contains(&"/outputs".to_string()), "{prefixes:?}");
    prefixes
}

/// Every string in `v` that is a link to this gateway, with its JSON pointer: a path under
/// one of `prefixes`, or a URL under one of `bases` (the gateway's own address, PUBLIC_URL).
fn links_in(v: &Value, at: &str, prefixes: &[String], bases: &[&str], out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => {
            let path =
                prefixes.iter().any(|p| s == p || s.starts_with(&format!("{p}/")) || s.starts_with(&format!("{p}?")));
            let url = bases.iter().any(|b| s == b || s.starts_with(&format!("{b}/")));
            if path || url {
                out.push((at.to_string(), s.clone()));
            }
        }
        Value::Array(a) => {
            a.iter().enumerate().for_each(|(i, x)| links_in(x, &format!("{at}/{i}"), prefixes, bases, out))
        }
        Value::Object(m) => m.iter().for_each(|(k, x)| links_in(x, &format!("{at}/{k}"), prefixes, bases, out)),
        _ => {}
    }
}

/// The URL to reach `link` on the test's gateway: a link under `public` (or a path) is
/// the same path on the gateway's own address.
fn reachable(gw: &Gateway, public: Option<&str>, link: &str) -> String {
    match public.and_then(|p| link.strip_prefix(p)) {
        Some(path) => format!("{}{path}", gw.url()),
        None if link.starts_with('/') => format!("{}{link}", gw.url()),
        None => link.to_string(),
    }
}

/// A request: status, headers and JSON body (Null if not JSON).
async fn call(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = req.timeout(WAIT).send().await.expect("the gateway answers");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// The outputs of a 200 `?include=base64` answer decoded, each compared with its download
/// (through its link); the number of outputs checked.
async fn check_inlined(gw: &Gateway, public: Option<&str>, job: &Value) -> usize {
    let outputs = job["outputs"].as_array().expect("outputs");
    assert!(!outputs.is_empty(), "{job}");
    for o in outputs {
        assert_eq!(o["inlined"], true, "{o}");
        let inline = base64::engine::general_purpose::STANDARD.decode(o["base64"].as_str().unwrap()).unwrap();
        let url = reachable(gw, public, o["url"].as_str().unwrap());
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), inline.as_slice(), "{url}: the inlined bytes are the download's");
    }
    outputs.len()
}

/// Every JSON answer of two jobs' lives (submit, replay, wait, get, list, events, logs,
/// outputs, webhooks, cancel, cache hit, and the gateway's other reads), plus the webhook
/// bodies received. Checks `?include=base64` with and without `?wait` on the way.
async fn walk(gw: &Gateway, receiver: &Receiver, public: Option<&str>) -> (Vec<Answer>, Vec<Value>) {
    let http = reqwest::Client::new();
    let base = gw.url();
    let mut answers = Vec::new();
    let mut add =
        |what: &str, body: Value, has_links: bool| answers.push(Answer { what: what.into(), body, has_links });

    // Submit (202 + Location), then the idempotent replay.
    let body =
        json!({"workflowId": "icon_512", "inputs": {"prompt": "a lynx", "seed": 1}, "callbackUrl": receiver.url("/h")});
    let submit = || http.post(format!("{base}/jobs")).header("idempotency-key", "links-1").json(&body);
    let (status, headers, accepted) = call(submit()).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["jobId"].as_str().unwrap().to_string();
    let location = headers["location"].to_str().unwrap().to_string();
    assert_eq!(location, accepted["pollUrl"].as_str().unwrap(), "Location is the pollUrl");
    add("POST /jobs (202)", accepted.clone(), true);
    add("POST /jobs Location", json!(location), true);
    let (status, headers, replayed) = call(submit()).await;
    assert_eq!((status, headers.get("idempotent-replayed").is_some()), (202, true), "{replayed}");
    assert_eq!(replayed["jobId"], accepted["jobId"]);
    add("POST /jobs (replay)", replayed, true);
    add("POST /jobs Location (replay)", json!(headers["location"].to_str().unwrap()), true);
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    add("GET /jobs/{id}", done, true);

    // ?wait: the finished job; with include=base64, its bytes inline.
    let waited_body = json!({"workflowId": "icon_512", "inputs": {"prompt": "an owl", "seed": 2}});
    let (status, _, waited) = call(http.post(format!("{base}/jobs?wait=30")).json(&waited_body)).await;
    assert_eq!(status, 200, "{waited}");
    assert!(waited["outputs"][0].get("base64").is_none(), "nothing inlined unless asked: {waited}");
    add("POST /jobs?wait (200)", waited, true);
    let inline_body = json!({"workflowId": "icon_512", "inputs": {"prompt": "a stoat", "seed": 3}});
    let (status, _, inlined) = call(http.post(format!("{base}/jobs?wait=30&include=base64")).json(&inline_body)).await;
    assert_eq!(status, 200, "{inlined}");
    check_inlined(gw, public, &inlined).await;
    add("POST /jobs?wait&include=base64 (200)", inlined, true);
    // A cache hit is a 200 at once: include=base64 inlines without ?wait.
    let (status, _, hit) = call(http.post(format!("{base}/jobs?include=base64")).json(&inline_body)).await;
    assert_eq!((status, hit["cached"].as_bool()), (200, Some(true)), "{hit}");
    check_inlined(gw, public, &hit).await;
    add("POST /jobs?include=base64 (cache hit)", hit, true);
    // A 202 has nothing to inline; another include value is a 400 and creates no job.
    let (_, _, before) = call(http.get(format!("{base}/jobs?limit=100"))).await;
    for url in ["/jobs?wait=30&include=everything", "/jobs?include=bytes"] {
        let (status, _, err) = call(http.post(format!("{base}{url}")).json(&waited_body)).await;
        assert_eq!(status, 400, "{url}: {err}");
        assert_eq!(err["error"]["details"][0]["path"], "include", "{err}");
    }
    let (_, _, after) = call(http.get(format!("{base}/jobs?limit=100"))).await;
    assert_eq!(
        before["jobs"].as_array().unwrap().len(),
        after["jobs"].as_array().unwrap().len(),
        "a refused submit made no job"
    );
    let fresh = json!({"workflowId": "icon_512", "inputs": {"prompt": "a marten", "seed": 4}});
    let (status, _, pending) = call(http.post(format!("{base}/jobs?include=base64")).json(&fresh)).await;
    assert_eq!(status, 202, "{pending}");
    add("POST /jobs?include=base64 (202)", pending.clone(), true);
    gw.wait_terminal(pending["jobId"].as_str().unwrap(), WAIT).await;

    // Reads of the job.
    for (path, has_links) in [
        (format!("/jobs/{id}?include=base64"), true),
        ("/jobs?limit=10".to_string(), true),
        ("/jobs?workflowId=icon_512&status=succeeded&limit=2".to_string(), true),
        (format!("/jobs/{id}/logs"), false),
        (format!("/outputs/{id}"), true),
        ("/capabilities".to_string(), false),
        ("/workflows".to_string(), false),
        ("/workflows/icon_512".to_string(), false),
        ("/backends".to_string(), false),
        ("/health".to_string(), false),
    ] {
        let (status, _, v) = call(http.get(format!("{base}{path}"))).await;
        assert_eq!(status, 200, "{path}: {v}");
        add(&format!("GET {path}"), v, has_links);
    }
    // The event stream of a finished job: every event's data, then the end.
    let text = http.get(format!("{base}/jobs/{id}/events")).timeout(WAIT).send().await.unwrap().text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).unwrap_or_else(|e| panic!("SSE data {data}: {e}")))
        .collect();
    assert!(events.len() >= 3, "{text}");
    add("GET /jobs/{id}/events", Value::Array(events), true);
    // A cancel of a finished job is refused; its answer is walked too.
    let (_, _, canceled) = call(http.post(format!("{base}/jobs/{id}/cancel")).json(&json!({}))).await;
    add("POST /jobs/{id}/cancel", canceled, false);

    // The webhook: its delivery listed, its body received.
    let hits = receiver.wait_hits("/h", 1, WAIT).await;
    let (status, _, deliveries) = call(http.get(format!("{base}/jobs/{id}/webhooks"))).await;
    assert_eq!(status, 200, "{deliveries}");
    add("GET /jobs/{id}/webhooks", deliveries, false);
    (answers, hits.iter().map(|h| h.json()).collect())
}

/// Every link of every answer, asserting that each answer that must carry one does, and
/// that there are links at all.
fn all_links(answers: &[Answer], prefixes: &[String], bases: &[&str]) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for a in answers {
        let mut found = Vec::new();
        links_in(&a.body, "", prefixes, bases, &mut found);
        assert!(!a.has_links || !found.is_empty(), "{} carries no link: {}", a.what, a.body);
        all.extend(found.into_iter().map(|(at, s)| (format!("{}: {at}", a.what), s)));
    }
    assert!(all.len() >= 20, "{all:?}");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_absolute_under_public_url_in_every_answer() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let receiver = Receiver::start().await;
    let env = [("PUBLIC_URL", "https://gw.example.com/base/"), ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let prefixes = route_prefixes(&gw).await;
    let own = gw.url();
    let (answers, webhooks) = walk(&gw, &receiver, Some(PUBLIC)).await;
    for (at, link) in all_links(&answers, &prefixes, &[own.as_str(), PUBLIC]) {
        assert!(link.starts_with(&format!("{PUBLIC}/")), "{at}: {link} is not under PUBLIC_URL");
    }
    // Webhooks agree with the API: the same links.
    let mut hooked = Vec::new();
    for body in &webhooks {
        links_in(body, "", &prefixes, &[own.as_str(), PUBLIC], &mut hooked);
    }
    assert!(!hooked.is_empty() && hooked.iter().all(|(_, l)| l.starts_with(&format!("{PUBLIC}/"))), "{hooked:?}");
    let data = &webhooks[0]["data"];
    let job = gw.job(data["jobId"].as_str().unwrap()).await;
    assert_eq!((&data["pollUrl"], &data["outputs"][0]["url"]), (&job["pollUrl"], &job["outputs"][0]["url"]));
    // The document names PUBLIC_URL as its server.
    let (_, doc) = get_json(&format!("{}/openapi.json", gw.url())).await;
    assert_eq!((doc["servers"][0]["url"].as_str(), doc["servers"].as_array().map(Vec::len)), (Some(PUBLIC), Some(1)));
    let described = doc["components"]["schemas"]["Output"]["properties"]["url"]["description"].as_str().unwrap_or("");
    assert!(described.contains("PUBLIC_URL"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_public_url_api_links_stay_paths_and_webhooks_absolute() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let receiver = Receiver::start().await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1")]).await;
    let prefixes = route_prefixes(&gw).await;
    let own = gw.url();
    let (answers, webhooks) = walk(&gw, &receiver, None).await;
    for (at, link) in all_links(&answers, &prefixes, &[own.as_str()]) {
        assert!(link.starts_with('/'), "{at}: {link} is not a path");
    }
    let mut hooked = Vec::new();
    for body in &webhooks {
        links_in(body, "", &prefixes, &[own.as_str()], &mut hooked);
    }
    assert!(!hooked.is_empty() && hooked.iter().all(|(_, l)| l.starts_with(&format!("{own}/"))), "{hooked:?}");
    let (_, doc) = get_json(&format!("{}/openapi.json", gw.url())).await;
    assert_eq!(doc["servers"][0]["url"], "/", "{}", doc["servers"]);
}

/// A client flooding `POST /jobs?wait=&include=base64` (each answer can carry a job's
/// bytes) gets 429 beyond `MAX_SYNC_WAITS_PER_CLIENT`, before any job is made, while
/// another client's own such submit is answered with its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_waiting_inline_submits_is_capped_and_a_neighbour_is_served() {
    const ATTACKERS: usize = 12;
    const WAITS: usize = 2;
    const ADMIN: &str = "admin-key-0001";
    const ALICE: &str = "alice-key-0001";
    const BOB: &str = "bob-key-00001";
    let dir = support::tempdir();
    // Jobs of a second or two (the simulator runs one prompt at a time, like ComfyUI): the
    // admitted waits are held while the rest arrive.
    let sim = Sim::start(dir.path(), 400).await;
    let keys = format!("{ADMIN}:admin,{ALICE}:user,{BOB}:user");
    let env = [
        ("API_KEYS", keys.as_str()),
        ("MAX_SYNC_WAITS_PER_CLIENT", "2"),
        ("MAX_CONCURRENCY", "4"),
        ("MAX_CONNECTIONS_PER_IP", "1024"),
    ];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let url = format!("{}/jobs?wait=20&include=base64", gw.url());
    let attack: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "a flood", "seed": 100 + i}});
                call(reqwest::Client::new().post(&url).header("x-api-key", ALICE).json(&body)).await
            })
        })
        .collect();
    support::eventually("alice holds her sync waits", async || {
        let held = support::sample(&gw.metrics_as(ADMIN).await, "comfyui_gateway_http_open{kind=\"sync_waits\"}");
        if held >= WAITS as f64 { Ok(()) } else { Err(held) }
    })
    .await;
    let bob = json!({"workflowId": "icon_512", "inputs": {"prompt": "a neighbour", "seed": 7}});
    let bob_url = format!("{}/jobs?wait=50&include=base64", gw.url());
    let (status, _, served) = call(reqwest::Client::new().post(&bob_url).header("x-api-key", BOB).json(&bob)).await;
    assert_eq!(status, 200, "the neighbour's waiting inline submit: {served}");
    let outputs = served["outputs"].as_array().unwrap();
    assert!(!outputs.is_empty() && outputs.iter().all(|o| o["inlined"] == true), "{served}");
    let mut counts = std::collections::BTreeMap::new();
    for task in attack {
        let (status, headers, body) = task.await.unwrap();
        match status {
            200 => assert!(body["outputs"].as_array().unwrap().iter().all(|o| o["inlined"] == true), "{body}"),
            429 => {
                assert!(headers.contains_key("retry-after"), "{body}");
                assert_eq!(body["error"]["details"]["limit"], "MAX_SYNC_WAITS_PER_CLIENT", "{body}");
            }
            _ => panic!("the attacker got {status}: {body}"),
        }
        *counts.entry(status).or_insert(0usize) += 1;
    }
    eprintln!("?wait&include=base64 flood: {counts:?}");
    assert_eq!(counts.get(&429), Some(&(ATTACKERS - WAITS)), "{counts:?}");
    // A refused submit made no job: alice has exactly the jobs of her admitted waits.
    let (_, _, list) =
        call(reqwest::Client::new().get(format!("{}/jobs?limit=100", gw.url())).header("x-api-key", ALICE)).await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(WAITS), "{list}");
}
