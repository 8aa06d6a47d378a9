//! Reading `submission.csv` back: a lenient parse that collects every structural problem with its
//! line number, and a strict one for scoring.
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Result, SubmitError};
use crate::writer::HEADER;

/// The two rows each image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowKind {
    /// `{id}_classification`: the RLE of the 20 labels.
    Classification,
    /// `{id}_segmentation`: the RLE of the 20xHxW class stack.
    Segmentation,
}

impl RowKind {
    /// The suffix of the row Id: `_classification` or `_segmentation`.
    pub fn suffix(self) -> &'static str {
        match self {
            RowKind::Classification => "_classification",
            RowKind::Segmentation => "_segmentation",
        }
    }

    /// Splits a row Id `{image id}_{kind}` into the image Id and the kind.
    pub fn split_row_id(row_id: &str) -> Option<(&str, RowKind)> {
        for kind in [RowKind::Classification, RowKind::Segmentation] {
            if let Some(image) = row_id.strip_suffix(kind.suffix()) {
                if !image.is_empty() {
                    return Some((image, kind));
                }
            }
        }
        None
    }
}

/// One row of a submission as read: its line (1-based, the header is line 1), Id parts and RLE text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionRow {
    /// Line in the file, 1-based.
    pub line: usize,
    /// The image Id (the row Id without its suffix).
    pub image_id: String,
    /// Which of the image's two rows.
    pub kind: RowKind,
    /// The `Predicted` field, unchecked.
    pub rle: String,
}

impl SubmissionRow {
    /// The row Id as written in the file.
    pub fn row_id(&self) -> String {
        format!("{}{}", self.image_id, self.kind.suffix())
    }
}

/// Something wrong with a submission, at a line when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Line in the file, 1-based; `None` for a problem of the whole file (a missing row).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem on `line`.
    pub fn at(line: usize, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            message: message.into(),
        }
    }

    /// A problem of the whole file.
    pub fn general(message: impl Into<String>) -> Self {
        Self {
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The rows of a submission file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submission {
    /// The data rows (not the header).
    pub rows: Vec<SubmissionRow>,
}

/// The largest submission file voc reads (256 MiB; a real one is a few megabytes): checked before
/// reading, so a hostile file cannot take the memory.
pub const MAX_SUBMISSION_BYTES: u64 = 256 << 20;

/// What [`Submission::parse`] makes of a file: the rows it could read, the problems that make the file
/// invalid and warnings that do not.
#[derive(Debug, Clone, Default)]
pub struct ParsedSubmission {
    /// The rows that had the right form.
    pub submission: Submission,
    /// What makes the file invalid, in line order.
    pub problems: Vec<Problem>,
    /// What does not (a missing final line break).
    pub warnings: Vec<Problem>,
}

/// A CSV field, without the double quotes a CSV writer may put around it.
fn unquote(field: &str) -> Option<&str> {
    match field.strip_prefix('"') {
        None if !field.contains('"') => Some(field),
        None => None,
        Some(rest) => rest.strip_suffix('"').filter(|inner| !inner.contains('"')),
    }
}

impl Submission {
    /// Reads the file's structure: the header, two fields per line, row Ids of the form
    /// `{image id}_classification` / `{image id}_segmentation`. The RLE text is kept as is; see
    /// [`crate::validate()`] for checking it against a test set.
    pub fn parse(bytes: &[u8]) -> ParsedSubmission {
        let mut parsed = ParsedSubmission::default();
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(e) => {
                let line = 1 + bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                parsed.problems.push(Problem::at(
                    line,
                    "not valid UTF-8 text: a submission is plain ASCII CSV",
                ));
                String::from_utf8_lossy(bytes)
            }
        };
        if text.is_empty() {
            parsed.problems.push(Problem::general(format!(
                "the file is empty: expected the header `{HEADER}` and two rows per test image"
            )));
            return parsed;
        }
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.last() == Some(&"") {
            lines.pop();
        } else {
            parsed.warnings.push(Problem::at(
                lines.len(),
                "the last line does not end with a line break: check the file was not cut short",
            ));
        }
        for (index, raw) in lines.iter().enumerate() {
            let line = index + 1;
            let content = raw.strip_suffix('\r').unwrap_or(raw);
            if index == 0 {
                let header = content.strip_prefix('\u{feff}').unwrap_or(content);
                if header != HEADER {
                    parsed.problems.push(Problem::at(
                        line,
                        format!("header is {header:?}: expected `{HEADER}`"),
                    ));
                }
                continue;
            }
            if content.is_empty() {
                parsed.problems.push(Problem::at(line, "empty line"));
                continue;
            }
            let fields: Vec<&str> = content.split(',').collect();
            if fields.len() != 2 {
                parsed.problems.push(Problem::at(
                    line,
                    format!("expected 2 fields `Id,Predicted`, found {}", fields.len()),
                ));
                continue;
            }
            let (Some(row_id), Some(rle)) = (unquote(fields[0]), unquote(fields[1])) else {
                parsed
                    .problems
                    .push(Problem::at(line, "badly quoted field"));
                continue;
            };
            let Some((image_id, kind)) = RowKind::split_row_id(row_id) else {
                parsed.problems.push(Problem::at(
                    line,
                    format!("Id {row_id:?} must be `{{image id}}_classification` or `{{image id}}_segmentation`"),
                ));
                continue;
            };
            parsed.submission.rows.push(SubmissionRow {
                line,
                image_id: image_id.to_string(),
                kind,
                rle: rle.to_string(),
            });
        }
        parsed
    }

    /// Reads a submission file, failing with every structural problem listed when there is any
    /// ([`SubmitError::Invalid`]), or [`SubmitError::Io`] when it cannot be read.
    pub fn read(path: &Path) -> Result<Submission> {
        let io = |source| SubmitError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_SUBMISSION_BYTES {
            return Err(SubmitError::Invalid(format!(
                "{}: {len} bytes; a submission is a few megabytes (at most {MAX_SUBMISSION_BYTES} bytes are read)",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let parsed = Self::parse(&bytes);
        if !parsed.problems.is_empty() {
            return Err(SubmitError::Invalid(format!(
                "{}: {} problem(s):\n{}",
                path.display(),
                parsed.problems.len(),
                list_problems(&parsed.problems, 50)
            )));
        }
        Ok(parsed.submission)
    }

    /// The row of an image and kind, if there is one.
    pub fn find(&self, image_id: &str, kind: RowKind) -> Option<&SubmissionRow> {
        self.rows
            .iter()
            .find(|r| r.kind == kind && r.image_id == image_id)
    }
}

/// One problem per line, indented, at most `max` of them and a count of the rest.
pub fn list_problems(problems: &[Problem], max: usize) -> String {
    let mut out = String::new();
    for p in problems.iter().take(max) {
        out.push_str("  ");
        out.push_str(&p.to_string());
        out.push('\n');
    }
    if problems.len() > max {
        out.push_str(&format!("  ... and {} more\n", problems.len() - max));
    }
    out.truncate(out.trim_end().len());
    out
}
