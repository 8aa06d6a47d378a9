//! The pretrained segmenter by name: weights, input size, normalisation, class names.
use candle_core::Device;
use voc_classify::preset::{find_preset, hub_class_names};
use voc_classify::weights::FromWeights;
use voc_core::{Normalization, NUM_MASK_CLASSES};
use voc_tensor::hub::{HubCache, WeightsSource};

use crate::deeplabv3::{DeepLabV3, DeepLabV3Config};
use crate::error::Result;

/// A pretrained DeepLabV3 on the hub.
///
/// ```
/// use voc_segment::SegmenterPreset;
/// let preset = SegmenterPreset::by_name("deeplabv3_mobilenet_v2")?;
/// assert_eq!(preset, SegmenterPreset::by_name("google/deeplabv3_mobilenet_v2_1.0_513")?);
/// assert_eq!((preset.input_size, preset.config.num_classes), (513, 21));
/// assert!(SegmenterPreset::by_name("unet").is_err());
/// # Ok::<(), voc_segment::SegmentError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmenterPreset {
    /// Short name used on command lines.
    pub name: &'static str,
    /// The hub repository of the weights and `config.json` (`ORG/NAME`).
    pub repo_id: &'static str,
    /// Square input side the model was trained at (`k * 16 + 1`, so logits align with pixels).
    pub input_size: usize,
    /// How pixels become network inputs.
    pub normalization: Normalization,
    /// The architecture (with output stride 16, as trained).
    pub config: DeepLabV3Config,
}

impl SegmenterPreset {
    /// `google/deeplabv3_mobilenet_v2_1.0_513`: PASCAL VOC's 21 classes (0 = background), output stride 16.
    pub const DEEPLABV3_MOBILENET_V2: Self = Self {
        name: "deeplabv3_mobilenet_v2",
        repo_id: "google/deeplabv3_mobilenet_v2_1.0_513",
        input_size: 513,
        normalization: Normalization::MINUS_ONE_TO_ONE,
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
            num_classes: NUM_MASK_CLASSES,
            head_channels: 256,
            dropout: 0.0,
        },
    };

    /// Every preset.
    pub const ALL: [Self; 1] = [Self::DEEPLABV3_MOBILENET_V2];

    /// The preset called `name` (or whose repo id is `name`); an unknown name is a bad-argument error
    /// listing the known ones.
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(find_preset(&Self::ALL, name, "segmenter", |p| {
            (p.name, p.repo_id)
        })?)
    }

    /// Its hub repository as a weights source (default revision).
    pub fn weights_source(&self) -> WeightsSource {
        WeightsSource::hub(self.repo_id, None)
    }

    /// Class names from the repo's `config.json` `id2label`, index order, through the hub cache the
    /// environment selects. A missing or malformed file, or a name count other than the classes, is an
    /// error naming the file.
    pub fn class_names(&self) -> Result<Vec<String>> {
        self.class_names_in(&HubCache::from_env())
    }

    /// [`Self::class_names`] from the given hub cache.
    pub fn class_names_in(&self, cache: &HubCache) -> Result<Vec<String>> {
        Ok(hub_class_names(
            cache,
            self.repo_id,
            self.config.num_classes,
        )?)
    }

    /// The pretrained network (hub cache first), for inference, at `output_stride` (16 or 8). Not
    /// cached while offline (`HF_HUB_OFFLINE=1`) is an error naming the repo and `HF_HOME`.
    ///
    /// ```no_run
    /// use candle_core::Device;
    /// use voc_segment::SegmenterPreset;
    /// let net = SegmenterPreset::DEEPLABV3_MOBILENET_V2.load(16, &Device::Cpu)?;
    /// assert_eq!(net.output_stride(), 16);
    /// # Ok::<(), voc_segment::SegmentError>(())
    /// ```
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
        let mut config = self.config;
        config.backbone.output_stride = output_stride;
        DeepLabV3::from_source(cache, source, config, device)
    }
}
