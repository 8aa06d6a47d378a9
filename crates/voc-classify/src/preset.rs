//! The pretrained models by name: where their weights live, what input they expect, their class names.
//!
//! Callers never hard-code sizes or normalisation: they take them from a [`ModelPreset`].
use std::path::Path;

use candle_core::{Device, Tensor};
use voc_tensor::hub::{HubCache, WeightsSource};

use crate::classifier::{ClassifierArch, ClassifierConfig, ImageClassifier};
use crate::efficientnet::EfficientNetLiteConfig;
use crate::error::{ClassifyError, Result};
use crate::mobilenet_v2::MobileNetV2Config;
use crate::resnet::ResNetConfig;
use crate::vgg::VggConfig;
use crate::weights::FromWeights;
use voc_core::{Normalization, RgbImage};

/// A pretrained ImageNet classifier on the hub.
///
/// ```
/// use candle_core::Device;
/// use voc_classify::{ModelPreset, Normalization, RgbImage};
/// let preset = ModelPreset::by_name("efficientnet_lite0")?;
/// assert_eq!(preset.repo_id, "timm/tf_efficientnet_lite0.in1k");
/// assert_eq!(preset.normalization, Normalization::MINUS_ONE_TO_ONE);
/// // Any photo becomes the 1 x 3 x 224 x 224 input the network was trained on.
/// let photo = RgbImage::new(375, 500, vec![255; 375 * 500 * 3])?;
/// let x = preset.preprocess(&photo, &Device::Cpu)?;
/// assert_eq!(x.dims(), [1, 3, 224, 224]);
/// assert_eq!(x.max_all()?.to_scalar::<f32>()?, 1.0); // white is 1 in [-1, 1]
/// assert!(ModelPreset::by_name("resnet101").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPreset {
    /// Short name used on command lines (`mobilenet_v2`, `efficientnet_lite0`).
    pub name: &'static str,
    /// The hub repository of the weights and `config.json` (`ORG/NAME`).
    pub repo_id: &'static str,
    /// Square input side the model was trained at.
    pub input_size: usize,
    /// How pixels become network inputs.
    pub normalization: Normalization,
    /// Outputs of the pretrained head.
    pub num_classes: usize,
    /// The backbone and its parameters.
    pub arch: ClassifierArch,
}

impl ModelPreset {
    /// `google/mobilenet_v2_1.0_224`: 1001 classes, 0 = background, then ImageNet's 1000.
    pub const MOBILENET_V2: Self = Self {
        name: "mobilenet_v2",
        repo_id: "google/mobilenet_v2_1.0_224",
        input_size: 224,
        normalization: Normalization::MINUS_ONE_TO_ONE,
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
        normalization: Normalization::MINUS_ONE_TO_ONE,
        num_classes: 1000,
        arch: ClassifierArch::EfficientNetLite0(EfficientNetLiteConfig {
            output_stride: 32,
            norm: crate::layers::NormSpec {
                eps: 1e-3,
                momentum: 0.1,
            },
        }),
    };

    /// `timm/resnet50.a1_in1k`: ResNet-50 (ImageNet's 1000 classes, ImageNet mean/std).
    pub const RESNET50: Self = Self {
        name: "resnet50",
        repo_id: "timm/resnet50.a1_in1k",
        input_size: 224,
        normalization: Normalization::IMAGENET,
        num_classes: 1000,
        arch: ClassifierArch::ResNet(ResNetConfig::RESNET50),
    };

    /// `timm/resnetv2_50.a1h_in1k`: the pre-activation ResNetV2-50 (Keras's `ResNet50V2` architecture).
    pub const RESNET50V2: Self = Self {
        name: "resnet50v2",
        repo_id: "timm/resnetv2_50.a1h_in1k",
        input_size: 224,
        normalization: Normalization::IMAGENET,
        num_classes: 1000,
        arch: ClassifierArch::ResNet(ResNetConfig::RESNETV2_50),
    };

    /// `timm/vgg16.tv_in1k`: torchvision's VGG16 in timm's layout.
    pub const VGG16: Self = Self {
        name: "vgg16",
        repo_id: "timm/vgg16.tv_in1k",
        input_size: 224,
        normalization: Normalization::IMAGENET,
        num_classes: 1000,
        arch: ClassifierArch::Vgg16(VggConfig { output_stride: 32 }),
    };

    /// Every preset, in the order error messages list them.
    pub const ALL: [Self; 5] = [
        Self::MOBILENET_V2,
        Self::EFFICIENTNET_LITE0,
        Self::RESNET50,
        Self::RESNET50V2,
        Self::VGG16,
    ];

    /// The preset called `name` (or whose repo id is `name`); an unknown name is a
    /// [`ClassifyError::BadArgument`] listing the known ones.
    pub fn by_name(name: &str) -> Result<Self> {
        find_preset(&Self::ALL, name, "model", |p| (p.name, p.repo_id))
    }

    /// The classifier it loads into: its architecture and head size, no dropout.
    pub fn classifier_config(&self) -> ClassifierConfig {
        ClassifierConfig {
            arch: self.arch,
            num_classes: self.num_classes,
            dropout: 0.0,
            head: crate::HeadKind::Linear,
        }
    }

    /// Its hub repository as a weights source (default revision).
    pub fn weights_source(&self) -> WeightsSource {
        WeightsSource::hub(self.repo_id, None)
    }

    /// Class names from the repo's `config.json` (`id2label`, or timm's `label_names`), index order,
    /// through the hub cache the environment selects. A missing or malformed file, or a name count other
    /// than `num_classes`, is an error naming the file.
    pub fn class_names(&self) -> Result<Vec<String>> {
        self.class_names_in(&HubCache::from_env())
    }

    /// [`Self::class_names`] from the given hub cache.
    pub fn class_names_in(&self, cache: &HubCache) -> Result<Vec<String>> {
        hub_class_names(cache, self.repo_id, self.num_classes)
    }

    /// The pretrained network from the hub cache the environment selects (or a download when online),
    /// for inference. Not cached while offline (`HF_HUB_OFFLINE=1`) is an error naming the repo and
    /// `HF_HOME`.
    ///
    /// ```no_run
    /// use candle_core::Device;
    /// use voc_classify::{top_k, ModelPreset, RgbImage};
    /// let preset = ModelPreset::MOBILENET_V2;
    /// let model = preset.load(&Device::Cpu)?;
    /// let names = preset.class_names()?;
    /// let photo = RgbImage::new(224, 224, vec![128; 224 * 224 * 3])?; // or voc_data::read_rgb_image
    /// let logits = model.forward_t(&preset.preprocess(&photo, &Device::Cpu)?, false)?;
    /// for p in top_k(&logits, &names, 5)? {
    ///     println!("{:6.2}%  {}", 100.0 * p.prob, p.label);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
        ImageClassifier::from_source(cache, source, self.classifier_config(), device)
    }

    /// One photo as the network input `1 x 3 x S x S`: bilinear resize to the preset's size with
    /// anti-aliasing (as PIL's `resize(BILINEAR)`, which made the reference inputs), then normalisation.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let size = (self.input_size, self.input_size);
        crate::preprocess::image_input(image, size, &self.normalization, device)
    }
}

/// The preset of `all` whose short name or hub repo id is `name`, as `ids` gives them (`(name,
/// repo_id)`); else an error that lists the short names of `all`, calling `name` an unknown `kind`.
pub fn find_preset<P: Copy>(
    all: &[P],
    name: &str,
    kind: &str,
    ids: impl Fn(&P) -> (&'static str, &'static str),
) -> Result<P> {
    all.iter()
        .copied()
        .find(|p| {
            let (short, repo_id) = ids(p);
            short == name || repo_id == name
        })
        .ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|p| ids(p).0).collect();
            ClassifyError::BadArgument(format!(
                "unknown {kind} '{name}': expected one of {}",
                known.join(", ")
            ))
        })
}

/// The class names in the `config.json` of hub repo `repo_id` (through `cache`), which must be
/// `num_classes`, the model's outputs.
pub fn hub_class_names(cache: &HubCache, repo_id: &str, num_classes: usize) -> Result<Vec<String>> {
    let path = cache.resolve_file(repo_id, None, "config.json")?;
    let names = class_names_from_config(&path)?;
    if names.len() != num_classes {
        return Err(ClassifyError::BadConfig {
            path,
            message: format!(
                "{} class names, but the model has {num_classes} outputs",
                names.len()
            ),
        });
    }
    Ok(names)
}

/// Reads the class names of a `config.json`: transformers' `id2label` (`{"0": "background", ...}`, which
/// must number 0..n without gaps) or timm's `label_names` list.
pub fn class_names_from_config(path: &Path) -> Result<Vec<String>> {
    let bad = |message: String| ClassifyError::BadConfig {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ClassifyError::ConfigIo {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ClassifyError::ConfigJson {
            path: path.to_path_buf(),
            source,
        })?;
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
