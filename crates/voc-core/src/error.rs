//! The error type of voc-core.
use std::path::PathBuf;

/// What can go wrong in voc-core: a file that cannot be written, or a value of the wrong form.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Reading or writing `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a PNG for `path` failed.
    #[error("{}: cannot encode PNG: {source}", path.display())]
    Png {
        /// The file being written.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: png::EncodingError,
    },
    /// A value does not have the form the function needs; the message names the value and the form.
    #[error("{0}")]
    BadArgument(String),
}

impl CoreError {
    /// An [`CoreError::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// voc-core's result type.
pub type Result<T> = std::result::Result<T, CoreError>;
