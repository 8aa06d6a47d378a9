//! Errors of the tensor layer.
use std::path::PathBuf;

pub type Result<T, E = VocError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum VocError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("bad device: {0}")]
    BadDevice(String),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("bad argument: {0}")]
    BadArgument(String),

    #[error("{0}")]
    Msg(String),

    /// A hub file that is neither in the local cache nor (when online) downloadable.
    #[error("cannot get `{filename}` of hub repo `{repo_id}` (revision {revision}): {detail}")]
    HubFile {
        repo_id: String,
        revision: String,
        filename: String,
        detail: String,
    },

    /// A file that exists but is not what the caller needs (truncated, foreign format, missing fields).
    #[error("{path}: {detail}")]
    BadFile { path: PathBuf, detail: String },
}

impl VocError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::BadFile {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
