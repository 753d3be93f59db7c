//! Output downloads: `GET|HEAD /outputs/{id}/{file}` with a strong `ETag` (the BLAKE3
//! content hash), `If-None-Match` (304), single `Range` requests (206/416, `If-Range`),
//! `?format=base64` (JSON), and inline base64 for `GET /jobs/{id}?include=base64`.
//!
//! A blob kept in the S3 bucket is streamed from it (a `Range` becomes a ranged GET), or,
//! with `S3_PRESIGN_TTL_SECONDS`, answered with a 307 to a presigned GET URL. A bucket that
//! fails before the first byte is a 503 `STORAGE_UNAVAILABLE`; after it, the response ends
//! short of its `Content-Length`, so the client sees a cut transfer, never wrong bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;

use super::reply::{self, Resp};
use crate::domain::{Job, OutputRef, hash_hex};
use crate::error::{Error, ErrorCode, Result};
use crate::service::Gateway;
use crate::wire::job::{Base64Encoding, JobView, OutputBase64};

/// Largest output inlined by `?include=base64`, in bytes (larger ones are listed only).
pub const INLINE_BYTES_MAX: u64 = 4 << 20;
/// Largest total of inlined outputs per response, in bytes.
pub const INLINE_TOTAL_BYTES_MAX: u64 = 16 << 20;

/// A byte range to serve, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// What a `Range` header asks of a resource of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// No (usable) range: serve everything. Multi-range and non-`bytes` units land here,
    /// as RFC 9110 allows a server to ignore them.
    Full,
    /// One satisfiable range.
    Partial(ByteRange),
    /// A well-formed range that lies outside the resource: 416.
    Unsatisfiable,
}

/// Parse a `Range` header value for a resource of `len` bytes (RFC 9110 §14.1.2).
pub fn parse_range(value: &str, len: u64) -> RangeAsk {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeAsk::Full };
    if spec.contains(',') {
        return RangeAsk::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeAsk::Full };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = last.parse::<u64>() else { return RangeAsk::Full };
        if n == 0 || len == 0 {
            return RangeAsk::Unsatisfiable;
        }
        ByteRange { start: len.saturating_sub(n), end: len }
    } else {
        let Ok(start) = first.parse::<u64>() else { return RangeAsk::Full };
        let end = if last.is_empty() {
            len
        } else {
            match last.parse::<u64>() {
                Ok(l) if l >= start => l.saturating_add(1).min(len),
                _ => return RangeAsk::Full,
            }
        };
        if start >= len {
            return RangeAsk::Unsatisfiable;
        }
        ByteRange { start, end }
    };
    RangeAsk::Partial(range)
}

fn etag_of(output: &OutputRef) -> String {
    format!("\"{}\"", hash_hex(&output.hash))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `If-None-Match` names `etag` (or is `*`): the client's copy is current (304).
pub(super) fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    header_str(headers, header::IF_NONE_MATCH)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn find_output<'a>(job: &'a Job, file: &str) -> Result<&'a OutputRef> {
    job.outputs
        .iter()
        .find(|o| o.name == file)
        .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("job {} has no output named {file:?}", job.id)))
}

/// Answer a download of `file` of `job`; `head` leaves the body out.
pub async fn output_file(
    gateway: &Gateway,
    job: &Job,
    file: &str,
    headers: &HeaderMap,
    query: &str,
    head: bool,
) -> Result<Resp> {
    let output = find_output(job, file)?;
    let etag = etag_of(output);
    let mut format = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "format" if v == "base64" || v == "raw" => format = Some(v.into_owned()),
            "format" => return Err(Error::validation("/format", "must be base64 or raw")),
            _ => {}
        }
    }
    let not_modified = not_modified(headers, &etag);
    let objects = if not_modified { None } else { gateway.blob_objects(&output.hash)? };
    let mut resp = if not_modified {
        reply::empty(StatusCode::NOT_MODIFIED)
    } else if format.as_deref() == Some("base64") {
        let bytes = read(gateway, output).await?;
        let body = OutputBase64 {
            name: output.name.clone(),
            media_type: output.media_type.clone(),
            size: output.size_bytes,
            hash: hash_hex(&output.hash),
            encoding: Base64Encoding::Base64,
            data: BASE64.encode(&bytes),
        };
        reply::json(StatusCode::OK, &body)
    } else if let Some(objects) = objects.filter(|o| o.presigns() && !head) {
        let url = objects.presigned_get(&output.hash).await.map_err(storage_error)?.unwrap_or_default();
        let mut r = reply::empty(StatusCode::TEMPORARY_REDIRECT);
        r.headers_mut().insert(header::LOCATION, value(&url));
        // The URL expires: no cache may keep the redirect longer than the TTL allows.
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        let h = r.headers_mut();
        h.insert(header::ETAG, value(&etag));
        return Ok(r);
    } else {
        let len = output.size_bytes;
        // If-Range with a different validator means: send the whole (changed) thing.
        let range_applies = header_str(headers, header::IF_RANGE).is_none_or(|v| v.trim() == etag);
        let ask = match header_str(headers, header::RANGE) {
            Some(v) if range_applies => parse_range(v, len),
            _ => RangeAsk::Full,
        };
        match ask {
            RangeAsk::Unsatisfiable => {
                return Err(Error::new(ErrorCode::RangeNotSatisfiable, format!("the output has {len} bytes"))
                    .with_details(json!({ "size": len })));
            }
            RangeAsk::Full => {
                let mut r = match objects {
                    Some(objects) if !head => stream(objects, output, None).await?,
                    _ => {
                        let body = if head { Bytes::new() } else { read(gateway, output).await? };
                        reply::bytes(StatusCode::OK, &output.media_type, body)
                    }
                };
                r.headers_mut().insert(header::CONTENT_LENGTH, value(&len.to_string()));
                r
            }
            RangeAsk::Partial(range) => {
                let mut r = match objects {
                    Some(objects) if !head => stream(objects, output, Some(range)).await?,
                    _ => {
                        let body = if head {
                            Bytes::new()
                        } else {
                            read(gateway, output).await?.slice(range.start as usize..range.end as usize)
                        };
                        reply::bytes(StatusCode::PARTIAL_CONTENT, &output.media_type, body)
                    }
                };
                let h = r.headers_mut();
                h.insert(header::CONTENT_RANGE, value(&format!("bytes {}-{}/{len}", range.start, range.end - 1)));
                h.insert(header::CONTENT_LENGTH, value(&(range.end - range.start).to_string()));
                r
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, value(&etag));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    let disposition = format!("inline; filename=\"{}\"", output.name);
    h.insert(header::CONTENT_DISPOSITION, value(&disposition));
    Ok(resp)
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn storage_error(e: crate::storage::StorageError) -> Error {
    Error::from(crate::store::StoreError::Objects(e))
}

/// A 200 (or 206 for `range`) whose body streams the object from the bucket. The GET is
/// made before answering, so a bucket that is down is a 503; a failure mid-stream ends the
/// body early (the caller sets `Content-Length`, so the client sees the cut).
async fn stream(objects: &crate::storage::Objects, output: &OutputRef, range: Option<ByteRange>) -> Result<Resp> {
    let hash = output.hash;
    let chunks = objects.get_stream(&hash, range.map(|r| r.start..r.end)).await.map_err(storage_error)?;
    let frames = chunks
        .take_while(move |chunk| {
            if let Err(e) = chunk {
                tracing::error!(blob = %hash_hex(&hash), error = %e, "object storage failed during a download; cutting it short");
            }
            std::future::ready(chunk.is_ok())
        })
        .filter_map(|chunk| std::future::ready(chunk.ok().map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)))));
    let status = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let mut r = http::Response::new(StreamBody::new(frames).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, value(&output.media_type));
    Ok(r)
}

pub(super) async fn read(gateway: &Gateway, output: &OutputRef) -> Result<Bytes> {
    let bytes = gateway.blob(&output.hash).await?;
    if bytes.len() as u64 != output.size_bytes {
        return Err(Error::internal(format!(
            "blob {} has {} bytes, expected {}",
            hash_hex(&output.hash),
            bytes.len(),
            output.size_bytes
        )));
    }
    Ok(bytes)
}

/// Add `base64` data to each output of `view` (the view of `job`) that is small enough;
/// larger ones get `"inlined": false`.
pub async fn inline_outputs(gateway: &Gateway, job: &Job, view: &mut JobView) -> Result<()> {
    let mut total = 0u64;
    for (entry, output) in view.outputs.iter_mut().zip(&job.outputs) {
        let fits = output.size_bytes <= INLINE_BYTES_MAX && total + output.size_bytes <= INLINE_TOTAL_BYTES_MAX;
        if fits {
            total += output.size_bytes;
            entry.base64 = Some(BASE64.encode(read(gateway, output).await?));
        }
        entry.inlined = Some(fits);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> RangeAsk {
        RangeAsk::Partial(ByteRange { start, end })
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), r(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), r(90, 100));
        assert_eq!(parse_range("bytes=90-500", 100), r(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), r(90, 100));
        assert_eq!(parse_range("bytes=-500", 100), r(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeAsk::Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAsk::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeAsk::Full);
        assert_eq!(parse_range("bytes=x-1", 100), RangeAsk::Full);
        assert_eq!(parse_range("bytes=0-18446744073709551615", 100), r(0, 100));
    }
}
