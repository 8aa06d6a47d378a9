//! The pretrained segmenter by name: weights, input size, normalisation, class names.
use candle_core::Device;
use voc_classify::preset::class_names_from_config;
use voc_classify::weights;
use voc_classify::Normalization;
use voc_tensor::hub::{self, HubCache, WeightsSource};

use crate::deeplabv3::{DeepLabV3, DeepLabV3Config};
use crate::error::{Result, SegmentError};

/// A pretrained DeepLabV3 on the hub.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmenterPreset {
    /// Short name used on command lines.
    pub name: &'static str,
    pub repo_id: &'static str,
    /// Square input side the model was trained at (`k * 16 + 1`, so logits align with pixels).
    pub input_size: usize,
    pub normalization: Normalization,
    pub config: DeepLabV3Config,
}

impl SegmenterPreset {
    /// `google/deeplabv3_mobilenet_v2_1.0_513`: PASCAL VOC's 21 classes (0 = background), output stride 16.
    pub const DEEPLABV3_MOBILENET_V2: Self = Self {
        name: "deeplabv3_mobilenet_v2",
        repo_id: "google/deeplabv3_mobilenet_v2_1.0_513",
        input_size: 513,
        normalization: Normalization::MinusOneToOne,
        config: DeepLabV3Config {
            backbone: voc_classify::MobileNetV2Config {
                depth_multiplier: 1.0,
                output_stride: 16,
                norm: voc_classify::layers::NormSpec {
                    eps: 1e-3,
                    momentum: 0.1,
                },
            },
            head_norm: voc_classify::layers::NormSpec {
                eps: 1e-5,
                momentum: 0.1,
            },
            num_classes: 21,
            head_channels: 256,
            dropout: 0.0,
        },
    };

    pub const ALL: [Self; 1] = [Self::DEEPLABV3_MOBILENET_V2];

    /// The preset called `name` (or whose repo id is `name`).
    pub fn by_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name == name || p.repo_id == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|p| p.repo_id).collect();
                SegmentError::BadArgument(format!(
                    "unknown segmenter '{name}': expected one of {}",
                    known.join(", ")
                ))
            })
    }

    pub fn weights_source(&self) -> WeightsSource {
        WeightsSource::hub(self.repo_id, None)
    }

    /// Class names from the repo's `config.json` `id2label`, index order.
    pub fn class_names(&self) -> Result<Vec<String>> {
        self.class_names_in(&HubCache::from_env())
    }

    /// [`Self::class_names`] from the given hub cache.
    pub fn class_names_in(&self, cache: &HubCache) -> Result<Vec<String>> {
        let path = cache.resolve_file(self.repo_id, None, "config.json")?;
        let names = class_names_from_config(&path)?;
        if names.len() != self.config.num_classes {
            return Err(SegmentError::BadArgument(format!(
                "{}: {} class names, but the model has {} outputs",
                path.display(),
                names.len(),
                self.config.num_classes
            )));
        }
        Ok(names)
    }

    /// The pretrained network (hub cache first), for inference, at `output_stride` (16 or 8).
    pub fn load(&self, output_stride: usize, device: &Device) -> Result<DeepLabV3> {
        self.load_in(
            &HubCache::from_env(),
            &self.weights_source(),
            output_stride,
            device,
        )
    }

    /// The network from `source` (a hub repo or a local file) through `cache`; a file of another
    /// architecture fails with the names that do not fit.
    pub fn load_in(
        &self,
        cache: &HubCache,
        source: &WeightsSource,
        output_stride: usize,
        device: &Device,
    ) -> Result<DeepLabV3> {
        let path = hub::resolve_weights_in(cache, source)?;
        let tensors = weights::read_weights(&path, device)?;
        let mut config = self.config;
        config.backbone.output_stride = output_stride;
        DeepLabV3::from_tensors(tensors, &path.display().to_string(), config, device)
    }
}
