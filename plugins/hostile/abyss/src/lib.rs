//! Hostile test plugin `abyss`, hook `input-transform` (world `input-transformer`).
//!
//! Unbounded non-tail recursion with scalar frames: the wasm call stack overflows (a stack-overflow trap).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

struct Abyss;

impl Guest for Abyss {
    fn transform(_ctx: JobContext, _inputs: String) -> Result<String, PluginError> {
        let depth = dive(std::hint::black_box(0));
        Ok(format!("{{\"depth\": {depth}}}"))
    }
}

/// Recurse forever: the result of the inner call is used after it returns (no tail call) and
/// passes through `black_box` (no accumulator rewrite into a loop); only scalars, so the frames
/// live on the wasm call stack, not in linear memory.
#[inline(never)]
fn dive(n: u64) -> u64 {
    // Never true, but the optimizer cannot know (and rustc sees a way out of the recursion).
    if std::hint::black_box(n) == u64::MAX {
        return n;
    }
    let below = std::hint::black_box(dive(std::hint::black_box(n.wrapping_add(1))));
    below.wrapping_mul(31).wrapping_add(n)
}

export!(Abyss);
