//! WebAssembly plugins through real jobs: the example plugins of `plugins/` (built by
//! `scripts/build-plugins`) attached to workflows through the API, run against the
//! simulator; hostile plugins ending their jobs with the right code while other jobs keep
//! flowing; a type-mismatched plugin refused at upload; a restart loading plugins from
//! their precompiled artifacts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, get_json, post_json};

pub(crate) fn wasm_b64(name: &str) -> String {
    let dir = match std::option_env!("PLUGINS_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/target/wasm32-wasip2/release"),
    };
    let path = dir.join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the plugins first: scripts/build-plugins", path.display()));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A small image workflow the simulator runs: an optional invert between image and save.
pub(crate) fn graph() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}, "_meta": {"enabledBy": "invert", "bypass": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "plugged"}}
    })
}

pub(crate) fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "width": {"type": "integer", "minimum": 16, "maximum": 2048, "default": 64},
            "height": {"type": "integer", "minimum": 16, "maximum": 2048, "default": 64},
            "invert": {"type": "boolean", "default": false}
        },
        "additionalProperties": false
    })
}

async fn register(gw: &Gateway, id: &str, plugin: Value) -> (u16, Value) {
    let body = json!({"id": id, "workflow": graph(), "inputSchema": schema(), "plugin": plugin});
    post_json(&format!("{}/workflows", gw.url()), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_transform_render_and_post_process_real_jobs() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;

    // input-transform: aspect ratio → width/height; a blocked word → 422 naming the field.
    let guard = json!({"wasm": wasm_b64("prompt_guard"),
        "config": {"blocked": ["forbidden"], "aspectRatios": true, "longSide": 256}});
    let (status, v) = register(&gw, "guarded", guard).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["plugin"]["hash"].as_str().map(str::len), Some(64), "{v}");
    let id = gw
        .submit_ok(
            json!({"workflowId": "guarded", "inputs": {"prompt": "a fox", "aspectRatio": "16:9"}, "cache": false}),
        )
        .await;
    let done = gw.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!((done["inputs"]["width"].as_i64(), done["inputs"]["height"].as_i64()), (Some(256), Some(128)), "{done}");
    assert!(done["inputs"].get("aspectRatio").is_none());
    let (status, v) = gw.submit(json!({"workflowId": "guarded", "inputs": {"prompt": "something forbidden"}})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("PLUGIN_FAILED")), "{v}");
    let d = &v["error"]["details"];
    assert_eq!(
        (d["kind"].as_str(), d["pluginCode"].as_str(), d["field"].as_str()),
        (Some("rejected"), Some("PROMPT_BLOCKED"), Some("/prompt")),
        "{v}"
    );

    // template-render + output-process in one workflow? No: one plugin per workflow; the
    // renderer drops the invert node when `invert` is false and rewires around it.
    let (status, v) = register(&gw, "rendered", json!({"wasm": wasm_b64("subgraph_renderer")})).await;
    assert_eq!(status, 201, "{v}");
    for (invert, expect) in [(false, 0u8), (true, 255u8)] {
        let id = gw.submit_ok(json!({"workflowId": "rendered", "inputs": {"invert": invert}, "cache": false})).await;
        let done = gw.wait_terminal(&id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        let url = format!("{}{}", gw.url(), done["outputs"][0]["url"].as_str().unwrap());
        let png = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png.to_vec())).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            buf[0],
            expect,
            "invert={invert}: the rendered graph {}",
            if invert { "inverts" } else { "does not" }
        );
    }

    // output-process: metadata stripped from every stored PNG; originals kept on request.
    let tidy = json!({"wasm": wasm_b64("png_tidy"), "keepOriginals": true});
    let (status, v) = register(&gw, "tidied", tidy).await;
    assert_eq!(status, 201, "{v}");
    let id = gw.submit_ok(json!({"workflowId": "tidied", "inputs": {}, "cache": false})).await;
    let done = gw.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let outputs = done["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "the original and the processed file: {done}");
    let mut with_text = 0;
    for o in outputs {
        let bytes = reqwest::get(format!("{}{}", gw.url(), o["url"].as_str().unwrap())).await.unwrap().bytes().await;
        with_text += usize::from(bytes.unwrap().windows(4).any(|w| w == b"tEXt"));
    }
    assert_eq!(with_text, 1, "only the original keeps ComfyUI's text chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_plugins_fail_their_jobs_with_the_right_code_while_others_flow() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("PLUGIN_TIMEOUT_MS", "300"), ("PLUGIN_MEMORY_MB", "32")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let (status, v) = post_json(
        &format!("{}/workflows", gw.url()),
        &json!({"id": "plain", "workflow": graph(), "inputSchema": schema()}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let cases = [
        ("spin", "timeout", "PLUGIN_LIMIT_EXCEEDED"),
        ("sleepy", "timeout", "PLUGIN_LIMIT_EXCEEDED"),
        ("balloon", "memory", "PLUGIN_LIMIT_EXCEEDED"),
        ("panicky", "panic", "PLUGIN_FAILED"),
        ("abyss", "stack overflow", "PLUGIN_FAILED"),
        ("bad_json", "invalid json", "PLUGIN_FAILED"),
    ];
    for (name, _, _) in &cases {
        let (status, v) = register(&gw, name, json!({"wasm": wasm_b64(name)})).await;
        assert_eq!(status, 201, "{name}: {v}");
    }
    // Every hostile submit at once, with ordinary jobs beside them.
    let hostile = cases.iter().map(|(name, kind, code)| {
        let gw = &gw;
        async move {
            let started = Instant::now();
            let (status, v) = gw.submit(json!({"workflowId": name, "inputs": {"prompt": "x"}})).await;
            (name, kind, code, status, v, started.elapsed())
        }
    });
    let ordinary =
        (0..4).map(|i| {
            let gw = &gw;
            async move {
                gw.submit_ok(json!({"workflowId": "plain", "inputs": {"width": 16 + i * 8}, "cache": false})).await
            }
        });
    let (results, ids) =
        tokio::join!(futures_util::future::join_all(hostile), futures_util::future::join_all(ordinary));
    for (name, kind, code, status, v, elapsed) in results {
        assert_eq!(status, 422, "{name}: {v}");
        assert_eq!(
            (v["error"]["code"].as_str(), v["error"]["details"]["kind"].as_str()),
            (Some(*code), Some(*kind)),
            "{name}: {v}"
        );
        assert!(elapsed < Duration::from_secs(5), "{name} took {elapsed:?}");
    }
    for id in ids {
        assert_eq!(gw.wait_terminal(&id, Duration::from_secs(30)).await["status"], "succeeded");
    }
    // The gateway is still fine.
    assert_eq!(get_json(&format!("{}/health", gw.url())).await.0, 200);

    // A plugin whose export has the wrong type is refused at upload, readably.
    let (status, v) = register(&gw, "mismatch", json!({"wasm": wasm_b64("mismatch")})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("input-transform") && message.contains("wrong types"), "{message}");
    let (status, v) = register(&gw, "junk", json!({"wasm": "aGVsbG8="})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not wasm"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_plugins_precompiled_and_running_jobs_keep_their_version() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let mut gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let guard = json!({"wasm": wasm_b64("prompt_guard"), "config": {"aspectRatios": true, "longSide": 128}});
    let (status, v) = register(&gw, "guarded", guard).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(gw.metric("comfyui_gateway_plugin_loads{source=\"compiled\"}").await, 1.0);

    gw.restart().await;
    let started = Instant::now();
    let id = gw.submit_ok(json!({"workflowId": "guarded", "inputs": {"aspectRatio": "1:1"}})).await;
    let first_submit = started.elapsed();
    let done = gw.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!((done["status"].as_str(), done["inputs"]["width"].as_i64()), (Some("succeeded"), Some(128)), "{done}");
    assert_eq!(gw.metric("comfyui_gateway_plugin_loads{source=\"compiled\"}").await, 0.0, "no recompilation");
    assert_eq!(gw.metric("comfyui_gateway_plugin_loads{source=\"precompiled\"}").await, 1.0);
    assert!(first_submit < Duration::from_secs(2), "first submit after restart took {first_submit:?}");

    // Updating the plugin (a new version) applies to new jobs; the workflow keeps a plugin
    // when an update does not mention it, and loses it with `plugin: null`.
    let url = format!("{}/workflows/guarded", gw.url());
    let put = |body: Value| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new().put(&url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = put(json!({"workflow": graph(), "inputSchema": schema()})).await;
    assert_eq!((status, v["plugin"]["hash"].is_string()), (200, true), "{v}");
    let (status, v) = put(json!({"workflow": graph(), "inputSchema": schema(), "plugin": null})).await;
    assert_eq!((status, v.get("plugin")), (200, None), "{v}");
    let (status, v) = gw.submit(json!({"workflowId": "guarded", "inputs": {"aspectRatio": "1:1"}})).await;
    assert_eq!(status, 400, "without the plugin, aspectRatio is not an input: {v}");
}
