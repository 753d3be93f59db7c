//! Hostile test plugin `mismatch`, hook `input-transform` (world `input-transformer`).
//!
//! Built against `wit/plugin.wit` beside this crate: the same package
//! (`comfyui-gateway:plugin@0.1.0`) but `transform: func(ctx: job-context, inputs: u32)`, so
//! the component exports `comfyui-gateway:plugin/input-transform@0.1.0#transform` with the
//! right name and the wrong type. The gateway must refuse it at upload (a type mismatch),
//! never call it.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct Mismatch;

impl Guest for Mismatch {
    fn transform(_ctx: JobContext, inputs: u32) -> Result<String, PluginError> {
        Ok(format!("{{\"n\": {inputs}}}"))
    }
}

export!(Mismatch);
