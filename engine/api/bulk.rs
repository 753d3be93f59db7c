//! The bulk pool: CPU-heavy work on request bodies (scanning and parsing a large JSON
//! body) runs on two threads of its own, [`BULK_NICE`] steps below the API's, so a client
//! sending large bodies flat out costs its own requests time, not every other client's
//! latency. Bounded like its callers: one job per request being read.

use crate::error::{Error, Result};

/// How much lower (nice steps) the bulk threads run than the API's.
pub const BULK_NICE: i32 = 10;

/// Threads of the bulk pool.
const BULK_THREADS: usize = 2;

/// The pool: its own runtime (`None` only while dropping).
pub struct Bulk {
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Bulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulk").field("running", &self.runtime.is_some()).finish()
    }
}

impl Bulk {
    /// Start the pool's threads; an error if they cannot be started (the server does not
    /// start without them rather than parse large bodies at the API's priority).
    pub fn start() -> std::io::Result<Bulk> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(BULK_THREADS)
            .thread_name("api-bulk")
            .on_thread_start(|| crate::priority::lower_current_thread(BULK_NICE))
            .build()?;
        Ok(Bulk { runtime: Some(runtime) })
    }

    /// Run `work` on the pool and wait for its result.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let rt = self.runtime.as_ref().ok_or_else(|| Error::internal("the bulk pool is stopped"))?;
        rt.spawn(async move { work() }).await.map_err(Error::internal)
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // Possibly inside another runtime (the server's shutdown, a test): no blocking.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bulk;

    /// Work runs on the pool's own threads, named `api-bulk`, at a lower priority.
    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_on_the_pools_lower_priority_threads() {
        let bulk = Bulk::start().unwrap();
        let (name, nice) = bulk
            .run(|| {
                let name = std::thread::current().name().map(str::to_string);
                let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
                let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
                (name, after.split(' ').nth(16).and_then(|v| v.parse::<i32>().ok()))
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("api-bulk"));
        if cfg!(target_os = "linux") {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let own: i32 = stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(16).unwrap().parse().unwrap();
            // Lower than the caller, unless the caller already runs at the lowest (19).
            let nice = nice.unwrap();
            assert!(
                nice > own || (own == 19 && nice == 19),
                "the bulk thread runs at nice {nice}, the caller at {own}"
            );
        }
    }
}
