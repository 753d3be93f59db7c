//! Outputs of every kind and how they are downloaded: a workflow writing a PNG and a
//! non-image file (`.latent`, safetensors), `Range` (206, suffix, open-ended, 416,
//! `If-Range`), `HEAD`, `?format=base64` and `GET /jobs/:id?include=base64`.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim, get_json};

async fn job_with_two_kinds_of_output(gw: &Gateway) -> Value {
    let body = json!({
        "id": "png_and_latent",
        "workflow": {
            "1": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{size}}", "height": "{{size}}", "batch_size": 1}},
            "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/gw"}},
            "3": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "gw_png"}}
        },
        "defaults": {"size": 64}
    });
    let (status, v) = support::post_json(&format!("{}/workflows", gw.url()), &body).await;
    assert_eq!(status, 201, "{v}");
    let id = gw.submit_ok(json!({"workflowId": "png_and_latent", "inputs": {}})).await;
    let done = gw.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done
}

fn output<'a>(job: &'a Value, media_type: &str) -> &'a Value {
    job["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["mediaType"] == media_type)
        .unwrap_or_else(|| panic!("no {media_type} output in {job}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_of_every_kind_are_stored_and_downloadable_in_ranges() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let job = job_with_two_kinds_of_output(&gw).await;
    assert_eq!(job["outputs"].as_array().unwrap().len(), 2, "{job}");
    let png = output(&job, "image/png");
    let latent = output(&job, "application/octet-stream");
    assert!(latent["name"].as_str().unwrap().ends_with(".latent"), "{latent}");

    let http = reqwest::Client::new();
    let url = format!("{}{}", gw.url(), latent["url"].as_str().unwrap());
    let full = http.get(&url).send().await.unwrap();
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let bytes = full.bytes().await.unwrap().to_vec();
    let size = bytes.len() as u64;
    assert_eq!(size, latent["size"].as_u64().unwrap());
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), latent["hash"].as_str().unwrap());
    // It is the safetensors file ComfyUI's SaveLatent writes: header length + JSON header.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["latent_tensor"]["shape"], json!([1, 4, 8, 8]), "{header}");

    let get_range = |range: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(&url).header("range", range).send().await.unwrap();
            let status = r.status().as_u16();
            let content_range = r.headers().get("content-range").map(|v| v.to_str().unwrap().to_string());
            (status, content_range, r.bytes().await.unwrap().to_vec())
        }
    };
    let (status, cr, body) = get_range("bytes=0-7").await;
    assert_eq!((status, cr.as_deref()), (206, Some(format!("bytes 0-7/{size}").as_str())));
    assert_eq!(body, bytes[..8]);
    let (status, cr, body) = get_range("bytes=-16").await;
    assert_eq!((status, cr), (206, Some(format!("bytes {}-{}/{size}", size - 16, size - 1))));
    assert_eq!(body, bytes[bytes.len() - 16..]);
    let (status, _, body) = get_range("bytes=100-").await;
    assert_eq!(status, 206);
    assert_eq!(body, bytes[100..]);
    let (status, cr, body) = get_range("bytes=99999999-").await;
    assert_eq!((status, cr), (416, Some(format!("bytes */{size}"))));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "RANGE_NOT_SATISFIABLE");
    let (status, _, body) = get_range("bytes=0-1,4-5").await;
    assert_eq!((status, body.len() as u64), (200, size), "multi-range falls back to the whole file");

    // If-Range with another validator: the whole (changed) file, not a slice.
    let r = http.get(&url).header("range", "bytes=0-7").header("if-range", "\"other\"").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .get(&url)
        .header("range", "bytes=0-7")
        .header("if-range", format!("\"{}\"", latent["hash"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);

    // HEAD: headers, no body.
    let r = http.head(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"].to_str().unwrap(), size.to_string());
    assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{}\"", latent["hash"].as_str().unwrap()));
    assert!(r.bytes().await.unwrap().is_empty());

    // ?format=base64
    let (status, v) = get_json(&format!("{url}?format=base64")).await;
    assert_eq!(status, 200);
    assert_eq!(v["encoding"], "base64");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap(), bytes);
    let (status, v) = get_json(&format!("{url}?format=gzip")).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")));

    // GET /jobs/:id?include=base64 inlines both outputs.
    let job_id = job["jobId"].as_str().unwrap();
    let (status, v) = get_json(&format!("{}/jobs/{job_id}?include=base64", gw.url())).await;
    assert_eq!(status, 200);
    for o in v["outputs"].as_array().unwrap() {
        assert_eq!(o["inlined"], true);
        let data = base64::engine::general_purpose::STANDARD.decode(o["base64"].as_str().unwrap()).unwrap();
        assert_eq!(blake3::hash(&data).to_hex().as_str(), o["hash"].as_str().unwrap());
    }
    let (status, _) = get_json(&format!("{}/jobs/{job_id}?include=everything", gw.url())).await;
    assert_eq!(status, 400);

    // The PNG next to it downloads as an image.
    let r = http.get(format!("{}{}", gw.url(), png["url"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
}

/// PreviewImage (temp) files become outputs only when the workflow asks (`keepPreviews`);
/// a workflow that only previews, without asking, fails with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_are_kept_only_when_the_workflow_asks() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": "{{color}}"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kept"}}
    });
    let url = format!("{}/workflows", gw.url());
    let (status, v) =
        support::post_json(&url, &json!({"id": "previews", "workflow": graph, "defaults": {"color": 1}})).await;
    assert_eq!((status, v["keepPreviews"].as_bool()), (201, Some(false)), "{v}");
    let run = |color: i64| {
        let gw = &gw;
        async move {
            let id = gw.submit_ok(json!({"workflowId": "previews", "inputs": {"color": color}})).await;
            gw.wait_terminal(&id, Duration::from_secs(60)).await
        }
    };
    let done = run(2).await;
    let names: Vec<&str> = done["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 1, "only the saved image: {names:?}");
    assert!(names[0].starts_with("kept_"), "{names:?}");

    let r = reqwest::Client::new()
        .put(format!("{url}/previews"))
        .json(&json!({"workflow": graph, "defaults": {"color": 1}, "keepPreviews": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let done = run(3).await;
    let outputs = done["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "the preview is kept too: {done}");
    assert!(outputs.iter().any(|o| o["name"].as_str().unwrap().starts_with("ComfyUI_temp_")), "{done}");

    let only_preview = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 5}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    });
    let (status, _) = support::post_json(&url, &json!({"id": "only_preview", "workflow": only_preview})).await;
    assert_eq!(status, 201);
    let id = gw.submit_ok(json!({"workflowId": "only_preview", "inputs": {}})).await;
    let done = gw.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!((done["status"].as_str(), done["error"]["code"].as_str()), (Some("failed"), Some("COMFYUI_NODE_ERROR")));
    assert!(done["error"]["message"].as_str().unwrap().contains("keepPreviews"), "{done}");
}
