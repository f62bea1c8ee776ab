//! Progress display: bars for work with a known size, spinners with elapsed time for cluster jobs
//! (which report when they finish). Hidden when stderr is not a terminal, where the structured
//! log lines carry the counts and rates instead.

use std::future::Future;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` items of `unit` (e.g. "rows"), showing rate and ETA.
pub fn bar(total: u64, what: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what:<10} [{{bar:32}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A byte-count bar (downloads).
pub fn bytes_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what:<10} [{{bar:32}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Runs `job` under a spinner named `what`, returning its output and how long it took.
pub async fn spin<T>(what: &str, job: impl Future<Output = T>) -> (T, Duration) {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    spinner.set_message(what.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let out = job.await;
    spinner.finish_and_clear();
    (out, started.elapsed())
}

/// `n` per second over `d`, for log lines.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}
