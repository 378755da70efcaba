//! `hn-classifier classify FILE`: a file through a running service, in order, resumable.

use std::path::PathBuf;

use hn_classifier::client::{
    ClassifyFileConfig, ClientError, OutputFormat, Row, ServiceArgs, classify_file,
};
use hn_classifier::secret::Secret;

use crate::helpers::*;

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hnc-client-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn config_for(
    app: &TestApp,
    input: PathBuf,
    output: PathBuf,
    format: Option<OutputFormat>,
) -> ClassifyFileConfig {
    ClassifyFileConfig {
        format,
        ..config_for_url(&format!("http://{}", app.addr), input, output)
    }
}

fn config_for_url(url: &str, input: PathBuf, output: PathBuf) -> ClassifyFileConfig {
    ClassifyFileConfig {
        input,
        service: ServiceArgs::remote(url.to_owned()),
        output: Some(output),
        format: None,
        batch_size: 25,
        concurrency: 3,
        field: None,
        batch_api: false,
        job: false,
        fallback: hn_classifier::client::Fallback::Batch,
        cancel: false,
        poll_s: 10.0,
        batch_max_requests: 50_000,
    }
}

fn jsonl_rows(path: &PathBuf) -> Vec<Row> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_file_comes_back_in_input_order_and_an_interrupted_run_resumes() {
    let app = spawn_simulated(&["--sim-latency-ms", "20"]).await;
    let titles = data_lines("hn_titles_1000.txt")[..120].to_vec();
    let input = temp_path("titles.txt");
    std::fs::write(&input, titles.join("\n") + "\n").unwrap();
    let output = temp_path("out.jsonl");
    let _ = std::fs::remove_file(&output);
    let config = config_for(&app, input, output.clone(), None);

    let summary = classify_file(&config, false).await.unwrap();

    assert_eq!(
        (summary.items, summary.errors, summary.skipped),
        (120, 0, 0)
    );
    assert_eq!(summary.upstream_requests, 120);
    assert!(summary.cost_usd.unwrap() > 0.0);
    assert!(summary.report().contains("per 1000 items"));
    let rows = jsonl_rows(&output);
    let expected = app.classify(&titles).await;
    for ((row, title), want) in rows.iter().zip(&titles).zip(&expected.results) {
        assert_eq!(&row.title, title);
        assert_eq!((&row.topic, row.confidence), (&want.topic, want.confidence));
    }

    // Interrupted after 50 rows: the rerun sends only the other 70 and ends with the same file.
    let complete = std::fs::read_to_string(&output).unwrap();
    let first_50: String = complete
        .lines()
        .take(50)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&output, first_50).unwrap();
    let resumed = classify_file(&config, false).await.unwrap();
    assert_eq!((resumed.skipped, resumed.items), (50, 70));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), complete);
    let again = classify_file(&config, false).await.unwrap();
    assert_eq!((again.skipped, again.items), (120, 0), "nothing left to do");
    app.shutdown().await;
}

#[tokio::test]
async fn jsonl_input_and_csv_output_keep_nasty_titles_intact() {
    let app = spawn_simulated(&[]).await;
    let titles = data_lines("nasty_titles.txt");
    let input = temp_path("nasty.jsonl");
    let lines: Vec<String> = titles
        .iter()
        .map(|t| serde_json::json!({"text": t, "other": 1}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = temp_path("nasty.csv");
    let _ = std::fs::remove_file(&output);
    let mut config = config_for(&app, input, output.clone(), Some(OutputFormat::Csv));
    config.field = Some("text".to_owned());

    let summary = classify_file(&config, false).await.unwrap();

    assert_eq!((summary.items, summary.errors), (70, 3));
    let rows: Vec<Row> = csv::Reader::from_path(&output)
        .unwrap()
        .deserialize()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 70);
    for (row, title) in rows.iter().zip(&titles) {
        assert_eq!(
            &row.title, title,
            "the CSV round-trips every title byte for byte"
        );
    }
    assert_eq!(rows[31].error_code.as_deref(), Some("title_empty"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_service_with_keys_needs_the_client_key() {
    let app = spawn_simulated(&["--api-keys", "file-client-key"]).await;
    let input = temp_path("two.txt");
    std::fs::write(&input, "Rust 2.0\nA new GPU\n").unwrap();
    let output = temp_path("two.jsonl");
    let _ = std::fs::remove_file(&output);
    let mut config = config_for(&app, input, output.clone(), None);

    let refused = classify_file(&config, false).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Service { status: 401, .. }),
        "{refused}"
    );
    config.service.api_key = Some(Secret::new("file-client-key"));
    assert_eq!(classify_file(&config, false).await.unwrap().items, 2);
    app.shutdown().await;
}

/// `classify FILE --simulate` through the real binary: no service running, the pipeline in
/// process, every title back in order in the CSV.
#[test]
fn the_binary_classifies_a_file_without_a_running_service() {
    let titles = data_lines("hn_titles.txt")[..300].to_vec();
    let input = temp_path("direct.txt");
    std::fs::write(&input, titles.join("\n") + "\n").unwrap();
    let output = temp_path("direct.csv");
    let _ = std::fs::remove_file(&output);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .args([
            "classify",
            input.to_str().unwrap(),
            "--simulate",
            "--format",
            "csv",
        ])
        .args([
            "--output",
            output.to_str().unwrap(),
            "--url",
            "http://127.0.0.1:9",
        ])
        .env_remove("OPENAI_API_KEY")
        .env("HNC_SIM_LATENCY_MS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("300 items (0 errors"), "{stderr}");
    let mut reader = csv::Reader::from_path(&output).unwrap();
    let rows: Vec<Row> = reader.deserialize().map(Result::unwrap).collect();
    let back: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
    let sent: Vec<&str> = titles.iter().map(|t| t.as_str()).collect();
    assert_eq!(back, sent);
    assert!(
        rows.iter()
            .all(|r| HN_LABELS.contains(&r.topic.as_deref().unwrap()))
    );
}

/// The traps a first run fell into: the output's format follows its extension, a contradicting
/// `--format` is refused, a missing input names the action, and a run that fails before its
/// first rows leaves no empty file behind.
#[test]
fn the_binary_follows_the_extension_and_fails_without_leaving_files() {
    let classify = |args: &[&str]| {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
            .arg("classify")
            .args(args)
            .env_remove("OPENAI_API_KEY")
            .env_remove("HNC_URL")
            .env("HNC_SIM_LATENCY_MS", "1")
            .output()
            .unwrap();
        (
            run.status.success(),
            String::from_utf8_lossy(&run.stderr).into_owned(),
        )
    };
    let input = temp_path("traps.txt");
    std::fs::write(&input, "Rust 2.0\nA new GPU\n").unwrap();
    let input = input.to_str().unwrap();
    let csv = temp_path("traps.csv");
    let _ = std::fs::remove_file(&csv);

    let (ok, stderr) = classify(&[input, "--simulate", "--output", csv.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("title,topic,confidence"),
        "CSV, not JSONL: {text}"
    );

    let (ok, stderr) = classify(&[
        input,
        "--simulate",
        "--output",
        csv.to_str().unwrap(),
        "--format",
        "jsonl",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("ends in .csv but --format is jsonl"),
        "{stderr}"
    );

    let (ok, stderr) = classify(&["/nonexistent/nope.txt", "--simulate"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot open the input /nonexistent/nope.txt"),
        "{stderr}"
    );

    let unreached = temp_path("unreached.jsonl");
    let _ = std::fs::remove_file(&unreached);
    let (ok, stderr) = classify(&[
        input,
        "--url",
        "http://127.0.0.1:9",
        "--batch-deadline-s",
        "1",
        "--output",
        unreached.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("nothing answers at http://127.0.0.1:9"),
        "{stderr}"
    );
    assert!(!unreached.exists(), "no empty output left behind");
}

/// `classify` over three replicas of the real binary, one of which `stop` ends a second into
/// the run: every title comes back once, in order, labelled.
fn three_replicas_one_stopped_mid_run(stop: fn(&mut std::process::Child), name: &str) {
    let replicas: Vec<(std::process::Child, String)> = (0..3)
        .map(|_| {
            start_binary(&[
                "--simulate",
                "--sim-latency-ms",
                "200",
                "--sim-latency-sigma",
                "0",
            ])
        })
        .collect();
    let titles = data_lines("hn_titles.txt")[..3000].to_vec();
    let input = temp_path(&format!("{name}.txt"));
    std::fs::write(&input, titles.join("\n") + "\n").unwrap();
    let output = temp_path(&format!("{name}.csv"));
    let _ = std::fs::remove_file(&output);
    let mut classify = std::process::Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .args(["classify", input.to_str().unwrap(), "--format", "csv"])
        .args(["--output", output.to_str().unwrap()])
        .args(["--batch-size", "50", "--concurrency", "6"])
        .args(
            replicas
                .iter()
                .flat_map(|(_, addr)| ["--url".to_owned(), format!("http://{addr}")]),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut replicas = replicas;
    assert!(
        classify.try_wait().unwrap().is_none(),
        "still running when the replica stops"
    );
    stop(&mut replicas[1].0);
    let run = classify.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("3000 items (0 errors"), "{stderr}");
    let rows: Vec<Row> = csv::Reader::from_path(&output)
        .unwrap()
        .deserialize()
        .map(Result::unwrap)
        .collect();
    let back: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
    let sent: Vec<&str> = titles.iter().map(String::as_str).collect();
    assert_eq!(back, sent, "every title once, in input order");
    assert!(rows.iter().all(|r| r.topic.is_some() && r.error.is_none()));
    for (mut child, _) in replicas {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_replica_killed_mid_run_costs_a_resend_and_no_row() {
    three_replicas_one_stopped_mid_run(
        |child| {
            child.kill().unwrap();
        },
        "replica-killed",
    );
}

#[test]
fn a_replica_stopped_with_sigterm_mid_run_loses_nothing() {
    three_replicas_one_stopped_mid_run(|child| sigterm(child), "replica-sigterm");
}

/// Rows a run left with errors, by code.
fn codes(rows: &[Row]) -> std::collections::BTreeMap<String, usize> {
    let mut codes = std::collections::BTreeMap::new();
    for row in rows {
        if let Some(code) = &row.error_code {
            *codes.entry(code.clone()).or_default() += 1;
        }
    }
    codes
}

#[tokio::test]
async fn a_rerun_after_an_outage_fills_every_transient_row_keeps_the_final_ones_and_repairs_a_torn_line()
 {
    let mut provider = crate::outage::Provider::start(&["--sim-latency-ms", "10"]);
    let app = crate::outage::spawn_against_provider(&provider, &["--item-deadline", "1"]).await;
    let mut titles = data_lines("hn_titles_1000.txt")[..60].to_vec();
    titles[10] = "   ".to_owned();
    let input = temp_path("outage.txt");
    std::fs::write(&input, titles.join("\n") + "\n").unwrap();
    let output = temp_path("outage.jsonl");
    let _ = std::fs::remove_file(&output);
    let config = config_for(&app, input, output.clone(), None);

    provider.kill();
    let first = classify_file(&config, false).await.unwrap();
    let want: std::collections::BTreeMap<String, usize> = [
        ("title_empty".to_owned(), 1),
        ("upstream_unreachable".to_owned(), 59),
    ]
    .into();
    assert_eq!(first.remaining_errors, want);
    assert_eq!(codes(&jsonl_rows(&output)), want);
    assert!(
        first
            .report()
            .contains("run the same command again to retry the 59 transient ones"),
        "{}",
        first.report()
    );

    provider.restart();
    let second = classify_file(&config, false).await.unwrap();
    assert_eq!((second.retried, second.skipped, second.items), (59, 1, 59));
    let final_only: std::collections::BTreeMap<String, usize> =
        [("title_empty".to_owned(), 1)].into();
    assert_eq!(second.remaining_errors, final_only);
    assert!(second.report().contains("all final"), "{}", second.report());
    let rows = jsonl_rows(&output);
    let back: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
    let sent: Vec<&str> = titles.iter().map(String::as_str).collect();
    assert_eq!(back, sent, "in place, in input order");
    assert_eq!(codes(&rows), final_only);

    // A run stopped mid-write leaves half a line: the next one cuts it off and sends its
    // title again.
    let whole = std::fs::read_to_string(&output).unwrap();
    std::fs::write(&output, &whole[..whole.len() - 20]).unwrap();
    let third = classify_file(&config, false).await.unwrap();
    assert_eq!((third.items, third.skipped), (1, 59));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), whole);
    app.shutdown().await;
}

#[test]
fn the_binary_exits_2_while_transient_errors_remain_and_3_when_only_final_ones_do() {
    let run = |name: &str, error_rate: &str| {
        let input = temp_path(&format!("{name}.txt"));
        std::fs::write(&input, "Show HN: a title\n\nAnother title\n").unwrap();
        let output = temp_path(&format!("{name}.jsonl"));
        let _ = std::fs::remove_file(&output);
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
            .args(["classify", input.to_str().unwrap(), "--simulate"])
            .args(["--output", output.to_str().unwrap()])
            .env_remove("OPENAI_API_KEY")
            .env("HNC_SIM_LATENCY_MS", "1")
            .env("HNC_SIM_ERROR_RATE", error_rate)
            .output()
            .unwrap();
        (
            run.status.code(),
            String::from_utf8_lossy(&run.stderr).into_owned(),
        )
    };
    let (status, stderr) = run("final-only", "0");
    assert_eq!(status, Some(3), "{stderr}");
    assert!(
        stderr.contains("1 rows with errors remain (title_empty 1): all final"),
        "{stderr}"
    );
    let (status, stderr) = run("transient", "1");
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("3 rows with errors remain (title_empty 1, upstream_server_error 2): run the same command again to retry the 2 transient ones"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_batch_cut_by_sigterm_answers_shutting_down_and_the_rerun_fills_those_rows() {
    let (mut child, addr) = start_binary(&[
        "--simulate",
        "--sim-latency-ms",
        "500",
        "--sim-latency-sigma",
        "0",
        "--request-concurrency",
        "2",
        "--shutdown-timeout",
        "1",
    ]);
    let titles = data_lines("hn_titles_1000.txt")[..20].to_vec();
    let input = temp_path("sigterm.txt");
    std::fs::write(&input, titles.join("\n") + "\n").unwrap();
    let output = temp_path("sigterm.jsonl");
    let _ = std::fs::remove_file(&output);
    let mut config = ClassifyFileConfig {
        batch_size: 20,
        concurrency: 1,
        ..config_for_url(&format!("http://{addr}"), input, output.clone())
    };
    // 20 titles, 2 at a time, half a second each: 5 s of work, 1 s of shutdown deadline.
    let (first, ()) = tokio::join!(classify_file(&config, false), async {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        sigterm(&child);
    });
    let first = first.unwrap();
    let cut = first
        .remaining_errors
        .get("shutting_down")
        .copied()
        .unwrap_or(0);
    assert!(cut >= 10, "{:?}", first.remaining_errors);
    assert_eq!(
        first.remaining_errors.len(),
        1,
        "{:?}",
        first.remaining_errors
    );
    let exit = hn_classifier::tasks::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let other = spawn_simulated(&[]).await;
    config.service = ServiceArgs::remote(format!("http://{}", other.addr));
    let second = classify_file(&config, false).await.unwrap();
    assert_eq!(second.retried, cut);
    assert!(
        second.remaining_errors.is_empty(),
        "{:?}",
        second.remaining_errors
    );
    let rows = jsonl_rows(&output);
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r.topic.is_some()));
    other.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_stops_answering_mid_stream_is_given_up_on_after_the_read_timeout() {
    let stuck = spawn_simulated(&["--sim-latency-ms", "300", "--request-concurrency", "1"]).await;
    let relay = BlackHoleRelay::start(stuck.addr).await;
    let healthy = spawn_simulated(&[]).await;
    let titles = data_lines("hn_titles_1000.txt")[..10].to_vec();
    let input = temp_path("stuck.txt");
    std::fs::write(&input, titles.join("\n") + "\n").unwrap();
    let output = temp_path("stuck.jsonl");
    let _ = std::fs::remove_file(&output);
    let mut config = config_for_url(&format!("http://{}", relay.addr), input, output.clone());
    config.service.urls.push(format!("http://{}", healthy.addr));
    config.service.read_timeout_s = 1.0;
    config.batch_size = 10;
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        classify_file(&config, false),
    );
    let (summary, ()) = tokio::join!(run, async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        relay.silence();
    });
    let summary = summary.expect("the stuck replica is given up on").unwrap();
    assert_eq!((summary.items, summary.errors), (10, 0));
    assert_eq!(jsonl_rows(&output).len(), 10);
    stuck.shutdown().await;
    healthy.shutdown().await;
}
