//! `GET /openapi.json` describes what the server really does: its structure is checked
//! here, and schemathesis (installed by `scripts/ci-deps`) calls every operation with
//! generated input against the live server and checks every answer against it.
//!
//! The `positive_data_acceptance` check is excluded on purpose: a workflow definition or a
//! job's inputs can be valid JSON Schema-wise and still be rejected for semantic reasons
//! JSON Schema cannot express (a `{{token}}` without input or default, a link to a missing
//! node, inputs that fail the workflow's own schema). Such rejections are documented 400s.

use std::process::Command;

use crate::support::{self, Gateway, Sim, get_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_live_server() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let (status, doc) = get_json(&format!("{}/openapi.json", gw.url())).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/",
        "/ui/{file}",
        "/docs",
        "/health",
        "/capabilities",
        "/models",
        "/openapi.json",
        "/metrics",
        "/workflows",
        "/workflows/{id}",
        "/workflows/import",
        "/jobs",
        "/jobs/{jobId}",
        "/jobs/cancel",
        "/jobs/{jobId}/cancel",
        "/jobs/{jobId}/logs",
        "/jobs/{jobId}/events",
        "/jobs/{jobId}/webhooks",
        "/jobs/{jobId}/webhook/redeliver",
        "/outputs/{jobId}",
        "/outputs/{jobId}/{file}",
        "/audit",
        "/backends",
        "/backends/{backendId}/drain",
        "/backends/{backendId}/resume",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    for id in ["sdxl_realism_v1", "sprite_transparent_bg", "icon_512"] {
        let schema = &doc["components"]["schemas"][format!("WorkflowInputs.{id}")];
        assert_eq!(schema["type"], "object", "{id}'s input schema is included");
        assert!(schema["properties"]["prompt"].is_object());
    }
    assert_eq!(doc["components"]["securitySchemes"]["ApiKeyAuth"]["name"], "X-API-Key");
    assert_eq!(doc["components"]["securitySchemes"]["BearerAuth"]["scheme"], "bearer");
    assert!(doc["paths"]["/jobs"]["get"]["responses"]["401"].is_object());
    assert!(doc["paths"]["/workflows"]["post"]["responses"]["403"].is_object());
    assert!(doc["paths"]["/audit"]["get"]["responses"]["403"].is_object());
    assert!(doc["paths"]["/backends/{backendId}/drain"]["post"]["responses"]["403"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["ErrorResponse"]["properties"]["error"]["$ref"], "#/components/schemas/ErrorBody");
    assert_eq!(schemas["ErrorBody"]["properties"]["code"]["$ref"], "#/components/schemas/ErrorCode");
    let codes: Vec<&str> =
        schemas["ErrorCode"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(codes.contains(&"VALIDATION_ERROR") && codes.contains(&"COMFYUI_OOM"));

    let Some(schemathesis) = support::require_tool("schemathesis") else { return };
    let url = format!("{}/openapi.json", gw.url());
    // schemathesis keeps a cache in its working directory: keep it out of the checkout.
    let workdir = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .args(["run", &url, "--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", "25", "--seed", "20261124", "--no-color"])
            // `POST /jobs?wait=N` holds its answer until the job ends or N seconds pass, and
            // the typed per-workflow bodies queue real jobs: wait as long as the server may.
            .args(["--request-timeout", "310", "--max-response-time", "310"])
            .current_dir(&workdir)
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    eprintln!("schemathesis: {}", text.lines().rev().find(|l| l.contains(" in ")).unwrap_or(""));
}
