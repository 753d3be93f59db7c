//! The WebSocket side of one backend: a [`WsHub`] that routes ComfyUI's events to the
//! job that owns them, and [`run_session`], one connection's lifetime.
//!
//! Following PROTOCOL.md §0/§7: every connection uses a fresh `clientId` (reusing one is
//! fragile, §7 "Reconnects"); every message is filtered by `prompt_id`; `executing` with
//! `node: null` means the prompt is finished and its history is written. Nothing is
//! replayed after a drop, so subscribers are told [`Signal::Disconnected`] and must
//! reconcile by polling (`/queue`, `/history`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::client::ComfyClient;
use super::protocol::{self, WsMessage};

/// What a running job hears from its backend's WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// `execution_start`: the prompt began executing.
    Started,
    /// Progress within a node.
    Progress {
        /// Node id.
        node: Option<String>,
        /// Current value.
        value: f64,
        /// Maximum value.
        max: f64,
    },
    /// A node started executing.
    NodeStarted {
        /// Node id.
        node: String,
    },
    /// A preview image of the running prompt (a binary frame).
    Preview {
        /// `image/jpeg` or `image/png`.
        media_type: &'static str,
        /// The encoded image.
        image: bytes::Bytes,
    },
    /// `execution_cached`: these nodes will not run (their outputs are cached).
    Cached {
        /// Node ids.
        nodes: Vec<String>,
    },
    /// `executing` with `node: null`: finished, history written.
    Done,
    /// The connection dropped: events may have been lost.
    Disconnected,
}

/// Capacity of one job's signal channel; progress beyond it is dropped (polling covers
/// any lost terminal signal).
const SIGNALS_PER_JOB_MAX: usize = 256;
/// Interval between keep-alive pings (ComfyUI sends none itself).
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A connection silent this long (no frame, no pong) is considered dead.
const SILENCE_MAX: Duration = Duration::from_secs(30);
/// Longest WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Routes one backend's WebSocket events to subscribed jobs.
#[derive(Debug, Default)]
pub struct WsHub {
    inner: Mutex<HubInner>,
    /// Woken whenever a connection comes up.
    connected: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct HubInner {
    /// The clientId of the live connection, if one is up.
    client_id: Option<String>,
    /// The prompt that started last (`execution_start`): a legacy preview frame, which
    /// names no prompt, is its.
    running: Option<String>,
    subscribers: HashMap<String, mpsc::Sender<Signal>>,
}

/// A job's subscription; unsubscribes on drop.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<WsHub>,
    prompt_id: String,
    /// The job's signals.
    pub rx: mpsc::Receiver<Signal>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.subscribers.remove(&self.prompt_id);
    }
}

impl WsHub {
    /// A hub with no connection.
    pub fn new() -> Arc<WsHub> {
        Arc::new(WsHub::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receive the events of `prompt_id` (subscribe before submitting: events can arrive
    /// before the POST /prompt answer).
    pub fn subscribe(self: &Arc<Self>, prompt_id: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(SIGNALS_PER_JOB_MAX);
        self.lock().subscribers.insert(prompt_id.to_string(), tx);
        Subscription { hub: self.clone(), prompt_id: prompt_id.to_string(), rx }
    }

    /// The clientId of the live connection, if any: prompts submitted under it get events.
    pub fn client_id(&self) -> Option<String> {
        self.lock().client_id.clone()
    }

    fn set_connected(&self, client_id: &str) {
        self.lock().client_id = Some(client_id.to_string());
        self.connected.notify_waiters();
    }

    /// The live connection's clientId, waiting up to `within` for one to come up (a
    /// backend is healthy as soon as it answers HTTP; its socket follows a moment later).
    pub async fn wait_client_id(&self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Created before the check: `notify_waiters` reaches it even before it is polled.
            let notified = self.connected.notified();
            if let Some(id) = self.client_id() {
                return Some(id);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.client_id();
            }
        }
    }

    /// The connection is gone: forget its clientId and tell every subscriber.
    pub fn mark_disconnected(&self) {
        let mut inner = self.lock();
        inner.client_id = None;
        for tx in inner.subscribers.values() {
            let _ = tx.try_send(Signal::Disconnected);
        }
    }

    /// A binary frame: a preview goes to its prompt's subscriber (the running prompt's when
    /// the frame names none); it is dropped when the subscriber is behind.
    fn route_binary(&self, frame: &bytes::Bytes) {
        let Some(preview) = protocol::parse_ws_binary(frame) else { return };
        let inner = self.lock();
        let Some(prompt_id) = preview.prompt_id.as_ref().or(inner.running.as_ref()) else { return };
        if let Some(tx) = inner.subscribers.get(prompt_id) {
            let _ = tx.try_send(Signal::Preview { media_type: preview.media_type, image: preview.image });
        }
    }

    fn route(&self, message: WsMessage) {
        if let WsMessage::ExecutionStart { prompt_id } = &message {
            self.lock().running = Some(prompt_id.clone());
        }
        let Some(prompt_id) = message.prompt_id() else { return };
        let signal = match &message {
            WsMessage::ExecutionStart { .. } => Signal::Started,
            WsMessage::Executing { node: None, .. } => Signal::Done,
            WsMessage::Executing { node: Some(node), .. } => Signal::NodeStarted { node: node.clone() },
            WsMessage::Progress { node, value, max, .. } => {
                Signal::Progress { node: node.clone(), value: *value, max: *max }
            }
            WsMessage::ExecutionCached { nodes, .. } => Signal::Cached { nodes: nodes.clone() },
            _ => return,
        };
        let inner = self.lock();
        if let Some(tx) = inner.subscribers.get(prompt_id) {
            let _ = tx.try_send(signal);
        }
    }
}

/// The connection's settings. tungstenite zero-fills `read_buffer_size` bytes of its read
/// buffer before every read (128 KiB by default): most of the gateway's WebSocket CPU
/// for ComfyUI's small text messages. 16 KiB reads a message of any size, in more reads.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// Run one WebSocket connection to the backend until it drops or `cancel` fires.
/// Returns why it ended. The hub knows the connection's clientId while it is up.
pub async fn run_session(hub: &WsHub, client: &ComfyClient, cancel: &CancellationToken) -> String {
    let client_id = uuid::Uuid::new_v4().simple().to_string();
    let url = client.ws_url(&client_id);
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), false),
    )
    .await
    {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(e)) => return format!("websocket connect failed: {e}"),
        Err(_) => return "websocket connect timed out".to_string(),
    };
    let (mut sink, mut stream) = stream.split();
    // As ComfyUI's editor does: preview frames then name their prompt.
    let flags = r#"{"type": "feature_flags", "data": {"supports_preview_metadata": true}}"#;
    if let Err(e) = sink.send(Message::Text(flags.into())).await {
        return format!("websocket send failed: {e}");
    }
    hub.set_connected(&client_id);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_frame = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            _ = cancel.cancelled() => break "shutdown".to_string(),
            _ = ping.tick() => {
                if last_frame.elapsed() > SILENCE_MAX {
                    break "websocket silent for too long".to_string();
                }
                if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                    break format!("websocket ping failed: {e}");
                }
            }
            frame = stream.next() => {
                last_frame = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => hub.route(protocol::parse_ws_text(text.as_str())),
                    Some(Ok(Message::Binary(frame))) => hub.route_binary(&frame),
                    Some(Ok(Message::Close(_))) | None => break "websocket closed".to_string(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("websocket error: {e}"),
                }
            }
        }
    };
    hub.mark_disconnected();
    reason
}
