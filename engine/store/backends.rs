//! Backend drains: which backends an operator put in maintenance, so that a drain outlives
//! a restart of the gateway. A row exists exactly while its backend is drained.

use redb::{ReadTransaction, ReadableTable};

use super::StoreError;
use super::tables::{BACKEND_DRAINS, WriteTables};
use super::writer::WriteOp;

/// `Store::set_backend_drain`.
pub(crate) struct SetDrain {
    pub id: String,
    /// When drained (ms); None: resumed.
    pub since_ms: Option<u64>,
}

impl WriteOp for SetDrain {
    type Out = ();
    type Plan = ();

    fn check(&self, _t: &WriteTables<'_>) -> Result<(), StoreError> {
        if self.id.is_empty() {
            return Err(StoreError::Invalid("a backend drain needs a backend id".to_string()));
        }
        Ok(())
    }

    fn write(&self, (): (), t: &mut WriteTables<'_>) -> Result<(), StoreError> {
        match self.since_ms {
            // A backend drained twice keeps its first drain time.
            Some(ms) => {
                if t.backend_drains.r()?.get(self.id.as_str())?.is_none() {
                    t.backend_drains.w()?.insert(self.id.as_str(), ms)?;
                }
            }
            None => {
                t.backend_drains.w()?.remove(self.id.as_str())?;
            }
        }
        Ok(())
    }
}

/// Every drained backend id with the time of its drain, by id.
pub(crate) fn drained(txn: &ReadTransaction) -> Result<Vec<(String, u64)>, StoreError> {
    let table = txn.open_table(BACKEND_DRAINS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.push((k.value().to_string(), v.value()));
    }
    Ok(out)
}
