//! One run's figures: the CSV row, the line printed as it finishes, the best run per approach.

use std::fs::OpenOptions;
use std::path::Path;

use serde::Serialize;

use super::error::BenchError;
use super::target::Approach;

/// One run's figures: a row of `APPROACH.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub ran_at_utc: String,
    pub approach: Approach,
    pub target: String,
    pub items: usize,
    pub concurrency: usize,
    pub batch_size: usize,
    /// Clients of `sharded` (1 otherwise), and whether they spoke HTTP/2.
    pub shards: usize,
    pub http2: bool,
    pub sim_latency_ms: f64,
    pub wall_s: f64,
    pub items_per_s: f64,
    pub errors: usize,
    /// Per item (`pool`, `async`, `sharded`) or per batch (`service`).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Calls the provider received per 1000 items: below 1000 when single-flight shared
    /// repeated titles, or with packing.
    pub upstream_requests_per_1k: f64,
    pub input_tokens_per_1k: f64,
    pub output_tokens_per_1k: f64,
    /// Of the output tokens, those a reasoning model spent thinking.
    pub reasoning_tokens_per_1k: f64,
    pub cost_usd_per_1k: Option<f64>,
    /// The service process's CPU seconds, items per CPU-second and peak RSS during the run,
    /// when bench started it.
    pub service_cpu_s: Option<f64>,
    pub items_per_cpu_s: Option<f64>,
    pub service_peak_rss_mib: Option<f64>,
}

/// The best run per approach (each run's line was printed as it finished).
pub fn report(results: &[RunResult]) -> String {
    let mut lines = Vec::new();
    for best in best_per_approach(results) {
        lines.push(format!(
            "best {}: concurrency {}: {:.1} items/s",
            best.approach.name(),
            best.concurrency,
            best.items_per_s
        ));
    }
    lines.join("\n")
}

pub fn line(r: &RunResult) -> String {
    let cost = r
        .cost_usd_per_1k
        .map_or("unknown".to_owned(), |c| format!("${c:.4}"));
    let process = match (r.service_cpu_s, r.items_per_cpu_s, r.service_peak_rss_mib) {
        (Some(cpu), Some(per_cpu), Some(rss)) => {
            format!(" service: {cpu:.2} CPU-s, {per_cpu:.0} items/CPU-s, peak RSS {rss:.1} MiB;")
        }
        _ => String::new(),
    };
    format!(
        "{} concurrency={} items={} wall={:.2}s items/s={:.1} errors={} p50={:.0}ms p95={:.0}ms p99={:.0}ms;{process} per 1000 items: {:.0} upstream requests, {:.0} in / {:.0} out ({:.0} reasoning) tokens, cost {cost}",
        r.approach.name(),
        r.concurrency,
        r.items,
        r.wall_s,
        r.items_per_s,
        r.errors,
        r.p50_ms,
        r.p95_ms,
        r.p99_ms,
        r.upstream_requests_per_1k,
        r.input_tokens_per_1k,
        r.output_tokens_per_1k,
        r.reasoning_tokens_per_1k,
    )
}

/// The fastest run of each approach, in the order the approaches first ran.
pub fn best_per_approach(results: &[RunResult]) -> Vec<&RunResult> {
    let mut best: Vec<&RunResult> = Vec::new();
    for r in results {
        match best.iter_mut().find(|b| b.approach == r.approach) {
            Some(b) if r.items_per_s > b.items_per_s => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best
}

/// The `q` quantile of `sorted` latencies, in milliseconds (0 when there are none).
pub fn percentile_ms(sorted: &[std::time::Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The header line `row` is written under.
fn header_of(row: &impl Serialize) -> Result<String, BenchError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.serialize(row)?;
    let bytes = writer
        .into_inner()
        .map_err(|e| BenchError::Csv(e.into_error().into()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

fn first_line(path: &Path) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = std::io::BufReader::new(file).read_line(&mut line);
    }
    line.trim_end().to_owned()
}

/// Appends `row` to `dir/file` (with a header when the file is new).
pub fn append_csv(dir: &Path, file: &str, row: &impl Serialize) -> Result<(), BenchError> {
    let io = |source| BenchError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(file);
    // A file from an older build with other columns is moved aside rather than appended to
    // under its old header.
    if path.exists() && first_line(&path) != header_of(row)? {
        let aside = path.with_extension("previous.csv");
        std::fs::rename(&path, &aside).map_err(io)?;
        eprintln!(
            "{} had other columns: moved to {}",
            path.display(),
            aside.display()
        );
    }
    let fresh = !path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    let mut writer = csv::WriterBuilder::new()
        .has_headers(fresh)
        .from_writer(file);
    writer.serialize(row)?;
    writer.flush().map_err(io)?;
    Ok(())
}
