//! Real pixels for the native nodes: an RGB image batch type, PNG encode/decode (with
//! ComfyUI's tEXt metadata chunks), invert, nearest-neighbour scaling, and deterministic
//! synthetic images for the model nodes (pixels derived from a seed hash).

use std::io::Cursor;

/// A batch of RGB8 images of one size (ComfyUI's `IMAGE` tensor `[B, H, W, 3]`).
#[derive(Debug, Clone)]
pub struct Img {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// One RGB8 buffer per batch item.
    pub frames: Vec<Vec<u8>>,
}

/// A batch of 8-bit masks (`MASK` `[B, H, W]`).
#[derive(Debug, Clone)]
pub struct Mask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// One buffer per batch item.
    pub frames: Vec<Vec<u8>>,
}

impl Img {
    /// A solid colour batch (`EmptyImage`, colour `0xRRGGBB`).
    pub fn solid(width: u32, height: u32, batch: u32, color: u32) -> Img {
        let px = [(color >> 16) as u8, (color >> 8) as u8, color as u8];
        // `repeat` copies by doubling: fast even in unoptimised builds.
        let frame = px.repeat(width as usize).repeat(height as usize);
        Img { width, height, frames: vec![frame; batch.max(1) as usize] }
    }

    /// A deterministic pattern whose pixels depend on `seed` (one frame per batch item).
    pub fn synthetic(width: u32, height: u32, batch: u32, seed: u64) -> Img {
        let w = width.max(1) as usize;
        let h = height.max(1) as usize;
        let frames = (0..batch.max(1))
            .map(|b| {
                let s = seed.wrapping_add(u64::from(b).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let bytes = s.to_le_bytes();
                let mut f = Vec::with_capacity(w * h * 3);
                for y in 0..h {
                    let gy = (y * 255 / h) as u8;
                    for x in 0..w {
                        let gx = (x * 255 / w) as u8;
                        let check = if ((x >> 4) ^ (y >> 4)) & 1 == 1 { bytes[6] >> 2 } else { 0 };
                        f.push(bytes[0].wrapping_add(gx).wrapping_add(check));
                        f.push(bytes[1].wrapping_add(gy));
                        f.push(bytes[2].wrapping_add(gx / 2).wrapping_add(gy / 2) ^ bytes[3]);
                    }
                }
                f
            })
            .collect();
        Img { width: w as u32, height: h as u32, frames }
    }

    /// `ImageInvert`.
    pub fn invert(&self) -> Img {
        Img {
            width: self.width,
            height: self.height,
            frames: self.frames.iter().map(|f| f.iter().map(|v| 255 - v).collect()).collect(),
        }
    }

    /// Nearest-neighbour resize (every `upscale_method` is rendered this way).
    pub fn resize(&self, width: u32, height: u32) -> Img {
        let (w, h) = (width.max(1) as usize, height.max(1) as usize);
        let (sw, sh) = (self.width.max(1) as usize, self.height.max(1) as usize);
        let frames = self
            .frames
            .iter()
            .map(|src| {
                let mut out = Vec::with_capacity(w * h * 3);
                for y in 0..h {
                    let sy = (y * sh / h).min(sh - 1);
                    for x in 0..w {
                        let sx = (x * sw / w).min(sw - 1);
                        let i = (sy * sw + sx) * 3;
                        out.extend_from_slice(src.get(i..i + 3).unwrap_or(&[0, 0, 0]));
                    }
                }
                out
            })
            .collect();
        Img { width: w as u32, height: h as u32, frames }
    }

    /// Centre crop to the aspect ratio of `width`×`height` (`crop: "center"`).
    pub fn center_crop_to_aspect(&self, width: u32, height: u32) -> Img {
        let (sw, sh) = (u64::from(self.width), u64::from(self.height));
        let (tw, th) = (u64::from(width.max(1)), u64::from(height.max(1)));
        let (cw, ch) = if sw * th > sh * tw { (sh * tw / th, sh) } else { (sw, sw * th / tw) };
        let (x0, y0) = ((sw - cw) / 2, (sh - ch) / 2);
        let frames = self
            .frames
            .iter()
            .map(|src| {
                let mut out = Vec::with_capacity((cw * ch * 3) as usize);
                for y in y0..y0 + ch {
                    let start = ((y * sw + x0) * 3) as usize;
                    let end = start + (cw * 3) as usize;
                    out.extend_from_slice(src.get(start..end).unwrap_or(&[]));
                }
                out
            })
            .collect();
        Img { width: cw as u32, height: ch as u32, frames }
    }
}

impl Mask {
    /// ComfyUI's LoadImage mask for an image without alpha: 64×64 zeros.
    pub fn empty() -> Mask {
        Mask { width: 64, height: 64, frames: vec![vec![0; 64 * 64]] }
    }
}

/// Encode one RGB8 frame as PNG with `(keyword, text)` tEXt chunks.
pub fn encode_png(
    width: u32,
    height: u32,
    rgb: &[u8],
    texts: &[(String, String)],
    fast: bool,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(if fast { png::Compression::Fastest } else { png::Compression::Fast });
        for (k, v) in texts {
            enc.add_text_chunk(k.clone(), v.clone())?;
        }
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
        w.finish()?;
    }
    Ok(out)
}

/// Encode a grey-alpha style PNG whose alpha is `alpha` and colour black (`/view channel=a`).
pub fn encode_alpha_png(width: u32, height: u32, alpha: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    encode_rgba_png(width, height, &vec![0; alpha.len() * 3], alpha)
}

/// A decoded PNG: RGB pixels plus the alpha channel if there was one.
pub struct Decoded {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// RGB8 pixels.
    pub rgb: Vec<u8>,
    /// Alpha (8-bit) if the image had transparency.
    pub alpha: Option<Vec<u8>>,
}

/// Decode a PNG of any colour type / depth into RGB8 (+ alpha).
pub fn decode_png(bytes: &[u8]) -> Option<Decoded> {
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut buf).ok()?;
    buf.truncate(info.buffer_size());
    let n = info.width as usize * info.height as usize;
    let (rgb, alpha) = match info.color_type {
        png::ColorType::Rgb => (buf, None),
        png::ColorType::Rgba => {
            let mut rgb = Vec::with_capacity(n * 3);
            let mut a = Vec::with_capacity(n);
            for px in buf.chunks_exact(4) {
                rgb.extend_from_slice(&px[..3]);
                a.push(px[3]);
            }
            (rgb, Some(a))
        }
        png::ColorType::Grayscale => (buf.iter().flat_map(|&g| [g, g, g]).collect(), None),
        png::ColorType::GrayscaleAlpha => {
            let mut rgb = Vec::with_capacity(n * 3);
            let mut a = Vec::with_capacity(n);
            for px in buf.chunks_exact(2) {
                rgb.extend_from_slice(&[px[0], px[0], px[0]]);
                a.push(px[1]);
            }
            (rgb, Some(a))
        }
        png::ColorType::Indexed => return None,
    };
    if rgb.len() != n * 3 {
        return None;
    }
    Some(Decoded { width: info.width, height: info.height, rgb, alpha })
}

/// Encode RGB8 pixels plus an alpha plane as an RGBA PNG (`/upload/mask`).
pub fn encode_rgba_png(width: u32, height: u32, rgb: &[u8], alpha: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header()?;
        let mut data = Vec::with_capacity(alpha.len() * 4);
        for (px, a) in rgb.chunks_exact(3).zip(alpha) {
            data.extend_from_slice(&[px[0], px[1], px[2], *a]);
        }
        w.write_image_data(&data)?;
        w.finish()?;
    }
    Ok(out)
}
