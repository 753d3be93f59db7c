//! The delivery task: sleeps until the next delivery is due (or a commit that made a
//! delivery pending, a redelivery or a finished attempt wakes it), starts the due ones as attempts (at most
//! `WEBHOOK_CONCURRENCY` in flight, never two of one delivery), and records each attempt in
//! the store. It never blocks the scheduler: it only reads the store.
//!
//! Fairness: attempts are counted per destination (the callback URL's host and port) and
//! per owner, each under its own cap (`WEBHOOK_DESTINATION_CONCURRENCY`,
//! `WEBHOOK_OWNER_CONCURRENCY`). A due delivery whose destination or owner is at its cap
//! waits ("parked") without holding up the ones behind it, so receivers that hang cost
//! their own tenant's deliveries, not everybody's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore};

use super::schedule::JITTER;
use super::send;
use crate::domain::{Attempt, AttemptNext, Delivery, now_ms};
use crate::scheduler::Tasks;
use crate::service::Gateway;

/// Longest sleep between two looks at the outbox (a safety net: every change wakes it).
const IDLE_MAX: Duration = Duration::from_secs(1);
/// Sleep while due deliveries wait for an attempt in flight or a free slot.
const BUSY_POLL: Duration = Duration::from_millis(100);
/// Sleep after a store error.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Due deliveries looked at per pass at most (index entries, read without decoding): how
/// far behind parked ones a deliverable one is still found at once.
const SCAN_MAX: usize = 10_000;
/// Due deliveries read per pass beyond the global slots (the ones found parked then are
/// skipped unread on the next passes).
const LOAD_EXTRA: usize = 64;

/// Handle to the delivery task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    wake: Notify,
    /// A handle on the gateway's tasks (the scheduler's); its token stops the worker and
    /// its attempts.
    tasks: Tasks,
    /// Outbox seqs with an attempt in flight, and where each goes.
    in_flight: Mutex<HashMap<u64, Lane>>,
}

/// Where an attempt goes and for whom: what the fairness caps count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lane {
    /// `host:port` of the callback URL (the URL itself if it does not parse).
    destination: String,
    /// The job's owner; None in open mode.
    owner: Option<String>,
}

impl Lane {
    fn of(delivery: &Delivery) -> Lane {
        let destination = reqwest::Url::parse(&delivery.url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?)))
            .unwrap_or_else(|| delivery.url.clone());
        Lane { destination, owner: delivery.job.owner.clone() }
    }
}

/// Attempts in flight per destination and per owner.
#[derive(Debug, Default)]
struct Load<'a> {
    destinations: HashMap<&'a str, usize>,
    owners: HashMap<&'a str, usize>,
}

impl<'a> Load<'a> {
    fn of(lanes: impl Iterator<Item = &'a Lane>) -> Load<'a> {
        let mut load = Load::default();
        lanes.for_each(|l| load.add(l));
        load
    }

    fn add(&mut self, lane: &'a Lane) {
        *self.destinations.entry(&lane.destination).or_default() += 1;
        if let Some(owner) = &lane.owner {
            *self.owners.entry(owner).or_default() += 1;
        }
    }

    /// Whether one more attempt on `lane` would pass a cap.
    fn full(&self, lane: &Lane, destination_max: usize, owner_max: usize) -> bool {
        let n_destination = self.destinations.get(lane.destination.as_str()).copied().unwrap_or(0);
        let n_owner = lane.owner.as_deref().and_then(|o| self.owners.get(o)).copied().unwrap_or(0);
        n_destination >= destination_max || n_owner >= owner_max
    }
}

impl Webhooks {
    /// A handle whose tasks go to `tasks` (a child of the scheduler's); nothing runs
    /// before [`Webhooks::start`].
    pub fn new(tasks: Tasks) -> Webhooks {
        let inner = Inner { wake: Notify::new(), tasks, in_flight: Mutex::default() };
        Webhooks { inner: Arc::new(inner) }
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

    /// Stop the task and its attempts in flight (abandoned: sent again after a restart);
    /// the owner of the tasks (`Scheduler::shutdown`) waits for them.
    pub fn stop(&self) {
        self.inner.tasks.stop();
    }
}

async fn run(gateway: Gateway, inner: Arc<Inner>) {
    let slots = Arc::new(Semaphore::new(gateway.config.webhooks.concurrency));
    // Due deliveries found waiting for a destination or owner at its cap, by seq.
    let mut parked = HashMap::new();
    loop {
        let pause = match start_due(&gateway, &inner, &slots, &mut parked) {
            Ok(pause) => pause,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                ERROR_BACKOFF
            }
        };
        tokio::select! {
            _ = inner.tasks.token().cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            // Only commits that made a delivery pending wake it: jobs without webhooks cost
            // the worker nothing.
            _ = gateway.outbox().outbox_changed() => {}
        }
    }
}

/// Start an attempt for each due delivery not in flight, while slots are free, skipping
/// (parking) those whose destination or owner is at its cap; returns how long to sleep
/// before looking again.
fn start_due(
    gateway: &Gateway,
    inner: &Arc<Inner>,
    slots: &Arc<Semaphore>,
    parked: &mut HashMap<u64, Lane>,
) -> Result<Duration, crate::store::StoreError> {
    let now = now_ms();
    let settings = &gateway.config.webhooks;
    let (destination_max, owner_max) = (settings.destination_concurrency, settings.owner_concurrency);
    if slots.available_permits() == 0 {
        // Every slot is busy; the end of an attempt wakes us.
        return Ok(BUSY_POLL);
    }
    // Held while the outbox is read: an attempt records its result *before* it leaves
    // `in_flight`, so a delivery read as due here is either still in flight or due again.
    let mut in_flight = inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
    let mut still_parked = HashMap::new();
    let mut waiting = false;
    let due = {
        let load = Load::of(in_flight.values());
        gateway.outbox().due_deliveries_skipping(now, SCAN_MAX, settings.concurrency + LOAD_EXTRA, |seq| {
            if in_flight.contains_key(&seq) {
                waiting = true;
                return true;
            }
            match parked.remove(&seq) {
                Some(lane) if load.full(&lane, destination_max, owner_max) => {
                    still_parked.insert(seq, lane);
                    waiting = true;
                    true
                }
                _ => false,
            }
        })?
    };
    for delivery in due {
        let lane = Lane::of(&delivery);
        // In flight includes the attempts started in this pass.
        if Load::of(in_flight.values()).full(&lane, destination_max, owner_max) {
            still_parked.insert(delivery.seq, lane);
            waiting = true;
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            waiting = true;
            break;
        };
        in_flight.insert(delivery.seq, lane);
        let (gateway, inner_task) = (gateway.clone(), inner.clone());
        let span = tracing::info_span!("webhook", job = %delivery.job_id, webhook_id = %delivery.id);
        inner.tasks.spawn(tracing::Instrument::instrument(
            async move {
                let seq = delivery.seq;
                // Stopping abandons an attempt in flight: unrecorded, it is sent again after
                // the restart, with the same webhook-id.
                tokio::select! {
                    _ = deliver(&gateway, delivery) => {}
                    _ = inner_task.tasks.token().cancelled() => {}
                }
                inner_task.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                drop(permit);
                inner_task.wake.notify_one();
            },
            span,
        ));
    }
    drop(in_flight);
    *parked = still_parked;
    if waiting {
        return Ok(BUSY_POLL);
    }
    let pause = match gateway.outbox().next_delivery_due_ms()? {
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
    let attempt = match gateway.outbox().endpoint_disabled_ms(&delivery.url) {
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
                let body = send::body(&delivery, &job, &gateway.config.webhook_links());
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
    match gateway.outbox().record_attempt(delivery.seq, attempt).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(destination: &str, owner: Option<&str>) -> Lane {
        Lane { destination: destination.into(), owner: owner.map(str::to_string) }
    }

    #[test]
    fn caps_count_per_destination_and_per_owner() {
        let busy = [lane("hang.example:80", Some("a")), lane("hang.example:80", Some("a")), lane("x:1", Some("b"))];
        let load = Load::of(busy.iter());
        // Destination cap 2: the hanging receiver is full for anyone, another is not.
        assert!(load.full(&lane("hang.example:80", Some("c")), 2, 8));
        assert!(!load.full(&lane("ok.example:80", Some("a")), 2, 8));
        // Owner cap 2: owner a is full on any destination; b and open mode are not.
        assert!(load.full(&lane("ok.example:80", Some("a")), 4, 2));
        assert!(!load.full(&lane("ok.example:80", Some("b")), 4, 2));
        assert!(!load.full(&lane("ok.example:80", None), 4, 2), "no owner: no owner cap");
        assert!(!Load::default().full(&lane("hang.example:80", Some("a")), 1, 1));
    }

    #[test]
    fn a_lane_is_the_callback_host_and_port_and_the_owner() {
        let mut job =
            crate::domain::Job::new_queued(uuid::Uuid::new_v4(), ("wf", 1), "{}".into(), "{}".into(), 0, 0, 1_000);
        job.owner = Some("key:abc".into());
        let delivery = |url: &str| Delivery {
            seq: 1,
            id: "msg_1".into(),
            job_id: job.id,
            event: crate::domain::WebhookEvent::Succeeded,
            url: url.into(),
            job: job.clone(),
            created_ms: 0,
            state: crate::domain::DeliveryState::Pending,
            n_attempts: 0,
            next_attempt_ms: 0,
            last_attempt_ms: None,
            last_status: None,
            last_error: None,
        };
        assert_eq!(Lane::of(&delivery("https://Hooks.Example/a?x=1")), lane("hooks.example:443", Some("key:abc")));
        assert_eq!(Lane::of(&delivery("http://127.0.0.1:9000/b")).destination, "127.0.0.1:9000");
        // Paths do not split a destination: one receiver is one lane.
        assert_eq!(Lane::of(&delivery("http://h:1/a")), Lane::of(&delivery("http://h:1/b")));
        assert_eq!(Lane::of(&delivery("not a url")).destination, "not a url");
    }
}
