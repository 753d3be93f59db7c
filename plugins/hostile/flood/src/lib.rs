//! Hostile test plugin `flood`, hook `input-transform` (world `input-transformer`).
//!
//! Returns a 64 MiB result: valid JSON (`{"pad": "xxx…"}`), so only an output-size limit (or the memory limit) refuses it.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct Flood;

impl Guest for Flood {
    fn transform(_ctx: JobContext, _inputs: String) -> Result<String, PluginError> {
        let mut out = String::with_capacity((64 << 20) + 16);
        out.push_str("{\"pad\": \"");
        let pad = (64 << 20) - out.len() - 2;
        out.extend(std::iter::repeat_n('x', pad));
        out.push_str("\"}");
        Ok(out)
    }
}

export!(Flood);
