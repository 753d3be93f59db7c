//! The API's wire types: one serde type for every JSON body the gateway takes or gives
//! (camelCase, as the README's "Use it" shows them), each describing itself
//! ([`schemars::JsonSchema`]) so the OpenAPI document's schemas are generated from the
//! very types that parse and answer (`api::openapi`).
//!
//! No HTTP here: statuses, headers and routes are the API layer's; these are the bodies,
//! and webhooks send the same [`job::JobView`] that `GET /jobs/{id}` answers.
//!
//! - [`request`]: request bodies (`POST /jobs`, workflow definitions, plugins, import);
//!   unknown fields are refused where the API promises it.
//! - [`job`]: jobs, outputs, event-log entries, webhook deliveries.
//! - [`system`]: errors, health and probes, backends, capabilities, workflows, audit.

pub mod job;
pub mod request;
pub mod system;

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::{Error, Result};

/// A link to this gateway (`pollUrl`, an output's `url`): absolute under `PUBLIC_URL`,
/// else a path from the gateway's root (`domain::Links` makes them all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Link(pub String);

impl JsonSchema for Link {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Link".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A link to this gateway: absolute under PUBLIC_URL when the gateway has one set \
                (the URL of `servers`), else a path from the gateway's root",
        })
    }
}

/// A time on the wire: RFC 3339, UTC, milliseconds, `Z` (`2026-01-02T03:04:05.678Z`);
/// milliseconds since the Unix epoch inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub u64);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Time, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        parse_rfc3339(&text).map(Time).ok_or_else(|| serde::de::Error::custom("must be an RFC 3339 date-time"))
    }
}

impl JsonSchema for Time {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Time".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date-time"})
    }
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

/// A wire type as JSON (they all serialize: no maps with non-string keys, no failing
/// `Serialize` impls).
pub fn to_value<T: Serialize>(body: &T) -> Value {
    serde_json::to_value(body).expect("a wire type serializes")
}

/// Deserialize a wire type from parsed JSON; a mismatch is `VALIDATION_ERROR` naming the
/// JSON pointer of the offending field (`/inputs`, `/plugin/wasm`, `/callbackEvents/2`).
///
/// # Errors
/// `VALIDATION_ERROR` with `details: [{path, message}]`.
pub fn parse<T: DeserializeOwned>(value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let pointer = pointer(e.path());
        let (pointer, message) = explain(pointer, &e.inner().to_string());
        Error::validation(&pointer, message)
    })
}

/// The JSON pointer of a serde path (`plugin.wasm` -> `/plugin/wasm`, `a[2]` -> `/a/2`).
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => out.push_str(&escape(key)),
            Segment::Unknown => out.push('?'),
        }
    }
    if out.is_empty() { "/".to_string() } else { out }
}

/// A name as one segment of a JSON pointer (RFC 6901: `~` is `~0`, `/` is `~1`).
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// serde's messages in the API's words: a missing or unknown field names the field in
/// the pointer (`/workflowId: is required`, `/extra: unknown field; expected one of ...`).
fn explain(pointer: String, message: &str) -> (String, String) {
    let field = |rest: &str| escape(rest.split('`').next().unwrap_or_default());
    let child = |name: &str| if pointer == "/" { format!("/{name}") } else { format!("{pointer}/{name}") };
    if let Some(rest) = message.strip_prefix("missing field `") {
        return (child(&field(rest)), "is required".to_string());
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = field(rest);
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        let at = if pointer.ends_with(&format!("/{name}")) { pointer } else { child(&name) };
        return (at, format!("unknown field; expected {}", expected.replace('`', "")));
    }
    (pointer, message.to_string())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::{parse, rfc3339};

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        workflow_id: String,
        #[serde(default)]
        #[allow(dead_code)]
        inner: Option<Inner>,
        #[serde(default)]
        #[allow(dead_code)]
        list: Vec<u8>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        flag: bool,
    }

    fn refusal(v: serde_json::Value) -> (String, String) {
        let e = parse::<Outer>(&v).expect_err("refused");
        let d = e.details.expect("details");
        (d[0]["path"].as_str().unwrap().to_string(), d[0]["message"].as_str().unwrap().to_string())
    }

    #[test]
    fn errors_name_the_json_pointer_of_the_field() {
        assert_eq!(refusal(json!({})).0, "/workflowId");
        assert_eq!(refusal(json!({})).1, "is required");
        assert_eq!(refusal(json!({"workflowId": 1})).0, "/workflowId");
        assert!(refusal(json!({"workflowId": 1})).1.contains("expected a string"));
        let (at, message) = refusal(json!({"workflowId": "w", "extra": 1}));
        assert_eq!(at, "/extra");
        assert!(message.starts_with("unknown field; expected one of workflowId"), "{message}");
        assert_eq!(refusal(json!({"workflowId": "w", "inner": {}})).0, "/inner/flag");
        assert_eq!(refusal(json!({"workflowId": "w", "inner": {"flag": true, "x/y": 1}})).0, "/inner/x~1y");
        assert_eq!(refusal(json!({"workflowId": "w", "list": [1, 2, 300]})).0, "/list/2");
        assert_eq!(refusal(json!("text")).0, "/");
        assert!(parse::<Outer>(&json!({"workflowId": "w", "inner": {"flag": false}})).is_ok());
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
