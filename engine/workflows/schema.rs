//! Input schemas: compile (draft 2020-12), derive one when none is given, apply defaults, draw
//! seeds, validate with every error's path, and enforce the configured size limits.
//!
//! Keywords the gateway reads besides standard JSON Schema (all on property schemas):
//! - `"x-seed": true`: drawn at random when omitted and without default (as is a property
//!   named `seed`);
//! - `"x-image-dimension": true`: at most `MAX_IMAGE_SIZE` (as are `width` and `height`);
//! - `"x-batch-size": true`: at most `MAX_BATCH_SIZE` (as is `batch_size`);
//! - `"x-scale-factor": true` (top level): the output is the generated image scaled by this
//!   number, so top-level image dimensions times it must stay within `MAX_IMAGE_SIZE`;
//! - `"format": "image"` (top level): an image input, given as a URL, data URI, base64 or
//!   multipart part, and replaced by the name of the file uploaded to ComfyUI.
//!
//! Local `$ref`s (`#/...`) are followed when looking for defaults and these markers.

use std::collections::BTreeSet;

use jsonschema::error::ValidationErrorKind;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::template::escape_pointer;
use super::{FieldError, Limits};

/// Largest seed handed out: 2^53 - 1, exact in a JSON double.
pub const SEED_MAX: i64 = (1 << 53) - 1;

/// How many local `$ref` hops are followed before giving up (guards against cycles).
const REF_HOPS_MAX: usize = 16;

/// How deep nested object properties are walked for defaults and limits.
const DEPTH_MAX: usize = 32;

/// Compile `schema` as a draft 2020-12 schema whose instances are objects.
///
/// # Errors
/// Every problem found, each with the JSON pointer into the schema where it is.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, Vec<FieldError>> {
    let meta = jsonschema::draft202012::meta::validator();
    let mut errors: Vec<FieldError> =
        meta.iter_errors(schema).map(|e| FieldError::new(pointer(e.instance_path().as_str()), e.to_string())).collect();
    if errors.is_empty() && schema.get("type") != Some(&json!("object")) {
        errors.push(FieldError::new("/type", "the input schema must have \"type\": \"object\""));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    jsonschema::draft202012::options()
        .build(schema)
        .map_err(|e| vec![FieldError::new(pointer(e.instance_path().as_str()), e.to_string())])
}

/// A permissive schema for a template registered without one: every token is a property.
///
/// A token with a default takes the default's JSON type and is optional; a token named `seed`
/// is an optional integer in `0..=SEED_MAX` (drawn when omitted); any other token is a required
/// scalar (string, number or boolean: arrays and objects could forge ComfyUI node links, so a
/// template that wants them needs a real schema). Unknown inputs are rejected, which catches
/// typos. Dotted tokens (`a.b`) become properties named by their first segment.
pub fn derive(tokens: &BTreeSet<String>, defaults: Option<&Map<String, Value>>) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for token in tokens {
        let (name, dotted) = match token.split_once('.') {
            Some((head, _)) if defaults.is_none_or(|d| !d.contains_key(token)) => (head, true),
            _ => (token.as_str(), false),
        };
        if properties.contains_key(name) {
            continue;
        }
        let default = defaults.and_then(|d| d.get(name));
        let property = if dotted {
            json!({"type": "object"})
        } else if let Some(default) = default {
            json!({"type": json_type(default)})
        } else if name == "seed" {
            json!({"type": "integer", "minimum": 0, "maximum": SEED_MAX})
        } else {
            json!({"type": ["string", "number", "boolean"]})
        };
        if default.is_none() && name != "seed" {
            required.push(Value::String(name.to_owned()));
        }
        properties.insert(name.to_owned(), property);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The JSON Schema type name of a value.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Follow local `$ref`s from `schema` within `root`.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..REF_HOPS_MAX {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let Some(target) = reference.strip_prefix('#').and_then(|pointer| root.pointer(pointer)) else {
            return schema;
        };
        schema = target;
    }
    schema
}

/// The `properties` of an object schema (after `$ref`s).
fn properties<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a Map<String, Value>> {
    resolve(root, schema).get("properties")?.as_object()
}

/// The top-level properties marked `"format": "image"`, in schema order.
pub fn image_inputs(root: &Value) -> Vec<String> {
    properties(root, root)
        .into_iter()
        .flatten()
        .filter(|(_, p)| resolve(root, p).get("format").and_then(Value::as_str) == Some("image"))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Whether `token` names a property: exactly, or as a dotted path through nested `properties`.
pub fn has_property(root: &Value, token: &str) -> bool {
    let Some(top) = properties(root, root) else {
        return false;
    };
    if top.contains_key(token) {
        return true;
    }
    let mut segments = token.split('.');
    let Some(mut current) = segments.next().and_then(|s| top.get(s)) else {
        return false;
    };
    for segment in segments {
        match properties(root, current).and_then(|p| p.get(segment)) {
            Some(next) => current = next,
            None => return false,
        }
    }
    true
}

/// Whether the schema gives `token` a default (on the property, exactly or dotted).
pub fn has_default(root: &Value, token: &str) -> bool {
    let Some(top) = properties(root, root) else {
        return false;
    };
    let mut current = match top.get(token) {
        Some(property) => property,
        None => {
            let mut segments = token.split('.');
            let Some(mut current) = segments.next().and_then(|s| top.get(s)) else {
                return false;
            };
            for segment in segments {
                if resolve(root, current).get("default").is_some() {
                    // A default for the parent object may well hold this member; the render
                    // step reports it if not.
                    return true;
                }
                match properties(root, current).and_then(|p| p.get(segment)) {
                    Some(next) => current = next,
                    None => return false,
                }
            }
            current
        }
    };
    current = resolve(root, current);
    current.get("default").is_some()
}

/// Fill in omitted inputs: `explicit` defaults first (top level), then schema `default`s,
/// recursively into nested object properties. An omitted object property without a default is
/// created only when its nested defaults cover all of its `required` members.
pub fn apply_defaults(root: &Value, inputs: &mut Map<String, Value>, explicit: Option<&Map<String, Value>>) {
    if let Some(explicit) = explicit {
        for (name, value) in explicit {
            if !inputs.contains_key(name) {
                inputs.insert(name.clone(), value.clone());
            }
        }
    }
    fill(root, root, inputs, 0);
}

fn fill(root: &Value, schema: &Value, object: &mut Map<String, Value>, depth: usize) {
    if depth >= DEPTH_MAX {
        return;
    }
    let Some(props) = properties(root, schema) else {
        return;
    };
    for (name, property) in props {
        let property = resolve(root, property);
        match object.get_mut(name) {
            Some(Value::Object(inner)) => fill(root, property, inner, depth + 1),
            Some(_) => {}
            None => {
                if let Some(default) = property.get("default") {
                    let mut value = default.clone();
                    if let Value::Object(inner) = &mut value {
                        fill(root, property, inner, depth + 1);
                    }
                    object.insert(name.clone(), value);
                } else if properties(root, property).is_some() {
                    let mut inner = Map::new();
                    fill(root, property, &mut inner, depth + 1);
                    let required_met = property
                        .get("required")
                        .and_then(Value::as_array)
                        .is_none_or(|req| req.iter().all(|r| r.as_str().is_some_and(|r| inner.contains_key(r))));
                    if !inner.is_empty() && required_met {
                        object.insert(name.clone(), Value::Object(inner));
                    }
                }
            }
        }
    }
}

/// Draw a random seed for every omitted top-level seed property (named `seed` or marked
/// `"x-seed": true`); returns the one drawn for `seed`, else the first one drawn. The range is `0..=SEED_MAX`, narrowed by the
/// property's integer `minimum` / `maximum` when they lie inside it.
pub fn draw_seeds(root: &Value, inputs: &mut Map<String, Value>, rng: &mut impl Rng) -> Option<i64> {
    let (mut primary, mut first) = (None, None);
    for (name, property) in properties(root, root)? {
        let property = resolve(root, property);
        let marked = property.get("x-seed").and_then(Value::as_bool);
        if inputs.contains_key(name) || !(marked == Some(true) || (name == "seed" && marked.is_none())) {
            continue;
        }
        let low = property.get("minimum").and_then(Value::as_i64).unwrap_or(0).clamp(0, SEED_MAX);
        let high = property.get("maximum").and_then(Value::as_i64).unwrap_or(SEED_MAX).clamp(low, SEED_MAX);
        let seed = rng.random_range(low..=high);
        inputs.insert(name.clone(), Value::from(seed));
        if name == "seed" {
            primary = Some(seed);
        }
        first.get_or_insert(seed);
    }
    primary.or(first)
}

/// Validate `instance` against the compiled schema; every error, each with its instance path.
///
/// Messages do not repeat the offending value (it may be a long private prompt); the path says
/// where it is. `required` and `additionalProperties` errors point at the property concerned.
pub fn validate(validator: &jsonschema::Validator, instance: &Value) -> Vec<FieldError> {
    collect_errors(validator, instance, true)
}

/// [`validate`], leaving out `required` errors (for checking defaults on their own).
pub fn validate_present(validator: &jsonschema::Validator, instance: &Value) -> Vec<FieldError> {
    collect_errors(validator, instance, false)
}

fn collect_errors(validator: &jsonschema::Validator, instance: &Value, required: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for error in validator.iter_errors(instance) {
        let at = error.instance_path().as_str().to_owned();
        match error.kind() {
            ValidationErrorKind::Required { .. } if !required => {}
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
                errors.push(FieldError::new(format!("{at}/{}", escape_pointer(&name)), "is required"));
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    errors.push(FieldError::new(
                        format!("{at}/{}", escape_pointer(name)),
                        "is not an input of this workflow",
                    ));
                }
            }
            _ => errors.push(FieldError::new(pointer(&at), error.masked_with("value").to_string())),
        }
    }
    errors
}

/// Enforce `MAX_IMAGE_SIZE` on image dimensions and `MAX_BATCH_SIZE` on batch sizes, at any
/// depth of nested object properties.
pub fn check_limits(root: &Value, inputs: &Map<String, Value>, limits: &Limits) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let scale = properties(root, root).map_or(1.0, |props| {
        props
            .iter()
            .filter(|(_, p)| resolve(root, p).get("x-scale-factor") == Some(&Value::Bool(true)))
            .filter_map(|(name, _)| inputs.get(name).and_then(Value::as_f64))
            .fold(1.0, |acc, factor| acc * factor.max(1.0))
    });
    let walk = LimitWalk { root, limits };
    walk.object(root, inputs, "", scale, &mut errors, 0);
    errors
}

/// The fixed parts of a walk over inputs checking limits.
struct LimitWalk<'a> {
    root: &'a Value,
    limits: &'a Limits,
}

impl LimitWalk<'_> {
    fn object(
        &self,
        schema: &Value,
        object: &Map<String, Value>,
        at: &str,
        scale: f64,
        errors: &mut Vec<FieldError>,
        depth: usize,
    ) {
        let (root, limits) = (self.root, self.limits);
        if depth >= DEPTH_MAX {
            return;
        }
        let Some(props) = properties(root, schema) else {
            return;
        };
        for (name, property) in props {
            let Some(value) = object.get(name) else {
                continue;
            };
            let property = resolve(root, property);
            let path = format!("{at}/{}", escape_pointer(name));
            let marked = |key: &str| property.get(key).and_then(Value::as_bool);
            let image = marked("x-image-dimension").unwrap_or(matches!(name.as_str(), "width" | "height"));
            let batch = marked("x-batch-size").unwrap_or(name == "batch_size");
            let bound = if image {
                Some((limits.image_size_max, "MAX_IMAGE_SIZE", scale))
            } else if batch {
                Some((limits.batch_size_max, "MAX_BATCH_SIZE", 1.0))
            } else {
                None
            };
            match (bound, value) {
                (Some((max, setting, factor)), Value::Number(n))
                    if n.as_f64().is_some_and(|v| v * factor > f64::from(max)) =>
                {
                    let scaled = if factor > 1.0 { format!(" once scaled by {factor}") } else { String::new() };
                    errors.push(FieldError::new(
                        path,
                        format!("must be at most {max}{scaled} (the gateway's {setting})"),
                    ));
                }
                (_, Value::Object(inner)) => {
                    // Scale factors are top-level: nested dimensions are not scaled.
                    self.object(property, inner, &path, 1.0, errors, depth + 1);
                }
                _ => {}
            }
        }
    }
}

/// Turn integral floats (`1024.0`) into integers where the schema says `integer`, so ComfyUI
/// receives `1024` (top-level and nested properties).
pub fn normalize_integers(root: &Value, inputs: &mut Map<String, Value>) {
    normalize_in(root, root, inputs, 0);
}

fn normalize_in(root: &Value, schema: &Value, object: &mut Map<String, Value>, depth: usize) {
    if depth >= DEPTH_MAX {
        return;
    }
    let Some(props) = properties(root, schema) else {
        return;
    };
    for (name, property) in props {
        let property = resolve(root, property);
        match object.get_mut(name) {
            Some(Value::Object(inner)) => normalize_in(root, property, inner, depth + 1),
            Some(value @ Value::Number(_)) => {
                let integer = match property.get("type") {
                    Some(Value::String(t)) => t == "integer",
                    _ => false,
                };
                if let (true, Some(f)) = (integer, value.as_f64())
                    && !value.is_i64()
                    && !value.is_u64()
                    && f.fract() == 0.0
                    && f.abs() <= SEED_MAX as f64
                {
                    // In range of exact doubles, so the cast is lossless.
                    *value = Value::from(f as i64);
                }
            }
            _ => {}
        }
    }
}

/// How many object members `values` hold, nested objects and arrays included, counted
/// up to `max + 1` at most: the walk stops there, so checking `MAX_INPUT_KEYS` against a
/// million keys costs no more than against `max` (and comes before any schema validation).
pub fn members_up_to<'a>(values: impl IntoIterator<Item = &'a Value>, max: usize) -> usize {
    let mut stack: Vec<&Value> = values.into_iter().collect();
    let mut n = 0usize;
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                n += map.len();
                if n > max {
                    return max + 1;
                }
                stack.extend(map.values().filter(|v| v.is_object() || v.is_array()));
            }
            Value::Array(items) => stack.extend(items.iter().filter(|v| v.is_object() || v.is_array())),
            _ => {}
        }
    }
    n
}

/// `""` (the root, as `jsonschema` writes it) becomes `"/"`.
fn pointer(path: &str) -> String {
    if path.is_empty() { "/".to_owned() } else { path.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn compile_rejects_non_object_and_invalid_schemas() {
        let errs = compile(&json!({"type": "string"})).unwrap_err();
        assert_eq!(errs[0].path, "/type");
        let errs = compile(&json!({"type": "object", "properties": {"a": {"type": 5}}})).unwrap_err();
        assert!(errs.iter().any(|e| e.path.starts_with("/properties/a")), "{errs:?}");
        assert!(compile(&json!(true)).is_err());
        assert!(compile(&json!({"type": "object", "$ref": "https://example.com/x.json"})).is_err());
    }

    #[test]
    fn nested_defaults_and_refs_are_applied() {
        let schema = json!({
            "type": "object",
            "$defs": {"up": {"type": "object", "properties": {"factor": {"type": "number", "default": 2}}}},
            "properties": {
                "steps": {"type": "integer", "default": 20},
                "up": {"$ref": "#/$defs/up"},
                "opt": {"type": "object", "default": {}, "properties": {"x": {"default": 1}}},
                "req": {"type": "object", "required": ["y"], "properties": {"x": {"default": 1}, "y": {}}}
            }
        });
        let mut inputs = obj(json!({"steps": 5}));
        apply_defaults(&schema, &mut inputs, Some(&obj(json!({"extra": true, "steps": 9}))));
        assert_eq!(Value::Object(inputs), json!({"steps": 5, "extra": true, "up": {"factor": 2}, "opt": {"x": 1}}));
    }

    #[test]
    fn limits_apply_by_name_and_marker() {
        let schema = json!({"type": "object", "properties": {
            "width": {"type": "integer"}, "w2": {"type": "integer", "x-image-dimension": true},
            "batch_size": {"type": "integer"}, "height": {"type": "integer", "x-image-dimension": false},
            "nested": {"type": "object", "properties": {"n": {"x-batch-size": true}}}
        }});
        let limits = Limits { image_size_max: 2048, batch_size_max: 4 };
        let inputs = obj(json!({"width": 4096, "w2": 2049, "batch_size": 5, "height": 9999, "nested": {"n": 8}}));
        let paths: Vec<_> = check_limits(&schema, &inputs, &limits).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["/batch_size", "/nested/n", "/w2", "/width"]);
        let ok = obj(json!({"width": 2048, "batch_size": 4}));
        assert!(check_limits(&schema, &ok, &limits).is_empty());
    }

    #[test]
    fn derived_schema_types_tokens() {
        let tokens: BTreeSet<String> = ["prompt", "seed", "steps", "up.factor"].map(String::from).into();
        let schema = derive(&tokens, Some(&obj(json!({"steps": 20}))));
        assert_eq!(schema["properties"]["steps"]["type"], "integer");
        assert_eq!(schema["properties"]["seed"]["type"], "integer");
        assert_eq!(schema["properties"]["up"]["type"], "object");
        assert_eq!(schema["required"], json!(["prompt", "up"]));
        assert!(compile(&schema).is_ok());
    }

    #[test]
    fn image_inputs_are_top_level_format_image() {
        let schema = json!({"type": "object", "$defs": {"img": {"type": "string", "format": "image"}},
            "properties": {"image": {"type": "string", "format": "image"}, "mask": {"$ref": "#/$defs/img"},
            "when": {"type": "string", "format": "date"}, "n": {"type": "object", "properties": {
            "deep": {"format": "image"}}}}});
        assert_eq!(image_inputs(&schema), ["image", "mask"]);
        assert!(compile(&schema).is_ok());
    }

    #[test]
    fn members_are_counted_at_every_depth_and_the_count_stops_past_max() {
        let v = json!({"a": 1, "b": {"c": 2, "d": [{"e": 3}, [{"f": 4, "g": 5}]]}, "h": "{}"});
        assert_eq!(members_up_to([&v], 100), 8);
        assert_eq!(members_up_to([&v, &json!({"x": {}})], 100), 9);
        assert_eq!(members_up_to([&v], 8), 8);
        assert_eq!(members_up_to([&v], 7), 8);
        assert_eq!(members_up_to([&v], 2), 3);
        let wide = Value::Object((0..10_000).map(|i| (format!("k{i}"), json!(i))).collect());
        assert_eq!(members_up_to([&wide], 256), 257);
        assert_eq!(members_up_to([&json!(5), &json!([])], 0), 0);
    }

    #[test]
    fn integral_floats_become_integers() {
        let schema = json!({"type": "object", "properties": {"width": {"type": "integer"}, "cfg": {"type": "number"}}});
        let mut inputs = obj(json!({"width": 1024.0, "cfg": 7.0}));
        normalize_integers(&schema, &mut inputs);
        assert_eq!(inputs["width"], json!(1024));
        assert!(inputs["width"].is_i64());
        assert!(inputs["cfg"].is_f64());
    }
}
