//! comfyui-gateway: a durable, secure REST service in front of ComfyUI servers.
//!
//! Codemap, in reading order:
//! - [`config`]: every setting and limit, loaded once from flags / env / `.env`.
//! - [`error`]: the one error enum with stable codes and HTTP statuses.
//! - [`domain`]: jobs, priorities, outputs, workflows as the gateway sees them.
//! - [`backoff`]: the one formula of retry pauses (exponential, capped; jitter).
//! - [`store`]: the only module that touches redb (jobs, events, queue, workflows, blobs,
//!   webhook outbox, result cache, idempotency keys, retention).
//! - [`storage`]: blob backends: blob bytes in an S3-compatible bucket
//!   (`STORAGE_PROVIDER=s3`; object_store), the upload/delete locks, the object reaper.
//! - [`workflows`]: template rendering and JSON Schema validation of inputs (pure).
//! - [`canonical`]: canonical JSON; the result-cache key and idempotency fingerprints.
//! - [`ssrf`]: the SSRF gate of the gateway's requests to client-given URLs (image
//!   inputs, webhooks): scheme, own DNS resolution, public addresses only, pinned client.
//! - [`inputs`]: image inputs: SSRF-guarded URL fetch, data URI / base64, magic bytes.
//! - [`comfy`]: the only module that knows ComfyUI's JSON: HTTP + WebSocket client, wire
//!   messages, the API-format prompt as a graph (node classes, inputs, links), the simulator.
//! - [`privacy`]: privacy mode: prompts and inputs sealed at rest, PNG text stripped.
//! - [`priority`]: lower thread priority for work one client can make heavy (plugins, bulk).
//! - [`metrics`]: the Prometheus registry handle (bounded labels), rendered at scrape time.
//! - [`plugins`]: the WebAssembly plugin host (wasmtime, cargo feature `wasm-plugins`):
//!   sandboxed, limited hook calls; without the feature every plugin operation is refused.
//! - [`scheduler`]: pure job state machine, dispatch by priority, recovery, backends;
//!   output-process hooks; the background pruner (retention).
//! - [`webhooks`]: signed webhook deliveries from the durable outbox, retries, destination policy.
//! - [`service`]: the gateway's operations in domain terms (submit with cache and
//!   idempotency and the input/render plugin hooks, register workflows with plugins, read).
//! - [`auth`]: API keys and JWTs to a principal (owner id, role); constant-time key checks.
//! - [`wire`]: the JSON bodies the API takes and gives (serde + JSON Schema), webhooks' too.
//! - [`api`]: the only module that knows HTTP: hyper server, route table, handlers.
//! - [`failpoints`]: crash points at the dangerous windows (feature `failpoints`, tests).
//! - [`mcp_stdio`]: `comfyui-gateway mcp`, MCP over stdio forwarded to a gateway's `/mcp`.
//! - [`cli`]: the command line (serve (alias run), sim, init, add-workflow, import-workflow,
//!   list-workflows, health, check, plugin check/run, backup, mcp); failures to exit codes.

// serde_json's json! recurses per token; the OpenAPI document is one large literal.
#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod backoff;
pub mod canonical;
pub mod cli;
pub mod comfy;
pub mod config;
pub mod domain;
pub mod error;
pub mod failpoints;
pub mod inputs;
pub mod mcp_stdio;
pub mod metrics;
pub mod plugins;
pub mod priority;
pub mod privacy;
pub mod scheduler;
pub mod service;
pub mod ssrf;
pub mod storage;
pub mod store;
pub mod webhooks;
pub mod wire;
pub mod workflows;
