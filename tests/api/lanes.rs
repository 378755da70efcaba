//! The deadline picks the lane (`deadline` / `complete_within` on `POST /jobs`), against the
//! simulator: a plan shown before anything is spent (`dry_run`), a deadline nothing can meet
//! refused with the earliest one, the Batch API for a deadline a day and more away at half the
//! live price, flex for hours, live for minutes, and a batch held too long escalated to live
//! before the deadline, keeping what it finished.
//!
//! The simulator announces no rate limit, so the planner assumes 500 requests a minute (or is told
//! 500 with `--rpm-limit`, where a refusal is tested); the
//! sizes and margins below are chosen against that.

use std::time::{Duration, Instant};

use hn_classifier::api::JobView;
use hn_classifier::jobs::JobStatus;
use hn_classifier::jobs::plan::Lane;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::jobs::{Books, body, finished, results, simulated_keeping};

async fn post(app: &TestApp, request: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/jobs"))
        .json(&request)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn titles(n: usize) -> Vec<String> {
    data_lines("hn_titles.txt")[..n].to_vec()
}

/// Costs agree to a part in a million (sums of floats).
fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-9)
}

#[tokio::test]
async fn a_dry_run_shows_the_plan_and_an_unmeetable_deadline_is_refused_with_the_earliest() {
    let books = Books::disk("lanes-dry");
    // A known rate: with one only assumed, a deadline is never refused.
    let app = simulated_keeping(&books, &["--rpm-limit", "500"]).await;
    let (status, dry) = post(
        &app,
        json!({"titles": titles(300), "complete_within": "30h", "dry_run": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["dry_run"], true);
    let plan = &dry["plan"];
    assert_eq!(plan["lane"], "batch", "{plan}");
    assert!(
        plan["why"]
            .as_str()
            .unwrap()
            .starts_with("Batch API: the deadline is 30 h away"),
        "{plan}"
    );
    let (cost, live) = (
        plan["estimated_cost_usd"].as_f64().unwrap(),
        plan["live_cost_usd"].as_f64().unwrap(),
    );
    assert!(cost > 0.0 && near(cost, live / 2.0), "{plan}");
    assert_eq!(plan["estimated_calls"], 300);
    let listed: Value = body(app.client.get(app.url("/jobs")).send().await.unwrap()).await;
    assert_eq!(listed["jobs"], json!([]), "a dry run creates nothing");

    // 2,000 titles at 500 a minute take 4 minutes: due in 30 s cannot be met.
    let asked_at = std::time::SystemTime::now();
    let (status, refused) = post(
        &app,
        json!({"titles": titles(2000), "complete_within": "30s"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "deadline_unreachable");
    let earliest =
        humantime::parse_rfc3339(refused["error"]["earliest_deadline"].as_str().unwrap()).unwrap();
    let ahead = earliest.duration_since(asked_at).unwrap();
    assert!(
        ahead > Duration::from_secs(240) && ahead < Duration::from_secs(400),
        "{ahead:?}"
    );
    let (status, both) = post(
        &app,
        json!({"titles": titles(1), "deadline": "2030-01-01T00:00:00Z", "complete_within": "1h"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(both["error"]["code"], "validation_failed");
    let (status, far) = post(
        &app,
        json!({"titles": titles(1), "complete_within": "10000y"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{far}");
    assert!(
        far["error"]["message"]
            .as_str()
            .unwrap()
            .contains("366 days"),
        "{far}"
    );
    let (status, _) = post(
        &app,
        json!({"titles": titles(1), "deadline": "9999-12-31T23:59:59-01:00"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let query = app
        .client
        .post(app.url("/jobs?dry_run=maybe"))
        .json(&json!({"titles": titles(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        query.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a bad query is refused with a JSON body too"
    );
    let (status, bad) = post(&app, json!({"titles": titles(1), "deadline": "tomorrow"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("deadline:")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_due_in_30_hours_runs_on_the_batch_api_at_half_the_live_cost() {
    let books = Books::disk("lanes-batch");
    let app = simulated_keeping(&books, &["--sim-batch-seconds", "1", "--batch-poll", "0.2"]).await;
    let (status, accepted) = post(
        &app,
        json!({"titles": titles(300), "complete_within": "30h"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["plan"]["lane"], "batch");
    let id = accepted["id"].as_str().unwrap();
    let done = finished(&app, id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!((done.counts.done, done.counts.errors), (300, 0));
    let batch = done.lanes[&Lane::Batch];
    assert_eq!(batch.titles, 300);
    assert!(!done.lanes.contains_key(&Lane::Live), "{:?}", done.lanes);
    let (cost, live) = (batch.cost_usd.unwrap(), batch.live_cost_usd.unwrap());
    assert!(cost > 0.0 && near(cost, live / 2.0), "{cost} vs {live}");
    assert!(near(done.usage.cost_usd.unwrap(), cost));
    let estimated = done.plan.as_ref().unwrap().estimated_input_tokens as f64;
    let spent = done.usage.input_tokens as f64;
    assert!(
        (estimated / spent - 1.0).abs() < 0.25,
        "the plan's o200k estimate within 25%: {estimated} vs {spent}"
    );
    let lines = results(&app, id, 0).await;
    assert_eq!(
        lines.iter().map(|l| l.index).collect::<Vec<_>>(),
        (0..300).collect::<Vec<u64>>()
    );
    let stats = app.sim_stats().await;
    assert_eq!(stats["batches_created"], 1);

    // That batch took about a second: the next plan counts on what batches take of late.
    let (_, soon) = post(
        &app,
        json!({"titles": titles(300), "complete_within": "1h", "dry_run": true}),
    )
    .await;
    assert_eq!(soon["plan"]["lane"], "batch", "{soon}");
    assert!(
        soon["plan"]["why"]
            .as_str()
            .unwrap()
            .contains("turnaround (observed)"),
        "{soon}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hours_runs_on_flex_and_ten_minutes_live() {
    let books = Books::disk("lanes-flex");
    // A margin of 500 s: 400 titles (48 s at 500 a minute) meet 10 minutes live but not on flex.
    let app = simulated_keeping(&books, &["--deadline-margin", "500"]).await;
    let (_, flex) = post(
        &app,
        json!({"titles": titles(400), "complete_within": "3h"}),
    )
    .await;
    assert_eq!(flex["plan"]["lane"], "flex", "{flex}");
    let (_, live) = post(
        &app,
        json!({"titles": titles(400), "complete_within": "10m"}),
    )
    .await;
    assert_eq!(live["plan"]["lane"], "live", "{live}");
    assert!(
        live["plan"]["why"]
            .as_str()
            .unwrap()
            .contains("too close for flex"),
        "{live}"
    );
    for (job, lane) in [(&flex, Lane::Flex), (&live, Lane::Live)] {
        let done = finished(&app, job["id"].as_str().unwrap()).await;
        assert_eq!(done.status, JobStatus::Completed);
        assert_eq!(done.lanes.len(), 1, "{:?}", done.lanes);
        let used = done.lanes[&lane];
        assert_eq!(used.titles, 400);
        let (cost, at_live) = (used.cost_usd.unwrap(), used.live_cost_usd.unwrap());
        let factor = if lane == Lane::Flex { 0.5 } else { 1.0 };
        assert!(
            near(cost, at_live * factor),
            "{lane:?}: {cost} vs {at_live}"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_too_long_is_escalated_before_the_deadline_keeping_what_it_finished() {
    let books = Books::disk("lanes-escalate");
    // The simulator takes a minute over the batch; the planner expects one second of it.
    let app = simulated_keeping(
        &books,
        &[
            "--sim-batch-seconds",
            "60",
            "--batch-window",
            "1",
            "--deadline-margin",
            "2",
            "--batch-poll",
            "0.2",
        ],
    )
    .await;
    let started = Instant::now();
    let (status, accepted) = post(
        &app,
        json!({"titles": titles(200), "complete_within": "40s"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["plan"]["lane"], "batch", "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let done: JobView = finished(&app, id).await;
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "done before the deadline"
    );
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!((done.counts.done, done.counts.errors), (200, 0));
    let (batch, live) = (done.lanes[&Lane::Batch], done.lanes[&Lane::Live]);
    assert!(batch.titles > 0 && live.titles > 0, "{:?}", done.lanes);
    assert_eq!(batch.titles + live.titles, 200);
    assert!(near(
        batch.cost_usd.unwrap(),
        batch.live_cost_usd.unwrap() / 2.0
    ));
    assert!(near(live.cost_usd.unwrap(), live.live_cost_usd.unwrap()));
    assert!(near(
        done.usage.cost_usd.unwrap(),
        batch.cost_usd.unwrap() + live.cost_usd.unwrap()
    ));
    let lines = results(&app, id, 0).await;
    assert_eq!(
        lines.iter().map(|l| l.index).collect::<Vec<_>>(),
        (0..200).collect::<Vec<u64>>(),
        "every title once"
    );
    assert_eq!(app.sim_stats().await["batches_created"], 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_its_batch_runs_cancels_the_batch_and_keeps_what_it_finished() {
    let books = Books::disk("lanes-cancel");
    let app = simulated_keeping(&books, &["--sim-batch-seconds", "6", "--batch-poll", "0.2"]).await;
    let (_, accepted) = post(
        &app,
        json!({"titles": titles(300), "complete_within": "30h"}),
    )
    .await;
    assert_eq!(accepted["plan"]["lane"], "batch", "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let sim = format!("http://{}", app.sim_addr.unwrap());
    let batches = || async {
        let listed: Value = app
            .client
            .get(format!("{sim}/v1/batches"))
            .bearer_auth("sim")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed["data"].as_array().cloned().unwrap_or_default()
    };
    let start = Instant::now();
    // Cancelled once the batch has answered some of its lines.
    while batches()
        .await
        .first()
        .is_none_or(|b| b["request_counts"]["completed"].as_u64().unwrap_or(0) < 30)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the batch never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled: JobView = body(
        app.client
            .post(app.url(&format!("/jobs/{id}/cancel")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let kept = loop {
        let view = finished(&app, id).await;
        if let Some(batch) = view.lanes.get(&Lane::Batch) {
            break *batch;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "what the batch did was not kept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kept.titles >= 30 && kept.titles < 300, "{kept:?}");
    assert_eq!(
        batches().await[0]["status"],
        "cancelled",
        "cancelled at the provider"
    );
    assert_eq!(results(&app, id, 0).await.len() as u64, kept.titles);
    assert_eq!(
        app.sim_stats().await["requests_total"],
        0,
        "nothing sent live"
    );
    app.shutdown().await;
}
