//! Clients generated from the live `GET /openapi.json` work unchanged (issue 19): a Python
//! client by `openapi-python-client` and TypeScript types by `openapi-typescript` (used
//! through `openapi-fetch`), each generated without a warning, type-checked (`mypy` strict on
//! the package and `tests/clients/use_client.py`; `tsc` strict on the types and
//! `tests/clients/use_client.ts`), then run against the gateway: register a workflow (admin
//! key), submit a job with typed inputs (user key), follow it to `succeeded`, download its
//! output's bytes (a PNG) and read its webhooks (the `job.succeeded` delivery delivered to a
//! receiver). The scripts use no casts and no raw HTTP: checked here on their text. The
//! tools are pinned by `scripts/ci-deps` (PyPI) and `tests/clients/package-lock.json` (npm).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::support::receiver::Receiver;
use crate::support::{self, Gateway, Sim};

const ADMIN_KEY: &str = "clients-admin-key-01";
const USER_KEY: &str = "clients-user-key-001";

/// The package name of the generated Python client (`tests/clients/mypy.ini` names it).
const PACKAGE: &str = "gateway_client";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The programs the test runs: the Python generator, mypy, python3 with the generated
/// client's dependencies, node, and the npm packages of `tests/clients` (their `.bin`).
struct Tools {
    generator: PathBuf,
    mypy: PathBuf,
    python: PathBuf,
    node: PathBuf,
    npm_bin: PathBuf,
}

fn tools() -> Option<Tools> {
    let generator = support::require_tool("openapi-python-client")?;
    let mypy = support::require_tool("mypy")?;
    let python = support::require_python(&["httpx", "attrs", "dateutil"])?;
    let node = support::require_tool("node")?;
    let bin = clients_dir().join("node_modules/.bin");
    let installed = ["openapi-typescript", "tsc"].iter().all(|b| bin.join(b).is_file());
    let npm_bin = support::require(
        "tests/clients/node_modules (openapi-typescript, openapi-fetch, typescript)",
        installed.then_some(bin),
    )?;
    Some(Tools { generator, mypy, python, node, npm_bin })
}

/// Run `cmd` to its end on a blocking thread: its standard output; panics with everything it
/// printed when it fails.
async fn run(what: &str, mut cmd: Command) -> String {
    let out =
        tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout + &stderr
}

fn copy(names: &[&str], to: &Path) {
    for name in names {
        std::fs::copy(clients_dir().join(name), to.join(name)).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
}

/// `createWorkflow` → `create_workflow`: the module openapi-python-client writes per operation.
fn snake(operation_id: &str) -> String {
    let mut out = String::new();
    for c in operation_id.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clients_work_unchanged() {
    let Some(tools) = tools() else { return };
    let dir = support::tempdir();
    let sim = Sim::start(dir.path(), 0).await;
    let receiver = Receiver::start().await;
    let keys = format!("{ADMIN_KEY}:admin,{USER_KEY}:user");
    let gw =
        Gateway::start(dir.path(), &sim.url(), &[("API_KEYS", &keys), ("WEBHOOK_ALLOWED_DOMAINS", "127.0.0.1")]).await;
    // A second workflow with the first one's input schema, title included: both keep their
    // models in the Python client.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(root.join("workflows").join(name)).unwrap()).unwrap()
    };
    let copy_of_icon = serde_json::json!({
        "id": "icon_512_copy",
        "workflow": read("icon_512.json"),
        "inputSchema": read("icon_512.schema.json"),
    });
    // And a third whose id differs from the second's only in its separators (`.` and `-`
    // for `_`), which generators fold into one class and one module name.
    let mut lookalike = copy_of_icon.clone();
    lookalike["id"] = "icon.512-copy".into();
    for body in [&copy_of_icon, &lookalike] {
        let created = reqwest::Client::new()
            .post(format!("{}/workflows", gw.url()))
            .header("x-api-key", ADMIN_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    }
    let doc_url = format!("{}/openapi.json", gw.url());
    let doc: Value =
        reqwest::Client::new().get(&doc_url).header("x-api-key", USER_KEY).send().await.unwrap().json().await.unwrap();
    let doc_file = dir.path().join("openapi.json");
    std::fs::write(&doc_file, serde_json::to_vec(&doc).unwrap()).unwrap();

    // Python: generate (no warning: nothing dropped), check, run.
    let started = Instant::now();
    let py = dir.path().join("py");
    std::fs::create_dir_all(&py).unwrap();
    let mut generate = Command::new(&tools.generator);
    generate.arg("generate").arg("--path").arg(&doc_file).arg("--output-path").arg(py.join(PACKAGE));
    generate.args(["--meta", "none"]).current_dir(&py);
    let said = run("openapi-python-client generate", generate).await;
    assert!(!said.to_lowercase().contains("warning"), "openapi-python-client warned:\n{said}");
    let operations: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    assert!(operations.len() > 25, "{operations:?}");
    for operation in &operations {
        let module = py.join(PACKAGE).join("api/default").join(format!("{}.py", snake(operation)));
        assert!(module.is_file(), "the Python client has {operation}");
    }
    for model in ["workflow_inputs_icon_512", "workflow_inputs_icon_512_copy", "job_request_icon_512_copy"] {
        assert!(py.join(PACKAGE).join("models").join(format!("{model}.py")).is_file(), "the Python client has {model}");
    }
    copy(&["use_client.py", "mypy.ini"], &py);
    let mut mypy = Command::new(&tools.mypy);
    mypy.args(["--config-file", "mypy.ini", PACKAGE, "use_client.py"]).current_dir(&py);
    run("mypy", mypy).await;
    let mut script = Command::new(&tools.python);
    script.arg("use_client.py").args([&gw.url(), ADMIN_KEY, USER_KEY, &receiver.url("/py"), "client_py"]);
    script.env("PYTHONPATH", &py).current_dir(&py);
    let said = run("use_client.py", script).await;
    assert!(said.contains("python client: job"), "{said}");
    let python_took = started.elapsed();

    // TypeScript: generate the types, check and compile with the script, run.
    let started = Instant::now();
    let ts = dir.path().join("ts");
    std::fs::create_dir_all(&ts).unwrap();
    copy(&["package.json", "tsconfig.json", "use_client.ts"], &ts);
    std::os::unix::fs::symlink(clients_dir().join("node_modules"), ts.join("node_modules")).unwrap();
    let mut generate = Command::new(tools.npm_bin.join("openapi-typescript"));
    generate.arg(&doc_file).args(["--output", "api.d.ts"]).current_dir(&ts);
    let said = run("openapi-typescript", generate).await;
    assert!(!said.to_lowercase().contains("warn"), "openapi-typescript warned:\n{said}");
    let types = std::fs::read_to_string(ts.join("api.d.ts")).unwrap();
    let closed: Vec<&str> =
        types.lines().filter(|l| l.contains("Record<string, never>") && !l.starts_with("export type $defs")).collect();
    assert!(closed.is_empty(), "objects no value fits: {closed:?}");
    let mut tsc = Command::new(tools.npm_bin.join("tsc"));
    tsc.args(["--project", "."]).current_dir(&ts);
    run("tsc", tsc).await;
    let mut script = Command::new(&tools.node);
    script.arg("out/use_client.js").args([&gw.url(), ADMIN_KEY, USER_KEY, &receiver.url("/ts"), "client_ts"]);
    script.current_dir(&ts);
    let said = run("use_client.ts", script).await;
    assert!(said.contains("typescript client: job"), "{said}");
    let typescript_took = started.elapsed();

    // Both registered their workflow and had their job's webhook delivered.
    for (path, workflow) in [("/py", "client_py"), ("/ts", "client_ts")] {
        let hits = receiver.hits(path);
        assert!(hits.iter().any(|h| h.json()["type"] == "job.succeeded"), "{path}: {hits:?}");
        let r = reqwest::Client::new()
            .get(format!("{}/workflows/{workflow}", gw.url()))
            .header("x-api-key", USER_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{workflow} registered");
    }
    eprintln!("generated clients: Python {python_took:?}, TypeScript {typescript_took:?}");
}

/// The scripts use the generated clients as a user would: no casts, no type-checker
/// silencing, no HTTP of their own.
#[test]
fn the_client_scripts_use_no_casts_and_no_raw_http() {
    let python = std::fs::read_to_string(clients_dir().join("use_client.py")).unwrap();
    for needle in ["type: ignore", "cast(", "Any", "httpx", "requests", "urllib", "http.client", "socket"] {
        assert!(!python.contains(needle), "use_client.py has {needle:?}");
    }
    assert!(python.contains("from gateway_client"), "uses the generated client");
    let typescript = std::fs::read_to_string(clients_dir().join("use_client.ts")).unwrap();
    for needle in [" as ", "any", "@ts-", "fetch(", "XMLHttpRequest", "node:http", "node:net", "<unknown>"] {
        assert!(!typescript.contains(needle), "use_client.ts has {needle:?}");
    }
    assert!(typescript.contains("createClient<paths>"), "uses openapi-fetch with the generated types");
}
