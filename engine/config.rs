//! Configuration: every setting and limit, from flags, environment and an optional `.env`
//! (flags win over the environment, the environment over `.env`). Read once at start;
//! nothing else in the crate reads the environment.
//!
//! A bad value stops start-up with one line naming the variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::Auth;

// The topics of `serve --help` (clap `help_heading`), in the order they first appear.
const SERVER: &str = "Server";
const BACKENDS: &str = "Backends";
const STORAGE: &str = "Storage";
const JOBS: &str = "Jobs and inputs";
const LIMITS: &str = "Limits";
const OBSERVABILITY: &str = "Observability";
const PRIVACY: &str = "Privacy";
const RETENTION: &str = "Retention and cache";
const PLUGINS: &str = "Plugins";
const AUTH: &str = "Authentication";
const WEBHOOKS: &str = "Webhooks";

/// The settings of `serve` (and of the commands that open the database), as flags that
/// fall back to environment variables of the same meaning (README "Configuration").
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Port of the REST API.
    #[arg(long, env, default_value_t = 3000, help_heading = SERVER)]
    pub port: u16,
    /// Address to bind: an IP address or a host name (resolved at start; of its
    /// addresses the first IPv4 one is bound, else the first: `localhost` binds 127.0.0.1).
    #[arg(long, env, default_value = "127.0.0.1", help_heading = SERVER)]
    pub host: String,
    /// ComfyUI base URL; a comma-separated list means several backends. Each may carry
    /// options in its fragment: `http://10.0.0.5:8188#id=gpu1&max=2` (`id`: a stable name
    /// of `[a-z0-9_-]`, default `<host>-<port>`; `max`: its own `MAX_CONCURRENCY`).
    #[arg(long, env, default_value = "http://127.0.0.1:8188", help_heading = BACKENDS)]
    pub comfyui_url: String,
    /// Longest execution time of one job on ComfyUI, in ms.
    #[arg(long, env, default_value_t = 300_000, help_heading = BACKENDS)]
    pub comfyui_timeout_ms: u64,
    /// Longest time of one HTTP call to ComfyUI (and longest silence within an upload or
    /// download), in ms.
    #[arg(long, env, default_value_t = 30_000, help_heading = BACKENDS)]
    pub comfyui_http_timeout_ms: u64,
    /// Path of the redb database file (a `redb://` or `file://` prefix is accepted).
    #[arg(long, env, default_value = "./data/gateway.redb", help_heading = STORAGE)]
    pub database_url: String,
    /// Prompts in flight per backend at most.
    #[arg(long, env, default_value_t = 1, help_heading = BACKENDS)]
    pub max_concurrency: u32,
    /// Largest width or height an input may ask for, in pixels.
    #[arg(long, env, default_value_t = 2048, help_heading = JOBS)]
    pub max_image_size: u32,
    /// Largest batch an input may ask for.
    #[arg(long, env, default_value_t = 4, help_heading = JOBS)]
    pub max_batch_size: u32,
    /// A backend unreachable this long (ms) is dead: its running jobs are moved to another.
    #[arg(long, env, default_value_t = 15_000, help_heading = BACKENDS)]
    pub backend_dead_after_ms: u64,
    /// Times a job may be handed to a backend before it fails.
    #[arg(long, env, default_value_t = 3, help_heading = BACKENDS)]
    pub max_attempts: u32,
    /// Head start per priority level in ms: a job waiting this long overtakes one a level above.
    #[arg(long, env, default_value_t = 60_000, help_heading = BACKENDS)]
    pub queue_aging_ms: u64,
    /// How often a job is checked on its backend when no WebSocket reports it, in ms.
    #[arg(long, env, default_value_t = 500, help_heading = BACKENDS)]
    pub poll_interval_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, env, default_value_t = 16 * 1024 * 1024, help_heading = LIMITS)]
    pub max_body_bytes: usize,
    /// Most members of a job's `inputs` (with `params`), counted in nested objects too.
    #[arg(long, env, default_value_t = 1024, help_heading = LIMITS)]
    pub max_input_keys: usize,
    /// Largest `metadata` of a job, in bytes of JSON.
    #[arg(long, env, default_value_t = 16 * 1024, help_heading = LIMITS)]
    pub max_metadata_bytes: usize,
    /// Most bytes one listing response (job pages, job logs, webhook deliveries, audit) builds before it is cut.
    #[arg(long, env, default_value_t = 8 * 1024 * 1024, help_heading = LIMITS)]
    pub max_response_bytes: usize,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env, default_value = "info", help_heading = OBSERVABILITY)]
    pub log_level: String,
    /// Log format: `json` or `text`.
    #[arg(long, env, default_value = "text", help_heading = OBSERVABILITY)]
    pub log_format: String,
    /// Register the bundled workflows on first start.
    #[arg(long, env, default_value_t = true, action = clap::ArgAction::Set, help_heading = JOBS)]
    pub bundled_workflows: bool,
    /// Largest image input (URL, base64 or multipart), in bytes.
    #[arg(long, env, default_value_t = 20 * 1024 * 1024, help_heading = JOBS)]
    pub max_input_image_bytes: usize,
    /// Time limit of fetching one image input URL (redirects included), in ms.
    #[arg(long, env, default_value_t = 15_000, help_heading = JOBS)]
    pub url_input_timeout_ms: u64,
    /// Host names, IP addresses or CIDRs that image input URLs may reach although they are
    /// not public (comma-separated; e.g. `127.0.0.1,images.internal`).
    #[arg(long, env, default_value = "", help_heading = JOBS)]
    pub url_input_allow_hosts: String,
    /// Keep prompt texts and inputs out of job logs and event streams.
    #[arg(long, env, default_value_t = false, action = clap::ArgAction::Set, help_heading = PRIVACY)]
    pub privacy_mode: bool,
    /// The key that seals prompts and inputs at rest in privacy mode (32 bytes; created
    /// with mode 0600 if absent). Default: `<database file>.privacy-key`.
    #[arg(long, env, help_heading = PRIVACY)]
    pub privacy_key_file: Option<PathBuf>,
    /// Interval of the `: ping` comment lines on event streams, in ms.
    #[arg(long, env, default_value_t = 15_000, help_heading = SERVER)]
    pub sse_heartbeat_ms: u64,
    /// Images up to this many bytes come back inline in MCP tool results, as long as the
    /// result stays under `MAX_RESPONSE_BYTES`; larger ones, and other media, as links
    /// (0: links only).
    #[arg(long, env, default_value_t = 1_048_576, help_heading = SERVER)]
    pub mcp_inline_image_bytes: u64,
    /// Send ComfyUI's preview images of running jobs (latent previews, when ComfyUI runs
    /// with `--preview-method`) on their event streams as `preview` events (at most 2 per
    /// second; memory only).
    #[arg(long, env, default_value_t = false, action = clap::ArgAction::Set, help_heading = JOBS)]
    pub live_previews: bool,
    /// How long an MCP workflow tool call waits for its job before it answers with the
    /// job as it stands (1 to 300 s): below the tool-call timeouts of common MCP clients.
    #[arg(long, env, default_value_t = 50, help_heading = SERVER)]
    pub mcp_wait_seconds: u64,
    /// Requests per client key in each `RATE_LIMIT_WINDOW_MS` (unset: no rate limit).
    #[arg(long, env, help_heading = LIMITS)]
    pub rate_limit_max: Option<u32>,
    /// The rate limit's window, in ms (set together with `RATE_LIMIT_MAX`).
    #[arg(long, env, help_heading = LIMITS)]
    pub rate_limit_window_ms: Option<u64>,
    /// Requests per client IP in each window, whatever API keys they carry
    /// (default: 10 × `RATE_LIMIT_MAX`).
    #[arg(long, env, help_heading = LIMITS)]
    pub rate_limit_ip_max: Option<u32>,
    /// Proxies (IPs or CIDRs, comma-separated) whose `X-Forwarded-For` names the client.
    #[arg(long, env, default_value = "", help_heading = SERVER)]
    pub trusted_proxies: String,
    /// Queued + running jobs per client key at most (unset: unlimited).
    #[arg(long, env, help_heading = LIMITS)]
    pub max_jobs_per_client: Option<u32>,
    /// Browser origins allowed by CORS: exact origins, comma-separated, or `*` (unset: none).
    #[arg(long, env, default_value = "", help_heading = SERVER)]
    pub cors_origins: String,
    /// Host names (and IP addresses) the `Host` header may name besides the bound address,
    /// loopback names and `PUBLIC_URL`'s host, comma-separated, or `*` for any. Checked in
    /// open mode always (against DNS rebinding), with credentials only when set.
    #[arg(long, env, default_value = "", help_heading = SERVER)]
    pub allowed_hosts: String,
    /// Open client connections at most; further connections wait to be accepted.
    #[arg(long, env, default_value_t = 1024, help_heading = LIMITS)]
    pub max_connections: u32,
    /// Longest time a client may take to send a request's headers, in ms.
    #[arg(long, env, default_value_t = 10_000, help_heading = LIMITS)]
    pub header_read_timeout_ms: u64,
    /// Open connections per client IP (the TCP peer) at most; further ones are answered
    /// `429` and closed. Peers in `TRUSTED_PROXIES` are exempt (default: `MAX_CONNECTIONS` / 4).
    #[arg(long, env, help_heading = LIMITS)]
    pub max_connections_per_ip: Option<u32>,
    /// Open connections per authenticated client (owner id) at most, counted when a request
    /// on the connection authenticates (default: `MAX_CONNECTIONS` / 8).
    #[arg(long, env, help_heading = LIMITS)]
    pub max_connections_per_client: Option<u32>,
    /// Longest time a client may take to send a request's body, in ms.
    #[arg(long, env, default_value_t = 60_000, help_heading = LIMITS)]
    pub body_read_timeout_ms: u64,
    /// Slowest average rate of a request body after its first 5 s, in bytes/s (0: none).
    #[arg(long, env, default_value_t = 1024, help_heading = LIMITS)]
    pub body_min_bytes_per_s: u64,
    /// Longest time a response write may make no progress (a client that stopped
    /// reading) before its connection is closed, in ms.
    #[arg(long, env, default_value_t = 30_000, help_heading = LIMITS)]
    pub write_stall_timeout_ms: u64,
    /// Open event streams (`GET /jobs/{id}/events`) in total at most
    /// (default: `MAX_CONNECTIONS` / 2).
    #[arg(long, env, help_heading = LIMITS)]
    pub max_event_streams: Option<u32>,
    /// Open event streams per client key at most (default: `MAX_CONNECTIONS` / 32).
    #[arg(long, env, help_heading = LIMITS)]
    pub max_event_streams_per_client: Option<u32>,
    /// Synchronous submits (`POST /jobs?wait=`) waiting in total at most
    /// (default: `MAX_CONNECTIONS` / 4).
    #[arg(long, env, help_heading = LIMITS)]
    pub max_sync_waits: Option<u32>,
    /// Synchronous submits waiting per client key at most (default: `MAX_CONNECTIONS` / 32).
    #[arg(long, env, help_heading = LIMITS)]
    pub max_sync_waits_per_client: Option<u32>,
    /// Answer a request whose rendered workflow already succeeded from the stored outputs.
    #[arg(long, env, default_value_t = true, action = clap::ArgAction::Set, help_heading = RETENTION)]
    pub cache_enabled: bool,
    /// How long a cached result is served, in seconds.
    #[arg(long, env, default_value_t = 86_400, help_heading = RETENTION)]
    pub cache_ttl_seconds: u64,
    /// How long an `Idempotency-Key` (or `metadata.requestId`) is remembered, in seconds.
    #[arg(long, env, default_value_t = 86_400, help_heading = RETENTION)]
    pub idempotency_ttl_seconds: u64,
    /// How long finished jobs, their events and outputs are kept, in seconds (0: forever).
    #[arg(long, env, default_value_t = 7 * 86_400, help_heading = RETENTION)]
    pub job_retention_seconds: u64,
    /// How often the background pruner looks for expired jobs, cache entries and keys, in ms.
    #[arg(long, env, default_value_t = 60_000, help_heading = RETENTION)]
    pub prune_interval_ms: u64,
    /// Free bytes the database's file system must keep: below it new jobs are refused
    /// with 507 `STORAGE_FULL` (0: no check).
    #[arg(long, env, default_value_t = 1 << 30, help_heading = STORAGE)]
    pub disk_free_min_bytes: u64,
    /// Bytes of inputs and outputs one owner may keep stored; at or over it its new jobs
    /// are refused with 507 `QUOTA_EXCEEDED` (unset: no quota).
    #[arg(long, env, help_heading = STORAGE)]
    pub storage_quota_bytes_per_owner: Option<u64>,
    /// Wall time of one plugin call, in ms.
    #[arg(long, env, default_value_t = 2_000, help_heading = PLUGINS)]
    pub plugin_timeout_ms: u64,
    /// Linear memory of one plugin instance, in MiB.
    #[arg(long, env, default_value_t = 64, help_heading = PLUGINS)]
    pub plugin_memory_mb: u32,
    /// Instructions (roughly) one plugin call may execute (unset: no fuel limit).
    #[arg(long, env, help_heading = PLUGINS)]
    pub plugin_fuel: Option<u64>,
    /// Plugin calls in flight at once (sizes the pooling allocator).
    #[arg(long, env, default_value_t = 16, help_heading = PLUGINS)]
    pub plugin_concurrency: u32,
    /// Calls of one plugin in flight at once (unset: half of PLUGIN_CONCURRENCY, at least 1).
    #[arg(long, env, help_heading = PLUGINS)]
    pub plugin_concurrency_per_plugin: Option<u32>,
    /// Threads of the plugin runtime, where every plugin call runs (never the API's).
    #[arg(long, env, default_value_t = 2, help_heading = PLUGINS)]
    pub plugin_threads: u32,
    /// How long a submit's plugin call waits for a free call slot before `503 PLUGIN_BUSY`, in ms.
    #[arg(long, env, default_value_t = 5_000, help_heading = PLUGINS)]
    pub plugin_queue_wait_ms: u64,
    /// Crash points to arm, `name=action;...` (tests; builds with the `failpoints` feature).
    #[arg(long, env, hide = true)]
    pub failpoints: Option<String>,
    /// Once listening, write the bound address (`ip:port`) to this file: with `--port 0`,
    /// how a supervisor or a test learns the port the system chose.
    #[arg(long, value_name = "PATH", help_heading = SERVER)]
    pub addr_file: Option<PathBuf>,
    /// API keys as `key:role,...` (roles: admin, user).
    #[arg(long, env, default_value = "", hide_env_values = true, hide_default_value = true, help_heading = AUTH)]
    pub api_keys: Secret,
    /// A file of API keys, one `key:role` per line (`#` starts a comment).
    #[arg(long, env, help_heading = AUTH)]
    pub api_keys_file: Option<PathBuf>,
    /// Secret of HS256 bearer tokens (JWT), at least 32 bytes.
    #[arg(long, env, hide_env_values = true, help_heading = AUTH)]
    pub jwt_secret: Option<Secret>,
    /// PEM file of the public key of RS256 (RSA) or EdDSA (Ed25519) bearer tokens.
    #[arg(long, env, help_heading = AUTH)]
    pub jwt_public_key: Option<PathBuf>,
    /// The audience bearer tokens must name in `aud` (unset: `aud` is not checked).
    #[arg(long, env, help_heading = AUTH)]
    pub jwt_audience: Option<String>,
    /// The issuer bearer tokens must carry in `iss` (unset: `iss` is not checked).
    #[arg(long, env, help_heading = AUTH)]
    pub jwt_issuer: Option<String>,
    /// Key of webhook signatures: `whsec_<base64>` (Standard Webhooks) or any other text as
    /// raw bytes. Unset: deliveries go unsigned.
    #[arg(long, env, hide_env_values = true, help_heading = WEBHOOKS)]
    pub webhook_secret: Option<Secret>,
    /// Hosts (and their subdomains) and IP addresses callbacks may go to, comma-separated
    /// (unset: any host at a public address). A host listed by name may be private, e.g.
    /// `127.0.0.1` for a local receiver. `host:port` (`[v6]:port`) allows that port only;
    /// a bare host allows every port.
    #[arg(long, env, default_value = "", help_heading = WEBHOOKS)]
    pub webhook_allowed_domains: String,
    /// Waits before each retry of a failed webhook, comma-separated, with units ms/s/m/h.
    #[arg(long, env, default_value = crate::webhooks::schedule::DEFAULT_SCHEDULE, help_heading = WEBHOOKS)]
    pub webhook_retry_schedule: String,
    /// Time limit of one webhook attempt, in ms.
    #[arg(long, env, default_value_t = crate::webhooks::DEFAULT_TIMEOUT_MS, help_heading = WEBHOOKS)]
    pub webhook_timeout_ms: u64,
    /// Webhook attempts in flight at most.
    #[arg(long, env, default_value_t = crate::webhooks::DEFAULT_CONCURRENCY, help_heading = WEBHOOKS)]
    pub webhook_concurrency: usize,
    /// Webhook attempts in flight to one destination (host and port of the callback URL)
    /// at most, within `WEBHOOK_CONCURRENCY`: a hanging receiver cannot hold every slot.
    #[arg(long, env, default_value_t = crate::webhooks::DEFAULT_DESTINATION_CONCURRENCY, help_heading = WEBHOOKS)]
    pub webhook_destination_concurrency: usize,
    /// Webhook attempts in flight for one owner's jobs at most, within `WEBHOOK_CONCURRENCY`.
    #[arg(long, env, default_value_t = crate::webhooks::DEFAULT_OWNER_CONCURRENCY, help_heading = WEBHOOKS)]
    pub webhook_owner_concurrency: usize,
    /// The gateway's public base URL. Set, every link in API answers (`pollUrl`, output
    /// `url`s, `Location`) is absolute under it, and the OpenAPI document's `servers` names
    /// it; unset, those links are paths. Webhook links are always absolute, under it
    /// (default: `http://HOST:PORT`).
    #[arg(long, env, help_heading = SERVER)]
    pub public_url: Option<String>,
    /// Serve `/metrics` without credentials when authentication is on (default: false).
    #[arg(long, env, action = clap::ArgAction::Set, help_heading = AUTH)]
    pub metrics_public: Option<bool>,
    /// Where blob bytes are kept (`STORAGE_PROVIDER`, `S3_*`).
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Where blob bytes are kept: `serve`, and `check` (which can verify the objects).
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// Where output and input bytes are kept: `local` (in the database file) or `s3` (an
    /// S3-compatible bucket; metadata stays in the database).
    #[arg(long, env, default_value = "local", help_heading = STORAGE)]
    pub storage_provider: String,
    /// Base URL of the S3 API (e.g. `http://127.0.0.1:9000` for MinIO); unset: AWS.
    #[arg(long, env, help_heading = STORAGE)]
    pub s3_endpoint: Option<String>,
    /// The bucket (must exist).
    #[arg(long, env, help_heading = STORAGE)]
    pub s3_bucket: Option<String>,
    /// Access key id.
    #[arg(long, env, hide_env_values = true, help_heading = STORAGE)]
    pub s3_access_key: Option<Secret>,
    /// Secret access key.
    #[arg(long, env, hide_env_values = true, help_heading = STORAGE)]
    pub s3_secret_key: Option<Secret>,
    /// Region (signing region for other S3-compatible servers).
    #[arg(long, env, default_value = "us-east-1", help_heading = STORAGE)]
    pub s3_region: String,
    /// Prefix of every object key (`<prefix>blobs/<hash>`), e.g. `gateway/`.
    #[arg(long, env, default_value = "", help_heading = STORAGE)]
    pub s3_prefix: String,
    /// Answer downloads with a redirect to a presigned GET URL valid this many seconds
    /// (unset: the gateway streams the bytes itself).
    #[arg(long, env, help_heading = STORAGE)]
    pub s3_presign_ttl_seconds: Option<u64>,
}

/// How long the gateway remembers things, and the result cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `CACHE_ENABLED`.
    pub cache_enabled: bool,
    /// `CACHE_TTL_SECONDS`.
    pub cache_ttl: std::time::Duration,
    /// `IDEMPOTENCY_TTL_SECONDS`.
    pub idempotency_ttl: std::time::Duration,
    /// `JOB_RETENTION_SECONDS` (None: keep forever).
    pub jobs: Option<std::time::Duration>,
    /// `PRUNE_INTERVAL_MS`.
    pub prune_interval: std::time::Duration,
}

/// Limits on the disk the database lives on (`DISK_FREE_MIN_BYTES`,
/// `STORAGE_QUOTA_BYTES_PER_OWNER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// Free bytes the database's file system keeps; new jobs are refused below (0: off).
    pub free_min_bytes: u64,
    /// Bytes of inputs and outputs one owner may keep stored (None: unlimited).
    pub quota_bytes_per_owner: Option<u64>,
}

/// A request rate limit (GCRA): `max` requests per `window`, refilled evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per client key in one window.
    pub key_max: u32,
    /// Requests per client IP in one window.
    pub ip_max: u32,
    /// The window.
    pub window: std::time::Duration,
}

/// Which browser origins CORS allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any origin.
    Any,
    /// Exactly these origins (empty: none).
    List(Vec<String>),
}

/// Which `Host` header values the API answers (`ALLOWED_HOSTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// `*`: any host.
    Any,
    /// The bound address, loopback names, `PUBLIC_URL`'s host and these names (lower-case,
    /// without port or trailing dot); an empty list checks nothing once credentials are on.
    List(Vec<String>),
}

/// Limits of the API against abuse.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Request rate per client (None: unlimited).
    pub rate: Option<RateLimit>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Queued + running jobs per client key (None: unlimited).
    pub jobs_per_client_max: Option<u32>,
    /// CORS origins.
    pub cors: CorsOrigins,
    /// `ALLOWED_HOSTS`.
    pub allowed_hosts: AllowedHosts,
    /// Open connections at most.
    pub connections_max: usize,
    /// Time limit of reading a request's headers.
    pub header_read_timeout: std::time::Duration,
    /// Open connections per client IP (the TCP peer; trusted proxies exempt).
    pub connections_per_ip_max: usize,
    /// Open connections per authenticated client (owner id).
    pub connections_per_client_max: usize,
    /// Time limit of reading a request's body.
    pub body_read_timeout: std::time::Duration,
    /// Slowest average body rate after the grace period, in bytes/s (0: not checked).
    pub body_min_bytes_per_s: u64,
    /// Time a response write may make no progress before the connection is closed.
    pub write_stall_timeout: std::time::Duration,
    /// Open event streams in total.
    pub event_streams_max: usize,
    /// Open event streams per client key.
    pub event_streams_per_client_max: usize,
    /// Waiting synchronous submits in total.
    pub sync_waits_max: usize,
    /// Waiting synchronous submits per client key.
    pub sync_waits_per_client_max: usize,
}

/// What bounds the memory one request takes, beyond `MAX_BODY_BYTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// `MAX_INPUT_KEYS`: most members of a job's `inputs` and `params`, at every depth.
    pub input_keys_max: usize,
    /// `MAX_METADATA_BYTES`: largest `metadata` of a job, in bytes of compact JSON.
    pub metadata_bytes_max: usize,
    /// `MAX_RESPONSE_BYTES`: most bytes a listing (job logs, webhook deliveries, audit) builds.
    pub response_bytes_max: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits { input_keys_max: 1024, metadata_bytes_max: 16 * 1024, response_bytes_max: 8 * 1024 * 1024 }
    }
}

/// A secret setting (API keys, JWT secret): its `Debug` never shows the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(empty)" } else { "Secret(***)" })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub host: IpAddr,
    /// Port to bind (0 = any).
    pub port: u16,
    /// The backends, in `COMFYUI_URL` order.
    pub backends: Vec<BackendConfig>,
    /// A backend unreachable this long (ms) is dead: its running jobs move elsewhere.
    pub backend_dead_after_ms: u64,
    /// Execution time limit of one job, in ms.
    pub comfyui_timeout_ms: u64,
    /// Time limit of one HTTP call to a backend (and of silence within a transfer).
    pub comfyui_http_timeout: std::time::Duration,
    /// The redb file.
    pub database_path: PathBuf,
    /// Prompts in flight per backend at most, unless its `max` option says otherwise.
    pub backend_concurrency_max: u32,
    /// Largest width/height of an input, in pixels.
    pub image_size_max: u32,
    /// Largest batch size of an input.
    pub batch_size_max: u32,
    /// Dispatches per job at most.
    pub attempts_max: u32,
    /// Priority head start per level, in ms.
    pub queue_aging_ms: u64,
    /// Poll interval for jobs without WebSocket events, in ms.
    pub poll_interval_ms: u64,
    /// Largest request body, in bytes.
    pub body_bytes_max: usize,
    /// Memory one request may make the gateway build (`MAX_INPUT_KEYS`,
    /// `MAX_METADATA_BYTES`, `MAX_RESPONSE_BYTES`).
    pub memory: MemoryLimits,
    /// Longest `?wait=` of a synchronous submit, in seconds.
    pub sync_wait_max_s: u64,
    /// Log filter.
    pub log_level: String,
    /// Log as JSON lines.
    pub log_json: bool,
    /// Register bundled workflows on first start.
    pub bundled_workflows: bool,
    /// Image inputs: size limit, URL fetch time limit, private addresses allowed.
    pub input_fetch: crate::inputs::FetchLimits,
    /// Keep prompt texts and inputs out of `/jobs/:id/logs` and `/jobs/:id/events`.
    pub privacy_mode: bool,
    /// Seals prompts and inputs at rest; Some exactly in privacy mode.
    pub sealer: Option<Arc<crate::privacy::Sealer>>,
    /// Interval of heartbeat comments on event streams, in ms.
    pub sse_heartbeat_ms: u64,
    /// Largest image inlined in an MCP tool result (0: none).
    pub mcp_inline_image_bytes: u64,
    /// Preview images of running jobs on their event streams.
    pub live_previews: bool,
    /// How long an MCP workflow tool call waits for its job, in s.
    pub mcp_wait_seconds: u64,
    /// Rate limits, CORS, connection and header limits.
    pub api_limits: ApiLimits,
    /// The result cache and retention periods.
    pub retention: Retention,
    /// Limits of every plugin call (`PLUGIN_*`).
    pub plugin_limits: crate::plugins::Limits,
    /// Free-space watermark and per-owner storage quota.
    pub disk: DiskLimits,
    /// API keys and JWT keys; empty: open mode (no credentials asked).
    pub auth: Arc<Auth>,
    /// `/metrics` without credentials even when authentication is on.
    pub metrics_public: bool,
    /// Webhook signing key, destinations, retry schedule, timeout, concurrency.
    pub webhooks: Arc<crate::webhooks::Settings>,
    /// The gateway's public base URL without trailing slash (absolute URLs in webhooks).
    pub public_url: String,
    /// `PUBLIC_URL` was set: API answers carry links absolute under it (else paths).
    pub public_url_set: bool,
    /// Where blob bytes are kept (`STORAGE_PROVIDER`, `S3_*`).
    pub storage: crate::storage::Provider,
}

/// One ComfyUI backend of `COMFYUI_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable short name (`[a-z0-9_-]`, at most [`BACKEND_ID_LEN_MAX`] characters): the
    /// `backend` of the jobs it runs, the `{id}` of `/backends/{id}`, the drain record's key.
    pub id: String,
    /// Base URL without trailing slash or fragment (may hold credentials).
    pub url: String,
    /// Prompts in flight at most.
    pub concurrency_max: u32,
}

impl BackendConfig {
    /// The URL without credentials (for status reports and logs).
    pub fn public_url(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.as_str().trim_end_matches('/').to_string()
            }
            _ => self.url.clone(),
        }
    }
}

/// Longest backend id.
pub const BACKEND_ID_LEN_MAX: usize = 32;

/// A configuration problem: names the variable and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault.
    pub variable: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable, message: message.into() }
}

impl Config {
    /// The port the API is bound to, when `PORT` was 0 and the system chose it: the
    /// default public URL (`http://HOST:PORT`) names that port, not 0.
    pub fn bound_to(&mut self, port: u16) {
        if self.public_url == default_public_url(self.host, self.port) {
            self.public_url = default_public_url(self.host, port);
        }
        self.port = port;
    }

    /// The links of API answers: absolute under `PUBLIC_URL` when it is set, else paths
    /// (as before `PUBLIC_URL` applied to them).
    pub fn links(&self) -> crate::domain::Links {
        if self.public_url_set {
            crate::domain::Links::under(&self.public_url)
        } else {
            crate::domain::Links::relative()
        }
    }

    /// The links of webhook bodies: always absolute, under the public URL (`PUBLIC_URL`, or
    /// `http://HOST:PORT`), since a receiver has no request to be relative to.
    pub fn webhook_links(&self) -> crate::domain::Links {
        crate::domain::Links::under(&self.public_url)
    }

    /// Validate parsed arguments into a configuration.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        if !(1..=64).contains(&args.max_concurrency) {
            return Err(bad("MAX_CONCURRENCY", "must be between 1 and 64"));
        }
        let backends = parse_backends(&args.comfyui_url, args.max_concurrency)?;
        let host = bind_address(&args.host)?;
        if !(500..=3_600_000).contains(&args.backend_dead_after_ms) {
            return Err(bad("BACKEND_DEAD_AFTER_MS", "must be between 500 and 3600000"));
        }
        if args.comfyui_timeout_ms == 0 {
            return Err(bad("COMFYUI_TIMEOUT_MS", "must be greater than 0"));
        }
        if !(100..=600_000).contains(&args.comfyui_http_timeout_ms) {
            return Err(bad("COMFYUI_HTTP_TIMEOUT_MS", "must be between 100 and 600000"));
        }
        if !(64..=16384).contains(&args.max_image_size) {
            return Err(bad("MAX_IMAGE_SIZE", "must be between 64 and 16384"));
        }
        if !(1..=4096).contains(&args.max_batch_size) {
            return Err(bad("MAX_BATCH_SIZE", "must be between 1 and 4096"));
        }
        if !(1..=100).contains(&args.max_attempts) {
            return Err(bad("MAX_ATTEMPTS", "must be between 1 and 100"));
        }
        if args.queue_aging_ms > 86_400_000 {
            return Err(bad("QUEUE_AGING_MS", "must be at most one day (86400000)"));
        }
        if !(10..=60_000).contains(&args.poll_interval_ms) {
            return Err(bad("POLL_INTERVAL_MS", "must be between 10 and 60000"));
        }
        if !(1024..=1 << 30).contains(&args.max_body_bytes) {
            return Err(bad("MAX_BODY_BYTES", "must be between 1024 and 1073741824"));
        }
        if !(1..=1_000_000).contains(&args.max_input_keys) {
            return Err(bad("MAX_INPUT_KEYS", "must be between 1 and 1000000"));
        }
        if !(64..=1 << 30).contains(&args.max_metadata_bytes) {
            return Err(bad("MAX_METADATA_BYTES", "must be between 64 and 1073741824"));
        }
        if !(64 * 1024..=1 << 30).contains(&args.max_response_bytes) {
            return Err(bad("MAX_RESPONSE_BYTES", "must be between 65536 and 1073741824"));
        }
        if !(10..=3_600_000).contains(&args.sse_heartbeat_ms) {
            return Err(bad("SSE_HEARTBEAT_MS", "must be between 10 and 3600000"));
        }
        // Not tied to MAX_RESPONSE_BYTES: a result inlines what fits under it, whatever this says.
        if args.mcp_inline_image_bytes > 1 << 30 {
            return Err(bad("MCP_INLINE_IMAGE_BYTES", "must be at most 1073741824"));
        }
        if !(1..=300).contains(&args.mcp_wait_seconds) {
            return Err(bad("MCP_WAIT_SECONDS", "must be between 1 and 300"));
        }
        let log_json = match args.log_format.as_str() {
            "json" => true,
            "text" => false,
            other => return Err(bad("LOG_FORMAT", format!("{other:?} is not json or text"))),
        };
        if tracing_subscriber::EnvFilter::try_new(&args.log_level).is_err() {
            return Err(bad("LOG_LEVEL", format!("{:?} is not a log level or filter", args.log_level)));
        }
        if !(1024..=1 << 30).contains(&args.max_input_image_bytes) {
            return Err(bad("MAX_INPUT_IMAGE_BYTES", "must be between 1024 and 1073741824"));
        }
        if !(100..=600_000).contains(&args.url_input_timeout_ms) {
            return Err(bad("URL_INPUT_TIMEOUT_MS", "must be between 100 and 600000"));
        }
        let allow = crate::inputs::AllowList::parse(&args.url_input_allow_hosts)
            .map_err(|e| bad("URL_INPUT_ALLOW_HOSTS", e))?;
        let api_limits = api_limits(args)?;
        let webhooks = webhook_settings(args)?;
        let public_url = public_url(args, host)?;
        let retention = retention(args)?;
        if args.storage_quota_bytes_per_owner == Some(0) {
            return Err(bad("STORAGE_QUOTA_BYTES_PER_OWNER", "must be at least 1 (unset it for no quota)"));
        }
        let disk = DiskLimits {
            free_min_bytes: args.disk_free_min_bytes,
            quota_bytes_per_owner: args.storage_quota_bytes_per_owner,
        };
        if !(10..=600_000).contains(&args.plugin_timeout_ms) {
            return Err(bad("PLUGIN_TIMEOUT_MS", "must be between 10 and 600000"));
        }
        if !(1..=4096).contains(&args.plugin_memory_mb) {
            return Err(bad("PLUGIN_MEMORY_MB", "must be between 1 and 4096"));
        }
        if args.plugin_fuel == Some(0) {
            return Err(bad("PLUGIN_FUEL", "must be at least 1 (unset it for no fuel limit)"));
        }
        if !(1..=1024).contains(&args.plugin_concurrency) {
            return Err(bad("PLUGIN_CONCURRENCY", "must be between 1 and 1024"));
        }
        let per_plugin = args.plugin_concurrency_per_plugin.unwrap_or((args.plugin_concurrency / 2).max(1));
        if !(1..=args.plugin_concurrency).contains(&per_plugin) {
            return Err(bad("PLUGIN_CONCURRENCY_PER_PLUGIN", "must be between 1 and PLUGIN_CONCURRENCY"));
        }
        if !(1..=256).contains(&args.plugin_threads) {
            return Err(bad("PLUGIN_THREADS", "must be between 1 and 256"));
        }
        if args.plugin_queue_wait_ms > 600_000 {
            return Err(bad("PLUGIN_QUEUE_WAIT_MS", "must be at most 600000"));
        }
        let plugin_limits = crate::plugins::Limits {
            timeout: std::time::Duration::from_millis(args.plugin_timeout_ms),
            memory_bytes: (args.plugin_memory_mb as usize) << 20,
            fuel: args.plugin_fuel,
            concurrency: args.plugin_concurrency,
            per_plugin,
            threads: args.plugin_threads,
            queue_wait: std::time::Duration::from_millis(args.plugin_queue_wait_ms),
        };
        let auth = auth_from_args(args)?;
        let storage = storage_provider(&args.storage)?;
        let database_path = database_path(&args.database_url)?;
        let sealer = if args.privacy_mode {
            let key_file = args.privacy_key_file.clone().unwrap_or_else(|| database_path.with_extension("privacy-key"));
            let sealer = crate::privacy::Sealer::load_or_create(&key_file).map_err(|e| bad("PRIVACY_KEY_FILE", e))?;
            Some(Arc::new(sealer))
        } else {
            None
        };
        Ok(Config {
            api_limits,
            retention,
            disk,
            plugin_limits,
            host,
            port: args.port,
            backends,
            backend_dead_after_ms: args.backend_dead_after_ms,
            comfyui_timeout_ms: args.comfyui_timeout_ms,
            comfyui_http_timeout: std::time::Duration::from_millis(args.comfyui_http_timeout_ms),
            database_path,
            backend_concurrency_max: args.max_concurrency,
            image_size_max: args.max_image_size,
            batch_size_max: args.max_batch_size,
            attempts_max: args.max_attempts,
            queue_aging_ms: args.queue_aging_ms,
            poll_interval_ms: args.poll_interval_ms,
            body_bytes_max: args.max_body_bytes,
            memory: MemoryLimits {
                input_keys_max: args.max_input_keys,
                metadata_bytes_max: args.max_metadata_bytes,
                response_bytes_max: args.max_response_bytes,
            },
            sync_wait_max_s: 300,
            log_level: args.log_level.clone(),
            log_json,
            bundled_workflows: args.bundled_workflows,
            input_fetch: crate::inputs::FetchLimits {
                bytes_max: args.max_input_image_bytes,
                timeout: std::time::Duration::from_millis(args.url_input_timeout_ms),
                allow,
            },
            privacy_mode: args.privacy_mode,
            sealer,
            sse_heartbeat_ms: args.sse_heartbeat_ms,
            mcp_inline_image_bytes: args.mcp_inline_image_bytes,
            live_previews: args.live_previews,
            mcp_wait_seconds: args.mcp_wait_seconds,
            metrics_public: args.metrics_public.unwrap_or(!auth.enabled()),
            webhooks: Arc::new(webhooks),
            public_url,
            public_url_set: args.public_url.is_some(),
            auth: Arc::new(auth),
            storage,
        })
    }
}

/// `STORAGE_PROVIDER` and, for `s3`, the `S3_*` settings.
pub fn storage_provider(args: &StorageArgs) -> Result<crate::storage::Provider, ConfigError> {
    use crate::storage::{Provider, S3Settings};
    match args.storage_provider.trim() {
        "local" => return Ok(Provider::Local),
        "s3" if !crate::storage::S3_BUILT => return Err(bad("STORAGE_PROVIDER", crate::storage::NOT_BUILT)),
        "s3" => {}
        other => return Err(bad("STORAGE_PROVIDER", format!("{other:?} is not local or s3"))),
    }
    let bucket = args.s3_bucket.as_deref().map(str::trim).unwrap_or("");
    if bucket.is_empty() {
        return Err(bad("S3_BUCKET", "must be set when STORAGE_PROVIDER=s3"));
    }
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(bad("S3_BUCKET", format!("{bucket:?} is not a bucket name (3-63 of a-z, 0-9, '-', '.')")));
    }
    let secret = |value: &Option<Secret>, variable: &'static str| -> Result<Secret, ConfigError> {
        match value {
            Some(s) if !s.0.trim().is_empty() => Ok(Secret(s.0.trim().to_string())),
            _ => Err(bad(variable, "must be set when STORAGE_PROVIDER=s3")),
        }
    };
    let access_key = secret(&args.s3_access_key, "S3_ACCESS_KEY")?;
    let secret_key = secret(&args.s3_secret_key, "S3_SECRET_KEY")?;
    let endpoint = match args.s3_endpoint.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => {
            let url = reqwest::Url::parse(raw).map_err(|e| bad("S3_ENDPOINT", format!("{raw:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(bad("S3_ENDPOINT", format!("{raw:?} is not an http(s) URL")));
            }
            if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
                return Err(bad("S3_ENDPOINT", format!("{raw:?}: give only scheme, host and port")));
            }
            Some(raw.trim_end_matches('/').to_string())
        }
    };
    let region = args.s3_region.trim();
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(bad("S3_REGION", format!("{region:?} is not a region name")));
    }
    let prefix = s3_prefix(&args.s3_prefix).map_err(|m| bad("S3_PREFIX", m))?;
    let presign_ttl = match args.s3_presign_ttl_seconds {
        None => None,
        // SigV4 presigned URLs are valid for at most 7 days.
        Some(n) if (1..=604_800).contains(&n) => Some(std::time::Duration::from_secs(n)),
        Some(_) => return Err(bad("S3_PRESIGN_TTL_SECONDS", "must be between 1 and 604800 (7 days)")),
    };
    Ok(Provider::S3(S3Settings {
        endpoint,
        bucket: bucket.to_string(),
        access_key,
        secret_key,
        region: region.to_string(),
        prefix,
        presign_ttl,
    }))
}

/// `S3_PREFIX` normalized: empty, or path segments ending in `/` (no empty, `.` or `..`
/// segment, no leading `/`).
fn s3_prefix(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!("{raw:?} has an empty, '.' or '..' segment"));
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!*'()".contains(&b)) {
            return Err(format!("{raw:?}: use letters, digits and -_.!*'() between slashes"));
        }
    }
    Ok(format!("{trimmed}/"))
}

fn api_limits(args: &ServeArgs) -> Result<ApiLimits, ConfigError> {
    let rate = match (args.rate_limit_max, args.rate_limit_window_ms) {
        (None, None) => {
            if args.rate_limit_ip_max.is_some() {
                return Err(bad("RATE_LIMIT_IP_MAX", "needs RATE_LIMIT_MAX and RATE_LIMIT_WINDOW_MS"));
            }
            None
        }
        (Some(_), None) => return Err(bad("RATE_LIMIT_WINDOW_MS", "must be set together with RATE_LIMIT_MAX")),
        (None, Some(_)) => return Err(bad("RATE_LIMIT_MAX", "must be set together with RATE_LIMIT_WINDOW_MS")),
        (Some(max), Some(window_ms)) => {
            if !(1..=1_000_000).contains(&max) {
                return Err(bad("RATE_LIMIT_MAX", "must be between 1 and 1000000"));
            }
            if !(100..=86_400_000).contains(&window_ms) {
                return Err(bad("RATE_LIMIT_WINDOW_MS", "must be between 100 and 86400000"));
            }
            let ip_max = args.rate_limit_ip_max.unwrap_or(max.saturating_mul(10).min(10_000_000));
            if !(1..=10_000_000).contains(&ip_max) {
                return Err(bad("RATE_LIMIT_IP_MAX", "must be between 1 and 10000000"));
            }
            Some(RateLimit { key_max: max, ip_max, window: std::time::Duration::from_millis(window_ms) })
        }
    };
    let mut trusted_proxies = Vec::new();
    for raw in args.trusted_proxies.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = match raw.parse::<ipnet::IpNet>() {
            Ok(net) => net,
            Err(_) => raw
                .parse::<IpAddr>()
                .map(ipnet::IpNet::from)
                .map_err(|_| bad("TRUSTED_PROXIES", format!("{raw:?} is not an IP address or CIDR")))?,
        };
        trusted_proxies.push(net);
    }
    if args.max_jobs_per_client == Some(0) {
        return Err(bad("MAX_JOBS_PER_CLIENT", "must be at least 1 (unset it for no limit)"));
    }
    let origins: Vec<&str> = args.cors_origins.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let cors = if origins == ["*"] {
        CorsOrigins::Any
    } else {
        let mut list = Vec::new();
        for o in origins {
            let url = reqwest::Url::parse(o).map_err(|_| bad("CORS_ORIGINS", format!("{o:?} is not an origin")))?;
            let origin = url.origin().ascii_serialization();
            if !matches!(url.scheme(), "http" | "https") || origin != o.trim_end_matches('/') || url.path() != "/" {
                return Err(bad("CORS_ORIGINS", format!("{o:?} is not an origin like https://app.example.com, or *")));
            }
            list.push(origin);
        }
        CorsOrigins::List(list)
    };
    let allowed_hosts = allowed_hosts(&args.allowed_hosts)?;
    if !(1..=1_000_000).contains(&args.max_connections) {
        return Err(bad("MAX_CONNECTIONS", "must be between 1 and 1000000"));
    }
    if !(10..=600_000).contains(&args.header_read_timeout_ms) {
        return Err(bad("HEADER_READ_TIMEOUT_MS", "must be between 10 and 600000"));
    }
    if !(100..=3_600_000).contains(&args.body_read_timeout_ms) {
        return Err(bad("BODY_READ_TIMEOUT_MS", "must be between 100 and 3600000"));
    }
    if !(100..=3_600_000).contains(&args.write_stall_timeout_ms) {
        return Err(bad("WRITE_STALL_TIMEOUT_MS", "must be between 100 and 3600000"));
    }
    // A share of the global cap by default, so one client never fills it.
    let connections = args.max_connections;
    let share = |set: Option<u32>, name: &'static str, divisor: u32, max: u32| match set {
        Some(n) if !(1..=max).contains(&n) => Err(bad(name, format!("must be between 1 and {max}"))),
        Some(n) => Ok(n as usize),
        None => Ok((connections / divisor).max(1) as usize),
    };
    Ok(ApiLimits {
        rate,
        trusted_proxies,
        jobs_per_client_max: args.max_jobs_per_client,
        cors,
        allowed_hosts,
        connections_max: args.max_connections as usize,
        header_read_timeout: std::time::Duration::from_millis(args.header_read_timeout_ms),
        connections_per_ip_max: share(args.max_connections_per_ip, "MAX_CONNECTIONS_PER_IP", 4, connections)?,
        connections_per_client_max: share(
            args.max_connections_per_client,
            "MAX_CONNECTIONS_PER_CLIENT",
            8,
            connections,
        )?,
        body_read_timeout: std::time::Duration::from_millis(args.body_read_timeout_ms),
        body_min_bytes_per_s: args.body_min_bytes_per_s,
        write_stall_timeout: std::time::Duration::from_millis(args.write_stall_timeout_ms),
        event_streams_max: share(args.max_event_streams, "MAX_EVENT_STREAMS", 2, 1_000_000)?,
        event_streams_per_client_max: share(
            args.max_event_streams_per_client,
            "MAX_EVENT_STREAMS_PER_CLIENT",
            32,
            1_000_000,
        )?,
        sync_waits_max: share(args.max_sync_waits, "MAX_SYNC_WAITS", 4, 1_000_000)?,
        sync_waits_per_client_max: share(args.max_sync_waits_per_client, "MAX_SYNC_WAITS_PER_CLIENT", 32, 1_000_000)?,
    })
}

/// The host of a `Host` header value or `ALLOWED_HOSTS` entry: without port, brackets or
/// trailing dot, lower-case (`[::1]:3000` → `::1`, `GW.example.:80` → `gw.example`).
pub fn host_name(authority: &str) -> String {
    let authority = authority.trim();
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        // One colon: a port; more: a bare IPv6 address.
        None => match authority.split_once(':') {
            Some((h, p)) if !p.contains(':') => h,
            _ => authority,
        },
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `ALLOWED_HOSTS`: `*`, or host names and IP addresses (a `:port` is ignored: the check
/// is about names, against DNS rebinding).
fn allowed_hosts(raw: &str) -> Result<AllowedHosts, ConfigError> {
    let entries: Vec<&str> = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if entries == ["*"] {
        return Ok(AllowedHosts::Any);
    }
    let mut list = Vec::new();
    for entry in entries {
        let host = host_name(entry);
        // What follows the host may only be a port.
        let after = match entry.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or("?", |(_, a)| a),
            None if entry.matches(':').count() == 1 => entry.split_once(':').map_or("", |(_, p)| p),
            None => "",
        };
        let after = after.strip_prefix(':').unwrap_or(after);
        let ok = after.parse::<u16>().is_ok() || after.is_empty();
        let ok = ok
            && !host.is_empty()
            && (host.parse::<IpAddr>().is_ok()
                || host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
        if !ok {
            return Err(bad("ALLOWED_HOSTS", format!("{entry:?} is not a host name or IP address, or *")));
        }
        list.push(host);
    }
    Ok(AllowedHosts::List(list))
}

/// The `WEBHOOK_*` settings.
fn webhook_settings(args: &ServeArgs) -> Result<crate::webhooks::Settings, ConfigError> {
    use crate::webhooks::{DomainList, Schedule, Settings, SigningKey};
    let key = match &args.webhook_secret {
        Some(secret) => Some(SigningKey::parse(&secret.0).map_err(|e| bad("WEBHOOK_SECRET", e))?),
        None => None,
    };
    let allowed = DomainList::parse(&args.webhook_allowed_domains).map_err(|e| bad("WEBHOOK_ALLOWED_DOMAINS", e))?;
    let schedule = Schedule::parse(&args.webhook_retry_schedule).map_err(|e| bad("WEBHOOK_RETRY_SCHEDULE", e))?;
    if !(100..=600_000).contains(&args.webhook_timeout_ms) {
        return Err(bad("WEBHOOK_TIMEOUT_MS", "must be between 100 and 600000"));
    }
    if !(1..=1024).contains(&args.webhook_concurrency) {
        return Err(bad("WEBHOOK_CONCURRENCY", "must be between 1 and 1024"));
    }
    if !(1..=1024).contains(&args.webhook_destination_concurrency) {
        return Err(bad("WEBHOOK_DESTINATION_CONCURRENCY", "must be between 1 and 1024"));
    }
    if !(1..=1024).contains(&args.webhook_owner_concurrency) {
        return Err(bad("WEBHOOK_OWNER_CONCURRENCY", "must be between 1 and 1024"));
    }
    Ok(Settings {
        key,
        allowed,
        schedule,
        timeout: std::time::Duration::from_millis(args.webhook_timeout_ms),
        concurrency: args.webhook_concurrency,
        destination_concurrency: args.webhook_destination_concurrency,
        owner_concurrency: args.webhook_owner_concurrency,
    })
}

/// `http://HOST:PORT`, the public URL when `PUBLIC_URL` is not set.
fn default_public_url(host: IpAddr, port: u16) -> String {
    let host = match host {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!("http://{host}:{port}")
}

/// An environment variable named like a setting (it starts with a prefix the settings
/// use, such as `COMFYUI_`) that is none: most likely a typo, which would be ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSetting {
    /// The variable.
    pub name: String,
    /// The closest setting, when it is close enough to be the one meant.
    pub suggestion: Option<String>,
}

/// Most edits (Damerau-Levenshtein) between an unknown variable and the setting suggested.
const SUGGESTION_EDITS_MAX: usize = 3;

/// The variables of this process's environment (`.env` included, once loaded) that look
/// like settings but are not among `known` (the variables the command line reads).
pub fn unknown_settings(known: &[String]) -> Vec<UnknownSetting> {
    unknown_settings_among(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()), known)
}

/// [`unknown_settings`] of the variable `names`: the prefixes are the first words (up to
/// and including the first `_`) of the `known` names, so `COMFYUI_ULR` is caught and
/// `RUST_LOG` or `HOME` are not.
pub fn unknown_settings_among(names: impl IntoIterator<Item = String>, known: &[String]) -> Vec<UnknownSetting> {
    let prefix = |name: &str| name.find('_').map(|i| name[..=i].to_string());
    let prefixes: std::collections::BTreeSet<String> = known.iter().filter_map(|k| prefix(k)).collect();
    let mut unknown: Vec<UnknownSetting> = names
        .into_iter()
        .filter(|name| !known.contains(name) && prefix(name).is_some_and(|p| prefixes.contains(&p)))
        .filter(|name| !kubernetes_service_link(name))
        .map(|name| {
            let suggestion = known
                .iter()
                .map(|k| (strsim::damerau_levenshtein(&name, k), k))
                .min()
                .filter(|(edits, _)| *edits <= SUGGESTION_EDITS_MAX)
                .map(|(_, k)| k.clone());
            UnknownSetting { name, suggestion }
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// Whether `name` has the shape of the variables Kubernetes sets for each service of the
/// namespace (`COMFYUI_SERVICE_HOST`, `COMFYUI_PORT`, `COMFYUI_PORT_8188_TCP_ADDR`, ...):
/// not typos, so not warned about.
fn kubernetes_service_link(name: &str) -> bool {
    let port_var = name.split_once("_PORT_").is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()));
    name.ends_with("_SERVICE_HOST") || name.contains("_SERVICE_PORT") || name.ends_with("_PORT") || port_var
}

/// Whether text logs written to a stream carry ANSI colours: only to a terminal, and not
/// when `NO_COLOR` is set to a non-empty value (no-color.org).
pub fn log_colours(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `HOST`: an IP address as given, or a name resolved by the system (`/etc/hosts`, DNS):
/// its first IPv4 address, else its first address. One address, so that `localhost`
/// (`::1` and `127.0.0.1`) binds the address local clients and the default URLs use.
fn bind_address(raw: &str) -> Result<IpAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let name = raw.trim();
    let name = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ip);
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err(bad("HOST", format!("{raw:?} is not an IP address or host name")));
    }
    let addrs: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .map_err(|e| bad("HOST", format!("cannot resolve {name:?}: {e}")))?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("HOST", format!("{name:?} resolves to no address")))
}

/// `PUBLIC_URL` without trailing slash, or `http://HOST:PORT`.
fn public_url(args: &ServeArgs, host: IpAddr) -> Result<String, ConfigError> {
    let Some(raw) = &args.public_url else {
        return Ok(default_public_url(host, args.port));
    };
    let url = reqwest::Url::parse(raw).map_err(|e| bad("PUBLIC_URL", format!("{raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("PUBLIC_URL", format!("{raw:?} is not an http(s) URL with a host")));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("PUBLIC_URL", format!("{raw:?} must not have credentials, a query or a fragment")));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// `CACHE_*`, `IDEMPOTENCY_TTL_SECONDS`, `JOB_RETENTION_SECONDS`, `PRUNE_INTERVAL_MS`.
fn retention(args: &ServeArgs) -> Result<Retention, ConfigError> {
    const YEAR_S: u64 = 366 * 86_400;
    if !(1..=YEAR_S).contains(&args.cache_ttl_seconds) {
        return Err(bad("CACHE_TTL_SECONDS", "must be between 1 and 31622400 (a year)"));
    }
    if !(1..=YEAR_S).contains(&args.idempotency_ttl_seconds) {
        return Err(bad("IDEMPOTENCY_TTL_SECONDS", "must be between 1 and 31622400 (a year)"));
    }
    if args.job_retention_seconds > 100 * YEAR_S {
        return Err(bad("JOB_RETENTION_SECONDS", "must be at most 3162240000 (0 keeps jobs forever)"));
    }
    if !(10..=86_400_000).contains(&args.prune_interval_ms) {
        return Err(bad("PRUNE_INTERVAL_MS", "must be between 10 and 86400000"));
    }
    let secs = std::time::Duration::from_secs;
    Ok(Retention {
        cache_enabled: args.cache_enabled,
        cache_ttl: secs(args.cache_ttl_seconds),
        idempotency_ttl: secs(args.idempotency_ttl_seconds),
        jobs: (args.job_retention_seconds > 0).then(|| secs(args.job_retention_seconds)),
        prune_interval: std::time::Duration::from_millis(args.prune_interval_ms),
    })
}

/// The credentials of `API_KEYS`, `API_KEYS_FILE`, `JWT_SECRET` and `JWT_PUBLIC_KEY`, and
/// the claims `JWT_AUDIENCE` / `JWT_ISSUER` pin.
fn auth_from_args(args: &ServeArgs) -> Result<Auth, ConfigError> {
    let mut auth = Auth::default();
    let keys = Auth::parse_keys(&args.api_keys.0, ',').map_err(|e| bad("API_KEYS", e))?;
    auth.add_keys(keys).map_err(|e| bad("API_KEYS", e))?;
    if let Some(path) = &args.api_keys_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("API_KEYS_FILE", format!("cannot read {}: {e}", path.display())))?;
        let keys =
            Auth::parse_keys(&text, '\n').map_err(|e| bad("API_KEYS_FILE", format!("{}: {e}", path.display())))?;
        if keys.is_empty() {
            return Err(bad("API_KEYS_FILE", format!("{} holds no key", path.display())));
        }
        auth.add_keys(keys).map_err(|e| bad("API_KEYS_FILE", e))?;
    }
    if let Some(secret) = &args.jwt_secret {
        auth.set_jwt_secret(secret.0.as_bytes()).map_err(|e| bad("JWT_SECRET", e))?;
    }
    if let Some(path) = &args.jwt_public_key {
        let pem =
            std::fs::read(path).map_err(|e| bad("JWT_PUBLIC_KEY", format!("cannot read {}: {e}", path.display())))?;
        auth.set_jwt_public_key(&pem).map_err(|e| bad("JWT_PUBLIC_KEY", format!("{}: {e}", path.display())))?;
    }
    for (name, value) in [("JWT_AUDIENCE", &args.jwt_audience), ("JWT_ISSUER", &args.jwt_issuer)] {
        let Some(value) = value else { continue };
        if value.trim().is_empty() {
            return Err(bad(name, "must not be empty (unset it to not check the claim)"));
        }
        if !auth.jwt_enabled() {
            return Err(bad(name, "needs JWT_SECRET or JWT_PUBLIC_KEY"));
        }
        if name == "JWT_AUDIENCE" {
            auth.set_jwt_audience(value);
        } else {
            auth.set_jwt_issuer(value);
        }
    }
    Ok(auth)
}

/// The database path of a `DATABASE_URL` value.
pub fn database_path(url: &str) -> Result<PathBuf, ConfigError> {
    let path = url.strip_prefix("redb://").or_else(|| url.strip_prefix("file://")).unwrap_or(url);
    if path.is_empty() {
        return Err(bad("DATABASE_URL", "empty path"));
    }
    if path.contains("://") {
        return Err(bad("DATABASE_URL", format!("{url:?}: only a file path (or redb://PATH) is supported")));
    }
    Ok(PathBuf::from(path))
}

/// A `COMFYUI_URL` value: a comma-separated list of backends (each `URL#id=NAME&max=N`),
/// at least one, no URL or id twice; `default_max` is `MAX_CONCURRENCY`.
pub fn parse_backends(list: &str, default_max: u32) -> Result<Vec<BackendConfig>, ConfigError> {
    let mut backends = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        backends.push(parse_backend(raw, default_max)?);
    }
    if backends.is_empty() {
        return Err(bad("COMFYUI_URL", "no backend URL given"));
    }
    let (mut urls, mut ids) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for b in &backends {
        if !urls.insert(&b.url) {
            return Err(bad("COMFYUI_URL", format!("{} is listed twice", b.public_url())));
        }
        if !ids.insert(&b.id) {
            return Err(bad("COMFYUI_URL", format!("backend id {:?} is used twice", b.id)));
        }
    }
    Ok(backends)
}

/// One `COMFYUI_URL` item: the URL, and its fragment's options (`id=NAME&max=N`; a fragment
/// is never sent over HTTP). Errors quote the item without its credentials.
fn parse_backend(raw: &str, default_max: u32) -> Result<BackendConfig, ConfigError> {
    let mut url = reqwest::Url::parse(raw).map_err(|e| bad("COMFYUI_URL", format!("{e}")))?;
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let shown = shown.as_str().to_string();
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("COMFYUI_URL", format!("{shown:?}: scheme must be http or https")));
    }
    let Some(host) = url.host_str().map(str::to_string) else {
        return Err(bad("COMFYUI_URL", format!("{shown:?}: no host")));
    };
    if url.query().is_some() {
        return Err(bad("COMFYUI_URL", format!("{shown:?}: must not have a query")));
    }
    let (mut id, mut concurrency_max) = (None, default_max);
    for pair in url.fragment().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "id" => {
                let ok = (1..=BACKEND_ID_LEN_MAX).contains(&value.len())
                    && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
                if !ok {
                    return Err(bad(
                        "COMFYUI_URL",
                        format!("{shown:?}: id {value:?} must be 1 to {BACKEND_ID_LEN_MAX} characters of [a-z0-9_-]"),
                    ));
                }
                id = Some(value.to_string());
            }
            "max" => {
                concurrency_max =
                    value.parse().ok().filter(|n| (1..=64).contains(n)).ok_or_else(|| {
                        bad("COMFYUI_URL", format!("{shown:?}: max {value:?} must be between 1 and 64"))
                    })?;
            }
            other => {
                return Err(bad("COMFYUI_URL", format!("{shown:?}: unknown option {other:?} (id, max)")));
            }
        }
    }
    url.set_fragment(None);
    let port = url.port_or_known_default().unwrap_or(80);
    let id = id.unwrap_or_else(|| default_backend_id(&host, port));
    Ok(BackendConfig { id, url: url.as_str().trim_end_matches('/').to_string(), concurrency_max })
}

/// `<host>-<port>` with every character outside `[a-z0-9_-]` as `-` (`10.0.0.6-8188`),
/// cut to [`BACKEND_ID_LEN_MAX`] from the end (the port is kept).
fn default_backend_id(host: &str, port: u16) -> String {
    let clean: String = host
        .trim_matches(|c| c == '[' || c == ']')
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '-' })
        .collect();
    let id = format!("{clean}-{port}");
    let cut = id.len().saturating_sub(BACKEND_ID_LEN_MAX);
    id[cut..].to_string()
}

/// The configuration of `serve` with these flags (and nothing from the environment but
/// what clap's `env` fallbacks read): for unit tests.
#[cfg(test)]
pub(crate) fn from_flags(args: &[&str]) -> Result<Config, ConfigError> {
    use clap::Parser;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let mut all = vec!["t"];
    all.extend_from_slice(args);
    Config::from_args(&T::parse_from(all).serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        from_flags(args)
    }

    #[test]
    fn backends_are_split_and_normalized() {
        let c = parse(&["--comfyui-url", "http://a:8188/, http://b:8189"]).unwrap();
        let urls: Vec<&str> = c.backends.iter().map(|b| b.url.as_str()).collect();
        assert_eq!(urls, vec!["http://a:8188", "http://b:8189"]);
        assert_eq!(c.backend_dead_after_ms, 15_000);
    }

    #[test]
    fn backend_options_come_from_the_fragment() {
        let c = parse(&[
            "--max-concurrency",
            "3",
            "--comfyui-url",
            "http://10.0.0.5:8188#id=gpu1&max=2,http://10.0.0.6:8188/,https://u:pw@Box.Example,http://[::1]:9000#max=1",
        ])
        .unwrap();
        let got: Vec<(&str, &str, u32)> =
            c.backends.iter().map(|b| (b.id.as_str(), b.url.as_str(), b.concurrency_max)).collect();
        assert_eq!(
            got,
            vec![
                ("gpu1", "http://10.0.0.5:8188", 2),
                ("10-0-0-6-8188", "http://10.0.0.6:8188", 3),
                ("box-example-443", "https://u:pw@box.example", 3),
                ("--1-9000", "http://[::1]:9000", 1),
            ]
        );
        assert_eq!(c.backends[2].public_url(), "https://box.example");
        assert_eq!(c.backends[1].public_url(), "http://10.0.0.6:8188");
        let long = parse(&["--comfyui-url", "http://a-very-long-host-name.internal.example.com:8188"]).unwrap();
        assert_eq!(long.backends[0].id.len(), BACKEND_ID_LEN_MAX);
        assert!(long.backends[0].id.ends_with("-8188"));
    }

    #[test]
    fn bad_backend_options_name_comfyui_url() {
        for url in [
            "http://a#id=GPU",
            "http://a#id=",
            "http://a#id=a.b",
            "http://a#id=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "http://a#max=0",
            "http://a#max=65",
            "http://a#max=two",
            "http://a#weight=2",
            "http://a#id=x,http://b#id=x",
            "http://a?x=1",
            "http://u:secret@a#colour=blue",
        ] {
            let err = parse(&["--comfyui-url", url]).unwrap_err();
            assert_eq!(err.variable, "COMFYUI_URL", "{url}");
            assert!(!err.to_string().contains("secret"), "credentials are not echoed: {err}");
        }
        for ms in ["0", "499", "3600001"] {
            assert_eq!(parse(&["--backend-dead-after-ms", ms]).unwrap_err().variable, "BACKEND_DEAD_AFTER_MS");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--comfyui-url", "ftp://x"], "COMFYUI_URL"),
            (&["--comfyui-url", "http://a,http://a"], "COMFYUI_URL"),
            (&["--max-concurrency", "0"], "MAX_CONCURRENCY"),
            (&["--comfyui-timeout-ms", "0"], "COMFYUI_TIMEOUT_MS"),
            (&["--comfyui-http-timeout-ms", "50"], "COMFYUI_HTTP_TIMEOUT_MS"),
            (&["--log-format", "xml"], "LOG_FORMAT"),
            (&["--database-url", "postgres://x"], "DATABASE_URL"),
            (&["--rate-limit-max", "10"], "RATE_LIMIT_WINDOW_MS"),
            (&["--rate-limit-window-ms", "1000"], "RATE_LIMIT_MAX"),
            (&["--rate-limit-max", "0", "--rate-limit-window-ms", "1000"], "RATE_LIMIT_MAX"),
            (&["--trusted-proxies", "10.0.0.0/8,nope"], "TRUSTED_PROXIES"),
            (&["--cors-origins", "https://a.example/path"], "CORS_ORIGINS"),
            (&["--max-jobs-per-client", "0"], "MAX_JOBS_PER_CLIENT"),
            (&["--max-connections", "0"], "MAX_CONNECTIONS"),
            (&["--max-input-keys", "0"], "MAX_INPUT_KEYS"),
            (&["--max-metadata-bytes", "10"], "MAX_METADATA_BYTES"),
            (&["--max-response-bytes", "1000"], "MAX_RESPONSE_BYTES"),
            (&["--header-read-timeout-ms", "1"], "HEADER_READ_TIMEOUT_MS"),
            (&["--max-connections-per-ip", "0"], "MAX_CONNECTIONS_PER_IP"),
            (&["--max-connections", "10", "--max-connections-per-ip", "11"], "MAX_CONNECTIONS_PER_IP"),
            (&["--max-connections-per-client", "2000"], "MAX_CONNECTIONS_PER_CLIENT"),
            (&["--body-read-timeout-ms", "5"], "BODY_READ_TIMEOUT_MS"),
            (&["--write-stall-timeout-ms", "0"], "WRITE_STALL_TIMEOUT_MS"),
            (&["--max-event-streams-per-client", "0"], "MAX_EVENT_STREAMS_PER_CLIENT"),
            (&["--max-sync-waits", "0"], "MAX_SYNC_WAITS"),
            (&["--api-keys", "longenoughkey:root"], "API_KEYS"),
            (&["--api-keys", "nocolonhere"], "API_KEYS"),
            (&["--api-keys-file", "/nonexistent/keys.txt"], "API_KEYS_FILE"),
            (&["--jwt-secret", "short"], "JWT_SECRET"),
            (&["--jwt-public-key", "/nonexistent/key.pem"], "JWT_PUBLIC_KEY"),
            (&["--jwt-public-key", "Cargo.toml"], "JWT_PUBLIC_KEY"),
            (&["--jwt-audience", "gw"], "JWT_AUDIENCE"),
            (&["--jwt-secret", "0123456789abcdef0123456789abcdef", "--jwt-issuer", " "], "JWT_ISSUER"),
            (&["--webhook-secret", ""], "WEBHOOK_SECRET"),
            (&["--webhook-secret", "whsec_!!"], "WEBHOOK_SECRET"),
            (&["--webhook-allowed-domains", "https://a.example"], "WEBHOOK_ALLOWED_DOMAINS"),
            (&["--allowed-hosts", "https://a.example/"], "ALLOWED_HOSTS"),
            (&["--allowed-hosts", "a b"], "ALLOWED_HOSTS"),
            (&["--allowed-hosts", "gw.example:http"], "ALLOWED_HOSTS"),
            (&["--allowed-hosts", "[::1]x"], "ALLOWED_HOSTS"),
            (&["--webhook-allowed-domains", "a.example:99999"], "WEBHOOK_ALLOWED_DOMAINS"),
            (&["--webhook-retry-schedule", "5s,5x"], "WEBHOOK_RETRY_SCHEDULE"),
            (&["--webhook-timeout-ms", "5"], "WEBHOOK_TIMEOUT_MS"),
            (&["--webhook-concurrency", "0"], "WEBHOOK_CONCURRENCY"),
            (&["--webhook-destination-concurrency", "0"], "WEBHOOK_DESTINATION_CONCURRENCY"),
            (&["--webhook-owner-concurrency", "0"], "WEBHOOK_OWNER_CONCURRENCY"),
            (&["--public-url", "ftp://x"], "PUBLIC_URL"),
            (&["--public-url", "https://x/?q=1"], "PUBLIC_URL"),
            (&["--storage-provider", "gcs"], "STORAGE_PROVIDER"),
            (&["--storage-provider", "s3"], "S3_BUCKET"),
            (&["--storage-provider", "s3", "--s3-bucket", "Bad_Bucket"], "S3_BUCKET"),
            (&["--storage-provider", "s3", "--s3-bucket", "outputs"], "S3_ACCESS_KEY"),
            (&["--storage-provider", "s3", "--s3-bucket", "outputs", "--s3-access-key", "k"], "S3_SECRET_KEY"),
            (
                &[S3, S3_BUCKET, S3_KEYS[0], S3_KEYS[1], S3_KEYS[2], S3_KEYS[3], "--s3-endpoint", "ftp://x"],
                "S3_ENDPOINT",
            ),
            (
                &[S3, S3_BUCKET, S3_KEYS[0], S3_KEYS[1], S3_KEYS[2], S3_KEYS[3], "--s3-endpoint", "http://x/b"],
                "S3_ENDPOINT",
            ),
            (&[S3, S3_BUCKET, S3_KEYS[0], S3_KEYS[1], S3_KEYS[2], S3_KEYS[3], "--s3-region", "us east"], "S3_REGION"),
            (&[S3, S3_BUCKET, S3_KEYS[0], S3_KEYS[1], S3_KEYS[2], S3_KEYS[3], "--s3-prefix", "a//b"], "S3_PREFIX"),
            (&[S3, S3_BUCKET, S3_KEYS[0], S3_KEYS[1], S3_KEYS[2], S3_KEYS[3], "--s3-prefix", "a/../b"], "S3_PREFIX"),
            (
                &[S3, S3_BUCKET, S3_KEYS[0], S3_KEYS[1], S3_KEYS[2], S3_KEYS[3], "--s3-presign-ttl-seconds", "0"],
                "S3_PRESIGN_TTL_SECONDS",
            ),
        ];
        for (args, var) in cases {
            // A build without the `s3` feature refuses STORAGE_PROVIDER=s3 first.
            let var = if var.starts_with("S3_") && !crate::storage::S3_BUILT { "STORAGE_PROVIDER" } else { var };
            let err = parse(args).unwrap_err();
            assert_eq!(err.variable, var, "{args:?}");
            assert!(err.to_string().contains(var));
        }
    }

    const S3: &str = "--storage-provider=s3";
    const S3_BUCKET: &str = "--s3-bucket=outputs";
    const S3_KEYS: [&str; 4] = ["--s3-access-key", "access", "--s3-secret-key", "secret"];

    /// S3 settings are normalized; a build without the `s3` feature refuses
    /// `STORAGE_PROVIDER=s3` at start instead, saying how to get a build that has it.
    #[test]
    fn storage_is_local_by_default_and_s3_settings_are_normalized() {
        use crate::storage::Provider;
        assert_eq!(parse(&[]).unwrap().storage, Provider::Local);
        if !crate::storage::S3_BUILT {
            let err = parse(&[S3, S3_BUCKET, S3_KEYS[0], S3_KEYS[1], S3_KEYS[2], S3_KEYS[3]]).unwrap_err();
            assert_eq!(err.variable, "STORAGE_PROVIDER");
            assert!(err.to_string().contains("--features s3"), "{err}");
            return;
        }
        let c = parse(&[
            S3,
            S3_BUCKET,
            S3_KEYS[0],
            S3_KEYS[1],
            S3_KEYS[2],
            S3_KEYS[3],
            "--s3-endpoint",
            "http://127.0.0.1:9000/",
            "--s3-prefix",
            "/gw/prod",
            "--s3-presign-ttl-seconds",
            "300",
        ])
        .unwrap();
        let Provider::S3(s) = &c.storage else { panic!("not s3: {:?}", c.storage) };
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!((s.bucket.as_str(), s.region.as_str(), s.prefix.as_str()), ("outputs", "us-east-1", "gw/prod/"));
        assert_eq!(s.presign_ttl, Some(std::time::Duration::from_secs(300)));
        assert_eq!(c.storage.name(), "s3");
        // The keys never show in debug output.
        let debug = format!("{c:?}");
        assert!(!debug.contains("access\"") && !debug.contains("secret\""), "{debug}");
        assert_eq!(s3_prefix("").unwrap(), "");
        assert_eq!(s3_prefix("a/b/").unwrap(), "a/b/");
    }

    #[test]
    fn disk_limits_default_to_a_gib_free_and_no_quota_and_are_parsed() {
        let d = parse(&[]).unwrap().disk;
        assert_eq!(d, DiskLimits { free_min_bytes: 1 << 30, quota_bytes_per_owner: None });
        let d = parse(&["--disk-free-min-bytes", "0", "--storage-quota-bytes-per-owner", "5000"]).unwrap().disk;
        assert_eq!(d, DiskLimits { free_min_bytes: 0, quota_bytes_per_owner: Some(5000) });
        let err = parse(&["--storage-quota-bytes-per-owner", "0"]).unwrap_err();
        assert_eq!(err.variable, "STORAGE_QUOTA_BYTES_PER_OWNER");
    }

    #[test]
    fn memory_limits_have_defaults_and_are_parsed() {
        assert_eq!(parse(&[]).unwrap().memory, MemoryLimits::default());
        let c = parse(&["--max-input-keys", "7", "--max-metadata-bytes", "100", "--max-response-bytes", "65536"]);
        let m = c.unwrap().memory;
        assert_eq!((m.input_keys_max, m.metadata_bytes_max, m.response_bytes_max), (7, 100, 65536));
    }

    #[test]
    fn api_limits_are_permissive_by_default_and_parsed() {
        let c = parse(&[]).unwrap().api_limits;
        assert_eq!(c.rate, None);
        assert_eq!(c.cors, CorsOrigins::List(vec![]));
        assert!(c.trusted_proxies.is_empty() && c.jobs_per_client_max.is_none());
        // Connection shares default to fractions of MAX_CONNECTIONS (headroom for others).
        assert_eq!((c.connections_max, c.connections_per_ip_max, c.connections_per_client_max), (1024, 256, 128));
        assert_eq!((c.event_streams_max, c.event_streams_per_client_max), (512, 32));
        assert_eq!((c.sync_waits_max, c.sync_waits_per_client_max), (256, 32));
        assert_eq!((c.body_read_timeout.as_millis(), c.body_min_bytes_per_s), (60_000, 1024));
        assert_eq!(c.write_stall_timeout.as_millis(), 30_000);
        let one = parse(&["--max-connections", "1"]).unwrap().api_limits;
        assert_eq!((one.connections_per_ip_max, one.event_streams_per_client_max), (1, 1));
        let set = parse(&["--max-connections-per-ip", "1000", "--max-sync-waits-per-client", "3"]).unwrap().api_limits;
        assert_eq!((set.connections_per_ip_max, set.sync_waits_per_client_max), (1000, 3));
        let c = parse(&[
            "--rate-limit-max",
            "5",
            "--rate-limit-window-ms",
            "2000",
            "--trusted-proxies",
            "10.0.0.0/8, 192.168.1.1",
            "--cors-origins",
            "https://a.example, http://localhost:5173/",
        ])
        .unwrap()
        .api_limits;
        let rate = c.rate.unwrap();
        assert_eq!((rate.key_max, rate.ip_max, rate.window.as_millis()), (5, 50, 2000));
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[1].contains(&"192.168.1.1".parse::<IpAddr>().unwrap()));
        assert_eq!(c.cors, CorsOrigins::List(vec!["https://a.example".into(), "http://localhost:5173".into()]));
        assert_eq!(parse(&["--cors-origins", "*"]).unwrap().api_limits.cors, CorsOrigins::Any);
        assert_eq!(c.allowed_hosts, AllowedHosts::List(vec![]));
        assert_eq!(parse(&["--allowed-hosts", "*"]).unwrap().api_limits.allowed_hosts, AllowedHosts::Any);
        let hosts = parse(&["--allowed-hosts", "GW.Example.com., 10.0.0.5:3000 ,[::2]:80"]).unwrap();
        assert_eq!(
            hosts.api_limits.allowed_hosts,
            AllowedHosts::List(vec!["gw.example.com".into(), "10.0.0.5".into(), "::2".into()])
        );
    }

    #[test]
    fn open_mode_unless_credentials_and_metrics_follow() {
        let open = parse(&[]).unwrap();
        assert!(!open.auth.enabled() && open.metrics_public);
        let keyed = parse(&["--api-keys", "adminkey01:admin,userkey01:user"]).unwrap();
        assert!(keyed.auth.keys_enabled() && !keyed.metrics_public);
        let public = parse(&["--api-keys", "adminkey01:admin", "--metrics-public", "true"]).unwrap();
        assert!(public.metrics_public);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# keys\nfilekey0001:user\n").unwrap();
        let from_file = parse(&["--api-keys-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(from_file.auth.key_fingerprints().len(), 1);
    }

    #[test]
    fn the_default_public_url_names_the_port_the_system_chose() {
        let mut c = parse(&["--port", "0"]).unwrap();
        assert_eq!(c.public_url, "http://127.0.0.1:0");
        c.bound_to(41234);
        assert_eq!((c.port, c.public_url.as_str()), (41234, "http://127.0.0.1:41234"));
        let mut c = parse(&["--port", "0", "--public-url", "https://gw.example.com"]).unwrap();
        c.bound_to(41234);
        assert_eq!(c.public_url, "https://gw.example.com", "an explicit PUBLIC_URL stays");
        let id = uuid::Uuid::nil();
        assert_eq!(c.links().job(id), format!("https://gw.example.com/jobs/{id}"));
        let mut c = parse(&["--port", "0"]).unwrap();
        c.bound_to(41234);
        assert_eq!(c.links().output(id, "a.png"), format!("/outputs/{id}/a.png"), "API links stay paths");
        assert_eq!(c.webhook_links().job(id), format!("http://127.0.0.1:41234/jobs/{id}"), "webhooks: absolute");
    }

    #[test]
    fn webhook_settings_and_public_url() {
        let c = parse(&[]).unwrap();
        assert!(c.webhooks.key.is_none() && c.webhooks.allowed.is_empty());
        assert_eq!(c.webhooks.schedule.waits().len(), 7);
        assert_eq!((c.webhooks.timeout.as_millis(), c.webhooks.concurrency), (15_000, 16));
        assert_eq!((c.webhooks.destination_concurrency, c.webhooks.owner_concurrency), (4, 8));
        assert_eq!(c.public_url, "http://127.0.0.1:3000");
        let c = parse(&[
            "--webhook-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--webhook-allowed-domains",
            "127.0.0.1,example.com",
            "--webhook-retry-schedule",
            "300ms,600ms",
            "--public-url",
            "https://gw.example.com/base/",
        ])
        .unwrap();
        assert!(c.webhooks.key.is_some() && !c.webhooks.allowed.is_empty());
        assert_eq!(c.webhooks.schedule.waits().len(), 2);
        assert_eq!(c.public_url, "https://gw.example.com/base");
        assert!(!format!("{c:?}").contains("MfKQ9r8G"), "the secret never shows");
    }

    #[test]
    fn host_takes_addresses_and_names() {
        assert_eq!(parse(&["--host", "0.0.0.0"]).unwrap().host, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(parse(&["--host", "::1"]).unwrap().host, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse(&["--host", "[::1]"]).unwrap().host, "::1".parse::<IpAddr>().unwrap());
        let local = parse(&["--host", "localhost", "--port", "3001"]).unwrap();
        assert!(local.host.is_loopback(), "{}", local.host);
        assert_eq!(local.public_url, default_public_url(local.host, 3001));
        for bad_host in ["", "a b", "http://x"] {
            assert_eq!(parse(&["--host", bad_host]).unwrap_err().variable, "HOST", "{bad_host:?}");
        }
    }

    #[test]
    fn unknown_settings_are_those_with_our_prefixes_and_get_the_closest_name() {
        let known: Vec<String> =
            ["COMFYUI_URL", "COMFYUI_TIMEOUT_MS", "MAX_CONCURRENCY", "S3_BUCKET", "PORT", "GATEWAY_URL"]
                .map(String::from)
                .to_vec();
        let env = ["COMFYUI_ULR", "COMFYUI_URL", "PORT", "HOME", "RUST_LOG", "MAX_CONCURENCY", "S3_WHATEVER_ELSE"];
        let unknown = unknown_settings_among(env.map(String::from), &known);
        let unknown: Vec<(&str, Option<&str>)> =
            unknown.iter().map(|u| (u.name.as_str(), u.suggestion.as_deref())).collect();
        assert_eq!(
            unknown,
            [
                ("COMFYUI_ULR", Some("COMFYUI_URL")),
                ("MAX_CONCURENCY", Some("MAX_CONCURRENCY")),
                ("S3_WHATEVER_ELSE", None),
            ]
        );
        assert!(unknown_settings_among(known.clone(), &known).is_empty(), "the settings themselves are known");
        let service_links =
            ["COMFYUI_SERVICE_HOST", "COMFYUI_SERVICE_PORT_HTTP", "COMFYUI_PORT", "COMFYUI_PORT_8188_TCP"];
        assert!(unknown_settings_among(service_links.map(String::from), &known).is_empty());
        assert!(!log_colours(false), "never colours into a file or pipe");
    }

    #[test]
    fn database_url_prefixes() {
        assert_eq!(database_path("redb:///tmp/x.redb").unwrap(), PathBuf::from("/tmp/x.redb"));
        assert_eq!(database_path("./d/g.redb").unwrap(), PathBuf::from("./d/g.redb"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let args = T::parse_from([
            "t",
            "--api-keys",
            "verysecretkey1:admin",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ]);
        let shown = format!("{:?}", args.serve);
        assert!(!shown.contains("verysecretkey1") && !shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("Secret(***)"));
    }

    #[test]
    fn plugin_slots_default_to_half_per_plugin_and_are_checked() {
        let c = parse(&[]).unwrap();
        let l = &c.plugin_limits;
        assert_eq!((l.concurrency, l.per_plugin, l.threads), (16, 8, 2));
        assert_eq!(l.queue_wait, std::time::Duration::from_secs(5));
        let c = parse(&["--plugin-concurrency", "1"]).unwrap();
        assert_eq!(c.plugin_limits.per_plugin, 1, "at least one");
        let c = parse(&["--plugin-concurrency", "4", "--plugin-concurrency-per-plugin", "4"]).unwrap();
        assert_eq!(c.plugin_limits.per_plugin, 4);
        for (args, name) in [
            (
                &["--plugin-concurrency", "4", "--plugin-concurrency-per-plugin", "5"][..],
                "PLUGIN_CONCURRENCY_PER_PLUGIN",
            ),
            (&["--plugin-concurrency-per-plugin", "0"][..], "PLUGIN_CONCURRENCY_PER_PLUGIN"),
            (&["--plugin-threads", "0"][..], "PLUGIN_THREADS"),
            (&["--plugin-queue-wait-ms", "600001"][..], "PLUGIN_QUEUE_WAIT_MS"),
        ] {
            let e = parse(args).err().unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(e.to_string().contains(name), "{args:?}: {e}");
        }
    }
}
