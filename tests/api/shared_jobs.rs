//! Jobs kept in the Redis the replicas share (a real `redis-server`, append-only file on): any
//! replica answers for any job, a retried submission to another replica finds the same job, and
//! a replica SIGKILLed mid-job is taken over by another, which finishes with every title
//! answered once.

use std::time::{Duration, Instant};

use hn_classifier::api::JobView;
use hn_classifier::jobs::JobStatus;
use hn_classifier::jobs::plan::Lane;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, data_lines, spawn_sim, start_binary};
use crate::jobs::{Books, body, finished, results};
use crate::shared::{replica, sim_stats};

fn redis_url(books: &Books) -> String {
    match books {
        Books::Redis(redis, _) => redis.url(),
        Books::Disk(_) => unreachable!("these tests keep their jobs in redis"),
    }
}

/// The binary as a second process on `sim`'s key and Redis at `url`: a replica to SIGKILL.
fn replica_process(
    sim: &hn_classifier::sim::SimServer,
    url: &str,
    extra: &[&str],
) -> (std::process::Child, String) {
    let base_url = sim.base_url();
    let flags = [
        "--openai-base-url",
        &base_url,
        "--openai-api-key",
        "sk-shared-key",
        "--redis-url",
        url,
    ];
    start_binary(&[&flags[..], extra].concat())
}

async fn requests_total(sim: &hn_classifier::sim::SimServer) -> u64 {
    sim_stats(sim).await["requests_total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_for_a_job_another_one_accepted() {
    let books = Books::redis("shared-any");
    let sim = spawn_sim(&["--sim-latency-ms", "20"]).await;
    let (first, second) = (
        replica(&sim, &redis_url(&books), &[]).await,
        replica(&sim, &redis_url(&books), &[]).await,
    );
    let titles = data_lines("hn_titles.txt")[..1000].to_vec();
    let post = |app: &TestApp| {
        app.client
            .post(app.url("/jobs"))
            .header("idempotency-key", "nightly-2026-12-06")
            .json(&json!({"titles": titles, "metadata": {"run": "nightly"}}))
            .send()
    };
    let accepted = post(&first).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: JobView = body(accepted).await;
    let again = post(&second).await.unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the same job, from the other replica"
    );
    assert_eq!(body::<JobView>(again).await.id, accepted.id);

    let done = finished(&second, &accepted.id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!((done.counts.done, done.counts.errors), (1000, 0));
    assert_eq!(done.metadata["run"], "nightly");
    let lines = results(&second, &accepted.id, 0).await;
    assert_eq!(
        lines.iter().map(|l| l.index).collect::<Vec<_>>(),
        (0..1000).collect::<Vec<u64>>()
    );
    assert_eq!(results(&first, &accepted.id, 0).await, lines);
    assert!(
        requests_total(&sim).await <= 1000,
        "no title paid for twice"
    );
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_job_is_taken_over_and_no_title_is_answered_twice() {
    let mut books = Books::redis("shared-kill");
    let url = redis_url(&books);
    // 100 ms a call: 2,000 titles take the first replica a few seconds.
    let sim = spawn_sim(&["--sim-latency-ms", "100", "--sim-latency-sigma", "0"]).await;
    let (mut doomed, addr) = replica_process(&sim, &url, &[]);
    let client = reqwest::Client::new();
    let titles = data_lines("hn_titles.txt")[..2000].to_vec();
    let accepted = client
        .post(format!("http://{addr}/jobs"))
        .json(&json!({"titles": titles}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let id = body::<JobView>(accepted).await.id;
    let job_url = format!("http://{addr}/jobs/{id}");
    let progress = |client: reqwest::Client, url: String| async move {
        let view: JobView = client.get(url).send().await.unwrap().json().await.unwrap();
        view.counts.done
    };
    let start = Instant::now();
    while progress(client.clone(), job_url.clone()).await < 400 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job is not moving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Into a round: its calls are in flight at the kill.
    tokio::time::sleep(Duration::from_millis(50)).await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    // Redis itself goes down and comes back from its append-only file.
    if let Books::Redis(redis, _) = &mut books {
        redis.kill();
        redis.restart();
    }

    let heir = replica(&sim, &url, &[]).await;
    let done = finished(&heir, &id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!((done.counts.done, done.counts.errors), (2000, 0));
    let lines = results(&heir, &id, 0).await;
    assert_eq!(
        lines.iter().map(|l| l.index).collect::<Vec<_>>(),
        (0..2000).collect::<Vec<u64>>(),
        "every title once, in input order"
    );
    let calls = requests_total(&sim).await;
    assert!(
        calls <= 2000 + 200,
        "at most the round in flight at the kill is asked again: {calls} calls"
    );
    heir.shutdown().await;
}

#[tokio::test]
async fn with_redis_away_job_calls_answer_503_and_classify_batch_still_works() {
    let mut books = Books::redis("shared-away");
    let sim = spawn_sim(&[]).await;
    let app = replica(&sim, &redis_url(&books), &[]).await;
    if let Books::Redis(redis, _) = &mut books {
        redis.kill();
    }
    let refused = app
        .client
        .post(app.url("/jobs"))
        .json(&json!({"titles": ["Show HN: a title"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error: serde_json::Value = body(refused).await;
    assert_eq!(error["error"]["code"], "job_store_unavailable");
    let live = app.classify(&["Show HN: a title".to_owned()]).await;
    assert_eq!(live.errors, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_its_job_s_batch_runs_is_followed_by_another_polling_the_same_batch()
{
    let books = Books::redis("shared-batch");
    let url = redis_url(&books);
    let sim = spawn_sim(&["--sim-batch-seconds", "4"]).await;
    let poll = ["--batch-poll", "0.2"];
    let (mut doomed, addr) = replica_process(&sim, &url, &poll);
    let client = reqwest::Client::new();
    let titles = data_lines("hn_titles.txt")[..300].to_vec();
    let accepted: JobView = client
        .post(format!("http://{addr}/jobs"))
        .json(&json!({"titles": titles, "complete_within": "30h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accepted.plan.as_ref().unwrap().lane, Lane::Batch);
    let start = Instant::now();
    loop {
        if sim_stats(&sim).await["batches_created"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no batch created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();

    let heir = replica(&sim, &url, &poll).await;
    let done = finished(&heir, &accepted.id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!((done.counts.done, done.counts.errors), (300, 0));
    assert_eq!(done.lanes[&Lane::Batch].titles, 300, "{:?}", done.lanes);
    let seen = sim_stats(&sim).await;
    assert_eq!(
        seen["batches_created"], 1,
        "the same batch polled, not a second one made"
    );
    assert_eq!(seen["requests_total"], 0, "no title sent live");
    heir.shutdown().await;
}
