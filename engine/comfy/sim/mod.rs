//! The ComfyUI simulator: `comfyui-gateway sim [--port 8188]`.
//!
//! Speaks ComfyUI 0.3.64's HTTP + WebSocket protocol as documented in
//! `comfyui/PROTOCOL.md` and the captures: the same routes (each also under `/api`),
//! status codes and bodies, WebSocket message order and routing, `{}` for unknown
//! history, the binary-heap `queue_pending` order, interrupt and `POST /queue`
//! semantics, the classic one-prompt cache, and total amnesia on restart (only files in
//! `output/` and `input/` survive; `temp/` is wiped at start).
//!
//! Native nodes produce real PNGs: EmptyImage, LoadImage, ImageInvert, ImageScale,
//! ImageScaleBy, SaveImage, PreviewImage (and SaveImageWebsocket). Every other class in
//! the embedded `object_info.json` "runs" for `--node-delay-ms` split into `progress` ticks
//! (`steps` input, else 10) and yields plausible outputs by type (LATENT sizes follow
//! EmptyLatentImage and upscalers; IMAGE from VAEDecode has the latent's size and pixels
//! derived from the node's inputs, so different seeds give different images).
//! Simplifications: every `upscale_method` is nearest-neighbour; `/view?preview=` returns
//! the stored file unchanged; LoadImage reads PNG only.
//!
//! ## Simulator-only routes
//! - `GET /sim/executions` → `{"executions": [{"promptId", "submitted", "count"}],
//!   "maxQueueDepth"}`: every prompt id in order of first accepted submission, with the
//!   number of accepted `POST /prompt` calls (`submitted`) and of actual execution starts
//!   (`count`, one per `execution_start`); `maxQueueDepth` is the largest pending + running
//!   count seen. Memory only. `POST /sim/reset` clears it.
//! - `GET /sim/faults` → the armed faults; `POST /sim/faults` with any subset of:
//!
//! | JSON field (camelCase) | flag | effect |
//! |---|---|---|
//! | `latencyMs: N` | `--fault-latency-ms N` | sleep N ms before answering every HTTP request (not `/sim/*`) |
//! | `oom: N` | `--fault-oom N` | the next N prompts fail at their first non-trivial node with `execution_error`, `exception_type` `torch.OutOfMemoryError` ("CUDA out of memory … TIPS: …") |
//! | `nodeError: N` | `--fault-node-error N` | the next N prompts fail the same way with a `RuntimeError` |
//! | `hang: N` | `--fault-hang N` | the next N prompts hang in their first non-trivial node (progress every 100 ms) until interrupted |
//! | `dropWs: true` | – | close every WebSocket now (TCP drop, no close frame) |
//! | `dropWsAfterMs: N` / `null` | `--fault-drop-ws-after-ms N` | drop every WebSocket N ms after the next execution starts (one-shot) |
//! | `crash: true` | – | exit the process with code 137 (~50 ms later, no cleanup) |
//! | `crashOnNextExecution: true` | `--fault-crash-on-next-execution` | exit with code 137 when the next prompt is taken from the queue |
//! | `promptError: N` | – | the next N `POST /prompt` answer 500 (aiohttp's text) without queueing the prompt |
//! | `promptHang: N` | – | the next N accepted `POST /prompt` queue the prompt, then hold the answer (an hour, i.e. until the client gives up) |
//! | `uploadError: N` | – | the next N `POST /upload/image` answer 500 without storing the file |
//! | `uploadHang: N` | – | the next N `POST /upload/image` store the file, then hold the answer (an hour) |
//! | `historyError: N` | – | the next N `GET /history/{id}` answer 500 |
//! | `historyHang: N` | – | the next N `GET /history/{id}` hold their answer (an hour) |
//! | `historyNoOutputs: N` | – | the next N `GET /history/{id}` that find the prompt report it with `outputs: {}` and `meta: {}` |
//! | `viewError: N` | – | the next N `GET /view` of an existing file answer 500 |
//! | `viewHang: N` | – | the next N `GET /view` of an existing file hold their answer (an hour) |
//! | `viewGarbage: N` | – | the next N `GET /view` of an existing file answer 200, with the file's content type, and an HTML error page as the body |
//! | `viewTruncated: N` | – | the next N `GET /view` of an existing file declare the file's `Content-Length`, send half of it and close the connection |
//! | `queueGarbage: N` | – | the next N `GET /queue` answer 200 with what is not a queue, in turn: an HTML error page, a JSON object of another shape, `queue_running: null`, no `queue_running` |
//! | `historyGarbage: N` | – | the next N `GET /history/{id}` answer 200 with what is not a history, in turn: an HTML error page, a JSON object of another shape, `[]`, the prompt mapped to a string |
//! | `historyNoStatus: N` | – | the next N `GET /history/{id}` that find the prompt report it without `status` |
//! | `historyOddStatus: N` | – | the next N `GET /history/{id}` that find the prompt report it with `status_str: "running"` |
//! | `reset: true` | – | disarm everything first |
//!
//! "First non-trivial node" = the first executed node whose class is not native; if the
//! prompt has none, the first executed node. A prompt that succeeds without reaching
//! such a node (fully cached) does not consume a fault; an interrupted one does. `crash*` end the whole process, so they only make
//! sense when the simulator runs as its own process (`comfyui-gateway sim`); the tests
//! exercise them in a child process. Faults armed by flags behave exactly like the same
//! fields posted to `/sim/faults` at start. The HTTP faults (`prompt*`, `upload*`,
//! `queue*`, `history*`, `view*`) count requests on their route (with or without `/api`), so `1`
//! is a transient fault and a large N a persistent one; `/sim/*` is never faulted.

mod defs;
mod exec;
mod files;
mod heap;
mod http;
mod image;
mod ojson;
mod state;
mod validate;
mod ws;

pub use state::Faults;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use state::{Dirs, Shared};
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Command-line arguments of `comfyui-gateway sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8188)]
    pub port: u16,
    /// Directory holding `input/`, `output/` and `temp/`.
    #[arg(long, default_value = "./sim-data")]
    pub data_dir: PathBuf,
    /// Time each non-native (model) node takes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub node_delay_ms: u64,
    /// Request body limit in MB (ComfyUI's `--max-upload-size`).
    #[arg(long, default_value_t = 100)]
    pub max_upload_size: u64,
    /// Fault: delay added before answering every HTTP request, in ms.
    #[arg(long, default_value_t = 0)]
    pub fault_latency_ms: u64,
    /// Fault: the next N prompts fail with a CUDA out-of-memory error.
    #[arg(long, default_value_t = 0)]
    pub fault_oom: u32,
    /// Fault: the next N prompts fail with a RuntimeError.
    #[arg(long, default_value_t = 0)]
    pub fault_node_error: u32,
    /// Fault: the next N prompts hang until interrupted.
    #[arg(long, default_value_t = 0)]
    pub fault_hang: u32,
    /// Fault: drop every WebSocket this many ms into the first execution.
    #[arg(long)]
    pub fault_drop_ws_after_ms: Option<u64>,
    /// Fault: exit with code 137 when the first prompt starts executing.
    #[arg(long)]
    pub fault_crash_on_next_execution: bool,
    /// Once listening, write the bound address (`ip:port`) to this file: with `--port 0`,
    /// how a test learns the port the system chose.
    #[arg(long, value_name = "PATH")]
    pub addr_file: Option<PathBuf>,
}

/// Simulator configuration (from [`SimArgs`], or built directly in tests).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Host shown in `/system_stats` argv and used by [`run_cli`].
    pub host: String,
    /// Port shown in `/system_stats` argv and used by [`run_cli`].
    pub port: u16,
    /// Directory holding `input/`, `output/` and `temp/`.
    pub data_dir: PathBuf,
    /// Time each non-native node takes, in ms (0 = as fast as possible).
    pub node_delay_ms: u64,
    /// Request body limit in MB.
    pub max_upload_size_mb: u64,
    /// Faults armed at start.
    pub faults: Faults,
}

impl SimConfig {
    /// The body limit in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_size_mb.saturating_mul(1024 * 1024)
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            host: "127.0.0.1".into(),
            port: 8188,
            data_dir: PathBuf::from("./sim-data"),
            node_delay_ms: 200,
            max_upload_size_mb: 100,
            faults: Faults::default(),
        }
    }
}

impl From<SimArgs> for SimConfig {
    fn from(a: SimArgs) -> Self {
        SimConfig {
            host: a.host,
            port: a.port,
            data_dir: a.data_dir,
            node_delay_ms: a.node_delay_ms,
            max_upload_size_mb: a.max_upload_size,
            faults: Faults {
                latency_ms: a.fault_latency_ms,
                oom: a.fault_oom,
                node_error: a.fault_node_error,
                hang: a.fault_hang,
                drop_ws_after_ms: a.fault_drop_ws_after_ms,
                crash_on_next_execution: a.fault_crash_on_next_execution,
                ..Faults::default()
            },
        }
    }
}

fn prepare_dirs(data_dir: &std::path::Path) -> std::io::Result<Dirs> {
    let dirs = Dirs { input: data_dir.join("input"), output: data_dir.join("output"), temp: data_dir.join("temp") };
    std::fs::create_dir_all(&dirs.input)?;
    std::fs::create_dir_all(&dirs.output)?;
    // ComfyUI wipes temp/ at startup.
    if dirs.temp.exists() {
        std::fs::remove_dir_all(&dirs.temp)?;
    }
    std::fs::create_dir_all(&dirs.temp)?;
    // Absolute paths make the "inside the base dir" checks meaningful.
    Ok(Dirs {
        input: std::fs::canonicalize(&dirs.input)?,
        output: std::fs::canonicalize(&dirs.output)?,
        temp: std::fs::canonicalize(&dirs.temp)?,
    })
}

/// Serve until `shutdown` is cancelled. All state is in memory and dropped on return.
pub async fn serve(listener: TcpListener, config: SimConfig, shutdown: CancellationToken) -> std::io::Result<()> {
    let dirs = prepare_dirs(&config.data_dir)?;
    let shared = Shared::new(config, dirs, shutdown.child_token());
    let tracker = TaskTracker::new();
    tracker.spawn(exec::worker(shared.clone()));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "sim: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tracker.spawn(async move {
            let svc_shared = shared.clone();
            let svc = service_fn(move |req| http::handle(svc_shared.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades();
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "sim: connection error");
                    }
                }
                _ = shared.shutdown.cancelled() => {}
            }
        });
    }
    shared.shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Entry for the CLI: bind `host:port`, log the address, hand it to `listening` (which
/// writes `--addr-file`), serve until Ctrl-C / SIGTERM.
pub async fn run_cli(
    args: SimArgs,
    listening: impl FnOnce(std::net::SocketAddr) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let config = SimConfig::from(args);
    let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "ComfyUI simulator listening");
    listening(addr)?;
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal_token.cancel();
    });
    serve(listener, config, shutdown).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
