//! The answers behind the re-submit decision (`comfy::protocol`'s strict parsers): a
//! `GET /queue` body, a `GET /history/{id}` body, a `POST /prompt` answer (the same bytes
//! to each). Never a panic, and each parser agrees with an independent model of ComfyUI's
//! shapes (PROTOCOL.md §2, §3, §6):
//! - "unknown" (`Ok(None)`) comes only from ComfyUI's `{}`, never from anything else;
//! - a queue is accepted only when `queue_running` and `queue_pending` are both lists of
//!   items whose second element is a string, and then holds exactly those ids;
//! - a history entry is accepted only with `status_str` `success` or `error` and an
//!   `outputs` object, its outcome agrees with that status, and every file it lists is in
//!   the entry's `outputs`;
//! - a submit answer is accepted only when it names our prompt id.
//!
//! So no malformed answer can look like "the prompt is not there" and lead to a second
//! `POST /prompt`.
#![no_main]

use comfyui_gateway::comfy::protocol::{self, Outcome};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The queue's ids by the model: `None` when the body is not a queue.
fn model_queue(v: &Value) -> Option<(Vec<String>, Vec<String>)> {
    let ids = |key: &str| -> Option<Vec<String>> {
        v.as_object()?
            .get(key)?
            .as_array()?
            .iter()
            .map(|item| item.as_array()?.get(1)?.as_str().map(str::to_string))
            .collect()
    };
    Some((ids("queue_running")?, ids("queue_pending")?))
}

fn check_history(value: &Value, id: &str) {
    match protocol::parse_history(value, id) {
        Ok(None) => assert!(value.as_object().is_some_and(|o| o.is_empty()), "unknown only from {{}}: {value}"),
        Ok(Some(entry)) => {
            let raw = &value[id];
            let status = raw["status"]["status_str"].as_str();
            match &entry.outcome {
                Outcome::Success => assert_eq!(status, Some("success")),
                Outcome::Error(e) => {
                    assert_eq!(status, Some("error"));
                    let _ = (e.code(), e.summary(), e.details());
                }
                Outcome::Interrupted => assert_eq!(status, Some("error")),
            }
            let outputs = raw["outputs"].as_object().expect("an accepted entry has an outputs object");
            for file in &entry.files {
                let listed = outputs[&file.node_id][&file.key].as_array().expect("a listed file comes from a list");
                assert!(listed.iter().any(|item| item["filename"].as_str() == Some(file.filename.as_str())));
                let _ = protocol::media_type_of(&file.filename);
            }
        }
        Err(e) => {
            assert!(!e.is_empty());
            assert!(!value.as_object().is_some_and(|o| o.is_empty()), "{{}} is unknown, not an error");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // `POST /prompt`: accepted exactly when the answer names our prompt id.
    let value: Option<Value> = serde_json::from_slice(data).ok();
    let names = |id: &str| value.as_ref().and_then(|v| v.get("prompt_id")).and_then(Value::as_str) == Some(id);
    assert_eq!(protocol::parse_submit_answer(data, "prompt-1").is_ok(), names("prompt-1"));
    if let Some(id) = value.as_ref().and_then(|v| v.get("prompt_id")).and_then(Value::as_str) {
        assert!(protocol::parse_submit_answer(data, id).is_ok());
    }

    // Bodies that are not JSON never reach the parsers (the client refuses them first).
    let Some(value) = value else { return };

    match (protocol::parse_queue(&value), model_queue(&value)) {
        (Ok(queue), Some((running, pending))) => {
            assert_eq!((&queue.running, &queue.pending), (&running, &pending));
            for id in running.iter().chain(&pending) {
                assert!(queue.contains(id));
            }
        }
        (Err(e), None) => assert!(!e.is_empty()),
        (parsed, model) => panic!("queue parser {parsed:?} and model {model:?} disagree on {value}"),
    }

    if let Some(entries) = value.as_object() {
        for id in entries.keys().take(8) {
            check_history(&value, id);
        }
    }
    check_history(&value, "p");
    check_history(&value, "00000000-not-a-key");
});
