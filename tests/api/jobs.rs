//! Jobs that outlive the request (`/jobs`), kept on disk without Redis: submitted, classified in
//! the background through the same pipeline, downloaded in input order, resumed by a restart on
//! the same data directory, private to the key that submitted them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hn_classifier::api::{JobList, JobView};
use hn_classifier::jobs::{JobStatus, ResultLine};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A fresh data directory for one test.
fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hnc-jobs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Where a test's jobs are kept: a fresh data directory, or a redis-server of the test's own
/// (append-only file on, in a fresh directory). Both go when the test ends.
pub enum Books {
    Disk(PathBuf),
    Redis(RedisServer, PathBuf),
}

impl Books {
    pub fn disk(name: &str) -> Self {
        Self::Disk(data_dir(name))
    }

    pub fn redis(name: &str) -> Self {
        let dir = data_dir(&format!("{name}-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        Self::Redis(RedisServer::with_aof(&dir), dir)
    }

    /// The flags that keep a replica's jobs here.
    pub fn flags(&self) -> Vec<String> {
        match self {
            Self::Disk(dir) => vec!["--data-dir".into(), dir.display().to_string()],
            Self::Redis(redis, _) => vec!["--redis-url".into(), redis.url()],
        }
    }
}

impl Drop for Books {
    fn drop(&mut self) {
        let dir = match self {
            Self::Disk(dir) => dir,
            Self::Redis(redis, dir) => {
                redis.kill();
                dir
            }
        };
        let _ = std::fs::remove_dir_all(dir);
    }
}

async fn simulated_with_jobs(dir: &std::path::Path, extra: &[&str]) -> TestApp {
    let dir = dir.to_str().unwrap();
    spawn_simulated(&[&["--data-dir", dir], extra].concat()).await
}

/// A replica on its own simulator, keeping its jobs in `books`.
pub async fn simulated_keeping(books: &Books, extra: &[&str]) -> TestApp {
    let flags = books.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_simulated(&[&flags, extra].concat()).await
}

pub async fn submit(
    app: &TestApp,
    titles: &[String],
    key: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut request = app
        .client
        .post(app.url("/jobs"))
        .json(&json!({"titles": titles, "metadata": {"batch": "nightly"}}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    if status == StatusCode::ACCEPTED {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(location, format!("/jobs/{}", body["id"].as_str().unwrap()));
        return (status, body);
    }
    (status, response.json().await.unwrap())
}

/// A response's JSON body.
pub async fn body<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> T {
    response.json().await.unwrap()
}

pub async fn job(app: &TestApp, id: &str) -> JobView {
    body(
        app.client
            .get(app.url(&format!("/jobs/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Polls until the job is no longer queued or running.
pub async fn finished(app: &TestApp, id: &str) -> JobView {
    let start = Instant::now();
    loop {
        let view = job(app, id).await;
        if !matches!(view.status, JobStatus::Queued | JobStatus::Running) {
            return view;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{view:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn results(app: &TestApp, id: &str, from: u64) -> Vec<ResultLine> {
    let response = app
        .client
        .get(app.url(&format!("/jobs/{id}/results?from={from}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_job_is_classified_in_the_background_and_downloaded_in_input_order() {
    Box::pin(classified_in_the_background_and_downloaded_in_input_order(
        Books::disk("order"),
    ))
    .await;
}

#[tokio::test]
async fn a_job_kept_in_redis_is_classified_and_downloaded_in_input_order() {
    Box::pin(classified_in_the_background_and_downloaded_in_input_order(
        Books::redis("order"),
    ))
    .await;
}

async fn classified_in_the_background_and_downloaded_in_input_order(books: Books) {
    let app = simulated_keeping(&books, &[]).await;
    let titles = data_lines("hn_titles.txt")[..500].to_vec();
    let (status, submitted) = submit(&app, &titles, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert_eq!(submitted["metadata"]["batch"], "nightly");
    let id = submitted["id"].as_str().unwrap().to_owned();
    let done = finished(&app, &id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(
        (
            done.counts.total,
            done.counts.done,
            done.counts.errors,
            done.counts.pending
        ),
        (500, 500, 0, 0)
    );
    assert!(done.usage.upstream_requests >= 1 && done.usage.cost_usd.unwrap() > 0.0);
    let lines = results(&app, &id, 0).await;
    let live = app.classify(&titles).await;
    assert_eq!(lines.len(), 500);
    for (i, (line, item)) in lines.iter().zip(&live.results).enumerate() {
        assert_eq!(line.index, i as u64);
        assert_eq!(
            (&line.topic, line.confidence),
            (&item.topic, item.confidence),
            "{i}"
        );
        assert_eq!(line.confidence_source, item.confidence_source);
    }
    let tail = results(&app, &id, 490).await;
    assert_eq!(
        tail.iter().map(|l| l.index).collect::<Vec<_>>(),
        (490..500).collect::<Vec<u64>>()
    );
    let list: JobList = body(app.client.get(app.url("/jobs")).send().await.unwrap()).await;
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(list.jobs[0].id, id);
    assert_eq!(metric(&app, "jobs", "status=\"completed\"").await, 1.0);
    assert_eq!(metric(&app, "jobs", "status=\"running\"").await, 0.0);
    assert_eq!(metric(&app, "job_titles_pending", "").await, 0.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_data_directory_resumes_the_job() {
    let dir = data_dir("restart");
    // 50 ms a call, 50 at once: 2,000 titles take a few seconds.
    let slow = ["--sim-latency-ms", "50", "--sim-latency-sigma", "0"];
    let first = simulated_with_jobs(&dir, &slow).await;
    let titles = data_lines("hn_titles.txt")[..2000].to_vec();
    let (status, submitted) = submit(&first, &titles, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while job(&first, &id).await.counts.done < 300 {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls_before = first.sim_stats().await["requests_total"].as_u64().unwrap();
    let done_before = job(&first, &id).await.counts.done;
    assert!(done_before < 1500, "stopped mid-job: {done_before} done");
    first.shutdown().await;
    let second = simulated_with_jobs(&dir, &slow).await;
    let done = finished(&second, &id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!((done.counts.done, done.counts.errors), (2000, 0));
    let lines = results(&second, &id, 0).await;
    assert_eq!(
        lines.iter().map(|l| l.index).collect::<Vec<_>>(),
        (0..2000).collect::<Vec<u64>>(),
        "every title once, in input order"
    );
    let calls_after = second.sim_stats().await["requests_total"].as_u64().unwrap();
    assert!(
        calls_before + calls_after <= 2000 + 200,
        "at most one round is asked again: {calls_before} + {calls_after}"
    );
    second.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_job_belongs_to_its_key_and_submissions_are_bounded_and_idempotent() {
    Box::pin(keys_limits_and_idempotency(Books::disk("keys"))).await;
}

#[tokio::test]
async fn in_redis_a_job_belongs_to_its_key_and_submissions_are_bounded_and_idempotent() {
    Box::pin(keys_limits_and_idempotency(Books::redis("keys"))).await;
}

async fn keys_limits_and_idempotency(books: Books) {
    let app = simulated_keeping(
        &books,
        &[
            "--api-keys",
            "alpha-key,beta-key",
            "--max-job-titles",
            "100",
            "--max-open-jobs",
            "2",
            "--sim-latency-ms",
            "200",
        ],
    )
    .await;
    let as_key = |key: &'static str, request: reqwest::RequestBuilder| request.bearer_auth(key);
    let titles = data_lines("hn_titles.txt")[..100].to_vec();
    let post = |key, body: serde_json::Value, idem: Option<&'static str>| {
        let mut r = as_key(key, app.client.post(app.url("/jobs"))).json(&body);
        if let Some(idem) = idem {
            r = r.header("idempotency-key", idem);
        }
        r.send()
    };
    let first = post("alpha-key", json!({"titles": titles}), Some("k1"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: JobView = first.json().await.unwrap();
    let again = post("alpha-key", json!({"titles": titles}), Some("k1"))
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the same job, not a second one"
    );
    assert_eq!(again.json::<JobView>().await.unwrap().id, first.id);

    let other = as_key(
        "beta-key",
        app.client.get(app.url(&format!("/jobs/{}", first.id))),
    );
    let other = other.send().await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body::<serde_json::Value>(other).await["error"]["code"],
        "job_not_found"
    );
    let listed: JobList = body(
        as_key("beta-key", app.client.get(app.url("/jobs")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(listed.jobs.is_empty());

    let big = post("alpha-key", json!({"titles": vec!["x"; 101]}), None)
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let message = body::<serde_json::Value>(big).await["error"].clone();
    assert_eq!(message["code"], "job_too_large");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("HNC_MAX_JOB_TITLES")
    );

    let second = post("alpha-key", json!({"titles": titles}), None)
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let third = post("alpha-key", json!({"titles": titles}), None)
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body::<serde_json::Value>(third).await["error"]["code"],
        "too_many_open_jobs"
    );
    let replay = post("alpha-key", json!({"titles": titles}), Some("k1"))
        .await
        .unwrap();
    assert_eq!(
        replay.status(),
        StatusCode::OK,
        "a retry at the limit still gets its job back"
    );

    let second: JobView = second.json().await.unwrap();
    let cancel = as_key(
        "alpha-key",
        app.client
            .post(app.url(&format!("/jobs/{}/cancel", second.id))),
    );
    let cancelled: JobView = body(cancel.send().await.unwrap()).await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.counts.pending > 0, "{cancelled:?}");
    let unauthenticated = app.client.get(app.url("/jobs")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_data_directory_jobs_are_off_and_say_how_to_turn_them_on() {
    let app = spawn_simulated(&[]).await;
    let (status, refused) = submit(&app, &["a title".to_owned()], None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused["error"]["code"], "jobs_not_configured");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HNC_DATA_DIR")
    );
    app.shutdown().await;
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What a webhook receiver got: each call's headers and body, in order.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// A receiver that answers 503 to its first `down` calls, then 200.
async fn receiver(down: usize) -> (String, Received) {
    let received: Received = Received::default();
    let seen = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let mut calls = seen.lock().unwrap();
                calls.push((headers, body));
                if calls.len() <= down {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let base = on_loopback(router).await;
    (base.replace("/v1", "/hook"), received)
}

#[tokio::test]
async fn a_job_s_end_is_posted_signed_and_retried_until_the_receiver_takes_it() {
    Box::pin(posted_signed_and_retried(Books::disk("webhook"))).await;
}

#[tokio::test]
async fn from_redis_a_job_s_end_is_posted_signed_and_retried_until_the_receiver_takes_it() {
    Box::pin(posted_signed_and_retried(Books::redis("webhook"))).await;
}

async fn posted_signed_and_retried(books: Books) {
    let (url, received) = receiver(1).await;
    let app = simulated_keeping(
        &books,
        &[
            "--webhook-secret",
            SECRET,
            "--webhook-allow-private",
            "true",
        ],
    )
    .await;
    let titles = data_lines("hn_titles.txt")[..50].to_vec();
    let response = app
        .client
        .post(app.url("/jobs"))
        .json(&json!({"titles": titles, "callback_url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: JobView = body(response).await;
    assert_eq!(job.callback_url.as_deref(), Some(url.as_str()));
    finished(&app, &job.id).await;
    // The first delivery meets a 503; the schedule's first wait is 5 s.
    let start = Instant::now();
    while received.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not delivered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = received.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "delivered once, after one failure");
    let (first, second) = (&calls[0], &calls[1]);
    assert_eq!(
        first.0["webhook-id"], second.0["webhook-id"],
        "the same event"
    );
    let (headers, text) = second;
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let hooks = hn_classifier::jobs::webhooks::Webhooks::new(
        &hn_classifier::secret::Secret::new(SECRET),
        true,
    )
    .unwrap();
    assert_eq!(
        headers["webhook-signature"].to_str().unwrap(),
        hooks.sign(id, timestamp, text)
    );
    let event: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(event["type"], "job.completed");
    assert_eq!(event["data"]["id"], job.id.as_str());
    assert_eq!(event["data"]["counts"]["done"], 50);
    assert_eq!(
        metric(&app, "job_webhook_deliveries_total", "retried").await,
        1.0
    );
    assert_eq!(
        metric(&app, "job_webhook_deliveries_total", "delivered").await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn callbacks_to_internal_addresses_are_refused_unless_allowed() {
    let dir = data_dir("private");
    let app = simulated_with_jobs(&dir, &["--webhook-secret", SECRET]).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://10.0.0.7/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let response = app
            .client
            .post(app.url("/jobs"))
            .json(&json!({"titles": ["Rust 2.0"], "callback_url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let error: serde_json::Value = body(response).await;
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("callback_url")
        );
    }
    app.shutdown().await;
    let unsigned = simulated_with_jobs(&dir, &[]).await;
    let response = unsigned
        .client
        .post(unsigned.url("/jobs"))
        .json(&json!({"titles": ["Rust 2.0"], "callback_url": "https://example.com/hook"}))
        .send()
        .await
        .unwrap();
    let error: serde_json::Value = body(response).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HNC_WEBHOOK_SECRET")
    );
    unsigned.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn classify_job_runs_a_file_as_one_job_and_a_second_run_resumes_the_download() {
    use hn_classifier::client::{ClassifyFileConfig, Fallback, ServiceArgs, classify_file_as_job};
    let dir = data_dir("classify-job");
    let app = simulated_with_jobs(&dir, &[]).await;
    std::fs::create_dir_all(&dir).unwrap();
    let titles = data_lines("hn_titles_1000.txt")[..300].to_vec();
    let input = dir.join("titles.txt");
    std::fs::write(&input, titles.join("\n") + "\n").unwrap();
    let output = dir.join("titles.classified.jsonl");
    let config = ClassifyFileConfig {
        input,
        service: ServiceArgs::remote(format!("http://{}", app.addr)),
        output: Some(output.clone()),
        format: None,
        batch_size: 500,
        concurrency: 4,
        field: None,
        batch_api: false,
        job: true,
        fallback: Fallback::Batch,
        cancel: false,
        poll_s: 10.0,
        batch_max_requests: 50_000,
    };
    let first = classify_file_as_job(&config, false).await.unwrap();
    assert_eq!((first.items, first.errors, first.skipped), (300, 0, 0));
    let rows: Vec<hn_classifier::client::Row> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let live = app.classify(&titles).await;
    assert_eq!(rows.len(), 300);
    for ((row, title), item) in rows.iter().zip(&titles).zip(&live.results) {
        assert_eq!(&row.title, title);
        assert_eq!((&row.topic, row.confidence), (&item.topic, item.confidence));
    }
    // An interrupted download: the output lost its last 180 rows.
    let written = std::fs::read_to_string(&output).unwrap();
    let kept: Vec<&str> = written.lines().take(120).collect();
    std::fs::write(&output, kept.join("\n") + "\n").unwrap();
    let calls = app.sim_stats().await["requests_total"].as_u64().unwrap();
    let second = classify_file_as_job(&config, false).await.unwrap();
    assert_eq!((second.items, second.skipped), (180, 120));
    assert_eq!(
        app.sim_stats().await["requests_total"].as_u64().unwrap(),
        calls,
        "the same job was found: nothing classified twice"
    );
    let list: JobList = body(app.client.get(app.url("/jobs")).send().await.unwrap()).await;
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&output).unwrap().lines().count(),
        300
    );
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_job_may_be_sent_as_ndjson_lines_and_its_results_read_as_csv() {
    let dir = data_dir("ndjson");
    let app = simulated_with_jobs(&dir, &[]).await;
    let titles = data_lines("nasty_titles.txt");
    let lines: String = titles
        .iter()
        .map(|t| json!({ "title": t }).to_string() + "\n")
        .collect();
    let response = app
        .client
        .post(app.url("/jobs"))
        .query(&[
            ("taxonomy", "hn-topics"),
            ("metadata", r#"{"run":"nightly"}"#),
        ])
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: JobView = body(response).await;
    assert_eq!(job.counts.total, titles.len() as u64);
    assert_eq!(
        job.metadata["run"], "nightly",
        "metadata from the query string"
    );
    finished(&app, &job.id).await;
    let csv = app
        .client
        .get(app.url(&format!("/jobs/{}/results", job.id)))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv");
    let text = csv.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "index",
            "topic",
            "confidence",
            "confidence_source",
            "error",
            "error_code"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(
        rows.len(),
        titles.len(),
        "one row per title, bad ones with their error"
    );
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
    }
    let bad = app
        .client
        .post(app.url("/jobs"))
        .header("content-type", "application/x-ndjson")
        .body("{\"title\": \"ok\"}\n{\"tittle\": \"typo\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: serde_json::Value = body(bad).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 2")
    );
    let not_an_object = app
        .client
        .post(app.url("/jobs?metadata=nightly"))
        .header("content-type", "application/x-ndjson")
        .body("{\"title\": \"ok\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(not_an_object.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_job_whose_every_title_fails_ends_failed() {
    for books in [Books::disk("failed"), Books::redis("failed")] {
        let app = simulated_keeping(&books, &[]).await;
        let (status, submitted) = submit(&app, &["".to_owned(), "   ".to_owned()], None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
        let id = submitted["id"].as_str().unwrap();
        let ended = finished(&app, id).await;
        assert_eq!(ended.status, JobStatus::Failed, "{ended:?}");
        assert_eq!((ended.counts.done, ended.counts.errors), (2, 2));
        let lines = results(&app, id, 0).await;
        assert!(lines.iter().all(|l| l.error_code.is_some()), "{lines:?}");
        app.shutdown().await;
    }
}
