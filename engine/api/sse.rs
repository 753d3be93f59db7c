//! `GET /jobs/{id}/events`: a job's durable event log as Server-Sent Events, then live.
//!
//! Every event carries `id:` = its seq in the job's durable log, so `Last-Event-ID` (or
//! `?lastEventId=`) resumes exactly after it. The stream subscribes to the scheduler's
//! "job X has new events" notification *before* its first read, and re-reads the log
//! from its last seq on every notification (and on a lag): nothing is lost, nothing is
//! sent twice. Progress comes only from the durable log (at most one entry per 500 ms),
//! so every event has an id and a resumed stream is identical to an uninterrupted one.
//! The `output` events of a success precede the `succeeded` event and carry its seq as
//! their `id:` too, so a client that got them and reconnects with that `Last-Event-ID`
//! is not sent them again (nor the terminal event: it ends at once), and one that missed
//! them gets them all. The stream ends after the terminal event (`succeeded`, `failed`,
//! `canceled`), or, for a job that had already ended when the client's last seq is at or
//! past its terminal event, once the log entries after that seq (webhook attempts) are sent.
//!
//! Open streams are capped per client key (`MAX_EVENT_STREAMS_PER_CLIENT`) and in total
//! (`MAX_EVENT_STREAMS`): beyond them `429 RATE_LIMITED` with `Retry-After`. A stream
//! holds its connection, so it also counts toward the client's connection share.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::limits::{Client, Hold};
use super::reply::{self, Resp};
use super::routes::{Ctx, Params};
use crate::domain::{JobEventKind, JobId};
use crate::error::{Error, ErrorCode, Result};
use crate::service::Gateway;

/// Reconnection delay suggested to clients (`retry:`), in ms.
const RETRY_MS: u64 = 2000;
/// Log entries read per store read.
const READ_BATCH: usize = 256;

/// `GET /jobs/{id}/events`.
pub fn job_events(ctx: &Ctx, p: &Params, req: &Request<Incoming>, client: &Client) -> Result<Resp> {
    let id = uuid::Uuid::parse_str(&p.id)
        .map_err(|_| Error::new(ErrorCode::JobNotFound, format!("no job with id {:?}", p.id)))?;
    let header_id = req.headers().get("last-event-id").map(|v| v.to_str().unwrap_or("?").trim().to_string());
    let last_seq = match header_id.as_deref().or(p.query("lastEventId")) {
        None | Some("") => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| {
            Error::validation("lastEventId", "Last-Event-ID must be the id (a non-negative integer) of an event")
        })?,
    };
    // Subscribe before the first read so that no commit falls between the two.
    let rx = ctx.gateway.scheduler.subscribe();
    super::handlers::visible_job(ctx, p)?;
    let hold = ctx.limits.event_streams.hold(&client.key)?;
    let period = Duration::from_millis(ctx.gateway.config.sse_heartbeat_ms);
    let follow = Follow {
        gateway: ctx.gateway.clone(),
        id,
        last_seq,
        rx,
        out: VecDeque::from([Bytes::from(format!("retry: {RETRY_MS}\n\n"))]),
        first_read: true,
        stale: true,
        finished: false,
        ended_at_open: false,
        stop: ctx.stop.clone(),
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
        _hold: hold,
    };
    let stream = futures_util::stream::unfold(follow, Follow::next);
    let body = StreamBody::new(futures_util::StreamExt::map(stream, |b| Ok::<_, Infallible>(Frame::data(b))));
    let mut resp = Response::new(body.boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// One client following one job.
struct Follow {
    gateway: Gateway,
    id: JobId,
    /// The seq of the last log entry sent (0: none).
    last_seq: u64,
    rx: broadcast::Receiver<JobId>,
    /// Encoded events waiting to be sent.
    out: VecDeque<Bytes>,
    first_read: bool,
    /// The log may hold entries after `last_seq`.
    stale: bool,
    /// The terminal event is queued: end once `out` is sent.
    finished: bool,
    /// The job had already ended at the first read: once the log is read to its end the
    /// stream ends too, terminal event sent or not (the client had it; what follows it in
    /// the log, webhook attempts, is sent first).
    ended_at_open: bool,
    stop: CancellationToken,
    heartbeat: tokio::time::Interval,
    /// This stream's place under the stream caps, given back when the stream ends.
    _hold: Hold<String>,
}

impl Follow {
    async fn next(mut self) -> Option<(Bytes, Follow)> {
        loop {
            if let Some(chunk) = self.out.pop_front() {
                return Some((chunk, self));
            }
            if self.finished {
                return None;
            }
            if self.stale {
                self.stale = false;
                if let Err(e) = self.read() {
                    tracing::error!(job = %self.id, error = %e, "cannot read a job's events; ending its stream");
                    return None;
                }
                continue;
            }
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(id) => self.stale = id == self.id,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.stale = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => self.out.push_back(Bytes::from_static(b": ping\n\n")),
                _ = self.stop.cancelled() => return None,
            }
        }
    }

    /// Queue the log entries after `last_seq`.
    fn read(&mut self) -> Result<()> {
        let store = &self.gateway.store;
        let events = store.job_events(self.id, Some(self.last_seq), READ_BATCH)?;
        if events.len() == READ_BATCH {
            self.stale = true;
        }
        let privacy = self.gateway.config.privacy_mode;
        let mut job = None;
        let mut texts = Vec::new();
        if privacy || self.first_read {
            let j = self.gateway.job(self.id)?;
            texts = if privacy { reply::private_texts(&j) } else { Vec::new() };
            job = Some(j);
        }
        if self.first_read && job.as_ref().is_some_and(|j| j.state.is_terminal()) {
            self.ended_at_open = true;
        }
        self.first_read = false;
        // A job that ended before the stream opened, its log read to the end without its
        // terminal event: the client already had that event (its Last-Event-ID is at or past
        // it), so nothing more will come and the stream ends after what was read (webhook
        // entries), instead of staying open, holding a stream slot, for an event already sent.
        if self.ended_at_open && !self.stale {
            self.finished = true;
        }
        for (seq, event) in events {
            self.last_seq = seq;
            let mut data = reply::event_json(seq, &event);
            let name = match &event.kind {
                JobEventKind::Progress { .. } | JobEventKind::Milestone { .. } => "progress",
                JobEventKind::Webhook { .. } => "webhook",
                JobEventKind::Succeeded { .. } => "succeeded",
                JobEventKind::Failed { .. } => "failed",
                JobEventKind::Canceled { .. } => "canceled",
                JobEventKind::Queued
                | JobEventKind::Dispatched { .. }
                | JobEventKind::Requeued { .. }
                | JobEventKind::Reattached { .. } => "status",
            };
            if matches!(
                event.kind,
                JobEventKind::Succeeded { .. } | JobEventKind::Failed { .. } | JobEventKind::Canceled { .. }
            ) {
                let j = self.gateway.job(self.id)?;
                let mut body = reply::job_json(&j, None);
                if matches!(event.kind, JobEventKind::Succeeded { .. }) {
                    for o in &j.outputs {
                        self.out.push_back(encode(seq, "output", &reply::output_json(&j, o)));
                    }
                }
                if privacy {
                    reply::redact(&mut body, &texts);
                }
                data = json!({ "seq": seq, "at": data["at"], "type": data["type"], "job": body });
                self.out.push_back(encode(seq, name, &data));
                self.finished = true;
                break;
            }
            if privacy {
                reply::redact(&mut data, &texts);
            }
            self.out.push_back(encode(seq, name, &data));
        }
        Ok(())
    }
}

/// One event in the text/event-stream format; `data` is one line of JSON.
fn encode(id: u64, event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"))
}
