//! ComfyUI's JSON as the gateway reads it (`comfy::protocol`): a WebSocket text frame, a
//! `/history/{id}` body, a `/queue` body, a `POST /prompt` rejection. Never a panic, and
//! - a parsed WS message's prompt id comes from the message's `data.prompt_id`;
//! - a history body answers for each of its prompt ids and for no other;
//! - the `POST /prompt` body built around a JSON prompt is JSON with that prompt and id.
//!
//! Input: one body or frame (the same bytes go to every parser).
#![no_main]

use comfyui_gateway::comfy::protocol::{self, Outcome, WsMessage};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let message = protocol::parse_ws_text(&text);
    let value: Option<Value> = serde_json::from_str(&text).ok();
    if let Some(prompt_id) = message.prompt_id() {
        let data_id = value.as_ref().and_then(|v| v.pointer("/data/prompt_id")).and_then(Value::as_str);
        assert_eq!(Some(prompt_id), data_id, "{message:?}");
    }
    if let WsMessage::ExecutionError(e) = &message {
        let _ = (e.code(), e.summary(), e.details());
    }

    let (summary, details) = protocol::parse_rejection(&text);
    assert!(!summary.is_empty());
    assert!(details.get("nodeErrors").is_some_and(Value::is_array));

    let Some(value) = value else { return };
    let queue = protocol::parse_queue(&value);
    for id in queue.running.iter().chain(&queue.pending) {
        assert!(queue.contains(id));
    }
    if let Some(entries) = value.as_object() {
        for prompt_id in entries.keys().take(8) {
            let entry = protocol::parse_history(&value, prompt_id).expect("an entry of the body");
            if let Outcome::Error(e) = &entry.outcome {
                let _ = (e.code(), e.summary(), e.details());
            }
            for file in &entry.files {
                let _ = protocol::media_type_of(&file.filename);
            }
        }
        let absent = "00000000-not-a-key";
        assert_eq!(entries.contains_key(absent), protocol::parse_history(&value, absent).is_some());
    } else {
        assert!(protocol::parse_history(&value, "p").is_none() || value.get("p").is_some());
    }
    let body = protocol::submit_body(&value.to_string(), "prompt-1", "client-1");
    let sent: Value = serde_json::from_str(&body).expect("the submit body is JSON");
    assert_eq!(sent["prompt"], value);
    assert_eq!(sent["prompt_id"], "prompt-1");
});
