//! Workflows: ComfyUI API-format templates with `{{name}}` tokens, checked at registration and
//! turned into a ready-to-send prompt per job. Pure code: no IO besides the bundled files
//! compiled in with `include_str!`.
//!
//! - [`template`]: the token scanner, [`template::placeholders`] and [`template::render`].
//! - [`schema`]: JSON Schema (draft 2020-12) compile, defaults, seeds, validation, limits.
//! - [`bundled`]: the workflows shipped in `workflows/` and registered on first start.
//! - [`import`]: a template and input schema proposed for a workflow exported from ComfyUI.
//!
//! [`CompiledWorkflow::compile`] checks a definition once; [`CompiledWorkflow::prepare`] runs per
//! submit: defaults → seed → schema → limits → render.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};

pub mod bundled;
pub mod import;
pub mod schema;
pub mod template;

use crate::comfy::graph;
use template::Template;

/// Limits from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `MAX_IMAGE_SIZE`: largest width or height in pixels.
    pub image_size_max: u32,
    /// `MAX_BATCH_SIZE`: most images per job.
    pub batch_size_max: u32,
}

/// One problem with the inputs or the definition, pointing at where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer like `/width`, or `/` for the whole document.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl FieldError {
    /// A problem at JSON pointer `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a workflow could not be registered or a job prepared. Both are the client's fault
/// (4xx `VALIDATION_ERROR`); neither is ever empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// The job's inputs are not acceptable.
    #[error("invalid inputs: {}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The workflow definition (template, schema, defaults) is not acceptable.
    #[error("invalid workflow definition: {}", join(.0))]
    Definition(Vec<FieldError>),
}

impl WorkflowError {
    /// The individual problems.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Invalid(errors) | Self::Definition(errors) => errors,
        }
    }
}

/// Decode one JSON text of a stored workflow record (its template, input schema or
/// defaults), reporting at `path`. A text that is not JSON is a damaged record: an error,
/// never a `null` handed on to the compiler or a plugin.
pub fn decode_stored(path: &str, text: &str) -> Result<Value, WorkflowError> {
    serde_json::from_str(text).map_err(|e| {
        WorkflowError::Definition(vec![FieldError::new(path, format!("the stored record is not JSON ({e})"))])
    })
}

/// The problems as one line: at most [`crate::error::DETAILS_MAX`] of them, then a count.
fn join(errors: &[FieldError]) -> String {
    let max = crate::error::DETAILS_MAX;
    let mut line = errors.iter().take(max).map(ToString::to_string).collect::<Vec<_>>().join("; ");
    if errors.len() > max {
        line.push_str(&format!("; and {} more", errors.len() - max));
    }
    line
}

/// A workflow definition checked and compiled, ready to prepare jobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CompiledWorkflow {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    template: Template,
    schema: Value,
    validator: jsonschema::Validator,
    defaults: Map<String, Value>,
    /// Node inputs (`node id`, `input name`) whose whole value is one token (see [`wrap_lists`]).
    list_slots: Vec<(String, String)>,
    /// Top-level inputs marked `"format": "image"`.
    image_inputs: Vec<String>,
}

/// A job's inputs made final and the prompt rendered from them.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The inputs after defaults and seed drawing: what the job ran with.
    pub inputs: Map<String, Value>,
    /// The ComfyUI API-format prompt (`{node_id: {class_type, inputs}}`).
    pub prompt: Value,
    /// The seed drawn because it was omitted, if one was (given seeds are in `inputs`).
    pub seed: Option<i64>,
}

impl CompiledWorkflow {
    /// Check a definition at registration and compile it.
    ///
    /// The template must be a non-empty JSON object of nodes `{id: {class_type, inputs}}` with a
    /// literal `class_type` string, an `inputs` object, and links (`[node_id, slot]`) that point at
    /// existing nodes. The schema, if given, must be a valid draft 2020-12 schema of
    /// `"type": "object"`; without one, a permissive schema is derived from the tokens
    /// ([`schema::derive`]). Every token must be a schema property or have a default (in
    /// `defaults` or the property's `default`). Defaults must satisfy the schema.
    ///
    /// # Errors
    /// [`WorkflowError::Definition`] listing every problem found.
    pub fn compile(
        template: &Value,
        input_schema: Option<&Value>,
        defaults: Option<&Map<String, Value>>,
    ) -> Result<Self, WorkflowError> {
        let mut errors = check_template(template);
        let parsed = Template::parse(template);
        let tokens = parsed.placeholders();
        let schema = match input_schema {
            Some(schema) => schema.clone(),
            None => schema::derive(tokens, defaults),
        };
        let validator = match schema::compile(&schema) {
            Ok(validator) => Some(validator),
            Err(schema_errors) => {
                errors.extend(
                    schema_errors
                        .into_iter()
                        .map(|e| FieldError { path: nest("/inputSchema", &e.path), message: e.message }),
                );
                None
            }
        };
        let defaults = defaults.cloned().unwrap_or_default();
        let locations = template::token_locations(template);
        for token in tokens {
            let defaulted = template::lookup(&defaults, token).is_some() || schema::has_default(&schema, token);
            if !defaulted && !schema::has_property(&schema, token) {
                let at = locations.get(token).map_or("", String::as_str);
                errors.push(FieldError::new(
                    nest("/workflow", at),
                    format!("template token {{{{{token}}}}} is neither an input of the schema nor has a default"),
                ));
            }
        }
        let Some(validator) = validator else {
            return Err(WorkflowError::Definition(errors));
        };
        // Defaults alone must not break the schema (missing required inputs aside).
        let mut filled = Map::new();
        schema::apply_defaults(&schema, &mut filled, Some(&defaults));
        for error in schema::validate_present(&validator, &Value::Object(filled)) {
            // Blame the registration's `defaults` when it supplied the value, else the schema.
            let top = error.path.split('/').nth(1).unwrap_or_default();
            let explicit = defaults.keys().any(|k| template::escape_pointer(k) == top);
            errors.push(if explicit {
                FieldError::new(nest("/defaults", &error.path), format!("default {}", error.message))
            } else {
                FieldError::new("/inputSchema", format!("the default for input {}: {}", error.path, error.message))
            });
        }
        if !errors.is_empty() {
            return Err(WorkflowError::Definition(errors));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                template: parsed,
                image_inputs: schema::image_inputs(&schema),
                schema,
                validator,
                defaults,
                list_slots: token_slots(template),
            }),
        })
    }

    /// The effective input schema (given or derived), for API responses.
    pub fn input_schema(&self) -> &Value {
        &self.inner.schema
    }

    /// The image inputs (top-level properties with `"format": "image"`): the service
    /// resolves them to stored images and replaces each value by the uploaded file's name
    /// before [`CompiledWorkflow::prepare`].
    pub fn image_inputs(&self) -> &[String] {
        &self.inner.image_inputs
    }

    /// The token names the template uses.
    pub fn placeholders(&self) -> &BTreeSet<String> {
        self.inner.template.placeholders()
    }

    /// Make a job's inputs final and render its prompt.
    ///
    /// Inputs must be an object. Omitted inputs get defaults (explicit `defaults` first, then
    /// schema `default`s, nested too); an omitted seed without default is drawn in
    /// `0..=2^53-1`; the result is validated against the schema (every error with its path) and
    /// the limits (`width`/`height`/`x-image-dimension` ≤ `image_size_max`,
    /// `batch_size`/`x-batch-size` ≤ `batch_size_max`), then rendered.
    ///
    /// # Errors
    /// [`WorkflowError::Invalid`] listing every problem found.
    pub fn prepare(
        &self,
        inputs: &Value,
        limits: &Limits,
        rng: &mut impl rand::Rng,
    ) -> Result<Prepared, WorkflowError> {
        let inner = &*self.inner;
        let Value::Object(given) = inputs else {
            return Err(WorkflowError::Invalid(vec![FieldError::new("/", "inputs must be a JSON object")]));
        };
        let mut inputs = given.clone();
        schema::apply_defaults(&inner.schema, &mut inputs, Some(&inner.defaults));
        let seed = schema::draw_seeds(&inner.schema, &mut inputs, rng);
        let instance = Value::Object(std::mem::take(&mut inputs));
        let mut errors = schema::validate(&inner.validator, &instance);
        if let Value::Object(map) = instance {
            inputs = map;
        }
        errors.extend(schema::check_limits(&inner.schema, &inputs, limits));
        if errors.is_empty() {
            // An optional input without default that the template still needs.
            for token in inner.template.placeholders() {
                if template::lookup(&inputs, token).is_none() {
                    errors.push(FieldError::new(token_pointer(token), "is required by this workflow's template"));
                }
            }
        }
        if !errors.is_empty() {
            return Err(WorkflowError::Invalid(errors));
        }
        schema::normalize_integers(&inner.schema, &mut inputs);
        let mut prompt = inner.template.render(&inputs).map_err(|e| {
            let template::RenderError::UnknownToken { name, .. } = e;
            WorkflowError::Invalid(vec![FieldError::new(
                token_pointer(&name),
                "is required by this workflow's template",
            )])
        })?;
        wrap_lists(&mut prompt, &inner.list_slots);
        Ok(Prepared { inputs, prompt, seed })
    }
}

/// `prefix` followed by JSON pointer `path`, where `"/"` and `""` mean the document itself.
fn nest(prefix: &str, path: &str) -> String {
    if path.is_empty() || path == "/" { prefix.to_owned() } else { format!("{prefix}{path}") }
}

/// The input a token reads, as a JSON pointer (`up.factor` → `/up/factor`).
fn token_pointer(token: &str) -> String {
    token.split('.').map(|segment| format!("/{}", template::escape_pointer(segment))).collect()
}

/// Node inputs whose template value is exactly one token.
fn token_slots(template: &Value) -> Vec<(String, String)> {
    graph::node_inputs(template)
        .filter(|(_, _, value)| value.as_str().is_some_and(template::is_single_token))
        .map(|(id, name, _)| (id.to_string(), name.to_string()))
        .collect()
}

/// ComfyUI reads a JSON list in a node input as a link; a literal list must be wrapped
/// ([`graph::literal_list`]). Lists substituted for a whole node input are wrapped, so an
/// input can never re-wire the graph.
fn wrap_lists(prompt: &mut Value, slots: &[(String, String)]) {
    for (id, name) in slots {
        if let Some(value) = graph::input_mut(prompt, id, name)
            && value.is_array()
        {
            *value = graph::literal_list(value.take());
        }
    }
}

/// Structural checks of an API-format template ([`graph::check`]), with paths under
/// `/workflow`.
pub(crate) fn check_template(template: &Value) -> Vec<FieldError> {
    let is_token = |s: &str| !template::placeholders(&Value::String(s.to_string())).is_empty();
    graph::check(template, &is_token)
        .into_iter()
        .map(|(path, message)| FieldError::new(format!("/workflow{path}"), message))
        .collect()
}

#[cfg(test)]
mod tests;
