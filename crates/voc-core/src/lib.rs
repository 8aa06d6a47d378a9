#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic;
pub mod classes;
pub mod error;
pub mod image;
pub mod labels;
pub mod metrics;
pub mod normalization;
pub mod palette;
pub mod testing;

pub use atomic::{write_atomic, AtomicFile};
pub use classes::{
    class_index, is_mask_value, BACKGROUND, CLASS_NAMES, MASK_CLASS_NAMES, NUM_CLASSES,
    NUM_MASK_CLASSES, VOID,
};
pub use error::{CoreError, Result};
pub use image::{Mask, RgbImage};
pub use labels::LabelSet;
pub use normalization::Normalization;
pub use palette::{palette_color, PALETTE};
