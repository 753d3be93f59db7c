//! Plugin developer tools: `comfyui-gateway plugin check FILE.wasm` (the load-time checks
//! the gateway runs at upload, with the hooks and imports found) and `comfyui-gateway plugin
//! run FILE.wasm --hook H --input FILE` (one call under the gateway's limits, printing the
//! result, the wall time, peak memory, fuel and the plugin's logs). `--json` prints one JSON
//! object instead of text. Failures exit 1 with the plugin's readable message.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::LogLine;
use super::{CallContext, Failure, Hook, Host, Limits, Media, Report};
use crate::cli::CliError;

/// `plugin` arguments.
#[derive(Args, Debug, Clone)]
pub struct PluginArgs {
    /// What to do with the plugin.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// `plugin` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum PluginCommand {
    /// Load a plugin as the gateway does at upload: compile, check imports and hook types.
    Check(CheckArgs),
    /// Call one hook of a plugin under the gateway's limits and print what it did.
    Run(RunArgs),
}

/// `plugin check` arguments.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The plugin (a WebAssembly component, `.wasm`).
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `plugin run` arguments.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The plugin (a WebAssembly component, `.wasm`).
    pub file: PathBuf,
    /// The hook to call.
    #[arg(long, value_parser = ["input-transform", "template-render", "output-process"])]
    pub hook: String,
    /// input-transform: a JSON file of inputs; template-render: a JSON file
    /// `{"template": {...}, "inputs": {...}}`; output-process: any file.
    #[arg(long)]
    pub input: PathBuf,
    /// The plugin's configuration: JSON text, or `@FILE` to read it from a file.
    #[arg(long)]
    pub config: Option<String>,
    /// Wall-time limit of the call (PLUGIN_TIMEOUT_MS), in milliseconds.
    #[arg(long = "timeout-ms", default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Memory limit of the instance (PLUGIN_MEMORY_MB), in MiB.
    #[arg(long = "memory-mb", default_value_t = 64)]
    pub memory_mb: usize,
    /// Fuel budget (PLUGIN_FUEL); the fuel used is reported.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// output-process: the folder to write the outputs to (default: next to the input).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run a `plugin` subcommand.
pub async fn main(args: PluginArgs) -> Result<(), CliError> {
    match args.command {
        PluginCommand::Check(a) => check(a).await,
        PluginCommand::Run(a) => run(a).await,
    }
}

fn fail(message: impl Into<String>) -> CliError {
    CliError::runtime(message)
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::usage(message)
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| fail(format!("{}: {e}", path.display())))
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| fail(format!("{}: invalid JSON: {e}", path.display())))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A duration for people: µs under a millisecond, ms otherwise.
fn human(d: Duration) -> String {
    if d < Duration::from_millis(1) { format!("{} µs", d.as_micros()) } else { format!("{:.2} ms", ms(d)) }
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB ({bytes} bytes)", bytes as f64 / (1024.0 * 1024.0))
}

fn host(limits: Limits) -> Result<Host, CliError> {
    Host::new(limits).map_err(|e| fail(format!("cannot start the plugin host: {}", e.message)))
}

/// `plugin check`: compile with a default host, print size, compile time, hooks, imports.
pub async fn check(args: CheckArgs) -> Result<(), CliError> {
    let wasm = read(&args.file)?;
    let host = host(Limits { concurrency: 2, ..Limits::default() })?;
    let started = Instant::now();
    let compiled = host.compile(&wasm);
    let compile = started.elapsed();
    let file = args.file.display().to_string();
    match compiled {
        Ok((plugin, precompiled)) => {
            let hooks: Vec<&str> = plugin.hooks.iter().map(|h| h.as_str()).collect();
            if args.json {
                let v = json!({
                    "file": file,
                    "ok": true,
                    "size": wasm.len(),
                    "hash": crate::domain::hash_hex(&plugin.hash),
                    "compileMs": ms(compile),
                    "precompiledSize": precompiled.len(),
                    "hooks": hooks,
                    "imports": plugin.imports,
                    "checks": {"imports": "pass", "types": "pass"},
                });
                println!("{v}");
            } else {
                println!("{file}: ok");
                println!("  size         {} bytes", wasm.len());
                println!("  blake3       {}", crate::domain::hash_hex(&plugin.hash));
                println!("  compile      {} (precompiled: {} bytes)", human(compile), precompiled.len());
                println!("  hooks        {}", hooks.join(", "));
                println!("  imports      {}", plugin.imports.len());
                for name in &plugin.imports {
                    println!("    {name}");
                }
                println!("  import allow-list: pass (comfyui-gateway:plugin/{{host,types}}@0.1, WASI 0.2)");
                println!("  hook types:        pass (comfyui-gateway:plugin@0.1)");
            }
            Ok(())
        }
        Err(f) => {
            if args.json {
                let v = json!({
                    "file": file,
                    "ok": false,
                    "size": wasm.len(),
                    "compileMs": ms(compile),
                    "kind": f.kind,
                    "message": f.message,
                });
                println!("{v}");
            } else {
                println!("{file}: {}", f.kind);
                println!("  size         {} bytes", wasm.len());
                println!("  {}", f.message);
            }
            Err(fail(format!("{file}: {}", f.message)))
        }
    }
}

/// The configuration text: JSON given inline or `@FILE`, re-serialized; `{}` when none.
fn config_text(config: Option<&str>) -> Result<String, CliError> {
    let Some(c) = config else { return Ok("{}".into()) };
    let (text, what) = match c.strip_prefix('@') {
        Some(path) => {
            let bytes = read(Path::new(path))?;
            (String::from_utf8_lossy(&bytes).into_owned(), path.to_string())
        }
        None => (c.to_string(), "--config".to_string()),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| usage(format!("{what}: invalid JSON: {e}")))?;
    Ok(v.to_string())
}

/// The media type of a file from its first bytes.
pub fn media_type(data: &[u8]) -> &'static str {
    if data.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]) {
        "image/png"
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        "image/webp"
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        "image/gif"
    } else {
        "application/octet-stream"
    }
}

/// What a call produced, for printing.
enum Output {
    Json(Value),
    Files(Vec<(PathBuf, usize, String)>),
}

/// `plugin run`: one call of one hook, then the result and the report.
pub async fn run(args: RunArgs) -> Result<(), CliError> {
    let hook = Hook::parse(&args.hook).ok_or_else(|| usage(format!("--hook: unknown hook {}", args.hook)))?;
    let config = config_text(args.config.as_deref())?;
    let wasm = read(&args.file)?;
    let limits = Limits {
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        memory_bytes: args.memory_mb.max(1) << 20,
        fuel: args.fuel,
        concurrency: 2,
        ..Limits::default()
    };
    let host = host(limits)?;
    let started = Instant::now();
    let compiled = host.compile(&wasm);
    let compile = started.elapsed();
    let file = args.file.display().to_string();
    let plugin = compiled.map_err(|f| fail(format!("{file}: {}", f.message)))?;
    let plugin = plugin.0;
    if !plugin.hooks.contains(&hook) {
        let has: Vec<&str> = plugin.hooks.iter().map(|h| h.as_str()).collect();
        return Err(usage(format!("{file} does not export {}; it exports: {}", hook.as_str(), has.join(", "))));
    }
    let ctx = CallContext {
        job_id: uuid::Uuid::new_v4().to_string(),
        workflow: ("plugin-run".into(), 1),
        owner: None,
        config,
    };
    let (result, report): (Result<Output, Failure>, Report) = match hook {
        Hook::InputTransform => {
            let inputs = read_json(&args.input)?;
            if !inputs.is_object() {
                return Err(usage(format!("{}: the inputs must be a JSON object", args.input.display())));
            }
            let (r, report) = host.input_transform(&plugin, &ctx, &inputs).await;
            (r.map(Output::Json), report)
        }
        Hook::TemplateRender => {
            let v = read_json(&args.input)?;
            let (Some(template), Some(inputs)) = (v.get("template"), v.get("inputs")) else {
                return Err(usage(format!(
                    "{}: expected {{\"template\": {{...}}, \"inputs\": {{...}}}}",
                    args.input.display()
                )));
            };
            let (r, report) = host.template_render(&plugin, &ctx, template, inputs).await;
            (r.map(Output::Json), report)
        }
        Hook::OutputProcess => {
            let data = read(&args.input)?;
            let name = args.input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let item = Media { name, media_type: media_type(&data).to_string(), data };
            let (r, report) = host.output_process(&plugin, &ctx, item).await;
            let r = match r {
                Ok(files) => Ok(Output::Files(write_outputs(&args.input, args.out.as_deref(), files)?)),
                Err(f) => Err(f),
            };
            (r, report)
        }
    };
    let fuel = args.fuel.is_some();
    match result {
        Ok(out) => {
            if args.json {
                let result = match &out {
                    Output::Json(v) => json!({ "result": v }),
                    Output::Files(files) => json!({ "files": files_json(files) }),
                };
                let mut v = json!({ "ok": true, "hook": hook.as_str(), "report": report_json(&report, compile) });
                merge(&mut v, result);
                println!("{v}");
            } else {
                match &out {
                    Output::Json(v) => {
                        println!("result:");
                        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
                    }
                    Output::Files(files) if files.is_empty() => println!("result: no files (the item was dropped)"),
                    Output::Files(files) => {
                        println!("result: {} file(s)", files.len());
                        for (path, size, media_type) in files {
                            println!("  wrote {} ({size} bytes, {media_type})", path.display());
                        }
                    }
                }
                print_report(&report, compile, fuel);
            }
            Ok(())
        }
        Err(f) => {
            if args.json {
                let v = json!({
                    "ok": false,
                    "hook": hook.as_str(),
                    "kind": f.kind,
                    "limit": f.is_limit(),
                    "message": f.message,
                    "pluginCode": f.plugin_code,
                    "field": f.field,
                    "report": report_json(&Report { logs: f.logs.clone(), ..report }, compile),
                });
                println!("{v}");
            } else {
                println!("failed: {}", f.kind);
                println!("  {}", f.message);
                if let Some(c) = &f.plugin_code {
                    println!("  code   {c}");
                }
                if let Some(field) = &f.field {
                    println!("  field  {field}");
                }
                print_report(&Report { logs: f.logs.clone(), ..report }, compile, fuel);
            }
            Err(fail(format!("plugin {} failed ({}): {}", hook.as_str(), f.kind, f.message)))
        }
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Write `output-process` results into `out` (or next to `input`), never over the input
/// itself and never outside the folder (names are reduced to their last component).
fn write_outputs(
    input: &Path,
    out: Option<&Path>,
    files: Vec<Media>,
) -> Result<Vec<(PathBuf, usize, String)>, CliError> {
    let dir = match out {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
            d.to_path_buf()
        }
        None => input.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let input_abs = std::fs::canonicalize(input).ok();
    let mut written = Vec::new();
    for (i, m) in files.into_iter().enumerate() {
        let base = Path::new(&m.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| format!("output-{i}"));
        let mut path = dir.join(&base);
        let clobbers_input = input_abs.is_some() && std::fs::canonicalize(&path).ok() == input_abs;
        if clobbers_input {
            let p = Path::new(&base);
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let name = match p.extension() {
                Some(ext) => format!("{stem}.out.{}", ext.to_string_lossy()),
                None => format!("{stem}.out"),
            };
            path = dir.join(name);
        }
        std::fs::write(&path, &m.data).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        written.push((path, m.data.len(), m.media_type));
    }
    Ok(written)
}

fn files_json(files: &[(PathBuf, usize, String)]) -> Value {
    files.iter().map(|(p, size, t)| json!({"path": p.display().to_string(), "size": size, "mediaType": t})).collect()
}

fn logs_json(logs: &[LogLine]) -> Value {
    logs.iter().map(|l| json!({"level": l.level, "message": l.message})).collect()
}

fn report_json(r: &Report, compile: Duration) -> Value {
    json!({
        "wallMs": ms(r.elapsed),
        "memoryPeakBytes": r.memory_peak,
        "fuelUsed": r.fuel_used,
        "compileMs": ms(compile),
        "logs": logs_json(&r.logs),
    })
}

fn print_report(r: &Report, compile: Duration, fuel: bool) {
    println!("report:");
    println!("  wall time    {}", human(r.elapsed));
    println!("  peak memory  {}", mib(r.memory_peak));
    if fuel {
        match r.fuel_used {
            Some(f) => println!("  fuel used    {f}"),
            None => println!("  fuel used    unknown"),
        }
    }
    println!("  compile      {} (once per plugin; the gateway caches it)", human(compile));
    if r.logs.is_empty() {
        println!("logs: none");
    } else {
        println!("logs ({}):", r.logs.len());
        for l in &r.logs {
            println!("  [{}] {}", l.level, l.message);
        }
    }
}
