//! The provider's Files and Batches endpoints: upload a JSONL file, create, look at, list and
//! cancel batches, download their output. Plain calls, retried a few times on transport errors
//! and 5xx (a batch run lasts minutes to hours; one blip must not end it).

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum BatchApiError {
    #[error("could not reach the provider's Batch API at {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the provider's Batch API answered {status} to {what}: {message}")]
    Refused {
        what: &'static str,
        status: u16,
        message: String,
    },
}

/// A batch as the provider describes it (the fields this lane reads).
#[derive(Debug, Clone, Deserialize)]
pub struct BatchObject {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default)]
    pub errors: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Unix seconds, as the provider stamps them.
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub completed_at: Option<i64>,
}

impl BatchObject {
    /// How long the provider took over a completed batch, by its own clock.
    pub fn turnaround(&self) -> Option<std::time::Duration> {
        let (from, to) = (self.created_at?, self.completed_at?);
        (self.status == "completed" && to >= from)
            .then(|| std::time::Duration::from_secs((to - from) as u64))
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct RequestCounts {
    pub completed: u64,
    pub failed: u64,
}

impl BatchObject {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        )
    }

    /// Refused for the enqueued-token limit: to be submitted again once other batches finish.
    pub fn hit_token_limit(&self) -> bool {
        self.status == "failed"
            && self.errors.as_ref().is_some_and(|e| {
                e["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x["code"] == "token_limit_exceeded"))
            })
    }

    pub fn done_lines(&self) -> u64 {
        self.request_counts.map_or(0, |c| c.completed + c.failed)
    }
}

/// The Files and Batches endpoints of one base URL and key.
pub struct BatchClient {
    http: reqwest::Client,
    base_url: String,
    auth: HeaderValue,
}

const ATTEMPTS: u32 = 5;

impl BatchClient {
    pub fn new(base_url: &str, api_key: &Secret) -> Self {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", api_key.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        auth.set_sensitive(true);
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .expect("a client with a timeout builds"),
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth,
        }
    }

    /// Sends the request `build` makes, again after a transport error or a 5xx.
    async fn send(
        &self,
        what: &'static str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BatchApiError> {
        self.send_times(what, ATTEMPTS, build).await
    }

    /// `send`, at most `attempts` times.
    async fn send_times(
        &self,
        what: &'static str,
        attempts: u32,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BatchApiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = build(&self.http)
                .header(AUTHORIZATION, self.auth.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status().is_server_error() || r.status() == 429 => {
                    if attempt >= attempts {
                        return Err(refused(what, r).await);
                    }
                    true
                }
                Ok(r) => return Err(refused(what, r).await),
                Err(source) if attempt >= attempts => {
                    return Err(BatchApiError::Http {
                        url: self.base_url.clone(),
                        source: source.without_url(),
                    });
                }
                Err(_) => true,
            };
            if retry {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
        }
    }

    /// Uploads `jsonl` with `purpose=batch`; its file id.
    pub async fn upload(&self, name: &str, jsonl: Vec<u8>) -> Result<String, BatchApiError> {
        let url = format!("{}/files", self.base_url);
        let response = self
            .send("a file upload", |http| {
                let part = reqwest::multipart::Part::bytes(jsonl.clone())
                    .file_name(name.to_owned())
                    .mime_str("application/jsonl")
                    .expect("a valid MIME type");
                let form = reqwest::multipart::Form::new()
                    .text("purpose", "batch")
                    .part("file", part);
                http.post(&url).multipart(form)
            })
            .await?;
        let file: Value = response
            .json()
            .await
            .map_err(|source| self.http_error(source))?;
        Ok(file["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Creates a batch over an uploaded file, sent again after a transport error or a 5xx
    /// (the CLI lane adopts a batch made twice by its metadata on resume).
    pub async fn create(
        &self,
        input_file_id: &str,
        endpoint: &str,
        metadata: Value,
    ) -> Result<BatchObject, BatchApiError> {
        self.create_sent(input_file_id, endpoint, metadata, ATTEMPTS)
            .await
    }

    /// `create`, sent once: a creation that timed out may have been made, and a second would
    /// be paid for too. The service's Batch lane lists (and adopts) before it creates again.
    pub async fn create_once(
        &self,
        input_file_id: &str,
        endpoint: &str,
        metadata: Value,
    ) -> Result<BatchObject, BatchApiError> {
        self.create_sent(input_file_id, endpoint, metadata, 1).await
    }

    async fn create_sent(
        &self,
        input_file_id: &str,
        endpoint: &str,
        metadata: Value,
        attempts: u32,
    ) -> Result<BatchObject, BatchApiError> {
        let url = format!("{}/batches", self.base_url);
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        });
        let response = self
            .send_times("a batch creation", attempts, |http| {
                http.post(&url).json(&body)
            })
            .await?;
        response
            .json()
            .await
            .map_err(|source| self.http_error(source))
    }

    pub async fn retrieve(&self, id: &str) -> Result<BatchObject, BatchApiError> {
        let url = format!("{}/batches/{id}", self.base_url);
        let response = self.send("a batch lookup", |http| http.get(&url)).await?;
        response
            .json()
            .await
            .map_err(|source| self.http_error(source))
    }

    pub async fn cancel(&self, id: &str) -> Result<BatchObject, BatchApiError> {
        let url = format!("{}/batches/{id}/cancel", self.base_url);
        let response = self.send("a cancellation", |http| http.post(&url)).await?;
        response
            .json()
            .await
            .map_err(|source| self.http_error(source))
    }

    /// The most recent batches (up to 100): where a batch created just before a crash is found.
    pub async fn list(&self) -> Result<Vec<BatchObject>, BatchApiError> {
        let url = format!("{}/batches?limit=100", self.base_url);
        let response = self.send("a batch listing", |http| http.get(&url)).await?;
        #[derive(Deserialize)]
        struct Page {
            data: Vec<BatchObject>,
        }
        let page: Page = response
            .json()
            .await
            .map_err(|source| self.http_error(source))?;
        Ok(page.data)
    }

    pub async fn content(&self, file_id: &str) -> Result<Vec<u8>, BatchApiError> {
        let url = format!("{}/files/{file_id}/content", self.base_url);
        let response = self.send("a file download", |http| http.get(&url)).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|source| self.http_error(source))?;
        Ok(bytes.to_vec())
    }

    fn http_error(&self, source: reqwest::Error) -> BatchApiError {
        BatchApiError::Http {
            url: self.base_url.clone(),
            source: source.without_url(),
        }
    }
}

async fn refused(what: &'static str, response: reqwest::Response) -> BatchApiError {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned();
    BatchApiError::Refused {
        what,
        status,
        message,
    }
}

/// One line of a Batch API input file: request `custom_id`, sent to `url` (`/v1/responses`)
/// with `body`, as a live call would send it.
pub fn input_line(custom_id: &str, url: &str, body: &[u8]) -> Vec<u8> {
    let mut line = format!(r#"{{"custom_id":"{custom_id}","method":"POST","url":"{url}","body":"#)
        .into_bytes();
    line.extend_from_slice(body);
    line.extend_from_slice(b"}\n");
    line
}

/// The answered lines of a batch's output or error file: each line whose response is a 200,
/// as its `custom_id` and body. Other lines (errors, unreadable ones) are left out: their
/// requests were not answered.
pub fn answered_lines(content: &[u8]) -> Vec<(String, Vec<u8>)> {
    content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter(|line| line["response"]["status_code"] == 200)
        .filter_map(|line| {
            let id = line["custom_id"].as_str()?.to_owned();
            Some((id, line["response"]["body"].to_string().into_bytes()))
        })
        .collect()
}
