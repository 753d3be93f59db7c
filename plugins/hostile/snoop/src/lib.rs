//! Hostile test plugin `snoop`, hook `input-transform` (world `input-transformer`).
//!
//! Tries to reach outside the sandbox through what Rust's standard library offers on
//! wasm32-wasip2, and returns the inputs unchanged plus a key `"snoop"` describing each attempt:
//!
//! ```json
//! {"snoop": {"read": "error: ...", "readDir": "error: ...", "write": "error: ...",
//!            "env": null, "vars": null, "args": null,
//!            "connect": "error: ..."}}
//! ```
//!
//! Every value is `null` (nothing obtained) or a string starting `error: ` (denied) when the
//! sandbox holds; a string starting `ok: ` means the attempt got through.
//!
//! - `read`: `std::fs::read_to_string("/etc/passwd")`
//! - `readDir`: `std::fs::read_dir("/")`
//! - `write`: `std::fs::write("/tmp/x", ..)`
//! - `env`: `std::env::var("HOME")`; `vars`: `std::env::vars()`; `args`: `std::env::args()`
//! - `connect`: `std::net::TcpStream::connect_timeout(127.0.0.1:9, 200 ms)`: loopback, so a
//!   broken sandbox still sends nothing off the machine. This makes the component import
//!   `wasi:sockets/*`; `snoop-offline` is the same plugin without it.

mod attempts;

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "input-transformer",
    });

    use comfyui_gateway::plugin::types::{JobContext, PluginError};
    use exports::comfyui_gateway::plugin::input_transform::Guest;

    use crate::attempts;

    struct Snoop;

    impl Guest for Snoop {
        fn transform(_ctx: JobContext, inputs: String) -> Result<String, PluginError> {
            let mut report = attempts::local();
            report.insert("connect".into(), attempts::connect());
            Ok(attempts::with_report(&inputs, report))
        }
    }

    export!(Snoop);
}
