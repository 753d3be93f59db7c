//! ComfyUI's wire format as the gateway reads it (PROTOCOL.md §2, §3, §6, §7, §8):
//! WebSocket messages, history entries, queue snapshots, rejection bodies, and the
//! classification of execution errors into the gateway's error codes.
//!
//! Parsing never panics on any input. It is lenient about what it does not need (unknown
//! message types and extra fields are ignored), except for the answers behind the
//! re-submit decision (`/queue`, `/history/{id}`, the `POST /prompt` answer): those are
//! parsed strictly, and a shape the gateway does not understand is an error, never an
//! empty queue, an unknown prompt or a success (ARCHITECTURE.md, reconciliation).

use serde_json::Value;

use crate::error::ErrorCode;

/// A WebSocket text message, reduced to what the gateway acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum WsMessage {
    /// `status`: queue length (and the `sid` in the greeting).
    Status {
        /// `exec_info.queue_remaining`.
        queue_remaining: u64,
        /// Present in the greeting only.
        sid: Option<String>,
    },
    /// `execution_start`.
    ExecutionStart {
        /// The prompt.
        prompt_id: String,
    },
    /// `executing`: a node started, or with `node: None` the prompt is done (history written).
    Executing {
        /// The prompt; absent in the reconnect variant.
        prompt_id: Option<String>,
        /// The node, or None for "finished".
        node: Option<String>,
    },
    /// `progress` inside a node.
    Progress {
        /// The prompt.
        prompt_id: String,
        /// The node.
        node: Option<String>,
        /// Current value.
        value: f64,
        /// Maximum value.
        max: f64,
    },
    /// `executed`: a node returned UI output.
    Executed {
        /// The prompt.
        prompt_id: String,
        /// The node.
        node: String,
    },
    /// `execution_success`.
    ExecutionSuccess {
        /// The prompt.
        prompt_id: String,
    },
    /// `execution_error`.
    ExecutionError(ExecutionError),
    /// `execution_interrupted`.
    ExecutionInterrupted {
        /// The prompt.
        prompt_id: String,
    },
    /// `execution_cached`: the prompt's nodes whose outputs are cached (they will not run).
    ExecutionCached {
        /// The prompt.
        prompt_id: String,
        /// The nodes.
        nodes: Vec<String>,
    },
    /// Any other message (`progress_state`, `feature_flags`, custom ones).
    Other,
}

impl WsMessage {
    /// The prompt this message is about, if any.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            WsMessage::ExecutionStart { prompt_id }
            | WsMessage::Progress { prompt_id, .. }
            | WsMessage::Executed { prompt_id, .. }
            | WsMessage::ExecutionSuccess { prompt_id }
            | WsMessage::ExecutionInterrupted { prompt_id }
            | WsMessage::ExecutionCached { prompt_id, .. } => Some(prompt_id),
            WsMessage::ExecutionError(e) => Some(&e.prompt_id),
            WsMessage::Executing { prompt_id, .. } => prompt_id.as_deref(),
            WsMessage::Status { .. } | WsMessage::Other => None,
        }
    }
}

/// The parts of an `execution_error` payload the gateway keeps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutionError {
    /// The prompt.
    pub prompt_id: String,
    /// The failing node.
    pub node_id: String,
    /// Its class.
    pub node_type: String,
    /// `module.QualName` of the exception.
    pub exception_type: String,
    /// The exception text (with ComfyUI's trailing newline trimmed).
    pub exception_message: String,
}

impl ExecutionError {
    fn from_value(data: &Value) -> ExecutionError {
        ExecutionError {
            prompt_id: str_field(data, "prompt_id").unwrap_or_default(),
            node_id: id_field(data, "node_id").unwrap_or_default(),
            node_type: str_field(data, "node_type").unwrap_or_default(),
            exception_type: str_field(data, "exception_type").unwrap_or_default(),
            exception_message: str_field(data, "exception_message").unwrap_or_default().trim_end().to_string(),
        }
    }

    /// The gateway code for this failure: OOM by ComfyUI's signature (§8), else a node error.
    pub fn code(&self) -> ErrorCode {
        let message = self.exception_message.to_ascii_lowercase();
        if self.exception_type.ends_with("OutOfMemoryError")
            || message.contains("out of memory")
            || message.contains("can't allocate memory")
        {
            ErrorCode::ComfyuiOom
        } else {
            ErrorCode::ComfyuiNodeError
        }
    }

    /// A one-line human summary.
    pub fn summary(&self) -> String {
        let first_line = self.exception_message.lines().next().unwrap_or("");
        format!("node {} ({}) failed: {}: {}", self.node_id, self.node_type, self.exception_type, first_line)
    }

    /// Structured details for clients.
    pub fn details(&self) -> Value {
        serde_json::json!({
            "nodeId": self.node_id,
            "nodeType": self.node_type,
            "exceptionType": self.exception_type,
            "exceptionMessage": self.exception_message,
        })
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Node ids are strings in ComfyUI, but be lenient with numbers.
fn id_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A member the gateway reads from a WebSocket message, taken as leniently as ComfyUI's
/// variants need: a string, a number (node ids), or anything else (kept as absent).
#[derive(Debug, Default)]
enum Loose {
    Str(String),
    Num(serde_json::Number),
    #[default]
    Other,
}

impl<'de> serde::Deserialize<'de> for Loose {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Loose, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Loose, E> {
                Ok(Loose::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Loose, E> {
                Ok(Loose::Str(s))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Loose, E> {
                Ok(Loose::Num(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Loose, E> {
                Ok(Loose::Num(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Loose, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Loose::Other, Loose::Num))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl Loose {
    /// A string member (`str_field`).
    fn text(self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A node id: a string, or a number written as one (`id_field`).
    fn id(self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s),
            Loose::Num(n) => Some(n.to_string()),
            Loose::Other => None,
        }
    }

    fn number(&self) -> Option<&serde_json::Number> {
        match self {
            Loose::Num(n) => Some(n),
            _ => None,
        }
    }
}

/// What a message's `data` may hold that the gateway reads; every other member (an
/// `executed` node's whole UI output, `progress_state`'s every node) is skipped while
/// parsing, without building it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct WsData {
    prompt_id: Loose,
    node: Loose,
    value: Loose,
    max: Loose,
    sid: Loose,
    status: Loose2<WsStatus>,
}

/// `data.status.exec_info.queue_remaining` of a `status` message.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct WsStatus {
    exec_info: Loose2<WsExecInfo>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct WsExecInfo {
    queue_remaining: Loose,
}

/// An object member read as `T` when it is an object, absent otherwise (any other value
/// is skipped, as a `Value` lookup through it would find nothing).
#[derive(Debug, Default)]
struct Loose2<T>(Option<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Loose2<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Loose2<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Loose2<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Loose2<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(a)).map(|t| Loose2(Some(t)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Loose2<T>, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose2(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Loose2<T>, E> {
                Ok(Loose2(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Loose2<T>, E> {
                Ok(Loose2(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Loose2<T>, E> {
                Ok(Loose2(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Loose2<T>, E> {
                Ok(Loose2(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Loose2<T>, E> {
                Ok(Loose2(None))
            }
            fn visit_unit<E>(self) -> Result<Loose2<T>, E> {
                Ok(Loose2(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A WebSocket message: its `type` and the members of `data` the gateway reads.
#[derive(Debug, serde::Deserialize)]
struct WsEnvelope {
    #[serde(rename = "type", default)]
    kind: Loose,
    #[serde(default)]
    data: Loose2<WsData>,
}

/// The message types [`parse_ws_text`] reads; every other one is `Other`.
const WS_KINDS_READ: [&str; 9] = [
    "status",
    "execution_cached",
    "execution_start",
    "executing",
    "progress",
    "executed",
    "execution_success",
    "execution_error",
    "execution_interrupted",
];

/// The `type` of a message that starts with it (`{"type": "executing", ...`), when it has
/// no escape; None otherwise (the message is then parsed whole).
fn leading_type(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('{')?.trim_start().strip_prefix("\"type\"")?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let end = rest.find(['"', '\\'])?;
    (rest.as_bytes()[end] == b'"').then(|| &rest[..end])
}

/// Parse one WebSocket text frame. Unknown or malformed messages become `Other`. Only the
/// members read are built (`WsEnvelope`); an `execution_error` (rare, and read whole) is
/// parsed again as a `Value`.
pub fn parse_ws_text(text: &str) -> WsMessage {
    // ComfyUI writes `type` first: a kind read nowhere (`progress_state`, the largest and
    // most frequent message of newer ComfyUIs, `feature_flags`, ...) is not parsed at all.
    if leading_type(text).is_some_and(|kind| !WS_KINDS_READ.contains(&kind)) {
        return WsMessage::Other;
    }
    let Ok(envelope) = serde_json::from_str::<WsEnvelope>(text) else {
        return WsMessage::Other;
    };
    let Some(kind) = envelope.kind.text() else {
        return WsMessage::Other;
    };
    let data = envelope.data.0.unwrap_or_default();
    let number = |l: &Loose| l.number().and_then(serde_json::Number::as_f64).unwrap_or(0.0);
    match kind.as_str() {
        "status" => WsMessage::Status {
            queue_remaining: data
                .status
                .0
                .and_then(|s| s.exec_info.0)
                .and_then(|e| e.queue_remaining.number().and_then(serde_json::Number::as_u64))
                .unwrap_or(0),
            sid: data.sid.text(),
        },
        "execution_start" => match data.prompt_id.text() {
            Some(prompt_id) => WsMessage::ExecutionStart { prompt_id },
            None => WsMessage::Other,
        },
        "executing" => WsMessage::Executing { prompt_id: data.prompt_id.text(), node: data.node.id() },
        "progress" => {
            let (value, max) = (number(&data.value), number(&data.max));
            match data.prompt_id.text() {
                Some(prompt_id) => WsMessage::Progress { prompt_id, node: data.node.id(), value, max },
                None => WsMessage::Other,
            }
        }
        "executed" => match (data.prompt_id.text(), data.node.id()) {
            (Some(prompt_id), Some(node)) => WsMessage::Executed { prompt_id, node },
            _ => WsMessage::Other,
        },
        "execution_success" => match data.prompt_id.text() {
            Some(prompt_id) => WsMessage::ExecutionSuccess { prompt_id },
            None => WsMessage::Other,
        },
        "execution_error" => {
            let v = serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
            match v.get("data").filter(|d| d.get("prompt_id").is_some_and(Value::is_string)) {
                Some(d) => WsMessage::ExecutionError(ExecutionError::from_value(d)),
                None => WsMessage::Other,
            }
        }
        "execution_interrupted" => match data.prompt_id.text() {
            Some(prompt_id) => WsMessage::ExecutionInterrupted { prompt_id },
            None => WsMessage::Other,
        },
        // Once per prompt: read whole.
        "execution_cached" => cached_of(&serde_json::from_str::<Value>(text).unwrap_or(Value::Null)),
        _ => WsMessage::Other,
    }
}

/// An `execution_cached` message (as a `Value`): its prompt and node ids.
fn cached_of(v: &Value) -> WsMessage {
    let data = v.get("data").unwrap_or(&Value::Null);
    let Some(prompt_id) = str_field(data, "prompt_id") else { return WsMessage::Other };
    let nodes = data.get("nodes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let nodes = nodes
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string).or_else(|| n.as_u64().map(|n| n.to_string())))
        .collect();
    WsMessage::ExecutionCached { prompt_id, nodes }
}

/// A preview image from a binary WebSocket frame (a sampler's latent preview with
/// `--preview-method`, or `SaveImageWebsocket`'s images).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// The prompt, when the frame says (`PREVIEW_IMAGE_WITH_METADATA`; a legacy
    /// `PREVIEW_IMAGE` frame does not: it is the running prompt's).
    pub prompt_id: Option<String>,
    /// `image/jpeg` or `image/png`.
    pub media_type: &'static str,
    /// The encoded image.
    pub image: bytes::Bytes,
}

/// The largest preview image kept, in bytes; a larger frame is not a preview anyone waits for.
pub const PREVIEW_BYTES_MAX: usize = 1024 * 1024;

/// Parse a binary WebSocket frame: 4-byte big-endian event type, then type 1
/// (`PREVIEW_IMAGE`: 4-byte image format, 1 JPEG or 2 PNG, and the image) or type 4
/// (`PREVIEW_IMAGE_WITH_METADATA`: 4-byte metadata length, the JSON metadata with
/// `prompt_id` and `image_type`, and the image). Any other frame, an image over
/// [`PREVIEW_BYTES_MAX`] or of another type, is None.
pub fn parse_ws_binary(frame: &bytes::Bytes) -> Option<Preview> {
    let word = |at: usize| frame.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let (prompt_id, media_type, start) = match word(0)? {
        1 => {
            let media = match word(4)? {
                1 => "image/jpeg",
                2 => "image/png",
                _ => return None,
            };
            (None, media, 8)
        }
        4 => {
            let len = usize::try_from(word(4)?).ok()?;
            let meta: Value = serde_json::from_slice(frame.get(8..8usize.checked_add(len)?)?).ok()?;
            let media = match meta.get("image_type").and_then(Value::as_str)? {
                "image/jpeg" => "image/jpeg",
                "image/png" => "image/png",
                _ => return None,
            };
            (str_field(&meta, "prompt_id"), media, 8 + len)
        }
        _ => return None,
    };
    let image = frame.slice(start..);
    (!image.is_empty() && image.len() <= PREVIEW_BYTES_MAX).then_some(Preview { prompt_id, media_type, image })
}

/// One file reported in a history entry's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The node that produced it.
    pub node_id: String,
    /// The key it was listed under (`images`, `gifs`, `audio`, ...).
    pub key: String,
    /// File name.
    pub filename: String,
    /// Sub folder (may be empty).
    pub subfolder: String,
    /// `output`, `temp` or `input`.
    pub folder_type: String,
}

impl OutputFile {
    /// A file a node saved (`SaveImage` and the like: folder `output`).
    pub fn is_saved(&self) -> bool {
        self.folder_type == "output"
    }

    /// A preview (`PreviewImage`: folder `temp`), kept only when the workflow asks.
    pub fn is_preview(&self) -> bool {
        self.folder_type == "temp"
    }
}

/// How a finished prompt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `status_str: success`.
    Success,
    /// An `execution_error` message is in the status.
    Error(ExecutionError),
    /// An `execution_interrupted` message is in the status.
    Interrupted,
}

/// A finished prompt as read from `/history/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// How it ended.
    pub outcome: Outcome,
    /// Every file listed in `outputs`, in node order.
    pub files: Vec<OutputFile>,
}

/// What a JSON value is, for error messages.
fn shape(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parse the body of `GET /history/{prompt_id}`, strictly (it feeds the re-submit decision):
/// `Ok(None)` only for ComfyUI's `{}` (unknown, unfinished, or lost in a restart),
/// `Ok(Some(entry))` for `{prompt_id: entry}` with an entry [`parse_history_entry`]
/// understands, and an error for anything else: a body that is not an object, an object
/// that lists other keys but not this prompt (a proxy's or another server's JSON), or an
/// entry of another shape. An error must never be taken for "unknown".
pub fn parse_history(body: &Value, prompt_id: &str) -> Result<Option<HistoryEntry>, String> {
    let Some(entries) = body.as_object() else {
        return Err(format!("the history body is {}, not an object", shape(body)));
    };
    match entries.get(prompt_id) {
        Some(entry) => parse_history_entry(entry, prompt_id).map(Some),
        None if entries.is_empty() => Ok(None),
        None => {
            let first = entries.keys().next().map(String::as_str).unwrap_or("");
            let first: String = first.chars().take(40).collect();
            Err(format!("the history body has {} other key(s) (first {first:?}) and not the prompt", entries.len()))
        }
    }
}

/// Parse one history entry, strictly: an object with `status` (an object whose
/// `status_str` is `success` or `error` and whose `messages` is a list of `[name, data]`
/// pairs) and `outputs` (an object of per-node UI objects). A success that also lists an
/// `execution_error` or `execution_interrupted` message contradicts itself and is an error
/// too. Extra fields are ignored, and so are UI values that are not file lists (`text`,
/// `animated`, ...).
pub fn parse_history_entry(entry: &Value, prompt_id: &str) -> Result<HistoryEntry, String> {
    let entry = entry.as_object().ok_or_else(|| format!("the history entry is {}, not an object", shape(entry)))?;
    let status = match entry.get("status") {
        Some(Value::Object(status)) => status,
        Some(other) => return Err(format!("the history entry's status is {}, not an object", shape(other))),
        None => return Err("the history entry has no status".to_string()),
    };
    let status_str = match status.get("status_str") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("the history entry's status_str is {}, not a string", shape(other))),
        None => return Err("the history entry's status has no status_str".to_string()),
    };
    let messages = match status.get("messages") {
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(format!("the history entry's status messages are {}, not a list", shape(other))),
        None => return Err("the history entry's status has no messages".to_string()),
    };
    let mut named = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        match message.as_array().map(Vec::as_slice) {
            Some([Value::String(name), data]) => named.push((name.as_str(), data)),
            _ => return Err(format!("the history entry's status message {i} is not a [name, data] pair")),
        }
    }
    let find = |name: &str| named.iter().find(|(n, _)| *n == name).map(|(_, data)| *data);
    let (error, interrupted) = (find("execution_error"), find("execution_interrupted"));
    let outcome = match status_str {
        "success" if error.is_some() || interrupted.is_some() => {
            return Err("the history entry says success but lists an execution error or interruption".to_string());
        }
        "success" => Outcome::Success,
        "error" => match (error, interrupted) {
            (Some(data), _) => Outcome::Error(ExecutionError::from_value(data)),
            (None, Some(_)) => Outcome::Interrupted,
            (None, None) => Outcome::Error(ExecutionError {
                prompt_id: prompt_id.to_string(),
                exception_message: "ComfyUI reported status \"error\" without an execution_error message".to_string(),
                ..ExecutionError::default()
            }),
        },
        other => {
            let other: String = other.chars().take(40).collect();
            return Err(format!("the history entry's status_str {other:?} is neither \"success\" nor \"error\""));
        }
    };
    let outputs = match entry.get("outputs") {
        Some(Value::Object(outputs)) => outputs,
        Some(other) => return Err(format!("the history entry's outputs are {}, not an object", shape(other))),
        None => return Err("the history entry has no outputs".to_string()),
    };
    let mut files = Vec::new();
    for (node_id, ui) in outputs {
        let Some(ui) = ui.as_object() else {
            return Err(format!("the history entry's outputs of node {node_id:?} are {}, not an object", shape(ui)));
        };
        for (key, list) in ui {
            let Some(list) = list.as_array() else { continue };
            for item in list {
                let Some(filename) = item.get("filename") else { continue };
                let (Some(filename), Ok(subfolder), Ok(folder_type)) =
                    (filename.as_str(), opt_str(item, "subfolder"), opt_str(item, "type"))
                else {
                    return Err(format!("the history entry lists a file of node {node_id:?} that is not understood"));
                };
                files.push(OutputFile {
                    node_id: node_id.clone(),
                    key: key.clone(),
                    filename: filename.to_string(),
                    subfolder: subfolder.unwrap_or_default(),
                    folder_type: folder_type.unwrap_or_else(|| "output".to_string()),
                });
            }
        }
    }
    Ok(HistoryEntry { outcome, files })
}

/// A field that is absent (`Ok(None)`) or a string; anything else is an error.
fn opt_str(v: &Value, key: &str) -> Result<Option<String>, ()> {
    match v.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// The prompt ids in ComfyUI's queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueSnapshot {
    /// Running prompt ids.
    pub running: Vec<String>,
    /// Pending prompt ids (heap order, unsorted).
    pub pending: Vec<String>,
}

impl QueueSnapshot {
    /// Whether the prompt is running or pending.
    pub fn contains(&self, prompt_id: &str) -> bool {
        self.running.iter().chain(&self.pending).any(|p| p == prompt_id)
    }
}

/// Parse `GET /queue`, strictly (it feeds the re-submit decision): an object whose
/// `queue_running` and `queue_pending` are both lists of items `[number, prompt_id, prompt,
/// extra_data, outputs]` (only the prompt id, a string, is read; extra fields are
/// ignored). Anything else is an error, never an empty queue.
pub fn parse_queue(body: &Value) -> Result<QueueSnapshot, String> {
    let Some(queue) = body.as_object() else {
        return Err(format!("the queue body is {}, not an object", shape(body)));
    };
    let ids = |key: &str| -> Result<Vec<String>, String> {
        let items = match queue.get(key) {
            Some(Value::Array(items)) => items,
            Some(other) => return Err(format!("the queue's {key} is {}, not a list", shape(other))),
            None => return Err(format!("the queue body has no {key}")),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_array().and_then(|a| a.get(1)) {
                Some(Value::String(id)) => Ok(id.clone()),
                _ => Err(format!("the queue's {key}[{i}] is not a [number, prompt_id, ...] item")),
            })
            .collect()
    };
    Ok(QueueSnapshot { running: ids("queue_running")?, pending: ids("queue_pending")? })
}

/// Parse a 200 answer to `POST /prompt`: accepted only if it is a JSON object naming our
/// `prompt_id` (ComfyUI echoes the id it was given); anything else is an error, and the
/// submission's outcome is then unknown (reconciled, never assumed either way).
pub fn parse_submit_answer(body: &[u8], prompt_id: &str) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    match v.get("prompt_id") {
        Some(Value::String(id)) if id == prompt_id => Ok(()),
        Some(Value::String(id)) => {
            let id: String = id.chars().take(40).collect();
            Err(format!("the answer names prompt_id {id:?}"))
        }
        Some(other) => Err(format!("the answer's prompt_id is {}", shape(other))),
        None => Err(format!("the answer is {} without a prompt_id", shape(&v))),
    }
}

/// A 400 answer to `POST /prompt`, reduced to a message and the per-node details. The
/// message names the first failing node (by id order), its class, the input and the reason
/// (`node 3 (EmptyImage), input width: Value 100000 bigger than max of 16384`) and how many
/// more there are; every one of them is in the details' `nodeErrors`.
pub fn parse_rejection(body: &str) -> (String, Value) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = v.get("error");
    let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("unknown");
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("prompt rejected");
    let details = error.and_then(|e| e.get("details")).and_then(Value::as_str).unwrap_or("");
    let mut nodes = Vec::new();
    let mut node_errors: Vec<(&String, &Value)> =
        v.get("node_errors").and_then(Value::as_object).into_iter().flatten().collect();
    // Numeric ids in number order ("2" before "10"), others after, by text.
    node_errors.sort_by(|(a, _), (b, _)| {
        (a.parse::<u64>().ok().is_none(), a.parse::<u64>().ok(), *a).cmp(&(
            b.parse::<u64>().ok().is_none(),
            b.parse::<u64>().ok(),
            *b,
        ))
    });
    let mut first = None;
    for (node_id, ne) in node_errors {
        let class_type = ne.get("class_type").and_then(Value::as_str).unwrap_or("");
        for err in ne.get("errors").and_then(Value::as_array).into_iter().flatten() {
            let text = |key: &str| err.get(key).and_then(Value::as_str).unwrap_or("");
            // Older answers name the input only as the whole of `details`.
            let plain = |d: &&str| !d.is_empty() && d.chars().all(|c| c.is_alphanumeric() || c == '_');
            let input = err
                .pointer("/extra_info/input_name")
                .and_then(Value::as_str)
                .or_else(|| Some(text("details")).filter(plain));
            if first.is_none() {
                let at = match input {
                    Some(input) => format!("node {node_id} ({class_type}), input {input}"),
                    None => format!("node {node_id} ({class_type})"),
                };
                let reason = match text("details") {
                    "" => text("message").to_string(),
                    d if Some(d) == input => text("message").to_string(),
                    d => format!("{}: {d}", text("message")),
                };
                first = Some(format!("{at}: {reason}"));
            }
            nodes.push(serde_json::json!({
                "nodeId": node_id,
                "classType": class_type,
                "input": input,
                "type": text("type"),
                "message": text("message"),
                "details": text("details"),
            }));
        }
    }
    let summary = match first {
        Some(first) if nodes.len() > 1 => {
            format!("{first} (and {} more in details.nodeErrors)", nodes.len() - 1)
        }
        Some(first) => first,
        None if details.is_empty() => format!("{kind}: {message}"),
        None => format!("{kind}: {message}: {details}"),
    };
    (summary, serde_json::json!({ "type": kind, "nodeErrors": nodes }))
}

/// The body of `POST /prompt`, built without re-parsing the stored prompt JSON.
pub fn submit_body(prompt_json: &str, prompt_id: &str, client_id: &str) -> String {
    let id = Value::String(prompt_id.to_string());
    let cid = Value::String(client_id.to_string());
    format!("{{\"prompt\":{prompt_json},\"prompt_id\":{id},\"client_id\":{cid}}}")
}

/// MIME type of an output file, from its extension.
pub fn media_type_of(filename: &str) -> &'static str {
    let ext = filename.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "txt" => "text/plain",
        "json" => "application/json",
        "glb" => "model/gltf-binary",
        "obj" => "model/obj",
        _ => "application/octet-stream",
    }
}

/// What is wrong with a downloaded output, judged by its file name: an image whose bytes
/// do not start with its format's signature (e.g. a proxy's HTML error page), or a PNG that
/// does not end with its `IEND` chunk (cut short). None for files of other types, which are
/// taken as they come.
pub fn output_defect(filename: &str, bytes: &[u8]) -> Option<String> {
    const PNG_END: &[u8] = b"\0\0\0\0IEND\xae\x42\x60\x82";
    let media_type = media_type_of(filename);
    let (format, signature_ok) = match media_type {
        "image/png" => ("PNG", bytes.starts_with(b"\x89PNG\r\n\x1a\n")),
        "image/jpeg" => ("JPEG", bytes.starts_with(&[0xff, 0xd8, 0xff])),
        "image/gif" => ("GIF", bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")),
        "image/webp" => ("WebP", bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP"),
        _ => return None,
    };
    if !signature_ok {
        let start: String =
            bytes.iter().take(32).map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
        return Some(format!("is not a {format} image: {} bytes starting with {start:?}", bytes.len()));
    }
    if format == "PNG" && !bytes.ends_with(PNG_END) {
        return Some(format!("is an incomplete PNG image ({} bytes, no IEND chunk at the end)", bytes.len()));
    }
    None
}

/// One node class of `GET /object_info`, reduced to what deriving input schemas and
/// converting saved (UI-format) workflows need.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeClass {
    /// `display_name` (the default `_meta.title` of its nodes).
    pub display_name: Option<String>,
    /// Its inputs (required and optional) by name.
    pub inputs: std::collections::BTreeMap<String, NodeInput>,
    /// `input_order`: its required, then its optional, input names in declaration order (the
    /// order of a saved workflow's widget values); `None` from a ComfyUI too old to send it.
    pub input_order: Option<Vec<String>>,
}

/// One input of a node class.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInput {
    /// What it takes.
    pub kind: InputKind,
    /// Declared under `required` (else `optional`).
    pub required: bool,
    /// The `tooltip` option.
    pub tooltip: Option<String>,
    /// The options that shape its widget in ComfyUI's frontend.
    pub widget: WidgetOptions,
}

/// The options of a node input that decide its widget in ComfyUI's frontend, and so where
/// its value is in a saved workflow's `widgets_values`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WidgetOptions {
    /// `forceInput`: a socket only, without a widget, whatever its type.
    pub force_input: bool,
    /// `control_after_generate` (`true` or the control's name): a "control after generate"
    /// widget follows it (and, after a combo, a filter widget too).
    pub control_after_generate: bool,
    /// An upload option (`image_upload`, `video_upload`, `animated_image_upload`,
    /// `audio_upload`): the upload widgets the frontend adds after every input.
    pub upload: Option<Upload>,
    /// `remote.refresh_button`: a refresh button widget follows it.
    pub refresh_button: bool,
    /// `dynamicPrompts`: the frontend strips comments and picks one of `{a|b}` when queueing.
    pub dynamic_prompts: bool,
    /// `default`.
    pub default: Option<Value>,
}

/// The upload widgets the frontend adds to a node with an upload input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// An image or video: one upload button.
    Media,
    /// An audio file: the audio player and the upload button.
    Audio,
}

/// The type of a node input as `/object_info` declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// `INT` with its `min` / `max` / `step` options (seeds reach `u64::MAX`, so `i128`).
    Int {
        /// `min`.
        min: Option<i128>,
        /// `max`.
        max: Option<i128>,
        /// `step`.
        step: Option<i128>,
    },
    /// `FLOAT` with its `min` / `max` / `step` options.
    Float {
        /// `min`.
        min: Option<f64>,
        /// `max`.
        max: Option<f64>,
        /// `step`.
        step: Option<f64>,
    },
    /// `STRING`.
    String {
        /// The `multiline` option (prompt text).
        multiline: bool,
    },
    /// `BOOLEAN`.
    Boolean,
    /// A combo: a list of choices (`[[...], {...}]` or `["COMBO", {"options": [...]}]`).
    Combo {
        /// The choices (installed models, sampler names, input files, ...).
        options: Vec<Value>,
        /// The `image_upload` option (`LoadImage`).
        image_upload: bool,
    },
    /// A connection type (`MODEL`, `CLIP`, `IMAGE`, ...): only links, no literal.
    Link(String),
}

/// The node classes of a backend by class name (`GET /object_info`).
pub type ObjectInfo = std::collections::BTreeMap<String, NodeClass>;

/// Parse a `GET /object_info` body. Entries that are not objects are skipped, inputs of an
/// unknown shape are read as links; only a body that is not an object is an error.
pub fn parse_object_info(body: &Value) -> Result<ObjectInfo, String> {
    let classes = body.as_object().ok_or("the /object_info body is not a JSON object")?;
    let mut info = ObjectInfo::new();
    for (name, class) in classes {
        let Some(class) = class.as_object() else {
            continue;
        };
        let order = |category: &str| -> Option<Vec<String>> {
            let names = class.get("input_order")?.get(category)?.as_array()?;
            Some(names.iter().filter_map(Value::as_str).map(str::to_string).collect())
        };
        let input_order = class.get("input_order").filter(|o| o.is_object()).map(|_| {
            let mut names = order("required").unwrap_or_default();
            names.extend(order("optional").unwrap_or_default());
            names
        });
        let mut parsed = NodeClass {
            display_name: class.get("display_name").and_then(Value::as_str).map(str::to_string),
            inputs: Default::default(),
            input_order,
        };
        for (category, required) in [("required", true), ("optional", false)] {
            let specs = class.get("input").and_then(|i| i.get(category)).and_then(Value::as_object);
            for (input, spec) in specs.into_iter().flatten() {
                let options = spec.get(1).filter(|o| o.is_object());
                parsed.inputs.insert(
                    input.clone(),
                    NodeInput {
                        kind: input_kind(spec.get(0).unwrap_or(&Value::Null), options),
                        required,
                        tooltip: options.and_then(|o| o.get("tooltip")).and_then(Value::as_str).map(str::to_string),
                        widget: widget_options(options),
                    },
                );
            }
        }
        info.insert(name.clone(), parsed);
    }
    Ok(info)
}

fn widget_options(options: Option<&Value>) -> WidgetOptions {
    let option = |key: &str| options.and_then(|o| o.get(key));
    let flag = |key: &str| option(key).and_then(Value::as_bool).unwrap_or(false);
    let upload = if flag("audio_upload") {
        Some(Upload::Audio)
    } else if flag("image_upload") || flag("video_upload") || flag("animated_image_upload") {
        Some(Upload::Media)
    } else {
        None
    };
    WidgetOptions {
        force_input: flag("forceInput"),
        // `true`, or the name the control widget takes.
        control_after_generate: option("control_after_generate")
            .is_some_and(|c| c.as_bool().unwrap_or(false) || c.as_str().is_some_and(|s| !s.is_empty())),
        upload,
        refresh_button: option("remote")
            .and_then(|r| r.get("refresh_button"))
            .is_some_and(|b| b.as_bool().unwrap_or(false)),
        dynamic_prompts: flag("dynamicPrompts"),
        default: option("default").cloned(),
    }
}

fn input_kind(kind: &Value, options: Option<&Value>) -> InputKind {
    let option = |key: &str| options.and_then(|o| o.get(key));
    let int = |key: &str| {
        option(key).and_then(|v| {
            v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from)).or_else(|| {
                // Whole floats only; ComfyUI writes integer options as integers.
                v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e38).map(|f| f as i128)
            })
        })
    };
    let float = |key: &str| option(key).and_then(Value::as_f64);
    let image_upload = option("image_upload").and_then(Value::as_bool).unwrap_or(false);
    match kind {
        Value::Array(choices) => InputKind::Combo { options: choices.clone(), image_upload },
        Value::String(t) => match t.as_str() {
            "INT" => InputKind::Int { min: int("min"), max: int("max"), step: int("step") },
            "FLOAT" => InputKind::Float { min: float("min"), max: float("max"), step: float("step") },
            "STRING" => InputKind::String { multiline: option("multiline").and_then(Value::as_bool).unwrap_or(false) },
            "BOOLEAN" => InputKind::Boolean,
            "COMBO" => InputKind::Combo {
                options: option("options").and_then(Value::as_array).cloned().unwrap_or_default(),
                image_upload,
            },
            other => InputKind::Link(other.to_string()),
        },
        other => InputKind::Link(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser as it was, on a whole `Value`: the typed one must agree with it.
    fn parse_ws_by_value(text: &str) -> WsMessage {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return WsMessage::Other;
        };
        let Some(kind) = v.get("type").and_then(Value::as_str) else {
            return WsMessage::Other;
        };
        let null = Value::Null;
        let data = v.get("data").unwrap_or(&null);
        let prompt_id = || str_field(data, "prompt_id");
        match kind {
            "status" => WsMessage::Status {
                queue_remaining: data.pointer("/status/exec_info/queue_remaining").and_then(Value::as_u64).unwrap_or(0),
                sid: str_field(data, "sid"),
            },
            "execution_start" => match prompt_id() {
                Some(prompt_id) => WsMessage::ExecutionStart { prompt_id },
                None => WsMessage::Other,
            },
            "executing" => WsMessage::Executing { prompt_id: prompt_id(), node: id_field(data, "node") },
            "progress" => match prompt_id() {
                Some(prompt_id) => WsMessage::Progress {
                    prompt_id,
                    node: id_field(data, "node"),
                    value: data.get("value").and_then(Value::as_f64).unwrap_or(0.0),
                    max: data.get("max").and_then(Value::as_f64).unwrap_or(0.0),
                },
                None => WsMessage::Other,
            },
            "executed" => match (prompt_id(), id_field(data, "node")) {
                (Some(prompt_id), Some(node)) => WsMessage::Executed { prompt_id, node },
                _ => WsMessage::Other,
            },
            "execution_success" => match prompt_id() {
                Some(prompt_id) => WsMessage::ExecutionSuccess { prompt_id },
                None => WsMessage::Other,
            },
            "execution_error" => match prompt_id() {
                Some(_) => WsMessage::ExecutionError(ExecutionError::from_value(data)),
                None => WsMessage::Other,
            },
            "execution_interrupted" => match prompt_id() {
                Some(prompt_id) => WsMessage::ExecutionInterrupted { prompt_id },
                None => WsMessage::Other,
            },
            "execution_cached" => cached_of(&v),
            _ => WsMessage::Other,
        }
    }

    #[test]
    fn typed_ws_parse_agrees_with_the_value_parse() {
        let mut texts: Vec<String> = Vec::new();
        // Every text frame of the captures of a real ComfyUI.
        let captures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/captures");
        for entry in std::fs::read_dir(&captures).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    texts.push(line.to_string());
                    collect_messages(&v, &mut texts);
                }
            }
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                collect_messages(&v, &mut texts);
            }
        }
        assert!(texts.len() > 20, "captures found: {}", texts.len());
        // And variants: ids as numbers, members of other types, missing data, junk around.
        // Every kind the parse reads, and two it skips (the oracle is the `Value` parse).
        for kind in WS_KINDS_READ.into_iter().chain(["progress_state", "crystools.monitor"]) {
            for data in [
                r#"{"prompt_id":"p","node":"3","value":2,"max":20.5,"sid":"s","status":{"exec_info":{"queue_remaining":4}}}"#,
                r#"{"prompt_id":7,"node":12,"value":"x","max":null,"status":{"exec_info":{"queue_remaining":-1}}}"#,
                r#"{"prompt_id":"p","node":null,"output":{"images":[{"filename":"a.png"}]},"status":[1]}"#,
                r#"{"prompt_id":"p","node_id":"9","node_type":"KSampler","exception_type":"torch.OutOfMemoryError","exception_message":"CUDA out of memory","traceback":["x"]}"#,
                r#"{"status":{"exec_info":{"queue_remaining":1.5}},"sid":5}"#,
                r#"{"node":1.5,"prompt_id":"p","value":1e400}"#,
                r#"[]"#,
                r#""text""#,
                r#"null"#,
                r#"{}"#,
            ] {
                texts.push(format!(r#"{{"type":"{kind}","data":{data}}}"#));
                texts.push(format!(r#"{{"data":{data},"type":"{kind}","extra":[{{"deep":[1,2,{{}}]}}]}}"#));
            }
            texts.push(format!(r#"{{"type":"{kind}"}}"#));
        }
        texts.extend(
            [
                r#"{"type":5}"#,
                r#"{"type":null,"data":{}}"#,
                "[1,2]",
                "",
                "{",
                r#"{"type":"executing","data":{"node":"1"}} trailing"#,
                // `type` first, as ComfyUI writes it, with spaces or an escape in the kind.
                r#" { "type" : "executing", "data": {"node": "1", "prompt_id": "p"}}"#,
                r#"{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"1": {"value": 1}}}}"#,
                r#"{"type":"execut\u0069ng","data":{"node":"1","prompt_id":"p"}}"#,
                r#"{"type":"progress_state\"","data":{}}"#,
            ]
            .map(String::from),
        );
        for text in &texts {
            assert_eq!(parse_ws_text(text), parse_ws_by_value(text), "{text}");
        }
    }

    /// Every JSON object with a string `type` inside `v` (capture files hold frames in
    /// several shapes), as text.
    fn collect_messages(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if m.get("type").is_some_and(Value::is_string) {
                    out.push(v.to_string());
                }
                m.values().for_each(|x| collect_messages(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| collect_messages(x, out)),
            Value::String(s) if s.starts_with('{') => {
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    collect_messages(&inner, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn object_info_of_the_simulator_parses() {
        use serde_json::json;
        let body: Value = serde_json::from_str(include_str!("sim/object_info.json")).unwrap();
        let info = parse_object_info(&body).unwrap();
        let ks = &info["KSampler"];
        assert_eq!(ks.inputs["seed"].kind, InputKind::Int { min: Some(0), max: Some(u64::MAX as i128), step: None });
        assert!(matches!(ks.inputs["cfg"].kind, InputKind::Float { step: Some(s), .. } if (s - 0.1).abs() < 1e-9));
        assert!(matches!(&ks.inputs["sampler_name"].kind, InputKind::Combo { options, .. } if options.len() > 10));
        assert_eq!(ks.inputs["model"].kind, InputKind::Link("MODEL".into()));
        assert!(ks.inputs["steps"].tooltip.is_some());
        assert_eq!(info["CLIPTextEncode"].inputs["text"].kind, InputKind::String { multiline: true });
        assert!(matches!(&info["LoadImage"].inputs["image"].kind, InputKind::Combo { image_upload: true, .. }));
        let combo = json!({"X": {"input": {"optional": {"c": ["COMBO", {"options": ["a", "b"]}]}}}, "Bad": 5});
        let info = parse_object_info(&combo).unwrap();
        assert_eq!(info.len(), 1);
        assert!(!info["X"].inputs["c"].required);
        assert_eq!(
            info["X"].inputs["c"].kind,
            InputKind::Combo { options: vec![json!("a"), json!("b")], image_upload: false }
        );
        assert!(parse_object_info(&json!([1])).is_err());
    }

    #[test]
    fn output_defects_by_file_name() {
        let png = [b"\x89PNG\r\n\x1a\n".as_slice(), b"IHDR...", b"\0\0\0\0IEND\xae\x42\x60\x82"].concat();
        assert_eq!(output_defect("a_00001_.png", &png), None);
        let html = b"<html><head><title>502 Bad Gateway</title></head></html>";
        let defect = output_defect("a_00001_.png", html).unwrap();
        assert!(defect.starts_with("is not a PNG image: 56 bytes starting with \"<html><head><title>502"), "{defect}");
        assert!(output_defect("a.png", &png[..png.len() / 2]).unwrap().contains("incomplete PNG"));
        assert!(output_defect("a.JPG", html).unwrap().contains("not a JPEG"));
        assert_eq!(output_defect("a.jpg", &[0xff, 0xd8, 0xff, 0xe0]), None);
        assert!(output_defect("a.webp", b"RIFF\0\0\0\0WEBX").is_some());
        assert_eq!(output_defect("a.gif", b"GIF89a..."), None);
        // Other types are taken as they come.
        assert_eq!(output_defect("a_00001_.latent", html), None);
        assert_eq!(output_defect("clip.mp4", b""), None);
    }

    #[test]
    fn ws_messages_from_captures() {
        let m = parse_ws_text(r#"{"type":"executing","data":{"node":null,"prompt_id":"p1"}}"#);
        assert_eq!(m, WsMessage::Executing { prompt_id: Some("p1".into()), node: None });
        let m = parse_ws_text(r#"{"type":"executing","data":{"node":"12"}}"#);
        assert_eq!(m, WsMessage::Executing { prompt_id: None, node: Some("12".into()) });
        let m = parse_ws_text(r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":2}},"sid":"abc"}}"#);
        assert_eq!(m, WsMessage::Status { queue_remaining: 2, sid: Some("abc".into()) });
        let m = parse_ws_text(r#"{"type":"progress","data":{"value":3,"max":20,"prompt_id":"p","node":"5"}}"#);
        assert_eq!(m, WsMessage::Progress { prompt_id: "p".into(), node: Some("5".into()), value: 3.0, max: 20.0 });
        assert_eq!(parse_ws_text("not json"), WsMessage::Other);
        assert_eq!(parse_ws_text(r#"{"type":"progress","data":{}}"#), WsMessage::Other);
        assert_eq!(parse_ws_text(r#"[1,2]"#), WsMessage::Other);
    }

    #[test]
    fn oom_signature() {
        let mut e = ExecutionError { exception_type: "torch.OutOfMemoryError".into(), ..Default::default() };
        assert_eq!(e.code(), ErrorCode::ComfyuiOom);
        e.exception_type = "RuntimeError".into();
        e.exception_message = "[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried".into();
        assert_eq!(e.code(), ErrorCode::ComfyuiOom);
        e.exception_message = "cannot identify image file".into();
        assert_eq!(e.code(), ErrorCode::ComfyuiNodeError);
    }

    #[test]
    fn history_entry_success_and_error() {
        let body: Value = serde_json::json!({"p": {
            "outputs": {"2": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": true, "messages": []}}});
        let e = parse_history(&body, "p").unwrap().unwrap();
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.files.len(), 1);
        assert_eq!(e.files[0].filename, "a_00001_.png");
        assert_eq!(parse_history(&serde_json::json!({}), "p"), Ok(None));
        let body: Value = serde_json::json!({"p": {"outputs": {}, "status": {"status_str": "error", "completed": false,
            "messages": [["execution_start", {}], ["execution_error", {"prompt_id": "p", "node_id": "1",
            "node_type": "LoadImage", "exception_type": "PIL.UnidentifiedImageError", "exception_message": "bad\n"}]]}}});
        match parse_history(&body, "p").unwrap().unwrap().outcome {
            Outcome::Error(e) => {
                assert_eq!(e.node_type, "LoadImage");
                assert_eq!(e.exception_message, "bad");
            }
            other => panic!("{other:?}"),
        }
        let body: Value = serde_json::json!({"p": {"outputs": {}, "status": {"status_str": "error",
            "messages": [["execution_interrupted", {"prompt_id": "p"}]]}}});
        assert_eq!(parse_history(&body, "p").unwrap().unwrap().outcome, Outcome::Interrupted);
        // An error status without a message is still a failure ComfyUI reported.
        let body: Value = serde_json::json!({"p": {"outputs": {}, "status": {"status_str": "error", "messages": []}}});
        assert!(matches!(parse_history(&body, "p").unwrap().unwrap().outcome, Outcome::Error(_)));
        // UI values that are not file lists are skipped; files keep their folder type.
        let body: Value = serde_json::json!({"p": {"status": {"status_str": "success", "messages": []},
            "outputs": {"3": {"text": ["hi"], "animated": [false], "images": [{"filename": "t.png", "type": "temp"}]}}}});
        let e = parse_history(&body, "p").unwrap().unwrap();
        assert_eq!(e.files.len(), 1);
        assert_eq!((e.files[0].folder_type.as_str(), e.files[0].subfolder.as_str()), ("temp", ""));
    }

    /// Every answer that is not one ComfyUI gives is an error: never "unknown" (`Ok(None)`),
    /// never a success. Each of these would have led to a second `POST /prompt` (or a false
    /// success) when the parser was lenient.
    #[test]
    fn history_answers_not_understood_are_errors() {
        use serde_json::json;
        let ok_status = json!({"status_str": "success", "completed": true, "messages": []});
        let entry = |status: Value, outputs: Value| json!({"p": {"status": status, "outputs": outputs}});
        let cases = [
            ("a JSON list", json!([])),
            ("a string", json!("<html>502</html>")),
            ("null", Value::Null),
            ("an object of another shape", json!({"error": "upstream connect error", "status": 502})),
            ("another prompt's entry only", json!({"q": {"status": ok_status.clone(), "outputs": {}}})),
            ("the entry is a string", json!({"p": "pending"})),
            ("the entry has no status", json!({"p": {"outputs": {"2": {"images": [{"filename": "a.png"}]}}}})),
            ("status is not an object", entry(json!("success"), json!({}))),
            ("status_str missing", entry(json!({"completed": true, "messages": []}), json!({}))),
            ("status_str running", entry(json!({"status_str": "running", "messages": []}), json!({}))),
            ("status_str not a string", entry(json!({"status_str": true, "messages": []}), json!({}))),
            ("messages missing", entry(json!({"status_str": "success"}), json!({}))),
            ("messages not a list", entry(json!({"status_str": "success", "messages": {}}), json!({}))),
            (
                "a message not a pair",
                entry(json!({"status_str": "error", "messages": [["execution_error"]]}), json!({})),
            ),
            ("a message name not a string", entry(json!({"status_str": "error", "messages": [[1, {}]]}), json!({}))),
            (
                "success with an error message",
                entry(json!({"status_str": "success", "messages": [["execution_error", {}]]}), json!({})),
            ),
            ("outputs missing", json!({"p": {"status": ok_status.clone()}})),
            ("outputs a list", entry(ok_status.clone(), json!([]))),
            ("a node's outputs a list", entry(ok_status.clone(), json!({"2": [{"filename": "a.png"}]}))),
            ("a file name not a string", entry(ok_status.clone(), json!({"2": {"images": [{"filename": 7}]}}))),
            (
                "a subfolder not a string",
                entry(ok_status.clone(), json!({"2": {"images": [{"filename": "a", "subfolder": 1}]}})),
            ),
        ];
        for (what, body) in cases {
            let parsed = parse_history(&body, "p");
            assert!(parsed.is_err(), "{what}: {body} gave {parsed:?}");
            assert!(!parsed.unwrap_err().is_empty(), "{what}: a message");
        }
        // The one "unknown": ComfyUI's `{}`.
        assert_eq!(parse_history(&json!({}), "p"), Ok(None));
    }

    #[test]
    fn queue_and_rejection() {
        let q = parse_queue(
            &serde_json::json!({"queue_running": [[1, "a", {}, {}, []]], "queue_pending": [[3, "c"], [2, "b"]]}),
        )
        .unwrap();
        assert!(q.contains("a") && q.contains("b") && q.contains("c") && !q.contains("d"));
        assert_eq!(
            parse_queue(&serde_json::json!({"queue_running": [], "queue_pending": []})),
            Ok(QueueSnapshot::default())
        );
        let (msg, details) = parse_rejection(
            r#"{"error":{"type":"prompt_outputs_failed_validation","message":"Prompt outputs failed validation","details":"","extra_info":{}},
            "node_errors":{"1":{"errors":[{"type":"value_smaller_than_min","message":"Value 0 smaller than min of 1","details":"width"}],"dependent_outputs":["2"],"class_type":"EmptyImage"}}}"#,
        );
        assert_eq!(msg, "node 1 (EmptyImage), input width: Value 0 smaller than min of 1");
        assert_eq!(details["type"], "prompt_outputs_failed_validation");
        assert_eq!(details["nodeErrors"][0]["nodeId"], "1");
        assert_eq!(details["nodeErrors"][0]["details"], "width");
        // As captured (03_validation.json): the input named, the reason, the others counted.
        let (msg, details) = parse_rejection(
            r#"{"error":{"type":"prompt_outputs_failed_validation","message":"Prompt outputs failed validation","details":"","extra_info":{}},
            "node_errors":{
              "10":{"errors":[{"type":"value_not_in_list","message":"Value not in list","details":"upscale_method: 'magic' not in ['nearest-exact', 'bilinear']","extra_info":{"input_name":"upscale_method","received_value":"magic"}}],"dependent_outputs":["2"],"class_type":"ImageScale"},
              "3":{"errors":[{"type":"value_bigger_than_max","message":"Value 100000 bigger than max of 16384","details":"width","extra_info":{"input_name":"width","received_value":100000}},
                             {"type":"required_input_missing","message":"Required input is missing","details":"height","extra_info":{"input_name":"height"}}],"dependent_outputs":["2"],"class_type":"EmptyImage"}}}"#,
        );
        assert_eq!(
            msg,
            "node 3 (EmptyImage), input width: Value 100000 bigger than max of 16384 (and 2 more in details.nodeErrors)"
        );
        let listed: Vec<(&str, &str)> = details["nodeErrors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["nodeId"].as_str().unwrap(), e["input"].as_str().unwrap()))
            .collect();
        assert_eq!(listed, [("3", "width"), ("3", "height"), ("10", "upscale_method")]);
        let (msg, _) = parse_rejection(
            r#"{"error":{"type":"prompt_outputs_failed_validation","message":"Prompt outputs failed validation","details":""},
            "node_errors":{"1":{"errors":[{"type":"value_not_in_list","message":"Value not in list","details":"lora_name: 'x.safetensors' not in []","extra_info":{"input_name":"lora_name"}}],"class_type":"LoraLoader"}}}"#,
        );
        assert_eq!(
            msg,
            "node 1 (LoraLoader), input lora_name: Value not in list: lora_name: 'x.safetensors' not in []"
        );
        // No node errors: the error itself.
        let (msg, _) = parse_rejection(
            r#"{"error":{"type":"no_prompt","message":"No prompt provided","details":""},"node_errors":{}}"#,
        );
        assert_eq!(msg, "no_prompt: No prompt provided");
    }

    /// A queue answer of another shape is an error, never an empty queue.
    #[test]
    fn preview_frames_of_both_kinds_are_read_and_others_are_not() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        let mut legacy = vec![0, 0, 0, 1, 0, 0, 0, 2];
        legacy.extend_from_slice(png);
        let p = parse_ws_binary(&bytes::Bytes::from(legacy)).unwrap();
        assert_eq!((p.prompt_id, p.media_type, &p.image[..]), (None, "image/png", &png[..]));
        let meta = br#"{"node_id": "3", "prompt_id": "p1", "image_type": "image/jpeg"}"#;
        let mut framed = vec![0, 0, 0, 4];
        framed.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        framed.extend_from_slice(meta);
        framed.extend_from_slice(b"\xff\xd8\xffjpeg");
        let p = parse_ws_binary(&bytes::Bytes::from(framed.clone())).unwrap();
        assert_eq!(
            (p.prompt_id.as_deref(), p.media_type, &p.image[..]),
            (Some("p1"), "image/jpeg", &b"\xff\xd8\xffjpeg"[..])
        );
        // TEXT frames (type 3), unknown formats, truncated headers, lengths past the end.
        for bad in [
            vec![0, 0, 0, 3, 0, 0, 0, 5, b'h', b'i'],
            vec![0, 0, 0, 1, 0, 0, 0, 9, 1, 2],
            vec![0, 0, 0, 1, 0, 0],
            vec![0, 0, 0, 1, 0, 0, 0, 2],
            vec![0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff, b'{'],
            framed[..12].to_vec(),
        ] {
            assert_eq!(parse_ws_binary(&bytes::Bytes::from(bad.clone())), None, "{bad:?}");
        }
    }

    #[test]
    fn queue_answers_not_understood_are_errors() {
        use serde_json::json;
        let cases = [
            json!([]),
            json!("<html>"),
            Value::Null,
            json!({}),
            json!({"error": "upstream connect error"}),
            json!({"queue_pending": []}),
            json!({"queue_running": []}),
            json!({"queue_running": null, "queue_pending": []}),
            json!({"queue_running": {}, "queue_pending": []}),
            json!({"queue_running": [], "queue_pending": [["a"]]}),
            json!({"queue_running": [[1, 2]], "queue_pending": []}),
            json!({"queue_running": ["a"], "queue_pending": []}),
            json!({"queue_running": [{"prompt_id": "a"}], "queue_pending": []}),
        ];
        for body in cases {
            let parsed = parse_queue(&body);
            assert!(parsed.is_err(), "{body} gave {parsed:?}");
        }
    }

    #[test]
    fn submit_answers() {
        assert_eq!(parse_submit_answer(br#"{"prompt_id": "p", "number": 1, "node_errors": {}}"#, "p"), Ok(()));
        for body in [&br#"{"prompt_id": "q", "number": 1}"#[..], b"{}", b"[]", b"<html>", br#"{"prompt_id": 5}"#, b""] {
            assert!(parse_submit_answer(body, "p").is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    /// Every `/queue`, `/history/{id}` and `POST /prompt` answer of the captured ComfyUI
    /// sessions parses (those in the repository, and the full set in `shared/` beside the
    /// clone when it is there): strictness refuses only what ComfyUI does not send.
    #[test]
    fn every_captured_answer_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = (0, 0, 0);
        for dir in [root.join("tests/it/captures"), root.join("../shared/comfyui/captures")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for file in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")) {
                let Ok(capture) = serde_json::from_slice::<Value>(&std::fs::read(&file).unwrap()) else { continue };
                for event in capture.get("events").and_then(Value::as_array).into_iter().flatten() {
                    if event["kind"] != "http" || event["response"]["status"] != 200 {
                        continue;
                    }
                    let (method, path, body) = (
                        &event["request"]["method"],
                        event["request"]["path"].as_str().unwrap_or(""),
                        &event["response"]["body"],
                    );
                    if body.is_null() {
                        continue;
                    }
                    let here = format!("{}: {method} {path}", file.display());
                    if method == "GET" && (path == "/queue" || path == "/api/queue") {
                        parse_queue(body).unwrap_or_else(|e| panic!("{here}: {e}"));
                        checked.0 += 1;
                    } else if method == "GET" && path.starts_with("/history/") {
                        let id = &path["/history/".len()..];
                        let parsed = parse_history(body, id).unwrap_or_else(|e| panic!("{here}: {e}"));
                        assert_eq!(parsed.is_none(), body.as_object().is_some_and(|o| o.is_empty()), "{here}");
                        checked.1 += 1;
                    } else if method == "POST" && path == "/prompt" {
                        let id = body["prompt_id"].as_str().unwrap_or("");
                        parse_submit_answer(body.to_string().as_bytes(), id).unwrap_or_else(|e| panic!("{here}: {e}"));
                        checked.2 += 1;
                    }
                }
            }
        }
        assert!(checked.0 >= 2 && checked.1 >= 5 && checked.2 >= 5, "captures found: {checked:?}");
    }

    #[test]
    fn submit_body_is_valid_json() {
        let b = submit_body(r#"{"1":{"class_type":"X","inputs":{}}}"#, "id\"x", "cid");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["prompt_id"], "id\"x");
        assert_eq!(v["prompt"]["1"]["class_type"], "X");
    }
}
