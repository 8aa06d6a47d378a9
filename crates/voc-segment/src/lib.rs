//! Semantic segmentation of the 21 VOC classes: DeepLabV3 and DeepLabV3+ on MobileNetV2.
pub mod deeplabv3;
pub mod deeplabv3plus;
pub mod error;
mod head;
pub mod palette;
pub mod preset;
pub mod segmenter;

pub use deeplabv3::{DeepLabV3, DeepLabV3Config};
pub use deeplabv3plus::{DeepLabV3Plus, DeepLabV3PlusConfig};
pub use error::{Result, SegmentError};
pub use palette::VOC_CLASSES;
pub use preset::SegmenterPreset;
pub use segmenter::{argmax_mask, SegmentationNet, Segmenter, SizeStrategy};
