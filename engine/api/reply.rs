//! Response helpers: JSON bodies, the error envelope (README "Use it")
//! (`{"error": {code, message, retryable, details?}, "correlationId"}`), and the JSON
//! shapes of jobs and outputs.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::domain::{Job, JobEvent, JobEventKind, Links, OutputRef, hash_hex};
use crate::error::{Error, ErrorCode};
use crate::scheduler::LiveStatus;

/// The body of every response: a whole buffer, or a stream (Server-Sent Events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The response type of every handler.
pub type Resp = Response<Body>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response with raw bytes.
pub fn bytes(status: StatusCode, content_type: &str, body: Bytes) -> Resp {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// An empty response.
pub fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// The error envelope.
pub fn error(err: &Error, correlation_id: &str) -> Resp {
    let mut e = json!({
        "code": err.code.as_str(),
        "message": err.message,
        "retryable": err.code.retryable(),
    });
    if let Some(d) = &err.details {
        e["details"] = d.clone();
    }
    if err.details_omitted > 0 {
        e["detailsOmitted"] = json!(err.details_omitted);
    }
    let status = StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json(status, &json!({ "error": e, "correlationId": correlation_id }));
    // RFC 9110 §15.5.6: a 405 lists the allowed methods.
    if let (ErrorCode::MethodNotAllowed, Some(allow)) =
        (err.code, err.details.as_ref().and_then(|d| d["allow"].as_str()))
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    // A refusal that names when to retry (a 429 of a cap) says it in `Retry-After` too.
    if let Some(s) = err.details.as_ref().and_then(|d| d.get("retryAfterSeconds")).and_then(Value::as_u64) {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    // RFC 9110 §15.5.17: a 416 says how large the resource is.
    if let (ErrorCode::RangeNotSatisfiable, Some(size)) =
        (err.code, err.details.as_ref().and_then(|d| d["size"].as_u64()))
        && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
    {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// The length of `v` as compact JSON if it is at most `max` bytes, else None; the
/// serialization stops at `max`, so a huge value costs no more than a small one.
pub fn json_len_within(v: &Value, max: usize) -> Option<usize> {
    /// Counts bytes and fails the write once there are more than `max`.
    struct Counter {
        n: usize,
        max: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.max { Err(std::io::Error::other("over the limit")) } else { Ok(buf.len()) }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { n: 0, max };
    serde_json::to_writer(&mut counter, v).ok().map(|()| counter.n)
}

/// The items of a listing that fit in `max_bytes` of JSON, in order (the first one always,
/// so a listing advances), and whether any were left off: how a response built in memory
/// stays within `MAX_RESPONSE_BYTES` however much is stored.
pub fn capped_list(items: impl IntoIterator<Item = Value>, max_bytes: usize) -> (Vec<Value>, bool) {
    let mut list = Vec::new();
    let mut left = max_bytes;
    for item in items {
        // One byte for the separating comma.
        match json_len_within(&item, left.saturating_sub(1)) {
            Some(n) => {
                left -= n + 1;
                list.push(item);
            }
            None if list.is_empty() => list.push(item),
            None => return (list, true),
        }
    }
    (list, false)
}

/// The RFC 3339 form of the API's times: UTC, milliseconds, `Z` (`2026-01-02T03:04:05.678Z`).
const RFC3339_MS: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// RFC 3339 UTC time of a Unix-epoch millisecond timestamp (`1970-01-01T00:00:00.000Z`).
/// Times past the year 9999 (never a clock's) are written as its last millisecond.
pub fn rfc3339(ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
    at.format(RFC3339_MS).expect("a UTC date-time of years 0-9999 formats")
}

/// Milliseconds since the Unix epoch of an RFC 3339 date-time (`2026-01-02T03:04:05Z`,
/// `T`, `t` or a space between date and time, optional fraction, `Z` or `±hh:mm` offset);
/// None if malformed or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    // The `time` crate takes any one character between date and time.
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// The JSON of one entry of a job's event log: `{seq, at, type, ...}`.
pub fn event_json(seq: u64, event: &JobEvent) -> Value {
    let mut v = match &event.kind {
        JobEventKind::Queued => json!({ "type": "queued", "status": "queued" }),
        JobEventKind::Dispatched { backend, attempt } => {
            json!({ "type": "dispatched", "status": "running", "backend": backend, "attempt": attempt })
        }
        JobEventKind::Requeued { reason } => json!({ "type": "requeued", "status": "queued", "reason": reason }),
        JobEventKind::Progress { node, value, max } => {
            let percent = if *max > 0.0 { (value / max * 100.0).clamp(0.0, 100.0) } else { 0.0 };
            json!({ "type": "progress", "node": node, "value": value, "max": max, "percent": percent })
        }
        JobEventKind::Reattached { found } => json!({ "type": "reattached", "status": "running", "found": found }),
        JobEventKind::Succeeded { n_outputs } => {
            json!({ "type": "succeeded", "status": "succeeded", "outputs": n_outputs })
        }
        JobEventKind::Failed { code, message } => json!({
            "type": "failed", "status": "failed", "code": code.as_str(), "message": message,
        }),
        JobEventKind::Canceled { reason } => json!({ "type": "canceled", "status": "canceled", "reason": reason }),
        JobEventKind::Milestone { node, percent } => json!({ "type": "milestone", "node": node, "percent": percent }),
        JobEventKind::Webhook { delivery, event, attempt, status, error, outcome, next_attempt_ms } => json!({
            "type": "webhook", "webhookId": delivery, "event": event, "attempt": attempt, "httpStatus": status,
            "error": error, "outcome": outcome, "nextAttemptAt": next_attempt_ms.map(rfc3339),
        }),
    };
    v["seq"] = json!(seq);
    v["at"] = json!(rfc3339(event.at_ms));
    v
}

/// Every string value of a job's inputs that privacy mode keeps out of responses, longest
/// first (see [`crate::privacy::input_texts`]).
pub fn private_texts(job: &Job) -> Vec<String> {
    crate::privacy::input_texts(&job.inputs_json)
}

/// Replace every occurrence of `texts` in the strings of `v` with `[redacted]`, and drop
/// the `inputs` and `metadata` of a job body.
pub fn redact(v: &mut Value, texts: &[String]) {
    match v {
        Value::String(s) => {
            for t in texts {
                if s.contains(t.as_str()) {
                    *s = s.replace(t.as_str(), "[redacted]");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact(x, texts)),
        Value::Object(m) => {
            m.remove("inputs");
            m.remove("metadata");
            m.values_mut().for_each(|x| redact(x, texts));
        }
        _ => {}
    }
}

/// The JSON of one output; its `url` made by `links`.
pub fn output_json(job: &Job, o: &OutputRef, links: &Links) -> Value {
    json!({
        "name": o.name,
        "nodeId": o.node_id,
        "mediaType": o.media_type,
        "size": o.size_bytes,
        "hash": hash_hex(&o.hash),
        "url": links.output(job.id, &o.name),
    })
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// The JSON of a job, with live queue position and progress when known; its `pollUrl`
/// and output `url`s made by `links`.
pub fn job_json(job: &Job, live: Option<&LiveStatus>, links: &Links) -> Value {
    let mut v = json!({
        "jobId": job.id,
        "workflowId": job.workflow_id,
        "workflowVersion": job.workflow_version,
        "status": job.state.as_str(),
        "priority": job.priority,
        "attempts": job.n_attempts,
        // The id of the backend it runs (or last ran) on; old records hold its URL.
        "backend": job.backend,
        "cached": job.cached,
        "inputs": parse_json(&job.inputs_json),
        "seed": job.seed,
        "outputs": job.outputs.iter().map(|o| output_json(job, o, links)).collect::<Vec<_>>(),
        "createdAt": rfc3339(job.created_ms),
        "startedAt": job.started_ms.map(rfc3339),
        "finishedAt": job.finished_ms.map(rfc3339),
        "updatedAt": rfc3339(job.updated_ms),
        "pollUrl": links.job(job.id),
    });
    if let Some(m) = &job.metadata_json {
        v["metadata"] = parse_json(m);
    }
    if let Some(url) = &job.callback_url {
        v["callbackUrl"] = json!(url);
    }
    if let Some(e) = &job.error {
        let mut err = json!({ "code": e.code.as_str(), "message": e.message, "retryable": e.code.retryable() });
        if let Some(d) = &e.details_json {
            err["details"] = parse_json(d);
        }
        v["error"] = err;
    }
    if let Some(live) = live {
        if let Some(pos) = live.queue_position {
            v["queuePosition"] = json!(pos);
        }
        if let Some(p) = &live.progress {
            let percent = if p.max > 0.0 { (p.value / p.max * 100.0).clamp(0.0, 100.0) } else { 0.0 };
            v["progress"] = json!({ "node": p.node, "value": p.value, "max": p.max, "percent": percent });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn json_len_is_exact_within_the_limit_and_none_beyond() {
        use super::json_len_within;
        let v = serde_json::json!({"a": [1, 2, "x"]});
        let n = v.to_string().len();
        assert_eq!(json_len_within(&v, n), Some(n));
        assert_eq!(json_len_within(&v, n - 1), None);
        let big = serde_json::Value::String("x".repeat(1 << 20));
        assert_eq!(json_len_within(&big, 100), None);
    }

    #[test]
    fn capped_list_keeps_what_fits_and_says_it_cut() {
        use super::capped_list;
        let items = || (0..100).map(|i| serde_json::json!({"seq": i, "pad": "y".repeat(90)}));
        let one = serde_json::json!({"seq": 10, "pad": "y".repeat(90)}).to_string().len();
        let (list, cut) = capped_list(items(), 10 * (one + 1));
        assert!(cut);
        assert!((9..=10).contains(&list.len()), "{}", list.len());
        assert_eq!(list[0]["seq"], 0);
        assert!(serde_json::Value::Array(list).to_string().len() <= 10 * (one + 1) + 2);
        let (all, cut) = capped_list(items(), 1 << 20);
        assert_eq!((all.len(), cut), (100, false));
        // The first item always comes, so a paged listing advances.
        let (first, cut) = capped_list(items(), 5);
        assert_eq!((first.len(), cut), (1, true));
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_472_586_254), "2026-11-23T22:23:06.254Z");
    }

    #[test]
    fn rfc3339_round_trips_and_rejects_garbage() {
        use super::parse_rfc3339;
        for ms in [0, 951_782_400_123, 1_795_472_586_254] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2000-02-29T01:00:00+01:00"), Some(951_782_400_000));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.5Z"), Some(951_782_400_500));
        for bad in ["", "yesterday", "2000-13-01T00:00:00Z", "2000-01-01T00:00:00", "2000-01-01T00:00:00.Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_edges() {
        use super::parse_rfc3339;
        // Leap years: every 4th, not every 100th, every 400th.
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(rfc3339(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        for bad in ["2023-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2026-04-31T00:00:00Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        // Before 1970 is refused, offsets included.
        for bad in ["1969-12-31T23:59:59.999Z", "1970-01-01T00:30:00+01:00", "0001-01-01T00:00:00Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_rfc3339("1969-12-31T23:00:00-01:00"), Some(0));
        // Separators, case, fractions (truncated to the millisecond).
        assert_eq!(parse_rfc3339("1970-01-01 00:00:01.9999z"), Some(1999));
        assert_eq!(parse_rfc3339("1970-01-01t00:00:01Z"), Some(1000));
        for bad in ["1970-01-01X00:00:01Z", "1970-01-01T00:00:01Z ", "1970-01-01T24:00:00Z", "1970-1-01T00:00:00Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        // The last instant written, and beyond it.
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
