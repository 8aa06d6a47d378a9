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

/// Seeded constant values for every variable of `varmap` (running variances and batch-norm weights
/// positive, everything else in [-0.5, 0.5)): unit tests build a network in a `VarMap`, then the same
/// network again from these with `VarBuilder::from_tensors` to get one of constant weights.
#[cfg(test)]
pub(crate) fn seeded_constants(
    varmap: &candle_nn::VarMap,
    seed: u64,
) -> std::collections::HashMap<String, candle_core::Tensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    let mut tensors = std::collections::HashMap::new();
    for name in names {
        let t = data[&name].as_tensor();
        let positive = name.ends_with("running_var") || name.ends_with("normalization.weight");
        let values: Vec<f32> = (0..t.elem_count())
            .map(|_| if positive { 0.5 + next() } else { next() - 0.5 })
            .collect();
        let tensor = candle_core::Tensor::from_vec(values, t.dims(), t.device()).unwrap();
        tensors.insert(name, tensor);
    }
    tensors
}
