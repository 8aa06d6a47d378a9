//! Errors of the classifier crate.
//!
//! Every variant that stems from another error keeps it as its `source`. Through candle's traits
//! (`candle_nn::ModuleT`) a [`ClassifyError`] travels as a [`candle_core::Error`]: a candle error comes
//! back as itself, any other is wrapped with its message.
use std::path::PathBuf;

/// voc-classify's result type.
pub type Result<T, E = ClassifyError> = std::result::Result<T, E>;

/// What can go wrong building, loading or running a classifier; messages name the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// An error of voc-tensor (hub cache, weights and checkpoint files, tensor ops), with its source.
    #[error(transparent)]
    Tensor(#[from] voc_tensor::VocError),

    /// A candle tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A weights file whose tensor names or shapes do not fit the network that reads it.
    #[error("{source_name}: the weights do not fit {architecture}:\n{report}")]
    WeightsMismatch {
        /// The file (or other source) the tensors came from.
        source_name: String,
        /// The architecture they were checked against (e.g. `mobilenet_v2`).
        architecture: String,
        /// The missing, unexpected and mis-shaped names (voc-tensor's `NameReport`).
        report: String,
    },

    /// A model description (`config.json`, checkpoint metadata) that is not what the model needs.
    #[error("{path}: {message}")]
    BadConfig {
        /// The file the description came from.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A `config.json` that cannot be read.
    #[error("{path}: cannot read: {source}")]
    ConfigIo {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A `config.json` that is not valid JSON.
    #[error("{path}: not valid JSON: {source}")]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A value a function cannot work with (a config field, a name, a shape); the message says which
    /// and what was expected.
    #[error("bad argument: {0}")]
    BadArgument(String),

    /// An error of the data layer (a data folder, split, image file or batch), with its source.
    #[error(transparent)]
    Data(#[from] voc_data::DataError),

    /// An error of the shared vocabulary layer (images, masks, atomic writes), with its source.
    #[error(transparent)]
    Core(#[from] voc_core::CoreError),
}

impl From<ClassifyError> for candle_core::Error {
    /// A candle error unchanged; any other wrapped, with its message.
    fn from(e: ClassifyError) -> Self {
        match e {
            ClassifyError::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}
