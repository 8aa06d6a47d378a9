#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod reader;
pub mod rle;
pub mod score;
pub mod validate;
pub mod writer;

pub use error::{Result, RleError, SubmitError};
pub use reader::{list_problems, ParsedSubmission, Problem, RowKind, Submission, SubmissionRow};
pub use rle::{
    check_labels, decode_bits, decode_labels, decode_mask, encode_bits, encode_labels, encode_mask,
    parse_runs, runs_of_bits, runs_of_labels, write_labels, write_runs, ClassRuns, MaskView, Run,
};
pub use score::{Score, Scorer};
pub use validate::{validate, validate_file, ExpectedImage, ValidationReport};
pub use writer::{SubmissionWriter, HEADER};

/// Streams the submission into place atomically (see [`SubmissionWriter::create`]).
pub use voc_core::AtomicFile;
/// The class order of label vectors and segmentation channels (channel `c` is mask value `c + 1`),
/// and their number; the one definition lives in voc-core.
pub use voc_core::{CLASS_NAMES, NUM_CLASSES};
