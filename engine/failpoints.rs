//! Crash points at the dangerous windows of a job's life, for the crash tests.
//!
//! Built only with the cargo feature `failpoints` (the test command enables it; release
//! builds have no crash points and refuse `FAILPOINTS`). `FAILPOINTS` arms them as
//! `name=action;name=action`, with the actions of [fail-rs](https://docs.rs/fail): `return`
//! crashes the process at that point (abort: no destructor, no flush, like a `kill -9`),
//! `1*return` only the first time, `50%return` half of the times, `sleep(ms)` pauses there,
//! `off` disarms it.

/// After ComfyUI accepted `POST /prompt`, before the runner moves on to wait for it.
pub const AFTER_PROMPT: &str = "runner-after-prompt";
/// After every output was downloaded (and post-processed), before the success with its
/// blobs is committed.
pub const BEFORE_SUCCESS_COMMIT: &str = "runner-before-success-commit";
/// After a webhook receiver answered 2xx, before the attempt is recorded as delivered.
pub const WEBHOOK_AFTER_2XX: &str = "webhook-after-2xx";
/// After a submitted job was committed, before the client is answered.
pub const AFTER_SUBMIT_COMMIT: &str = "api-after-submit-commit";

/// Every crash point, so a typo in `FAILPOINTS` is a configuration error, not a test that
/// silently crashes nowhere.
pub const ALL: [&str; 4] = [AFTER_PROMPT, BEFORE_SUCCESS_COMMIT, WEBHOOK_AFTER_2XX, AFTER_SUBMIT_COMMIT];

/// Arm the crash points of a `FAILPOINTS` value.
pub fn configure(spec: &str) -> Result<(), String> {
    let mut points = Vec::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, actions) = part.split_once('=').ok_or_else(|| format!("{part:?} is not name=action"))?;
        let name = name.trim();
        if !ALL.contains(&name) {
            return Err(format!("{name:?} is not a crash point (known: {})", ALL.join(", ")));
        }
        points.push((name, actions.trim()));
    }
    if points.is_empty() {
        return Ok(());
    }
    arm(&points)
}

#[cfg(feature = "failpoints")]
fn arm(points: &[(&str, &str)]) -> Result<(), String> {
    for (name, actions) in points {
        fail::cfg(*name, actions).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn arm(_: &[(&str, &str)]) -> Result<(), String> {
    Err("this build has no crash points (build with --features failpoints)".into())
}

/// The crash point `name`: aborts the process when armed with `return`.
#[inline]
pub fn crash_point(name: &'static str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| {
        eprintln!("failpoint {name}: crashing");
        std::process::abort()
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_bad_syntax_are_refused() {
        assert!(configure("").is_ok());
        assert!(configure(" ; ").is_ok());
        assert!(configure("runner-after-promt=return").unwrap_err().contains("not a crash point"));
        assert!(configure("runner-after-prompt").unwrap_err().contains("name=action"));
    }
}
