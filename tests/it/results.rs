//! The result cache, idempotent submits and retention, against the real binary and the
//! simulator: hits that never reach the backend and share blobs, TTL expiry, random seeds
//! and opt-outs; Idempotency-Key replay, conflict, expiry, owner scoping, concurrent
//! submits and restarts; finished jobs and their outputs pruned after their retention.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, eventually_within, get_json, sample};

/// The value of an unlabeled (or exactly labeled) sample in a Prometheus text body.
async fn n_executions(sim: &Sim) -> usize {
    support::executions(&sim.executions().await).len()
}

fn output_hashes(job: &Value) -> Vec<String> {
    job["outputs"].as_array().unwrap().iter().map(|o| o["hash"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_never_reaches_the_backend_and_shares_the_stored_outputs() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "a lighthouse", "seed": 11}});
    let first = gw.submit_ok(body.clone()).await;
    let first = gw.wait_terminal(&first, Duration::from_secs(30)).await;
    assert_eq!((first["status"].as_str(), first["cached"].as_bool()), (Some("succeeded"), Some(false)));
    assert_eq!(n_executions(&sim).await, 1);
    let blobs = sample(&gw.metrics().await, "comfyui_gateway_blobs");
    assert!(blobs >= 1.0, "the outputs are stored");

    // The same request, keys in another order: answered at once, born succeeded.
    let raw = r#"{"inputs": {"seed": 11, "prompt": "a lighthouse"}, "workflowId": "icon_512"}"#;
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/jobs", gw.url()))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.status().as_u16(), 200, "a hit answers with the finished job");
    let hit: Value = r.json().await.unwrap();
    assert_eq!((hit["status"].as_str(), hit["cached"].as_bool()), (Some("succeeded"), Some(true)), "{hit}");
    assert_ne!(hit["jobId"], first["jobId"], "a new job of its own");
    assert_eq!(output_hashes(&hit), output_hashes(&first));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(n_executions(&sim).await, 1, "the simulator saw no prompt for the hit");
    let text = gw.metrics().await;
    assert_eq!(sample(&text, "comfyui_gateway_blobs"), blobs, "no copy: the blob store is content-addressed");
    assert_eq!(sample(&text, "comfyui_gateway_cache_lookups_total{result=\"hit\"}"), 1.0);
    assert_eq!(sample(&text, "comfyui_gateway_cache_entries"), 1.0);
    // The hit's outputs download with the same bytes.
    let out = &hit["outputs"][0];
    let bytes = reqwest::get(format!("{}{}", gw.url(), out["url"].as_str().unwrap())).await.unwrap().bytes().await;
    assert_eq!(blake3::hash(&bytes.unwrap()).to_hex().as_str(), out["hash"].as_str().unwrap());
    let log = get_json(&format!("{}/jobs/{}/logs", gw.url(), hit["jobId"].as_str().unwrap())).await.1;
    let types: Vec<&str> = log["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["queued", "succeeded"], "{log}");

    // Not from the cache: another seed, an opt-out, a random seed (twice).
    let other = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "a lighthouse", "seed": 12}})).await;
    let opt_out = gw
        .submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "a lighthouse", "seed": 11}, "cache": false}))
        .await;
    let random = json!({"workflowId": "icon_512", "inputs": {"prompt": "a lighthouse"}});
    let (r1, r2) = (gw.submit_ok(random.clone()).await, gw.submit_ok(random.clone()).await);
    for id in [&other, &opt_out, &r1, &r2] {
        let job = gw.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!((job["status"].as_str(), job["cached"].as_bool()), (Some("succeeded"), Some(false)), "{job}");
    }
    assert_eq!(n_executions(&sim).await, 5, "each of them ran on the backend");
    // A random-seed job did not fill the cache: the same random request runs again.
    let r3 = gw.submit_ok(random).await;
    gw.wait_terminal(&r3, Duration::from_secs(30)).await;
    assert_eq!(n_executions(&sim).await, 6);
    let (status, v) = gw.submit(json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}, "cache": "no"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_entries_expire_and_finished_jobs_are_pruned_with_their_outputs() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("CACHE_TTL_SECONDS", "1"), ("JOB_RETENTION_SECONDS", "2"), ("PRUNE_INTERVAL_MS", "100")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "a kite", "seed": 3}});
    let first = gw.submit_ok(body.clone()).await;
    gw.wait_terminal(&first, Duration::from_secs(30)).await;
    assert_eq!(gw.submit(body.clone()).await.0, 200, "a hit while fresh");
    // Not synchronisation: the entry's CACHE_TTL_SECONDS must pass (time, not an event).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = gw.submit_ok(body.clone()).await;
    let again = gw.wait_terminal(&again, Duration::from_secs(30)).await;
    assert_eq!(again["cached"], false, "an expired entry is not served");
    assert_eq!(n_executions(&sim).await, 2);
    assert!(sample(&gw.metrics().await, "comfyui_gateway_pruned_total{kind=\"cache_entries\"}") >= 1.0);

    // The first job and its outputs go after JOB_RETENTION_SECONDS; a running job stays.
    let file_url = format!("{}{}", gw.url(), again["outputs"][0]["url"].as_str().unwrap());
    assert_eq!(reqwest::get(&file_url).await.unwrap().status().as_u16(), 200);
    sim.faults(json!({"hang": 1})).await;
    let stuck =
        gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "a hanging kite", "seed": 4}})).await;
    let v = eventually_within(Duration::from_secs(15), format!("job {first} is pruned"), async || {
        let (status, v) = get_json(&format!("{}/jobs/{first}", gw.url())).await;
        if status == 404 { Ok(v) } else { Err(v) }
    })
    .await;
    assert_eq!(v["error"]["code"], "JOB_NOT_FOUND");
    eventually_within(Duration::from_secs(15), "the outputs of a pruned job are gone", async || {
        let status = reqwest::get(&file_url).await.unwrap().status().as_u16();
        if status == 404 { Ok(()) } else { Err(status) }
    })
    .await;
    let text = gw.metrics().await;
    assert!(sample(&text, "comfyui_gateway_pruned_total{kind=\"jobs\"}") >= 3.0, "{text}");
    assert_eq!(sample(&text, "comfyui_gateway_blobs"), 0.0, "no job or entry names a blob any more");
    assert_eq!(gw.job(&stuck).await["status"], "running", "unfinished jobs are never pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_replay_conflict_expire_and_are_scoped_per_owner() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let keys = "user-key-aaaa-0001:user,user-key-bbbb-0002:user";
    let env = [("API_KEYS", keys), ("IDEMPOTENCY_TTL_SECONDS", "3"), ("CACHE_ENABLED", "false")];
    let mut gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let jobs_url = format!("{}/jobs", gw.url());
    let client = reqwest::Client::new();
    let post = |key: &'static str, idem: Option<String>, body: Value| {
        let (url, client) = (jobs_url.clone(), client.clone());
        async move {
            let mut r = client.post(url).header("x-api-key", key).json(&body);
            if let Some(idem) = idem {
                r = r.header("idempotency-key", idem);
            }
            let resp = r.send().await.unwrap();
            let replayed = resp.headers().get("idempotent-replayed").is_some();
            (resp.status().as_u16(), replayed, resp.json::<Value>().await.unwrap())
        }
    };
    let (a, b) = ("user-key-aaaa-0001", "user-key-bbbb-0002");
    let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "a boat", "seed": 1}});
    let k = || Some("order-42".to_string());

    let (status, replayed, first) = post(a, k(), body.clone()).await;
    assert_eq!((status, replayed), (202, false), "{first}");
    let id = first["jobId"].as_str().unwrap().to_string();
    let (status, replayed, again) = post(a, k(), body.clone()).await;
    assert_eq!((status, replayed, again["jobId"].as_str()), (202, true, Some(id.as_str())), "{again}");
    // The same JSON with other spacing and key order is the same request.
    let reordered = json!({"inputs": {"seed": 1, "prompt": "a boat"}, "workflowId": "icon_512"});
    assert_eq!(post(a, k(), reordered).await.2["jobId"].as_str(), Some(id.as_str()));
    let changed = json!({"workflowId": "icon_512", "inputs": {"prompt": "a ship", "seed": 1}});
    let (status, _, v) = post(a, k(), changed).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("IDEMPOTENCY_CONFLICT")), "{v}");
    assert_eq!(v["error"]["details"]["jobId"].as_str(), Some(id.as_str()));
    // Another owner's key of the same name is another key.
    let (status, replayed, other) = post(b, k(), body.clone()).await;
    assert_eq!((status, replayed), (202, false));
    assert_ne!(other["jobId"].as_str(), Some(id.as_str()));
    // metadata.requestId works like the header.
    let with_request_id = json!({"workflowId": "icon_512", "inputs": {"prompt": "a raft", "seed": 2},
        "metadata": {"requestId": "req-7"}});
    let r1 = post(a, None, with_request_id.clone()).await.2["jobId"].clone();
    let (_, replayed, r2) = post(a, None, with_request_id).await;
    assert_eq!((replayed, &r2["jobId"]), (true, &r1));
    let (status, _, v) = post(a, Some("x".repeat(300)), body.clone()).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");

    // Concurrent submits with one key create one job. Connections are opened first, so
    // the submits really arrive together.
    let health = format!("{}/health", gw.url());
    futures_util::future::join_all((0..8).map(|_| client.get(&health).send())).await;
    let race = json!({"workflowId": "icon_512", "inputs": {"prompt": "a canoe", "seed": 5}});
    let answers = futures_util::future::join_all((0..8).map(|_| post(a, Some("race".into()), race.clone()))).await;
    assert!(answers.iter().all(|(s, _, _)| *s == 202), "{answers:?}");
    let ids: HashSet<&str> = answers.iter().map(|(_, _, v)| v["jobId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, replayed, _)| !replayed).count(), 1, "one original answer");

    // Kept durably: a restart (kill -9) changes nothing.
    gw.restart().await;
    let (status, replayed, v) = post(a, k(), body.clone()).await;
    assert_eq!((status, replayed, v["jobId"].as_str()), (202, true, Some(id.as_str())), "{v}");

    // Expired after IDEMPOTENCY_TTL_SECONDS: the key may be used again.
    eventually_within(Duration::from_secs(10), "the key expires", async || {
        let (status, replayed, v) = post(a, k(), body.clone()).await;
        assert_eq!(status, 202, "{v}");
        if replayed {
            return Err(v);
        }
        assert_ne!(v["jobId"].as_str(), Some(id.as_str()));
        Ok(())
    })
    .await;
}
