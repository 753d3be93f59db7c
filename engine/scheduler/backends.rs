//! One task per backend: probe `/system_stats` until it answers (with backoff), mark the
//! backend healthy, keep its WebSocket open, and start over when either fails.
//!
//! A backend is dispatched to only while healthy. Runners that fail to connect mark it
//! down ([`super::Backend::mark_down`]), which wakes this task to re-probe at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;
use crate::comfy::ws;

/// First retry delay after a failed probe.
const PROBE_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between probes of a down backend.
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A WebSocket session shorter than this counts as a failed connection for backoff.
const SESSION_SHORT: Duration = Duration::from_secs(2);

/// Keep backend `b`'s health and WebSocket up to date until shutdown.
pub(crate) async fn health_loop(shared: Arc<Shared>, b: usize) {
    let backend = shared.backends[b].clone();
    let mut delay = PROBE_BACKOFF_MIN;
    while !shared.shutdown.is_cancelled() {
        match backend.client.system_stats().await {
            Ok(info) => {
                {
                    let mut i = backend.lock_info();
                    i.comfyui_version = info.comfyui_version;
                }
                if !backend.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!(backend = %backend.id, "backend reachable");
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
                    delay = PROBE_BACKOFF_MIN;
                    continue;
                }
            }
            Err(e) => {
                if backend.healthy.swap(false, Ordering::AcqRel) {
                    tracing::warn!(backend = %backend.id, error = %e, "backend unreachable");
                }
                backend.lock_info().last_error = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = backend.recheck.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(PROBE_BACKOFF_MAX);
    }
}
