//! Plugin host tests against the real guest components of `plugins/` (built by
//! `scripts/build-plugins`; `PLUGINS_WASM_DIR` overrides where they are looked for). Each
//! fixture is compiled once per test process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{CallContext, Hook, Host, Limits, Media, Plugin};

fn wasm_dir() -> PathBuf {
    match std::option_env!("PLUGINS_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/target/wasm32-wasip2/release"),
    }
}

/// The bytes of a built fixture (panics with the build command when missing).
pub(crate) fn wasm(name: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the plugins first: scripts/build-plugins", path.display()))
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_millis(500),
        memory_bytes: 32 << 20,
        fuel: None,
        concurrency: 8,
        ..Limits::default()
    }
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::new(limits()).expect("plugin host"))
}

fn plugin(name: &str) -> Plugin {
    static CACHE: OnceLock<Mutex<HashMap<String, Plugin>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(p) = cache.lock().unwrap().get(name) {
        return p.clone();
    }
    let (p, _) = host().compile(&wasm(name)).unwrap_or_else(|f| panic!("{name}: {f:?}"));
    cache.lock().unwrap().insert(name.to_string(), p.clone());
    p
}

fn ctx(config: Value) -> CallContext {
    CallContext {
        job_id: "00000000-0000-4000-8000-000000000001".into(),
        workflow: ("wf".into(), 3),
        owner: Some("key:abc".into()),
        config: config.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_guard_rewrites_inputs_and_refuses_with_its_code_and_field() {
    let p = plugin("prompt_guard");
    assert_eq!(p.hooks, vec![Hook::InputTransform]);
    let config =
        json!({"maxPromptChars": 40, "blocked": ["gore"], "presets": {"film": ", 35mm film"}, "aspectRatios": true});
    let inputs = json!({"prompt": "a fox", "preset": "film", "aspectRatio": "16:9"});
    let (r, report) = host().input_transform(&p, &ctx(config.clone()), &inputs).await;
    let out = r.unwrap();
    assert_eq!(out["prompt"], "a fox, 35mm film", "{out}");
    assert!(out.get("preset").is_none() && out.get("aspectRatio").is_none(), "{out}");
    let (w, h) = (out["width"].as_u64().unwrap(), out["height"].as_u64().unwrap());
    assert!(w > h && w % 64 == 0 && h % 64 == 0, "{out}");
    assert!(report.memory_peak > 0 && report.elapsed < Duration::from_secs(5));

    let (r, _) = host().input_transform(&p, &ctx(config.clone()), &json!({"prompt": "so much gore"})).await;
    let f = r.unwrap_err();
    assert_eq!(
        (f.kind, f.plugin_code.as_deref(), f.field.as_deref()),
        ("rejected", Some("PROMPT_BLOCKED"), Some("/prompt"))
    );
    let e = f.to_error(Hook::InputTransform);
    assert_eq!((e.code.as_str(), e.code.status()), ("PLUGIN_FAILED", 422));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_end_with_the_right_kind_within_their_limit() {
    let inputs = json!({"prompt": "x"});
    let limit = limits().timeout;
    for (name, kind, code) in [
        ("spin", "timeout", "PLUGIN_LIMIT_EXCEEDED"),
        ("sleepy", "timeout", "PLUGIN_LIMIT_EXCEEDED"),
        ("balloon", "memory", "PLUGIN_LIMIT_EXCEEDED"),
        ("flood", "memory", "PLUGIN_LIMIT_EXCEEDED"),
        ("panicky", "panic", "PLUGIN_FAILED"),
        ("abyss", "stack overflow", "PLUGIN_FAILED"),
        ("bad_json", "invalid json", "PLUGIN_FAILED"),
    ] {
        let p = plugin(name);
        let started = Instant::now();
        let (r, _) = host().input_transform(&p, &ctx(json!({})), &inputs).await;
        let elapsed = started.elapsed();
        let f = r.expect_err(name);
        assert_eq!(f.kind, kind, "{name}: {f:?}");
        assert_eq!(f.to_error(Hook::InputTransform).code.as_str(), code, "{name}");
        assert!(elapsed < limit * 3, "{name} took {elapsed:?}");
        if name == "panicky" {
            assert!(f.message.contains("plugin panicked on purpose"), "{f:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_denies_files_environment_and_network() {
    for name in ["snoop", "snoop_offline"] {
        let p = plugin(name);
        let (r, _) = host().input_transform(&p, &ctx(json!({})), &json!({"prompt": "x"})).await;
        let out = r.unwrap_or_else(|f| panic!("{name}: {f:?}"));
        let report = out["snoop"].as_object().unwrap_or_else(|| panic!("{name}: {out}"));
        assert!(!report.is_empty());
        for (attempt, got) in report {
            let denied = got.is_null() || got.as_str().is_some_and(|s| s.starts_with("error")) || got == &json!([]);
            assert!(denied, "{name}: {attempt} got through: {got}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_mismatched_plugin_is_refused_with_a_readable_message() {
    let Err(f) = host().compile(&wasm("mismatch")) else { panic!("the mismatched plugin compiled") };
    assert_eq!(f.kind, "invalid plugin");
    assert!(f.message.contains("input-transform") && f.message.contains("wrong types"), "{}", f.message);
    let Err(f) = host().compile(b"\0asm\x01\0\0\0") else { panic!("a core module compiled") };
    assert!(f.message.contains("core wasm module"), "{}", f.message);
    let Err(f) = host().compile(b"hello") else { panic!("text compiled") };
    assert!(f.message.contains("not wasm"), "{}", f.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renderer_and_output_processor_run() {
    let r = plugin("subgraph_renderer");
    assert_eq!(r.hooks, vec![Hook::TemplateRender]);
    let template = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}, "_meta": {"enabledBy": "invert", "bypass": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t {{width}}"}}
    });
    let (out, _) =
        host().template_render(&r, &ctx(json!({})), &template, &json!({"width": 128, "invert": false})).await;
    let prompt = out.unwrap();
    assert_eq!(prompt["1"]["inputs"]["width"], 128);
    assert!(prompt.get("2").is_none(), "the switched-off node is gone: {prompt}");
    assert_eq!(prompt["3"]["inputs"]["images"], json!(["1", 0]), "rewired to the bypass");
    assert_eq!(prompt["3"]["inputs"]["filename_prefix"], "t 128");

    let o = plugin("png_tidy");
    assert_eq!(o.hooks, vec![Hook::OutputProcess]);
    let png = png_with_text();
    let item = Media { name: "out.png".into(), media_type: "image/png".into(), data: png.clone() };
    let (out, report) = host().output_process(&o, &ctx(json!({})), item.clone()).await;
    let files = out.unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].data.len() < png.len(), "metadata stripped");
    assert!(!files[0].data.windows(4).any(|w| w == b"tEXt"), "no text chunk left");
    assert!(report.elapsed < Duration::from_secs(5));
    let drop = json!({"drop": ["out"]});
    let (out, _) = host().output_process(&o, &ctx(drop), item).await;
    assert!(out.unwrap().is_empty(), "dropped by name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precompiled_plugin_loads_without_compiling_on_a_new_host() {
    let bytes = wasm("prompt_guard");
    let (_, precompiled) = host().compile(&bytes).unwrap();
    let fresh = Host::new(limits()).unwrap();
    assert_eq!(fresh.compat_hash(), host().compat_hash());
    let started = Instant::now();
    let p = fresh.load_precompiled(*blake3::hash(&bytes).as_bytes(), &precompiled).unwrap();
    let load = started.elapsed();
    assert_eq!(p.hooks, vec![Hook::InputTransform]);
    let (r, _) = fresh.input_transform(&p, &ctx(json!({})), &json!({"prompt": "ok"})).await;
    assert_eq!(r.unwrap()["prompt"], "ok");
    assert!(load < Duration::from_millis(500), "deserializing took {load:?}");
}

/// A 4x4 PNG with a `tEXt` chunk (as ComfyUI writes the workflow into its outputs).
fn png_with_text() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 4, 4);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk("prompt".into(), "{\"1\": {\"class_type\": \"SaveImage\"}}".into()).unwrap();
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&[200u8; 4 * 4 * 3]).unwrap();
    w.finish().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_is_output_too_large_when_memory_allows_building_it() {
    // `flood` returns 64 MiB of JSON: with room to build it, the size limit stops it.
    let roomy = Host::new(Limits { memory_bytes: 256 << 20, timeout: Duration::from_secs(10), ..limits() }).unwrap();
    let (p, _) = roomy.compile(&wasm("flood")).unwrap_or_else(|f| panic!("{f:?}"));
    let (r, _) = roomy.input_transform(&p, &ctx(json!({})), &json!({"prompt": "x"})).await;
    let f = r.expect_err("a 64 MiB answer");
    assert_eq!(f.kind, "output too large", "{f:?}");
    assert_eq!(f.to_error(Hook::InputTransform).code.as_str(), "PLUGIN_LIMIT_EXCEEDED");
}

/// A plugin that loops until its time limit runs on the plugin runtime: the caller's
/// runtime, here a single thread (the worst case for the API), keeps running its other
/// tasks throughout. When calls ran on the caller's threads, the ticker below stood still
/// for the whole call.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_call_leaves_the_callers_threads_free() {
    let limits = Limits { timeout: Duration::from_millis(600), ..limits() };
    let h = Host::new(limits).unwrap();
    let (spin, _) = h.compile(&wasm("spin")).unwrap_or_else(|f| panic!("{f:?}"));
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let (r, _) = h.input_transform(&spin, &ctx(json!({})), &json!({"prompt": "x"})).await;
    let elapsed = started.elapsed();
    ticker.abort();
    assert_eq!(r.expect_err("spin never returns").kind, "timeout");
    assert!(elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3), "took {elapsed:?}");
    // 60 ticks of 10 ms fit in the call; a busy CI box may lose some, but not most.
    let n = ticks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n >= 20, "the caller's thread ticked only {n} times during a {elapsed:?} call");
}

/// The plugin runtime's threads run at a lower priority than the caller's (Linux nice),
/// so plugins computing flat out give way to the API's threads on a busy machine.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn the_plugin_threads_run_at_a_lower_priority() {
    let h = Host::new(limits()).unwrap();
    let (p, _) = h.compile(&wasm("prompt_guard")).unwrap_or_else(|f| panic!("{f:?}"));
    // A call makes sure the runtime's threads have started.
    let _ = h.input_transform(&p, &ctx(json!({})), &json!({"prompt": "x"})).await;
    // Field 19 of /proc/<pid>/task/<tid>/stat is the thread's nice value; the name (field
    // 2) is in parentheses, so count fields after its closing one.
    let nice_of = |stat: &str| -> i32 {
        let after = &stat[stat.rfind(')').expect("stat has a name") + 2..];
        after.split(' ').nth(16).and_then(|v| v.parse().ok()).expect("nice field")
    };
    let own = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let mut plugin_threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "plugin-worker" {
            plugin_threads.push(nice_of(&std::fs::read_to_string(dir.join("stat")).unwrap()));
        }
    }
    assert!(!plugin_threads.is_empty(), "no plugin-worker thread found");
    for nice in plugin_threads {
        // Lower than the caller, unless the caller already runs at the lowest (19).
        assert!(nice > own || (own == 19 && nice == 19), "a plugin thread runs at nice {nice}, the caller at {own}");
    }
}

/// Per-plugin slots: with one slot per plugin, a second call of a looping plugin waits
/// `queue_wait`, then fails `busy` (`503 PLUGIN_BUSY`, retryable) while the first runs to
/// its time limit; another plugin still gets its own slot meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_plugin_refuses_callers_in_bounded_time_and_leaves_others_their_slots() {
    let limits = Limits {
        timeout: Duration::from_millis(1500),
        concurrency: 4,
        per_plugin: 1,
        queue_wait: Duration::from_millis(200),
        ..limits()
    };
    let h = Host::new(limits).unwrap();
    let (spin, _) = h.compile(&wasm("spin")).unwrap_or_else(|f| panic!("{f:?}"));
    let (guard, _) = h.compile(&wasm("prompt_guard")).unwrap_or_else(|f| panic!("{f:?}"));
    let inputs = json!({"prompt": "x"});
    let first = {
        let (h, spin, inputs) = (h.clone(), spin.clone(), inputs.clone());
        tokio::spawn(async move { h.input_transform(&spin, &ctx(json!({})), &inputs).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (second, report) = h.input_transform(&spin, &ctx(json!({})), &inputs).await;
    let waited = started.elapsed();
    let f = second.expect_err("no slot for a second call");
    assert_eq!(f.kind, super::BUSY, "{f:?}");
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(1200), "waited {waited:?}");
    assert!(report.elapsed >= Duration::from_millis(200));
    let e = f.to_error(Hook::InputTransform);
    assert_eq!((e.code.as_str(), e.code.status(), e.code.retryable()), ("PLUGIN_BUSY", 503, true));
    assert_eq!(e.details.as_ref().unwrap()["retryAfterSeconds"], 1);
    let started = Instant::now();
    let (other, _) = h.input_transform(&guard, &ctx(json!({})), &inputs).await;
    assert_eq!(other.unwrap()["prompt"], "x", "another plugin has its own slot");
    assert!(started.elapsed() < Duration::from_millis(1000), "the other plugin waited {:?}", started.elapsed());
    assert_eq!(first.await.unwrap().expect_err("spin never returns").kind, "timeout");
    // The slot is free again.
    let (third, _) = h.input_transform(&guard, &ctx(json!({})), &inputs).await;
    assert!(third.is_ok());
}
