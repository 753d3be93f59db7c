//! The plugin host of a build without the WebAssembly runtime (cargo feature
//! `wasm-plugins` off): the API of the runtime's host, every operation failing with
//! [`Failure::unavailable`]. A [`Plugin`] cannot exist here, so a hook call is unreachable
//! by construction; registering a workflow with a plugin, `plugin check|run`, a job of a
//! stored workflow that names a plugin all end in that failure (`PLUGIN_FAILED`, 422, or
//! the CLI's error exit), never a panic.

use std::convert::Infallible;

use serde_json::Value;

use super::{CallContext, Failure, Hook, Limits, Media, Report};
use crate::domain::Hash;
use crate::error::Error;

/// A compiled plugin: none can be made in this build.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// BLAKE3 of the wasm bytes.
    pub hash: Hash,
    /// The hooks it exports.
    pub hooks: Vec<Hook>,
    /// Its imports, by name.
    pub imports: Vec<String>,
    never: Infallible,
}

/// The plugin host without a runtime. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Host {
    limits: Limits,
}

impl Host {
    /// A host that refuses every plugin (it never fails to start, so the gateway runs).
    pub fn new(limits: Limits) -> Result<Host, Error> {
        Ok(Host { limits })
    }

    /// The limits of every call.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the pooling allocator is in use: never.
    pub fn pooling(&self) -> bool {
        false
    }

    /// No engine, no compatibility hash: all zeros (no stored artifact is keyed by it).
    pub fn compat_hash(&self) -> Hash {
        [0; 32]
    }

    /// Fails: [`Failure::unavailable`].
    pub fn compile(&self, _wasm: &[u8]) -> Result<(Plugin, Vec<u8>), Failure> {
        Err(Failure::unavailable())
    }

    /// Fails: [`Failure::unavailable`].
    pub fn load_precompiled(&self, _hash: Hash, _precompiled: &[u8]) -> Result<Plugin, Failure> {
        Err(Failure::unavailable())
    }

    /// Fails: [`Failure::unavailable`] (nothing is stored).
    pub async fn install(&self, _store: &crate::store::Store, _wasm: Vec<u8>) -> Result<Plugin, Failure> {
        Err(Failure::unavailable())
    }

    /// Fails: [`Failure::unavailable`], also for a plugin the database holds.
    pub async fn load(&self, _store: &crate::store::Store, _hash: &Hash) -> Result<Plugin, Failure> {
        Err(Failure::unavailable())
    }

    /// Nothing compiled, nothing loaded.
    pub fn load_counts(&self) -> (u64, u64) {
        (0, 0)
    }

    /// No plugin is ever loaded.
    pub fn loaded(&self, _hash: &Hash) -> Option<Plugin> {
        None
    }

    /// Unreachable: no [`Plugin`] exists in this build.
    pub async fn input_transform(
        &self,
        plugin: &Plugin,
        _ctx: &CallContext,
        _inputs: &Value,
    ) -> (Result<Value, Failure>, Report) {
        match plugin.never {}
    }

    /// Unreachable: no [`Plugin`] exists in this build.
    pub async fn template_render(
        &self,
        plugin: &Plugin,
        _ctx: &CallContext,
        _template: &Value,
        _inputs: &Value,
    ) -> (Result<Value, Failure>, Report) {
        match plugin.never {}
    }

    /// Unreachable: no [`Plugin`] exists in this build.
    pub async fn output_process(
        &self,
        plugin: &Plugin,
        _ctx: &CallContext,
        _item: Media,
    ) -> (Result<Vec<Media>, Failure>, Report) {
        match plugin.never {}
    }
}

#[cfg(test)]
mod tests {
    //! Run by `cargo test --no-default-features --lib plugins` (CI).

    use serde_json::json;

    use super::*;
    use crate::domain::{PluginRef, WorkflowRecord};
    use crate::error::ErrorCode;
    use crate::service::{PluginChange, PluginSource, PluginSpec, Registry, WorkflowDefinition};
    use crate::store::Store;

    const NO_RUNTIME: &str = "this build has no WebAssembly plugin runtime (cargo feature `wasm-plugins`)";

    fn assert_unavailable(e: &Error) {
        assert_eq!((e.code, e.code.status()), (ErrorCode::PluginFailed, 422), "{e:?}");
        assert!(e.message.contains(NO_RUNTIME), "{}", e.message);
    }

    #[tokio::test]
    async fn every_host_operation_fails_as_unavailable() {
        const { assert!(!crate::plugins::AVAILABLE) };
        let host = Host::new(Limits::default()).expect("a host without a runtime always starts");
        assert!(!host.pooling());
        let f = host.compile(b"\0asm\x0d\0\x01\0").unwrap_err();
        assert_eq!(f.kind, crate::plugins::UNAVAILABLE);
        assert_unavailable(&f.unavailable_error().expect("the unavailable failure maps to an error"));
        // A hook's failure (the runner's output-process path) is PLUGIN_FAILED too.
        let e = f.to_error(Hook::OutputProcess);
        assert_eq!((e.code, e.code.status()), (ErrorCode::PluginFailed, 422));
        assert!(host.load_precompiled([1; 32], b"artifact").is_err());
        assert_eq!(host.load_counts(), (0, 0));
        // Any other failure is not mistaken for it.
        assert!(Failure::new("trap", "trapped").unavailable_error().is_none());
    }

    #[tokio::test]
    async fn a_plugin_workflow_is_refused_and_a_stored_one_fails_its_jobs_with_422() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("gateway.redb")).unwrap();
        let registry = Registry::new(store.clone(), Host::new(Limits::default()).unwrap());
        let template = json!({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}});
        let def = |id: &str, source: PluginSource| WorkflowDefinition {
            id: id.into(),
            name: None,
            description: None,
            template: template.clone(),
            input_schema: None,
            defaults: None,
            keep_previews: false,
            plugin: PluginChange::Set(PluginSpec { source, config: json!({}), keep_originals: false }),
        };

        // Registering: an upload and a stored hash are both refused; nothing is written.
        let e = registry
            .put_workflow(
                def("up", PluginSource::Wasm(b"\0asm\x0d\0\x01\0".to_vec())),
                false,
                &crate::service::Actor::cli(),
            )
            .await;
        assert_unavailable(&e.unwrap_err());
        let e = registry
            .put_workflow(def("by-hash", PluginSource::Stored([7; 32])), false, &crate::service::Actor::cli())
            .await;
        assert_unavailable(&e.unwrap_err());
        assert!(registry.workflows().unwrap().is_empty());

        // A database written by a build with plugins: the workflow is listed, its jobs are
        // refused at submit (`Gateway::submit` loads the plugin through the registry).
        let component = b"\0asm\x0d\0\x01\0 a component".to_vec();
        let hash = *blake3::hash(&component).as_bytes();
        store.put_plugin(hash, component, [1; 32], b"artifact".to_vec()).await.unwrap();
        let plugin = PluginRef { hash, config_json: "{}".into(), keep_originals: false };
        let rec = WorkflowRecord {
            id: "stored".into(),
            version: 0,
            name: "stored".into(),
            description: String::new(),
            template_json: template.to_string(),
            schema_json: None,
            defaults_json: None,
            created_ms: 1,
            keep_previews: false,
            plugin: Some(plugin.clone()),
        };
        store.put_workflow(rec).await.unwrap();
        let (rec, _schema) = registry.workflow("stored").unwrap();
        assert_eq!(rec.plugin.as_ref(), Some(&plugin));
        assert_unavailable(&registry.plugin(&plugin).await.unwrap_err());
        store.close().await;
    }
}
