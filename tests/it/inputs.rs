//! Image inputs end to end: an img2img workflow (LoadImage → ImageInvert → SaveImage) fed by
//! URL (served by a tiny HTTP server on 127.0.0.1), data URI, bare base64 and multipart; the
//! output is the inverted input. URLs to private addresses (directly or by redirect), wrong
//! magic bytes and oversize images are 400 `VALIDATION_ERROR` naming `/inputs/image`.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, Gateway, Sim, post_raw};

const WAIT: Duration = Duration::from_secs(60);
const WIDTH: u32 = 24;
const HEIGHT: u32 = 16;

/// A PNG (RGB8) with a gradient, so an inversion is visible in every pixel.
fn test_png(width: u32, height: u32, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            pixels.extend_from_slice(&[(x * 7) as u8 ^ seed, (y * 13) as u8, (x + y) as u8 * 3]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
    (out, pixels)
}

/// A PNG of noise, which does not compress: about `3 * width * height` bytes.
fn noise_png(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
    out
}

/// Decode a PNG to RGB8 pixels.
fn decode_rgb(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let data = &buf[..info.buffer_size()];
    let rgb = match info.color_type {
        png::ColorType::Rgb => data.to_vec(),
        png::ColorType::Rgba => data.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        other => panic!("unexpected color type {other:?}"),
    };
    (info.width, info.height, rgb)
}

/// A minimal HTTP server on 127.0.0.1: `/img.png` → the PNG, `/redirect?to=URL` → 302 to it.
async fn serve(png: Vec<u8>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let png = png.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let resp = if path == "/img.png" {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        png.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&png);
                    r
                } else if let Some(to) = path.strip_prefix("/redirect?to=") {
                    format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .into_bytes()
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
                };
                let _ = conn.write_all(&resp).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

/// Wait for the job, download its one output and check it is `pixels` inverted.
async fn assert_inverted(gw: &Gateway, job: &str, pixels: &[u8]) {
    let done = gw.wait_terminal(job, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", gw.proc_.log());
    let url = done["outputs"][0]["url"].as_str().unwrap();
    let bytes = reqwest::get(format!("{}{url}", gw.url())).await.unwrap().bytes().await.unwrap();
    let (w, h, rgb) = decode_rgb(&bytes);
    assert_eq!((w, h), (WIDTH, HEIGHT));
    let inverted: Vec<u8> = pixels.iter().map(|p| 255 - p).collect();
    assert!(rgb == inverted, "job {job}: the output is the inverted input");
}

fn multipart(boundary: &str, request: &Value, part_name: &str, file: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\ncontent-type: application/json\r\n\r\n{request}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"{part_name}\"; filename=\"in.png\"\r\ncontent-type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

fn assert_field_error(status: u16, v: &Value, what: &str) {
    assert_eq!(status, 400, "{what}: {v}");
    assert_eq!(v["error"]["code"], "VALIDATION_ERROR", "{what}: {v}");
    assert_eq!(v["error"]["details"][0]["path"], "/inputs/image", "{what}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_by_url_data_uri_base64_and_multipart_come_out_inverted() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("URL_INPUT_ALLOW_HOSTS", "127.0.0.1")]).await;
    support::register_invert(&gw).await;
    let (png_a, pixels_a) = test_png(WIDTH, HEIGHT, 0);
    let (png_b, pixels_b) = test_png(WIDTH, HEIGHT, 0x55);
    let port = serve(png_a.clone()).await;

    // By URL, through an allowed redirect.
    let url = format!("http://127.0.0.1:{port}/redirect?to=http://127.0.0.1:{port}/img.png");
    let job = gw.submit_ok(json!({"workflowId": "invert", "inputs": {"image": url}})).await;
    assert_inverted(&gw, &job, &pixels_a).await;
    let record = gw.job(&job).await;
    assert_eq!(record["inputs"]["image"], format!("gw/{job}/image.png"), "the template got the uploaded name");

    // By data URI and by bare base64 (the same image again: past the result cache, which
    // would answer it, to exercise each upload path).
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png_b);
    let data_uri = format!("data:image/png;base64,{b64}");
    let job = gw.submit_ok(json!({"workflowId": "invert", "inputs": {"image": data_uri}})).await;
    assert_inverted(&gw, &job, &pixels_b).await;
    let job = gw.submit_ok(json!({"workflowId": "invert", "inputs": {"image": b64}, "cache": false})).await;
    assert_inverted(&gw, &job, &pixels_b).await;

    // By multipart, the part named after the input or `inputs.<name>`.
    for part in ["image", "inputs.image"] {
        let boundary = "XyZ-boundary-123";
        let body = multipart(boundary, &json!({"workflowId": "invert", "inputs": {}, "cache": false}), part, &png_a);
        let (status, v) =
            post_raw(&format!("{}/jobs", gw.url()), &format!("multipart/form-data; boundary={boundary}"), body).await;
        assert_eq!(status, 202, "multipart ({part}): {v}");
        assert_inverted(&gw, v["jobId"].as_str().unwrap(), &pixels_a).await;
    }

    // A redirect from the allowed host to a metadata address is refused.
    let url = format!("http://127.0.0.1:{port}/redirect?to=http://169.254.169.254/latest/meta-data");
    let (status, v) = gw.submit(json!({"workflowId": "invert", "inputs": {"image": url}})).await;
    assert_field_error(status, &v, "redirect to metadata");
    assert!(v["error"]["message"].as_str().unwrap().contains("169.254.169.254"), "{v}");
    // ... and so is one to a loopback address that is not allowed.
    let url = format!("http://127.0.0.1:{port}/redirect?to=http://127.0.0.2:{port}/img.png");
    let (status, v) = gw.submit(json!({"workflowId": "invert", "inputs": {"image": url}})).await;
    assert_field_error(status, &v, "redirect to 127.0.0.2");
    // A missing file is a 400 too, not a 500.
    let (status, v) = gw
        .submit(json!({"workflowId": "invert", "inputs": {"image": format!("http://127.0.0.1:{port}/nope.png")}}))
        .await;
    assert_field_error(status, &v, "404 at the source");

    let stored = std::fs::read_dir(sim.data_dir.join("input/gw")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 5, "each job uploaded under its own subfolder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_refused_urls_wrong_bytes_and_oversize_are_400_naming_the_field() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_INPUT_IMAGE_BYTES", "4096")]).await;
    support::register_invert(&gw).await;
    let (png, _) = test_png(WIDTH, HEIGHT, 0);
    let port = serve(png.clone()).await;

    let url = format!("http://127.0.0.1:{port}/img.png");
    let (status, v) = gw.submit(json!({"workflowId": "invert", "inputs": {"image": url}})).await;
    assert_field_error(status, &v, "loopback not allowed");
    assert!(v["error"]["message"].as_str().unwrap().contains("loopback"), "{v}");

    let not_an_image = base64::engine::general_purpose::STANDARD.encode(b"GIF-ish? no: just text pretending");
    let (status, v) = gw.submit(json!({"workflowId": "invert", "inputs": {"image": not_an_image}})).await;
    assert_field_error(status, &v, "wrong magic bytes");

    let (status, v) = gw.submit(json!({"workflowId": "invert", "inputs": {"image": "%%% not base64 %%%"}})).await;
    assert_field_error(status, &v, "bad base64");

    let big = noise_png(64, 64);
    assert!(big.len() > 4096);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&big);
    let (status, v) = gw.submit(json!({"workflowId": "invert", "inputs": {"image": b64}})).await;
    assert_field_error(status, &v, "oversize base64");
    assert!(v["error"]["message"].as_str().unwrap().contains("MAX_INPUT_IMAGE_BYTES"), "{v}");

    let boundary = "b0undary";
    let body = multipart(boundary, &json!({"workflowId": "invert"}), "image", b"\x00\x01not a png");
    let (status, v) =
        post_raw(&format!("{}/jobs", gw.url()), &format!("multipart/form-data; boundary={boundary}"), body).await;
    assert_field_error(status, &v, "multipart wrong magic");
    let body = multipart(boundary, &json!({"workflowId": "invert"}), "image", &big);
    let (status, v) =
        post_raw(&format!("{}/jobs", gw.url()), &format!("multipart/form-data; boundary={boundary}"), body).await;
    assert_field_error(status, &v, "multipart oversize");
}

/// ComfyUI crashes mid-job and comes back without the uploaded file: the resubmission
/// uploads the image again before the prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_uploaded_again_when_a_lost_prompt_is_resubmitted() {
    let dir = support::tempdir();
    let mut sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    support::register_invert(&gw).await;
    let (png, pixels) = test_png(WIDTH, HEIGHT, 0x33);
    sim.faults(json!({"hang": 1})).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let job = gw.submit_ok(json!({"workflowId": "invert", "inputs": {"image": b64}})).await;
    support::eventually_within(WAIT, "the prompt starts", async || {
        (!support::executions(&sim.executions().await).is_empty()).then_some(())
    })
    .await;
    assert!(sim.data_dir.join(format!("input/gw/{job}/image.png")).is_file(), "uploaded before the prompt");
    sim.proc_.kill9();
    std::fs::remove_dir_all(sim.data_dir.join("input/gw")).unwrap();
    sim.restart().await;
    assert_inverted(&gw, &job, &pixels).await;
    assert!(gw.job(&job).await["attempts"].as_u64().unwrap() >= 2, "resubmitted");
}
