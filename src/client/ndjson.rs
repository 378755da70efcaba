//! Reading one batch's streamed answer (NDJSON): an item line per title, in any order, then the
//! summary line. A batch is only ever taken from a complete answer.

use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use super::error::ClientError;
use super::rows::Row;
use crate::api::body::{StreamLine, UsageView};

/// A batch's rows in input order, and what they cost.
pub(super) struct BatchAnswer {
    pub rows: Vec<Row>,
    pub usage: UsageView,
}

/// Reads a streamed batch: one row per index, then the summary line. Progress moves as items
/// arrive, and moves back if the stream breaks (the batch will be sent again).
pub(super) async fn read_batch(
    response: reqwest::Response,
    titles: &[String],
    bar: &ProgressBar,
) -> Result<BatchAnswer, ClientError> {
    let mut counted = 0;
    let read = read_rows(response, titles, bar, &mut counted).await;
    if read.is_err() {
        bar.dec(counted);
    }
    read
}

async fn read_rows(
    response: reqwest::Response,
    titles: &[String],
    bar: &ProgressBar,
    counted: &mut u64,
) -> Result<BatchAnswer, ClientError> {
    let bytes = response.bytes_stream().map_err(std::io::Error::other);
    let mut lines = FramedRead::new(StreamReader::new(bytes), LinesCodec::new());
    let mut rows: Vec<Option<Row>> = (0..titles.len()).map(|_| None).collect();
    let mut usage = None;
    while let Some(line) = lines.next().await {
        let line = line.map_err(ClientError::StreamRead)?;
        match serde_json::from_str(&line).map_err(ClientError::StreamLine)? {
            StreamLine::Done(done) => usage = Some(done.usage),
            StreamLine::Item(item) => {
                let slot = rows
                    .get_mut(item.index)
                    .ok_or(ClientError::StreamIncomplete(
                        "an item line without a valid index",
                    ))?;
                let view = item.item;
                *slot = Some(Row {
                    title: titles[item.index].clone(),
                    topic: view.topic,
                    confidence: view.confidence,
                    confidence_source: view.confidence_source,
                    error: view.error,
                    error_code: view.error_code,
                });
                bar.inc(1);
                *counted += 1;
            }
        }
    }
    let usage = usage.ok_or(ClientError::StreamIncomplete("no summary line"))?;
    let rows =
        rows.into_iter()
            .collect::<Option<Vec<Row>>>()
            .ok_or(ClientError::StreamIncomplete(
                "an item is missing from the stream",
            ))?;
    Ok(BatchAnswer { rows, usage })
}
