//! What a client command reports when it fails: each error names what it was doing.

use std::fmt;
use std::path::PathBuf;

use tokio_util::codec::LinesCodecError;

use super::rows::OutputFormat;
use crate::startup::StartupError;

/// What a client command was doing with a file when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    OpenInput,
    ReadInput,
    ReadOutput,
    WriteOutput,
}

impl fmt::Display for FileAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenInput => "cannot open the input",
            Self::ReadInput => "cannot read the input",
            Self::ReadOutput => "cannot read the output written so far (to resume after it)",
            Self::WriteOutput => "cannot write the output",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{action} {path}")]
    Io {
        action: FileAction,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the output {path} ends in .{} but --format is {}: drop --format, or name the output \
         .{}", named.extension(), asked.extension(), asked.extension()
    )]
    FormatMismatch {
        path: PathBuf,
        asked: OutputFormat,
        named: OutputFormat,
    },
    #[error(
        "the output {path} already holds rows that are not {}: name another output, or move \
         this one away", format.extension()
    )]
    OutputHoldsOtherFormat { path: PathBuf, format: OutputFormat },
    #[error("{path} line {line}: {message}")]
    Input {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("could not reach {url}")]
    Http { url: String, source: reqwest::Error },
    #[error(
        "nothing answers at {url} (connection refused). Start the service there with \
         `hn-classifier serve` (add --simulate to try it offline), or classify without one: \
         --direct (the provider, from OPENAI_API_KEY) or --simulate"
    )]
    NotRunning {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the service answered {status}: {body}")]
    Service { status: u16, body: String },
    #[error("the service's stream broke off")]
    StreamRead(#[source] LinesCodecError),
    #[error("the service's stream has a line that is not the contract's")]
    StreamLine(#[source] serde_json::Error),
    #[error("the service's stream is incomplete: {0}")]
    StreamIncomplete(&'static str),
    #[error(
        "row {row} of {output} holds another title than the input's line {row}: it was written \
         from another input; name another output"
    )]
    OutputOfAnotherInput { output: PathBuf, row: usize },
    #[error("cannot encode a row: {0}")]
    Encode(String),
    #[error("the serve settings in the environment are invalid")]
    Settings(#[source] clap::Error),
    #[error("could not start the in-process service")]
    Start(#[from] StartupError),
    #[error("--job needs a running service with HNC_DATA_DIR (--url), not --direct or --simulate")]
    JobNeedsService,
}
