//! Workflow import (`POST /workflows/import`, `comfyui-gateway import-workflow`): ComfyUI
//! API-format exports (`fixtures/sdxl_api.json`: SDXL base + refiner; `fixtures/img2img_api.json`:
//! LoadImage → VAEEncode → KSampler) turned into a template and an input schema typed from the
//! simulator's real `/object_info`, registered, and run to `succeeded` with overridden inputs
//! that the simulator really received; the CLI's files accepted by `add-workflow`; refusals.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, DeadPort, Gateway, Sim, eventually, get_json, post_json, post_raw};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The prompt the simulator received for `job` (its `/history` entry: `[number, id, prompt, ...]`).
async fn received_prompt(sim: &Sim, job: &str) -> Value {
    let (status, v) = get_json(&format!("{}/history/{job}", sim.url())).await;
    assert_eq!(status, 200, "{v}");
    v[job]["prompt"][2].clone()
}

fn enum_of(schema: &Value, name: &str) -> Vec<String> {
    schema["properties"][name]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has an enum: {schema}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_sdxl_base_and_refiner_then_run_it_with_overrides() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let url = format!("{}/workflows/import", gw.url());
    let export = fixture("sdxl_api.json");

    let body = json!({"workflow": export, "id": "sdxl_refined", "name": "SDXL + refiner", "description": "imported"});
    let (status, v) = post_json(&url, &body).await;
    assert_eq!(status, 200, "{v}");
    let proposal = &v["proposal"];
    assert_eq!((proposal["id"].as_str(), proposal["name"].as_str()), (Some("sdxl_refined"), Some("SDXL + refiner")));
    let schema = &proposal["inputSchema"];
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!((schema["title"].as_str(), schema["description"].as_str()), (Some("SDXL + refiner"), Some("imported")));
    let mut names: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "batch_size",
            "cfg",
            "checkpoint",
            "height",
            "negative_prompt",
            "prompt",
            "refiner_cfg",
            "refiner_checkpoint",
            "refiner_sampler_name",
            "refiner_scheduler",
            "refiner_seed",
            "refiner_steps",
            "sampler_name",
            "scheduler",
            "seed",
            "steps",
            "width"
        ]
    );
    let p = &schema["properties"];
    assert_eq!(
        (p["width"]["type"].as_str(), p["width"]["minimum"].as_i64(), p["width"]["maximum"].as_i64()),
        (Some("integer"), Some(16), Some(16384))
    );
    assert_eq!((p["width"]["x-step"].as_i64(), p["width"]["default"].as_i64()), (Some(8), Some(1024)));
    assert!(p["width"].get("multipleOf").is_none(), "ComfyUI's step is a hint, not a rule: {}", p["width"]);
    assert_eq!((p["steps"]["type"].as_str(), p["steps"]["default"].as_i64()), (Some("integer"), Some(25)));
    assert_eq!((p["steps"]["minimum"].as_i64(), p["steps"]["maximum"].as_i64()), (Some(1), Some(10000)));
    assert_eq!((p["cfg"]["type"].as_str(), p["cfg"]["maximum"].as_f64()), (Some("number"), Some(100.0)));
    assert_eq!(p["cfg"]["default"].as_f64(), Some(8.0));
    assert_eq!((p["seed"]["type"].as_str(), p["seed"]["maximum"].as_u64()), (Some("integer"), Some((1 << 53) - 1)));
    assert!(p["seed"].get("default").is_none(), "a seed is drawn per job");
    assert_eq!(p["prompt"]["default"], export["6"]["inputs"]["text"]);
    assert_eq!(p["negative_prompt"]["default"], "text, watermark");
    assert_eq!(p["refiner_checkpoint"]["default"], "sd_xl_refiner_1.0.safetensors");
    let checkpoints = enum_of(schema, "checkpoint");
    for installed in ["sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
    {
        assert!(checkpoints.iter().any(|c| c == installed), "{installed} in {checkpoints:?}");
    }
    let samplers = enum_of(schema, "sampler_name");
    assert!(samplers.iter().any(|s| s == "euler") && samplers.iter().any(|s| s == "dpmpp_2m"), "{samplers:?}");
    assert!(enum_of(schema, "refiner_scheduler").iter().any(|s| s == "karras"));
    for name in names {
        assert!(p[name]["title"].is_string() && p[name]["description"].is_string(), "{name}: {}", p[name]);
    }
    assert_eq!(v["warnings"], json!([]), "{v}");
    let found = v["inputs"].as_array().unwrap();
    let steps = found.iter().find(|i| i["name"] == "refiner_steps").unwrap();
    assert_eq!(
        steps,
        &json!({"name": "refiner_steps", "node": "11", "classType": "KSamplerAdvanced",
        "input": "steps", "type": "integer", "value": 25})
    );
    let template = &proposal["template"];
    assert_eq!(template["10"]["inputs"]["noise_seed"], "{{seed}}");
    assert_eq!(template["10"]["inputs"]["end_at_step"], 20, "what is not an input stays literal");

    // Nothing was registered by the proposal; `register: true` does (as POST /workflows).
    let (status, _) = get_json(&format!("{}/workflows/sdxl_refined", gw.url())).await;
    assert_eq!(status, 404);
    let mut register = body.clone();
    register["register"] = json!(true);
    let (status, w) = post_json(&url, &register).await;
    assert_eq!(status, 201, "{w}");
    assert_eq!((w["id"].as_str(), w["version"].as_u64()), (Some("sdxl_refined"), Some(1)));
    assert_eq!(w["inputSchema"], *schema);
    assert_eq!(w["workflow"], *template);
    assert_eq!(w["inputs"], v["inputs"]);
    let (status, again) = post_json(&url, &register).await;
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("CONFLICT")), "{again}");

    // A job with a few inputs overridden runs on the simulator with exactly those values.
    let job = gw
        .submit_ok(json!({"workflowId": "sdxl_refined", "inputs": {
            "prompt": "a red fox in the snow", "steps": 12, "seed": 42, "width": 768, "refiner_sampler_name": "dpmpp_2m"
        }}))
        .await;
    let done = gw.wait_terminal(&job, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(!done["outputs"].as_array().unwrap().is_empty(), "{done}");
    let prompt = received_prompt(&sim, &job).await;
    assert_eq!(prompt["6"]["inputs"]["text"], "a red fox in the snow");
    assert_eq!(prompt["15"]["inputs"]["text"], "a red fox in the snow", "the refiner shares the prompt");
    assert_eq!(prompt["7"]["inputs"]["text"], "text, watermark");
    assert_eq!(prompt["10"]["inputs"]["steps"], 12);
    assert_eq!(prompt["10"]["inputs"]["noise_seed"], 42);
    assert_eq!(prompt["11"]["inputs"]["steps"], 25, "the refiner keeps its default");
    assert_eq!(prompt["11"]["inputs"]["sampler_name"], "dpmpp_2m");
    assert_eq!(prompt["5"]["inputs"]["width"], 768);
    assert_eq!(prompt["5"]["inputs"]["height"], 1024);
    assert_eq!(prompt["4"]["inputs"]["ckpt_name"], "sd_xl_base_1.0.safetensors");

    // Out of the backend's range: the schema says so before anything is queued.
    let (status, bad) = gw.submit(json!({"workflowId": "sdxl_refined", "inputs": {"width": 20000}})).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{bad}");
    let (status, bad) = gw.submit(json!({"workflowId": "sdxl_refined", "inputs": {"checkpoint": "nope.ckpt"}})).await;
    assert_eq!(status, 400, "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_img2img_as_a_bare_export_then_register_it_as_a_normal_workflow() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    // The export itself as the whole body.
    let (status, v) = post_json(&format!("{}/workflows/import", gw.url()), &fixture("img2img_api.json")).await;
    assert_eq!(status, 200, "{v}");
    let proposal = &v["proposal"];
    assert_eq!(proposal["id"], "imported");
    let schema = &proposal["inputSchema"];
    assert_eq!(schema["properties"]["image"]["type"], "string");
    assert_eq!(schema["properties"]["image"]["format"], "image");
    assert_eq!(schema["required"], json!(["image"]));
    assert_eq!(schema["properties"]["denoise"]["default"].as_f64(), Some(0.87));
    assert_eq!(schema["properties"]["checkpoint"]["default"], "v1-5-pruned-emaonly.safetensors");
    assert!(schema["properties"].get("width").is_none(), "no latent size in img2img");

    // Accepted as it is through the ordinary registration.
    let (status, w) = post_json(
        &format!("{}/workflows", gw.url()),
        &json!({"id": "img2img", "workflow": proposal["template"], "inputSchema": schema}),
    )
    .await;
    assert_eq!(status, 201, "{w}");
    let mut job = support::invert_job(3);
    job["workflowId"] = json!("img2img");
    job["inputs"]["denoise"] = json!(0.5);
    let id = gw.submit_ok(job).await;
    let done = gw.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let prompt = received_prompt(&sim, &id).await;
    let image = prompt["10"]["inputs"]["image"].as_str().unwrap();
    assert!(image.starts_with(&format!("gw/{id}/")), "the uploaded input: {image}");
    assert_eq!(prompt["3"]["inputs"]["denoise"], 0.5);
    assert_eq!(prompt["3"]["inputs"]["sampler_name"], "dpmpp_2m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_what_is_not_an_api_export_and_says_why() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let url = format!("{}/workflows/import", gw.url());
    // A saved (UI-format) workflow is converted; one that cannot be names the node.
    let ui = json!({"last_node_id": 9, "last_link_id": 9, "links": [], "version": 0.4,
        "nodes": [{"id": 3, "type": "NoSuchNode", "mode": 0, "widgets_values": [1, "a"], "inputs": [], "outputs": []}]});
    let cases = [
        (json!({"workflow": ui.clone()}), "/workflow/nodes/0", "node 3 (NoSuchNode"),
        (ui, "/nodes/0", "node 3 (NoSuchNode"),
        (json!({"workflow": 5}), "/workflow", "API format"),
        (json!({"workflow": {}}), "/workflow", "no nodes"),
        (json!({}), "/", "no nodes"),
        (json!({"workflow": {"1": {"class_type": "KSampler"}}}), "/workflow/1/inputs", "inputs"),
        (json!({"1": {"inputs": {}}}), "/1/class_type", "class_type"),
        (
            json!({"workflow": {"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}}),
            "/workflow/1/inputs/images",
            "not in the workflow",
        ),
        (
            json!({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}, "register": "yes"}),
            "/register",
            "boolean",
        ),
        (json!({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}, "id": "no spaces"}), "/id", "characters"),
        (json!({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}, "extra": 1}), "/extra", "unknown field"),
    ];
    for (body, path, says) in cases {
        let (status, v) = post_json(&url, &body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{body}: {v}");
        let paths: Vec<&str> = v["error"]["details"]
            .as_array()
            .map(|d| d.iter().filter_map(|e| e["path"].as_str()).collect())
            .unwrap_or_else(|| vec![v["error"]["details"]["path"].as_str().unwrap_or("")]);
        assert!(paths.contains(&path), "{body}: {path} in {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    for (content_type, raw) in [("application/json", b"[1, 2]".to_vec()), ("application/json", b"{not json".to_vec())] {
        let (status, v) = post_raw(&url, content_type, raw).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
    }
    // Nothing recognizable is fine, with a warning.
    let (status, v) =
        post_json(&url, &json!({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}})).await;
    assert_eq!(status, 200, "{v}");
    let warnings: Vec<&str> = v["warnings"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(warnings.iter().any(|w| w.contains("no common input")), "{v}");
    // What the backend would refuse is named: here, the inputs the node lacks.
    assert!(warnings.contains(&"node 1 (EmptyImage): the required input height is missing; jobs will fail"), "{v}");
    // An unknown node class is a warning, not an error.
    let (status, v) = post_json(
        &url,
        &json!({"workflow": {"1": {"class_type": "MyCustomSampler", "inputs": {"x": 1}},
                              "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains("MyCustomSampler") && warnings.contains("missing.safetensors"), "{v}");
    assert_eq!(v["proposal"]["inputSchema"]["required"], json!(["checkpoint"]));
    // GET on the import route is not a workflow named "import".
    let (status, v) = get_json(&url).await;
    assert_eq!((status, v["error"]["code"].as_str()), (405, Some("METHOD_NOT_ALLOWED")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_for_admins_and_needs_a_reachable_backend() {
    let dir = support::tempdir();
    // Nothing listens on this port: the backend is down.
    let down = DeadPort::new();
    let gw = Gateway::start(dir.path(), &down.url(), &[("API_KEYS", "admin-key-0001:admin,user-key-0001:user")]).await;
    let url = format!("{}/workflows/import", gw.url());
    let post = |key: &'static str, body: Value| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new().post(&url).header("x-api-key", key).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let body = json!({"workflow": fixture("sdxl_api.json")});
    let (status, v) = post("user-key-0001", body.clone()).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    let (status, v) = post("admin-key-0001", body).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("COMFYUI_UNREACHABLE")), "{v}");
    assert_eq!(v["error"]["retryable"], true);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("node definitions") && message.contains("unreachable"), "{message}");
    // A bad body is still the client's fault, whatever the backend.
    let (status, _) = post("admin-key-0001", json!({"workflow": []})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_asks_the_first_healthy_backend() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let down = DeadPort::new();
    let gw = Gateway::start(dir.path(), &format!("{},{}", down.url(), sim.url()), &[]).await;
    eventually("the simulator becomes healthy", async || {
        let (_, v) = get_json(&format!("{}/backends", gw.url())).await;
        if v["backends"][1]["reachable"] == true { Ok(()) } else { Err(v) }
    })
    .await;
    let (status, v) =
        post_json(&format!("{}/workflows/import", gw.url()), &json!({"workflow": fixture("img2img_api.json")})).await;
    assert_eq!(status, 200, "the first backend is down, the second answers: {v}");
    assert!(enum_of(&v["proposal"]["inputSchema"], "checkpoint").contains(&"sd_xl_base_1.0.safetensors".to_string()));
}

/// Run the binary with `args` (no inherited gateway configuration but `envs`): exit code,
/// stdout, stderr.
fn cli(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = support::bin();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_workflow_cli_writes_files_that_add_workflow_accepts() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures");
    let sdxl = fixtures.join("sdxl_api.json").display().to_string();
    let out_dir = dir.path().join("proposed");
    let out = out_dir.display().to_string();
    let db = dir.path().join("gateway.redb").display().to_string();

    // The backend from COMFYUI_URL (the first of a list), the proposal on stdout, the files.
    let list = format!("{},http://127.0.0.1:1", sim.url());
    let (code, stdout, stderr) = cli(
        &["import-workflow", &sdxl, "--id", "sdxl_cli", "--name", "SDXL (CLI)", "--out", &out],
        &[("COMFYUI_URL", &list)],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("stdout is the proposal's JSON");
    assert_eq!(printed["proposal"]["id"], "sdxl_cli");
    assert!(printed["proposal"]["inputSchema"]["properties"]["refiner_steps"].is_object());
    let template = out_dir.join("sdxl_cli.json");
    let schema = out_dir.join("sdxl_cli.schema.json");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&schema).unwrap()).unwrap();
    assert_eq!(written, printed["proposal"]["inputSchema"]);
    assert_eq!(written["title"], "SDXL (CLI)");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&template).unwrap()).unwrap();
    assert_eq!(written, printed["proposal"]["template"]);

    // Reviewed, then added like any workflow file pair.
    let db_env = [("DATABASE_URL", db.as_str())];
    let (code, stdout, stderr) = cli(&["init"], &db_env);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (t, s) = (template.display().to_string(), schema.display().to_string());
    let (code, stdout, stderr) = cli(&["add-workflow", &t, "--id", "sdxl_cli", "--schema", &s], &db_env);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("sdxl_cli version 1"), "{stdout}");

    // `--register` with the database held by a running gateway goes through its API.
    let gw = Gateway::start(dir.path(), &sim.url(), &[("DATABASE_URL", &db)]).await;
    let port = gw.port.to_string();
    let img2img = fixtures.join("img2img_api.json").display().to_string();
    let (code, stdout, stderr) = cli(
        &[
            "import-workflow",
            &img2img,
            "--comfyui-url",
            &sim.url(),
            "--id",
            "img2img_cli",
            "--register",
            "--port",
            &port,
        ],
        &db_env,
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("img2img_cli version 1") && stderr.contains("via"), "{stderr}");
    serde_json::from_str::<Value>(&stdout).expect("stdout is still only the JSON");
    let (status, w) = get_json(&format!("{}/workflows/img2img_cli", gw.url())).await;
    assert_eq!(status, 200, "{w}");
    assert_eq!(w["inputSchema"]["properties"]["image"]["format"], "image");
    // The workflow added from the files runs.
    let job = gw.submit_ok(json!({"workflowId": "sdxl_cli", "inputs": {"steps": 3, "batch_size": 2}})).await;
    assert_eq!(gw.wait_terminal(&job, Duration::from_secs(120)).await["status"], "succeeded");
    assert_eq!(received_prompt(&sim, &job).await["5"]["inputs"]["batch_size"], 2);

    // Refusals: exit 1 with the reason, 2 for a bad COMFYUI_URL.
    let ui = dir.path().join("ui.json");
    std::fs::write(&ui, r#"{"last_node_id": 1, "links": [], "nodes": [{"id": 1, "type": "NoSuchNode", "mode": 0, "widgets_values": [1]}]}"#)
        .unwrap();
    let (code, _, stderr) = cli(&["import-workflow", ui.to_str().unwrap(), "--comfyui-url", &sim.url()], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("node 1 (NoSuchNode"), "{stderr}");
    let down = DeadPort::new();
    let (code, _, stderr) = cli(&["import-workflow", &sdxl, "--comfyui-url", &down.url()], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot read the node definitions"), "{stderr}");
    let (code, _, stderr) = cli(&["import-workflow", &sdxl, "--comfyui-url", "ftp://x"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("COMFYUI_URL"), "{stderr}");
}

/// Every failure of a command exits with the code of its kind (`cli::Failure`): 0 for
/// `--help`, 2 for the command line and the configuration, 1 for a failure at run time
/// (the database in use: `api.rs`); one `error: ` line on stderr.
#[test]
fn cli_failures_exit_with_the_code_of_their_kind() {
    let dir = support::tempdir();
    let db = dir.path().join("none.redb").display().to_string();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/sdxl_api.json");
    let fixture = fixture.display().to_string();
    let (code, out, err) = cli(&["--help"], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Usage"), "{out}");
    // Arguments, environment, exit code, what stderr says.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: [Case<'_>; 5] = [
        (&["no-such-command"], &[], 2, "no-such-command"),
        (&["check"], &[("DATABASE_URL", &db)], 2, "no database at"),
        (&["import-workflow", &fixture, "--comfyui-url", "ftp://127.0.0.1:1"], &[], 2, "COMFYUI_URL"),
        (
            &["add-workflow", &fixture, "--id", "x", "--plugin", "/nonexistent.wasm"],
            &[("DATABASE_URL", &db)],
            2,
            "--plugin",
        ),
        (&["health", "--port", "1"], &[], 1, "not reachable"),
    ];
    for (args, envs, expected, says) in cases {
        let (code, _, err) = cli(args, envs);
        assert_eq!(code, Some(expected), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(says), "{args:?}: {err}");
        // A usage error is clap's whole message (usage line, tip); any other failure one line.
        if args[0] == "no-such-command" {
            assert!(err.contains("Usage:"), "{args:?}: {err}");
        } else {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
    }
    assert!(!std::path::Path::new(&db).exists(), "no failed command created the database");
}

/// Registering checks node classes against the healthy backends: an unknown class is a
/// warning naming the node and class, or with `?strict=true` a refusal that registers
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_checks_node_classes_against_the_backends() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    eventually("the simulator becomes healthy", async || {
        let (_, v) = get_json(&format!("{}/backends", gw.url())).await;
        if v["backends"][0]["reachable"] == true { Ok(()) } else { Err(v) }
    })
    .await;
    let body = |id: &str| {
        json!({"id": id, "workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "NoSuchNode", "inputs": {"images": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}})
    };
    let url = format!("{}/workflows", gw.url());
    let (status, v) = support::post_json(&url, &body("custom_a")).await;
    assert_eq!(status, 201, "{v}");
    let warnings = v["warnings"].as_array().expect("warnings").iter().filter_map(Value::as_str).collect::<Vec<_>>();
    assert!(
        warnings.iter().any(|w| w.contains("node 2 (NoSuchNode)") && w.contains("no healthy backend knows")),
        "{warnings:?}"
    );
    assert_eq!(warnings.len(), 1, "the known classes are not warned about: {warnings:?}");

    let (status, v) = support::post_json(&format!("{url}?strict=true"), &body("custom_b")).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "/workflow/2/class_type", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("NoSuchNode"), "{v}");
    let status = support::get(&format!("{url}/custom_b"), &[]).await.status();
    assert_eq!(status, 404, "nothing registered");
    let (status, v) = support::post_json(&format!("{url}?strict=maybe"), &body("custom_c")).await;
    assert_eq!(status, 400, "{v}");
    // A known graph registers cleanly under strict, with no warnings.
    let mut clean = body("custom_d");
    clean["workflow"].as_object_mut().unwrap().remove("2");
    let (status, v) = support::post_json(&format!("{url}?strict=true"), &clean).await;
    assert_eq!(status, 201, "{v}");
    assert!(v.get("warnings").is_none(), "{v}");
    // A run of registrations does not make the backend build its definitions each time.
    let reads = async || get_json(&format!("{}/sim/requests", sim.url())).await.1["objectInfo"].as_u64().unwrap();
    let before = reads().await;
    for i in 0..5 {
        let (status, v) = post_json(&url, &body(&format!("custom_run_{i}"))).await;
        assert_eq!(status, 201, "{v}");
        assert!(v["warnings"][0].as_str().unwrap().contains("NoSuchNode"), "still checked: {v}");
    }
    let more = reads().await - before;
    assert!(more <= 1, "at most one /object_info read per 10 s, not {more}");
}

/// A workflow as ComfyUI's editor saves it (the UI format: nodes, links, widget values,
/// reroutes, primitives) is converted with the backend's node definitions, proposed like
/// its Export (API), registered and run; by the CLI too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_ui_workflow_is_converted_proposed_and_runs() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let ui: Value = serde_json::from_str(include_str!("fixtures/ui/icon_512_ui.json")).unwrap();
    let api: Value = serde_json::from_str(include_str!("fixtures/ui/icon_512_api.json")).unwrap();
    let url = format!("{}/workflows/import", gw.url());
    let (status, from_ui) = post_json(&url, &json!({"workflow": ui, "id": "from_ui"})).await;
    assert_eq!(status, 200, "{from_ui}");
    let (status, from_api) = post_json(&url, &json!({"workflow": api, "id": "from_ui"})).await;
    assert_eq!(status, 200, "{from_api}");
    // The same proposal as from the API export of the same graph.
    assert_eq!(from_ui["proposal"]["template"], from_api["proposal"]["template"]);
    assert_eq!(from_ui["proposal"]["inputSchema"], from_api["proposal"]["inputSchema"]);
    let (status, registered) = post_json(&url, &json!({"workflow": ui, "id": "from_ui", "register": true})).await;
    assert_eq!(status, 201, "{registered}");
    let job = gw.submit_ok(json!({"workflowId": "from_ui", "inputs": {"prompt": "a saved workflow"}})).await;
    assert_eq!(gw.wait_terminal(&job, Duration::from_secs(60)).await["status"], "succeeded");
    // The CLI converts the same file.
    let file = dir.path().join("saved.json");
    std::fs::write(&file, serde_json::to_string(&ui).unwrap()).unwrap();
    let (code, stdout, stderr) = cli(&["import-workflow", file.to_str().unwrap(), "--comfyui-url", &sim.url()], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["proposal"]["template"], from_api["proposal"]["template"]);
}
