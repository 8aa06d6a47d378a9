//! Errors of the tensor layer.
use std::path::PathBuf;

/// `Result` with [`VocError`] as the default error.
pub type Result<T, E = VocError> = std::result::Result<T, E>;

/// Every error of voc-tensor.
#[derive(Debug, thiserror::Error)]
pub enum VocError {
    /// A candle tensor operation failed (shape, dtype or device mismatch, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A `--device` value that does not parse, or a device that cannot be opened.
    #[error("bad device: {0}")]
    BadDevice(String),

    /// Reading or writing `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// An argument out of range or of the wrong shape/dtype for the op.
    #[error("bad argument: {0}")]
    BadArgument(String),

    /// Any other error, as a message.
    #[error("{0}")]
    Msg(String),

    /// A hub file that is neither in the local cache nor (when online) downloadable.
    #[error("cannot get `{filename}` of hub repo `{repo_id}` (revision {revision}): {detail}")]
    HubFile {
        /// The hub repo, e.g. `google/mobilenet_v2_1.0_224`.
        repo_id: String,
        /// The branch, tag or commit asked for.
        revision: String,
        /// The file within the repo.
        filename: String,
        /// Why it could not be had: where the cache was looked in and what to set.
        detail: String,
    },

    /// A file that exists but is not what the caller needs (truncated, foreign format, missing fields).
    #[error("{path}: {detail}")]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// An error of the shared vocabulary layer (atomic writes, images, masks), with its source.
    #[error(transparent)]
    Core(#[from] voc_core::CoreError),
}

impl VocError {
    /// [`VocError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// [`VocError::BadFile`] for `path`.
    pub fn bad_file(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::BadFile {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
