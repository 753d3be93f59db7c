//! The plugin runtime (cargo feature `wasm-plugins`): one wasmtime engine for every
//! plugin, components compiled once (and cached precompiled by the store, keyed by the wasm
//! hash and the engine's compatibility hash), a fresh store per call, and limits on every
//! call.
//!
//! - Sandbox ([`super::sandbox`]): deny-all WASI (no env, args, files or network),
//!   stdout/stderr captured and bounded, bounded `host.log`, a limiter over all memories.
//! - Limits per call: wall time (an epoch ticker interrupts running code; a call blocked in
//!   a host function is cut by a timeout around the async call), memory, input and output
//!   sizes, and an optional fuel budget (a deterministic instruction count).
//! - Imports are checked at load against an allow-list (the `host` interface and WASI 0.2).
//! - Threads: every call runs on the host's own tokio runtime (`PLUGIN_THREADS` workers),
//!   never on the caller's (the API's) async workers, and yields to that runtime on every
//!   epoch tick, so a CPU-bound plugin costs its own call's time and nothing else; past the
//!   wall-time limit the tick traps (`timeout`).
//! - Concurrency: at most `PLUGIN_CONCURRENCY` calls in flight in total and
//!   `PLUGIN_CONCURRENCY_PER_PLUGIN` per plugin; a submit's call waits at most
//!   `PLUGIN_QUEUE_WAIT_MS` for its slots, then fails `busy` (`503 PLUGIN_BUSY`). The
//!   slots are held by the call's task, so a caller that goes away never lets more
//!   instances run than the pool has.
//!
//! The pooling allocator (sized from `PLUGIN_CONCURRENCY`) is used when the machine allows
//! its reservations, with a fallback to on-demand allocation.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use serde_json::Value;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};

use super::sandbox::{self, State};
use super::{CallContext, Failure, Hook, JSON_MAX, Limits, LogLine, MEDIA_MAX, Media, Report};
use crate::domain::Hash;
use crate::error::Error;

/// Generated bindings of `wit/plugin.wit` (world `plugin`: every hook).
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "plugin",
        exports: { default: async },
    });
}

use bindings::comfyui_gateway::plugin::types as wit;
use bindings::exports::comfyui_gateway::plugin::{input_transform, output_process, template_render};

/// Our interfaces a plugin may import (any 0.1.x).
const OURS_ALLOWED: &[&str] = &["comfyui-gateway:plugin/host@0.1.", "comfyui-gateway:plugin/types@0.1."];

/// WASI 0.2 interfaces a plugin may import (all deny-all at run time).
const WASI_ALLOWED: &[&str] =
    &["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/", "wasi:sockets/"];

/// How much lower (in nice steps) the plugin runtime's threads run than the rest of the
/// process: on a busy machine the kernel then gives the API's threads the CPU first, so
/// plugins that compute flat out (a looping hook, a heavy Python guest) cost their own
/// calls time, not everybody's latency.
const PLUGIN_THREAD_NICE: i32 = 10;

/// How often the epoch ticker ticks; a call's wall-time limit is counted in these.
const TICK: Duration = Duration::from_millis(5);

/// A compiled plugin, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    /// BLAKE3 of the wasm bytes.
    pub hash: Hash,
    /// The hooks it exports (type-checked).
    pub hooks: Vec<Hook>,
    /// Its imports, by name.
    pub imports: Vec<String>,
    pre: InstancePre<State>,
    input_transform: Option<input_transform::GuestIndices>,
    template_render: Option<template_render::GuestIndices>,
    output_process: Option<output_process::GuestIndices>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("hash", &crate::domain::hash_hex(&self.hash))
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl CallContext {
    fn wit(&self) -> wit::JobContext {
        wit::JobContext {
            job_id: self.job_id.clone(),
            workflow_id: self.workflow.0.clone(),
            workflow_version: self.workflow.1,
            owner: self.owner.clone(),
        }
    }
}

/// The plugin host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    pooling: bool,
    compat: Hash,
    /// Compiled plugins by wasm hash.
    loaded: Mutex<HashMap<Hash, Plugin>>,
    ticker: Option<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    counters: Counters,
    /// One permit per call in flight: never more instances than the pool has slots.
    permits: Arc<Semaphore>,
    /// Per plugin (by wasm hash): `PLUGIN_CONCURRENCY_PER_PLUGIN` permits, made at its
    /// first call (plugins are kept forever, so this grows with the stored plugins only).
    per_plugin: Mutex<HashMap<Hash, Arc<Semaphore>>>,
    /// The runtime every call runs on (`PLUGIN_THREADS` workers); taken at drop.
    runtime: Option<tokio::runtime::Runtime>,
}

/// One hook's call in a fresh instance, boxed so it can move to the plugin runtime.
type Call<T> = Box<
    dyn for<'a> FnOnce(
            &'a mut Store<State>,
            &'a wasmtime::component::Instance,
        ) -> Pin<Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>>
        + Send,
>;

/// Compilations and precompiled loads (for logs, metrics and tests).
#[derive(Default)]
struct Counters {
    compiled: std::sync::atomic::AtomicU64,
    from_cache: std::sync::atomic::AtomicU64,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        // Possibly inside another runtime (a test, the gateway's shutdown): no blocking.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("limits", &self.inner.limits).field("pooling", &self.inner.pooling).finish()
    }
}

fn engine_config(limits: &Limits, pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true).epoch_interruption(true).consume_fuel(limits.fuel.is_some());
    // Memories are bounded by the limiter; a small reservation keeps many slots cheap.
    let reservation = (limits.memory_bytes as u64).next_power_of_two().max(1 << 24);
    c.memory_reservation(reservation).memory_guard_size(1 << 16).memory_reservation_for_growth(0);
    if pooling {
        let n = limits.concurrency.max(1);
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 4)
            .total_tables(n * 8)
            .total_stacks(n)
            .max_memory_size(limits.memory_bytes)
            .max_memories_per_component(4)
            .max_core_instances_per_component(16)
            // A reused slot keeps its first MiB resident (reset by memset, or by
            // PAGEMAP_SCAN on Linux ≥ 6.7) instead of faulting every page in again: about
            // 42 → 16 µs per small call (bench/plugins.rs), ≤ 1 MiB RSS per slot.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

/// A `Hasher` that feeds BLAKE3 (for the engine's compatibility hash).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let h = self.0.finalize();
        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Host {
    /// One engine for every plugin: pooling allocator when possible, on-demand otherwise.
    pub fn new(limits: Limits) -> Result<Host, Error> {
        let (engine, pooling) = match Engine::new(&engine_config(&limits, true)) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!(error = %e, "plugin pooling allocator unavailable; allocating on demand");
                let e = Engine::new(&engine_config(&limits, false))
                    .map_err(|e| Error::internal(format!("cannot create the plugin engine: {e}")))?;
                (e, false)
            }
        };
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::internal(format!("cannot link WASI: {e}")))?;
        bindings::comfyui_gateway::plugin::host::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| Error::internal(format!("cannot link the host interface: {e}")))?;
        let mut h = Blake3Hasher(blake3::Hasher::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let compat = *h.0.finalize().as_bytes();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::internal(format!("cannot start the epoch ticker: {e}")))?
        };
        let permits = Arc::new(Semaphore::new(limits.concurrency.max(1) as usize));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1) as usize)
            .thread_name("plugin-worker")
            .on_thread_start(|| crate::priority::lower_current_thread(PLUGIN_THREAD_NICE))
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start the plugin runtime: {e}")))?;
        Ok(Host {
            inner: Arc::new(HostInner {
                engine,
                linker,
                limits,
                pooling,
                compat,
                loaded: Mutex::new(HashMap::new()),
                ticker: Some(ticker),
                stop,
                counters: Counters::default(),
                permits,
                per_plugin: Mutex::new(HashMap::new()),
                runtime: Some(runtime),
            }),
        })
    }

    /// The limits of every call.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The engine's compatibility hash: precompiled artifacts are valid for it only.
    pub fn compat_hash(&self) -> Hash {
        self.inner.compat
    }

    /// Compile wasm bytes (a component), check its imports and hooks: the plugin and its
    /// precompiled form (to cache). `invalid plugin` failures read as a sentence.
    pub fn compile(&self, wasm: &[u8]) -> Result<(Plugin, Vec<u8>), Failure> {
        if wasm.get(..8) != Some(&[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00][..]) {
            let what = if wasm.get(..4) == Some(b"\0asm") { "a core wasm module" } else { "not wasm" };
            return Err(Failure::new(
                "invalid plugin",
                format!(
                    "the file is {what}, not a WebAssembly component (build it with `cargo build --target wasm32-wasip2`)"
                ),
            ));
        }
        let precompiled = self
            .inner
            .engine
            .precompile_component(wasm)
            .map_err(|e| Failure::new("invalid plugin", format!("does not compile: {e:#}")))?;
        let hash = *blake3::hash(wasm).as_bytes();
        let plugin = self.load_precompiled(hash, &precompiled)?;
        Ok((plugin, precompiled))
    }

    /// Load a plugin from its precompiled form (made by [`Host::compile`] with an engine of
    /// the same [`Host::compat_hash`]).
    pub fn load_precompiled(&self, hash: Hash, precompiled: &[u8]) -> Result<Plugin, Failure> {
        if let Some(p) = self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(&hash) {
            return Ok(p.clone());
        }
        // SAFETY: the bytes were produced by `precompile_component` of an engine with the
        // same compatibility hash and are read back from the gateway's own database.
        let component = unsafe { Component::deserialize(&self.inner.engine, precompiled) }
            .map_err(|e| Failure::new("invalid plugin", format!("cannot load the precompiled plugin: {e:#}")))?;
        let plugin = self.prepare(hash, &component)?;
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, plugin.clone());
        Ok(plugin)
    }

    /// Compile and store a new plugin (component + artifact for this engine): the plugin.
    pub async fn install(&self, store: &crate::store::Store, wasm: Vec<u8>) -> Result<Plugin, Failure> {
        let host = self.clone();
        let bytes = wasm.clone();
        // Cranelift takes a while for a large component: off the async workers.
        let compiled = tokio::task::spawn_blocking(move || host.compile(&bytes))
            .await
            .map_err(|e| Failure::new("invalid plugin", format!("compilation stopped: {e}")))??;
        let (plugin, precompiled) = compiled;
        store
            .put_plugin(plugin.hash, wasm, self.compat_hash(), precompiled)
            .await
            .map_err(|e| Failure::new("invalid plugin", format!("cannot be stored: {e}")))?;
        self.counters().compiled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(plugin)
    }

    /// A stored plugin, ready to call: from memory, else from its precompiled artifact for
    /// this engine (milliseconds), else compiled from its component (and the artifact
    /// stored for the next start).
    pub async fn load(&self, store: &crate::store::Store, hash: &Hash) -> Result<Plugin, Failure> {
        if let Some(p) = self.loaded(hash) {
            return Ok(p);
        }
        let gone = |e: String| Failure::new("invalid plugin", e);
        if let Some(artifact) = store.plugin_artifact(hash, &self.compat_hash()).map_err(|e| gone(e.to_string()))? {
            let plugin = self.load_precompiled(*hash, &artifact)?;
            self.counters().from_cache.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(plugin);
        }
        let wasm = store
            .plugin_wasm(hash)
            .map_err(|e| gone(e.to_string()))?
            .ok_or_else(|| gone(format!("plugin {} is not stored", crate::domain::hash_hex(hash))))?;
        let host = self.clone();
        let (plugin, precompiled) = tokio::task::spawn_blocking(move || host.compile(&wasm))
            .await
            .map_err(|e| gone(format!("compilation stopped: {e}")))??;
        store
            .put_plugin(*hash, Vec::new(), self.compat_hash(), precompiled)
            .await
            .map_err(|e| gone(format!("cannot store the artifact: {e}")))?;
        self.counters().compiled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(plugin)
    }

    /// How many plugins this host compiled, and how many it loaded precompiled.
    pub fn load_counts(&self) -> (u64, u64) {
        let c = self.counters();
        (c.compiled.load(std::sync::atomic::Ordering::Relaxed), c.from_cache.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// A plugin already loaded, by hash.
    pub fn loaded(&self, hash: &Hash) -> Option<Plugin> {
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(hash).cloned()
    }

    fn prepare(&self, hash: Hash, component: &Component) -> Result<Plugin, Failure> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
        for name in &imports {
            let allowed = OURS_ALLOWED.iter().chain(WASI_ALLOWED).any(|p| name.starts_with(p));
            if !allowed {
                return Err(Failure::new(
                    "invalid plugin",
                    format!(
                        "imports {name}, which plugins may not use (allowed: comfyui-gateway:plugin/{{host,types}}@0.1 and WASI 0.2 cli, io, clocks, random, filesystem, sockets)"
                    ),
                ));
            }
        }
        let pre = self.inner.linker.instantiate_pre(component).map_err(|e| {
            Failure::new("invalid plugin", format!("cannot be linked (an import of the wrong version or type?): {e:#}"))
        })?;
        let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
        let exported = |iface: &str| exports.iter().any(|e| e.starts_with(&format!("comfyui-gateway:plugin/{iface}@")));
        let check = |iface: &str, e: wasmtime::Error| {
            Failure::new("invalid plugin", format!("exports {iface} with the wrong types for 0.1: {e:#}"))
        };
        let input_transform = if exported("input-transform") {
            Some(input_transform::GuestIndices::new(&pre).map_err(|e| check("input-transform", e))?)
        } else {
            None
        };
        let template_render = if exported("template-render") {
            Some(template_render::GuestIndices::new(&pre).map_err(|e| check("template-render", e))?)
        } else {
            None
        };
        let output_process = if exported("output-process") {
            Some(output_process::GuestIndices::new(&pre).map_err(|e| check("output-process", e))?)
        } else {
            None
        };
        // Names were found above; types are checked by loading the typed functions from a
        // throwaway instance (instantiation runs no guest code of a Rust plugin).
        let typed = |iface: &str, e: wasmtime::Error| {
            Failure::new("invalid plugin", format!("exports {iface} with the wrong types for 0.1: {e:#}"))
        };
        let mut store = self.store("{}");
        let instance = futures_util::FutureExt::now_or_never(pre.instantiate_async(&mut store))
            .ok_or_else(|| Failure::new("invalid plugin", "instantiation did not complete at once"))?
            .map_err(|e| Failure::new("invalid plugin", format!("cannot be instantiated: {e:#}")))?;
        if let Some(i) = &input_transform {
            i.load(&mut store, &instance).map_err(|e| typed("input-transform", e))?;
        }
        if let Some(i) = &template_render {
            i.load(&mut store, &instance).map_err(|e| typed("template-render", e))?;
        }
        if let Some(i) = &output_process {
            i.load(&mut store, &instance).map_err(|e| typed("output-process", e))?;
        }
        let mut hooks = Vec::new();
        for (hook, present) in [
            (Hook::InputTransform, input_transform.is_some()),
            (Hook::TemplateRender, template_render.is_some()),
            (Hook::OutputProcess, output_process.is_some()),
        ] {
            if present {
                hooks.push(hook);
            }
        }
        if hooks.is_empty() {
            return Err(Failure::new(
                "invalid plugin",
                format!(
                    "exports none of the hooks of comfyui-gateway:plugin@0.1 (input-transform, template-render, output-process); it exports: {}",
                    if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
                ),
            ));
        }
        Ok(Plugin { hash, hooks, imports, pre, input_transform, template_render, output_process })
    }

    /// A fresh store with its limits armed, whose running code traps once the wall-time
    /// limit's ticks have passed (for the type check at load, which cannot yield).
    fn store(&self, config: &str) -> Store<State> {
        let limits = &self.inner.limits;
        let mut store = Store::new(&self.inner.engine, State::new(config, limits.memory_bytes));
        store.limiter(|s| &mut s.limits);
        let ticks = (limits.timeout.as_millis() / TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        if let Some(fuel) = limits.fuel {
            // `consume_fuel` is on exactly when a budget is set.
            let _ = store.set_fuel(fuel);
        }
        store
    }

    /// A fresh store for one call: running code yields to the plugin runtime on every
    /// epoch tick, and the first tick past `deadline` interrupts it (`Trap::Interrupt`,
    /// the `timeout` kind).
    fn call_store(&self, config: &str, deadline: Instant) -> Store<State> {
        let mut store = self.store(config);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        store
    }

    /// The call slots of `plugin` (its own, then the host's), waiting at most `wait` for
    /// them (None: as long as it takes).
    async fn slots(
        &self,
        plugin: &Plugin,
        wait: Option<Duration>,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Failure> {
        let own = {
            let mut map = self.inner.per_plugin.lock().unwrap_or_else(|p| p.into_inner());
            let n = self.inner.limits.per_plugin.clamp(1, self.inner.limits.concurrency.max(1));
            map.entry(plugin.hash).or_insert_with(|| Arc::new(Semaphore::new(n as usize))).clone()
        };
        let total = self.inner.permits.clone();
        // Always in this order (the plugin's, then the host's), so no two calls can hold one
        // each and wait for the other's.
        let acquire = async move {
            let own = own.acquire_owned().await;
            let total = total.acquire_owned().await;
            own.and_then(|o| total.map(|t| (o, t)))
        };
        let closed = || Failure::new("unavailable", "the plugin host is shutting down");
        match wait {
            None => acquire.await.map_err(|_| closed()),
            Some(wait) => match tokio::time::timeout(wait, acquire).await {
                Ok(slots) => slots.map_err(|_| closed()),
                Err(_) => Err(Failure::busy(wait)),
            },
        }
    }

    /// Run `call` in a fresh instance under the wall-time limit, on the plugin runtime,
    /// mapping every failure. `wait` bounds the wait for a call slot (None: unbounded).
    async fn run<T: Send + 'static>(
        &self,
        plugin: &Plugin,
        config: &str,
        wait: Option<Duration>,
        call: Call<T>,
    ) -> (Result<T, Failure>, Report) {
        let started = Instant::now();
        // Calls beyond the caps wait here (their wait counts in `elapsed`).
        let slots = match self.slots(plugin, wait).await {
            Ok(slots) => slots,
            Err(f) => return (Err(f), Report { elapsed: started.elapsed(), ..Report::default() }),
        };
        let (host, pre, config) = (self.clone(), plugin.pre.clone(), config.to_string());
        let Some(runtime) = self.inner.runtime.as_ref() else {
            return (Err(Failure::new("unavailable", "the plugin runtime is stopped")), Report::default());
        };
        // The task holds the slots: a caller that goes away (its client left) does not
        // free them before the instance is gone.
        let task = runtime.spawn(async move {
            let _slots = slots;
            let limits = &host.inner.limits;
            let timeout = limits.timeout;
            let mut store = host.call_store(&config, Instant::now() + timeout);
            let outcome = tokio::time::timeout(timeout + TICK * 4, async {
                let instance = pre.instantiate_async(&mut store).await?;
                call(&mut store, &instance).await
            })
            .await;
            let fuel_used = limits.fuel.map(|budget| budget - store.get_fuel().unwrap_or(0));
            let state = store.data();
            let mut logs = state.logs.clone();
            if state.logs_dropped > 0 {
                logs.push(LogLine { level: "warn", message: format!("{} more log lines dropped", state.logs_dropped) });
            }
            let stdio = state.stdio.text();
            for line in stdio.lines().filter(|l| !l.trim().is_empty()).take(sandbox::LOG_LINES_MAX) {
                logs.push(LogLine { level: "stderr", message: sandbox::cut(line, sandbox::LOG_LINE_MAX) });
            }
            let report = Report { elapsed: Duration::ZERO, memory_peak: state.limits.memory_peak, fuel_used, logs };
            let result = match outcome {
                Err(_) => Err(Failure::new(
                    "timeout",
                    format!(
                        "did not return within {} ms (PLUGIN_TIMEOUT_MS), blocked in a host call",
                        timeout.as_millis()
                    ),
                )),
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(classify(&e, state, &stdio, limits)),
            };
            (result, report)
        });
        let (result, mut report) = match task.await {
            Ok(done) => done,
            Err(e) => (Err(Failure::new("trap", format!("the call stopped: {e}"))), Report::default()),
        };
        report.elapsed = started.elapsed();
        let result = result.map_err(|mut f| {
            f.logs = report.logs.clone();
            f
        });
        (result, report)
    }

    /// `input-transform`: the rewritten inputs (a JSON object).
    pub async fn input_transform(
        &self,
        plugin: &Plugin,
        ctx: &CallContext,
        inputs: &Value,
    ) -> (Result<Value, Failure>, Report) {
        let Some(idx) = plugin.input_transform.clone() else {
            return (Err(Failure::new("invalid plugin", "does not export input-transform")), Report::default());
        };
        let text = inputs.to_string();
        if text.len() > JSON_MAX {
            return (Err(Failure::new("input too large", format!("inputs over {JSON_MAX} bytes"))), Report::default());
        }
        let wctx = ctx.wit();
        let wait = Some(self.inner.limits.queue_wait);
        let (r, report) = self
            .run(
                plugin,
                &ctx.config,
                wait,
                Box::new(move |store, instance| {
                    Box::pin(async move {
                        let guest = idx.load(&mut *store, instance)?;
                        guest.call_transform(&mut *store, &wctx, &text).await
                    })
                }),
            )
            .await;
        (r.and_then(|r| json_result(r, true)), report)
    }

    /// `template-render`: the prompt (a JSON object of nodes).
    pub async fn template_render(
        &self,
        plugin: &Plugin,
        ctx: &CallContext,
        template: &Value,
        inputs: &Value,
    ) -> (Result<Value, Failure>, Report) {
        let Some(idx) = plugin.template_render.clone() else {
            return (Err(Failure::new("invalid plugin", "does not export template-render")), Report::default());
        };
        let (template, inputs) = (template.to_string(), inputs.to_string());
        if template.len() + inputs.len() > JSON_MAX {
            return (
                Err(Failure::new("input too large", format!("template and inputs over {JSON_MAX} bytes"))),
                Report::default(),
            );
        }
        let wctx = ctx.wit();
        let wait = Some(self.inner.limits.queue_wait);
        let (r, report) = self
            .run(
                plugin,
                &ctx.config,
                wait,
                Box::new(move |store, instance| {
                    Box::pin(async move {
                        let guest = idx.load(&mut *store, instance)?;
                        guest.call_render(&mut *store, &wctx, &template, &inputs).await
                    })
                }),
            )
            .await;
        (r.and_then(|r| json_result(r, true)), report)
    }

    /// `output-process`: the files to store instead of `item`.
    pub async fn output_process(
        &self,
        plugin: &Plugin,
        ctx: &CallContext,
        item: Media,
    ) -> (Result<Vec<Media>, Failure>, Report) {
        let Some(idx) = plugin.output_process.clone() else {
            return (Err(Failure::new("invalid plugin", "does not export output-process")), Report::default());
        };
        if item.data.len() > MEDIA_MAX {
            return (Err(Failure::new("input too large", format!("file over {MEDIA_MAX} bytes"))), Report::default());
        }
        let wctx = ctx.wit();
        let witem = wit::MediaItem { name: item.name, media_type: item.media_type, data: item.data };
        // A running job's post-processing waits its turn: it is bounded by the jobs the
        // scheduler lets into output-process, and failing it would waste a finished run.
        let (r, report) = self
            .run(
                plugin,
                &ctx.config,
                None,
                Box::new(move |store, instance| {
                    Box::pin(async move {
                        let guest = idx.load(&mut *store, instance)?;
                        guest.call_process(&mut *store, &wctx, &witem).await
                    })
                }),
            )
            .await;
        let r = r.and_then(|r| match r {
            Err(e) => Err(rejected(e)),
            Ok(items) => {
                let total: usize = items.iter().map(|i| i.data.len()).sum();
                if total > MEDIA_MAX {
                    return Err(Failure::new("output too large", format!("returned {total} bytes (max {MEDIA_MAX})")));
                }
                Ok(items.into_iter().map(|i| Media { name: i.name, media_type: i.media_type, data: i.data }).collect())
            }
        });
        (r, report)
    }
}

fn rejected(e: wit::PluginError) -> Failure {
    Failure {
        kind: "rejected",
        message: format!("{}: {}", e.code, e.message),
        plugin_code: Some(e.code),
        field: e.field,
        logs: Vec::new(),
    }
}

/// A JSON hook's answer: the JSON (an object when `object`), or the plugin's refusal.
fn json_result(r: Result<String, wit::PluginError>, object: bool) -> Result<Value, Failure> {
    let text = r.map_err(rejected)?;
    if text.len() > JSON_MAX {
        return Err(Failure::new(
            "output too large",
            format!("returned {} bytes of JSON (max {JSON_MAX})", text.len()),
        ));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::new("invalid json", format!("returned text that is not JSON ({e}): {}", sandbox::cut(&text, 80)))
    })?;
    if object && !v.is_object() {
        return Err(Failure::new("invalid json", "returned JSON that is not an object"));
    }
    Ok(v)
}

/// Name what stopped a call.
fn classify(e: &wasmtime::Error, state: &State, stdio: &str, limits: &Limits) -> Failure {
    // Rust's panic hook prints `thread '…' panicked at FILE:LINE:COL:` then the message.
    let panic_line = stdio
        .lines()
        .position(|l| l.contains("panicked at"))
        .map(|i| stdio.lines().skip(i).take(2).map(str::trim).collect::<Vec<_>>().join(" "));
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => Failure::new(
                "timeout",
                format!("ran longer than {} ms (PLUGIN_TIMEOUT_MS)", limits.timeout.as_millis()),
            ),
            Trap::OutOfFuel => {
                Failure::new("fuel", format!("used up its fuel budget of {} (PLUGIN_FUEL)", limits.fuel.unwrap_or(0)))
            }
            Trap::StackOverflow => Failure::new("stack overflow", "overflowed its stack"),
            _ if state.limits.denied => Failure::new(
                "memory",
                format!("needed more than {} MiB of memory (PLUGIN_MEMORY_MB)", limits.memory_bytes >> 20),
            ),
            _ => match panic_line {
                Some(line) => Failure::new("panic", line),
                None => Failure::new("trap", format!("trapped: {trap}")),
            },
        };
    }
    if state.limits.denied {
        return Failure::new(
            "memory",
            format!("needed more than {} MiB of memory (PLUGIN_MEMORY_MB)", limits.memory_bytes >> 20),
        );
    }
    match panic_line {
        Some(line) => Failure::new("panic", line),
        None => Failure::new("trap", format!("failed: {}", sandbox::cut(&format!("{e:#}"), 400))),
    }
}
