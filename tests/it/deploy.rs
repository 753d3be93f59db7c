//! The ways people deploy it, for real: the container image of `Dockerfile` built with
//! podman and run with the simulator of `compose.yaml`'s profile beside it (a job through
//! the published port, the HEALTHCHECK, the non-root user, the /data volume across a
//! stop and start), `compose.yaml`'s shape, and the systemd unit of `deploy/` checked by
//! `systemd-analyze` (`verify`, and `security` within "OK").
//!
//! No container registry is reachable where the tests run, so the base image is a Debian
//! root file system made with `debootstrap` and imported once (`podman import`; kept in
//! podman's storage as `BASE_IMAGE`), and the image takes the binary under test from its
//! build context (`BINARY=prebuilt`): the runtime stage is the one `docker build .` makes.
//! What this sandbox needs to start containers (runc instead of crun, lower ulimits, the
//! host's network for `apt-get` in the build) is in [`PODMAN_RUN`] and the build's flags,
//! not in the Dockerfile.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

use crate::support::{self, eventually, get_json};

/// The Debian base of the tested image, made by [`base_image`] when podman lacks it.
const BASE_IMAGE: &str = "localhost/comfyui-gateway-test-base:bookworm";
/// The Debian release of [`BASE_IMAGE`]: the Dockerfile's `debian:bookworm-slim`.
const SUITE: &str = "bookworm";
/// Flags every `podman run` here needs in this sandbox (no CAP_SYS_RESOURCE: crun cannot
/// raise RLIMIT_NPROC; runc with lower limits starts).
const PODMAN_RUN: &[&str] = &["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `podman --runtime runc ARGS` with a cleared environment; its output.
fn podman(cwd: &Path, args: &[&str]) -> Output {
    support::command("podman", cwd).arg("--runtime").arg("runc").args(args).output().expect("podman runs")
}

/// [`podman`] that must succeed: its stdout, trimmed.
fn podman_ok(cwd: &Path, args: &[&str]) -> String {
    let out = podman(cwd, args);
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers, a network and an image of one test run, removed when it ends.
struct Cleanup {
    cwd: PathBuf,
    containers: Vec<String>,
    network: Option<String>,
    image: Option<String>,
    /// The untagged images of the build's stages (those that were not there before it).
    stages: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman(&self.cwd, &["rm", "--force", "--volumes", c]);
        }
        if let Some(n) = &self.network {
            let _ = podman(&self.cwd, &["network", "rm", "--force", n]);
        }
        if let Some(i) = &self.image {
            let _ = podman(&self.cwd, &["rmi", "--force", i]);
        }
        for i in &self.stages {
            let _ = podman(&self.cwd, &["rmi", i]);
        }
    }
}

/// [`BASE_IMAGE`], made when podman does not have it: `debootstrap --variant=minbase`
/// from Debian's archive, without its package cache, imported as an image.
fn base_image(cwd: &Path) -> Option<()> {
    if podman(cwd, &["image", "exists", BASE_IMAGE]).status.success() {
        return Some(());
    }
    support::require_tool("debootstrap")?;
    support::require("root (debootstrap makes device nodes)", rustix::process::geteuid().is_root().then_some(()))?;
    let root = cwd.join("rootfs");
    let out = support::command("debootstrap", cwd)
        .args(["--variant=minbase", SUITE])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap runs");
    assert!(out.status.success(), "debootstrap failed: {}", String::from_utf8_lossy(&out.stdout));
    // As Debian's slim images: no downloaded packages or lists.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    let tar = cwd.join("rootfs.tar");
    let out = support::command("tar", cwd).arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").output().unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    podman_ok(cwd, &["import", tar.to_str().unwrap(), BASE_IMAGE]);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&tar);
    Some(())
}

/// `compose.yaml` as JSON (through Python's yaml, which schemathesis brings).
fn compose() -> Option<Value> {
    let python = support::require_python(&["yaml"])?;
    let out = support::command(python, repo())
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open('compose.yaml')), sys.stdout)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "compose.yaml: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The image of `Dockerfile`, built with the binary under test, runs a job from a client on
/// the host through its published port to the simulator container (started as
/// `compose.yaml`'s `simulator` profile starts it): as user 10001, its database in the
/// /data volume, its HEALTHCHECK passing while the backend is down (liveness), and after
/// `podman stop` (SIGTERM, exit 0) and `start` the job is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_image_serves_a_job_through_its_published_port() {
    if support::require_tool("podman").is_none() || support::require_tool("runc").is_none() {
        return;
    }
    let Some(compose) = compose() else { return };
    let dir = support::tempdir();
    let cwd = dir.path();
    if base_image(cwd).is_none() {
        return;
    }
    let run = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let image = format!("localhost/comfyui-gateway-test:{run}");
    let mut cleanup =
        Cleanup { cwd: cwd.to_path_buf(), containers: vec![], network: None, image: None, stages: vec![] };
    let untagged = || podman_ok(cwd, &["images", "--quiet", "--no-trunc", "--filter", "dangling=true"]);
    let untagged_before = untagged();

    // The build context: the Dockerfile, its ignore file and the binary (BINARY=prebuilt).
    let context = cwd.join("context");
    std::fs::create_dir(&context).unwrap();
    for file in ["Dockerfile", ".dockerignore"] {
        std::fs::copy(repo().join(file), context.join(file)).unwrap();
    }
    std::fs::copy(support::BIN, context.join("comfyui-gateway")).unwrap();
    let base_arg = format!("RUNTIME_IMAGE={BASE_IMAGE}");
    let mut build = vec!["build", "--format", "docker", "--pull=never", "--network", "host"];
    build.extend(PODMAN_RUN);
    build.extend(["--build-arg", "BINARY=prebuilt", "--build-arg", &base_arg, "--tag", &image]);
    build.push(context.to_str().unwrap());
    let built = podman(cwd, &build);
    cleanup.image = Some(image.clone());
    cleanup.stages = untagged().lines().filter(|id| !untagged_before.contains(id)).map(str::to_owned).collect();
    assert!(
        built.status.success(),
        "podman build failed ({}):\n{}\n{}",
        built.status,
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    // What the image promises, from its configuration.
    let inspect: Value = serde_json::from_str(&podman_ok(cwd, &["image", "inspect", &image])).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "gateway:gateway", "{config}");
    assert!(config["Volumes"].get("/data").is_some(), "{config}");
    assert!(config["ExposedPorts"].get("3000/tcp").is_some(), "{config}");
    assert_eq!(config["Entrypoint"], json!(["comfyui-gateway"]));
    let healthcheck = inspect[0]["Healthcheck"]["Test"].to_string();
    assert!(
        healthcheck.starts_with("[\"CMD\",\"comfyui-gateway\",\"health\",\"--live\""),
        "the HEALTHCHECK is the liveness probe: {healthcheck}"
    );

    // The simulator, as compose.yaml's profile runs it, on a network of its own.
    let network = format!("cgw-test-{run}");
    podman_ok(cwd, &["network", "create", &network]);
    cleanup.network = Some(network.clone());
    let sim_service = &compose["services"]["simulator"];
    let sim_command: Vec<&str> =
        sim_service["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let sim = format!("cgw-sim-{run}");
    let mut args = vec!["run", "--detach", "--name", &sim, "--network", &network, "--no-healthcheck"];
    args.extend(PODMAN_RUN);
    args.push(&image);
    args.extend(&sim_command);
    podman_ok(cwd, &args);
    cleanup.containers.push(sim.clone());
    let sim_ip =
        podman_ok(cwd, &["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &sim]);
    let sim_port = sim_command.iter().skip_while(|a| **a != "--port").nth(1).copied().unwrap_or("8188");
    let comfyui_url = format!("COMFYUI_URL=http://{sim_ip}:{sim_port}");

    // The gateway: configured by environment only, its port published on the host's loopback.
    let gw = format!("cgw-gw-{run}");
    let mut args = vec!["run", "--detach", "--name", &gw, "--network", &network, "--publish", "127.0.0.1::3000"];
    args.extend(PODMAN_RUN);
    args.extend(["--env", &comfyui_url, &image]);
    podman_ok(cwd, &args);
    cleanup.containers.push(gw.clone());
    let published = podman_ok(cwd, &["port", &gw, "3000/tcp"]);
    let base = format!("http://{}", published.lines().next().unwrap());

    eventually("the published port answers /readyz", async || {
        let (status, v) = get_json(&format!("{base}/readyz")).await;
        if status == 200 { Ok(()) } else { Err(format!("{status} {v}")) }
    })
    .await;
    let http = reqwest::Client::new();
    let job: Value = http
        .post(format!("{base}/jobs?wait=60"))
        .json(&json!({"workflowId": "icon_512", "inputs": {"prompt": "a container"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    let url = job["outputs"][0]["url"].as_str().unwrap();
    let png = http.get(format!("{base}{url}")).send().await.unwrap();
    assert_eq!(png.status(), 200);
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));

    // Not root; the database in the volume, readable by the gateway's user only.
    assert_eq!(podman_ok(cwd, &["exec", &gw, "id", "-u"]), "10001");
    assert_eq!(podman_ok(cwd, &["exec", &gw, "stat", "-c", "%u %a", "/data/gateway.redb"]), "10001 600");

    // The HEALTHCHECK is liveness: it passes with the backend gone, while /readyz says 503.
    assert!(podman(cwd, &["healthcheck", "run", &gw]).status.success(), "healthy with the backend up");
    podman_ok(cwd, &["stop", "--time", "5", &sim]);
    eventually("/readyz turns 503 with the simulator stopped", async || {
        let (status, v) = get_json(&format!("{base}/readyz")).await;
        if status == 503 { Ok(()) } else { Err(format!("{status} {v}")) }
    })
    .await;
    let out = podman(cwd, &["healthcheck", "run", &gw]);
    assert!(out.status.success(), "alive without a backend: {}", String::from_utf8_lossy(&out.stdout));

    // SIGTERM stops it cleanly; started again, it has the job (the volume kept the file).
    podman_ok(cwd, &["stop", "--time", "30", &gw]);
    assert_eq!(podman_ok(cwd, &["inspect", "--format", "{{.State.ExitCode}}", &gw]), "0");
    podman_ok(cwd, &["start", &gw]);
    let published = podman_ok(cwd, &["port", &gw, "3000/tcp"]);
    let base = format!("http://{}", published.lines().next().unwrap());
    let id = job["jobId"].as_str().unwrap();
    let again = eventually("the restarted container answers with the job", async || {
        let (status, v) = get_json(&format!("{base}/jobs/{id}")).await;
        if status == 200 { Ok(v) } else { Err(format!("{status} {v}")) }
    })
    .await;
    assert_eq!(again["status"], "succeeded", "{again}");
    drop(cleanup);
}

/// `compose.yaml`: the gateway from this Dockerfile with its database on a named volume and
/// its port on the host's loopback only; the simulator only in the `simulator` profile,
/// from the same image, as the gateway's default backend; no secret given a value.
#[test]
fn the_compose_file_runs_the_gateway_and_a_simulator_profile() {
    let Some(compose) = compose() else { return };
    let gateway = &compose["services"]["gateway"];
    assert_eq!(gateway["build"], ".", "{gateway}");
    assert_eq!(gateway["restart"], "unless-stopped");
    assert_eq!(gateway["ports"], json!(["127.0.0.1:3000:3000"]), "published on loopback only");
    assert_eq!(gateway["volumes"], json!(["gateway-data:/data"]));
    assert!(compose["volumes"].get("gateway-data").is_some());
    assert!(gateway.get("profiles").is_none(), "the gateway runs without a profile");
    let env = gateway["environment"].as_object().unwrap();
    assert_eq!(env["COMFYUI_URL"], "${COMFYUI_URL:-http://simulator:8188}");
    for secret in ["API_KEYS", "S3_SECRET_KEY", "JWT_SECRET", "WEBHOOK_SECRET"] {
        assert!(!env.contains_key(secret), "{secret} is only a comment in compose.yaml");
    }
    let sim = &compose["services"]["simulator"];
    assert_eq!(sim["profiles"], json!(["simulator"]));
    assert_eq!(sim["image"], gateway["image"], "the simulator is the same image");
    assert_eq!(sim["pull_policy"], "never", "the image is built by the gateway service, not pulled");
    let command = sim["command"].as_array().unwrap();
    assert_eq!(command[0], "sim");
    let after = |flag: &str| command.iter().skip_while(|a| *a != flag).nth(1).cloned();
    assert_eq!(after("--host"), Some(json!("0.0.0.0")));
    assert_eq!(after("--port"), Some(json!("8188")), "where COMFYUI_URL's default points");
    assert_eq!(sim["healthcheck"]["disable"], true, "the image's HEALTHCHECK probes the gateway, not the simulator");
}

/// `deploy/comfyui-gateway.service`: `systemd-analyze verify` finds nothing to say (an
/// unknown or misspelled option is only a warning there, so its output must be empty), and
/// `systemd-analyze security` rates its exposure at most 2.0 ("OK"). The unit's
/// `ExecStart` names /usr/local/bin, which verify requires to exist: the copy checked here
/// names the binary under test instead, and nothing else differs.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Some(analyze) = support::require_tool("systemd-analyze") else { return };
    let dir = support::tempdir();
    let unit = std::fs::read_to_string(repo().join("deploy/comfyui-gateway.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/comfyui-gateway serve\n"), "{unit}");
    for line in [
        "User=comfyui-gateway",
        "StateDirectory=comfyui-gateway",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=always",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    let sysusers = std::fs::read_to_string(repo().join("deploy/comfyui-gateway.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u comfyui-gateway ")), "the sysusers file creates the user");
    let path = dir.path().join("comfyui-gateway.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/comfyui-gateway", support::BIN)).unwrap();

    let out = support::command(&analyze, dir.path()).args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", out.status);

    // --threshold is on the 0-100 scale of the exposure (2.0 shown as 20).
    let out = support::command(&analyze, dir.path())
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let overall = said.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default();
    assert!(out.status.success(), "exposure above 2.0: {overall}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(overall.contains("OK"), "{overall}");
    // The checks above can fail: a unit without its hardening is rated worse.
    let soft: String = unit
        .lines()
        .filter(|l| !l.starts_with("Protect") && !l.starts_with("SystemCall"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, soft.replace("/usr/local/bin/comfyui-gateway", support::BIN)).unwrap();
    let out = support::command(&analyze, dir.path())
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a unit without Protect*/SystemCall* options rates above 2.0");
}
