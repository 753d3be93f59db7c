//! The REST surface's contract: error envelope and codes for bad input of every kind,
//! workflow CRUD with versions, capabilities, correlation ids.

use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, get_json, post_json, post_raw};

fn assert_error(status: u16, v: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["error"]["retryable"].is_boolean(), "{v}");
    assert!(v["correlationId"].as_str().is_some_and(|c| c.len() >= 16), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_with_a_stable_code() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_BODY_BYTES", "65536")]).await;
    let jobs = format!("{}/jobs", gw.url());

    let (s, v) = post_raw(&jobs, "application/json", b"{\"workflowId\": ".to_vec()).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert!(v["error"]["message"].as_str().unwrap().contains("line 1"), "names the position: {v}");

    let (s, v) = post_raw(&jobs, "application/json", b"[1,2]".to_vec()).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");

    let (s, v) = post_json(&jobs, &json!({"inputs": {}})).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["path"], "/workflowId");

    let (s, v) = post_json(&jobs, &json!({"workflowId": "nope", "inputs": {}})).await;
    assert_error(s, &v, 404, "WORKFLOW_NOT_FOUND");

    let (s, v) = post_json(&jobs, &json!({"workflowId": "icon_512", "inputs": {"prompt": "x", "steps": "many"}})).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["path"], "/inputs/steps", "names the field: {v}");

    let (s, v) = post_json(&jobs, &json!({"workflowId": "icon_512", "inputs": {}})).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["path"], "/inputs/prompt", "{v}");

    let (s, v) =
        post_json(&jobs, &json!({"workflowId": "sdxl_realism_v1", "inputs": {"prompt": "x", "width": 4096}})).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["path"], "/inputs/width", "MAX_IMAGE_SIZE applies: {v}");

    let (s, v) =
        post_json(&jobs, &json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}, "priority": "urgent"})).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["path"], "/priority");

    let (s, v) = post_json(&jobs, &json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}, "bogus": 1})).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["path"], "/bogus");

    let (s, v) =
        post_json(&jobs, &json!({"workflowId": "icon_512", "inputs": {"prompt": "x"}, "callbackUrl": "ftp://x"})).await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");

    let big = vec![b' '; 70_000];
    let (s, v) = post_raw(&jobs, "application/json", big).await;
    assert_error(s, &v, 413, "PAYLOAD_TOO_LARGE");

    let (s, v) = get_json(&format!("{}/jobs/not-a-uuid", gw.url())).await;
    assert_error(s, &v, 404, "JOB_NOT_FOUND");
    let (s, v) = get_json(&format!("{}/jobs/{}", gw.url(), uuid::Uuid::new_v4())).await;
    assert_error(s, &v, 404, "JOB_NOT_FOUND");
    let (s, v) = get_json(&format!("{}/outputs/{}", gw.url(), uuid::Uuid::new_v4())).await;
    assert_error(s, &v, 404, "JOB_NOT_FOUND");
    let (s, v) = get_json(&format!("{}/nowhere", gw.url())).await;
    assert_error(s, &v, 404, "NOT_FOUND");
    let r = reqwest::Client::new().delete(format!("{}/jobs", gw.url())).send().await.unwrap();
    let s = r.status().as_u16();
    let cid = r.headers()["x-correlation-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_error(s, &v, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(v["correlationId"], cid.as_str(), "the header and the body agree");

    // A job with an output name that does not exist, and path tricks on output names.
    let id = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "x", "seed": 1}})).await;
    gw.wait_terminal(&id, std::time::Duration::from_secs(60)).await;
    for file in ["nope.png", "..%2F..%2Fetc%2Fpasswd", "%2e%2e"] {
        let (s, v) = get_json(&format!("{}/outputs/{id}/{file}", gw.url())).await;
        assert_error(s, &v, 404, "NOT_FOUND");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_crud_with_versions() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let url = format!("{}/workflows", gw.url());
    let template = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": "{{size}}", "height": "{{size}}", "batch_size": 1, "color": "{{color}}"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "plain_{{label}}"}}
    });
    let body = json!({"id": "plain", "name": "Plain", "workflow": template,
        "defaults": {"size": 64, "color": 255, "label": "x"}});
    let (s, v) = post_json(&url, &body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["version"], 1);
    assert!(v["inputSchema"]["properties"]["size"].is_object(), "schema derived from tokens: {v}");

    let (s, v) = post_json(&url, &body).await;
    assert_error(s, &v, 409, "CONFLICT");

    // A token without input or default is rejected at registration, naming it.
    let (s, v) = post_json(
        &url,
        &json!({"id": "broken", "workflow": template, "defaults": {"size": 64, "color": 1},
        "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}, "color": {"type": "integer"}}}}),
    )
    .await;
    assert_error(s, &v, 400, "VALIDATION_ERROR");
    assert!(v.to_string().contains("label"), "{v}");

    let r = reqwest::Client::new()
        .put(format!("{url}/plain"))
        .json(&json!({"workflow": template, "defaults": {"size": 32, "color": 0, "label": "y"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["version"], 2);

    let id = gw.submit_ok(json!({"workflowId": "plain", "inputs": {}})).await;
    let done = gw.wait_terminal(&id, std::time::Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["workflowVersion"], 2);
    assert_eq!(done["inputs"]["size"], 32);
    assert!(done["outputs"][0]["name"].as_str().unwrap().starts_with("plain_y"), "{done}");

    let (s, caps) = get_json(&format!("{}/capabilities", gw.url())).await;
    assert_eq!(s, 200);
    assert!(caps["workflows"].as_array().unwrap().contains(&json!("plain")));
    assert_eq!(caps["maxSize"], 2048);
    assert_eq!(caps["maxBatch"], 4);
    assert_eq!(caps["storageProvider"], "local");
    assert_eq!(caps["plugins"], cfg!(feature = "wasm-plugins"), "the build's plugin runtime: {caps}");

    let r = reqwest::Client::new().delete(format!("{url}/plain")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (s, v) = get_json(&format!("{url}/plain")).await;
    assert_error(s, &v, 404, "WORKFLOW_NOT_FOUND");
    // The finished job still reads fine after its workflow is gone.
    assert_eq!(gw.job(&id).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_adds_and_lists_workflows_with_or_without_a_running_server() {
    let dir = support::tempdir();
    let db = dir.path().join("cli.redb");
    let wf = dir.path().join("wf.json");
    std::fs::write(
        &wf,
        json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": "{{color}}"}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cli"}}})
        .to_string(),
    )
    .unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        json!({"type": "object", "properties": {"color": {"type": "integer", "default": 5}}}).to_string(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = support::bin().args(args).env("DATABASE_URL", &db).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["init"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) =
        run(&["add-workflow", wf.to_str().unwrap(), "--id", "cli_wf", "--schema", schema.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("cli_wf version 1"), "{out}");
    let (code, out, _) = run(&["list-workflows"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("cli_wf\tv1") && out.contains("icon_512"), "{out}");
    // `check` verifies a stopped gateway's database.
    let (code, out, err) = run(&["check", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((report["ok"].as_bool(), report["blobs"].as_u64()), (Some(true), Some(0)), "{report}");

    // With a server holding the database, the CLI goes through its API.
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("DATABASE_URL", db.to_str().unwrap())]).await;
    let port = gw.port.to_string();
    let out = support::bin()
        .args(["add-workflow", wf.to_str().unwrap(), "--id", "cli_wf", "--port", &port])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("version 2") && text.contains("via"), "{text}");
    let id = gw.submit_ok(json!({"workflowId": "cli_wf", "inputs": {"color": 7}})).await;
    assert_eq!(gw.wait_terminal(&id, std::time::Duration::from_secs(60)).await["status"], "succeeded");

    // `health` asks the running gateway.
    let out = support::bin().args(["health", "--port", &port]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"reachable\": true"), "{text}");
    // ... and `check` refuses a database a gateway holds.
    let (code, out, err) = run(&["check"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("in use by a running gateway"), "{err}");
    // A crash point this build does not know is a configuration error.
    let out = support::bin().args(["serve"]).env("FAILPOINTS", "nowhere=return").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("FAILPOINTS") && err.contains("not a crash point"), "{err}");

    // Bad configuration: one line naming the variable, exit code 2.
    let out = support::bin().args(["serve"]).env("MAX_CONCURRENCY", "0").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("MAX_CONCURRENCY"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = support::bin().args(["serve"]).env("PORT", "eighty").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("PORT"), "{err}");

    // The same from a `.env` file in the working directory.
    let envdir = dir.path().join("envdir");
    std::fs::create_dir_all(&envdir).unwrap();
    std::fs::write(envdir.join(".env"), "COMFYUI_URL=ftp://nowhere\n").unwrap();
    let out = support::bin().args(["serve"]).current_dir(&envdir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("COMFYUI_URL"), ".env is read: {err}");
}

/// One registration path: `add-workflow` on the database records its change in the audit log
/// as `POST /workflows` and `PUT /workflows/{id}` do (actor `cli`, role admin), and `GET /audit`
/// lists it beside the API's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_add_workflow_is_audited_like_the_api() {
    let dir = support::tempdir();
    let db = dir.path().join("audit.redb");
    let wf = dir.path().join("wf.json");
    std::fs::write(
        &wf,
        json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 3}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cli"}}})
        .to_string(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = support::bin().args(args).env("DATABASE_URL", &db).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {text}");
    };
    run(&["init"]);
    run(&["add-workflow", wf.to_str().unwrap(), "--id", "audited"]);
    run(&["add-workflow", wf.to_str().unwrap(), "--id", "audited"]);

    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("DATABASE_URL", db.to_str().unwrap())]).await;
    let r = reqwest::Client::new().delete(format!("{}/workflows/audited", gw.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (status, v) = get_json(&format!("{}/audit", gw.url())).await;
    assert_eq!(status, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or("-");
            (text("action"), text("target"), text("actor"), text("role"))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("workflow.delete", "audited", "-", "-"),
            ("workflow.update", "audited", "cli", "admin"),
            ("workflow.create", "audited", "cli", "admin"),
        ],
        "{v}"
    );
    // Each CLI run is its own correlation id.
    let ids: Vec<&str> = entries[1..].iter().map(|e| e["correlationId"].as_str().unwrap()).collect();
    assert!(ids[0] != ids[1] && ids.iter().all(|id| (8..=64).contains(&id.len())), "{ids:?}");
}

/// `GET /models` lists the backend's model files by kind from its node definitions, read
/// at most once per 10 s however many clients ask (a flood of listings does not make the
/// backend rebuild its definitions each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_by_kind_and_read_from_the_backend_at_most_every_10_s() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let url = format!("{}/models", gw.url());
    let v = support::eventually("the backend lists its models", async || {
        let (status, v) = support::get_json(&url).await;
        if status == 200 { Ok(v) } else { Err(v) }
    })
    .await;
    let checkpoints = v["models"]["checkpoints"].as_array().expect("checkpoints");
    assert!(checkpoints.iter().any(|c| c == "sd_xl_base_1.0.safetensors"), "{v}");
    assert!(v["models"]["loras"].as_array().unwrap().iter().any(|l| l == "sdxl_lora_example.safetensors"), "{v}");
    assert!(v["backend"].is_string(), "{v}");
    let reads =
        async || support::get_json(&format!("{}/sim/requests", sim.url())).await.1["objectInfo"].as_u64().unwrap();
    let before = reads().await;
    let asks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { support::get_json(&url).await.0 })
        })
        .collect();
    for ask in asks {
        assert_eq!(ask.await.unwrap(), 200);
    }
    let more = reads().await - before;
    assert!(more <= 1, "one read of /object_info at most in 10 s, not {more}");
}
