//! `subgraph-renderer`: a template-render plugin (world `template-renderer`).
//!
//! It renders `{{name}}` tokens exactly like the gateway's built-in renderer (a string that is
//! exactly one token takes the input's JSON value and type; tokens inside longer strings are
//! interpolated as text; dotted names walk nested objects; an unknown token → `UNKNOWN_TOKEN`),
//! and first picks a sub-graph of the template:
//!
//! - a node whose `_meta` has `"enabledBy": "<input>"` is removed when that input is absent,
//!   `null` or `false` (`"enabledBy": "!<input>"` inverts: removed when the input is set);
//! - a link to a removed node (a `["<node id>", <output index>]` pair in another node's
//!   `inputs`) is rewired to the removed node's `_meta.bypass` link when it has one (followed
//!   through further removed nodes), else the referencing input is removed; a bypass is one
//!   link for every output, or an array of links (or `null`) indexed by the output index the
//!   reference used (`[["1", 0], ["1", 1]]` for a LoRA loader's model and clip);
//! - `_meta` is stripped from every node of the result.
//!
//! No configuration. Errors: `INVALID_TEMPLATE`, `INVALID_INPUTS`, `UNKNOWN_TOKEN`,
//! `EMPTY_PROMPT` (every node removed).
//!
//! The logic lives in [`subgraph`] (plain Rust, unit-tested on the host); the component glue is
//! compiled for wasm32 only.

pub mod subgraph;

#[cfg(target_arch = "wasm32")]
mod component;
