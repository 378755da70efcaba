//! `classify FILE --batch-api`: the same input, output, checks and packing as the live path,
//! through the provider's Batch API at half the price. Plans the requests, writes the state,
//! uploads files of at most `--batch-max-requests` requests (and 200 MB), creates a batch per
//! file, polls them with the progress bar, downloads and checks every answer, and sends what was
//! not answered to the fallback; rows are written in input order at the end.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use serde_json::json;
use tokio::net::TcpListener;

use super::openai::{BatchApiError, BatchClient, BatchObject};
use super::state::{Round, RunState, StateError};
use crate::classify::{ItemError, check_title};
use crate::client::{
    Batches, ClassifyFileConfig, ClientError, Fallback, Row, ServiceArgs, Summary, read_titles,
};
use crate::config::{ConfigError, ServeConfig};
use crate::sim::{SimConfigError, SimServer};
use crate::taxonomy::{AnswerForm, Taxonomy};
use crate::upstream::pricing::Price;
use crate::upstream::reasoning::Thinking;
use crate::upstream::templates::{PackTemplate, RequestTemplate};
use crate::upstream::{Prediction, Tier, UpstreamApi, Usage};

/// OpenAI's limit on one batch input file.
const MAX_FILE_BYTES: usize = 200 * 1024 * 1024;
/// Follow-up batches after the first, with `--fallback batch`.
const FOLLOW_UP_ROUNDS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum BatchLaneError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Api(#[from] BatchApiError),
    #[error("the batch state")]
    State(#[from] StateError),
    #[error("the serve settings in the environment are invalid")]
    Settings(#[source] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not start the simulator")]
    Sim(#[from] SimConfigError),
    #[error("could not start the simulator")]
    SimBind(#[source] std::io::Error),
}

/// What one round of batches answered: the checked label of each title it held, or nothing.
type Answers = HashMap<usize, Prediction>;

struct Lane {
    client: BatchClient,
    /// `/v1/responses` or `/v1/chat/completions`.
    endpoint: String,
    single: RequestTemplate,
    packs: PackTemplate,
    api: UpstreamApi,
    /// What the lines ask the model to write (the templates' form).
    form: AnswerForm,
    /// What the lines say of reasoning, as live calls do.
    thinking: Thinking,
    pack_size: usize,
    taxonomy: Taxonomy,
    price: Option<Price>,
    model: String,
    poll: Duration,
    max_requests: usize,
    max_title_chars: usize,
    /// The built-in simulator under `--simulate`; stopped when the lane is dropped.
    _sim: Option<SimServer>,
}

/// Runs the file through the Batch API (or cancels an interrupted run with `--cancel`).
pub async fn classify_file(
    config: &ClassifyFileConfig,
    progress: bool,
) -> Result<Summary, BatchLaneError> {
    let output = config.output_file()?;
    let mut lane = Lane::new(config).await?;
    let titles = read_titles(&config.input, config.field.as_deref())?;
    let state_path = RunState::path_for(output.path());
    if config.cancel {
        lane.cancel(&state_path, titles.len()).await?;
        return Ok(Summary::default());
    }
    let mut state = match RunState::load(&state_path, titles.len())? {
        Some(state) => {
            state.resumable(&state_path)?;
            state
        }
        None => {
            let done = output.rows_done()?.min(titles.len());
            let written = lane.form == AnswerForm::LabelAndConfidence;
            let mut state =
                RunState::new(done, titles.len(), (&lane.model, &lane.endpoint), written);
            state.rounds.push(lane.first_round(&titles, done));
            state.save(&state_path)?;
            state
        }
    };
    // Answers are read in the form the run's lines asked for.
    lane.use_form(if state.written_confidence {
        AnswerForm::LabelAndConfidence
    } else {
        AnswerForm::LabelOnly
    });
    let rows_done = output.rows_done()?;
    if rows_done > state.first_index {
        // The rows were written and the state not yet removed: the run had finished.
        RunState::remove(&state_path)?;
        return Ok(Summary {
            skipped: rows_done.min(titles.len()),
            output: Some(output.path().to_owned()),
            ..Summary::default()
        });
    }
    let first = state.first_index;
    let mut results: Vec<Option<Result<Prediction, String>>> = vec![None; titles.len() - first];
    let mut usage = Usage::default();
    for (index, title) in titles.iter().enumerate().skip(first) {
        if let Err(e) = lane.check_title(title) {
            results[index - first] = Some(Err(format!("{}\u{0}{}", e.code(), e)));
        }
    }
    let mut round = 0;
    loop {
        let bar = crate::progress::bar(
            state.rounds[round].requests.len() as u64,
            progress,
            if round == 0 {
                "batch"
            } else {
                "follow-up batch"
            },
        );
        let (answers, spent) = lane
            .run_round(&mut state, round, &state_path, &titles, &bar)
            .await?;
        bar.finish_and_clear();
        usage += spent;
        let mut missing = Vec::new();
        for request in &state.rounds[round].requests {
            for &index in request {
                match answers.get(&index) {
                    Some(p) => results[index - first] = Some(Ok(p.clone())),
                    None => missing.push(index),
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        match config.fallback {
            Fallback::Batch if round < FOLLOW_UP_ROUNDS => {
                if state.rounds.len() == round + 1 {
                    // Each alone: a title a pack could not answer is asked alone, as live.
                    let requests = missing.into_iter().map(|i| vec![i]).collect();
                    state.rounds.push(lane.round(&titles, requests));
                    state.save(&state_path)?;
                }
                round += 1;
            }
            Fallback::Live => {
                let rows =
                    Box::pin(lane.live(config, &titles, &missing, progress, &mut usage)).await?;
                for (index, row) in missing.into_iter().zip(rows) {
                    results[index - first] = Some(match (row.topic, row.confidence) {
                        (Some(topic), Some(confidence)) => Ok(Prediction {
                            topic: Arc::from(topic),
                            confidence,
                            source: row.confidence_source.unwrap_or_default(),
                        }),
                        _ => Err(format!(
                            "{}\u{0}{}",
                            row.error_code.unwrap_or_default(),
                            row.error.unwrap_or_default()
                        )),
                    });
                }
                break;
            }
            Fallback::Batch | Fallback::None => {
                for index in missing {
                    results[index - first] = Some(Err(format!(
                        "batch_failed\u{0}the Batch API did not answer this item after {} round(s)",
                        round + 1
                    )));
                }
                break;
            }
        }
    }
    let rows: Vec<Row> = titles[first..]
        .iter()
        .zip(results)
        .map(|(title, result)| row(title, result))
        .collect();
    output.appender()?.write(&rows)?;
    RunState::remove(&state_path)?;
    let mut summary = Summary {
        skipped: first,
        items: rows.len(),
        errors: rows.iter().filter(|r| r.error.is_some()).count(),
        input_tokens: usage.input_tokens,
        cached_input_tokens: usage.cached_input_tokens,
        output_tokens: usage.output_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        upstream_requests: usage.upstream_requests,
        cost_usd: usage.cost_usd(),
        output: Some(output.path().to_owned()),
        ..Summary::default()
    };
    summary.count_errors(&output.read_rows()?);
    Ok(summary)
}

fn row(title: &str, result: Option<Result<Prediction, String>>) -> Row {
    let result = result.unwrap_or_else(|| Err("batch_failed\u{0}not answered".to_owned()));
    match result {
        Ok(p) => Row {
            title: title.to_owned(),
            topic: Some(p.topic.to_string()),
            confidence: Some(p.confidence),
            confidence_source: Some(p.source),
            error: None,
            error_code: None,
        },
        Err(coded) => {
            let (code, message) = coded
                .split_once('\u{0}')
                .unwrap_or(("batch_failed", &coded));
            Row {
                title: title.to_owned(),
                topic: None,
                confidence: None,
                confidence_source: None,
                error: Some(message.to_owned()),
                error_code: Some(code.to_owned()),
            }
        }
    }
}

impl Lane {
    async fn new(config: &ClassifyFileConfig) -> Result<Self, BatchLaneError> {
        let serve = ServeConfig::from_env().map_err(BatchLaneError::Settings)?;
        let sim = if config.service.simulate {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(BatchLaneError::SimBind)?;
            Some(SimServer::spawn(&serve.sim, listener)?)
        } else {
            None
        };
        let settings = serve.upstream_settings(sim.as_ref().map(SimServer::base_url))?;
        let endpoint = settings
            .endpoints
            .into_iter()
            .next()
            .expect("upstream settings hold at least one endpoint");
        // The default taxonomy as `serve` would have it (HNC_TAXONOMIES, HNC_EXAMPLES_FILE).
        let taxonomy = Taxonomy::clone(serve.taxonomies()?.default_taxonomy());
        let pack_size = settings.pack_size.max(1);
        // As live; a model that refuses logprobs and is not known to fails its lines, which go
        // to the fallback.
        let openai = endpoint.base_url.contains("//api.openai.com");
        let thinking = Thinking::new(&endpoint.model, openai, settings.reasoning);
        let form = settings.confidence.form_for(&thinking);
        let api_path = match endpoint.api {
            UpstreamApi::Responses => "/v1/responses",
            UpstreamApi::Chat => "/v1/chat/completions",
        };
        Ok(Self {
            client: BatchClient::new(&endpoint.base_url, &endpoint.api_key),
            endpoint: api_path.to_owned(),
            single: RequestTemplate::new(endpoint.api, &endpoint.model, &taxonomy, form, thinking),
            packs: PackTemplate::new(
                endpoint.api,
                &endpoint.model,
                &taxonomy,
                pack_size,
                form,
                thinking,
            ),
            thinking,
            api: endpoint.api,
            form,
            pack_size,
            taxonomy,
            price: endpoint.price,
            model: endpoint.model,
            poll: Duration::from_secs_f64(config.poll_s.max(0.01)),
            max_requests: config.batch_max_requests as usize,
            max_title_chars: serve.max_title_chars as usize,
            _sim: sim,
        })
    }

    /// Reads (and writes) lines in `form`: a resumed run's, as its state says.
    fn use_form(&mut self, form: AnswerForm) {
        if form != self.form {
            let thinking = self.thinking;
            self.single =
                RequestTemplate::new(self.api, &self.model, &self.taxonomy, form, thinking);
            self.packs = PackTemplate::new(
                self.api,
                &self.model,
                &self.taxonomy,
                self.pack_size,
                form,
                thinking,
            );
            self.form = form;
        }
    }

    /// The live path's checks of a title, before anything is sent.
    fn check_title(&self, title: &str) -> Result<(), ItemError> {
        check_title(title, self.max_title_chars).map(drop)
    }

    /// Every sendable title after `done`, in packs of the pack size, split into files.
    fn first_round(&self, titles: &[String], done: usize) -> Round {
        let sendable: Vec<usize> = (done..titles.len())
            .filter(|i| self.check_title(&titles[*i]).is_ok())
            .collect();
        let requests = sendable
            .chunks(self.pack_size)
            .map(<[usize]>::to_vec)
            .collect();
        self.round(titles, requests)
    }

    fn round(&self, titles: &[String], requests: Vec<Vec<usize>>) -> Round {
        Round::new(requests, self.max_requests, MAX_FILE_BYTES, |request| {
            self.line(0, titles, request).len()
        })
    }

    /// One JSONL line: request `n` over the titles at `indices`.
    fn line(&self, n: usize, titles: &[String], indices: &[usize]) -> Vec<u8> {
        let texts: Vec<&str> = indices.iter().map(|i| titles[*i].trim()).collect();
        let body = match texts.as_slice() {
            [one] => self.single.encode(one).to_vec(),
            many => self.packs.encode(many).0.to_vec(),
        };
        super::openai::input_line(&format!("req-{n}"), &self.endpoint, &body)
    }

    /// Submits what the round has not submitted, polls its batches to the end, and reads every
    /// answer through the same checks as the live path.
    async fn run_round(
        &self,
        state: &mut RunState,
        round: usize,
        state_path: &Path,
        titles: &[String],
        bar: &ProgressBar,
    ) -> Result<(Answers, Usage), BatchLaneError> {
        self.adopt_created(state, round, state_path).await?;
        // A batch refused for the enqueued-token limit waits until fewer of ours run than when
        // it was refused (or none), then goes again.
        let mut waiting_for: Option<usize> = None;
        loop {
            let refused = waiting_for.is_none()
                && self
                    .submit_pending(state, round, state_path, titles)
                    .await?;
            let mut running = 0;
            let mut done_lines = 0;
            for chunk in &state.rounds[round].chunks {
                let Some(id) = &chunk.batch_id else { continue };
                let batch = self.client.retrieve(id).await?;
                done_lines += batch.done_lines().min(chunk.requests as u64);
                if !batch.is_terminal() {
                    running += 1;
                }
            }
            bar.set_position(done_lines);
            let unsubmitted = state.rounds[round]
                .chunks
                .iter()
                .any(|c| c.batch_id.is_none());
            if running == 0 && !unsubmitted {
                break;
            }
            waiting_for = match waiting_for {
                _ if refused => Some(running),
                Some(then) if running > 0 && running >= then => Some(then),
                _ => None,
            };
            tokio::time::sleep(self.poll).await;
        }
        self.collect(state, round).await
    }

    /// Uploads and creates the round's batches not yet created, in order, until the provider
    /// refuses one for its enqueued-token limit (`true`: wait before the rest).
    async fn submit_pending(
        &self,
        state: &mut RunState,
        round: usize,
        state_path: &Path,
        titles: &[String],
    ) -> Result<bool, BatchLaneError> {
        for c in 0..state.rounds[round].chunks.len() {
            let chunk = state.rounds[round].chunks[c].clone();
            if chunk.batch_id.is_some() {
                continue;
            }
            let file_id = match chunk.file_id {
                Some(id) => id,
                None => {
                    let requests = &state.rounds[round].requests;
                    let jsonl: Vec<u8> = (chunk.first_request
                        ..chunk.first_request + chunk.requests)
                        .flat_map(|n| self.line(n, titles, &requests[n]))
                        .collect();
                    let name = format!("hnc-{}-r{round}c{c}.jsonl", state.run);
                    let id = self.client.upload(&name, jsonl).await?;
                    state.rounds[round].chunks[c].file_id = Some(id.clone());
                    state.save(state_path)?;
                    id
                }
            };
            let metadata = json!({"hnc_run": state.run, "hnc_chunk": format!("r{round}c{c}")});
            let batch = self
                .client
                .create(&file_id, &self.endpoint, metadata)
                .await?;
            if batch.hit_token_limit() {
                return Ok(true);
            }
            state.rounds[round].chunks[c].batch_id = Some(batch.id);
            state.save(state_path)?;
        }
        Ok(false)
    }

    /// A chunk uploaded but without a batch id may have had its batch created just before the
    /// run stopped: find it by its metadata rather than create (and pay for) it twice.
    async fn adopt_created(
        &self,
        state: &mut RunState,
        round: usize,
        state_path: &Path,
    ) -> Result<(), BatchLaneError> {
        let orphans = state.rounds[round]
            .chunks
            .iter()
            .any(|c| c.file_id.is_some() && c.batch_id.is_none());
        if !orphans {
            return Ok(());
        }
        let existing = self.client.list().await?;
        for (c, chunk) in state.rounds[round].chunks.iter_mut().enumerate() {
            if chunk.batch_id.is_some() || chunk.file_id.is_none() {
                continue;
            }
            let tag = format!("r{round}c{c}");
            let found = existing.iter().find(|b| {
                b.metadata.as_ref().is_some_and(|m| {
                    m["hnc_run"] == state.run.as_str() && m["hnc_chunk"] == tag.as_str()
                }) && !b.hit_token_limit()
            });
            if let Some(batch) = found {
                chunk.batch_id = Some(batch.id.clone());
            }
        }
        state.save(state_path)?;
        Ok(())
    }

    /// Every answered line of the round's batches, read and checked.
    async fn collect(
        &self,
        state: &RunState,
        round: usize,
    ) -> Result<(Answers, Usage), BatchLaneError> {
        let requests = &state.rounds[round].requests;
        let mut answers = Answers::new();
        let mut usage = Usage::default();
        for chunk in &state.rounds[round].chunks {
            let Some(id) = &chunk.batch_id else { continue };
            let batch: BatchObject = self.client.retrieve(id).await?;
            for file in [&batch.output_file_id, &batch.error_file_id]
                .into_iter()
                .flatten()
            {
                let content = self.client.content(file).await?;
                for (custom_id, body) in super::openai::answered_lines(&content) {
                    let Some(n) = custom_id
                        .strip_prefix("req-")
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n < requests.len())
                    else {
                        continue;
                    };
                    let spent = self.read_answer(&body, &requests[n], &mut answers);
                    usage += spent;
                }
            }
        }
        Ok((answers, usage))
    }

    /// Checks one answer as the live path does, filing each valid label under its title.
    fn read_answer(&self, body: &[u8], indices: &[usize], answers: &mut Answers) -> Usage {
        let mut usage = match indices {
            [one] => {
                let (result, usage) = self.single.decode(body, &self.taxonomy);
                if let Ok(prediction) = result {
                    answers.insert(*one, prediction);
                }
                usage
            }
            many => {
                let (result, usage) = self.packs.decode(body, &self.taxonomy, many.len());
                for (index, slot) in many.iter().zip(result.unwrap_or_default()) {
                    if let Some(prediction) = slot {
                        answers.insert(*index, prediction);
                    }
                }
                usage
            }
        }
        .with_requests(1);
        usage.price_at(self.price.map(|p| p.at(Tier::Batch)));
        usage
    }

    /// `--fallback live`: the titles at `missing` through the live pipeline in this process.
    async fn live(
        &self,
        config: &ClassifyFileConfig,
        titles: &[String],
        missing: &[usize],
        progress: bool,
        usage: &mut Usage,
    ) -> Result<Vec<Row>, BatchLaneError> {
        let service = ServiceArgs {
            direct: !config.service.simulate,
            ..config.service.clone()
        };
        let target = Box::pin(service.connect(|serve| serve)).await?;
        let asked: Vec<String> = missing.iter().map(|i| titles[*i].clone()).collect();
        let bar = crate::progress::bar(asked.len() as u64, progress, "live fallback");
        let mut rows = Vec::with_capacity(asked.len());
        let summary = target
            .classify(
                &asked,
                Batches {
                    size: 500,
                    concurrency: 4,
                },
                &bar,
                |batch| {
                    rows.extend_from_slice(batch);
                    Ok(())
                },
            )
            .await?;
        bar.finish_and_clear();
        let mut live = Usage::billed(summary.input_tokens, 0, summary.output_tokens)
            .with_requests(summary.upstream_requests);
        match summary.cost_usd {
            Some(cost) => live.add_cost(cost),
            None => live.price_at(None),
        }
        *usage += live;
        Ok(rows)
    }

    /// `--cancel`: cancels the interrupted run's batches that are still going, forgets the run.
    async fn cancel(&self, state_path: &Path, input_titles: usize) -> Result<(), BatchLaneError> {
        let Some(state) = RunState::load(state_path, input_titles)? else {
            eprintln!(
                "no interrupted --batch-api run for this output ({} not found)",
                state_path.display()
            );
            return Ok(());
        };
        let mut cancelled = 0;
        for chunk in state.rounds.iter().flat_map(|r| &r.chunks) {
            if let Some(id) = &chunk.batch_id
                && !self.client.retrieve(id).await?.is_terminal()
            {
                self.client.cancel(id).await?;
                cancelled += 1;
            }
        }
        RunState::remove(state_path)?;
        eprintln!("cancelled {cancelled} batch(es); the run's state is removed");
        Ok(())
    }
}
