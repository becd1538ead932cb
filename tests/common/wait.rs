//! Waiting for a condition, never for a fixed time: poll until it holds or a deadline passes.
//! Shared by the root crate's tests (through `common`) and, by path, by the agent's tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::time::{Duration, Instant};

/// How often a cheap condition is polled: short enough not to slow a test, long enough not to spin.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `f` every `every` until it returns `Some`; `None` once `deadline` has passed (it is tried
/// once more at the deadline, so a slow machine only fails when the condition really never held).
/// For callers that want to say more than "timed out" (e.g. show the last value they saw).
pub fn poll_until<T>(
    deadline: Instant,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let past = Instant::now() >= deadline;
        if let Some(v) = f() {
            return Some(v);
        }
        if past {
            return None;
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Polls `f` until it returns `Some` and returns the value; panics naming `what` at `deadline`.
pub fn wait_for<T>(deadline: Instant, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, POLL, f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `cond` until it holds; panics naming `what` at `deadline`.
pub fn wait_until(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(deadline, what, || cond().then_some(()))
}

/// `Instant::now() + secs`, for the deadlines above.
pub fn within(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}
