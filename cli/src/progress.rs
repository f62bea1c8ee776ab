//! Progress display: bars for work with a known size, spinners with elapsed time for cluster jobs
//! (which report when they finish), for the workflow's steps ([`Bars`]). Hidden when stderr is not a terminal, where the structured
//! log lines carry the counts and rates instead.

use std::time::Duration;

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

/// A spinner named `what` with the elapsed time.
fn spinner(what: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    spinner.set_message(what.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

pub use recsys_flow::progress::rate;

/// The workflow's progress as indicatif bars on stderr.
pub struct Bars;

impl recsys_flow::Progress for Bars {
    fn bar(&self, what: &str, total: u64, unit: &str) -> Box<dyn recsys_flow::Bar> {
        Box::new(Shown(bar(total, what, unit)))
    }

    fn spinner(&self, what: &str) -> Box<dyn recsys_flow::Bar> {
        Box::new(Shown(spinner(what)))
    }
}

/// A bar cleared when the step ends.
struct Shown(ProgressBar);

impl recsys_flow::Bar for Shown {
    fn set_position(&self, done: u64) {
        self.0.set_position(done);
    }

    fn set_message(&self, message: String) {
        self.0.set_message(message);
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
