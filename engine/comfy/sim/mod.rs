//! The ComfyUI simulator (filled in by the simulator work).
