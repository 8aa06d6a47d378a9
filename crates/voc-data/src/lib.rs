//! Dataset loading and augmentation for PASCAL VOC: the competition layout, VOCdevkit, statistics,
//! splits, joint image+mask augmentation, batches.
pub mod augment;
pub mod batch;
pub mod competition;
pub mod error;
pub mod font;
pub mod io;
pub mod npy;
pub mod preview;
pub mod split;
pub mod stats;
pub mod vocdevkit;

pub use augment::{AugmentConfig, AugmentParams, Normalize, ResizeMode};
pub use batch::{Batch, BatchConfig, BatchLoader, EpochIter};
pub use competition::{
    CompetitionDir, Dataset, LabelMismatch, Labels, LoadMode, Sample, SplitIndex,
};
pub use error::{DataError, Result};
pub use split::stratified_split;
pub use stats::{ClassStats, SplitStats};
pub use vocdevkit::{convert, ConvertOptions, ConvertReport, VocDevkit};

/// Number of object classes (background excluded).
pub const NUM_CLASSES: usize = 20;

/// The 20 PASCAL VOC classes in the competition's column order; class `c` is mask value `c + 1`.
pub const VOC_CLASSES: [&str; NUM_CLASSES] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Mask value of pixels the loss ignores (object borders in VOC, areas outside the image after augmentation).
pub const VOID: u8 = 255;
