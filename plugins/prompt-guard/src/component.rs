//! The component glue: WIT bindings and the exported `input-transform` interface.

wit_bindgen::generate!({
    path: "../../wit",
    world: "input-transformer",
});

use comfyui_gateway::plugin::host::{self, Level};
use comfyui_gateway::plugin::types::{JobContext, PluginError};
use exports::comfyui_gateway::plugin::input_transform::Guest;

use crate::guard::{self, LogLevel};

struct PromptGuard;

impl Guest for PromptGuard {
    fn transform(_ctx: JobContext, inputs: String) -> Result<String, PluginError> {
        let outcome = guard::transform(&host::config(), &inputs);
        for (level, message) in &outcome.logs {
            let level = match level {
                LogLevel::Debug => Level::Debug,
                LogLevel::Info => Level::Info,
                LogLevel::Warn => Level::Warn,
            };
            host::log(level, message);
        }
        outcome.result.map(|out| out.unwrap_or(inputs)).map_err(|r| PluginError {
            code: r.code.to_owned(),
            message: r.message,
            field: r.field.map(str::to_owned),
        })
    }
}

export!(PromptGuard);
