//! Thread priority: the threads that run work a single client can make arbitrarily heavy
//! (plugin calls, scans of large request bodies) run a few nice steps below the rest of
//! the process, so on a busy machine the kernel gives the API's threads the CPU first and
//! such a client costs its own requests time, not everybody's latency.

/// Lower the calling thread's priority by `steps` nice steps (Linux: a thread id is a
/// `PRIO_PROCESS` target of its own; elsewhere nothing happens). Best effort: a failure
/// only costs the neighbours some latency under load, so it is logged, not fatal.
pub fn lower_current_thread(steps: i32) {
    #[cfg(target_os = "linux")]
    {
        let tid = Some(rustix::thread::gettid());
        let lowered = rustix::process::getpriority_process(tid)
            .and_then(|nice| rustix::process::setpriority_process(tid, (nice + steps).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "cannot lower a thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = steps;
}
