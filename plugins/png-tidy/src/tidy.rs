//! The pure logic of `png-tidy`: no bindings, testable on any target.

use std::io::Cursor;

use serde_json::{Map, Value};

/// A log line's severity (mapped onto the host's `level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
}

/// A failure: becomes the WIT `plugin-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection { code, message: message.into() }
}

/// One file (the WIT `media-item`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    pub media_type: String,
    pub data: Vec<u8>,
}

/// What one call produced: the items to store or a failure, and the log.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Vec<Item>, Rejection>,
    pub logs: Vec<(LogLevel, String)>,
}

/// The shape of the visible mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Corner,
    Border,
}

/// The plugin's configuration, parsed from the host's JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub strip: bool,
    pub watermark: bool,
    pub mark: Mark,
    /// RGBA.
    pub color: [u8; 4],
    pub drop: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self { strip: true, watermark: false, mark: Mark::Corner, color: [0xFF, 0x00, 0xFF, 0xFF], drop: Vec::new() }
    }
}

impl Config {
    /// Parse the configuration (`{}` or empty text: strip only).
    pub fn parse(text: &str) -> Result<Self, Rejection> {
        let bad = |message: &str| reject("BAD_CONFIG", message);
        let text = text.trim();
        let value: Value = if text.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(text).map_err(|e| reject("BAD_CONFIG", format!("plugin config is not JSON: {e}")))?
        };
        let Value::Object(map) = value else { return Err(bad("plugin config must be a JSON object")) };
        let mut config = Config::default();
        let flag = |key: &str, default: bool| match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(reject("BAD_CONFIG", format!("{key} must be a boolean"))),
        };
        config.strip = flag("strip", true)?;
        config.watermark = flag("watermark", false)?;
        match map.get("mark").and_then(|v| if v.is_null() { None } else { Some(v.as_str()) }) {
            None | Some(Some("corner")) => {}
            Some(Some("border")) => config.mark = Mark::Border,
            Some(_) => return Err(bad("mark must be \"corner\" or \"border\"")),
        }
        if let Some(color) = map.get("color").filter(|v| !v.is_null()) {
            config.color = color
                .as_str()
                .and_then(parse_color)
                .ok_or_else(|| bad("color must be \"#RRGGBB\" or \"#RRGGBBAA\""))?;
        }
        if let Some(drop) = map.get("drop").filter(|v| !v.is_null()) {
            let list = drop.as_array().ok_or_else(|| bad("drop must be an array of strings"))?;
            for entry in list {
                let entry = entry.as_str().ok_or_else(|| bad("drop must be an array of strings"))?;
                if !entry.is_empty() {
                    config.drop.push(entry.to_owned());
                }
            }
        }
        Ok(config)
    }
}

/// `#RRGGBB` / `#RRGGBBAA` (the `#` optional) → RGBA.
pub fn parse_color(text: &str) -> Option<[u8; 4]> {
    let hex = text.trim().trim_start_matches('#');
    if !(hex.len() == 6 || hex.len() == 8) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    let alpha = if hex.len() == 8 { byte(6)? } else { 0xFF };
    Some([byte(0)?, byte(2)?, byte(4)?, alpha])
}

/// Run the hook on one item.
pub fn process(config: &str, item: Item) -> Outcome {
    let mut logs = Vec::new();
    let result = Config::parse(config).and_then(|config| process_item(&config, item, &mut logs));
    Outcome { result, logs }
}

fn process_item(config: &Config, mut item: Item, logs: &mut Vec<(LogLevel, String)>) -> Result<Vec<Item>, Rejection> {
    if let Some(pattern) = config.drop.iter().find(|p| item.name.contains(p.as_str())) {
        logs.push((LogLevel::Info, format!("dropped {} (name contains \"{pattern}\")", item.name)));
        return Ok(Vec::new());
    }
    if !is_png_type(&item.media_type) {
        logs.push((LogLevel::Debug, format!("{} ({}) passed through", item.name, item.media_type)));
        return Ok(vec![item]);
    }
    let parsed = chunks(&item.data).map_err(|e| reject("INVALID_PNG", format!("{}: {e}", item.name)))?;
    let mut out = None;
    if config.strip {
        let (bytes, removed) = strip(&parsed);
        if removed.is_empty() {
            logs.push((LogLevel::Debug, format!("{}: no metadata chunk to strip", item.name)));
        } else {
            logs.push((LogLevel::Info, format!("{}: stripped {}", item.name, removed.join(", "))));
        }
        out = Some(bytes);
    }
    if config.watermark {
        let source = out.as_deref().unwrap_or(&item.data);
        let source_chunks = chunks(source).map_err(|e| reject("INVALID_PNG", format!("{}: {e}", item.name)))?;
        if source_chunks.iter().any(|c| &c.kind == b"acTL") {
            logs.push((LogLevel::Warn, format!("{}: animated PNG left unmarked", item.name)));
        } else {
            let marked = watermark(config, source, &source_chunks, !config.strip)
                .map_err(|e| Rejection { message: format!("{}: {}", item.name, e.message), ..e })?;
            logs.push((LogLevel::Info, format!("{}: watermarked", item.name)));
            out = Some(marked);
        }
    }
    if let Some(bytes) = out {
        item.data = bytes;
    }
    Ok(vec![item])
}

/// Whether a media type is `image/png` (case-insensitive, parameters ignored).
pub fn is_png_type(media_type: &str) -> bool {
    media_type.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("image/png")
}

/// The PNG file signature.
pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// The chunks `strip` removes: text, time and Exif metadata.
pub const METADATA: [&[u8; 4]; 5] = [b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf"];

/// The chunks a re-encode carries over: how to show the colours, and the pixel size.
const CARRIED: [&[u8; 4]; 8] = [b"cHRM", b"gAMA", b"iCCP", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"pHYs"];

/// One chunk: its type and its whole bytes (length, type, data and CRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub kind: [u8; 4],
    pub raw: &'a [u8],
}

/// Split a PNG into its chunks, up to and including `IEND` (anything after it is ignored).
/// CRCs are not checked: chunks are copied as they are.
pub fn chunks(data: &[u8]) -> Result<Vec<Chunk<'_>>, String> {
    if data.len() < 8 || data[..8] != SIGNATURE {
        return Err("not a PNG (bad signature)".into());
    }
    let mut out = Vec::new();
    let mut at = 8;
    loop {
        let Some(header) = data.get(at..at + 8) else {
            return Err("truncated: no IEND chunk".into());
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if len > 0x7FFF_FFFF {
            return Err(format!("chunk length {len} at byte {at} is too large"));
        }
        let kind = [header[4], header[5], header[6], header[7]];
        if !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(format!("bad chunk type at byte {at}"));
        }
        let end = at + 12 + len as usize;
        let Some(raw) = data.get(at..end) else {
            return Err(format!("truncated chunk {} at byte {at}", String::from_utf8_lossy(&kind)));
        };
        if out.is_empty() && &kind != b"IHDR" {
            return Err("the first chunk is not IHDR".into());
        }
        out.push(Chunk { kind, raw });
        at = end;
        if &kind == b"IEND" {
            return Ok(out);
        }
    }
}

/// The PNG without its metadata chunks, and the kinds removed (`tEXt ×2`, ...).
pub fn strip(chunks: &[Chunk<'_>]) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.raw.len()).sum::<usize>() + 8);
    out.extend_from_slice(&SIGNATURE);
    let mut removed: Vec<([u8; 4], usize)> = Vec::new();
    for chunk in chunks {
        if METADATA.contains(&&chunk.kind) {
            match removed.iter_mut().find(|(k, _)| *k == chunk.kind) {
                Some((_, n)) => *n += 1,
                None => removed.push((chunk.kind, 1)),
            }
        } else {
            out.extend_from_slice(chunk.raw);
        }
    }
    let removed = removed
        .into_iter()
        .map(|(k, n)| {
            let kind = String::from_utf8_lossy(&k).into_owned();
            if n == 1 { kind } else { format!("{kind} x{n}") }
        })
        .collect();
    (out, removed)
}

/// Decoding may use at most this many bytes (more → `IMAGE_TOO_LARGE`).
const DECODE_LIMIT: usize = 256 << 20;

/// Draw the mark and re-encode; `keep_metadata` carries the metadata chunks over too.
fn watermark(config: &Config, data: &[u8], source: &[Chunk<'_>], keep_metadata: bool) -> Result<Vec<u8>, Rejection> {
    let decode_err = |e: png::DecodingError| match e {
        png::DecodingError::LimitsExceeded => reject("IMAGE_TOO_LARGE", "the image is too large to watermark"),
        other => reject("INVALID_PNG", format!("cannot decode: {other}")),
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(data), png::Limits { bytes: DECODE_LIMIT });
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(decode_err)?;
    let size = reader.output_buffer_size().ok_or_else(|| reject("IMAGE_TOO_LARGE", "the image is too large"))?;
    if size > DECODE_LIMIT {
        return Err(reject("IMAGE_TOO_LARGE", "the image is too large to watermark"));
    }
    let mut pixels = vec![0; size];
    let info = reader.next_frame(&mut pixels).map_err(decode_err)?;
    pixels.truncate(info.line_size * info.height as usize);
    draw(config, &info, &mut pixels);

    let mut encoded = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut encoded, info.width, info.height);
        encoder.set_color(info.color_type);
        encoder.set_depth(info.bit_depth);
        let encode_err = |e: png::EncodingError| reject("INVALID_PNG", format!("cannot encode: {e}"));
        let mut writer = encoder.write_header().map_err(encode_err)?;
        writer.write_image_data(&pixels).map_err(encode_err)?;
        writer.finish().map_err(encode_err)?;
    }
    // Splice the carried chunks in right after the new IHDR, in their original order.
    let new_chunks = chunks(&encoded).map_err(|e| reject("INVALID_PNG", format!("re-encoded PNG: {e}")))?;
    let mut out = Vec::with_capacity(encoded.len() + 1024);
    out.extend_from_slice(&SIGNATURE);
    out.extend_from_slice(new_chunks[0].raw);
    for chunk in source {
        if CARRIED.contains(&&chunk.kind) || (keep_metadata && METADATA.contains(&&chunk.kind)) {
            out.extend_from_slice(chunk.raw);
        }
    }
    for chunk in &new_chunks[1..] {
        out.extend_from_slice(chunk.raw);
    }
    Ok(out)
}

/// The mark's pixels for an image of `width` × `height`.
pub fn marked(mark: Mark, width: u32, height: u32, x: u32, y: u32) -> bool {
    match mark {
        Mark::Border => {
            let t = 2;
            x < t || y < t || x + t >= width || y + t >= height
        }
        Mark::Corner => {
            let side = (width.min(height) / 16).clamp(2, 64).min(width).min(height);
            let margin = side / 4;
            let (x0, y0) = (width.saturating_sub(margin + side), height.saturating_sub(margin + side));
            (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y)
        }
    }
}

fn draw(config: &Config, info: &png::OutputInfo, pixels: &mut [u8]) {
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        // EXPAND turns indexed images into RGB(A).
        png::ColorType::Indexed => return,
    };
    let wide = info.bit_depth == png::BitDepth::Sixteen;
    let bytes = if wide { 2 } else { 1 };
    let [r, g, b, a] = config.color.map(u32::from);
    let grey = (r * 299 + g * 587 + b * 114) / 1000;
    let colour: &[u32] = if channels >= 3 { &[r, g, b] } else { &[grey] };
    for y in 0..info.height {
        for x in 0..info.width {
            if !marked(config.mark, info.width, info.height, x, y) {
                continue;
            }
            let at = y as usize * info.line_size + x as usize * channels * bytes;
            for (c, sample) in pixels[at..at + channels * bytes].chunks_exact_mut(bytes).enumerate() {
                let old =
                    if wide { u32::from(u16::from_be_bytes([sample[0], sample[1]])) } else { u32::from(sample[0]) };
                let max = if wide { 65535 } else { 255 };
                let new = match colour.get(c) {
                    // A colour channel: blend by the mark's alpha.
                    Some(&v) => (v * max / 255 * a + old * (255 - a)) / 255,
                    // The alpha channel: at least the mark's.
                    None => old.max(a * max / 255),
                };
                if wide {
                    sample.copy_from_slice(&(new as u16).to_be_bytes());
                } else {
                    sample[0] = new as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    fn raw_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        out
    }

    /// Insert raw chunks right after IHDR.
    fn insert_after_ihdr(png: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
        let ihdr_end = 8 + 12 + 13;
        let mut out = png[..ihdr_end].to_vec();
        for chunk in extra {
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&png[ihdr_end..]);
        out
    }

    fn encode(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        text: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, width, height);
            encoder.set_color(color);
            encoder.set_depth(depth);
            if color == png::ColorType::Indexed {
                encoder.set_palette(vec![0, 0, 0, 10, 20, 30, 200, 100, 50, 255, 255, 255]);
            }
            if text {
                encoder.add_text_chunk("prompt".into(), r#"{"3": {"class_type": "KSampler"}}"#.into()).unwrap();
                encoder.add_ztxt_chunk("workflow".into(), "x".repeat(500)).unwrap();
                encoder.add_itxt_chunk("Comment".into(), "made by ComfyUI".into()).unwrap();
            }
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(data).unwrap();
            writer.finish().unwrap();
        }
        out
    }

    /// A 64×48 RGB8 gradient with text chunks, a tIME and an eXIf chunk, and a gAMA chunk.
    fn comfy_png() -> (Vec<u8>, Vec<u8>) {
        let (w, h) = (64u32, 48u32);
        let pixels: Vec<u8> =
            (0..w * h).flat_map(|i| [(i % 251) as u8, (i / 7 % 256) as u8, (i * 3 % 256) as u8]).collect();
        let png = encode(w, h, png::ColorType::Rgb, png::BitDepth::Eight, &pixels, true);
        let png = insert_after_ihdr(
            &png,
            &[
                raw_chunk(b"gAMA", &45455u32.to_be_bytes()),
                raw_chunk(b"tIME", &[0x07, 0xEA, 11, 24, 3, 0, 0]),
                raw_chunk(b"eXIf", b"MM\x00\x2a\x00\x00\x00\x08\x00\x00"),
            ],
        );
        (png, pixels)
    }

    fn decode(data: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut decoder = png::Decoder::new(Cursor::new(data));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.line_size * info.height as usize);
        (info, buf)
    }

    fn kinds(data: &[u8]) -> Vec<String> {
        chunks(data).unwrap().iter().map(|c| String::from_utf8_lossy(&c.kind).into_owned()).collect()
    }

    fn item(name: &str, media_type: &str, data: Vec<u8>) -> Item {
        Item { name: name.into(), media_type: media_type.into(), data }
    }

    fn run(config: &str, item: Item) -> Vec<Item> {
        process(config, item).result.unwrap()
    }

    #[test]
    fn strip_removes_metadata_and_keeps_pixels_and_other_chunks_byte_exact() {
        let (png, pixels) = comfy_png();
        let before = kinds(&png);
        for kind in ["tEXt", "zTXt", "iTXt", "tIME", "eXIf", "gAMA"] {
            assert!(before.contains(&kind.to_owned()), "{kind} in {before:?}");
        }
        let out = run("{}", item("a.png", "image/png", png.clone()));
        assert_eq!(out.len(), 1);
        let after = kinds(&out[0].data);
        assert_eq!(after, ["IHDR", "gAMA", "IDAT", "IEND"]);
        // Every kept chunk is byte-identical to the original one.
        let original = chunks(&png).unwrap();
        for chunk in chunks(&out[0].data).unwrap() {
            assert!(original.contains(&chunk));
        }
        assert_eq!(decode(&out[0].data).1, pixels);
        assert_eq!((out[0].name.as_str(), out[0].media_type.as_str()), ("a.png", "image/png"));
    }

    #[test]
    fn strip_logs_what_it_removed() {
        let (png, _) = comfy_png();
        let out = process("{}", item("a.png", "image/png", png));
        assert_eq!(out.logs, [(LogLevel::Info, "a.png: stripped tIME, eXIf, tEXt, zTXt, iTXt".to_owned())]);
    }

    #[test]
    fn other_media_types_pass_through() {
        let data = b"GIF89a...".to_vec();
        let out = run(r#"{"watermark": true}"#, item("a.gif", "image/gif", data.clone()));
        assert_eq!(out, [item("a.gif", "image/gif", data)]);
        assert!(is_png_type("IMAGE/PNG; charset=binary"));
    }

    #[test]
    fn drop_removes_items_by_name() {
        let (png, _) = comfy_png();
        assert!(run(r#"{"drop": ["preview"]}"#, item("ComfyUI_preview_0001.png", "image/png", png.clone())).is_empty());
        assert!(run(r#"{"drop": ["preview"]}"#, item("x_preview.mp4", "video/mp4", vec![1])).is_empty());
        assert_eq!(run(r#"{"drop": ["preview"]}"#, item("final.png", "image/png", png)).len(), 1);
    }

    #[test]
    fn watermark_draws_a_corner_block_and_keeps_the_rest() {
        let (png, pixels) = comfy_png();
        let out = run(r##"{"watermark": true, "color": "#00FF00"}"##, item("a.png", "image/png", png));
        let (info, marked_pixels) = decode(&out[0].data);
        assert_eq!((info.width, info.height, info.color_type), (64, 48, png::ColorType::Rgb));
        let mut differing = 0;
        for y in 0..48u32 {
            for x in 0..64u32 {
                let at = (y * 64 + x) as usize * 3;
                if marked(Mark::Corner, 64, 48, x, y) {
                    assert_eq!(&marked_pixels[at..at + 3], &[0, 255, 0]);
                    differing += 1;
                } else {
                    assert_eq!(&marked_pixels[at..at + 3], &pixels[at..at + 3]);
                }
            }
        }
        assert_eq!(differing, 3 * 3, "48 / 16 = a 3-pixel block");
        assert_eq!(kinds(&out[0].data).iter().filter(|k| k.as_str() == "gAMA").count(), 1, "gAMA carried over");
        assert!(!kinds(&out[0].data).iter().any(|k| k == "tEXt"));
    }

    #[test]
    fn watermark_without_strip_keeps_the_metadata() {
        let (png, _) = comfy_png();
        let out = run(r#"{"watermark": true, "strip": false}"#, item("a.png", "image/png", png));
        let k = kinds(&out[0].data);
        for kind in ["gAMA", "tEXt", "zTXt", "iTXt", "tIME", "eXIf"] {
            assert!(k.contains(&kind.to_owned()), "{kind} in {k:?}");
        }
    }

    #[test]
    fn border_mark_with_alpha_on_16_bit_grey_and_palette_images() {
        let (w, h) = (10u32, 8u32);
        let grey16: Vec<u8> = (0..w * h).flat_map(|i| ((i * 500) as u16).to_be_bytes()).collect();
        let png16 = encode(w, h, png::ColorType::Grayscale, png::BitDepth::Sixteen, &grey16, false);
        let out =
            run(r##"{"watermark": true, "mark": "border", "color": "#FFFFFF80"}"##, item("g.png", "image/png", png16));
        let (info, px) = decode(&out[0].data);
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Grayscale, png::BitDepth::Sixteen));
        let sample =
            |x: u32, y: u32| u16::from_be_bytes([px[((y * w + x) * 2) as usize], px[((y * w + x) * 2 + 1) as usize]]);
        let orig = |x: u32, y: u32| ((y * w + x) * 500) as u16;
        assert_eq!(sample(5, 4), orig(5, 4), "inside untouched");
        let blended = (65535u32 * 128 + u32::from(orig(0, 0)) * 127) / 255;
        assert_eq!(u32::from(sample(0, 0)), blended, "half-transparent white over the border");
        assert!(sample(9, 7) > orig(9, 7));

        let indices: Vec<u8> = (0..w * h).map(|i| (i % 4) as u8).collect();
        let pal = encode(w, h, png::ColorType::Indexed, png::BitDepth::Eight, &indices, false);
        let out = run(r#"{"watermark": true, "mark": "border"}"#, item("p.png", "image/png", pal));
        let (info, px) = decode(&out[0].data);
        assert_eq!(info.color_type, png::ColorType::Rgb, "palette images come out as RGB");
        assert_eq!(&px[0..3], &[255, 0, 255]);
        let at = ((4 * w + 5) * 3) as usize;
        let palette = [[0u8, 0, 0], [10, 20, 30], [200, 100, 50], [255, 255, 255]];
        assert_eq!(&px[at..at + 3], &palette[((4 * w + 5) % 4) as usize]);
    }

    #[test]
    fn bad_pngs_and_configs_are_reported() {
        let out = process("{}", item("a.png", "image/png", b"\x89PNG\r\n\x1a\nnope".to_vec()));
        assert_eq!(out.result.unwrap_err().code, "INVALID_PNG");
        let out = process("{}", item("a.png", "image/png", b"JFIF".to_vec()));
        assert_eq!(out.result.unwrap_err().code, "INVALID_PNG");
        let (png, _) = comfy_png();
        let truncated = png[..png.len() - 6].to_vec();
        assert_eq!(process("{}", item("a.png", "image/png", truncated)).result.unwrap_err().code, "INVALID_PNG");
        for bad in [r#"{"color": "red"}"#, r#"{"mark": "x"}"#, r#"{"watermark": 1}"#, r#"{"drop": "x"}"#, "[]"] {
            assert_eq!(process(bad, item("a.png", "image/png", png.clone())).result.unwrap_err().code, "BAD_CONFIG");
        }
        assert_eq!(parse_color("#11223344"), Some([0x11, 0x22, 0x33, 0x44]));
    }

    #[test]
    fn bytes_after_iend_are_dropped() {
        let (png, _) = comfy_png();
        let mut trailing = png.clone();
        trailing.extend_from_slice(b"garbage");
        let out = run(r#"{"strip": false, "watermark": false}"#, item("a.png", "image/png", trailing.clone()));
        assert_eq!(out[0].data, trailing, "strip off and no watermark: untouched");
        let out = run("{}", item("a.png", "image/png", trailing));
        assert!(out[0].data.ends_with(&raw_chunk(b"IEND", &[])));
    }
}
