//! Plugin components, content-addressed (BLAKE3 of the wasm bytes), kept forever like the
//! workflow versions that name them, and their precompiled artifacts keyed by the wasm
//! hash and the plugin engine's compatibility hash (an engine of another wasmtime version
//! or configuration compiles again and stores its own artifact).

use redb::{ReadTransaction, ReadableTable};

use super::StoreError;
use super::tables::{PLUGIN_ARTIFACTS, PLUGINS, WriteTables};
use super::writer::WriteOp;
use crate::domain::{Hash, hash_hex};

/// `Store::put_plugin`: the component (if new) and an artifact.
pub(crate) struct PutPlugin {
    pub hash: Hash,
    pub wasm: Vec<u8>,
    pub compat: Hash,
    pub precompiled: Vec<u8>,
}

impl WriteOp for PutPlugin {
    type Out = ();
    type Plan = bool;

    fn check(&self, t: &WriteTables<'_>) -> Result<bool, StoreError> {
        if !self.wasm.is_empty() && blake3::hash(&self.wasm).as_bytes() != &self.hash {
            return Err(StoreError::Invalid(format!("plugin bytes do not hash to {}", hash_hex(&self.hash))));
        }
        let stored = t.plugins.r()?.get(self.hash)?.is_some();
        if !stored && self.wasm.is_empty() {
            return Err(StoreError::Invalid(format!(
                "an artifact for plugin {} which is not stored",
                hash_hex(&self.hash)
            )));
        }
        Ok(stored)
    }

    fn write(&self, stored: bool, t: &mut WriteTables<'_>) -> Result<(), StoreError> {
        if !stored {
            t.plugins.w()?.insert(self.hash, self.wasm.as_slice())?;
        }
        t.plugin_artifacts.w()?.insert((self.hash, self.compat), self.precompiled.as_slice())?;
        Ok(())
    }

    fn payload_bytes(&self) -> usize {
        self.wasm.len() + self.precompiled.len()
    }
}

/// A component's bytes.
pub(crate) fn wasm(txn: &ReadTransaction, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(txn.open_table(PLUGINS)?.get(hash)?.map(|g| g.value().to_vec()))
}

/// A precompiled artifact.
pub(crate) fn artifact(txn: &ReadTransaction, hash: &Hash, compat: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(txn.open_table(PLUGIN_ARTIFACTS)?.get((*hash, *compat))?.map(|g| g.value().to_vec()))
}

/// Whether a component is stored (checked in a write).
pub(crate) fn stored(t: &WriteTables<'_>, hash: &Hash) -> Result<bool, StoreError> {
    Ok(t.plugins.r()?.get(hash)?.is_some())
}
