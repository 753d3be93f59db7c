//! The one integration-test binary. Every test runs the real binary (gateway and
//! ComfyUI simulator) on 127.0.0.1 with its database in a temp dir.
//!
//! - `support`: process launchers on port 0 with a cleared environment and a temporary
//!   working directory (killed by PID on drop), the tool gate (`require`), `eventually`,
//!   and HTTP helpers.
//! - `abuse`: availability under attack: each hostile client, tenant or plugin beside a
//!   well-behaved neighbour, who must still be served; the attacker gets its 4xx.
//! - `api`: error envelope and codes for bad input, workflow CRUD, CLI.
//! - `auth`: API keys and JWTs against the real server: roles, job ownership (404 for
//!   others), alg none / confusion / expiry attacks, the audit log, open mode.
//! - `backup`: online backups (`POST /admin/backup`, `comfyui-gateway backup`) while a
//!   client keeps submitting; `check` on the copies; a gateway restored from each serves
//!   every job acknowledged before it; one at a time, admins only, 507 without room.
//! - `backends`: the backend pool on two simulators: per-backend limits and ids, workflow
//!   affinity, `GET /backends`, durable drains (roles, audit), jobs moved off a killed or
//!   partitioned backend and the stray prompt removed when it comes back.
//! - `campaign`: the kill -9 campaign, `KILL_CAMPAIGN_KILLS` kills (5; CI more;
//!   `scripts/kill-campaign --kills N` runs it alone).
//! - `clients`: clients generated from the live `/openapi.json` (openapi-python-client,
//!   openapi-typescript with openapi-fetch), type-checked (mypy, tsc) and run unchanged:
//!   register a workflow, submit with typed inputs, follow, download, read the webhooks.
//! - `crash_points`: the gateway aborted at each dangerous window (after POST /prompt,
//!   before the success commit, after a webhook 2xx, before the submit answer), restarted.
//! - `dashboard`: the web dashboard's files (public, typed, ETag, CSP) and the page in
//!   headless chromium (playwright-core): sign in with a key, submit from the generated
//!   form (file picker too), watch the job succeed with its thumbnail, download an output,
//!   another user sees none of it; screenshots under `<target>/tmp/dashboard/`.
//! - `docs`: the API docs page (`/docs`): its files (public, typed, ETag, CSP) and the page
//!   in headless chromium: every operation of `/openapi.json` listed, `POST /jobs`'s request
//!   body shown, no script error or CSP violation; screenshots under `<target>/tmp/docs/`.
//! - `deploy`: the container image built with podman (on a debootstrapped Debian base) and
//!   run beside the simulator container: a job through the published port, HEALTHCHECK,
//!   non-root, the /data volume across a restart; `compose.yaml`'s shape; the systemd unit
//!   through `systemd-analyze verify` and `security`.
//! - `events`: Server-Sent Events and resume, sync submits, listing and cursors, logs,
//!   privacy mode.
//! - `examples`: the client examples of `examples/` against a live gateway: `curl.sh`
//!   (every endpoint), the Python client and webhook receiver, the Node client, the n8n
//!   workflow (structure, and its HTTP Request node replayed).
//! - `faults`: the backend-fault matrix: refused connections, 5xx answers, hung answers,
//!   execution hangs, WebSocket drops, crashes, garbage and truncated downloads, history
//!   without outputs; transient and persistent, each with its expected end state and code.
//! - `harness`: the harness's own promises: neither a `.env` where the tests run nor an
//!   exported variable reaches a spawned gateway.
//! - `import`: workflow import (`POST /workflows/import`, `import-workflow`): SDXL base +
//!   refiner and img2img exports typed from the simulator's `/object_info`, registered and
//!   run with overridden inputs; the CLI's files through `add-workflow`; refusals.
//! - `inputs`: image inputs by URL, data URI, base64 and multipart; SSRF refusals, bad
//!   bytes and oversize as 400 naming the field.
//! - `jobs`: bundled workflows end to end, downloads and hashes, priorities,
//!   per-backend concurrency, failure classification, cancel.
//! - `openapi`: the OpenAPI document, checked against the live server by schemathesis.
//! - `operator`: daemon conventions: plain logs into files, an unreachable backend logged
//!   at start, misspelled settings named with the one meant, clap's whole messages,
//!   `HOST=localhost`, `serve --help` by topic, `scripts/run`'s first-job report.
//! - `outputs`: outputs of every kind; Range, HEAD, base64 downloads.
//! - `plugin_cli`: `plugin check` and `plugin run` on the guest components of `plugins/`:
//!   hooks and imports, a readable refusal, rewritten inputs, a tidied PNG, timeout, fuel.
//! - `plugins`: WebAssembly plugins through real jobs: the examples, hostile plugins,
//!   a type-mismatched upload, precompiled loads after a restart.
//! - `plugins_disabled` (only without the `wasm-plugins` feature): a workflow with a plugin
//!   is refused with 422 `PLUGIN_FAILED`, `plugin check` exits 1, `/capabilities` says so.
//! - `privacy`: privacy mode: no prompt text in the database file, outputs or logs.
//! - `probes`: `/livez` up and `/readyz` 503 with the backend down, then 200; both public
//!   and never rate limited; metrics by backend id, `build_info`, known series at zero;
//!   the owner file and the CLI's fallback refusing a gateway of another database.
//! - `results`: the result cache (hits skip the backend and share blobs, TTL, random
//!   seeds), idempotency keys (replay, conflict, expiry, owners, races, restarts), retention.
//! - `recovery`: kill -9 of the gateway under load, ComfyUI crash mid-job, outage,
//!   attempt bound, WebSocket drop, re-attach after a gateway restart.
//! - `limits`: rate limits per key and IP with RateLimit headers, trusted proxies, CORS,
//!   per-client job cap, chunked body cap, header read timeout, JSON depth, query
//!   parameter cap, path traversal.
//! - `links`: with `PUBLIC_URL` set every link of every answer of a job's life is absolute
//!   under it (a walker over every string), without it paths as before; the document's
//!   `servers`; `POST /jobs?wait=&include=base64` with the bytes, and its flood capped.
//! - `mcp`: `/mcp` through the official MCP Python SDK in both connect modes: the workflow
//!   tools with their schemas, a run with an image and progress, a retried call that is the
//!   same job (anew after a failure), a tool error with the gateway's code, `get_job` only for
//!   the job's owner, a flood of waiting calls capped while a neighbour is served.
//! - `metrics`: `GET /metrics` checked by promtool and by value; JSON logs with
//!   correlation and job ids.
//! - `s3`: `STORAGE_PROVIDER=s3` against a real S3 server (s3s-fs): objects by hash,
//!   downloads every way, dedupe and cache sharing, deletion with the last job only,
//!   uploads racing deletions, presigned redirects, restart, a crash between upload and
//!   commit, a bucket down at start, during downloads and at a job's success.
//! - `sim_protocol`: the simulator replays captured ComfyUI scenarios, field by field.
//! - `tidy`: architecture invariants checked on the source.
//! - `webhooks`: signed deliveries checked by Rust and by the PyPI `standardwebhooks`
//!   package, retries on a compressed schedule, Retry-After, 410, redelivery, kill -9
//!   before delivery, callbacks refused at submit.

mod support;

mod abuse;
mod api;
mod auth;
mod backends;
mod backup;
mod campaign;
mod clients;
#[cfg(feature = "failpoints")]
mod crash_points;
mod dashboard;
mod deploy;
mod docs;
mod events;
mod examples;
mod faults;
mod harness;
mod import;
mod inputs;
mod jobs;
mod limits;
mod links;
mod mcp;
mod metrics;
mod openapi;
mod operator;
mod outputs;
#[cfg(feature = "wasm-plugins")]
mod plugin_cli;
#[cfg(feature = "wasm-plugins")]
mod plugins;
#[cfg(not(feature = "wasm-plugins"))]
mod plugins_disabled;
mod privacy;
mod probes;
mod recovery;
mod results;
#[cfg(feature = "s3")]
mod s3;
mod sim_protocol;
mod supabase;
mod tidy;
mod webhooks;
