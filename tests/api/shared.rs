//! Replicas sharing one real `redis-server` (Debian's package; `.ci/run` installs it): the
//! provider budget, the quotas and the result cache act as one, and Redis going away loses no
//! item.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use hn_classifier::sim::SimServer;

use crate::helpers::{
    RedisServer, TestApp, config, data_lines, free_port, get, spawn_app, spawn_sim,
};

/// A replica on `sim`'s key, with Redis at `redis_url` and extra flags.
pub async fn replica(sim: &SimServer, redis_url: &str, extra: &[&str]) -> TestApp {
    let base_url = sim.base_url();
    let flags = [
        &[
            "--openai-base-url",
            base_url.as_str(),
            "--openai-api-key",
            "sk-shared-key",
            "--redis-url",
            redis_url,
        ],
        extra,
    ]
    .concat();
    spawn_app(config(&flags)).await
}

async fn metrics(app: &TestApp) -> String {
    get(&app.url("/metrics")).await.1
}

/// The sum of every series of `name` in a Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with(' ') || rest.starts_with('{')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn sim_stats(sim: &SimServer) -> serde_json::Value {
    reqwest::get(format!("http://{}/_sim/stats", sim.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn count(stats: &serde_json::Value, status: &str) -> u64 {
    stats["by_status"][status].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_replica_answers_from_the_cache_the_first_filled() {
    let redis = RedisServer::start();
    let sim = spawn_sim(&["--sim-latency-ms", "0"]).await;
    let cache = ["--cache-entries", "1000"];
    let first = replica(&sim, &redis.url(), &cache).await;
    let second = replica(&sim, &redis.url(), &cache).await;
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(100).collect();

    let filled = first.classify(&titles).await;
    assert_eq!(filled.errors, 0);
    let calls_after_first = count(&sim_stats(&sim).await, "200");
    let answered = second.classify(&titles).await;

    assert_eq!(answered.errors, 0);
    assert!(
        answered.results.iter().all(|r| r.cached),
        "every item from the shared cache"
    );
    assert_eq!(
        count(&sim_stats(&sim).await, "200"),
        calls_after_first,
        "the second replica made no upstream call"
    );
    let labels = |r: &hn_classifier::api::body::ClassifyBatchResponse| -> Vec<_> {
        r.results.iter().map(|i| i.topic.clone()).collect()
    };
    assert_eq!(labels(&filled), labels(&answered));
    assert_eq!(answered.usage.upstream_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_quota_per_client() {
    let redis = RedisServer::start();
    let sim = spawn_sim(&["--sim-latency-ms", "0"]).await;
    let quota = ["--quota-items-per-min", "600"];
    let replicas = [
        replica(&sim, &redis.url(), &quota).await,
        replica(&sim, &redis.url(), &quota).await,
        replica(&sim, &redis.url(), &quota).await,
    ];
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(50).collect();
    let mut accepted = 0;
    let mut refused = 0;
    for round in 0..18 {
        let (status, body) = replicas[round % 3].post_titles(&titles).await;
        match status {
            StatusCode::OK => accepted += titles.len(),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // 900 asked of a 600-a-minute quota within a few seconds: each replica alone would have
    // accepted all 300 it was sent.
    assert!((600..=630).contains(&accepted), "accepted {accepted}");
    assert_eq!(refused, 18 - accepted / titles.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_ride_one_provider_budget_without_bouncing_off_it() {
    let redis = RedisServer::start();
    // 100 calls a second for the key, whichever replica sends them.
    let sim = spawn_sim(&["--sim-rpm", "6000", "--sim-latency-ms", "20"]).await;
    let replicas = [
        replica(&sim, &redis.url(), &[]).await,
        replica(&sim, &redis.url(), &[]).await,
        replica(&sim, &redis.url(), &[]).await,
    ];
    let titles = data_lines("hn_titles.txt");
    let started = Instant::now();
    let runs = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| r.classify(&titles[i * 150..(i + 1) * 150]));
    let outcomes = futures::future::join_all(runs).await;
    let took = started.elapsed();

    for outcome in &outcomes {
        assert_eq!(outcome.errors, 0);
    }
    let stats = sim_stats(&sim).await;
    let limited = count(&stats, "429");
    assert!(
        limited <= 4,
        "the replicas shared one budget, so the provider refused almost nothing: {stats}"
    );
    // 450 calls at 98 a second: never faster than the limit, whatever each replica thought.
    assert!(took >= Duration::from_secs(4), "took {took:?}");
    let commands: f64 = {
        let mut total = 0.0;
        for r in &replicas {
            total += metric(&metrics(r).await, "redis_commands_total");
        }
        total
    };
    assert!(
        commands > 0.0 && commands < 450.0,
        "leased in blocks: {commands} commands"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_run_loses_no_item_and_is_picked_up_again() {
    let mut redis = RedisServer::start();
    let sim = spawn_sim(&["--sim-rpm", "6000", "--sim-latency-ms", "20"]).await;
    let flags = ["--cache-entries", "1000", "--quota-items-per-min", "100000"];
    let app = replica(&sim, &redis.url(), &flags).await;
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(300).collect();

    let run = app.classify(&titles);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.kill();
    };
    let (outcome, ()) = tokio::join!(run, kill);

    assert_eq!(outcome.results.len(), 300);
    assert_eq!(outcome.errors, 0, "no item lost to Redis going away");
    let text = metrics(&app).await;
    assert!(metric(&text, "redis_errors_total") >= 1.0, "{text}");
    assert_eq!(metric(&text, "redis_coordinated"), 0.0);
    assert_eq!(
        get(&app.url("/readyz")).await.0,
        StatusCode::OK,
        "still ready"
    );

    redis.restart();
    // Tried again a second after the last failure, reconnecting by itself.
    let restarted = Instant::now();
    let more_titles = data_lines("hn_titles.txt");
    for round in 0.. {
        let batch = &more_titles[300 + round * 10..310 + round * 10];
        assert_eq!(app.classify(batch).await.errors, 0);
        if metric(&metrics(&app).await, "redis_coordinated") == 1.0 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "never coordinated again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("coordinated again after {:?}", restarted.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_starts_ready_and_serves_while_redis_is_unreachable() {
    let sim = spawn_sim(&["--sim-latency-ms", "0"]).await;
    // Nothing listens there; the password must never be printed.
    let url = format!("redis://:hunter2-secret@127.0.0.1:{}", free_port());
    let app = replica(
        &sim,
        &url,
        &["--cache-entries", "100", "--quota-items-per-min", "1000"],
    )
    .await;

    assert_eq!(get(&app.url("/readyz")).await.0, StatusCode::OK);
    let outcome = app.classify(&data_lines("hn_titles.txt")[..40]).await;
    assert_eq!(outcome.errors, 0);
    let text = metrics(&app).await;
    assert_eq!(metric(&text, "redis_coordinated"), 0.0);
    assert!(metric(&text, "redis_errors_total") >= 1.0);
    assert!(!text.contains("hunter2"));
}

/// The shared budget's background rule, against a real redis-server: job calls are leased only
/// turns nobody else asks for, so whichever replica runs a job, interactive calls on any replica
/// never find more than one horizon of job calls booked ahead of them.
#[tokio::test]
async fn the_shared_budget_leases_job_calls_only_the_turns_nobody_else_asks_for() {
    use hn_classifier::coord::{
        BACKGROUND_HORIZON, Coordinator, LeaseRequest, RedisSettings, SharedBudget,
    };
    use hn_classifier::secret::Secret;
    let redis = RedisServer::start();
    let settings = RedisSettings {
        url: Secret::new(redis.url()),
        timeout: Duration::from_secs(2),
        prefix: "hnc-test".to_owned(),
    };
    let metrics = std::sync::Arc::new(hn_classifier::metrics::Metrics::new());
    let coordinator = std::sync::Arc::new(Coordinator::new(&settings, metrics).unwrap());
    let budget = SharedBudget::new(coordinator, "http://sim/v1", &Secret::new("sk-budget"));
    // 6,000 a minute: 100 calls a second, one every 10 ms.
    let ask = |calls: u32, background: bool| LeaseRequest {
        rpm: Some(6000),
        share: 1.0,
        calls,
        background,
        ..LeaseRequest::default()
    };

    let idle = budget.lease(ask(64, true)).await.unwrap();
    assert!(idle.calls >= 1, "an idle budget serves job calls: {idle:?}");
    let most = (BACKGROUND_HORIZON.as_secs_f64() * 100.0).floor() as u32;
    assert!(
        idle.calls <= most.max(1),
        "a horizon's worth at most: {idle:?}"
    );

    // Interactive calls book a second of the schedule ahead (100 calls).
    let interactive = budget.lease(ask(100, false)).await.unwrap();
    assert_eq!(interactive.calls, 100);
    let refused = budget.lease(ask(8, true)).await.unwrap();
    assert_eq!(
        refused.calls, 0,
        "no job call books ahead of them: {refused:?}"
    );
    assert!(
        refused.delay > Duration::from_millis(500),
        "told when the budget frees up: {refused:?}"
    );
    let still = budget.lease(ask(8, false)).await.unwrap();
    assert_eq!(still.calls, 8, "interactive calls still queue as before");
}
