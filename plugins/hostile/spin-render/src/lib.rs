//! Hostile test plugin `spin-render`, hook `template-render` (world `template-renderer`).
//!
//! Never returns: a busy loop with no host calls (the fuel or epoch deadline must stop it).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "template-renderer",
});

use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::template_render::Guest;

struct SpinRender;

impl Guest for SpinRender {
    fn render(_ctx: JobContext, _template: String, _inputs: String) -> Result<String, PluginError> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(SpinRender);
