//! Blob backends: where the *bytes* of content-addressed blobs live.
//!
//! `STORAGE_PROVIDER=local` (the default) keeps them in redb, chunked, inside the store;
//! nothing here is used then. `STORAGE_PROVIDER=s3` keeps them as objects of an
//! S3-compatible bucket ([`Objects`], through the `object_store` crate), named
//! `<S3_PREFIX>blobs/<blake3 hex>`; redb still holds every blob's metadata and reference
//! count, and a flag saying its bytes are remote.
//!
//! Ordering (the argument is in ARCHITECTURE.md, "Invariants"):
//! - write: the object is PUT before the redb commit that references it, under the
//!   blob's [`HashLocks`] stripe, held until that commit returned;
//! - delete: the commit that drops a blob's last reference records it as *to delete*;
//!   [`reaper`] deletes the object after that commit, under the same stripe, only if the
//!   entry is still there and no blob row came back; the commit that re-creates the row
//!   removes the entry.
//!
//! Only this module knows object_store (`s3.rs`, in builds with the `s3` feature; without
//! it [`Objects`] is a type without values, and `STORAGE_PROVIDER=s3` is refused by
//! `config`); the store, the service and the API see [`Objects`], [`StorageError`] and a
//! stream of `Bytes`.

pub mod reaper;

#[cfg(not(feature = "s3"))]
mod absent;
#[cfg(feature = "s3")]
mod s3;

use std::sync::Arc;
use std::time::Duration;

#[cfg(not(feature = "s3"))]
pub use absent::Objects;
#[cfg(feature = "s3")]
pub use s3::Objects;

use crate::config::Secret;
use crate::domain::{Hash, hash_hex};

/// How many lock stripes guard uploads against deletions (bounded; a stripe covers
/// every hash whose first byte selects it).
const LOCK_STRIPES: usize = 256;
/// Whether this build can keep blobs in a bucket (the `s3` feature).
pub const S3_BUILT: bool = cfg!(feature = "s3");

/// What a build without the `s3` feature answers when asked for a bucket.
pub const NOT_BUILT: &str = "this build has no S3 storage: build it with `--features s3` (the container image has it)";

/// Where blob bytes are kept (`STORAGE_PROVIDER`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    /// In the redb file, chunked (default).
    Local,
    /// In an S3-compatible bucket.
    S3(S3Settings),
}

impl Provider {
    /// The name reported by `/capabilities` (`storageProvider`).
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::S3(_) => "s3",
        }
    }
}

/// The bucket settings (`S3_*`), validated by `config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    /// `S3_ENDPOINT`: base URL of the S3 API (unset: AWS for `S3_REGION`).
    pub endpoint: Option<String>,
    /// `S3_BUCKET`.
    pub bucket: String,
    /// `S3_ACCESS_KEY`.
    pub access_key: Secret,
    /// `S3_SECRET_KEY`.
    pub secret_key: Secret,
    /// `S3_REGION`.
    pub region: String,
    /// `S3_PREFIX`: prepended to every key; empty or ending in `/`.
    pub prefix: String,
    /// `S3_PRESIGN_TTL_SECONDS`: downloads redirect to presigned URLs valid this long.
    pub presign_ttl: Option<Duration>,
}

/// A failure of the bucket.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object is not there.
    #[error("object {key} not found")]
    NotFound {
        /// Its key.
        key: String,
    },
    /// Anything else: unreachable, refused, timed out, bad credentials.
    #[error("object storage: {0}")]
    Failed(String),
}

/// The object key of a blob: `<prefix>blobs/<blake3 hex>`.
pub fn object_key(prefix: &str, hash: &Hash) -> String {
    format!("{prefix}blobs/{}", hash_hex(hash))
}

/// Striped async locks by blob hash: the uploader holds a blob's stripe from before its
/// PUT until the commit that references it returned; the reaper holds it from its check
/// until the DELETE and the commit that clears the entry returned.
#[derive(Debug)]
pub struct HashLocks {
    stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
}

impl Default for HashLocks {
    fn default() -> Self {
        HashLocks { stripes: (0..LOCK_STRIPES).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect() }
    }
}

/// Stripes held by one uploader or reaper step; released on drop.
#[derive(Debug)]
pub struct Held {
    _guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

impl HashLocks {
    /// The stripe index of a hash.
    pub fn stripe(hash: &Hash) -> usize {
        usize::from(hash[0]) % LOCK_STRIPES
    }

    /// Lock the stripes of all `hashes`, in ascending order (so two holders of several
    /// stripes cannot deadlock), each once.
    pub async fn lock(&self, hashes: impl IntoIterator<Item = Hash>) -> Held {
        let mut idx: Vec<usize> = hashes.into_iter().map(|h| Self::stripe(&h)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].clone().lock_owned().await);
        }
        Held { _guards: guards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_prefix_and_the_hex_hash() {
        let hash = *blake3::hash(b"abc").as_bytes();
        let hex = blake3::hash(b"abc").to_hex().to_string();
        assert_eq!(object_key("", &hash), format!("blobs/{hex}"));
        assert_eq!(object_key("gw/prod/", &hash), format!("gw/prod/blobs/{hex}"));
    }

    #[tokio::test]
    async fn stripes_are_taken_once_each_in_order() {
        let locks = HashLocks::default();
        let (a, b) = ([7u8; 32], [7u8; 32]);
        let mut c = [0u8; 32];
        c[0] = 3;
        // The same stripe twice in one call does not deadlock.
        let held = locks.lock([a, b, c]).await;
        assert!(locks.stripes[7].try_lock().is_err() && locks.stripes[3].try_lock().is_err());
        assert!(locks.stripes[4].try_lock().is_ok());
        drop(held);
        assert!(locks.stripes[7].try_lock().is_ok());
    }
}
