//! The simulator's in-memory state: the prompt queue (a Python-style binary heap),
//! history, the WebSocket registry, the exactly-once execution record and the armed
//! faults. Everything here is lost when the process stops ("total amnesia"), exactly like
//! ComfyUI; only files in `output/` and `input/` survive.

use super::SimConfig;
use super::heap;
use super::ojson::{OJson, py_json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// ComfyUI's `MAXIMUM_HISTORY_SIZE`.
pub const HISTORY_ENTRIES_MAX: usize = 10_000;
/// Capacity of each WebSocket's outgoing queue; a client that falls this far behind
/// misses messages (ComfyUI never replays either).
pub const WS_QUEUE_MESSAGES_MAX: usize = 4096;

/// One queue entry: ComfyUI's tuple `(number, prompt_id, prompt, extra_data, outputs)`.
#[derive(Debug, Clone)]
pub struct QueueItem {
    /// Priority (`number`): an int from the counter or the float given by the client.
    pub number: OJson,
    /// The prompt id (client-given or a uuid4).
    pub prompt_id: String,
    /// The validated (coerced) prompt.
    pub prompt: OJson,
    /// `extra_data` (with `client_id`), unfiltered.
    pub extra_data: OJson,
    /// Output node ids to execute.
    pub outputs: Vec<String>,
}

impl QueueItem {
    /// The 5-tuple as JSON, as in `/queue` and history.
    pub fn to_tuple(&self, extra_data: &OJson) -> OJson {
        OJson::Arr(vec![
            self.number.clone(),
            OJson::Str(self.prompt_id.clone()),
            self.prompt.clone(),
            extra_data.clone(),
            OJson::Arr(self.outputs.iter().cloned().map(OJson::Str).collect()),
        ])
    }

    /// Python tuple comparison on `(number, prompt_id)`.
    pub fn less(a: &QueueItem, b: &QueueItem) -> bool {
        let na = a.number.as_f64().unwrap_or(0.0);
        let nb = b.number.as_f64().unwrap_or(0.0);
        if na != nb {
            return na < nb;
        }
        a.prompt_id < b.prompt_id
    }

    /// The client id the job's events are routed to.
    pub fn client_id(&self) -> Option<String> {
        self.extra_data.get("client_id").and_then(OJson::as_str).map(str::to_string)
    }
}

/// A frame queued for one WebSocket.
#[derive(Debug, Clone)]
pub enum WsOut {
    /// A JSON text frame.
    Text(String),
    /// A binary frame (preview images).
    Binary(Vec<u8>),
}

/// A registered socket (`PromptServer.sockets[sid]`).
#[derive(Debug, Clone)]
pub struct SocketEntry {
    /// Connection id (distinguishes two sockets with the same sid).
    pub conn_id: u64,
    /// Outgoing queue of that connection.
    pub tx: mpsc::Sender<WsOut>,
    /// Client negotiated `supports_preview_metadata`.
    pub preview_metadata: bool,
}

/// The exactly-once record of one prompt id.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRecord {
    /// The prompt id.
    pub prompt_id: String,
    /// Accepted `POST /prompt` calls with this id.
    pub submitted: u64,
    /// Times execution actually started (`execution_start`).
    pub count: u64,
}

/// Armed faults (`GET/POST /sim/faults`, camelCase JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Delay added before answering every HTTP request except `/sim/*`.
    pub latency_ms: u64,
    /// The next N prompts fail at their first non-trivial node with `torch.OutOfMemoryError`.
    pub oom: u32,
    /// The next N prompts fail at their first non-trivial node with a `RuntimeError`.
    pub node_error: u32,
    /// The next N prompts hang in their first non-trivial node until interrupted.
    pub hang: u32,
    /// Drop every WebSocket this many ms into the next execution (one-shot).
    pub drop_ws_after_ms: Option<u64>,
    /// Exit the process (code 137) when the next execution starts.
    pub crash_on_next_execution: bool,
    /// The next N `POST /prompt` answer 500 without queueing the prompt.
    pub prompt_error: u32,
    /// The next N accepted `POST /prompt` queue the prompt, then never answer.
    pub prompt_hang: u32,
    /// The next N `POST /upload/image` answer 500 without storing the file.
    pub upload_error: u32,
    /// The next N `POST /upload/image` store the file, then never answer.
    pub upload_hang: u32,
    /// The next N `GET /history/{id}` answer 500.
    pub history_error: u32,
    /// The next N `GET /history/{id}` never answer.
    pub history_hang: u32,
    /// The next N `GET /history/{id}` that find the prompt report it with `outputs: {}`.
    pub history_no_outputs: u32,
    /// The next N `GET /view` of an existing file answer 500.
    pub view_error: u32,
    /// The next N `GET /view` of an existing file never answer.
    pub view_hang: u32,
    /// The next N `GET /view` of an existing file answer 200 with bytes that are not the file.
    pub view_garbage: u32,
    /// The next N `GET /view` of an existing file declare its length, send half, and close.
    pub view_truncated: u32,
    /// The next N `GET /queue` answer 200 with a body that is not ComfyUI's queue (in turn:
    /// an HTML error page, a JSON object of another shape, `queue_running` not a list,
    /// `queue_running` missing).
    pub queue_garbage: u32,
    /// The next N `GET /history/{id}` answer 200 with a body that is not ComfyUI's history
    /// (in turn: an HTML error page, a JSON object of another shape, a JSON list, the prompt
    /// mapped to a string).
    pub history_garbage: u32,
    /// The next N `GET /history/{id}` that find the prompt report it without `status`.
    pub history_no_status: u32,
    /// The next N `GET /history/{id}` that find the prompt report it with `status_str`
    /// `"running"` (neither success nor error).
    pub history_odd_status: u32,
}

impl Faults {
    /// Consume one count of an HTTP fault: whether it applies to this request.
    pub fn take(count: &mut u32) -> bool {
        if *count > 0 {
            *count -= 1;
            true
        } else {
            false
        }
    }
}

/// A fault picked for one prompt at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFault {
    /// Fail with a CUDA OOM error.
    Oom,
    /// Fail with a RuntimeError.
    NodeError,
    /// Hang until interrupted.
    Hang,
}

/// Mutable state behind one mutex (never held across an await).
#[derive(Default)]
pub struct Inner {
    /// `PromptServer.number`: incremented on every POST /prompt without `number`.
    pub number: i64,
    /// Pending items, in heap array order.
    pub pending: Vec<QueueItem>,
    /// The running item.
    pub running: Option<QueueItem>,
    /// History: (prompt_id, entry JSON) in insertion order.
    pub history: Vec<(String, String)>,
    /// Registered sockets by sid.
    pub sockets: HashMap<String, SocketEntry>,
    /// Kill switches of every live WebSocket connection (registered or not).
    pub connections: HashMap<u64, CancellationToken>,
    /// `server.client_id`: client of the current/last prompt.
    pub client_id: Option<String>,
    /// `server.last_node_id`: display id of the node executing now.
    pub last_node_id: Option<String>,
    /// The exactly-once record, in first-submission order.
    pub executions: Vec<ExecutionRecord>,
    /// Index into `executions`.
    pub execution_index: HashMap<String, usize>,
    /// Largest pending + running count seen.
    pub queue_depth_max: usize,
    /// Armed faults.
    pub faults: Faults,
    /// `POST /free {"free_memory": true}` seen; the worker drops its cache before the next prompt.
    pub free_memory_pending: bool,
    /// PreviewImage's random `_temp_xxxxx` prefix per node id (ComfyUI keeps node objects).
    pub preview_prefixes: HashMap<String, String>,
}

impl Inner {
    /// `queue_remaining`: pending + running.
    pub fn queue_remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }

    /// Track `maxQueueDepth`.
    pub fn note_depth(&mut self) {
        self.queue_depth_max = self.queue_depth_max.max(self.queue_remaining());
    }

    /// Send one message: to `sid` if given (and registered), else to every socket.
    pub fn send(&self, kind: &str, data: &Value, sid: Option<&str>) {
        let text = ws_text(kind, data);
        for s in self.targets(sid) {
            deliver(s, WsOut::Text(text.clone()));
        }
    }

    /// Like [`Inner::send`] with `data` already serialized.
    pub fn send_raw(&self, kind: &str, data: &str, sid: Option<&str>) {
        let text = format!("{{\"type\": {}, \"data\": {}}}", Value::String(kind.to_string()), data);
        for s in self.targets(sid) {
            deliver(s, WsOut::Text(text.clone()));
        }
    }

    /// A PNG preview frame: type 4 with metadata for clients that negotiated
    /// `supports_preview_metadata`, else legacy type 1 (format 2 = PNG).
    pub fn send_preview(&self, prompt_id: &str, node_id: &str, png: &[u8], sid: Option<&str>) {
        for s in self.targets(sid) {
            let mut frame = Vec::with_capacity(png.len() + 256);
            if s.preview_metadata {
                let meta = json!({
                    "node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                    "parent_node_id": null, "real_node_id": node_id, "image_type": "image/png",
                })
                .to_string();
                frame.extend_from_slice(&4u32.to_be_bytes());
                frame.extend_from_slice(&(meta.len() as u32).to_be_bytes());
                frame.extend_from_slice(meta.as_bytes());
            } else {
                frame.extend_from_slice(&1u32.to_be_bytes());
                frame.extend_from_slice(&2u32.to_be_bytes());
            }
            frame.extend_from_slice(png);
            deliver(s, WsOut::Binary(frame));
        }
    }

    fn targets(&self, sid: Option<&str>) -> Vec<&SocketEntry> {
        match sid {
            Some(sid) => self.sockets.get(sid).into_iter().collect(),
            None => self.sockets.values().collect(),
        }
    }

    /// `queue_updated()`: broadcast `status`.
    pub fn broadcast_status(&self) {
        let data = json!({"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}});
        self.send("status", &data, None);
    }

    /// `heapq.heappush` + status broadcast.
    pub fn push(&mut self, item: QueueItem) {
        heap::push(&mut self.pending, item, QueueItem::less);
        self.note_depth();
        self.broadcast_status();
    }

    /// Record an accepted submission.
    pub fn note_submitted(&mut self, prompt_id: &str) {
        let idx = self.record_index(prompt_id);
        self.executions[idx].submitted += 1;
    }

    /// Record an execution start.
    pub fn note_started(&mut self, prompt_id: &str) {
        let idx = self.record_index(prompt_id);
        self.executions[idx].count += 1;
    }

    fn record_index(&mut self, prompt_id: &str) -> usize {
        if let Some(&i) = self.execution_index.get(prompt_id) {
            return i;
        }
        self.executions.push(ExecutionRecord { prompt_id: prompt_id.to_string(), submitted: 0, count: 0 });
        let i = self.executions.len() - 1;
        self.execution_index.insert(prompt_id.to_string(), i);
        i
    }

    /// Python `history[prompt_id] = entry` (an existing key keeps its position), with the
    /// oldest entry evicted past the maximum.
    pub fn put_history(&mut self, prompt_id: &str, entry: String) {
        if let Some(slot) = self.history.iter_mut().find(|(k, _)| k == prompt_id) {
            slot.1 = entry;
            return;
        }
        if self.history.len() > HISTORY_ENTRIES_MAX {
            self.history.remove(0);
        }
        self.history.push((prompt_id.to_string(), entry));
    }

    /// Pick the fault for a prompt that starts now (consuming one count).
    pub fn take_prompt_fault(&mut self) -> Option<PromptFault> {
        let f = &mut self.faults;
        if f.oom > 0 {
            f.oom -= 1;
            Some(PromptFault::Oom)
        } else if f.node_error > 0 {
            f.node_error -= 1;
            Some(PromptFault::NodeError)
        } else if f.hang > 0 {
            f.hang -= 1;
            Some(PromptFault::Hang)
        } else {
            None
        }
    }

    /// Give back a fault that never got a node to hit (fully cached prompt).
    pub fn restore_prompt_fault(&mut self, fault: PromptFault) {
        match fault {
            PromptFault::Oom => self.faults.oom += 1,
            PromptFault::NodeError => self.faults.node_error += 1,
            PromptFault::Hang => self.faults.hang += 1,
        }
    }

    /// Close every WebSocket at once without a close frame.
    pub fn drop_all_websockets(&mut self) {
        for token in self.connections.values() {
            token.cancel();
        }
        self.connections.clear();
        self.sockets.clear();
    }
}

fn deliver(s: &SocketEntry, msg: WsOut) {
    if s.tx.try_send(msg).is_err() {
        tracing::warn!(conn_id = s.conn_id, "sim: websocket queue full or closed, message dropped");
    }
}

/// `{"type": kind, "data": data}` with `type` first, as aiohttp sends it.
pub fn ws_text(kind: &str, data: &Value) -> String {
    format!("{{\"type\": {}, \"data\": {}}}", py_json(kind), py_json(&message_data(kind, data)))
}

/// Message data with ComfyUI's top-level key order for `kind` (nested objects keep
/// alphabetical order, which matches ComfyUI for the nested dicts it sends).
pub fn message_data(kind: &str, data: &Value) -> OJson {
    let order: &[&str] = match kind {
        "status" => &["status", "sid"],
        "execution_cached" => &["nodes", "prompt_id", "timestamp"],
        "executing" => &["node", "display_node", "prompt_id"],
        "executed" => &["node", "display_node", "output", "prompt_id"],
        "progress" => &["value", "max", "prompt_id", "node"],
        "execution_interrupted" => &["prompt_id", "node_id", "node_type", "executed", "timestamp"],
        "execution_error" => &[
            "prompt_id",
            "node_id",
            "node_type",
            "executed",
            "exception_message",
            "exception_type",
            "traceback",
            "current_inputs",
            "current_outputs",
            "timestamp",
        ],
        "feature_flags" => &["supports_preview_metadata", "max_upload_size"],
        _ => &["prompt_id", "timestamp"],
    };
    match data {
        Value::Object(o) => {
            let mut fields: Vec<(String, OJson)> = o.iter().map(|(k, v)| (k.clone(), OJson::from_value(v))).collect();
            fields.sort_by_key(|(k, _)| (order.iter().position(|r| r == k).unwrap_or(usize::MAX), k.clone()));
            OJson::Obj(fields)
        }
        other => OJson::from_value(other),
    }
}

/// Data directories.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `input/`
    pub input: PathBuf,
    /// `output/`
    pub output: PathBuf,
    /// `temp/` (wiped at start)
    pub temp: PathBuf,
}

impl Dirs {
    /// The directory for `input` / `output` / `temp`.
    pub fn by_type(&self, kind: &str) -> Option<&PathBuf> {
        match kind {
            "input" => Some(&self.input),
            "output" => Some(&self.output),
            "temp" => Some(&self.temp),
            _ => None,
        }
    }
}

/// Everything the HTTP handlers, WebSocket tasks and the worker share.
pub struct Shared {
    /// Configuration.
    pub config: SimConfig,
    /// Data directories.
    pub dirs: Dirs,
    inner: Mutex<Inner>,
    /// Wakes the worker when an item is queued.
    pub work: Notify,
    /// The global interrupt flag (`nodes.interrupt_processing()`).
    pub interrupted: AtomicBool,
    /// Wakes a node sleeping between progress ticks when the flag is set.
    pub interrupt_wake: Notify,
    /// Stops everything.
    pub shutdown: CancellationToken,
    /// Connection id source.
    pub next_conn_id: AtomicU64,
    /// `GET /object_info` requests answered (`GET /sim/requests`): how often a client made
    /// this server build its node definitions.
    pub object_info_reads: AtomicU64,
}

impl Shared {
    /// New state (empty queue, history, sockets; faults from the config).
    pub fn new(config: SimConfig, dirs: Dirs, shutdown: CancellationToken) -> Arc<Shared> {
        let inner = Inner { faults: config.faults.clone(), ..Inner::default() };
        Arc::new(Shared {
            config,
            dirs,
            inner: Mutex::new(inner),
            work: Notify::new(),
            interrupted: AtomicBool::new(false),
            interrupt_wake: Notify::new(),
            shutdown,
            next_conn_id: AtomicU64::new(1),
            object_info_reads: AtomicU64::new(0),
        })
    }

    /// Lock the state (a poisoned lock is recovered: the state stays usable).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the interrupt flag and wake sleeping nodes.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.interrupt_wake.notify_waiters();
    }

    /// Is the interrupt flag set?
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}
