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

use super::classify::{ItemView, UsageView};
use super::{ApiError, AppState};
use crate::classify::ItemResult;
use crate::taxonomy::Taxonomy;
use crate::upstream::Usage;

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

#[derive(Serialize)]
struct ItemLine {
    index: usize,
    #[serde(flatten)]
    item: ItemView,
}

#[derive(Serialize)]
struct DoneLine {
    done: bool,
    num_items: usize,
    errors: usize,
    usage: UsageView,
}

fn line(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string(value).expect("the line types always serialise");
    text.push('\n');
    text
}

fn item_line(index: usize, result: &ItemResult) -> String {
    line(&ItemLine {
        index,
        item: ItemView::from(result),
    })
}

/// The streaming response for `titles`, already validated and admitted by the handler.
pub fn respond(state: Arc<AppState>, taxonomy: Arc<Taxonomy>, titles: Vec<String>) -> Response {
    let lines = async_stream::stream! {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = {
            let run = async {
                // Taken again here, where the stream lives: the handler's check only told us
                // the process was taking work when the request arrived.
                let Some(_batch) = state.lifecycle.admit() else {
                    return Err(ApiError::ShuttingDown);
                };
                state
                    .classifier
                    .classify_batch_with(&taxonomy, &titles, |index, result| {
                        let _ = tx.send(item_line(index, result));
                    })
                    .await
                    .map_err(ApiError::from)
            };
            tokio::pin!(run);
            loop {
                tokio::select! {
                    Some(text) = rx.recv() => yield Ok::<_, Infallible>(text),
                    outcome = &mut run => break outcome,
                }
            }
        };
        while let Ok(text) = rx.try_recv() {
            yield Ok(text);
        }
        let (errors, usage) = match outcome {
            Ok(outcome) => (outcome.errors(), outcome.usage),
            // Refused before any item started (a race with draining or saturation): every item
            // still gets its line, with the reason.
            Err(refusal) => {
                for index in 0..titles.len() {
                    let view = ItemView::refused(&refusal);
                    yield Ok(line(&ItemLine { index, item: view }));
                }
                (titles.len(), Usage::default())
            }
        };
        let usage = UsageView::new(usage);
        yield Ok(line(&DoneLine { done: true, num_items: titles.len(), errors, usage }));
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        Body::from_stream(lines),
    )
        .into_response()
}
