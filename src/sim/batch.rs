//! The simulator's Files and Batch APIs (`/v1/files`, `/v1/batches`) in OpenAI's shapes and
//! statuses: a JSONL file uploaded with `purpose=batch`, a batch over it that goes `validating`,
//! `in_progress` (its `request_counts` moving), `finalizing`, then `completed` with an output
//! file and, for lines that failed, an error file. Each line is answered as the live route would
//! answer it (the same labels), after a configurable processing time, with faults on demand:
//! lines that fail, a batch that fails or expires, and the enqueued-token limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use super::protocol::{OpenAiError, check_auth, parse_chat, parse_responses};
use super::stats::SimStats;

/// Batch knobs, flattened into `SimConfig`.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchSimConfig {
    /// How long a batch takes from creation to `completed`, in seconds.
    #[arg(
        long = "sim-batch-seconds",
        env = "HNC_SIM_BATCH_SECONDS",
        default_value_t = 3.0
    )]
    pub processing_s: f64,
    /// Share of a batch's lines answered with an error (in the error file).
    #[arg(
        long = "sim-batch-line-error-rate",
        env = "HNC_SIM_BATCH_LINE_ERROR_RATE",
        default_value_t = 0.0
    )]
    pub line_error_rate: f64,
    /// Share of batches that end `failed` as a whole.
    #[arg(
        long = "sim-batch-fail-rate",
        env = "HNC_SIM_BATCH_FAIL_RATE",
        default_value_t = 0.0
    )]
    pub fail_rate: f64,
    /// Share of batches that end `expired`, half their lines unanswered.
    #[arg(
        long = "sim-batch-expire-rate",
        env = "HNC_SIM_BATCH_EXPIRE_RATE",
        default_value_t = 0.0
    )]
    pub expire_rate: f64,
    /// Tokens that may be enqueued in unfinished batches at once (0 = unlimited); a batch over
    /// it fails with `token_limit_exceeded`.
    #[arg(
        long = "sim-batch-queue-tokens",
        env = "HNC_SIM_BATCH_QUEUE_TOKENS",
        default_value_t = 0
    )]
    pub queue_tokens: u64,
}

/// Answers one request line as the live route would: `(url, body) -> response body`.
pub type LineAnswer = Arc<dyn Fn(&str, &Value) -> Result<Value, OpenAiError> + Send + Sync>;

pub struct BatchApi {
    config: BatchSimConfig,
    answer: LineAnswer,
    stats: Arc<SimStats>,
    rng: Mutex<StdRng>,
    next_id: AtomicU64,
    files: Mutex<HashMap<String, StoredFile>>,
    batches: Mutex<HashMap<String, Batch>>,
}

struct StoredFile {
    meta: Value,
    content: Vec<u8>,
}

struct Batch {
    object: Value,
    /// Estimated tokens while unfinished: what the enqueued-token limit counts.
    tokens: u64,
    cancel: bool,
}

const TERMINAL: [&str; 4] = ["completed", "failed", "expired", "cancelled"];

impl BatchApi {
    pub fn new(
        config: BatchSimConfig,
        seed: u64,
        answer: LineAnswer,
        stats: Arc<SimStats>,
    ) -> Self {
        Self {
            config,
            answer,
            stats,
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0xba7c)),
            next_id: AtomicU64::new(1),
            files: Mutex::default(),
            batches: Mutex::default(),
        }
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_sim{:012x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn draw(&self, rate: f64) -> bool {
        rate > 0.0 && self.rng.lock().expect("rng lock poisoned").random::<f64>() < rate
    }

    fn store_file(&self, filename: &str, purpose: &str, content: Vec<u8>) -> Value {
        let id = self.id("file");
        let meta = json!({
            "id": id, "object": "file", "bytes": content.len(), "created_at": unix_now(),
            "filename": filename, "purpose": purpose, "status": "processed",
        });
        self.files.lock().expect("files lock poisoned").insert(
            id,
            StoredFile {
                meta: meta.clone(),
                content,
            },
        );
        meta
    }

    fn batch(&self, id: &str) -> Option<Value> {
        self.batches
            .lock()
            .expect("batches lock poisoned")
            .get(id)
            .map(|b| b.object.clone())
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Batch)) {
        if let Some(batch) = self
            .batches
            .lock()
            .expect("batches lock poisoned")
            .get_mut(id)
        {
            change(batch);
        }
    }

    fn enqueued_tokens(&self) -> u64 {
        self.batches
            .lock()
            .expect("batches lock poisoned")
            .values()
            .filter(|b| !TERMINAL.contains(&b.object["status"].as_str().unwrap_or("")))
            .map(|b| b.tokens)
            .sum()
    }
}

pub fn router(api: Arc<BatchApi>) -> Router {
    Router::new()
        .route("/v1/files", post(upload))
        .route("/v1/files/{id}", get(file_meta))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", get(retrieve))
        .route("/v1/batches/{id}/cancel", post(cancel))
        // OpenAI takes files of up to 200 MB.
        .layer(axum::extract::DefaultBodyLimit::max(200 * 1024 * 1024))
        .with_state(api)
}

fn not_found(what: &str, id: &str) -> OpenAiError {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        None,
        format!("No such {what}: '{id}'"),
    )
}

async fn upload(
    State(api): State<Arc<BatchApi>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Json<Value>, OpenAiError> {
    check_auth(&headers)?;
    let mut purpose = None;
    let mut file = None;
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        OpenAiError::invalid(format!("unreadable multipart body: {e}"), "file", None)
    };
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(unreadable)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                file = Some((name, field.bytes().await.map_err(unreadable)?.to_vec()));
            }
            _ => {}
        }
    }
    let (Some(purpose), Some((name, content))) = (purpose, file) else {
        return Err(OpenAiError::invalid(
            "'file' and 'purpose' are required",
            "file",
            None,
        ));
    };
    if purpose != "batch" {
        return Err(OpenAiError::invalid(
            "this simulator only takes purpose=batch",
            "purpose",
            None,
        ));
    }
    for (n, line) in content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let ok = serde_json::from_slice::<Value>(line).is_ok_and(|v| {
            v["custom_id"].is_string()
                && v["method"] == "POST"
                && v["url"].is_string()
                && v["body"].is_object()
        });
        if !ok {
            return Err(OpenAiError::invalid(
                format!(
                    "line {}: each line must be {{custom_id, method: POST, url, body}}",
                    n + 1
                ),
                "file",
                None,
            ));
        }
    }
    Ok(Json(api.store_file(&name, "batch", content)))
}

async fn file_meta(
    State(api): State<Arc<BatchApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    check_auth(&headers)?;
    let files = api.files.lock().expect("files lock poisoned");
    files
        .get(&id)
        .map(|f| Json(f.meta.clone()))
        .ok_or_else(|| not_found("file", &id))
}

async fn file_content(
    State(api): State<Arc<BatchApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, OpenAiError> {
    check_auth(&headers)?;
    let files = api.files.lock().expect("files lock poisoned");
    let file = files.get(&id).ok_or_else(|| not_found("file", &id))?;
    Ok((
        [("content-type", "application/jsonl")],
        file.content.clone(),
    )
        .into_response())
}

#[derive(Deserialize)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<Value>,
}

async fn create(
    State(api): State<Arc<BatchApi>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, OpenAiError> {
    check_auth(&headers)?;
    let request: CreateBatch = serde_json::from_slice(&body)
        .map_err(|e| OpenAiError::invalid(format!("invalid body: {e}"), "", None))?;
    if request.completion_window != "24h" {
        return Err(OpenAiError::invalid(
            "completion_window must be 24h",
            "completion_window",
            None,
        ));
    }
    if !matches!(
        request.endpoint.as_str(),
        "/v1/responses" | "/v1/chat/completions"
    ) {
        return Err(OpenAiError::invalid(
            "unsupported endpoint",
            "endpoint",
            None,
        ));
    }
    let lines: Vec<Value> = {
        let files = api.files.lock().expect("files lock poisoned");
        let file = files
            .get(&request.input_file_id)
            .ok_or_else(|| not_found("file", &request.input_file_id))?;
        file.content
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    };
    if lines.iter().any(|l| l["url"] != request.endpoint.as_str()) {
        return Err(OpenAiError::invalid(
            "every line's url must be the batch's endpoint",
            "endpoint",
            None,
        ));
    }
    let tokens: u64 = lines.iter().map(line_input_tokens).sum();
    let id = api.id("batch");
    let over_limit =
        api.config.queue_tokens > 0 && api.enqueued_tokens() + tokens > api.config.queue_tokens;
    let mut object = json!({
        "id": id, "object": "batch", "endpoint": request.endpoint, "errors": null,
        "input_file_id": request.input_file_id, "completion_window": "24h",
        "status": "validating", "output_file_id": null, "error_file_id": null,
        "created_at": unix_now(), "in_progress_at": null, "expires_at": unix_now() + 86_400,
        "completed_at": null, "failed_at": null, "expired_at": null, "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": request.metadata.unwrap_or(Value::Null),
    });
    api.stats.count_batch_created();
    if over_limit {
        object["status"] = json!("failed");
        object["failed_at"] = json!(unix_now());
        object["errors"] = json!({"object": "list", "data": [{
            "code": "token_limit_exceeded", "line": null, "param": null,
            "message": format!("Enqueued token limit reached for this model. Limit: {} enqueued tokens. Please try again once some in_progress batches have been completed.", api.config.queue_tokens),
        }]});
    }
    api.batches.lock().expect("batches lock poisoned").insert(
        id.clone(),
        Batch {
            object: object.clone(),
            tokens: if over_limit { 0 } else { tokens },
            cancel: false,
        },
    );
    if !over_limit {
        crate::tasks::spawn(process(api.clone(), id, request.endpoint, lines));
    }
    Ok(Json(object))
}

/// Moves a batch through its statuses and answers its lines over the processing time.
async fn process(api: Arc<BatchApi>, id: String, endpoint: String, lines: Vec<Value>) {
    let total = Duration::from_secs_f64(api.config.processing_s.max(0.0));
    let step = total / (lines.len() as u32 + 2);
    tokio::time::sleep(step).await;
    api.update(&id, |b| {
        b.object["status"] = json!("in_progress");
        b.object["in_progress_at"] = json!(unix_now());
        b.object["request_counts"]["total"] = json!(lines.len());
    });
    let outcome = if api.draw(api.config.fail_rate) {
        "failed"
    } else if api.draw(api.config.expire_rate) {
        "expired"
    } else {
        "completed"
    };
    let answered_lines = if outcome == "expired" {
        lines.len() / 2
    } else {
        lines.len()
    };
    // A failed batch answers no line: nothing to walk through.
    let lines = if outcome == "failed" {
        &[][..]
    } else {
        &lines[..]
    };
    let mut output = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if api
            .batches
            .lock()
            .expect("batches lock poisoned")
            .get(&id)
            .is_none_or(|b| b.cancel)
        {
            break;
        }
        let custom_id = line["custom_id"].clone();
        let request_id = format!("batch_req_sim{n:08x}");
        if n >= answered_lines {
            errors.push(json!({"id": request_id, "custom_id": custom_id, "response": null,
                "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}));
            continue;
        }
        let answer = if api.draw(api.config.line_error_rate) {
            Err(OpenAiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "The server had an error while processing your request. Sorry about that!",
            ))
        } else {
            (api.answer)(&endpoint, &line["body"])
        };
        match answer {
            Ok(body) => output.push(json!({"id": request_id, "custom_id": custom_id, "error": null,
                "response": {"status_code": 200, "request_id": format!("req_sim{n:08x}"), "body": body}})),
            Err(error) => errors.push(json!({"id": request_id, "custom_id": custom_id, "error": null,
                "response": {"status_code": error.status.as_u16(), "request_id": format!("req_sim{n:08x}"), "body": error.body()}})),
        }
        api.update(&id, |b| {
            b.object["request_counts"]["completed"] = json!(output.len());
            b.object["request_counts"]["failed"] = json!(errors.len());
        });
        tokio::time::sleep(step).await;
    }
    let cancelled = api
        .batches
        .lock()
        .expect("batches lock poisoned")
        .get(&id)
        .is_some_and(|b| b.cancel);
    let jsonl = |rows: &[Value]| {
        rows.iter()
            .map(|r| format!("{r}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let output_file = (!output.is_empty())
        .then(|| api.store_file("batch_output.jsonl", "batch_output", jsonl(&output)));
    let error_file = (!errors.is_empty())
        .then(|| api.store_file("batch_errors.jsonl", "batch_output", jsonl(&errors)));
    api.update(&id, |b| {
        b.tokens = 0;
        let status = if cancelled { "cancelled" } else { outcome };
        b.object["status"] = json!(status);
        b.object[format!("{status}_at")] = json!(unix_now());
        b.object["output_file_id"] = output_file.map_or(Value::Null, |f| f["id"].clone());
        b.object["error_file_id"] = error_file.map_or(Value::Null, |f| f["id"].clone());
        if status == "failed" {
            b.object["errors"] = json!({"object": "list", "data": [{"code": "server_error", "line": null, "param": null, "message": "The batch failed."}]});
        }
    });
}

async fn retrieve(
    State(api): State<Arc<BatchApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    check_auth(&headers)?;
    api.batch(&id)
        .map(Json)
        .ok_or_else(|| not_found("batch", &id))
}

async fn cancel(
    State(api): State<Arc<BatchApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    check_auth(&headers)?;
    let mut batches = api.batches.lock().expect("batches lock poisoned");
    let batch = batches
        .get_mut(&id)
        .ok_or_else(|| not_found("batch", &id))?;
    if !TERMINAL.contains(&batch.object["status"].as_str().unwrap_or("")) {
        batch.cancel = true;
        batch.object["status"] = json!("cancelling");
        batch.object["cancelling_at"] = json!(unix_now());
    }
    Ok(Json(batch.object.clone()))
}

async fn list(
    State(api): State<Arc<BatchApi>>,
    headers: HeaderMap,
) -> Result<Json<Value>, OpenAiError> {
    check_auth(&headers)?;
    let batches = api.batches.lock().expect("batches lock poisoned");
    let mut data: Vec<Value> = batches.values().map(|b| b.object.clone()).collect();
    data.sort_by_key(|b| std::cmp::Reverse(b["id"].as_str().unwrap_or("").to_owned()));
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": false}),
    ))
}

/// The input tokens a line queues, as OpenAI counts a batch against its enqueued-token limit; a
/// line the live route would refuse queues none (it fails on its own).
fn line_input_tokens(line: &Value) -> u64 {
    let parsed = match line["url"].as_str() {
        Some("/v1/chat/completions") => parse_chat(&line["body"]),
        _ => parse_responses(&line["body"]),
    };
    parsed.map_or(0, |request| request.input_tokens)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
