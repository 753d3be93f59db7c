//! `GET /jobs/{id}/events`: a job's durable event log as Server-Sent Events, then live.
//!
//! Every event carries `id:` = its seq in the job's durable log, so `Last-Event-ID` (or
//! `?lastEventId=`) resumes exactly after it. The stream subscribes to the scheduler's
//! "job X has new events" notification *before* its first read, and re-reads the log
//! from its last seq on every notification (and on a lag): nothing is lost, nothing is
//! sent twice. Progress comes only from the durable log (at most one entry per 500 ms),
//! so every event has an id and a resumed stream is identical to an uninterrupted one.
//! The `output` events of a success precede the `succeeded` event (seq `N`); output `k`
//! carries the id `N.k`, so a client that reconnects with `Last-Event-ID: N.k` is sent
//! the outputs after `k` and then the terminal event, one that got the terminal event
//! (`N`) is sent neither again, and one that missed them gets them all. Nothing is lost
//! when a connection drops between two outputs, and nothing is sent twice. The stream ends after the terminal event (`succeeded`, `failed`,
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
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::limits::{Client, Hold};
use super::reply::{self, Resp};
use super::routes::{Ctx, Params};
use crate::domain::{JobEventKind, JobId};
use crate::error::{Error, ErrorCode, Result};
use crate::service::Gateway;
use crate::wire::job::{JobEnded, JobEventView, JobView, OutputView, PreviewEvent};

/// Reconnection delay suggested to clients (`retry:`), in ms.
const RETRY_MS: u64 = 2000;
/// Log entries read per store read.
const READ_BATCH: usize = 256;

/// `GET /jobs/{id}/events`.
pub fn job_events(ctx: &Ctx, p: &Params, req: &Request<Incoming>, client: &Client) -> Result<Resp> {
    let id = uuid::Uuid::parse_str(&p.id)
        .map_err(|_| Error::new(ErrorCode::JobNotFound, format!("no job with id {:?}", p.id)))?;
    let header_id = req.headers().get("last-event-id").map(|v| v.to_str().unwrap_or("?").trim().to_string());
    let (last_seq, outputs_seen) = match header_id.as_deref().or(p.query("lastEventId")) {
        None | Some("") => (0, None),
        Some(raw) => parse_event_id(raw).ok_or_else(|| {
            Error::validation("lastEventId", "Last-Event-ID must be the id of an event: N, or N.k for an output")
        })?,
    };
    // Subscribe before the first read so that no commit falls between the two.
    let rx = ctx.gateway.subscribe();
    super::handlers::visible_job(&ctx.gateway, p)?;
    let hold = ctx.limits.event_streams.hold(&client.key)?;
    let period = Duration::from_millis(ctx.gateway.config.sse_heartbeat_ms);
    let follow = Follow {
        gateway: ctx.gateway.clone(),
        id,
        last_seq,
        outputs_seen,
        rx,
        out: VecDeque::from([Bytes::from(format!("retry: {RETRY_MS}\n\n"))]),
        first_read: true,
        stale: true,
        finished: false,
        ended_at_open: false,
        stop: ctx.stop.clone(),
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
        _hold: hold,
        preview_seq: 0,
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
    /// Resumed after output `k` of the terminal event at seq `N`: `(N, k + 1)` outputs of
    /// that event were sent already.
    outputs_seen: Option<(u64, usize)>,
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
    /// The seq of the last preview image sent (`LIVE_PREVIEWS`; 0: none).
    preview_seq: u64,
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
                self.preview();
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

    /// Queue the running job's latest preview image when it is one this stream has not
    /// sent: a `preview` event without an id (it is not in the log, so a resumed stream
    /// does not replay it).
    fn preview(&mut self) {
        if self.finished || !self.gateway.config.live_previews {
            return;
        }
        let Some(p) = self.gateway.preview(self.id) else { return };
        if p.seq <= self.preview_seq {
            return;
        }
        self.preview_seq = p.seq;
        let data = PreviewEvent::new(p.seq, p.media_type, &p.image);
        let data = serde_json::to_string(&data).expect("a wire type serializes");
        self.out.push_back(Bytes::from(format!("event: preview\ndata: {data}\n\n")));
    }

    /// Queue the log entries after `last_seq`.
    fn read(&mut self) -> Result<()> {
        let events = self.gateway.job_events(self.id, Some(self.last_seq), READ_BATCH)?;
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
            let entry = JobEventView::new(seq, &event);
            let name = match &event.kind {
                JobEventKind::Progress { .. } | JobEventKind::Advanced { .. } | JobEventKind::Milestone { .. } => {
                    "progress"
                }
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
                let links = self.gateway.config.links();
                let job = JobView::new(&j, None, &links);
                if matches!(event.kind, JobEventKind::Succeeded { .. }) {
                    let seen = self.outputs_seen.filter(|(at, _)| *at == seq).map_or(0, |(_, n)| n);
                    for (k, o) in j.outputs.iter().enumerate().skip(seen) {
                        let id = format!("{seq}.{k}");
                        self.out.push_back(encode_as(&id, "output", &OutputView::new(&j, o, &links)));
                    }
                }
                let ended = JobEnded { seq, at: entry.at, kind: j.state.into(), job };
                let ended = if privacy { reply::redacted(&ended, &texts) } else { crate::wire::to_value(&ended) };
                self.out.push_back(encode(seq, name, &ended));
                self.finished = true;
                break;
            }
            let entry = if privacy { reply::redacted(&entry, &texts) } else { crate::wire::to_value(&entry) };
            self.out.push_back(encode(seq, name, &entry));
        }
        Ok(())
    }
}

/// One event in the text/event-stream format; `data` is one line of JSON.
fn encode<T: Serialize>(id: u64, event: &str, data: &T) -> Bytes {
    encode_as(&id.to_string(), event, data)
}

/// [`encode`] with an id that is not a log seq (`N.k`: output `k` of the event at seq `N`).
fn encode_as<T: Serialize>(id: &str, event: &str, data: &T) -> Bytes {
    let data = serde_json::to_string(data).expect("a wire type serializes");
    Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"))
}

/// A `Last-Event-ID`: `N` (every log entry up to seq `N` was received) or `N.k` (output
/// `k` of the terminal event at seq `N`: the entries before `N` and outputs `0..=k`), as
/// `(last seq, Some((N, k + 1)))`. None when it is neither.
fn parse_event_id(raw: &str) -> Option<(u64, Option<(u64, usize)>)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match raw.split_once('.') {
        None => digits(raw).then(|| raw.parse().ok()).flatten().map(|n| (n, None)),
        Some((n, k)) if digits(n) && digits(k) => {
            let (n, k) = (n.parse::<u64>().ok()?, k.parse::<usize>().ok()?);
            // Output ids name a terminal event, which is never the log's first entry.
            Some((n.checked_sub(1)?, Some((n, k.checked_add(1)?))))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_event_id;

    #[test]
    fn event_ids_are_seqs_or_outputs_of_a_seq() {
        assert_eq!(parse_event_id("0"), Some((0, None)));
        assert_eq!(parse_event_id("17"), Some((17, None)));
        assert_eq!(parse_event_id("17.0"), Some((16, Some((17, 1)))));
        assert_eq!(parse_event_id("17.3"), Some((16, Some((17, 4)))));
        for bad in ["", "-1", "+1", "1.", ".1", "0.0", "1.2.3", "a", "1e3", " 1", "18446744073709551616"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
