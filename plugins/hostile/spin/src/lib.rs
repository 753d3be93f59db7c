//! Hostile test plugin `spin`, hook `input-transform` (world `input-transformer`).
//!
//! Never returns: a busy loop with no host calls (the fuel or epoch deadline must stop it).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct Spin;

impl Guest for Spin {
    fn transform(_ctx: JobContext, _inputs: String) -> Result<String, PluginError> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(Spin);
