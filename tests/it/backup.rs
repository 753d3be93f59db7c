//! Online backups: `POST /admin/backup` and `comfyui-gateway backup` while a client keeps
//! submitting; the copies pass `comfyui-gateway check`; a gateway restored from a copy
//! serves every job acknowledged before the backup began; admins only, 507 without room.
//! (One backup at a time is held to deterministically by `service`'s unit test.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{self, Gateway, Sim};

const ADMIN_KEY: &str = "backup-admin-key-0123456789abcdef";
const USER_KEY: &str = "backup-user-key-0123456789abcdefg";
const WAIT: Duration = Duration::from_secs(180);

/// What the neighbour saw: the ids acknowledged (202), in order, and every other answer.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    refused: Vec<(u16, String)>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `comfyui-gateway check` on `db`: its stdout, or a panic with what it printed.
fn check(db: &std::path::Path) -> String {
    let out = support::bin().args(["check", "--database-url", &db.display().to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "check {}: {text}{}", db.display(), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("integrity: ok"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_under_load_are_consistent_and_restore_every_acknowledged_job() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let keys = format!("{ADMIN_KEY}:admin,{USER_KEY}:user");
    let gw = Gateway::start(
        dir.path(),
        &sim.url(),
        &[("API_KEYS", &keys), ("MAX_CONCURRENCY", "2"), ("DISK_FREE_MIN_BYTES", "1048576")],
    )
    .await;
    let base = gw.url();
    let http = reqwest::Client::new();

    // The neighbour: a client that keeps submitting, one job every few milliseconds.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour = {
        let (seen, stop, http, base) = (seen.clone(), stop.clone(), http.clone(), base.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let body = json!({"workflowId": "icon_512", "inputs": {"prompt": "neighbour", "seed": i}});
                let r = http.post(format!("{base}/jobs")).header("x-api-key", USER_KEY).json(&body).send().await;
                let (status, v) = match r {
                    Ok(r) => (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default()),
                    Err(e) => (0, json!(e.to_string())),
                };
                let mut seen = seen.lock().unwrap();
                match (status, v["jobId"].as_str()) {
                    (202, Some(id)) => seen.acked.push(id.to_string()),
                    _ => seen.refused.push((status, v.to_string())),
                }
            }
        })
    };
    let n_acked = || seen.lock().unwrap().acked.len();
    support::eventually("the neighbour has jobs acknowledged", async || (n_acked() >= 20).then_some(())).await;

    // A user may not take a backup.
    let r = http.post(format!("{base}/admin/backup")).header("x-api-key", USER_KEY).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // Through the route. Everything acknowledged before the request was committed before it.
    let before_route: Vec<String> = seen.lock().unwrap().acked.clone();
    let r = http.post(format!("{base}/admin/backup")).header("x-api-key", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let sha = r.headers()["x-backup-sha256"].to_str().unwrap().to_string();
    let length: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), length);
    assert_eq!(sha256_hex(&bytes), sha);
    let from_route = dir.path().join("from-route.redb");
    std::fs::write(&from_route, &bytes).unwrap();
    check(&from_route);
    assert!(!dir.path().join("gateway.redb.backup").exists(), "nothing stays beside the database");

    // Through the CLI: the database is held, so it asks the running gateway.
    let before_cli: Vec<String> = seen.lock().unwrap().acked.clone();
    let from_cli = dir.path().join("from-cli.redb");
    let out = support::bin()
        .args(["backup", "--out", &from_cli.display().to_string()])
        .env("DATABASE_URL", &gw.db)
        .env("GATEWAY_URL", &base)
        .env("GATEWAY_API_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("integrity: ok") && text.contains("entries (via"), "{text}");
    assert!(!text.contains(" 0 entries"), "{text}");
    // (Before `check`, which opens the file as `serve` would and so rewrites its header.)
    let cli_sha = sha256_hex(&std::fs::read(&from_cli).unwrap());
    check(&from_cli);
    let n_during = n_acked();
    // Both copies are in the audit log, by the admin, named by their SHA-256 (the CLI's
    // went through the route with the admin's key); the user's refused attempt is not.
    let audit: serde_json::Value =
        http.get(format!("{base}/audit")).header("x-api-key", ADMIN_KEY).send().await.unwrap().json().await.unwrap();
    let backups: Vec<&serde_json::Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "database.backup").collect();
    assert_eq!(backups.len(), 2, "{audit}");
    assert_eq!(backups[1]["target"], sha.as_str(), "oldest last: the route's copy");
    assert_eq!(backups[0]["target"], cli_sha.as_str());
    assert!(backups.iter().all(|e| e["role"] == "admin"), "{audit}");

    // The neighbour kept being served throughout, and kept going after the backups.
    support::eventually("the neighbour is served after the backups", async || (n_acked() > n_during).then_some(()))
        .await;
    stop.store(true, Ordering::Relaxed);
    neighbour.await.unwrap();
    let refused = std::mem::take(&mut seen.lock().unwrap().refused);
    assert!(refused.is_empty(), "the neighbour was refused: {refused:?}");
    assert!(before_cli.len() > before_route.len(), "jobs were accepted between the two backups");

    // Restore: the gateway stopped, the copy put in place of its file, a gateway started.
    drop(gw);
    for (copy, acked) in [(&from_route, &before_route), (&from_cli, &before_cli)] {
        let restored_dir = support::tempdir();
        std::fs::copy(copy, restored_dir.path().join("gateway.redb")).unwrap();
        let restored = Gateway::start(restored_dir.path(), &sim.url(), &[("API_KEYS", &keys)]).await;
        for id in acked {
            let r =
                http.get(format!("{}/jobs/{id}", restored.url())).header("x-api-key", USER_KEY).send().await.unwrap();
            assert_eq!(r.status(), 200, "job {id} acknowledged before the backup is in the copy");
        }
        // Queued ones are recovered and run: the last acknowledged job finishes.
        let last = acked.last().unwrap();
        let done = support::eventually_within(WAIT, format!("job {last} finishes after the restore"), async || {
            let r = http.get(format!("{}/jobs/{last}", restored.url())).header("x-api-key", USER_KEY).send().await;
            let v: serde_json::Value = r.unwrap().json().await.unwrap_or_default();
            if v["status"] == "succeeded" { Ok(v) } else { Err(v) }
        })
        .await;
        assert_eq!(done["status"], "succeeded");
    }
}

/// The copy's file system must keep the database's size plus `DISK_FREE_MIN_BYTES` free:
/// otherwise `507 STORAGE_FULL` with `Retry-After`, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_without_room_is_refused() {
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 5).await;
    let huge = (u64::MAX / 2).to_string();
    let gw = Gateway::start(dir.path(), &sim.url(), &[("DISK_FREE_MIN_BYTES", &huge)]).await;
    let r = reqwest::Client::new().post(format!("{}/admin/backup", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 507);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "STORAGE_FULL", "{v}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(gw);

    // The CLI on a free database: the same check, then a copy that `check` accepts.
    let out_file = dir.path().join("cli.redb");
    let db = dir.path().join("gateway.redb");
    let refused = support::bin()
        .args(["backup", "--out", &out_file.display().to_string()])
        .env("DATABASE_URL", &db)
        .env("DISK_FREE_MIN_BYTES", &huge)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(!out_file.exists());
    let out = support::bin()
        .args(["backup", "--out", &out_file.display().to_string()])
        .env("DATABASE_URL", &db)
        .env("DISK_FREE_MIN_BYTES", "0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("integrity: ok") && !text.contains("via"), "{text}");
    check(&out_file);
    // An existing file is never replaced.
    let again = support::bin()
        .args(["backup", "--out", &out_file.display().to_string()])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    // No database: refused, and none is created.
    let none = dir.path().join("none.redb");
    let missing = support::bin()
        .args(["backup", "--out", &dir.path().join("x.redb").display().to_string()])
        .env("DATABASE_URL", &none)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(!none.exists());
}
