//! The run's files: titles read from the input, rows appended to the output in input order,
//! and the rows an earlier run already wrote (the resume point, and the rows to send again).
//! The output's format follows its extension (`--format` for a name without one); a `--format`
//! that contradicts the extension, or an output that already holds rows of the other format,
//! is refused rather than written. Each batch's rows go out in one write, and a last line torn
//! by a run stopped mid-write is cut off when the output is read again (its title is sent
//! again), so a crash never leaves a half row counted as done.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{ClientError, FileAction};
use super::rows::{OutputFormat, Row};

/// Where a run's rows go, in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    path: PathBuf,
    format: OutputFormat,
}

impl Output {
    /// The output: `output` in the format its extension says (or `format`, which must agree
    /// with it), or a file beside `input`.
    pub fn new(
        input: &Path,
        output: Option<PathBuf>,
        format: Option<OutputFormat>,
    ) -> Result<Self, ClientError> {
        let Some(path) = output else {
            let format = format.unwrap_or(OutputFormat::Jsonl);
            let path = input.with_extension(format!("classified.{}", format.extension()));
            return Ok(Self { path, format });
        };
        let format = match (format, OutputFormat::of(&path)) {
            (Some(asked), Some(named)) if asked != named => {
                return Err(ClientError::FormatMismatch { path, asked, named });
            }
            (Some(format), _) | (None, Some(format)) => format,
            (None, None) => OutputFormat::Jsonl,
        };
        Ok(Self { path, format })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many rows an earlier run wrote: the resume point (see `read_rows`).
    pub fn rows_done(&self) -> Result<usize, ClientError> {
        Ok(self.read_rows()?.len())
    }

    /// The rows an earlier run wrote, in order. A last line without its newline (a run stopped
    /// mid-write) is cut off the file first, and said; a row that cannot be read elsewhere is
    /// refused rather than counted. Rows of the other format (a JSON Lines file named `.csv`
    /// by an older build) are refused, not read and appended to.
    pub fn read_rows(&self) -> Result<Vec<Row>, ClientError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.failed(FileAction::ReadOutput, source)),
        };
        let mut first = String::new();
        BufReader::new(&file)
            .read_line(&mut first)
            .map_err(|e| self.failed(FileAction::ReadOutput, e))?;
        let holds_jsonl = first.trim_start().starts_with('{');
        if !first.trim().is_empty() && holds_jsonl != (self.format == OutputFormat::Jsonl) {
            return Err(ClientError::OutputHoldsOtherFormat {
                path: self.path.clone(),
                format: self.format,
            });
        }
        self.cut_torn_line()?;
        let file = File::open(&self.path).map_err(|e| self.failed(FileAction::ReadOutput, e))?;
        let unreadable = |line: usize, message: String| ClientError::Input {
            path: self.path.clone(),
            line,
            message: format!("not a row of an earlier run ({message}): move the output away"),
        };
        match self.format {
            OutputFormat::Jsonl => BufReader::new(file)
                .lines()
                .enumerate()
                .filter(|(_, l)| l.as_ref().is_ok_and(|l| !l.is_empty()))
                .map(|(n, line)| {
                    let line = line.map_err(|e| self.failed(FileAction::ReadOutput, e))?;
                    serde_json::from_str(&line).map_err(|e| unreadable(n + 1, e.to_string()))
                })
                .collect(),
            OutputFormat::Csv => csv::Reader::from_reader(file)
                .deserialize()
                .enumerate()
                .map(|(n, row)| row.map_err(|e| unreadable(n + 2, e.to_string())))
                .collect(),
        }
    }

    /// Cuts a last line that has no newline (torn by a run stopped mid-write) off the file.
    fn cut_torn_line(&self) -> Result<(), ClientError> {
        let text = std::fs::read(&self.path).map_err(|e| self.failed(FileAction::ReadOutput, e))?;
        if text.is_empty() || text.ends_with(b"\n") {
            return Ok(());
        }
        let keep = text
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| self.failed(FileAction::WriteOutput, e))?;
        file.set_len(keep as u64)
            .map_err(|e| self.failed(FileAction::WriteOutput, e))?;
        tracing::warn!(
            output = %self.path.display(),
            bytes = text.len() - keep,
            "the output's last line was cut off mid-write (an earlier run stopped): removed, its title is classified again"
        );
        Ok(())
    }

    /// Replaces the whole output with `rows` (the rows sent again in place of their errors):
    /// written beside it, synced, then renamed over it, so a crash leaves the old file or the
    /// new one, never half of each.
    pub fn rewrite(&self, rows: &[Row]) -> Result<(), ClientError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".rewrite");
        let temporary = PathBuf::from(name);
        let io = |source| self.failed(FileAction::WriteOutput, source);
        let mut file = File::create(&temporary).map_err(io)?;
        file.write_all(&encode_rows(self.format, rows, true)?)
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temporary, &self.path).map_err(io)
    }

    /// A writer that appends after the rows already there. The file is created with the first
    /// rows, so a run that fails before any leaves no empty file behind; whether it can be
    /// written is checked now, before any title is paid for.
    pub fn appender(&self) -> Result<RowWriter, ClientError> {
        self.rows_done()?;
        // Fresh: nothing there at all (a CSV file cut back to its header keeps the header).
        let fresh = std::fs::metadata(&self.path).map_or(true, |m| m.len() == 0);
        let existed = self.path.exists();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.failed(FileAction::WriteOutput, e))?;
        if !existed {
            std::fs::remove_file(&self.path)
                .map_err(|e| self.failed(FileAction::WriteOutput, e))?;
        }
        Ok(RowWriter {
            output: self.clone(),
            fresh,
            open: None,
        })
    }

    fn failed(&self, action: FileAction, source: std::io::Error) -> ClientError {
        ClientError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }
}

/// Appends rows in order: each call's rows in one write.
pub struct RowWriter {
    output: Output,
    /// No rows there yet: a CSV file starts with its header.
    fresh: bool,
    open: Option<File>,
}

impl RowWriter {
    pub fn write(&mut self, rows: &[Row]) -> Result<(), ClientError> {
        if rows.is_empty() {
            return Ok(());
        }
        let output = &self.output;
        let io = |source| output.failed(FileAction::WriteOutput, source);
        let bytes = encode_rows(output.format, rows, self.fresh)?;
        let file = match &mut self.open {
            Some(file) => file,
            None => self.open.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&output.path)
                    .map_err(io)?,
            ),
        };
        // One write of whole lines: a crash tears at most the last line, which the next run
        // cuts off.
        file.write_all(&bytes).map_err(io)?;
        self.fresh = false;
        Ok(())
    }
}

/// `rows` as the format writes them, each line whole; a CSV header first when `header`.
fn encode_rows(format: OutputFormat, rows: &[Row], header: bool) -> Result<Vec<u8>, ClientError> {
    let encoding = |e: std::io::Error| ClientError::Encode(e.to_string());
    match format {
        OutputFormat::Jsonl => {
            let mut out = Vec::with_capacity(rows.len() * 128);
            for row in rows {
                serde_json::to_writer(&mut out, row).map_err(|e| encoding(e.into()))?;
                out.push(b'\n');
            }
            Ok(out)
        }
        OutputFormat::Csv => {
            let mut out = csv::WriterBuilder::new()
                .has_headers(header)
                .from_writer(Vec::with_capacity(rows.len() * 96));
            for row in rows {
                out.serialize(row).map_err(|e| encoding(e.into()))?;
            }
            out.into_inner().map_err(|e| encoding(e.into_error()))
        }
    }
}

/// The titles of `path`: one per line, or JSON Lines (a `.jsonl` file, or with `field`) with the
/// title in `field` (`title` by default).
pub fn read_titles(path: &Path, field: Option<&str>) -> Result<Vec<String>, ClientError> {
    let failed = |action, source| ClientError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let jsonl = field.is_some() || OutputFormat::of(path) == Some(OutputFormat::Jsonl);
    let field = field.unwrap_or("title");
    let file = File::open(path).map_err(|e| failed(FileAction::OpenInput, e))?;
    let mut titles = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| failed(FileAction::ReadInput, e))?;
        if !jsonl {
            titles.push(line);
            continue;
        }
        let bad = |message: String| ClientError::Input {
            path: path.to_owned(),
            line: number + 1,
            message,
        };
        let value: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let title = value
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("no string field `{field}`")))?;
        titles.push(title.to_owned());
    }
    Ok(titles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_extension_and_a_mismatch_is_refused() {
        let input = Path::new("data/titles.txt");
        let out = |o: Option<&str>, f| Output::new(input, o.map(PathBuf::from), f);
        let csv = out(Some("out.csv"), None).unwrap();
        assert_eq!(csv.format, OutputFormat::Csv);
        assert_eq!(
            out(Some("out.JSONL"), None).unwrap().format,
            OutputFormat::Jsonl
        );
        assert_eq!(
            out(Some("out.txt"), Some(OutputFormat::Csv))
                .unwrap()
                .format,
            OutputFormat::Csv
        );
        let refused = out(Some("out.csv"), Some(OutputFormat::Jsonl)).unwrap_err();
        assert!(
            refused.to_string().contains("out.csv ends in .csv"),
            "{refused}"
        );
        let beside = out(None, Some(OutputFormat::Csv)).unwrap();
        assert_eq!(beside.path, Path::new("data/titles.classified.csv"));
        assert_eq!(
            out(None, None).unwrap().path,
            Path::new("data/titles.classified.jsonl")
        );
    }

    #[test]
    fn nothing_is_created_until_the_first_rows_and_a_resume_appends() {
        let dir = std::env::temp_dir().join(format!("hnc-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.csv");
        let _ = std::fs::remove_file(&path);
        let output = Output {
            path: path.clone(),
            format: OutputFormat::Csv,
        };
        let row = |t: &str| Row {
            title: t.to_owned(),
            topic: Some("security".into()),
            confidence: Some(0.5),
            confidence_source: None,
            error: None,
            error_code: None,
        };
        let mut writer = output.appender().unwrap();
        writer.write(&[]).unwrap();
        assert!(!path.exists(), "no rows, no file");
        let nowhere = Output {
            path: dir.join("missing-dir").join("out.csv"),
            format: OutputFormat::Csv,
        };
        let refused = nowhere
            .appender()
            .err()
            .expect("checked before any title is sent");
        assert!(
            refused.to_string().starts_with("cannot write the output"),
            "{refused}"
        );
        writer.write(&[row("a")]).unwrap();
        drop(writer);
        output.appender().unwrap().write(&[row("b")]).unwrap();
        assert_eq!(output.rows_done().unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("title,topic").count(), 1, "one header: {text}");
        let as_jsonl = Output {
            path: path.clone(),
            format: OutputFormat::Jsonl,
        };
        assert!(matches!(
            as_jsonl.rows_done(),
            Err(ClientError::OutputHoldsOtherFormat { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
