//! Crash points at the dangerous windows of a job's life, and an injected disk error, for
//! the crash tests.
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
/// With object storage: after a blob's object was uploaded, before the commit that
/// references it (a crash here leaves at most an orphan object).
pub const OBJECT_UPLOADED: &str = "store-object-uploaded";

/// Not a crash: the store's next commit fails as a disk error would (`return`), which must
/// stop the store and then the process (fail-stop), for a restart to recover.
pub const STORE_COMMIT_FAILS: &str = "store-commit-fails";

/// Every point, so a typo in `FAILPOINTS` is a configuration error, not a test that
/// silently crashes nowhere.
pub const ALL: [&str; 6] =
    [AFTER_PROMPT, BEFORE_SUCCESS_COMMIT, WEBHOOK_AFTER_2XX, AFTER_SUBMIT_COMMIT, OBJECT_UPLOADED, STORE_COMMIT_FAILS];

/// The points of a `FAILPOINTS` value, checked, not yet armed.
#[derive(Debug)]
pub struct Armed(#[cfg_attr(not(feature = "failpoints"), allow(dead_code))] Vec<(String, String)>);

/// Check a `FAILPOINTS` value: known names, `name=action` syntax.
pub fn parse(spec: &str) -> Result<Armed, String> {
    let mut points = Vec::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, actions) = part.split_once('=').ok_or_else(|| format!("{part:?} is not name=action"))?;
        let name = name.trim();
        if !ALL.contains(&name) {
            return Err(format!("{name:?} is not a crash point (known: {})", ALL.join(", ")));
        }
        points.push((name.to_string(), actions.trim().to_string()));
    }
    if !points.is_empty() && !cfg!(feature = "failpoints") {
        return Err("this build has no crash points (build with --features failpoints)".into());
    }
    Ok(Armed(points))
}

impl Armed {
    /// Arm them (the gateway does so once started, so they never fire during recovery).
    pub fn arm(self) -> Result<(), String> {
        #[cfg(feature = "failpoints")]
        for (name, actions) in &self.0 {
            fail::cfg(name.as_str(), actions).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }
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

/// The fault point `name`: whether it is armed (`return`) at this call.
#[inline]
pub fn fault_point(name: &'static str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_bad_syntax_are_refused() {
        assert!(parse("").is_ok());
        assert!(parse(" ; ").is_ok());
        assert!(parse("runner-after-promt=return").unwrap_err().contains("not a crash point"));
        assert!(parse("runner-after-prompt").unwrap_err().contains("name=action"));
        if cfg!(feature = "failpoints") {
            assert_eq!(parse("runner-after-prompt=return; webhook-after-2xx=off").unwrap().0.len(), 2);
        } else {
            assert!(parse("runner-after-prompt=return").unwrap_err().contains("no crash points"));
        }
    }
}
