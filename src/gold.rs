//! Labelled titles as JSON Lines, one item a line, with the title, the label and optionally a
//! second acceptable label (field names configurable): the gold set `eval` scores against, and
//! the examples `HNC_EXAMPLES_FILE` shows the model.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One hand-labelled item.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldItem {
    pub title: String,
    pub label: String,
    pub alt: Option<String>,
}

/// Which JSON fields hold what.
#[derive(Debug, Clone)]
pub struct Fields {
    pub title: String,
    pub label: String,
    pub alt: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GoldError {
    #[error("{path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: not JSON")]
    Json {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path} line {line}: no string field `{field}`")]
    Missing {
        path: PathBuf,
        line: usize,
        field: String,
    },
    #[error("{path}: no items")]
    Empty { path: PathBuf },
}

/// Every item of `path` (blank lines skipped); at most `limit` of them.
pub fn read(
    path: &Path,
    fields: &Fields,
    limit: Option<usize>,
) -> Result<Vec<GoldItem>, GoldError> {
    let file = std::fs::File::open(path).map_err(|source| GoldError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut items = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|n| items.len() >= n) {
            break;
        }
        let line = line.map_err(|source| GoldError::Read {
            path: path.to_owned(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|source| GoldError::Json {
            path: path.to_owned(),
            line: index + 1,
            source,
        })?;
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        let required = |field: &str| {
            text(field).ok_or_else(|| GoldError::Missing {
                path: path.to_owned(),
                line: index + 1,
                field: field.to_owned(),
            })
        };
        items.push(GoldItem {
            title: required(&fields.title)?,
            label: required(&fields.label)?,
            alt: text(&fields.alt).filter(|a| !a.is_empty()),
        });
    }
    if items.is_empty() {
        return Err(GoldError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(items)
}
