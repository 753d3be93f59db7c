//! Workflow import: turn a workflow exported from ComfyUI in API format into a proposed
//! template (the export with its common literal inputs replaced by `{{name}}` tokens) and a
//! draft 2020-12 input schema typed, ranged and enumerated from the backend's node
//! definitions (`GET /object_info`). Pure code: the caller fetches the definitions.
//!
//! What is recognized (every other input stays literal):
//!
//! | node class | input | proposed input |
//! |---|---|---|
//! | `CLIPTextEncode` | `text` | `prompt` / `negative_prompt`: the side is found by following links back from a sampler's `positive` / `negative` input, else by a `_meta.title` containing "neg" |
//! | `KSampler`, `KSamplerAdvanced` | `seed` / `noise_seed`, `steps`, `cfg`, `sampler_name`, `scheduler`, `denoise` | `seed`, `steps`, `cfg`, `sampler_name`, `scheduler`, `denoise` |
//! | `EmptyLatentImage`, `EmptySD3LatentImage` | `width`, `height`, `batch_size` | `width`, `height`, `batch_size` |
//! | `LoadImage` | `image` | `image` (`"format": "image"`, required) |
//! | `CheckpointLoaderSimple` | `ckpt_name` | `checkpoint` |
//! | `LoraLoader`, `LoraLoaderModelOnly` | `lora_name`, `strength_model`, `strength_clip` | `lora`, `lora_strength`, `lora_clip_strength` |
//! | `ControlNetLoader`, `DiffControlNetLoader` | `control_net_name` | `controlnet` |
//! | `ControlNetApply`, `ControlNetApplyAdvanced` | `strength`, `start_percent`, `end_percent` | `controlnet_strength`, `controlnet_start`, `controlnet_end` |
//! | `IPAdapterModelLoader`, `IPAdapterUnifiedLoader`, `IPAdapter`, `IPAdapterAdvanced` | `ipadapter_file`, `preset`, `weight`, `start_at`, `end_at` | `ipadapter`, `ipadapter_preset`, `ipadapter_weight`, `ipadapter_start`, `ipadapter_end` |
//! | `SamplerCustom`; `RandomNoise`, `CFGGuider`, `KSamplerSelect`, `BasicScheduler` (`SamplerCustomAdvanced`'s parts) | `noise_seed`, `cfg`, `sampler_name`, `scheduler`, `steps`, `denoise` | `seed`, `cfg`, `sampler_name`, `scheduler`, `steps`, `denoise` |
//!
//! Names are those of the bundled workflows (so `sampler_name`, not `sampler`). With several
//! nodes of a kind, samplers are ordered along the latent chain (a sampler fed by another
//! comes after it), other nodes by id; the first takes the plain names, one whose title (or
//! checkpoint) says "refiner" takes the prefix `refiner_`, any other the suffix `_2`, `_3`...
//! A text node or checkpoint loader feeding a sampler takes that sampler's prefix or suffix.
//! Two prompt texts of the same side with the same exported text share one input.
//!
//! Types and ranges: `INT` → integer with `minimum` / `maximum` (within ±(2^53 - 1), the
//! gateway's exact-integer range); `FLOAT` → number with `minimum` / `maximum`; a `step`
//! is kept as the hint `x-step`, never `multipleOf` (ComfyUI's step is how its UI moves a
//! value; ComfyUI itself takes a width of 500 with a step of 8, and `multipleOf` breaks on 0.1);
//! combos → `enum` of the backend's choices; `STRING` → string. A default is the exported
//! value when it fits the schema; one that does not (out of range, not a multiple of the
//! step, not among the backend's choices, such as a checkpoint that is not installed) is
//! left out with a warning, so the input becomes required: the schema only ever offers what
//! the backend can run. Every literal left in the template is checked too (a LoRA that is not
//! installed, a number out of range, a required input missing): each is a warning naming the
//! node, the input and the value. Seeds never get a default: like the bundled workflows they are
//! drawn per job (a fixed default would give every job the same image and a cache hit).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::schema::SEED_MAX;
use super::{CompiledWorkflow, FieldError};
use crate::comfy::graph::{self, Node, classes};
use crate::comfy::protocol::{InputKind, NodeClass, ObjectInfo};

/// Longest prompt text accepted by a proposed schema (as in the bundled workflows).
const TEXT_LEN_MAX: u64 = 20_000;

/// How many links are followed back from a sampler input at most.
const TRACE_NODES_MAX: usize = 256;

/// What was recognized: one proposed input and the node input it replaces.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FoundInput {
    /// The proposed input (token) name.
    pub name: String,
    /// The node id in the workflow.
    pub node: String,
    /// The node's `class_type`.
    pub class_type: String,
    /// The node input replaced by the token.
    pub input: String,
    /// The JSON Schema type proposed (`integer`, `number`, `string`, `boolean`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The exported value.
    pub value: Value,
}

/// A proposed workflow: template, input schema, what was found and what to check.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The exported workflow with the recognized literals replaced by `{{name}}` tokens.
    pub template: Value,
    /// The draft 2020-12 input schema (its `title` / `description` are the name and
    /// description given).
    pub input_schema: Value,
    /// Every recognized node input, in schema order of discovery.
    pub inputs: Vec<FoundInput>,
    /// Things a reviewer should look at (unknown node classes, values the backend does not
    /// offer, defaults left out).
    pub warnings: Vec<String>,
}

/// Refuse what is not an API-format export, with a message that says what to do. `at` is
/// the JSON pointer of the workflow in the request (`/workflow`, or `` for the whole body).
///
/// # Errors
/// Every problem found, each with its path under `at`.
pub fn check_api_format(workflow: &Value, at: &str) -> Result<(), Vec<FieldError>> {
    let here = if at.is_empty() { "/".to_string() } else { at.to_string() };
    let Some(nodes) = workflow.as_object() else {
        return Err(vec![FieldError::new(
            here,
            "must be a workflow in ComfyUI API format: a JSON object of nodes {id: {class_type, inputs}}",
        )]);
    };
    if graph::is_ui_format(nodes) {
        return Err(vec![FieldError::new(
            here,
            "this is ComfyUI's UI workflow format (nodes and links arrays); in ComfyUI use Workflow → \
             Export (API) and import that file",
        )]);
    }
    let errors = rebase(super::check_template(workflow), at);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Errors with paths under `/workflow` (as [`CompiledWorkflow::compile`] names them) moved
/// under `at`, where the export is in the request.
fn rebase(errors: Vec<FieldError>, at: &str) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| {
            let rest = e.path.strip_prefix("/workflow").unwrap_or(&e.path);
            let path = if rest.is_empty() && at.is_empty() { "/".to_string() } else { format!("{at}{rest}") };
            FieldError::new(path, e.message)
        })
        .collect()
}

/// Which side of a sampler a prompt text is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Positive,
    Negative,
}

/// How the n-th node of a kind is told apart in names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tag {
    /// The first: plain names.
    Primary,
    /// A refiner: `refiner_` prefix.
    Refiner,
    /// Any other: `_n` suffix.
    Nth(usize),
}

impl Tag {
    fn apply(&self, base: &str) -> String {
        match self {
            Tag::Primary => base.to_string(),
            Tag::Refiner => format!("refiner_{base}"),
            Tag::Nth(n) => format!("{base}_{n}"),
        }
    }
}

/// Node ids in a stable order: numeric ids by value, then the others by text.
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The derivation in progress.
struct Derive<'a> {
    nodes: BTreeMap<&'a str, Node<'a>>,
    classes: &'a ObjectInfo,
    template: Value,
    properties: Map<String, Value>,
    required: Vec<String>,
    found: Vec<FoundInput>,
    warnings: Vec<String>,
    used: BTreeSet<String>,
}

/// Propose a template and an input schema for an API-format `workflow` (already accepted by
/// [`check_api_format`]; `at` is where it is in the request) from the backend's node
/// definitions.
///
/// # Errors
/// When the proposal does not compile (a literal string of the export that reads as a
/// `{{token}}`), the compile errors, with paths under `at`.
pub fn propose(
    workflow: &Value,
    at: &str,
    classes: &ObjectInfo,
    name: &str,
    description: &str,
) -> Result<Proposal, Vec<FieldError>> {
    let nodes = graph::nodes(workflow);
    let mut d = Derive {
        nodes,
        classes,
        template: workflow.clone(),
        properties: Map::new(),
        required: Vec::new(),
        found: Vec::new(),
        warnings: Vec::new(),
        used: BTreeSet::new(),
    };
    let mut unknown: Vec<(&str, &str)> =
        d.nodes.values().filter(|n| !classes.contains_key(n.class)).map(|n| (n.id, n.class)).collect();
    unknown.sort_by(|a, b| id_order(a.0, b.0));
    for (id, class) in unknown {
        d.warnings.push(format!(
            "node {id}: class {class} is unknown to the backend (a custom node that is not installed?); \
             its inputs stay literal and jobs will fail until it is installed"
        ));
    }
    d.run();
    if d.found.is_empty() {
        d.warnings.push(
            "no common input (prompt, sampler, size, checkpoint, image) was recognized: the workflow takes no inputs"
                .into(),
        );
    }
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": name,
        "type": "object",
        "required": d.required,
        "additionalProperties": false,
        "properties": d.properties,
    });
    if !description.is_empty() {
        schema["description"] = json!(description);
    }
    CompiledWorkflow::compile(&d.template, Some(&schema), None).map_err(|e| rebase(e.field_errors().to_vec(), at))?;
    Ok(Proposal { template: d.template, input_schema: schema, inputs: d.found, warnings: d.warnings })
}

impl<'a> Derive<'a> {
    fn ids_of(&self, pick: impl Fn(&str) -> bool) -> Vec<&'a str> {
        let mut ids: Vec<&'a str> = self.nodes.values().filter(|n| pick(n.class)).map(|n| n.id).collect();
        ids.sort_by(|a, b| id_order(a, b));
        ids
    }

    fn node(&self, id: &str) -> Option<&Node<'a>> {
        self.nodes.get(id)
    }

    /// The nodes for which `stop` holds reached by following links back from `start`, not
    /// past them; through a node with an input named `follow`, only that input is followed.
    fn trace(&self, start: Option<&str>, follow: &str, stop: impl Fn(&Node<'a>) -> bool) -> Vec<&'a str> {
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = start.into_iter().collect();
        while let Some(id) = todo.pop() {
            if seen.len() >= TRACE_NODES_MAX || !seen.insert(id) {
                continue;
            }
            let Some(node) = self.node(id) else {
                continue;
            };
            if stop(node) {
                found.push(node.id);
                continue;
            }
            // A node with the followed input itself (ControlNetApplyAdvanced has both
            // `positive` and `negative`): follow only that one.
            if let Some(next) = node.link(follow) {
                todo.push(next);
                continue;
            }
            todo.extend(node.links());
        }
        found.sort_by(|a, b| id_order(a, b));
        found
    }

    fn run(&mut self) {
        // Samplers along the latent chain: one fed by another sampler comes after it.
        let mut samplers: Vec<(usize, &'a str)> = self
            .ids_of(classes::is_sampler)
            .into_iter()
            .map(|id| {
                let upstream =
                    self.trace(self.node(id).and_then(|n| n.link(classes::LATENT_IMAGE)), classes::LATENT_IMAGE, |n| {
                        classes::is_sampler(n.class)
                    });
                (upstream.len(), id)
            })
            .collect();
        samplers.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| id_order(a.1, b.1)));
        let mut sampler_tags = Vec::new();
        for (i, &(_, id)) in samplers.iter().enumerate() {
            let checkpoints = self.trace(self.node(id).and_then(|n| n.link(classes::MODEL)), classes::MODEL, |n| {
                classes::is_checkpoint_loader(n.class)
            });
            let refiner = |text: &str| text.to_ascii_lowercase().contains("refiner");
            let says_refiner = self.node(id).is_some_and(|n| refiner(n.title))
                || checkpoints.iter().filter_map(|c| self.node(c)).any(|c| {
                    refiner(c.title) || c.input(classes::CKPT_NAME).and_then(Value::as_str).is_some_and(refiner)
                });
            let tag = match (i, says_refiner) {
                (0, _) => Tag::Primary,
                (_, true) if !sampler_tags.iter().any(|(_, t)| *t == Tag::Refiner) => Tag::Refiner,
                _ => Tag::Nth(i + 1),
            };
            sampler_tags.push((id, tag));
        }

        // Prompt texts: by the sampler side they feed, else by title.
        let mut texts: BTreeMap<&'a str, (Side, Tag)> = BTreeMap::new();
        for (id, tag) in &sampler_tags {
            for (side, input) in [(Side::Positive, classes::POSITIVE), (Side::Negative, classes::NEGATIVE)] {
                let start = self.node(id).and_then(|n| n.link(input));
                for text in self.trace(start, input, |n| classes::is_text_encoder(n.class)) {
                    texts.entry(text).or_insert((side, tag.clone()));
                }
            }
        }
        // Not reached from a sampler: the side of any other node's `positive` / `negative`
        // input they feed (CFGGuider, SamplerCustom, ...), else the title.
        let mut sides: BTreeMap<&'a str, Side> = BTreeMap::new();
        let guides: Vec<&'a str> = self.ids_of(|c| !classes::is_sampler(c));
        for id in guides {
            for (side, input) in [(Side::Negative, classes::NEGATIVE), (Side::Positive, classes::POSITIVE)] {
                let start = self.node(id).and_then(|n| n.link(input));
                for text in self.trace(start, input, |n| classes::is_text_encoder(n.class)) {
                    sides.entry(text).or_insert(side);
                }
            }
        }
        let loose: Vec<&'a str> =
            self.ids_of(classes::is_text_encoder).into_iter().filter(|id| !texts.contains_key(id)).collect();
        for id in loose {
            let by_title = match self.node(id).is_some_and(|n| n.title.to_ascii_lowercase().contains("neg")) {
                true => Side::Negative,
                false => Side::Positive,
            };
            let side = sides.get(id).copied().unwrap_or(by_title);
            let n_side = texts.values().filter(|(s, _)| *s == side).count();
            let primary_taken = texts.values().any(|(s, t)| *s == side && *t == Tag::Primary);
            let tag = if primary_taken { Tag::Nth(n_side + 1) } else { Tag::Primary };
            texts.insert(id, (side, tag));
        }
        let mut ordered: Vec<(&'a str, Side, Tag)> = texts.into_iter().map(|(id, (s, t))| (id, s, t)).collect();
        let rank = |t: &Tag| match t {
            Tag::Primary => 0,
            Tag::Refiner => 1,
            Tag::Nth(n) => 1 + *n,
        };
        ordered.sort_by(|a, b| {
            rank(&a.2)
                .cmp(&rank(&b.2))
                .then((a.1 == Side::Negative).cmp(&(b.1 == Side::Negative)))
                .then(id_order(a.0, b.0))
        });
        let mut shared: BTreeMap<(bool, String), String> = BTreeMap::new();
        for (id, side, tag) in ordered {
            let base = if side == Side::Positive { "prompt" } else { "negative_prompt" };
            let text = self.node(id).and_then(|n| n.input(classes::TEXT)).and_then(Value::as_str).map(str::to_string);
            let Some(text) = text else {
                continue;
            };
            let key = (side == Side::Negative, text);
            if let Some(name) = shared.get(&key) {
                let name = name.clone();
                self.replace(id, classes::TEXT, &name, "string");
                continue;
            }
            if let Some(name) = self.slot(id, classes::TEXT, &tag.apply(base), Role::Text(side)) {
                shared.insert(key, name);
            }
        }

        // Checkpoint loaders: the tag of the first sampler they feed, then the others in order.
        let mut loaders: Vec<(&'a str, Tag)> = Vec::new();
        for (sampler, tag) in &sampler_tags {
            let start = self.node(sampler).and_then(|n| n.link(classes::MODEL));
            for id in self.trace(start, classes::MODEL, |n| classes::is_checkpoint_loader(n.class)) {
                if !loaders.iter().any(|(l, _)| *l == id) {
                    loaders.push((id, tag.clone()));
                }
            }
        }
        for id in self.ids_of(classes::is_checkpoint_loader) {
            if !loaders.iter().any(|(l, _)| *l == id) {
                // `slot` makes the name free (`checkpoint_2`, ...) when it is taken.
                loaders.push((id, Tag::Primary));
            }
        }
        for (id, tag) in loaders {
            self.slot(id, classes::CKPT_NAME, &tag.apply("checkpoint"), Role::Checkpoint);
        }
        for (i, id) in self.ids_of(classes::is_image_loader).into_iter().enumerate() {
            let tag = if i == 0 { Tag::Primary } else { Tag::Nth(i + 1) };
            self.slot(id, classes::IMAGE, &tag.apply("image"), Role::Image);
        }
        for (i, id) in self.ids_of(classes::is_empty_latent).into_iter().enumerate() {
            let tag = if i == 0 { Tag::Primary } else { Tag::Nth(i + 1) };
            for (input, base) in classes::LATENT_INPUTS {
                self.slot(id, input, &tag.apply(base), Role::Plain);
            }
        }
        for (id, tag) in sampler_tags {
            for (input, base) in classes::SAMPLER_INPUTS {
                let role = if base == &"seed" { Role::Seed } else { Role::Plain };
                self.slot(id, input, &tag.apply(base), role);
            }
        }
        // Loaders, strengths and custom-sampler parts: the first of a class takes the plain
        // name (unless a sampler took it), others a free variant.
        for &(class, input, base) in classes::MORE_INPUTS {
            for id in self.ids_of(|c| c == class) {
                let role = if base == "seed" { Role::Seed } else { Role::Plain };
                self.slot(id, input, base, role);
            }
        }
        self.check_literals();
    }

    /// Every literal the proposal keeps, checked against what the backend offers: a choice
    /// it does not list (a LoRA that is not installed), a number outside its range, a
    /// required input missing. Each is a warning that names the node, input and value: the
    /// job would fail on the backend.
    fn check_literals(&mut self) {
        let mut ids: Vec<&'a str> = self.nodes.keys().copied().collect();
        ids.sort_by(|a, b| id_order(a, b));
        for id in ids {
            let Some(node) = self.node(id).copied() else { continue };
            let Some(def) = self.classes.get(node.class) else { continue };
            let at = format!("node {id} ({})", node.class);
            for (input, value) in node.inputs() {
                let replaced = self.found.iter().any(|f| f.node == id && f.input == input);
                let Some(declared) = def.inputs.get(input) else { continue };
                if replaced || value.is_array() || value.is_object() || value.is_null() {
                    continue;
                }
                if let Some(problem) = offered(&declared.kind, value) {
                    self.warnings.push(format!("{at} input {input}: {value} {problem}; jobs will fail until it is"));
                }
            }
            for (input, declared) in &def.inputs {
                if declared.required && node.input(input).is_none() {
                    self.warnings.push(format!("{at}: the required input {input} is missing; jobs will fail"));
                }
            }
        }
    }

    /// A free name: `name`, else `name_2`, `name_3`...
    fn free_name(&self, name: &str) -> String {
        if !self.used.contains(name) {
            return name.to_string();
        }
        (2..).map(|n| format!("{name}_{n}")).find(|n| !self.used.contains(n)).unwrap_or_default()
    }

    /// Replace node `id`'s literal `input` by `{{name}}`.
    fn replace(&mut self, id: &str, input: &str, name: &str, kind: &str) {
        let Some(node) = self.node(id) else {
            return;
        };
        let value = node.input(input).cloned().unwrap_or(Value::Null);
        self.found.push(FoundInput {
            name: name.to_string(),
            node: id.to_string(),
            class_type: node.class.to_string(),
            input: input.to_string(),
            kind: kind.to_string(),
            value,
        });
        if let Some(slot) = graph::input_mut(&mut self.template, id, input) {
            *slot = Value::String(format!("{{{{{name}}}}}"));
        }
    }

    /// Make node `id`'s literal `input` the proposed input `name` (or a free variant of it);
    /// the name used, or None when the input is absent or a link.
    fn slot(&mut self, id: &str, input: &str, name: &str, role: Role) -> Option<String> {
        let node = self.node(id)?;
        let value = node.input(input)?.clone();
        if value.is_array() || value.is_object() || value.is_null() {
            // Wired from another node (a primitive, a reroute): not a literal to replace.
            return None;
        }
        let def = self.classes.get(node.class);
        let (class, title) = (node.class.to_string(), if node.title.is_empty() { node.class } else { node.title });
        let title = title.to_string();
        let name = self.free_name(name);
        let at = format!("node {id} ({class}) input {input}");
        let (property, required, warning) = property(def, input, &value, role, &at);
        if let Some(w) = warning {
            self.warnings.push(w);
        }
        let mut property = property;
        let kind = property.get("type").and_then(Value::as_str).unwrap_or("string").to_string();
        property["title"] = json!(format!("{} ({title}, node {id})", humanize(&name)));
        self.properties.insert(name.clone(), property);
        if required {
            self.required.push(name.clone());
        }
        self.used.insert(name.clone());
        self.replace(id, input, &name, &kind);
        Some(name)
    }
}

/// Why the backend would refuse literal `value` for an input of `kind`, if it would.
fn offered(kind: &InputKind, value: &Value) -> Option<String> {
    match kind {
        InputKind::Combo { options, .. } if options.is_empty() => {
            Some("is not offered: the backend lists no choice here (nothing installed?)".into())
        }
        InputKind::Combo { options, .. } if !options.contains(value) => {
            Some("is not among the backend's choices (not installed?)".into())
        }
        InputKind::Int { min, max, .. } => {
            let v = value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from));
            match v {
                None if value.as_f64().is_none() => Some("is not a number".into()),
                Some(v) if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) => {
                    Some(format!("is outside the backend's range {}..{}", show(*min), show(*max)))
                }
                _ => None,
            }
        }
        InputKind::Float { min, max, .. } => match value.as_f64() {
            None => Some("is not a number".into()),
            Some(v) if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) => {
                Some(format!("is outside the backend's range {}..{}", show(*min), show(*max)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// A bound for a message (`…` when there is none).
fn show<T: std::fmt::Display>(bound: Option<T>) -> String {
    bound.map_or_else(|| "…".to_string(), |b| b.to_string())
}

/// What a recognized input is, beyond its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Text(Side),
    Seed,
    Checkpoint,
    Image,
    Plain,
}

/// `refiner_negative_prompt` → `Refiner negative prompt`.
fn humanize(name: &str) -> String {
    let text = name.replace('_', " ");
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// The description of a proposed input when the backend gives no tooltip.
fn fallback_description(input: &str, role: Role) -> &'static str {
    match (role, input) {
        (Role::Text(Side::Positive), _) => "What to generate (positive prompt).",
        (Role::Text(Side::Negative), _) => "What to avoid (negative prompt).",
        (Role::Seed, _) => "Noise seed.",
        (Role::Checkpoint, _) => "Checkpoint file name as listed by the ComfyUI server (models/checkpoints).",
        (Role::Image, _) => "Input image: a URL, a data URI, base64 or a multipart part.",
        (_, "width") => "Image width in pixels; also capped by MAX_IMAGE_SIZE.",
        (_, "height") => "Image height in pixels; also capped by MAX_IMAGE_SIZE.",
        (_, "batch_size") => "Images per job; also capped by MAX_BATCH_SIZE.",
        (_, "steps") => "Sampling steps.",
        (_, "cfg") => "Classifier-free guidance scale.",
        (_, "sampler_name") => "Sampler.",
        (_, "scheduler") => "Noise scheduler.",
        (_, "denoise") => "Denoising strength (1.0 for text-to-image).",
        _ => "",
    }
}

/// The schema of one proposed input, whether it is required, and a warning.
fn property(
    def: Option<&NodeClass>,
    input: &str,
    value: &Value,
    role: Role,
    at: &str,
) -> (Value, bool, Option<String>) {
    let declared = def.and_then(|d| d.inputs.get(input));
    let mut p = Map::new();
    let mut warning = None;
    let kind = declared.map(|d| d.kind.clone());
    // A prompt's side says more than the node's tooltip ("The text to be encoded.").
    let description = match role {
        Role::Text(_) => fallback_description(input, role).to_string(),
        _ => declared.and_then(|d| d.tooltip.clone()).unwrap_or_else(|| fallback_description(input, role).into()),
    };
    if !description.is_empty() {
        p.insert("description".into(), json!(description));
    }
    if role == Role::Image {
        p.insert("type".into(), json!("string"));
        p.insert("format".into(), json!("image"));
        p.insert("description".into(), json!(fallback_description(input, role)));
        return (Value::Object(p), true, None);
    }
    match kind {
        Some(InputKind::Int { min, max, step }) => {
            p.insert("type".into(), json!("integer"));
            let exact = i128::from(SEED_MAX);
            let low = min.map(|m| m.clamp(-exact, exact));
            let high = max.map(|m| m.clamp(-exact, exact));
            let (low, high) = if role == Role::Seed {
                (Some(low.unwrap_or(0).max(0)), Some(high.unwrap_or(exact)))
            } else {
                (low, high)
            };
            if let Some(low) = low {
                p.insert("minimum".into(), json!(low as i64));
            }
            if let Some(high) = high {
                p.insert("maximum".into(), json!(high as i64));
            }
            // ComfyUI's `step` is how its UI moves the value, not a rule: ComfyUI takes a width
            // of 500 with a step of 8. A hint, as for floats.
            if let Some(step) = step.filter(|s| *s > 1) {
                p.insert("x-step".into(), json!(step as i64));
            }
            let fits = value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from))
                .is_some_and(|v| low.is_none_or(|l| v >= l) && high.is_none_or(|h| v <= h));
            if role == Role::Seed {
                p.insert(
                    "description".into(),
                    json!(format!(
                        "{description} Omit it to get a random one (recorded on the job); the export used {value}."
                    )),
                );
            } else if fits {
                p.insert("default".into(), value.clone());
            } else {
                warning = Some(format!(
                    "{at}: the exported value {value} is not an integer within the backend's range; no default"
                ));
            }
        }
        Some(InputKind::Float { min, max, step }) => {
            p.insert("type".into(), json!("number"));
            if let Some(low) = min {
                p.insert("minimum".into(), json!(low));
            }
            if let Some(high) = max {
                p.insert("maximum".into(), json!(high));
            }
            if let Some(step) = step.filter(|s| *s > 0.0) {
                p.insert("x-step".into(), json!(step));
            }
            let fits = value.as_f64().is_some_and(|v| min.is_none_or(|l| v >= l) && max.is_none_or(|h| v <= h));
            if fits {
                p.insert("default".into(), value.clone());
            } else {
                warning = Some(format!("{at}: the exported value {value} is outside the backend's range; no default"));
            }
        }
        Some(InputKind::Combo { options, .. }) => {
            let all_strings = options.iter().all(Value::is_string);
            p.insert("type".into(), json!(if all_strings { "string" } else { super::schema::json_type(value) }));
            if options.is_empty() {
                warning = Some(format!("{at}: the backend offers no choice here (nothing installed?); no enum"));
                p.insert("default".into(), value.clone());
            } else {
                p.insert("enum".into(), Value::Array(options.clone()));
                if options.contains(value) {
                    p.insert("default".into(), value.clone());
                } else {
                    warning = Some(format!(
                        "{at}: {value} is not among the backend's choices (not installed?); no default, \
                         the input must be given"
                    ));
                }
            }
        }
        Some(InputKind::String { .. }) => {
            p.insert("type".into(), json!("string"));
            p.insert("maxLength".into(), json!(TEXT_LEN_MAX));
            let fits = value.as_str().is_some_and(|s| s.chars().count() as u64 <= TEXT_LEN_MAX);
            if fits {
                p.insert("default".into(), value.clone());
            } else {
                warning = Some(format!(
                    "{at}: the exported value is not a string of at most {TEXT_LEN_MAX} characters; no default"
                ));
            }
        }
        Some(InputKind::Boolean) => {
            p.insert("type".into(), json!("boolean"));
            if value.is_boolean() {
                p.insert("default".into(), value.clone());
            }
        }
        Some(InputKind::Link(_)) | None => {
            // Unknown to the backend: typed from the exported value, no range.
            p.insert("type".into(), json!(super::schema::json_type(value)));
            if role == Role::Seed {
                p.insert("type".into(), json!("integer"));
                p.insert("minimum".into(), json!(0));
                p.insert("maximum".into(), json!(SEED_MAX));
            } else {
                p.insert("default".into(), value.clone());
            }
            if declared.is_some() {
                warning = Some(format!("{at}: the backend declares this input as a connection, not a value"));
            } else if def.is_some() {
                warning = Some(format!("{at}: the backend's node class has no such input"));
            }
        }
    }
    // The gateway's limits and seed drawing find these by name; a suffixed name needs the marker.
    match input {
        "width" | "height" => {
            p.insert("x-image-dimension".into(), json!(true));
        }
        "batch_size" => {
            p.insert("x-batch-size".into(), json!(true));
        }
        _ => {}
    }
    if role == Role::Seed {
        p.insert("x-seed".into(), json!(true));
    }
    let required = !p.contains_key("default") && role != Role::Seed;
    (Value::Object(p), required, warning)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfy::protocol::parse_object_info;

    fn object_info() -> ObjectInfo {
        parse_object_info(&serde_json::from_str(include_str!("../comfy/sim/object_info.json")).unwrap()).unwrap()
    }

    fn sdxl() -> Value {
        serde_json::from_str(include_str!("../../tests/it/fixtures/sdxl_api.json")).unwrap()
    }

    fn names(p: &Proposal) -> Vec<&str> {
        p.input_schema["properties"].as_object().unwrap().keys().map(String::as_str).collect()
    }

    /// A custom-sampler graph with a LoRA and a ControlNet: their names and strengths become
    /// inputs; a literal the backend does not offer, anywhere, is a warning naming the node,
    /// the input and the value; ComfyUI's step is a hint.
    #[test]
    fn loaders_and_custom_samplers_become_inputs_and_every_literal_is_checked() {
        let workflow = json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
            "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                  "lora_name": "sdxl_lora_example.safetensors", "strength_model": 0.8, "strength_clip": 1.0}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a fox"}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "blurry"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 500, "height": 1024, "batch_size": 1}},
            "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
            "7": {"class_type": "CFGGuider", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "cfg": 5.5}},
            "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "9": {"class_type": "BasicScheduler", "inputs": {"model": ["2", 0], "scheduler": "karras", "steps": 24, "denoise": 1.0}},
            "10": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["6", 0], "guider": ["7", 0], "sampler": ["8", 0], "sigmas": ["9", 0], "latent_image": ["5", 0]}},
            "11": {"class_type": "LoraLoader", "inputs": {"model": ["2", 0], "clip": ["2", 1],
                   "lora_name": "not_installed.safetensors", "strength_model": 500.0, "strength_clip": 1.0}},
            "12": {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "magic", "width": 64, "height": 64, "crop": "disabled"}},
            "13": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0]}},
            "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "x"}}
        });
        let p = propose(&workflow, "/workflow", &object_info(), "custom", "").unwrap();
        let props = &p.input_schema["properties"];
        for (node, input, name) in [
            ("2", "lora_name", "lora"),
            ("2", "strength_model", "lora_strength"),
            ("2", "strength_clip", "lora_clip_strength"),
            ("11", "lora_name", "lora_2"),
            ("6", "noise_seed", "seed"),
            ("7", "cfg", "cfg"),
            ("8", "sampler_name", "sampler_name"),
            ("9", "scheduler", "scheduler"),
            ("9", "steps", "steps"),
            ("3", "text", "prompt"),
            ("4", "text", "negative_prompt"),
        ] {
            assert_eq!(p.template[node]["inputs"][input], format!("{{{{{name}}}}}"), "{node}.{input}");
            assert!(props.get(name).is_some(), "{name}: {props}");
        }
        assert_eq!(props["seed"]["x-seed"], true);
        assert_eq!(props["lora"]["enum"], json!(["sdxl_lora_example.safetensors"]));
        assert_eq!(props["lora_strength"]["default"], json!(0.8));
        // Width 500 is fine for ComfyUI: its step of 8 is a hint, so 500 is the default.
        assert_eq!((props["width"]["default"].as_i64(), props["width"]["x-step"].as_i64()), (Some(500), Some(8)));
        assert!(props["width"].get("multipleOf").is_none());
        let warnings = p.warnings.join("\n");
        // Each literal the backend would refuse, by node, input and value.
        assert!(warnings.contains("not_installed.safetensors\" is not among the backend's choices"), "{warnings}");
        assert!(warnings.contains("node 11 (LoraLoader) input strength_model"), "{warnings}");
        assert!(warnings.contains("node 12 (ImageScale) input upscale_method: \"magic\""), "{warnings}");
        assert!(warnings.contains("node 13 (VAEDecode): the required input vae is missing"), "{warnings}");
        assert!(!warnings.contains("node 1 "), "offered values are not warned about: {warnings}");
    }

    #[test]
    fn sdxl_base_and_refiner_are_named_apart_and_compile() {
        let p = propose(&sdxl(), "/workflow", &object_info(), "SDXL", "base + refiner").unwrap();
        let s = &p.input_schema;
        assert_eq!(
            names(&p),
            [
                "batch_size",
                "cfg",
                "checkpoint",
                "height",
                "negative_prompt",
                "prompt",
                "refiner_cfg",
                "refiner_checkpoint",
                "refiner_sampler_name",
                "refiner_scheduler",
                "refiner_seed",
                "refiner_steps",
                "sampler_name",
                "scheduler",
                "seed",
                "steps",
                "width"
            ]
        );
        // Same text on both sides of both samplers: one input each.
        assert_eq!(p.template["6"]["inputs"]["text"], "{{prompt}}");
        assert_eq!(p.template["15"]["inputs"]["text"], "{{prompt}}");
        assert_eq!(p.template["16"]["inputs"]["text"], "{{negative_prompt}}");
        assert_eq!(p.template["12"]["inputs"]["ckpt_name"], "{{refiner_checkpoint}}");
        assert_eq!(p.template["11"]["inputs"]["noise_seed"], "{{refiner_seed}}");
        assert_eq!(p.template["11"]["inputs"]["start_at_step"], 20, "other inputs stay literal");
        assert_eq!(p.template["10"]["_meta"]["title"], "KSampler (Advanced) - BASE");
        let props = &s["properties"];
        assert_eq!(
            props["width"],
            json!({
                "type": "integer", "minimum": 16, "maximum": 16384, "x-step": 8, "default": 1024,
                "x-image-dimension": true, "title": props["width"]["title"], "description": props["width"]["description"]
            })
        );
        assert_eq!(props["seed"]["maximum"], json!(SEED_MAX));
        assert!(props["seed"].get("default").is_none());
        assert_eq!(props["refiner_seed"]["x-seed"], true);
        assert_eq!(props["cfg"]["maximum"], json!(100.0));
        assert_eq!(props["cfg"]["default"], json!(8));
        assert!(props["cfg"].get("multipleOf").is_none());
        assert_eq!(props["steps"]["default"], 25);
        assert!(props["checkpoint"]["enum"].as_array().unwrap().contains(&json!("sd_xl_refiner_1.0.safetensors")));
        assert_eq!(props["refiner_checkpoint"]["default"], "sd_xl_refiner_1.0.safetensors");
        assert_eq!(props["prompt"]["default"], sdxl()["6"]["inputs"]["text"]);
        assert_eq!(props["negative_prompt"]["description"], "What to avoid (negative prompt).");
        assert_eq!(s["required"], json!([]));
        assert_eq!(s["title"], "SDXL");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.inputs.iter().filter(|i| i.name == "prompt").count(), 2);
        // Accepted as is: compiles and renders the export back (but the seeds).
        let compiled = CompiledWorkflow::compile(&p.template, Some(s), None).unwrap();
        let limits = super::super::Limits { image_size_max: 2048, batch_size_max: 4 };
        let prepared = compiled.prepare(&json!({"steps": 30}), &limits, &mut rand::rng()).unwrap();
        let mut expected = sdxl();
        expected["10"]["inputs"]["steps"] = json!(30);
        for id in ["10", "11"] {
            expected[id]["inputs"]["noise_seed"] = prepared.prompt[id]["inputs"]["noise_seed"].clone();
        }
        assert_eq!(prepared.prompt, expected);
    }

    #[test]
    fn sides_follow_links_then_titles() {
        let wf = json!({
            "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["9", 1]}, "_meta": {"title": "Negative?"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["9", 1]}},
            "3": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["2", 0]}},
            "4": {"class_type": "KSampler", "inputs": {"positive": ["1", 0], "negative": ["3", 0], "seed": 1, "steps": 5}},
            "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "loose", "clip": ["9", 1]}, "_meta": {"title": "Neg extra"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "other", "clip": ["9", 1]}},
            "9": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
            "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "guided", "clip": ["9", 1]}, "_meta": {"title": "Positive"}},
            "11": {"class_type": "CFGGuider", "inputs": {"model": ["9", 0], "positive": ["6", 0], "negative": ["10", 0], "cfg": 8}}
        });
        let p = propose(&wf, "/workflow", &object_info(), "t", "").unwrap();
        let token = |id: &str| p.template[id]["inputs"]["text"].clone();
        assert_eq!(token("10"), "{{negative_prompt_3}}", "a guider's negative despite its title");
        assert_eq!(token("1"), "{{prompt}}", "linked to positive despite its title");
        assert_eq!(token("2"), "{{negative_prompt}}", "through ConditioningCombine");
        assert_eq!(token("5"), "{{negative_prompt_2}}", "unlinked: by title");
        assert_eq!(token("6"), "{{prompt_2}}");
        // No sampler at all: titles, then order.
        let wf = json!({
            "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["3", 1]}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "b", "clip": ["3", 1]}},
            "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}
        });
        let p = propose(&wf, "/workflow", &object_info(), "t", "").unwrap();
        assert_eq!(
            (p.template["1"]["inputs"]["text"].as_str(), p.template["2"]["inputs"]["text"].as_str()),
            (Some("{{prompt}}"), Some("{{prompt_2}}"))
        );
    }

    #[test]
    fn two_plain_samplers_get_suffixes_and_distinct_refiner_prompts() {
        let mut wf = sdxl();
        wf["11"]["_meta"]["title"] = json!("Second pass");
        wf["12"]["inputs"]["ckpt_name"] = json!("v1-5-pruned-emaonly.safetensors");
        wf["12"]["_meta"]["title"] = json!("Load Checkpoint");
        wf["15"]["inputs"]["text"] = json!("sharper");
        let p = propose(&wf, "/workflow", &object_info(), "t", "").unwrap();
        assert_eq!(p.template["11"]["inputs"]["steps"], "{{steps_2}}");
        assert_eq!(p.template["12"]["inputs"]["ckpt_name"], "{{checkpoint_2}}");
        assert_eq!(p.template["15"]["inputs"]["text"], "{{prompt_2}}");
        assert_eq!(p.template["16"]["inputs"]["text"], "{{negative_prompt}}");
        // Stable: the same export gives the same proposal.
        assert_eq!(propose(&wf, "/workflow", &object_info(), "t", "").unwrap(), p);
    }

    #[test]
    fn values_outside_the_backend_range_get_no_default() {
        let wf = json!({
            "3": {"class_type": "KSampler", "inputs": {"seed": u64::MAX, "steps": 0, "cfg": 250.5, "sampler_name": "nope",
                "scheduler": "karras", "denoise": 1}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 20000, "height": 1020, "batch_size": 2}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}}
        });
        let p = propose(&wf, "/workflow", &object_info(), "t", "").unwrap();
        let props = &p.input_schema["properties"];
        for name in ["steps", "cfg", "sampler_name", "width", "checkpoint"] {
            assert!(props[name].get("default").is_none(), "{name}: {}", props[name]);
        }
        // Not a multiple of ComfyUI's step of 8, and fine for ComfyUI: a default.
        assert_eq!(props["height"]["default"], 1020);
        assert_eq!(props["scheduler"]["default"], "karras");
        assert!(props["seed"].get("default").is_none());
        assert_eq!(props["seed"]["maximum"], json!(SEED_MAX));
        assert_eq!(p.input_schema["required"], json!(["checkpoint", "width", "steps", "cfg", "sampler_name"]));
        // The five values, and the sampler's four links this partial graph lacks.
        assert_eq!(p.warnings.len(), 9, "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.contains("node 3 (KSampler): the required input model is missing")));
        assert!(p.warnings.iter().any(|w| w.contains("missing.safetensors") && w.contains("not installed")));
        assert!(!props["checkpoint"]["enum"].as_array().unwrap().contains(&json!("missing.safetensors")));
    }

    #[test]
    fn unknown_classes_warn_and_inputs_are_typed_from_values() {
        let wf = json!({
            "1": {"class_type": "MyCustomNode", "inputs": {"strength": 0.5}},
            "2": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 12, "sampler_name": "euler"}}
        });
        let empty = ObjectInfo::new();
        let p = propose(&wf, "/workflow", &empty, "t", "").unwrap();
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("MyCustomNode"));
        assert_eq!(p.input_schema["properties"]["steps"]["type"], "integer");
        assert_eq!(p.input_schema["properties"]["steps"]["default"], 12);
        assert_eq!(p.input_schema["properties"]["sampler_name"]["type"], "string");
        assert_eq!(p.template["1"]["inputs"]["strength"], 0.5);
        // Nothing recognizable: fine, with a warning.
        let p = propose(&json!({"1": {"class_type": "SaveImage", "inputs": {}}}), "/workflow", &object_info(), "t", "")
            .unwrap();
        assert_eq!(p.input_schema["properties"], json!({}));
        assert!(p.warnings.iter().any(|w| w.contains("no common input")), "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.contains("node 1 (SaveImage): the required input images is missing")));
    }

    #[test]
    fn images_are_required_image_inputs() {
        let wf = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "mask.png"}}
        });
        let p = propose(&wf, "/workflow", &object_info(), "t", "").unwrap();
        assert_eq!(p.input_schema["properties"]["image"]["format"], "image");
        assert_eq!(p.input_schema["required"], json!(["image", "image_2"]));
        let compiled = CompiledWorkflow::compile(&p.template, Some(&p.input_schema), None).unwrap();
        assert_eq!(compiled.image_inputs(), ["image", "image_2"]);
    }

    #[test]
    fn only_the_api_format_is_accepted() {
        let ui = json!({"last_node_id": 9, "nodes": [{"id": 1}], "links": []});
        let e = check_api_format(&ui, "/workflow").unwrap_err();
        assert_eq!(e[0].path, "/workflow");
        assert!(e[0].message.contains("Export (API)"));
        assert_eq!(check_api_format(&json!([1]), "").unwrap_err()[0].path, "/");
        let e = check_api_format(&json!({"1": {"class_type": "X"}}), "").unwrap_err();
        assert_eq!(e[0].path, "/1/inputs");
        let e = check_api_format(&json!({"1": {"inputs": {}}}), "/workflow").unwrap_err();
        assert_eq!(e[0].path, "/workflow/1/class_type");
        assert!(check_api_format(&json!({}), "/workflow").is_err());
        assert!(check_api_format(&sdxl(), "/workflow").is_ok());
    }

    #[test]
    fn token_like_literals_fail_to_compile_with_a_path() {
        let wf = json!({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "{{x}}"}}});
        let e = propose(&wf, "/workflow", &object_info(), "t", "").unwrap_err();
        assert!(e[0].path.starts_with("/workflow/1"), "{e:?}");
        let e = propose(&wf, "", &object_info(), "t", "").unwrap_err();
        assert!(e[0].path.starts_with("/1/inputs"), "{e:?}");
    }
}
