//! Prometheus metrics: one [`Metrics`] handle (an `Arc` inside, no global registry),
//! created by the service and handed down to the scheduler and the API.
//!
//! Events are counted where they happen (job transitions in the scheduler, requests in
//! the API); levels that the gateway already knows exactly (jobs by state from the
//! store's O(1) counts, the queue by priority, backends) are read at scrape time from a
//! [`Snapshot`], so they can never drift.
//!
//! Encoding: the `prometheus` crate (default features off: no protobuf, no process
//! metrics) rather than a hand-written encoder. It writes exactly the text exposition
//! format 0.0.4 (HELP/TYPE lines, label escaping, cumulative buckets with `+Inf`, `_sum`
//! and `_count`), which is what we serve; `prometheus-client` writes OpenMetrics instead
//! (`# EOF`, `_total` added to counter names), which is not 0.0.4.
//!
//! Every label set is bounded: `state`, `priority`, `outcome` (jobs and webhook attempts) are closed enums, `backend`
//! is a configured backend's id (`COMFYUI_URL`'s `id`, never its URL), `route` is a
//! route-table pattern, `status` a status code, and `workflow` is a registered workflow
//! id, with at most [`WORKFLOW_LABELS_MAX`] distinct values (further ids are counted as
//! `other`).
//!
//! Labelled counters start at zero for every value known in advance (each closed enum's
//! values at creation, each workflow when it is registered or found at start, each
//! configured backend at every scrape), so an alert on a rate sees `0`, not no data.
//! `build_info` is a constant 1 whose labels say what runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::domain::JobState;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most distinct `workflow` label values; jobs of further workflows count as `other`.
pub const WORKFLOW_LABELS_MAX: usize = 256;

/// The label value of everything outside a bounded set.
pub const OTHER: &str = "other";

/// The `outcome` values of `reconciliations_total`.
pub const RECONCILE_OUTCOMES: [&str; 3] = ["reattached", "collected", "resubmitted"];
/// The `outcome` values of `webhook_attempts_total`.
pub const WEBHOOK_OUTCOMES: [&str; 4] = ["delivered", "retrying", "failed", "disabled"];
/// The `reason` values of `storage_refusals_total`.
pub const REFUSAL_REASONS: [&str; 2] = ["disk_full", "quota"];
/// The `kind` values of `pruned_total`.
pub const PRUNED_KINDS: [&str; 3] = ["jobs", "cache_entries", "idempotency_keys"];
/// The `kind` values of `http_open`.
pub const OPEN_KINDS: [&str; 3] = ["connections", "event_streams", "sync_waits"];
/// The terminal states: the `outcome` values of `jobs_finished_total`.
const TERMINAL_STATES: [JobState; 3] = [JobState::Succeeded, JobState::Failed, JobState::Canceled];

/// Buckets of the job wait histogram (seconds in the gateway's queue).
const WAIT_BUCKETS_S: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
/// Buckets of the job run histogram (seconds from first dispatch to the end).
const RUN_BUCKETS_S: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
/// Buckets of the HTTP request duration histogram (seconds).
const HTTP_BUCKETS_S: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Levels read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Jobs in the store by state (every state, zeros included).
    pub jobs_by_state: Vec<(JobState, u64)>,
    /// Jobs in the gateway's queue by priority label (`high`, `normal`, `low`, `other`).
    pub queue_by_priority: Vec<(&'static str, u64)>,
    /// Every configured backend.
    pub backends: Vec<BackendLevel>,
    /// Store levels.
    pub store: StoreLevel,
    /// Plugins compiled, and loaded from their precompiled artifacts, since start.
    pub plugin_loads: (u64, u64),
}

/// Levels of the store, from its O(1) counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreLevel {
    /// Distinct blobs stored.
    pub blobs: u64,
    /// Their total size, uncompressed.
    pub blob_bytes: u64,
    /// Result-cache entries.
    pub cache_entries: u64,
    /// Webhook deliveries waiting for an attempt.
    pub deliveries_pending: u64,
    /// Objects of unreferenced blobs waiting for the reaper (S3 storage).
    pub object_deletes_pending: u64,
    /// Bytes new writes can use on the database's disk (None: unknown).
    pub disk_free_bytes: Option<u64>,
    /// Bytes of inputs and outputs charged to owners, summed.
    pub usage_bytes: u64,
    /// Owners charged any bytes.
    pub owners_with_usage: u64,
}

/// A backend's levels.
#[derive(Debug, Clone)]
pub struct BackendLevel {
    /// Its id (the `backend` label; `COMFYUI_URL`'s `id`, by default `<host>-<port>`).
    pub id: String,
    /// Whether it answered its last probe.
    pub up: bool,
    /// Our prompts in flight on it.
    pub in_flight: u32,
    /// Drained by an operator.
    pub draining: bool,
}

/// The gateway's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    jobs: IntGaugeVec,
    queue_depth: IntGaugeVec,
    job_wait: HistogramVec,
    job_run: HistogramVec,
    jobs_finished: IntCounterVec,
    job_attempts: IntCounter,
    job_resubmissions: IntCounter,
    reconciliations: IntCounterVec,
    backend_up: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    backend_draining: IntGaugeVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    webhook_attempts: IntCounterVec,
    cache_lookups: IntCounterVec,
    pruned: IntCounterVec,
    blobs: IntGauge,
    blob_bytes: IntGauge,
    cache_entries: IntGauge,
    deliveries_pending: IntGauge,
    object_deletes_pending: IntGauge,
    disk_free_bytes: IntGauge,
    usage_bytes: IntGauge,
    owners_with_usage: IntGauge,
    storage_refusals: IntCounterVec,
    plugin_loads: IntGaugeVec,
    http_open: IntGaugeVec,
    build_info: IntGaugeVec,
    /// Workflow label values handed out so far (bounded by `WORKFLOW_LABELS_MAX`).
    workflows: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn name(short: &str) -> String {
    format!("comfyui_gateway_{short}")
}

impl Metrics {
    /// A fresh registry with every metric of the gateway.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Registration fails only for duplicate or malformed names: a programmer error.
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone())).expect("metric names are valid and unique");
            m
        }
        let gauge = |short: &str, help: &str, label: &str| {
            reg(&registry, IntGaugeVec::new(Opts::new(name(short), help), &[label]).expect("valid gauge"))
        };
        let counter = |short: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name(short), help), labels).expect("valid counter"))
        };
        let histogram = |short: &str, help: &str, label: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name(short), help).buckets(buckets.to_vec());
            reg(&registry, HistogramVec::new(opts, &[label]).expect("valid histogram"))
        };
        let level = |short: &str, help: &str| {
            reg(&registry, IntGauge::with_opts(Opts::new(name(short), help)).expect("valid gauge"))
        };
        let single = |short: &str, help: &str| {
            reg(&registry, IntCounter::with_opts(Opts::new(name(short), help)).expect("valid counter"))
        };
        let inner = Inner {
            jobs: gauge("jobs", "Jobs in the store by state.", "state"),
            queue_depth: gauge("queue_depth", "Jobs waiting in the gateway's queue by priority level.", "priority"),
            job_wait: histogram(
                "job_wait_seconds",
                "Time jobs waited in the gateway's queue before their first dispatch, by workflow.",
                "workflow",
                WAIT_BUCKETS_S,
            ),
            job_run: histogram(
                "job_run_seconds",
                "Time from a job's first dispatch to its terminal state, by workflow.",
                "workflow",
                RUN_BUCKETS_S,
            ),
            jobs_finished: counter(
                "jobs_finished_total",
                "Jobs that reached a terminal state, by workflow and outcome.",
                &["workflow", "outcome"],
            ),
            job_attempts: single(
                "job_attempts_total",
                "Prompts handed to a backend: first dispatches and resubmissions.",
            ),
            job_resubmissions: single(
                "job_resubmissions_total",
                "Prompts submitted again because a backend lost them.",
            ),
            reconciliations: counter(
                "reconciliations_total",
                "Running jobs reconciled with their backend (after a restart or an ambiguous failure), by what was found: reattached (in its queue), collected (finished), resubmitted (unknown).",
                &["outcome"],
            ),
            backend_up: gauge(
                "backend_up",
                "Whether a backend answered its last health probe (1) or not (0).",
                "backend",
            ),
            backend_in_flight: gauge("backend_in_flight", "The gateway's prompts in flight on a backend.", "backend"),
            backend_draining: gauge(
                "backend_draining",
                "Whether an operator drained a backend (1: no new jobs go there) or not (0).",
                "backend",
            ),
            http_requests: counter(
                "http_requests_total",
                "HTTP requests answered, by route pattern and status code.",
                &["route", "status"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "Time to answer HTTP requests, by route pattern.",
                "route",
                HTTP_BUCKETS_S,
            ),
            webhook_attempts: counter(
                "webhook_attempts_total",
                "Webhook delivery attempts, by what followed (delivered, retrying, failed, disabled).",
                &["outcome"],
            ),
            cache_lookups: counter(
                "cache_lookups_total",
                "Result-cache lookups of cacheable submits, by result (hit, miss).",
                &["result"],
            ),
            pruned: counter(
                "pruned_total",
                "Records deleted by retention, by kind (jobs, cache_entries, idempotency_keys).",
                &["kind"],
            ),
            blobs: level("blobs", "Distinct blobs (outputs and inputs, content-addressed) in the store."),
            blob_bytes: level("blob_bytes", "Total size of the stored blobs, uncompressed, in bytes."),
            cache_entries: level("cache_entries", "Entries of the result cache."),
            deliveries_pending: level("webhook_deliveries_pending", "Webhook deliveries waiting for an attempt."),
            object_deletes_pending: level(
                "object_deletes_pending",
                "Objects of blobs nothing names any more, waiting to be deleted from the S3 bucket.",
            ),
            disk_free_bytes: level(
                "disk_free_bytes",
                "Bytes new writes can use on the database's file system (its free space plus the pages redb freed in its file, as last measured).",
            ),
            usage_bytes: level(
                "storage_usage_bytes",
                "Bytes of inputs and outputs kept, summed over owners (a shared blob counts once per job naming it).",
            ),
            owners_with_usage: level("storage_owners", "Owners whose jobs keep any inputs or outputs."),
            storage_refusals: counter(
                "storage_refusals_total",
                "New jobs refused for storage, by reason: disk_full (DISK_FREE_MIN_BYTES), quota (STORAGE_QUOTA_BYTES_PER_OWNER).",
                &["reason"],
            ),
            plugin_loads: gauge(
                "plugin_loads",
                "Plugins made ready since start, by source: compiled, or precompiled (from the stored artifact).",
                "source",
            ),
            http_open: gauge(
                "http_open",
                "What clients hold open now: connections, event_streams, sync_waits (POST /jobs?wait=).",
                "kind",
            ),
            build_info: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        name("build_info"),
                        "Always 1; the labels say what runs: version, and whether this build has the WebAssembly plugin runtime (plugins).",
                    ),
                    &["version", "plugins"],
                )
                .expect("valid gauge"),
            ),
            workflows: Mutex::new(HashSet::new()),
            registry,
        };
        inner.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), build_plugins()]).set(1);
        // Every series of a closed enum exists from the start, at zero.
        for outcome in RECONCILE_OUTCOMES {
            inner.reconciliations.with_label_values(&[outcome]);
        }
        for outcome in WEBHOOK_OUTCOMES {
            inner.webhook_attempts.with_label_values(&[outcome]);
        }
        for result in ["hit", "miss"] {
            inner.cache_lookups.with_label_values(&[result]);
        }
        for kind in PRUNED_KINDS {
            inner.pruned.with_label_values(&[kind]);
        }
        for reason in REFUSAL_REASONS {
            inner.storage_refusals.with_label_values(&[reason]);
        }
        for kind in OPEN_KINDS {
            inner.http_open.with_label_values(&[kind]);
        }
        Metrics { inner: Arc::new(inner) }
    }

    /// A workflow is registered: its series (jobs finished by outcome, wait and run
    /// times) exist from now on, at zero, within [`WORKFLOW_LABELS_MAX`].
    pub fn workflow_known(&self, workflow: &str) {
        let label = self.workflow_label(workflow);
        for outcome in TERMINAL_STATES {
            self.inner.jobs_finished.with_label_values(&[label.as_str(), outcome.as_str()]);
        }
        self.inner.job_wait.with_label_values(&[label.as_str()]);
        self.inner.job_run.with_label_values(&[label.as_str()]);
    }

    /// The label value of a workflow id: itself while fewer than `WORKFLOW_LABELS_MAX`
    /// distinct ids were seen, else `other`.
    fn workflow_label(&self, id: &str) -> String {
        let mut seen = self.inner.workflows.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(id) {
            return id.to_string();
        }
        if seen.len() < WORKFLOW_LABELS_MAX {
            seen.insert(id.to_string());
            return id.to_string();
        }
        OTHER.to_string()
    }

    /// A new job was refused for storage (`disk_full` or `quota`).
    pub fn storage_refused(&self, reason: &'static str) {
        debug_assert!(REFUSAL_REASONS.contains(&reason), "{reason}");
        self.inner.storage_refusals.with_label_values(&[reason]).inc();
    }

    /// A cacheable submit looked up the result cache.
    pub fn cache_lookup(&self, hit: bool) {
        self.inner.cache_lookups.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
    }

    /// Retention deleted records.
    pub fn pruned(&self, p: crate::store::Pruned) {
        for (kind, n) in PRUNED_KINDS.into_iter().zip([p.jobs, p.cache_entries, p.idempotency_keys]) {
            self.inner.pruned.with_label_values(&[kind]).inc_by(n as u64);
        }
    }

    /// A job of `workflow` was dispatched for the first time after waiting `wait`.
    pub fn job_started(&self, workflow: &str, wait: Duration) {
        let label = self.workflow_label(workflow);
        self.inner.job_wait.with_label_values(&[label.as_str()]).observe(wait.as_secs_f64());
    }

    /// A job of `workflow` reached the terminal state `outcome`; `run` is the time since
    /// its first dispatch (`None` if it never ran).
    pub fn job_finished(&self, workflow: &str, outcome: JobState, run: Option<Duration>) {
        debug_assert!(outcome.is_terminal());
        let label = self.workflow_label(workflow);
        self.inner.jobs_finished.with_label_values(&[label.as_str(), outcome.as_str()]).inc();
        if let Some(run) = run {
            self.inner.job_run.with_label_values(&[label.as_str()]).observe(run.as_secs_f64());
        }
    }

    /// A prompt was handed to a backend; `resubmission` when a backend had lost it.
    pub fn job_attempt(&self, resubmission: bool) {
        self.inner.job_attempts.inc();
        if resubmission {
            self.inner.job_resubmissions.inc();
        }
    }

    /// A running job was reconciled with its backend; `outcome` is `reattached`,
    /// `collected` or `resubmitted`.
    pub fn reconciled(&self, outcome: &'static str) {
        debug_assert!(RECONCILE_OUTCOMES.contains(&outcome), "{outcome}");
        self.inner.reconciliations.with_label_values(&[outcome]).inc();
    }

    /// An HTTP request on the route pattern `route` was answered with `status`.
    pub fn http_request(&self, route: &str, status: u16, elapsed: Duration) {
        self.inner.http_requests.with_label_values(&[route, &status.to_string()]).inc();
        self.inner.http_duration.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }

    /// Clients hold `n` of `kind` (`connections`, `event_streams`, `sync_waits`) open now.
    pub fn http_open(&self, kind: &'static str, n: usize) {
        debug_assert!(OPEN_KINDS.contains(&kind), "{kind}");
        self.inner.http_open.with_label_values(&[kind]).set(clamp_i64(n as u64));
    }

    /// A webhook attempt was recorded; `outcome` is `delivered`, `retrying`, `failed` or
    /// `disabled`.
    pub fn webhook_attempt(&self, outcome: &'static str) {
        debug_assert!(WEBHOOK_OUTCOMES.contains(&outcome), "{outcome}");
        self.inner.webhook_attempts.with_label_values(&[outcome]).inc();
    }

    /// The text exposition (format 0.0.4) of every metric, levels taken from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let m = &self.inner;
        for (state, n) in &snapshot.jobs_by_state {
            m.jobs.with_label_values(&[state.as_str()]).set(clamp_i64(*n));
        }
        for (priority, n) in &snapshot.queue_by_priority {
            m.queue_depth.with_label_values(&[*priority]).set(clamp_i64(*n));
        }
        for b in &snapshot.backends {
            m.backend_up.with_label_values(&[b.id.as_str()]).set(i64::from(b.up));
            m.backend_in_flight.with_label_values(&[b.id.as_str()]).set(i64::from(b.in_flight));
            m.backend_draining.with_label_values(&[b.id.as_str()]).set(i64::from(b.draining));
        }
        let st = &snapshot.store;
        m.blobs.set(clamp_i64(st.blobs));
        m.blob_bytes.set(clamp_i64(st.blob_bytes));
        m.cache_entries.set(clamp_i64(st.cache_entries));
        m.deliveries_pending.set(clamp_i64(st.deliveries_pending));
        m.object_deletes_pending.set(clamp_i64(st.object_deletes_pending));
        if let Some(free) = st.disk_free_bytes {
            m.disk_free_bytes.set(clamp_i64(free));
        }
        m.usage_bytes.set(clamp_i64(st.usage_bytes));
        m.owners_with_usage.set(clamp_i64(st.owners_with_usage));
        m.plugin_loads.with_label_values(&["compiled"]).set(clamp_i64(snapshot.plugin_loads.0));
        m.plugin_loads.with_label_values(&["precompiled"]).set(clamp_i64(snapshot.plugin_loads.1));
        let mut buf = Vec::new();
        // Encoding into a Vec fails only on metric families the registry itself rejects.
        if let Err(e) = prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The `plugins` label of `build_info`.
fn build_plugins() -> &'static str {
    if crate::plugins::AVAILABLE { "true" } else { "false" }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_labels_in_text_format() {
        let m = Metrics::new();
        m.job_started("icon_512", Duration::from_millis(20));
        m.job_finished("icon_512", JobState::Succeeded, Some(Duration::from_secs(2)));
        m.job_attempt(false);
        m.job_attempt(true);
        m.http_request("/jobs/{id}", 200, Duration::from_millis(3));
        m.webhook_attempt("retrying");
        m.webhook_attempt("delivered");
        m.webhook_attempt("delivered");
        m.storage_refused("quota");
        let snapshot = Snapshot {
            jobs_by_state: vec![(JobState::Queued, 2), (JobState::Succeeded, 1)],
            queue_by_priority: vec![("high", 1), ("normal", 1), ("low", 0), ("other", 0)],
            backends: vec![BackendLevel { id: "gpu-1".into(), up: true, in_flight: 1, draining: true }],
            store: StoreLevel {
                blobs: 3,
                blob_bytes: 4096,
                cache_entries: 1,
                deliveries_pending: 2,
                object_deletes_pending: 5,
                disk_free_bytes: Some(1 << 30),
                usage_bytes: 8192,
                owners_with_usage: 2,
            },
            plugin_loads: (1, 4),
        };
        let text = m.render(&snapshot);
        for line in [
            "# TYPE comfyui_gateway_jobs gauge",
            "comfyui_gateway_jobs{state=\"queued\"} 2",
            "comfyui_gateway_queue_depth{priority=\"high\"} 1",
            "comfyui_gateway_blob_bytes 4096",
            "comfyui_gateway_webhook_deliveries_pending 2",
            "comfyui_gateway_object_deletes_pending 5",
            "comfyui_gateway_disk_free_bytes 1073741824",
            "comfyui_gateway_storage_usage_bytes 8192",
            "comfyui_gateway_storage_owners 2",
            "comfyui_gateway_storage_refusals_total{reason=\"quota\"} 1",
            "comfyui_gateway_plugin_loads{source=\"precompiled\"} 4",
            "# TYPE comfyui_gateway_job_run_seconds histogram",
            "comfyui_gateway_job_run_seconds_count{workflow=\"icon_512\"} 1",
            "comfyui_gateway_job_wait_seconds_bucket{workflow=\"icon_512\",le=\"+Inf\"} 1",
            "comfyui_gateway_jobs_finished_total{outcome=\"succeeded\",workflow=\"icon_512\"} 1",
            "comfyui_gateway_job_attempts_total 2",
            "comfyui_gateway_job_resubmissions_total 1",
            "comfyui_gateway_backend_up{backend=\"gpu-1\"} 1",
            "comfyui_gateway_backend_draining{backend=\"gpu-1\"} 1",
            "comfyui_gateway_http_requests_total{route=\"/jobs/{id}\",status=\"200\"} 1",
            "comfyui_gateway_webhook_attempts_total{outcome=\"delivered\"} 2",
            "comfyui_gateway_webhook_attempts_total{outcome=\"retrying\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    /// Before any event: `build_info`, every closed enum's series and a known workflow's
    /// series are there, at zero.
    #[test]
    fn known_label_values_start_at_zero() {
        let m = Metrics::new();
        m.workflow_known("icon_512");
        let text = m.render(&Snapshot::default());
        let version = env!("CARGO_PKG_VERSION");
        let mut expected = vec![
            format!("comfyui_gateway_build_info{{plugins=\"{}\",version=\"{version}\"}} 1", build_plugins()),
            "comfyui_gateway_cache_lookups_total{result=\"hit\"} 0".to_string(),
            "comfyui_gateway_job_run_seconds_count{workflow=\"icon_512\"} 0".to_string(),
            "comfyui_gateway_job_wait_seconds_count{workflow=\"icon_512\"} 0".to_string(),
        ];
        for outcome in TERMINAL_STATES {
            let o = outcome.as_str();
            expected.push(format!("comfyui_gateway_jobs_finished_total{{outcome=\"{o}\",workflow=\"icon_512\"}} 0"));
        }
        let families = [
            ("reconciliations_total", "outcome", &RECONCILE_OUTCOMES[..]),
            ("webhook_attempts_total", "outcome", &WEBHOOK_OUTCOMES[..]),
            ("storage_refusals_total", "reason", &REFUSAL_REASONS[..]),
            ("pruned_total", "kind", &PRUNED_KINDS[..]),
            ("http_open", "kind", &OPEN_KINDS[..]),
        ];
        for (family, label, values) in families {
            for v in values {
                expected.push(format!("comfyui_gateway_{family}{{{label}=\"{v}\"}} 0"));
            }
        }
        for line in expected {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn workflow_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..WORKFLOW_LABELS_MAX + 10 {
            m.job_finished(&format!("wf{i}"), JobState::Failed, None);
        }
        let text = m.render(&Snapshot::default());
        let series = text.lines().filter(|l| l.starts_with("comfyui_gateway_jobs_finished_total{")).count();
        assert_eq!(series, WORKFLOW_LABELS_MAX + 1, "the ids beyond the bound share one `other` series");
        assert!(text.contains("comfyui_gateway_jobs_finished_total{outcome=\"failed\",workflow=\"other\"} 10"));
    }
}
