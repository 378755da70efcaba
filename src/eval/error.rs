//! Why an eval stopped.

use std::path::PathBuf;

use crate::client::ClientError;
use crate::gold::GoldError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("reading the gold file")]
    Gold(#[from] GoldError),
    #[error(
        "--pack-sizes and --confidences need --direct or --simulate: a running service packs and \
         reads confidences as it was started"
    )]
    PackSizesNeedDirect,
    #[error("classifying the gold titles")]
    Classify(#[from] ClientError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("drawing the charts: {0}")]
    Chart(String),
}
