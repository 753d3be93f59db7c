//! WebAssembly plugins: the types every build shares (hooks, limits, failures, call
//! context) and the host, which is the wasmtime runtime (`runtime.rs`, cargo feature
//! `wasm-plugins`, on by default) or, without it, a stand-in with the same API whose every
//! operation fails with [`Failure::unavailable`] (`disabled.rs`).
//!
//! - Interface: `wit/plugin.wit` (`comfyui-gateway:plugin@0.1.0`): hooks `input-transform`,
//!   `template-render`, `output-process`; a plugin exports the ones it implements.
//! - Failures never take the gateway down; each is a [`Failure`] with a stable kind, mapped
//!   to `PLUGIN_LIMIT_EXCEEDED` (a limit) or `PLUGIN_FAILED` (anything else, including a
//!   build without the runtime).
//!
//! This is the only module with `cfg(feature = "wasm-plugins")` in the library.

pub mod cli;
#[cfg(not(feature = "wasm-plugins"))]
mod disabled;
#[cfg(feature = "wasm-plugins")]
mod runtime;
#[cfg(feature = "wasm-plugins")]
pub mod sandbox;
#[cfg(all(test, feature = "wasm-plugins"))]
mod tests;

#[cfg(not(feature = "wasm-plugins"))]
pub use disabled::{Host, Plugin};
#[cfg(feature = "wasm-plugins")]
pub use runtime::{Host, Plugin, bindings};

use std::time::Duration;

use serde_json::json;

use crate::error::{Error, ErrorCode};

/// Whether this build has the WebAssembly plugin runtime (cargo feature `wasm-plugins`).
pub const AVAILABLE: bool = cfg!(feature = "wasm-plugins");

/// The [`Failure::kind`] of a call that found no free slot in time.
pub const BUSY: &str = "busy";

/// The `Retry-After` of a `PLUGIN_BUSY` refusal, in seconds: a slot frees as soon as any
/// call ends, and calls take milliseconds unless a plugin misbehaves.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 1;

/// The [`Failure::kind`] of every plugin operation in a build without the runtime.
pub const UNAVAILABLE: &str = "unavailable";

const UNAVAILABLE_MESSAGE: &str =
    "this build has no WebAssembly plugin runtime (cargo feature `wasm-plugins`); rebuild with default features";

/// Longest log line kept, in bytes (longer ones are cut).
pub const LOG_LINE_MAX: usize = 1024;
/// Most log lines kept per call (further ones are dropped and counted).
pub const LOG_LINES_MAX: usize = 64;

/// One line the plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `debug`, `info`, `warn`, `error`, or `stderr` for captured output.
    pub level: &'static str,
    /// The text (at most [`LOG_LINE_MAX`] bytes).
    pub message: String,
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Largest JSON a JSON hook takes or returns, in bytes.
pub const JSON_MAX: usize = 1024 * 1024;
/// Largest file `output-process` takes, and largest total it returns, in bytes.
pub const MEDIA_MAX: usize = 256 * 1024 * 1024;

/// The hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `input-transform`.
    InputTransform,
    /// `template-render`.
    TemplateRender,
    /// `output-process`.
    OutputProcess,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 3] = [Hook::InputTransform, Hook::TemplateRender, Hook::OutputProcess];

    /// The WIT name.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::InputTransform => "input-transform",
            Hook::TemplateRender => "template-render",
            Hook::OutputProcess => "output-process",
        }
    }

    /// Parse the WIT name.
    pub fn parse(s: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// Per-call limits (`PLUGIN_*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `PLUGIN_TIMEOUT_MS`: wall time of one call.
    pub timeout: Duration,
    /// `PLUGIN_MEMORY_MB`: linear memory of one instance, all memories together.
    pub memory_bytes: usize,
    /// `PLUGIN_FUEL`: instructions (roughly) one call may execute; None: unlimited.
    pub fuel: Option<u64>,
    /// `PLUGIN_CONCURRENCY`: calls in flight at once, all plugins together (sizes the
    /// pooling allocator).
    pub concurrency: u32,
    /// `PLUGIN_CONCURRENCY_PER_PLUGIN`: calls of one plugin in flight at once.
    pub per_plugin: u32,
    /// `PLUGIN_THREADS`: the threads of the plugin runtime, where every call runs (never on
    /// the API's async workers).
    pub threads: u32,
    /// `PLUGIN_QUEUE_WAIT_MS`: how long a submit's call waits for a free slot before it is
    /// refused `503 PLUGIN_BUSY` (output-process calls of running jobs wait their turn).
    pub queue_wait: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            fuel: None,
            concurrency: 16,
            per_plugin: 8,
            threads: 2,
            queue_wait: Duration::from_secs(5),
        }
    }
}

/// Why a plugin call (or load) failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The stable kind: `timeout`, `memory`, `fuel`, `input too large`, `output too large`
    /// (limits), `trap`, `stack overflow`, `panic`, `invalid json`, `rejected`,
    /// `invalid plugin`, `unavailable` (this build has no plugin runtime), `busy` (no free
    /// call slot within `PLUGIN_QUEUE_WAIT_MS`: the plugin, not the caller, is saturated).
    pub kind: &'static str,
    /// What happened.
    pub message: String,
    /// For `rejected`: the plugin's own code and field.
    pub plugin_code: Option<String>,
    /// The JSON Pointer the plugin named.
    pub field: Option<String>,
    /// What the call logged.
    pub logs: Vec<LogLine>,
}

impl Failure {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into(), plugin_code: None, field: None, logs: Vec::new() }
    }

    /// What every plugin operation of a build without the runtime fails with.
    pub fn unavailable() -> Failure {
        Failure::new(UNAVAILABLE, UNAVAILABLE_MESSAGE)
    }

    /// For a failure because this build has no plugin runtime: the gateway error
    /// (`PLUGIN_FAILED`, 422, details `{"kind": "unavailable"}`); None for any other failure.
    pub fn unavailable_error(&self) -> Option<Error> {
        (self.kind == UNAVAILABLE).then(|| {
            Error::new(ErrorCode::PluginFailed, self.message.clone())
                .with_details(json!({ "kind": UNAVAILABLE, "feature": "wasm-plugins" }))
        })
    }

    /// Whether a limit was hit (`PLUGIN_LIMIT_EXCEEDED`) rather than a fault.
    pub fn is_limit(&self) -> bool {
        matches!(self.kind, "timeout" | "memory" | "fuel" | "input too large" | "output too large")
    }

    /// A call that found no free slot within `waited` (the plugin's or the host's
    /// concurrency cap).
    #[cfg_attr(not(feature = "wasm-plugins"), allow(dead_code))]
    pub(crate) fn busy(waited: Duration) -> Failure {
        Failure::new(
            BUSY,
            format!(
                "every call slot stayed taken for {} ms (PLUGIN_CONCURRENCY_PER_PLUGIN, PLUGIN_CONCURRENCY); try again later",
                waited.as_millis()
            ),
        )
    }

    /// The gateway error: `PLUGIN_LIMIT_EXCEEDED` or `PLUGIN_FAILED` (both 422), or
    /// `PLUGIN_BUSY` (503, `retryAfterSeconds` in the details) for a call that found no
    /// slot, with the kind, the hook and, for a rejection, the plugin's code and field in
    /// the details.
    pub fn to_error(&self, hook: Hook) -> Error {
        let code = if self.kind == BUSY {
            ErrorCode::PluginBusy
        } else if self.is_limit() {
            ErrorCode::PluginLimitExceeded
        } else {
            ErrorCode::PluginFailed
        };
        let mut details = json!({ "kind": self.kind, "hook": hook.as_str() });
        if self.kind == BUSY {
            details["retryAfterSeconds"] = json!(BUSY_RETRY_AFTER_SECONDS);
        }
        if let Some(c) = &self.plugin_code {
            details["pluginCode"] = json!(c);
        }
        if let Some(f) = &self.field {
            details["field"] = json!(f);
        }
        Error::new(code, format!("plugin {}: {}", hook.as_str(), self.message)).with_details(details)
    }
}

/// What a successful call reports besides its result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Wall time of the call (instantiation included).
    pub elapsed: Duration,
    /// The most linear memory the instance had, in bytes.
    pub memory_peak: usize,
    /// Fuel consumed, when a fuel budget is set.
    pub fuel_used: Option<u64>,
    /// `host.log` lines, then captured stdout/stderr as `stderr` lines.
    pub logs: Vec<LogLine>,
}

/// The job a call runs for.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Job id.
    pub job_id: String,
    /// Workflow id and version.
    pub workflow: (String, u32),
    /// Owner.
    pub owner: Option<String>,
    /// The plugin's configuration (JSON text).
    pub config: String,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// File name.
    pub name: String,
    /// MIME type.
    pub media_type: String,
    /// Bytes.
    pub data: Vec<u8>,
}
