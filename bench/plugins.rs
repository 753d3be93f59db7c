//! Plugin host benchmark (prints figures; not a test): `cargo bench --bench plugins`.
//!
//! 1. Per hook, with the example plugins of `plugins/` (built by `scripts/build-plugins`;
//!    `PLUGINS_WASM_DIR` overrides where they are looked for): `prompt_guard`
//!    input-transform on a small inputs object, `subgraph_renderer` template-render on a
//!    small template, `png_tidy` output-process on a 512x512 PNG with a `tEXt` chunk. Each
//!    call is a fresh instance, as the gateway does, under the default limits: p50/p99 of
//!    the call as the gateway sees it (`Host::input_transform` etc.), compile time
//!    (`Host::compile`) and precompiled-load time (`Host::load_precompiled`, uncached).
//! 2. Where the time of one call goes: a replica of the host's per-call path (same engine
//!    settings, same linker, same `sandbox::State`), timed step by step on `prompt_guard`:
//!    the WASI context, the store, instantiation, and the call itself; pooling allocator
//!    and on-demand allocation.
//!
//! Target: ≤ 50 µs for a small input-transform call. Environment: `BENCH_CALLS` (calls per
//! hook, default 2000).
//!
//! Measured 2026-11-24 (2 cores, Linux 6.18, another build running beside it), p50/p99 µs:
//! prompt_guard input-transform 35.5/80 (host report 26/63), subgraph_renderer
//! template-render 45-51/100-139, png_tidy output-process on a 514 KB PNG 640/4900;
//! instantiate only 10-15; compile 215-480 ms; precompiled load 0.45-1.2 ms. Breakdown of
//! one prompt_guard call, total p50: host settings 35-42, with keep-resident memories 29-30,
//! plus `pagemap_scan` 16 (page faults on reused slots and their `madvise` reset dominate).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use comfyui_gateway::plugins::bindings::comfyui_gateway::plugin::types::JobContext;
use comfyui_gateway::plugins::bindings::exports::comfyui_gateway::plugin::input_transform::GuestIndices;
use comfyui_gateway::plugins::sandbox::State;
use comfyui_gateway::plugins::{CallContext, Host, Limits, Media};
use serde_json::{Value, json};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

fn wasm(name: &str) -> Vec<u8> {
    let dir = match std::option_env!("PLUGINS_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/target/wasm32-wasip2/release"),
    };
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the plugins first: scripts/build-plugins", path.display()))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ctx(config: Value) -> CallContext {
    CallContext {
        job_id: "00000000-0000-4000-8000-000000000001".into(),
        workflow: ("bench".into(), 1),
        owner: Some("key:bench".into()),
        config: config.to_string(),
    }
}

/// A 512x512 RGB PNG (a noisy gradient) with a `tEXt` chunk, as ComfyUI writes its outputs.
fn png_512() -> Vec<u8> {
    let (w, h) = (512u32, 512u32);
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    // A gradient with low-order noise: compresses about as well as a generated picture.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed & 15) as u8
    };
    for y in 0..h {
        for x in 0..w {
            let px = [(x / 2) as u8, (y / 2) as u8, ((x + y) / 4) as u8];
            pixels.extend(px.map(|c| c.wrapping_add(noise())));
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let workflow = json!({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench"}}}).to_string();
    enc.add_text_chunk("prompt".into(), workflow.repeat(20)).unwrap();
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&pixels).unwrap();
    wr.finish().unwrap();
    out
}

struct Row {
    name: &'static str,
    wasm: &'static str,
    size: usize,
    compile: f64,
    load: f64,
    calls: Vec<f64>,
    inside: Vec<f64>,
}

/// Time `n` calls (after a warm-up): the wall time around the call and the host's own
/// `Report::elapsed`, in µs.
async fn calls<F>(n: usize, mut call: F) -> (Vec<f64>, Vec<f64>)
where
    F: AsyncFnMut() -> Duration,
{
    for _ in 0..n / 10 {
        call().await;
    }
    let (mut outer, mut inner) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let elapsed = call().await;
        outer.push(us(t.elapsed()));
        inner.push(us(elapsed));
    }
    (sorted(outer), sorted(inner))
}

fn compile_and_load(host: &Host, bytes: &[u8]) -> (f64, f64, comfyui_gateway::plugins::Plugin) {
    let mut compiles = Vec::new();
    let mut plugin = None;
    let mut precompiled = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (p, pre) = host.compile(bytes).expect("compiles");
        compiles.push(us(t.elapsed()));
        plugin = Some(p);
        precompiled = pre;
    }
    // Fresh hashes so the host's cache of loaded plugins never answers.
    let mut loads = Vec::new();
    for i in 0..30u32 {
        let hash = *blake3::hash(&[bytes, &i.to_le_bytes()[..]].concat()).as_bytes();
        let t = Instant::now();
        host.load_precompiled(hash, &precompiled).expect("loads");
        loads.push(us(t.elapsed()));
    }
    (pct(&sorted(compiles), 0.5), pct(&sorted(loads), 0.5), plugin.expect("compiled"))
}

/// The host's engine settings (engine/plugins/mod.rs `engine_config`), replicated.
/// With `keep_resident`, the pooling allocator also keeps freed memories and tables resident
/// and zeroes them with `memset` instead of `madvise` (no page faults when a slot is reused).
/// With `scan`, it also finds the pages a call dirtied with the PAGEMAP_SCAN ioctl (Linux
/// 6.7+, `Enabled::Auto`) and resets only those.
fn replica_engine(limits: &Limits, pooling: bool, keep_resident: bool, scan: bool) -> Engine {
    let mut c = Config::new();
    c.wasm_component_model(true).epoch_interruption(true).consume_fuel(false);
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
            .max_core_instances_per_component(16);
        if keep_resident {
            p.linear_memory_keep_resident(KEEP_RESIDENT).table_keep_resident(64 << 10);
        }
        if scan {
            p.pagemap_scan(wasmtime::Enabled::Auto);
        }
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    Engine::new(&c).expect("engine")
}

/// Bytes of each freed linear memory the `keep resident` variant keeps (and memsets).
const KEEP_RESIDENT: usize = 2 << 20;

struct Steps {
    wasi: Vec<f64>,
    store: Vec<f64>,
    instantiate: Vec<f64>,
    call: Vec<f64>,
    total: Vec<f64>,
}

/// Linker of the replica: WASI 0.2 and the `host` interface, as the host links them.
fn replica_linker(engine: &Engine) -> Linker<State> {
    let mut linker = Linker::<State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    comfyui_gateway::plugins::bindings::comfyui_gateway::plugin::host::add_to_linker::<
        State,
        wasmtime::component::HasSelf<State>,
    >(&mut linker, |s| s)
    .expect("host");
    linker
}

/// Store + instantiation + drop, no call, in the replica (µs, sorted).
async fn instantiate_only(engine: &Engine, bytes: &[u8], n: usize) -> Vec<f64> {
    let component = Component::new(engine, bytes).expect("component");
    let pre = replica_linker(engine).instantiate_pre(&component).expect("pre");
    let mut v = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let mut store = Store::new(engine, State::new("{}", 64 << 20));
        store.set_epoch_deadline(u64::MAX / 2);
        pre.instantiate_async(&mut store).await.expect("instantiate");
        drop(store);
        if i >= n / 10 {
            v.push(us(t.elapsed()));
        }
    }
    sorted(v)
}

/// One call's path, step by step, in the replica.
async fn steps(engine: &Engine, bytes: &[u8], config: &str, inputs: &str, n: usize) -> Steps {
    let linker = replica_linker(engine);
    let component = Component::new(engine, bytes).expect("component");
    let pre: InstancePre<State> = linker.instantiate_pre(&component).expect("pre");
    let idx = GuestIndices::new(&pre).expect("indices");
    let jc = JobContext {
        job_id: "00000000-0000-4000-8000-000000000001".into(),
        workflow_id: "bench".into(),
        workflow_version: 1,
        owner: Some("key:bench".into()),
    };
    let ticker = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                std::thread::sleep(Duration::from_millis(5));
                engine.increment_epoch();
            }
        })
    };
    let mut s = Steps { wasi: vec![], store: vec![], instantiate: vec![], call: vec![], total: vec![] };
    for i in 0..n + n / 10 {
        let t0 = Instant::now();
        let state = State::new(config, 64 << 20);
        let t1 = Instant::now();
        let mut store = Store::new(engine, state);
        store.set_epoch_deadline(400);
        store.epoch_deadline_trap();
        let t2 = Instant::now();
        let instance = pre.instantiate_async(&mut store).await.expect("instantiate");
        let t3 = Instant::now();
        let guest = idx.load(&mut store, &instance).expect("load");
        let out = guest.call_transform(&mut store, &jc, inputs).await.expect("call");
        let t4 = Instant::now();
        drop(store);
        let t5 = Instant::now();
        assert!(out.is_ok(), "{out:?}");
        if i >= n / 10 {
            s.wasi.push(us(t1 - t0));
            s.store.push(us(t2 - t1));
            s.instantiate.push(us(t3 - t2));
            s.call.push(us(t4 - t3));
            s.total.push(us(t5 - t0));
        }
    }
    drop(ticker);
    Steps {
        wasi: sorted(s.wasi),
        store: sorted(s.store),
        instantiate: sorted(s.instantiate),
        call: sorted(s.call),
        total: sorted(s.total),
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_CALLS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(bench(n));
}

async fn bench(n: usize) {
    let limits = Limits::default();
    let host = Host::new(limits.clone()).expect("host");
    println!(
        "comfyui-gateway plugin benchmark ({} cores, pooling allocator: {}, limits: {:?})",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        host.pooling(),
        limits
    );

    let mut rows = Vec::new();

    // input-transform: prompt_guard on a small inputs object.
    let bytes = wasm("prompt_guard");
    let (compile, load, p) = compile_and_load(&host, &bytes);
    let guard_config =
        json!({"maxPromptChars": 2000, "blocked": ["gore"], "presets": {"film": ", 35mm film"}, "aspectRatios": true});
    let c = ctx(guard_config.clone());
    let inputs = json!({"prompt": "a fox in the snow", "preset": "film", "aspectRatio": "16:9", "seed": 42});
    let (r, _) = host.input_transform(&p, &c, &inputs).await;
    assert_eq!(r.expect("prompt_guard")["prompt"], "a fox in the snow, 35mm film");
    let (outer, inner) = calls(n, async || host.input_transform(&p, &c, &inputs).await.1.elapsed).await;
    rows.push(Row {
        name: "input-transform  prompt_guard",
        wasm: "prompt_guard",
        size: bytes.len(),
        compile,
        load,
        calls: outer,
        inside: inner,
    });

    // template-render: subgraph_renderer on a small template.
    let bytes = wasm("subgraph_renderer");
    let (compile, load, p) = compile_and_load(&host, &bytes);
    let c = ctx(json!({}));
    let template = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}, "_meta": {"enabledBy": "invert", "bypass": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t {{width}}"}}
    });
    let tinputs = json!({"width": 128, "invert": false});
    let (r, _) = host.template_render(&p, &c, &template, &tinputs).await;
    assert_eq!(r.expect("subgraph_renderer")["1"]["inputs"]["width"], 128);
    let (outer, inner) = calls(n, async || host.template_render(&p, &c, &template, &tinputs).await.1.elapsed).await;
    rows.push(Row {
        name: "template-render  subgraph_renderer",
        wasm: "subgraph_renderer",
        size: bytes.len(),
        compile,
        load,
        calls: outer,
        inside: inner,
    });

    // output-process: png_tidy on a 512x512 PNG.
    let bytes = wasm("png_tidy");
    let (compile, load, p) = compile_and_load(&host, &bytes);
    let png = png_512();
    let item = Media { name: "out.png".into(), media_type: "image/png".into(), data: png.clone() };
    let (r, _) = host.output_process(&p, &c, item.clone()).await;
    let files = r.expect("png_tidy");
    assert!(files.len() == 1 && files[0].data.len() < png.len());
    let (outer, inner) = calls(n, async || host.output_process(&p, &c, item.clone()).await.1.elapsed).await;
    rows.push(Row {
        name: "output-process   png_tidy (512x512)",
        wasm: "png_tidy",
        size: bytes.len(),
        compile,
        load,
        calls: outer,
        inside: inner,
    });

    println!("\nper call (a fresh instance each), {n} sequential calls; times in µs");
    println!("  png: {} bytes with its tEXt chunk", png.len());
    println!(
        "{:<36} {:>8} {:>9} {:>9} {:>11} {:>11} {:>9} {:>10} {:>10}",
        "hook / plugin", "wasm KB", "call p50", "call p99", "report p50", "report p99", "inst p50", "compile", "load"
    );
    let replica = replica_engine(&limits, true, false, false);
    for r in &rows {
        let inst = instantiate_only(&replica, &wasm(r.wasm), n).await;
        println!(
            "{:<36} {:>8} {:>9.1} {:>9.1} {:>11.1} {:>11.1} {:>9.1} {:>10.0} {:>10.0}",
            r.name,
            r.size / 1024,
            pct(&r.calls, 0.5),
            pct(&r.calls, 0.99),
            pct(&r.inside, 0.5),
            pct(&r.inside, 0.99),
            pct(&inst, 0.5),
            r.compile,
            r.load
        );
    }
    println!("  call: wall time around Host::<hook> (JSON to text, instantiate, call, parse the answer)");
    println!("  report: the host's own Report::elapsed (store + instantiate + call)");
    println!(
        "  compile: Host::compile (cranelift + checks), p50 of 3; load: Host::load_precompiled, uncached, p50 of 30"
    );

    // Where the time goes: the replica, step by step.
    let bytes = wasm("prompt_guard");
    let config = guard_config.to_string();
    let inputs = inputs.to_string();
    println!("\nwhere one prompt_guard input-transform call goes (replica of the host's per-call path), µs");
    println!(
        "{:<12} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "allocator", "WASI ctx p50/99", "store p50/99", "instantiate", "call", "total"
    );
    for (name, pooling, keep, scan) in [
        ("pooling", true, false, false),
        ("pooling+keep", true, true, false),
        ("pooling+scan", true, true, true),
        ("on-demand", false, false, false),
    ] {
        let engine = replica_engine(&limits, pooling, keep, scan);
        let s = steps(&engine, &bytes, &config, &inputs, n).await;
        let f = |v: &[f64]| format!("{:.1}/{:.1}", pct(v, 0.5), pct(v, 0.99));
        println!(
            "{:<12} {:>16} {:>16} {:>16} {:>16} {:>16}",
            name,
            f(&s.wasi),
            f(&s.store),
            f(&s.instantiate),
            f(&s.call),
            f(&s.total)
        );
    }
    println!("  pooling: the host's settings; pooling+keep: plus linear_memory_keep_resident(2 MiB) and");
    println!("  table_keep_resident(64 KiB); pooling+scan: plus pagemap_scan(Auto) (resets dirty pages only);");
    println!("  on-demand: the host's fallback. total includes dropping the store.");
    println!("  (no memory limiter in the replica: its field is private to the host)");
}
