//! `prompt-guard`: an input-transform plugin (world `input-transformer`).
//!
//! Configuration (all keys optional):
//!
//! ```json
//! {
//!   "maxPromptChars": 2000,
//!   "blocked": ["word", "two words"],
//!   "presets": {"cinematic": ", cinematic lighting, 35mm"},
//!   "aspectRatios": true,
//!   "longSide": 1024
//! }
//! ```
//!
//! - `prompt` longer than `maxPromptChars` (Unicode scalar values) → `PROMPT_TOO_LONG`, field
//!   `/prompt`; containing a blocked word or phrase (case-insensitive, whole words) →
//!   `PROMPT_BLOCKED`, field `/prompt`. Both are checked on the client's prompt, before a preset
//!   is appended.
//! - `"preset": "<name>"` appends the preset's text to `prompt` (or becomes the prompt when there
//!   is none) and removes the `preset` key; an unknown name → `UNKNOWN_PRESET`, field `/preset`.
//! - With `"aspectRatios": true`, `"aspectRatio": "16:9"` (also 1:1, 4:3, 3:2, 2:3, 3:4, 9:16,
//!   21:9) becomes `width`/`height` (multiples of 64, the long side `longSide`, default 1024)
//!   and the `aspectRatio` key is removed; anything else → `BAD_ASPECT_RATIO`, field
//!   `/aspectRatio`.
//!
//! The logic lives in [`guard`] (plain Rust, unit-tested on the host); the component glue is
//! compiled for wasm32 only.

pub mod guard;

#[cfg(target_arch = "wasm32")]
mod component;
