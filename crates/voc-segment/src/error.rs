//! Errors of the segmentation crate.
use std::path::PathBuf;

pub type Result<T, E = SegmentError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error(transparent)]
    Classify(#[from] voc_classify::ClassifyError),

    #[error(transparent)]
    Tensor(#[from] voc_tensor::VocError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },

    #[error("bad argument: {0}")]
    BadArgument(String),
}
