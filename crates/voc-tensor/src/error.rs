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
    Io { path: PathBuf, source: std::io::Error },

    #[error("bad argument: {0}")]
    BadArgument(String),

    #[error("{0}")]
    Msg(String),
}

impl VocError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
