//! Hostile test plugin `snoop-net`, hook `input-transform` (world `input-transformer`).
//!
//! Calls `std::net::TcpStream::connect("127.0.0.1:9")` (loopback, the discard port: never a
//! real address), which on wasm32-wasip2 makes the component import `wasi:sockets/*`. The
//! gateway must refuse it at upload, naming that import. Were it run anyway, it returns the
//! inputs plus `"snoop": {"connect": "error: ..."}` (or `"ok: ..."` if the connection opened).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct SnoopNet;

impl Guest for SnoopNet {
    fn transform(_ctx: JobContext, inputs: String) -> Result<String, PluginError> {
        let connect = match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(stream) => format!("ok: connected from {:?}", stream.local_addr().ok()),
            Err(e) => format!("error: {e}"),
        };
        let connect = connect.replace('\\', "\\\\").replace('"', "\\\"");
        let body = inputs.trim().trim_start_matches('{').trim_end_matches('}').trim();
        let sep = if body.is_empty() { "" } else { ", " };
        Ok(format!("{{{body}{sep}\"snoop\": {{\"connect\": \"{connect}\"}}}}"))
    }
}

export!(SnoopNet);
