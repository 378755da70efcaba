//! `eval`: the real binary over the shipped gold set, every summary figure recomputed here from
//! `items.csv` with code of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crate::helpers::scratch;

#[derive(Debug, serde::Deserialize)]
struct Item {
    title: String,
    gold: String,
    alt: Option<String>,
    pack_size: String,
    confidence_source: String,
    topic: Option<String>,
    confidence: Option<f64>,
    error_code: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct Summary {
    pack_size: String,
    confidence_source: String,
    items: usize,
    strict_accuracy: f64,
    lenient_accuracy: f64,
    macro_f1: f64,
    ece: f64,
    agreement_with_k1: Option<f64>,
    item_errors: usize,
    cost_per_1000: Option<f64>,
    live_cost_per_1000: Option<f64>,
    flex_cost_per_1000: Option<f64>,
    batch_cost_per_1000: Option<f64>,
}

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .arg("eval")
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env("HNC_SIM_LATENCY_MS", "0")
        .output()
        .unwrap()
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    csv::Reader::from_path(path)
        .unwrap()
        .deserialize()
        .map(Result::unwrap)
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn eval_on_the_gold_set_reports_both_pack_sizes_recomputably_and_draws_the_charts() {
    let dir = scratch("eval-gold");
    let run = eval(&[
        "data/hn_gold_300.jsonl",
        "--simulate",
        "--pack-sizes",
        "1,5",
        "--output",
        dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("strict") && stdout.contains("macroF1"),
        "{stdout}"
    );

    let items: Vec<Item> = read(&dir.join("items.csv"));
    let summary: Vec<Summary> = read(&dir.join("summary.csv"));
    let settings: Vec<(&str, &str)> = summary
        .iter()
        .map(|s| (s.pack_size.as_str(), s.confidence_source.as_str()))
        .collect();
    assert_eq!(
        settings,
        [
            ("1", "logprobs"),
            ("5", "logprobs"),
            ("1", "self"),
            ("5", "self")
        ]
    );
    let gold_lines = std::fs::read_to_string("data/hn_gold_300.jsonl").unwrap();
    let first_title: serde_json::Value =
        serde_json::from_str(gold_lines.lines().next().unwrap()).unwrap();
    for s in &summary {
        let setting =
            |i: &&Item| i.pack_size == s.pack_size && i.confidence_source == s.confidence_source;
        let mine: Vec<&Item> = items.iter().filter(setting).collect();
        assert_eq!((mine.len(), s.items), (300, 300));
        assert_eq!(
            mine[0].title,
            first_title["title"].as_str().unwrap(),
            "input order"
        );
        let n = mine.len() as f64;
        let strict = |i: &Item| i.topic.as_ref() == Some(&i.gold);
        let lenient = |i: &Item| strict(i) || (i.topic.is_some() && i.topic == i.alt);
        let share = |f: &dyn Fn(&Item) -> bool| mine.iter().filter(|i| f(i)).count() as f64 / n;
        assert!(close(s.strict_accuracy, share(&strict)));
        assert!(close(s.lenient_accuracy, share(&lenient)));
        assert_eq!(
            s.item_errors,
            mine.iter().filter(|i| i.error_code.is_some()).count()
        );
        assert!(
            close(s.macro_f1, macro_f1(&mine)),
            "{} vs {}",
            s.macro_f1,
            macro_f1(&mine)
        );
        assert!(close(s.ece, ece(&mine)), "{} vs {}", s.ece, ece(&mine));
        let k1: Vec<&Item> = items
            .iter()
            .filter(|i| i.pack_size == "1" && i.confidence_source == s.confidence_source)
            .collect();
        let agreement = agreement(&k1, &mine);
        assert!(close(s.agreement_with_k1.unwrap(), agreement));
        assert!(
            s.cost_per_1000.is_some_and(|c| c > 0.0),
            "priced as the configured model"
        );
        // The live lane is the configured one here; the Batch lane halves it, and so does flex,
        // which the default model (gpt-5.4-nano) is offered.
        let (live, batch) = (
            s.live_cost_per_1000.unwrap(),
            s.batch_cost_per_1000.unwrap(),
        );
        assert!((live - s.cost_per_1000.unwrap()).abs() < 1e-6, "{live}");
        assert!(close(batch, live / 2.0), "{batch} vs {live}");
        assert!(close(s.flex_cost_per_1000.unwrap(), live / 2.0));
        assert!(s.strict_accuracy > 0.2 && s.lenient_accuracy >= s.strict_accuracy);
    }
    // The simulator's logprobs carry the confidence it would have written: both sources agree.
    for (a, b) in summary[..2].iter().zip(&summary[2..]) {
        assert!(close(a.ece, b.ece) && close(a.strict_accuracy, b.strict_accuracy));
    }
    let stdout_lines: Vec<&str> = stdout.lines().collect();
    assert!(stdout_lines[0].contains("confidence") && stdout_lines[0].contains("out/item"));
    for column in ["in/item", "live", "flex", "batch"] {
        assert!(stdout_lines[0].contains(column), "{}", stdout_lines[0]);
    }
    for chart in [
        "confusion_k1",
        "confusion_k5",
        "confusion_k1_self",
        "reliability",
    ] {
        let png = std::fs::read(dir.join(format!("{chart}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{chart}.png"
        );
        let svg = std::fs::read_to_string(dir.join(format!("{chart}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{chart}.svg");
    }
    let labels = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    assert_eq!(
        labels.lines().count(),
        1 + 4 * 10,
        "ten gold labels per setting"
    );
}

#[test]
fn pack_sizes_against_a_running_service_are_refused_with_the_reason() {
    let run = eval(&[
        "data/hn_gold_300.jsonl",
        "--pack-sizes",
        "1,5",
        "--url",
        "http://127.0.0.1:9",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("--pack-sizes and --confidences need --direct or --simulate"),
        "{stderr}"
    );
}

fn macro_f1(items: &[&Item]) -> f64 {
    let labels: BTreeSet<&str> = items.iter().map(|i| i.gold.as_str()).collect();
    let f1s: Vec<f64> = labels
        .iter()
        .map(|label| {
            let is = |t: &Option<String>| t.as_deref() == Some(*label);
            let hits = items
                .iter()
                .filter(|i| i.gold == *label && is(&i.topic))
                .count() as f64;
            let predicted = items.iter().filter(|i| is(&i.topic)).count() as f64;
            let support = items.iter().filter(|i| i.gold == *label).count() as f64;
            let p = if predicted > 0.0 {
                hits / predicted
            } else {
                0.0
            };
            let r = hits / support;
            if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            }
        })
        .collect();
    f1s.iter().sum::<f64>() / f1s.len() as f64
}

fn ece(items: &[&Item]) -> f64 {
    let mut bins: BTreeMap<usize, (f64, f64, f64)> = BTreeMap::new();
    let mut answered = 0.0;
    for i in items.iter().filter(|i| i.topic.is_some()) {
        let c = i.confidence.unwrap();
        let bin = bins.entry(((c * 10.0) as usize).min(9)).or_default();
        bin.0 += 1.0;
        bin.1 += c;
        bin.2 += f64::from(u8::from(i.topic.as_deref() == Some(&i.gold)));
        answered += 1.0;
    }
    bins.values()
        .map(|(n, conf, right)| n / answered * (right / n - conf / n).abs())
        .sum()
}

fn agreement(a: &[&Item], b: &[&Item]) -> f64 {
    let both: Vec<(&str, &str)> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| x.topic.as_deref().zip(y.topic.as_deref()))
        .collect();
    both.iter().filter(|(x, y)| x == y).count() as f64 / both.len() as f64
}
