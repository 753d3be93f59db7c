//! Replays the captured ComfyUI 0.3.64 scenarios (`tests/it/captures/`) against the
//! in-process simulator and compares the answers field by field: keys, JSON types
//! (int vs float included) and the values that are deterministic. Also covers the
//! simulator's own `/sim/executions` record and every fault that works in-process.

use comfyui_gateway::comfy::sim::{SimConfig, serve};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::support::{eventually_within, poll_within};

/// Generous upper bound for anything the tests wait for.
const WAIT: Duration = Duration::from_secs(20);

struct Sim {
    addr: SocketAddr,
    base: String,
    http: reqwest::Client,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_with(config: SimConfig) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let config = SimConfig { port: addr.port(), ..config };
    let handle = tokio::spawn(serve(listener, config, token.clone()));
    Sim {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        token,
        handle,
    }
}

async fn start(dir: &Path, node_delay_ms: u64) -> Sim {
    start_with(SimConfig { data_dir: dir.to_path_buf(), node_delay_ms, ..SimConfig::default() }).await
}

impl Sim {
    async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(self.url(path)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post_raw(&self, path: &str, body: &str, content_type: &str) -> (u16, String) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn submit(&self, prompt: &Value, client_id: &str) -> String {
        let (status, body) = self.post("/prompt", &json!({"prompt": prompt, "client_id": client_id})).await;
        assert_eq!(status, 200, "{body}");
        body["prompt_id"].as_str().unwrap().to_string()
    }

    async fn ws(&self, client_id: Option<&str>) -> Ws {
        let url = match client_id {
            Some(c) => format!("ws://{}/ws?clientId={c}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        };
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut ws = Ws { stream };
        let greeting = ws.next().await.unwrap();
        assert_eq!(greeting["type"], "status");
        ws
    }

    async fn wait_history(&self, prompt_id: &str) -> Value {
        eventually_within(WAIT, format!("history for {prompt_id}"), async || {
            let (_, h) = self.get(&format!("/history/{prompt_id}")).await;
            h.get(prompt_id).cloned().ok_or(h)
        })
        .await
    }
}

struct Ws {
    stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Ws {
    /// Next text message (binary frames skipped); `None` when the socket ends.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next()).await.expect("websocket message timeout")?;
            match msg {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Binary(_)) | Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
                Ok(_) | Err(_) => return None,
            }
        }
    }

    /// All messages up to and including `executing {node: null, prompt_id}`.
    async fn until_done(&mut self, prompt_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "job {prompt_id} never finished");
            let m = self.next().await.expect("socket closed before the job finished");
            let done = m["type"] == "executing" && m["data"]["node"].is_null() && m["data"]["prompt_id"] == prompt_id;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Messages until one matches `pred` (returned last).
    async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            assert!(out.len() < 10_000, "no matching message among {} received", out.len());
            let m = self.next().await.expect("socket closed");
            let hit = pred(&m);
            out.push(m);
            if hit {
                return out;
            }
        }
    }
}

fn capture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/captures").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn types(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| m["type"].as_str().unwrap_or("").to_string()).collect()
}

/// Same keys, same JSON types (int vs float distinguished), same array lengths.
fn assert_shape(actual: &Value, expected: &Value, path: &str) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            let mut ak: Vec<&String> = a.keys().collect();
            let mut ek: Vec<&String> = e.keys().collect();
            ak.sort();
            ek.sort();
            assert_eq!(ak, ek, "keys differ at {path}");
            for (k, v) in a {
                assert_shape(v, &e[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "array length differs at {path}");
            for (i, (x, y)) in a.iter().zip(e).enumerate() {
                assert_shape(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            assert_eq!(a.is_f64(), e.is_f64(), "int/float differs at {path}: {a} vs {e}");
        }
        (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) | (Value::Null, Value::Null) => {}
        _ => panic!("type differs at {path}: {actual} vs {expected}"),
    }
}

/// Messages of one socket tag in a capture, greeting excluded.
fn captured_ws(cap: &Value, tag: &str) -> Vec<Value> {
    cap["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "ws_text" && e["tag"] == tag)
        .map(|e| e["message"].clone())
        .filter(|m| m["data"].get("sid").is_none())
        .collect()
}

fn captured_http(cap: &Value, method: &str, path_prefix: &str) -> Vec<Value> {
    cap["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "http"
                && e["request"]["method"] == method
                && e["request"]["path"].as_str().is_some_and(|p| p.starts_with(path_prefix))
        })
        .cloned()
        .collect()
}

fn basic_prompt(prefix: &str, color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}
    })
}

/// A chain of model nodes (delayed, with progress) ending in SaveImage.
fn slow_prompt(prefix: &str, color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "10": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 5.0}},
        "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 31, "sigma": 5.0}},
        "12": {"class_type": "ImageBlur", "inputs": {"image": ["11", 0], "blur_radius": 31, "sigma": 5.0}},
        "99": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": prefix}}
    })
}

#[tokio::test]
async fn sim_basic_run_matches_capture_01() {
    let cap = capture("01_basic_run.json");
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let client = "f2d228c4fd3641118583298e22fdc3d2";
    let mut ws = sim.ws(Some(client)).await;
    let mut observer = sim.ws(Some("observer-eaa443bb")).await;

    let req = captured_http(&cap, "POST", "/prompt")[0]["request"]["json"].clone();
    let (status, body) = sim.post("/prompt", &req).await;
    assert_eq!(status, 200);
    assert_eq!(body["number"], 0, "fresh server counts from 0");
    assert_eq!(body["node_errors"], json!({}));
    let pid = body["prompt_id"].as_str().unwrap().to_string();
    assert_eq!(pid.len(), 36, "uuid4 prompt id");

    let got = ws.until_done(&pid).await;
    let expected = captured_ws(&cap, "ws");
    assert_eq!(types(&got), types(&expected));
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_shape(g, e, &format!("ws[{i}]"));
        // Everything except ids and timestamps is deterministic.
        let mut g = g.clone();
        let mut e = e.clone();
        for m in [&mut g, &mut e] {
            strip_volatile(m);
        }
        assert_eq!(g, e, "message {i}");
    }
    // The observer only sees broadcasts: status messages.
    let obs = observer.until(|m| m["data"]["status"]["exec_info"]["queue_remaining"] == 0).await;
    assert!(obs.iter().all(|m| m["type"] == "status"));

    // History entry shape and values.
    let cap_hist = captured_http(&cap, "GET", "/history/")[0]["response"]["body"].clone();
    let cap_entry = cap_hist.as_object().unwrap().values().next().unwrap().clone();
    let (_, hist) = sim.get(&format!("/history/{pid}")).await;
    let entry = hist[&pid].clone();
    assert_shape(&entry, &cap_entry, "history");
    assert_eq!(entry["outputs"], cap_entry["outputs"]);
    assert_eq!(entry["meta"], cap_entry["meta"]);
    assert_eq!(entry["prompt"][2], cap_entry["prompt"][2]);
    assert_eq!(entry["prompt"][3], cap_entry["prompt"][3]);
    assert_eq!(entry["prompt"][4], cap_entry["prompt"][4]);
    // `/history?max_items=1` returns the same entry.
    let (_, last) = sim.get("/history?max_items=1").await;
    assert_eq!(last[&pid], entry);
    // Unknown id: `{}`.
    assert_eq!(sim.get("/history/does-not-exist").await, (200, json!({})));

    // /view rules.
    for e in captured_http(&cap, "GET", "/") {
        let path = e["request"]["path"].as_str().unwrap();
        if !path.ends_with("/view") {
            continue;
        }
        let params: Vec<(String, String)> = e["request"]["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let r = sim.http.get(sim.url(path)).query(&params).send().await.unwrap();
        let want = e["response"]["status"].as_u64().unwrap() as u16;
        assert_eq!(r.status().as_u16(), want, "{params:?}");
        if want == 200 {
            let headers = &e["response"]["headers"];
            assert_eq!(
                r.headers()["content-disposition"].to_str().unwrap(),
                headers["Content-Disposition"].as_str().unwrap()
            );
            let has_preview = params.iter().any(|(k, _)| k == "preview");
            if !has_preview {
                assert_eq!(r.headers()["content-type"].to_str().unwrap(), headers["Content-Type"]);
            }
            let bytes = r.bytes().await.unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        } else {
            assert!(r.bytes().await.unwrap().is_empty());
        }
    }
    sim.stop().await;
}

fn strip_volatile(m: &mut Value) {
    if let Some(d) = m.get_mut("data").and_then(Value::as_object_mut) {
        d.remove("timestamp");
        d.remove("prompt_id");
        if let Some(nodes) = d.get_mut("nodes").and_then(Value::as_object_mut) {
            for n in nodes.values_mut() {
                if let Some(n) = n.as_object_mut() {
                    n.remove("prompt_id");
                }
            }
        }
    }
}

#[tokio::test]
async fn sim_cached_rerun_matches_capture_02() {
    let cap = capture("02_cache.json");
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let client = "dbf576608ac54d1f8d33c85af9630351";
    let mut ws = sim.ws(Some(client)).await;
    let prompt = basic_prompt("gw_test", 16_711_680);

    let first = sim.submit(&prompt, client).await;
    ws.until_done(&first).await;
    let first_entry = sim.wait_history(&first).await;

    // Identical prompt: fully cached, replays the old filename.
    let second = sim.submit(&prompt, client).await;
    let got = ws.until_done(&second).await;
    let all = captured_ws(&cap, "ws");
    let end = all.iter().position(|m| m["type"] == "executing" && m["data"]["node"].is_null()).unwrap();
    let expected = &all[..=end];
    assert_eq!(types(&got), types(expected));
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_shape(g, e, &format!("cached[{i}]"));
        let (mut g, mut e) = (g.clone(), e.clone());
        strip_volatile(&mut g);
        strip_volatile(&mut e);
        assert_eq!(g, e, "cached message {i}");
    }
    let second_entry = sim.wait_history(&second).await;
    assert_eq!(second_entry["outputs"], first_entry["outputs"]);
    assert_eq!(second_entry["status"]["messages"][1][1]["nodes"], json!(["1", "2"]));

    // Changed prefix: node 1 cached, node 2 runs.
    let third = sim.submit(&basic_prompt("gw_test_b", 16_711_680), client).await;
    let got = ws.until_done(&third).await;
    let cached = got.iter().find(|m| m["type"] == "execution_cached").unwrap();
    assert_eq!(cached["data"]["nodes"], json!(["1"]));
    let executed = got.iter().find(|m| m["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["output"]["images"][0]["filename"], "gw_test_b_00001_.png");

    // Custom prompt_id, extra_data kept in order, client_id appended; explicit number.
    let body = json!({"prompt": prompt, "client_id": client, "prompt_id": "my-own-id",
        "extra_data": {"extra_pnginfo": {"workflow": {"note": "gateway"}}, "gateway_job": "job-123"}});
    let (_, r) = sim.post("/prompt", &body).await;
    assert_eq!(r["prompt_id"], "my-own-id");
    ws.until_done("my-own-id").await;
    sim.wait_history("my-own-id").await;
    // Python dict order and json.dumps spacing: client_id is appended last.
    let raw = sim.http.get(sim.url("/history/my-own-id")).send().await.unwrap().text().await.unwrap();
    let want = format!(
        r#"{{"extra_pnginfo": {{"workflow": {{"note": "gateway"}}}}, "gateway_job": "job-123", "client_id": "{client}"}}"#
    );
    assert!(raw.contains(&want), "{raw}");
    let (_, r) = sim
        .post("/prompt", &json!({"prompt": basic_prompt("gw_test", 255), "client_id": client, "number": 42.5}))
        .await;
    assert_eq!(r["number"], json!(42.5));
    let pid = r["prompt_id"].as_str().unwrap().to_string();
    ws.until_done(&pid).await;
    assert_eq!(sim.wait_history(&pid).await["prompt"][0], json!(42.5));
    sim.stop().await;
}

#[tokio::test]
async fn sim_validation_bodies_match_capture_03() {
    let cap = capture("03_validation.json");
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let mut checked = 0;
    for e in captured_http(&cap, "POST", "/prompt") {
        let req = &e["request"];
        let want_status = e["response"]["status"].as_u64().unwrap() as u16;
        let (status, body) = match req.get("raw_body") {
            Some(raw) => {
                let (s, t) = sim.post_raw("/prompt", raw.as_str().unwrap(), "application/json").await;
                (s, Value::String(t))
            }
            None => sim.post("/prompt", &req["json"]).await,
        };
        assert_eq!(status, want_status, "{req}");
        if let Some(text) = e["response"].get("body_text") {
            assert_eq!(body, *text);
        } else if want_status == 400 {
            let mut want = e["response"]["body"].clone();
            let mut got = body.clone();
            sort_dependent_outputs(&mut want);
            sort_dependent_outputs(&mut got);
            assert_eq!(got, want, "{req}");
        } else {
            assert_eq!(body["node_errors"], e["response"]["body"]["node_errors"]);
            assert!(body["number"].is_i64());
            // Only the valid output runs.
            let pid = body["prompt_id"].as_str().unwrap().to_string();
            let h = sim.wait_history(&pid).await;
            let cap_hist = captured_http(&cap, "GET", "/history/")
                .into_iter()
                .find(|x| x["response"]["body"].get(e["response"]["body"]["prompt_id"].as_str().unwrap()).is_some())
                .unwrap();
            let cap_entry = cap_hist["response"]["body"].as_object().unwrap().values().next().unwrap().clone();
            assert_eq!(h["prompt"][4], cap_entry["prompt"][4]);
            assert_eq!(h["outputs"], cap_entry["outputs"]);
        }
        checked += 1;
    }
    assert!(checked >= 18, "replayed {checked} requests");
    // No prompt at all.
    let (s, b) = sim.post("/prompt", &json!({"client_id": "x"})).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["type"], "no_prompt");
    // A link with an int node id: KeyError(1), str() "1".
    let bad = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": [1, 0], "filename_prefix": "x"}}
    });
    let (s, b) = sim.post("/prompt", &json!({"prompt": bad})).await;
    assert_eq!(s, 400);
    let e = &b["node_errors"]["2"]["errors"][0];
    assert_eq!(e["type"], "exception_during_validation");
    assert_eq!(e["details"], "1");
    // Widget coercion is written back: "64" runs as 64.
    let coerced = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": "64", "height": 8.9, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    });
    let (s, b) = sim.post("/prompt", &json!({"prompt": coerced})).await;
    assert_eq!(s, 200);
    let h = sim.wait_history(b["prompt_id"].as_str().unwrap()).await;
    assert_eq!(h["prompt"][2]["1"]["inputs"]["width"], 64);
    assert_eq!(h["prompt"][2]["1"]["inputs"]["height"], 8);
    sim.stop().await;
}

fn sort_dependent_outputs(v: &mut Value) {
    if let Some(ne) = v.get_mut("node_errors").and_then(Value::as_object_mut) {
        for n in ne.values_mut() {
            if let Some(Value::Array(a)) = n.get_mut("dependent_outputs") {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
}

fn png_bytes(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        let data: Vec<u8> = rgba.iter().copied().cycle().take((width * height * 4) as usize).collect();
        w.write_image_data(&data).unwrap();
    }
    out
}

fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "----simtestboundary7d2f";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    if let Some((name, data)) = file {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(sim: &Sim, fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (u16, String) {
    let (ct, body) = multipart(fields, file);
    let r = sim.http.post(sim.url("/upload/image")).header("content-type", ct).body(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn sim_upload_cases_match_capture_04() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let a = png_bytes(4, 4, [10, 20, 30, 255]);
    let b = png_bytes(4, 4, [200, 100, 50, 255]);
    let j = |s: &str| -> Value { serde_json::from_str(s).unwrap() };
    let (s, r) = upload(&sim, &[], Some(("gw_upload.png", &a))).await;
    assert_eq!((s, j(&r)), (200, json!({"name": "gw_upload.png", "subfolder": "", "type": "input"})));
    let (_, r) = upload(&sim, &[], Some(("gw_upload.png", &a))).await;
    assert_eq!(j(&r)["name"], "gw_upload.png", "same bytes: deduplicated");
    let (_, r) = upload(&sim, &[], Some(("gw_upload.png", &b))).await;
    assert_eq!(j(&r)["name"], "gw_upload (1).png");
    let (_, r) = upload(&sim, &[("overwrite", "true")], Some(("gw_upload.png", &b))).await;
    assert_eq!(j(&r)["name"], "gw_upload.png");
    let (_, r) = upload(&sim, &[("subfolder", "gw/jobs"), ("type", "input")], Some(("sub.png", &a))).await;
    assert_eq!(j(&r), json!({"name": "sub.png", "subfolder": "gw/jobs", "type": "input"}));
    let (_, r) = upload(&sim, &[("type", "temp")], Some(("tmp.png", &a))).await;
    assert_eq!(j(&r), json!({"name": "tmp.png", "subfolder": "", "type": "temp"}));
    assert_eq!(upload(&sim, &[("subfolder", "../../")], Some(("evil.png", &a))).await, (400, String::new()));
    assert_eq!(upload(&sim, &[], Some(("../evil2.png", &a))).await, (400, String::new()));
    assert_eq!(upload(&sim, &[("foo", "bar")], None).await, (400, String::new()));
    let (s, t) = upload(&sim, &[("type", "bogus")], Some(("b.png", &a))).await;
    assert_eq!((s, t.as_str()), (500, "500 Internal Server Error\n\nServer got itself in trouble"));

    // LoadImage's combo lists top-level input images.
    let (_, info) = sim.get("/object_info/LoadImage").await;
    assert_eq!(info["LoadImage"]["input"]["required"]["image"][0], json!(["gw_upload (1).png", "gw_upload.png"]));

    // LoadImage -> ImageInvert -> SaveImage produces inverted pixels.
    let client = "e4b0d10e02b148c28297a606c3970783";
    let mut ws = sim.ws(Some(client)).await;
    let prompt = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "gw_upload.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "gw_inverted"}}
    });
    let pid = sim.submit(&prompt, client).await;
    ws.until_done(&pid).await;
    let h = sim.wait_history(&pid).await;
    assert_eq!(
        h["outputs"]["3"]["images"][0],
        json!({"filename": "gw_inverted_00001_.png", "subfolder": "", "type": "output"})
    );
    let r = sim
        .http
        .get(sim.url("/view"))
        .query(&[("filename", "gw_inverted_00001_.png"), ("type", "output")])
        .send()
        .await
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes.to_vec())).read_info().unwrap();
    let mut buf = vec![0; dec.output_buffer_size().unwrap()];
    dec.next_frame(&mut buf).unwrap();
    assert_eq!(&buf[..3], &[255 - 200, 255 - 100, 255 - 50]);

    // Subfolder path and the " [output]" annotation.
    let prompt = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "gw/jobs/sub.png"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "gw_sub/out"}}
    });
    let pid = sim.submit(&prompt, client).await;
    ws.until_done(&pid).await;
    let h = sim.wait_history(&pid).await;
    assert_eq!(
        h["outputs"]["3"]["images"][0],
        json!({"filename": "out_00001_.png", "subfolder": "gw_sub", "type": "output"})
    );
    let prompt = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "gw_inverted_00001_.png [output]"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    });
    let pid = sim.submit(&prompt, client).await;
    ws.until_done(&pid).await;
    let h = sim.wait_history(&pid).await;
    let img = &h["outputs"]["3"]["images"][0];
    assert_eq!(img["type"], "temp");
    let name = img["filename"].as_str().unwrap();
    assert!(name.starts_with("ComfyUI_temp_") && name.ends_with("_00001_.png"), "{name}");
    sim.stop().await;
}

#[tokio::test]
async fn sim_queue_heap_order_delete_front_clear() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 30).await;
    let client = "38abd4fee9dc457c92ec63692c0a4f5b";
    let mut ws = sim.ws(Some(client)).await;
    // The first job hangs until interrupted, so the queue can be inspected at leisure.
    sim.post("/sim/faults", &json!({"hang": 1})).await;
    let running = sim.submit(&slow_prompt("q0", 1), client).await;
    ws.until(|m| m["type"] == "execution_start").await;
    let p1 = sim.submit(&slow_prompt("q1", 2), client).await;
    let p2 = sim.submit(&slow_prompt("q2", 3), client).await;
    let (_, q) = sim.get("/queue").await;
    assert_eq!(q["queue_running"][0][1], running.as_str());
    assert_eq!(q["queue_running"][0].as_array().unwrap().len(), 5);
    let pending: Vec<&Value> = q["queue_pending"].as_array().unwrap().iter().map(|i| &i[1]).collect();
    assert_eq!(pending, [&json!(p1), &json!(p2)]);
    assert_eq!(sim.get("/prompt").await.1, json!({"exec_info": {"queue_remaining": 3}}));

    // Delete a pending item and (no effect) the running one.
    assert_eq!(sim.post("/queue", &json!({"delete": [p1]})).await.0, 200);
    sim.post("/queue", &json!({"delete": [running]})).await;
    // Two `front` prompts: numbers -3 and -4, heap array [-4, 2, -3].
    let (_, f1) =
        sim.post("/prompt", &json!({"prompt": slow_prompt("front", 4), "client_id": client, "front": true})).await;
    let (_, f2) =
        sim.post("/prompt", &json!({"prompt": slow_prompt("front2", 5), "client_id": client, "front": true})).await;
    assert_eq!(f1["number"], -3);
    assert_eq!(f2["number"], -4);
    let (_, q) = sim.get("/queue").await;
    let numbers: Vec<&Value> = q["queue_pending"].as_array().unwrap().iter().map(|i| &i[0]).collect();
    assert_eq!(numbers, [&json!(-4), &json!(2), &json!(-3)]);
    assert_eq!(q["queue_running"][0][1], running.as_str());
    sim.post("/interrupt", &json!({"prompt_id": running})).await;

    // Run order: running, front2, front, q2.
    let mut starts = Vec::new();
    while starts.len() < 3 {
        let msgs = ws.until(|m| m["type"] == "execution_start").await;
        starts.push(msgs.last().unwrap()["data"]["prompt_id"].as_str().unwrap().to_string());
    }
    assert_eq!(starts, [f2["prompt_id"].as_str().unwrap(), f1["prompt_id"].as_str().unwrap(), p2.as_str()]);
    // The deleted one never ran and has no history.
    assert_eq!(sim.get(&format!("/history/{p1}")).await.1, json!({}));

    ws.until_done(&p2).await;

    // Clear: pending items vanish, the running one continues.
    sim.post("/sim/faults", &json!({"hang": 1})).await;
    let c0 = sim.submit(&slow_prompt("c0", 8), client).await;
    ws.until(|m| m["type"] == "execution_start").await;
    let a = sim.submit(&slow_prompt("c1", 6), client).await;
    let b = sim.submit(&slow_prompt("c2", 7), client).await;
    sim.post("/queue", &json!({"clear": true})).await;
    let (_, q) = sim.get("/queue").await;
    assert_eq!(q["queue_pending"], json!([]));
    assert_eq!(q["queue_running"][0][1], c0.as_str());
    sim.post("/interrupt", &json!({})).await;
    ws.until_done(&c0).await;
    assert_eq!(sim.get(&format!("/history/{a}")).await.1, json!({}));
    assert_eq!(sim.get(&format!("/history/{b}")).await.1, json!({}));
    let (_, q) = sim.get("/queue").await;
    assert_eq!(q, json!({"queue_running": [], "queue_pending": []}));
    sim.stop().await;
}

#[tokio::test]
async fn sim_interrupt_semantics_match_capture_05() {
    let cap = capture("05_interrupt_trimmed.json");
    let dir = tempfile::tempdir().unwrap();
    // Long nodes: the interrupt surely lands while node 11 runs, even on a busy machine.
    let sim = start(dir.path(), 1500).await;
    let client = "38abd4fee9dc457c92ec63692c0a4f5b";
    let mut ws = sim.ws(Some(client)).await;

    // Global interrupt while node 11 runs.
    let pid = sim.submit(&slow_prompt("slow", 1), client).await;
    ws.until(|m| m["type"] == "executing" && m["data"]["node"] == "11").await;
    let (s, body) = sim.post_raw("/interrupt", "", "text/plain").await;
    assert_eq!((s, body.as_str()), (200, ""));
    let msgs = ws.until_done(&pid).await;
    let t = types(&msgs);
    let i = t.iter().position(|x| x == "execution_interrupted").unwrap();
    assert_eq!(t[i + 1..], ["status", "executing"]);
    let int = &msgs[i]["data"];
    assert_eq!(int["node_id"], "11");
    assert_eq!(int["node_type"], "ImageBlur");
    let mut cap_int = captured_ws(&cap, "ws").into_iter().find(|m| m["type"] == "execution_interrupted").unwrap();
    // Model nodes report progress, so the interrupt lands inside node 11 (the captured
    // ImageBlur had no progress and stopped at node 12): `executed` is one shorter.
    cap_int["data"]["executed"] = json!(["10", "1"]);
    assert_shape(&msgs[i], &cap_int, "execution_interrupted");
    let mut executed: Vec<&str> = int["executed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    executed.sort();
    assert_eq!(executed, ["1", "10"]);
    let h = sim.wait_history(&pid).await;
    let cap_entry = captured_http(&cap, "GET", "/history/")[0]["response"]["body"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(h["status"]["status_str"], "error");
    assert_eq!(h["status"]["completed"], false);
    assert_eq!(h["outputs"], json!({}));
    assert_eq!(h["meta"], json!({}));
    let mut cap_status = cap_entry["status"].clone();
    cap_status["messages"][2][1]["executed"] = json!(["10", "1"]);
    assert_shape(&h["status"], &cap_status, "status");

    // Targeted: a non-running id is ignored, the running id interrupts.
    let pid = sim.submit(&slow_prompt("slow2", 2), client).await;
    ws.until(|m| m["type"] == "executing" && m["data"]["node"] == "10").await;
    sim.post("/interrupt", &json!({"prompt_id": "not-running"})).await;
    ws.until(|m| m["type"] == "executing" && m["data"]["node"] == "11").await;
    sim.post("/interrupt", &json!({"prompt_id": pid})).await;
    let msgs = ws.until_done(&pid).await;
    let int = msgs.iter().find(|m| m["type"] == "execution_interrupted").unwrap();
    assert_eq!(int["data"]["node_id"], "11");

    // A stale interrupt (while idle) does not hit the next prompt.
    sim.post("/interrupt", &json!({})).await;
    let pid = sim.submit(&basic_prompt("after_idle", 3), client).await;
    let msgs = ws.until_done(&pid).await;
    assert!(types(&msgs).contains(&"execution_success".to_string()));

    // Interrupt during the last (native, no progress) node is a no-op... the model node
    // before it reports progress, so interrupting it stops the job.
    sim.stop().await;
}

#[tokio::test]
async fn sim_restart_amnesia_like_capture_06() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let client = "4b8e14d051e846b2bff48e9fce2c8c17";
    let mut ws = sim.ws(Some(client)).await;
    let prompt = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 509873}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pre_crash"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    });
    let done = sim.submit(&prompt, client).await;
    ws.until_done(&done).await;
    let h = sim.wait_history(&done).await;
    let temp_name = h["outputs"]["3"]["images"][0]["filename"].as_str().unwrap().to_string();
    drop(ws);
    sim.stop().await;

    let sim = start(dir.path(), 0).await;
    assert_eq!(sim.get("/queue").await.1, json!({"queue_running": [], "queue_pending": []}));
    assert_eq!(sim.get("/prompt").await.1, json!({"exec_info": {"queue_remaining": 0}}));
    assert_eq!(sim.get("/history").await.1, json!({}));
    assert_eq!(sim.get(&format!("/history/{done}")).await.1, json!({}));
    assert_eq!(sim.get("/sim/executions").await.1, json!({"executions": [], "maxQueueDepth": 0}));
    let view = |name: String, kind: &'static str| {
        let req = sim.http.get(sim.url("/view")).query(&[("filename", name), ("type", kind.to_string())]);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(view("pre_crash_00001_.png".into(), "output").await, 200);
    assert_eq!(view(temp_name, "temp").await, 404);
    let mut ws = sim.ws(Some(client)).await;
    let (_, r) = sim.post("/prompt", &json!({"prompt": basic_prompt("pre_crash", 509873), "client_id": client})).await;
    assert_eq!(r["number"], 0, "numbering restarts at 0");
    let pid = r["prompt_id"].as_str().unwrap().to_string();
    let msgs = ws.until_done(&pid).await;
    let cached = msgs.iter().find(|m| m["type"] == "execution_cached").unwrap();
    assert_eq!(cached["data"]["nodes"], json!([]), "caches are cold");
    let executed = msgs.iter().find(|m| m["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["output"]["images"][0]["filename"], "pre_crash_00002_.png");
    sim.stop().await;
}

#[tokio::test]
async fn sim_misc_routes_like_capture_11() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_with(SimConfig {
        data_dir: dir.path().to_path_buf(),
        node_delay_ms: 0,
        max_upload_size_mb: 1,
        ..SimConfig::default()
    })
    .await;
    let r = sim.http.get(sim.url("/does/not/exist")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.bytes().await.unwrap().is_empty());
    let r = sim.http.post(sim.url("/does/not/exist")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "405: Method Not Allowed");
    assert_eq!(sim.get("/api/internal/files/output").await.0, 404);
    assert_eq!(sim.get("/internal/files/output").await, (200, json!([])));
    assert_eq!(sim.get("/internal/files/bogus").await, (400, json!({"error": "Invalid directory type"})));

    for path in ["/prompt", "/queue", "/history", "/system_stats", "/features", "/embeddings", "/models"] {
        let plain = sim.get(path).await;
        let alias = sim.get(&format!("/api{path}")).await;
        assert_eq!(plain.0, 200, "{path}");
        if path != "/system_stats" {
            assert_eq!(plain, alias, "{path}");
        }
    }
    let (_, stats) = sim.get("/system_stats").await;
    assert_eq!(stats["system"]["comfyui_version"], "0.3.64");
    assert_eq!(stats["devices"][0]["type"], "cpu");
    assert_eq!(sim.get("/features").await.1, json!({"supports_preview_metadata": true, "max_upload_size": 1_048_576}));
    assert_eq!(sim.get("/object_info/NoSuchNode").await.1, json!({}));
    assert_eq!(sim.get("/models/nope").await.0, 404);
    let (_, info) = sim.get("/object_info/EmptyImage").await;
    assert_eq!(info["EmptyImage"]["output"], json!(["IMAGE"]));
    let (_, ckpts) = sim.get("/models/checkpoints").await;
    assert!(ckpts.as_array().unwrap().contains(&json!("sd_xl_base_1.0.safetensors")));

    // Origin check.
    let host = sim.addr.to_string();
    for (origin, want) in [
        ("https://gateway.example.com".to_string(), 403),
        (format!("http://localhost:{}", sim.addr.port()), 403),
        (format!("http://{host}"), 200),
    ] {
        let r = sim.http.get(sim.url("/queue")).header("origin", &origin).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{origin}");
    }
    let r = sim
        .http
        .request(reqwest::Method::OPTIONS, sim.url("/prompt"))
        .header("origin", "https://gateway.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let mut req = format!("ws://{host}/ws?clientId=origin-test").into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://gateway.example.com".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }

    // Malformed JSON, content-type leniency, lenient-parsing 500s.
    let (s, t) = sim.post_raw("/prompt", "{not json", "application/json").await;
    assert_eq!((s, t.as_str()), (500, "500 Internal Server Error\n\nServer got itself in trouble"));
    let body = json!({"prompt": basic_prompt("misc", 1)}).to_string();
    assert_eq!(sim.post_raw("/prompt", &body, "text/plain").await.0, 200);
    assert_eq!(sim.post_raw("/prompt", &body, "application/x-www-form-urlencoded").await.0, 200);
    assert_eq!(sim.get("/history?max_items=abc").await.0, 500);

    // History paging, delete, clear.
    let mut ids = Vec::new();
    for c in 0..4 {
        let (_, r) = sim.post("/prompt", &json!({"prompt": basic_prompt("page", c)})).await;
        ids.push(r["prompt_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        sim.wait_history(id).await;
    }
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let (_, all) = sim.get("/history").await;
    assert_eq!(all.as_object().unwrap().len(), 6);
    let raw = sim.http.get(sim.url("/history?max_items=2")).send().await.unwrap().text().await.unwrap();
    let pos: Vec<usize> = ids[2..].iter().map(|id| raw.find(id.as_str()).unwrap()).collect();
    assert!(pos[0] < pos[1], "insertion order kept");
    let mut last2 = keys(&sim.get("/history?max_items=2").await.1);
    last2.sort();
    let mut want = ids[2..].to_vec();
    want.sort();
    assert_eq!(last2, want);
    assert_eq!(sim.get("/history?max_items=2&offset=2").await.1.as_object().unwrap().len(), 2);
    assert_eq!(sim.get("/history?offset=1").await.1.as_object().unwrap().len(), 5);
    assert_eq!(sim.post("/history", &json!({"delete": [ids[0], "not-a-real-id"]})).await.0, 200);
    assert_eq!(sim.get("/history").await.1.as_object().unwrap().len(), 5);
    sim.post("/history", &json!({"clear": true})).await;
    assert_eq!(sim.get("/history").await.1, json!({}));
    assert_eq!(sim.post("/free", &json!({"unload_models": true, "free_memory": true})).await.0, 200);

    // 413 over the body limit (1 MB here).
    let big = vec![b'x'; 2 * 1024 * 1024];
    let r = sim.http.post(sim.url("/upload/image")).body(big).send().await;
    match r {
        Ok(r) => {
            assert_eq!(r.status().as_u16(), 413);
            assert_eq!(r.text().await.unwrap(), "Maximum request body size 1048576 exceeded.");
        }
        Err(e) => panic!("request failed: {e}"),
    }
    sim.stop().await;
}

#[tokio::test]
async fn sim_ws_reconnect_and_same_client_id_quirk() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 1000).await;
    // 08c: reconnect while the client's job runs -> status + executing {node}.
    let client = "0587228e97c44d68888ebc9389d8a63d";
    let mut ws1 = sim.ws(Some(client)).await;
    let pid = sim.submit(&slow_prompt("reconn", 1), client).await;
    ws1.until(|m| m["type"] == "executing" && m["data"]["node"] == "10").await;
    ws1.stream.close(None).await.unwrap();
    drop(ws1);
    // ComfyUI unregisters a sid when its old socket closes, even after a newer socket took
    // it: the close must land first, and nothing outside the simulator shows when it has.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let url = format!("ws://{}/ws?clientId={client}", sim.addr);
    let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut ws2 = Ws { stream };
    let greeting = ws2.next().await.unwrap();
    assert_eq!(greeting["data"]["sid"], client);
    let again = ws2.next().await.unwrap();
    assert_eq!(again["type"], "executing");
    assert_eq!(again["data"].as_object().unwrap().len(), 1, "only `node`: {again}");
    ws2.until_done(&pid).await;

    // 08d: A1 and A2 share a clientId; closing A1 silences A2.
    let shared_id = "1a29f4ea7a7848f6aed1c1844b7c4517";
    let mut a1 = sim.ws(Some(shared_id)).await;
    let mut a2 = sim.ws(Some(shared_id)).await;
    let pid = sim.submit(&basic_prompt("twice", 1), shared_id).await;
    a2.until_done(&pid).await;
    a1.stream.close(None).await.unwrap();
    while a1.next().await.is_some() {}
    let pid = sim.submit(&basic_prompt("twice", 2), shared_id).await;
    sim.wait_history(&pid).await;
    let silent = tokio::time::timeout(Duration::from_millis(300), a2.stream.next()).await;
    assert!(silent.is_err(), "A2 must receive nothing after A1 closed");

    // Without clientId: a generated uuid4 hex sid.
    let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/ws", sim.addr)).await.unwrap();
    let mut anon = Ws { stream };
    let g = anon.next().await.unwrap();
    let sid = g["data"]["sid"].as_str().unwrap();
    assert_eq!(sid.len(), 32);
    assert!(sid.chars().all(|c| c.is_ascii_hexdigit()));
    // feature_flags negotiation.
    let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?clientId=ff", sim.addr)).await.unwrap();
    let mut ff = Ws { stream };
    ff.stream
        .send(Message::text(json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}}).to_string()))
        .await
        .unwrap();
    ff.next().await.unwrap();
    let reply = ff.next().await.unwrap();
    assert_eq!(
        reply,
        json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}})
    );
    sim.stop().await;
}

#[tokio::test]
async fn sim_executions_record_counts_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let client = "counter";
    let mut ws = sim.ws(Some(client)).await;
    for _ in 0..2 {
        let body = json!({"prompt": basic_prompt("count", 1), "client_id": client, "prompt_id": "job-a"});
        assert_eq!(sim.post("/prompt", &body).await.0, 200);
        ws.until_done("job-a").await;
    }
    let body = json!({"prompt": basic_prompt("count", 2), "client_id": client, "prompt_id": "job-b"});
    sim.post("/prompt", &body).await;
    ws.until_done("job-b").await;
    // A rejected POST is not recorded.
    sim.post("/prompt", &json!({"prompt": {}, "prompt_id": "job-c"})).await;
    let (_, rec) = sim.get("/sim/executions").await;
    assert_eq!(
        rec["executions"],
        json!([
            {"promptId": "job-a", "submitted": 2, "count": 2},
            {"promptId": "job-b", "submitted": 1, "count": 1}
        ])
    );
    assert_eq!(rec["maxQueueDepth"], 1);
    assert_eq!(sim.post_raw("/sim/reset", "", "application/json").await.0, 200);
    assert_eq!(sim.get("/sim/executions").await.1["executions"], json!([]));
    sim.stop().await;
}

/// An SDXL-style pipeline of model nodes: checkpoint, text encoders, sampler, decode.
fn sdxl_prompt(seed: u64, prefix: &str) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "10": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 2.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    })
}

#[tokio::test]
async fn sim_model_nodes_progress_and_seeded_images() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 20).await;
    let client = "sdxl";
    let mut ws = sim.ws(Some(client)).await;
    let a = sim.submit(&sdxl_prompt(1, "sdxl"), client).await;
    let msgs = ws.until_done(&a).await;
    let progress: Vec<(u64, u64)> = msgs
        .iter()
        .filter(|m| m["type"] == "progress" && m["data"]["node"] == "3")
        .map(|m| (m["data"]["value"].as_u64().unwrap(), m["data"]["max"].as_u64().unwrap()))
        .collect();
    assert_eq!(progress, [(1, 4), (2, 4), (3, 4), (4, 4)]);
    let b = sim.submit(&sdxl_prompt(2, "sdxl"), client).await;
    ws.until_done(&b).await;
    let fetch = |name: &'static str| {
        let req = sim.http.get(sim.url("/view")).query(&[("filename", name)]);
        async move { req.send().await.unwrap().bytes().await.unwrap().to_vec() }
    };
    let img_a = fetch("sdxl_00001_.png").await;
    let img_b = fetch("sdxl_00002_.png").await;
    let info = png::Decoder::new(std::io::Cursor::new(img_a.clone())).read_info().unwrap();
    assert_eq!((info.info().width, info.info().height), (256, 192), "latent size x2");
    assert_ne!(img_a, img_b, "different seeds give different images");
    sim.stop().await;
}

#[tokio::test]
async fn sim_fault_oom_and_node_error_payloads() {
    let cap = capture("07_errors_trimmed.json");
    let cap_err = captured_ws(&cap, "ws").into_iter().next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let client = "faults";
    let mut ws = sim.ws(Some(client)).await;
    let (s, f) = sim.post("/sim/faults", &json!({"oom": 1, "nodeError": 1})).await;
    assert_eq!(s, 200);
    assert_eq!(f["oom"], 1);
    assert_eq!(f["nodeError"], 1);

    let pid = sim.submit(&basic_prompt("oom", 1), client).await;
    let msgs = ws.until_done(&pid).await;
    let t = types(&msgs);
    let i = t.iter().position(|x| x == "execution_error").unwrap();
    assert_eq!(t[i + 1..], ["status", "executing"]);
    let err = &msgs[i];
    assert_eq!(err["data"]["exception_type"], "torch.OutOfMemoryError");
    let text = err["data"]["exception_message"].as_str().unwrap();
    assert!(text.contains("CUDA out of memory") && text.contains("TIPS:"), "{text}");
    assert_eq!(err["data"]["node_id"], "1");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v["data"].as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(err), keys(&cap_err));
    let h = sim.wait_history(&pid).await;
    assert_eq!(h["status"]["status_str"], "error");
    assert_eq!(h["status"]["messages"][2][0], "execution_error");

    let pid = sim.submit(&basic_prompt("nodeerr", 2), client).await;
    let msgs = ws.until_done(&pid).await;
    let err = msgs.iter().find(|m| m["type"] == "execution_error").unwrap();
    assert_eq!(err["data"]["exception_type"], "RuntimeError");
    assert!(err["data"]["exception_message"].as_str().unwrap().ends_with('\n'));
    assert_eq!(keys(err), keys(&cap_err));
    assert!(err["data"]["traceback"].as_array().unwrap().len() > 1);
    assert_eq!(err["data"]["current_outputs"], json!(["1", "2"]));

    // Disarmed: the next prompt succeeds; a failed node is not cached.
    let pid = sim.submit(&basic_prompt("nodeerr", 2), client).await;
    let msgs = ws.until_done(&pid).await;
    assert!(types(&msgs).contains(&"execution_success".to_string()));
    assert_eq!(sim.get("/sim/faults").await.1["nodeError"], 0);

    // A model node is the first non-trivial node.
    sim.post("/sim/faults", &json!({"oom": 1})).await;
    let pid = sim.submit(&slow_prompt("oom2", 9), client).await;
    let msgs = ws.until_done(&pid).await;
    let err = msgs.iter().find(|m| m["type"] == "execution_error").unwrap();
    assert_eq!(err["data"]["node_id"], "10");
    assert_eq!(err["data"]["executed"], json!(["1"]));
    sim.stop().await;
}

#[tokio::test]
async fn sim_fault_hang_until_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let client = "hang";
    let mut ws = sim.ws(Some(client)).await;
    sim.post("/sim/faults", &json!({"hang": 1})).await;
    let pid = sim.submit(&basic_prompt("hang", 1), client).await;
    ws.until(|m| m["type"] == "progress").await;
    ws.until(|m| m["type"] == "progress").await;
    sim.post("/interrupt", &json!({})).await;
    let msgs = ws.until_done(&pid).await;
    let int = msgs.iter().find(|m| m["type"] == "execution_interrupted").unwrap();
    assert_eq!(int["data"]["node_id"], "1");
    sim.stop().await;
}

#[tokio::test]
async fn sim_fault_drop_ws_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let mut ws = sim.ws(Some("dropme")).await;
    sim.post("/sim/faults", &json!({"dropWs": true})).await;
    assert!(ws.next().await.is_none(), "socket dropped");

    let mut ws = sim.ws(Some("dropme")).await;
    sim.post("/sim/faults", &json!({"dropWsAfterMs": 0, "hang": 1})).await;
    let pid = sim.submit(&basic_prompt("drop", 1), "dropme").await;
    loop {
        if ws.next().await.is_none() {
            break;
        }
    }
    sim.post("/interrupt", &json!({"prompt_id": pid})).await;
    sim.wait_history(&pid).await;
    assert_eq!(sim.get("/sim/faults").await.1["dropWsAfterMs"], Value::Null);

    sim.post("/sim/faults", &json!({"latencyMs": 150})).await;
    let t0 = std::time::Instant::now();
    assert_eq!(sim.get("/queue").await.0, 200);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    sim.post("/sim/faults", &json!({"reset": true})).await;
    assert_eq!(
        sim.get("/sim/faults").await.1,
        json!({
            "latencyMs": 0, "oom": 0, "nodeError": 0, "hang": 0, "dropWsAfterMs": null, "crashOnNextExecution": false,
            "promptError": 0, "promptHang": 0, "uploadError": 0, "uploadHang": 0, "historyError": 0, "historyHang": 0,
            "historyNoOutputs": 0, "viewError": 0, "viewHang": 0, "viewGarbage": 0, "viewTruncated": 0,
            "queueGarbage": 0, "historyGarbage": 0, "historyNoStatus": 0, "historyOddStatus": 0
        })
    );
    assert_eq!(sim.post("/sim/faults", &json!({"bogus": 1})).await.0, 400);
    sim.stop().await;
}

/// The HTTP faults on the wire: each counts requests on its route (`/api` too); once
/// spent, the route answers as it always does.
#[tokio::test]
async fn sim_http_faults_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let server_error = Value::String("500 Internal Server Error\n\nServer got itself in trouble".into());
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();

    // promptError: aiohttp's 500, nothing queued; then the same body is accepted.
    sim.post("/sim/faults", &json!({"promptError": 1})).await;
    let submit = json!({"prompt": basic_prompt("wire", 1), "prompt_id": "w1"});
    assert_eq!(sim.post("/api/prompt", &submit).await, (500, server_error.clone()));
    assert_eq!(sim.get("/sim/executions").await.1["executions"], json!([]));
    assert_eq!(sim.post("/prompt", &submit).await.0, 200);
    let entry = sim.wait_history("w1").await;
    let file = entry["outputs"]["2"]["images"][0]["filename"].as_str().unwrap().to_string();

    // historyError, then historyNoOutputs (same entry, outputs and meta empty), then as is.
    sim.post("/sim/faults", &json!({"historyError": 1, "historyNoOutputs": 1})).await;
    assert_eq!(sim.get("/history/w1").await, (500, server_error.clone()));
    let (s, bare) = sim.get("/api/history/w1").await;
    assert_eq!((s, &bare["w1"]["outputs"], &bare["w1"]["meta"]), (200, &json!({}), &json!({})));
    assert_eq!(bare["w1"]["status"], entry["status"]);
    assert_eq!(sim.get("/history/w1").await.1["w1"], entry);

    // Answers that are not ComfyUI's, each kind in turn, then the real ones again.
    let real_queue = sim.get("/queue").await;
    sim.post("/sim/faults", &json!({"queueGarbage": 4, "historyGarbage": 4})).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (s, q) = sim.get("/api/queue").await;
        assert_eq!(s, 200);
        assert!(!(q["queue_running"].is_array() && q["queue_pending"].is_array()), "not a queue: {q}");
        seen.push(q);
    }
    assert!(seen[0].as_str().is_some_and(|t| t.starts_with("<html>")), "an HTML page first: {seen:?}");
    assert_eq!(seen[3]["error"], "upstream connect error");
    assert_eq!(sim.get("/queue").await, real_queue);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (s, h) = sim.get("/history/w1").await;
        assert_eq!(s, 200);
        assert!(!h["w1"].is_object(), "not a history entry: {h}");
        seen.push(h);
    }
    assert_eq!(seen[1], json!({"w1": "pending"}));
    assert_eq!(seen[2], json!([]));
    assert_eq!(sim.get("/history/w1").await.1["w1"], entry);
    // historyNoStatus, then historyOddStatus (found entries only), then as is.
    sim.post("/sim/faults", &json!({"historyNoStatus": 1, "historyOddStatus": 1})).await;
    assert_eq!(sim.get("/history/nope").await.1, json!({}), "an unknown prompt does not use them");
    let (_, h) = sim.get("/history/w1").await;
    assert!(h["w1"].get("status").is_none() && h["w1"]["outputs"] == entry["outputs"], "{h}");
    assert_eq!(sim.get("/history/w1").await.1["w1"]["status"]["status_str"], "running");
    assert_eq!(sim.get("/history/w1").await.1["w1"], entry);

    // viewError, viewGarbage, viewTruncated, viewHang, in that order when armed together.
    let view = sim.url(&format!("/view?filename={file}&type=output"));
    let real = sim.http.get(&view).send().await.unwrap().bytes().await.unwrap();
    assert!(real.starts_with(b"\x89PNG"));
    sim.post("/sim/faults", &json!({"viewError": 1, "viewGarbage": 1, "viewTruncated": 1, "viewHang": 1})).await;
    assert_eq!(sim.http.get(&view).send().await.unwrap().status(), 500);
    let hung = quick.get(&view).send().await;
    assert!(hung.is_err_and(|e| e.is_timeout()), "viewHang holds the answer");
    let garbage = sim.http.get(&view).send().await.unwrap();
    assert_eq!(garbage.headers()["content-type"], "image/png");
    assert!(garbage.bytes().await.unwrap().starts_with(b"<html>"));
    let cut = sim.http.get(&view).send().await.unwrap();
    assert_eq!(cut.content_length(), Some(real.len() as u64), "the whole length is declared");
    assert!(cut.bytes().await.is_err(), "and the connection closes before it is sent");
    assert_eq!(sim.http.get(&view).send().await.unwrap().bytes().await.unwrap(), real);

    // uploadError: 500, nothing stored; uploadHang: stored, no answer.
    let upload = |name: &str| {
        format!(
            "--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
             Content-Type: image/png\r\n\r\nnot checked\r\n--b--\r\n"
        )
    };
    sim.post("/sim/faults", &json!({"uploadError": 1, "uploadHang": 1})).await;
    let multipart = "multipart/form-data; boundary=b";
    assert_eq!(sim.post_raw("/upload/image", &upload("u1.png"), multipart).await.0, 500);
    assert!(!dir.path().join("input/u1.png").exists());
    let hung =
        quick.post(sim.url("/upload/image")).header("content-type", multipart).body(upload("u2.png")).send().await;
    assert!(hung.is_err_and(|e| e.is_timeout()), "uploadHang holds the answer");
    assert!(dir.path().join("input/u2.png").exists(), "after storing the file");
    assert_eq!(sim.post_raw("/upload/image", &upload("u3.png"), multipart).await.0, 200);

    // promptHang: the prompt is queued and runs; only the answer never comes.
    sim.post("/sim/faults", &json!({"promptHang": 1, "historyHang": 1})).await;
    let submit = json!({"prompt": basic_prompt("wire", 2), "prompt_id": "w2"});
    assert!(quick.post(sim.url("/prompt")).json(&submit).send().await.is_err_and(|e| e.is_timeout()));
    assert!(quick.get(sim.url("/history/w2")).send().await.is_err_and(|e| e.is_timeout()));
    sim.wait_history("w2").await;

    let (_, armed) = sim.get("/sim/faults").await;
    for (name, count) in armed.as_object().unwrap() {
        assert!(matches!(count, Value::Number(n) if n.as_u64() == Some(0)) || !count.is_number(), "{name} spent");
    }
    sim.stop().await;
}

/// An order-preserving JSON value, to compare key order with the captures.
enum Ordered {
    Leaf,
    Arr(Vec<Ordered>),
    Obj(Vec<(String, Ordered)>),
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("json")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
                Ok(Ordered::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
                Ok(Ordered::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
                Ok(Ordered::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
                Ok(Ordered::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Ordered, E> {
                Ok(Ordered::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Leaf)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Ordered::Arr(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Ordered>()? {
                    v.push((k, x));
                }
                Ok(Ordered::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every object's key list, in document order (object-valued paths only).
fn key_orders(v: &Ordered, path: &str, out: &mut Vec<String>) {
    match v {
        Ordered::Leaf => {}
        Ordered::Arr(a) => {
            for (i, x) in a.iter().enumerate() {
                key_orders(x, &format!("{path}[{i}]"), out);
            }
        }
        Ordered::Obj(o) => {
            let keys: Vec<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
            // Node-id keyed maps and free-form dicts are ordered by content, skip them.
            if !keys.iter().all(|k| k.chars().all(|c| c.is_ascii_digit())) {
                out.push(format!("{path}: {}", keys.join(",")));
            }
            for (k, x) in o {
                key_orders(x, &format!("{path}.{k}"), out);
            }
        }
    }
}

#[tokio::test]
async fn sim_key_order_and_spacing_match_capture_01() {
    let raw_cap =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/captures/01_basic_run.json"))
            .unwrap();
    let cap: Ordered = serde_json::from_str(&raw_cap).unwrap();
    let Ordered::Obj(top) = cap else { panic!() };
    let Some((_, Ordered::Arr(events))) = top.into_iter().find(|(k, _)| k == "events") else { panic!() };
    let cap_value = capture("01_basic_run.json");
    let mut cap_msgs = Vec::new();
    for (ev, ev_value) in events.iter().zip(cap_value["events"].as_array().unwrap()) {
        if ev_value["kind"] == "ws_text"
            && ev_value["tag"] == "ws"
            && let Ordered::Obj(fields) = ev
            && let Some((_, m)) = fields.iter().find(|(k, _)| k == "message")
        {
            let mut o = Vec::new();
            key_orders(m, "", &mut o);
            cap_msgs.push(o);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let url = format!("ws://{}/ws?clientId=keyorder", sim.addr);
    let (mut stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let pid = sim.submit(&basic_prompt("gw_test", 16_711_680), "keyorder").await;
    let mut raw_msgs = Vec::new();
    loop {
        let Some(Ok(Message::Text(t))) = stream.next().await else { panic!("socket ended") };
        let text = t.as_str().to_string();
        let v: Value = serde_json::from_str(&text).unwrap();
        raw_msgs.push(text);
        if v["type"] == "executing" && v["data"]["node"].is_null() && v["data"]["prompt_id"] == pid.as_str() {
            break;
        }
    }
    assert_eq!(raw_msgs.len(), cap_msgs.len());
    for (i, (raw, want)) in raw_msgs.iter().zip(&cap_msgs).enumerate() {
        let parsed: Ordered = serde_json::from_str(raw).unwrap();
        let mut got = Vec::new();
        key_orders(&parsed, "", &mut got);
        assert_eq!(&got, want, "key order of message {i}: {raw}");
        assert!(raw.starts_with("{\"type\": \""), "json.dumps spacing: {raw}");
    }
    // HTTP bodies use json.dumps spacing too.
    let r = sim.http.get(sim.url("/queue")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), r#"{"queue_running": [], "queue_pending": []}"#);
    sim.stop().await;
}

/// Child half of [`sim_fault_crash_exits_the_process`]: only does something when the
/// parent test runs this test binary again with `SIM_CRASH_CHILD_DIR` set.
#[tokio::test]
async fn sim_crash_child() {
    let Ok(dir) = std::env::var("SIM_CRASH_CHILD_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let sim = start(&dir, 0).await;
    std::fs::write(dir.join("port.tmp"), sim.addr.port().to_string()).unwrap();
    std::fs::rename(dir.join("port.tmp"), dir.join("port")).unwrap();
    // Serve until the crash fault exits the process (the parent kills us otherwise).
    tokio::time::sleep(WAIT).await;
    sim.stop().await;
}

async fn spawn_crash_child(dir: &Path) -> (std::process::Child, Sim) {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sim_protocol::sim_crash_child", "--nocapture"])
        .env("SIM_CRASH_CHILD_DIR", dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let port: u16 = eventually_within(WAIT, "the child writes its port", async || {
        std::fs::read_to_string(dir.join("port")).map(|p| p.trim().parse().unwrap())
    })
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // A handle without a server task: only used as an HTTP/WS client.
    let sim = Sim {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        token: CancellationToken::new(),
        handle: tokio::spawn(async { Ok(()) }),
    };
    (child, sim)
}

async fn wait_exit(child: &mut std::process::Child) -> i32 {
    match poll_within(WAIT, async || child.try_wait().unwrap().ok_or("running")).await {
        Ok(status) => status.code().unwrap_or(-1),
        Err(_) => {
            let _ = child.kill();
            panic!("child did not exit");
        }
    }
}

#[tokio::test]
async fn sim_fault_crash_exits_the_process() {
    // crashOnNextExecution: exit 137 when the next prompt starts; the socket drops.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sim) = spawn_crash_child(dir.path()).await;
    let mut ws = sim.ws(Some("crash")).await;
    let (s, f) = sim.post("/sim/faults", &json!({"crashOnNextExecution": true})).await;
    assert_eq!((s, &f["crashOnNextExecution"]), (200, &json!(true)));
    let r = sim
        .http
        .post(sim.url("/prompt"))
        .json(&json!({"prompt": basic_prompt("crash", 1), "client_id": "crash"}))
        .send()
        .await;
    // The response may or may not make it out before the exit.
    drop(r);
    while ws.next().await.is_some() {}
    assert_eq!(wait_exit(&mut child).await, 137);

    // crash: immediate exit after answering.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sim) = spawn_crash_child(dir.path()).await;
    let (s, _) = sim.post("/sim/faults", &json!({"crash": true})).await;
    assert_eq!(s, 200);
    assert_eq!(wait_exit(&mut child).await, 137);
}

#[tokio::test]
async fn sim_save_image_websocket_binary_frames_like_08a_08b() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let prompt = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 1}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}
    });
    for metadata in [false, true] {
        let client = if metadata { "meta" } else { "legacy" };
        let url = format!("ws://{}/ws?clientId={client}", sim.addr);
        let (mut stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        if metadata {
            let ff = json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}});
            stream.send(Message::text(ff.to_string())).await.unwrap();
        }
        let pid = sim.submit(&prompt, client).await;
        let mut seen = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
            match msg {
                Message::Binary(b) => {
                    let kind = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    if kind == 1 {
                        assert_eq!(&b[4..8], &[0, 0, 0, 2]);
                        assert_eq!(&b[8..12], b"\x89PNG");
                    } else {
                        assert_eq!(kind, 4);
                        let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
                        let meta: Value = serde_json::from_slice(&b[8..8 + len]).unwrap();
                        assert_eq!(meta["prompt_id"], pid.as_str());
                        assert_eq!(meta["image_type"], "image/png");
                        assert_eq!(&b[8 + len..12 + len], b"\x89PNG");
                    }
                    seen.push(format!("binary{kind}"));
                }
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let kind = v["type"].as_str().unwrap().to_string();
                    if kind == "executing" && v["data"]["node"].is_null() {
                        break;
                    }
                    if kind == "progress" || kind == "progress_state" {
                        seen.push(kind);
                    }
                }
                _ => {}
            }
        }
        let per_image: Vec<&str> = if metadata {
            vec!["progress_state", "binary4", "progress"]
        } else {
            vec!["progress_state", "progress", "binary1"]
        };
        let got: Vec<&str> = seen.iter().map(String::as_str).collect();
        // running(start), 2 images, finished.
        let mut want = vec!["progress_state"];
        want.extend(per_image.iter().chain(per_image.iter()));
        want.push("progress_state");
        // EmptyImage's own progress_state start/finish come first.
        assert_eq!(&got[got.len() - want.len()..], want.as_slice(), "{got:?}");
        let h = sim.wait_history(&pid).await;
        assert_eq!(h["outputs"], json!({}));
    }
    sim.stop().await;
}

#[tokio::test]
async fn sim_huge_images_fail_like_a_cpu_allocation_error() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), 0).await;
    let client = "huge";
    let mut ws = sim.ws(Some(client)).await;
    let prompt = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 16384, "height": 16384, "batch_size": 64}},
        "10": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["5", 0], "upscale_method": "nearest-exact", "scale_by": 8.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "huge"}}
    });
    let pid = sim.submit(&prompt, client).await;
    let msgs = ws.until_done(&pid).await;
    let err = msgs.iter().find(|m| m["type"] == "execution_error").unwrap();
    assert_eq!(err["data"]["node_id"], "8");
    assert_eq!(err["data"]["exception_type"], "RuntimeError");
    assert!(err["data"]["exception_message"].as_str().unwrap().contains("can't allocate memory"));
    // The 07 capture's CPU allocation failure on EmptyImage.
    let prompt = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16384, "height": 16384, "batch_size": 4096, "color": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "oom"}}
    });
    let pid = sim.submit(&prompt, client).await;
    let msgs = ws.until_done(&pid).await;
    let err = msgs.iter().find(|m| m["type"] == "execution_error").unwrap();
    assert_eq!(
        err["data"]["exception_message"],
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 4398046511104 bytes. Error code 12 (Cannot allocate memory)\n"
    );
    sim.stop().await;
}
