//! Checking a submission against a test set before it is uploaded.
use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Result, RleError, SubmitError};
use crate::reader::{Problem, RowKind, Submission};
use crate::rle::parse_runs;
use crate::NUM_CLASSES;

/// An image the submission must have rows for, in test-set order, with its size from the image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedImage {
    /// The image Id, as in `test_set.csv`.
    pub id: String,
    /// Image rows.
    pub height: usize,
    /// Image columns.
    pub width: usize,
}

/// Every problem found in a submission (each with its line when it has one) and warnings that do
/// not make it invalid.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ValidationReport {
    /// Data rows read (lines after the header that had the right form).
    pub rows: usize,
    /// What makes the file invalid: lines in file order, then missing rows.
    pub problems: Vec<Problem>,
    /// What does not (a missing final line break: check the file was not cut short).
    pub warnings: Vec<Problem>,
}

impl ValidationReport {
    /// Whether there is no problem (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a submission's bytes against the test set, reporting every problem at once: the header and
/// line form, unknown (extra) Ids, duplicate rows, rows out of test-set order, malformed RLE, runs past
/// the end of the array (20 for classification, 20 x H x W of the test image for segmentation), and
/// missing rows.
///
/// ```
/// use voc_submit::{validate, ExpectedImage};
///
/// let expected = [
///     ExpectedImage { id: "1".into(), height: 2, width: 2 },
///     ExpectedImage { id: "7".into(), height: 2, width: 2 },
/// ];
/// let good = "Id,Predicted\n1_classification,1 1\n1_segmentation,2 1\n7_classification,\n7_segmentation,\n";
/// let report = validate(good.as_bytes(), &expected);
/// assert!(report.is_valid() && report.warnings.is_empty());
/// assert_eq!(report.rows, 4);
///
/// // A run past the 20x2x2 stack, an unknown Id, no rows for image 7, and a cut last line.
/// let bad = "Id,Predicted\n1_classification,1 1\n1_segmentation,80 2\n9_classification,";
/// let report = validate(bad.as_bytes(), &expected);
/// assert!(!report.is_valid());
/// for problem in &report.problems {
///     println!("{problem}"); // "line 3: 1_segmentation: run 1 (80 2) ends at 81, past the end ..."
/// }
/// assert_eq!(report.problems[0].line, Some(3));
/// assert_eq!(report.problems.len(), 4); // line 3, line 4, missing 7_classification, 7_segmentation
/// assert_eq!(report.warnings.len(), 1);
/// ```
pub fn validate(bytes: &[u8], expected: &[ExpectedImage]) -> ValidationReport {
    let parsed = Submission::parse(bytes);
    let mut problems = parsed.problems;
    let positions: HashMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let mut seen: HashMap<(usize, RowKind), usize> = HashMap::new();
    // The expected position of the latest row so far, with its line and Id, to name it in order errors.
    let mut furthest: Option<(usize, usize, String)> = None;
    for row in &parsed.submission.rows {
        let Some(&index) = positions.get(row.image_id.as_str()) else {
            problems.push(Problem::at(
                row.line,
                format!(
                    "extra row {}: image Id {:?} is not an image of the split",
                    row.row_id(),
                    row.image_id
                ),
            ));
            continue;
        };
        if let Some(first) = seen.get(&(index, row.kind)) {
            problems.push(Problem::at(
                row.line,
                format!("duplicate row {} (first on line {first})", row.row_id()),
            ));
            continue;
        }
        seen.insert((index, row.kind), row.line);
        let position = 2 * index + (row.kind == RowKind::Segmentation) as usize;
        match &furthest {
            Some((at, line, id)) if position < *at => problems.push(Problem::at(
                row.line,
                format!(
                    "row {} is out of order: it comes after {id} (line {line}); rows follow the order of the test set, classification before segmentation",
                    row.row_id()
                ),
            )),
            _ => furthest = Some((position, row.line, row.row_id())),
        }
        let image = &expected[index];
        let size = match row.kind {
            RowKind::Classification => NUM_CLASSES as u64,
            RowKind::Segmentation => (NUM_CLASSES as u64)
                .saturating_mul(image.height as u64)
                .saturating_mul(image.width as u64),
        };
        if let Err(e) = parse_runs(&row.rle, size) {
            let mut message = format!("{}: {e}", row.row_id());
            if matches!(e, RleError::PastEnd { .. }) {
                message.push_str(&match row.kind {
                    RowKind::Classification => " (20 labels)".to_string(),
                    RowKind::Segmentation => {
                        format!(
                            " (20 classes x {} x {} pixels of the test image)",
                            image.height, image.width
                        )
                    }
                });
            }
            problems.push(Problem::at(row.line, message));
        }
    }
    // Lines in file order; missing rows (no line) after them.
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    for (index, image) in expected.iter().enumerate() {
        for kind in [RowKind::Classification, RowKind::Segmentation] {
            if !seen.contains_key(&(index, kind)) {
                problems.push(Problem::general(format!(
                    "missing row {}{}",
                    image.id,
                    kind.suffix()
                )));
            }
        }
    }
    ValidationReport {
        rows: parsed.submission.rows.len(),
        problems,
        warnings: parsed.warnings,
    }
}

/// [`validate()`] on a file; only failing to read it is an error ([`SubmitError::Io`]).
pub fn validate_file(path: &Path, expected: &[ExpectedImage]) -> Result<ValidationReport> {
    let io = |source| SubmitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > crate::reader::MAX_SUBMISSION_BYTES {
        return Err(SubmitError::Invalid(format!(
            "{}: {len} bytes; a submission is a few megabytes (at most {} bytes are read)",
            path.display(),
            crate::reader::MAX_SUBMISSION_BYTES
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    Ok(validate(&bytes, expected))
}
