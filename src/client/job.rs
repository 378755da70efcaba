//! `classify FILE --job`: the whole file as one job of a running service (`POST /jobs`), a
//! progress bar from the job's counts, and its results downloaded in input order as they come.
//! The job's `Idempotency-Key` is the input's digest, so running the command again (after an
//! interruption, on any machine) finds the same job instead of paying for a second one, and the
//! download resumes after the rows already in the output.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::args::ClassifyFileConfig;
use super::error::ClientError;
use super::files::read_titles;
use super::rows::{Row, Summary};
use crate::jobs::{JobStatus, JobView, ResultLine};

/// How often the job is looked at while it runs.
const POLL: Duration = Duration::from_millis(500);

/// The key that makes a second submission of the same titles find the first one's job.
fn idempotency_key(titles: &[String]) -> String {
    let mut digest = Sha256::new();
    for title in titles {
        digest.update(title.as_bytes());
        digest.update(b"\n");
    }
    let hex: String = digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hnc-classify-{hex}")
}

/// The service's answer, or its status and body as the error.
async fn checked(
    url: &str,
    sent: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ClientError> {
    let response = sent.send().await.map_err(|source| ClientError::Http {
        url: url.to_owned(),
        source,
    })?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Err(ClientError::Service { status, body })
}

/// The service's JSON answer to `sent`.
async fn json<T: serde::de::DeserializeOwned>(
    url: &str,
    sent: reqwest::RequestBuilder,
) -> Result<T, ClientError> {
    let http = |source| ClientError::Http {
        url: url.to_owned(),
        source,
    };
    checked(url, sent).await?.json().await.map_err(http)
}

/// Runs the file as a job of the service at the first `--url`.
pub async fn classify_file_as_job(
    config: &ClassifyFileConfig,
    progress: bool,
) -> Result<Summary, ClientError> {
    if config.service.in_process() {
        return Err(ClientError::JobNeedsService);
    }
    let output = config.output_file()?;
    let titles = read_titles(&config.input, config.field.as_deref())?;
    let rows = output.read_rows()?;
    if let Some(i) = (0..rows.len().min(titles.len())).find(|&i| rows[i].title != titles[i]) {
        return Err(ClientError::OutputOfAnotherInput {
            output: output.path().to_owned(),
            row: i + 1,
        });
    }
    let skipped = rows.len().min(titles.len());
    let mut summary = Summary {
        skipped,
        output: Some(output.path().to_owned()),
        ..Summary::default()
    };
    if skipped == titles.len() {
        summary.count_errors(&rows);
        return Ok(summary);
    }
    let base = config.service.urls[0].trim_end_matches('/').to_owned();
    let client = reqwest::Client::new();
    let with_key = |request: reqwest::RequestBuilder| match &config.service.api_key {
        Some(key) => request.bearer_auth(key.expose()),
        None => request,
    };
    let submit = with_key(client.post(format!("{base}/jobs")))
        .header("idempotency-key", idempotency_key(&titles))
        .json(&serde_json::json!({ "titles": titles }));
    let job: JobView = json(&base, submit).await?;
    let bar = crate::progress::bar(titles.len() as u64, progress, "job");
    let mut writer = output.appender()?;
    let mut next = skipped;
    let mut all_rows = rows;
    let finished = loop {
        let view: JobView = checked(
            &base,
            with_key(client.get(format!("{base}/jobs/{}", job.id))),
        )
        .await?
        .json()
        .await
        .map_err(|source| ClientError::Http {
            url: base.clone(),
            source,
        })?;
        bar.set_position(view.counts.done);
        let results = with_key(client.get(format!("{base}/jobs/{}/results?from={next}", job.id)));
        let text = checked(&base, results)
            .await?
            .text()
            .await
            .map_err(|source| ClientError::Http {
                url: base.clone(),
                source,
            })?;
        let fresh = text
            .lines()
            .map(|line| serde_json::from_str::<ResultLine>(line).map_err(ClientError::StreamLine))
            .map(|line| line.map(|l| row_of(&titles, l)))
            .collect::<Result<Vec<Row>, _>>()?;
        next += fresh.len();
        writer.write(&fresh)?;
        all_rows.extend(fresh);
        let ended = !matches!(view.status, JobStatus::Queued | JobStatus::Running);
        if ended && (next >= titles.len() || text.is_empty()) {
            break view;
        }
        tokio::time::sleep(POLL).await;
    };
    bar.finish_and_clear();
    summary.items = next - skipped;
    summary.errors = all_rows[skipped..]
        .iter()
        .filter(|r| r.error.is_some())
        .count();
    let usage = finished.usage;
    summary.input_tokens = usage.input_tokens;
    summary.cached_input_tokens = usage.cached_input_tokens;
    summary.output_tokens = usage.output_tokens;
    summary.reasoning_tokens = usage.reasoning_tokens;
    summary.upstream_requests = usage.upstream_requests;
    summary.cost_usd = usage.cost_usd;
    summary.count_errors(&all_rows);
    Ok(summary)
}

fn row_of(titles: &[String], line: ResultLine) -> Row {
    Row {
        title: titles.get(line.index as usize).cloned().unwrap_or_default(),
        topic: line.topic,
        confidence: line.confidence,
        confidence_source: line.confidence_source,
        error: line.error,
        error_code: line.error_code,
    }
}
