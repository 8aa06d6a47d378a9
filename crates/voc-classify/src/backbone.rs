//! The common interface of the feature extractors: feature maps at four strides, for classifier and
//! segmentation heads alike.
use candle_core::Tensor;

use crate::efficientnet::EfficientNetLite;
use crate::error::{ClassifyError, Result};
use crate::mobilenet_v2::MobileNetV2;
use crate::resnet::ResNet;
use crate::vgg::Vgg16;

/// Feature maps of one forward pass, named by their nominal stride (input size / feature size at output
/// stride 32). With a smaller output stride the deeper maps stay at that stride: at output stride 16,
/// `stride32` has stride 16; at 8, `stride16` and `stride32` have stride 8.
#[derive(Debug, Clone)]
pub struct BackboneFeatures {
    /// The low-level features DeepLabV3+ decodes from (MobileNetV2: output of `layer.1`, 24 channels;
    /// EfficientNet-Lite0: stage 1, 24).
    pub stride4: Tensor,
    /// Nominal stride 8 (MobileNetV2: `layer.4`, 32 channels; EfficientNet-Lite0: stage 2, 40).
    pub stride8: Tensor,
    /// Nominal stride 16 (MobileNetV2: `layer.11`, 96 channels; EfficientNet-Lite0: stage 4, 112).
    pub stride16: Tensor,
    /// The last block's output, before the classifier's 1x1 widening convolution (320 channels).
    pub stride32: Tensor,
}

impl BackboneFeatures {
    /// The four feature maps a backbone tapped on its way down, shallowest first.
    pub(crate) fn from_taps(taps: Vec<Tensor>) -> Result<Self> {
        let [stride4, stride8, stride16, stride32]: [Tensor; 4] = taps
            .try_into()
            .map_err(|_| ClassifyError::BadArgument("feature taps out of range".into()))?;
        Ok(Self {
            stride4,
            stride8,
            stride16,
            stride32,
        })
    }
}

/// Channel counts of [`BackboneFeatures`], field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureChannels {
    /// Channels of [`BackboneFeatures::stride4`].
    pub stride4: usize,
    /// Channels of [`BackboneFeatures::stride8`].
    pub stride8: usize,
    /// Channels of [`BackboneFeatures::stride16`].
    pub stride16: usize,
    /// Channels of [`BackboneFeatures::stride32`].
    pub stride32: usize,
}

/// Stride and dilation of each block for a target output stride, as transformers' MobileNetV2 and timm's
/// EfficientNet builder compute them: once the running stride reaches `output_stride`, blocks keep stride 1
/// and the blocks after a skipped stride dilate by the product of the skipped strides.
/// `stem_stride` is the stride before the first block.
pub(crate) fn stride_schedule(
    stem_stride: usize,
    nominal: &[usize],
    output_stride: usize,
) -> Vec<(usize, usize)> {
    let mut current_stride = stem_stride;
    let mut dilation = 1;
    nominal
        .iter()
        .map(|&s| {
            if current_stride == output_stride {
                let d = dilation;
                dilation *= s;
                (1, d)
            } else {
                current_stride *= s;
                (s, 1)
            }
        })
        .collect()
}

/// Any of the feature extractors, as a classifier (or a segmenter) holds it.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use voc_classify::{Backbone, EfficientNetLite, EfficientNetLiteConfig};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let net = EfficientNetLite::new(vb, EfficientNetLiteConfig::default())?;
/// let mut backbone = Backbone::EfficientNetLite(Box::new(net));
/// backbone.set_output_stride(16)?;
/// let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
/// let features = backbone.features_t(&x, false)?;
/// assert_eq!(features.stride4.dims(), [1, 24, 16, 16]);
/// assert_eq!(features.stride32.dims(), [1, backbone.feature_channels().stride32, 4, 4]);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone)]
pub enum Backbone {
    /// MobileNetV2 (transformers layout).
    MobileNetV2(Box<MobileNetV2>),
    /// EfficientNet-Lite0 (timm layout).
    EfficientNetLite(Box<EfficientNetLite>),
    /// ResNet-50 or ResNetV2-50 (timm layouts).
    ResNet(Box<ResNet>),
    /// VGG16 (timm layout).
    Vgg16(Box<Vgg16>),
}

impl Backbone {
    /// The four feature maps of an `N x 3 x H x W` batch. `train`: batch norms use batch statistics and
    /// update their running averages.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<BackboneFeatures> {
        match self {
            Self::MobileNetV2(m) => m.features_t(x, train),
            Self::EfficientNetLite(m) => m.features_t(x, train),
            Self::ResNet(m) => m.features_t(x, train),
            Self::Vgg16(m) => m.features_t(x, train),
        }
    }

    /// The last feature map (`stride32` of [`Backbone::features_t`]) alone, which a backbone may
    /// compute without handing on the other three.
    pub fn last_features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::MobileNetV2(m) => m.last_features_t(x, train),
            _ => Ok(self.features_t(x, train)?.stride32),
        }
    }

    /// [`Backbone::last_features_t`] in eval mode as NHWC maps, where the backbone runs its inference
    /// in NHWC (MobileNetV2 with constant weights, on a CPU f32 batch); `None` otherwise.
    pub fn last_features_nhwc(&self, x: &Tensor) -> Result<Option<voc_tensor::nhwc::NhwcMaps>> {
        match self {
            Self::MobileNetV2(m) => m.last_features_nhwc(x),
            _ => Ok(None),
        }
    }

    /// Channel counts of the four feature maps.
    pub fn feature_channels(&self) -> FeatureChannels {
        match self {
            Self::MobileNetV2(m) => m.feature_channels(),
            Self::EfficientNetLite(m) => m.feature_channels(),
            Self::ResNet(m) => m.feature_channels(),
            Self::Vgg16(m) => m.feature_channels(),
        }
    }

    /// Switches the output stride (8, 16 or 32) of the built network; the weights stay the same. Any
    /// other value is a [`ClassifyError::BadArgument`].
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        match self {
            Self::MobileNetV2(m) => m.set_output_stride(output_stride),
            Self::EfficientNetLite(m) => m.set_output_stride(output_stride),
            Self::ResNet(m) => m.set_output_stride(output_stride),
            Self::Vgg16(m) => m.set_output_stride(output_stride),
        }
    }

    /// The current output stride: 8, 16 or 32.
    pub fn output_stride(&self) -> usize {
        match self {
            Self::MobileNetV2(m) => m.config().output_stride,
            Self::EfficientNetLite(m) => m.config().output_stride,
            Self::ResNet(m) => m.config().output_stride,
            Self::Vgg16(m) => m.config().output_stride,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_dilates_after_the_output_stride() {
        let nominal = [2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1];
        let os32 = stride_schedule(2, &nominal, 32);
        assert!(os32
            .iter()
            .zip(nominal)
            .all(|(&(s, d), n)| s == n && d == 1));
        let os16 = stride_schedule(2, &nominal, 16);
        assert_eq!(os16[12], (1, 1));
        assert!(os16[13..].iter().all(|&sd| sd == (1, 2)));
        let os8 = stride_schedule(2, &nominal, 8);
        assert_eq!(os8[5], (1, 1));
        assert!(os8[6..=12].iter().all(|&sd| sd == (1, 2)));
        assert!(os8[13..].iter().all(|&sd| sd == (1, 4)));
    }
}
