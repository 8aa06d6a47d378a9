#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod deeplabv3;
pub mod deeplabv3plus;
pub mod error;
mod head;
pub mod load;
pub mod preset;
pub mod refine;
pub mod segmenter;
pub mod train;

pub use deeplabv3::{DeepLabV3, DeepLabV3Config, DEEPLABV3_ARCH};
pub use deeplabv3plus::{DeepLabV3Plus, DeepLabV3PlusConfig, DEEPLABV3PLUS_ARCH};
pub use error::{Result, SegmentError};
pub use load::{load_segmenter, LoadedSegmenter, DEFAULT_SEGMENTER};
pub use preset::SegmenterPreset;
pub use segmenter::{argmax_mask, SegmentationNet, Segmenter, SizeStrategy};
pub use voc_classify::{Eval, FromWeights};
pub use voc_core::{Mask, RgbImage, MASK_CLASS_NAMES, NUM_MASK_CLASSES};
