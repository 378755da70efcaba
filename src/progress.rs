//! The progress bar `classify`, `eval` and `bench` show on a terminal: rate and ETA. Hidden when stderr
//! is not a terminal (CI logs, pipes), so logs hold results, not redraws.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` items, or a hidden one when not `wanted` or not on a terminal.
pub fn bar(len: u64, wanted: bool, label: &str) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} items  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    bar.set_prefix(label.to_owned());
    bar
}
