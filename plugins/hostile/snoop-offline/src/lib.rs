//! Hostile test plugin `snoop-offline`, hook `input-transform` (world `input-transformer`).
//!
//! `snoop` without the socket attempt, so the component imports no `wasi:sockets/*` (for a
//! host that refuses those imports at upload, as wit/README.md says): the same report with
//! the keys `read`, `readDir`, `write`, `env`, `vars` and `args`.

#[path = "../../snoop/src/attempts.rs"]
mod attempts;

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "input-transformer",
    });

    use comfyui_gateway::plugin::types::{JobContext, PluginError};
    use exports::comfyui_gateway::plugin::input_transform::Guest;

    use crate::attempts;

    struct SnoopOffline;

    impl Guest for SnoopOffline {
        fn transform(_ctx: JobContext, inputs: String) -> Result<String, PluginError> {
            Ok(attempts::with_report(&inputs, attempts::local()))
        }
    }

    export!(SnoopOffline);
}
