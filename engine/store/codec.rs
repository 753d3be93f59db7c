//! Record encoding: one format-version byte, then postcard.
//!
//! postcard is not self-describing: fields are positional and enum variants are indices.
//! So a domain type may only gain enum variants at the end; any other change to a stored
//! type needs a new format version here and a decoder for the old one.

use serde::{Serialize, de::DeserializeOwned};

use super::StoreError;

/// The format version written before every record.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// Encode a record for `table` under `key` (both only used in the error).
pub(crate) fn encode<T: Serialize>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT_VERSION])
        .map_err(|e| StoreError::Invalid(format!("{table}[{key}]: cannot encode: {e}")))
}

/// Decode a record read from `table` under `key`; any failure is `Corrupt` naming both.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { table, key: key.to_string(), reason };
    let Some((&version, body)) = bytes.split_first() else {
        return Err(corrupt("empty record".to_string()));
    };
    if version != FORMAT_VERSION {
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
}
