//! What one setting produced, and how it is written: the CSV files and the printed table.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::error::EvalError;
use super::metrics::{Outcome, Scores};
use crate::client::{Row, Summary};
use crate::gold::GoldItem;
use crate::upstream::pricing::Price;
use crate::upstream::{ConfidenceSource, Tier, Usage};

/// What was varied: a pack size and where the confidence comes from, in this process; or a
/// running service as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Pack {
        k: u32,
        confidence: ConfidenceSource,
    },
    Service,
}

impl Setting {
    /// The `confidence` column: `logprobs`, `self`, or `service` (as the service is set).
    pub fn confidence(&self) -> &'static str {
        match self {
            Self::Pack { confidence, .. } => confidence.name(),
            Self::Service => "service",
        }
    }

    /// The setting at pack size 1 with the same confidence source: what agreement is against.
    pub fn at_k1(&self) -> Option<Self> {
        match *self {
            Self::Pack { confidence, .. } => Some(Self::Pack { k: 1, confidence }),
            Self::Service => None,
        }
    }
}

/// The `pack_size` column.
impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pack { k, .. } => write!(f, "{k}"),
            Self::Service => f.write_str("service"),
        }
    }
}

/// The list prices of the model the settings ran on, for what the same tokens cost on each
/// lane.
#[derive(Debug, Clone, Copy)]
pub struct LanePrices {
    pub price: Price,
    /// Whether OpenAI offers the model flex processing (else its flex column is empty).
    pub flex_offered: bool,
}

/// What a setting's tokens cost per 1,000 titles on each lane: the live API at the default
/// tier, at flex, and the Batch API. Cached input is priced as cached on every lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneCosts {
    pub live: f64,
    pub flex: Option<f64>,
    pub batch: f64,
}

impl LanePrices {
    pub fn per_1000(&self, usage: &Summary, items: usize) -> Option<LaneCosts> {
        if items == 0 {
            return None;
        }
        let used = Usage::billed(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
        );
        let cost = |tier| self.price.at(tier).cost(&used) * 1000.0 / items as f64;
        Some(LaneCosts {
            live: cost(Tier::Standard),
            flex: self.flex_offered.then(|| cost(Tier::Flex)),
            batch: cost(Tier::Batch),
        })
    }
}

/// One setting's answers and figures.
pub struct Report {
    pub setting: Setting,
    /// Where the confidences really came from: the setting's source, or `self` where logprobs
    /// were asked for and the model wrote its confidence instead.
    pub confidence_used: &'static str,
    pub rows: Vec<Row>,
    pub scores: Scores,
    /// Share of items with the same label as pack size 1 (both answered), when it ran.
    pub agreement_with_k1: Option<f64>,
    pub usage: Summary,
    /// Its tokens' cost on each lane, when the model and its prices are known.
    pub lane_costs: Option<LaneCosts>,
}

/// The kind of confidence the answers of a setting hold, from the mark on each: `logprobs`,
/// `self`, or `mixed` (some answers could not be read from logprobs and were written);
/// the setting's own source when nothing was answered.
pub fn confidence_used(rows: &[Row], setting: Setting) -> &'static str {
    let marked = || rows.iter().filter_map(|r| r.confidence_source);
    let first = marked().next();
    match first {
        None => setting.confidence(),
        Some(kind) if marked().all(|k| k == kind) => kind.name(),
        Some(_) => "mixed",
    }
}

pub fn outcomes<'a>(gold: &'a [GoldItem], rows: &'a [Row]) -> Vec<Outcome<'a>> {
    gold.iter()
        .zip(rows)
        .map(|(g, r)| Outcome {
            gold: &g.label,
            alt: g.alt.as_deref(),
            topic: r.topic.as_deref(),
            confidence: r.confidence,
        })
        .collect()
}

/// `items.csv`: one row per item and setting.
#[derive(Serialize)]
struct ItemRow<'a> {
    title: &'a str,
    gold: &'a str,
    alt: Option<&'a str>,
    pack_size: String,
    confidence_source: &'static str,
    topic: Option<&'a str>,
    confidence: Option<f64>,
    error_code: Option<&'a str>,
}

/// `summary.csv`: one row per setting.
#[derive(Serialize)]
struct SummaryRow {
    pack_size: String,
    confidence_source: &'static str,
    items: usize,
    strict_accuracy: f64,
    lenient_accuracy: f64,
    macro_f1: f64,
    ece: f64,
    agreement_with_k1: Option<f64>,
    item_errors: usize,
    cost_per_1000: Option<f64>,
    live_cost_per_1000: Option<f64>,
    flex_cost_per_1000: Option<f64>,
    batch_cost_per_1000: Option<f64>,
    input_tokens_per_1000: f64,
    output_tokens_per_1000: f64,
    /// Of the output tokens, those a reasoning model spent thinking.
    reasoning_tokens_per_1000: f64,
    upstream_requests_per_1000: f64,
}

/// `labels.csv`: one row per setting and gold label.
#[derive(Serialize)]
struct LabelRow<'a> {
    pack_size: String,
    confidence_source: &'static str,
    label: &'a str,
    support: usize,
    predicted: usize,
    precision: Option<f64>,
    recall: f64,
    f1: f64,
}

impl SummaryRow {
    fn of(report: &Report) -> Self {
        let s = &report.scores;
        let per_1000 = |x: f64| {
            if s.items == 0 {
                0.0
            } else {
                x * 1000.0 / s.items as f64
            }
        };
        Self {
            pack_size: report.setting.to_string(),
            confidence_source: report.confidence_used,
            items: s.items,
            strict_accuracy: s.strict_accuracy,
            lenient_accuracy: s.lenient_accuracy,
            macro_f1: s.macro_f1,
            ece: s.ece,
            agreement_with_k1: report.agreement_with_k1,
            item_errors: s.item_errors,
            cost_per_1000: report.usage.cost_usd.map(per_1000),
            live_cost_per_1000: report.lane_costs.map(|c| c.live),
            flex_cost_per_1000: report.lane_costs.and_then(|c| c.flex),
            batch_cost_per_1000: report.lane_costs.map(|c| c.batch),
            input_tokens_per_1000: per_1000(report.usage.input_tokens as f64),
            output_tokens_per_1000: per_1000(report.usage.output_tokens as f64),
            reasoning_tokens_per_1000: per_1000(report.usage.reasoning_tokens as f64),
            upstream_requests_per_1000: per_1000(report.usage.upstream_requests as f64),
        }
    }
}

pub fn write_files(dir: &Path, gold: &[GoldItem], reports: &[Report]) -> Result<(), EvalError> {
    std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_csv(
        &dir.join("items.csv"),
        reports.iter().flat_map(|r| {
            gold.iter().zip(&r.rows).map(move |(g, row)| ItemRow {
                title: &g.title,
                gold: &g.label,
                alt: g.alt.as_deref(),
                pack_size: r.setting.to_string(),
                confidence_source: r.confidence_used,
                topic: row.topic.as_deref(),
                confidence: row.confidence,
                error_code: row.error_code.as_deref(),
            })
        }),
    )?;
    write_csv(&dir.join("summary.csv"), reports.iter().map(SummaryRow::of))?;
    write_csv(
        &dir.join("labels.csv"),
        reports.iter().flat_map(|r| {
            r.scores.per_label.iter().map(move |l| LabelRow {
                pack_size: r.setting.to_string(),
                confidence_source: r.confidence_used,
                label: &l.label,
                support: l.support,
                predicted: l.predicted,
                precision: l.precision,
                recall: l.recall,
                f1: l.f1,
            })
        }),
    )
}

fn write_csv<R: Serialize>(path: &Path, rows: impl Iterator<Item = R>) -> Result<(), EvalError> {
    let csv_error = |source| EvalError::Csv {
        path: path.to_owned(),
        source,
    };
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    for row in rows {
        writer.serialize(row).map_err(csv_error)?;
    }
    writer.flush().map_err(|source| EvalError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A dollar figure, or `-` where it is not known (or the lane not offered).
fn dollars(cost: Option<f64>) -> String {
    cost.map_or("-".to_owned(), |c| format!("${c:.4}"))
}

/// The table printed at the end: one line per setting, then where the files are. `cost/1000`
/// is what the run cost as the service was set; `live`, `flex` and `batch` what its tokens
/// cost per 1,000 titles on each lane.
pub fn table(reports: &[Report], dir: &Path) -> String {
    let mut lines = vec![format!(
        "{:>8} {:>10} {:>6} {:>7} {:>8} {:>8} {:>6} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8}",
        "pack",
        "confidence",
        "items",
        "strict",
        "lenient",
        "macroF1",
        "ECE",
        "agree_k1",
        "errors",
        "calls/1000",
        "in/item",
        "out/item",
        "reas/item",
        "cost/1000",
        "live",
        "flex",
        "batch"
    )];
    for r in reports {
        let row = SummaryRow::of(r);
        let agree = row
            .agreement_with_k1
            .map_or("-".to_owned(), |a| format!("{a:.3}"));
        lines.push(format!(
            "{:>8} {:>10} {:>6} {:>7.3} {:>8.3} {:>8.3} {:>6.3} {:>9} {:>7} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>8} {:>8} {:>8}",
            row.pack_size,
            row.confidence_source,
            row.items,
            row.strict_accuracy,
            row.lenient_accuracy,
            row.macro_f1,
            row.ece,
            agree,
            row.item_errors,
            row.upstream_requests_per_1000,
            row.input_tokens_per_1000 / 1000.0,
            row.output_tokens_per_1000 / 1000.0,
            row.reasoning_tokens_per_1000 / 1000.0,
            dollars(row.cost_per_1000),
            dollars(row.live_cost_per_1000),
            dollars(row.flex_cost_per_1000),
            dollars(row.batch_cost_per_1000),
        ));
    }
    lines.push(format!(
        "items.csv, summary.csv, labels.csv, confusion_k*.png/svg and reliability.png/svg in {}",
        dir.display()
    ));
    lines.join("\n")
}
