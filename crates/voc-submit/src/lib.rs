//! The Kaggle submission encoder for the VOC competition: run-length encoding, validation and a local
//! scorer.
//!
//! The output of [`SubmissionWriter`] is byte for byte what the competition's own (numpy) encoder
//! writes; [`validate()`] checks a file against a test set and reports every problem with its line;
//! [`Scorer`] computes the competition's mean Dice (and per-class IoU) against ground truth.
//!
//! ```
//! use voc_submit::{encode_labels, encode_mask, MaskView};
//! // aeroplane and bus
//! let mut labels = [0u8; 20];
//! labels[0] = 1;
//! labels[5] = 1;
//! assert_eq!(encode_labels(&labels)?, "1 1 6 1");
//! let mask = [0, 1, 2, 1];
//! assert_eq!(encode_mask(MaskView::new(&mask, 2, 2)?)?, "2 1 4 1 7 1");
//! # Ok::<(), voc_submit::SubmitError>(())
//! ```
//!
//! The crate has no tensor dependency: masks are plain `&[u8]` in row-major order.
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
pub use writer::{AtomicFile, SubmissionWriter, HEADER};

/// Number of classes in a label vector and channels in a segmentation row (background is not one).
pub const NUM_CLASSES: usize = 20;

/// The class order of label vectors and segmentation channels (channel `c` is mask value `c + 1`).
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];
