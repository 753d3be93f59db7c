//! Who follows jobs: the "job X has new events" notification and the run-duration
//! statistics behind `etaSeconds`. Memory only.
//!
//! The notification carries no event: it is published after a commit that appended to a
//! job's durable log (by the scheduler and its runners, never by the store), and a
//! follower re-reads the log from its last seq. So a lagging receiver loses nothing (a
//! `Lagged` error means "re-read everything you follow") and sees nothing twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::domain::{Job, JobId, JobState};

/// Notifications buffered per receiver before it lags (then it re-reads the log).
pub const FEED_CAPACITY: usize = 1024;
/// Succeeded runs per workflow kept for the duration median.
pub const DURATIONS_PER_WORKFLOW: usize = 50;
/// Most recent jobs read at start to seed the durations.
pub const DURATIONS_SEED_JOBS: usize = 500;

/// The notification channel and the run-duration statistics.
#[derive(Debug)]
pub struct Feed {
    tx: broadcast::Sender<JobId>,
    /// Run durations (finished − started) in ms of the last succeeded jobs per workflow,
    /// oldest first.
    durations_ms: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed { tx: broadcast::channel(FEED_CAPACITY).0, durations_ms: Mutex::default() }
    }
}

impl Feed {
    /// A receiver of every later notification.
    pub fn subscribe(&self) -> broadcast::Receiver<JobId> {
        self.tx.subscribe()
    }

    /// `job` has new durable events (call after the commit returned).
    pub fn publish(&self, job: JobId) {
        // No receiver is not an error: nobody follows this job.
        let _ = self.tx.send(job);
    }

    /// A committed job record: record its run duration if it just succeeded, and publish.
    pub fn committed(&self, job: &Job) {
        self.record(job);
        self.publish(job.id);
    }

    /// Record the run duration of a succeeded job.
    pub fn record(&self, job: &Job) {
        if job.state != JobState::Succeeded {
            return;
        }
        let (Some(started), Some(finished)) = (job.started_ms, job.finished_ms) else { return };
        let mut all = self.durations_ms.lock().unwrap_or_else(|p| p.into_inner());
        let runs = all.entry(job.workflow_id.clone()).or_default();
        if runs.len() >= DURATIONS_PER_WORKFLOW {
            runs.pop_front();
        }
        runs.push_back(finished.saturating_sub(started));
    }

    /// The median run duration of a workflow's last succeeded jobs, in ms.
    pub fn median_run_ms(&self, workflow_id: &str) -> Option<u64> {
        let all = self.durations_ms.lock().unwrap_or_else(|p| p.into_inner());
        let mut runs: Vec<u64> = all.get(workflow_id)?.iter().copied().collect();
        if runs.is_empty() {
            return None;
        }
        runs.sort_unstable();
        Some(runs[(runs.len() - 1) / 2])
    }
}

/// Estimated seconds until a job finishes, from its workflow's median run time `p50_ms`:
/// a running job needs what is left of it; a queued one at `position` waits for
/// `position / slots` waves ahead of it, plus half a run for the jobs occupying the
/// slots when all are busy, then runs.
pub fn eta_ms(job: &Job, position: Option<usize>, slots: usize, busy: bool, p50_ms: u64, now_ms: u64) -> Option<u64> {
    match job.state {
        JobState::Running => {
            let elapsed = now_ms.saturating_sub(job.started_ms.unwrap_or(now_ms));
            Some(p50_ms.saturating_sub(elapsed))
        }
        JobState::Queued => {
            let waves = position.unwrap_or(0) / slots.max(1);
            let busy_ms = if busy { p50_ms / 2 } else { 0 };
            Some(p50_ms.saturating_mul(waves as u64 + 1).saturating_add(busy_ms))
        }
        JobState::Succeeded | JobState::Failed | JobState::Canceled => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(workflow: &str, state: JobState, started: u64, finished: u64) -> Job {
        Job {
            state,
            n_attempts: 1,
            started_ms: Some(started),
            finished_ms: Some(finished),
            ..Job::new_queued(uuid::Uuid::nil(), (workflow, 1), "{}".into(), "{}".into(), 0, 0, 1)
        }
    }

    #[test]
    fn median_of_the_last_runs_per_workflow() {
        let feed = Feed::default();
        assert_eq!(feed.median_run_ms("a"), None);
        for d in [100, 300, 200] {
            feed.record(&job("a", JobState::Succeeded, 1000, 1000 + d));
        }
        feed.record(&job("a", JobState::Failed, 0, 1_000_000));
        feed.record(&job("b", JobState::Succeeded, 0, 7));
        assert_eq!(feed.median_run_ms("a"), Some(200));
        assert_eq!(feed.median_run_ms("b"), Some(7));
        for _ in 0..DURATIONS_PER_WORKFLOW {
            feed.record(&job("a", JobState::Succeeded, 0, 50));
        }
        assert_eq!(feed.median_run_ms("a"), Some(50), "only the last runs count");
    }

    #[test]
    fn eta_is_queue_position_aware() {
        let mut j = job("a", JobState::Queued, 0, 0);
        j.started_ms = None;
        assert_eq!(eta_ms(&j, Some(0), 1, false, 1000, 0), Some(1000));
        assert_eq!(eta_ms(&j, Some(0), 1, true, 1000, 0), Some(1500));
        assert_eq!(eta_ms(&j, Some(3), 2, true, 1000, 0), Some(2500));
        j.state = JobState::Running;
        j.started_ms = Some(10_000);
        assert_eq!(eta_ms(&j, None, 1, true, 1000, 10_400), Some(600));
        assert_eq!(eta_ms(&j, None, 1, true, 1000, 20_000), Some(0));
    }
}
