//! `hn-classifier eval GOLD.jsonl`: label quality against hand labels, per setting. Each pack
//! size runs the whole gold set through the service's pipeline in this process (`--direct`, or
//! `--simulate`), or a running service is measured as it is configured (`--url`). Per setting:
//! accuracy strict and lenient, macro-F1, per-label precision and recall, a confusion matrix,
//! calibration (ECE), agreement with pack size 1, item errors, tokens and cost per 1000 items.
//! Written to `items.csv`, `summary.csv`, `labels.csv` and charts, and printed as a table.

mod chart;
mod error;
mod metrics;
mod report;

use std::path::PathBuf;

use crate::client::{Batches, ServiceArgs};
use crate::config::{ServeConfig, confidence_parser};
pub use crate::gold::{Fields, GoldError, GoldItem};
use crate::upstream::pricing::PriceTable;
use crate::upstream::{ConfidenceSource, ServiceTier};
pub use error::EvalError;
pub use metrics::{Outcome, Scores, agreement, score};
pub use report::{LaneCosts, LanePrices, Report, Setting, table};
use report::{outcomes, write_files};

#[derive(Debug, Clone, clap::Args)]
pub struct EvalConfig {
    /// Hand-labelled items: JSON Lines with a title and a gold label per line, and optionally
    /// a second acceptable label.
    pub gold: PathBuf,

    /// The field holding the title.
    #[arg(long, default_value = "title")]
    pub title_field: String,

    /// The field holding the gold label.
    #[arg(long, default_value = "label")]
    pub label_field: String,

    /// The field holding a second acceptable label (optional per line).
    #[arg(long, default_value = "alt")]
    pub alt_field: String,

    /// Pack sizes to compare (HNC_PACK_SIZE), each over the whole set [default: 1]. Needs
    /// --direct or --simulate: a running service packs as it was started.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=100))]
    pub pack_sizes: Option<Vec<u32>>,

    /// Where the confidence comes from (HNC_CONFIDENCE), each over the whole set at each pack
    /// size, so the two can be compared on the same items [default: logprobs,self]. Needs
    /// --direct or --simulate.
    #[arg(long, value_delimiter = ',', value_parser = confidence_parser())]
    pub confidences: Option<Vec<ConfidenceSource>>,

    /// Only the first N items of the gold file.
    #[arg(long)]
    pub limit: Option<usize>,

    /// Where the titles go; with `--url` alone, a running service measured as it was started.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// Titles per request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub batch_size: u32,

    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Where the CSV files and charts go.
    #[arg(long, short, default_value = "eval-results")]
    pub output: PathBuf,
}

/// Each item's label, `None` for an error.
fn topics(report: &Report) -> Vec<Option<&str>> {
    report.rows.iter().map(|row| row.topic.as_deref()).collect()
}

/// The prices of the model the in-process pipeline calls, from the same settings `serve` reads:
/// `None` with several upstreams (HNC_UPSTREAMS) or a model without a price.
fn lane_prices() -> Option<LanePrices> {
    let serve = ServeConfig::from_env().ok()?;
    if serve.upstreams.is_some() {
        return None;
    }
    let model = &serve.openai_model;
    let price = PriceTable::load(serve.prices_file.as_deref())
        .ok()?
        .price_of(model)?;
    Some(LanePrices {
        price,
        flex_offered: ServiceTier::Flex.offered_by(model),
    })
}

/// Runs every setting over the gold set, writes the files and charts, returns the reports.
pub async fn run(config: &EvalConfig, progress: bool) -> Result<Vec<Report>, EvalError> {
    let fields = Fields {
        title: config.title_field.clone(),
        label: config.label_field.clone(),
        alt: config.alt_field.clone(),
    };
    let gold = crate::gold::read(&config.gold, &fields, config.limit)?;
    let titles: Vec<String> = gold.iter().map(|g| g.title.clone()).collect();
    let in_process = config.service.in_process();
    if !in_process && (config.pack_sizes.is_some() || config.confidences.is_some()) {
        return Err(EvalError::PackSizesNeedDirect);
    }
    let sizes = config.pack_sizes.clone().unwrap_or_else(|| vec![1]);
    let sources = config
        .confidences
        .clone()
        .unwrap_or_else(|| vec![ConfidenceSource::Logprobs, ConfidenceSource::Written]);
    let settings: Vec<Setting> = if in_process {
        sources
            .iter()
            .flat_map(|&confidence| sizes.iter().map(move |&k| Setting::Pack { k, confidence }))
            .collect()
    } else {
        vec![Setting::Service]
    };
    let batches = Batches {
        size: config.batch_size as usize,
        concurrency: config.concurrency as usize,
    };
    let prices = if in_process { lane_prices() } else { None };
    let mut reports: Vec<Report> = Vec::new();
    for setting in settings {
        let target = Box::pin(config.service.connect(|serve| match setting {
            Setting::Pack { k, confidence } => ServeConfig {
                pack_size: k,
                confidence,
                ..serve
            },
            Setting::Service => serve,
        }))
        .await?;
        let bar = crate::progress::bar(titles.len() as u64, progress, &format!("k={setting}"));
        let mut rows = Vec::with_capacity(titles.len());
        let usage = target
            .classify(&titles, batches, &bar, |batch| {
                rows.extend_from_slice(batch);
                Ok(())
            })
            .await?;
        bar.finish_and_clear();
        let confidence_used = report::confidence_used(&rows, setting);
        let scores = score(&outcomes(&gold, &rows));
        let lane_costs = prices.and_then(|p| p.per_1000(&usage, scores.items));
        reports.push(Report {
            setting,
            confidence_used,
            rows,
            scores,
            agreement_with_k1: None,
            usage,
            lane_costs,
        });
    }
    let agreements: Vec<Option<f64>> = reports
        .iter()
        .map(|r| {
            let k1 = r.setting.at_k1()?;
            let k1 = reports.iter().find(|other| other.setting == k1)?;
            agreement(&topics(k1), &topics(r))
        })
        .collect();
    for (report, agreed) in reports.iter_mut().zip(agreements) {
        report.agreement_with_k1 = agreed;
    }
    write_files(&config.output, &gold, &reports)?;
    chart::draw(&config.output, &reports).map_err(EvalError::Chart)?;
    Ok(reports)
}
