//! Everything that knows ComfyUI's wire format: the client (HTTP + WebSocket) used by the
//! scheduler, the messages and answers it reads (`protocol`), the API-format prompt read as
//! a graph with the node classes the import recognizes (`graph`, used by `workflows`), a
//! job's progress as a whole from the per-node events (`progress`), and the simulator that
//! speaks the same protocol for tests and demos. `ui` converts a workflow saved from ComfyUI's
//! editor (the UI format) to the API format, as the editor's Export (API) does.

pub mod client;
pub mod graph;
pub mod progress;
pub mod protocol;
pub mod sim;
pub mod ui;
pub mod ws;
