//! `hn-classifier bench`: both approaches run against in-process simulators, every item checked,
//! each run appended to its CSV file.

use clap::Parser;
use hn_classifier::bench::{Approach, BenchConfig, report, run};
use hn_classifier::config::{Cli, Command};

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
async fn both_approaches_run_check_every_item_and_append_csv_rows() {
    let dir = std::env::temp_dir().join(format!("hnc-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap();

    let service = run(&bench_config(&[
        "--approach",
        "service",
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
        "async",
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
    assert_eq!(direct.len(), 2, "one run per swept concurrency");
    for result in service.iter().chain(&direct) {
        assert_eq!(result.errors, 0, "{result:?}");
        assert!(result.items_per_s > 0.0 && result.wall_s > 0.0);
        assert_eq!(
            result.upstream_requests_per_1k, 1000.0,
            "distinct titles: one call each"
        );
        assert!(result.cost_usd_per_1k.unwrap() > 0.0);
    }
    assert_eq!(service[0].approach, Approach::Service);
    assert_eq!(service[0].batch_size, 20);
    let rows = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(rows("service.csv"), 2, "a header and one run");
    assert_eq!(rows("async.csv"), 3, "a header and two runs");
    assert!(report(&direct).contains("best: Async"));

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
