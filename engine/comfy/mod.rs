//! Everything that knows ComfyUI's wire format: the client (HTTP + WebSocket) used by the
//! scheduler, the messages and answers it reads (`protocol`), the API-format prompt read as
//! a graph with the node classes the import recognizes (`graph`, used by `workflows`), and
//! the simulator that speaks the same protocol for tests and demos.

pub mod client;
pub mod graph;
pub mod protocol;
pub mod sim;
pub mod ws;
