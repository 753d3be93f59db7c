//! The sandbox-escape attempts of `snoop` and `snoop-offline` (shared source file).
//!
//! Every value of the report is `null` (nothing obtained) or a string starting `error: `
//! (denied) when the sandbox holds; a string starting `ok: ` means the attempt got through.

// Each including crate uses a part, and only on wasm32 (the host build only tests them).
#![allow(dead_code)]

use serde_json::{Map, Value, json};

fn outcome<T>(result: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> Value {
    match result {
        Ok(value) => Value::String(format!("ok: {}", ok(value))),
        Err(e) => Value::String(format!("error: {e}")),
    }
}

/// Files, directories, environment variables and arguments. (Not the working directory:
/// wasi-libc answers `/` from its own state, which says nothing about the sandbox.)
pub fn local() -> Map<String, Value> {
    let vars: Vec<String> = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let report = json!({
        "read": outcome(std::fs::read_to_string("/etc/passwd"), |s| format!("{} bytes", s.len())),
        "readDir": outcome(std::fs::read_dir("/"), |d| format!("{} entries", d.count())),
        "write": outcome(std::fs::write("/tmp/x", b"snoop was here"), |()| "written".to_owned()),
        "env": std::env::var("HOME").ok().map(|home| format!("ok: {home}")),
        "vars": if vars.is_empty() { None } else { Some(format!("ok: {}", vars.join(","))) },
        "args": if args.is_empty() { None } else { Some(format!("ok: {}", args.join(" "))) },
    });
    match report {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A TCP connection to the loopback discard port (never a real address: were the sandbox to
/// let it through, nothing leaves the machine).
pub fn connect() -> Value {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let timeout = std::time::Duration::from_millis(200);
    outcome(std::net::TcpStream::connect_timeout(&addr, timeout), |s| {
        format!("connected from {:?}", s.local_addr().ok())
    })
}

/// The inputs (a JSON object) plus `"snoop": report`.
pub fn with_report(inputs: &str, report: Map<String, Value>) -> String {
    let mut value: Value = serde_json::from_str(inputs).unwrap_or_else(|_| json!({}));
    if !value.is_object() {
        value = json!({ "inputs": value });
    }
    value["snoop"] = Value::Object(report);
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_added_to_the_inputs() {
        let mut report = Map::new();
        report.insert("env".into(), Value::Null);
        let out: Value = serde_json::from_str(&with_report(r#"{"prompt": "x", "seed": 1}"#, report)).unwrap();
        assert_eq!(out, json!({"prompt": "x", "seed": 1, "snoop": {"env": null}}));
    }

    #[test]
    fn every_attempt_is_described() {
        // On the host these succeed or fail as the machine allows; only the shape is checked.
        let local = local();
        for key in ["read", "readDir", "write", "env", "vars", "args"] {
            let v = &local[key];
            assert!(v.is_null() || v.as_str().is_some_and(|s| s.starts_with("ok: ") || s.starts_with("error: ")));
        }
    }
}
