//! HTTP client of one ComfyUI backend: upload, submit, history, queue, interrupt, view, stats,
//! node definitions (`/object_info`).
//!
//! Errors say whether the request can have reached ComfyUI: a refused connection
//! ([`ComfyError::Connect`]) certainly did not, anything else after connecting is
//! ambiguous and must be reconciled. A browser's `Origin` is never forwarded (no header
//! of the incoming request ever reaches this client).

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::protocol::{self, HistoryEntry, ObjectInfo, OutputFile, QueueSnapshot};

/// Why a call to ComfyUI failed.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// The connection could not be made: the request certainly did not arrive.
    #[error("cannot connect to ComfyUI: {0}")]
    Connect(String),
    /// The request may or may not have arrived (reset, timeout, broken body).
    #[error("ComfyUI request failed: {0}")]
    Transport(String),
    /// `POST /prompt` answered 400: the prompt is invalid.
    #[error("ComfyUI rejected the prompt: {message}")]
    Rejected {
        /// Summary of ComfyUI's error.
        message: String,
        /// Per-node details.
        details: Value,
    },
    /// Any other non-success status.
    #[error("ComfyUI answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A success answer that is not what the protocol says.
    #[error("unexpected answer from ComfyUI: {0}")]
    Protocol(String),
}

impl ComfyError {
    fn from_reqwest(e: reqwest::Error) -> ComfyError {
        // reqwest's text names only the request; the cause (refused, timed out, closed
        // mid-body) is in its sources.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        if e.is_connect() { ComfyError::Connect(text) } else { ComfyError::Transport(text) }
    }

    /// Whether this failure means the backend is not reachable at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ComfyError::Connect(_) | ComfyError::Transport(_))
    }

    /// Whether the same request may well succeed when sent again: the connection broke,
    /// timed out or was cut short after connecting, or ComfyUI answered 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            ComfyError::Transport(_) => true,
            ComfyError::Status { status, .. } => *status >= 500,
            ComfyError::Connect(_) | ComfyError::Rejected { .. } | ComfyError::Protocol(_) => false,
        }
    }
}

/// What `/system_stats` tells about a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemInfo {
    /// `system.comfyui_version`.
    pub comfyui_version: Option<String>,
}

/// The HTTP client of one backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ComfyClient {
    base_url: String,
    http: reqwest::Client,
    /// Longest time of one HTTP call that is not an upload or download.
    call_timeout: Duration,
}

/// Default longest time of one HTTP call that is not an upload or download.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time of one output download.
const VIEW_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest output file fetched, in bytes.
pub const VIEW_BYTES_MAX: u64 = 1 << 30;

impl ComfyClient {
    /// A client for the backend at `base_url` (no trailing slash) sharing `http`'s pool.
    pub fn new(base_url: &str, http: reqwest::Client) -> ComfyClient {
        ComfyClient { base_url: base_url.trim_end_matches('/').to_string(), http, call_timeout: CALL_TIMEOUT }
    }

    /// The same client with another time limit for calls (uploads and downloads keep theirs).
    pub fn with_call_timeout(mut self, timeout: Duration) -> ComfyClient {
        self.call_timeout = timeout;
        self
    }

    /// A connection pool suited to talking to backends; a transfer that stays silent for
    /// `read_timeout` fails (a hung upload or download does not wait for its whole limit).
    /// An error if reqwest cannot build it (its TLS backend or resolver failed to start):
    /// never a client without these timeouts.
    pub fn http_pool(read_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(read_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The WebSocket URL for a client id.
    pub fn ws_url(&self, client_id: &str) -> String {
        let rest = self
            .base_url
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| self.base_url.strip_prefix("http://").map(|r| format!("ws://{r}")))
            .unwrap_or_else(|| self.base_url.clone());
        format!("{rest}/ws?clientId={client_id}")
    }

    async fn get_json(&self, path_and_query: &str) -> Result<Value, ComfyError> {
        let resp = self
            .http
            .get(format!("{}{path_and_query}", self.base_url))
            .timeout(self.call_timeout)
            .send()
            .await
            .map_err(ComfyError::from_reqwest)?;
        let body = success_body(resp).await?;
        serde_json::from_slice(&body).map_err(|e| {
            let start: String = snippet(&body).chars().take(64).collect();
            ComfyError::Protocol(format!("{path_and_query}: the answer is not JSON ({e}): {start:?}"))
        })
    }

    async fn post_json(&self, path: &str, body: String) -> Result<(u16, Bytes), ComfyError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.call_timeout)
            .send()
            .await
            .map_err(ComfyError::from_reqwest)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(ComfyError::from_reqwest)?;
        Ok((status, body))
    }

    /// `GET /system_stats`: the cheapest health check.
    pub async fn system_stats(&self) -> Result<SystemInfo, ComfyError> {
        let v = self.get_json("/system_stats").await?;
        Ok(SystemInfo {
            comfyui_version: v.pointer("/system/comfyui_version").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// `POST /prompt` with our own prompt_id, so early WS events can be correlated.
    pub async fn submit(&self, prompt_json: &str, prompt_id: &str, client_id: &str) -> Result<(), ComfyError> {
        let (status, body) =
            self.post_json("/prompt", protocol::submit_body(prompt_json, prompt_id, client_id)).await?;
        match status {
            200 => protocol::parse_submit_answer(&body, prompt_id)
                .map_err(|e| ComfyError::Protocol(format!("POST /prompt: {e}"))),
            400 => {
                let (message, details) = protocol::parse_rejection(&String::from_utf8_lossy(&body));
                Err(ComfyError::Rejected { message, details })
            }
            _ => Err(ComfyError::Status { status, body: snippet(&body) }),
        }
    }

    /// `POST /upload/image` of an input image into `input/<subfolder>/<file_name>`, replacing
    /// a file of that name (`overwrite=true`), so the prompt can name `subfolder/file_name`.
    pub async fn upload_image(
        &self,
        subfolder: &str,
        file_name: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), ComfyError> {
        let boundary = format!("gw-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::with_capacity(bytes.len() + 512);
        for (name, value) in [("overwrite", "true"), ("type", "input"), ("subfolder", subfolder)] {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{file_name}\"\r\n\
                 Content-Type: {media_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let resp = self
            .http
            .post(format!("{}/upload/image", self.base_url))
            .header(http::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(body)
            .timeout(VIEW_TIMEOUT)
            .send()
            .await
            .map_err(ComfyError::from_reqwest)?;
        let answer = success_body(resp).await?;
        let v: Value = serde_json::from_slice(&answer)
            .map_err(|e| ComfyError::Protocol(format!("POST /upload/image answer: {e}")))?;
        match (v.get("name").and_then(Value::as_str), v.get("subfolder").and_then(Value::as_str)) {
            (Some(name), Some(sub)) if name == file_name && sub == subfolder => Ok(()),
            _ => Err(ComfyError::Protocol(format!("POST /upload/image stored {file_name} as {v}"))),
        }
    }

    /// `GET /history/{id}`: None while unknown or unfinished (ComfyUI's `{}`); an answer of
    /// any other shape is [`ComfyError::Protocol`], never None.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        let path = format!("/history/{prompt_id}");
        let v = self.get_json(&path).await?;
        protocol::parse_history(&v, prompt_id).map_err(|e| ComfyError::Protocol(format!("GET {path}: {e}")))
    }

    /// `GET /object_info`: every node class the backend knows, with its inputs' types,
    /// ranges and choices (installed models, samplers, ...).
    pub async fn object_info(&self) -> Result<ObjectInfo, ComfyError> {
        let v = self.get_json("/object_info").await?;
        protocol::parse_object_info(&v).map_err(ComfyError::Protocol)
    }

    /// `GET /queue`; an answer of another shape is [`ComfyError::Protocol`], never an empty queue.
    pub async fn queue(&self) -> Result<QueueSnapshot, ComfyError> {
        protocol::parse_queue(&self.get_json("/queue").await?)
            .map_err(|e| ComfyError::Protocol(format!("GET /queue: {e}")))
    }

    /// Stop a prompt: interrupt it if it runs, remove it if it is pending.
    pub async fn cancel(&self, prompt_id: &str) -> Result<(), ComfyError> {
        let id = Value::String(prompt_id.to_string());
        let (status, body) = self.post_json("/interrupt", format!("{{\"prompt_id\":{id}}}")).await?;
        if status != 200 {
            return Err(ComfyError::Status { status, body: snippet(&body) });
        }
        let (status, body) = self.post_json("/queue", format!("{{\"delete\":[{id}]}}")).await?;
        if status != 200 {
            return Err(ComfyError::Status { status, body: snippet(&body) });
        }
        Ok(())
    }

    /// `GET /view` of one output file.
    pub async fn view(&self, file: &OutputFile) -> Result<Bytes, ComfyError> {
        let resp = self
            .http
            .get(format!("{}/view", self.base_url))
            .query(&[
                ("filename", file.filename.as_str()),
                ("subfolder", file.subfolder.as_str()),
                ("type", file.folder_type.as_str()),
            ])
            .timeout(VIEW_TIMEOUT)
            .send()
            .await
            .map_err(ComfyError::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(ComfyError::Status { status: status.as_u16(), body: snippet(&body) });
        }
        if resp.content_length().is_some_and(|n| n > VIEW_BYTES_MAX) {
            return Err(ComfyError::Protocol(format!("{} is larger than {VIEW_BYTES_MAX} bytes", file.filename)));
        }
        let expected = resp.content_length();
        let bytes = resp.bytes().await.map_err(ComfyError::from_reqwest)?;
        if expected.is_some_and(|n| n != bytes.len() as u64) {
            return Err(ComfyError::Transport(format!("{}: truncated body", file.filename)));
        }
        Ok(bytes)
    }
}

/// The body of a success answer; any other status is `ComfyError::Status`.
async fn success_body(resp: reqwest::Response) -> Result<Bytes, ComfyError> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(ComfyError::from_reqwest)?;
    if !status.is_success() {
        return Err(ComfyError::Status { status: status.as_u16(), body: snippet(&body) });
    }
    Ok(body)
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.into_owned()
}

#[cfg(test)]
mod tests {
    use super::ComfyError;

    #[test]
    fn transient_failures_are_broken_transfers_and_5xx() {
        let status = |status| ComfyError::Status { status, body: String::new() };
        assert!(ComfyError::Transport("timed out".into()).is_transient());
        assert!(status(500).is_transient());
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
        assert!(!status(400).is_transient());
        assert!(!ComfyError::Connect("refused".into()).is_transient(), "refused: the request never arrived");
        assert!(!ComfyError::Protocol("bad json".into()).is_transient());
        assert!(!ComfyError::Rejected { message: String::new(), details: serde_json::Value::Null }.is_transient());
    }
}
