//! A build without the `wasm-plugins` feature (`--no-default-features`), run as the real
//! binary: every plugin operation is refused cleanly, the rest of the gateway works.

use std::process::Stdio;

use base64::Engine as _;
use serde_json::json;

use crate::support::{self, Gateway, Sim, get_json, post_json};

const NO_RUNTIME: &str = "this build has no WebAssembly plugin runtime (cargo feature `wasm-plugins`)";

/// The first bytes of a component: what a plugin upload starts with.
const COMPONENT: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_runtime_a_plugin_is_refused_with_plugin_failed() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;

    let (s, caps) = get_json(&format!("{}/capabilities", gw.url())).await;
    assert_eq!((s, &caps["plugins"]), (200, &json!(false)), "{caps}");

    let wasm = base64::engine::general_purpose::STANDARD.encode(COMPONENT);
    let body = json!({
        "id": "plugged",
        "workflow": {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}},
        "plugin": {"wasm": wasm, "config": {}}
    });
    let (s, v) = post_json(&format!("{}/workflows", gw.url()), &body).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "PLUGIN_FAILED", "{v}");
    assert_eq!(v["error"]["details"]["kind"], "unavailable", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(NO_RUNTIME), "{v}");
    let (s, v) = get_json(&format!("{}/workflows/plugged", gw.url())).await;
    assert_eq!(s, 404, "nothing registered: {v}");

    // Everything else still runs: a bundled workflow's job succeeds.
    let id = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "a fox", "seed": 1}})).await;
    let job = gw.wait_terminal(&id, std::time::Duration::from_secs(20)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[test]
fn without_the_runtime_plugin_check_exits_1_and_says_why() {
    let dir = support::tempdir();
    let file = dir.path().join("p.wasm");
    std::fs::write(&file, COMPONENT).unwrap();
    let out =
        support::bin().args(["plugin", "check"]).arg(&file).stdin(Stdio::null()).output().expect("run the binary");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains(NO_RUNTIME) || stdout.contains(NO_RUNTIME), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
