//! ComfyUI's API-format prompt (`{node id: {class_type, inputs, _meta?}}`) read as a graph:
//! nodes, their classes, titles and inputs, links (`[node id, output slot]`), the structural
//! check of a template, and the node classes the workflow import recognizes. The rest of the
//! gateway goes through these accessors and never names ComfyUI's keys or node classes.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The key of a node's class in the API format.
pub(crate) const CLASS_TYPE: &str = "class_type";
/// The key of a node's inputs.
pub(crate) const INPUTS: &str = "inputs";
/// Where the UI's node title is kept (`_meta.title`).
const TITLE_POINTER: &str = "/_meta/title";
/// The wrapper that makes ComfyUI read a JSON list as a value, not as a link.
const LITERAL_LIST: &str = "__value__";

/// The JSON Schema of an API-format prompt, as the API's contract describes the workflows
/// clients send (`wire::request`): an object of nodes, each with a class and inputs.
pub fn api_format_schema() -> Value {
    serde_json::json!({
        "type": "object", "minProperties": 1,
        "additionalProperties": {
            "type": "object", "required": [CLASS_TYPE, INPUTS],
            "properties": {CLASS_TYPE: {"type": "string", "minLength": 1}, INPUTS: {"type": "object"}}
        }
    })
}

/// One node of a prompt, read leniently (an absent class or title reads as empty, absent
/// inputs as none).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The node id.
    pub id: &'a str,
    /// Its `class_type`.
    pub class: &'a str,
    /// Its title in the UI (`_meta.title`), or empty.
    pub title: &'a str,
    /// Its inputs (literals and links), if it has an `inputs` object.
    inputs: Option<&'a Map<String, Value>>,
}

impl<'a> Node<'a> {
    /// The value of input `name`: a literal or a link.
    pub fn input(&self, name: &str) -> Option<&'a Value> {
        self.inputs?.get(name)
    }

    /// The node a link input points at.
    pub fn link(&self, input: &str) -> Option<&'a str> {
        link_target(self.input(input)?)
    }

    /// Its inputs by name, literals and links.
    pub fn inputs(&self) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.inputs.into_iter().flatten().map(|(k, v)| (k.as_str(), v))
    }

    /// Every node this one's inputs link to.
    pub fn links(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.inputs.into_iter().flat_map(Map::values).filter_map(link_target)
    }
}

/// `["id", slot]` → `id`: ComfyUI reads any [string, unsigned integer] pair as a link.
pub fn link_target(value: &Value) -> Option<&str> {
    match value.as_array().map(Vec::as_slice) {
        Some([Value::String(id), Value::Number(slot)]) if slot.is_u64() => Some(id),
        _ => None,
    }
}

/// The nodes of `prompt` by id (none when it is not an object; entries that are not
/// objects read as nodes without class and inputs).
pub fn nodes(prompt: &Value) -> BTreeMap<&str, Node<'_>> {
    let mut out = BTreeMap::new();
    for (id, node) in prompt.as_object().into_iter().flatten() {
        let class = node.get(CLASS_TYPE).and_then(Value::as_str).unwrap_or_default();
        let title = node.pointer(TITLE_POINTER).and_then(Value::as_str).unwrap_or_default();
        let inputs = node.get(INPUTS).and_then(Value::as_object);
        out.insert(id.as_str(), Node { id, class, title, inputs });
    }
    out
}

/// The model files a backend offers, by kind, from its node definitions: the choices of the
/// loaders' file inputs (`CheckpointLoaderSimple.ckpt_name`, `LoraLoader.lora_name`, ...).
pub fn model_lists(info: &crate::comfy::protocol::ObjectInfo) -> BTreeMap<&'static str, Vec<String>> {
    const LOADERS: &[(&str, &str, &str)] = &[
        ("checkpoints", "CheckpointLoaderSimple", "ckpt_name"),
        ("loras", "LoraLoader", "lora_name"),
        ("controlnets", "ControlNetLoader", "control_net_name"),
        ("vaes", "VAELoader", "vae_name"),
        ("upscale_models", "UpscaleModelLoader", "model_name"),
        ("diffusion_models", "UNETLoader", "unet_name"),
        ("text_encoders", "CLIPLoader", "clip_name"),
    ];
    let mut lists = BTreeMap::new();
    for (kind, class, input) in LOADERS {
        let choices = info.get(*class).and_then(|c| c.inputs.get(*input)).map(|i| match &i.kind {
            crate::comfy::protocol::InputKind::Combo { options, .. } => {
                options.iter().filter_map(|o| o.as_str().map(str::to_string)).collect()
            }
            _ => Vec::new(),
        });
        lists.insert(*kind, choices.unwrap_or_default());
    }
    lists
}

/// The JSON Schema of a workflow in ComfyUI's UI format, as far as the gateway requires it
/// (an object with a `nodes` array; `links` and the rest are read by the converter).
pub fn ui_format_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "required": ["nodes"],
        "properties": {
            "nodes": {"type": "array", "items": {"type": "object"}},
            "links": {"type": "array", "items": {"description": "[id, origin_id, origin_slot, target_id, target_slot, type], or an object of those"}},
        },
        "description": "A workflow as ComfyUI's editor saves it (Workflow → Save): nodes, links, widget values",
    })
}

/// Whether an object is a workflow in ComfyUI's UI format (`nodes` and `links` arrays, what
/// Save writes) rather than the API format.
pub fn is_ui_format(workflow: &Map<String, Value>) -> bool {
    workflow.get("nodes").is_some_and(Value::is_array) || workflow.get("links").is_some_and(Value::is_array)
}

/// Every node input of `prompt`: (node id, input name, value).
pub fn node_inputs(prompt: &Value) -> impl Iterator<Item = (&str, &str, &Value)> {
    prompt.as_object().into_iter().flatten().flat_map(|(id, node)| {
        node.get(INPUTS)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(move |(name, value)| (id.as_str(), name.as_str(), value))
    })
}

/// Node `node`'s input `input` in `prompt`, to change it.
pub fn input_mut<'a>(prompt: &'a mut Value, node: &str, input: &str) -> Option<&'a mut Value> {
    prompt.get_mut(node)?.get_mut(INPUTS)?.get_mut(input)
}

/// A JSON list as a literal input value: ComfyUI reads a bare list as a link, so it is sent
/// as `{"__value__": [...]}`.
pub fn literal_list(list: Value) -> Value {
    let mut wrapped = Map::new();
    wrapped.insert(LITERAL_LIST.to_string(), list);
    Value::Object(wrapped)
}

/// A structural problem of a template: where (a JSON pointer into the prompt, `` for the
/// whole) and what.
pub type Problem = (String, String);

/// The structural problems of an API-format template: a non-empty object of nodes, each an
/// object with a literal non-empty `class_type` string (`is_token` says whether a string is
/// a template token), an `inputs` object, and links to nodes of the template (a link whose
/// target is a token is left to the render).
pub fn check(template: &Value, is_token: &dyn Fn(&str) -> bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(nodes) = template.as_object() else {
        problems.push((
            String::new(),
            "the workflow must be a JSON object of nodes {id: {class_type, inputs}} (ComfyUI API format)".to_string(),
        ));
        return problems;
    };
    if nodes.is_empty() {
        problems.push((String::new(), "the workflow has no nodes".to_string()));
    }
    for (id, node) in nodes {
        let at = format!("/{}", escape_pointer(id));
        let Some(node) = node.as_object() else {
            problems.push((at, "a node must be an object {class_type, inputs}".to_string()));
            continue;
        };
        match node.get(CLASS_TYPE) {
            Some(Value::String(class)) if !class.is_empty() => {
                if is_token(class) {
                    problems.push((
                        format!("{at}/{CLASS_TYPE}"),
                        "class_type must be a literal node class, not a template token".to_string(),
                    ));
                }
            }
            _ => problems.push((format!("{at}/{CLASS_TYPE}"), "class_type must be a non-empty string".to_string())),
        }
        match node.get(INPUTS) {
            Some(Value::Object(inputs)) => {
                for (name, value) in inputs {
                    if let Some(target) = link_target(value)
                        && !nodes.contains_key(target)
                        && !is_token(target)
                    {
                        problems.push((
                            format!("{at}/{INPUTS}/{}", escape_pointer(name)),
                            format!("links to node \"{target}\", which is not in the workflow"),
                        ));
                    }
                }
            }
            _ => problems.push((format!("{at}/{INPUTS}"), "inputs must be an object".to_string())),
        }
    }
    problems
}

/// A JSON pointer segment (RFC 6901).
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The node classes the workflow import recognizes, and the inputs it reads of them.
pub mod classes {
    /// A sampler's inputs a workflow commonly exposes, each with its proposed base name
    /// (`noise_seed` of `KSamplerAdvanced` is a `seed` too).
    pub const SAMPLER_INPUTS: &[(&str, &str)] = &[
        ("seed", "seed"),
        ("noise_seed", "seed"),
        ("steps", "steps"),
        ("cfg", "cfg"),
        ("sampler_name", "sampler_name"),
        ("scheduler", "scheduler"),
        ("denoise", "denoise"),
    ];
    /// An empty latent image's inputs, each with its proposed base name.
    pub const LATENT_INPUTS: &[(&str, &str)] =
        &[("width", "width"), ("height", "height"), ("batch_size", "batch_size")];
    /// A sampler's (and a guider's) link inputs of the two conditioning sides.
    pub const POSITIVE: &str = "positive";
    /// See [`POSITIVE`].
    pub const NEGATIVE: &str = "negative";
    /// A sampler's link input of the model (back to a checkpoint loader).
    pub const MODEL: &str = "model";
    /// A sampler's link input of the latent (back to an earlier sampler).
    pub const LATENT_IMAGE: &str = "latent_image";
    /// A text encoder's prompt text.
    pub const TEXT: &str = "text";
    /// A checkpoint loader's file name.
    pub const CKPT_NAME: &str = "ckpt_name";
    /// An image loader's file name.
    pub const IMAGE: &str = "image";

    /// More node inputs a workflow commonly exposes, by class: (class, input, proposed base
    /// name). LoRA, ControlNet and IPAdapter loaders with their strengths, and the parts of
    /// the custom sampler graphs (`SamplerCustom`, `SamplerCustomAdvanced` with its noise,
    /// guider, sampler and scheduler nodes).
    pub const MORE_INPUTS: &[(&str, &str, &str)] = &[
        ("LoraLoader", "lora_name", "lora"),
        ("LoraLoader", "strength_model", "lora_strength"),
        ("LoraLoader", "strength_clip", "lora_clip_strength"),
        ("LoraLoaderModelOnly", "lora_name", "lora"),
        ("LoraLoaderModelOnly", "strength_model", "lora_strength"),
        ("ControlNetLoader", "control_net_name", "controlnet"),
        ("DiffControlNetLoader", "control_net_name", "controlnet"),
        ("ControlNetApply", "strength", "controlnet_strength"),
        ("ControlNetApplyAdvanced", "strength", "controlnet_strength"),
        ("ControlNetApplyAdvanced", "start_percent", "controlnet_start"),
        ("ControlNetApplyAdvanced", "end_percent", "controlnet_end"),
        ("IPAdapterModelLoader", "ipadapter_file", "ipadapter"),
        ("IPAdapterUnifiedLoader", "preset", "ipadapter_preset"),
        ("IPAdapter", "weight", "ipadapter_weight"),
        ("IPAdapterAdvanced", "weight", "ipadapter_weight"),
        ("IPAdapterAdvanced", "start_at", "ipadapter_start"),
        ("IPAdapterAdvanced", "end_at", "ipadapter_end"),
        ("SamplerCustom", "noise_seed", "seed"),
        ("SamplerCustom", "cfg", "cfg"),
        ("RandomNoise", "noise_seed", "seed"),
        ("CFGGuider", "cfg", "cfg"),
        ("KSamplerSelect", "sampler_name", "sampler_name"),
        ("BasicScheduler", "scheduler", "scheduler"),
        ("BasicScheduler", "steps", "steps"),
        ("BasicScheduler", "denoise", "denoise"),
    ];

    /// `KSampler`, `KSamplerAdvanced`.
    pub fn is_sampler(class: &str) -> bool {
        matches!(class, "KSampler" | "KSamplerAdvanced")
    }

    /// `EmptyLatentImage`, `EmptySD3LatentImage`.
    pub fn is_empty_latent(class: &str) -> bool {
        matches!(class, "EmptyLatentImage" | "EmptySD3LatentImage")
    }

    /// `CLIPTextEncode`.
    pub fn is_text_encoder(class: &str) -> bool {
        class == "CLIPTextEncode"
    }

    /// `CheckpointLoaderSimple`.
    pub fn is_checkpoint_loader(class: &str) -> bool {
        class == "CheckpointLoaderSimple"
    }

    /// `LoadImage`.
    pub fn is_image_loader(class: &str) -> bool {
        class == "LoadImage"
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nodes_links_and_titles_are_read() {
        let prompt = json!({
            "1": {"class_type": "A", "inputs": {"x": 1, "l": ["2", 0], "not_a_link": ["2", -1]}, "_meta": {"title": "T"}},
            "2": {"class_type": "B"},
            "3": 7
        });
        let nodes = nodes(&prompt);
        assert_eq!((nodes["1"].class, nodes["1"].title), ("A", "T"));
        assert_eq!(nodes["1"].link("l"), Some("2"));
        assert_eq!(nodes["1"].link("not_a_link"), None);
        assert_eq!(nodes["1"].links().collect::<Vec<_>>(), ["2"]);
        assert!(nodes["2"].input("x").is_none() && nodes["2"].links().next().is_none());
        assert_eq!(nodes["1"].input("x"), Some(&json!(1)));
        assert_eq!(nodes["3"].class, "");
        let mut inputs: Vec<_> = node_inputs(&prompt).map(|(id, name, _)| (id, name)).collect();
        inputs.sort_unstable();
        assert_eq!(inputs, [("1", "l"), ("1", "not_a_link"), ("1", "x")]);
    }

    #[test]
    fn inputs_change_in_place_and_lists_are_wrapped() {
        let mut prompt = json!({"1": {"class_type": "A", "inputs": {"x": [1, 2]}}});
        let slot = input_mut(&mut prompt, "1", "x").unwrap();
        *slot = literal_list(slot.take());
        assert_eq!(prompt["1"]["inputs"]["x"], json!({"__value__": [1, 2]}));
        assert!(input_mut(&mut prompt, "1", "y").is_none());
        assert!(input_mut(&mut prompt, "2", "x").is_none());
    }

    #[test]
    fn check_names_every_problem_with_its_path() {
        let no_token = |_: &str| false;
        assert_eq!(check(&json!([]), &no_token)[0].0, "");
        assert_eq!(check(&json!({}), &no_token), vec![(String::new(), "the workflow has no nodes".to_string())]);
        let template = json!({
            "a/b": 3,
            "1": {"inputs": {}},
            "2": {"class_type": "{{c}}", "inputs": {"l": ["9", 0], "t": ["{{n}}", 0]}},
            "3": {"class_type": "X"}
        });
        let is_token = |s: &str| s.starts_with("{{");
        let paths: Vec<String> = check(&template, &is_token).into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/1/class_type", "/2/class_type", "/2/inputs/l", "/3/inputs", "/a~1b"]);
        assert!(check(&json!({"1": {"class_type": "X", "inputs": {"l": ["1", 0]}}}), &no_token).is_empty());
    }

    #[test]
    fn classes_are_recognized() {
        assert!(classes::is_sampler("KSamplerAdvanced") && !classes::is_sampler("SamplerCustom"));
        assert!(classes::is_empty_latent("EmptySD3LatentImage"));
        assert!(classes::is_text_encoder("CLIPTextEncode") && !classes::is_text_encoder("CLIPTextEncodeSDXL"));
        assert!(classes::is_checkpoint_loader("CheckpointLoaderSimple"));
        assert!(classes::is_image_loader("LoadImage") && !classes::is_image_loader("LoadImageMask"));
        let ui = json!({"last_node_id": 2, "nodes": [], "links": []});
        assert!(is_ui_format(ui.as_object().unwrap()));
        assert!(!is_ui_format(json!({"1": {"class_type": "X", "inputs": {}}}).as_object().unwrap()));
    }
}
