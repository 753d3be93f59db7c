//! Request bodies: what `POST /jobs`, `POST|PUT /workflows` and `POST /workflows/import`
//! take, parsed with [`super::parse`].
//!
//! Every optional field also takes `null`, meaning absent (as the API always has); the
//! schemas say so with `anyOf: [..., {type: null}]` rather than `type: ["object", "null"]`,
//! a shape some client generators drop. What serde cannot say (priority's range, exactly
//! one of a plugin's `wasm` and `hash`) is checked right after the parse, by the methods
//! here, with the field's JSON pointer.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::domain::{PRIORITY_MAX, WebhookEvents};
use crate::error::{Error, Result};

/// A JSON object of any members.
pub type Object = Map<String, Value>;

/// `null` as the field's default: the API takes `null` for "absent" on optional fields.
fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

fn yes() -> bool {
    true
}

/// `null` as `true` (`cache`'s default).
fn null_as_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Option::<bool>::deserialize(d).map(|b| b.unwrap_or(true))
}

/// A field that is there, `null` included: `Some(None)` for `null`, `Some(Some(_))` for a
/// value (with `#[serde(default)]`, an absent field is `None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// No `default` in a field's schema: `null` says nothing more than the field's absence
/// (and for `plugin`, absent and `null` mean different things), and openapi-python-client
/// refuses a `default` of `{}` on an object-or-null union (dropping the whole request).
fn no_default(schema: &mut Schema) {
    schema.remove("default");
}

/// The schema of `T` or `null`, as `anyOf` (see the module's comment).
fn or_null<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [generator.subschema_for::<T>(), {"type": "null"}]})
}

/// The body of `POST /jobs` (or its `request` part, with `multipart/form-data`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobRequest {
    /// The id of the registered workflow to run.
    pub workflow_id: String,
    /// The workflow's inputs, validated against its input schema (see `x-workflow-inputs`).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "or_null::<Object>", transform = no_default)]
    pub inputs: Object,
    /// Extra inputs; `inputs` win.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "or_null::<Object>", transform = no_default)]
    pub params: Object,
    /// The job's place in the queue (default `normal`).
    pub priority: Option<Priority>,
    /// Webhook receiver, an absolute http(s) URL (Standard Webhooks signatures); terminal
    /// events are always sent.
    #[schemars(url)]
    pub callback_url: Option<String>,
    /// Further webhook events (needs `callbackUrl`).
    pub callback_events: Option<Vec<CallbackEvent>>,
    /// `false`: neither answered from nor stored in the result cache.
    #[serde(default = "yes", deserialize_with = "null_as_true")]
    #[schemars(with = "Option<bool>")]
    pub cache: bool,
    /// Client data, kept with the job; `requestId` (a string) is an idempotency key.
    #[serde(default)]
    #[schemars(schema_with = "or_null::<Object>", transform = no_default)]
    pub metadata: Option<Object>,
}

impl JobRequest {
    /// `callbackEvents` as a [`WebhookEvents`] bit set (terminal events are always sent).
    ///
    /// # Errors
    /// `VALIDATION_ERROR` at `/callbackEvents` without a `callbackUrl`.
    pub fn webhook_events(&self) -> Result<u8> {
        let Some(events) = &self.callback_events else { return Ok(0) };
        if self.callback_url.is_none() {
            return Err(Error::validation("/callbackEvents", "needs a callbackUrl"));
        }
        Ok(events.iter().fold(0, |bits, e| bits | e.bit()))
    }

    /// The priority level (`normal`, 0, when absent).
    ///
    /// # Errors
    /// `VALIDATION_ERROR` at `/priority` for a level outside -100..=100.
    pub fn priority_level(&self) -> Result<i32> {
        self.priority.as_ref().map_or(Ok(0), Priority::level)
    }
}

/// A job's priority: a name, or a level from -100 (last) to 100 (first); `high` is 1,
/// `normal` 0, `low` -1. Higher levels are dispatched first, equal levels in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged, expecting = "must be \"high\", \"normal\", \"low\" or an integer from -100 to 100")]
pub enum Priority {
    /// A named level.
    Name(PriorityName),
    /// A level from -100 to 100.
    Level(#[schemars(range(min = -100, max = 100))] i32),
}

/// The named priorities: `high` (level 1), `normal` (0, the default), `low` (-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriorityName {
    // Level 1.
    High,
    // Level 0, the default.
    Normal,
    // Level -1.
    Low,
}

impl Priority {
    /// The level.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` at `/priority` for a level outside -100..=100.
    pub fn level(&self) -> Result<i32> {
        match *self {
            Priority::Name(PriorityName::High) => Ok(1),
            Priority::Name(PriorityName::Normal) => Ok(0),
            Priority::Name(PriorityName::Low) => Ok(-1),
            Priority::Level(n) if n.abs() <= PRIORITY_MAX => Ok(n),
            Priority::Level(_) => Err(Error::validation(
                "/priority",
                "must be \"high\", \"normal\", \"low\" or an integer from -100 to 100",
            )),
        }
    }
}

/// A webhook event a job may ask for: `job.started` (first handed to a backend),
/// `job.progress` (milestones at 25, 50, 75 and 100 %); the terminal `job.succeeded`,
/// `job.failed` and `job.canceled` are always sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[schemars(inline)]
pub enum CallbackEvent {
    // The job was handed to a backend for the first time.
    #[serde(rename = "job.started")]
    Started,
    // Progress milestones (25, 50, 75, 100 %).
    #[serde(rename = "job.progress")]
    Progress,
    // The job succeeded (always sent).
    #[serde(rename = "job.succeeded")]
    Succeeded,
    // The job failed (always sent).
    #[serde(rename = "job.failed")]
    Failed,
    // The job was canceled (always sent).
    #[serde(rename = "job.canceled")]
    Canceled,
}

impl CallbackEvent {
    /// The event's [`WebhookEvents`] bit; 0 for the terminal events, which are always sent.
    pub fn bit(self) -> u8 {
        match self {
            CallbackEvent::Started => WebhookEvents::STARTED,
            CallbackEvent::Progress => WebhookEvents::PROGRESS,
            CallbackEvent::Succeeded | CallbackEvent::Failed | CallbackEvent::Canceled => 0,
        }
    }
}

/// The body of `POST /workflows`: a new workflow.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowDefinition {
    /// The workflow's id: 1 to 128 of `A-Z a-z 0-9 _ . -`.
    #[schemars(pattern(r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub id: String,
    /// Display name (default: the id).
    pub name: Option<String>,
    /// What the workflow makes.
    pub description: Option<String>,
    /// ComfyUI API-format template with `{{token}}` placeholders.
    #[schemars(schema_with = "api_format_workflow")]
    pub workflow: Object,
    /// JSON Schema 2020-12 of the inputs (default: derived from the template's tokens).
    #[serde(default)]
    #[schemars(schema_with = "or_null::<Object>", transform = no_default)]
    pub input_schema: Option<Object>,
    /// Default inputs.
    #[serde(default)]
    #[schemars(schema_with = "or_null::<Object>", transform = no_default)]
    pub defaults: Option<Object>,
    /// Keep PreviewImage (temp) outputs as job outputs.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(with = "Option<bool>")]
    pub keep_previews: bool,
    /// A WebAssembly component (wit/plugin.wit) run on this workflow's jobs; `null` or
    /// absent: none.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PluginBody>", transform = no_default)]
    pub plugin: Option<Option<PluginBody>>,
}

/// The body of `PUT /workflows/{id}`: a new version of the workflow.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowUpdate {
    /// The workflow's id, if given: the same as the path's.
    pub id: Option<String>,
    /// Display name (default: the id).
    pub name: Option<String>,
    /// What the workflow makes.
    pub description: Option<String>,
    /// ComfyUI API-format template with `{{token}}` placeholders.
    #[schemars(schema_with = "api_format_workflow")]
    pub workflow: Object,
    /// JSON Schema 2020-12 of the inputs (default: derived from the template's tokens).
    #[serde(default)]
    #[schemars(schema_with = "or_null::<Object>", transform = no_default)]
    pub input_schema: Option<Object>,
    /// Default inputs.
    #[serde(default)]
    #[schemars(schema_with = "or_null::<Object>", transform = no_default)]
    pub defaults: Option<Object>,
    /// Keep PreviewImage (temp) outputs as job outputs.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(with = "Option<bool>")]
    pub keep_previews: bool,
    /// A WebAssembly component (wit/plugin.wit) run on this workflow's jobs. Absent: the
    /// current version's is kept; `null`: removed.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PluginBody>", transform = no_default)]
    pub plugin: Option<Option<PluginBody>>,
}

impl WorkflowDefinition {
    /// The id, and the rest as an update.
    pub fn split(self) -> (String, WorkflowUpdate) {
        let WorkflowDefinition { id, name, description, workflow, input_schema, defaults, keep_previews, plugin } =
            self;
        (id, WorkflowUpdate { id: None, name, description, workflow, input_schema, defaults, keep_previews, plugin })
    }
}

/// The schema of a ComfyUI API-format workflow: `{node id: {class_type, inputs, _meta?}}`
/// (`comfy::graph` knows its keys).
/// An API-format workflow, or a UI-format one: the document's two components (its
/// `ApiFormatWorkflow` and `UiFormatWorkflow`, named so that client generators make a
/// union of two types of them).
fn any_workflow(_: &mut SchemaGenerator) -> Schema {
    let schema = serde_json::json!({"anyOf": [
        {"$ref": "#/components/schemas/ApiFormatWorkflow"},
        {"$ref": "#/components/schemas/UiFormatWorkflow"},
    ]});
    Schema::try_from(schema).expect("an object is a schema")
}

fn api_format_workflow(_: &mut SchemaGenerator) -> Schema {
    Schema::try_from(crate::comfy::graph::api_format_schema()).expect("an object is a schema")
}

/// A workflow's plugin: exactly one of `wasm` (the component's bytes, compiled and
/// type-checked at registration; 400 with a readable message if it cannot be used) and
/// `hash` (a component the gateway has stored).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object {wasm | hash, config?, keepOriginals?}")]
pub struct PluginBody {
    /// The component (wit/plugin.wit), base64.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub wasm: Option<String>,
    /// The BLAKE3 hash of a stored component, 64 hex digits.
    #[schemars(pattern(r"^[0-9a-f]{64}$"))]
    pub hash: Option<String>,
    /// What the plugin's `host.config()` returns (default `{}`).
    #[schemars(extend("default" = {}))]
    pub config: Option<Value>,
    /// Keep the outputs beside what `output-process` returns.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(with = "Option<bool>")]
    pub keep_originals: bool,
}

/// Where a plugin's component comes from, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginComponent {
    /// The component's bytes.
    Wasm(Vec<u8>),
    /// The BLAKE3 hash of a stored component.
    Stored([u8; 32]),
}

impl PluginBody {
    /// The component, decoded.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` at `/plugin` without exactly one of `wasm` and `hash`, at
    /// `/plugin/wasm` or `/plugin/hash` when it does not decode.
    pub fn component(&self) -> Result<PluginComponent> {
        use base64::Engine as _;
        match (&self.wasm, &self.hash) {
            (Some(b64), None) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map(PluginComponent::Wasm)
                .map_err(|e| Error::validation("/plugin/wasm", format!("is not base64: {e}"))),
            (None, Some(hex)) => blake3::Hash::from_hex(hex.trim())
                .map(|h| PluginComponent::Stored(*h.as_bytes()))
                .map_err(|_| Error::validation("/plugin/hash", "must be the 64 hex digits of a stored plugin")),
            _ => Err(Error::validation("/plugin", "needs exactly one of wasm (base64) and hash (hex)")),
        }
    }

    /// The configuration, `{}` when not given.
    pub fn config(&self) -> Value {
        self.config.clone().filter(|c| !c.is_null()).unwrap_or_else(|| Value::Object(Map::new()))
    }
}

/// The body of `POST /workflows/import` when it has a `workflow` member; a body without
/// one is the export itself, with the default options.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowImport {
    /// The workflow as ComfyUI's Export (API) writes it (`{node id: {class_type, inputs,
    /// _meta?}}`, links as `[node id, output index]`), or as its editor saves it (the UI
    /// format: `nodes`, `links`, widget values; converted with the backend's node definitions).
    #[schemars(schema_with = "any_workflow")]
    pub workflow: Value,
    /// The proposed id (default `imported`).
    #[schemars(pattern(r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub id: Option<String>,
    /// Name (default: the id); the input schema's title.
    pub name: Option<String>,
    /// The input schema's description.
    pub description: Option<String>,
    /// Register the proposal as it is (201), as `POST /workflows` would.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(with = "Option<bool>")]
    pub register: bool,
}

/// The body of `POST /jobs/cancel`: which of the caller's jobs (an admin's: anyone's) to
/// cancel, by the filters of `GET /jobs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobCancelFilter {
    /// Only jobs in these states: `queued`, `running` or both (the default).
    #[serde(default)]
    pub status: Option<Vec<crate::wire::job::JobStatus>>,
    /// Only jobs of this workflow.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// Only jobs created at or after this time.
    #[serde(default)]
    pub after: Option<crate::wire::Time>,
    /// Only jobs created before this time.
    #[serde(default)]
    pub before: Option<crate::wire::Time>,
    /// Most jobs canceled by this call, 1 to 1000 (100 by default); `more` in the answer
    /// says whether to call again.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::wire::parse;

    /// The (path, message) of a refused body.
    fn refusal<T: serde::de::DeserializeOwned + std::fmt::Debug>(v: Value) -> (String, String) {
        let e = parse::<T>(&v).expect_err("refused");
        let d = e.details.expect("details");
        (d[0]["path"].as_str().unwrap().to_string(), d[0]["message"].as_str().unwrap().to_string())
    }

    #[test]
    fn a_job_request_takes_null_as_absent() {
        let all_null = json!({"workflowId": "w", "inputs": null, "params": null, "priority": null,
            "callbackUrl": null, "callbackEvents": null, "cache": null, "metadata": null});
        let minimal = json!({"workflowId": "w"});
        let a: JobRequest = parse(&all_null).unwrap();
        assert_eq!(a, parse::<JobRequest>(&minimal).unwrap());
        assert!(a.inputs.is_empty() && a.params.is_empty() && a.metadata.is_none() && a.cache);
        assert_eq!((a.priority_level().unwrap(), a.webhook_events().unwrap()), (0, 0));
        let b: JobRequest =
            parse(&json!({"workflowId": "w", "inputs": {"a": 1}, "cache": false, "metadata": {"k": [1]}})).unwrap();
        assert_eq!((b.inputs["a"].clone(), b.cache, b.metadata.unwrap()["k"].clone()), (json!(1), false, json!([1])));
    }

    #[test]
    fn a_job_request_refuses_with_the_pointer() {
        assert_eq!(refusal::<JobRequest>(json!({"inputs": {}})), ("/workflowId".into(), "is required".into()));
        let (at, message) = refusal::<JobRequest>(json!({"workflowId": "w", "bogus": 1}));
        assert_eq!(at, "/bogus");
        assert!(message.starts_with("unknown field; expected one of workflowId, inputs"), "{message}");
        assert_eq!(refusal::<JobRequest>(json!({"workflowId": 1})).0, "/workflowId");
        assert_eq!(refusal::<JobRequest>(json!({"workflowId": "w", "inputs": [1]})).0, "/inputs");
        assert_eq!(refusal::<JobRequest>(json!({"workflowId": "w", "metadata": "x"})).0, "/metadata");
        assert_eq!(refusal::<JobRequest>(json!({"workflowId": "w", "cache": "no"})).0, "/cache");
        let events =
            json!({"workflowId": "w", "callbackUrl": "http://h/", "callbackEvents": ["job.started", "job.nope"]});
        let (at, message) = refusal::<JobRequest>(events);
        assert_eq!(at, "/callbackEvents/1");
        assert!(message.contains("job.progress"), "{message}");
    }

    #[test]
    fn callback_events_are_bits_and_need_a_callback_url() {
        let all = ["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"];
        let r: JobRequest =
            parse(&json!({"workflowId": "w", "callbackUrl": "http://h/", "callbackEvents": all})).unwrap();
        assert_eq!(r.webhook_events().unwrap(), WebhookEvents::STARTED | WebhookEvents::PROGRESS);
        let r: JobRequest =
            parse(&json!({"workflowId": "w", "callbackUrl": "http://h/", "callbackEvents": ["job.failed"]})).unwrap();
        assert_eq!(r.webhook_events().unwrap(), 0);
        let r: JobRequest = parse(&json!({"workflowId": "w", "callbackEvents": []})).unwrap();
        let d = r.webhook_events().unwrap_err().details.unwrap();
        assert_eq!(
            (d[0]["path"].as_str(), d[0]["message"].as_str()),
            (Some("/callbackEvents"), Some("needs a callbackUrl"))
        );
    }

    #[test]
    fn priorities_are_names_or_levels_within_range() {
        let level =
            |p: Value| parse::<JobRequest>(&json!({"workflowId": "w", "priority": p})).and_then(|r| r.priority_level());
        for (p, want) in [
            (json!("high"), 1),
            (json!("normal"), 0),
            (json!("low"), -1),
            (json!(-100), -100),
            (json!(100), 100),
            (json!(7), 7),
        ] {
            assert_eq!(level(p.clone()).unwrap(), want, "{p}");
        }
        for p in [json!("urgent"), json!(101), json!(-101), json!(1.5), json!(1e12), json!(true), json!({})] {
            let d = level(p.clone()).expect_err("refused").details.unwrap();
            assert_eq!(d[0]["path"], "/priority", "{p}");
            assert_eq!(d[0]["message"], "must be \"high\", \"normal\", \"low\" or an integer from -100 to 100", "{p}");
        }
    }

    #[test]
    fn a_plugin_is_kept_removed_or_set() {
        let base = json!({"id": "w", "workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}});
        let with = |plugin: Option<Value>| {
            let mut b = base.clone();
            if let Some(p) = plugin {
                b["plugin"] = p;
            }
            parse::<WorkflowDefinition>(&b)
        };
        assert_eq!(with(None).unwrap().plugin, None, "absent: kept");
        assert_eq!(with(Some(Value::Null)).unwrap().plugin, Some(None), "null: removed");
        let hash = "ab".repeat(32);
        let set = with(Some(json!({"hash": hash, "keepOriginals": true}))).unwrap().plugin.unwrap().unwrap();
        assert_eq!(set.component().unwrap(), PluginComponent::Stored([0xab; 32]));
        assert_eq!((set.config(), set.keep_originals), (json!({}), true));
        let set = with(Some(json!({"wasm": " AGFzbQ== ", "config": {"k": 1}, "keepOriginals": null}))).unwrap();
        let set = set.plugin.unwrap().unwrap();
        assert_eq!(set.component().unwrap(), PluginComponent::Wasm(b"\0asm".to_vec()));
        assert_eq!((set.config(), set.keep_originals), (json!({"k": 1}), false));
        // The checks after the parse, each at its path.
        let component =
            |p: Value| with(Some(p)).unwrap().plugin.unwrap().unwrap().component().unwrap_err().details.unwrap();
        assert_eq!(component(json!({}))[0]["path"], "/plugin");
        assert_eq!(component(json!({"wasm": "AA==", "hash": hash}))[0]["path"], "/plugin");
        assert_eq!(component(json!({"wasm": "not base64!"}))[0]["path"], "/plugin/wasm");
        assert_eq!(component(json!({"hash": "abc"}))[0]["path"], "/plugin/hash");
        // What serde refuses.
        let mut b = base.clone();
        b["plugin"] = json!({"hash": hash, "extra": 1});
        assert_eq!(refusal::<WorkflowDefinition>(b.clone()).0, "/plugin/extra");
        b["plugin"] = json!("x");
        let (at, message) = refusal::<WorkflowDefinition>(b.clone());
        assert_eq!(at, "/plugin");
        assert!(message.ends_with("expected an object {wasm | hash, config?, keepOriginals?}"), "{message}");
        b["plugin"] = json!({"keepOriginals": 1});
        assert_eq!(refusal::<WorkflowDefinition>(b).0, "/plugin/keepOriginals");
    }

    #[test]
    fn workflow_definitions_and_updates() {
        let workflow = json!({"1": {"class_type": "SaveImage", "inputs": {}}});
        assert_eq!(refusal::<WorkflowDefinition>(json!({"workflow": workflow})), ("/id".into(), "is required".into()));
        assert_eq!(refusal::<WorkflowDefinition>(json!({"id": "w"})), ("/workflow".into(), "is required".into()));
        assert_eq!(refusal::<WorkflowUpdate>(json!({"workflow": 5})).0, "/workflow");
        assert_eq!(refusal::<WorkflowUpdate>(json!({"workflow": workflow, "inputSchema": 1})).0, "/inputSchema");
        assert_eq!(refusal::<WorkflowUpdate>(json!({"workflow": workflow, "keepPreviews": "y"})).0, "/keepPreviews");
        assert_eq!(refusal::<WorkflowUpdate>(json!({"workflow": workflow, "extra": 1})).0, "/extra");
        let all_null = json!({"id": null, "name": null, "description": null, "workflow": workflow,
            "inputSchema": null, "defaults": null, "keepPreviews": null});
        let u: WorkflowUpdate = parse(&all_null).unwrap();
        assert_eq!(u, parse::<WorkflowUpdate>(&json!({"workflow": workflow})).unwrap());
        let d: WorkflowDefinition =
            parse(&json!({"id": "w", "name": "W", "workflow": workflow, "defaults": {"a": 1}, "keepPreviews": true}))
                .unwrap();
        let (id, u) = d.split();
        assert_eq!((id.as_str(), u.name.as_deref(), u.keep_previews, u.id), ("w", Some("W"), true, None));
        assert_eq!(u.defaults.unwrap()["a"], 1);
    }

    #[test]
    fn an_import_takes_any_workflow_value_and_its_options() {
        let i: WorkflowImport = parse(&json!({"workflow": 5, "register": null, "id": null})).unwrap();
        assert_eq!((i.workflow, i.register, i.id), (json!(5), false, None), "the service names what is wrong");
        let i: WorkflowImport = parse(&json!({"workflow": {}, "register": true, "name": "N"})).unwrap();
        assert_eq!((i.register, i.name.as_deref()), (true, Some("N")));
        assert_eq!(refusal::<WorkflowImport>(json!({"id": "x"})).0, "/workflow");
        let (at, message) = refusal::<WorkflowImport>(json!({"workflow": {}, "register": "yes"}));
        assert_eq!(at, "/register");
        assert!(message.contains("boolean"), "{message}");
        assert_eq!(refusal::<WorkflowImport>(json!({"workflow": {}, "extra": 1})).0, "/extra");
    }

    /// The schemas say what is accepted: `null` for optional fields, without
    /// `type: ["object", "null"]` for free-form objects.
    #[test]
    fn schemas_say_null_is_accepted_in_shapes_generators_take() {
        let job = serde_json::to_value(schemars::schema_for!(JobRequest)).unwrap();
        let props = &job["properties"];
        assert_eq!(job["required"], json!(["workflowId"]));
        assert_eq!(job["additionalProperties"], false);
        for free in ["inputs", "params", "metadata"] {
            assert_eq!(props[free]["anyOf"][0]["type"], "object", "{free}: {job}");
            assert_eq!(props[free]["anyOf"][0]["additionalProperties"], true, "{free}");
            assert_eq!(props[free]["anyOf"][1]["type"], "null", "{free}");
            assert!(props[free]["description"].is_string(), "{free}");
            // openapi-python-client refuses a default on an object-or-null union.
            assert!(props[free].get("default").is_none(), "{free}");
        }
        // The events inline, where the docs page and generators show their values.
        assert_eq!(props["callbackEvents"]["items"]["enum"][1], "job.progress");
        assert_eq!(props["cache"]["type"], json!(["boolean", "null"]));
        assert_eq!(props["cache"]["default"], true);
        let text = job.to_string();
        assert!(!text.contains(r#"["object","null"]"#), "{text}");
        assert!(text.contains("job.progress") && text.contains(r#""maximum":100"#), "{text}");
        let update = serde_json::to_value(schemars::schema_for!(WorkflowUpdate)).unwrap();
        assert_eq!(update["required"], json!(["workflow"]));
        let plugin = &update["properties"]["plugin"];
        assert!(plugin.to_string().contains("PluginBody") && plugin.to_string().contains("null"), "{plugin}");
        assert!(!update.to_string().contains(r#"["object","null"]"#), "{update}");
        let definition = serde_json::to_value(schemars::schema_for!(WorkflowDefinition)).unwrap();
        assert_eq!(definition["required"], json!(["id", "workflow"]));
        assert_eq!(
            definition["properties"]["workflow"]["additionalProperties"]["required"],
            json!(["class_type", "inputs"])
        );
        let import = serde_json::to_value(schemars::schema_for!(WorkflowImport)).unwrap();
        assert_eq!(import["required"], json!(["workflow"]));
        for schema in [&job, &update, &definition, &import] {
            assert!(!schema.to_string().contains(r#""default":null"#), "{schema}");
        }
    }
}
