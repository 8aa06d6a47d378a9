//! Errors of the classifier crate.
use std::path::PathBuf;

pub type Result<T, E = ClassifyError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Tensor(#[from] voc_tensor::VocError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A weights file whose tensor names or shapes do not fit the network that reads it.
    #[error("{source_name}: the weights do not fit {architecture}:\n{report}")]
    WeightsMismatch {
        source_name: String,
        architecture: String,
        report: String,
    },

    #[error("{path}: {message}")]
    BadConfig { path: PathBuf, message: String },

    /// An input image that cannot be read or is not HxWx3 uint8.
    #[error("{path}: {message}")]
    BadImage { path: PathBuf, message: String },

    #[error("bad argument: {0}")]
    BadArgument(String),
}
