//! Errors of the segmentation crate.
//!
//! Every variant that stems from another error keeps it as its `source`. Through candle's traits
//! (`candle_nn::ModuleT`) a [`SegmentError`] travels as a [`candle_core::Error`]: a candle error comes
//! back as itself, any other is wrapped with its message.
use std::path::PathBuf;

/// voc-segment's result type.
pub type Result<T, E = SegmentError> = std::result::Result<T, E>;

/// What can go wrong building, loading or running a segmenter; messages name the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// An error of the backbone and weight loaders (voc-classify): a weights file that does not fit
    /// names the file and every tensor that differs.
    #[error(transparent)]
    Classify(#[from] voc_classify::ClassifyError),

    /// An error of voc-tensor (hub cache, weights and checkpoint files, tensor ops), with its source.
    #[error(transparent)]
    Tensor(#[from] voc_tensor::VocError),

    /// An error of the data layer (a data folder, split, image or mask that cannot be used), naming
    /// the file.
    #[error(transparent)]
    Data(#[from] voc_data::DataError),

    /// A candle tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A value a function cannot work with (a config, a segmenter spec, a size strategy, class names);
    /// the message says which and what was expected.
    #[error("bad argument: {0}")]
    BadArgument(String),

    /// Loading `what` failed for the reason in `source`.
    #[error("loading {what}")]
    Loading {
        /// What was being loaded, and what else could be given.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<SegmentError>,
    },

    /// A file that is neither a segmenter checkpoint nor DeepLabV3 weights: why it is neither.
    #[error(
        "{path} cannot be used as the segmenter.\nAs a voc checkpoint: {as_checkpoint}\n\
         As DeepLabV3 weights: {as_weights}"
    )]
    NotASegmenter {
        /// The file.
        path: PathBuf,
        /// Why it is not a voc checkpoint.
        as_checkpoint: Box<voc_tensor::VocError>,
        /// Why it is not a DeepLabV3 weights file.
        #[source]
        as_weights: Box<SegmentError>,
    },

    /// An error of the shared vocabulary layer (images, masks, atomic writes), with its source.
    #[error(transparent)]
    Core(#[from] voc_core::CoreError),
}

impl From<SegmentError> for candle_core::Error {
    /// A candle error unchanged (also inside a classifier error); any other wrapped, with its message.
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::Candle(e) => e,
            SegmentError::Classify(e) => e.into(),
            other => candle_core::Error::wrap(other),
        }
    }
}
