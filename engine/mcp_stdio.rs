//! `comfyui-gateway mcp`: the stdio bridge. An MCP client that launches a local process
//! (Claude Desktop, ...) speaks MCP over its stdin and stdout, one JSON-RPC message per
//! line; the bridge forwards each message to a gateway's `/mcp` (Streamable HTTP, with the
//! API key or bearer token) and writes back what the gateway answers: the JSON-RPC answer,
//! or each message of its event stream (progress notifications, a `subscriptions/listen`
//! stream's notifications) as it arrives.
//!
//! Every request is its own HTTP request, so requests run concurrently (at most
//! [`IN_FLIGHT_MAX`]) and a slow tool call does not hold up a listing. The headers the
//! HTTP transport wants (`Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`) are derived from
//! the message: the version from its `_meta` (protocol 2026-07-28), else the one the
//! `initialize` handshake agreed. `notifications/cancelled` closes the named request's
//! HTTP request, which is how the HTTP transport cancels. A failure to reach the gateway,
//! or a refusal that is not JSON-RPC (a wrong key: `401`), is answered as a JSON-RPC error
//! to the request, so the client never waits for nothing. Logs go to stderr.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::scheduler::Tasks;

/// Requests forwarded at once; more wait for a slot.
pub const IN_FLIGHT_MAX: usize = 64;
/// The longest line read from stdin (the gateway's default `MAX_BODY_BYTES`).
pub const LINE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The `_meta` member naming the protocol version of a 2026-07-28 request.
const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INTERNAL_ERROR: i64 = -32603;
/// A refusal of the gateway that is not JSON-RPC (the implementation-defined range).
const GATEWAY_REFUSED: i64 = -32000;

/// Where to forward, and how to authenticate.
#[derive(Debug, Clone)]
pub struct Target {
    /// The gateway's `/mcp` URL.
    pub url: String,
    /// Sent as `X-API-Key`.
    pub api_key: Option<String>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

/// The bridge's state shared by its tasks.
struct Bridge {
    http: reqwest::Client,
    target: Target,
    /// The version `initialize` agreed (older protocol revisions).
    version: Mutex<Option<String>>,
    /// Requests being forwarded, by their JSON-RPC id (as JSON text).
    in_flight: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    slots: Arc<tokio::sync::Semaphore>,
    out: mpsc::Sender<Vec<u8>>,
    /// The owner of the bridge's tasks, as of the gateway's.
    tasks: Tasks,
}

/// Bridge stdin and stdout to `target` until stdin ends.
pub async fn run(target: Target) -> Result<(), String> {
    let http = reqwest::Client::builder().build().map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let (out, mut lines) = mpsc::channel::<Vec<u8>>(256);
    let tasks = Tasks::new();
    let writer = tasks.spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = lines.recv().await {
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let bridge = Arc::new(Bridge {
        http,
        target,
        version: Mutex::new(None),
        in_flight: Mutex::new(HashMap::new()),
        slots: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX)),
        out,
        tasks: tasks.clone(),
    });
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut stdin, &mut line).await {
            Ok(Line::End) => break,
            Ok(Line::TooLong) => {
                bridge
                    .send(&error_answer(Value::Null, INVALID_REQUEST, "the message is longer than 16 MiB", None))
                    .await;
            }
            Ok(Line::Read) => bridge.clone().dispatch(&line).await,
            Err(e) => return Err(format!("reading stdin: {e}")),
        }
    }
    // The client is gone: what is still being forwarded has no one to answer.
    for (_, task) in bridge.in_flight.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        task.abort();
    }
    drop(bridge);
    let _ = writer.await;
    tasks.stop();
    tasks.shutdown().await;
    Ok(())
}

enum Line {
    Read,
    TooLong,
    End,
}

/// One line of `input` into `line` (without its newline), at most [`LINE_BYTES_MAX`]
/// bytes: a longer line is skipped to its end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(input: &mut R, line: &mut Vec<u8>) -> std::io::Result<Line> {
    let mut too_long = false;
    loop {
        let chunk = input.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if line.is_empty() {
                Line::End
            } else {
                Line::Read
            });
        }
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], i + 1),
            None => (chunk, chunk.len()),
        };
        let ends = done > part.len();
        if !too_long && line.len() + part.len() <= LINE_BYTES_MAX {
            line.extend_from_slice(part);
        } else {
            too_long = true;
            line.clear();
        }
        input.consume(done);
        if ends {
            return Ok(if too_long { Line::TooLong } else { Line::Read });
        }
    }
}

/// A JSON-RPC error answer to request `id`.
fn error_answer(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// `value` as the `Mcp-Name` header takes it: as it is when it is plain visible ASCII,
/// else `=?base64?...?=`.
fn header_value(value: &str) -> String {
    let padded = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
    let visible = value.chars().all(|c| (' '..='~').contains(&c));
    let sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    if value.is_empty() || (visible && !padded && !sentinel) {
        value.to_string()
    } else {
        format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(value))
    }
}

impl Bridge {
    /// Write one message to stdout.
    async fn send(&self, message: &Value) {
        if let Ok(line) = serde_json::to_vec(message) {
            let _ = self.out.send(line).await;
        }
    }

    /// Handle one line from the client.
    async fn dispatch(self: Arc<Self>, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let message: Value = match serde_json::from_slice(line) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return self
                    .send(&error_answer(Value::Null, INVALID_REQUEST, "a message is a JSON object", None))
                    .await;
            }
            Err(e) => return self.send(&error_answer(Value::Null, PARSE_ERROR, &format!("not JSON: {e}"), None)).await,
        };
        let method = message.get("method").and_then(Value::as_str).map(str::to_string);
        let id = message.get("id").cloned();
        match (method.as_deref(), id) {
            (Some("notifications/cancelled"), _) => {
                // Over HTTP a request is cancelled by closing it.
                let named = message.pointer("/params/requestId").map(Value::to_string);
                let task = named.and_then(|k| self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&k));
                if let Some(task) = task {
                    task.abort();
                }
            }
            (Some(_), Some(id)) => {
                let key = id.to_string();
                let Ok(slot) = self.slots.clone().acquire_owned().await else { return };
                let bridge = self.clone();
                let task = self.tasks.spawn(async move {
                    let _slot = slot;
                    if let Err(e) = bridge.forward(&message).await {
                        bridge.send(&error_answer(id.clone(), INTERNAL_ERROR, &e, None)).await;
                    }
                    bridge.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&id.to_string());
                });
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                if !task.is_finished() {
                    in_flight.insert(key, task.abort_handle());
                }
            }
            (Some(_), None) => {
                // A notification (`notifications/initialized`, ...): answered with 202.
                let bridge = self.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = bridge.forward(&message).await {
                        tracing::warn!(error = %e, "a notification did not reach the gateway");
                    }
                });
            }
            (None, _) => {
                // An answer to a server's request: the HTTP transport of this gateway sends
                // none (its tools ask nothing back), so there is nowhere to send it.
                tracing::debug!("dropped an answer the gateway did not ask for");
            }
        }
    }

    /// POST `message` to the gateway and write what comes back; an error for a failure
    /// that left the request unanswered.
    async fn forward(&self, message: &Value) -> Result<(), String> {
        let id = message.get("id").cloned();
        let method = message.get("method").and_then(Value::as_str).unwrap_or_default();
        let mut req = self
            .http
            .post(&self.target.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-method", method);
        let name = match method {
            "tools/call" | "prompts/get" => message.pointer("/params/name"),
            "resources/read" => message.pointer("/params/uri"),
            _ => None,
        };
        if let Some(name) = name.and_then(Value::as_str) {
            req = req.header("mcp-name", header_value(name));
        }
        let version = message
            .pointer("/params/_meta")
            .and_then(|m| m.get(VERSION_META))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.version.lock().unwrap_or_else(|e| e.into_inner()).clone());
        if let (Some(version), false) = (version, method == "initialize") {
            req = req.header("mcp-protocol-version", version);
        }
        if let Some(key) = &self.target.api_key {
            req = req.header("x-api-key", key);
        }
        if let Some(token) = &self.target.token {
            req = req.bearer_auth(token);
        }
        let body = serde_json::to_vec(message).map_err(|e| e.to_string())?;
        let mut resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| format!("the gateway at {} did not answer: {e}", self.target.url))?;
        let status = resp.status();
        let media =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
        if media.starts_with("text/event-stream") {
            let mut events = EventStream::default();
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("the gateway's stream broke: {e}"))? {
                for data in events.push(&chunk) {
                    self.relay(&data).await;
                }
            }
            return Ok(());
        }
        let bytes = resp.bytes().await.map_err(|e| format!("the gateway's answer broke: {e}"))?;
        if status == reqwest::StatusCode::ACCEPTED || bytes.is_empty() && status.is_success() {
            return Ok(());
        }
        let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
        match answer {
            Some(answer) if answer.get("jsonrpc").is_some() => {
                if method == "initialize"
                    && let Some(v) = answer.pointer("/result/protocolVersion").and_then(Value::as_str)
                {
                    *self.version.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.to_string());
                }
                self.send(&answer).await;
            }
            other => {
                // The gateway's own refusal (`{"error": {"code", "message"}}`: a wrong key,
                // a rate limit, a body too large), for a request: its JSON-RPC error.
                let Some(id) = id else { return Ok(()) };
                let text = other
                    .as_ref()
                    .and_then(|v| {
                        let e = v.get("error")?;
                        Some(format!("{}: {}", e.get("code")?.as_str()?, e.get("message")?.as_str()?))
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned());
                let message = format!("the gateway answered {}: {text}", status.as_u16());
                self.send(&error_answer(id, GATEWAY_REFUSED, &message, other)).await;
            }
        }
        Ok(())
    }

    /// One event's data from the gateway's stream, written as one line.
    async fn relay(&self, data: &str) {
        match serde_json::from_str::<Value>(data) {
            Ok(message) => self.send(&message).await,
            Err(e) => tracing::warn!(error = %e, "the gateway sent an event that is not JSON"),
        }
    }
}

/// A Server-Sent Events parser: bytes in, each event's `data` out.
#[derive(Default)]
struct EventStream {
    /// The unfinished line.
    pending: Vec<u8>,
    /// The event's `data` lines so far.
    data: Vec<String>,
}

impl EventStream {
    /// Take `chunk`; the data of every event it completes.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        self.pending.extend_from_slice(chunk);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    done.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
            // `event:`, `id:`, `retry:` and `:` comments carry nothing the client reads.
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_whatever_the_chunks() {
        let stream = b": ping\n\nid: 1\ndata: {\"a\":1}\n\nevent: message\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: \n";
        for cut in 1..stream.len() {
            let mut events = EventStream::default();
            let mut seen = events.push(&stream[..cut]);
            seen.extend(events.push(&stream[cut..]));
            assert_eq!(seen, vec!["{\"a\":1}".to_string(), "{\"b\":\n2}".to_string()], "cut at {cut}");
        }
    }

    #[test]
    fn names_that_are_not_plain_ascii_travel_as_base64() {
        assert_eq!(header_value("icon_512"), "icon_512");
        assert_eq!(header_value("a b"), "a b");
        assert_eq!(header_value("é"), "=?base64?w6k=?=");
        assert_eq!(header_value(" lead"), "=?base64?IGxlYWQ=?=");
        assert_eq!(header_value("=?base64?x?="), "=?base64?PT9iYXNlNjQ/eD89?=");
    }

    #[tokio::test]
    async fn lines_are_read_whole_and_an_overlong_one_is_skipped() {
        let long = vec![b'x'; LINE_BYTES_MAX + 1];
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"a\":1}\n");
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\n{\"b\":2}");
        let mut reader = tokio::io::BufReader::with_capacity(1024, &input[..]);
        let mut line = Vec::new();
        let mut seen = Vec::new();
        loop {
            line.clear();
            match read_line(&mut reader, &mut line).await.unwrap() {
                Line::End => break,
                Line::TooLong => seen.push("too long".to_string()),
                Line::Read => seen.push(String::from_utf8(line.clone()).unwrap()),
            }
        }
        assert_eq!(seen, ["{\"a\":1}", "too long", "{\"b\":2}"]);
    }
}
