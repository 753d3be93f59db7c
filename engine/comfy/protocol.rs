//! ComfyUI's wire format as the gateway reads it (PROTOCOL.md §2, §3, §6, §7, §8):
//! WebSocket messages, history entries, queue snapshots, rejection bodies, and the
//! classification of execution errors into the gateway's error codes.
//!
//! Parsing is lenient about what it does not need (unknown message types and extra
//! fields are ignored) and never panics on any input.

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
    /// Any other message (`progress_state`, `execution_cached`, `feature_flags`, custom ones).
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
            | WsMessage::ExecutionInterrupted { prompt_id } => Some(prompt_id),
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

/// Parse one WebSocket text frame. Unknown or malformed messages become `Other`.
pub fn parse_ws_text(text: &str) -> WsMessage {
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
        _ => WsMessage::Other,
    }
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

/// Parse the body of `GET /history/{prompt_id}`: `None` for `{}` (unknown or unfinished).
pub fn parse_history(body: &Value, prompt_id: &str) -> Option<HistoryEntry> {
    let entry = body.get(prompt_id)?;
    let status = entry.get("status");
    let messages = status.and_then(|s| s.get("messages")).and_then(Value::as_array);
    let find = |name: &str| {
        messages.and_then(|m| {
            m.iter().find_map(|pair| {
                let pair = pair.as_array()?;
                (pair.first()?.as_str()? == name).then(|| pair.get(1).cloned().unwrap_or(Value::Null))
            })
        })
    };
    let status_str = status.and_then(|s| s.get("status_str")).and_then(Value::as_str);
    let outcome = if let Some(data) = find("execution_error") {
        Outcome::Error(ExecutionError::from_value(&data))
    } else if find("execution_interrupted").is_some() {
        Outcome::Interrupted
    } else if status_str == Some("success") || status.is_none() {
        Outcome::Success
    } else {
        Outcome::Error(ExecutionError {
            prompt_id: prompt_id.to_string(),
            exception_message: format!("ComfyUI reported status {:?}", status_str.unwrap_or("")),
            ..ExecutionError::default()
        })
    };
    let mut files = Vec::new();
    if let Some(outputs) = entry.get("outputs").and_then(Value::as_object) {
        for (node_id, ui) in outputs {
            let Some(ui) = ui.as_object() else { continue };
            for (key, list) in ui {
                let Some(list) = list.as_array() else { continue };
                for item in list {
                    let Some(filename) = item.get("filename").and_then(Value::as_str) else { continue };
                    files.push(OutputFile {
                        node_id: node_id.clone(),
                        key: key.clone(),
                        filename: filename.to_string(),
                        subfolder: str_field(item, "subfolder").unwrap_or_default(),
                        folder_type: str_field(item, "type").unwrap_or_else(|| "output".to_string()),
                    });
                }
            }
        }
    }
    Some(HistoryEntry { outcome, files })
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

/// Parse `GET /queue`: items are `[number, prompt_id, prompt, extra_data, outputs]`.
pub fn parse_queue(body: &Value) -> QueueSnapshot {
    let ids = |key: &str| -> Vec<String> {
        body.get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items.iter().filter_map(|item| item.get(1).and_then(Value::as_str).map(str::to_string)).collect()
            })
            .unwrap_or_default()
    };
    QueueSnapshot { running: ids("queue_running"), pending: ids("queue_pending") }
}

/// A 400 answer to `POST /prompt`, reduced to a message and the per-node details.
pub fn parse_rejection(body: &str) -> (String, Value) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = v.get("error");
    let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("unknown");
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("prompt rejected");
    let details = error.and_then(|e| e.get("details")).and_then(Value::as_str).unwrap_or("");
    let mut nodes = Vec::new();
    if let Some(node_errors) = v.get("node_errors").and_then(Value::as_object) {
        for (node_id, ne) in node_errors {
            let class_type = ne.get("class_type").and_then(Value::as_str).unwrap_or("");
            for err in ne.get("errors").and_then(Value::as_array).into_iter().flatten() {
                nodes.push(serde_json::json!({
                    "nodeId": node_id,
                    "classType": class_type,
                    "type": err.get("type").and_then(Value::as_str).unwrap_or(""),
                    "message": err.get("message").and_then(Value::as_str).unwrap_or(""),
                    "details": err.get("details").and_then(Value::as_str).unwrap_or(""),
                }));
            }
        }
    }
    let summary =
        if details.is_empty() { format!("{kind}: {message}") } else { format!("{kind}: {message}: {details}") };
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

/// One node class of `GET /object_info`, reduced to what deriving input schemas needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeClass {
    /// `display_name` (the default `_meta.title` of its nodes).
    pub display_name: Option<String>,
    /// Its inputs (required and optional) by name.
    pub inputs: std::collections::BTreeMap<String, NodeInput>,
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
        let mut parsed = NodeClass {
            display_name: class.get("display_name").and_then(Value::as_str).map(str::to_string),
            inputs: Default::default(),
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
                    },
                );
            }
        }
        info.insert(name.clone(), parsed);
    }
    Ok(info)
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
        let e = parse_history(&body, "p").unwrap();
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.files.len(), 1);
        assert_eq!(e.files[0].filename, "a_00001_.png");
        assert!(parse_history(&serde_json::json!({}), "p").is_none());
        let body: Value = serde_json::json!({"p": {"outputs": {}, "status": {"status_str": "error", "completed": false,
            "messages": [["execution_start", {}], ["execution_error", {"prompt_id": "p", "node_id": "1",
            "node_type": "LoadImage", "exception_type": "PIL.UnidentifiedImageError", "exception_message": "bad\n"}]]}}});
        match parse_history(&body, "p").unwrap().outcome {
            Outcome::Error(e) => {
                assert_eq!(e.node_type, "LoadImage");
                assert_eq!(e.exception_message, "bad");
            }
            other => panic!("{other:?}"),
        }
        let body: Value = serde_json::json!({"p": {"outputs": {}, "status": {"status_str": "error",
            "messages": [["execution_interrupted", {"prompt_id": "p"}]]}}});
        assert_eq!(parse_history(&body, "p").unwrap().outcome, Outcome::Interrupted);
    }

    #[test]
    fn queue_and_rejection() {
        let q = parse_queue(
            &serde_json::json!({"queue_running": [[1, "a", {}, {}, []]], "queue_pending": [[3, "c"], [2, "b"]]}),
        );
        assert!(q.contains("a") && q.contains("b") && q.contains("c") && !q.contains("d"));
        let (msg, details) = parse_rejection(
            r#"{"error":{"type":"prompt_outputs_failed_validation","message":"Prompt outputs failed validation","details":"","extra_info":{}},
            "node_errors":{"1":{"errors":[{"type":"value_smaller_than_min","message":"Value 0 smaller than min of 1","details":"width"}],"dependent_outputs":["2"],"class_type":"EmptyImage"}}}"#,
        );
        assert!(msg.contains("prompt_outputs_failed_validation"));
        assert_eq!(details["nodeErrors"][0]["nodeId"], "1");
        assert_eq!(details["nodeErrors"][0]["details"], "width");
    }

    #[test]
    fn submit_body_is_valid_json() {
        let b = submit_body(r#"{"1":{"class_type":"X","inputs":{}}}"#, "id\"x", "cid");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["prompt_id"], "id\"x");
        assert_eq!(v["prompt"]["1"]["class_type"], "X");
    }
}
