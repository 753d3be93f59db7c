//! The delivery task: sleeps until the next delivery is due (or a commit that made a
//! delivery pending, a redelivery or a finished attempt wakes it), starts the due ones as attempts (at most
//! `WEBHOOK_CONCURRENCY` in flight, never two of one delivery), and records each attempt in
//! the store. It never blocks the scheduler: it only reads the store.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::schedule::JITTER;
use super::send;
use crate::domain::{Attempt, AttemptNext, Delivery, now_ms};
use crate::service::Gateway;

/// Longest sleep between two looks at the outbox (a safety net: every change wakes it).
const IDLE_MAX: Duration = Duration::from_secs(1);
/// Sleep while due deliveries wait for an attempt in flight or a free slot.
const BUSY_POLL: Duration = Duration::from_millis(100);
/// Sleep after a store error.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Handle to the delivery task. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    wake: Notify,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Outbox seqs with an attempt in flight.
    in_flight: Mutex<HashSet<u64>>,
}

impl Webhooks {
    /// A handle; nothing runs before [`Webhooks::start`].
    pub fn new() -> Webhooks {
        Webhooks::default()
    }

    /// Start the delivery task for `gateway` (whose `webhooks` is this handle).
    pub fn start(&self, gateway: Gateway) {
        if gateway.config.webhooks.key.is_none() {
            tracing::warn!("WEBHOOK_SECRET is not set: webhook deliveries are sent unsigned");
        }
        let inner = self.inner.clone();
        self.inner.tasks.spawn(run(gateway, inner));
    }

    /// Look at the outbox now (after a redelivery).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Stop the task and its attempts in flight, and wait for them.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

async fn run(gateway: Gateway, inner: Arc<Inner>) {
    let slots = Arc::new(Semaphore::new(gateway.config.webhooks.concurrency));
    loop {
        let pause = match start_due(&gateway, &inner, &slots) {
            Ok(pause) => pause,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                ERROR_BACKOFF
            }
        };
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            // Only commits that made a delivery pending wake it: jobs without webhooks cost
            // the worker nothing.
            _ = gateway.store.outbox_changed() => {}
        }
    }
}

/// Start an attempt for each due delivery not in flight while slots are free; returns how
/// long to sleep before looking again.
fn start_due(
    gateway: &Gateway,
    inner: &Arc<Inner>,
    slots: &Arc<Semaphore>,
) -> Result<Duration, crate::store::StoreError> {
    let now = now_ms();
    // Held while the outbox is read: an attempt records its result *before* it leaves
    // `in_flight`, so a delivery read as due here is either still in flight or due again.
    let mut in_flight = inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
    let due = gateway.store.due_deliveries(now, gateway.config.webhooks.concurrency + in_flight.len())?;
    let mut waiting = false;
    for delivery in due {
        if in_flight.contains(&delivery.seq) {
            waiting = true;
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            waiting = true;
            break;
        };
        in_flight.insert(delivery.seq);
        let (gateway, inner_task) = (gateway.clone(), inner.clone());
        let span = tracing::info_span!("webhook", job = %delivery.job_id, webhook_id = %delivery.id);
        inner.tasks.spawn(tracing::Instrument::instrument(
            async move {
                let seq = delivery.seq;
                // Stopping abandons an attempt in flight: unrecorded, it is sent again after
                // the restart, with the same webhook-id.
                tokio::select! {
                    _ = deliver(&gateway, delivery) => {}
                    _ = inner_task.stop.cancelled() => {}
                }
                inner_task.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                drop(permit);
                inner_task.wake.notify_one();
            },
            span,
        ));
    }
    drop(in_flight);
    if waiting {
        return Ok(BUSY_POLL);
    }
    let pause = match gateway.store.next_delivery_due_ms()? {
        // Due already: in flight (started above or earlier); its end wakes us.
        Some(at) if at <= now => BUSY_POLL,
        Some(at) => Duration::from_millis(at - now),
        None => IDLE_MAX,
    };
    Ok(pause.min(IDLE_MAX))
}

/// One attempt of `delivery`, recorded (or recorded as disabled without sending when its
/// endpoint was disabled by an earlier 410).
async fn deliver(gateway: &Gateway, delivery: Delivery) {
    let settings = &gateway.config.webhooks;
    let attempt_no = delivery.n_attempts + 1;
    let attempt = match gateway.store.endpoint_disabled_ms(&delivery.url) {
        Ok(Some(_)) => Attempt {
            at_ms: now_ms(),
            status: None,
            error: Some(
                "the endpoint was disabled by an HTTP 410; POST /jobs/{id}/webhook/redeliver enables it again".into(),
            ),
            next: AttemptNext::Disable,
        },
        Ok(None) => match gateway.reveal(delivery.job.clone()) {
            Ok(job) => {
                let body = send::body(&delivery, &job, &gateway.config.public_url);
                let at_ms = now_ms();
                let sent = send::attempt(settings, &delivery.url, &delivery.id, &body).await;
                let jitter = rand::rng().random_range(JITTER);
                let next = settings.schedule.next(attempt_no, sent.outcome, now_ms(), jitter);
                Attempt { at_ms, status: sent.status, error: sent.error, next }
            }
            Err(e) => {
                let next = settings.schedule.next(
                    attempt_no,
                    super::schedule::Outcome::Failed { retry_after: None },
                    now_ms(),
                    1.0,
                );
                Attempt { at_ms: now_ms(), status: None, error: Some(format!("cannot build the body: {e}")), next }
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot read the endpoint state; trying later");
            tokio::time::sleep(ERROR_BACKOFF).await;
            return;
        }
    };
    let (status, next) = (attempt.status, attempt.next);
    if matches!(next, AttemptNext::Delivered) {
        crate::failpoints::crash_point(crate::failpoints::WEBHOOK_AFTER_2XX);
    }
    match gateway.store.record_attempt(delivery.seq, attempt).await {
        Ok(_) => {
            gateway.metrics.webhook_attempt(outcome_label(next));
            tracing::info!(event = delivery.event.type_name(), attempt = attempt_no, ?status, ?next, "webhook attempt");
        }
        Err(e) => {
            // The delivery stays pending and due: it is tried again (same webhook-id).
            tracing::error!(error = %e, "cannot record a webhook attempt");
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

/// The `outcome` label of an attempt.
fn outcome_label(next: AttemptNext) -> &'static str {
    match next {
        AttemptNext::Delivered => "delivered",
        AttemptNext::RetryAt(_) => "retrying",
        AttemptNext::GiveUp => "failed",
        AttemptNext::Disable => "disabled",
    }
}
