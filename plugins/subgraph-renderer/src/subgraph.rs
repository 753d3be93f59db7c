//! The pure logic of `subgraph-renderer`: no bindings, testable on any target.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// A log line's severity (mapped onto the host's `level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
}

/// A failure: becomes the WIT `plugin-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection { code, message: message.into(), field: None }
}

/// What one call produced: the prompt's JSON text or a failure, and the log.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<String, Rejection>,
    pub logs: Vec<(LogLevel, String)>,
}

/// Run the hook on the template's and the inputs' JSON texts.
pub fn render(template: &str, inputs: &str) -> Outcome {
    let mut logs = Vec::new();
    let result = render_values(template, inputs, &mut logs);
    Outcome { result, logs }
}

fn render_values(template: &str, inputs: &str, logs: &mut Vec<(LogLevel, String)>) -> Result<String, Rejection> {
    let template: Value = serde_json::from_str(template)
        .map_err(|e| reject("INVALID_TEMPLATE", format!("the template is not JSON: {e}")))?;
    let Value::Object(nodes) = template else {
        return Err(reject("INVALID_TEMPLATE", "the template must be a JSON object of nodes"));
    };
    let inputs: Value =
        serde_json::from_str(inputs).map_err(|e| reject("INVALID_INPUTS", format!("the inputs are not JSON: {e}")))?;
    let Value::Object(inputs) = inputs else {
        return Err(reject("INVALID_INPUTS", "the inputs must be a JSON object"));
    };
    let prompt = select(nodes, &inputs, logs)?;
    let prompt = render_tokens(&Value::Object(prompt), &inputs, &mut String::new())?;
    Ok(prompt.to_string())
}

/// Remove the disabled nodes, rewire or drop the links to them, strip `_meta`.
pub fn select(
    mut nodes: Map<String, Value>,
    inputs: &Map<String, Value>,
    logs: &mut Vec<(LogLevel, String)>,
) -> Result<Map<String, Value>, Rejection> {
    let ids: BTreeSet<String> = nodes.keys().cloned().collect();
    let mut removed = BTreeSet::new();
    for (id, node) in &nodes {
        let Some(meta) = node.get("_meta") else { continue };
        let Some(by) = meta.get("enabledBy") else { continue };
        let by = by
            .as_str()
            .ok_or_else(|| reject("INVALID_TEMPLATE", format!("node {id}: _meta.enabledBy must be an input name")))?;
        let (name, inverted) = match by.strip_prefix('!') {
            Some(name) => (name, true),
            None => (by, false),
        };
        let set = !matches!(lookup(inputs, name), None | Some(Value::Null) | Some(Value::Bool(false)));
        if set == inverted {
            removed.insert(id.clone());
            logs.push((LogLevel::Info, format!("node {id} removed (enabledBy {by})")));
        }
    }

    // Each removed node's bypass link, checked, before the removed nodes go.
    let mut bypass: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for id in &removed {
        let link = nodes[id].get("_meta").and_then(|m| m.get("bypass")).filter(|v| !v.is_null());
        let per_output = |v: &Value| v.as_array().is_some_and(|l| l.iter().all(|x| x.is_null() || is_link(x, &ids)));
        if let Some(link) = link
            && !is_link(link, &ids)
            && !per_output(link)
        {
            return Err(reject(
                "INVALID_TEMPLATE",
                format!(
                    "node {id}: _meta.bypass must be a link [\"<node id>\", <output index>] to a node, \
                     or an array of such links (or null) by output index"
                ),
            ));
        }
        bypass.insert(id.clone(), link.cloned());
    }
    nodes.retain(|id, _| !removed.contains(id));
    if nodes.is_empty() {
        return Err(reject("EMPTY_PROMPT", "every node of the template was disabled"));
    }

    for (id, node) in nodes.iter_mut() {
        let Value::Object(node) = node else { continue };
        node.remove("_meta");
        let Some(Value::Object(node_inputs)) = node.get_mut("inputs") else { continue };
        let mut dropped = Vec::new();
        for (key, value) in node_inputs.iter_mut() {
            let Some(mut target) = link_target(value, &ids).filter(|t| removed.contains(*t)).map(str::to_owned) else {
                continue;
            };
            let mut index = value[1].as_u64().unwrap_or_default();
            // Follow bypasses through removed nodes; more hops than nodes means a cycle.
            let mut hops = 0;
            loop {
                match bypass[&target].as_ref().and_then(|b| pick(b, index, &ids)) {
                    Some(link) => {
                        let next = link_target(link, &ids).unwrap_or_default().to_owned();
                        if removed.contains(&next) {
                            hops += 1;
                            if hops > ids.len() {
                                return Err(reject(
                                    "INVALID_TEMPLATE",
                                    format!("node {id}: input {key} follows a cycle of bypasses"),
                                ));
                            }
                            target = next;
                            index = link[1].as_u64().unwrap_or_default();
                            continue;
                        }
                        logs.push((LogLevel::Debug, format!("node {id}: input {key} rewired to {link}")));
                        *value = link.clone();
                    }
                    None => dropped.push(key.clone()),
                }
                break;
            }
        }
        for key in dropped {
            logs.push((LogLevel::Debug, format!("node {id}: input {key} removed (its source node was removed)")));
            node_inputs.shift_remove(&key);
        }
    }
    Ok(nodes)
}

/// The node id a link points at: `["<id>", <index>]` with `<id>` one of the template's nodes.
fn link_target<'a>(value: &'a Value, ids: &BTreeSet<String>) -> Option<&'a str> {
    match value.as_array()?.as_slice() {
        [Value::String(id), index] if index.is_u64() && ids.contains(id) => Some(id),
        _ => None,
    }
}

/// The link a bypass gives for output `index`: the bypass itself when it is one link, else its
/// `index`-th entry (a link or null).
fn pick<'a>(bypass: &'a Value, index: u64, ids: &BTreeSet<String>) -> Option<&'a Value> {
    if is_link(bypass, ids) {
        return Some(bypass);
    }
    let entry = bypass.as_array()?.get(usize::try_from(index).ok()?)?;
    is_link(entry, ids).then_some(entry)
}

fn is_link(value: &Value, ids: &BTreeSet<String>) -> bool {
    link_target(value, ids).is_some()
}

/// The value of token `name`: an exact key first, then a dotted path through nested objects.
pub fn lookup<'a>(inputs: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = inputs.get(name) {
        return Some(value);
    }
    if !name.contains('.') {
        return None;
    }
    let mut segments = name.split('.');
    let mut current = inputs.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// The next token in `s` at or after byte `from`: `(start, end, name)`, `s[start..end]` being the
/// whole `{{ name }}`. Grammar (the built-in renderer's): `{{`, optional spaces, a name matching
/// `[A-Za-z_][A-Za-z0-9_.-]*`, optional spaces, `}}`; longer brace runs stay literal text.
pub fn next_token(s: &str, mut from: usize) -> Option<(usize, usize, &str)> {
    let bytes = s.as_bytes();
    while from < bytes.len() {
        let start = from + s[from..].find("{{")?;
        let mut after_run = start;
        while after_run < bytes.len() && bytes[after_run] == b'{' {
            after_run += 1;
        }
        from = after_run;
        if after_run - start != 2 {
            continue;
        }
        let mut i = skip_spaces(bytes, after_run);
        let name_start = i;
        if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.' | b'-')) {
                i += 1;
            }
        } else {
            continue;
        }
        let name_end = i;
        i = skip_spaces(bytes, i);
        let closes = bytes.get(i) == Some(&b'}') && bytes.get(i + 1) == Some(&b'}');
        if closes && bytes.get(i + 2) != Some(&b'}') {
            return Some((start, i + 2, &s[name_start..name_end]));
        }
    }
    None
}

fn skip_spaces(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    i
}

/// Escape one JSON pointer segment (RFC 6901).
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn unknown(name: &str, at: &str) -> Rejection {
    let at = if at.is_empty() { "/" } else { at };
    reject("UNKNOWN_TOKEN", format!("template token {{{{{name}}}}} at {at} has no input value"))
}

/// Substitute the tokens of every string value (never keys); `at` is the JSON pointer so far.
pub fn render_tokens(value: &Value, inputs: &Map<String, Value>, at: &mut String) -> Result<Value, Rejection> {
    match value {
        Value::String(s) => {
            let Some((start, end, name)) = next_token(s, 0) else { return Ok(value.clone()) };
            if start == 0 && end == s.len() {
                return lookup(inputs, name).cloned().ok_or_else(|| unknown(name, at));
            }
            let mut out = String::with_capacity(s.len());
            let mut copied = 0;
            let mut next = Some((start, end, name));
            while let Some((start, end, name)) = next {
                out.push_str(&s[copied..start]);
                match lookup(inputs, name).ok_or_else(|| unknown(name, at))? {
                    Value::String(text) => out.push_str(text),
                    other => out.push_str(&other.to_string()),
                }
                copied = end;
                next = next_token(s, end);
            }
            out.push_str(&s[copied..]);
            Ok(Value::String(out))
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                out.push(render_tokens(item, inputs, at)?);
                at.truncate(len);
            }
            Ok(Value::Array(out))
        }
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, item) in map {
                let len = at.len();
                at.push('/');
                at.push_str(&escape_pointer(key));
                out.insert(key.clone(), render_tokens(item, inputs, at)?);
                at.truncate(len);
            }
            Ok(Value::Object(out))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A txt2img graph with an optional LoRA (2) between the checkpoint (1) and the sampler (3),
    /// an optional upscaler (5) after the decoder (4), and a save node (6).
    fn template() -> Value {
        json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{model}}"},
                  "_meta": {"title": "Load"}},
            "2": {"class_type": "LoraLoader",
                  "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "{{lora}}", "strength_model": 0.8},
                  "_meta": {"enabledBy": "lora", "bypass": ["1", 0]}},
            "3": {"class_type": "KSampler",
                  "inputs": {"model": ["2", 0], "seed": "{{seed}}", "positive": "{{prompt}} | seed {{seed}}",
                             "negative": ["7", 0]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["2", 1]},
                  "_meta": {"enabledBy": "!noNegative"}},
            "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
            "5": {"class_type": "ImageScaleBy", "inputs": {"image": ["4", 0], "scale_by": "{{upscale.factor}}"},
                  "_meta": {"enabledBy": "upscale", "bypass": ["4", 0]}},
            "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "out"}}
        })
    }

    fn run(template: &Value, inputs: Value) -> Result<Value, Rejection> {
        render(&template.to_string(), &inputs.to_string()).result.map(|s| serde_json::from_str(&s).unwrap())
    }

    #[test]
    fn everything_enabled_renders_tokens_and_strips_meta() {
        let out = run(
            &template(),
            json!({"model": "sd.safetensors", "lora": "style.safetensors", "seed": 42, "prompt": "a cat",
                   "upscale": {"factor": 1.5}}),
        )
        .unwrap();
        assert_eq!(
            out["1"],
            json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd.safetensors"}})
        );
        assert_eq!(out["2"]["inputs"]["model"], json!(["1", 0]));
        assert_eq!(out["3"]["inputs"]["seed"], json!(42), "a lone token keeps the JSON type");
        assert_eq!(out["3"]["inputs"]["positive"], json!("a cat | seed 42"));
        assert_eq!(out["3"]["inputs"]["model"], json!(["2", 0]));
        assert_eq!(out["5"]["inputs"]["scale_by"], json!(1.5), "dotted names walk objects");
        assert_eq!(out["6"]["inputs"]["images"], json!(["5", 0]));
        assert!(out.as_object().unwrap().values().all(|n| n.get("_meta").is_none()));
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["1", "2", "3", "7", "4", "5", "6"], "node order is kept");
    }

    #[test]
    fn disabled_nodes_are_removed_and_links_rewired_or_dropped() {
        let out = run(&template(), json!({"model": "sd", "lora": false, "seed": 1, "prompt": "p", "noNegative": true}))
            .unwrap();
        let nodes = out.as_object().unwrap();
        assert!(!nodes.contains_key("2") && !nodes.contains_key("5") && !nodes.contains_key("7"));
        assert_eq!(out["3"]["inputs"]["model"], json!(["1", 0]), "rewired to the LoRA's bypass");
        assert!(out["3"]["inputs"].get("negative").is_none(), "no bypass: the input is removed");
        assert_eq!(out["6"]["inputs"]["images"], json!(["4", 0]), "rewired to the upscaler's bypass");
        // Tokens of removed nodes need no value (no "lora", no "upscale").
    }

    #[test]
    fn null_and_absent_disable_and_any_other_value_enables() {
        for off in [json!({}), json!({"lora": null}), json!({"lora": false})] {
            let mut inputs = json!({"model": "m", "seed": 1, "prompt": "p"});
            inputs.as_object_mut().unwrap().extend(off.as_object().unwrap().clone());
            assert!(run(&template(), inputs).unwrap().get("2").is_none());
        }
        let out = run(&template(), json!({"model": "m", "seed": 1, "prompt": "p", "lora": "x.safetensors"})).unwrap();
        assert_eq!(out["2"]["inputs"]["lora_name"], json!("x.safetensors"));
    }

    #[test]
    fn bypasses_are_followed_through_removed_nodes() {
        let t = json!({
            "1": {"class_type": "A", "inputs": {}},
            "2": {"class_type": "B", "inputs": {"x": ["1", 0]}, "_meta": {"enabledBy": "b", "bypass": ["1", 0]}},
            "3": {"class_type": "C", "inputs": {"x": ["2", 0]}, "_meta": {"enabledBy": "c", "bypass": ["2", 0]}},
            "4": {"class_type": "D", "inputs": {"x": ["3", 0]}}
        });
        let out = run(&t, json!({})).unwrap();
        assert_eq!(
            out,
            json!({"1": {"class_type": "A", "inputs": {}}, "4": {"class_type": "D", "inputs": {"x": ["1", 0]}}})
        );
    }

    #[test]
    fn a_bypass_may_give_one_link_per_output() {
        let mut t = template();
        t["2"]["_meta"]["bypass"] = json!([["1", 0], ["1", 1]]);
        let out = run(&t, json!({"model": "m", "seed": 1, "prompt": "p"})).unwrap();
        assert_eq!(out["3"]["inputs"]["model"], json!(["1", 0]));
        assert_eq!(out["7"]["inputs"]["clip"], json!(["1", 1]));
        t["2"]["_meta"]["bypass"] = json!([["1", 0], null]);
        let out = run(&t, json!({"model": "m", "seed": 1, "prompt": "p"})).unwrap();
        assert!(out["7"]["inputs"].get("clip").is_none());
        t["2"]["_meta"]["bypass"] = json!([["1", 0], 5]);
        assert_eq!(run(&t, json!({})).unwrap_err().code, "INVALID_TEMPLATE");
    }

    #[test]
    fn a_cycle_of_bypasses_is_an_invalid_template() {
        let t = json!({
            "1": {"class_type": "A", "inputs": {}, "_meta": {"enabledBy": "a", "bypass": ["2", 0]}},
            "2": {"class_type": "B", "inputs": {}, "_meta": {"enabledBy": "b", "bypass": ["1", 0]}},
            "3": {"class_type": "C", "inputs": {"x": ["1", 0]}}
        });
        assert_eq!(run(&t, json!({})).unwrap_err().code, "INVALID_TEMPLATE");
    }

    #[test]
    fn unknown_token_is_an_error_with_its_location() {
        let e = run(&template(), json!({"model": "m", "lora": true, "seed": 1})).unwrap_err();
        assert_eq!(e.code, "UNKNOWN_TOKEN");
        assert!(e.message.contains("{{lora}}") || e.message.contains("{{prompt}}"), "{}", e.message);
        let e = run(&json!({"1": {"inputs": {"a": "x {{ missing }} y"}}}), json!({})).unwrap_err();
        assert_eq!(e.message, "template token {{missing}} at /1/inputs/a has no input value");
    }

    #[test]
    fn token_grammar_matches_the_builtin_renderer() {
        let inputs = json!({"a": "A", "n": 7, "o": {"k": [1, 2]}, "t": true});
        let t = json!({"1": {"inputs": {
            "lone": "{{ n }}", "obj": "{{o}}", "text": "{{a}}-{{n}}-{{t}}-{{o.k}}", "triple": "{{{a}}}",
            "bad": "{{1a}}", "open": "{{a", "keys": {"{{a}}": "{{a}}"}
        }}});
        let out = run(&t, inputs).unwrap();
        assert_eq!(
            out["1"]["inputs"],
            json!({"lone": 7, "obj": {"k": [1, 2]}, "text": "A-7-true-[1,2]", "triple": "{{{a}}}",
                   "bad": "{{1a}}", "open": "{{a", "keys": {"{{a}}": "A"}})
        );
    }

    #[test]
    fn bad_documents_are_reported() {
        assert_eq!(run(&json!([1]), json!({})).unwrap_err().code, "INVALID_TEMPLATE");
        assert_eq!(render("{}", "[]").result.unwrap_err().code, "INVALID_INPUTS");
        let t = json!({"1": {"inputs": {}, "_meta": {"enabledBy": 3}}});
        assert_eq!(run(&t, json!({})).unwrap_err().code, "INVALID_TEMPLATE");
        let t = json!({"1": {"inputs": {}, "_meta": {"enabledBy": "x", "bypass": ["9", 0]}}, "2": {"inputs": {}}});
        assert_eq!(run(&t, json!({})).unwrap_err().code, "INVALID_TEMPLATE");
        let t = json!({"1": {"inputs": {}, "_meta": {"enabledBy": "x"}}});
        assert_eq!(run(&t, json!({})).unwrap_err().code, "EMPTY_PROMPT");
    }

    #[test]
    fn removal_is_logged() {
        let out = render(&template().to_string(), r#"{"model": "m", "seed": 1, "prompt": "p", "upscale": null}"#);
        assert!(out.result.is_ok());
        assert!(out.logs.contains(&(LogLevel::Info, "node 2 removed (enabledBy lora)".into())), "{:?}", out.logs);
    }
}
