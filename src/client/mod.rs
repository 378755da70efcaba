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
mod job;
mod ndjson;
mod replicas;
mod rows;

pub use args::{ClassifyFileConfig, Fallback, ServiceArgs};
pub use error::{ClientError, FileAction};
pub use files::{Output, RowWriter, read_titles};
pub use job::classify_file_as_job;
pub use replicas::{Batches, Target};
pub use rows::{OutputFormat, Row, Summary};

/// How often the rows sent again are written into the output while they come in (each time
/// the whole file is rewritten), so that a run stopped halfway keeps most of what it paid for.
const REWRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the whole file; `progress` draws a bar on a terminal. Rows an earlier run left with a
/// transient error (unreachable, rate-limited, a deadline, a shutdown) are sent again first and
/// replaced in place; then the titles after the last row are classified and appended.
pub async fn classify_file(
    config: &ClassifyFileConfig,
    progress: bool,
) -> Result<Summary, ClientError> {
    let output = config.output_file()?;
    let titles = read_titles(&config.input, config.field.as_deref())?;
    let mut rows = output.read_rows()?;
    // Rows past the input's end (a shorter input) are kept as they are, never rewritten away.
    let done = rows.len().min(titles.len());
    let retry: Vec<usize> = (0..done).filter(|&i| rows[i].is_retryable()).collect();
    if let Some(&i) = retry.iter().find(|&&i| rows[i].title != titles[i]) {
        return Err(ClientError::OutputOfAnotherInput {
            output: output.path().to_owned(),
            row: i + 1,
        });
    }
    let mut writer = output.appender()?;
    let mut summary = Summary {
        skipped: done - retry.len(),
        retried: retry.len(),
        output: Some(output.path().to_owned()),
        cost_usd: Some(0.0),
        ..Summary::default()
    };
    let left = retry.len() + titles.len() - done;
    if left == 0 {
        summary.count_errors(&rows);
        return Ok(summary);
    }
    let target = Box::pin(config.service.connect(|serve| serve)).await?;
    let bar = crate::progress::bar(left as u64, progress, "classify");
    let batches = Batches {
        size: config.batch_size as usize,
        concurrency: config.concurrency as usize,
    };
    if !retry.is_empty() {
        let again: Vec<String> = retry.iter().map(|&i| titles[i].clone()).collect();
        let mut next = retry.iter();
        let mut written = std::time::Instant::now();
        let run = target
            .classify(&again, batches, &bar, |fresh| {
                for (row, &index) in fresh.iter().zip(next.by_ref()) {
                    rows[index] = row.clone();
                }
                if written.elapsed() >= REWRITE_EVERY {
                    output.rewrite(&rows)?;
                    written = std::time::Instant::now();
                }
                Ok(())
            })
            .await;
        // What came back is kept even when the run then failed.
        output.rewrite(&rows)?;
        summary.add_run(&run?);
    }
    let run = target
        .classify(&titles[done..], batches, &bar, |fresh| {
            rows.extend_from_slice(fresh);
            writer.write(fresh)
        })
        .await?;
    summary.add_run(&run);
    summary.count_errors(&rows);
    bar.finish_and_clear();
    Ok(summary)
}
