//! `GET /openapi.json`: the OpenAPI 3.1 document of the API as it really behaves, with
//! every registered workflow's input schema included (JSON Schema 2020-12 is OpenAPI
//! 3.1's own dialect, so the schemas are embedded as they are).
//!
//! Kept honest by schemathesis in CI: it calls every operation with generated input and
//! checks each answer (status, content type, body) against this document.

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::wire::{job, request, system};

/// The schemas of the wire types (`crate::wire`), generated: what the API answers as
/// serialized (`for_serialize`: a field left out when empty is optional), what it takes as
/// deserialized (`for_deserialize`: a field with a default is optional). Each named type
/// and every named type inside it becomes a component under `#/components/schemas`.
fn generated() -> Map<String, Value> {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut answers = settings.clone().for_serialize().into_generator();
    fn add<T: JsonSchema>(g: &mut SchemaGenerator) {
        g.subschema_for::<T>();
    }
    add::<system::ErrorResponse>(&mut answers);
    add::<system::Health>(&mut answers);
    add::<system::Livez>(&mut answers);
    add::<system::Readyz>(&mut answers);
    add::<system::Capabilities>(&mut answers);
    add::<system::ModelList>(&mut answers);
    add::<system::BackendList>(&mut answers);
    add::<system::WorkflowList>(&mut answers);
    add::<system::WorkflowDetails>(&mut answers);
    add::<system::WorkflowImported>(&mut answers);
    add::<system::WorkflowImportRegistered>(&mut answers);
    add::<system::AuditPage>(&mut answers);
    add::<job::JobAccepted>(&mut answers);
    add::<job::JobView>(&mut answers);
    add::<job::JobList>(&mut answers);
    add::<job::JobsCanceled>(&mut answers);
    add::<job::PreviewEvent>(&mut answers);
    add::<job::JobLog>(&mut answers);
    add::<job::JobEnded>(&mut answers);
    add::<job::JobDeliveries>(&mut answers);
    add::<job::JobOutputs>(&mut answers);
    add::<job::OutputBase64>(&mut answers);
    add::<job::WebhookPayload>(&mut answers);
    let mut schemas = answers.take_definitions(true);
    let mut bodies = settings.for_deserialize().into_generator();
    add::<request::JobRequest>(&mut bodies);
    add::<request::WorkflowDefinition>(&mut bodies);
    add::<request::WorkflowUpdate>(&mut bodies);
    add::<request::WorkflowImport>(&mut bodies);
    add::<request::JobCancelFilter>(&mut bodies);
    for (name, mut schema) in bodies.take_definitions(true) {
        defaults_in_words(&mut schema);
        // A type in both (an enum) must describe itself the same way in both.
        if let Some(answered) = schemas.get(&name) {
            assert_eq!(answered, &schema, "{name} differs between requests and answers");
        }
        schemas.insert(name, schema);
    }
    let mut export = crate::comfy::graph::api_format_schema();
    export["description"] = json!(
        "A workflow as ComfyUI's Export (API) writes it: {node id: {class_type, inputs, _meta?}}, links as [node id, output index]"
    );
    schemas.insert("ApiFormatWorkflow".into(), export);
    schemas.insert("UiFormatWorkflow".into(), crate::comfy::graph::ui_format_schema());
    for schema in schemas.values_mut() {
        tidy_generated(schema);
    }
    schemas
}

/// A request body's defaults said in its properties' descriptions, not as `default`:
/// openapi-typescript types a component's property that has a `default` as required
/// (its `defaultNonNullable`), so a client would have to send every defaulted field.
fn defaults_in_words(schema: &mut Value) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else { return };
    for property in properties.values_mut() {
        let Some(obj) = property.as_object_mut() else { continue };
        let Some(default) = obj.remove("default") else { continue };
        let said = format!("Default: `{default}`.");
        let description = match obj.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d} {said}"),
            None => said,
        };
        obj.insert("description".into(), Value::String(description));
    }
}

/// What generators need of a generated schema: `{}` for schemars' `true` (any JSON value;
/// some generators read only objects as schemas); no `format` of unsigned integers
/// (`uint32`, `uint64`: schemars' own names, not OpenAPI's; `minimum: 0` says it); and a
/// string `enum` for a unit enum, which schemars writes as a `oneOf` of documented
/// `const`s (generators make an enum type of `enum` only: openapi-python-client makes
/// literals of the `oneOf`). The values' descriptions go into the enum's description.
fn tidy_generated(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::Array(branches)) = obj.get("oneOf")
                && let Some(values) = branches
                    .iter()
                    .map(|b| match (b.get("type"), b.get("const")) {
                        (Some(t), Some(Value::String(c))) if t == "string" => {
                            Some((c.clone(), b.get("description").and_then(Value::as_str).unwrap_or("").to_string()))
                        }
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
            {
                let listed: Vec<String> = values.iter().map(|(c, d)| format!("`{c}`: {d}")).collect();
                let description = match obj.get("description").and_then(Value::as_str) {
                    Some(d) => format!("{d} {}", listed.join(" ")),
                    None => listed.join(" "),
                };
                obj.remove("oneOf");
                obj.insert("type".into(), json!("string"));
                obj.insert("enum".into(), values.into_iter().map(|(c, _)| Value::String(c)).collect());
                obj.insert("description".into(), Value::String(description));
            }
            if obj.get("format").and_then(Value::as_str).is_some_and(|f| f.starts_with("uint")) {
                obj.remove("format");
            }
            for (key, child) in obj.iter_mut() {
                if matches!(key.as_str(), "default" | "const" | "enum" | "example" | "examples") {
                    continue;
                }
                if child == &Value::Bool(true) && key != "additionalProperties" {
                    *child = json!({});
                }
                tidy_generated(child);
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                if item == &Value::Bool(true) {
                    *item = json!({});
                }
                tidy_generated(item);
            }
        }
        _ => {}
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    })
}

/// The `401` of every operation but `/health`.
const UNAUTHORIZED: &str = "AUTH_FAILED: credentials are configured and none or invalid ones were given";

/// The `403` of the admin-only operations.
const ADMIN_ONLY: (&str, &str) = ("403", "FORBIDDEN: the caller's role is user; this needs admin");
/// A write refused because the database's disk is below `DISK_FREE_MIN_BYTES`.
const DISK_FULL: (&str, &str) =
    ("507", "The database's disk is below DISK_FREE_MIN_BYTES (STORAGE_FULL); retry after Retry-After seconds");

/// The `422` of a workflow with a plugin on a build without the plugin runtime.
const NO_PLUGIN_RUNTIME: (&str, &str) = (
    "422",
    "PLUGIN_FAILED: the definition has a plugin and this build has no WebAssembly plugin runtime (cargo feature `wasm-plugins`)",
);

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The content of an answer that is a file's bytes in its own media type. Generators take
/// `application/octet-stream` for bytes (openapi-python-client returns a `File`); `*/*`
/// says that any media type comes.
fn binary_content() -> Value {
    let bytes = json!({"schema": {"type": "string", "format": "binary"}});
    json!({"application/octet-stream": bytes, "*/*": bytes})
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

/// The rate-limit fields of a response (draft-ietf-httpapi-ratelimit-headers-10), sent
/// when `RATE_LIMIT_MAX` is set.
fn rate_limit_headers() -> Value {
    json!({
        "RateLimit-Policy": {"$ref": "#/components/headers/RateLimit-Policy"},
        "RateLimit": {"$ref": "#/components/headers/RateLimit"},
    })
}

/// Add the error answers every operation can give to `responses` (a 400 for too many
/// query parameters, 401 when credentials are configured and missing or invalid, 429
/// beyond the rate limit, 500), and the rate-limit fields.
fn with_errors(mut responses: Value, codes: &[(&str, &str)]) -> Value {
    let obj = responses.as_object_mut().expect("responses is an object");
    for (status, description) in codes {
        obj.insert((*status).to_string(), error_response(description));
    }
    obj.entry("400").or_insert_with(|| error_response("More than 64 query parameters"));
    let mut limited = error_response("Rate limited (RATE_LIMITED): retry after Retry-After seconds");
    limited["headers"] = rate_limit_headers();
    limited["headers"]["Retry-After"] = json!({"$ref": "#/components/headers/Retry-After"});
    obj.insert("429".into(), limited);
    obj.insert("401".into(), error_response(UNAUTHORIZED));
    obj.insert("500".into(), error_response("Internal error (details only in the gateway log)"));
    for response in obj.values_mut() {
        if response.get("headers").is_none() {
            response["headers"] = rate_limit_headers();
        }
    }
    responses
}

/// The header fields of rate-limited answers.
fn headers() -> Value {
    json!({
        "RateLimit-Policy": {
            "description": "The quota policies: `\"client\";q=MAX;w=WINDOW_S, \"ip\";q=IP_MAX;w=WINDOW_S` \
                (per client key, per client IP; draft-ietf-httpapi-ratelimit-headers-10). Sent when rate limits are on.",
            "schema": {"type": "string"},
        },
        "RateLimit": {
            "description": "Remaining quota and seconds until it is fully restored, per policy: \
                `\"client\";r=REMAINING;t=SECONDS, \"ip\";r=REMAINING;t=SECONDS`.",
            "schema": {"type": "string"},
        },
        "Retry-After": {
            "description": "Seconds until a retry can succeed.",
            "required": true,
            "schema": {"type": "integer", "minimum": 1},
        },
    })
}

/// The document, for the given registered workflows `(id, input schema)`. `server_url` is
/// its one `servers` entry: `PUBLIC_URL` when set, else `/` (the document's own origin;
/// see `handlers::openapi`).
pub fn document(workflows: &[(String, Value)], server_url: &str) -> Value {
    let ids: Vec<&str> = workflows.iter().map(|(id, _)| id.as_str()).collect();
    let mut schemas: Map<String, Value> = generated();
    let mut inputs_by_workflow = Map::new();
    // `POST /jobs`'s JSON body: any of `JobRequest` and the request of each workflow.
    let mut job_requests = vec![schema_ref("JobRequest")];
    for ((id, schema), component) in workflows.iter().zip(component_names(workflows)) {
        let name = format!("WorkflowInputs.{component}");
        let mut schema = schema.clone();
        if let Some(obj) = schema.as_object_mut() {
            // `$schema`/`$id` are valid in 3.1 but some tools choke on them inside components.
            obj.remove("$schema");
            obj.remove("$id");
            // openapi-python-client names a model after its title: two workflows with the
            // same title would make two models of one name, and it drops the second. The
            // title goes into the description; the model is named after the component.
            if let Some(Value::String(title)) = obj.remove("title") {
                let description = match obj.get("description") {
                    Some(Value::String(d)) => format!("{title}: {d}"),
                    _ => title,
                };
                obj.insert("description".into(), Value::String(description));
            }
        }
        let inputs_required = schema["required"].as_array().is_some_and(|r| !r.is_empty());
        schemas.insert(name.clone(), schema);
        inputs_by_workflow.insert(id.clone(), schema_ref(&name));
        // `JobRequest` for this workflow: its id a constant, its inputs typed, so generated
        // clients have a request type per workflow. `POST /jobs` takes `anyOf` them and the
        // generic `JobRequest` (not `oneOf`: a body valid for a workflow is a valid
        // `JobRequest` too), which comes first: the docs page and generators show it first.
        let mut request = schemas["JobRequest"].clone();
        request["description"] = json!(format!("A JobRequest of the workflow {id}, its inputs typed by {name}"));
        request["properties"]["workflowId"] = json!({"type": "string", "const": id});
        request["properties"]["inputs"] = schema_ref(&name);
        if inputs_required {
            request["required"] = json!(["workflowId", "inputs"]);
        }
        let request_name = format!("JobRequest.{component}");
        schemas.insert(request_name.clone(), request);
        job_requests.push(schema_ref(&request_name));
    }
    let job_id = path_param("jobId", "The job id (a UUID)");
    let workflow_id = path_param("id", "The workflow id");
    let read = |ok: Value| with_errors(ok, &[("404", "No such job, or another owner's")]);
    let mut doc = json!({
        "openapi": "3.1.0",
        "servers": [{"url": server_url, "description": "PUBLIC_URL when set; else `/`: the origin this document was fetched from"}],
        "info": {
            "title": "comfyui-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A durable REST gateway in front of ComfyUI. Every error body is \
                {error: {code, message, retryable, details?}, correlationId}; every response carries X-Correlation-Id. \
                With RATE_LIMIT_MAX set, every response but the probes' (/health, /livez, /readyz) carries RateLimit-Policy and RateLimit, and \
                a client over its quota (or, on POST /jobs, at MAX_JOBS_PER_CLIENT unfinished jobs) gets 429 \
                RATE_LIMITED. CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) are answered 204. \
                With API_KEYS/API_KEYS_FILE or JWT_SECRET/JWT_PUBLIC_KEY configured, every operation but the probes \
                and the dashboard's files (/, /ui/*, /docs) needs an X-API-Key header or a bearer JWT (401 AUTH_FAILED otherwise); without them (open mode) \
                credentials are not needed. Role user: submit jobs and read, follow, download and cancel its own \
                (another owner's job is 404 JOB_NOT_FOUND); role admin: everything, incl. workflow changes and /audit.",
        },
        "security": [{}, {"ApiKeyAuth": []}, {"BearerAuth": []}],
        "paths": {
            "/": {"get": {
                "operationId": "dashboard",
                "summary": "The web dashboard's page (HTML; HEAD too). Public: the page holds no data, it asks for a key and calls this API with it",
                "security": [{}],
                "responses": with_errors(json!({
                    "200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "304": {"description": "Not modified (If-None-Match)"}
                }), &[])
            }},
            "/docs": {"get": {
                "operationId": "docs",
                "summary": "This document in a browser (HTML; HEAD too). Public: the page holds no data; it fetches /openapi.json, with a key it asks for when credentials are configured",
                "security": [{}],
                "responses": with_errors(json!({
                    "200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "304": {"description": "Not modified (If-None-Match)"}
                }), &[])
            }},
            "/ui/{file}": {
                "parameters": [path_param("file", "One of the dashboard's files: app.js, style.css, favicon.svg, index.html; or the docs page's: docs.js, docs.css, docs.html")],
                "get": {
                    "operationId": "dashboardFile",
                    "summary": "A static file of the dashboard (HEAD too); public",
                    "security": [{}],
                    "responses": with_errors(json!({
                        "200": {"description": "The file", "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                            "text/html": {"schema": {"type": "string"}},
                            "image/svg+xml": {"schema": {"type": "string"}}
                        }},
                        "304": {"description": "Not modified (If-None-Match)"}
                    }), &[("404", "Not a file of the dashboard")])
                }
            },
            "/health": {"get": {
                "operationId": "health",
                "summary": "Gateway, backend and store health (503 while no backend is reachable or after a storage failure); always public",
                "security": [{}],
                "responses": {
                    "200": json_response("At least one backend is reachable", schema_ref("Health")),
                    "503": json_response("No backend is reachable, or the store failed", schema_ref("Health")),
                    "400": error_response("More than 64 query parameters"),
                    "429": error_response("The connection came from an address already holding MAX_CONNECTIONS_PER_IP (RATE_LIMITED, with Retry-After; refused before the path is read). /health itself is never rate limited"),
                }
            }},
            "/livez": {"get": {
                "operationId": "livez",
                "summary": "Liveness: the process answers (200 whatever the backends; for a liveness probe); always public, never rate limited",
                "security": [{}],
                "responses": {
                    "200": json_response("The process is up", schema_ref("Livez")),
                    "400": error_response("More than 64 query parameters"),
                    "429": error_response("The connection came from an address already holding MAX_CONNECTIONS_PER_IP (RATE_LIMITED, with Retry-After; refused before the path is read). /livez itself is never rate limited"),
                }
            }},
            "/readyz": {"get": {
                "operationId": "readyz",
                "summary": "Readiness: the store works and at least one backend is reachable (503 otherwise, saying which check failed); always public, never rate limited",
                "security": [{}],
                "responses": {
                    "200": json_response("Ready", schema_ref("Readyz")),
                    "503": json_response("Not ready: see checks", schema_ref("Readyz")),
                    "400": error_response("More than 64 query parameters"),
                    "429": error_response("The connection came from an address already holding MAX_CONNECTIONS_PER_IP (RATE_LIMITED, with Retry-After; refused before the path is read). /readyz itself is never rate limited"),
                }
            }},
            "/models": {"get": {
                "operationId": "listModels",
                "summary": "The model files the first healthy backend offers, by kind (checkpoints, loras, ...), from its /object_info (read at most every 10 s)",
                "responses": with_errors(json!({"200": json_response("Model files by kind", schema_ref("ModelList"))}),
                    &[("503", "No backend answered /object_info (COMFYUI_UNREACHABLE)")])
            }},
            "/capabilities": {"get": {
                "operationId": "capabilities",
                "summary": "Workflows, limits, formats and storage",
                "responses": with_errors(json!({"200": json_response("Capabilities", schema_ref("Capabilities"))}), &[])
            }},
            "/metrics": {"get": {
                "operationId": "metrics",
                "summary": "Prometheus text exposition (0.0.4); admins only when authentication is on, unless METRICS_PUBLIC",
                "responses": with_errors(json!({"200": {"description": "Metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}), &[ADMIN_ONLY])
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": with_errors(json!({"200": json_response("OpenAPI 3.1 document", json!({"type": "object"}))}), &[])
            }},
            "/workflows": {
                "get": {
                    "operationId": "listWorkflows",
                    "responses": with_errors(json!({"200": json_response("Registered workflows", schema_ref("WorkflowList"))}), &[])
                },
                "post": {
                    "operationId": "createWorkflow",
                    "parameters": [{"name": "strict", "in": "query", "required": false,
                        "description": "true: refuse (400) a node class no healthy backend knows, instead of registering with a warning",
                        "schema": {"type": "boolean", "default": false}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("WorkflowDefinition")}}},
                    "responses": with_errors(json!({"201": json_response("Registered (version 1)", schema_ref("WorkflowDetails"))}),
                        &[("400", "Invalid definition (details name each field), or with strict=true a node class no healthy backend knows"), ADMIN_ONLY, ("409", "The id exists"), ("408", "The body did not arrive within BODY_READ_TIMEOUT_MS, or too slowly (REQUEST_TIMEOUT)"), ("413", "Body too large"), NO_PLUGIN_RUNTIME, DISK_FULL])
                }
            },
            "/workflows/import": {
                "post": {
                    "operationId": "importWorkflow",
                    "parameters": [{"name": "strict", "in": "query", "required": false,
                        "description": "true: refuse (400) a node class no healthy backend knows, instead of registering with a warning (with register: true)",
                        "schema": {"type": "boolean", "default": false}}],
                    "summary": "Propose a template and input schema for a workflow from ComfyUI (Export (API), or the saved UI format, converted with the backend's node definitions), typed from the first healthy backend's /object_info; with register: true, register it",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": json!({
                        "description": "`{workflow, id?, name?, description?, register?}`, or the workflow itself (API or UI format) as the whole body (then with the default options)",
                        "anyOf": [schema_ref("WorkflowImport"), schema_ref("ApiFormatWorkflow"), schema_ref("UiFormatWorkflow")]
                    })}}},
                    "responses": with_errors(json!({
                        "200": json_response("The proposal, what was recognized, and what to check", schema_ref("WorkflowImported")),
                        "201": json_response("Registered as proposed (register: true): the workflow as POST /workflows answers, plus inputs and warnings", schema_ref("WorkflowImportRegistered"))
                    }), &[("400", "Not a ComfyUI workflow (API or UI format), a UI-format node that cannot be converted (named), or a bad option (details name each field)"), ADMIN_ONLY, ("409", "register: true and the id exists"), ("408", "The body did not arrive within BODY_READ_TIMEOUT_MS, or too slowly (REQUEST_TIMEOUT)"), ("413", "Body too large"), ("503", "No backend answered /object_info (COMFYUI_UNREACHABLE)"), DISK_FULL])
                }
            },
            "/workflows/{id}": {
                "parameters": [workflow_id],
                "get": {
                    "operationId": "getWorkflow",
                    "responses": with_errors(json!({"200": json_response("The workflow with its input schema", schema_ref("WorkflowDetails"))}),
                        &[("404", "No such workflow")])
                },
                "put": {
                    "operationId": "updateWorkflow",
                    "parameters": [{"name": "strict", "in": "query", "required": false,
                        "description": "true: refuse (400) a node class no healthy backend knows, instead of registering with a warning",
                        "schema": {"type": "boolean", "default": false}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("WorkflowUpdate")}}},
                    "responses": with_errors(json!({"200": json_response("The new version", schema_ref("WorkflowDetails"))}),
                        &[("400", "Invalid definition, or with strict=true a node class no healthy backend knows"), ADMIN_ONLY, ("404", "No such workflow"), ("408", "The body did not arrive within BODY_READ_TIMEOUT_MS, or too slowly (REQUEST_TIMEOUT)"), ("413", "Body too large"), NO_PLUGIN_RUNTIME, DISK_FULL])
                },
                "delete": {
                    "operationId": "deleteWorkflow",
                    "responses": with_errors(json!({"204": {"description": "Removed"}}), &[ADMIN_ONLY, ("404", "No such workflow")])
                }
            },
            "/jobs": {
                "get": {
                    "operationId": "listJobs",
                    "summary": "Jobs, newest first, with filters and an opaque cursor",
                    "parameters": [
                        {"name": "status", "in": "query", "required": false, "description": "Comma-separated states", "schema": {"type": "string"}},
                        {"name": "workflowId", "in": "query", "required": false, "schema": {"type": "string"}},
                        {"name": "after", "in": "query", "required": false, "description": "Created after (RFC 3339 or ms)", "schema": {"type": "string"}},
                        {"name": "before", "in": "query", "required": false, "description": "Created before (RFC 3339 or ms)", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "cursor", "in": "query", "required": false, "description": "nextCursor of the previous page", "schema": {"type": "string"}}
                    ],
                    "responses": with_errors(json!({"200": json_response("A page of jobs", schema_ref("JobList"))}), &[("400", "Bad query parameter")])
                },
                "post": {
                    "operationId": "createJob",
                    "summary": "Submit a job; 202 only after it is durably committed (200 with the finished job from the result cache or under ?wait)",
                    "parameters": [{"name": "wait", "in": "query", "required": false,
                        "description": "Seconds to wait for the job to finish (sync mode)",
                        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 300}},
                        {"name": "include", "in": "query", "required": false,
                        "description": "`base64`: a 200 (the finished job, under ?wait or from the result cache) inlines small outputs as GET /jobs/{jobId}?include=base64 does (within the same size limits; under ?wait still counted against MAX_SYNC_WAITS_PER_CLIENT and MAX_SYNC_WAITS); a 202 has nothing to inline",
                        "schema": {"type": "string", "enum": ["base64"]}},
                        {"name": "Idempotency-Key", "in": "header", "required": false,
                        "description": "The same key with the same body (per owner, for IDEMPOTENCY_TTL_SECONDS) answers with the first job; with another body, 422 IDEMPOTENCY_CONFLICT. Replays carry `Idempotent-Replayed: true`. `metadata.requestId` is used when the header is absent.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"}}],
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": {"anyOf": job_requests}},
                        "multipart/form-data": {"schema": {
                            "type": "object", "required": ["request"],
                            "properties": {"request": {"type": "string", "description": "The JSON body (JobRequest)"}},
                            "additionalProperties": {"type": "string", "format": "binary",
                                "description": "An image input, by input name (or inputs.<name>)"}
                        }}
                    }},
                    "responses": with_errors(json!({
                        "200": json_response("Answered from the result cache (cached: true), or finished within ?wait", schema_ref("Job")),
                        "202": json_response("Accepted: committed, queued (or already running when a backend was free); Location is its pollUrl", schema_ref("JobAccepted"))
                    }), &[("400", "Invalid request or inputs (details name each field), or a callbackUrl that is not allowed (CALLBACK_NOT_ALLOWED)"), ("404", "No such workflow"), ("408", "The body did not arrive within BODY_READ_TIMEOUT_MS, or too slowly (REQUEST_TIMEOUT)"), ("413", "Body too large"), ("422", "Idempotency-Key reused with another body (IDEMPOTENCY_CONFLICT), or the workflow's plugin refused or failed (PLUGIN_FAILED, PLUGIN_LIMIT_EXCEEDED; details.kind, details.pluginCode, details.field)"), ("503", "An image input could not be stored, or (?include=base64) an output read: the blob storage (S3) is unreachable (STORAGE_UNAVAILABLE), or the workflow's plugin had no free call slot within PLUGIN_QUEUE_WAIT_MS (PLUGIN_BUSY, with Retry-After)"), ("507", "The database's disk is below DISK_FREE_MIN_BYTES (STORAGE_FULL), or the caller keeps STORAGE_QUOTA_BYTES_PER_OWNER bytes or more (QUOTA_EXCEEDED); retry after Retry-After seconds")])
                }
            },
            "/jobs/{jobId}/logs": {
                "parameters": [job_id.clone()],
                "get": {
                    "operationId": "jobLogs",
                    "summary": "The job's durable event log (10,000 entries and MAX_RESPONSE_BYTES at most; nextAfter continues it)",
                    "parameters": [{"name": "after", "in": "query", "required": false, "description": "List the entries after this seq (a nextAfter)", "schema": {"type": "integer", "minimum": 0}}],
                    "responses": read(json!({"200": json_response("The event log", schema_ref("JobLog"))}))
                }
            },
            "/jobs/{jobId}/events": {
                "parameters": [job_id.clone()],
                "get": {
                    "operationId": "jobEvents",
                    "summary": "Server-Sent Events: status, progress, outputs, terminal state; Last-Event-ID resumes",
                    "parameters": [{"name": "lastEventId", "in": "query", "required": false, "description": "The id of the last event received: N (a log seq), or N.k (output k of the terminal event N); empty: from the start", "schema": {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?)?$"}}],
                    "responses": with_errors(json!({"200": {"description": "An event stream",
                        "content": {"text/event-stream": {"schema": {
                            "description": "One event; `data` is JSON (the log entry, for a terminal event {seq, at, type, job}, for a preview a PreviewEvent)",
                            "type": "object", "required": ["data"],
                            "properties": {
                                "id": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$", "description": "The event's seq in the job's log; N.k for output k of the terminal event N"},
                                "event": {"type": "string", "enum": ["status", "progress", "output", "succeeded", "failed", "canceled", "webhook", "preview"], "description": "`preview` (LIVE_PREVIEWS): the running job's latest preview image (a PreviewEvent), live only, without an id"},
                                "data": {"type": "string", "contentMediaType": "application/json"},
                                "retry": {"type": "integer"}
                            }
                        }}}}}),
                        &[("400", "Bad Last-Event-ID"), ("404", "No such job, or another owner's")])
                }
            },
            "/jobs/{jobId}": {
                "parameters": [job_id.clone()],
                "get": {
                    "operationId": "getJob",
                    "parameters": [{"name": "include", "in": "query", "required": false,
                        "description": "`base64` inlines small outputs", "schema": {"type": "string", "enum": ["base64"]}}],
                    "responses": with_errors(json!({"200": json_response("The job", schema_ref("Job"))}),
                        &[("400", "Bad query parameter"), ("404", "No such job, or another owner's"), ("503", "?include=base64 while the blob storage (S3) is unreachable (STORAGE_UNAVAILABLE)")])
                }
            },
            "/jobs/cancel": {
                "post": {
                    "operationId": "cancelJobs",
                    "summary": "Cancel the queued and running jobs that match the filters (your own; an admin's: anyone's), newest first, at most limit per call; each is audited as job.cancel",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("JobCancelFilter")}}},
                    "responses": with_errors(json!({"200": json_response("The jobs canceled, and whether more match", schema_ref("JobsCanceled"))}),
                        &[("400", "A bad filter (details name each field)"), ("408", "The body did not arrive within BODY_READ_TIMEOUT_MS, or too slowly (REQUEST_TIMEOUT)"), ("413", "Body too large")])
                }
            },
            "/jobs/{jobId}/cancel": {
                "parameters": [job_id.clone()],
                "post": {
                    "operationId": "cancelJob",
                    "responses": with_errors(json!({"200": json_response("The job after the cancel", schema_ref("Job"))}),
                        &[("404", "No such job, or another owner's"), ("409", "The job already finished")])
                }
            },
            "/jobs/{jobId}/webhooks": {
                "parameters": [job_id.clone()],
                "get": {
                    "operationId": "listJobWebhooks",
                    "summary": "The job's webhook deliveries (one per event sent to its callbackUrl), oldest first",
                    "responses": with_errors(json!({"200": json_response("The deliveries", schema_ref("JobDeliveries"))}), &[("404", "No such job, or another owner's")])
                }
            },
            "/jobs/{jobId}/webhook/redeliver": {
                "parameters": [job_id.clone()],
                "post": {
                    "operationId": "redeliverJobWebhooks",
                    "summary": "Send every webhook of the job again now, with the same webhook-id; re-enables endpoints disabled by HTTP 410",
                    "responses": with_errors(json!({"202": json_response("The deliveries, due now", schema_ref("JobDeliveries"))}), &[("404", "No such job, or another owner's"), ("409", "The job has no webhook deliveries")])
                }
            },
            "/outputs/{jobId}": {
                "parameters": [job_id.clone()],
                "get": {
                    "operationId": "listOutputs",
                    "responses": read(json!({"200": json_response("The job's output files", schema_ref("JobOutputs"))}))
                }
            },
            "/audit": {"get": {
                "operationId": "audit",
                "summary": "The audit log (workflow changes, cancels), newest first; admins only",
                "parameters": [
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "required": false, "description": "nextCursor of the previous page", "schema": {"type": "string"}}
                ],
                "responses": with_errors(json!({"200": json_response("A page of the audit log", schema_ref("AuditPage"))}), &[("400", "Bad query parameter"), ADMIN_ONLY])
            }},
            "/backends": {"get": {
                "operationId": "listBackends",
                "summary": "Every configured ComfyUI backend: state, load, latencies, recent workflows",
                "responses": with_errors(json!({"200": json_response("The backends, in COMFYUI_URL order", schema_ref("BackendList"))}), &[])
            }},
            "/backends/{backendId}/drain": {
                "parameters": [path_param("backendId", "The backend's id (COMFYUI_URL option id)")],
                "post": {
                    "operationId": "drainBackend",
                    "summary": "Drain a backend: no new jobs go there, running ones finish; survives restarts; admins only",
                    "responses": with_errors(json!({"200": json_response("The backend after the change", schema_ref("Backend"))}),
                        &[("404", "No backend with that id (BACKEND_NOT_FOUND)"), ADMIN_ONLY])
                }
            },
            "/backends/{backendId}/resume": {
                "parameters": [path_param("backendId", "The backend's id (COMFYUI_URL option id)")],
                "post": {
                    "operationId": "resumeBackend",
                    "summary": "Undo a drain: the backend takes new jobs again; admins only",
                    "responses": with_errors(json!({"200": json_response("The backend after the change", schema_ref("Backend"))}),
                        &[("404", "No backend with that id (BACKEND_NOT_FOUND)"), ADMIN_ONLY])
                }
            },
            "/mcp": {
                "post": {
                    "operationId": "mcpMessage",
                    "summary": "Model Context Protocol (Streamable HTTP; revision 2026-07-28 and the older ones, served without sessions): one JSON-RPC message. Every workflow is a tool (its id the name, its input schema the inputSchema), beside get_job; a workflow tool submits a job as the caller and waits for it as ?wait= does (MAX_SYNC_WAITS, the job cap), with progress notifications; MCP clients speak it, see the README",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "description": "A JSON-RPC 2.0 message (MCP)"}}}},
                    "responses": with_errors(json!({
                        "200": {"description": "The JSON-RPC answer: JSON, or an event stream when notifications (progress) come first",
                            "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
                        "202": {"description": "A notification or a response, accepted"}
                    }), &[("400", "Not a JSON-RPC message, not one MCP takes, or an Accept without application/json and text/event-stream (VALIDATION_ERROR)"), ("404", "No MCP session with that id (NOT_FOUND)"), ("413", "Body over MAX_BODY_BYTES (PAYLOAD_TOO_LARGE)"), ("415", "Not application/json (UNSUPPORTED_MEDIA_TYPE)")])
                },
                "get": {
                    "operationId": "mcpStream",
                    "summary": "Model Context Protocol: a session's event stream; the gateway keeps no sessions, so 405",
                    "responses": with_errors(json!({"200": {"description": "The session's event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}),
                        &[("404", "No MCP session with that id (NOT_FOUND)"), ("405", "No stream without a session (METHOD_NOT_ALLOWED)")])
                },
                "delete": {
                    "operationId": "mcpClose",
                    "summary": "Model Context Protocol: end a session; the gateway keeps no sessions, so 405",
                    "responses": with_errors(json!({"202": {"description": "Closed"}, "204": {"description": "Closed"}}),
                        &[("404", "No MCP session with that id (NOT_FOUND)"), ("405", "No session to close (METHOD_NOT_ALLOWED)")])
                }
            },
            "/admin/backup": {"post": {
                "operationId": "backup",
                "summary": "An online, consistent copy of the database (one read snapshot, checked as `comfyui-gateway check` does), streamed as a redb file; admins only",
                "responses": with_errors(json!({"200": {
                    "description": "The copy: a redb database file to restore with the gateway stopped (README \"Backups\")",
                    "headers": {
                        "X-Backup-Sha256": {"description": "SHA-256 of the file, hex", "schema": {"type": "string"}},
                        "X-Backup-Entries": {"description": "Entries copied over every table", "schema": {"type": "integer"}}
                    },
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
                }}), &[
                    ADMIN_ONLY,
                    ("409", "Another backup is running (CONFLICT); one at a time; retry after Retry-After seconds"),
                    ("507", "The database's file system has less free space than the database's size plus DISK_FREE_MIN_BYTES (STORAGE_FULL); retry after Retry-After seconds")
                ])
            }},
            "/outputs/{jobId}/{file}": {
                "parameters": [job_id, path_param("file", "The output's name")],
                "get": {
                    "operationId": "getOutput",
                    "summary": "The bytes (ETag = BLAKE3 hash; Range, If-None-Match, If-Range), or JSON with ?format=base64",
                    "parameters": [{"name": "format", "in": "query", "required": false, "schema": {"type": "string", "enum": ["raw", "base64"]},
                        "description": "raw (the default): the file's bytes. base64: instead a JSON object (application/json, the schema OutputBase64) with the bytes in base64; \
                            not listed among the 200's media types, so that generated clients read this operation's answer as bytes. \
                            GET /jobs/{jobId}?include=base64 inlines outputs in base64 too."}],
                    "responses": with_errors(json!({
                        "200": {"description": "The file's bytes, sent in the output's mediaType (image/png, video/mp4, …); with ?format=base64, OutputBase64 JSON instead (see the parameter)", "content": binary_content()},
                        "206": {"description": "A byte range, in the output's mediaType", "content": binary_content()},
                        "304": {"description": "Not modified (If-None-Match)"},
                        "307": {"description": "With S3 storage and S3_PRESIGN_TTL_SECONDS set: redirect (Location) to a presigned GET URL of the object"}
                    }), &[("400", "Bad query parameter"), ("404", "No such job or output"), ("416", "Range outside the file"), ("503", "The blob storage (S3) is unreachable (STORAGE_UNAVAILABLE)")])
                }
            }
        },
        "components": {
            "schemas": Value::Object(schemas),
            "headers": headers(),
            "securitySchemes": {
                "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                    "description": "A key of API_KEYS / API_KEYS_FILE"},
                "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "HS256 (JWT_SECRET), RS256 or EdDSA (JWT_PUBLIC_KEY); sub = owner, role = admin|user, exp required"}
            }
        },
        "x-workflow-inputs": Value::Object(inputs_by_workflow),
        "x-workflow-ids": ids,
        "webhooks": webhooks(),
    });
    guard_responses(&mut doc);
    open_objects(&mut doc);
    doc
}

/// Give every free-form object schema (an object type without `properties`,
/// `additionalProperties`, `patternProperties` or a composition) an explicit
/// `"additionalProperties": true`. JSON Schema means the same without it, but
/// openapi-typescript reads a bare `{"type": "object"}` as `Record<string, never>`, so
/// `inputs`, `params` or `metadata` could not be given a member without a cast. Values
/// (`default`, `const`, `enum`, `example(s)`) are data, not schemas, and are left alone.
fn open_objects(v: &mut Value) {
    const SHAPED: [&str; 7] =
        ["properties", "additionalProperties", "patternProperties", "$ref", "allOf", "anyOf", "oneOf"];
    const DATA: [&str; 5] = ["default", "const", "enum", "example", "examples"];
    match v {
        Value::Object(obj) => {
            let object_type = match obj.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => false,
            };
            if object_type && !SHAPED.iter().any(|k| obj.contains_key(*k)) {
                obj.insert("additionalProperties".into(), Value::Bool(true));
            }
            for (key, child) in obj.iter_mut() {
                if !DATA.contains(&key.as_str()) {
                    open_objects(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(open_objects),
        _ => {}
    }
}

/// The answers of `api::guard`, on every operation: `403 HOST_NOT_ALLOWED` (any), `403
/// CROSS_ORIGIN_REFUSED` (writes) and `415 UNSUPPORTED_MEDIA_TYPE` (writes).
fn guard_responses(doc: &mut Value) {
    const HOST: &str = "HOST_NOT_ALLOWED: the Host header names neither this gateway nor an ALLOWED_HOSTS entry";
    const ORIGIN: &str = "CROSS_ORIGIN_REFUSED: open mode, a write from another browser origin";
    const MEDIA: &str = "UNSUPPORTED_MEDIA_TYPE: a body in another type than the operation takes (application/json; multipart/form-data for POST /jobs)";
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for (method, op) in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.iter_mut()) {
        let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
        let writes = matches!(method.as_str(), "post" | "put" | "delete");
        match responses.get_mut("403") {
            Some(r) => {
                let extra = if writes { format!("; or {HOST}; or {ORIGIN}") } else { format!("; or {HOST}") };
                if let Some(d) = r.get_mut("description").and_then(|d| d.as_str().map(|d| format!("{d}{extra}"))) {
                    r["description"] = Value::String(d);
                }
            }
            None => {
                let text = if writes { format!("{HOST}; or {ORIGIN}") } else { HOST.to_string() };
                responses.insert("403".into(), error_response(&text));
            }
        }
        if writes {
            responses.entry("415").or_insert_with(|| error_response(MEDIA));
        }
    }
}

/// The messages POSTed to a job's `callbackUrl` (OpenAPI 3.1 `webhooks`).
fn webhooks() -> Value {
    let header = |name: &str, description: &str| json!({"name": name, "in": "header", "required": true, "description": description, "schema": {"type": "string"}});
    json!({
        "jobEvent": {"post": {
            "summary": "A job event, POSTed to the job's callbackUrl (Standard Webhooks)",
            "description": "Sent on every terminal state, and on job.started / job.progress when callbackEvents asks. \
                Retried on WEBHOOK_RETRY_SCHEDULE (jitter ±10 %, Retry-After honoured) until a 2xx; a 410 disables \
                the URL until POST /jobs/{jobId}/webhook/redeliver. Delivery is at least once: deduplicate by webhook-id.",
            "parameters": [
                header("webhook-id", "msg_<32 hex>, the same on every attempt"),
                header("webhook-timestamp", "Unix seconds of this attempt"),
                {"name": "webhook-signature", "in": "header", "required": false, "schema": {"type": "string"},
                    "description": "v1,<base64 HMAC-SHA256 of id.timestamp.body> with WEBHOOK_SECRET (absent without one)"},
                {"name": "x-signature", "in": "header", "required": false, "schema": {"type": "string"},
                    "description": "sha256=<hex HMAC-SHA256 of the body>, the same key (absent without a secret)"}
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("WebhookPayload")}}},
            "responses": {
                "2XX": {"description": "Delivered"},
                "410": {"description": "Gone: the URL gets no more webhooks until a redelivery"}
            }
        }}
    })
}

/// The name of each workflow's components (`JobRequest.<name>`, `WorkflowInputs.<name>`):
/// its id with what a component name cannot hold as `_`, and unique once folded the way
/// client generators fold names into classes and modules (separators dropped, case
/// ignored: openapi-python-client makes `JobRequestIcon512` of both `icon_512` and
/// `icon.512`, and keeps only one). A workflow whose folded id an earlier one (in id
/// order) has gets `.2`, `.3`, ... until it is unique.
fn component_names(workflows: &[(String, Value)]) -> Vec<String> {
    let fold = |name: &str| -> String {
        name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
    };
    let mut order: Vec<usize> = (0..workflows.len()).collect();
    order.sort_by(|&a, &b| workflows[a].0.cmp(&workflows[b].0));
    let mut taken = std::collections::HashSet::new();
    let mut names = vec![String::new(); workflows.len()];
    for i in order {
        let base = sanitize(&workflows[i].0);
        let mut name = base.clone();
        let mut n = 1;
        while !taken.insert(fold(&name)) {
            n += 1;
            name = format!("{base}.{n}");
        }
        names[i] = name;
    }
    names
}

fn sanitize(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_answers_are_documented_except_on_health() {
        let doc = document(&[], "/");
        for (path, method) in [("/jobs", "post"), ("/jobs", "get"), ("/capabilities", "get"), ("/openapi.json", "get")]
        {
            let r = &doc["paths"][path][method]["responses"];
            assert!(r["429"]["headers"]["Retry-After"]["$ref"].is_string(), "{method} {path}");
            assert!(
                r["200"]["headers"]["RateLimit"]["$ref"].is_string() || r["202"]["headers"]["RateLimit"].is_object()
            );
        }
        // /health is not rate limited; its 429 is only the per-address connection cap's.
        let health_429 = doc["paths"]["/health"]["get"]["responses"]["429"]["description"].as_str().unwrap();
        assert!(
            health_429.contains("MAX_CONNECTIONS_PER_IP") && !health_429.contains("RATE_LIMIT_MAX"),
            "{health_429}"
        );
        // The guard's answers: a foreign Host anywhere, cross-origin writes, wrong media types.
        assert!(
            doc["paths"]["/health"]["get"]["responses"]["403"]["description"]
                .as_str()
                .unwrap()
                .contains("HOST_NOT_ALLOWED")
        );
        let create = &doc["paths"]["/jobs"]["post"]["responses"];
        assert!(create["415"].is_object() && create["403"]["description"].as_str().unwrap().contains("CROSS_ORIGIN"));
        let admin = doc["paths"]["/workflows"]["post"]["responses"]["403"]["description"].as_str().unwrap();
        assert!(admin.contains("FORBIDDEN") && admin.contains("HOST_NOT_ALLOWED"), "{admin}");
        assert!(doc["paths"]["/jobs"]["get"]["responses"]["415"].is_null());
        assert_eq!(doc["components"]["headers"]["Retry-After"]["schema"]["type"], "integer");
    }

    #[test]
    fn webhook_messages_are_described() {
        let doc = document(&[], "/");
        let post = &doc["webhooks"]["jobEvent"]["post"];
        let body = &post["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/WebhookPayload");
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["WebhookPayload"]["required"], json!(["type", "timestamp", "data"]));
        assert_eq!(schemas["WebhookPayload"]["properties"]["data"]["$ref"], "#/components/schemas/WebhookJob");
        // The job as GET /jobs/{id} shows it (flattened: one object, no allOf), with the milestone.
        let data = &schemas["WebhookJob"];
        assert!(data.get("allOf").is_none());
        assert_eq!(data["properties"]["jobId"], schemas["Job"]["properties"]["jobId"]);
        assert_eq!(data["properties"]["progress"]["$ref"], "#/components/schemas/WebhookProgress");
        assert!(post["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "webhook-signature"));
    }

    /// What the client generators need (tests/it/clients.rs runs them on the live document).
    #[test]
    fn generated_clients_can_use_the_document() {
        let doc = document(
            &[(
                "w".into(),
                json!({"type": "object", "properties": {"o": {"type": "object", "default": {"type": "object"}}}}),
            )],
            "/",
        );
        let schemas = &doc["components"]["schemas"];
        // Free-form objects say that any member goes (openapi-typescript: not `Record<string, never>`),
        // and a nullable one is `anyOf` an object and null, never `type: [object, null]`
        // (openapi-python-client drops such a schema, and with it the operation).
        let free = |v: &Value| {
            assert!(!v["type"].is_array(), "{v}");
            assert_eq!(v["anyOf"][1], json!({"type": "null"}), "{v}");
            assert_eq!(v["anyOf"][0]["additionalProperties"], true, "{v}");
        };
        for field in ["inputs", "params", "metadata"] {
            free(&schemas["JobRequest"]["properties"][field]);
        }
        free(&schemas["WorkflowUpdate"]["properties"]["defaults"]);
        assert!(!serde_json::to_string(&doc).unwrap().contains(r#"["object","null"]"#));
        assert_eq!(schemas["WorkflowInputs.w"]["properties"]["o"]["additionalProperties"], true);
        assert_eq!(
            schemas["WorkflowInputs.w"]["properties"]["o"]["default"],
            json!({"type": "object"}),
            "values untouched"
        );
        assert!(schemas["WorkflowInputs.w"].get("additionalProperties").is_none(), "shaped objects untouched");
        // No inheritance of nullable objects through allOf (openapi-python-client drops the schemas).
        let definition = &schemas["WorkflowDefinition"];
        assert!(definition.get("allOf").is_none());
        assert_eq!(definition["required"], json!(["id", "workflow"]));
        assert_eq!(definition["properties"]["id"]["type"], "string");
        assert_eq!(definition["properties"]["defaults"], schemas["WorkflowUpdate"]["properties"]["defaults"]);
        let details = &schemas["WorkflowDetails"];
        assert!(details.get("allOf").is_none());
        assert_eq!(
            details["required"],
            json!([
                "id",
                "name",
                "description",
                "version",
                "updatedAt",
                "inputSchema",
                "workflow",
                "defaults",
                "keepPreviews"
            ])
        );
        assert_eq!(details["properties"]["version"], schemas["WorkflowSummary"]["properties"]["version"]);
        let registered =
            &doc["paths"]["/workflows/import"]["post"]["responses"]["201"]["content"]["application/json"]["schema"];
        assert_eq!(registered["$ref"], "#/components/schemas/WorkflowImportRegistered");
        let imported = &schemas["WorkflowImportRegistered"];
        assert!(imported.get("allOf").is_none() && imported["properties"]["inputSchema"].is_object(), "{imported}");
        assert!(imported["required"].as_array().unwrap().contains(&json!("warnings")));
        // Unit enums are string enums (generators make enum types of them), their values
        // described; no schemars-only formats, no `true` schemas.
        assert_eq!(schemas["JobStatus"]["enum"], json!(["queued", "running", "succeeded", "failed", "canceled"]));
        assert!(schemas["JobStatus"].get("oneOf").is_none());
        assert!(schemas["JobStatus"]["description"].as_str().unwrap().contains("`failed`: Failed"));
        assert_eq!(schemas["WebhookEventType"]["enum"][0], "job.started");
        // Every link says where it points.
        for (schema, link) in [("Output", "url"), ("Job", "pollUrl"), ("JobAccepted", "pollUrl")] {
            let said = schemas[schema]["properties"][link]["description"].as_str().unwrap_or("");
            assert!(said.contains("PUBLIC_URL"), "{schema}.{link}: {said}");
        }
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("\"uint"), "schemars-only formats are gone");
        // Request bodies say their defaults in words (openapi-typescript would require them).
        for name in ["JobRequest", "WorkflowDefinition", "WorkflowUpdate", "WorkflowImport", "PluginBody"] {
            let properties = schemas[name]["properties"].as_object().unwrap();
            assert!(properties.values().all(|p| p.get("default").is_none()), "{name}");
        }
        assert!(
            schemas["JobRequest"]["properties"]["cache"]["description"].as_str().unwrap().ends_with("Default: `true`.")
        );
        // A download's bytes are bytes: no JSON media type beside them.
        let download = &doc["paths"]["/outputs/{jobId}/{file}"]["get"]["responses"];
        for status in ["200", "206"] {
            let content = download[status]["content"].as_object().unwrap();
            assert!(content.contains_key("application/octet-stream"), "{status}");
            assert!(content.keys().all(|t| !t.contains("json")), "{status}: {content:?}");
        }
    }

    #[test]
    fn component_names_stay_apart_once_folded_by_generators() {
        let ids = ["icon.512-copy", "icon_512_copy", "Icon512Copy", "icon512copy2", "w one", "plain"];
        let workflows: Vec<(String, Value)> =
            ids.iter().map(|id| (id.to_string(), json!({"type": "object"}))).collect();
        let names = component_names(&workflows);
        // In id order: "Icon512Copy" < "icon.512-copy" < "icon512copy2" < "icon_512_copy"; a
        // suffix taken by a fold (`icon512copy2`) moves the next one on.
        assert_eq!(names, ["icon.512-copy.2", "icon_512_copy.3", "Icon512Copy", "icon512copy2.2", "w_one", "plain"]);
        let folded: std::collections::HashSet<String> = names
            .iter()
            .map(|n| n.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect())
            .collect();
        assert_eq!(folded.len(), names.len());
        let doc = document(&workflows, "/");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in &names {
            assert!(schemas.contains_key(&format!("JobRequest.{name}")), "{name}");
        }
        assert_eq!(
            doc["components"]["schemas"]["JobRequest.icon_512_copy.3"]["properties"]["workflowId"]["const"],
            "icon_512_copy"
        );
    }

    #[test]
    fn each_workflow_has_its_job_request() {
        let inputs = json!({"type": "object", "properties": {"p": {"type": "string"}}, "required": ["p"]});
        let doc = document(&[("w one".into(), inputs), ("free".into(), json!({"type": "object"}))], "/");
        let schemas = &doc["components"]["schemas"];
        let typed = &schemas["JobRequest.w_one"];
        assert_eq!(typed["properties"]["workflowId"]["const"], "w one");
        assert_eq!(typed["properties"]["inputs"]["$ref"], "#/components/schemas/WorkflowInputs.w_one");
        assert_eq!(typed["required"], json!(["workflowId", "inputs"]));
        let titled = document(&[("t".into(), json!({"type": "object", "title": "T", "description": "d"}))], "/");
        let inputs = &titled["components"]["schemas"]["WorkflowInputs.t"];
        assert!(inputs.get("title").is_none(), "models named after the component: {inputs}");
        assert_eq!(inputs["description"], "T: d");
        assert_eq!(typed["properties"]["callbackUrl"], schemas["JobRequest"]["properties"]["callbackUrl"]);
        assert_eq!(typed["additionalProperties"], false);
        assert_eq!(schemas["JobRequest.free"]["required"], json!(["workflowId"]), "no input needed");
        let body = &doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        let members: Vec<&str> =
            body["anyOf"].as_array().unwrap().iter().map(|m| m["$ref"].as_str().unwrap()).collect();
        assert_eq!(
            members,
            [
                "#/components/schemas/JobRequest",
                "#/components/schemas/JobRequest.w_one",
                "#/components/schemas/JobRequest.free"
            ]
        );
    }

    #[test]
    fn workflow_schemas_are_embedded() {
        let doc =
            document(&[("w one".into(), json!({"$schema": "x", "type": "object"}))], "https://gw.example.com/base");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["schemas"]["WorkflowInputs.w_one"],
            json!({"type": "object", "additionalProperties": true})
        );
        assert_eq!(doc["x-workflow-inputs"]["w one"]["$ref"], "#/components/schemas/WorkflowInputs.w_one");
        assert_eq!(doc["servers"][0]["url"], "https://gw.example.com/base");
    }
}
