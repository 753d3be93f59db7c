//! Identity and listings (issue 16, rows 3, 5 and 8): a token subject shaped like an API
//! key's owner id reads nothing of that key's; `JWT_AUDIENCE` / `JWT_ISSUER` are enforced;
//! `GET /jobs` walks the caller's own range of the owner index, examines a bounded number
//! of entries per page and stops at `MAX_RESPONSE_BYTES`, while a neighbour is served.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use comfyui_gateway::auth::key_owner;
use comfyui_gateway::domain::{Job, JobState, now_ms};
use comfyui_gateway::store::Store;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::Neighbour;
use crate::support::{self, Gateway, Sim};

const ADMIN_KEY: &str = "admin-key-0001";
const ALICE_KEY: &str = "alice-key-0001";
const MALLORY_KEY: &str = "mallory-key-01";
const SECRET: &str = "a-test-secret-of-more-than-32-bytes!";
const AUDIENCE: &str = "comfyui-gateway";
const ISSUER: &str = "https://idp.example";

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// `GET {url}` with `x-api-key` or a bearer token: status, body bytes, JSON.
async fn get(http: &reqwest::Client, url: &str, key: Option<&str>, bearer: Option<&str>) -> (u16, usize, Value) {
    let mut r = http.get(url);
    if let Some(k) = key {
        r = r.header("x-api-key", k);
    }
    if let Some(t) = bearer {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, bytes.len(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn ids(v: &Value) -> Vec<String> {
    v["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_store_a_token_subject_is_never_an_api_keys_owner() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let keys = format!("{ADMIN_KEY}:admin,{ALICE_KEY}:user");
    let env = [("API_KEYS", keys.as_str()), ("JWT_SECRET", SECRET), ("JWT_AUDIENCE", AUDIENCE), ("JWT_ISSUER", ISSUER)];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let base = gw.url();
    let http = reqwest::Client::new();
    let neighbour = Neighbour::new(&base, Some(ALICE_KEY));
    let (status, job) = neighbour
        .post("/jobs", &json!({"workflowId": "icon_512", "inputs": {"prompt": "a small fox", "seed": 1}}))
        .await;
    assert_eq!(status, 202, "{job}");
    let job = job["jobId"].as_str().unwrap().to_string();

    // The attacker signs (or is issued) a token whose subject is alice's key owner id.
    let exp = now_s() + 600;
    let forged = token(&json!({"sub": key_owner(ALICE_KEY), "exp": exp, "aud": AUDIENCE, "iss": ISSUER}));
    let (status, _, v) = get(&http, &format!("{base}/jobs"), None, Some(&forged)).await;
    assert_eq!(status, 200, "{v}");
    assert!(ids(&v).is_empty(), "the token sees the key's jobs: {v}");
    let (status, _, v) = get(&http, &format!("{base}/jobs/{job}"), None, Some(&forged)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("JOB_NOT_FOUND")), "{v}");

    // Audience and issuer are required and must match.
    for (what, claims) in [
        ("no aud", json!({"sub": "carol", "exp": exp, "iss": ISSUER})),
        ("other aud", json!({"sub": "carol", "exp": exp, "aud": "another-service", "iss": ISSUER})),
        ("no iss", json!({"sub": "carol", "exp": exp, "aud": AUDIENCE})),
        ("other iss", json!({"sub": "carol", "exp": exp, "aud": AUDIENCE, "iss": "https://evil.example"})),
    ] {
        let (status, _, v) = get(&http, &format!("{base}/jobs"), None, Some(&token(&claims))).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("AUTH_FAILED")), "{what}: {v}");
    }
    let good = token(&json!({"sub": "carol", "exp": exp, "aud": [AUDIENCE], "iss": ISSUER, "role": "admin"}));
    let (status, _, v) = get(&http, &format!("{base}/jobs"), None, Some(&good)).await;
    assert_eq!((status, ids(&v)), (200, vec![job.clone()]), "an admin token sees every job: {v}");

    // The key's owner is still served, and still sees its job.
    let (status, v) = neighbour.get("/jobs").await;
    assert_eq!((status, ids(&v)), (200, vec![job]));
}

/// Jobs of the other tenant. The issue measured 200,000 jobs and 15 MB of metadata on
/// each of 500 listed jobs (a 112 MB body); scaled to what a 2-core CI box writes in
/// seconds: 6,000 small jobs (more than the 5,000 entries a page may examine, so a listing
/// that walked them for a user could not answer in one page) and 120 jobs of 100 KB of
/// metadata (12 MB, listed against a 1 MiB page budget).
const SMALL_JOBS: usize = 6_000;
const BIG_JOBS: usize = 120;
const BIG_METADATA: usize = 100_000;
const PAGE_BYTES: usize = 1 << 20;

fn finished(owner: &str, created_ms: u64, metadata: Option<String>) -> Job {
    let id = uuid::Uuid::new_v4();
    let mut j = Job::new_queued(id, ("icon_512", 1), "{}".into(), "{}".into(), 0, 0, created_ms);
    (j.state, j.finished_ms, j.updated_ms) = (JobState::Succeeded, Some(created_ms), created_ms);
    j.owner = Some(owner.to_string());
    j.metadata_json = metadata;
    j
}

/// A database where alice's 3 jobs are older than mallory's thousands.
async fn crowded_database(path: &std::path::Path) -> Vec<String> {
    let store = Store::open(path).unwrap();
    let start = now_ms() - 60_000;
    let (alice, mallory) = (key_owner(ALICE_KEY), key_owner(MALLORY_KEY));
    let mut alice_jobs = Vec::new();
    for i in 0..3 {
        alice_jobs.push(store.insert_job(finished(&alice, start + i, None), vec![]).await.unwrap().id.to_string());
    }
    let big = format!("{{\"note\":\"{}\"}}", "m".repeat(BIG_METADATA));
    let all: Vec<Job> = (0..SMALL_JOBS + BIG_JOBS)
        .map(|i| {
            let metadata = (i >= SMALL_JOBS).then(|| big.clone());
            finished(&mallory, start + 10 + (i as u64) * 5, metadata)
        })
        .collect();
    for chunk in all.chunks(500) {
        let tasks: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|j| {
                let s = store.clone();
                tokio::spawn(async move { s.insert_job(j, vec![]).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    store.close().await;
    alice_jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_store_listings_are_bounded_by_owner_entries_and_bytes() {
    let dir = support::tempdir();
    let made = Instant::now();
    let alice_jobs = crowded_database(&dir.path().join("gateway.redb")).await;
    eprintln!("{} jobs written in {:?}", SMALL_JOBS + BIG_JOBS + 3, made.elapsed());
    let sim = Sim::start(dir.path(), 5).await;
    let keys = format!("{ADMIN_KEY}:admin,{ALICE_KEY}:user,{MALLORY_KEY}:user");
    let page_bytes = PAGE_BYTES.to_string();
    let env = [("API_KEYS", keys.as_str()), ("MAX_RESPONSE_BYTES", page_bytes.as_str())];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let base = gw.url();
    let http = reqwest::Client::new();

    // Alice, with `after` before her first job: her three, in one page, although every
    // other job of the database is newer than hers.
    let (status, _, v) = get(&http, &format!("{base}/jobs?after=1&limit=50"), Some(ALICE_KEY), None).await;
    assert_eq!(status, 200, "{v}");
    let mut want = alice_jobs.clone();
    want.reverse();
    assert_eq!((ids(&v), v["nextCursor"].clone()), (want.clone(), Value::Null));

    // A filter that matches nothing: the page examines a bounded number of entries and
    // says where to go on, instead of walking all of them.
    let (status, _, v) = get(&http, &format!("{base}/jobs?workflowId=nothing"), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200, "{v}");
    assert!(ids(&v).is_empty());
    let cursor = v["nextCursor"].as_str().expect("a cursor past the examined entries").to_string();
    let (_, _, v) = get(&http, &format!("{base}/jobs?workflowId=nothing&cursor={cursor}"), Some(ADMIN_KEY), None).await;
    assert_eq!((ids(&v).len(), v["nextCursor"].clone()), (0, Value::Null), "the rest fits in a second page");

    // Mallory's `limit=500` over her 12 MB of metadata: bounded pages, every job once.
    let mut seen = HashSet::new();
    let mut url = format!("{base}/jobs?limit=500");
    let mut pages = 0;
    loop {
        let (status, len, v) = get(&http, &url, Some(MALLORY_KEY), None).await;
        assert_eq!(status, 200, "{v}");
        assert!(len <= PAGE_BYTES + BIG_METADATA + 4096, "a {len}-byte page");
        let listed = ids(&v);
        assert!(!listed.is_empty());
        if pages == 0 {
            assert!(listed.len() < 20, "the first page stops at the byte budget: {} jobs", listed.len());
        }
        for id in listed {
            assert!(seen.insert(id), "a job listed twice");
        }
        pages += 1;
        match v["nextCursor"].as_str() {
            Some(c) => url = format!("{base}/jobs?limit=500&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), SMALL_JOBS + BIG_JOBS, "in {pages} pages");

    // The neighbour is served while mallory keeps asking for her heaviest pages.
    let attack = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let mut n = 0;
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                let urls = [format!("{base}/jobs?limit=500"), format!("{base}/jobs?limit=500&status=failed")];
                let answers = futures_util::future::join_all(
                    urls.iter().chain(urls.iter()).map(|u| get(&http, u, Some(MALLORY_KEY), None)),
                )
                .await;
                for (status, len, _) in answers {
                    assert_eq!(status, 200);
                    assert!(len <= PAGE_BYTES + BIG_METADATA + 4096);
                    n += 1;
                }
            }
            n
        })
    };
    let neighbour = Neighbour::new(&base, Some(ALICE_KEY));
    let served = neighbour.probe_for(&["/jobs?limit=10", "/health"], Duration::from_secs(3)).await;
    let attacks = attack.await.unwrap();
    eprintln!("neighbour: {served:?} beside {attacks} listings");
    let (_, v) = neighbour.get("/jobs?limit=10").await;
    assert_eq!(ids(&v), want);
}
