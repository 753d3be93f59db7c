//! ComfyUI's JSON as the gateway reads it (`comfy::protocol`): a WebSocket text frame, a
//! `/history/{id}` body, a `/queue` body, a `POST /prompt` rejection. Never a panic (the
//! strict `/queue` and `/history` parsers are checked further by `reconcile_answers`), and
//! - a parsed WS message's prompt id comes from the message's `data.prompt_id`;
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

    // `/queue` and `/history/{id}` have their own target (`reconcile_answers`); here only
    // "never a panic" for them.
    let Some(value) = value else { return };
    let _ = protocol::parse_queue(&value);
    if let Some(entries) = value.as_object() {
        for prompt_id in entries.keys().take(8) {
            if let Ok(Some(entry)) = protocol::parse_history(&value, prompt_id)
                && let Outcome::Error(e) = &entry.outcome
            {
                let _ = (e.code(), e.summary(), e.details());
            }
        }
    }
    let body = protocol::submit_body(&value.to_string(), "prompt-1", "client-1");
    let sent: Value = serde_json::from_str(&body).expect("the submit body is JSON");
    assert_eq!(sent["prompt"], value);
    assert_eq!(sent["prompt_id"], "prompt-1");
});
