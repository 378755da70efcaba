//! What a run writes and reports: one row per title, in JSON Lines or CSV, and the summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::upstream::ConfidenceSource;

/// One result row as written to the output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Row {
    pub title: String,
    pub topic: Option<String>,
    pub confidence: Option<f64>,
    /// Where the confidence came from: `logprobs` or `self` (written by the model).
    pub confidence_source: Option<ConfidenceSource>,
    pub error: Option<String>,
    pub error_code: Option<String>,
}

impl Row {
    /// A row whose error a later run may not get: one to send again. An error without a code
    /// (written by an older build) counts as transient.
    pub fn is_retryable(&self) -> bool {
        self.error.is_some()
            && self
                .error_code
                .as_deref()
                .is_none_or(crate::classify::is_transient)
    }
}

/// What a run did.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Titles already in the output, skipped.
    pub skipped: usize,
    pub items: usize,
    pub errors: usize,
    pub input_tokens: u64,
    /// Of the input tokens, those the provider's prompt cache served.
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// Of the output tokens, those a reasoning model spent thinking.
    pub reasoning_tokens: u64,
    pub upstream_requests: u64,
    /// `None` when the service had no price for its model.
    pub cost_usd: Option<f64>,
    /// Where the rows went.
    pub output: Option<PathBuf>,
    /// Rows of an earlier run whose transient errors this run sent again.
    pub retried: usize,
    /// Rows with an error in the whole output once the run is done, by code: what makes the
    /// command exit with status 2.
    pub remaining_errors: BTreeMap<String, usize>,
}

impl Summary {
    /// The report, and a line on the rows with errors that remain, if any.
    pub fn report(&self) -> String {
        let mut text = self.report_run();
        if !self.remaining_errors.is_empty() {
            text.push('\n');
            text.push_str(&self.report_remaining());
        }
        text
    }

    /// Rows with errors in the output, by code, and which of them a run again would retry.
    fn report_remaining(&self) -> String {
        let total: usize = self.remaining_errors.values().sum();
        let retryable: usize = self
            .remaining_errors
            .iter()
            .filter(|(code, _)| crate::classify::is_transient(code))
            .map(|(_, n)| n)
            .sum();
        let codes = self
            .remaining_errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let advice = match retryable {
            0 => "all final (not sent again)".to_owned(),
            n if n == total => "run the same command again to retry them".to_owned(),
            n => format!("run the same command again to retry the {n} transient ones"),
        };
        format!("{total} rows with errors remain ({codes}): {advice}")
    }

    /// Adds another run's counts: items, errors, tokens, requests and cost.
    pub fn add_run(&mut self, run: &Summary) {
        self.items += run.items;
        self.errors += run.errors;
        self.input_tokens += run.input_tokens;
        self.cached_input_tokens += run.cached_input_tokens;
        self.output_tokens += run.output_tokens;
        self.reasoning_tokens += run.reasoning_tokens;
        self.upstream_requests += run.upstream_requests;
        self.cost_usd = self.cost_usd.zip(run.cost_usd).map(|(a, b)| a + b);
    }

    /// Counts the rows with errors among `rows`.
    pub fn count_errors<'r>(&mut self, rows: impl IntoIterator<Item = &'r Row>) {
        for row in rows.into_iter().filter(|r| r.error.is_some()) {
            let code = row.error_code.as_deref().unwrap_or("unknown");
            *self.remaining_errors.entry(code.to_owned()).or_default() += 1;
        }
    }

    /// A one-line report, with tokens and cost per 1000 items.
    fn report_run(&self) -> String {
        if self.items == 0 {
            return match (self.skipped, &self.output) {
                (0, _) => "nothing classified".to_owned(),
                (done, Some(output)) => format!(
                    "nothing left to classify: all {done} titles are already in {}",
                    output.display()
                ),
                (done, None) => {
                    format!("nothing left to classify: all {done} titles are already done")
                }
            };
        }
        let per_k = |x: f64| x * 1000.0 / self.items as f64;
        let cost = self
            .cost_usd
            .map_or("unknown".to_owned(), |c| format!("${:.4}", per_k(c)));
        let retried = match self.retried {
            0 => String::new(),
            n => format!(", {n} of them sent again after a transient error"),
        };
        let reasoning = match self.reasoning_tokens {
            0 => String::new(),
            n => format!(" ({:.0} of them reasoning)", per_k(n as f64)),
        };
        format!(
            "{} items ({} errors{retried}, {} skipped as already done); per 1000 items: {:.0} input and {:.0} output tokens{reasoning}, {:.0} upstream requests, cost {}",
            self.items,
            self.errors,
            self.skipped,
            per_k(self.input_tokens as f64),
            per_k(self.output_tokens as f64),
            per_k(self.upstream_requests as f64),
            cost
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Jsonl,
    Csv,
}

impl OutputFormat {
    /// The format a file name asks for, if its extension names one.
    pub(super) fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_with_nothing_left_says_so_instead_of_zero_costs() {
        let resumed = Summary {
            skipped: 5000,
            output: Some(PathBuf::from("out.jsonl")),
            ..Summary::default()
        };
        assert_eq!(
            resumed.report(),
            "nothing left to classify: all 5000 titles are already in out.jsonl"
        );
        assert_eq!(Summary::default().report(), "nothing classified");
        let ran = Summary {
            items: 2,
            input_tokens: 100,
            cost_usd: Some(0.001),
            ..Summary::default()
        };
        assert!(
            ran.report().starts_with("2 items (0 errors"),
            "{}",
            ran.report()
        );
    }
}
