//! Hostile test plugin `bad-json`, hook `input-transform` (world `input-transformer`).
//!
//! Returns text that is not JSON: `not json {`.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct BadJson;

impl Guest for BadJson {
    fn transform(_ctx: JobContext, _inputs: String) -> Result<String, PluginError> {
        Ok("not json {".to_owned())
    }
}

export!(BadJson);
