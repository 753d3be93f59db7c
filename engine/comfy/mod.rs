//! Everything that knows ComfyUI's wire format: the client (HTTP + WebSocket) used by the
//! scheduler, and the simulator that speaks the same protocol for tests and demos.

pub mod client;
pub mod graph;
pub mod protocol;
pub mod sim;
pub mod ws;
