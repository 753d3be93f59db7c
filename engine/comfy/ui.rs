//! A workflow saved from ComfyUI's editor (the UI format: `nodes` and `links` arrays, what
//! Save writes) converted to the API format (`{id: {class_type, inputs, _meta: {title}}}`,
//! what Export (API) writes and `POST /prompt` takes), as the editor's `graphToPrompt` does,
//! with the backend's node definitions (`GET /object_info`) to map widget values to inputs.
//! Pure: the caller fetches the definitions.
//!
//! What the editor does, and so what is done here:
//!
//! - A node's `widgets_values` are its widgets in the order of its class's inputs
//!   (`input_order`: required, then optional), socket-only inputs (`MODEL`, `CLIP`, ...,
//!   `forceInput`) left out, with the editor's own widgets in between: "control after
//!   generate" after an input flagged `control_after_generate` (and a filter after a combo's),
//!   a refresh button after a combo with `remote.refresh_button`, the upload buttons of
//!   `image_upload`/`video_upload`/`audio_upload` inputs after every input (`LoadImage`:
//!   `["example.png", "image"]`). Older saves are read too: a value for each `forceInput`
//!   input (editors before 1.16), a control value after an INT `seed`/`noise_seed` of an
//!   `/object_info` without the flag, values by name (`widgets_values` as an object). Values
//!   are checked against the input types, so a save that does not line up is an error, not a
//!   shifted prompt; more values than widgets (preview widgets that extensions append) are
//!   left out, fewer take the declared defaults, both with a warning.
//! - A widget's value goes through what the editor does to it when queueing: dynamic prompts
//!   (`dynamicPrompts` inputs: comments stripped, `{a|b}` choices; a real choice is random, so
//!   such a text is kept as written, with a warning, and so is a text with `{{token}}`s, which
//!   the editor would flatten) and the `%node.widget%` replacements of the save nodes'
//!   `filename_prefix` (`%date:...%` is kept, with a warning). A list value is sent as
//!   `{"__value__": [...]}`.
//! - Links, as arrays or objects, are followed to the node that computes the value: through
//!   `Reroute` nodes (native reroutes are only points on a link), `SetNode`/`GetNode` pairs,
//!   bypassed nodes (mode 4: a consumer gets the bypassed node's input of the same type, as
//!   the editor picks it), subgraph boundaries and group nodes. A link from a `PrimitiveNode`
//!   gives its value. A link to a muted node (mode 2), or to a node left out, is dropped.
//! - Nodes left out: muted and bypassed ones (with a warning), the editor's own (`Note`,
//!   `MarkdownNote`, `Reroute`, `PrimitiveNode`, ...), subgraph and group node instances
//!   (their inner nodes are emitted instead, as `<instance id>:<inner id>`; those of a muted
//!   or bypassed instance are not). Groups are layout only.
//! - Subgraphs (`definitions.subgraphs`; an instance's type is the subgraph's id), nested to
//!   any depth: an instance input that is not linked gives its widget value (the instance's
//!   `widgets_values`, else the inner widget's). Legacy group nodes (`extra.groupNodes`, types
//!   `workflow>NAME` or `workflow/NAME`): the instance's widgets and sockets are mapped to the
//!   inner nodes as the editor's group node code laid them out; inner ids are the indexes.
//! - A node whose class the backend does not know is emitted as is, with a warning, when it
//!   has no widget values (or has them by name); with positional widget values it is an
//!   error, since they cannot be mapped to inputs.
//!
//! Every error names the node (id, type, title) and says why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value, json};

use super::graph;
use super::protocol::{InputKind, NodeClass, NodeInput, ObjectInfo, Upload};

/// `mode` of a muted node: left out, with what links to it.
const MODE_NEVER: i64 = 2;
/// `mode` of a bypassed node: its consumers get its input of the same type.
const MODE_BYPASS: i64 = 4;
/// The most links followed to resolve one input (through reroutes, bypassed nodes, getters
/// and subgraph boundaries): each is a recursion, and a body may chain them by the
/// hundred thousand.
const LINK_CHAIN_MAX: usize = 512;
/// The id of a subgraph's input node, the origin of the links from its inputs.
const SUBGRAPH_INPUT_NODE: &str = "-10";
/// The values of a "control after generate" widget.
const CONTROL_VALUES: [&str; 5] = ["fixed", "increment", "decrement", "randomize", "increment-wrap"];
/// The node classes whose `filename_prefix` the editor runs its `%node.widget%` replacements on.
const SAVE_NODE_TYPES: [&str; 17] = [
    "SaveImage",
    "SaveImageAdvanced",
    "SaveSVGNode",
    "SaveVideo",
    "SaveAnimatedWEBP",
    "SaveWEBM",
    "SaveAudio",
    "SaveAudioMP3",
    "SaveAudioOpus",
    "SaveAudioAdvanced",
    "SaveGLB",
    "SaveAnimatedPNG",
    "CLIPSave",
    "VAESave",
    "ModelSave",
    "LoraSave",
    "SaveLatent",
];
/// The widget a save node's replacements run on.
const FILENAME_PREFIX: &str = "filename_prefix";
/// The node property that names a node for the `%node.widget%` replacements.
const SR_NAME_PROPERTY: &str = "Node name for S&R";
/// The `PrimitiveNode` property that runs the replacements on its value.
const PRIMITIVE_REPLACE_PROPERTY: &str = "Run widget replace on values";
/// Input types the editor shows as a widget whose value is sent as is.
const VALUE_WIDGET_TYPES: [&str; 13] = [
    "MARKDOWN",
    "COLOR",
    "TEXTAREA",
    "BOUNDING_BOX",
    "BOUNDING_BOXES",
    "CURVE",
    "RANGE",
    "COLORS",
    "CHART",
    "GALLERIA",
    "IMAGECOMPARE",
    "RESOLUTION_PREVIEW",
    "VIDEO_EDIT",
];
/// Input types whose value the browser makes when queueing (a webcam capture, a 3D view, a
/// painted mask): nothing in the saved workflow to send.
const BROWSER_WIDGET_TYPES: [&str; 5] = ["WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION", "PREVIEW_3D", "PAINTER"];
/// The prefixes of a legacy group node's type (`workflow>NAME`, before that `workflow/NAME`).
const GROUP_NODE_PREFIXES: [&str; 2] = ["workflow>", "workflow/"];
/// How deep subgraphs and group nodes nest at most.
const NESTING_MAX: usize = 32;

/// A converted workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The API-format prompt: `{node id: {class_type, inputs, _meta: {title}}}`.
    pub prompt: Value,
    /// What a reviewer should know: classes the backend does not know, nodes left out
    /// (muted, bypassed), values taken by guess or left as written.
    pub warnings: Vec<String>,
}

/// Why a node (or the workflow) cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiError {
    /// Where in the saved workflow: a JSON pointer (`/nodes/3`,
    /// `/definitions/subgraphs/0/nodes/2`, `/links/7`; empty for the whole).
    pub pointer: String,
    /// The node's id as the API format names it (`12`, `<instance id>:<inner id>` inside a
    /// subgraph or group node); empty when the problem is not a node's.
    pub node: String,
    /// The node's type (its class, subgraph id or group node type).
    pub node_type: String,
    /// Its title in the editor (its class's display name when it has none of its own).
    pub title: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for UiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node.is_empty() {
            return f.write_str(&self.message);
        }
        write!(f, "node {} ({}", self.node, self.node_type)?;
        if !self.title.is_empty() && self.title != self.node_type {
            write!(f, " \"{}\"", self.title)?;
        }
        write!(f, "): {}", self.message)
    }
}

impl std::error::Error for UiError {}

/// Convert a workflow saved from ComfyUI's editor to the API format, with the backend's
/// node definitions.
///
/// # Errors
/// Every node that cannot be converted (and every problem of the workflow as a whole), each
/// naming the node and why.
pub fn to_api(ui: &Value, info: &ObjectInfo) -> Result<Converted, Vec<UiError>> {
    let whole = |message: &str| vec![workflow_error("", message.to_string())];
    let Some(top) = ui.as_object() else {
        return Err(whole("the workflow must be a JSON object (ComfyUI's saved workflow)"));
    };
    if !graph::is_ui_format(top) || !top.get("nodes").is_some_and(Value::is_array) {
        return Err(whole("not a workflow in ComfyUI's UI format: it has no `nodes` array"));
    }
    let mut errors = Vec::new();
    let mut cx = Cx::new(ui, info, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = Out::default();
    cx.expand(0, &mut vec![0], &mut out);
    for s in 0..cx.scopes.len() {
        cx.emit_scope(s, &mut out);
    }
    if !out.errors.is_empty() {
        return Err(out.errors);
    }
    let mut prompt = out.prompt;
    prune_dangling_links(&mut prompt);
    if prompt.is_empty() {
        return Err(whole(
            "the workflow has no node the backend can run (all are muted, bypassed or the editor's own)",
        ));
    }
    Ok(Converted { prompt: Value::Object(prompt), warnings: out.warnings })
}

/// An error of the workflow (not of one node).
fn workflow_error(pointer: &str, message: String) -> UiError {
    UiError {
        pointer: pointer.to_string(),
        node: String::new(),
        node_type: String::new(),
        title: String::new(),
        message,
    }
}

/// What `graphToPrompt` does last: an input linked to a node that is not in the prompt
/// (muted, left out) is dropped.
fn prune_dangling_links(prompt: &mut Map<String, Value>) {
    let ids: HashSet<String> = prompt.keys().cloned().collect();
    for node in prompt.values_mut() {
        if let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) {
            inputs.retain(|_, v| graph::link_target(v).is_none_or(|id| ids.contains(id)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The saved workflow, parsed

/// One link: where its value comes from.
#[derive(Debug, Clone)]
struct Link {
    /// The origin node's id (`-10`: a subgraph's input node).
    origin: String,
    /// The origin's output slot.
    origin_slot: usize,
}

/// A node input slot as saved.
#[derive(Debug, Clone)]
struct InSlot {
    name: String,
    ty: String,
    link: Option<i64>,
    /// The widget it belongs to (`widget.name`), for a widget input.
    widget: Option<String>,
}

/// A node as saved.
#[derive(Debug)]
struct UiNode<'a> {
    /// JSON pointer of the node.
    at: String,
    id: String,
    ty: String,
    title: Option<String>,
    mode: i64,
    inputs: Vec<InSlot>,
    /// The type of each output.
    outputs: Vec<String>,
    /// `widgets_values` (an array, or an object by name).
    widgets: Option<&'a Value>,
    properties: Option<&'a Map<String, Value>>,
}

impl<'a> UiNode<'a> {
    /// A saved node; `id` names it when it has none of its own (a group node's inner nodes).
    fn parse(v: &'a Value, at: String, id: Option<String>) -> Result<Self, UiError> {
        let bad = |message: &str| Err(workflow_error(&at, message.to_string()));
        let Some(node) = v.as_object() else { return bad("a node must be a JSON object") };
        let Some(id) = id.or_else(|| node.get("id").and_then(id_text)) else {
            return bad("a node must have an `id`");
        };
        let Some(ty) = node.get("type").and_then(Value::as_str) else {
            return Err(UiError {
                pointer: at.clone(),
                node: id,
                node_type: String::new(),
                title: String::new(),
                message: "the node has no `type`".into(),
            });
        };
        let inputs = node
            .get("inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|i| InSlot {
                name: i.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                ty: slot_type(i.get("type")),
                link: i.get("link").and_then(link_id),
                widget: i.pointer("/widget/name").and_then(Value::as_str).map(str::to_string),
            })
            .collect();
        let outputs = node
            .get("outputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|o| slot_type(o.get("type")))
            .collect();
        Ok(UiNode {
            at,
            id,
            ty: ty.to_string(),
            title: node.get("title").and_then(Value::as_str).map(str::to_string),
            mode: node.get("mode").and_then(Value::as_i64).unwrap_or(0),
            inputs,
            outputs,
            widgets: node.get("widgets_values").filter(|w| !w.is_null()),
            properties: node.get("properties").and_then(Value::as_object),
        })
    }

    /// The first positional widget value (a `PrimitiveNode`'s value, a `GetNode`'s name).
    fn first_widget(&self) -> Option<&'a Value> {
        self.widgets?.as_array()?.first()
    }

    fn property(&self, key: &str) -> Option<&'a Value> {
        self.properties?.get(key)
    }
}

/// A node id as text: `12` or `"12"` → `12`.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.as_i64().map(|i| i.to_string()).unwrap_or_else(|| n.to_string())),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A link id (a number; some tools write it as text).
fn link_id(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// A slot's type as text (a combo's saved as its choices reads `COMBO`).
fn slot_type(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(_)) => "COMBO".into(),
        _ => "*".into(),
    }
}

/// A link as saved: `[id, origin id, origin slot, target id, target slot, type]` or
/// `{id, origin_id, origin_slot, target_id, target_slot, type}`.
fn parse_link(v: &Value) -> Option<(i64, Link)> {
    let (id, origin, slot) = match v {
        Value::Array(a) => (a.first()?, a.get(1)?, a.get(2)?),
        Value::Object(o) => (o.get("id")?, o.get("origin_id")?, o.get("origin_slot")?),
        _ => return None,
    };
    Some((link_id(id)?, Link { origin: id_text(origin)?, origin_slot: usize::try_from(slot.as_u64()?).ok()? }))
}

/// One input or output of a subgraph: the inner links from or to it.
#[derive(Debug)]
struct IoSlot {
    links: Vec<i64>,
}

/// How a legacy group node's instance maps to its inner nodes (as the editor's
/// `GroupNodeConfig` lays it out).
#[derive(Debug, Default)]
struct GroupLayout<'c> {
    /// (inner node, inner input slot) → the instance's input slot.
    inputs: HashMap<(usize, usize), usize>,
    /// The instance's output slot → (inner node, its output slot).
    outputs: Vec<(usize, usize)>,
    /// (inner node, input slot) → (inner node, output slot): the links inside.
    links: HashMap<(usize, usize), (usize, usize)>,
    /// The instance's widgets, in order.
    widgets: Vec<GroupWidget<'c>>,
}

/// One widget of a group node's instance.
#[derive(Debug, Clone)]
enum GroupWidget<'c> {
    /// An inner node's widget (`value` of an inner `PrimitiveNode`, without a definition).
    Inner { node: usize, name: String, input: Option<&'c NodeInput> },
    /// One of the editor's own.
    Extra(Extra),
}

/// What a graph is.
#[derive(Debug)]
enum Kind<'c> {
    Root,
    Subgraph { name: String, inputs: Vec<IoSlot>, outputs: Vec<IoSlot> },
    Group(GroupLayout<'c>),
}

/// A graph: the root, a subgraph definition or a group node definition.
#[derive(Debug)]
struct Graph<'a, 'c> {
    nodes: Vec<UiNode<'a>>,
    by_id: HashMap<String, usize>,
    links: HashMap<i64, Link>,
    kind: Kind<'c>,
}

impl<'a> Graph<'a, '_> {
    /// The nodes and links of a graph object (`at`: its JSON pointer), or the errors.
    fn parse(v: &'a Map<String, Value>, at: &str, errors: &mut Vec<UiError>) -> Self {
        let mut nodes = Vec::new();
        for (i, node) in v.get("nodes").and_then(Value::as_array).into_iter().flatten().enumerate() {
            match UiNode::parse(node, format!("{at}/nodes/{i}"), None) {
                Ok(node) => nodes.push(node),
                Err(e) => errors.push(e),
            }
        }
        let mut links = HashMap::new();
        for (i, link) in v.get("links").and_then(Value::as_array).into_iter().flatten().enumerate() {
            match parse_link(link) {
                Some((id, link)) => {
                    links.insert(id, link);
                }
                None => errors.push(workflow_error(
                    &format!("{at}/links/{i}"),
                    "a link must be [id, origin id, origin slot, target id, target slot, type] or an object of them"
                        .into(),
                )),
            }
        }
        let mut by_id = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            if by_id.insert(node.id.clone(), i).is_some() {
                errors.push(workflow_error(&node.at, format!("two nodes have the id {}", node.id)));
            }
        }
        Graph { nodes, by_id, links, kind: Kind::Root }
    }
}

// ---------------------------------------------------------------------------------------
// Widget layouts

/// A widget value of the editor's own, not an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    /// "control after generate" (`fixed`, `randomize`, ...).
    Control,
    /// A combo's control filter (text).
    Filter,
    /// An upload button or the audio player.
    Upload,
    /// A remote combo's refresh button.
    Refresh,
    /// The value an editor before 1.16 saved for a `forceInput` input.
    ForceInput,
}

impl Extra {
    fn name(self) -> &'static str {
        match self {
            Extra::Control => "control_after_generate",
            Extra::Filter => "control_filter_list",
            Extra::Upload => "upload",
            Extra::Refresh => "refresh",
            Extra::ForceInput => "(forceInput)",
        }
    }
}

/// One widget value's place.
#[derive(Debug, Clone, Copy)]
enum Slot<'c> {
    Input(&'c str, &'c NodeInput),
    Extra(Extra),
}

impl Slot<'_> {
    fn name(&self) -> &str {
        match self {
            Slot::Input(name, _) => name,
            Slot::Extra(e) => e.name(),
        }
    }
}

/// What the editor makes of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Widget {
    /// A socket only.
    Socket,
    /// A widget whose value is sent.
    Value,
    /// A widget whose value the browser makes when queueing.
    Browser,
}

fn widget_of(input: &NodeInput) -> Widget {
    match &input.kind {
        InputKind::Int { .. }
        | InputKind::Float { .. }
        | InputKind::String { .. }
        | InputKind::Boolean
        | InputKind::Combo { .. } => Widget::Value,
        InputKind::Link(t) if VALUE_WIDGET_TYPES.contains(&t.as_str()) => Widget::Value,
        InputKind::Link(t) if BROWSER_WIDGET_TYPES.contains(&t.as_str()) => Widget::Browser,
        InputKind::Link(_) => Widget::Socket,
    }
}

fn is_seed(name: &str) -> bool {
    matches!(name, "seed" | "noise_seed")
}

/// The name of an input's type, for messages.
fn kind_name(kind: &InputKind) -> &str {
    match kind {
        InputKind::Int { .. } => "INT",
        InputKind::Float { .. } => "FLOAT",
        InputKind::String { .. } => "STRING",
        InputKind::Boolean => "BOOLEAN",
        InputKind::Combo { .. } => "COMBO",
        InputKind::Link(t) => t,
    }
}

/// The input names of a class in the order of its widgets, or why there is none.
fn input_order(class: &NodeClass) -> Result<Vec<&str>, String> {
    let Some(order) = &class.input_order else {
        if class.inputs.values().any(|i| widget_of(i) != Widget::Socket && !i.widget.force_input) {
            return Err("the backend's /object_info has no `input_order` (ComfyUI is too old to tell the order of \
                        widget values: update it, or export the workflow in API format)"
                .into());
        }
        return Ok(Vec::new());
    };
    let mut names: Vec<&str> = order.iter().map(String::as_str).filter(|n| class.inputs.contains_key(*n)).collect();
    // Inputs the order leaves out (none from a real backend) go last, as the editor puts them.
    for name in class.inputs.keys() {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// One way the editor may have laid out a class's widget values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Variant {
    /// Editors before 1.16 saved a value for each `forceInput` input.
    legacy_force_input: bool,
    /// Editors before the `control_after_generate` flag added a control to INT `seed` and
    /// `noise_seed` inputs.
    legacy_seed: bool,
    /// A remote combo's refresh button.
    refresh: bool,
}

/// The widget slots of `class` under `variant`.
fn layout<'c>(class: &'c NodeClass, order: &[&'c str], variant: Variant) -> Vec<Slot<'c>> {
    let mut slots = Vec::new();
    let mut uploads = Vec::new();
    for &name in order {
        let input = &class.inputs[name];
        if widget_of(input) == Widget::Socket {
            continue;
        }
        let options = &input.widget;
        let is_int = matches!(input.kind, InputKind::Int { .. });
        let is_combo = matches!(input.kind, InputKind::Combo { .. });
        let control = options.control_after_generate || (variant.legacy_seed && is_int && is_seed(name));
        if options.force_input {
            if variant.legacy_force_input {
                slots.push(Slot::Extra(Extra::ForceInput));
                if control {
                    slots.push(Slot::Extra(Extra::Control));
                }
            }
            continue;
        }
        slots.push(Slot::Input(name, input));
        if options.refresh_button && variant.refresh {
            slots.push(Slot::Extra(Extra::Refresh));
        }
        if control {
            slots.push(Slot::Extra(Extra::Control));
            if is_combo {
                slots.push(Slot::Extra(Extra::Filter));
            }
        }
        if let Some(upload) = options.upload {
            uploads.push(upload);
        }
    }
    for upload in uploads {
        let n = match upload {
            Upload::Media => 1,
            Upload::Audio => 2,
        };
        slots.extend(std::iter::repeat_n(Slot::Extra(Extra::Upload), n));
    }
    slots
}

/// Every layout the editor may have saved for `class`, the current editor's first.
fn layouts(class: &NodeClass) -> Result<Vec<Vec<Slot<'_>>>, String> {
    let order = input_order(class)?;
    let mut all: Vec<Vec<Slot<'_>>> = Vec::new();
    for refresh in [true, false] {
        for legacy_force_input in [false, true] {
            for legacy_seed in [false, true] {
                let slots = layout(class, &order, Variant { legacy_force_input, legacy_seed, refresh });
                let same = |other: &Vec<Slot<'_>>| {
                    other.len() == slots.len() && other.iter().zip(&slots).all(|(a, b)| a.name() == b.name())
                };
                if !all.iter().any(same) {
                    all.push(slots);
                }
            }
        }
    }
    Ok(all)
}

/// Whether a saved value can be the value of a slot.
fn fits(slot: &Slot<'_>, v: &Value) -> bool {
    if v.is_null() {
        return true;
    }
    match slot {
        Slot::Input(_, input) => input_fits(input, v),
        Slot::Extra(Extra::Control) => v.as_str().is_some_and(|s| CONTROL_VALUES.contains(&s)),
        Slot::Extra(Extra::Filter) => v.is_string(),
        Slot::Extra(_) => true,
    }
}

fn input_fits(input: &NodeInput, v: &Value) -> bool {
    match input.kind {
        InputKind::Int { .. } | InputKind::Float { .. } => v.is_number() || v.is_null(),
        InputKind::Boolean => v.is_boolean() || v.is_null(),
        InputKind::String { .. } => v.is_string() || v.is_null(),
        _ => true,
    }
}

/// The value the editor gives a widget that has no saved value: the declared default, else a
/// combo's first choice, 0, an empty text, `false`.
fn default_of(input: &NodeInput) -> Option<Value> {
    if let Some(default) = &input.widget.default {
        return Some(default.clone());
    }
    match &input.kind {
        InputKind::Combo { options, .. } => options.first().cloned(),
        InputKind::Int { .. } | InputKind::Float { .. } => Some(json!(0)),
        InputKind::String { .. } => Some(json!("")),
        InputKind::Boolean => Some(json!(false)),
        InputKind::Link(_) => None,
    }
}

/// A class's widget values mapped to its inputs, in widget order.
struct Mapped<'c> {
    values: Vec<(&'c str, &'c NodeInput, Value)>,
    /// What was guessed, for a warning.
    note: Option<String>,
}

/// Map a node's saved `widgets_values` to the inputs of its class.
fn map_widgets<'c>(class: &'c NodeClass, saved: Option<&Value>) -> Result<Mapped<'c>, String> {
    let all = layouts(class)?;
    let current = &all[0];
    if let Some(Value::Object(by_name)) = saved {
        let mut values = Vec::new();
        for slot in current {
            if let Slot::Input(name, input) = *slot {
                let value = match (by_name.get(name), default_of(input)) {
                    (Some(v), _) => v.clone(),
                    (None, Some(default)) => default,
                    (None, None) => return Err(format!("its widget values have no `{name}` and its class no default")),
                };
                values.push((name, input, value));
            }
        }
        return Ok(Mapped { values, note: None });
    }
    let empty = Vec::new();
    let saved = match saved {
        Some(Value::Array(a)) => a,
        None => &empty,
        Some(other) => return Err(format!("`widgets_values` must be a list or an object, not {other}")),
    };
    let zip = |slots: &[Slot<'c>], count: usize| -> Vec<(&'c str, &'c NodeInput, Value)> {
        slots
            .iter()
            .zip(saved)
            .take(count)
            .filter_map(|(slot, v)| match *slot {
                Slot::Input(name, input) => Some((name, input, v.clone())),
                Slot::Extra(_) => None,
            })
            .collect()
    };
    let prefix_fits = |slots: &[Slot<'c>], n: usize| slots.iter().zip(saved).take(n).all(|(s, v)| fits(s, v));
    // The same number of values as widgets, each of its type.
    if let Some(slots) = all.iter().find(|s| s.len() == saved.len() && prefix_fits(s, s.len())) {
        return Ok(Mapped { values: zip(slots, slots.len()), note: None });
    }
    // More values: widgets an extension appended (previews) come after the class's.
    if let Some(slots) = all.iter().find(|s| s.len() < saved.len() && prefix_fits(s, s.len())) {
        let extra = &saved[slots.len()..];
        let note = (!extra.iter().all(|v| v.is_null() || v.as_str() == Some(""))).then(|| {
            format!(
                "it has {} widget values, its class {} widgets: the last {} are left out (widgets of an extension?)",
                saved.len(),
                slots.len(),
                extra.len()
            )
        });
        return Ok(Mapped { values: zip(slots, slots.len()), note });
    }
    // Fewer values: a class that gained inputs since the save; they take their defaults.
    if let Some(slots) = all.iter().find(|s| {
        s.len() > saved.len()
            && prefix_fits(s, saved.len())
            && s[saved.len()..].iter().all(|slot| match slot {
                Slot::Input(_, input) => default_of(input).is_some(),
                Slot::Extra(_) => true,
            })
    }) {
        let mut values = zip(slots, saved.len());
        let mut defaulted = Vec::new();
        for slot in &slots[saved.len()..] {
            if let Slot::Input(name, input) = *slot {
                values.push((name, input, default_of(input).unwrap_or(Value::Null)));
                defaulted.push(name);
            }
        }
        let note = (!defaulted.is_empty()).then(|| {
            let take = if defaulted.len() == 1 { "takes its default" } else { "take their defaults" };
            format!(
                "it has {} widget values, its class {} widgets: {} {take} (inputs added since it was saved?)",
                saved.len(),
                slots.len(),
                defaulted.join(", ")
            )
        });
        return Ok(Mapped { values, note });
    }
    // Nothing lines up: say what does not.
    if let Some(slots) = all.iter().find(|s| s.len() == saved.len())
        && let Some((i, (slot, v))) = slots.iter().zip(saved).enumerate().find(|(_, (s, v))| !fits(s, v))
    {
        let expected = match slot {
            Slot::Input(_, input) => kind_name(&input.kind).to_string(),
            Slot::Extra(Extra::Control) => CONTROL_VALUES.join("/"),
            Slot::Extra(_) => "text".to_string(),
        };
        return Err(format!(
            "widget value {i} ({v}) does not fit widget `{}` ({expected}): its class's inputs are not the ones it \
             was saved with",
            slot.name()
        ));
    }
    let names: Vec<&str> = current.iter().map(Slot::name).collect();
    Err(format!(
        "it has {} widget values, but its class has {} widgets ({}): its class's inputs are not the ones it was \
         saved with",
        saved.len(),
        current.len(),
        names.join(", ")
    ))
}

// ---------------------------------------------------------------------------------------
// Dynamic prompts and text replacements, as the editor does them when queueing

/// The editor's `processDynamicPrompt`: C-style comments stripped, each `{a|b|c}` replaced by
/// one of its options (nested), `\x` escapes kept, then `\{`, `\}`, `\|` unescaped. `None`
/// when a choice has several options: the editor picks one at random.
fn dynamic_prompt(text: &str) -> Option<String> {
    dynamic_prompt_within(text, 0)
}

/// Braces nested deeper than this are not expanded (the text is kept as written, as for a
/// real choice): each level is a recursion, and a body may nest them by the million.
const BRACES_NESTING_MAX: usize = 32;

fn dynamic_prompt_within(text: &str, nesting: usize) -> Option<String> {
    if nesting > BRACES_NESTING_MAX {
        return None;
    }
    let stripped: Vec<char> = strip_comments(text).chars().collect();
    let mut p = Choices { text: &stripped, at: 0, nesting };
    let mut out = String::new();
    while let Some(c) = p.next() {
        match c {
            '\\' => p.escape(&mut out),
            '{' => out.push_str(&p.choice()?),
            c => out.push(c),
        }
    }
    Some(unescape_braces(&out))
}

struct Choices<'t> {
    text: &'t [char],
    at: usize,
    /// How deep in braces this text is.
    nesting: usize,
}

impl Choices<'_> {
    fn next(&mut self) -> Option<char> {
        let c = self.text.get(self.at).copied();
        self.at += 1;
        c
    }

    /// `\` and the next character, kept (`\undefined` at the end, as the editor writes it).
    fn escape(&mut self, out: &mut String) {
        out.push('\\');
        match self.next() {
            Some(c) => out.push(c),
            None => out.push_str("undefined"),
        }
    }

    /// The block after a `{`: its only option, processed, or `None` for a real choice.
    fn choice(&mut self) -> Option<String> {
        let mut options = Vec::new();
        let mut current = String::new();
        let mut depth = 0usize;
        while let Some(c) = self.next() {
            match c {
                '\\' => {
                    self.escape(&mut current);
                    continue;
                }
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                '|' if depth == 0 => {
                    options.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        options.push(current);
        if options.len() > 1 {
            return None;
        }
        dynamic_prompt_within(&options[0], self.nesting + 1)
    }
}

/// JavaScript's `/\/\*[\s\S]*?\*\/|\/\/.*/g` replaced by nothing.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(body) = rest.strip_prefix("/*")
            && let Some(end) = body.find("*/")
        {
            rest = &body[end + 2..];
        } else if rest.starts_with("//") {
            // `.` stops at JavaScript's line terminators.
            let end = rest.find(['\n', '\r', '\u{2028}', '\u{2029}']).unwrap_or(rest.len());
            rest = &rest[end..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `\{`, `\}`, `\|` → `{`, `}`, `|`.
fn unescape_braces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|n| matches!(n, '{' | '}' | '|')) {
            continue;
        }
        out.push(c);
    }
    out
}

/// A value as JavaScript's `String(value)` writes it.
fn js_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        Value::Array(a) => a.iter().map(js_string).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

// ---------------------------------------------------------------------------------------
// The conversion

/// The editor's own node types (when the backend has no class of that name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Virtual {
    /// Its output is its input of the same slot (`Reroute`, `SetNode`; notes have none).
    Passthrough,
    /// `PrimitiveNode`: its value goes to the widgets it is linked to.
    Primitive,
    /// `GetNode`: the input of the `SetNode` of the same name.
    Getter,
}

fn virtual_kind(ty: &str) -> Option<Virtual> {
    match ty {
        "PrimitiveNode" => Some(Virtual::Primitive),
        "GetNode" => Some(Virtual::Getter),
        "Reroute"
        | "Reroute (rgthree)"
        | "SetNode"
        | "Note"
        | "MarkdownNote"
        | "Note Plus (mtb)"
        | "Label (rgthree)"
        | "Bookmark (rgthree)"
        | "Fast Groups Bypasser (rgthree)"
        | "Fast Groups Muter (rgthree)"
        | "Fast Bypasser (rgthree)"
        | "Fast Muter (rgthree)" => Some(Virtual::Passthrough),
        _ => None,
    }
}

/// What a node is.
#[derive(Debug, Clone, Copy)]
enum What<'c> {
    Class(&'c NodeClass),
    /// A subgraph instance: the definition's graph.
    Subgraph(usize),
    /// A legacy group node instance: the definition's graph.
    Group(usize),
    Virtual(Virtual),
    Unknown,
}

/// One graph as it runs: the root, or one instance of a subgraph or group node.
#[derive(Debug)]
struct Scope {
    graph: usize,
    /// The id prefix of its nodes: empty, or `<instance id>:` for each instance around it.
    prefix: String,
    /// The scope and node of its instance.
    parent: Option<(usize, usize)>,
}

/// What a linked input resolves to.
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    /// `[node id, output slot]`.
    Link(String, usize),
    /// A `PrimitiveNode`'s value: the widget's value, as the widget sends it.
    Primitive(Value),
    /// A subgraph instance's widget value: sent as is.
    Promoted(Value),
}

/// The steps taken while resolving, to stop at a cycle: (scope, node, output?, slot).
type Seen = HashSet<(usize, usize, bool, usize)>;

/// The conversion's result so far.
#[derive(Default)]
struct Out {
    prompt: Map<String, Value>,
    warnings: Vec<String>,
    errors: Vec<UiError>,
}

/// The parsed workflow and its scopes.
struct Cx<'a, 'c> {
    info: &'c ObjectInfo,
    /// The root (0), then the subgraph and group node definitions.
    graphs: Vec<Graph<'a, 'c>>,
    /// Subgraph id → graph.
    subgraphs: HashMap<String, usize>,
    /// Group node name → graph.
    groups: HashMap<String, usize>,
    scopes: Vec<Scope>,
    /// (scope, instance node) → the scope of its inside.
    children: HashMap<(usize, usize), usize>,
    /// (scope, node) → widget values set from outside (a group node instance's widgets).
    overrides: HashMap<(usize, usize), BTreeMap<String, Value>>,
}

impl<'a, 'c> Cx<'a, 'c> {
    fn new(ui: &'a Value, info: &'c ObjectInfo, errors: &mut Vec<UiError>) -> Self {
        let top = ui.as_object().expect("checked by the caller");
        let mut graphs = vec![Graph::parse(top, "", errors)];
        let mut subgraphs = HashMap::new();
        let definitions = top.get("definitions").and_then(|d| d.get("subgraphs")).and_then(Value::as_array);
        for (i, def) in definitions.into_iter().flatten().enumerate() {
            let at = format!("/definitions/subgraphs/{i}");
            let (Some(obj), Some(id)) = (def.as_object(), def.get("id").and_then(Value::as_str)) else {
                errors.push(workflow_error(&at, "a subgraph definition must be an object with an `id`".into()));
                continue;
            };
            let mut g = Graph::parse(obj, &at, errors);
            let io = |key: &str| -> Vec<IoSlot> {
                obj.get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|slot| IoSlot {
                        links: slot
                            .get("linkIds")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(link_id)
                            .collect(),
                    })
                    .collect()
            };
            let name = def.get("name").and_then(Value::as_str).unwrap_or(id).to_string();
            g.kind = Kind::Subgraph { name, inputs: io("inputs"), outputs: io("outputs") };
            subgraphs.insert(id.to_string(), graphs.len());
            graphs.push(g);
        }
        let mut groups = HashMap::new();
        let group_defs = top.get("extra").and_then(|e| e.get("groupNodes")).and_then(Value::as_object);
        for (name, def) in group_defs.into_iter().flatten() {
            let at = format!("/extra/groupNodes/{}", name.replace('~', "~0").replace('/', "~1"));
            let Some(obj) = def.as_object() else {
                errors.push(workflow_error(&at, format!("group node definition {name} must be an object")));
                continue;
            };
            // Inner nodes have no ids of their own: they are named by their index.
            let mut nodes = Vec::new();
            for (i, node) in obj.get("nodes").and_then(Value::as_array).into_iter().flatten().enumerate() {
                match UiNode::parse(node, format!("{at}/nodes/{i}"), Some(i.to_string())) {
                    Ok(parsed) => nodes.push(parsed),
                    Err(e) => errors.push(e),
                }
            }
            let by_id = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
            let layout = group_layout(obj, &nodes, info);
            groups.insert(name.clone(), graphs.len());
            graphs.push(Graph { nodes, by_id, links: HashMap::new(), kind: Kind::Group(layout) });
        }
        let root = Scope { graph: 0, prefix: String::new(), parent: None };
        Cx { info, graphs, subgraphs, groups, scopes: vec![root], children: HashMap::new(), overrides: HashMap::new() }
    }

    fn graph(&self, s: usize) -> &Graph<'a, 'c> {
        &self.graphs[self.scopes[s].graph]
    }

    fn node(&self, s: usize, n: usize) -> &UiNode<'a> {
        &self.graph(s).nodes[n]
    }

    fn what(&self, node: &UiNode<'_>) -> What<'c> {
        if let Some(class) = self.info.get(&node.ty) {
            return What::Class(class);
        }
        if let Some(&g) = self.subgraphs.get(&node.ty) {
            return What::Subgraph(g);
        }
        if let Some(name) = GROUP_NODE_PREFIXES.iter().find_map(|p| node.ty.strip_prefix(p))
            && let Some(&g) = self.groups.get(name)
        {
            return What::Group(g);
        }
        virtual_kind(&node.ty).map_or(What::Unknown, What::Virtual)
    }

    /// A node's id in the prompt.
    fn exec_id(&self, s: usize, n: usize) -> String {
        format!("{}{}", self.scopes[s].prefix, self.node(s, n).id)
    }

    /// A node's title: its own, else its class's display name (a subgraph's name, a group
    /// node's), else its type.
    fn title(&self, node: &UiNode<'_>) -> String {
        if let Some(title) = &node.title {
            return title.clone();
        }
        if let Some(name) = self.info.get(&node.ty).and_then(|c| c.display_name.clone()) {
            return name;
        }
        match self.what(node) {
            What::Subgraph(g) => match &self.graphs[g].kind {
                Kind::Subgraph { name, .. } => name.clone(),
                _ => node.ty.clone(),
            },
            What::Group(_) => {
                GROUP_NODE_PREFIXES.iter().find_map(|p| node.ty.strip_prefix(p)).unwrap_or(&node.ty).into()
            }
            _ => node.ty.clone(),
        }
    }

    fn error(&self, s: usize, n: usize, message: impl Into<String>) -> UiError {
        let node = self.node(s, n);
        UiError {
            pointer: node.at.clone(),
            node: self.exec_id(s, n),
            node_type: node.ty.clone(),
            title: self.title(node),
            message: message.into(),
        }
    }

    /// Describe a node for a warning: `node 12 (KSampler "title")`.
    fn describe(&self, s: usize, n: usize) -> String {
        let e = self.error(s, n, "");
        let text = e.to_string();
        text.trim_end_matches(": ").to_string()
    }

    /// Open the scope of every active subgraph and group node instance in scope `s`.
    fn expand(&mut self, s: usize, path: &mut Vec<usize>, out: &mut Out) {
        for n in 0..self.graph(s).nodes.len() {
            let node = self.node(s, n);
            let g = match self.what(node) {
                What::Subgraph(g) | What::Group(g) => g,
                _ => continue,
            };
            if node.mode == MODE_NEVER || node.mode == MODE_BYPASS {
                let how = if node.mode == MODE_NEVER { "muted" } else { "bypassed" };
                out.warnings.push(format!("{} is {how}: the nodes inside it are left out", self.describe(s, n)));
                continue;
            }
            if path.contains(&g) || path.len() >= NESTING_MAX {
                out.errors.push(self.error(s, n, "the subgraph contains itself (or nests too deep)"));
                continue;
            }
            if s != 0 && matches!(self.graphs[g].kind, Kind::Group(_)) && matches!(self.graph(s).kind, Kind::Group(_)) {
                out.errors.push(self.error(s, n, "a group node inside a group node cannot be converted"));
                continue;
            }
            let prefix = format!("{}{}:", self.scopes[s].prefix, node.id);
            let child = self.scopes.len();
            self.scopes.push(Scope { graph: g, prefix, parent: Some((s, n)) });
            self.children.insert((s, n), child);
            let values = match &self.graphs[g].kind {
                Kind::Group(layout) => self.group_values(s, n, layout),
                _ => Ok(Vec::new()),
            };
            match values {
                Ok(values) => {
                    for (inner, name, value) in values {
                        self.overrides.entry((child, inner)).or_default().insert(name, value);
                    }
                }
                Err(message) => out.errors.push(self.error(s, n, message)),
            }
            path.push(g);
            self.expand(child, path, out);
            path.pop();
        }
    }

    /// A group node instance's widget values mapped to its inner nodes' widgets.
    fn group_values(
        &self,
        s: usize,
        n: usize,
        layout: &GroupLayout<'c>,
    ) -> Result<Vec<(usize, String, Value)>, String> {
        let node = self.node(s, n);
        let saved = match node.widgets {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("a group node's `widgets_values` must be a list".into()),
        };
        let fits = |w: &GroupWidget<'_>, v: &Value| match w {
            GroupWidget::Inner { input: Some(input), .. } => input_fits(input, v),
            GroupWidget::Inner { input: None, .. } => true,
            GroupWidget::Extra(e) => fits(&Slot::Extra(*e), v),
        };
        let lines_up = saved.len() >= layout.widgets.len()
            && layout.widgets.iter().zip(saved).all(|(w, v)| fits(w, v))
            && saved[layout.widgets.len()..].iter().all(|v| v.is_null() || v.as_str() == Some(""));
        if !lines_up {
            let names: Vec<String> = layout
                .widgets
                .iter()
                .map(|w| match w {
                    GroupWidget::Inner { node, name, .. } => format!("{node}.{name}"),
                    GroupWidget::Extra(e) => e.name().to_string(),
                })
                .collect();
            return Err(format!(
                "it has {} widget values that do not line up with the {} widgets of its group node definition ({})",
                saved.len(),
                names.len(),
                names.join(", ")
            ));
        }
        Ok(layout
            .widgets
            .iter()
            .zip(saved)
            .filter_map(|(w, v)| match w {
                GroupWidget::Inner { node, name, .. } => Some((*node, name.clone(), v.clone())),
                GroupWidget::Extra(_) => None,
            })
            .collect())
    }

    /// Emit every node of scope `s` that runs.
    fn emit_scope(&self, s: usize, out: &mut Out) {
        for n in 0..self.graph(s).nodes.len() {
            let node = self.node(s, n);
            let what = self.what(node);
            if matches!(what, What::Virtual(_) | What::Subgraph(_) | What::Group(_)) {
                continue;
            }
            if node.mode == MODE_NEVER {
                out.warnings.push(format!("{} is muted: left out, with the inputs linked to it", self.describe(s, n)));
                continue;
            }
            if node.mode == MODE_BYPASS {
                out.warnings.push(format!(
                    "{} is bypassed: left out, its consumers take its input of the same type",
                    self.describe(s, n)
                ));
                continue;
            }
            if let Err(e) = self.emit_node(s, n, what, out) {
                out.errors.push(e);
            }
        }
    }

    fn emit_node(&self, s: usize, n: usize, what: What<'c>, out: &mut Out) -> Result<(), UiError> {
        let node = self.node(s, n);
        let mut inputs = Map::new();
        let class = match what {
            What::Class(class) => Some(class),
            _ => None,
        };
        match class {
            Some(class) => {
                let mapped = map_widgets(class, node.widgets).map_err(|m| self.error(s, n, m))?;
                if let Some(note) = mapped.note {
                    out.warnings.push(format!("{}: {note}", self.describe(s, n)));
                }
                let overrides = self.overrides.get(&(s, n));
                for (name, input, value) in mapped.values {
                    if widget_of(input) == Widget::Browser {
                        return Err(self.error(
                            s,
                            n,
                            format!(
                                "widget `{name}` ({}) is made by the browser when queueing; it cannot be converted",
                                kind_name(&input.kind)
                            ),
                        ));
                    }
                    let value = overrides.and_then(|o| o.get(name)).cloned().unwrap_or(value);
                    let value = self.widget_value(s, n, name, input, value, out);
                    inputs.insert(name.to_string(), value);
                }
            }
            None => {
                match node.widgets {
                    Some(Value::Array(a)) if !a.is_empty() => {
                        let values = if a.len() == 1 { "its widget value" } else { "its widget values" };
                        return Err(self.error(
                            s,
                            n,
                            format!(
                                "its class {} is unknown to the backend, so {values} cannot be mapped to inputs (install \
                                 the custom node on the backend, or export the workflow in API format)",
                                node.ty
                            ),
                        ));
                    }
                    Some(Value::Object(by_name)) => {
                        // Taken by name; objects are the editor's state (previews), not inputs.
                        for (name, value) in by_name.iter().filter(|(_, v)| !v.is_object()) {
                            inputs.insert(name.clone(), wrap_list(value.clone()));
                        }
                    }
                    _ => {}
                }
                out.warnings.push(format!(
                    "{}: class {} is unknown to the backend (a custom node that is not installed?); converted \
                     without checking its inputs, and jobs will fail until it is installed",
                    self.describe(s, n),
                    node.ty
                ));
            }
        }
        for (slot, input) in node.inputs.iter().enumerate() {
            let mut seen = Seen::new();
            match self.resolve_input(s, n, slot, None, &mut seen)? {
                None => {}
                Some(Resolved::Link(id, origin_slot)) => {
                    inputs.insert(input.name.clone(), json!([id, origin_slot]));
                }
                Some(Resolved::Promoted(value)) => {
                    inputs.insert(input.name.clone(), wrap_list(value));
                }
                Some(Resolved::Primitive(value)) => {
                    let value = match class.and_then(|c| c.inputs.get(&input.name)) {
                        Some(def) => self.widget_value(s, n, &input.name, def, value, out),
                        None => wrap_list(value),
                    };
                    inputs.insert(input.name.clone(), value);
                }
            }
        }
        out.prompt.insert(
            self.exec_id(s, n),
            json!({"inputs": inputs, "class_type": node.ty, "_meta": {"title": self.title(node)}}),
        );
        Ok(())
    }

    /// A widget's value as the editor sends it: dynamic prompts resolved, a save node's
    /// `filename_prefix` replacements made, a list wrapped.
    fn widget_value(&self, s: usize, n: usize, name: &str, input: &NodeInput, value: Value, out: &mut Out) -> Value {
        let mut value = value;
        if input.widget.dynamic_prompts
            && let Value::String(text) = &value
        {
            if text.contains("{{") {
                out.warnings.push(format!(
                    "{}: `{name}` has `{{{{...}}}}`, which ComfyUI's dynamic prompts would flatten when queueing; \
                     kept as written",
                    self.describe(s, n)
                ));
            } else {
                match dynamic_prompt(text) {
                    Some(processed) => value = Value::String(processed),
                    None => out.warnings.push(format!(
                        "{}: `{name}` has {{a|b}} choices, which the editor picks at random when queueing; kept as \
                         written",
                        self.describe(s, n)
                    )),
                }
            }
        }
        if name == FILENAME_PREFIX
            && SAVE_NODE_TYPES.contains(&self.node(s, n).ty.as_str())
            && let Value::String(text) = &value
        {
            value = Value::String(self.replace_text(s, n, text, out));
        }
        wrap_list(value)
    }

    /// The editor's `applyTextReplacements`: each `%node.widget%` becomes that widget's value
    /// (the node named by its "Node name for S&R" property, else by its title);
    /// `%date:...%` is kept (it is the time of queueing), anything else too.
    fn replace_text(&self, s: usize, n: usize, text: &str, out: &mut Out) -> String {
        let mut result = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            result.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            match after.find('%').filter(|&end| end > 0) {
                Some(end) => {
                    let pattern = &after[..end];
                    match self.replacement(pattern) {
                        Some(value) => result.push_str(&value),
                        None => {
                            if pattern.split('.').count() != 2 && pattern.starts_with("date:") {
                                out.warnings.push(format!(
                                    "{}: `%{pattern}%` is the date of queueing in the editor; kept as written",
                                    self.describe(s, n)
                                ));
                            }
                            result.push('%');
                            result.push_str(pattern);
                            result.push('%');
                        }
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    result.push('%');
                    rest = after;
                }
            }
        }
        result.push_str(rest);
        result
    }

    /// The value of `node.widget` for a replacement, as the editor writes it in a file name.
    fn replacement(&self, pattern: &str) -> Option<String> {
        let (node_name, widget) = pattern.split_once('.').filter(|(_, w)| !w.contains('.'))?;
        let all = || self.graphs.iter().filter(|g| !matches!(g.kind, Kind::Group(_))).flat_map(|g| &g.nodes);
        let node = all()
            .find(|n| n.property(SR_NAME_PROPERTY).and_then(Value::as_str) == Some(node_name))
            .or_else(|| all().find(|n| self.title(n) == node_name))?;
        let class = self.info.get(&node.ty)?;
        let mapped = map_widgets(class, node.widgets).ok()?;
        let (_, _, value) = mapped.values.into_iter().find(|(name, _, _)| *name == widget)?;
        Some(
            js_string(&value)
                .chars()
                .map(|c| if "/?<>\\:*|\"".contains(c) || c.is_ascii_control() { '_' } else { c })
                .collect(),
        )
    }

    /// Mark input (or `output`) `slot` of node `n` as passed on this resolution: an error when
    /// it was passed already (a cycle of reroutes or bypasses) or the chain is longer than
    /// [`LINK_CHAIN_MAX`].
    fn visit(&self, s: usize, n: usize, slot: usize, output: bool, seen: &mut Seen) -> Result<(), UiError> {
        let what = if output { "output" } else { "input" };
        if seen.len() >= LINK_CHAIN_MAX {
            return Err(self.error(s, n, format!("{what} {slot} is on a chain of more than {LINK_CHAIN_MAX} links")));
        }
        if !seen.insert((s, n, output, slot)) {
            return Err(self.error(
                s,
                n,
                format!("{what} {slot} links back to itself (a cycle of reroutes or bypasses)"),
            ));
        }
        Ok(())
    }

    /// Where input `slot` of node `n` gets its value from.
    fn resolve_input(
        &self,
        s: usize,
        n: usize,
        slot: usize,
        ty: Option<&str>,
        seen: &mut Seen,
    ) -> Result<Option<Resolved>, UiError> {
        self.visit(s, n, slot, false, seen)?;
        let g = self.graph(s);
        let node = &g.nodes[n];
        if let Kind::Group(layout) = &g.kind {
            return self.resolve_group_input(s, n, slot, layout, seen);
        }
        let Some(input) = node.inputs.get(slot) else {
            return Err(self.error(s, n, format!("it has no input slot {slot}")));
        };
        let Some(link_id) = input.link else { return Ok(None) };
        let Some(link) = g.links.get(&link_id) else {
            return Err(self.error(
                s,
                n,
                format!("input `{}` uses link {link_id}, which is not in the workflow", input.name),
            ));
        };
        let ty = ty.unwrap_or(input.ty.as_str());
        if link.origin == SUBGRAPH_INPUT_NODE {
            let Some((ps, pn)) = self.scopes[s].parent else {
                return Err(self.error(
                    s,
                    n,
                    format!("input `{}` is linked to a subgraph input outside a subgraph", input.name),
                ));
            };
            let instance = self.node(ps, pn);
            let Some(outer) = instance.inputs.get(link.origin_slot) else {
                return Err(self.error(ps, pn, format!("it has no input slot {} for its subgraph", link.origin_slot)));
            };
            if outer.link.is_some() {
                return self.resolve_input(ps, pn, link.origin_slot, None, seen);
            }
            return Ok(self.promoted_value(ps, pn, link.origin_slot).map(Resolved::Promoted));
        }
        let Some(&origin) = g.by_id.get(&link.origin) else {
            return Err(self.error(
                s,
                n,
                format!("input `{}` is linked to node {}, which is not in the workflow", input.name, link.origin),
            ));
        };
        self.resolve_output(s, origin, link.origin_slot, ty, seen)
    }

    /// An input of a group node's inner node: from the instance's input, or from another
    /// inner node.
    fn resolve_group_input(
        &self,
        s: usize,
        n: usize,
        slot: usize,
        layout: &GroupLayout<'c>,
        seen: &mut Seen,
    ) -> Result<Option<Resolved>, UiError> {
        if let Some(&outer) = layout.inputs.get(&(n, slot)) {
            let (ps, pn) = self.scopes[s].parent.expect("a group node's scope has its instance");
            return match self.node(ps, pn).inputs.get(outer) {
                Some(input) if input.link.is_some() => self.resolve_input(ps, pn, outer, None, seen),
                _ => Ok(None),
            };
        }
        let Some(&(origin, origin_slot)) = layout.links.get(&(n, slot)) else { return Ok(None) };
        let ty = self.node(s, n).inputs.get(slot).map_or("*", |i| i.ty.as_str()).to_string();
        self.resolve_output(s, origin, origin_slot, &ty, seen)
    }

    /// What output `slot` of node `n` gives to an input of type `ty`.
    fn resolve_output(
        &self,
        s: usize,
        n: usize,
        slot: usize,
        ty: &str,
        seen: &mut Seen,
    ) -> Result<Option<Resolved>, UiError> {
        self.visit(s, n, slot, true, seen)?;
        let node = self.node(s, n);
        let what = self.what(node);
        // A primitive's value is applied to its targets whatever its mode.
        if matches!(what, What::Virtual(Virtual::Primitive)) {
            return Ok(self.primitive_value(s, n).map(Resolved::Primitive));
        }
        if node.mode == MODE_BYPASS {
            return match bypass_slot(node, slot, ty) {
                Some(i) => self.resolve_input(s, n, i, None, seen),
                None => Ok(None),
            };
        }
        match what {
            What::Subgraph(g) => {
                let Some(&child) = self.children.get(&(s, n)) else {
                    // Muted: what links to it is dropped.
                    return Ok(Some(Resolved::Link(self.exec_id(s, n), slot)));
                };
                let Kind::Subgraph { outputs, .. } = &self.graphs[g].kind else { unreachable!("a subgraph graph") };
                let Some(link_id) = outputs.get(slot).and_then(|o| o.links.first()) else { return Ok(None) };
                let Some(link) = self.graphs[g].links.get(link_id) else {
                    return Err(self.error(
                        s,
                        n,
                        format!("its subgraph's output {slot} uses link {link_id}, which is not in it"),
                    ));
                };
                if link.origin == SUBGRAPH_INPUT_NODE {
                    // An input passed straight to an output.
                    return match node.inputs.get(link.origin_slot) {
                        Some(i) if i.link.is_some() => self.resolve_input(s, n, link.origin_slot, Some(ty), seen),
                        _ => Ok(self.promoted_value(s, n, link.origin_slot).map(Resolved::Promoted)),
                    };
                }
                let Some(&inner) = self.graphs[g].by_id.get(&link.origin) else {
                    return Err(self.error(
                        s,
                        n,
                        format!("its subgraph's output {slot} comes from node {}, which is not in it", link.origin),
                    ));
                };
                self.resolve_output(child, inner, link.origin_slot, ty, seen)
            }
            What::Group(g) => {
                let Some(&child) = self.children.get(&(s, n)) else {
                    return Ok(Some(Resolved::Link(self.exec_id(s, n), slot)));
                };
                let Kind::Group(layout) = &self.graphs[g].kind else { unreachable!("a group graph") };
                let Some(&(inner, inner_slot)) = layout.outputs.get(slot) else {
                    return Err(self.error(s, n, format!("its group node definition has no output {slot}")));
                };
                self.resolve_output(child, inner, inner_slot, ty, seen)
            }
            What::Virtual(Virtual::Getter) => {
                let name = node.first_widget();
                let g = self.graph(s);
                let setter =
                    g.nodes.iter().position(|m| m.ty == "SetNode" && name.is_some() && m.first_widget() == name);
                match setter {
                    Some(setter) if g.nodes[setter].inputs.get(slot).is_some() => {
                        self.resolve_input(s, setter, slot, Some(ty), seen)
                    }
                    _ => Ok(None),
                }
            }
            What::Virtual(_) => match node.inputs.get(slot) {
                Some(_) => self.resolve_input(s, n, slot, Some(ty), seen),
                None => Ok(None),
            },
            What::Class(_) | What::Unknown => Ok(Some(Resolved::Link(self.exec_id(s, n), slot))),
        }
    }

    /// A `PrimitiveNode`'s value (a group node instance's widget for it, else its own),
    /// through the replacements when its property asks for them.
    fn primitive_value(&self, s: usize, n: usize) -> Option<Value> {
        let node = self.node(s, n);
        let value = match self.overrides.get(&(s, n)).and_then(|o| o.get("value")) {
            Some(v) => v.clone(),
            None => node.first_widget()?.clone(),
        };
        if node.property(PRIMITIVE_REPLACE_PROPERTY).and_then(Value::as_bool) == Some(true)
            && let Value::String(text) = &value
        {
            let mut ignored = Out::default();
            return Some(Value::String(self.replace_text(s, n, text, &mut ignored)));
        }
        Some(value)
    }

    /// The value of a subgraph instance's input `slot` when nothing is linked to it: its
    /// widget's (the instance's `widgets_values`, one per widget input, else the inner
    /// widget's own); `None` for an input without a widget.
    fn promoted_value(&self, s: usize, n: usize, slot: usize) -> Option<Value> {
        let instance = self.node(s, n);
        let What::Subgraph(g) = self.what(instance) else { return None };
        let def = &self.graphs[g];
        let Kind::Subgraph { inputs, .. } = &def.kind else { return None };
        // The inner widget each input feeds, if any.
        let widget_of_input = |k: usize| -> Option<(usize, String, Option<&'c NodeInput>)> {
            let link = def.links.iter().find(|(id, l)| {
                l.origin == SUBGRAPH_INPUT_NODE && l.origin_slot == k && inputs[k].links.contains(*id)
            })?;
            let (target, input) = def
                .nodes
                .iter()
                .enumerate()
                .find_map(|(t, node)| node.inputs.iter().find(|i| i.link == Some(*link.0)).map(|i| (t, i)))?;
            let class = self.info.get(&def.nodes[target].ty);
            let def_input = class.and_then(|c| c.inputs.get(&input.name));
            let is_widget = input.widget.is_some() || def_input.is_some_and(|d| widget_of(d) == Widget::Value);
            is_widget.then(|| (target, input.widget.clone().unwrap_or_else(|| input.name.clone()), def_input))
        };
        let (target, widget, _) = widget_of_input(slot)?;
        let promoted: Vec<usize> =
            (0..inputs.len()).filter(|&k| instance.inputs.get(k).is_some() && widget_of_input(k).is_some()).collect();
        let pos = promoted.iter().position(|&k| k == slot)?;
        let saved = instance.widgets.and_then(Value::as_array);
        let from_instance = saved.and_then(|values| {
            if values.len() <= promoted.len() {
                return values.get(pos).cloned();
            }
            // Older saves: a control value after each widget that has one.
            let mut at = 0;
            for &k in &promoted[..pos] {
                at += 1;
                if widget_of_input(k).and_then(|(_, _, d)| d).is_some_and(|d| d.widget.control_after_generate) {
                    at += 1;
                }
            }
            values.get(at).cloned()
        });
        from_instance.or_else(|| {
            let inner = &def.nodes[target];
            let class = self.info.get(&inner.ty)?;
            let mapped = map_widgets(class, inner.widgets).ok()?;
            mapped.values.into_iter().find(|(name, _, _)| *name == widget).map(|(_, _, v)| v)
        })
    }
}

/// A list value as the editor sends it: `{"__value__": [...]}`.
fn wrap_list(value: Value) -> Value {
    match value {
        Value::Array(list) => graph::literal_list(Value::Array(list)),
        other => other,
    }
}

/// LiteGraph's `isValidConnection`: `*` and empty match anything; otherwise the same type,
/// case-insensitively, or a common one of comma-separated lists.
fn valid_connection(a: &str, b: &str) -> bool {
    if a.is_empty() || b.is_empty() || a == "*" || b == "*" || a == b {
        return true;
    }
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    if !a.contains(',') && !b.contains(',') {
        return a == b;
    }
    a.split(',').any(|x| b.split(',').any(|y| valid_connection(x, y)))
}

/// Which input of a bypassed node feeds its output `slot` to an input of type `ty`, as the
/// editor picks it: the same slot when its type fits, else the first input of exactly that
/// type, else the first that fits.
fn bypass_slot(node: &UiNode<'_>, slot: usize, ty: &str) -> Option<usize> {
    let inputs = &node.inputs;
    if inputs.is_empty() {
        return None;
    }
    if ty == "*" || ty.is_empty() {
        return Some(if inputs.len() > slot { slot } else { 0 });
    }
    let output_ty = node.outputs.get(slot).map_or("*", String::as_str);
    if let Some(opposite) = inputs.get(slot)
        && valid_connection(&opposite.ty, output_ty)
        && valid_connection(&opposite.ty, ty)
    {
        return Some(slot);
    }
    inputs
        .iter()
        .position(|i| i.ty == ty)
        .or_else(|| inputs.iter().position(|i| valid_connection(&i.ty, output_ty) && valid_connection(&i.ty, ty)))
}

/// A legacy group node definition laid out as the editor's `GroupNodeConfig` does: which
/// inner inputs and outputs the instance shows, and its widgets.
fn group_layout<'c>(def: &Map<String, Value>, nodes: &[UiNode<'_>], info: &'c ObjectInfo) -> GroupLayout<'c> {
    let mut layout = GroupLayout::default();
    let mut from: HashSet<(usize, usize)> = HashSet::new();
    let mut link_types: HashMap<(usize, usize), String> = HashMap::new();
    for l in def.get("links").and_then(Value::as_array).into_iter().flatten() {
        let at = |i: usize| l.get(i).and_then(Value::as_u64).and_then(|v| usize::try_from(v).ok());
        let (Some(o), Some(os), Some(t), Some(ts)) = (at(0), at(1), at(2), at(3)) else { continue };
        layout.links.insert((t, ts), (o, os));
        from.insert((o, os));
        link_types.entry((o, os)).or_insert_with(|| slot_type(l.get(5)));
    }
    let external: HashSet<(usize, usize)> = def
        .get("external")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let at = |i: usize| e.get(i).and_then(Value::as_u64).and_then(|v| usize::try_from(v).ok());
            Some((at(0)?, at(1)?))
        })
        .collect();
    let config = def.get("config");
    let visible = |node: usize, side: &str, key: &str| -> Option<bool> {
        config?.get(node.to_string())?.get(side)?.get(key)?.get("visible")?.as_bool()
    };
    let mut count = 0;
    let mut converted_later = Vec::new();
    let mut upload = false;
    for (i, node) in nodes.iter().enumerate() {
        match (info.get(&node.ty), node.ty.as_str()) {
            (Some(class), _) => {
                let order = input_order(class).unwrap_or_default();
                let mut slots = Vec::new();
                let mut converted = Vec::new();
                for name in order {
                    let input = &class.inputs[name];
                    if widget_of(input) == Widget::Socket {
                        slots.push(name);
                        continue;
                    }
                    match node.inputs.iter().position(|s| s.name == name && s.widget.as_deref() == Some(name)) {
                        Some(pos) => converted.push((pos, name, input)),
                        None => {
                            push_group_widget(&mut layout.widgets, i, name, Some(input));
                            upload |= input.widget.upload.is_some();
                        }
                    }
                }
                for (j, name) in slots.iter().enumerate() {
                    if layout.links.contains_key(&(i, j)) || visible(i, "input", name) == Some(false) {
                        continue;
                    }
                    layout.inputs.insert((i, j), count);
                    count += 1;
                }
                converted.sort_by_key(|(pos, _, _)| *pos);
                converted_later.push((i, slots.len(), converted));
            }
            (None, "PrimitiveNode") if from.contains(&(i, 0)) => {
                // Its widget, with the control the group node gives it (and a combo's filter).
                layout.widgets.push(GroupWidget::Inner { node: i, name: "value".into(), input: None });
                layout.widgets.push(GroupWidget::Extra(Extra::Control));
                if link_types.get(&(i, 0)).is_some_and(|t| t == "COMBO") {
                    layout.widgets.push(GroupWidget::Extra(Extra::Filter));
                }
            }
            (None, "Reroute")
                if !(layout.links.contains_key(&(i, 0)) && from.contains(&(i, 0)) && !external.contains(&(i, 0))) =>
            {
                // A reroute at the edge of the group: its socket is the group's.
                if !layout.links.contains_key(&(i, 0)) {
                    layout.inputs.insert((i, 0), count);
                    count += 1;
                }
            }
            _ => continue,
        }
        for o in 0..node.outputs.len() {
            let linked_inside = from.contains(&(i, o)) && !external.contains(&(i, o));
            if visible(i, "output", &o.to_string()).unwrap_or(!linked_inside) {
                layout.outputs.push((i, o));
            }
        }
    }
    // Widgets converted to inputs come after every node's, in the order they were converted.
    for (i, base, converted) in converted_later {
        for (j, (_, name, input)) in converted.into_iter().enumerate() {
            if layout.links.contains_key(&(i, base + j)) {
                continue;
            }
            push_group_widget(&mut layout.widgets, i, name, Some(input));
            layout.inputs.insert((i, base + j), count);
            count += 1;
        }
    }
    if upload {
        layout.widgets.push(GroupWidget::Extra(Extra::Upload));
    }
    layout
}

/// An inner widget of a group node, with the editor's widgets after it (a seed always gets a
/// control there).
fn push_group_widget<'c>(widgets: &mut Vec<GroupWidget<'c>>, node: usize, name: &str, input: Option<&'c NodeInput>) {
    widgets.push(GroupWidget::Inner { node, name: name.to_string(), input });
    let Some(input) = input else { return };
    let control = input.widget.control_after_generate || is_seed(name);
    if control {
        widgets.push(GroupWidget::Extra(Extra::Control));
        if matches!(input.kind, InputKind::Combo { .. }) {
            widgets.push(GroupWidget::Extra(Extra::Filter));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::comfy::protocol::parse_object_info;

    /// The node definitions of a real ComfyUI 0.3.64 (the simulator's copy, with models).
    fn info() -> ObjectInfo {
        parse_object_info(&serde_json::from_str(include_str!("sim/object_info.json")).unwrap()).unwrap()
    }

    macro_rules! fixture {
        ($name:literal) => {
            (
                serde_json::from_str::<Value>(include_str!(concat!("../../tests/it/fixtures/ui/", $name, "_ui.json")))
                    .unwrap(),
                serde_json::from_str::<Value>(include_str!(concat!("../../tests/it/fixtures/ui/", $name, "_api.json")))
                    .unwrap(),
            )
        };
    }

    /// Where two JSON values differ (numbers by value: the editor writes `1`, Python `1.0`).
    fn difference(at: &str, got: &Value, want: &Value) -> Option<String> {
        match (got, want) {
            (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
            (Value::Object(a), Value::Object(b)) => {
                let keys: BTreeMap<&String, ()> = a.keys().chain(b.keys()).map(|k| (k, ())).collect();
                keys.keys().find_map(|k| match (a.get(*k), b.get(*k)) {
                    (Some(x), Some(y)) => difference(&format!("{at}/{k}"), x, y),
                    (x, y) => Some(format!("{at}/{k}: converted {x:?}, exported {y:?}")),
                })
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                a.iter().zip(b).enumerate().find_map(|(i, (x, y))| difference(&format!("{at}/{i}"), x, y))
            }
            (a, b) if a == b => None,
            (a, b) => Some(format!("{at}: converted {a}, exported {b}")),
        }
    }

    /// Node by node: the same ids, classes, inputs, and titles where the export has them.
    fn assert_converts_to(name: &str, ui: &Value, api: &Value) -> Vec<String> {
        let converted = to_api(ui, &info())
            .unwrap_or_else(|e| panic!("{name}: {}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")));
        let (got, want) = (converted.prompt.as_object().unwrap(), api.as_object().unwrap());
        let ids = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(ids(got), ids(want), "{name}: node ids");
        for (id, want) in want {
            let got = &got[id];
            assert_eq!(got["class_type"], want["class_type"], "{name}: node {id}");
            if let Some(d) = difference(&format!("{name}: node {id} inputs"), &got["inputs"], &want["inputs"]) {
                panic!("{d}");
            }
            if let Some(title) = want.pointer("/_meta/title") {
                assert_eq!(&got["_meta"]["title"], title, "{name}: node {id} title");
            }
        }
        converted.warnings
    }

    #[test]
    fn bundled_workflows_saved_from_the_editor_convert_to_their_templates() {
        let (ui, api) = fixture!("sdxl_realism_v1");
        let warnings = assert_converts_to("sdxl_realism_v1", &ui, &api);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("node 11 (LoraLoader \"Load LoRA\") is bypassed"), "{warnings:?}");
        assert!(warnings[1].starts_with("node 12 (PreviewImage \"Preview Image\") is muted"), "{warnings:?}");
        let (ui, icon) = fixture!("icon_512");
        assert_eq!(assert_converts_to("icon_512", &ui, &icon), Vec::<String>::new());
        let (ui, api) = fixture!("sprite_transparent_bg");
        let warnings = assert_converts_to("sprite_transparent_bg", &ui, &api);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("node 17 (ImageScaleBy \"Upscale Image By\") is bypassed"), "{warnings:?}");
        // And they are the templates of `workflows/`, tokens filled in.
        let template: Value = serde_json::from_str(include_str!("../../workflows/icon_512.json")).unwrap();
        let ids = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(ids(&template), ids(&icon));
        for (id, node) in template.as_object().unwrap() {
            assert_eq!(node["_meta"], icon[id]["_meta"], "icon_512 node {id}");
            for (input, value) in node["inputs"].as_object().unwrap() {
                if !value.as_str().is_some_and(|s| s.contains("{{")) {
                    assert_eq!(&icon[id]["inputs"][input], value, "icon_512 node {id} {input}");
                }
            }
        }
    }

    #[test]
    fn real_exports_convert_to_their_api_exports() {
        // github.com/fofr/cog-comfyui examples (README.md there): editors of 2024.
        let (ui, api) = fixture!("cog_flux_fp8");
        assert_eq!(assert_converts_to("cog_flux_fp8", &ui, &api), Vec::<String>::new());

        // The LoRA loader's and the checkpoint's pair; the API export's checkpoint name was
        // edited after the export (`sd_xl_base` there, `sdxl_base` in the saved graph).
        let (ui, mut api) = fixture!("cog_sdxl_lightning_lora");
        assert_eq!(api["4"]["inputs"]["ckpt_name"], "sd_xl_base_1.0.safetensors");
        api["4"]["inputs"]["ckpt_name"] = json!("sdxl_base_1.0.safetensors");
        assert_eq!(assert_converts_to("cog_sdxl_lightning_lora", &ui, &api), Vec::<String>::new());

        // The editor of April 2024 also sent LoadImage's upload button (`upload: "image"`); the
        // image was replaced by a URL after the export.
        let (ui, mut api) = fixture!("cog_photomaker");
        let load = api["12"]["inputs"].as_object_mut().unwrap();
        assert_eq!(load.remove("upload"), Some(json!("image")));
        load["image"] = json!("0_3.webp");
        assert_eq!(assert_converts_to("cog_photomaker", &ui, &api), Vec::<String>::new());

        // A custom node unknown to this backend (VideoHelperSuite's, widget values by name: its
        // preview state is not an input), a `SaveAnimatedWEBP` with a trailing preview value,
        // and a `CLIPLoader` that gained an input (`device`) since: it takes its default.
        let (ui, mut api) = fixture!("cog_mochi");
        api["40"]["_meta"]["title"] = json!("VHS_VideoCombine");
        api["38"]["inputs"]["device"] = json!("default");
        let warnings = assert_converts_to("cog_mochi", &ui, &api);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("node 38 (CLIPLoader \"Load CLIP\"): it has 2 widget values, its class 3"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("node 40 (VHS_VideoCombine): class VHS_VideoCombine is unknown"), "{warnings:?}");
    }

    #[test]
    fn custom_nodes_of_a_real_workflow_are_named_and_the_editors_own_pass() {
        // fofr/cog-comfyui's SUPIR example: custom classes this backend does not have, between
        // `Reroute`, `SetNode` and `GetNode` nodes (the editor's, which convert).
        let ui: Value = serde_json::from_str(include_str!("../../tests/it/fixtures/ui/cog_supir_ui.json")).unwrap();
        let e = to_api(&ui, &info()).unwrap_err();
        let named: Vec<(&str, &str)> = e.iter().map(|e| (e.node.as_str(), e.node_type.as_str())).collect();
        assert_eq!(
            named,
            [
                ("11", "SUPIR_encode"),
                ("9", "SUPIR_conditioner"),
                ("14", "ColorMatch"),
                ("10", "SUPIR_decode"),
                ("20", "Image Comparer (rgthree)"),
                ("21", "SUPIR_model_loader_v2"),
                ("5", "SUPIR_first_stage"),
                ("7", "SUPIR_sample"),
                ("13", "ImageResize+")
            ]
        );
        assert!(e.iter().all(|e| e.message.contains("is unknown to the backend") && e.pointer.starts_with("/nodes/")));
    }

    #[test]
    fn subgraphs_nest_and_take_their_instances_widget_values() {
        let (ui, api) = fixture!("subgraphs");
        let warnings = assert_converts_to("subgraphs", &ui, &api);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "node 12 (5c2d7a1e-0b8f-4d7e-9a51-3f6c2b8e4d10 \"Sample and decode\") is muted: the nodes inside it are left out"
        );
        assert!(warnings[1].starts_with("node 10:3:2 (ImageInvert"), "{warnings:?}");
        assert!(warnings[2].starts_with("node 11:3:2 (ImageInvert"), "{warnings:?}");
    }

    #[test]
    fn group_nodes_expand_to_their_inner_nodes() {
        let (ui, api) = fixture!("group_node");
        assert_eq!(assert_converts_to("group_node", &ui, &api), Vec::<String>::new());
        // Values that do not line up with the group's widgets name the instance.
        let mut bad = ui.clone();
        bad["nodes"][4]["widgets_values"] = json!([8, "fixed", 777]);
        let e = to_api(&bad, &info()).unwrap_err();
        assert_eq!(e[0].node, "20");
        assert!(e[0].message.contains("do not line up with the 8 widgets of its group node definition"), "{}", e[0]);
    }

    /// A hostile save cannot exhaust the stack: a chain of 100,000 reroutes is an error
    /// naming a node, braces nested 100,000 deep are kept as written.
    #[test]
    fn long_reroute_chains_and_deep_braces_are_bounded() {
        const N: i64 = 100_000;
        let mut nodes = vec![node(
            1,
            "CheckpointLoaderSimple",
            json!([]),
            json!([output("MODEL"), output("CLIP"), output("VAE")]),
            json!(["a.safetensors"]),
        )];
        let mut links = vec![json!([1, 1, 0, 2, 0, "MODEL"])];
        for i in 0..N {
            let id = 2 + i as u64;
            nodes.push(node(id, "Reroute", json!([input("", "*", Some(1 + i))]), json!([output("MODEL")]), json!([])));
            links.push(json!([2 + i, id, 0, id + 1, 0, "MODEL"]));
        }
        let last = 2 + N as u64;
        nodes.push(node(
            last,
            "KSampler",
            json!([input("model", "MODEL", Some(1 + N))]),
            json!([output("LATENT")]),
            json!([1, "fixed", 20, 8.0, "euler", "normal", 1.0]),
        ));
        let errors = to_api(&saved(Value::Array(nodes), Value::Array(links)), &info()).unwrap_err();
        assert!(errors[0].message.contains("more than 512 links"), "{}", errors[0]);
        // Text with braces nested far too deep for the editor's dynamic prompts: kept.
        let deep = format!("{}x{}", "{".repeat(100_000), "}".repeat(100_000));
        assert_eq!(dynamic_prompt(&deep), None);
        assert_eq!(dynamic_prompt("{a}").as_deref(), Some("a"));
    }

    /// A saved workflow of these nodes and links.
    fn saved(nodes: Value, links: Value) -> Value {
        json!({"last_node_id": 99, "nodes": nodes, "links": links, "version": 0.4})
    }

    fn convert(ui: &Value) -> Converted {
        to_api(ui, &info())
            .unwrap_or_else(|e| panic!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
    }

    fn node(id: u64, ty: &str, inputs: Value, outputs: Value, widgets: Value) -> Value {
        json!({"id": id, "type": ty, "mode": 0, "inputs": inputs, "outputs": outputs, "widgets_values": widgets})
    }

    fn input(name: &str, ty: &str, link: Option<i64>) -> Value {
        json!({"name": name, "type": ty, "link": link})
    }

    fn output(ty: &str) -> Value {
        json!({"name": ty, "type": ty, "links": []})
    }

    /// A checkpoint loader (1) feeding a KSampler (2)'s model, with these KSampler values.
    fn sampler(widgets: Value) -> Value {
        saved(
            json!([
                node(
                    1,
                    "CheckpointLoaderSimple",
                    json!([]),
                    json!([output("MODEL"), output("CLIP"), output("VAE")]),
                    json!(["a.safetensors"])
                ),
                node(2, "KSampler", json!([input("model", "MODEL", Some(1))]), json!([output("LATENT")]), widgets),
            ]),
            json!([[1, 1, 0, 2, 0, "MODEL"]]),
        )
    }

    #[test]
    fn widget_values_follow_the_input_order_with_the_editors_own_widgets_between() {
        let c = convert(&sampler(json!([5, "fixed", 20, 7.5, "euler", "normal", 0.9])));
        assert_eq!(
            c.prompt["2"],
            json!({"class_type": "KSampler", "_meta": {"title": "KSampler"}, "inputs": {
                "seed": 5, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.9,
                "model": ["1", 0]}})
        );
        assert_eq!(c.prompt["1"]["_meta"]["title"], "Load Checkpoint");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Upload buttons come after every input.
        let images = saved(
            json!([
                node(1, "LoadImage", json!([]), json!([output("IMAGE"), output("MASK")]), json!(["cat.png", "image"])),
                node(2, "LoadImageMask", json!([]), json!([output("MASK")]), json!(["m.png", "red", "image"])),
                node(
                    3,
                    "LoadImageOutput",
                    json!([]),
                    json!([output("IMAGE"), output("MASK")]),
                    json!(["x.png [output]", "refresh", "image"])
                ),
            ]),
            json!([]),
        );
        let c = convert(&images);
        assert_eq!(c.prompt["1"]["inputs"], json!({"image": "cat.png"}));
        assert_eq!(c.prompt["2"]["inputs"], json!({"image": "m.png", "channel": "red"}));
        assert_eq!(c.prompt["3"]["inputs"], json!({"image": "x.png [output]"}));
    }

    #[test]
    fn older_layouts_and_values_by_name_line_up() {
        let old = parse_object_info(&json!({
            "OldSampler": {"input": {"required": {"seed": ["INT", {"default": 0}], "steps": ["INT", {"default": 20}]}},
                           "input_order": {"required": ["seed", "steps"]}},
            "Forced": {"input": {"required": {"text": ["STRING", {"forceInput": true}], "n": ["INT", {"default": 1}]}},
                       "input_order": {"required": ["text", "n"]}},
            "Sockets": {"input": {"required": {"image": ["IMAGE"]}}},
        }))
        .unwrap();
        let one = |ty: &str, widgets: Value| saved(json!([node(1, ty, json!([]), json!([]), widgets)]), json!([]));
        let inputs = |ui: &Value| to_api(ui, &old).unwrap().prompt["1"]["inputs"].clone();
        // A seed of an /object_info without the flag had its control in editors of the time.
        assert_eq!(inputs(&one("OldSampler", json!([5, "randomize", 30]))), json!({"seed": 5, "steps": 30}));
        assert_eq!(inputs(&one("OldSampler", json!([5, 30]))), json!({"seed": 5, "steps": 30}));
        // Editors before 1.16 saved a value for a forceInput input; today's do not.
        assert_eq!(inputs(&one("Forced", json!(["stale", 3]))), json!({"n": 3}));
        assert_eq!(inputs(&one("Forced", json!([3]))), json!({"n": 3}));
        // By name, a missing one takes its default.
        assert_eq!(inputs(&one("OldSampler", json!({"steps": 8, "other": 1}))), json!({"seed": 0, "steps": 8}));
        // Without input_order the order is unknown: only a class without widgets converts.
        assert_eq!(inputs(&one("Sockets", json!([]))), json!({}));
        let mut no_order = old.clone();
        no_order.get_mut("OldSampler").unwrap().input_order = None;
        let e = to_api(&one("OldSampler", json!([5, 30])), &no_order).unwrap_err();
        assert!(
            e[0].to_string().starts_with("node 1 (OldSampler): the backend's /object_info has no `input_order`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn widget_values_that_do_not_line_up_are_errors_naming_the_node() {
        let e = to_api(&sampler(json!(["five", "fixed", 20, 7.5, "euler", "normal", 1])), &info()).unwrap_err();
        assert_eq!((e[0].node.as_str(), e[0].pointer.as_str()), ("2", "/nodes/1"));
        assert_eq!(
            e[0].to_string(),
            "node 2 (KSampler): widget value 0 (\"five\") does not fit widget `seed` (INT): its class's inputs are not \
             the ones it was saved with"
        );
        let mut ui = sampler(json!([]));
        ui["nodes"][1] = node(2, "EmptyLatentImage", json!([]), json!([output("LATENT")]), json!(["big", 512]));
        ui["nodes"][1]["title"] = json!("Size");
        let e = to_api(&ui, &info()).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "node 2 (EmptyLatentImage \"Size\"): it has 2 widget values, but its class has 3 widgets (width, height, \
             batch_size): its class's inputs are not the ones it was saved with"
        );
        // Fewer values: the rest take their defaults; more: the rest are left out.
        let c = convert(&sampler(json!([5, "fixed", 20])));
        assert_eq!(c.prompt["2"]["inputs"]["cfg"], json!(8.0));
        assert!(
            c.warnings[0].contains("cfg, sampler_name, scheduler, denoise take their defaults"),
            "{:?}",
            c.warnings
        );
        let c = convert(&sampler(json!([5, "fixed", 20, 7.5, "euler", "normal", 1, "preview"])));
        assert_eq!(c.prompt["2"]["inputs"]["denoise"], json!(1));
        assert!(c.warnings[0].contains("the last 1 are left out"), "{:?}", c.warnings);
        // A webcam capture's image is made by the browser.
        let mut ui = sampler(json!([]));
        ui["nodes"][1] = node(2, "WebcamCapture", json!([]), json!([output("IMAGE")]), json!([null, 640, 480, true]));
        assert!(to_api(&ui, &info()).unwrap_err()[0].message.contains("made by the browser"));
    }

    #[test]
    fn unknown_classes_convert_only_when_their_values_can_be_mapped() {
        let mut ui = sampler(json!([5, "fixed", 20, 7.5, "euler", "normal", 1]));
        ui["nodes"][1]["type"] = json!("MySampler");
        let e = to_api(&ui, &info()).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "node 2 (MySampler): its class MySampler is unknown to the backend, so its widget values cannot be mapped to \
             inputs (install the custom node on the backend, or export the workflow in API format)"
        );
        ui["nodes"][1]["widgets_values"] = json!({"seed": 5, "tags": ["a", "b"], "preview": {"hidden": false}});
        let c = convert(&ui);
        assert_eq!(c.prompt["2"]["inputs"], json!({"seed": 5, "tags": {"__value__": ["a", "b"]}, "model": ["1", 0]}));
        assert!(c.warnings[0].starts_with("node 2 (MySampler): class MySampler is unknown to the backend"));
        ui["nodes"][1]["widgets_values"] = json!([]);
        assert_eq!(convert(&ui).prompt["2"]["inputs"], json!({"model": ["1", 0]}));
    }

    #[test]
    fn broken_links_and_cycles_are_errors_naming_the_node() {
        let mut ui = sampler(json!([5, "fixed", 20, 7.5, "euler", "normal", 1]));
        ui["links"] = json!([]);
        let e = to_api(&ui, &info()).unwrap_err();
        assert_eq!(e[0].to_string(), "node 2 (KSampler): input `model` uses link 1, which is not in the workflow");
        ui["links"] = json!([[1, 7, 0, 2, 0, "MODEL"]]);
        let e = to_api(&ui, &info()).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "node 2 (KSampler): input `model` is linked to node 7, which is not in the workflow"
        );
        // Two reroutes feeding each other.
        let reroute = |id: u64, link: i64| {
            node(id, "Reroute", json!([input("", "*", Some(link))]), json!([output("MODEL")]), Value::Null)
        };
        let ui = saved(
            json!([
                node(
                    2,
                    "KSampler",
                    json!([input("model", "MODEL", Some(1))]),
                    json!([output("LATENT")]),
                    json!([5, "fixed", 20, 7.5, "euler", "normal", 1])
                ),
                reroute(3, 2),
                reroute(4, 3),
            ]),
            json!([[1, 3, 0, 2, 0, "MODEL"], [2, 4, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"]]),
        );
        let e = to_api(&ui, &info()).unwrap_err();
        assert!(e[0].to_string().starts_with("node 3 (Reroute): "), "{}", e[0]);
        assert!(e[0].message.contains("links back to itself"), "{}", e[0]);
        assert!(
            to_api(&json!({"1": {"class_type": "X", "inputs": {}}}), &info()).unwrap_err()[0]
                .message
                .contains("UI format")
        );
        let only_notes = saved(json!([node(1, "Note", json!([]), json!([]), json!(["hello"]))]), json!([]));
        assert!(to_api(&only_notes, &info()).unwrap_err()[0].message.contains("no node the backend can run"));
    }

    #[test]
    fn bypassed_nodes_pass_the_input_of_the_consumers_type_and_muted_ones_drop_it() {
        let widgets = json!([5, "fixed", 20, 7.5, "euler", "normal", 1]);
        let mut lora = node(
            5,
            "LoraLoader",
            json!([input("model", "MODEL", Some(1)), input("clip", "CLIP", Some(2))]),
            json!([output("MODEL"), output("CLIP")]),
            json!(["x.safetensors", 1, 1]),
        );
        lora["mode"] = json!(MODE_BYPASS);
        let mut muted = node(
            7,
            "CLIPTextEncode",
            json!([input("clip", "CLIP", None)]),
            json!([output("CONDITIONING")]),
            json!(["no"]),
        );
        muted["mode"] = json!(MODE_NEVER);
        let ui = saved(
            json!([
                node(
                    1,
                    "CheckpointLoaderSimple",
                    json!([]),
                    json!([output("MODEL"), output("CLIP"), output("VAE")]),
                    json!(["a.safetensors"])
                ),
                lora,
                node(
                    6,
                    "CLIPTextEncode",
                    json!([input("clip", "CLIP", Some(3))]),
                    json!([output("CONDITIONING")]),
                    json!(["hi"])
                ),
                node(
                    2,
                    "KSampler",
                    json!([
                        input("model", "MODEL", Some(4)),
                        input("positive", "CONDITIONING", Some(5)),
                        input("negative", "CONDITIONING", Some(6))
                    ]),
                    json!([output("LATENT")]),
                    widgets
                ),
                muted,
            ]),
            json!([
                [1, 1, 0, 5, 0, "MODEL"], [2, 1, 1, 5, 1, "CLIP"],
                {"id": 3, "origin_id": 5, "origin_slot": 1, "target_id": 6, "target_slot": 0, "type": "CLIP"},
                [4, 5, 0, 2, 0, "MODEL"], [5, 6, 0, 2, 1, "CONDITIONING"], [6, 7, 0, 2, 2, "CONDITIONING"]
            ]),
        );
        let c = convert(&ui);
        assert_eq!(c.prompt["6"]["inputs"]["clip"], json!(["1", 1]));
        assert_eq!(c.prompt["2"]["inputs"]["model"], json!(["1", 0]));
        assert_eq!(c.prompt["2"]["inputs"]["positive"], json!(["6", 0]));
        assert!(c.prompt["2"]["inputs"].get("negative").is_none(), "a muted node's link is dropped");
        assert!(c.prompt.get("5").is_none() && c.prompt.get("7").is_none());
        assert_eq!(c.warnings.len(), 2);
    }

    #[test]
    fn primitives_getters_and_setters_give_their_values_and_links() {
        let ui = saved(
            json!([
                node(
                    1,
                    "CheckpointLoaderSimple",
                    json!([]),
                    json!([output("MODEL"), output("CLIP"), output("VAE")]),
                    json!(["a.safetensors"])
                ),
                node(
                    3,
                    "SetNode",
                    json!([input("MODEL", "MODEL", Some(1))]),
                    json!([output("MODEL")]),
                    json!(["model"])
                ),
                node(4, "GetNode", json!([]), json!([output("MODEL")]), json!(["model"])),
                node(
                    5,
                    "PrimitiveNode",
                    json!([]),
                    json!([{"name": "COMBO", "type": "COMBO", "links": [3], "widget": {"name": "sampler_name"}}]),
                    json!(["dpmpp_2m", "fixed", ""])
                ),
                node(
                    2,
                    "KSampler",
                    json!([input("model", "MODEL", Some(2)), {"name": "sampler_name", "type": "COMBO", "widget": {"name": "sampler_name"}, "link": 3}]),
                    json!([output("LATENT")]),
                    json!([5, "fixed", 20, 7.5, "euler", "normal", 1])
                ),
            ]),
            json!([[1, 1, 0, 3, 0, "MODEL"], [2, 4, 0, 2, 0, "MODEL"], [3, 5, 0, 2, 1, "COMBO"]]),
        );
        let c = convert(&ui);
        assert_eq!(c.prompt["2"]["inputs"]["model"], json!(["1", 0]));
        assert_eq!(c.prompt["2"]["inputs"]["sampler_name"], json!("dpmpp_2m"));
        assert_eq!(c.prompt.as_object().unwrap().len(), 2);
    }

    #[test]
    fn texts_go_through_dynamic_prompts_and_file_names_through_replacements() {
        assert_eq!(dynamic_prompt("a photo // of a cat\nb /* x */c").as_deref(), Some("a photo \nb c"));
        assert_eq!(dynamic_prompt("a {red} {{big}} \\{x\\} \\n").as_deref(), Some("a red big {x} \\n"));
        assert_eq!(dynamic_prompt("http://example.com").as_deref(), Some("http:"));
        assert_eq!(dynamic_prompt("{a|b}"), None);
        assert_eq!(dynamic_prompt("end\\").as_deref(), Some("end\\undefined"));
        assert_eq!(strip_comments("a /* open"), "a /* open");
        let text = |t: &str| {
            let mut ui = sampler(json!([42, "fixed", 20, 7.5, "euler", "normal", 1]));
            ui["nodes"].as_array_mut().unwrap().push(node(
                6,
                "CLIPTextEncode",
                json!([]),
                json!([output("CONDITIONING")]),
                json!([t]),
            ));
            let c = convert(&ui);
            (c.prompt["6"]["inputs"]["text"].as_str().unwrap().to_string(), c.warnings)
        };
        assert_eq!(text("a cat // note"), ("a cat ".to_string(), vec![]));
        let (kept, warnings) = text("a {cat|dog}");
        assert_eq!(kept, "a {cat|dog}");
        assert!(warnings[0].contains("picks at random"), "{warnings:?}");
        let (kept, warnings) = text("{{prompt}}, sharp");
        assert_eq!(kept, "{{prompt}}, sharp");
        assert!(warnings[0].contains("would flatten"), "{warnings:?}");
        let mut ui = sampler(json!([42, "fixed", 20, 7.5, "euler", "normal", 1]));
        ui["nodes"][1]["properties"] = json!({"Node name for S&R": "Sampler"});
        ui["nodes"].as_array_mut().unwrap().push(node(
            9,
            "SaveImage",
            json!([input("images", "IMAGE", None)]),
            json!([]),
            json!(["%Sampler.seed%/%Load Checkpoint.ckpt_name%_%date:yyyy-MM-dd%_%width%_100%"]),
        ));
        // A primitive asked to run the replacements on its value.
        ui["nodes"].as_array_mut().unwrap().extend([
            node(
                10,
                "PrimitiveNode",
                json!([]),
                json!([{"name": "STRING", "type": "STRING", "links": [2], "widget": {"name": "text"}}]),
                json!(["seed %Sampler.seed%"]),
            ),
            node(
                11,
                "CLIPTextEncode",
                json!([{"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 2}]),
                json!([]),
                json!(["old"]),
            ),
        ]);
        ui["nodes"][3]["properties"] = json!({"Run widget replace on values": true});
        ui["links"].as_array_mut().unwrap().push(json!([2, 10, 0, 11, 0, "STRING"]));
        let c = convert(&ui);
        assert_eq!(c.prompt["11"]["inputs"]["text"], "seed 42");
        assert_eq!(c.prompt["9"]["inputs"]["filename_prefix"], "42/a.safetensors_%date:yyyy-MM-dd%_%width%_100%");
        assert!(c.warnings[0].contains("`%date:yyyy-MM-dd%` is the date of queueing"), "{:?}", c.warnings);
    }

    #[test]
    fn a_bypassed_subgraph_leaves_out_its_nodes_and_passes_its_inputs() {
        let (mut ui, _) = fixture!("subgraphs");
        let at = ui["nodes"].as_array().unwrap().iter().position(|n| n["id"] == 10).unwrap();
        ui["nodes"][at]["mode"] = json!(MODE_BYPASS);
        let c = convert(&ui);
        assert!(c.prompt.get("10:1").is_none() && c.prompt.get("10:3:1").is_none());
        // No input of the instance is an IMAGE: the save node's input is dropped, as the editor does.
        assert_eq!(c.prompt["9"]["inputs"], json!({"filename_prefix": "first"}));
        assert!(
            c.warnings[0].starts_with("node 10 (")
                && c.warnings[0].ends_with("is bypassed: the nodes inside it are left out")
        );
    }

    #[test]
    fn subgraph_errors_name_the_inner_node() {
        let (mut ui, _) = fixture!("subgraphs");
        ui["definitions"]["subgraphs"][0]["nodes"][0]["widgets_values"] = json!(["x"]);
        let e = to_api(&ui, &info()).unwrap_err();
        assert_eq!(e.len(), 2, "one per instance that runs");
        assert_eq!((e[0].node.as_str(), e[0].pointer.as_str()), ("10:1", "/definitions/subgraphs/0/nodes/0"));
        assert_eq!((e[1].node.as_str(), e[1].node_type.as_str()), ("11:1", "KSampler"));
        // A subgraph that holds an instance of itself.
        let (mut ui, _) = fixture!("subgraphs");
        let outer = ui["definitions"]["subgraphs"][0]["id"].clone();
        ui["definitions"]["subgraphs"][1]["nodes"][1]["type"] = outer;
        ui["definitions"]["subgraphs"][1]["nodes"][1]["mode"] = json!(0);
        let e = to_api(&ui, &info()).unwrap_err();
        assert!(e.iter().all(|e| e.message.contains("contains itself")), "{e:?}");
        assert_eq!(e[0].node, "10:3:2");
    }

    #[test]
    fn node_definitions_carry_the_widget_options() {
        let info = info();
        let seed = &info["KSampler"].inputs["seed"].widget;
        assert!(seed.control_after_generate && !seed.force_input && seed.default == Some(json!(0)));
        assert_eq!(info["KSampler"].input_order.as_ref().unwrap()[..3], ["model", "seed", "steps"]);
        assert_eq!(info["LoadImage"].inputs["image"].widget.upload, Some(Upload::Media));
        assert!(info["LoadImageOutput"].inputs["image"].widget.refresh_button);
        assert!(info["CLIPTextEncode"].inputs["text"].widget.dynamic_prompts);
        assert!(info["SaveLoRANode"].inputs["steps"].widget.force_input);
        assert_eq!(info["SaveLoRANode"].input_order.as_ref().unwrap(), &["lora", "prefix", "steps"]);
        let bare = parse_object_info(
            &json!({"X": {"input": {"required": {"a": ["INT", {"control_after_generate": "seed control"}]}}}}),
        )
        .unwrap();
        assert!(bare["X"].input_order.is_none() && bare["X"].inputs["a"].widget.control_after_generate);
    }
}
