//! Multi-label VOC classification on pretrained MobileNetV2 and EfficientNet-Lite0 backbones.
pub mod backbone;
pub mod checkpoint;
pub mod classifier;
pub mod efficientnet;
pub mod error;
pub mod image_io;
pub mod layers;
pub mod mobilenet_v2;
pub mod preset;
pub mod weights;

pub use backbone::{Backbone, BackboneFeatures, FeatureChannels};
pub use checkpoint::CheckpointClassifier;
pub use classifier::{top_k, ClassifierArch, ClassifierConfig, ImageClassifier, Prediction};
pub use efficientnet::{EfficientNetLite, EfficientNetLiteConfig};
pub use error::{ClassifyError, Result};
pub use image_io::Rgb8Image;
pub use mobilenet_v2::{MobileNetV2, MobileNetV2Config};
pub use preset::{ModelPreset, Normalization};
