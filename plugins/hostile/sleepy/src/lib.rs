//! Hostile test plugin `sleepy`, hook `input-transform` (world `input-transformer`).
//!
//! Blocks in a WASI host call: sleeps for an hour (only a wall-clock deadline stops it; no fuel burns while it waits).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct Sleepy;

impl Guest for Sleepy {
    fn transform(_ctx: JobContext, inputs: String) -> Result<String, PluginError> {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Ok(inputs)
    }
}

export!(Sleepy);
