//! The per-call sandbox state: a deny-all WASI context (no environment, arguments, files
//! or network; stdout and stderr captured into a bounded buffer), the `host` interface
//! (bounded logging, the plugin's configuration), and a resource limiter over every memory
//! and table of the instance that remembers the peak and whether a growth was refused.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::comfyui_gateway::plugin::host;
pub use super::{LOG_LINE_MAX, LOG_LINES_MAX, LogLine, cut};

/// Most bytes of stdout + stderr kept per call (the rest is dropped).
pub const STDIO_MAX: usize = 16 * 1024;

/// Everything a call's store holds.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limiter,
    config: String,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) logs_dropped: usize,
    pub(crate) stdio: Capture,
}

impl State {
    /// A fresh state for one call.
    pub fn new(config: &str, memory_max: usize) -> State {
        let stdio = Capture::default();
        let mut wasi = WasiCtx::builder();
        // The defaults already deny: no env, args or preopens, stdin closed, every socket
        // address refused. Name lookups stay off; stdout/stderr go to the capture.
        wasi.allow_ip_name_lookup(false).allow_tcp(false).allow_udp(false);
        wasi.socket_addr_check(|_, _| Box::pin(async { false }));
        wasi.stdout(stdio.clone()).stderr(stdio.clone());
        State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: Limiter { memory_max, ..Limiter::default() },
            config: config.to_string(),
            logs: Vec::new(),
            logs_dropped: 0,
            stdio,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        if self.logs.len() >= LOG_LINES_MAX {
            self.logs_dropped += 1;
            return;
        }
        let level = match level {
            host::Level::Debug => "debug",
            host::Level::Info => "info",
            host::Level::Warn => "warn",
            host::Level::Error => "error",
        };
        self.logs.push(LogLine { level, message: cut(&message, LOG_LINE_MAX) });
    }

    fn config(&mut self) -> String {
        self.config.clone()
    }
}

/// The memory limiter of one call: every memory and table of the instance together.
#[derive(Debug, Default)]
pub struct Limiter {
    /// Bytes of linear memory the instance may have at most (all memories together).
    pub memory_max: usize,
    /// Bytes it has now.
    pub memory_now: usize,
    /// The most it had.
    pub memory_peak: usize,
    /// Whether a growth was refused (the plugin ran out of its memory budget).
    pub denied: bool,
}

/// Most table elements an instance may have (per table).
const TABLE_ELEMENTS_MAX: usize = 100_000;

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let after = self.memory_now - current.min(self.memory_now) + desired;
        if after > self.memory_max {
            self.denied = true;
            return Ok(false);
        }
        self.memory_now = after;
        self.memory_peak = self.memory_peak.max(after);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// stdout + stderr of a call: kept up to [`STDIO_MAX`] bytes, the rest dropped silently
/// (a plugin that prints a lot is not stopped by it).
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = STDIO_MAX.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
