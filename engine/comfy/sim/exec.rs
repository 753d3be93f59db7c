//! The single prompt worker (ComfyUI's `prompt_worker` + `PromptExecutor`): takes items
//! from the heap one at a time, walks the graph in ComfyUI's order (`ExecutionList` with
//! `ux_friendly_pick_node`), keeps the classic one-prompt output cache, emits the WebSocket
//! messages in the captured order, writes history, and applies armed faults.
//!
//! Native nodes (EmptyImage, LoadImage, ImageInvert, ImageScale, ImageScaleBy, SaveImage,
//! PreviewImage, SaveImageWebsocket) produce real pixels; every other class sleeps
//! `node_delay_ms` in progress ticks and produces plausible outputs by type.

use super::defs::{self, NodeDef};
use super::files;
use super::image::{self, Img, Mask};
use super::ojson::{OJson, py_json};
use super::state::{PromptFault, QueueItem, Shared};
use super::validate::as_link;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Keys ComfyUI strips from `extra_data` before storing history.
const SENSITIVE_EXTRA_DATA_KEYS: [&str; 2] = ["auth_token_comfy_org", "api_key_comfy_org"];
/// Progress ticks of a model node without a `steps` input.
const DEFAULT_PROGRESS_STEPS: u64 = 10;
/// Tick of a hanging node (fault `hang`).
const HANG_TICK_MS: u64 = 100;
/// Largest image batch a native node allocates (bytes) before failing like torch on CPU.
const IMAGE_BYTES_MAX: u64 = 2 << 30;

/// A node output value.
#[derive(Debug, Clone)]
pub enum Val {
    /// `IMAGE`
    Image(Arc<Img>),
    /// `MASK`
    Mask(Arc<Mask>),
    /// `LATENT`: pixel size, batch and a content seed.
    Latent {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Batch size.
        batch: u32,
        /// Content seed (from the producing node's signature).
        seed: u64,
    },
    /// A widget value or primitive output.
    Lit(OJson),
    /// Anything else (MODEL, CLIP, VAE, CONDITIONING, UPSCALE_MODEL, ...).
    Opaque {
        /// The type name.
        kind: String,
        /// Content seed.
        seed: u64,
        /// Upscale factor for UPSCALE_MODEL.
        scale: u32,
    },
}

impl Val {
    /// `str()` of the value as it appears in `current_inputs`.
    fn repr(&self) -> Value {
        match self {
            Val::Lit(v) => v.to_value(),
            Val::Image(i) => {
                Value::String(format!("tensor of shape [{}, {}, {}, 3]", i.frames.len(), i.height, i.width))
            }
            Val::Mask(m) => Value::String(format!("tensor of shape [{}, {}, {}]", m.frames.len(), m.height, m.width)),
            Val::Latent { width, height, batch, .. } => {
                Value::String(format!("{{'samples': tensor of shape [{batch}, 4, {}, {}]}}", height / 8, width / 8))
            }
            Val::Opaque { kind, seed, .. } => {
                Value::String(format!("<{kind} object at 0x{:012x}>", seed & 0xffff_ffff_ffff))
            }
        }
    }
}

struct CacheEntry {
    outputs: Arc<Vec<Val>>,
    ui: Option<Value>,
}

/// Why a node stopped.
enum Failure {
    Interrupted,
    Error { exception_type: String, message: String, traceback: Vec<String> },
}

fn error(exception_type: &str, message: impl Into<String>) -> Failure {
    Failure::Error {
        exception_type: exception_type.to_string(),
        // ComfyUI formats "{ex}\n{tips}".
        message: format!("{}\n", message.into()),
        traceback: traceback("nodes.py", "execute"),
    }
}

fn traceback(file: &str, func: &str) -> Vec<String> {
    vec![
        "  File \"/opt/ComfyUI/execution.py\", line 496, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n".into(),
        "  File \"/opt/ComfyUI/execution.py\", line 315, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n".into(),
        "  File \"/opt/ComfyUI/execution.py\", line 289, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n".into(),
        "  File \"/opt/ComfyUI/execution.py\", line 277, in process_inputs\n    result = f(**inputs)\n             ^^^^^^^^^^^\n".into(),
        format!("  File \"/opt/ComfyUI/{file}\", line 1, in {func}\n    (comfyui-gateway simulator)\n"),
    ]
}

fn oom_failure() -> Failure {
    Failure::Error {
        exception_type: "torch.OutOfMemoryError".into(),
        message: "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 23.64 GiB of which 1.19 GiB is free. Of the allocated memory 20.89 GiB is allocated by PyTorch, and 1.02 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\nThis error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have accidentally set the batch_size to a large number.".into(),
        traceback: traceback("comfy/model_management.py", "load_models_gpu"),
    }
}

fn node_error_failure() -> Failure {
    error("RuntimeError", "Simulated node failure (comfyui-gateway sim fault nodeError)")
}

/// Classes executed for real.
fn is_native(class: &str) -> bool {
    matches!(
        class,
        "EmptyImage"
            | "LoadImage"
            | "ImageInvert"
            | "ImageScale"
            | "ImageScaleBy"
            | "SaveImage"
            | "PreviewImage"
            | "SaveImageWebsocket"
            | "SaveLatent"
    )
}

/// Per-prompt progress registry (`ProgressRegistry`): nodes in first-touch order.
#[derive(Default)]
struct Progress {
    nodes: Vec<(String, Value, Value, &'static str)>,
}

impl Progress {
    fn entry(&mut self, id: &str) -> &mut (String, Value, Value, &'static str) {
        if let Some(i) = self.nodes.iter().position(|n| n.0 == id) {
            &mut self.nodes[i]
        } else {
            self.nodes.push((id.to_string(), json!(0), json!(1), "pending"));
            let last = self.nodes.len() - 1;
            &mut self.nodes[last]
        }
    }

    fn to_json(&self, prompt_id: &str) -> String {
        let mut nodes = String::from("{");
        let mut first = true;
        for (id, value, max, state) in &self.nodes {
            if *state == "pending" {
                continue;
            }
            if !first {
                nodes.push_str(", ");
            }
            first = false;
            let entry = OJson::Obj(vec![
                ("value".into(), OJson::from_value(value)),
                ("max".into(), OJson::from_value(max)),
                ("state".into(), OJson::Str((*state).to_string())),
                ("node_id".into(), OJson::Str(id.clone())),
                ("prompt_id".into(), OJson::Str(prompt_id.to_string())),
                ("display_node_id".into(), OJson::Str(id.clone())),
                ("parent_node_id".into(), OJson::Null),
                ("real_node_id".into(), OJson::Str(id.clone())),
            ]);
            nodes.push_str(&format!("{}: {}", py_json(id), py_json(&entry)));
        }
        nodes.push('}');
        format!("{{\"prompt_id\": {}, \"nodes\": {}}}", py_json(prompt_id), nodes)
    }
}

/// State of one running prompt.
struct Run<'a> {
    shared: &'a Arc<Shared>,
    prompt_id: String,
    client: Option<String>,
    messages: Vec<(String, Value)>,
    progress: Progress,
}

impl Run<'_> {
    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    /// `PromptExecutor.add_message`.
    fn add_message(&mut self, event: &str, mut data: Value, broadcast: bool) {
        if let Value::Object(m) = &mut data {
            m.insert("timestamp".into(), json!(Self::now_ms()));
        }
        self.messages.push((event.to_string(), data.clone()));
        if self.client.is_some() || broadcast {
            self.shared.lock().send(event, &data, self.client.as_deref());
        }
    }

    /// Send to the client only (`executing`, `executed`), never broadcast.
    fn to_client(&self, event: &str, data: Value) {
        if let Some(c) = &self.client {
            self.shared.lock().send(event, &data, Some(c));
        }
    }

    fn send_progress_state(&self) {
        let text = self.progress.to_json(&self.prompt_id);
        self.shared.lock().send_raw("progress_state", &text, self.client.as_deref());
    }

    fn start_progress(&mut self, id: &str) {
        let e = self.progress.entry(id);
        e.1 = json!(0.0);
        e.2 = json!(1.0);
        e.3 = "running";
        self.send_progress_state();
    }

    /// Mark node `id` running at `value` of `max` and broadcast the progress state.
    fn set_running(&mut self, id: &str, value: u64, max: u64) {
        let e = self.progress.entry(id);
        e.1 = json!(value);
        e.2 = json!(max);
        e.3 = "running";
        self.send_progress_state();
    }

    fn update_progress(&mut self, id: &str, value: u64, max: u64) {
        self.set_running(id, value, max);
        let data = json!({"value": value, "max": max, "prompt_id": self.prompt_id, "node": id});
        self.shared.lock().send("progress", &data, self.client.as_deref());
    }

    fn finish_progress(&mut self, id: &str) {
        let e = self.progress.entry(id);
        e.1 = e.2.clone();
        e.3 = "finished";
        self.send_progress_state();
    }

    /// Sleep `tick`, returning `Err(Interrupted)` if the interrupt flag is (or gets) set.
    async fn sleep_checked(&self, tick: Duration) -> Result<(), Failure> {
        let notified = self.shared.interrupt_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.shared.is_interrupted() {
            return Err(Failure::Interrupted);
        }
        if !tick.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = &mut notified => {}
                _ = self.shared.shutdown.cancelled() => return Err(Failure::Interrupted),
            }
        }
        if self.shared.is_interrupted() {
            return Err(Failure::Interrupted);
        }
        Ok(())
    }
}

/// ComfyUI's `ExecutionList` (staging + `ux_friendly_pick_node`).
struct ExecList {
    pending: Vec<String>,
    block_count: HashMap<String, usize>,
    blocking: HashMap<String, Vec<String>>,
}

impl ExecList {
    fn new() -> ExecList {
        ExecList { pending: Vec::new(), block_count: HashMap::new(), blocking: HashMap::new() }
    }

    fn add_node(&mut self, id: &str, prompt: &OJson, cached: &dyn Fn(&str) -> bool) {
        let mut stack = vec![id.to_string()];
        let mut links = Vec::new();
        while let Some(uid) = stack.pop() {
            if self.pending.contains(&uid) {
                continue;
            }
            self.pending.push(uid.clone());
            self.block_count.insert(uid.clone(), 0);
            self.blocking.insert(uid.clone(), Vec::new());
            let Some(inputs) = prompt.get(&uid).and_then(|n| n.get("inputs")).and_then(OJson::as_obj) else {
                continue;
            };
            for (_, v) in inputs {
                if let Some((from, _)) = as_link(v) {
                    if !cached(&from) {
                        stack.push(from.clone());
                    }
                    links.push((from, uid.clone()));
                }
            }
        }
        for (from, to) in links {
            if cached(&from) {
                continue;
            }
            self.add_node(&from, prompt, cached);
            let blocked = self.blocking.entry(from).or_default();
            if !blocked.contains(&to) {
                blocked.push(to.clone());
                *self.block_count.entry(to).or_default() += 1;
            }
        }
    }

    fn pick(&self, prompt: &OJson) -> Option<String> {
        let ready: Vec<&String> =
            self.pending.iter().filter(|id| self.block_count.get(*id).copied().unwrap_or(0) == 0).collect();
        let is_output = |id: &str| {
            prompt
                .get(id)
                .and_then(|n| n.get("class_type"))
                .and_then(OJson::as_str)
                .and_then(defs::class)
                .is_some_and(|d| d.output_node)
        };
        let blocks = |id: &str| self.blocking.get(id).cloned().unwrap_or_default();
        if let Some(id) = ready.iter().find(|id| is_output(id)) {
            return Some((*id).clone());
        }
        if let Some(id) = ready.iter().find(|id| blocks(id).iter().any(|b| is_output(b))) {
            return Some((*id).clone());
        }
        if let Some(id) = ready.iter().find(|id| blocks(id).iter().any(|b| blocks(b).iter().any(|c| is_output(c)))) {
            return Some((*id).clone());
        }
        ready.first().map(|id| (*id).clone())
    }

    fn complete(&mut self, id: &str) {
        self.pending.retain(|p| p != id);
        for b in self.blocking.remove(id).unwrap_or_default() {
            if let Some(c) = self.block_count.get_mut(&b) {
                *c = c.saturating_sub(1);
            }
        }
    }
}

fn class_of(prompt: &OJson, id: &str) -> String {
    prompt.get(id).and_then(|n| n.get("class_type")).and_then(OJson::as_str).unwrap_or("").to_string()
}

fn hash64(s: &str) -> u64 {
    let h = blake3::hash(s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Cache keys (`CacheKeySetInputSignature`): class, IS_CHANGED and inputs, with links
/// replaced by the source's signature. Returns node id → key.
fn signatures(prompt: &OJson, shared: &Shared) -> HashMap<String, String> {
    fn sig(
        id: &str,
        prompt: &OJson,
        shared: &Shared,
        memo: &mut HashMap<String, String>,
        visiting: &mut HashSet<String>,
    ) -> String {
        if let Some(s) = memo.get(id) {
            return s.clone();
        }
        if !visiting.insert(id.to_string()) {
            return format!("cycle:{id}");
        }
        let class = class_of(prompt, id);
        let mut parts = vec![Value::String(class.clone())];
        let is_changed = match class.as_str() {
            "LoadImage" | "LoadImageMask" => prompt
                .get(id)
                .and_then(|n| n.get("inputs"))
                .and_then(|i| i.get("image"))
                .and_then(OJson::as_str)
                .and_then(|name| files::annotated_input_path(&shared.dirs, name))
                .and_then(|p| std::fs::read(p).ok())
                .map(|b| blake3::hash(&b).to_hex().to_string())
                .unwrap_or_default(),
            // IS_CHANGED = time.time(): never cached.
            "SaveImageWebsocket" => uuid::Uuid::new_v4().to_string(),
            _ => String::new(),
        };
        parts.push(Value::String(is_changed));
        let mut inputs: Vec<(String, Value)> = Vec::new();
        if let Some(obj) = prompt.get(id).and_then(|n| n.get("inputs")).and_then(OJson::as_obj) {
            for (k, v) in obj {
                let rendered = match as_link(v) {
                    Some((from, slot)) => {
                        Value::String(format!("link:{}:{slot}", sig(&from, prompt, shared, memo, visiting)))
                    }
                    None => v.to_value(),
                };
                inputs.push((k.clone(), rendered));
            }
        }
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        parts.push(json!(inputs));
        let s = blake3::hash(Value::Array(parts).to_string().as_bytes()).to_hex().to_string();
        visiting.remove(id);
        memo.insert(id.to_string(), s.clone());
        s
    }
    let mut memo = HashMap::new();
    let mut visiting = HashSet::new();
    if let Some(nodes) = prompt.as_obj() {
        for (id, _) in nodes {
            sig(id, prompt, shared, &mut memo, &mut visiting);
        }
    }
    memo
}

/// The worker: owns the output cache, runs one prompt at a time until shutdown.
pub async fn worker(shared: Arc<Shared>) {
    let mut cache: HashMap<String, CacheEntry> = HashMap::new();
    loop {
        let item = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            item = next_item(&shared) => item,
        };
        run_prompt(&shared, &mut cache, item).await;
        if shared.shutdown.is_cancelled() {
            return;
        }
    }
}

async fn next_item(shared: &Arc<Shared>) -> QueueItem {
    loop {
        {
            let mut inner = shared.lock();
            if let Some(item) = super::heap::pop(&mut inner.pending, QueueItem::less) {
                if inner.faults.crash_on_next_execution {
                    tracing::warn!("sim: fault crashOnNextExecution: exiting with code 137");
                    std::process::exit(137);
                }
                inner.running = Some(item.clone());
                inner.note_depth();
                inner.broadcast_status();
                return item;
            }
        }
        shared.work.notified().await;
    }
}

async fn run_prompt(shared: &Arc<Shared>, cache: &mut HashMap<String, CacheEntry>, item: QueueItem) {
    shared.interrupted.store(false, std::sync::atomic::Ordering::SeqCst);
    let client = item.client_id();
    let fault = {
        let mut inner = shared.lock();
        inner.client_id = client.clone();
        if inner.free_memory_pending {
            cache.clear();
            inner.free_memory_pending = false;
        }
        if let Some(ms) = inner.faults.drop_ws_after_ms.take() {
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => s.lock().drop_all_websockets(),
                    _ = s.shutdown.cancelled() => {}
                }
            });
        }
        inner.note_started(&item.prompt_id);
        inner.take_prompt_fault()
    };
    let mut run = Run {
        shared,
        prompt_id: item.prompt_id.clone(),
        client: client.clone(),
        messages: Vec::new(),
        progress: Progress::default(),
    };
    let pid = item.prompt_id.clone();
    run.add_message("execution_start", json!({"prompt_id": pid}), false);

    let prompt = &item.prompt;
    let sigs = signatures(prompt, shared);
    let keep: HashSet<&String> = sigs.values().collect();
    cache.retain(|k, _| keep.contains(k));
    let node_ids: Vec<String> = prompt.as_obj().map(|o| o.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
    let is_cached = |id: &str| sigs.get(id).is_some_and(|s| cache.contains_key(s));
    let cached_nodes: Vec<&String> = node_ids.iter().filter(|id| is_cached(id)).collect();
    run.add_message("execution_cached", json!({"nodes": cached_nodes, "prompt_id": pid}), false);

    let mut list = ExecList::new();
    for o in &item.outputs {
        list.add_node(o, prompt, &is_cached);
    }
    let has_model_node = list.pending.iter().any(|id| !is_cached(id) && !is_native(&class_of(prompt, id)));

    let mut outputs: HashMap<String, Arc<Vec<Val>>> = HashMap::new();
    let mut ui_outputs: Vec<(String, Value)> = Vec::new();
    let mut executed: Vec<String> = Vec::new();
    let mut failure: Option<(String, Failure)> = None;
    let mut fault_used = false;

    while let Some(id) = list.pick(prompt) {
        let class = class_of(prompt, &id);
        let sig = sigs.get(&id).cloned().unwrap_or_default();
        if let Some(entry) = cache.get(&sig) {
            run.to_client("executed", json!({"node": id, "display_node": id, "output": entry.ui, "prompt_id": pid}));
            if let Some(ui) = &entry.ui {
                ui_outputs.push((id.clone(), ui.clone()));
            }
            outputs.insert(id.clone(), entry.outputs.clone());
            let e = run.progress.entry(&id);
            e.1 = e.2.clone();
            e.3 = "finished";
            run.send_progress_state();
            list.complete(&id);
            continue;
        }
        run.start_progress(&id);
        if client.is_some() {
            shared.lock().last_node_id = Some(id.clone());
        }
        run.to_client("executing", json!({"node": id, "display_node": id, "prompt_id": pid}));
        if shared.is_interrupted() {
            failure = Some((id, Failure::Interrupted));
            break;
        }
        let inputs = resolve_inputs(prompt, &id, &outputs, cache, &sigs);
        let this_fault = match fault {
            Some(f) if !fault_used && (!has_model_node || !is_native(&class)) => {
                fault_used = true;
                Some(f)
            }
            _ => None,
        };
        let result = match this_fault {
            Some(PromptFault::Oom) => Err(oom_failure()),
            Some(PromptFault::NodeError) => Err(node_error_failure()),
            Some(PromptFault::Hang) => hang(&mut run, &id).await,
            None => execute_node(&mut run, &item, &id, &class, &inputs, hash64(&sig)).await,
        };
        match result {
            Err(f) => {
                let current: Value = inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), json!([v.repr()])))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                failure = Some((id.clone(), f));
                if let Some((_, Failure::Error { .. })) = &failure {
                    run.messages.push(("__inputs".into(), current));
                }
                break;
            }
            Ok((vals, ui)) => {
                let vals = Arc::new(vals);
                cache.insert(sig, CacheEntry { outputs: vals.clone(), ui: ui.clone() });
                outputs.insert(id.clone(), vals);
                if let Some(ui) = ui {
                    run.to_client("executed", json!({"node": id, "display_node": id, "output": ui, "prompt_id": pid}));
                    ui_outputs.push((id.clone(), ui));
                }
                executed.push(id.clone());
                run.finish_progress(&id);
                list.complete(&id);
            }
        }
    }
    // A prompt that finished without ever reaching a node the fault could hit (fully
    // cached) gives the fault back; an interrupted or failed one has consumed it.
    if let Some(f) = fault
        && !fault_used
        && failure.is_none()
    {
        shared.lock().restore_prompt_fault(f);
    }

    let current_inputs = match run.messages.last() {
        Some((k, _)) if k == "__inputs" => run.messages.pop().map(|(_, v)| v),
        _ => None,
    };
    let success = failure.is_none();
    match failure {
        None => run.add_message("execution_success", json!({"prompt_id": pid}), false),
        Some((node, Failure::Interrupted)) => run.add_message(
            "execution_interrupted",
            json!({"prompt_id": pid, "node_id": node, "node_type": class_of(prompt, &node), "executed": executed}),
            true,
        ),
        Some((node, Failure::Error { exception_type, message, traceback })) => run.add_message(
            "execution_error",
            json!({
                "prompt_id": pid, "node_id": node, "node_type": class_of(prompt, &node),
                "executed": executed, "exception_message": message, "exception_type": exception_type,
                "traceback": traceback, "current_inputs": current_inputs.unwrap_or_else(|| json!({})),
                "current_outputs": node_ids,
            }),
            false,
        ),
    }

    // History entry, in ComfyUI's key order.
    let mut extra = item.extra_data.clone();
    for k in SENSITIVE_EXTRA_DATA_KEYS {
        extra.remove(k);
    }
    let outputs_json = OJson::Obj(ui_outputs.iter().map(|(k, v)| (k.clone(), OJson::from_value(v))).collect());
    let meta_json = OJson::Obj(
        ui_outputs
            .iter()
            .map(|(k, _)| {
                (
                    k.clone(),
                    OJson::Obj(vec![
                        ("node_id".into(), OJson::Str(k.clone())),
                        ("display_node".into(), OJson::Str(k.clone())),
                        ("parent_node".into(), OJson::Null),
                        ("real_node_id".into(), OJson::Str(k.clone())),
                    ]),
                )
            })
            .collect(),
    );
    let messages = OJson::Arr(
        run.messages
            .iter()
            .map(|(e, d)| OJson::Arr(vec![OJson::Str(e.clone()), super::state::message_data(e, d)]))
            .collect(),
    );
    let entry = OJson::Obj(vec![
        ("prompt".into(), item.to_tuple(&extra)),
        ("outputs".into(), outputs_json),
        (
            "status".into(),
            OJson::Obj(vec![
                ("status_str".into(), OJson::Str(if success { "success" } else { "error" }.into())),
                ("completed".into(), OJson::Bool(success)),
                ("messages".into(), messages),
            ]),
        ),
        ("meta".into(), meta_json),
    ]);
    let mut inner = shared.lock();
    inner.last_node_id = None;
    inner.running = None;
    inner.put_history(&pid, entry.to_json());
    inner.broadcast_status();
    if let Some(c) = &client {
        inner.send("executing", &json!({"node": null, "prompt_id": pid}), Some(c));
    }
}

fn resolve_inputs(
    prompt: &OJson,
    id: &str,
    outputs: &HashMap<String, Arc<Vec<Val>>>,
    cache: &HashMap<String, CacheEntry>,
    sigs: &HashMap<String, String>,
) -> Vec<(String, Val)> {
    let mut out = Vec::new();
    let Some(inputs) = prompt.get(id).and_then(|n| n.get("inputs")).and_then(OJson::as_obj) else {
        return out;
    };
    for (name, v) in inputs {
        let val = match as_link(v) {
            Some((from, slot)) => outputs
                .get(&from)
                .cloned()
                .or_else(|| sigs.get(&from).and_then(|s| cache.get(s)).map(|e| e.outputs.clone()))
                .and_then(|o| o.get(slot).cloned())
                .unwrap_or(Val::Lit(OJson::Null)),
            None => Val::Lit(v.get("__value__").cloned().unwrap_or_else(|| v.clone())),
        };
        out.push((name.clone(), val));
    }
    out
}

fn lit<'a>(inputs: &'a [(String, Val)], name: &str) -> Option<&'a OJson> {
    inputs.iter().find(|(k, _)| k == name).and_then(|(_, v)| match v {
        Val::Lit(l) => Some(l),
        _ => None,
    })
}

fn lit_u32(inputs: &[(String, Val)], name: &str) -> Option<u32> {
    lit(inputs, name).and_then(OJson::as_f64).map(|f| f.clamp(0.0, f64::from(u32::MAX)) as u32)
}

fn image_in(inputs: &[(String, Val)], name: &str) -> Option<Arc<Img>> {
    inputs.iter().find(|(k, _)| k == name).and_then(|(_, v)| match v {
        Val::Image(i) => Some(i.clone()),
        _ => None,
    })
}

async fn hang(run: &mut Run<'_>, id: &str) -> Result<(Vec<Val>, Option<Value>), Failure> {
    let mut i: u64 = 0;
    loop {
        run.sleep_checked(Duration::from_millis(HANG_TICK_MS)).await?;
        i += 1;
        run.update_progress(id, i % 100, 100);
    }
}

async fn execute_node(
    run: &mut Run<'_>,
    item: &QueueItem,
    id: &str,
    class: &str,
    inputs: &[(String, Val)],
    seed: u64,
) -> Result<(Vec<Val>, Option<Value>), Failure> {
    let Some(def) = defs::class(class) else {
        return Err(error("KeyError", format!("'{class}'")));
    };
    if class == "SaveImageWebsocket" {
        return save_image_websocket(run, id, inputs);
    }
    if is_native(class) {
        let shared = run.shared.clone();
        let inputs = inputs.to_vec();
        let class = class.to_string();
        let prompt_json = item.prompt.to_json();
        let extra = item.extra_data.get("extra_pnginfo").cloned();
        let id = id.to_string();
        return tokio::task::spawn_blocking(move || {
            native(&shared, &id, &class, &inputs, &prompt_json, extra.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(error("RuntimeError", format!("node panicked: {e}"))));
    }
    // A model node: progress ticks over node_delay_ms, interruptible.
    let steps =
        lit(inputs, "steps").and_then(OJson::as_f64).map(|s| s.max(1.0) as u64).unwrap_or(DEFAULT_PROGRESS_STEPS);
    let tick = Duration::from_micros(run.shared.config.node_delay_ms.saturating_mul(1000) / steps.max(1));
    for step in 1..=steps {
        run.sleep_checked(tick).await?;
        run.update_progress(id, step, steps);
    }
    let def = def.clone();
    let inputs = inputs.to_vec();
    let vals = tokio::task::spawn_blocking(move || synth_outputs(&def, &inputs, seed))
        .await
        .unwrap_or_else(|e| Err(error("RuntimeError", format!("node panicked: {e}"))))?;
    Ok((vals, None))
}

/// Plausible outputs of a model node, by declared output type.
fn synth_outputs(def: &NodeDef, inputs: &[(String, Val)], seed: u64) -> Result<Vec<Val>, Failure> {
    let img = inputs.iter().find_map(|(_, v)| match v {
        Val::Image(i) => Some(i.clone()),
        _ => None,
    });
    let latent = inputs.iter().find_map(|(_, v)| match v {
        Val::Latent { width, height, batch, seed } => Some((*width, *height, *batch, *seed)),
        _ => None,
    });
    let model_scale = inputs.iter().find_map(|(_, v)| match v {
        Val::Opaque { kind, scale, .. } if kind == "UPSCALE_MODEL" => Some(*scale),
        _ => None,
    });
    let width = lit_u32(inputs, "width");
    let height = lit_u32(inputs, "height");
    let batch = lit_u32(inputs, "batch_size").unwrap_or(1).max(1);
    let scale_by = lit(inputs, "scale_by").and_then(OJson::as_f64);
    let latent_size = || -> (u32, u32, u32) {
        if let Some((w, h, b, _)) = latent {
            let (mut w, mut h) = (w, h);
            if let Some(s) = scale_by {
                w = ((f64::from(w) * s).round() as u32).max(8);
                h = ((f64::from(h) * s).round() as u32).max(8);
            }
            if def.name == "LatentUpscale" {
                match (width, height) {
                    (Some(0), Some(0)) | (None, _) | (_, None) => {}
                    (Some(0), Some(nh)) => {
                        w = (u64::from(w) * u64::from(nh) / u64::from(h.max(1))) as u32;
                        h = nh;
                    }
                    (Some(nw), Some(0)) => {
                        h = (u64::from(h) * u64::from(nw) / u64::from(w.max(1))) as u32;
                        w = nw;
                    }
                    (Some(nw), Some(nh)) => {
                        w = nw;
                        h = nh;
                    }
                }
            }
            (w, h, b)
        } else if let Some(i) = &img {
            (i.width, i.height, i.frames.len() as u32)
        } else {
            (width.unwrap_or(512).max(8), height.unwrap_or(512).max(8), batch)
        }
    };
    def.outputs
        .iter()
        .enumerate()
        .map(|(slot, kind)| {
            let slot_seed = seed.wrapping_add(slot as u64);
            Ok(match kind.as_str() {
                "IMAGE" => {
                    if let Some((_, _, _, latent_seed)) = latent {
                        let (w, h, b) = latent_size();
                        check_alloc(w, h, b)?;
                        let s = slot_seed ^ latent_seed.rotate_left(17);
                        Val::Image(Arc::new(Img::synthetic(w, h, b, s)))
                    } else if let Some(i) = &img {
                        match model_scale {
                            Some(s) => {
                                let (w, h) = (i.width.saturating_mul(s), i.height.saturating_mul(s));
                                check_alloc(w, h, i.frames.len() as u32)?;
                                Val::Image(Arc::new(i.resize(w, h)))
                            }
                            None => Val::Image(i.clone()),
                        }
                    } else {
                        let (w, h, b) = latent_size();
                        check_alloc(w, h, b)?;
                        Val::Image(Arc::new(Img::synthetic(w, h, b, slot_seed)))
                    }
                }
                "LATENT" => {
                    let (w, h, b) = latent_size();
                    Val::Latent { width: w, height: h, batch: b, seed: slot_seed }
                }
                "MASK" => match &img {
                    Some(i) => Val::Mask(Arc::new(Mask {
                        width: i.width,
                        height: i.height,
                        frames: vec![vec![0; (i.width * i.height) as usize]],
                    })),
                    None => Val::Mask(Arc::new(Mask::empty())),
                },
                "INT" => Val::Lit(OJson::Num(0.into())),
                "FLOAT" => Val::Lit(OJson::Num(serde_json::Number::from_f64(0.0).unwrap_or_else(|| 0.into()))),
                "STRING" => Val::Lit(OJson::Str(String::new())),
                "BOOLEAN" => Val::Lit(OJson::Bool(false)),
                other => Val::Opaque { kind: other.to_string(), seed: slot_seed, scale: upscale_factor(inputs) },
            })
        })
        .collect()
}

/// Upscale factor guessed from a model file name (`RealESRGAN_x2.pth` → 2, default 4).
fn upscale_factor(inputs: &[(String, Val)]) -> u32 {
    let name = lit(inputs, "model_name").and_then(OJson::as_str).unwrap_or("").to_ascii_lowercase();
    for f in [8, 4, 3, 2, 1] {
        if name.contains(&format!("x{f}")) || name.contains(&format!("{f}x")) {
            return f;
        }
    }
    4
}

fn check_alloc(width: u32, height: u32, batch: u32) -> Result<(), Failure> {
    let bytes = u64::from(width) * u64::from(height) * u64::from(batch) * 4;
    if bytes > IMAGE_BYTES_MAX {
        return Err(error(
            "RuntimeError",
            format!(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate {bytes} bytes. Error code 12 (Cannot allocate memory)"
            ),
        ));
    }
    Ok(())
}

/// The native nodes (run on a blocking thread).
fn native(
    shared: &Shared,
    id: &str,
    class: &str,
    inputs: &[(String, Val)],
    prompt_json: &str,
    extra_pnginfo: Option<&OJson>,
) -> Result<(Vec<Val>, Option<Value>), Failure> {
    let need_image = |name: &str| {
        image_in(inputs, name).ok_or_else(|| {
            error("AttributeError", format!("'NoneType' object has no attribute 'shape' (input '{name}')"))
        })
    };
    match class {
        "EmptyImage" => {
            let w = lit_u32(inputs, "width").unwrap_or(512);
            let h = lit_u32(inputs, "height").unwrap_or(512);
            let b = lit_u32(inputs, "batch_size").unwrap_or(1);
            check_alloc(w, h, b)?;
            let color = lit(inputs, "color").and_then(OJson::as_i64).unwrap_or(0) as u32;
            Ok((vec![Val::Image(Arc::new(Img::solid(w, h, b, color)))], None))
        }
        "LoadImage" => {
            let name = lit(inputs, "image").and_then(OJson::as_str).unwrap_or("");
            let path = files::annotated_input_path(&shared.dirs, name)
                .ok_or_else(|| error("FileNotFoundError", format!("No such file: '{name}'")))?;
            let bytes = std::fs::read(&path).map_err(|e| {
                error("FileNotFoundError", format!("[Errno 2] No such file or directory: '{}' ({e})", path.display()))
            })?;
            let d = image::decode_png(&bytes).ok_or_else(|| Failure::Error {
                exception_type: "PIL.UnidentifiedImageError".into(),
                message: format!("cannot identify image file '{}'\n", path.display()),
                traceback: traceback("nodes.py", "load_image"),
            })?;
            let mask = match &d.alpha {
                Some(a) => Mask { width: d.width, height: d.height, frames: vec![a.iter().map(|v| 255 - v).collect()] },
                None => Mask::empty(),
            };
            let img = Img { width: d.width, height: d.height, frames: vec![d.rgb] };
            Ok((vec![Val::Image(Arc::new(img)), Val::Mask(Arc::new(mask))], None))
        }
        "ImageInvert" => {
            let i = need_image("image")?;
            Ok((vec![Val::Image(Arc::new(i.invert()))], None))
        }
        "ImageScale" => {
            let i = need_image("image")?;
            let mut w = lit_u32(inputs, "width").unwrap_or(0);
            let mut h = lit_u32(inputs, "height").unwrap_or(0);
            if w == 0 && h == 0 {
                return Ok((vec![Val::Image(i)], None));
            }
            if w == 0 {
                w = ((f64::from(i.width) * f64::from(h) / f64::from(i.height.max(1))).round() as u32).max(1);
            } else if h == 0 {
                h = ((f64::from(i.height) * f64::from(w) / f64::from(i.width.max(1))).round() as u32).max(1);
            }
            check_alloc(w, h, i.frames.len() as u32)?;
            let crop = lit(inputs, "crop").and_then(OJson::as_str) == Some("center");
            let src = if crop { Arc::new(i.center_crop_to_aspect(w, h)) } else { i };
            Ok((vec![Val::Image(Arc::new(src.resize(w, h)))], None))
        }
        "ImageScaleBy" => {
            let i = need_image("image")?;
            let s = lit(inputs, "scale_by").and_then(OJson::as_f64).unwrap_or(1.0);
            let w = ((f64::from(i.width) * s).round() as u32).max(1);
            let h = ((f64::from(i.height) * s).round() as u32).max(1);
            check_alloc(w, h, i.frames.len() as u32)?;
            Ok((vec![Val::Image(Arc::new(i.resize(w, h)))], None))
        }
        "SaveImage" | "PreviewImage" => {
            let i = need_image("images")?;
            let (base, kind, prefix, fast) = if class == "SaveImage" {
                let p = lit(inputs, "filename_prefix").map(super::ojson::py_str).unwrap_or_else(|| "ComfyUI".into());
                (&shared.dirs.output, "output", p, false)
            } else {
                let letters = shared
                    .lock()
                    .preview_prefixes
                    .entry(id.to_string())
                    .or_insert_with(|| {
                        // ComfyUI's alphabet (sic: "stupvxyz").
                        let alphabet = b"abcdefghijklmnopqrstupvxyz";
                        (0..5).map(|_| alphabet[rand::random_range(0..alphabet.len())] as char).collect()
                    })
                    .clone();
                (&shared.dirs.temp, "temp", format!("ComfyUI_temp_{letters}"), true)
            };
            let (folder, filename, mut counter, subfolder) = files::save_image_path(base, &prefix, i.width, i.height)
                .ok_or_else(|| {
                error("Exception", "**** ERROR: Saving image outside the output folder is not allowed.")
            })?;
            let mut texts = vec![("prompt".to_string(), prompt_json.to_string())];
            if let Some(OJson::Obj(extra)) = extra_pnginfo {
                for (k, v) in extra {
                    texts.push((k.clone(), v.to_json()));
                }
            }
            let mut results = Vec::new();
            for (batch_number, frame) in i.frames.iter().enumerate() {
                let name = filename.replace("%batch_num%", &batch_number.to_string());
                let file = format!("{name}_{counter:05}_.png");
                let png = image::encode_png(i.width, i.height, frame, &texts, fast)
                    .map_err(|e| error("OSError", e.to_string()))?;
                std::fs::write(folder.join(&file), png).map_err(|e| error("OSError", e.to_string()))?;
                results.push(json!({"filename": file, "subfolder": subfolder, "type": kind}));
                counter += 1;
            }
            Ok((Vec::new(), Some(json!({"images": results}))))
        }
        "SaveLatent" => {
            let Some((w, h, b, seed)) = inputs.iter().find_map(|(_, v)| match v {
                Val::Latent { width, height, batch, seed } => Some((*width, *height, *batch, *seed)),
                _ => None,
            }) else {
                return Err(error("TypeError", "'NoneType' object is not subscriptable"));
            };
            let prefix =
                lit(inputs, "filename_prefix").map(super::ojson::py_str).unwrap_or_else(|| "latents/ComfyUI".into());
            let (folder, filename, counter, subfolder) = files::save_image_path(&shared.dirs.output, &prefix, w, h)
                .ok_or_else(|| {
                    error("Exception", "**** ERROR: Saving image outside the output folder is not allowed.")
                })?;
            let file = format!("{filename}_{counter:05}_.latent");
            std::fs::write(folder.join(&file), latent_safetensors(w, h, b, seed, prompt_json))
                .map_err(|e| error("OSError", e.to_string()))?;
            let results = json!([{"filename": file, "subfolder": subfolder, "type": "output"}]);
            Ok((Vec::new(), Some(json!({"latents": results}))))
        }
        other => Err(error("KeyError", format!("'{other}'"))),
    }
}

/// A `.latent` file as SaveLatent writes it: safetensors with a `latent_tensor` of shape
/// `[batch, 4, height/8, width/8]` (f32, deterministic content) and the prompt as metadata.
fn latent_safetensors(width: u32, height: u32, batch: u32, seed: u64, prompt_json: &str) -> Vec<u8> {
    let shape = [u64::from(batch), 4, u64::from(height / 8).max(1), u64::from(width / 8).max(1)];
    let n: u64 = shape.iter().product();
    let data_len = n * 4;
    let header = json!({
        "latent_tensor": {"dtype": "F32", "shape": shape, "data_offsets": [0, data_len]},
        "latent_format_version_0": {"dtype": "F32", "shape": [0], "data_offsets": [data_len, data_len]},
        "__metadata__": {"prompt": prompt_json},
    })
    .to_string();
    let mut out = Vec::with_capacity(8 + header.len() + data_len as usize);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let mut x = seed | 1;
    for _ in 0..n {
        // xorshift: cheap, deterministic per seed.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `SaveImageWebsocket`: one `progress` + one binary PNG frame per image, no UI output.
fn save_image_websocket(
    run: &mut Run<'_>,
    id: &str,
    inputs: &[(String, Val)],
) -> Result<(Vec<Val>, Option<Value>), Failure> {
    let Some(i) = image_in(inputs, "images") else {
        return Err(error("AttributeError", "'NoneType' object has no attribute 'shape'"));
    };
    let total = i.frames.len() as u64;
    for (n, frame) in i.frames.iter().enumerate() {
        let png =
            image::encode_png(i.width, i.height, frame, &[], true).map_err(|e| error("OSError", e.to_string()))?;
        // Legacy clients get progress_state, progress, frame; clients that negotiated
        // supports_preview_metadata get progress_state, frame, progress (captures 08a/08b).
        let metadata_client =
            run.client.as_deref().is_some_and(|c| run.shared.lock().sockets.get(c).is_some_and(|s| s.preview_metadata));
        run.set_running(id, n as u64, total);
        let progress = json!({"value": n, "max": total, "prompt_id": run.prompt_id, "node": id});
        let inner = run.shared.lock();
        if !metadata_client {
            inner.send("progress", &progress, run.client.as_deref());
        }
        inner.send_preview(&run.prompt_id, id, &png, run.client.as_deref());
        if metadata_client {
            inner.send("progress", &progress, run.client.as_deref());
        }
    }
    Ok((Vec::new(), None))
}
