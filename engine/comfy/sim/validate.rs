//! `validate_prompt` / `validate_inputs` of ComfyUI's `execution.py`, driven by the node
//! definitions in `object_info.json`: the same error types, messages, `details`,
//! `extra_info`, `dependent_outputs` quirk and value coercion (the coerced values are
//! written back into the prompt, as ComfyUI does).

use super::defs::{self, InputDef};
use super::ojson::{OJson, py_num, py_repr, py_str, py_type_name};
use super::state::Dirs;
use serde_json::{Value, json};
use std::collections::HashSet;

/// Result of validating a whole prompt.
pub enum Outcome {
    /// At least one output is valid: queue it (`node_errors` may list dropped outputs).
    Valid {
        /// Output node ids to execute.
        outputs: Vec<String>,
        /// Errors of the outputs that were dropped.
        node_errors: Value,
    },
    /// 400 body parts.
    Invalid {
        /// The `error` object.
        error: Value,
        /// The `node_errors` object.
        node_errors: Value,
    },
}

/// A Python exception raised while validating (KeyError on a missing node, ...).
struct PyExc {
    kind: &'static str,
    message: String,
    traceback: Vec<String>,
}

type NodeResult = (bool, Vec<Value>);

struct Ctx<'a> {
    prompt: &'a mut OJson,
    dirs: &'a Dirs,
    validated: Vec<(String, NodeResult)>,
    in_progress: HashSet<String>,
}

impl Ctx<'_> {
    fn validated_get(&self, id: &str) -> Option<&NodeResult> {
        self.validated.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }
    fn validated_set(&mut self, id: &str, r: NodeResult) {
        if let Some(slot) = self.validated.iter_mut().find(|(k, _)| k == id) {
            slot.1 = r;
        } else {
            self.validated.push((id.to_string(), r));
        }
    }
}

fn graph_error(kind: &str, message: String, details: String) -> Outcome {
    Outcome::Invalid {
        error: json!({"type": kind, "message": message, "details": details, "extra_info": {}}),
        node_errors: json!({}),
    }
}

/// Validate `prompt` (a JSON object; the caller turns non-objects into a 500).
pub fn validate_prompt(prompt: &mut OJson, partial: Option<&[String]>, dirs: &Dirs) -> Outcome {
    let Some(nodes) = prompt.as_obj() else {
        return graph_error("invalid_prompt", "Prompt is not an object".into(), String::new());
    };
    let mut outputs = Vec::new();
    for (id, node) in nodes {
        let Some(class_type) = node.get("class_type") else {
            return graph_error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.".into(),
                format!("Node ID '#{id}'"),
            );
        };
        let class_name = py_str(class_type);
        let Some(def) = defs::class(&class_name) else {
            return graph_error(
                "invalid_prompt",
                format!("Cannot execute because node {class_name} does not exist."),
                format!("Node ID '#{id}'"),
            );
        };
        if def.output_node && partial.is_none_or(|p| p.iter().any(|x| x == id)) {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return graph_error("prompt_no_outputs", "Prompt has no outputs".into(), String::new());
    }

    let mut ctx = Ctx { prompt, dirs, validated: Vec::new(), in_progress: HashSet::new() };
    let mut good = Vec::new();
    let mut output_errors: Vec<Value> = Vec::new();
    // node_id -> (errors, dependent_outputs, class_type), in first-seen order
    let mut node_errors: Vec<(String, Value, Vec<String>, String)> = Vec::new();
    for o in &outputs {
        let (valid, reasons) = match validate_inputs(&mut ctx, o) {
            Ok(r) => r,
            Err(ex) => {
                let reasons = vec![json!({
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": ex.message,
                    "extra_info": {"exception_type": ex.kind, "traceback": ex.traceback},
                })];
                ctx.validated_set(o, (false, reasons.clone()));
                (false, reasons)
            }
        };
        if valid {
            good.push(o.clone());
            continue;
        }
        output_errors.extend(reasons.iter().cloned());
        for (node_id, (ok, errs)) in &ctx.validated {
            if !*ok && !errs.is_empty() {
                if !node_errors.iter().any(|(k, ..)| k == node_id) {
                    let class_type =
                        ctx.prompt.get(node_id).and_then(|n| n.get("class_type")).map(py_str).unwrap_or_default();
                    node_errors.push((node_id.clone(), Value::Array(errs.clone()), Vec::new(), class_type));
                }
                if let Some(entry) = node_errors.iter_mut().find(|(k, ..)| k == node_id) {
                    entry.2.push(o.clone());
                }
            }
        }
    }
    let node_errors_json = {
        let mut m = serde_json::Map::new();
        for (id, errs, deps, class_type) in node_errors {
            m.insert(id, json!({"errors": errs, "dependent_outputs": deps, "class_type": class_type}));
        }
        Value::Object(m)
    };
    if good.is_empty() {
        let details = output_errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.get("message").and_then(Value::as_str).unwrap_or(""),
                    e.get("details").and_then(Value::as_str).unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        return Outcome::Invalid {
            error: json!({
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": details,
                "extra_info": {},
            }),
            node_errors: node_errors_json,
        };
    }
    Outcome::Valid { outputs: good, node_errors: node_errors_json }
}

/// `KeyError(key)` for a string key (`str()` of it is `'key'`).
fn key_error(key: &str) -> PyExc {
    key_error_repr(py_repr(&OJson::Str(key.to_string())))
}

/// `KeyError` whose `str()` is `repr` (e.g. `1` for an int key).
fn key_error_repr(repr: String) -> PyExc {
    PyExc {
        kind: "KeyError",
        message: repr,
        traceback: vec![
            "  File \"/opt/ComfyUI/execution.py\", line 1010, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n".into(),
            "  File \"/opt/ComfyUI/execution.py\", line 788, in validate_inputs\n    o_class_type = prompt[o_id]['class_type']\n                   ~~~~~~^^^^^^\n".into(),
        ],
    }
}

/// Classes whose `VALIDATE_INPUTS` takes `image` (so its combo check is skipped).
fn has_custom_image_validation(class_type: &str) -> bool {
    matches!(class_type, "LoadImage" | "LoadImageMask")
}

fn validate_inputs(ctx: &mut Ctx, id: &str) -> Result<NodeResult, PyExc> {
    if let Some(r) = ctx.validated_get(id) {
        return Ok(r.clone());
    }
    if !ctx.in_progress.insert(id.to_string()) {
        return Err(PyExc {
            kind: "RecursionError",
            message: "maximum recursion depth exceeded".into(),
            traceback: Vec::new(),
        });
    }
    let result = validate_inputs_inner(ctx, id);
    ctx.in_progress.remove(id);
    let r = result?;
    ctx.validated_set(id, r.clone());
    Ok(r)
}

fn validate_inputs_inner(ctx: &mut Ctx, id: &str) -> Result<NodeResult, PyExc> {
    let node = ctx.prompt.get(id).ok_or_else(|| key_error(id))?;
    let inputs = node.get("inputs").cloned().ok_or_else(|| PyExc {
        kind: "KeyError",
        message: "'inputs'".into(),
        traceback: vec![
            "  File \"/opt/ComfyUI/execution.py\", line 808, in validate_inputs\n    r = await validate_inputs(prompt_id, prompt, o_id, validated)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n".into(),
            "  File \"/opt/ComfyUI/execution.py\", line 730, in validate_inputs\n    inputs = prompt[unique_id]['inputs']\n             ~~~~~~~~~~~~~~~~~^^^^^^^^^^\n".into(),
        ],
    })?;
    let class_type = node.get("class_type").map(py_str).unwrap_or_default();
    let def = defs::class(&class_type).ok_or_else(|| key_error(&class_type))?;
    let custom_image = has_custom_image_validation(&class_type);

    let mut errors: Vec<Value> = Vec::new();
    let mut valid = true;
    let mut coerced: Vec<(String, OJson)> = Vec::new();

    for input in &def.inputs {
        let Some(val) = inputs.get(&input.name) else {
            if input.category == "required" {
                errors.push(json!({
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": input.name,
                    "extra_info": {"input_name": input.name},
                }));
            }
            continue;
        };
        let info = input.input_config();
        if let OJson::Arr(link) = val {
            if link.len() != 2 {
                errors.push(json!({
                    "type": "bad_linked_input",
                    "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    "details": input.name,
                    "extra_info": {"input_name": input.name, "input_config": info, "received_value": val.to_value()},
                }));
                continue;
            }
            let o_id = py_str(&link[0]);
            if !matches!(link[0], OJson::Str(_)) {
                return Err(key_error_repr(py_repr(&link[0])));
            }
            let o_class = ctx
                .prompt
                .get(&o_id)
                .ok_or_else(|| key_error(&o_id))?
                .get("class_type")
                .map(py_str)
                .ok_or_else(|| key_error("class_type"))?;
            let o_def = defs::class(&o_class).ok_or_else(|| key_error(&o_class))?;
            let slot = match &link[1] {
                OJson::Num(n) if n.as_i64().is_some() => n.as_i64().unwrap_or(0),
                other => {
                    return Err(PyExc {
                        kind: "TypeError",
                        message: format!("tuple indices must be integers or slices, not {}", py_type_name(other)),
                        traceback: Vec::new(),
                    });
                }
            };
            let received = if slot < 0 {
                usize::try_from(o_def.outputs.len() as i64 + slot).ok().and_then(|i| o_def.outputs.get(i))
            } else {
                usize::try_from(slot).ok().and_then(|i| o_def.outputs.get(i))
            };
            let Some(received) = received.cloned() else {
                return Err(PyExc {
                    kind: "IndexError",
                    message: "tuple index out of range".into(),
                    traceback: Vec::new(),
                });
            };
            if !types_match(&received, input) {
                errors.push(json!({
                    "type": "return_type_mismatch",
                    "message": "Return type mismatch between linked nodes",
                    "details": format!("{}, received_type({}) mismatch input_type({})", input.name, received, type_display(input)),
                    "extra_info": {"input_name": input.name, "input_config": info, "received_type": received, "linked_node": val.to_value()},
                }));
                continue;
            }
            match validate_inputs(ctx, &o_id) {
                Ok((true, _)) => {}
                Ok((false, _)) => {
                    valid = false;
                    continue;
                }
                Err(ex) => {
                    valid = false;
                    let reasons = vec![json!({
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": ex.message,
                        "extra_info": {
                            "input_name": input.name,
                            "input_config": info,
                            "exception_message": ex.message,
                            "exception_type": ex.kind,
                            "traceback": ex.traceback,
                            "linked_node": val.to_value(),
                        },
                    })];
                    ctx.validated_set(&o_id, (false, reasons));
                    continue;
                }
            }
            continue;
        }

        // A literal widget value.
        let mut v = val.clone();
        if let Some(inner) = v.get("__value__") {
            v = inner.clone();
        }
        let kind = input.type_str().unwrap_or("");
        let converted = match kind {
            "INT" => py_int(&v).map(|i| OJson::Num(i.into())),
            "FLOAT" => {
                py_float_conv(&v).map(|f| serde_json::Number::from_f64(f).map(OJson::Num).unwrap_or(OJson::Null))
            }
            "STRING" => Ok(OJson::Str(py_str(&v))),
            "BOOLEAN" => Ok(OJson::Bool(v.truthy())),
            _ => Ok(v.clone()),
        };
        let v = match converted {
            Ok(c) => c,
            Err(msg) => {
                errors.push(json!({
                    "type": "invalid_input_type",
                    "message": format!("Failed to convert an input value to a {kind} value"),
                    "details": format!("{}, {}, {}", input.name, py_str(&v), msg),
                    "extra_info": {"input_name": input.name, "input_config": info, "received_value": v.to_value(), "exception_message": msg},
                }));
                continue;
            }
        };
        coerced.push((input.name.clone(), v.clone()));

        if custom_image && input.name == "image" {
            continue;
        }
        if let (Some(min), Some(x)) = (input.extra.get("min"), v.as_f64())
            && min.as_f64().is_some_and(|m| x < m)
        {
            errors.push(json!({
                "type": "value_smaller_than_min",
                "message": format!("Value {} smaller than min of {}", py_val(&v), py_json_num(min)),
                "details": input.name,
                "extra_info": {"input_name": input.name, "input_config": info, "received_value": v.to_value()},
            }));
            continue;
        }
        if let (Some(max), Some(x)) = (input.extra.get("max"), v.as_f64())
            && max.as_f64().is_some_and(|m| x > m)
        {
            errors.push(json!({
                "type": "value_bigger_than_max",
                "message": format!("Value {} bigger than max of {}", py_val(&v), py_json_num(max)),
                "details": input.name,
                "extra_info": {"input_name": input.name, "input_config": info, "received_value": v.to_value()},
            }));
            continue;
        }
        if let Some(options) = input.combo_options() {
            if input.extra.get("remote").is_some() {
                continue;
            }
            let vv = v.to_value();
            if !options.iter().any(|o| json_eq(o, &vv)) {
                let (list_info, config) = if options.len() > 20 {
                    (format!("(list of length {})", options.len()), Value::Null)
                } else {
                    let items: Vec<OJson> = options.iter().map(OJson::from_value).collect();
                    (py_repr(&OJson::Arr(items)), info.clone())
                };
                errors.push(json!({
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": format!("{}: '{}' not in {}", input.name, py_str(&v), list_info),
                    "extra_info": {"input_name": input.name, "input_config": config, "received_value": vv},
                }));
                continue;
            }
        }
    }

    // Write the coerced widget values back, as ComfyUI mutates `inputs[x]`.
    if let Some(node_inputs) = ctx.prompt.get_mut(id).and_then(|n| n.get_mut("inputs")) {
        for (name, v) in coerced {
            node_inputs.set(&name, v);
        }
    }

    if custom_image
        && let Some(OJson::Str(image)) = inputs.get("image")
        && !annotated_exists(ctx.dirs, image)
    {
        errors.push(json!({
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": format!("image - Invalid image file: {image}"),
            "extra_info": {"input_name": "image"},
        }));
    }

    Ok((errors.is_empty() && valid, errors))
}

/// `folder_paths.exists_annotated_filepath` for LoadImage (`x.png`, `sub/x.png`, `x.png [output]`).
pub fn annotated_exists(dirs: &Dirs, name: &str) -> bool {
    super::files::annotated_input_path(dirs, name).is_some_and(|p| p.is_file())
}

fn type_display(input: &InputDef) -> String {
    match &input.kind {
        Value::String(s) => s.clone(),
        other => py_repr(&OJson::from_value(other)),
    }
}

/// `validate_node_input(received_type, input_type)`.
fn types_match(received: &str, input: &InputDef) -> bool {
    match &input.kind {
        Value::String(t) => {
            if received == t || received == "*" || t == "*" {
                return true;
            }
            let r: HashSet<&str> = received.split(',').map(str::trim).collect();
            t.split(',').map(str::trim).any(|x| r.contains(x))
        }
        // A list combo fed by a link: only generic/combo outputs fit.
        _ => received == "*" || received == "COMBO",
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn py_val(v: &OJson) -> String {
    py_str(v)
}

fn py_json_num(v: &Value) -> String {
    match v {
        Value::Number(n) => py_num(n),
        other => other.to_string(),
    }
}

/// Python `int(x)`.
fn py_int(v: &OJson) -> Result<i64, String> {
    match v {
        OJson::Bool(b) => Ok(i64::from(*b)),
        OJson::Num(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if let Some(u) = n.as_u64() {
                Ok(i64::try_from(u).unwrap_or(i64::MAX))
            } else {
                Ok(n.as_f64().unwrap_or(0.0).trunc() as i64)
            }
        }
        OJson::Str(s) => {
            let t = s.trim().replace('_', "");
            t.parse::<i64>().map_err(|_| format!("invalid literal for int() with base 10: {}", py_repr(v)))
        }
        other => Err(format!(
            "int() argument must be a string, a bytes-like object or a real number, not '{}'",
            py_type_name(other)
        )),
    }
}

/// Python `float(x)`.
fn py_float_conv(v: &OJson) -> Result<f64, String> {
    match v {
        OJson::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        OJson::Num(n) => Ok(n.as_f64().unwrap_or(0.0)),
        OJson::Str(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("could not convert string to float: {}", py_repr(v))),
        other => Err(format!("float() argument must be a string or a real number, not '{}'", py_type_name(other))),
    }
}

/// `is_link`: a 2-list `[str, int]`.
pub fn as_link(v: &OJson) -> Option<(String, usize)> {
    if let OJson::Arr(a) = v
        && a.len() == 2
        && let (OJson::Str(id), Some(slot)) = (&a[0], a[1].as_i64())
    {
        return Some((id.clone(), usize::try_from(slot).ok()?));
    }
    None
}
