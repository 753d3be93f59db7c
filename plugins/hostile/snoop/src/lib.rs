//! Hostile test plugin `snoop`, hook `input-transform` (world `input-transformer`).
//!
//! Tries to reach outside the sandbox through what Rust's standard library offers on
//! wasm32-wasip2, and returns the inputs unchanged plus a key `"snoop"` describing each attempt:
//!
//! ```json
//! {"snoop": {"read": "error: ...", "readDir": "error: ...", "write": "error: ...",
//!            "cwd": "error: ...", "env": null, "vars": null, "args": null}}
//! ```
//!
//! Every value is `null` (nothing obtained) or a string starting `error: ` (denied) when the
//! sandbox holds; anything else (a string starting `ok: `) means the attempt got through.
//!
//! - `read`: `std::fs::read_to_string("/etc/passwd")`
//! - `readDir`: `std::fs::read_dir("/")`
//! - `write`: `std::fs::write("/tmp/x", ..)`
//! - `cwd`: `std::env::current_dir()`
//! - `env`: `std::env::var("HOME")`; `vars`: `std::env::vars()`; `args`: `std::env::args()`
//!
//! No socket attempt here: `std::net` would import `wasi:sockets`, which the gateway refuses at
//! upload, so this plugin could never run; `snoop-net` is that case.

/// Run every attempt; the description object.
pub fn snoop() -> serde_json::Value {
    use serde_json::{Value, json};
    fn outcome<T>(result: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> Value {
        match result {
            Ok(value) => Value::String(format!("ok: {}", ok(value))),
            Err(e) => Value::String(format!("error: {e}")),
        }
    }
    let vars: Vec<String> = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    json!({
        "read": outcome(std::fs::read_to_string("/etc/passwd"), |s| format!("{} bytes", s.len())),
        "readDir": outcome(std::fs::read_dir("/"), |d| format!("{} entries", d.count())),
        "write": outcome(std::fs::write("/tmp/x", b"snoop was here"), |()| "written".to_owned()),
        "cwd": outcome(std::env::current_dir(), |p| p.display().to_string()),
        "env": std::env::var("HOME").ok().map(|home| format!("ok: {home}")),
        "vars": if vars.is_empty() { None } else { Some(format!("ok: {}", vars.join(","))) },
        "args": if args.is_empty() { None } else { Some(format!("ok: {}", args.join(" "))) },
    })
}

/// The inputs plus the `snoop` report.
pub fn report(inputs: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(inputs).unwrap_or_else(|_| serde_json::json!({}));
    if !value.is_object() {
        value = serde_json::json!({ "inputs": value });
    }
    value["snoop"] = snoop();
    value.to_string()
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "input-transformer",
    });

    use comfyui_gateway::plugin::types::{JobContext, PluginError};
    use exports::comfyui_gateway::plugin::input_transform::Guest;

    struct Snoop;

    impl Guest for Snoop {
        fn transform(_ctx: JobContext, inputs: String) -> Result<String, PluginError> {
            Ok(crate::report(&inputs))
        }
    }

    export!(Snoop);
}
