//! Errors of the data layer: every variant names the file and what is wrong with it.
use std::path::PathBuf;

/// voc-data's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What can go wrong reading, checking or converting a dataset; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder the layout requires does not exist.
    #[error("{path}: missing {what}")]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// What it should have been ("image folder", "mask for Id 5 ...").
        what: String,
    },

    /// Reading or writing `path` failed (other than not finding it: that is [`DataError::Missing`]).
    #[error("{path}: {source}")]
    Io {
        /// The file or folder the operation was on.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A `.npy` file whose header, dtype or shape is not what the layout requires.
    #[error("{path}: {msg}")]
    BadArray {
        /// The `.npy` file.
        path: PathBuf,
        /// What was found and what was expected.
        msg: String,
    },

    /// An image and its mask have different sizes.
    #[error("{mask}: mask is {mask_h}x{mask_w} but its image {image} is {image_h}x{image_w}")]
    SizeMismatch {
        /// The image file.
        image: PathBuf,
        /// The mask file.
        mask: PathBuf,
        /// Image height.
        image_h: usize,
        /// Image width.
        image_w: usize,
        /// Mask height.
        mask_h: usize,
        /// Mask width.
        mask_w: usize,
    },

    /// A label CSV whose header lacks `Id` or one of the 20 class columns.
    #[error("{path}: column `{column}` missing from the header; expected `Id` and the 20 class columns {expected}")]
    MissingColumn {
        /// The CSV file.
        path: PathBuf,
        /// The column not found (`Id` or a class name).
        column: String,
        /// The class columns, listed for the message.
        expected: String,
    },

    /// A mask value outside 0..=20 and 255, at the first pixel that has one.
    #[error(
        "{path}: mask value {value} at row {row}, column {col}; expected 0..=20 or 255 (void)"
    )]
    BadMaskValue {
        /// The mask file.
        path: PathBuf,
        /// The value, as stored (masks may be signed or wider than a byte).
        value: i64,
        /// Row of the pixel, 0-based.
        row: usize,
        /// Column of the pixel, 0-based.
        col: usize,
    },

    /// A line of a label CSV (or an image-set list) that cannot be read, or a problem of the whole file
    /// (`line` 0: mixed labelled and unlabelled rows, a repeated Id).
    #[error("{path}:{line}: {msg}")]
    BadCsvRow {
        /// The file.
        path: PathBuf,
        /// Line number, 1-based; 0 for the whole file.
        line: usize,
        /// What is wrong.
        msg: String,
    },

    /// A JPEG or PNG that cannot be decoded or is not the expected kind of image.
    #[error("{path}: {msg}")]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// A value passed in that the function cannot use (a position out of range, a fraction outside 0..1).
    #[error("bad argument: {0}")]
    BadArgument(String),

    /// An error of the shared vocabulary layer (atomic writes, images, masks), with its source.
    #[error(transparent)]
    Core(#[from] voc_core::CoreError),

    /// A tensor error while building batches.
    #[cfg(feature = "candle")]
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    /// An I/O error on `path`: [`DataError::Missing`] when the file was not found, else [`DataError::Io`].
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
