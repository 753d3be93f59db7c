//! The S3 client of [`Objects`] (object_store's `aws`): builds with the `s3` feature.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::{HashLocks, S3Settings, StorageError, object_key};
use crate::domain::Hash;

/// Time limit of connecting to the bucket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time limit of one request to the bucket (an object is at most a few hundred MB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries of one request inside object_store (5xx, connection errors), and their total time.
const RETRIES_MAX: usize = 2;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

fn failed(key: &str, op: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound { key: key.to_string() },
        e => StorageError::Failed(format!("{op} {key}: {e}")),
    }
}

/// An S3-compatible bucket holding blob bytes, with the locks that order uploads against
/// deletions. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Objects {
    inner: Arc<ObjectsInner>,
}

struct ObjectsInner {
    s3: AmazonS3,
    prefix: String,
    presign_ttl: Option<Duration>,
    locks: HashLocks,
}

impl std::fmt::Debug for ObjectsInner {
    // Not the client's: its configuration holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("bucket", &self.s3.to_string())
            .field("prefix", &self.prefix)
            .field("presign_ttl", &self.presign_ttl)
            .finish_non_exhaustive()
    }
}

impl Objects {
    /// A client for the bucket (no request made yet; see [`Objects::check_reachable`]).
    pub fn new(settings: &S3Settings) -> Result<Objects, StorageError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key.0)
            .with_secret_access_key(&settings.secret_key.0)
            .with_retry(RetryConfig { max_retries: RETRIES_MAX, retry_timeout: RETRY_TIMEOUT, ..Default::default() })
            .with_client_options(
                ClientOptions::new().with_connect_timeout(CONNECT_TIMEOUT).with_timeout(REQUEST_TIMEOUT),
            );
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                // Self-hosted S3 servers (MinIO, Garage, s3s) want path-style URLs.
                .with_virtual_hosted_style_request(false);
        }
        let s3 = builder.build().map_err(|e| StorageError::Failed(format!("S3 client: {e}")))?;
        Ok(Objects {
            inner: Arc::new(ObjectsInner {
                s3,
                prefix: settings.prefix.clone(),
                presign_ttl: settings.presign_ttl,
                locks: HashLocks::default(),
            }),
        })
    }

    /// The locks ordering uploads against deletions.
    pub fn locks(&self) -> &HashLocks {
        &self.inner.locks
    }

    /// The object key of a blob.
    pub fn key(&self, hash: &Hash) -> String {
        object_key(&self.inner.prefix, hash)
    }

    fn path(&self, hash: &Hash) -> ObjectPath {
        ObjectPath::from(self.key(hash))
    }

    /// Whether presigned redirects are configured.
    pub fn presigns(&self) -> bool {
        self.inner.presign_ttl.is_some()
    }

    /// One request that proves the bucket exists and the credentials work (a listing of at
    /// most one key under the prefix).
    pub async fn check_reachable(&self) -> Result<(), StorageError> {
        let prefix = ObjectPath::from(format!("{}blobs", self.inner.prefix));
        let mut list = self.inner.s3.list(Some(&prefix));
        match list.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(StorageError::Failed(format!("bucket check: {e}"))),
        }
    }

    /// Store a blob's bytes (idempotent: the key is the content's hash).
    pub async fn put(&self, hash: &Hash, bytes: Bytes) -> Result<(), StorageError> {
        let key = self.key(hash);
        self.inner.s3.put(&self.path(hash), PutPayload::from(bytes)).await.map_err(|e| failed(&key, "PUT", e))?;
        Ok(())
    }

    /// A blob's bytes, whole, checked against the hash.
    pub async fn get(&self, hash: &Hash) -> Result<Bytes, StorageError> {
        let key = self.key(hash);
        let got = self.inner.s3.get(&self.path(hash)).await.map_err(|e| failed(&key, "GET", e))?;
        let bytes = got.bytes().await.map_err(|e| failed(&key, "GET", e))?;
        if blake3::hash(&bytes).as_bytes() != hash {
            return Err(StorageError::Failed(format!("GET {key}: the content does not match its hash")));
        }
        Ok(bytes)
    }

    /// A blob's bytes (or `range` of them) as a stream. The request is made (and fails)
    /// here; a failure later ends the stream with an error.
    pub async fn get_stream(
        &self,
        hash: &Hash,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let key = self.key(hash);
        let opts = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let got = self.inner.s3.get_opts(&self.path(hash), opts).await.map_err(|e| failed(&key, "GET", e))?;
        Ok(got.into_stream().map_err(move |e| failed(&key, "GET", e)).boxed())
    }

    /// A presigned GET URL of a blob, when `S3_PRESIGN_TTL_SECONDS` is set.
    pub async fn presigned_get(&self, hash: &Hash) -> Result<Option<String>, StorageError> {
        let Some(ttl) = self.inner.presign_ttl else { return Ok(None) };
        let key = self.key(hash);
        let url = self
            .inner
            .s3
            .signed_url(http::Method::GET, &self.path(hash), ttl)
            .await
            .map_err(|e| failed(&key, "presign", e))?;
        Ok(Some(url.to_string()))
    }

    /// Whether a blob's object exists.
    pub async fn exists(&self, hash: &Hash) -> Result<bool, StorageError> {
        let key = self.key(hash);
        match self.inner.s3.head(&self.path(hash)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(failed(&key, "HEAD", e)),
        }
    }

    /// The hashes of every object under `<prefix>blobs/` (keys that are not a hash are
    /// left out).
    pub async fn list(&self) -> Result<Vec<Hash>, StorageError> {
        let prefix = ObjectPath::from(format!("{}blobs", self.inner.prefix));
        let mut list = self.inner.s3.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = list.next().await {
            let meta = meta.map_err(|e| StorageError::Failed(format!("list: {e}")))?;
            let name = meta.location.filename().unwrap_or("");
            if let Ok(hash) = blake3::Hash::from_hex(name) {
                out.push(*hash.as_bytes());
            }
        }
        Ok(out)
    }

    /// Delete a blob's object (a missing object is fine).
    pub async fn delete(&self, hash: &Hash) -> Result<(), StorageError> {
        let key = self.key(hash);
        match self.inner.s3.delete(&self.path(hash)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(&key, "DELETE", e)),
        }
    }
}
