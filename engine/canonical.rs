//! Canonical JSON and the SHA-256 fingerprints built on it: the result-cache key of a
//! rendered workflow and the fingerprint of a request body for idempotency keys.
//!
//! Canonical form: object keys sorted by their UTF-8 bytes, no insignificant whitespace,
//! strings and numbers as serde_json writes them; so two JSON texts that differ only in
//! key order or spacing hash the same.

use aws_lc_rs::digest;
use serde_json::Value;

use crate::domain::{Hash, InputRef};

/// Whether every object in `v` iterates its keys in byte order.
fn sorted(v: &Value) -> bool {
    match v {
        Value::Object(map) => map.keys().is_sorted_by(|a, b| a.as_bytes() <= b.as_bytes()) && map.values().all(sorted),
        Value::Array(items) => items.iter().all(sorted),
        _ => true,
    }
}

/// The canonical form written key by key, sorting each object's keys: for a value with
/// an object whose keys are out of order (see [`to_string`]).
fn write_sorting(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorting(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorting(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The canonical form of `v`.
pub fn to_string(v: &Value) -> String {
    if sorted(v) {
        return v.to_string();
    }
    let mut out = String::new();
    write_sorting(v, &mut out);
    out
}

/// The result-cache key of a rendered prompt: SHA-256 over the workflow id and version,
/// the canonical prompt (`canonical`, from [`to_string`]) with the job's own input folder (`job_folder`, which differs for
/// every job) replaced by a fixed name, the content hashes of the image inputs, and a
/// `scope` (empty, or the owner when results must not be shared between owners).
pub fn cache_key(workflow: (&str, u32), canonical: &str, job_folder: &str, inputs: &[InputRef], scope: &str) -> Hash {
    let canonical = if canonical.contains(job_folder) {
        std::borrow::Cow::Owned(canonical.replace(job_folder, "gw/<job>"))
    } else {
        std::borrow::Cow::Borrowed(canonical)
    };
    let mut h = digest::Context::new(&digest::SHA256);
    for part in
        [b"comfyui-gateway cache v1".as_slice(), workflow.0.as_bytes(), &workflow.1.to_be_bytes(), scope.as_bytes()]
    {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(&(canonical.len() as u64).to_be_bytes());
    h.update(canonical.as_bytes());
    let mut named: Vec<(&str, &Hash)> = inputs.iter().map(|i| (i.name.as_str(), &i.hash)).collect();
    named.sort_unstable();
    for (name, hash) in named {
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(hash);
    }
    finish(h)
}

/// The SHA-256 digest of a finished context.
fn finish(h: digest::Context) -> [u8; 32] {
    h.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The fingerprint of a submit request: its canonical JSON body and, for multipart
/// submits, each file part's name and bytes (in name order).
pub fn request_fingerprint(body: &Value, files: &[(String, bytes::Bytes)]) -> [u8; 32] {
    let mut h = digest::Context::new(&digest::SHA256);
    let canonical = to_string(body);
    h.update(&(canonical.len() as u64).to_be_bytes());
    h.update(canonical.as_bytes());
    let mut parts: Vec<&(String, bytes::Bytes)> = files.iter().collect();
    parts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, bytes) in parts {
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(&(bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    finish(h)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn key_order_and_spacing_do_not_matter_values_do() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": "é", "x": null}], "a": 2.5}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":2.5,"b":[1,{"x":null,"y":"é"}]}"#).unwrap();
        assert_eq!(to_string(&a), r#"{"a":2.5,"b":[1,{"x":null,"y":"é"}]}"#);
        assert_eq!(to_string(&a), to_string(&b));
        assert_ne!(to_string(&json!({"a": [1, 2]})), to_string(&json!({"a": [2, 1]})), "arrays keep order");
        assert_eq!(to_string(&json!({"q\"": "\n"})), r#"{"q\"":"\n"}"#, "keys and strings are escaped");
        // The fast path (serde_json's own compact form) and the sorting writer agree.
        for v in [a, json!({"q\"": ["\n", 1e300, -0.0, 12345678901234567890u64, {"": null, "é": true}]})] {
            let mut sorting = String::new();
            write_sorting(&v, &mut sorting);
            assert_eq!(sorting, to_string(&v));
        }
    }

    #[test]
    fn cache_keys_ignore_the_job_folder_and_separate_everything_else() {
        let prompt = |folder: &str, seed: i64| json!({"1": {"class_type": "LoadImage", "inputs": {"image": format!("{folder}/init.png"), "seed": seed}}});
        let image = |byte: u8| InputRef {
            name: "init".into(),
            file_name: "init.png".into(),
            media_type: "image/png".into(),
            size_bytes: 1,
            hash: [byte; 32],
        };
        let key = |wf: (&str, u32), p: &Value, folder: &str, img: u8, scope: &str| {
            cache_key(wf, &to_string(p), folder, &[image(img)], scope)
        };
        let base = key(("wf", 1), &prompt("gw/aaa", 1), "gw/aaa", 1, "");
        assert_eq!(base, key(("wf", 1), &prompt("gw/bbb", 1), "gw/bbb", 1, ""), "another job, same request");
        for other in [
            key(("wf", 2), &prompt("gw/aaa", 1), "gw/aaa", 1, ""),
            key(("wg", 1), &prompt("gw/aaa", 1), "gw/aaa", 1, ""),
            key(("wf", 1), &prompt("gw/aaa", 2), "gw/aaa", 1, ""),
            key(("wf", 1), &prompt("gw/aaa", 1), "gw/aaa", 2, ""),
            key(("wf", 1), &prompt("gw/aaa", 1), "gw/aaa", 1, "owner"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn request_fingerprints_cover_body_and_files() {
        let body = json!({"workflowId": "w", "inputs": {"a": 1}});
        let same = serde_json::from_str(r#"{"inputs":{"a":1},"workflowId":"w"}"#).unwrap();
        let f = |b: &'static [u8]| vec![("img".to_string(), bytes::Bytes::from_static(b))];
        assert_eq!(request_fingerprint(&body, &f(b"x")), request_fingerprint(&same, &f(b"x")));
        assert_ne!(request_fingerprint(&body, &f(b"x")), request_fingerprint(&body, &f(b"y")));
        assert_ne!(request_fingerprint(&body, &[]), request_fingerprint(&json!({"workflowId": "w"}), &[]));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Cache keys and fingerprints are stored (redb) and compared across versions: these
    /// vectors were computed independently (Python's hashlib over the same framing).
    #[test]
    fn digests_are_pinned() {
        let prompt = json!({"1": {"class_type": "LoadImage", "inputs": {"image": "gw/aaa/init.png", "seed": 1}}});
        let image = InputRef {
            name: "init".into(),
            file_name: "init.png".into(),
            media_type: "image/png".into(),
            size_bytes: 1,
            hash: [1; 32],
        };
        assert_eq!(
            hex(&cache_key(("wf", 1), &to_string(&prompt), "gw/aaa", &[image], "")),
            "f554557cd12e6c3d5c09ce89d9a14cbaa8f73d361c422419138d3cf8065cb9ec"
        );
        let body = json!({"workflowId": "w", "inputs": {"a": 1}});
        let files = [("img".to_string(), bytes::Bytes::from_static(b"x"))];
        assert_eq!(
            hex(&request_fingerprint(&body, &files)),
            "ad4a34a88db99060835da64bf854a507db3dcf54e60e67d988df976f3ab93f1f"
        );
    }
}
