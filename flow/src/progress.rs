//! How long work shows its progress: the `recsys` command draws bars ([`Progress`] over
//! indicatif); the orchestrator runs [`Silent`] and logs counts and rates when a step ends.

use std::future::Future;
use std::time::Duration;

/// Where a step shows how far it got.
pub trait Progress: Send + Sync {
    /// A bar over `total` items of `unit` (e.g. "songs") for the step `what`; it is cleared
    /// when dropped.
    fn bar(&self, what: &str, total: u64, unit: &str) -> Box<dyn Bar>;

    /// A spinner with the elapsed time, for a cluster job that reports only when it ends.
    fn spinner(&self, what: &str) -> Box<dyn Bar>;
}

/// One step's progress.
pub trait Bar: Send + Sync {
    /// Items done so far.
    fn set_position(&self, done: u64);
    /// A short status beside the bar (counts, rates).
    fn set_message(&self, message: String);
}

/// Runs `job` under a spinner named `what`.
pub async fn spinning<T>(progress: &dyn Progress, what: &str, job: impl Future<Output = T>) -> T {
    let _spinner = progress.spinner(what);
    job.await
}

/// No display: for unattended runs, whose log lines carry the counts.
pub struct Silent;

impl Progress for Silent {
    fn bar(&self, _: &str, _: u64, _: &str) -> Box<dyn Bar> {
        Box::new(Silent)
    }

    fn spinner(&self, _: &str) -> Box<dyn Bar> {
        Box::new(Silent)
    }
}

impl Bar for Silent {
    fn set_position(&self, _: u64) {}
    fn set_message(&self, _: String) {}
}

/// `n` per second over `d`, for log lines.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}
