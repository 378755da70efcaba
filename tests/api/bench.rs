//! `hn-classifier bench`: every approach against the simulator (`service` through a real `serve`
//! child process), every item checked, each run appended to its CSV file, the chart drawn.

use clap::Parser;
use hn_classifier::bench::{Approach, BenchConfig, report, run};
use hn_classifier::cli::{Cli, Command};

fn bench_config(args: &[&str]) -> BenchConfig {
    let titles = format!("{}/data/hn_titles.txt", env!("CARGO_MANIFEST_DIR"));
    let all = [
        &[
            "hn-classifier",
            "bench",
            "--titles",
            titles.as_str(),
            "--sim-latency-ms",
            "0",
        ],
        args,
    ]
    .concat();
    match Cli::try_parse_from(all).expect("valid bench flags").command {
        Command::Bench(c) => c,
        _ => unreachable!("parsed as bench"),
    }
}

#[tokio::test]
async fn every_approach_runs_checks_every_item_appends_csv_rows_and_draws_the_chart() {
    let dir = std::env::temp_dir().join(format!("hnc-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap();

    let service = run(&bench_config(&[
        "--approach",
        "service",
        "--service-binary",
        env!("CARGO_BIN_EXE_hn-classifier"),
        "--items",
        "200",
        "--batch-size",
        "20",
        "--concurrency",
        "5",
        "--results-dir",
        dir_arg,
    ]))
    .await
    .unwrap();
    let direct = run(&bench_config(&[
        "--approach",
        "pool,async,sharded",
        "--shards",
        "3",
        "--items",
        "100",
        "--concurrency",
        "10,20",
        "--results-dir",
        dir_arg,
    ]))
    .await
    .unwrap();

    assert_eq!(service.len(), 1);
    assert_eq!(
        direct.len(),
        6,
        "one run per approach and swept concurrency"
    );
    for result in service.iter().chain(&direct) {
        assert_eq!(result.errors, 0, "{result:?}");
        assert!(result.items_per_s > 0.0 && result.wall_s > 0.0);
        assert_eq!(
            result.upstream_requests_per_1k, 1000.0,
            "distinct titles: one call each ({result:?})"
        );
        assert!(result.cost_usd_per_1k.unwrap() > 0.0);
    }
    let approaches: Vec<Approach> = direct.iter().map(|r| r.approach).collect();
    assert_eq!(
        approaches,
        [
            Approach::Pool,
            Approach::Pool,
            Approach::Async,
            Approach::Async,
            Approach::Sharded,
            Approach::Sharded
        ]
    );
    assert_eq!(direct[4].shards, 3);
    // The service ran as a child process: its own CPU time and memory were read.
    let s = &service[0];
    assert_eq!((s.approach, s.batch_size), (Approach::Service, 20));
    assert!(s.service_cpu_s.unwrap() >= 0.0);
    assert!(s.service_peak_rss_mib.unwrap() > 1.0, "{s:?}");
    assert!(direct.iter().all(|r| r.service_cpu_s.is_none()));

    let rows = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(rows("service.csv"), 2, "a header and one run");
    for name in ["pool.csv", "async.csv", "sharded.csv"] {
        assert_eq!(rows(name), 3, "{name}: a header and two runs");
    }
    let text = report(&direct);
    for approach in ["pool", "async", "sharded"] {
        assert!(
            text.contains(&format!("best {approach}: concurrency")),
            "{text}"
        );
    }
    let png = std::fs::read(dir.join("chart.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    for approach in ["pool (c=", "async (c=", "sharded (c="] {
        assert!(svg.contains(approach), "{approach} bar labelled");
    }

    // A second bench appends: the header is not written again.
    run(&bench_config(&[
        "--approach",
        "async",
        "--items",
        "10",
        "--concurrency",
        "5",
        "--results-dir",
        dir_arg,
    ]))
    .await
    .unwrap();
    assert_eq!(rows("async.csv"), 4);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn sharded_clients_can_speak_http2_to_the_simulator() {
    let dir = std::env::temp_dir().join(format!("hnc-bench-h2-{}", std::process::id()));
    let results = run(&bench_config(&[
        "--approach",
        "sharded",
        "--http2",
        "--shards",
        "2",
        "--items",
        "60",
        "--concurrency",
        "20",
        "--results-dir",
        dir.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(results[0].errors, 0);
    assert!(results[0].http2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn latency_sends_open_loop_to_the_service_and_the_upstream_and_records_both() {
    let dir = std::env::temp_dir().join(format!("hnc-bench-latency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    run(&bench_config(&[
        "--approach",
        "latency",
        "--service-binary",
        env!("CARGO_BIN_EXE_hn-classifier"),
        "--rates",
        "200",
        "--duration-s",
        "0.5",
        "--results-dir",
        dir.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    #[derive(serde::Deserialize)]
    struct Row {
        target: String,
        sent: usize,
        errors: usize,
        p50_ms: f64,
        p99_ms: f64,
    }
    let rows: Vec<Row> = csv::Reader::from_path(dir.join("latency.csv"))
        .unwrap()
        .deserialize()
        .map(Result::unwrap)
        .collect();
    let targets: Vec<&str> = rows.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["service", "direct"]);
    for row in &rows {
        assert_eq!((row.sent, row.errors), (100, 0), "{}", row.target);
        assert!(
            row.p50_ms > 0.0 && row.p99_ms >= row.p50_ms,
            "{}",
            row.target
        );
    }
}
