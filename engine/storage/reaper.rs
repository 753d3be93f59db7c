//! The object reaper: deletes the objects of remote blobs whose last reference went.
//!
//! The store records such a blob in `blob_deletes` in the commit that drops its row. For
//! each entry, under the hash's stripe lock: if the entry is still there (and so no row
//! came back: the commit that re-creates a row clears the entry, under the same lock),
//! DELETE the object, then commit the entry's removal. A crash between the two repeats the
//! DELETE at the next start, which is harmless; a bucket that fails leaves the entry for
//! the next pass.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Objects;
use crate::store::Store;

/// Entries read per pass step.
const BATCH: usize = 256;
/// Wait before retrying after the bucket or the store failed.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Look again this often even without a wake-up (entries left by a failed pass).
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// Delete every object whose deletion is pending now; how many were deleted. Stops at the
/// first failure (the rest waits for the next pass).
pub async fn reap_once(store: &Store, objects: &Objects) -> Result<usize, String> {
    let mut n_deleted = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let due = store.pending_deletes(BATCH).map_err(|e| e.to_string())?;
        // Every entry handled is gone; one still listed after its turn (re-recorded since)
        // waits for the next pass, so a pass always ends.
        let due: Vec<_> = due.into_iter().filter(|(h, _)| seen.insert(*h)).collect();
        if due.is_empty() {
            return Ok(n_deleted);
        }
        for (hash, _since_ms) in due {
            let _held = objects.locks().lock([hash]).await;
            if !store.delete_due(&hash).map_err(|e| e.to_string())? {
                continue;
            }
            objects.delete(&hash).await.map_err(|e| e.to_string())?;
            store.finish_delete(hash).await.map_err(|e| e.to_string())?;
            n_deleted += 1;
        }
    }
}

/// The reaper task: a pass at start, then after each commit that recorded a deletion (and
/// every `RESCAN_EVERY`), until `shutdown`.
pub async fn run(store: Store, objects: Objects, shutdown: CancellationToken) {
    loop {
        let wait = match reap_once(&store, &objects).await {
            Ok(0) => RESCAN_EVERY,
            Ok(n) => {
                tracing::info!(objects = n, "deleted the objects of unreferenced blobs");
                RESCAN_EVERY
            }
            Err(e) => {
                tracing::warn!(error = %e, "deleting unreferenced objects failed; trying again later");
                RETRY_AFTER
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = store.deletes_changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
