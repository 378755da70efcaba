//! Why a bench run stopped.

use std::path::PathBuf;

use crate::sim::SimConfigError;
use crate::upstream::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing results")]
    Csv(#[from] csv::Error),
    #[error("could not open a loopback port")]
    Bind(#[source] std::io::Error),
    #[error("invalid simulator setting")]
    Sim(#[from] SimConfigError),
    #[error("could not build the upstream client")]
    Upstream(#[from] BuildError),
    #[error("could not build the HTTP client")]
    Http(#[from] reqwest::Error),
    #[error("cannot find this executable to start `serve`")]
    CurrentExe(#[source] std::io::Error),
    #[error("could not start {binary}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the service at {0} did not become healthy")]
    Unhealthy(String),
    #[error("the thread pool panicked")]
    Panicked(#[source] tokio::task::JoinError),
    #[error("--upstream-url needs a key (OPENAI_API_KEY or --api-key)")]
    MissingKey,
    #[error("drawing the chart: {0}")]
    Chart(String),
}
