//! `comfyui-gateway plugin check|run`, run as the real binary on the guest components of
//! `plugins/` (built by `scripts/build-plugins`; `PLUGINS_WASM_DIR` overrides where they are
//! looked for, as in the host's own tests).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support;

fn wasm(name: &str) -> PathBuf {
    let dir = match std::option_env!("PLUGINS_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/target/wasm32-wasip2/release"),
    };
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.is_file(), "{}: missing; build the plugins first: scripts/build-plugins", path.display());
    path
}

fn plugin(args: &[&str]) -> Output {
    support::bin().arg("plugin").args(args).stdin(Stdio::null()).output().expect("run the binary")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn check_lists_the_hooks_and_imports_of_prompt_guard() {
    let file = wasm("prompt_guard");
    let o = plugin(&["check", file.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("hooks        input-transform"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "comfyui-gateway:plugin/host@0.1.0"), "one import per line: {out}");
    assert!(out.lines().any(|l| l.trim().starts_with("wasi:cli/stderr@0.2")), "{out}");
    assert!(out.contains("import allow-list: pass") && out.contains("hook types:        pass"), "{out}");
    assert!(out.contains(&format!("{} bytes", std::fs::metadata(&file).unwrap().len())), "the size: {out}");

    let o = plugin(&["check", file.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!((v["ok"].clone(), v["hooks"].clone()), (json!(true), json!(["input-transform"])), "{v}");
    assert!(v["imports"].as_array().unwrap().iter().any(|i| i == "comfyui-gateway:plugin/host@0.1.0"), "{v}");
    assert!(v["compileMs"].as_f64().unwrap() > 0.0 && v["size"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn check_refuses_a_mismatched_plugin_with_a_readable_message() {
    let o = plugin(&["check", wasm("mismatch").to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("input-transform") && err.contains("wrong types"), "{err}");
    assert!(out.contains("invalid plugin"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let o = plugin(&["check", &write(dir.path(), "core.wasm", b"\0asm\x01\0\0\0"), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    assert!(v["message"].as_str().unwrap().contains("core wasm module"), "{v}");
}

#[test]
fn run_input_transform_rewrites_inputs_and_reports_time_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write(dir.path(), "inputs.json", br#"{"prompt": "a fox", "preset": "film", "aspectRatio": "16:9"}"#);
    let config = json!({"presets": {"film": ", 35mm film"}, "aspectRatios": true}).to_string();
    let cfg_file = write(dir.path(), "config.json", config.as_bytes());
    let file = wasm("prompt_guard");
    let args = ["run", file.to_str().unwrap(), "--hook", "input-transform", "--input", &inputs];
    let o = plugin(&[&args[..], &["--config", &config]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("\"prompt\": \"a fox, 35mm film\""), "{out}");
    assert!(!out.contains("\"preset\"") && out.contains("\"width\": 1024"), "{out}");
    assert!(out.contains("wall time") && out.contains("peak memory"), "{out}");
    assert!(out.contains("[info]"), "the plugin's log lines: {out}");

    let at = format!("@{cfg_file}");
    let o = plugin(&[&args[..], &["--config", &at, "--json"]].concat());
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["result"]["prompt"], "a fox, 35mm film", "{v}");
    assert!(v["report"]["wallMs"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["report"]["memoryPeakBytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["report"]["fuelUsed"].is_null(), "no fuel without --fuel: {v}");

    // A refusal: kind, the plugin's code and field, exit 1.
    let blocked = write(dir.path(), "blocked.json", br#"{"prompt": "so much gore"}"#);
    let o = plugin(&[
        "run",
        file.to_str().unwrap(),
        "--hook",
        "input-transform",
        "--input",
        &blocked,
        "--config",
        r#"{"blocked": ["gore"]}"#,
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("failed: rejected") && out.contains("PROMPT_BLOCKED") && out.contains("/prompt"), "{out}");
}

#[test]
fn run_with_fuel_reports_the_fuel_used() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write(dir.path(), "inputs.json", br#"{"prompt": "a fox"}"#);
    let file = wasm("prompt_guard");
    let base = ["run", file.to_str().unwrap(), "--hook", "input-transform", "--input", &inputs, "--fuel", "100000000"];
    let o = plugin(&base);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let line = out.lines().find(|l| l.trim_start().starts_with("fuel used")).unwrap_or_else(|| panic!("{out}"));
    let used: u64 = line.split_whitespace().last().unwrap().parse().unwrap_or_else(|_| panic!("{line}"));
    assert!(used > 0 && used < 100_000_000, "{line}");
    let o = plugin(&[&base[..], &["--json"]].concat());
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["report"]["fuelUsed"].as_u64(), Some(used), "deterministic: {v}");
}

#[test]
fn run_output_process_writes_a_smaller_png_without_its_text_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let png = png_with_text();
    let input = write(dir.path(), "out.png", &png);
    let file = wasm("png_tidy");
    let o = plugin(&["run", file.to_str().unwrap(), "--hook", "output-process", "--input", &input]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    // Next to the input, never over it.
    assert_eq!(std::fs::read(&input).unwrap(), png, "the input is untouched");
    let written = dir.path().join("out.out.png");
    let tidy = std::fs::read(&written).unwrap_or_else(|e| panic!("{}: {e}\n{out}", written.display()));
    assert!(out.contains(&format!("{} ({} bytes, image/png)", written.display(), tidy.len())), "{out}");
    assert!(tidy.len() < png.len(), "smaller");
    assert!(tidy.starts_with(b"\x89PNG") && !tidy.windows(4).any(|w| w == b"tEXt"), "a PNG without tEXt");

    let to = dir.path().join("tidy");
    let o = plugin(&[
        "run",
        file.to_str().unwrap(),
        "--hook",
        "output-process",
        "--input",
        &input,
        "--out",
        to.to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["files"][0]["mediaType"], "image/png", "{v}");
    assert_eq!(std::fs::read(to.join("out.png")).unwrap(), tidy, "into --out, under its own name");
}

#[test]
fn run_a_spinning_plugin_times_out_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write(dir.path(), "inputs.json", br#"{"prompt": "x"}"#);
    let file = wasm("spin");
    let started = Instant::now();
    let o = plugin(&[
        "run",
        file.to_str().unwrap(),
        "--hook",
        "input-transform",
        "--input",
        &inputs,
        "--timeout-ms",
        "200",
    ]);
    let elapsed = started.elapsed();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("failed: timeout") && err.contains("timeout"), "{out}\n{err}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let line = out.lines().find(|l| l.trim_start().starts_with("wall time")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("ms"), "{line}");
}

/// A 16x16 PNG with a `tEXt` chunk (as ComfyUI writes the workflow into its outputs).
fn png_with_text() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 16, 16);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk("prompt".into(), "{\"1\": {\"class_type\": \"SaveImage\"}}".into()).unwrap();
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&[200u8; 16 * 16 * 3]).unwrap();
    w.finish().unwrap();
    out
}
