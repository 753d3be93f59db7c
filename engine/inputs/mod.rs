//! Image inputs: turn what a client gave for an image input (an `http(s)://` URL, a data
//! URI, a bare base64 string, or the bytes of a multipart part) into checked image bytes.
//!
//! - [`load`]: URL → guarded fetch ([`fetch`]), data URI / base64 → decode; then
//!   [`sniff`] by magic bytes (PNG, JPEG, WebP, GIF only) and the size limit.
//! - [`fetch`]: the HTTP fetch through the SSRF gate ([`crate::ssrf`]).
//!
//! Every failure is a message for the client about its own input (a 400 naming
//! `/inputs/<name>`); nothing here touches the store or ComfyUI.

use base64::Engine;
use bytes::Bytes;

pub mod fetch;

pub use crate::ssrf::AllowList;
pub use fetch::FetchLimits;

/// A checked image: its bytes and what they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The content.
    pub bytes: Bytes,
    /// MIME type, from the magic bytes.
    pub media_type: &'static str,
    /// File extension for that type, without the dot.
    pub ext: &'static str,
}

/// What a client gave for one image input.
#[derive(Debug, Clone)]
pub enum Source {
    /// A JSON string: a URL, a data URI or bare base64.
    Text(String),
    /// The bytes of a multipart file part.
    Bytes(Bytes),
}

/// Resolve a source to a checked image, at most `limits.bytes_max` bytes.
///
/// # Errors
/// A message for the client: what is wrong with the input (never an internal detail).
pub async fn load(source: Source, limits: &FetchLimits) -> Result<Image, String> {
    let bytes = match source {
        Source::Bytes(bytes) => bytes,
        Source::Text(text) => {
            let trimmed = text.trim();
            let lower = trimmed.get(..8).unwrap_or(trimmed).to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                fetch::fetch(trimmed, limits).await?
            } else if lower.starts_with("data:") {
                decode_data_uri(trimmed, limits.bytes_max)?
            } else {
                decode_base64(trimmed, limits.bytes_max)?
            }
        }
    };
    check(bytes, limits.bytes_max)
}

/// Check size and type of image bytes.
///
/// # Errors
/// Too large, empty, or not a PNG, JPEG, WebP or GIF.
pub fn check(bytes: Bytes, bytes_max: usize) -> Result<Image, String> {
    if bytes.len() > bytes_max {
        return Err(too_large(bytes_max));
    }
    let Some((media_type, ext)) = sniff(&bytes) else {
        return Err("is not a PNG, JPEG, WebP or GIF image (checked by its first bytes)".to_string());
    };
    Ok(Image { bytes, media_type, ext })
}

fn too_large(bytes_max: usize) -> String {
    format!("is larger than {bytes_max} bytes (the gateway's MAX_INPUT_IMAGE_BYTES)")
}

/// The image type by magic bytes: `(media type, extension)`.
pub fn sniff(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", "png"))
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(("image/jpeg", "jpg"))
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(("image/gif", "gif"))
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some(("image/webp", "webp"))
    } else {
        None
    }
}

/// `data:[<media type>][;params];base64,<data>`; only base64 payloads are images.
fn decode_data_uri(uri: &str, bytes_max: usize) -> Result<Bytes, String> {
    let Some((head, data)) = uri.split_once(',') else {
        return Err("is a data URI without a comma before its data".to_string());
    };
    if !head.to_ascii_lowercase().ends_with(";base64") {
        return Err("is a data URI that is not base64-encoded (expected data:image/...;base64,...)".to_string());
    }
    decode_base64(data, bytes_max)
}

/// Standard or URL-safe base64, padded or not, whitespace ignored.
fn decode_base64(text: &str, bytes_max: usize) -> Result<Bytes, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err("is empty; expected an http(s) URL, a data URI or base64".to_string());
    }
    // Four characters carry three bytes: refuse oversize input before decoding it.
    if compact.len() / 4 * 3 > bytes_max.saturating_add(3) {
        return Err(too_large(bytes_max));
    }
    let url_safe = compact.contains(['-', '_']);
    let engine = if url_safe {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    };
    engine
        .decode(compact.trim_end_matches('='))
        .map(Bytes::from)
        .map_err(|e| format!("is neither an http(s) URL nor a data URI, and not valid base64: {e}"))
}

/// A file name for an input: its name when that is a safe file name, else a sanitized
/// version; with the image's extension.
pub fn file_name(input: &str, ext: &str) -> String {
    let safe: String = input
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') { c } else { '_' })
        .collect();
    let stem = if safe.is_empty() { "input".to_string() } else { safe };
    format!("{stem}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn sniffs_by_magic_bytes_only() {
        assert_eq!(sniff(PNG), Some(("image/png", "png")));
        assert_eq!(sniff(&[0xff, 0xd8, 0xff, 0xe0]), Some(("image/jpeg", "jpg")));
        assert_eq!(sniff(b"GIF89a...."), Some(("image/gif", "gif")));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(("image/webp", "webp")));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"<svg xmlns="), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn decodes_data_uris_and_base64() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
        assert_eq!(decode_base64(&b64, 1024).unwrap(), PNG);
        assert_eq!(decode_data_uri(&format!("data:image/png;base64,{b64}"), 1024).unwrap(), PNG);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb, 0xff, 0xfe]);
        assert_eq!(decode_base64(&url_safe, 1024).unwrap(), &[0xfb, 0xff, 0xfe][..]);
        assert!(decode_data_uri("data:text/plain,hello", 1024).is_err());
        assert!(decode_base64("not base64!", 1024).unwrap_err().contains("base64"));
        assert!(decode_base64(&b64, 4).unwrap_err().contains("MAX_INPUT_IMAGE_BYTES"));
    }

    #[test]
    fn check_enforces_size_and_type() {
        assert_eq!(check(Bytes::from_static(PNG), 1024).unwrap().ext, "png");
        assert!(check(Bytes::from_static(PNG), 4).unwrap_err().contains("larger"));
        assert!(check(Bytes::from_static(b"hello"), 1024).unwrap_err().contains("PNG"));
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name("image", "png"), "image.png");
        assert_eq!(file_name("../x y", "jpg"), "___x_y.jpg");
        assert_eq!(file_name("", "gif"), "input.gif");
    }
}
