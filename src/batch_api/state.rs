//! What a `--batch-api` run has planned and submitted, written next to the output before any
//! upload and after every file and batch it creates, so an interrupted run (Ctrl-C, a crash, a
//! reboot) picks its batches up again instead of submitting, and paying for, the same lines twice.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bump when the shape changes, of the state or of the lines it planned: an older state is
/// refused rather than misread. 2: label-only packs ask for an object keyed by id.
const VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub version: u32,
    /// Random: tags this run's batches (`metadata.hnc_run`) so a batch created just before a
    /// crash is found again rather than created twice.
    pub run: String,
    /// Rows the output held when the run was planned: the run's titles start there.
    pub first_index: usize,
    /// Titles in the input then; a changed input is refused.
    pub input_titles: usize,
    pub model: String,
    pub endpoint: String,
    /// Whether the lines ask the model for a written confidence (or the label only, read from
    /// logprobs): answers are read in the form they were asked in, whatever the settings say
    /// when the run resumes. States from before the field asked for a written one.
    #[serde(default = "asked_in_writing")]
    pub written_confidence: bool,
    /// The first round, then follow-up rounds of the items earlier rounds left unanswered.
    pub rounds: Vec<Round>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// Each request's titles, by their index in the input; request `n` is `custom_id` `req-n`.
    pub requests: Vec<Vec<usize>>,
    pub chunks: Vec<Chunk>,
}

/// One file of requests and the batch over it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    pub first_request: usize,
    pub requests: usize,
    pub file_id: Option<String>,
    pub batch_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} was planned by another version of hn-classifier (state version {found}, this one \
         reads {VERSION}): finish the run with that version, or cancel it with --cancel"
    )]
    OtherVersion { path: PathBuf, found: u32 },
    #[error("{path} is not a batch state this version can read")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} belongs to a run over {planned} titles; the input now has {now}. Finish it with the same input, or --cancel it"
    )]
    InputChanged {
        path: PathBuf,
        planned: usize,
        now: usize,
    },
}

fn asked_in_writing() -> bool {
    true
}

impl RunState {
    /// Where the state of the run writing `output` lives.
    pub fn path_for(output: &Path) -> PathBuf {
        let mut name = output.as_os_str().to_owned();
        name.push(".batch-state.json");
        PathBuf::from(name)
    }

    pub fn new(
        first_index: usize,
        input_titles: usize,
        (model, endpoint): (&str, &str),
        written_confidence: bool,
    ) -> Self {
        let run: String = (0..8)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        Self {
            version: VERSION,
            run,
            first_index,
            input_titles,
            model: model.to_owned(),
            endpoint: endpoint.to_owned(),
            written_confidence,
            rounds: Vec::new(),
        }
    }

    /// Refuses a state another version planned: its lines may ask for answers this version
    /// reads in another shape. (`--cancel` needs only the batch ids, which every version keeps.)
    pub fn resumable(&self, path: &Path) -> Result<(), StateError> {
        if self.version == VERSION {
            return Ok(());
        }
        Err(StateError::OtherVersion {
            path: path.to_owned(),
            found: self.version,
        })
    }

    /// The state at `path`, if a run left one.
    pub fn load(path: &Path, input_titles: usize) -> Result<Option<Self>, StateError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let state: Self =
            serde_json::from_slice(&text).map_err(|source| StateError::Unreadable {
                path: path.to_owned(),
                source,
            })?;
        if state.input_titles != input_titles {
            return Err(StateError::InputChanged {
                path: path.to_owned(),
                planned: state.input_titles,
                now: input_titles,
            });
        }
        Ok(Some(state))
    }

    /// Writes the state atomically (a temporary file renamed over it): a crash mid-write leaves
    /// the previous state, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let text = serde_json::to_vec_pretty(self).expect("the state serializes");
        std::fs::write(&temporary, text).map_err(io)?;
        std::fs::rename(&temporary, path).map_err(io)
    }

    pub fn remove(path: &Path) -> Result<(), StateError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

impl Round {
    /// `requests` split into chunks of at most `max_requests` requests and `max_bytes` of
    /// JSONL (`line_bytes` gives each request's line length).
    pub fn new(
        requests: Vec<Vec<usize>>,
        max_requests: usize,
        max_bytes: usize,
        line_bytes: impl Fn(&[usize]) -> usize,
    ) -> Self {
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut bytes = 0;
        for (n, request) in requests.iter().enumerate() {
            let size = line_bytes(request);
            let fits = chunks
                .last()
                .is_some_and(|c| c.requests < max_requests && bytes + size <= max_bytes);
            if fits {
                let chunk = chunks.last_mut().expect("checked: there is a last chunk");
                chunk.requests += 1;
                bytes += size;
            } else {
                chunks.push(Chunk {
                    first_request: n,
                    requests: 1,
                    file_id: None,
                    batch_id: None,
                });
                bytes = size;
            }
        }
        Self { requests, chunks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_another_version_planned_is_not_resumed_but_can_be_cancelled() {
        let path = Path::new("out.jsonl.batch-state.json");
        let mut state = RunState::new(0, 10, ("m", "/v1/responses"), false);
        assert!(state.resumable(path).is_ok());
        state.version = 1;
        let refused = state.resumable(path).unwrap_err().to_string();
        assert!(
            refused.contains("state version 1") && refused.contains("--cancel"),
            "{refused}"
        );
    }

    #[test]
    fn chunks_hold_at_most_the_requests_and_bytes_allowed() {
        let requests: Vec<Vec<usize>> = (0..10).map(|i| vec![i]).collect();
        let by_count = Round::new(requests.clone(), 4, usize::MAX, |_| 100);
        let sizes: Vec<usize> = by_count.chunks.iter().map(|c| c.requests).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let by_bytes = Round::new(requests, 100, 250, |_| 100);
        let sizes: Vec<usize> = by_bytes.chunks.iter().map(|c| c.requests).collect();
        assert_eq!(sizes, [2, 2, 2, 2, 2]);
        assert_eq!(by_bytes.chunks[3].first_request, 6);
    }
}
