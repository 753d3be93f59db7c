//! The command line: `serve` (alias `run`), `sim`, `init`, `add-workflow`,
//! `import-workflow`, `list-workflows`, `health`, `check`, `plugin`, `backup`.
//!
//! Commands that change the database work whether or not a server is running: redb
//! allows one process at a time, so when the file is held by a running gateway they go
//! through its REST API instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::api;
use crate::comfy::sim;
use crate::config::{Config, ServeArgs, database_path};
use crate::service::{
    Actor, Gateway, OwnerFile, PluginChange, PluginSource, PluginSpec, Registry, WorkflowDefinition, register_bundled,
};
use crate::store::{Store, StoreError};

/// comfyui-gateway: a durable REST gateway in front of ComfyUI.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the API and the scheduler.
    #[command(alias = "run")]
    Serve(Box<ServeArgs>),
    /// Run the ComfyUI simulator.
    Sim(sim::SimArgs),
    /// Create the database and register the bundled workflows.
    Init(DbArgs),
    /// Register (or update) a workflow from an API-format JSON file.
    AddWorkflow(AddWorkflowArgs),
    /// Propose a template and input schema for a workflow exported from ComfyUI
    /// (Workflow → Export (API)), typed from a ComfyUI server's node definitions; print it,
    /// write it (`--out`) or register it (`--register`).
    ImportWorkflow(ImportWorkflowArgs),
    /// List registered workflows.
    ListWorkflows(DbArgs),
    /// Ask a running gateway for its health (`/health`), or only whether it is alive
    /// (`--live`: `/livez`, the container's HEALTHCHECK) or ready (`--ready`: `/readyz`).
    /// Exits 0 when the answer is 200.
    Health(HealthArgs),
    /// Check a stopped gateway's database: open it (recovering from a crash as `serve`
    /// would), verify every cross-table invariant (indexes, counters, blob references, no
    /// dangling or leaked blobs, the webhook outbox) and print its counts.
    Check(CheckArgs),
    /// Plugin developer tools: `plugin check FILE.wasm`, `plugin run FILE.wasm --hook H --input FILE`.
    Plugin(crate::plugins::cli::PluginArgs),
    /// Write an online, consistent copy of the database to `--out FILE` and check it: from
    /// the file when no gateway holds it, else through the running gateway's
    /// `POST /admin/backup` (GATEWAY_URL, GATEWAY_API_KEY). Prints its size, counts and time.
    Backup(BackupArgs),
    /// Speak MCP over stdin and stdout, for a client that launches a local process
    /// (Claude Desktop, ...), and forward it to a gateway's `/mcp` with an API key or a
    /// bearer token. Logs go to stderr.
    Mcp(McpArgs),
}

/// `mcp` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct McpArgs {
    /// The gateway's base URL (`/mcp` is added), or its `/mcp` URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// API key sent as `X-API-Key`.
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Bearer token (a JWT) sent as `Authorization: Bearer`.
    #[arg(long, env = "GATEWAY_TOKEN", hide_env_values = true, conflicts_with = "api_key")]
    pub token: Option<String>,
}

/// `backup` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where to write the copy (a new file: an existing one is not replaced).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Free bytes the copy's file system must keep beyond the database's size (as
    /// `serve`'s setting; 0: no check beyond the size).
    #[arg(long, env, default_value_t = 1 << 30)]
    pub disk_free_min_bytes: u64,
    #[command(flatten)]
    pub db: DbArgs,
}

/// Where the database is, and where a running server would be.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    /// Path of the redb database file.
    #[arg(long, env, default_value = "./data/gateway.redb")]
    pub database_url: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How to reach a running gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of a running gateway (default: http://HOST:PORT).
    #[arg(long, env = "GATEWAY_URL")]
    pub server_url: Option<String>,
    /// Port of a running gateway.
    #[arg(long, env, default_value_t = 3000)]
    pub port: u16,
    /// Host of a running gateway.
    #[arg(long, env, default_value = "127.0.0.1")]
    pub host: String,
    /// API key sent as `X-API-Key` to a running gateway that has authentication on.
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ServerArgs {
    /// An HTTP client of the running gateway, sending the API key if one is given.
    fn client(&self) -> Result<reqwest::Client, CliError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &self.api_key {
            let mut v = reqwest::header::HeaderValue::from_str(key)
                .map_err(|_| CliError::config("GATEWAY_API_KEY: not a valid header value"))?;
            v.set_sensitive(true);
            headers.insert("x-api-key", v);
        }
        reqwest::Client::builder().default_headers(headers).build().map_err(|e| CliError::runtime(e.to_string()))
    }

    fn base_url(&self) -> String {
        self.server_url.clone().unwrap_or_else(|| {
            // A gateway bound to every interface answers on loopback; an IPv6 address
            // goes in brackets.
            let host = match self.host.as_str() {
                "0.0.0.0" => "127.0.0.1".to_owned(),
                "::" | "[::]" => "[::1]".to_owned(),
                h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
                h => h.to_owned(),
            };
            format!("http://{host}:{}", self.port)
        })
    }
}

/// `health` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// Ask `/livez`: is the process up and serving (whatever its backends do).
    #[arg(long, conflicts_with = "ready")]
    pub live: bool,
    /// Ask `/readyz`: is the store open and at least one backend reachable.
    #[arg(long)]
    pub ready: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,
    /// The gateway.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `check` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Path of the redb database file.
    #[arg(long, env, default_value = "./data/gateway.redb")]
    pub database_url: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// With `STORAGE_PROVIDER=s3`: also check that every remote blob's object exists
    /// (one HEAD request per blob).
    #[arg(long)]
    pub objects: bool,
    /// The blob storage (read for `--objects`).
    #[command(flatten)]
    pub storage: crate::config::StorageArgs,
}

/// `add-workflow` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct AddWorkflowArgs {
    /// The API-format workflow JSON file (a bare template, or `{workflow, inputSchema, ...}`).
    pub file: PathBuf,
    /// The workflow id.
    #[arg(long)]
    pub id: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Input JSON Schema file.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Plugin (.wasm component) file: compiled, type-checked and stored with the workflow.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// The plugin's configuration: JSON text, or `@FILE`.
    #[arg(long, requires = "plugin")]
    pub plugin_config: Option<String>,
    /// Keep the original outputs beside those the plugin's output-process returns.
    #[arg(long, requires = "plugin")]
    pub keep_originals: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `import-workflow` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ImportWorkflowArgs {
    /// The workflow exported from ComfyUI in API format (`{node id: {class_type, inputs}}`).
    pub file: PathBuf,
    /// The ComfyUI server whose node definitions (`/object_info`) type the inputs: the first
    /// of a `COMFYUI_URL` list.
    #[arg(long, env, default_value = "http://127.0.0.1:8188")]
    pub comfyui_url: String,
    /// The workflow id (default `imported`).
    #[arg(long)]
    pub id: Option<String>,
    /// Display name (default: the id); the schema's `title`.
    #[arg(long)]
    pub name: Option<String>,
    /// Description; the schema's `description`.
    #[arg(long)]
    pub description: Option<String>,
    /// Also write `DIR/<id>.json` (template) and `DIR/<id>.schema.json` (input schema), the
    /// files `add-workflow <id>.json --id ID --schema <id>.schema.json` takes.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Register (or update) it as proposed, as `add-workflow` does.
    #[arg(long)]
    pub register: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// What kind of failure ended a command; [`Failure::exit_code`] is the one mapping to the
/// process's exit code.
///
/// Exit codes (README documents them):
/// - 0: success, `--help`, `--version`;
/// - 2: [`Failure::Usage`] (the command line, or a file or value named on it) and
///   [`Failure::Config`] (a bad setting: a flag, a variable, `.env`, `FAILPOINTS`);
/// - 1: [`Failure::Runtime`] (the database, a backend, the network, a plugin, an integrity
///   check that found problems), [`Failure::Locked`] (a running gateway holds the
///   database) and [`Failure::StoreFailed`] (`serve` stopped after a failed commit, so
///   that a restart recovers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The command line is wrong.
    Usage,
    /// The configuration is wrong.
    Config,
    /// The command could not do its work.
    Runtime,
    /// The database is held by a running gateway.
    Locked,
    /// The database failed a write while serving (fail-stop).
    StoreFailed,
}

impl Failure {
    /// The process exit code of this kind of failure (see the type's docs).
    pub fn exit_code(self) -> i32 {
        match self {
            Failure::Usage | Failure::Config => 2,
            Failure::Runtime | Failure::Locked | Failure::StoreFailed => 1,
        }
    }
}

/// A failure of a command: its message and kind.
#[derive(Debug)]
pub struct CliError {
    /// One line for the user.
    pub message: String,
    /// What failed; decides the exit code.
    pub kind: Failure,
}

impl CliError {
    /// A failure of `kind`.
    pub fn new(kind: Failure, message: impl Into<String>) -> CliError {
        CliError { message: message.into(), kind }
    }

    /// The command could not do its work (exit code 1).
    pub fn runtime(message: impl Into<String>) -> CliError {
        CliError::new(Failure::Runtime, message)
    }

    /// The command line is wrong (exit code 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Failure::Usage, message)
    }

    /// The configuration is wrong (exit code 2).
    pub fn config(message: impl Into<String>) -> CliError {
        CliError::new(Failure::Config, message)
    }

    /// The process exit code (see [`Failure`]).
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}", self.message)
    }
}

/// Every environment variable the command line reads (each command's settings), from
/// clap's own definitions.
pub fn setting_names() -> Vec<String> {
    fn walk(cmd: &clap::Command, names: &mut Vec<String>) {
        names.extend(cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()));
        for sub in cmd.get_subcommands() {
            walk(sub, names);
        }
    }
    let mut names = Vec::new();
    walk(&<Cli as clap::CommandFactory>::command(), &mut names);
    names.sort_unstable();
    names.dedup();
    names
}

/// Warn once per variable that looks like a setting but is none (a typo is otherwise
/// silently ignored): `unknown setting COMFYUI_ULR (did you mean COMFYUI_URL?)`.
pub fn warn_unknown_settings() {
    for unknown in crate::config::unknown_settings(&setting_names()) {
        match &unknown.suggestion {
            Some(known) => tracing::warn!("unknown setting {} (did you mean {known}?)", unknown.name),
            None => tracing::warn!("unknown setting {}", unknown.name),
        }
    }
}

/// Run a parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::from_args(&args).map_err(|e| CliError::config(e.to_string()))?;
            // Checked now; armed once the gateway has started, before it serves.
            let failpoints = match &args.failpoints {
                Some(spec) => {
                    Some(crate::failpoints::parse(spec).map_err(|e| CliError::config(format!("FAILPOINTS: {e}")))?)
                }
                None => None,
            };
            serve(config, failpoints, args.addr_file.as_deref()).await
        }
        Command::Sim(args) => {
            let addr_file = args.addr_file.clone();
            let listening = |addr| match &addr_file {
                Some(path) => write_addr_file(path, addr).map_err(std::io::Error::other),
                None => Ok(()),
            };
            sim::run_cli(args, listening).await.map_err(|e| CliError::runtime(format!("simulator: {e}")))
        }
        Command::Init(db) => init(&db).await,
        Command::AddWorkflow(args) => add_workflow(args).await,
        Command::ImportWorkflow(args) => import_workflow(args).await,
        Command::ListWorkflows(db) => list_workflows(&db).await,
        Command::Health(args) => health(&args).await,
        Command::Check(args) => check(&args).await,
        Command::Plugin(args) => crate::plugins::cli::main(args).await,
        Command::Backup(args) => backup(&args).await,
        Command::Mcp(args) => mcp_bridge(args).await,
    }
}

/// `mcp`: the stdio bridge ([`crate::mcp_stdio`]).
async fn mcp_bridge(args: McpArgs) -> Result<(), CliError> {
    let base = args.url.trim_end_matches('/');
    let url = reqwest::Url::parse(base).map_err(|e| CliError::config(format!("--url {base:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CliError::config(format!("--url {base:?}: must be an http:// or https:// URL")));
    }
    let url = if url.path().ends_with("/mcp") { base.to_string() } else { format!("{base}/mcp") };
    let target = crate::mcp_stdio::Target { url, api_key: args.api_key, token: args.token };
    crate::mcp_stdio::run(target).await.map_err(CliError::runtime)
}

async fn serve(
    config: Config,
    failpoints: Option<crate::failpoints::Armed>,
    addr_file: Option<&Path>,
) -> Result<(), CliError> {
    let mut config = config;
    let addr = std::net::SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::runtime(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| CliError::runtime(format!("cannot listen on {addr}: {e}")))?;
    config.bound_to(bound.port());
    let config = Arc::new(config);
    let gateway = Gateway::start(config.clone()).await.map_err(|e| CliError::runtime(e.message))?;
    if let Some(points) = failpoints {
        points.arm().map_err(|e| CliError::config(format!("FAILPOINTS: {e}")))?;
    }
    // Before the first request is answered, so the warning cannot be missed.
    log_auth(&config);
    let server = api::serve(listener, gateway.clone()).map_err(|e| CliError::runtime(e.to_string()))?;
    let backends: Vec<String> = config.backends.iter().map(|b| format!("{}={}", b.id, b.public_url())).collect();
    tracing::info!(addr = %server.local_addr, ?backends, "comfyui-gateway listening");
    gateway.announce(server.local_addr);
    if let Some(path) = addr_file {
        write_addr_file(path, server.local_addr).map_err(CliError::runtime)?;
    }
    // Fail-stop: once the database failed a write (a disk error), nothing more can be
    // committed in this process; exiting lets the supervisor's restart recover from what
    // is on disk, as after a crash, instead of answering every request with an error.
    let failed = async {
        loop {
            if let Some(reason) = gateway.store_failure() {
                return reason;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        reason = failed => Some(reason),
    };
    match &failure {
        None => tracing::info!("shutting down"),
        Some(reason) => tracing::error!(%reason, "the database failed; exiting so that a restart recovers"),
    }
    server.stop().await;
    gateway.shutdown().await;
    match failure {
        None => Ok(()),
        Some(reason) => {
            Err(CliError::new(Failure::StoreFailed, format!("the database failed ({reason}); restart to recover")))
        }
    }
}

/// `--addr-file`: write `addr` to `path` once the server is listening, through a temporary
/// file renamed into place, so a reader never sees a partial address.
fn write_addr_file(path: &Path, addr: std::net::SocketAddr) -> Result<(), String> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| format!("cannot write --addr-file {}: {e}", path.display()))
}

/// Say at start how requests are authenticated: key fingerprints (owner ids), never keys.
fn log_auth(config: &Config) {
    let auth = &config.auth;
    if !auth.enabled() {
        tracing::warn!(
            host = %config.host,
            "open mode: no API_KEYS, API_KEYS_FILE, JWT_SECRET or JWT_PUBLIC_KEY is set, so every request is \
             allowed without credentials; keep HOST on a loopback address or configure credentials"
        );
        return;
    }
    for (owner, role) in auth.key_fingerprints() {
        tracing::info!(owner = %owner, role = role.as_str(), "API key accepted");
    }
    tracing::info!(?auth, metrics_public = config.metrics_public, "authentication is on");
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Open the database unless a running server holds it (then None).
fn open_store(db: &DbArgs) -> Result<Option<Store>, CliError> {
    let path = database_path(&db.database_url).map_err(|e| CliError::config(e.to_string()))?;
    match Store::open(&path) {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::Locked(_)) => Ok(None),
        Err(e) => Err(CliError::runtime(format!("cannot open {}: {e}", path.display()))),
    }
}

async fn init(db: &DbArgs) -> Result<(), CliError> {
    let path = database_path(&db.database_url).map_err(|e| CliError::config(e.to_string()))?;
    let Some(store) = open_store(db)? else {
        println!("{} is in use by a running gateway; it is already initialized", path.display());
        return Ok(());
    };
    register_bundled(&store).await.map_err(|e| CliError::runtime(e.message))?;
    let n = store.list_workflows().map_err(|e| CliError::runtime(e.to_string()))?.len();
    store.close().await;
    println!("initialized {} ({n} workflows)", path.display());
    Ok(())
}

async fn check(args: &CheckArgs) -> Result<(), CliError> {
    let path = database_path(&args.database_url).map_err(|e| CliError::config(e.to_string()))?;
    if !path.is_file() {
        return Err(CliError::usage(format!("no database at {}", path.display())));
    }
    let started = std::time::Instant::now();
    let store = match Store::open(&path) {
        Ok(store) => store,
        Err(StoreError::Locked(_)) => {
            let message = format!("{} is in use by a running gateway; stop it first", path.display());
            return Err(CliError::new(Failure::Locked, message));
        }
        Err(e) => return Err(CliError::runtime(format!("cannot open {}: {e}", path.display()))),
    };
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut verdict = store.verify_integrity().map_err(|e| e.to_string());
    let objects = if args.objects { Some(check_objects(&store, &args.storage).await?) } else { None };
    if let (Ok(()), Some(o)) = (&verdict, &objects)
        && o.missing > 0
    {
        verdict = Err(format!("{} of {} objects are missing from the bucket", o.missing, o.checked));
    }
    let deletes_pending = store.pending_deletes(usize::MAX).map_err(|e| CliError::runtime(e.to_string()))?.len();
    let stats = store.stats().map_err(|e| CliError::runtime(e.to_string()))?;
    store.close().await;
    let jobs: serde_json::Map<String, Value> =
        stats.n_jobs_by_state.iter().map(|(state, n)| (state.as_str().to_string(), json!(n))).collect();
    let report = json!({
        "ok": verdict.is_ok(),
        "error": verdict.as_ref().err().map(|e| e.to_string()),
        "openMs": open_ms,
        "jobs": jobs,
        "blobs": stats.n_blobs,
        "blobBytes": stats.blob_bytes,
        "cacheEntries": stats.n_cache_entries,
        "deliveriesPending": stats.n_deliveries_pending,
        "objectDeletesPending": deletes_pending,
        "objectsChecked": objects.as_ref().map(|o| o.checked),
        "objectsMissing": objects.as_ref().map(|o| o.missing),
        "objectsOrphaned": objects.as_ref().map(|o| o.orphaned),
    });
    if args.json {
        println!("{report}");
    } else {
        let counts: Vec<String> = jobs.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{}: opened in {open_ms:.1} ms", path.display());
        println!("jobs: {}", counts.join(", "));
        println!(
            "blobs: {} ({} bytes), cache entries: {}, webhook deliveries pending: {}",
            stats.n_blobs, stats.blob_bytes, stats.n_cache_entries, stats.n_deliveries_pending
        );
        if let Some(o) = &objects {
            println!(
                "objects: {} checked, {} missing, {} orphaned, {deletes_pending} waiting for deletion",
                o.checked, o.missing, o.orphaned
            );
        }
    }
    match verdict {
        Ok(()) => {
            if !args.json {
                println!("integrity: ok");
            }
            Ok(())
        }
        Err(e) => Err(CliError::runtime(format!("integrity check failed: {e}"))),
    }
}

/// What `check --objects` found.
struct ObjectsChecked {
    checked: usize,
    missing: usize,
    /// Objects no blob row names and none waiting for deletion: left by a crash between an
    /// upload and its commit (harmless; never deleted automatically).
    orphaned: usize,
}

/// HEAD the object of every remote blob (16 at a time).
async fn check_objects(store: &Store, args: &crate::config::StorageArgs) -> Result<ObjectsChecked, CliError> {
    use futures_util::StreamExt;
    let provider = crate::config::storage_provider(args).map_err(|e| CliError::config(e.to_string()))?;
    let crate::storage::Provider::S3(settings) = provider else {
        return Err(CliError::config("--objects needs STORAGE_PROVIDER=s3 and its S3_* settings"));
    };
    let objects = crate::storage::Objects::new(&settings).map_err(|e| CliError::runtime(e.to_string()))?;
    let hashes = store.remote_blobs().map_err(|e| CliError::runtime(e.to_string()))?;
    let checked = hashes.len();
    let results: Vec<_> = futures_util::stream::iter(hashes)
        .map(|hash| {
            let objects = objects.clone();
            async move { (hash, objects.exists(&hash).await) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let known: std::collections::HashSet<_> = store
        .remote_blobs()
        .and_then(|r| Ok(r.into_iter().chain(store.pending_deletes(usize::MAX)?.into_iter().map(|(h, _)| h))))
        .map_err(|e| CliError::runtime(e.to_string()))?
        .collect();
    let listed = objects.list().await.map_err(|e| CliError::runtime(format!("cannot list the bucket: {e}")))?;
    let orphaned = listed.iter().filter(|h| !known.contains(*h)).count();
    let mut missing = 0;
    for (hash, result) in results {
        match result {
            Ok(true) => {}
            Ok(false) => {
                missing += 1;
                eprintln!("missing object: {}", objects.key(&hash));
            }
            Err(e) => return Err(CliError::runtime(format!("cannot check the bucket: {e}"))),
        }
    }
    Ok(ObjectsChecked { checked, missing, orphaned })
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::runtime(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| CliError::runtime(format!("{}: invalid JSON: {e}", path.display())))
}

async fn add_workflow(args: AddWorkflowArgs) -> Result<(), CliError> {
    let plugin = match &args.plugin {
        Some(path) => {
            let wasm = std::fs::read(path).map_err(|e| CliError::usage(format!("--plugin {}: {e}", path.display())))?;
            let config = match args.plugin_config.as_deref() {
                None => json!({}),
                Some(text) => {
                    let text = match text.strip_prefix('@') {
                        Some(file) => std::fs::read_to_string(file)
                            .map_err(|e| CliError::usage(format!("--plugin-config {file}: {e}")))?,
                        None => text.to_string(),
                    };
                    serde_json::from_str(&text)
                        .map_err(|e| CliError::usage(format!("--plugin-config: not JSON: {e}")))?
                }
            };
            PluginChange::Set(PluginSpec {
                source: PluginSource::Wasm(wasm),
                config,
                keep_originals: args.keep_originals,
            })
        }
        None => PluginChange::Keep,
    };
    let file = read_json(&args.file)?;
    // Either a bare API-format template, or a definition object holding one.
    let (template, mut schema, defaults, keep_previews) = match file.get("workflow") {
        Some(t) if t.is_object() => (
            t.clone(),
            file.get("inputSchema").cloned(),
            file.get("defaults").cloned(),
            file.get("keepPreviews").and_then(Value::as_bool).unwrap_or(false),
        ),
        _ => (file, None, None, false),
    };
    if let Some(path) = &args.schema {
        schema = Some(read_json(path)?);
    }
    let def = WorkflowDefinition {
        id: args.id.clone(),
        name: args.name.clone(),
        description: args.description.clone(),
        template,
        input_schema: schema.filter(|s| !s.is_null()),
        defaults: defaults.and_then(|d| d.as_object().cloned()),
        keep_previews,
        plugin,
    };
    println!("{}", register_definition(def, &args.db).await?);
    Ok(())
}

/// Register `def` (or a new version of it when the id exists): in the database, or through
/// the REST API of the server holding it. What was registered, in one line.
async fn register_definition(def: WorkflowDefinition, db: &DbArgs) -> Result<String, CliError> {
    match open_store(db)? {
        Some(store) => {
            let replace = store.get_workflow(&def.id).map_err(|e| CliError::runtime(e.to_string()))?.is_some();
            let host = crate::plugins::Host::new(crate::plugins::Limits::default())
                .map_err(|e| CliError::runtime(e.message))?;
            let registry = Registry::new(store.clone(), host);
            let rec =
                registry.put_workflow(def, replace, &Actor::cli()).await.map_err(|e| CliError::runtime(e.message))?;
            store.close().await;
            Ok(format!("workflow {} version {}", rec.id, rec.version))
        }
        None => {
            let base = owning_gateway(db).await?;
            // The same wire type the API parses; absent `plugin` keeps an update's plugin.
            let plugin = match &def.plugin {
                PluginChange::Set(PluginSpec { source: PluginSource::Wasm(wasm), config, keep_originals }) => {
                    use base64::Engine as _;
                    Some(Some(crate::wire::request::PluginBody {
                        wasm: Some(base64::engine::general_purpose::STANDARD.encode(wasm)),
                        hash: None,
                        config: Some(config.clone()),
                        keep_originals: *keep_originals,
                    }))
                }
                _ => None,
            };
            let object = |v: Option<Value>| match v {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            };
            let body = crate::wire::request::WorkflowDefinition {
                id: def.id.clone(),
                name: def.name.clone(),
                description: def.description.clone(),
                workflow: object(Some(def.template.clone())).unwrap_or_default(),
                input_schema: object(def.input_schema.clone()),
                defaults: def.defaults.clone(),
                keep_previews: def.keep_previews,
                plugin,
            };
            let http = db.server.client()?;
            let exists = http
                .get(format!("{base}/workflows/{}", def.id))
                .send()
                .await
                .map(|r| r.status().is_success())
                .map_err(|e| CliError::runtime(format!("the database is in use and {base} cannot be reached: {e}")))?;
            let req = if exists {
                http.put(format!("{base}/workflows/{}", def.id))
            } else {
                http.post(format!("{base}/workflows"))
            };
            let resp = req.json(&body).send().await.map_err(|e| CliError::runtime(format!("{base}: {e}")))?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                return Err(refused(status, &v));
            }
            Ok(format!("workflow {} version {} (via {base})", v["id"].as_str().unwrap_or(""), v["version"]))
        }
    }
}

async fn import_workflow(args: ImportWorkflowArgs) -> Result<(), CliError> {
    let backends = crate::config::parse_backends(&args.comfyui_url, 1).map_err(|e| CliError::config(e.to_string()))?;
    let backend = &backends[0];
    let export = read_json(&args.file)?;
    let file = args.file.display();
    let refused = |e: crate::error::Error| {
        let details: Vec<String> = e
            .details
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|d| format!("{}: {}", d["path"].as_str().unwrap_or(""), d["message"].as_str().unwrap_or("")))
            .collect();
        let message = if details.is_empty() { e.message } else { details.join("; ") };
        CliError::runtime(format!("{file}: {message}"))
    };
    crate::service::check_import(&export, "", args.id.as_deref()).map_err(refused)?;
    let http = crate::comfy::client::ComfyClient::http_pool(std::time::Duration::from_secs(30))
        .map_err(|e| CliError::runtime(format!("cannot build the HTTP client: {e}")))?;
    let client = crate::comfy::client::ComfyClient::new(&backend.url, http);
    let classes = client.object_info().await.map_err(|e| {
        CliError::runtime(format!("cannot read the node definitions of {} (/object_info): {e}", backend.public_url()))
    })?;
    let imported =
        crate::service::propose_import(&export, "", &classes, args.id, args.name, args.description).map_err(refused)?;
    let proposal = &imported.proposal;
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::wire::system::WorkflowImported::new(
            &imported.id,
            &imported.name,
            &imported.description,
            &imported.proposal,
        ))
        .unwrap_or_default()
    );
    for warning in &proposal.warnings {
        eprintln!("warning: {warning}");
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| CliError::runtime(format!("--out {}: {e}", dir.display())))?;
        for (path, value) in [
            (dir.join(format!("{}.json", imported.id)), &proposal.template),
            (dir.join(format!("{}.schema.json", imported.id)), &proposal.input_schema),
        ] {
            let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
            std::fs::write(&path, text).map_err(|e| CliError::runtime(format!("{}: {e}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
    }
    if args.register {
        // stdout holds only the proposal's JSON.
        eprintln!("{}", register_definition(imported.definition(), &args.db).await?);
    }
    Ok(())
}

async fn list_workflows(db: &DbArgs) -> Result<(), CliError> {
    let rows: Vec<(String, u32, String)> = match open_store(db)? {
        Some(store) => {
            let list = store.list_workflows().map_err(|e| CliError::runtime(e.to_string()))?;
            store.close().await;
            list.into_iter().map(|w| (w.id, w.version, w.name)).collect()
        }
        None => {
            let base = owning_gateway(db).await?;
            let resp = db
                .server
                .client()?
                .get(format!("{base}/workflows"))
                .send()
                .await
                .map_err(|e| CliError::runtime(format!("{base}: {e}")))?;
            let status = resp.status();
            let v: Value = resp.json().await.map_err(|e| CliError::runtime(format!("{base}: {e}")))?;
            if !status.is_success() {
                return Err(refused(status, &v));
            }
            v["workflows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    let s = |k: &str| w[k].as_str().unwrap_or("").to_string();
                    (s("id"), w["version"].as_u64().unwrap_or(0) as u32, s("name"))
                })
                .collect()
        }
    };
    for (id, version, name) in rows {
        println!("{id}\tv{version}\t{name}");
    }
    Ok(())
}

/// The base URL of the running gateway that holds the database of `db` (which is locked):
/// the address in its [`OwnerFile`], else `GATEWAY_URL` (or `HOST:PORT`), whichever
/// answers `/livez` with the database id the owner file names. Refused (exit code 1) when
/// there is no owner file or no such gateway: acting through another gateway would list
/// or change another database.
async fn owning_gateway(db: &DbArgs) -> Result<String, CliError> {
    let path = database_path(&db.database_url).map_err(|e| CliError::config(e.to_string()))?;
    let held = |why: String| {
        CliError::new(Failure::Locked, format!("{} is in use by a running gateway; {why}", path.display()))
    };
    let owner = match OwnerFile::read(&path) {
        Ok(Some(owner)) => owner,
        Ok(None) => {
            return Err(held(format!(
                "it did not say where it listens (no {}); stop it, or use its REST API",
                OwnerFile::path(&path).display()
            )));
        }
        Err(e) => return Err(held(format!("cannot read {}: {e}", OwnerFile::path(&path).display()))),
    };
    let mut candidates = vec![owner.url.trim_end_matches('/').to_string()];
    let given = db.server.base_url().trim_end_matches('/').to_string();
    if !candidates.contains(&given) {
        candidates.push(given);
    }
    let http = db.server.client()?;
    let mut found = Vec::new();
    for base in candidates {
        let answer = match http.get(format!("{base}/livez")).send().await {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(v) => match v["database"].as_str() {
                    Some(id) if id == owner.database => return Ok(base),
                    Some(id) => format!("{base} holds database {id}"),
                    None => format!("{base} does not say which database it holds"),
                },
                Err(e) => format!("{base}: {e}"),
            },
            Err(e) => format!("{base} cannot be reached: {e}"),
        };
        found.push(answer);
    }
    Err(held(format!(
        "its database is {}, and {}; refusing to act through another gateway (set GATEWAY_URL to the one holding it)",
        owner.database,
        found.join(", and ")
    )))
}

async fn health(args: &HealthArgs) -> Result<(), CliError> {
    let server = &args.server;
    let base = server.base_url();
    let route = if args.live {
        "livez"
    } else if args.ready {
        "readyz"
    } else {
        "health"
    };
    // With GATEWAY_API_KEY the answer of /health has the details (backends, version);
    // without, when the gateway has credentials configured, only up and ready. The probes
    // are public.
    let resp = server
        .client()?
        .get(format!("{base}/{route}"))
        .timeout(std::time::Duration::from_secs(args.timeout_s))
        .send()
        .await
        .map_err(|e| CliError::runtime(format!("{base} is not reachable: {e}")))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| CliError::runtime(format!("{base}/{route}: {e}")))?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    if status.is_success() {
        Ok(())
    } else {
        let what = if args.live {
            "not live"
        } else if args.ready {
            "not ready"
        } else {
            "unhealthy"
        };
        Err(CliError::runtime(format!("{what} ({status})")))
    }
}

/// A running gateway's refusal (a non-2xx answer with the error envelope `v`), for the user:
/// the status and the message.
fn refused(status: reqwest::StatusCode, v: &Value) -> CliError {
    CliError::runtime(format!("{status}: {}", v["error"]["message"].as_str().unwrap_or("")))
}

/// `backup`: copy the database to `--out` from the file itself when it is free, else through
/// the running gateway's `POST /admin/backup`; either way the copy is checked (read-only)
/// before it is renamed to `--out`.
async fn backup(args: &BackupArgs) -> Result<(), CliError> {
    let out = &args.out;
    if out.try_exists().map_err(|e| CliError::usage(format!("--out {}: {e}", out.display())))? {
        return Err(CliError::usage(format!("--out {}: the file exists; choose a new name", out.display())));
    }
    let path = database_path(&args.db.database_url).map_err(|e| CliError::config(e.to_string()))?;
    if !path.is_file() {
        return Err(CliError::usage(format!("no database at {}", path.display())));
    }
    let started = std::time::Instant::now();
    let (stats, size_bytes, n_entries, via) = match open_store(&args.db)? {
        Some(store) => {
            let dest = out.clone();
            let keep_free = args.disk_free_min_bytes;
            let copy = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.backup(&dest, keep_free))
                    .await
                    .map_err(|e| CliError::runtime(e.to_string()))?
            };
            store.close().await;
            let report = copy.map_err(|e| CliError::runtime(format!("backup failed: {e}")))?;
            (report.stats, report.size_bytes, report.n_entries, String::new())
        }
        None => {
            let base = owning_gateway(&args.db).await?;
            let (stats, size, n_entries) = download_backup(&args.db.server, &base, out).await?;
            (stats, size, n_entries, format!(" (via {base})"))
        }
    };
    let counts: Vec<String> =
        stats.n_jobs_by_state.iter().map(|(state, n)| format!("{} {n}", state.as_str())).collect();
    println!("backup {}: {size_bytes} bytes, {n_entries} entries{via}", out.display());
    println!("jobs: {}", counts.join(", "));
    println!("blobs: {} ({} bytes), cache entries: {}", stats.n_blobs, stats.blob_bytes, stats.n_cache_entries);
    println!("integrity: ok; took {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

/// Download a backup from the gateway at `base` into `<out>.creating`, check its SHA-256
/// and its integrity (read-only), and rename it to `out`: its counts, size and entries.
async fn download_backup(
    server: &ServerArgs,
    base: &str,
    out: &Path,
) -> Result<(crate::store::StoreStats, u64, u64), CliError> {
    use std::io::Write as _;
    let mut resp = server
        .client()?
        .post(format!("{base}/admin/backup"))
        .send()
        .await
        .map_err(|e| CliError::runtime(format!("the database is in use and {base} cannot be reached: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(refused(status, &v));
    }
    let expected = resp.headers().get("x-backup-sha256").and_then(|v| v.to_str().ok()).map(str::to_string);
    let n_entries = resp.headers().get("x-backup-entries").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".creating");
    let tmp = PathBuf::from(tmp);
    let failed = |e: std::io::Error| CliError::runtime(format!("{}: {e}", tmp.display()));
    let mut file = std::fs::File::create(&tmp).map_err(failed)?;
    let mut size = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| CliError::runtime(format!("{base}: download cut: {e}")))? {
        file.write_all(&chunk).map_err(failed)?;
        size += chunk.len() as u64;
    }
    file.sync_all().map_err(failed)?;
    drop(file);
    let checked = (|| {
        let sha = crate::service::sha256_hex(&mut std::fs::File::open(&tmp).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if expected.as_deref() != Some(sha.as_str()) {
            return Err(format!("SHA-256 {sha} differs from the gateway's {expected:?}"));
        }
        Store::verify_file(&tmp).map_err(|e| format!("integrity check failed: {e}"))
    })();
    match checked {
        Ok(stats) => {
            std::fs::rename(&tmp, out).map_err(failed)?;
            Ok((stats, size, n_entries))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(CliError::runtime(format!("the backup from {base} is not usable: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CliError, Failure};

    /// The exit codes README documents: 2 for the command line and the configuration, 1
    /// for everything else.
    #[test]
    fn failures_map_to_the_documented_exit_codes() {
        let codes = [
            (Failure::Usage, 2),
            (Failure::Config, 2),
            (Failure::Runtime, 1),
            (Failure::Locked, 1),
            (Failure::StoreFailed, 1),
        ];
        for (kind, code) in codes {
            assert_eq!(kind.exit_code(), code, "{kind:?}");
            assert_eq!(CliError::new(kind, "x").exit_code(), code, "{kind:?}");
        }
        assert_eq!(CliError::config("PORT: not a number").to_string(), "error: PORT: not a number");
    }
}
