//! `classify --batch-api`: the real binary against the simulator's Files and Batches APIs. The
//! same labels as the live path at half the price, faults that lose nothing, and a run killed
//! mid-way that resumes its batch instead of submitting it twice.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hn_classifier::sim::SimServer;
use serde_json::Value;

use crate::helpers::{data_lines, json_of, scratch, spawn_sim};

const BINARY: &str = env!("CARGO_BIN_EXE_hn-classifier");

/// `hn-classifier classify` with `args`, the environment given and nothing inherited that could
/// point it elsewhere.
fn classify(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("classify")
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("HNC_PACK_SIZE")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let output = classify(args, env).output().expect("the binary runs");
    assert!(
        output.status.success(),
        "classify {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The figure after `label` in the summary line, e.g. `cost $0.0743` or `per 1000 items: 296000`.
fn summary_figure<T: std::str::FromStr>(output: &Output, label: &str) -> T {
    let text = String::from_utf8_lossy(&output.stderr);
    let at = text.rfind(label).expect("the figure in the summary") + label.len();
    let figure = text[at..].split_whitespace().next().unwrap();
    figure.parse().ok().expect("a number")
}

/// The cost per 1000 items of the summary line.
fn cost(output: &Output) -> f64 {
    summary_figure(output, "cost $")
}

fn titles_file(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("titles.txt");
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(n).collect();
    std::fs::write(&path, titles.join("\n") + "\n").unwrap();
    path
}

fn fast_batches() -> Vec<(&'static str, &'static str)> {
    vec![("HNC_SIM_BATCH_SECONDS", "0.5")]
}

#[test]
fn the_batch_lane_gives_the_live_labels_at_half_the_price() {
    let dir = scratch("batch-vs-live");
    let input = titles_file(&dir, 2100);
    let (live, batch) = (dir.join("live.jsonl"), dir.join("batch.jsonl"));
    let live_run = run(
        &[
            "--simulate",
            "--output",
            live.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &[],
    );
    let batch_run = run(
        &[
            "--simulate",
            "--batch-api",
            "--poll-s",
            "0.1",
            "--output",
            batch.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &fast_batches(),
    );

    let (live_rows, batch_rows) = (rows(&live), rows(&batch));
    assert_eq!(batch_rows.len(), 2100);
    assert_eq!(live_rows, batch_rows, "the same rows, in the same order");
    assert!(batch_rows.iter().all(|r| r["error"].is_null()));
    let ratio = cost(&batch_run) / cost(&live_run);
    assert!(ratio <= 0.55, "batch costs {ratio:.3} of live");
    assert!(
        !batch.with_extension("jsonl.batch-state.json").exists(),
        "the state is removed"
    );
}

#[test]
fn the_batch_lane_sends_the_examples_the_live_path_does() {
    let dir = scratch("batch-examples");
    let input = titles_file(&dir, 50);
    let examples = dir.join("examples.jsonl");
    let gold = data_lines("hn_gold_300.jsonl")[..80].join("\n");
    std::fs::write(&examples, gold).unwrap();
    let batch = |name: &str, env: &[(&str, &str)]| {
        let output = dir.join(name);
        let flags = ["--simulate", "--batch-api", "--poll-s", "0.1", "--output"];
        let args = [
            &flags[..],
            &[output.to_str().unwrap(), input.to_str().unwrap()],
        ]
        .concat();
        run(&args, &[fast_batches(), env.to_vec()].concat())
    };
    // A tier is the live path's: the Batch lane sends none, whatever the model.
    let plain = batch("plain.jsonl", &[("HNC_SERVICE_TIER", "flex")]);
    let with = batch(
        "with.jsonl",
        &[("HNC_EXAMPLES_FILE", examples.to_str().unwrap())],
    );
    let added = summary_figure::<u64>(&with, "per 1000 items: ")
        - summary_figure::<u64>(&plain, "per 1000 items: ");
    assert!(
        added > 1_000_000,
        "80 examples are over 1,000 tokens a title: {added}"
    );
    assert!(
        cost(&with) < cost(&plain) * 3.0,
        "most of them at the cached price"
    );
}

#[test]
fn failed_lines_and_the_enqueued_token_limit_lose_nothing() {
    let dir = scratch("batch-faults");
    let input = titles_file(&dir, 1500);
    let expected = dir.join("live.jsonl");
    run(
        &[
            "--simulate",
            "--output",
            expected.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &[],
    );
    let expected = rows(&expected);

    // One line in ten fails: follow-up batches ask those again.
    let retried = dir.join("retried.jsonl");
    let mut env = fast_batches();
    env.push(("HNC_SIM_BATCH_LINE_ERROR_RATE", "0.1"));
    run(
        &[
            "--simulate",
            "--batch-api",
            "--poll-s",
            "0.05",
            "--batch-max-requests",
            "300",
            "--output",
            retried.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(rows(&retried), expected);

    // Room for two files of 500 in the provider's queue, a third of the batches expiring half
    // done, and the live API for what is left.
    let queued = dir.join("queued.jsonl");
    let mut env = fast_batches();
    env.push(("HNC_SIM_BATCH_QUEUE_TOKENS", "400000"));
    env.push(("HNC_SIM_BATCH_EXPIRE_RATE", "0.3"));
    run(
        &[
            "--simulate",
            "--batch-api",
            "--poll-s",
            "0.05",
            "--batch-max-requests",
            "500",
            "--fallback",
            "live",
            "--output",
            queued.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(rows(&queued), expected);
}

/// Starts a `--batch-api` run against `sim`, and kills it (SIGKILL) once its state names a
/// created batch; returns that batch's id.
fn start_and_kill(sim: &SimServer, input: &Path, output: &Path) -> String {
    let base_url = sim.base_url();
    let env = [
        ("OPENAI_API_KEY", "sk-batch"),
        ("OPENAI_BASE_URL", base_url.as_str()),
    ];
    let args = [
        "--direct",
        "--batch-api",
        "--poll-s",
        "0.1",
        "--output",
        output.to_str().unwrap(),
        input.to_str().unwrap(),
    ];
    let mut child = classify(&args, &env).spawn().unwrap();
    let state = PathBuf::from(format!("{}.batch-state.json", output.display()));
    let started = Instant::now();
    let batch_id = loop {
        let id = std::fs::read(&state)
            .ok()
            .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
            .and_then(|s| {
                s["rounds"][0]["chunks"][0]["batch_id"]
                    .as_str()
                    .map(str::to_owned)
            });
        if let Some(id) = id {
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no batch was created"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    batch_id
}

async fn sim_json(sim: &SimServer, path: &str) -> Value {
    json_of(
        reqwest::Client::new()
            .get(format!("http://{}{path}", sim.addr()))
            .bearer_auth("sk-batch"),
    )
    .await
}

/// `classify --direct --batch-api` against `sim`, to its end, with `extra` flags.
async fn run_direct(sim: &SimServer, extra: &[&str], input: &Path, output: &Path) {
    let base_url = sim.base_url();
    let mut args: Vec<String> = ["--direct", "--batch-api", "--poll-s", "0.1", "--output"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.push(output.to_str().unwrap().to_owned());
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(input.to_str().unwrap().to_owned());
    hn_classifier::tasks::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [
            ("OPENAI_API_KEY", "sk-batch"),
            ("OPENAI_BASE_URL", base_url.as_str()),
        ];
        run(&args, &env)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_resumes_its_batch_and_writes_every_row_once() {
    let sim = spawn_sim(&["--sim-batch-seconds", "2"]).await;
    let dir = scratch("batch-resume");
    let input = titles_file(&dir, 400);
    let output = dir.join("out.jsonl");
    start_and_kill(&sim, &input, &output);
    assert!(!output.exists(), "nothing written yet");

    run_direct(&sim, &[], &input, &output).await;

    let written = rows(&output);
    let titles = data_lines("hn_titles.txt");
    assert_eq!(written.len(), 400);
    for (row, title) in written.iter().zip(&titles) {
        assert_eq!(
            row["title"],
            title.as_str(),
            "every row once, in input order"
        );
        assert!(row["error"].is_null(), "{row}");
    }
    let stats = sim_json(&sim, "/_sim/stats").await;
    assert_eq!(
        stats["batches_created"], 1,
        "the resumed run created no second batch: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_interrupted_runs_batches() {
    let sim = spawn_sim(&["--sim-batch-seconds", "30"]).await;
    let dir = scratch("batch-cancel");
    let input = titles_file(&dir, 50);
    let output = dir.join("out.jsonl");
    let batch_id = start_and_kill(&sim, &input, &output);

    run_direct(&sim, &["--cancel"], &input, &output).await;

    let batch = sim_json(&sim, &format!("/v1/batches/{batch_id}")).await;
    assert!(
        ["cancelling", "cancelled"].contains(&batch["status"].as_str().unwrap()),
        "{batch}"
    );
    assert!(!PathBuf::from(format!("{}.batch-state.json", output.display())).exists());
}

#[test]
fn packed_batch_requests_give_the_live_labels() {
    let dir = scratch("batch-packed");
    let input = titles_file(&dir, 200);
    let (live, packed) = (dir.join("live.jsonl"), dir.join("packed.jsonl"));
    run(
        &[
            "--simulate",
            "--output",
            live.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &[],
    );
    let mut env = fast_batches();
    env.push(("HNC_PACK_SIZE", "5"));
    let packed_run = run(
        &[
            "--simulate",
            "--batch-api",
            "--poll-s",
            "0.1",
            "--output",
            packed.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(rows(&live), rows(&packed));
    let summary = String::from_utf8_lossy(&packed_run.stderr);
    assert!(
        summary.contains("200 upstream requests"),
        "five titles a request: {summary}"
    );
}
