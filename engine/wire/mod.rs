//! The API's wire types: one serde type for every JSON body the gateway takes or gives
//! (camelCase, as the README's "Use it" shows them), each describing itself
//! ([`schemars::JsonSchema`]) so the OpenAPI document's schemas are generated from the
//! very types that parse and answer (`api::openapi`).
//!
//! No HTTP here: statuses, headers and routes are the API layer's; these are the bodies,
//! and webhooks send the same [`job::JobView`] that `GET /jobs/{id}` answers.
//!
//! - [`request`]: request bodies (`POST /jobs`, workflow definitions, plugins, import);
//!   unknown fields are refused where the API promises it.
//! - [`job`]: jobs, outputs, event-log entries, webhook deliveries.
//! - [`system`]: errors, health and probes, backends, capabilities, workflows, audit.

pub mod job;
pub mod request;
pub mod system;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// Deserialize a wire type from parsed JSON; a mismatch is `VALIDATION_ERROR` naming the
/// JSON pointer of the offending field (`/inputs`, `/plugin/wasm`, `/callbackEvents/2`).
///
/// # Errors
/// `VALIDATION_ERROR` with `details: [{path, message}]`.
pub fn parse<T: DeserializeOwned>(value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let pointer = pointer(e.path());
        let (pointer, message) = explain(pointer, &e.inner().to_string());
        Error::validation(&pointer, message)
    })
}

/// The JSON pointer of a serde path (`plugin.wasm` -> `/plugin/wasm`, `a[2]` -> `/a/2`).
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => out.push_str(&escape(key)),
            Segment::Unknown => out.push('?'),
        }
    }
    if out.is_empty() { "/".to_string() } else { out }
}

/// A name as one segment of a JSON pointer (RFC 6901: `~` is `~0`, `/` is `~1`).
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// serde's messages in the API's words: a missing or unknown field names the field in
/// the pointer (`/workflowId: is required`, `/extra: unknown field; expected one of ...`).
fn explain(pointer: String, message: &str) -> (String, String) {
    let field = |rest: &str| escape(rest.split('`').next().unwrap_or_default());
    let child = |name: &str| if pointer == "/" { format!("/{name}") } else { format!("{pointer}/{name}") };
    if let Some(rest) = message.strip_prefix("missing field `") {
        return (child(&field(rest)), "is required".to_string());
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = field(rest);
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        let at = if pointer.ends_with(&format!("/{name}")) { pointer } else { child(&name) };
        return (at, format!("unknown field; expected {}", expected.replace('`', "")));
    }
    (pointer, message.to_string())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::parse;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        workflow_id: String,
        #[serde(default)]
        #[allow(dead_code)]
        inner: Option<Inner>,
        #[serde(default)]
        #[allow(dead_code)]
        list: Vec<u8>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        flag: bool,
    }

    fn refusal(v: serde_json::Value) -> (String, String) {
        let e = parse::<Outer>(&v).expect_err("refused");
        let d = e.details.expect("details");
        (d[0]["path"].as_str().unwrap().to_string(), d[0]["message"].as_str().unwrap().to_string())
    }

    #[test]
    fn errors_name_the_json_pointer_of_the_field() {
        assert_eq!(refusal(json!({})).0, "/workflowId");
        assert_eq!(refusal(json!({})).1, "is required");
        assert_eq!(refusal(json!({"workflowId": 1})).0, "/workflowId");
        assert!(refusal(json!({"workflowId": 1})).1.contains("expected a string"));
        let (at, message) = refusal(json!({"workflowId": "w", "extra": 1}));
        assert_eq!(at, "/extra");
        assert!(message.starts_with("unknown field; expected one of workflowId"), "{message}");
        assert_eq!(refusal(json!({"workflowId": "w", "inner": {}})).0, "/inner/flag");
        assert_eq!(refusal(json!({"workflowId": "w", "inner": {"flag": true, "x/y": 1}})).0, "/inner/x~1y");
        assert_eq!(refusal(json!({"workflowId": "w", "list": [1, 2, 300]})).0, "/list/2");
        assert_eq!(refusal(json!("text")).0, "/");
        assert!(parse::<Outer>(&json!({"workflowId": "w", "inner": {"flag": false}})).is_ok());
    }
}
