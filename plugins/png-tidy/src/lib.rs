//! `png-tidy`: an output-process plugin (world `output-processor`).
//!
//! Configuration (all keys optional):
//!
//! ```json
//! {"strip": true, "watermark": false, "mark": "corner", "color": "#FF00FF", "drop": ["preview"]}
//! ```
//!
//! - `drop`: an item whose name contains one of these substrings is dropped (the hook returns an
//!   empty list), whatever its media type.
//! - `strip` (default `true`): for `image/png` items, the metadata chunks `tEXt`, `zTXt`, `iTXt`,
//!   `tIME` and `eXIf` are removed (ComfyUI writes the whole prompt and workflow into `tEXt`);
//!   every other chunk is copied byte for byte, so the pixels are exactly the same.
//! - `watermark` (default `false`): draws a visible mark into the pixels (decoded and
//!   re-encoded with the pure-Rust `png` crate): `mark` `"corner"` (a block in the bottom-right
//!   corner, 1/16 of the short side) or `"border"` (a 2-pixel frame), in `color` (`#RRGGBB` or
//!   `#RRGGBBAA`, the alpha blending the mark over the image). Colour chunks (`gAMA`, `cHRM`,
//!   `sRGB`, `iCCP`, `cICP`, `mDCV`, `cLLI`) and `pHYs` are carried over; palette and sub-byte
//!   images come out as 8-bit RGB(A)/grey. Animated PNGs are not marked (a warning is logged).
//! - Other media types pass through unchanged.
//!
//! Errors: `BAD_CONFIG`, `INVALID_PNG` (an `image/png` item that is not one), `IMAGE_TOO_LARGE`.
//!
//! The logic lives in [`tidy`] (plain Rust, unit-tested on the host); the component glue is
//! compiled for wasm32 only.

pub mod tidy;

#[cfg(target_arch = "wasm32")]
mod component;
