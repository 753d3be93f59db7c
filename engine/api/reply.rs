//! Response helpers: JSON bodies, the error envelope of SPEC §6
//! (`{"error": {code, message, retryable, details?}, "correlationId"}`), and the JSON
//! shapes of jobs and outputs.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::domain::{Job, OutputRef, hash_hex};
use crate::error::{Error, ErrorCode};
use crate::scheduler::LiveStatus;

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// A JSON response.
pub fn json(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response with raw bytes.
pub fn bytes(status: StatusCode, content_type: &str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// An empty response.
pub fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
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
    let status = StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json(status, &json!({ "error": e, "correlationId": correlation_id }));
    // RFC 9110 §15.5.6: a 405 lists the allowed methods.
    if let (ErrorCode::MethodNotAllowed, Some(allow)) =
        (err.code, err.details.as_ref().and_then(|d| d["allow"].as_str()))
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        resp.headers_mut().insert(header::ALLOW, v);
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

/// RFC 3339 UTC time of a Unix-epoch millisecond timestamp.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// The JSON of one output.
pub fn output_json(job: &Job, o: &OutputRef) -> Value {
    json!({
        "name": o.name,
        "nodeId": o.node_id,
        "mediaType": o.media_type,
        "size": o.size_bytes,
        "hash": hash_hex(&o.hash),
        "url": format!("/outputs/{}/{}", job.id, o.name),
    })
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// The JSON of a job, with live queue position and progress when known.
pub fn job_json(job: &Job, live: Option<&LiveStatus>) -> Value {
    let mut v = json!({
        "jobId": job.id,
        "workflowId": job.workflow_id,
        "workflowVersion": job.workflow_version,
        "status": job.state.as_str(),
        "priority": job.priority,
        "attempts": job.n_attempts,
        "cached": job.cached,
        "inputs": parse_json(&job.inputs_json),
        "seed": job.seed,
        "outputs": job.outputs.iter().map(|o| output_json(job, o)).collect::<Vec<_>>(),
        "createdAt": rfc3339(job.created_ms),
        "startedAt": job.started_ms.map(rfc3339),
        "finishedAt": job.finished_ms.map(rfc3339),
        "updatedAt": rfc3339(job.updated_ms),
        "pollUrl": format!("/jobs/{}", job.id),
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
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_472_586_254), "2026-11-23T22:23:06.254Z");
    }
}
