#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod augment;
#[cfg(feature = "candle")]
pub mod batch;
pub mod chart;
pub mod competition;
pub mod error;
pub mod font;
pub mod image_io;
pub mod io;
pub mod npy;
pub mod preview;
pub mod split;
pub mod stats;
pub mod vocdevkit;

pub use augment::{AugmentConfig, AugmentParams, ResizeMode};
#[cfg(feature = "candle")]
pub use batch::{Batch, BatchConfig, BatchLoader, EpochIter};
pub use chart::{
    bars_svg, panels_svg, render_panels, write_panels_png, BarChart, Panel, Series, XMark, YScale,
    SERIES_COLORS,
};
pub use competition::{CompetitionDir, Dataset, LabelMismatch, LoadMode, Sample, SplitIndex};
pub use error::{DataError, Result};
pub use image_io::read_rgb_image;
pub use split::stratified_split;
pub use stats::{ClassStats, SplitStats};
pub use vocdevkit::{convert, ConvertOptions, ConvertReport, VocDevkit};

pub use voc_core::{LabelSet, CLASS_NAMES, NUM_CLASSES, NUM_MASK_CLASSES, VOID};
