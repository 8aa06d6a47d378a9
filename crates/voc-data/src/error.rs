//! Errors of the data layer: every variant names the file and what is wrong with it.
use std::path::PathBuf;

pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: missing {what}")]
    Missing { path: PathBuf, what: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A `.npy` file whose header, dtype or shape is not what the layout requires.
    #[error("{path}: {msg}")]
    BadArray { path: PathBuf, msg: String },

    #[error("{mask}: mask is {mask_h}x{mask_w} but its image {image} is {image_h}x{image_w}")]
    SizeMismatch {
        image: PathBuf,
        mask: PathBuf,
        image_h: usize,
        image_w: usize,
        mask_h: usize,
        mask_w: usize,
    },

    #[error("{path}: column `{column}` missing from the header; expected `Id` and the 20 class columns {expected}")]
    MissingColumn {
        path: PathBuf,
        column: String,
        expected: String,
    },

    #[error(
        "{path}: mask value {value} at row {row}, column {col}; expected 0..=20 or 255 (void)"
    )]
    BadMaskValue {
        path: PathBuf,
        value: i64,
        row: usize,
        col: usize,
    },

    #[error("{path}:{line}: {msg}")]
    BadCsvRow {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// A JPEG or PNG that cannot be decoded or is not the expected kind of image.
    #[error("{path}: {msg}")]
    BadImage { path: PathBuf, msg: String },

    #[error("bad argument: {0}")]
    BadArgument(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Tensor(#[from] voc_tensor::VocError),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return Self::Missing {
                path,
                what: "file".into(),
            };
        }
        Self::Io { path, source }
    }

    pub(crate) fn bad_array(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::BadArray {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
