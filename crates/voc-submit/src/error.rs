//! The error type of voc-submit.
use std::path::PathBuf;

/// Why an RLE string is not a valid run-length encoding of an array of a given length.
///
/// Value positions (`value`) are 1-based positions in the space-separated list, so a user can count them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    /// Two spaces in a row, or a leading or trailing space.
    #[error("empty value at position {value}: values must be separated by single spaces (no leading, trailing or double spaces)")]
    EmptyValue {
        /// Position of the empty value, 1-based.
        value: usize,
    },
    /// A value that is not a decimal integer (or does not fit in 64 bits).
    #[error("value {value} is {text:?}: expected a positive integer")]
    NotANumber {
        /// Position of the value, 1-based.
        value: usize,
        /// The value as written.
        text: String,
    },
    /// A start without its length.
    #[error("odd number of values ({count}): expected pairs of `start length`")]
    OddCount {
        /// Number of values.
        count: usize,
    },
    /// A run starting at 0.
    #[error("run {run} starts at 0: starts are 1-based")]
    ZeroStart {
        /// The run, 1-based.
        run: usize,
    },
    /// A run of length 0.
    #[error("run {run} (start {start}) has length 0: lengths must be positive")]
    ZeroLength {
        /// The run, 1-based.
        run: usize,
        /// Its start, 1-based as written.
        start: u64,
    },
    /// A run that starts before the previous one ends.
    #[error("run {run} starts at {start}, but run {prev} already covers positions up to {prev_end}: runs must be in increasing order and must not overlap")]
    NotIncreasing {
        /// The run, 1-based.
        run: usize,
        /// Its start, 1-based as written.
        start: u64,
        /// The previous run, 1-based.
        prev: usize,
        /// The last position the previous run covers, 1-based.
        prev_end: u64,
    },
    /// A run that goes past the end of the array.
    #[error("run {run} ({start} {len}) ends at {end}, past the end of the array ({size} values)")]
    PastEnd {
        /// The run, 1-based.
        run: usize,
        /// Its start, 1-based as written.
        start: u64,
        /// Its length.
        len: u64,
        /// Its last position, 1-based.
        end: u64,
        /// Length of the array.
        size: u64,
    },
}

/// Errors of voc-submit. Each message names the offending value, where it is and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Reading the file at `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Writing rows to the output failed.
    #[error("cannot write the submission: {0}")]
    Write(#[from] std::io::Error),
    /// A mask value that is neither background, a class nor void, at the first pixel that has one.
    #[error("mask value {value} at row {row}, column {column}: expected 0 (background), 1..=20 (a class) or 255 (void, counted as background)")]
    BadMaskValue {
        /// The value (21..=254).
        value: u8,
        /// Row of the pixel, 0-based.
        row: usize,
        /// Column of the pixel, 0-based.
        column: usize,
    },
    /// A label that is not 0 or 1.
    #[error("label {index} ({class}) is {value}: labels must be 0 or 1")]
    BadLabel {
        /// Class index, 0-based.
        index: usize,
        /// Class name, from [`CLASS_NAMES`](crate::CLASS_NAMES).
        class: &'static str,
        /// The value found.
        value: i64,
    },
    /// A label vector or mask of the wrong length.
    #[error("{what}: expected {expected} values, got {actual}")]
    SizeMismatch {
        /// What was measured.
        what: String,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        actual: usize,
    },
    /// Malformed RLE text, with where it was.
    #[error("{context}: {source}")]
    Rle {
        /// Where the text came from (line and row Id, or the mask size).
        context: String,
        /// What is wrong with it.
        source: RleError,
    },
    /// An Id that would break the CSV.
    #[error("Id {id:?} cannot be written into a CSV row: it must not be empty or contain a comma, a quote or a line break")]
    BadId {
        /// The Id.
        id: String,
    },
    /// A submission or input that cannot be used as it is; the message says why (duplicate or missing
    /// rows when scoring, a mask size that overflows, a pixel in two channels, ...).
    #[error("{0}")]
    Invalid(String),
    /// Writing the output file atomically failed (voc-core's error, with its source).
    #[error(transparent)]
    Output(#[from] voc_core::CoreError),
}

/// voc-submit's result type.
pub type Result<T> = std::result::Result<T, SubmitError>;
