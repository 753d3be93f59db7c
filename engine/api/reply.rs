//! Response helpers: JSON bodies of the wire types ([`crate::wire`]), the error envelope
//! (README "Use it": `{"error": {code, message, retryable, details?}, "correlationId"}`),
//! the caps on a listing's bytes, privacy redaction.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::Value;

use crate::domain::Job;
use crate::error::{Error, ErrorCode};
use crate::wire::system::ErrorResponse;

/// The body of every response: a whole buffer, or a stream (Server-Sent Events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The response type of every handler.
pub type Resp = Response<Body>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed_unsync()
}

/// A JSON response: a wire type (or the OpenAPI document).
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Resp {
    let text = serde_json::to_vec(body).expect("a wire type serializes");
    let mut resp = Response::new(full(Bytes::from(text)));
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
    let status = StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json(status, &ErrorResponse::new(err, correlation_id));
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
pub fn json_len_within<T: Serialize + ?Sized>(v: &T, max: usize) -> Option<usize> {
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
pub fn capped_list<T: Serialize>(items: impl IntoIterator<Item = T>, max_bytes: usize) -> (Vec<T>, bool) {
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

/// Every string value of a job's inputs that privacy mode keeps out of responses, longest
/// first (see [`crate::privacy::input_texts`]).
pub fn private_texts(job: &Job) -> Vec<String> {
    crate::privacy::input_texts(&job.inputs_json)
}

/// The JSON of `body` with [`redact`] applied (privacy mode). A JSON value, not the wire
/// type again: a redaction can land inside a member the type would refuse to read back (a
/// time, a status), and the answer must still go out redacted.
pub fn redacted<T: Serialize>(body: &T, texts: &[String]) -> Value {
    let mut v = crate::wire::to_value(body);
    redact(&mut v, texts);
    v
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

#[cfg(test)]
mod tests {
    /// A redaction that lands in a member the wire type would not read back (here the time
    /// and the status) still goes out redacted: nothing of the text is left anywhere.
    #[test]
    fn a_redaction_that_breaks_a_typed_member_is_still_sent_redacted() {
        use crate::domain::{JobEvent, JobEventKind};
        use crate::error::ErrorCode;
        let event = JobEvent {
            at_ms: 0,
            kind: JobEventKind::Failed { code: ErrorCode::ComfyuiNodeError, message: "no 1970 failed".into() },
        };
        let entry = crate::wire::job::JobEventView::new(1, &event);
        let sent = super::redacted(&entry, &["1970".to_string(), "failed".to_string()]).to_string();
        assert!(!sent.contains("1970") && !sent.contains("failed"), "{sent}");
        assert!(sent.contains("[redacted]-01-01T00:00:00.000Z") && sent.contains(r#""status":"[redacted]""#), "{sent}");
    }

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
}
