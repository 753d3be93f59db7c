//! [`Objects`] in a build without the `s3` feature: a type without values. `config`
//! refuses `STORAGE_PROVIDER=s3` in such a build, so no store, scheduler or route ever
//! holds one; [`Objects::new`] says why (for `check --objects`).

use std::ops::Range;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::{HashLocks, NOT_BUILT, S3Settings, StorageError};
use crate::domain::Hash;

/// A bucket: none can exist in this build (its field has no values; being private, it
/// keeps the rest of the crate compiling as for the `s3` build, without warnings about
/// code after a use of `Objects`).
#[derive(Clone, Debug)]
pub struct Objects {
    never: Never,
}

#[derive(Clone, Copy, Debug)]
enum Never {}

impl Objects {
    /// Always [`NOT_BUILT`].
    pub fn new(_settings: &S3Settings) -> Result<Objects, StorageError> {
        Err(StorageError::Failed(NOT_BUILT.to_owned()))
    }

    pub fn locks(&self) -> &HashLocks {
        match self.never {}
    }

    pub fn key(&self, _hash: &Hash) -> String {
        match self.never {}
    }

    pub fn presigns(&self) -> bool {
        match self.never {}
    }

    pub async fn check_reachable(&self) -> Result<(), StorageError> {
        match self.never {}
    }

    pub async fn put(&self, _hash: &Hash, _bytes: Bytes) -> Result<(), StorageError> {
        match self.never {}
    }

    pub async fn get(&self, _hash: &Hash) -> Result<Bytes, StorageError> {
        match self.never {}
    }

    pub async fn get_stream(
        &self,
        _hash: &Hash,
        _range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        match self.never {}
    }

    pub async fn presigned_get(&self, _hash: &Hash) -> Result<Option<String>, StorageError> {
        match self.never {}
    }

    pub async fn exists(&self, _hash: &Hash) -> Result<bool, StorageError> {
        match self.never {}
    }

    pub async fn list(&self) -> Result<Vec<Hash>, StorageError> {
        match self.never {}
    }

    pub async fn delete(&self, _hash: &Hash) -> Result<(), StorageError> {
        match self.never {}
    }
}
