//! Test plugin `slow-output`, hook `output-process` (world `output-processor`).
//!
//! Sleeps in a WASI host call for `{"ms": N}` of its configuration (default 1000), then
//! returns the file unchanged: a slow but well-behaved post-processing step.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "output-processor",
});

use comfyui_gateway::plugin::host;
use comfyui_gateway::plugin::types::{JobContext, MediaItem, PluginError};
use exports::comfyui_gateway::plugin::output_process::Guest;

struct SlowOutput;

impl Guest for SlowOutput {
    fn process(_ctx: JobContext, item: MediaItem) -> Result<Vec<MediaItem>, PluginError> {
        let config: serde_json::Value = serde_json::from_str(&host::config()).unwrap_or_default();
        let ms = config["ms"].as_u64().unwrap_or(1000);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Ok(vec![item])
    }
}

export!(SlowOutput);
