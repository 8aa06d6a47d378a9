//! The pretrained models by name: where their weights live, what input they expect, their class names.
//!
//! Callers never hard-code sizes or normalisation: they take them from a [`ModelPreset`].
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use voc_tensor::hub::{self, HubCache, WeightsSource};

use crate::classifier::{ClassifierArch, ClassifierConfig, ImageClassifier};
use crate::efficientnet::EfficientNetLiteConfig;
use crate::error::{ClassifyError, Result};
use crate::image_io::Rgb8Image;
use crate::mobilenet_v2::MobileNetV2Config;
use crate::weights;

/// How 0..255 pixel values become network inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalization {
    /// `x / 127.5 - 1`, to [-1, 1] (the TensorFlow models; timm's mean = std = 0.5 is the same map).
    MinusOneToOne,
    /// `(x / 255 - mean[c]) / std[c]` per RGB channel.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

impl Normalization {
    /// ImageNet mean/std, as torchvision's models want.
    pub const IMAGENET: Self = Self::MeanStd {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// Normalises `N x 3 x H x W` pixel values in 0..255 (any float or integer dtype) to f32.
    pub fn apply(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = pixels.to_dtype(DType::F32)?;
        Ok(match self {
            Self::MinusOneToOne => x.affine(1.0 / 127.5, -1.0)?,
            Self::MeanStd { mean, std } => {
                let c = x.dim(1)?;
                if c != 3 {
                    return Err(ClassifyError::BadArgument(format!(
                        "mean/std normalisation wants 3 channels in dim 1, got shape {:?}",
                        x.dims()
                    )));
                }
                let scale: Vec<f32> = std.iter().map(|s| 1.0 / (255.0 * s)).collect();
                let shift: Vec<f32> = mean.iter().zip(std).map(|(m, s)| -m / s).collect();
                let scale = Tensor::from_vec(scale, (1, 3, 1, 1), x.device())?;
                let shift = Tensor::from_vec(shift, (1, 3, 1, 1), x.device())?;
                x.broadcast_mul(&scale)?.broadcast_add(&shift)?
            }
        })
    }

    /// The inverse of [`Self::apply`]: network inputs back to 0..255 pixel values.
    pub fn invert(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::MinusOneToOne => x.affine(127.5, 127.5)?,
            Self::MeanStd { mean, std } => {
                let scale: Vec<f32> = std.iter().map(|s| 255.0 * s).collect();
                let shift: Vec<f32> = mean.iter().map(|m| 255.0 * m).collect();
                let scale = Tensor::from_vec(scale, (1, 3, 1, 1), x.device())?;
                let shift = Tensor::from_vec(shift, (1, 3, 1, 1), x.device())?;
                x.broadcast_mul(&scale)?.broadcast_add(&shift)?
            }
        })
    }
}

/// A pretrained ImageNet classifier on the hub.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPreset {
    /// Short name used on command lines (`mobilenet_v2`, `efficientnet_lite0`).
    pub name: &'static str,
    pub repo_id: &'static str,
    /// Square input side the model was trained at.
    pub input_size: usize,
    pub normalization: Normalization,
    pub num_classes: usize,
    pub arch: ClassifierArch,
}

impl ModelPreset {
    /// `google/mobilenet_v2_1.0_224`: 1001 classes, 0 = background, then ImageNet's 1000.
    pub const MOBILENET_V2: Self = Self {
        name: "mobilenet_v2",
        repo_id: "google/mobilenet_v2_1.0_224",
        input_size: 224,
        normalization: Normalization::MinusOneToOne,
        num_classes: 1001,
        arch: ClassifierArch::MobileNetV2(MobileNetV2Config {
            depth_multiplier: 1.0,
            output_stride: 32,
            norm: crate::layers::NormSpec {
                eps: 1e-3,
                momentum: 0.1,
            },
        }),
    };

    /// `timm/tf_efficientnet_lite0.in1k`: ImageNet's 1000 classes.
    pub const EFFICIENTNET_LITE0: Self = Self {
        name: "efficientnet_lite0",
        repo_id: "timm/tf_efficientnet_lite0.in1k",
        input_size: 224,
        normalization: Normalization::MinusOneToOne,
        num_classes: 1000,
        arch: ClassifierArch::EfficientNetLite0(EfficientNetLiteConfig {
            output_stride: 32,
            norm: crate::layers::NormSpec {
                eps: 1e-3,
                momentum: 0.1,
            },
        }),
    };

    pub const ALL: [Self; 2] = [Self::MOBILENET_V2, Self::EFFICIENTNET_LITE0];

    /// The preset called `name` (or whose repo id is `name`).
    pub fn by_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name == name || p.repo_id == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|p| p.name).collect();
                ClassifyError::BadArgument(format!(
                    "unknown model '{name}': expected one of {}",
                    known.join(", ")
                ))
            })
    }

    pub fn classifier_config(&self) -> ClassifierConfig {
        ClassifierConfig {
            arch: self.arch,
            num_classes: self.num_classes,
            dropout: 0.0,
        }
    }

    pub fn weights_source(&self) -> WeightsSource {
        WeightsSource::hub(self.repo_id, None)
    }

    /// Class names from the repo's `config.json` (`id2label`, or timm's `label_names`), index order.
    pub fn class_names(&self) -> Result<Vec<String>> {
        self.class_names_in(&HubCache::from_env())
    }

    /// [`Self::class_names`] from the given hub cache.
    pub fn class_names_in(&self, cache: &HubCache) -> Result<Vec<String>> {
        let path = cache.resolve_file(self.repo_id, None, "config.json")?;
        let names = class_names_from_config(&path)?;
        if names.len() != self.num_classes {
            return Err(ClassifyError::BadConfig {
                path,
                message: format!(
                    "{} class names, but the model has {} outputs",
                    names.len(),
                    self.num_classes
                ),
            });
        }
        Ok(names)
    }

    /// The pretrained network from the hub cache (or a download when online), for inference.
    pub fn load(&self, device: &Device) -> Result<ImageClassifier> {
        self.load_from(&self.weights_source(), device)
    }

    /// The network from `source` (a hub repo or a local file), for inference; a file of another
    /// architecture fails with the names that do not fit.
    pub fn load_from(&self, source: &WeightsSource, device: &Device) -> Result<ImageClassifier> {
        self.load_in(&HubCache::from_env(), source, device)
    }

    /// [`Self::load_from`] with an explicit hub cache.
    pub fn load_in(
        &self,
        cache: &HubCache,
        source: &WeightsSource,
        device: &Device,
    ) -> Result<ImageClassifier> {
        let path = hub::resolve_weights_in(cache, source)?;
        let tensors = weights::read_weights(&path, device)?;
        ImageClassifier::from_tensors(
            tensors,
            &path.display().to_string(),
            self.classifier_config(),
            device,
        )
    }

    /// One photo as the network input `1 x 3 x S x S`: bilinear resize to the preset's size with
    /// anti-aliasing (as PIL's `resize(BILINEAR)`, which made the reference inputs), then normalisation.
    pub fn preprocess(&self, image: &Rgb8Image, device: &Device) -> Result<Tensor> {
        let resized = image.resize(self.input_size, self.input_size)?;
        self.normalization.apply(&resized.to_tensor(device)?)
    }
}

/// Reads the class names of a `config.json`: transformers' `id2label` (`{"0": "background", ...}`, which
/// must number 0..n without gaps) or timm's `label_names` list.
pub fn class_names_from_config(path: &Path) -> Result<Vec<String>> {
    let bad = |message: String| ClassifyError::BadConfig {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if let Some(map) = json.get("id2label").and_then(|v| v.as_object()) {
        let mut names = vec![None; map.len()];
        for (key, value) in map {
            let index: usize = key.parse().ok().filter(|&i| i < map.len()).ok_or_else(|| {
                bad(format!(
                    "id2label key '{key}' is not an index in 0..{}",
                    map.len()
                ))
            })?;
            let label = value
                .as_str()
                .ok_or_else(|| bad(format!("id2label[{key}] is not a string")))?;
            names[index] = Some(label.to_string());
        }
        return Ok(names.into_iter().flatten().collect());
    }
    if let Some(list) = json.get("label_names").and_then(|v| v.as_array()) {
        return list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("label_names[{i}] is not a string")))
            })
            .collect();
    }
    Err(bad(
        "no class names: expected an `id2label` object or a `label_names` list".into(),
    ))
}
