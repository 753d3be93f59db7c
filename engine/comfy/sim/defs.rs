//! Node class definitions: the `GET /object_info` body captured from ComfyUI 0.3.64
//! (`object_info.json`, minified, with a few model names added to the model combos),
//! parsed once and used for validation, output types and `GET /object_info`.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::LazyLock;

/// The embedded `/object_info` body.
static OBJECT_INFO_JSON: &str = include_str!("object_info.json");

/// One input of a node class as declared in `/object_info`.
#[derive(Debug, Clone)]
pub struct InputDef {
    /// Input name.
    pub name: String,
    /// `"required"` or `"optional"`.
    pub category: &'static str,
    /// The type: a string like `"INT"` / `"IMAGE"`, or a combo list.
    pub kind: Value,
    /// The options dict (`{}` when absent), as used in `input_config`.
    pub extra: Value,
}

impl InputDef {
    /// The type as a string (`"COMBO"` stays `"COMBO"`; a list combo returns `None`).
    pub fn type_str(&self) -> Option<&str> {
        self.kind.as_str()
    }

    /// `input_config` as ComfyUI reports it in validation errors: `[type, extra]`.
    pub fn input_config(&self) -> Value {
        Value::Array(vec![self.kind.clone(), self.extra.clone()])
    }

    /// Combo choices (list combos and `["COMBO", {"options": [...]}]`).
    pub fn combo_options(&self) -> Option<Vec<Value>> {
        match &self.kind {
            Value::Array(a) => Some(a.clone()),
            Value::String(s) if s == "COMBO" => {
                self.extra.get("options").and_then(Value::as_array).cloned().or(Some(Vec::new()))
            }
            _ => None,
        }
    }
}

/// One node class.
#[derive(Debug, Clone)]
pub struct NodeDef {
    /// Class name (`class_type`).
    pub name: String,
    /// Required then optional inputs, in `input_order`.
    pub inputs: Vec<InputDef>,
    /// Output types (`RETURN_TYPES`).
    pub outputs: Vec<String>,
    /// `OUTPUT_NODE`.
    pub output_node: bool,
}

impl NodeDef {
    /// The input definition called `name`.
    pub fn input(&self, name: &str) -> Option<&InputDef> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

/// All node classes plus the raw `/object_info` value.
pub struct Defs {
    /// Parsed classes by name.
    pub classes: HashMap<String, NodeDef>,
    /// The raw `/object_info` object.
    pub raw: serde_json::Map<String, Value>,
}

/// The lazily parsed definitions (parsed once per process).
pub static DEFS: LazyLock<Defs> = LazyLock::new(|| {
    let raw: serde_json::Map<String, Value> = serde_json::from_str(OBJECT_INFO_JSON).unwrap_or_default();
    let classes = raw.iter().map(|(name, info)| (name.clone(), parse_def(name, info))).collect();
    Defs { classes, raw }
});

fn parse_def(name: &str, info: &Value) -> NodeDef {
    let mut inputs = Vec::new();
    for category in ["required", "optional"] {
        let Some(specs) = info.get("input").and_then(|i| i.get(category)).and_then(Value::as_object) else {
            continue;
        };
        let order: Vec<String> = info
            .get("input_order")
            .and_then(|o| o.get(category))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_else(|| specs.keys().cloned().collect());
        for input_name in order {
            let Some(spec) = specs.get(&input_name) else {
                continue;
            };
            let kind = spec.get(0).cloned().unwrap_or(Value::Null);
            let extra = spec.get(1).cloned().unwrap_or_else(|| Value::Object(Default::default()));
            inputs.push(InputDef {
                name: input_name,
                category: if category == "required" { "required" } else { "optional" },
                kind,
                extra,
            });
        }
    }
    let outputs = info
        .get("output")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    _ => "COMBO".to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    NodeDef {
        name: name.to_string(),
        inputs,
        outputs,
        output_node: info.get("output_node").and_then(Value::as_bool).unwrap_or(false),
    }
}

/// The class `name`, if known.
pub fn class(name: &str) -> Option<&'static NodeDef> {
    DEFS.classes.get(name)
}
