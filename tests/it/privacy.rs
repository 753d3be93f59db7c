//! Privacy mode leaves no prompt text in the database file or the gateway's log, while
//! the job still runs (also after a restart, from its sealed record) and its owner still
//! reads its inputs through the API.

use std::time::Duration;

use serde_json::json;

use crate::support::{self, Gateway, Sim};

const SECRET: &str = "zebra-unicorn-secret-4242";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_mode_keeps_prompt_text_out_of_the_database_file_and_logs() {
    let dir = support::tempdir();
    // The backend is down at first: the job waits in the queue, sealed, across a restart.
    let down = support::DeadPort::new();
    let port = down.port;
    let mut gw = Gateway::start(dir.path(), &down.url(), &[("PRIVACY_MODE", "true"), ("LOG_LEVEL", "debug")]).await;
    let prompt = format!("a portrait of {SECRET} at dawn");
    let queued = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": prompt, "seed": 3}})).await;
    assert_eq!(gw.job(&queued).await["inputs"]["prompt"], prompt.as_str(), "the owner reads its inputs");
    gw.kill9();
    drop(down);
    let sim = Sim::start_on(dir.path(), port, &["--node-delay-ms".into(), "5".into()]).await;
    gw.restart().await;
    let done = gw.wait_terminal(&queued, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "the sealed prompt was opened and sent: {done}");

    // A failing job: its stored error must not carry the prompt either.
    sim.faults(json!({"nodeError": 1})).await;
    let failing = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": prompt, "seed": 4}})).await;
    let failed = gw.wait_terminal(&failing, Duration::from_secs(60)).await;
    assert_eq!(failed["status"], "failed");

    // Outputs carry no PNG text chunks (ComfyUI writes the prompt there).
    let url = format!("{}{}", gw.url(), done["outputs"][0]["url"].as_str().unwrap());
    let png = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    assert!(!contains(&png, SECRET) && !contains(&png, "tEXt"), "text chunks stripped");

    // ComfyUI itself did receive the prompt (so the test would notice a broken probe).
    let raw_outputs: Vec<u8> = std::fs::read_dir(sim.data_dir.join("output"))
        .unwrap()
        .flatten()
        .flat_map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect();
    assert!(contains(&raw_outputs, SECRET), "the probe finds the secret where it is expected");

    gw.kill9();
    let db = std::fs::read(&gw.db).unwrap();
    assert!(!contains(&db, SECRET), "no prompt text in the database file");
    assert!(!contains(gw.proc_.log().as_bytes(), SECRET), "no prompt text in the log");
    let key = gw.db.with_extension("privacy-key");
    assert_eq!(std::fs::read(&key).unwrap().len(), 32, "the key lives outside the database");
}
