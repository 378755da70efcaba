//! `Accept: application/x-ndjson`: one line per item as it completes, `{"index": i, ...}`, then
//! `{"done": true, "num_items", "errors", "usage"}`. The first line leaves as soon as the first
//! item is done.
//!
//! The batch runs as a task of its own, not as the body's poll: a client that keeps the
//! connection but stops reading does not pause it (nor hold its upstream slots). Its lines wait
//! in a buffer that the batch bounds (one line per title, and the summary), and a reader that
//! never comes back is cut off at shutdown's deadline. A client that goes away (the connection
//! closes) drops the body, which aborts the task and with it the batch's calls.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::body::{DoneLine, ItemLine, ItemView, UsageView};
use super::state::AppState;
use crate::classify::{Admitted, Cut};
use crate::lifecycle::BatchGuard;
use crate::taxonomy::Taxonomy;

pub const NDJSON: &str = "application/x-ndjson";

/// Whether a request's body is NDJSON (`Content-Type: application/x-ndjson`).
pub fn wants_ndjson_body(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(NDJSON))
}

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
/// the process from stopping until the last line has left (or shutdown's deadline).
pub fn respond(
    state: Arc<AppState>,
    batch: BatchGuard,
    admitted: Admitted,
    taxonomy: Arc<Taxonomy>,
    titles: Vec<String>,
    cut: impl Future<Output = Cut> + Send + 'static,
) -> Response {
    // Unbounded in type, bounded by the batch: one line per title and the summary.
    let (tx, rx) = mpsc::unbounded_channel();
    let run = crate::tasks::spawn(async move {
        let outcome = state
            .classifier
            .classify_batch_with(admitted, &taxonomy, &titles, cut, |index, result| {
                let item = ItemView::from(result);
                let _ = tx.send(line(&ItemLine { index, item }));
            })
            .await;
        let done = DoneLine {
            done: true,
            num_items: titles.len(),
            errors: outcome.errors(),
            usage: UsageView::new(outcome.usage),
        };
        let _ = tx.send(line(&done));
    });
    let state = (rx, AbortOnDropHandle::new(run), batch);
    let lines = futures::stream::unfold(state, |(mut rx, run, batch)| async move {
        let text = rx.recv().await?;
        Some((Ok::<_, Infallible>(text), (rx, run, batch)))
    })
    .boxed();
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        Body::from_stream(lines),
    )
        .into_response()
}
