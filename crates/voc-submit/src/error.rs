//! The error type of voc-submit.
use std::path::PathBuf;

/// Why an RLE string is not a valid run-length encoding of an array of a given length.
///
/// Value positions (`value`) are 1-based positions in the space-separated list, so a user can count them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    #[error("empty value at position {value}: values must be separated by single spaces (no leading, trailing or double spaces)")]
    EmptyValue { value: usize },
    #[error("value {value} is {text:?}: expected a positive integer")]
    NotANumber { value: usize, text: String },
    #[error("odd number of values ({count}): expected pairs of `start length`")]
    OddCount { count: usize },
    #[error("run {run} starts at 0: starts are 1-based")]
    ZeroStart { run: usize },
    #[error("run {run} (start {start}) has length 0: lengths must be positive")]
    ZeroLength { run: usize, start: u64 },
    #[error("run {run} starts at {start}, but run {prev} already covers positions up to {prev_end}: runs must be in increasing order and must not overlap")]
    NotIncreasing {
        run: usize,
        start: u64,
        prev: usize,
        prev_end: u64,
    },
    #[error("run {run} ({start} {len}) ends at {end}, past the end of the array ({size} values)")]
    PastEnd {
        run: usize,
        start: u64,
        len: u64,
        end: u64,
        size: u64,
    },
}

/// Errors of voc-submit. Each message names the offending value, where it is and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the submission: {0}")]
    Write(#[from] std::io::Error),
    #[error("mask value {value} at row {row}, column {column}: expected 0 (background), 1..=20 (a class) or 255 (void, counted as background)")]
    BadMaskValue {
        value: u8,
        row: usize,
        column: usize,
    },
    #[error("label {index} ({class}) is {value}: labels must be 0 or 1")]
    BadLabel {
        index: usize,
        class: &'static str,
        value: i64,
    },
    #[error("{what}: expected {expected} values, got {actual}")]
    SizeMismatch {
        what: String,
        expected: usize,
        actual: usize,
    },
    #[error("{context}: {source}")]
    Rle { context: String, source: RleError },
    #[error("Id {id:?} cannot be written into a CSV row: it must not be empty or contain a comma, a quote or a line break")]
    BadId { id: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, SubmitError>;
