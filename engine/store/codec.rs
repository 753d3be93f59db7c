//! Record encoding: one format-version byte, then postcard.
//!
//! postcard is not self-describing: fields are positional and enum variants are indices.
//! So a domain type may only gain enum variants at the end; any other change to a stored
//! type needs a new format version here and a decoder for the old one.
//!
//! Records of `jobs` and of `workflows`/`workflow_versions` are at [`V2`]: each type gained
//! one trailing field whose zero value postcard writes as one `0x00` byte (jobs: the empty
//! `inputs` list; workflows: `keep_previews: false`). So a version-1 record followed by one
//! `0x00` byte is exactly the version-2 encoding of the same record; that is how old
//! records are read ([`decode_v2`]). Every other table is still at version 1.

use serde::{Serialize, de::DeserializeOwned};

use super::StoreError;

/// The format version written before every record.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// The format version of `jobs` and workflow records (see the module doc).
pub(crate) const V2: u8 = 2;

/// Encode a record for `table` under `key` (both only used in the error).
pub(crate) fn encode<T: Serialize>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    encode_at(FORMAT_VERSION, table, key, value)
}

/// Encode a record of a table at version 2 (`jobs`, `workflows`, `workflow_versions`).
pub(crate) fn encode_v2<T: Serialize>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    encode_at(V2, table, key, value)
}

fn encode_at<T: Serialize>(
    version: u8,
    table: &'static str,
    key: &dyn std::fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![version])
        .map_err(|e| StoreError::Invalid(format!("{table}[{key}]: cannot encode: {e}")))
}

/// Decode a `jobs` record of version 2, or of version 1 (read as having no inputs).
pub(crate) fn decode_v2<T: DeserializeOwned>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.first() {
        Some(&FORMAT_VERSION) => {
            // Version 1 plus the zero value of the trailing field is version 2 (module doc).
            let mut upgraded = Vec::with_capacity(bytes.len() + 1);
            upgraded.push(V2);
            upgraded.extend_from_slice(&bytes[1..]);
            upgraded.push(0);
            decode_at(V2, table, key, &upgraded)
        }
        _ => decode_at(V2, table, key, bytes),
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
    fn a_version_1_job_record_reads_with_empty_trailing_list() {
        #[derive(serde::Serialize)]
        struct V1 {
            a: u32,
            b: String,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct V2 {
            a: u32,
            b: String,
            inputs: Vec<(String, u8)>,
        }
        let old = encode("jobs", &"k", &V1 { a: 3, b: "x".into() }).unwrap();
        assert_eq!(old[0], 1);
        let back: V2 = decode_v2("jobs", &"k", &old).unwrap();
        assert_eq!(back, V2 { a: 3, b: "x".into(), inputs: vec![] });
        let new = encode_v2("jobs", &"k", &(3u32, "x", vec![("i".to_string(), 7u8)])).unwrap();
        assert_eq!(new[0], V2);
        let back: V2 = decode_v2("jobs", &"k", &new).unwrap();
        assert_eq!(back.inputs, vec![("i".to_string(), 7)]);
        assert!(decode_v2::<V2>("jobs", &"k", &[9, 0]).is_err());
    }

    #[test]
    fn a_version_1_workflow_record_reads_with_keep_previews_false() {
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
        }
        let old = encode("workflows", &"w", &V1 { id: "w".into(), version: 4 }).unwrap();
        let back: Now = decode_v2("workflows", &"w", &old).unwrap();
        assert_eq!(back, Now { id: "w".into(), version: 4, keep_previews: false });
        let new = encode_v2("workflows", &"w", &("w", 4u32, true)).unwrap();
        assert!(decode_v2::<Now>("workflows", &"w", &new).unwrap().keep_previews);
    }
}
