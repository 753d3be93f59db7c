//! The component glue: WIT bindings and the exported `template-render` interface.

wit_bindgen::generate!({
    path: "../../wit",
    world: "template-renderer",
});

use comfyui_gateway::plugin::host::{self, Level};
use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::template_render::Guest;

use crate::subgraph::{self, LogLevel};

struct SubgraphRenderer;

impl Guest for SubgraphRenderer {
    fn render(_ctx: JobContext, template: String, inputs: String) -> Result<String, PluginError> {
        let outcome = subgraph::render(&template, &inputs);
        for (level, message) in &outcome.logs {
            let level = match level {
                LogLevel::Debug => Level::Debug,
                LogLevel::Info => Level::Info,
            };
            host::log(level, message);
        }
        outcome.result.map_err(|r| PluginError { code: r.code.to_owned(), message: r.message, field: r.field })
    }
}

export!(SubgraphRenderer);
