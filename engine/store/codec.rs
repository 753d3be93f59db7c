//! Record encoding: one format-version byte, then postcard.
//!
//! postcard is not self-describing: fields are positional and enum variants are indices.
//! So a domain type may only gain enum variants at the end; any other change to a stored
//! type needs a new format version here and a decoder for the old one.
//!
//! A record type may gain one trailing field per format version, when that field's zero
//! value is written by postcard as one `0x00` byte (an empty list, `false`, `None`). Then
//! a version-N record followed by one `0x00` byte is exactly the version-(N+1) encoding
//! of the same record, which is how old records are read ([`decode_upgraded`]).
//! - `jobs`: [`JOBS_VERSION`] = 6 (v2 appended `inputs`, v3 `owner`, v4 `webhook_events`,
//!   v5 `cache_key`; v6 appended nothing: its `owner` is namespaced, `jwt:<sub>` for a
//!   token, where up to v5 it is a JWT's raw `sub`; `store::jobs::decode_job` maps it, see
//!   `domain::owner`). A version that appends no field is read by [`decode_upgraded_to`].
//! - `workflows`, `workflow_versions`: [`WORKFLOWS_VERSION`] = 3 (v2 appended
//!   `keep_previews`, v3 `plugin`).
//! - `blobs`: [`BLOBS_VERSION`] = 2 (v2 appended `remote`).
//! - every other table (`job_events`, `audit`, ...): [`FORMAT_VERSION`] = 1.

use serde::{Serialize, de::DeserializeOwned};

use super::StoreError;

/// The format version written before every record.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// The format version of `jobs` records (see the module doc).
pub(crate) const JOBS_VERSION: u8 = 6;

/// The last `jobs` format version that appended a field (v6 changed a field's meaning).
pub(crate) const JOBS_FIELDS_VERSION: u8 = 5;

/// The first `jobs` format version whose `owner` is a namespaced owner id.
pub(crate) const JOBS_OWNER_NAMESPACED: u8 = 6;

/// The format version of `blobs` records (see the module doc).
pub(crate) const BLOBS_VERSION: u8 = 2;

/// The format version of `workflows` and `workflow_versions` records.
pub(crate) const WORKFLOWS_VERSION: u8 = 3;

/// Encode a record for `table` under `key` (both only used in the error).
pub(crate) fn encode<T: Serialize>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    encode_at(FORMAT_VERSION, table, key, value)
}

/// Encode a record at `version` (`JOBS_VERSION`, `WORKFLOWS_VERSION`).
pub(crate) fn encode_at<T: Serialize>(
    version: u8,
    table: &'static str,
    key: &dyn std::fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![version])
        .map_err(|e| StoreError::Invalid(format!("{table}[{key}]: cannot encode: {e}")))
}

/// Decode a record of a table at format version `latest`, or of any older version from 1
/// on: a version-`v` record gains `latest - v` zero bytes, the zero values of the fields
/// appended since (module doc).
pub(crate) fn decode_upgraded<T: DeserializeOwned>(
    latest: u8,
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_upgraded_to(latest, latest, table, key, bytes)
}

/// [`decode_upgraded`] of a table whose versions after `fields` appended no field: a
/// version-`v` record gains `fields - min(v, fields)` zero bytes. The caller reads the
/// version (the first byte) to interpret fields whose meaning changed.
pub(crate) fn decode_upgraded_to<T: DeserializeOwned>(
    latest: u8,
    fields: u8,
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.first() {
        Some(&v) if (FORMAT_VERSION..latest).contains(&v) => {
            let missing = usize::from(fields.saturating_sub(v));
            let mut upgraded = Vec::with_capacity(bytes.len() + missing);
            upgraded.push(latest);
            upgraded.extend_from_slice(&bytes[1..]);
            upgraded.resize(bytes.len() + missing, 0);
            decode_at(latest, table, key, &upgraded)
        }
        _ => decode_at(latest, table, key, bytes),
    }
}

/// Decode only the leading fields of a record at any version from 1 to `latest`: `T` is a
/// struct of the record type's first fields (postcard is positional, and versions only
/// append fields), so the rest of the record is neither decoded nor copied. Recovery reads
/// what the queue needs of every queued job this way.
pub(crate) fn decode_prefix<'a, T: serde::Deserialize<'a>>(
    latest: u8,
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { table, key: key.to_string(), reason };
    match bytes.split_first() {
        Some((&v, body)) if (FORMAT_VERSION..=latest).contains(&v) => {
            postcard::take_from_bytes::<T>(body).map(|(value, _)| value).map_err(|e| corrupt(e.to_string()))
        }
        Some((&v, _)) => Err(corrupt(format!("unknown format version {v}"))),
        None => Err(corrupt("empty record".to_string())),
    }
}

/// Decode a record read from `table` under `key`; any failure is `Corrupt` naming both.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_at(FORMAT_VERSION, table, key, bytes)
}

fn decode_at<T: DeserializeOwned>(
    expected: u8,
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { table, key: key.to_string(), reason };
    let Some((&version, body)) = bytes.split_first() else {
        return Err(corrupt("empty record".to_string()));
    };
    if version != expected {
        return Err(corrupt(format!("unknown format version {version}")));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let bytes = encode("t", &"k", &(7u32, "x".to_string())).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u32, String) = decode("t", &"k", &bytes).unwrap();
        assert_eq!(back, (7, "x".to_string()));

        for bad in [&[][..], &[9, 1, 2][..], &[FORMAT_VERSION][..]] {
            match decode::<(u32, String)>("t", &"k", bad) {
                Err(StoreError::Corrupt { table: "t", key, .. }) => assert_eq!(key, "k"),
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(decode::<(u32, String)>("t", &"k", &trailing), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn job_records_of_older_versions_read_with_zero_trailing_fields() {
        #[derive(serde::Serialize)]
        struct V1 {
            a: u32,
            b: String,
        }
        #[derive(serde::Serialize)]
        struct V2 {
            a: u32,
            b: String,
            inputs: Vec<(String, u8)>,
        }
        #[derive(serde::Serialize)]
        struct V4 {
            a: u32,
            b: String,
            inputs: Vec<(String, u8)>,
            owner: Option<String>,
            webhook_events: u8,
        }
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct V5 {
            a: u32,
            b: String,
            inputs: Vec<(String, u8)>,
            owner: Option<String>,
            webhook_events: u8,
            cache_key: Option<[u8; 32]>,
        }
        let read = |bytes: &[u8]| decode_upgraded_to::<V5>(JOBS_VERSION, JOBS_FIELDS_VERSION, "jobs", &"k", bytes);
        let zero = |inputs: Vec<(String, u8)>, owner: Option<String>, webhook_events: u8| V5 {
            a: 3,
            b: "x".into(),
            inputs,
            owner,
            webhook_events,
            cache_key: None,
        };
        let v1 = encode("jobs", &"k", &V1 { a: 3, b: "x".into() }).unwrap();
        assert_eq!(v1[0], 1);
        assert_eq!(read(&v1).unwrap(), zero(vec![], None, 0));
        let inputs = vec![("i".to_string(), 7u8)];
        let v2 = encode_at(2, "jobs", &"k", &V2 { a: 3, b: "x".into(), inputs: inputs.clone() }).unwrap();
        assert_eq!(read(&v2).unwrap(), zero(inputs.clone(), None, 0));
        let owner = Some("key:0123456789abcdef".to_string());
        let old = V4 { a: 3, b: "x".into(), inputs: inputs.clone(), owner: owner.clone(), webhook_events: 3 };
        let v4 = encode_at(4, "jobs", &"k", &old).unwrap();
        assert_eq!(read(&v4).unwrap(), zero(inputs.clone(), owner.clone(), 3));
        let now = V5 { cache_key: Some([9; 32]), ..zero(inputs, owner, 3) };
        let v5 = encode_at(5, "jobs", &"k", &now).unwrap();
        assert_eq!(read(&v5).unwrap(), now);
        // v6 appended no field: a v5 record is a v6 record but for its version byte.
        let v6 = encode_at(JOBS_VERSION, "jobs", &"k", &now).unwrap();
        assert_eq!((v6[0], &v6[1..]), (6, &v5[1..]));
        assert_eq!(read(&v6).unwrap(), now);
        // A newer or unknown version, or a v2 record with a byte too many, is corrupt.
        assert!(read(&[9, 0]).is_err());
        assert!(read(&[0, 0]).is_err());
        let mut long = v2.clone();
        long.push(0);
        assert!(read(&long).is_err());
    }

    #[test]
    fn older_workflow_records_read_with_keep_previews_false_and_no_plugin() {
        #[derive(serde::Serialize)]
        struct V1 {
            id: String,
            version: u32,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Now {
            id: String,
            version: u32,
            keep_previews: bool,
            plugin: Option<(u8, String)>,
        }
        let old = encode("workflows", &"w", &V1 { id: "w".into(), version: 4 }).unwrap();
        let read = |bytes: &[u8]| decode_upgraded::<Now>(WORKFLOWS_VERSION, "workflows", &"w", bytes);
        assert_eq!(read(&old).unwrap(), Now { id: "w".into(), version: 4, keep_previews: false, plugin: None });
        let v2 = encode_at(2, "workflows", &"w", &("w", 4u32, true)).unwrap();
        assert_eq!(read(&v2).unwrap(), Now { id: "w".into(), version: 4, keep_previews: true, plugin: None });
        let v3 = encode_at(WORKFLOWS_VERSION, "workflows", &"w", &("w", 4u32, true, Some((7u8, "c")))).unwrap();
        assert_eq!(read(&v3).unwrap().plugin, Some((7, "c".to_string())));
    }
}
