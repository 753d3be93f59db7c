//! The component glue: WIT bindings and the exported `output-process` interface.

wit_bindgen::generate!({
    path: "../../wit",
    world: "output-processor",
});

use comfyui_gateway::plugin::host::{self, Level};
use comfyui_gateway::plugin::types::{JobContext, MediaItem, PluginError};
use exports::comfyui_gateway::plugin::output_process::Guest;

use crate::tidy::{self, Item, LogLevel};

struct PngTidy;

impl Guest for PngTidy {
    fn process(_ctx: JobContext, item: MediaItem) -> Result<Vec<MediaItem>, PluginError> {
        let item = Item { name: item.name, media_type: item.media_type, data: item.data };
        let outcome = tidy::process(&host::config(), item);
        for (level, message) in &outcome.logs {
            let level = match level {
                LogLevel::Debug => Level::Debug,
                LogLevel::Info => Level::Info,
                LogLevel::Warn => Level::Warn,
            };
            host::log(level, message);
        }
        match outcome.result {
            Ok(items) => Ok(items
                .into_iter()
                .map(|i| MediaItem { name: i.name, media_type: i.media_type, data: i.data })
                .collect()),
            Err(r) => Err(PluginError { code: r.code.to_owned(), message: r.message, field: None }),
        }
    }
}

export!(PngTidy);
