//! `Accept: application/x-ndjson`: one line per item as it completes, `{"index": i, ...}`, then
//! `{"done": true, "num_items", "errors", "usage"}`. The first line leaves as soon as the first
//! item is done; a client that stops reading drops the stream and with it the batch's calls.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;

use super::body::{DoneLine, ItemLine, ItemView, UsageView};
use super::state::AppState;
use crate::classify::Admitted;
use crate::lifecycle::BatchGuard;
use crate::taxonomy::Taxonomy;

pub const NDJSON: &str = "application/x-ndjson";

/// Whether the caller asked for a stream.
pub fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|part| part.trim().starts_with(NDJSON))
        })
}

fn line(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string(value).expect("the line types always serialise");
    text.push('\n');
    text
}

/// The streaming response for `titles`, validated and admitted by the handler: `batch` keeps
/// the process from stopping until the last line has left.
pub fn respond(
    state: Arc<AppState>,
    batch: BatchGuard,
    admitted: Admitted,
    taxonomy: Arc<Taxonomy>,
    titles: Vec<String>,
) -> Response {
    let lines = async_stream::stream! {
        let _batch = batch;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = state
            .classifier
            .classify_batch_with(admitted, &taxonomy, &titles, |index, result| {
                let item = ItemView::from(result);
                let _ = tx.send(line(&ItemLine { index, item }));
            });
        tokio::pin!(run);
        let outcome = loop {
            tokio::select! {
                Some(text) = rx.recv() => yield Ok::<_, Infallible>(text),
                outcome = &mut run => break outcome,
            }
        };
        while let Ok(text) = rx.try_recv() {
            yield Ok(text);
        }
        let done = DoneLine {
            done: true,
            num_items: titles.len(),
            errors: outcome.errors(),
            usage: UsageView::new(outcome.usage),
        };
        yield Ok(line(&done));
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        Body::from_stream(lines),
    )
        .into_response()
}
