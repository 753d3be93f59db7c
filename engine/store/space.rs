//! Free space of the database's file system, cached so the submit path reads atomics.
//!
//! What a new write can use is the file system's free bytes (`statvfs`, as an unprivileged
//! writer sees them) plus the pages redb freed inside its file, which it reuses before it
//! grows the file. The second part is measured, not guessed: the file's bytes on disk
//! (`st_blocks`; a grown redb file is sparse, and sparse pages need new blocks) minus the
//! pages redb has allocated (`WriteTransaction::stats`, a walk over every page, so only
//! taken while space is low: see [`Store::measure_space`]). Blob bytes stored since the
//! last measurement are counted as taken from that reusable part, so a stale measurement
//! errs towards "full".
//!
//! [`Store::measure_space`]: super::Store::measure_space

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Unknown (not measured yet).
const UNKNOWN: u64 = u64::MAX;

/// After a commit, the readings are taken again when they are older than this, or when
/// the commit stored at least [`REFRESH_PAYLOAD_BYTES`] of blobs or plugins: a submit's
/// commit adds a few KiB, so readings up to this old err by far less than the free-space
/// margin (`DISK_FREE_MIN_BYTES`), and two system calls per commit are saved.
const REFRESH_EVERY: Duration = Duration::from_millis(10);
/// See [`REFRESH_EVERY`].
pub(crate) const REFRESH_PAYLOAD_BYTES: usize = 64 * 1024;

/// The cached readings of one database file.
#[derive(Debug)]
pub(crate) struct Space {
    /// The database file (its directory is what `statvfs` looks at).
    file: PathBuf,
    /// Free bytes of the file system for an unprivileged writer.
    fs_free: AtomicU64,
    /// Bytes of the file that are on disk (blocks), at the last refresh.
    file_on_disk: AtomicU64,
    /// Bytes of pages redb had allocated at the last measurement (UNKNOWN: never).
    db_allocated: AtomicU64,
    /// The stored blob bytes (`meta`) at that measurement.
    blob_bytes_at_measure: AtomicU64,
    /// When the readings were taken: nanoseconds since `born`.
    refreshed_ns: AtomicU64,
    born: Instant,
}

/// What the store reports about the space it may still write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Free bytes of the database's file system.
    pub fs_free_bytes: u64,
    /// Bytes redb freed inside its file (reusable without growing it), as last measured
    /// and minus blob bytes stored since; 0 when never measured.
    pub db_reusable_bytes: u64,
}

impl DiskSpace {
    /// Everything a new write can use.
    pub fn free_bytes(&self) -> u64 {
        self.fs_free_bytes.saturating_add(self.db_reusable_bytes)
    }
}

/// The reusable bytes inside the file: what is on disk minus what redb allocated, minus
/// the blob bytes stored since the measurement (they went into those pages first, or
/// into new ones the file system reading already shows). Pure; 0 when unknown.
pub(crate) fn reusable(file_on_disk: u64, db_allocated: Option<u64>, blob_bytes_since: u64) -> u64 {
    match db_allocated {
        None => 0,
        Some(allocated) => file_on_disk.saturating_sub(allocated).saturating_sub(blob_bytes_since),
    }
}

impl Space {
    /// Readings of the database at `file`, taken now.
    pub(crate) fn new(file: &Path) -> Space {
        let space = Space {
            file: file.to_path_buf(),
            fs_free: AtomicU64::new(UNKNOWN),
            file_on_disk: AtomicU64::new(0),
            db_allocated: AtomicU64::new(UNKNOWN),
            blob_bytes_at_measure: AtomicU64::new(0),
            refreshed_ns: AtomicU64::new(0),
            born: Instant::now(),
        };
        space.refresh();
        space
    }

    /// The database file.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// Read the file system's free bytes and the file's size on disk again (two system
    /// calls). A failed reading keeps the previous one (and is logged).
    pub(crate) fn refresh(&self) {
        self.refreshed_ns.store(self.born.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let dir = self.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        match rustix::fs::statvfs(dir) {
            Ok(st) => {
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                self.fs_free.store(free, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "cannot read the database's free space"),
        }
        if let Ok(meta) = std::fs::metadata(&self.file) {
            use std::os::unix::fs::MetadataExt;
            self.file_on_disk.store(meta.blocks().saturating_mul(512), Ordering::Relaxed);
        }
    }

    /// After a commit that stored `payload_bytes` of blobs or plugins: [`Space::refresh`]
    /// when that is much or the readings are older than [`REFRESH_EVERY`].
    pub(crate) fn refresh_after_commit(&self, payload_bytes: usize) {
        let age_ns = (self.born.elapsed().as_nanos() as u64).saturating_sub(self.refreshed_ns.load(Ordering::Relaxed));
        if payload_bytes >= REFRESH_PAYLOAD_BYTES || age_ns >= REFRESH_EVERY.as_nanos() as u64 {
            self.refresh();
        }
    }

    /// Whether redb's allocated pages were measured (see [`Space::get`]).
    pub(crate) fn measured_once(&self) -> bool {
        self.db_allocated.load(Ordering::Relaxed) != UNKNOWN
    }

    /// Record a measurement of redb's allocated pages, taken when `blob_bytes` were stored.
    pub(crate) fn measured(&self, db_allocated_bytes: u64, blob_bytes: u64) {
        self.blob_bytes_at_measure.store(blob_bytes, Ordering::Relaxed);
        self.db_allocated.store(db_allocated_bytes, Ordering::Relaxed);
    }

    /// The current readings, with `blob_bytes` stored now.
    pub(crate) fn get(&self, blob_bytes: u64) -> DiskSpace {
        let allocated = self.db_allocated.load(Ordering::Relaxed);
        let since = blob_bytes.saturating_sub(self.blob_bytes_at_measure.load(Ordering::Relaxed));
        let fs_free = self.fs_free.load(Ordering::Relaxed);
        DiskSpace {
            // Never read (statvfs refused from the start): report nothing missing rather
            // than refuse every job on a platform that cannot tell.
            fs_free_bytes: fs_free,
            db_reusable_bytes: reusable(
                self.file_on_disk.load(Ordering::Relaxed),
                (allocated != UNKNOWN).then_some(allocated),
                since,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reusable_space_is_what_is_on_disk_beyond_the_allocated_pages() {
        assert_eq!(reusable(10 << 20, None, 0), 0, "unknown counts as nothing");
        assert_eq!(reusable(10 << 20, Some(4 << 20), 0), 6 << 20);
        // Blobs stored since the measurement used those pages first.
        assert_eq!(reusable(10 << 20, Some(4 << 20), 1 << 20), 5 << 20);
        assert_eq!(reusable(10 << 20, Some(4 << 20), 100 << 20), 0);
        // A sparse file (grown, not written) has less on disk than allocated: nothing.
        assert_eq!(reusable(1 << 20, Some(4 << 20), 0), 0);
        let d = DiskSpace { fs_free_bytes: 3, db_reusable_bytes: 4 };
        assert_eq!(d.free_bytes(), 7);
        assert_eq!(DiskSpace { fs_free_bytes: u64::MAX, db_reusable_bytes: 4 }.free_bytes(), u64::MAX);
    }

    #[test]
    fn a_fresh_reading_sees_the_file_system_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.redb");
        std::fs::write(&file, vec![1u8; 64 * 1024]).unwrap();
        let space = Space::new(&file);
        let d = space.get(0);
        assert!(d.fs_free_bytes > 0 && d.fs_free_bytes != UNKNOWN, "{d:?}");
        assert_eq!(d.db_reusable_bytes, 0, "not measured yet");
        space.measured(16 * 1024, 0);
        assert_eq!(space.get(0).db_reusable_bytes, 48 * 1024);
        assert_eq!(space.get(8 * 1024).db_reusable_bytes, 40 * 1024);
    }
}
