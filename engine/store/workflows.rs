//! Workflows: the current version by id, and every version ever stored by `(id, version)`.

use redb::{ReadTransaction, ReadableTable};

use super::StoreError;
use super::codec;
use super::tables::{WORKFLOW_VERSIONS, WORKFLOWS, WriteTables};
use super::writer::WriteOp;
use crate::domain::WorkflowRecord;

/// Longest accepted workflow id, in bytes.
const WORKFLOW_ID_BYTES_MAX: usize = 256;

/// `Store::put_workflow`.
pub(crate) struct PutWorkflow {
    pub rec: WorkflowRecord,
}

/// `Store::put_workflow_if_absent`.
pub(crate) struct PutWorkflowIfAbsent {
    pub rec: WorkflowRecord,
}

/// `Store::delete_workflow`.
pub(crate) struct DeleteWorkflow {
    pub id: String,
}

/// A checked workflow version: the record with its version, encoded.
pub(crate) struct WorkflowPlan {
    rec: WorkflowRecord,
    bytes: Vec<u8>,
}

fn plan_version(t: &WriteTables<'_>, rec: &WorkflowRecord, last: Option<u32>) -> Result<WorkflowPlan, StoreError> {
    if rec.id.is_empty() || rec.id.len() > WORKFLOW_ID_BYTES_MAX {
        return Err(StoreError::Invalid(format!("workflow id must be 1..={WORKFLOW_ID_BYTES_MAX} bytes")));
    }
    if let Some(p) = &rec.plugin
        && !super::plugins::stored(t, &p.hash)?
    {
        return Err(StoreError::Invalid(format!(
            "workflow {} names plugin {}, which is not stored",
            rec.id,
            crate::domain::hash_hex(&p.hash)
        )));
    }
    let version = last
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| StoreError::Invalid(format!("workflow {}: versions exhausted", rec.id)))?;
    let mut rec = rec.clone();
    rec.version = version;
    let bytes = codec::encode_at(codec::WORKFLOWS_VERSION, "workflows", &rec.id, &rec)?;
    Ok(WorkflowPlan { rec, bytes })
}

fn write_version(t: &mut WriteTables<'_>, plan: &WorkflowPlan) -> Result<(), StoreError> {
    let id = plan.rec.id.as_str();
    if t.workflow_versions.w()?.insert((id, plan.rec.version), plan.bytes.as_slice())?.is_some() {
        return Err(StoreError::Corrupt {
            table: "workflow_versions",
            key: format!("{id}@{}", plan.rec.version),
            reason: "version number reused".to_string(),
        });
    }
    t.workflows.w()?.insert(id, plan.bytes.as_slice())?;
    Ok(())
}

/// The highest version ever stored for `id`.
fn last_version(
    versions: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    id: &str,
) -> Result<Option<u32>, StoreError> {
    match versions.range((id, 0)..=(id, u32::MAX))?.next_back() {
        Some(entry) => Ok(Some(entry?.0.value().1)),
        None => Ok(None),
    }
}

impl WriteOp for PutWorkflow {
    type Out = WorkflowRecord;
    type Plan = WorkflowPlan;

    fn check(&self, t: &WriteTables<'_>) -> Result<WorkflowPlan, StoreError> {
        let last = last_version(t.workflow_versions.r()?, &self.rec.id)?;
        plan_version(t, &self.rec, last)
    }

    fn write(&self, plan: WorkflowPlan, t: &mut WriteTables<'_>) -> Result<WorkflowRecord, StoreError> {
        write_version(t, &plan)?;
        Ok(plan.rec)
    }
}

impl WriteOp for PutWorkflowIfAbsent {
    type Out = bool;
    type Plan = Option<WorkflowPlan>;

    fn check(&self, t: &WriteTables<'_>) -> Result<Self::Plan, StoreError> {
        match last_version(t.workflow_versions.r()?, &self.rec.id)? {
            Some(_) => Ok(None),
            None => plan_version(t, &self.rec, None).map(Some),
        }
    }

    fn write(&self, plan: Self::Plan, t: &mut WriteTables<'_>) -> Result<bool, StoreError> {
        match plan {
            Some(plan) => write_version(t, &plan).map(|()| true),
            None => Ok(false),
        }
    }
}

impl WriteOp for DeleteWorkflow {
    type Out = bool;
    type Plan = ();

    fn check(&self, _t: &WriteTables<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    fn write(&self, (): (), t: &mut WriteTables<'_>) -> Result<bool, StoreError> {
        Ok(t.workflows.w()?.remove(self.id.as_str())?.is_some())
    }
}

/// Decode a workflow record and check it is the one its key names.
fn decode_checked(
    table: &'static str,
    id: &str,
    version: Option<u32>,
    bytes: &[u8],
) -> Result<WorkflowRecord, StoreError> {
    let key = match version {
        Some(v) => format!("{id}@{v}"),
        None => id.to_string(),
    };
    let rec: WorkflowRecord = codec::decode_upgraded(codec::WORKFLOWS_VERSION, table, &key, bytes)?;
    if rec.id != id || version.is_some_and(|v| v != rec.version) {
        return Err(StoreError::Corrupt { table, key, reason: format!("record is {}@{}", rec.id, rec.version) });
    }
    Ok(rec)
}

/// The current version of `id`.
pub(crate) fn get(txn: &ReadTransaction, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
    let table = txn.open_table(WORKFLOWS)?;
    let Some(guard) = table.get(id)? else {
        return Ok(None);
    };
    decode_checked("workflows", id, None, guard.value()).map(Some)
}

/// One version of `id`, deleted or not.
pub(crate) fn get_version(txn: &ReadTransaction, id: &str, version: u32) -> Result<Option<WorkflowRecord>, StoreError> {
    let table = txn.open_table(WORKFLOW_VERSIONS)?;
    let Some(guard) = table.get((id, version))? else {
        return Ok(None);
    };
    decode_checked("workflow_versions", id, Some(version), guard.value()).map(Some)
}

/// Current versions of all workflows, by id.
pub(crate) fn list(txn: &ReadTransaction) -> Result<Vec<WorkflowRecord>, StoreError> {
    let table = txn.open_table(WORKFLOWS)?;
    let mut out = Vec::new();
    for entry in table.range::<&str>(..)? {
        let (k, v) = entry?;
        out.push(decode_checked("workflows", k.value(), None, v.value())?);
    }
    Ok(out)
}
