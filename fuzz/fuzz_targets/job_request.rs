//! A `POST /jobs` body as the gateway takes it apart, then the submit's validation against
//! a bundled workflow: `api::handlers::parse_object` and `job_fields` (the handler's
//! checks), then `service::compile_record` of the bundled workflow and
//! `CompiledWorkflow::prepare` (defaults, seed, JSON Schema, limits, render). Never a
//! panic, and an accepted job's final inputs are accepted again as they are, giving the
//! same inputs and prompt (no seed drawn twice, integers stay integers).
//!
//! Input: the body bytes. A `workflowId` that is not bundled picks a bundled workflow by
//! its length, so every body reaches a schema.
#![no_main]

use std::sync::OnceLock;

use comfyui_gateway::api::handlers;
use comfyui_gateway::service;
use comfyui_gateway::workflows::{CompiledWorkflow, Limits, bundled};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use serde_json::Value;

/// The bundled workflows, compiled from their records as the service does.
fn workflows() -> &'static [(&'static str, CompiledWorkflow)] {
    static COMPILED: OnceLock<Vec<(&'static str, CompiledWorkflow)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        bundled::all()
            .into_iter()
            .map(|b| {
                let rec = b.record(0);
                (b.id, service::compile_record(&rec).expect("bundled workflows compile"))
            })
            .collect()
    })
}

// The defaults of MAX_IMAGE_SIZE and MAX_BATCH_SIZE.
const LIMITS: Limits = Limits { image_size_max: 2048, batch_size_max: 4 };

fuzz_target!(|data: &[u8]| {
    let Ok(body) = handlers::parse_object(data) else { return };
    let Ok(fields) = handlers::job_fields(body, None, &[]) else { return };
    let all = workflows();
    let compiled = match all.iter().find(|(id, _)| *id == fields.workflow_id) {
        Some((_, c)) => c,
        None => &all[fields.workflow_id.len() % all.len()].1,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(data.len() as u64);
    let Ok(prepared) = compiled.prepare(&Value::Object(fields.inputs), &LIMITS, &mut rng) else { return };
    assert!(prepared.prompt.is_object(), "a prompt is an object of nodes");
    let again = compiled
        .prepare(&Value::Object(prepared.inputs.clone()), &LIMITS, &mut rng)
        .unwrap_or_else(|e| panic!("the final inputs {:?} are refused: {e}", prepared.inputs));
    assert_eq!(again.seed, None, "a seed was drawn for inputs that have one");
    assert_eq!(again.inputs, prepared.inputs);
    assert_eq!(again.prompt, prepared.prompt);
});
