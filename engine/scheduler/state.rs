//! The job state machine: a pure function from (job, event) to the next job and the
//! log entries to append. No IO, no clock (time is an argument), so every transition is
//! testable in isolation and the driver only does the IO around it.
//!
//! ```text
//! queued ──dispatch──▶ running ──succeed──▶ succeeded
//!   │ └──────────────cache hit─────────────▶ succeeded
//!   ▲  │                │ │ └──fail──────▶ failed
//!   │  └─cancel/fail─┐  │ └────cancel────▶ canceled
//!   └─requeue/move───┼──┘  (resubmit: running ▶ running, attempt + 1)
//!                    ▼
//!             failed | canceled
//! ```

use crate::domain::{Job, JobError, JobEventKind, JobState, OutputRef};

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Hand the job to a backend (committed before the POST /prompt).
    Dispatch {
        /// Backend id.
        backend: String,
        /// WebSocket clientId the prompt will be submitted under.
        client_id: String,
    },
    /// The backend certainly never received it: back to the queue, attempt not counted.
    Requeue {
        /// Why.
        reason: String,
    },
    /// Its backend is dead: back to the queue for another backend, the attempt counted
    /// (the prompt may have run there).
    Move {
        /// Why.
        reason: String,
    },
    /// The backend lost it: submit again with the same prompt_id, counted as an attempt.
    Resubmit {
        /// WebSocket clientId of the new submission.
        client_id: String,
        /// Why.
        reason: String,
    },
    /// Found on the backend during reconciliation.
    Reattach {
        /// What was found.
        found: String,
    },
    /// A new job answered from the result cache: succeeded at once with the outputs of
    /// the cached result (their blobs shared, not copied), never dispatched.
    CacheHit {
        /// The cached outputs.
        outputs: Vec<OutputRef>,
    },
    /// Finished with stored outputs.
    Succeed {
        /// The outputs.
        outputs: Vec<OutputRef>,
    },
    /// Finished with an error.
    Fail {
        /// Why.
        error: JobError,
    },
    /// Canceled.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// A transition that is not allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("job in state {from:?} cannot take {event}")]
pub struct TransitionError {
    /// The state the job was in.
    pub from: JobState,
    /// The event's name.
    pub event: &'static str,
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Dispatch { .. } => "dispatch",
            Event::Requeue { .. } => "requeue",
            Event::Move { .. } => "move",
            Event::Resubmit { .. } => "resubmit",
            Event::Reattach { .. } => "reattach",
            Event::CacheHit { .. } => "cache hit",
            Event::Succeed { .. } => "succeed",
            Event::Fail { .. } => "fail",
            Event::Cancel { .. } => "cancel",
        }
    }
}

/// Apply `event` to `job` at time `now_ms`: the next job and the log entries to append.
pub fn apply(job: &Job, event: Event, now_ms: u64) -> Result<(Job, Vec<JobEventKind>), TransitionError> {
    use JobState::*;
    let refuse = |event: &Event| TransitionError { from: job.state, event: event.name() };
    let mut next = job.clone();
    next.updated_ms = now_ms;
    let log = match (job.state, event) {
        (Queued, Event::Dispatch { backend, client_id }) => {
            next.state = Running;
            next.n_attempts += 1;
            next.backend = Some(backend.clone());
            next.client_id = Some(client_id);
            next.started_ms.get_or_insert(now_ms);
            vec![JobEventKind::Dispatched { backend, attempt: next.n_attempts }]
        }
        (Running, Event::Requeue { reason }) => {
            next.state = Queued;
            next.n_attempts = next.n_attempts.saturating_sub(1);
            next.backend = None;
            next.client_id = None;
            vec![JobEventKind::Requeued { reason }]
        }
        (Running, Event::Move { reason }) => {
            next.state = Queued;
            next.backend = None;
            next.client_id = None;
            vec![JobEventKind::Requeued { reason }]
        }
        (Running, Event::Resubmit { client_id, reason }) => {
            next.n_attempts += 1;
            next.client_id = Some(client_id);
            let backend = next.backend.clone().unwrap_or_default();
            vec![JobEventKind::Requeued { reason }, JobEventKind::Dispatched { backend, attempt: next.n_attempts }]
        }
        (Running, Event::Reattach { found }) => vec![JobEventKind::Reattached { found }],
        (Queued, Event::CacheHit { outputs }) if job.started_ms.is_none() => {
            next.state = Succeeded;
            next.cached = true;
            next.started_ms = Some(now_ms);
            next.finished_ms = Some(now_ms);
            let n_outputs = outputs.len() as u32;
            next.outputs = outputs;
            vec![JobEventKind::Succeeded { n_outputs }]
        }
        (Running, Event::Succeed { outputs }) => {
            next.state = Succeeded;
            next.finished_ms = Some(now_ms);
            let n_outputs = outputs.len() as u32;
            next.outputs = outputs;
            vec![JobEventKind::Succeeded { n_outputs }]
        }
        (Queued | Running, Event::Fail { error }) => {
            next.state = Failed;
            next.finished_ms = Some(now_ms);
            let log = JobEventKind::Failed { code: error.code, message: error.message.clone() };
            next.error = Some(error);
            vec![log]
        }
        (Queued | Running, Event::Cancel { reason }) => {
            next.state = Canceled;
            next.finished_ms = Some(now_ms);
            vec![JobEventKind::Canceled { reason }]
        }
        (_, event) => return Err(refuse(&event)),
    };
    Ok((next, log))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn job() -> Job {
        let mut job = Job::new_queued(uuid::Uuid::nil(), ("w", 1), "{}".into(), "{}".into(), 0, 0, 1);
        job.queue_key.seq = 1;
        job
    }

    fn dispatch() -> Event {
        Event::Dispatch { backend: "b".into(), client_id: "c".into() }
    }

    #[test]
    fn happy_path() {
        let (j, log) = apply(&job(), dispatch(), 10).unwrap();
        assert_eq!((j.state, j.n_attempts, j.started_ms), (JobState::Running, 1, Some(10)));
        assert_eq!(log, vec![JobEventKind::Dispatched { backend: "b".into(), attempt: 1 }]);
        let (j, _) = apply(&j, Event::Succeed { outputs: vec![] }, 20).unwrap();
        assert_eq!((j.state, j.finished_ms), (JobState::Succeeded, Some(20)));
    }

    #[test]
    fn requeue_does_not_count_an_attempt_but_resubmit_does() {
        let (j, _) = apply(&job(), dispatch(), 10).unwrap();
        let (j, _) = apply(&j, Event::Requeue { reason: "refused".into() }, 11).unwrap();
        assert_eq!((j.state, j.n_attempts, j.backend.as_deref()), (JobState::Queued, 0, None));
        assert_eq!(j.started_ms, Some(10), "first start time is kept");
        let (j, _) = apply(&j, dispatch(), 12).unwrap();
        let (j, _) = apply(&j, Event::Resubmit { client_id: "d".into(), reason: "lost".into() }, 13).unwrap();
        assert_eq!((j.state, j.n_attempts, j.client_id.as_deref()), (JobState::Running, 2, Some("d")));
    }

    #[test]
    fn move_goes_back_to_the_queue_and_counts_the_attempt() {
        let (j, _) = apply(&job(), dispatch(), 10).unwrap();
        let (j, log) = apply(&j, Event::Move { reason: "backend b dead".into() }, 11).unwrap();
        assert_eq!(
            (j.state, j.n_attempts, j.backend.as_deref(), j.client_id.as_deref()),
            (JobState::Queued, 1, None, None)
        );
        assert_eq!(log, vec![JobEventKind::Requeued { reason: "backend b dead".into() }]);
        let (j, _) = apply(&j, dispatch(), 12).unwrap();
        assert_eq!((j.state, j.n_attempts), (JobState::Running, 2), "the next dispatch is the second attempt");
        assert!(apply(&job(), Event::Move { reason: "r".into() }, 1).is_err(), "only a running job moves");
    }

    #[test]
    fn terminal_states_take_nothing() {
        let (running, _) = apply(&job(), dispatch(), 1).unwrap();
        let ends = [
            Event::Succeed { outputs: vec![] },
            Event::Fail { error: JobError { code: ErrorCode::ComfyuiOom, message: "m".into(), details_json: None } },
            Event::Cancel { reason: "r".into() },
        ];
        for end in ends {
            let (done, _) = apply(&running, end, 2).unwrap();
            assert!(done.state.is_terminal());
            for e in [dispatch(), Event::Cancel { reason: "x".into() }, Event::Requeue { reason: "x".into() }] {
                let err = apply(&done, e, 3).unwrap_err();
                assert_eq!(err.from, done.state);
            }
        }
    }

    fn output() -> OutputRef {
        OutputRef {
            name: "1.png".into(),
            node_id: "9".into(),
            media_type: "image/png".into(),
            size_bytes: 3,
            hash: [7; 32],
        }
    }

    #[test]
    fn a_cache_hit_succeeds_a_new_job_at_once_with_the_cached_outputs() {
        let (j, log) = apply(&job(), Event::CacheHit { outputs: vec![output()] }, 10).unwrap();
        assert_eq!((j.state, j.cached, j.n_attempts), (JobState::Succeeded, true, 0));
        assert_eq!((j.started_ms, j.finished_ms, j.updated_ms), (Some(10), Some(10), 10));
        assert_eq!((j.outputs.as_slice(), j.backend.as_deref()), ([output()].as_slice(), None));
        assert_eq!(log, vec![JobEventKind::Succeeded { n_outputs: 1 }]);
        // Only a new job: not one that ran, was requeued, or is running or done.
        let (running, _) = apply(&job(), dispatch(), 1).unwrap();
        let (requeued, _) = apply(&running, Event::Move { reason: "dead".into() }, 2).unwrap();
        for j in [running, requeued, j] {
            let err = apply(&j, Event::CacheHit { outputs: vec![output()] }, 3).unwrap_err();
            assert_eq!((err.from, err.event), (j.state, "cache hit"));
        }
    }

    #[test]
    fn queued_cannot_succeed_or_resubmit() {
        assert!(apply(&job(), Event::Succeed { outputs: vec![] }, 1).is_err());
        assert!(apply(&job(), Event::Resubmit { client_id: "c".into(), reason: "r".into() }, 1).is_err());
        assert!(apply(&job(), Event::Requeue { reason: "r".into() }, 1).is_err());
        let (j, _) = apply(&job(), Event::Cancel { reason: "user".into() }, 1).unwrap();
        assert_eq!(j.state, JobState::Canceled);
    }
}
