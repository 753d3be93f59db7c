//! Limits against abuse: rate limits per client key and per IP (429 with `Retry-After`
//! and `RateLimit` fields, allowed again after the window), `X-Forwarded-For` only from
//! trusted proxies, CORS, the per-client job cap, body/header/JSON/query limits and
//! path traversal on downloads.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, Gateway, Sim};

const WAIT: Duration = Duration::from_secs(20);

/// A sub-directory of `dir` for a second gateway.
fn subdir(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("subdir");
    d
}

/// GET with extra headers: status, headers, JSON body (Null if not JSON).
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
    request(reqwest::Method::GET, url, headers).await
}

async fn request(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = reqwest::Client::new().request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.json().await.unwrap_or(Value::Null))
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Send raw bytes on a fresh connection (writing while reading) and return what the
/// server answered before closing, within 5 s.
async fn raw(port: u16, bytes: Vec<u8>) -> String {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The server may answer and close before it has read everything.
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed within 5 s");
    drop(writer.await);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(raw: &str) -> u16 {
    raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_rate_limit_answers_429_with_headers_then_allows_after_the_window() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("RATE_LIMIT_MAX", "3"), ("RATE_LIMIT_WINDOW_MS", "1000")]).await;
    let caps = format!("{}/capabilities", gw.url());
    // The launcher sent no request (it reads the address file): the quota is whole.
    for i in 0..3 {
        let (s, h, _) = get(&caps, &[]).await;
        assert_eq!(s, 200, "request {i}");
        assert_eq!(header(&h, "ratelimit-policy"), "\"client\";q=3;w=1, \"ip\";q=30;w=1");
        let want = format!("\"client\";r={};", 2 - i);
        assert!(header(&h, "ratelimit").starts_with(&want), "{i}: {:?}", header(&h, "ratelimit"));
    }
    let (s, h, v) = get(&caps, &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("RATE_LIMITED")), "{v}");
    assert_eq!(v["error"]["retryable"], true, "{v}");
    let retry: u64 = header(&h, "retry-after").parse().expect("Retry-After in seconds");
    assert!((1..=1).contains(&retry), "{retry}");
    assert_eq!(header(&h, "ratelimit"), "\"client\";r=0;t=1", "refused by the key: the IP is not reported");
    assert!(!header(&h, "ratelimit-policy").is_empty());
    assert!(!header(&h, "x-correlation-id").is_empty());
    // /health is exempt.
    for _ in 0..5 {
        let (s, h, _) = get(&format!("{}/health", gw.url()), &[]).await;
        assert_eq!(s, 200);
        assert!(h.get("ratelimit").is_none());
    }
    // A refused request takes nothing from the quota: ask until the window has passed.
    support::eventually_within(Duration::from_secs(5), "allowed again after the window", async || {
        let (s, _, v) = get(&caps, &[]).await;
        if s == 200 { Ok(()) } else { Err(v) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_rate_limit_counts_per_key_and_per_ip() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("RATE_LIMIT_MAX", "2"), ("RATE_LIMIT_IP_MAX", "3"), ("RATE_LIMIT_WINDOW_MS", "60000")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let caps = format!("{}/capabilities", gw.url());
    assert_eq!((get(&caps, &[("x-api-key", "alpha")]).await.0), 200);
    assert_eq!((get(&caps, &[("x-api-key", "alpha")]).await.0), 200);
    let (s, h, _) = get(&caps, &[("x-api-key", "alpha")]).await;
    assert_eq!(s, 429, "key alpha is over its quota");
    assert!(header(&h, "ratelimit").contains("\"client\";r=0"), "{:?}", header(&h, "ratelimit"));
    // Another key from the same IP has its own quota, until the IP's quota (3) is used up;
    // the refused request of alpha did not count against the IP.
    let (s, h, _) = get(&caps, &[("x-api-key", "beta")]).await;
    assert_eq!(s, 200);
    assert!(header(&h, "ratelimit").contains("\"ip\";r=0"), "{:?}", header(&h, "ratelimit"));
    let (s, h, _) = get(&caps, &[("x-api-key", "gamma")]).await;
    assert_eq!(s, 429, "the IP is over its quota whatever the key");
    assert!(header(&h, "ratelimit").contains("\"client\";r=1"), "{:?}", header(&h, "ratelimit"));
    assert_eq!(get(&caps, &[]).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_forwarded_for_decides_the_client_only_behind_a_trusted_proxy() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("RATE_LIMIT_MAX", "1"), ("RATE_LIMIT_WINDOW_MS", "60000")];
    let caps = |gw: &Gateway| format!("{}/capabilities", gw.url());

    let untrusted = Gateway::start(&subdir(dir.path(), "a"), &sim.url(), &env).await;
    assert_eq!(get(&caps(&untrusted), &[("x-forwarded-for", "203.0.113.1")]).await.0, 200);
    let (s, _, _) = get(&caps(&untrusted), &[("x-forwarded-for", "203.0.113.2")]).await;
    assert_eq!(s, 429, "a forged X-Forwarded-For from an untrusted peer is ignored");

    let mut env = env.to_vec();
    env.push(("TRUSTED_PROXIES", "127.0.0.0/8"));
    let trusted = Gateway::start(&subdir(dir.path(), "b"), &sim.url(), &env).await;
    assert_eq!(get(&caps(&trusted), &[("x-forwarded-for", "203.0.113.1")]).await.0, 200);
    assert_eq!(get(&caps(&trusted), &[("x-forwarded-for", "198.51.100.7, 203.0.113.1")]).await.0, 429);
    assert_eq!(get(&caps(&trusted), &[("x-forwarded-for", "203.0.113.1, 127.0.0.9")]).await.0, 429);
    assert_eq!(get(&caps(&trusted), &[("x-forwarded-for", "203.0.113.2")]).await.0, 200, "another client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_cors_allows_only_the_configured_origins() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let gw = Gateway::start(&subdir(dir.path(), "a"), &sim.url(), &[("CORS_ORIGINS", "https://app.example")]).await;
    let jobs = format!("{}/jobs", gw.url());
    let preflight = |origin: &'static str| {
        let jobs = jobs.clone();
        async move {
            request(
                reqwest::Method::OPTIONS,
                &jobs,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type, x-api-key"),
                ],
            )
            .await
        }
    };
    let (s, h, _) = preflight("https://app.example").await;
    assert_eq!(s, 204);
    assert_eq!(header(&h, "access-control-allow-origin"), "https://app.example");
    assert!(header(&h, "access-control-allow-methods").contains("POST"));
    for name in ["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key", "Last-Event-ID"] {
        assert!(header(&h, "access-control-allow-headers").contains(name), "{name}");
    }
    assert_eq!(header(&h, "access-control-max-age"), "600");
    assert_eq!(header(&h, "vary"), "Origin");

    let (s, h, _) = preflight("https://evil.example").await;
    assert_eq!(s, 204);
    assert!(h.get("access-control-allow-origin").is_none() && h.get("access-control-allow-methods").is_none());

    let (s, h, _) = get(&format!("{}/capabilities", gw.url()), &[("origin", "https://app.example")]).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), "https://app.example");
    for name in ["X-Correlation-Id", "ETag", "Retry-After", "RateLimit", "RateLimit-Policy", "Location"] {
        assert!(header(&h, "access-control-expose-headers").contains(name), "{name}");
    }
    let (_, h, _) = get(&format!("{}/capabilities", gw.url()), &[("origin", "https://evil.example")]).await;
    assert!(h.get("access-control-allow-origin").is_none());

    let closed = Gateway::start(&subdir(dir.path(), "b"), &sim.url(), &[]).await;
    let (s, h, _) = request(
        reqwest::Method::OPTIONS,
        &format!("{}/jobs", closed.url()),
        &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(s, 204);
    assert!(h.get("access-control-allow-origin").is_none(), "CORS_ORIGINS unset allows no origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_cap_unfinished_jobs_per_client() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 20).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("MAX_JOBS_PER_CLIENT", "2")]).await;
    sim.faults(json!({"hang": 1})).await;
    let job = json!({"workflowId": "icon_512", "inputs": {"prompt": "p"}});
    let submit = |key: Option<&'static str>| {
        let url = format!("{}/jobs", gw.url());
        let job = job.clone();
        async move {
            let mut rb = reqwest::Client::new().post(url).json(&job);
            if let Some(k) = key {
                rb = rb.header("x-api-key", k);
            }
            let r = rb.send().await.unwrap();
            let s = r.status().as_u16();
            if s == 429 {
                assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"), "job cap 429");
            }
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, first) = submit(None).await;
    assert_eq!(s, 202, "{first}");
    assert_eq!(submit(None).await.0, 202);
    let (s, v) = submit(None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("RATE_LIMITED")), "{v}");
    assert_eq!(submit(Some("other-client")).await.0, 202, "the cap is per client");
    // A finished job no longer counts.
    let id = first["jobId"].as_str().unwrap();
    let (s, _) = support::post_json(&format!("{}/jobs/{id}/cancel", gw.url()), &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(gw.wait_terminal(id, WAIT).await["status"], "canceled");
    assert_eq!(submit(None).await.0, 202);
    assert_eq!(submit(None).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_bodies_headers_json_query_and_paths() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    // `ALLOWED_HOSTS`: the raw requests below name the host `x`.
    let env = [("MAX_BODY_BYTES", "65536"), ("HEADER_READ_TIMEOUT_MS", "300"), ("ALLOWED_HOSTS", "x")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;

    // A chunked body (no Content-Length) beyond MAX_BODY_BYTES.
    let mut req = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..8 {
        req.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
        req.extend_from_slice(&[b' '; 16 * 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(gw.port, req).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");

    // Headers that never end are cut off by the header read timeout.
    let start = Instant::now();
    let answer = raw(gw.port, b"GET /capabilities HTTP/1.1\r\nHost: x\r\n".to_vec()).await;
    assert!(!answer.contains(" 200 "), "{answer}");
    assert!(start.elapsed() >= Duration::from_millis(250), "closed by the timeout: {:?}", start.elapsed());
    // An idle keep-alive connection is closed by the same timeout (it cannot hold a slot).
    let start = Instant::now();
    let answer = raw(gw.port, b"GET /capabilities HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(start.elapsed() >= Duration::from_millis(250), "closed when idle: {:?}", start.elapsed());

    // Deep JSON.
    let deep = format!("{{\"workflowId\": \"icon_512\", \"inputs\": {}{}}}", "[".repeat(100), "]".repeat(100));
    let (s, v) = support::post_raw(&format!("{}/jobs", gw.url()), "application/json", deep.into_bytes()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("deeper than 64"), "{v}");

    // Too many query parameters.
    let query: Vec<String> = (0..65).map(|i| format!("p{i}=1")).collect();
    let (s, _, v) = get(&format!("{}/capabilities?{}", gw.url(), query.join("&")), &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("64 query parameters"), "{v}");
    let (s, _, v) = get(&format!("{}/capabilities?{}", gw.url(), query[..64].join("&")), &[]).await;
    assert_eq!(s, 200, "64 are fine: {v}");

    // Path traversal on a real job's outputs.
    let id = gw.submit_ok(json!({"workflowId": "icon_512", "inputs": {"prompt": "p"}})).await;
    let done = gw.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let name = done["outputs"][0]["name"].as_str().unwrap_or("");
    assert!(!name.is_empty(), "{done}");
    let ok =
        raw(gw.port, format!("GET /outputs/{id}/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes())
            .await;
    assert_eq!(status_of(&ok), 200, "{}", &ok[..ok.len().min(300)]);
    for file in [
        format!("../{id}/{name}"),
        "..".to_string(),
        "%2e%2e".to_string(),
        format!("%2e%2e%2f{id}%2f{name}"),
        format!("..%2f..%2f..%2f{}", "etc%2fpasswd"),
        format!("x%2f..%2f{name}"),
    ] {
        let answer = raw(
            gw.port,
            format!("GET /outputs/{id}/{file} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), 404, "{file}: {}", &answer[..answer.len().min(300)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_connections_beyond_max_connections_wait() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let env = [("MAX_CONNECTIONS", "1"), ("HEADER_READ_TIMEOUT_MS", "60000")];
    let gw = Gateway::start(dir.path(), &sim.url(), &env).await;
    let url = format!("{}/capabilities", gw.url());
    // The launcher sent no request (it reads the address file): no connection is held.
    let mut holder = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    holder.write_all(b"GET /capabilities HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // No wait needed: the kernel queues connections in order, so the gateway accepts the
    // holder (and gives it the only slot) before the request below.
    let client = reqwest::Client::new();
    let waited = client.get(&url).timeout(Duration::from_millis(700)).send().await;
    assert!(waited.is_err(), "a second connection is not served while the only slot is taken");
    drop(holder);
    let r = client.get(&url).timeout(Duration::from_secs(5)).send().await.expect("served once the slot is free");
    assert_eq!(r.status().as_u16(), 200);
}

/// The per-client cap survives a restart: an authenticated client's unfinished jobs are
/// counted again from the store (by owner) when the gateway starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_job_cap_counts_survive_a_restart() {
    let dir = support::tempdir();
    // No backend: the jobs stay queued.
    let backend = support::DeadPort::new();
    let env = [("MAX_JOBS_PER_CLIENT", "2"), ("API_KEYS", "capuserkey01:user")];
    let mut gw = Gateway::start(dir.path(), &backend.url(), &env).await;
    let submit = |url: String| async move {
        let r = reqwest::Client::new()
            .post(format!("{url}/jobs"))
            .header("x-api-key", "capuserkey01")
            .json(&json!({"workflowId": "icon_512", "inputs": {"prompt": "p"}}))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    assert_eq!(submit(gw.url()).await, 202);
    assert_eq!(submit(gw.url()).await, 202);
    assert_eq!(submit(gw.url()).await, 429);
    gw.restart().await;
    assert_eq!(submit(gw.url()).await, 429, "the two queued jobs still count after the restart");
}
