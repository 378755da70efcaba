//! `hn-classifier classify FILE`: a file of titles through a running service, in batches with
//! bounded concurrency, each batch streamed (NDJSON) so progress moves as items complete;
//! results are written in input order as JSONL or CSV and flushed batch by batch, so an
//! interrupted run resumes where it stopped (titles already in the output are skipped).
//!
//! By idea: `args` (the command line), `files` (the input, the output and the resume point),
//! `replicas` (where batches go, round-robin with failover), `ndjson` (reading one streamed
//! answer), `rows` (what is written and reported), `error`. `eval` and the Batch lane use them
//! through what this module exports.

mod args;
mod error;
mod files;
mod ndjson;
mod replicas;
mod rows;

pub use args::{ClassifyFileConfig, Fallback, ServiceArgs};
pub use error::{ClientError, FileAction};
pub use files::{Output, RowWriter, read_titles};
pub use replicas::{Batches, Target};
pub use rows::{OutputFormat, Row, Summary};

/// Runs the whole file; `progress` draws a bar on a terminal.
pub async fn classify_file(
    config: &ClassifyFileConfig,
    progress: bool,
) -> Result<Summary, ClientError> {
    let output = config.output_file()?;
    let titles = read_titles(&config.input, config.field.as_deref())?;
    let target = Box::pin(config.service.connect(|serve| serve)).await?;
    let done = output.rows_done()?.min(titles.len());
    let mut writer = output.appender()?;
    let bar = crate::progress::bar((titles.len() - done) as u64, progress, "classify");
    let batches = Batches {
        size: config.batch_size as usize,
        concurrency: config.concurrency as usize,
    };
    let mut summary = target
        .classify(&titles[done..], batches, &bar, |rows| writer.write(rows))
        .await?;
    summary.skipped = done;
    summary.output = Some(output.path().to_owned());
    bar.finish_and_clear();
    Ok(summary)
}
