//! Hostile test plugin `balloon`, hook `input-transform` (world `input-transformer`).
//!
//! Allocates until memory runs out: 16 MiB blocks, every page touched, kept forever.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct Balloon;

impl Guest for Balloon {
    fn transform(_ctx: JobContext, _inputs: String) -> Result<String, PluginError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block = vec![0u8; 16 << 20];
            for i in (0..block.len()).step_by(4096) {
                block[i] = (i >> 12) as u8 | 1;
            }
            hoard.push(std::hint::black_box(block));
            std::hint::black_box(&mut hoard);
        }
    }
}

export!(Balloon);
