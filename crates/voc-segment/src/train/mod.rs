//! Training segmenters: one step ([`SegLearner`]) and a whole run with validation, checkpoints,
//! curves and resume ([`train_segmenter`]) — what `voc train segment` runs.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::{DType, Device, Tensor};
//! use voc_segment::train::{SegArch, SegLearner, SegLearnerConfig, SegTrainable};
//! use voc_segment::DeepLabV3PlusConfig;
//!
//! // A fresh DeepLabV3+ (no pretrained weights: every tensor is a seeded variable).
//! let arch = SegArch::DeepLabV3Plus(DeepLabV3PlusConfig::default());
//! let config = SegLearnerConfig::default();
//! let mut learner = SegLearner::new(arch, HashMap::new(), SegTrainable::All, 0, &config, &Device::Cpu)?;
//! let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu)?;
//! let target = Tensor::zeros((2, 32, 32), DType::U32, &Device::Cpu)?;
//! let loss = learner.step(&x, &target)?;
//! assert!(loss.is_finite() && loss > 0.0);
//! # Ok::<(), voc_segment::SegmentError>(())
//! ```
pub mod config;
mod learner;
pub mod run;

pub use config::{
    Monitor, SegAugment, SegBackbone, SegClassWeights, SegModel, SegSchedule, SegTrainConfig,
    SegValidation,
};
pub use learner::{
    soft_dice_loss, SegArch, SegBatchNorm, SegLearner, SegLearnerConfig, SegOptimizer, SegTrainable,
};
pub use run::{
    median_frequency_weights, read_seg_records, seg_curve_panels, train_segmenter,
    write_seg_curves, SegEpochRecord, SegTrainOptions, SegTrainSummary,
};
pub use voc_tensor::run::{Quiet, RunPaths, TrainObserver};
