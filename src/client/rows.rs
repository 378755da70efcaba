//! What a run writes and reports: one row per title, in JSON Lines or CSV, and the summary.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One result row as written to the output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub title: String,
    pub topic: Option<String>,
    pub confidence: Option<f64>,
    pub error: Option<String>,
    pub error_code: Option<String>,
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
    pub upstream_requests: u64,
    /// `None` when the service had no price for its model.
    pub cost_usd: Option<f64>,
    /// Where the rows went.
    pub output: Option<PathBuf>,
}

impl Summary {
    /// A one-line report, with tokens and cost per 1000 items.
    pub fn report(&self) -> String {
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
        format!(
            "{} items ({} errors, {} skipped as already done); per 1000 items: {:.0} input and {:.0} output tokens, {:.0} upstream requests, cost {}",
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
