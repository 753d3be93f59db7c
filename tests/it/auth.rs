//! Authentication and authorization against the real server: API keys with roles, JWTs
//! (HS256, EdDSA) and the attacks on them, job ownership on every per-job route, the
//! audit log, open mode, and configuration errors at start.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{self, Gateway, Sim};

const WAIT: Duration = Duration::from_secs(60);

const ADMIN_KEY: &str = "admin-key-0001";
const ALICE_KEY: &str = "alice-key-0001";
const BOB_KEY: &str = "bob-key-00001";
const SECRET: &str = "a-test-secret-of-more-than-32-bytes!";

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    Key(&'a str),
    Bearer(&'a str),
}

/// One request: status, headers and JSON body (Null if not JSON).
async fn call(
    method: &str,
    url: &str,
    cred: Cred<'_>,
    body: Option<&Value>,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let mut r = client.request(method.parse().unwrap(), url);
    r = match cred {
        Cred::None => r,
        Cred::Key(k) => r.header("x-api-key", k),
        Cred::Bearer(t) => r.header("authorization", format!("Bearer {t}")),
    };
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The owner id of an API key: `key:` + the first 16 hex digits of its SHA-256.
fn key_owner(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("key:{hex}")
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn icon_job(seed: u64) -> Value {
    json!({"workflowId": "icon_512", "inputs": {"prompt": "a small fox", "seed": seed}})
}

async fn submit(gw: &Gateway, cred: Cred<'_>, seed: u64) -> String {
    let (status, _, v) = call("POST", &format!("{}/jobs", gw.url()), cred, Some(&icon_job(seed)), &[]).await;
    assert_eq!(status, 202, "submit: {v}");
    v["jobId"].as_str().unwrap().to_string()
}

async fn wait_status(gw: &Gateway, cred: Cred<'_>, id: &str, want: &[&str]) -> Value {
    let what = || format!("job {id} is {want:?}\n{}", gw.proc_.log());
    support::eventually_within(WAIT, what, async || {
        let (status, _, v) = call("GET", &format!("{}/jobs/{id}", gw.url()), cred, None, &[]).await;
        assert_eq!(status, 200, "{v}");
        if want.contains(&v["status"].as_str().unwrap_or("")) { Ok(v) } else { Err(v) }
    })
    .await
}

fn listed(v: &Value) -> Vec<String> {
    v["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap().to_string()).collect()
}

fn workflow_body(id: &str) -> Value {
    json!({"id": id, "workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_api_keys_roles_ownership_and_audit() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let keys = format!("{ADMIN_KEY}:admin,{ALICE_KEY}:user");
    let key_file = dir.path().join("keys.txt");
    std::fs::write(&key_file, format!("# more keys\n{BOB_KEY}:user\n")).unwrap();
    let key_file = key_file.display().to_string();
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &keys), ("API_KEYS_FILE", &key_file)]).await;
    let base = gw.url();
    let (admin, alice, bob) = (Cred::Key(ADMIN_KEY), Cred::Key(ALICE_KEY), Cred::Key(BOB_KEY));

    // Health is public (503 until the backend's socket is up); the rest needs credentials.
    let (status, _, v) = call("GET", &format!("{base}/health"), Cred::None, None, &[]).await;
    assert!(status == 200 || status == 503, "{status}: {v}");
    assert!(v["ok"].is_boolean(), "{v}");
    for (cred, what) in [
        (Cred::None, "no key"),
        (Cred::Key("wrong-key-0001"), "wrong key"),
        (Cred::Key(""), "empty key"),
        (Cred::Bearer("not.a.jwt"), "a bearer token where none is configured"),
    ] {
        for path in ["/jobs", "/workflows", "/capabilities", "/metrics", "/audit", "/no/such/route"] {
            let (status, headers, v) = call("GET", &format!("{base}{path}"), cred, None, &[]).await;
            assert_eq!((status, code(&v)), (401, "AUTH_FAILED"), "{what} on {path}: {v}");
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.contains("X-API-Key"), "{challenge}");
        }
        let (status, _, v) = call("POST", &format!("{base}/jobs"), cred, Some(&icon_job(1)), &[]).await;
        assert_eq!((status, code(&v)), (401, "AUTH_FAILED"), "{what}: {v}");
    }
    // The key is never logged, only its fingerprint.
    assert!(!gw.proc_.log().contains(ALICE_KEY) && gw.proc_.log().contains(&key_owner(ALICE_KEY)));

    // Alice's job, finished.
    let job = submit(&gw, alice, 1).await;
    let done = wait_status(&gw, alice, &job, &["succeeded", "failed", "canceled"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let file_url = format!("{base}{}", done["outputs"][0]["url"].as_str().unwrap());
    let bob_job = submit(&gw, bob, 2).await;

    // Bob cannot see, follow, download or cancel it: the same 404 as a job that never was.
    let missing = uuid::Uuid::new_v4();
    for (method, path) in [
        ("GET", format!("/jobs/{job}")),
        ("GET", format!("/jobs/{job}/logs")),
        ("GET", format!("/jobs/{job}/events")),
        ("GET", format!("/outputs/{job}")),
        ("GET", file_url.trim_start_matches(&base).to_string()),
        ("HEAD", file_url.trim_start_matches(&base).to_string()),
        ("POST", format!("/jobs/{job}/cancel")),
    ] {
        let (status, _, v) = call(method, &format!("{base}{path}"), bob, None, &[]).await;
        assert_eq!(status, 404, "bob {method} {path}: {v}");
        if method != "HEAD" {
            assert_eq!(code(&v), "JOB_NOT_FOUND", "{v}");
        }
        let other = path.replace(&job, &missing.to_string());
        let (status_missing, _, _) = call(method, &format!("{base}{other}"), bob, None, &[]).await;
        assert_eq!(status_missing, status, "{path}: another owner's job looks like a missing one");
        // Alice and the admin can.
        for (who, cred) in [("alice", alice), ("admin", admin)] {
            if method == "POST" {
                continue;
            }
            let (status, _, v) = call(method, &format!("{base}{path}"), cred, None, &[]).await;
            assert_eq!(status, 200, "{who} {method} {path}: {v}");
        }
    }
    let (status, _, v) = call("GET", &file_url, alice, None, &[]).await;
    assert_eq!(status, 200);
    assert!(v.is_null(), "the download is the file itself");

    // Listing: each user sees only its own jobs, the admin sees all.
    let jobs_url = format!("{base}/jobs");
    assert_eq!(listed(&call("GET", &jobs_url, alice, None, &[]).await.2), vec![job.clone()]);
    assert_eq!(listed(&call("GET", &jobs_url, bob, None, &[]).await.2), vec![bob_job.clone()]);
    let all = listed(&call("GET", &jobs_url, admin, None, &[]).await.2);
    assert!(all.contains(&job) && all.contains(&bob_job), "{all:?}");

    // Users read workflows but cannot change them; the admin can.
    for path in ["/workflows", "/workflows/icon_512", "/capabilities", "/openapi.json"] {
        let (status, _, v) = call("GET", &format!("{base}{path}"), bob, None, &[]).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    let body = workflow_body("tiny");
    let (status, _, v) = call("POST", &format!("{base}/workflows"), bob, Some(&body), &[]).await;
    assert_eq!((status, code(&v)), (403, "FORBIDDEN"), "{v}");
    let (status, _, v) = call("PUT", &format!("{base}/workflows/icon_512"), bob, Some(&body), &[]).await;
    assert_eq!((status, code(&v)), (403, "FORBIDDEN"), "{v}");
    let (status, _, v) = call("DELETE", &format!("{base}/workflows/icon_512"), bob, None, &[]).await;
    assert_eq!((status, code(&v)), (403, "FORBIDDEN"), "{v}");
    let (status, _, _) = call("GET", &format!("{base}/workflows/icon_512"), admin, None, &[]).await;
    assert_eq!(status, 200, "the forbidden delete did nothing");
    let (status, _, v) = call("GET", &format!("{base}/metrics"), bob, None, &[]).await;
    assert_eq!((status, code(&v)), (403, "FORBIDDEN"), "{v}");
    let (status, _, _) = call("GET", &format!("{base}/metrics"), admin, None, &[]).await;
    assert_eq!(status, 200);

    let corr = [("x-correlation-id", "audit-create-0001")];
    let (status, _, v) = call("POST", &format!("{base}/workflows"), admin, Some(&body), &corr).await;
    assert_eq!(status, 201, "{v}");
    let (status, _, v) = call("PUT", &format!("{base}/workflows/tiny"), admin, Some(&body), &[]).await;
    assert_eq!(status, 200, "{v}");
    let (status, _, _) = call("DELETE", &format!("{base}/workflows/tiny"), admin, None, &[]).await;
    assert_eq!(status, 204);

    // Alice cancels her own running job.
    sim.faults(json!({"hang": 1})).await;
    let hung = submit(&gw, alice, 3).await;
    wait_status(&gw, alice, &hung, &["running"]).await;
    let (status, _, _) = call("POST", &format!("{base}/jobs/{hung}/cancel"), bob, None, &[]).await;
    assert_eq!(status, 404);
    let (status, _, v) = call("POST", &format!("{base}/jobs/{hung}/cancel"), alice, None, &[]).await;
    assert_eq!(status, 200, "{v}");

    // The audit log: admins only, newest first, with actor, role and correlation id.
    for cred in [alice, bob] {
        let (status, _, v) = call("GET", &format!("{base}/audit"), cred, None, &[]).await;
        assert_eq!((status, code(&v)), (403, "FORBIDDEN"), "{v}");
    }
    let (status, _, v) = call("GET", &format!("{base}/audit?limit=3"), admin, None, &[]).await;
    assert_eq!(status, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["job.cancel", "workflow.delete", "workflow.update"], "{v}");
    assert_eq!(entries[0]["actor"], key_owner(ALICE_KEY));
    assert_eq!(entries[0]["role"], "user");
    assert_eq!(entries[0]["target"], hung.as_str());
    assert_eq!(entries[1]["actor"], key_owner(ADMIN_KEY));
    assert_eq!(entries[1]["role"], "admin");
    assert_eq!(entries[1]["target"], "tiny");
    let cursor = v["nextCursor"].as_str().expect("a next page").to_string();
    let (status, _, v) = call("GET", &format!("{base}/audit?cursor={cursor}"), admin, None, &[]).await;
    assert_eq!(status, 200);
    let rest = v["entries"].as_array().unwrap();
    assert_eq!(rest.len(), 1, "only the forbidden attempts were not recorded: {v}");
    assert_eq!(rest[0]["action"], "workflow.create");
    assert_eq!(rest[0]["correlationId"], "audit-create-0001");
    assert!(v["nextCursor"].is_null());

    // The CLI reaches the running gateway with GATEWAY_API_KEY.
    let wf = dir.path().join("cli_wf.json");
    std::fs::write(&wf, workflow_body("x")["workflow"].to_string()).unwrap();
    let port = gw.port.to_string();
    let cli = |key: Option<&str>| {
        let mut cmd = support::bin();
        cmd.args(["add-workflow", wf.to_str().unwrap(), "--id", "cli_wf", "--port", &port]).env("DATABASE_URL", &gw.db);
        if let Some(key) = key {
            cmd.env("GATEWAY_API_KEY", key);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, text) = cli(None);
    assert!(!ok && text.contains("401"), "{text}");
    let (ok, text) = cli(Some(BOB_KEY));
    assert!(!ok && text.contains("403"), "{text}");
    let (ok, text) = cli(Some(ADMIN_KEY));
    assert!(ok && text.contains("cli_wf version 1"), "{text}");
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with `alg: none` and no signature.
fn alg_none(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", b64url(claims.to_string().as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_jwt_hs256_owner_and_attacks() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[("JWT_SECRET", SECRET)]).await;
    let base = gw.url();
    let now = now_s();
    let carol = hs256(SECRET.as_bytes(), &json!({"sub": "carol", "exp": now + 600}));
    let dave = hs256(SECRET.as_bytes(), &json!({"sub": "dave", "exp": now + 600, "role": "user"}));
    let admin = hs256(SECRET.as_bytes(), &json!({"sub": "ops", "exp": now + 600, "role": "admin"}));

    // A valid token works and its subject owns the job.
    let job = submit(&gw, Cred::Bearer(&carol), 1).await;
    let (status, _, _) = call("GET", &format!("{base}/jobs/{job}"), Cred::Bearer(&carol), None, &[]).await;
    assert_eq!(status, 200);
    let (status, _, v) = call("GET", &format!("{base}/jobs/{job}"), Cred::Bearer(&dave), None, &[]).await;
    assert_eq!((status, code(&v)), (404, "JOB_NOT_FOUND"));
    let (_, _, v) = call("GET", &format!("{base}/jobs"), Cred::Bearer(&dave), None, &[]).await;
    assert!(listed(&v).is_empty());
    let (_, _, v) = call("GET", &format!("{base}/jobs"), Cred::Bearer(&admin), None, &[]).await;
    assert_eq!(listed(&v), vec![job.clone()]);
    let body = workflow_body("jwt_made");
    let (status, _, v) = call("POST", &format!("{base}/workflows"), Cred::Bearer(&dave), Some(&body), &[]).await;
    assert_eq!((status, code(&v)), (403, "FORBIDDEN"));
    let (status, _, v) = call("POST", &format!("{base}/workflows"), Cred::Bearer(&admin), Some(&body), &[]).await;
    assert_eq!(status, 201, "{v}");
    let (_, _, v) = call("GET", &format!("{base}/audit"), Cred::Bearer(&admin), None, &[]).await;
    assert_eq!(v["entries"][0]["actor"], "jwt:ops");

    let attacks = [
        ("alg none", alg_none(&json!({"sub": "carol", "exp": now + 600, "role": "admin"}))),
        ("wrong secret", hs256(b"another-secret-of-more-than-32-bytes", &json!({"sub": "carol", "exp": now + 600}))),
        ("expired", hs256(SECRET.as_bytes(), &json!({"sub": "carol", "exp": now - 120}))),
        ("nbf in the future", hs256(SECRET.as_bytes(), &json!({"sub": "carol", "exp": now + 600, "nbf": now + 300}))),
        ("no exp", hs256(SECRET.as_bytes(), &json!({"sub": "carol"}))),
        ("no sub", hs256(SECRET.as_bytes(), &json!({"exp": now + 600}))),
        ("unknown role", hs256(SECRET.as_bytes(), &json!({"sub": "carol", "exp": now + 600, "role": "root"}))),
        ("malformed", "abc.def".to_string()),
        ("tampered", {
            let mut parts: Vec<String> = carol.split('.').map(str::to_string).collect();
            parts[1] = b64url(json!({"sub": "carol", "exp": now + 600, "role": "admin"}).to_string().as_bytes());
            parts.join(".")
        }),
    ];
    for (what, token) in &attacks {
        for path in [format!("/jobs/{job}"), "/audit".to_string()] {
            let (status, headers, v) = call("GET", &format!("{base}{path}"), Cred::Bearer(token), None, &[]).await;
            assert_eq!((status, code(&v)), (401, "AUTH_FAILED"), "{what} on {path}: {v}");
            assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        }
    }
    // Within the 30 s leeway a just-expired token still works.
    let skewed = hs256(SECRET.as_bytes(), &json!({"sub": "carol", "exp": now - 5}));
    let (status, _, _) = call("GET", &format!("{base}/jobs/{job}"), Cred::Bearer(&skewed), None, &[]).await;
    assert_eq!(status, 200);
    // No API keys are configured: a key is refused.
    let (status, _, _) = call("GET", &format!("{base}/jobs"), Cred::Key("some-key-0001"), None, &[]).await;
    assert_eq!(status, 401);
}

/// An Ed25519 key pair: the private key (PKCS#8 DER) and the public key as PEM (SPKI).
fn ed25519() -> (Vec<u8>, String) {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(pair.public_key().as_ref());
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
    (pkcs8.as_ref().to_vec(), format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_jwt_eddsa_only_accepts_its_own_algorithm() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let (private, public_pem) = ed25519();
    let pem_path = dir.path().join("jwt.pub.pem");
    std::fs::write(&pem_path, &public_pem).unwrap();
    let pem_path = pem_path.display().to_string();
    let gw = Gateway::start(dir.path(), &sim.url(), &[("JWT_PUBLIC_KEY", &pem_path)]).await;
    let base = gw.url();
    let claims = json!({"sub": "erin", "exp": now_s() + 600, "role": "admin"});
    let eddsa = |der: &[u8]| {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &EncodingKey::from_ed_der(der)).unwrap()
    };
    let valid = eddsa(&private);
    let (status, _, v) = call("GET", &format!("{base}/audit"), Cred::Bearer(&valid), None, &[]).await;
    assert_eq!(status, 200, "{v}");
    let job = submit(&gw, Cred::Bearer(&valid), 1).await;

    let (other_private, _) = ed25519();
    let attacks = [
        ("HS256 signed with the public key PEM", hs256(public_pem.as_bytes(), &claims)),
        ("HS256 signed with the PEM's base64 body", hs256(public_pem.lines().nth(1).unwrap().as_bytes(), &claims)),
        ("HS256 with some secret", hs256(SECRET.as_bytes(), &claims)),
        ("EdDSA signed by another key", eddsa(&other_private)),
        ("alg none", alg_none(&claims)),
    ];
    for (what, token) in &attacks {
        let (status, _, v) = call("GET", &format!("{base}/jobs/{job}"), Cred::Bearer(token), None, &[]).await;
        assert_eq!((status, code(&v)), (401, "AUTH_FAILED"), "{what}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_open_mode_needs_no_credentials_and_metrics_can_be_public() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let gw = Gateway::start(dir.path(), &sim.url(), &[]).await;
    let base = gw.url();
    assert!(gw.proc_.log().contains("open mode"), "a warning at start:\n{}", gw.proc_.log());
    let job = submit(&gw, Cred::None, 1).await;
    for path in [format!("/jobs/{job}"), "/jobs".to_string(), "/metrics".to_string(), "/audit".to_string()] {
        let (status, _, v) = call("GET", &format!("{base}{path}"), Cred::None, None, &[]).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    let (status, _, _) = call("DELETE", &format!("{base}/workflows/icon_512"), Cred::None, None, &[]).await;
    assert_eq!(status, 204);
    let (_, _, v) = call("GET", &format!("{base}/audit"), Cred::None, None, &[]).await;
    assert_eq!(v["entries"][0]["action"], "workflow.delete");
    assert!(v["entries"][0]["actor"].is_null() && v["entries"][0]["role"].is_null());
    drop(gw);

    // With keys and METRICS_PUBLIC, /metrics needs none but the rest does.
    let dir2 = support::tempdir();
    let keys = format!("{ADMIN_KEY}:admin");
    let gw = Gateway::start(dir2.path(), &sim.url(), &[("API_KEYS", &keys), ("METRICS_PUBLIC", "true")]).await;
    let (status, _, _) = call("GET", &format!("{}/metrics", gw.url()), Cred::None, None, &[]).await;
    assert_eq!(status, 200);
    let (status, _, _) = call("GET", &format!("{}/jobs", gw.url()), Cred::None, None, &[]).await;
    assert_eq!(status, 401);
}

/// Every operation of the route table (`routes::ROUTES`) against the server, with keys:
/// without credentials 401 unless public; a user 403 on admin-only operations; neither 401
/// nor 403 for a caller who may; a method a route does not take 405 with the route's
/// `Allow` (401 first without credentials, unless the route is public); an unknown path
/// 404 (401 without credentials). Which operations are public and which admin-only is
/// pinned here, so a change to the table shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_every_operation_of_the_route_table() {
    use comfyui_gateway::api::routes::{Access, ROUTES};
    let public = [("GET", "/health"), ("GET", "/livez"), ("GET", "/readyz")].into_iter().chain([
        ("GET", "/"),
        ("HEAD", "/"),
        ("GET", "/ui/{file}"),
        ("HEAD", "/ui/{file}"),
        ("GET", "/docs"),
        ("HEAD", "/docs"),
    ]);
    let public: Vec<(&str, &str)> = public.collect();
    let admin_only = [
        ("POST", "/workflows"),
        ("PUT", "/workflows/{id}"),
        ("DELETE", "/workflows/{id}"),
        ("POST", "/workflows/import"),
        ("GET", "/metrics"),
        ("GET", "/audit"),
        ("POST", "/backends/{id}/drain"),
        ("POST", "/backends/{id}/resume"),
        ("POST", "/admin/backup"),
    ];
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let keys = format!("{ADMIN_KEY}:admin,{ALICE_KEY}:user");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &keys)]).await;
    let (admin, alice) = (Cred::Key(ADMIN_KEY), Cred::Key(ALICE_KEY));
    let unknown = uuid::Uuid::new_v4().to_string();
    // An answer to HEAD has no body to carry the code: its status alone is checked.
    let code_of =
        |v: &Value, method: &str, want: &str| if method == "HEAD" { want.to_string() } else { code(v).to_string() };
    let mut n_ops = 0;
    for route in ROUTES {
        let path = route.pattern.replace("{id}", &unknown).replace("{file}", "app.js");
        let url = format!("{}{path}", gw.url());
        for op in route.ops {
            n_ops += 1;
            let (method, what) = (op.method.as_str(), format!("{} {}", op.method, route.pattern));
            let is_public = matches!(op.access, Access::Public | Access::PublicOrCaller);
            let is_admin = matches!(op.access, Access::Admin(_) | Access::Metrics);
            assert_eq!(is_public, public.contains(&(method, route.pattern)), "{what}: public or not");
            assert_eq!(is_admin, admin_only.contains(&(method, route.pattern)), "{what}: admin-only or not");
            let (status, _, v) = call(method, &url, Cred::None, None, &[]).await;
            if is_public {
                assert_ne!(status, 401, "{what} without credentials: {v}");
            } else {
                assert_eq!(
                    (status, code_of(&v, method, "AUTH_FAILED")),
                    (401, "AUTH_FAILED".into()),
                    "{what} without credentials: {v}"
                );
            }
            let (status, _, v) = call(method, &url, alice, None, &[]).await;
            if is_admin {
                assert_eq!(
                    (status, code_of(&v, method, "FORBIDDEN")),
                    (403, "FORBIDDEN".into()),
                    "{what} as a user: {v}"
                );
            } else {
                assert!(status != 401 && status != 403, "{what} as a user: {status} {v}");
            }
            let (status, _, v) = call(method, &url, admin, None, &[]).await;
            assert!(status != 401 && status != 403, "{what} as an admin: {status} {v}");
        }
        // A method no route takes.
        let (status, headers, v) = call("PATCH", &url, admin, None, &[]).await;
        assert_eq!((status, code(&v)), (405, "METHOD_NOT_ALLOWED"), "PATCH {}: {v}", route.pattern);
        let allow: Vec<&str> = route.ops.iter().map(|o| o.method.as_str()).collect();
        assert_eq!(headers["allow"].to_str().unwrap(), allow.join(", "), "PATCH {}", route.pattern);
        let (status, _, v) = call("PATCH", &url, Cred::None, None, &[]).await;
        let open = route.ops.iter().all(|o| matches!(o.access, Access::Public | Access::PublicOrCaller));
        assert_eq!(status, if open { 405 } else { 401 }, "PATCH {} without credentials: {v}", route.pattern);
    }
    assert!(n_ops >= 30, "the table has {n_ops} operations");
    // The Allow field of a few routes, spelled out.
    for (method, path, allow) in [
        ("POST", "/workflows/x", "GET, PUT, DELETE"),
        ("DELETE", "/jobs", "GET, POST"),
        ("POST", "/ui/app.js", "GET, HEAD"),
    ] {
        let (status, headers, v) = call(method, &format!("{}{path}", gw.url()), admin, None, &[]).await;
        assert_eq!((status, headers["allow"].to_str().unwrap()), (405, allow), "{method} {path}: {v}");
    }
    for (cred, want) in [(Cred::None, (401, "AUTH_FAILED")), (alice, (404, "NOT_FOUND")), (admin, (404, "NOT_FOUND"))] {
        let (status, _, v) = call("GET", &format!("{}/no/such/route", gw.url()), cred, None, &[]).await;
        assert_eq!((status, code(&v)), want, "{v}");
    }
}

#[test]
fn auth_configuration_errors_stop_start_up_naming_the_variable() {
    let dir = support::tempdir();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let not_pem = not_pem.display().to_string();
    let cases = [
        ("API_KEYS", "some-key-0001:root"),
        ("API_KEYS", "no-role-here"),
        ("API_KEYS_FILE", "/nonexistent/keys.txt"),
        ("JWT_SECRET", "too-short"),
        ("JWT_PUBLIC_KEY", not_pem.as_str()),
        ("JWT_PUBLIC_KEY", "/nonexistent/key.pem"),
    ];
    for (var, value) in cases {
        let out = support::bin()
            .arg("serve")
            .env("PORT", "0")
            .env("DATABASE_URL", dir.path().join("g.redb"))
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(var), "{var}: {stderr}");
        if var == "API_KEYS" {
            assert!(!lines[0].contains("some-key-0001"), "the key is not echoed: {stderr}");
        }
    }
}

/// `POST /jobs/cancel` cancels a user's own queued jobs by filter and nobody else's (the
/// neighbour's jobs stay queued and run), `limit` caps one call with `more` to continue,
/// every cancel is audited, and an admin's call reaches any owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancel_takes_only_the_callers_jobs_unless_admin() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let keys = format!("{ADMIN_KEY}:admin,{ALICE_KEY}:user,{BOB_KEY}:user");
    let gw = Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &keys)]).await;
    let base = gw.url();
    let (admin, alice, bob) = (Cred::Key(ADMIN_KEY), Cred::Key(ALICE_KEY), Cred::Key(BOB_KEY));
    // Every backend drained: jobs stay queued until resumed.
    let (_, _, backends) = call("GET", &format!("{base}/backends"), admin, None, &[]).await;
    let ids: Vec<String> =
        backends["backends"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    for id in &ids {
        let (status, _, v) = call("POST", &format!("{base}/backends/{id}/drain"), admin, None, &[]).await;
        assert_eq!(status, 200, "{v}");
    }
    let mut alices = Vec::new();
    for seed in 0..5 {
        alices.push(submit(&gw, alice, 100 + seed).await);
    }
    let bobs = [submit(&gw, bob, 200).await, submit(&gw, bob, 201).await];
    let cancel = |cred, body: Value| {
        let url = format!("{base}/jobs/cancel");
        async move { call("POST", &url, cred, Some(&body), &[]).await }
    };

    // Bad filters are refused with the field named.
    let (status, _, v) = cancel(alice, json!({"status": ["succeeded"]})).await;
    assert_eq!((status, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "/status/0", "{v}");
    let (status, _, v) = cancel(alice, json!({"limit": 0})).await;
    assert_eq!((status, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
    let (status, _, v) = cancel(alice, json!({"everything": true})).await;
    assert_eq!((status, code(&v)), (400, "VALIDATION_ERROR"), "{v}");

    // Alice's, three at a time: newest first, then the rest.
    let (status, _, first) = cancel(alice, json!({"workflowId": "icon_512", "limit": 3})).await;
    assert_eq!(status, 200, "{first}");
    let first_ids: Vec<String> =
        first["canceled"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(first_ids, alices.iter().rev().take(3).cloned().collect::<Vec<_>>(), "newest first: {first}");
    assert_eq!(first["more"], true, "{first}");
    let (_, _, rest) = cancel(alice, json!({})).await;
    assert_eq!(rest["canceled"].as_array().unwrap().len(), 2, "{rest}");
    assert_eq!(rest["more"], false, "{rest}");
    let (_, _, none) = cancel(alice, json!({})).await;
    assert_eq!(none["canceled"], json!([]), "nothing left of Alice's: {none}");
    for id in &alices {
        let (_, _, v) = call("GET", &format!("{base}/jobs/{id}"), alice, None, &[]).await;
        assert_eq!(v["status"], "canceled", "{v}");
    }
    // Bob's jobs were not touched: they run once the backends are back.
    for id in &ids {
        call("POST", &format!("{base}/backends/{id}/resume"), admin, None, &[]).await;
    }
    wait_status(&gw, bob, &bobs[0], &["succeeded"]).await;
    wait_status(&gw, bob, &bobs[1], &["succeeded"]).await;

    // Every cancel is in the audit log, by its actor.
    let (_, _, audit) = call("GET", &format!("{base}/audit?limit=500"), admin, None, &[]).await;
    let audited: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["target"].as_str()).collect();
    for id in &alices {
        assert!(audited.contains(&id.as_str()), "{id} audited: {audit}");
    }

    // An admin reaches anyone's.
    for id in &ids {
        call("POST", &format!("{base}/backends/{id}/drain"), admin, None, &[]).await;
    }
    let bob_queued = submit(&gw, bob, 300).await;
    let (status, _, by_admin) = cancel(admin, json!({"status": ["queued"]})).await;
    assert_eq!(status, 200, "{by_admin}");
    assert_eq!(by_admin["canceled"], json!([bob_queued]), "{by_admin}");
}
