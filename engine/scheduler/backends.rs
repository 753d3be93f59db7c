//! One task per backend: probe `/system_stats` until it answers (with backoff), mark the
//! backend healthy, keep its WebSocket open, and start over when either fails.
//!
//! A backend is dispatched to only while healthy. Runners that fail to connect mark it
//! down ([`super::Backend::mark_down`]), which wakes this task to re-probe at once.
//!
//! Each successful probe's round trip is recorded; the time of the first failed one is
//! kept while the backend stays unreachable (the dead-backend rule of the runner reads
//! it). A backend that comes back is first cleared of our prompts that do not belong
//! there any more (moved elsewhere while it was unreachable, or finished meanwhile), and
//! only then marked healthy, so nothing is dispatched to it before.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Backend, Shared};
use crate::backoff::Backoff;
use crate::comfy::ws;
use crate::domain::JobState;

/// Pauses between probes of a down backend (or after a short WebSocket session).
const PROBE_BACKOFF: Backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
/// A WebSocket session shorter than this counts as a failed connection for backoff.
const SESSION_SHORT: Duration = Duration::from_secs(2);
/// How often an unreachable backend is logged again while it stays unreachable (its first
/// failed probe is logged at once, at start too; probes are far more frequent).
pub(crate) const DOWN_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Whether a failed probe at `now` is logged, given when the outage was last logged (None:
/// not yet): the first failure of an outage, then one per [`DOWN_LOG_INTERVAL`].
fn log_unreachable_now(last_logged: Option<tokio::time::Instant>, now: tokio::time::Instant) -> bool {
    last_logged.is_none_or(|at| now.saturating_duration_since(at) >= DOWN_LOG_INTERVAL)
}

/// Keep backend `b`'s health and WebSocket up to date until shutdown.
pub(crate) async fn health_loop(shared: Arc<Shared>, b: usize) {
    let backend = shared.backends[b].clone();
    // Pauses since the backend last held a session of `SESSION_SHORT` or longer.
    let mut pauses = 0u32;
    // When this outage was last logged; None while reachable.
    let mut down_logged: Option<tokio::time::Instant> = None;
    while !shared.shutdown.is_cancelled() {
        let probe_started = tokio::time::Instant::now();
        match backend.client.system_stats().await {
            Ok(info) => {
                {
                    let mut i = backend.lock_info();
                    i.comfyui_version = info.comfyui_version;
                    i.probe_ms.push(probe_started.elapsed().as_millis() as u64);
                }
                {
                    let _rejoin = backend.rejoin.lock().await;
                    if !backend.is_healthy() {
                        clear_strays(&shared, &backend).await;
                    }
                    backend.lock_info().unreachable_since = None;
                    if !backend.healthy.swap(true, Ordering::AcqRel) {
                        tracing::info!(backend = %backend.id, "backend reachable");
                    }
                    down_logged = None;
                }
                shared.wake_dispatcher();
                let started = tokio::time::Instant::now();
                let reason = tokio::select! {
                    reason = ws::run_session(&backend.hub, &backend.client, &shared.shutdown) => reason,
                    _ = backend.recheck.notified() => {
                        backend.hub.mark_disconnected();
                        "re-probe requested".to_string()
                    }
                };
                if shared.shutdown.is_cancelled() {
                    return;
                }
                tracing::info!(backend = %backend.id, reason, "backend websocket ended");
                backend.lock_info().last_error = Some(reason);
                if started.elapsed() >= SESSION_SHORT {
                    pauses = 0;
                    continue;
                }
            }
            Err(e) => {
                backend.healthy.store(false, Ordering::Release);
                let now = tokio::time::Instant::now();
                if log_unreachable_now(down_logged, now) {
                    down_logged = Some(now);
                    tracing::warn!(backend = %backend.id, error = %e, "backend unreachable");
                }
                let mut info = backend.lock_info();
                info.last_error = Some(e.to_string());
                info.unreachable_since.get_or_insert_with(std::time::Instant::now);
            }
        }
        pauses = pauses.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(PROBE_BACKOFF.delay(pauses)) => {}
            _ = backend.recheck.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Remove from `backend`'s queue every prompt of ours that is not a job running there
/// according to the store: jobs moved to another backend while this one was unreachable
/// (a partition, not a restart, keeps them), and jobs that finished or were canceled
/// meanwhile. A pending one is deleted, a running one interrupted (`ComfyClient::cancel`
/// does both). Prompt ids that are not jobs of ours are left alone.
async fn clear_strays(shared: &Shared, backend: &Backend) {
    let queue = match backend.client.queue().await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(backend = %backend.id, error = %e, "cannot read the queue of a backend that came back");
            return;
        }
    };
    for prompt_id in queue.running.iter().chain(&queue.pending) {
        let Ok(id) = uuid::Uuid::parse_str(prompt_id) else { continue };
        let job = match shared.store.get_job(id) {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(backend = %backend.id, error = %e, "cannot read a job to clear strays; left as is");
                return;
            }
        };
        let belongs = job.state == JobState::Running && job.backend.as_deref().is_some_and(|b| backend.answers_to(b));
        if belongs {
            continue;
        }
        match backend.client.cancel(prompt_id).await {
            Ok(()) => tracing::info!(
                backend = %backend.id,
                job = %id,
                state = job.state.as_str(),
                now_on = job.backend.as_deref().unwrap_or("-"),
                "removed a prompt of ours that no longer belongs to this backend"
            ),
            Err(e) => tracing::warn!(backend = %backend.id, job = %id, error = %e, "cannot remove a stray prompt"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_at_once_then_once_a_minute() {
        let start = tokio::time::Instant::now();
        assert!(log_unreachable_now(None, start), "the first failure (at start too) is logged");
        let logged = Some(start);
        assert!(!log_unreachable_now(logged, start));
        assert!(!log_unreachable_now(logged, start + DOWN_LOG_INTERVAL - Duration::from_millis(1)));
        assert!(log_unreachable_now(logged, start + DOWN_LOG_INTERVAL));
        assert!(log_unreachable_now(logged, start + 3 * DOWN_LOG_INTERVAL));
        // A clock that looks earlier (another task's `now`) never logs twice.
        assert!(!log_unreachable_now(Some(start + DOWN_LOG_INTERVAL), start));
    }
}
