//! The Supabase Edge Function example (`examples/supabase/functions/comfyui/index.ts`) run
//! as it is by Deno (npm `deno`, pinned, installed by `scripts/ci-deps` under
//! `<target dir>/tools/deno`, or `deno` on `PATH`) outside Supabase, against a live gateway
//! with API keys and the simulator: a prompt POSTed to the function is submitted with the
//! function's own webhook URL as callback and answered with the gateway's 202; the
//! gateway's signed delivery is verified by the function and its job upserted through a
//! stand-in for PostgREST (failing once, so the function answers 502 and the gateway
//! delivers again); a tampered, a stale, a wrongly keyed and an unsigned delivery get 401.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfyui_gateway::webhooks::sign::{SigningKey, standard_signature};
use serde_json::{Value, json};

use crate::support::receiver::{Answer, Receiver};
use crate::support::{self, Gateway, Proc, Sim, eventually_within};

const WAIT: Duration = Duration::from_secs(60);
const USER_KEY: &str = "supabase-user-key-4567";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SUBMIT_TOKEN: &str = "submit-token-89ab";
/// Shaped as a legacy service_role key (a JWT), which goes in `Authorization` too.
const SERVICE_KEY: &str = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl";
const TABLE_PATH: &str = "/rest/v1/comfyui_jobs";

/// Deno: `<target dir>/tools/deno/node_modules/deno/deno` (scripts/ci-deps; the binary
/// itself, not npm's `.bin` wrapper, so that killing its PID ends it), else on `PATH`.
fn deno() -> Option<PathBuf> {
    let target = Path::new(support::BIN).parent()?.parent()?;
    let beside = target.join("tools/deno/node_modules/deno/deno");
    if beside.is_file() { Some(beside) } else { support::which("deno") }
}

/// GET JSON with the API key.
async fn get_json(url: &str) -> Value {
    let r = reqwest::Client::new().get(url).header("x-api-key", USER_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

/// POST `body` to the function's webhook path with the three signature headers: the status.
async fn deliver(url: &str, id: &str, ts: i64, signature: &str, body: &[u8]) -> u16 {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_function_submits_a_job_and_verifies_its_webhook() {
    let Some(deno) = support::require("deno (npm `deno`)", deno()) else { return };
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let env = [
        ("API_KEYS", format!("{USER_KEY}:user")),
        ("WEBHOOK_SECRET", SECRET.into()),
        ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1,localhost".into()),
        ("WEBHOOK_RETRY_SCHEDULE", "300ms".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    // PostgREST's stand-in: the first upsert fails, the next ones are accepted.
    let postgrest = Receiver::start().await;
    postgrest.script(TABLE_PATH, vec![Answer::status(503)]);

    // The function on a free port, under the path Supabase serves it at.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let function_url = format!("http://127.0.0.1:{port}/functions/v1/comfyui");
    let index = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/supabase/functions/comfyui/index.ts");
    let args: Vec<String> =
        ["run", "--allow-net", "--allow-env", &index.display().to_string()].map(String::from).into();
    let envs: Vec<(String, String)> = [
        ("PORT", port.to_string()),
        ("GATEWAY_URL", gw.url()),
        ("GATEWAY_API_KEY", USER_KEY.into()),
        ("WEBHOOK_SECRET", SECRET.into()),
        ("FUNCTION_URL", function_url.clone()),
        ("SUBMIT_TOKEN", SUBMIT_TOKEN.into()),
        ("SUPABASE_URL", postgrest.url("")),
        ("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY.into()),
        ("DENO_DIR", dir.path().join("deno-cache").display().to_string()),
        ("DENO_NO_UPDATE_CHECK", "1".into()),
        ("NO_COLOR", "1".into()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    let mut function = Proc::spawn_program(&deno, "deno function", dir.path(), &args, &envs, dir.path().join("fn.log"));
    eventually_within(WAIT, "the function listens", async || {
        assert!(!function.exited(), "the function exited:\n{}", function.log());
        match reqwest::get(&function_url).await {
            Ok(r) if r.status() == 405 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let client = reqwest::Client::new();
    let post = |body: &str, token: Option<&str>| {
        let mut r = client.post(&function_url).header("content-type", "application/json").body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let prompt = r#"{"prompt": "a fox on the edge", "seed": 7}"#;
    // Refused: no submit token; a body that is not JSON; the gateway's own error passed on.
    let (status, answer) = post(prompt, None).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("SUBMIT_TOKEN")), "{answer}");
    let (status, answer) = post("a fox", Some(SUBMIT_TOKEN)).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = post(r#"{"workflowId": "no_such_workflow"}"#, Some(SUBMIT_TOKEN)).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("WORKFLOW_NOT_FOUND")), "{answer}");

    // Submitted: the gateway's 202 job, with the function's webhook as its callback.
    let (status, answer) = post(prompt, Some(SUBMIT_TOKEN)).await;
    assert_eq!(status, 202, "{answer}\n{}", function.log());
    assert!(matches!(answer["status"].as_str(), Some("queued" | "running")), "{answer}");
    let job_id = answer["jobId"].as_str().unwrap().to_string();
    let job = get_json(&format!("{}/jobs/{job_id}", gw.url())).await;
    assert_eq!(
        (job["workflowId"].as_str(), job["inputs"]["prompt"].as_str()),
        (Some("icon_512"), Some("a fox on the edge"))
    );
    assert_eq!(job["inputs"]["seed"], 7);

    // The delivery is verified; the first upsert fails (502, the gateway delivers again),
    // the second is stored.
    let line = |job: &Value| {
        let n = job["outputs"].as_array().map_or(0, Vec::len);
        format!("webhook: job {} succeeded, {n} output(s)", job["jobId"].as_str().unwrap())
    };
    let what = || format!("the function reports the verified webhook:\n{}\n{}", function.log(), gw.proc_.log());
    let job = eventually_within(WAIT, what, async || {
        let job = get_json(&format!("{}/jobs/{job_id}", gw.url())).await;
        if job["status"] == "succeeded" && function.log().contains(&line(&job)) { Ok(job) } else { Err(job) }
    })
    .await;
    assert!(!job["outputs"].as_array().unwrap().is_empty(), "{job}");
    let log = function.log();
    assert!(log.contains(&format!("webhook: job {job_id} not stored: Error: comfyui_jobs answered 503")), "{log}");
    let hits = postgrest.hits(TABLE_PATH);
    assert_eq!(hits.iter().map(|h| h.status).collect::<Vec<_>>(), [503, 200], "{log}");
    let hit = &hits[1];
    assert_eq!(hit.header("apikey"), Some(SERVICE_KEY));
    assert_eq!(hit.header("authorization"), Some(format!("Bearer {SERVICE_KEY}").as_str()));
    assert!(hit.header("prefer").is_some_and(|p| p.contains("resolution=merge-duplicates")), "{:?}", hit.headers);
    let row = hit.json();
    assert_eq!((row["job_id"].as_str(), row["status"].as_str()), (Some(job_id.as_str()), Some("succeeded")), "{row}");
    assert_eq!(row["workflow_id"], "icon_512");
    // The outputs as the job lists them, with absolute URLs (webhooks always have them).
    let stored = row["outputs"].as_array().unwrap();
    let listed = job["outputs"].as_array().unwrap();
    assert_eq!(stored.len(), listed.len(), "{row}");
    for (s, l) in stored.iter().zip(listed) {
        assert_eq!((&s["name"], &s["hash"]), (&l["name"], &l["hash"]), "{row}");
        assert_eq!(s["url"].as_str(), Some(format!("{}{}", gw.url(), l["url"].as_str().unwrap()).as_str()), "{row}");
    }
    let deliveries = get_json(&format!("{}/jobs/{job_id}/webhooks", gw.url())).await;
    let d = &deliveries["deliveries"][0];
    assert_eq!(d["url"].as_str(), Some(format!("{function_url}/webhook").as_str()), "{deliveries}");
    assert_eq!(
        (d["state"].as_str(), d["attempts"].as_u64(), d["lastStatus"].as_u64()),
        (Some("delivered"), Some(2), Some(204)),
        "{deliveries}"
    );

    // Straight to the function: signed by the gateway's algorithm now, accepted; one byte
    // changed, ten minutes old, another key, or no signature: 401.
    let hook = format!("{function_url}/webhook");
    let body = serde_json::to_vec(&json!({"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00Z", "data": job}))
        .unwrap();
    let key = SigningKey::parse(SECRET).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let signed = standard_signature(&key, "msg_by_hand", now, &body);
    assert_eq!(deliver(&hook, "msg_by_hand", now, &signed, &body).await, 204, "{}", function.log());
    let tampered = String::from_utf8(body.clone()).unwrap().replacen("succeeded", "succeedeD", 1);
    assert_eq!(deliver(&hook, "msg_by_hand", now, &signed, tampered.as_bytes()).await, 401);
    let old = standard_signature(&key, "msg_old", now - 600, &body);
    assert_eq!(deliver(&hook, "msg_old", now - 600, &old, &body).await, 401);
    let other = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAA==").unwrap();
    let wrong = standard_signature(&other, "msg_wrong_key", now, &body);
    assert_eq!(deliver(&hook, "msg_wrong_key", now, &wrong, &body).await, 401);
    assert_eq!(deliver(&hook, "msg_bad", now, "v1,not base64!", &body).await, 401);
    let unsigned = client.post(&hook).body(body.clone()).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let log = function.log();
    assert_eq!(log.matches("webhook refused: no v1 signature matches").count(), 3, "{log}");
    assert_eq!(log.matches("webhook refused: webhook-timestamp").count(), 1, "{log}");
    assert_eq!(log.matches("webhook refused: missing webhook-id").count(), 1, "{log}");
    assert_eq!(log.matches(&line(&job)).count(), 2, "{log}");
    assert_eq!(postgrest.hits(TABLE_PATH).len(), 3, "only verified deliveries are stored");
    function.kill9();
}
