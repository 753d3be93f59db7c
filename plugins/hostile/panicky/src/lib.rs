//! Hostile test plugin `panicky`, hook `input-transform` (world `input-transformer`).
//!
//! Panics with the message "plugin panicked on purpose" (printed to stderr, then a trap).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct Panicky;

impl Guest for Panicky {
    fn transform(_ctx: JobContext, _inputs: String) -> Result<String, PluginError> {
        panic!("plugin panicked on purpose");
    }
}

export!(Panicky);
