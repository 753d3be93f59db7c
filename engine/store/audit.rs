//! The audit log: who changed a workflow or canceled a job, when, under which request.
//! Append-only, keyed by a sequence number from `meta["audit_seq"]` (starting at 1).

use redb::ReadTransaction;

use super::StoreError;
use super::codec;
use super::tables::{AUDIT, WriteTables, meta_key};
use super::writer::WriteOp;
use crate::domain::AuditEntry;

/// `Store::append_audit`.
pub(crate) struct AppendAudit {
    pub entry: AuditEntry,
}

impl WriteOp for AppendAudit {
    type Out = u64;
    type Plan = (u64, Vec<u8>);

    fn check(&self, t: &WriteTables<'_>) -> Result<Self::Plan, StoreError> {
        let seq = t
            .meta_get(meta_key::AUDIT_SEQ)?
            .checked_add(1)
            .ok_or_else(|| StoreError::Invalid("audit sequence exhausted".to_string()))?;
        Ok((seq, codec::encode("audit", &seq, &self.entry)?))
    }

    fn write(&self, (seq, bytes): Self::Plan, t: &mut WriteTables<'_>) -> Result<u64, StoreError> {
        t.meta.w()?.insert(meta_key::AUDIT_SEQ, seq)?;
        if t.audit.w()?.insert(seq, bytes.as_slice())?.is_some() {
            return Err(StoreError::Corrupt {
                table: "audit",
                key: seq.to_string(),
                reason: "audit sequence number reused".to_string(),
            });
        }
        Ok(seq)
    }
}

/// Up to `limit` entries, newest first, with seq below `before` (all when None).
pub(crate) fn page(
    txn: &ReadTransaction,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
    let table = txn.open_table(AUDIT)?;
    let range = match before {
        Some(seq) => table.range(..seq)?,
        None => table.range::<u64>(..)?,
    };
    let mut out = Vec::new();
    for entry in range.rev().take(limit) {
        let (k, v) = entry?;
        let seq = k.value();
        out.push((seq, codec::decode("audit", &seq, v.value())?));
    }
    Ok(out)
}
