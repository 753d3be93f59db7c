//! Webhook delivery: a job with a `callbackUrl` gets a signed POST for each event it asked
//! for (terminal states always), from the durable outbox in the store.
//!
//! The store creates each delivery in the transaction that commits the job change it
//! reports; this module only sends them. [`worker`] sleeps until the next delivery is due
//! (woken by commits that make a delivery pending), sends it ([`send`]: body, headers
//! signed by [`sign`], destination checked by [`policy`]), and records the attempt and
//! what follows from it ([`schedule`]) in one commit. Delivery is at least once: a crash
//! between the POST and the commit sends again, with the same `webhook-id`.
//!
//! - [`sign`]: `WEBHOOK_SECRET`, Standard Webhooks and `X-Signature` signatures, verify.
//! - [`policy`]: `WEBHOOK_ALLOWED_DOMAINS` over the SSRF gate ([`crate::ssrf`]); `CALLBACK_NOT_ALLOWED`.
//! - [`schedule`]: `WEBHOOK_RETRY_SCHEDULE`, jitter, `Retry-After`.
//! - [`send`]: the body and one attempt.
//! - [`worker`]: the delivery task and its handle.

pub mod policy;
pub mod schedule;
pub mod send;
pub mod sign;
pub mod worker;

use std::time::Duration;

pub use policy::{DomainList, check_callback_url};
pub use schedule::Schedule;
pub use sign::SigningKey;
pub use worker::Webhooks;

/// The webhook settings (from `WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `WEBHOOK_SECRET`: signs every delivery; None sends them unsigned.
    pub key: Option<SigningKey>,
    /// `WEBHOOK_ALLOWED_DOMAINS`.
    pub allowed: DomainList,
    /// `WEBHOOK_RETRY_SCHEDULE`.
    pub schedule: Schedule,
    /// `WEBHOOK_TIMEOUT_MS`: one attempt, DNS to status line.
    pub timeout: Duration,
    /// `WEBHOOK_CONCURRENCY`: attempts in flight at most.
    pub concurrency: usize,
    /// `WEBHOOK_DESTINATION_CONCURRENCY`: attempts in flight to one destination (the
    /// callback URL's host and port) at most.
    pub destination_concurrency: usize,
    /// `WEBHOOK_OWNER_CONCURRENCY`: attempts in flight for one owner's jobs at most (jobs
    /// without an owner, in open mode, are bounded by the other caps only).
    pub owner_concurrency: usize,
}

/// Default of `WEBHOOK_TIMEOUT_MS`.
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// Default of `WEBHOOK_CONCURRENCY`.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Default of `WEBHOOK_DESTINATION_CONCURRENCY`: a receiver that hangs holds this many
/// slots at most, leaving the rest to everybody else.
pub const DEFAULT_DESTINATION_CONCURRENCY: usize = 4;
/// Default of `WEBHOOK_OWNER_CONCURRENCY`: half the default slots, so one tenant's slow
/// receivers (on many ports or hosts) cannot hold them all.
pub const DEFAULT_OWNER_CONCURRENCY: usize = 8;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            key: None,
            allowed: DomainList::default(),
            schedule: Schedule::default(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            concurrency: DEFAULT_CONCURRENCY,
            destination_concurrency: DEFAULT_DESTINATION_CONCURRENCY,
            owner_concurrency: DEFAULT_OWNER_CONCURRENCY,
        }
    }
}
