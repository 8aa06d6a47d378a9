#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod backbone;
pub mod checkpoint;
pub mod classifier;
pub mod efficientnet;
pub mod error;
pub mod fusion;
pub mod head;
pub mod layers;
pub mod metrics;
pub mod mobilenet_v2;
pub mod models;
pub mod module;
pub mod preprocess;
pub mod preset;
pub mod resnet;
pub mod scratch;
pub mod train;
pub mod vgg;
pub mod weights;

pub use backbone::{Backbone, BackboneFeatures, FeatureChannels};
pub use checkpoint::CheckpointClassifier;
pub use classifier::{top_k, ClassifierArch, ClassifierConfig, ImageClassifier, Prediction};
pub use efficientnet::{EfficientNetLite, EfficientNetLiteConfig};
pub use error::{ClassifyError, Result};
pub use fusion::{cross_fitted_dice, fit_fusion, CrossFit, FusionFit, FusionRule, LabelSource};
pub use head::{Head, HeadKind};
pub use metrics::{
    average_precision, choose_thresholds, classification_dice, evaluate, macro_f1,
    mean_average_precision, per_class_average_precision, per_class_f1, ClassificationReport,
    ThresholdRule, Thresholds, SEED_THRESHOLD,
};
pub use mobilenet_v2::{MobileNetV2, MobileNetV2Config};
pub use models::{ClassifierNet, ModelChoice, NetPart};
pub use module::Eval;
pub use preprocess::{image_input, resize_rgb, rgb_to_tensor};
pub use preset::ModelPreset;
pub use resnet::{ResNet, ResNetConfig, ResNetVariant};
pub use scratch::{ScratchCnn, ScratchCnnConfig};
pub use vgg::{Vgg16, VggConfig};
pub use voc_core::{Normalization, RgbImage};
pub use weights::FromWeights;

/// Held by the unit tests that switch the process-wide NHWC path ([`voc_tensor::nhwc::set_enabled`])
/// or check that it ran, so that they do not see each other's switch.
#[cfg(test)]
pub(crate) static NHWC_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
