//! The record decoders as the store runs them, for the fuzz target `records` (`fuzz/`) and
//! its seed corpus. Not part of the gateway's interface.
//!
//! [`decode`] reads bytes as a record of one table exactly as a read of that table does
//! (versioned records upgraded, checks after decoding included) and, when they decode,
//! answers the record's encoding as the store would write it; [`samples`] builds realistic
//! records of every kind, jobs at every format version.

use super::codec::{self, FORMAT_VERSION, JOBS_VERSION, WORKFLOWS_VERSION};
use super::{StoreError, blobs, outbox};
use crate::domain::{
    AuditAction, AuditEntry, CacheEntry, Delivery, DeliveryState, IdempotencyRecord, InputRef, Job, JobError, JobEvent,
    JobEventKind, JobState, OutputRef, PluginRef, QueueKey, Role, WebhookEvent, WorkflowRecord,
};
use crate::error::ErrorCode;

/// The kinds of stored records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `jobs` (format versions 1 to [`JOBS_VERSION`]).
    Job,
    /// `job_events`.
    JobEvent,
    /// `workflows` and `workflow_versions` (versions 1 to [`WORKFLOWS_VERSION`]).
    Workflow,
    /// `blobs` (with the chunk-count check of a read).
    Blob,
    /// `cache` (result-cache entries).
    Cache,
    /// `idempotency`.
    Idempotency,
    /// `deliveries` (the job snapshot inside is a versioned job record).
    Delivery,
    /// `audit`.
    Audit,
}

impl Record {
    /// Every kind, in a stable order (a fuzz input's first byte picks one).
    pub const ALL: [Record; 8] = [
        Record::Job,
        Record::JobEvent,
        Record::Workflow,
        Record::Blob,
        Record::Cache,
        Record::Idempotency,
        Record::Delivery,
        Record::Audit,
    ];

    /// A short name (seed file names).
    pub fn name(self) -> &'static str {
        match self {
            Record::Job => "job",
            Record::JobEvent => "job_event",
            Record::Workflow => "workflow",
            Record::Blob => "blob",
            Record::Cache => "cache",
            Record::Idempotency => "idempotency",
            Record::Delivery => "delivery",
            Record::Audit => "audit",
        }
    }
}

/// Decode `bytes` as a record of `kind` the way the store reads it; on success, the
/// record encoded again the way the store writes it.
///
/// # Errors
/// The store's error for an unreadable record (`Corrupt`, naming table and key).
pub fn decode(kind: Record, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let key = &"fuzz";
    match kind {
        Record::Job => {
            let job: Job = super::jobs::decode_job("jobs", key, bytes)?;
            // Recovery's head decoder reads the same leading fields from the same bytes.
            let (head, state) =
                super::jobs::head_of(bytes, &"fuzz").expect("a record that decodes has a decodable head");
            let expected = (job.id, job.workflow_id.as_str(), job.priority, job.queue_key, job.state);
            assert_eq!((head.id, head.workflow_id.as_str(), head.priority, head.queue_key, state), expected);
            codec::encode_at(JOBS_VERSION, "jobs", key, &job)
        }
        Record::JobEvent => {
            let event: JobEvent = codec::decode("job_events", key, bytes)?;
            codec::encode("job_events", key, &event)
        }
        Record::Workflow => {
            let rec: WorkflowRecord = codec::decode_upgraded(WORKFLOWS_VERSION, "workflows", key, bytes)?;
            codec::encode_at(WORKFLOWS_VERSION, "workflows", key, &rec)
        }
        Record::Blob => {
            let rec = blobs::decode_record(&[0; 32], bytes)?;
            codec::encode_at(codec::BLOBS_VERSION, "blobs", key, &rec)
        }
        Record::Cache => {
            let entry: CacheEntry = codec::decode("cache", key, bytes)?;
            codec::encode("cache", key, &entry)
        }
        Record::Idempotency => {
            let rec: IdempotencyRecord = codec::decode("idempotency", key, bytes)?;
            codec::encode("idempotency", key, &rec)
        }
        Record::Delivery => outbox::encode(&outbox::decode(7, bytes)?),
        Record::Audit => {
            let entry: AuditEntry = codec::decode("audit", key, bytes)?;
            codec::encode("audit", key, &entry)
        }
    }
}

fn id(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

fn output(n: u8) -> OutputRef {
    OutputRef {
        node_id: "9".to_string(),
        name: format!("gw_{n:05}_.png"),
        media_type: "image/png".to_string(),
        size_bytes: 1234,
        hash: [n; 32],
    }
}

fn succeeded_job() -> Job {
    let mut job = Job::new_queued(
        id(1),
        ("sdxl_realism_v1", 2),
        r#"{"prompt":"a red fox","seed":42,"steps":30}"#.to_string(),
        r#"{"3":{"class_type":"KSampler","inputs":{"seed":42,"model":["4",0]}}}"#.to_string(),
        1,
        -299_000,
        1_700_000_000_000,
    );
    job.queue_key = QueueKey { rank_ms: -299_000, seq: 17 };
    job.state = JobState::Succeeded;
    job.n_attempts = 1;
    job.backend = Some("http://127.0.0.1:8188".to_string());
    job.client_id = Some("f2d228c4fd3641118583298e22fdc3d2".to_string());
    job.outputs = vec![output(3), output(4)];
    job.seed = Some(42);
    job.metadata_json = Some(r#"{"requestId":"r-1"}"#.to_string());
    job.callback_url = Some("https://hooks.example.com/done".to_string());
    job.started_ms = Some(1_700_000_000_100);
    job.finished_ms = Some(1_700_000_004_000);
    job.updated_ms = 1_700_000_004_000;
    job.inputs = vec![InputRef {
        name: "image".to_string(),
        file_name: "image.png".to_string(),
        media_type: "image/png".to_string(),
        size_bytes: 99,
        hash: [5; 32],
    }];
    job.owner = Some("key:0123456789abcdef".to_string());
    job.webhook_events = 3;
    job.cache_key = Some([6; 32]);
    job
}

fn failed_job() -> Job {
    let mut job = Job::new_queued(id(2), ("icon_512", 0), "{}".to_string(), "{}".to_string(), -1, 0, 1_700_000_000_000);
    job.state = JobState::Failed;
    job.n_attempts = 3;
    job.error = Some(JobError {
        code: ErrorCode::ComfyuiNodeError,
        message: "KSampler: CUDA out of memory".to_string(),
        details_json: Some(r#"{"node_id":"3"}"#.to_string()),
    });
    job.finished_ms = Some(1_700_000_009_000);
    job
}

/// Realistic records of every kind, as the store writes them; jobs also at every older
/// format version (a queued job, whose appended fields are all zero values).
///
/// # Panics
/// Never for these values (the encoder fails only on a serializer error).
pub fn samples() -> Vec<(Record, Vec<u8>)> {
    let key = &"seed";
    let enc = |r: Result<Vec<u8>, StoreError>| r.expect("sample records encode");
    let mut out = Vec::new();
    let queued = Job::new_queued(id(3), ("sprite_transparent_bg", 1), "{}".to_string(), "{}".to_string(), 0, 5, 6);
    let latest = enc(codec::encode_at(JOBS_VERSION, "jobs", key, &queued));
    // A version-v record is the latest one without the trailing zero bytes of the fields
    // appended after v (store::codec; v6 appended none).
    for v in FORMAT_VERSION..JOBS_VERSION {
        let mut old = latest[..latest.len() - usize::from(codec::JOBS_FIELDS_VERSION.saturating_sub(v))].to_vec();
        old[0] = v;
        out.push((Record::Job, old));
    }
    out.push((Record::Job, latest));
    for job in [succeeded_job(), failed_job()] {
        out.push((Record::Job, enc(codec::encode_at(JOBS_VERSION, "jobs", key, &job))));
    }
    let events = [
        JobEventKind::Queued,
        JobEventKind::Dispatched { backend: "http://127.0.0.1:8188".to_string(), attempt: 1 },
        JobEventKind::Requeued { reason: "backend refused the connection".to_string() },
        JobEventKind::Progress { node: "3".to_string(), value: 12.0, max: 30.0 },
        JobEventKind::Reattached { found: "history".to_string() },
        JobEventKind::Succeeded { n_outputs: 2 },
        JobEventKind::Failed { code: ErrorCode::ComfyuiNodeError, message: "boom".to_string() },
        JobEventKind::Canceled { reason: "canceled by the client".to_string() },
        JobEventKind::Milestone { node: "3".to_string(), percent: 50 },
        JobEventKind::Webhook {
            delivery: "msg_1".to_string(),
            event: "job.succeeded".to_string(),
            attempt: 2,
            status: Some(503),
            error: None,
            outcome: "retry".to_string(),
            next_attempt_ms: Some(1_700_000_010_000),
        },
    ];
    for (i, kind) in events.into_iter().enumerate() {
        let event = JobEvent { at_ms: 1_700_000_000_000 + i as u64, kind };
        out.push((Record::JobEvent, enc(codec::encode("job_events", key, &event))));
    }
    let workflow = WorkflowRecord {
        id: "icon_512".to_string(),
        version: 3,
        name: "Icon 512".to_string(),
        description: "Square icon".to_string(),
        template_json: r#"{"1":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"{{model}}"}}}"#
            .to_string(),
        schema_json: Some(r#"{"type":"object","properties":{"model":{"type":"string"}}}"#.to_string()),
        defaults_json: Some(r#"{"model":"sd_xl_base_1.0.safetensors"}"#.to_string()),
        created_ms: 1_700_000_000_000,
        keep_previews: true,
        plugin: Some(PluginRef { hash: [8; 32], config_json: "{}".to_string(), keep_originals: false }),
    };
    let bare = WorkflowRecord { keep_previews: false, plugin: None, ..workflow.clone() };
    let latest = enc(codec::encode_at(WORKFLOWS_VERSION, "workflows", key, &bare));
    for v in FORMAT_VERSION..WORKFLOWS_VERSION {
        let mut old = latest[..latest.len() - usize::from(WORKFLOWS_VERSION - v)].to_vec();
        old[0] = v;
        out.push((Record::Workflow, old));
    }
    out.push((Record::Workflow, enc(codec::encode_at(WORKFLOWS_VERSION, "workflows", key, &workflow))));
    // Positional like `blobs::BlobRecord`: size, stored, media type, compressed, chunks, refs.
    let blob = (900_000u64, 600_000u64, "image/png", true, 3u32, 2u64);
    out.push((Record::Blob, enc(codec::encode("blobs", key, &blob))));
    let entry = CacheEntry { job_id: id(1), outputs: vec![output(3)], created_ms: 1_700_000_004_000 };
    out.push((Record::Cache, enc(codec::encode("cache", key, &entry))));
    let idem = IdempotencyRecord {
        body_hash: [9; 32],
        job_id: id(1),
        status: 202,
        created_ms: 1_700_000_000_000,
        expires_ms: 1_700_086_400_000,
    };
    out.push((Record::Idempotency, enc(codec::encode("idempotency", key, &idem))));
    let delivery = Delivery {
        seq: 7,
        id: "msg_2c5b".to_string(),
        job_id: id(1),
        event: WebhookEvent::Progress { node: "3".to_string(), percent: 50 },
        url: "https://hooks.example.com/done".to_string(),
        job: succeeded_job(),
        created_ms: 1_700_000_004_000,
        state: DeliveryState::Pending,
        n_attempts: 1,
        next_attempt_ms: 1_700_000_005_000,
        last_attempt_ms: Some(1_700_000_004_500),
        last_status: Some(500),
        last_error: Some("HTTP 500".to_string()),
    };
    out.push((Record::Delivery, enc(outbox::encode(&delivery))));
    let audit = AuditEntry {
        at_ms: 1_700_000_000_000,
        actor: Some("key:0123456789abcdef".to_string()),
        role: Some(Role::Admin),
        action: AuditAction::WorkflowUpdate,
        target: "icon_512".to_string(),
        correlation_id: "c0ffee".to_string(),
    };
    out.push((Record::Audit, enc(codec::encode("audit", key, &audit))));
    // Blob records at v2 (appended `remote`): kept in redb, and in the bucket (no chunks).
    let local = (900_000u64, 600_000u64, "image/png", true, 3u32, 2u64, false);
    out.push((Record::Blob, enc(codec::encode_at(codec::BLOBS_VERSION, "blobs", key, &local))));
    let remote = (900_000u64, 900_000u64, "image/png", false, 0u32, 1u64, true);
    out.push((Record::Blob, enc(codec::encode_at(codec::BLOBS_VERSION, "blobs", key, &remote))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_decodes_and_reencodes_stably() {
        let samples = samples();
        for kind in Record::ALL {
            assert!(samples.iter().any(|(k, _)| *k == kind), "no sample of {kind:?}");
        }
        for (kind, bytes) in samples {
            let again = decode(kind, &bytes).unwrap_or_else(|e| panic!("{kind:?} {bytes:?}: {e}"));
            assert_eq!(decode(kind, &again).unwrap(), again, "{kind:?}");
            // Records at the latest version are written back byte for byte.
            let latest = match kind {
                Record::Job => JOBS_VERSION,
                Record::Workflow => WORKFLOWS_VERSION,
                Record::Blob => codec::BLOBS_VERSION,
                _ => FORMAT_VERSION,
            };
            if bytes[0] == latest {
                assert_eq!(again, bytes, "{kind:?}");
            }
        }
    }

    #[test]
    fn truncated_and_mutated_records_are_errors_or_records() {
        for (kind, bytes) in samples() {
            for len in 0..bytes.len() {
                if let Ok(again) = decode(kind, &bytes[..len]) {
                    assert_eq!(decode(kind, &again).unwrap(), again, "{kind:?} truncated at {len}");
                }
            }
            for i in 0..bytes.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut mutated = bytes.clone();
                    mutated[i] ^= flip;
                    if let Ok(again) = decode(kind, &mutated) {
                        assert_eq!(decode(kind, &again).unwrap(), again, "{kind:?} byte {i} ^ {flip:#x}");
                    }
                }
            }
        }
    }

    /// The seed corpus of the fuzz target `records` (first byte: the kind's index in
    /// [`Record::ALL`]): file name and contents.
    fn seeds() -> Vec<(String, Vec<u8>)> {
        samples()
            .into_iter()
            .enumerate()
            .map(|(i, (kind, bytes))| {
                let index = Record::ALL.iter().position(|k| *k == kind).unwrap() as u8;
                let mut input = vec![index];
                input.extend_from_slice(&bytes);
                (format!("{i:02}-{}-v{}", kind.name(), bytes[0]), input)
            })
            .collect()
    }

    const SEED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/records");

    /// The committed seeds are what today's encoder writes. When they are not (a record
    /// format change), the fresh seeds are written outside the source tree and the failure
    /// says how to copy them over.
    #[test]
    fn the_fuzz_seeds_match_the_encoder() {
        let seeds = seeds();
        let stale: Vec<&String> = seeds
            .iter()
            .filter(|(name, bytes)| {
                std::fs::read(std::path::Path::new(SEED_DIR).join(name)).ok().as_ref() != Some(bytes)
            })
            .map(|(name, _)| name)
            .collect();
        if stale.is_empty() {
            return;
        }
        let fresh = tempfile::Builder::new().prefix("records-seeds-").tempdir().unwrap().keep();
        for (name, bytes) in &seeds {
            std::fs::write(fresh.join(name), bytes).unwrap();
        }
        panic!("stale or missing seeds {stale:?}; refresh them: cp {}/* {SEED_DIR}/", fresh.display());
    }
}
