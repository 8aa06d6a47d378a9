//! VGG16 in timm's layout (`timm/vgg16.tv_in1k`, torchvision's weights renamed).
//!
//! Thirteen 3x3 convolutions with bias and ReLU (`features.N`, N the index in torchvision's
//! `Sequential`, which counts the ReLUs and pools too), five 2x2 max pools, then timm's `pre_logits`:
//! the old fully connected layers as convolutions, `fc1` 7x7 (512 -> 4096) and `fc2` 1x1 (4096 -> 4096),
//! each with ReLU, and a global average pool. On a 224 input this is exactly torchvision's VGG16; on a
//! larger one `fc1` slides over the feature map and the pool averages its outputs; on a smaller one
//! (below 7x7 features) the map is first adaptively average-pooled up to 7x7, as timm does.
//!
//! candle-transformers' VGG is not used: it runs batch 1 only and applies a ReLU to its logits.
use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;
use voc_tensor::ops;

use crate::backbone::{BackboneFeatures, FeatureChannels};
use crate::error::{ClassifyError, Result};
use crate::layers::{Activation, ConvNormAct, ConvPadding, ConvSpec};

/// VGG16's feature layers: output channels of each convolution, 0 for a max pool.
const VGG16_LAYERS: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];
/// Side of `pre_logits.fc1`'s kernel (the 7x7 map of a 224 input).
const FC1_KERNEL: usize = 7;
/// Width of the `pre_logits` convolutions: the pooled features.
pub const VGG_FEATURES: usize = 4096;

/// Architecture parameters of VGG16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VggConfig {
    /// Only 32: VGG has no dilated variant here.
    pub output_stride: usize,
}

impl Default for VggConfig {
    fn default() -> Self {
        Self { output_stride: 32 }
    }
}

fn check_output_stride(output_stride: usize) -> Result<()> {
    if output_stride != 32 {
        return Err(ClassifyError::BadArgument(format!(
            "VGG16 output stride {output_stride}: only 32 is supported (no dilated variant)"
        )));
    }
    Ok(())
}

/// `(index in features.*, stage)` of each convolution: the stage is the number of pools before it.
pub fn vgg16_conv_positions() -> Vec<(usize, usize)> {
    let mut index = 0;
    let mut stage = 0;
    let mut out = Vec::new();
    for &channels in &VGG16_LAYERS {
        if channels == 0 {
            index += 1;
            stage += 1;
        } else {
            out.push((index, stage));
            index += 2; // the conv and its ReLU
        }
    }
    out
}

/// A feature layer of the network.
#[derive(Debug, Clone)]
enum Layer {
    Conv(ConvNormAct),
    MaxPool,
}

/// VGG16's convolutional part: `features.*`, tapped after the 2nd to 5th pools.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use voc_classify::vgg::{Vgg16, VggConfig};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let net = Vgg16::new(vb, VggConfig::default())?;
/// let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
/// let features = net.features_t(&x, false)?;
/// assert_eq!(features.stride4.dims(), [1, 128, 16, 16]);
/// assert_eq!(features.stride32.dims(), [1, 512, 2, 2]);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Vgg16 {
    layers: Vec<Layer>,
    config: VggConfig,
}

impl Vgg16 {
    /// Builds the network; `vb` is the root of timm's names (`features.0.weight`, ...).
    pub fn new(vb: VarBuilder, config: VggConfig) -> Result<Self> {
        check_output_stride(config.output_stride)?;
        let mut layers = Vec::with_capacity(VGG16_LAYERS.len());
        let mut in_channels = 3;
        let mut index = 0;
        for &channels in &VGG16_LAYERS {
            if channels == 0 {
                layers.push(Layer::MaxPool);
                index += 1;
                continue;
            }
            let spec = ConvSpec {
                in_channels,
                out_channels: channels,
                kernel: 3,
                stride: 1,
                dilation: 1,
                groups: 1,
                bias: true,
                padding: ConvPadding::Symmetric(1),
                norm: None,
                activation: Activation::Relu,
            };
            let conv_vb = vb.pp("features").pp(index);
            layers.push(Layer::Conv(ConvNormAct::new(
                conv_vb.clone(),
                conv_vb,
                spec,
            )?));
            in_channels = channels;
            index += 2;
        }
        Ok(Self { layers, config })
    }

    /// The configuration.
    pub fn config(&self) -> &VggConfig {
        &self.config
    }

    /// Only output stride 32 exists; any other is a [`ClassifyError::BadArgument`].
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        check_output_stride(output_stride)
    }

    /// Channel counts after the 2nd to 5th pools: 128, 256, 512, 512.
    pub fn feature_channels(&self) -> FeatureChannels {
        FeatureChannels {
            stride4: 128,
            stride8: 256,
            stride16: 512,
            stride32: 512,
        }
    }

    /// The maps after the 2nd, 3rd, 4th and 5th max pools (strides 4 to 32).
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<BackboneFeatures> {
        let mut h = x.clone();
        let mut pools = 0;
        let mut taps = Vec::with_capacity(4);
        for layer in &self.layers {
            match layer {
                Layer::Conv(conv) => h = conv.forward_t(&h, train)?,
                Layer::MaxPool => {
                    h = ops::max_pool2d(&h, 2, 2, 0)?;
                    pools += 1;
                    if pools >= 2 {
                        taps.push(h.clone());
                    }
                }
            }
        }
        BackboneFeatures::from_taps(taps)
    }
}

impl ModuleT for Vgg16 {
    /// The last feature map of [`Vgg16::features_t`] (512 channels at stride 32).
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.features_t(xs, train)?.stride32)
    }
}

/// timm's `pre_logits`: `fc1` (7x7 conv + ReLU) and `fc2` (1x1 conv + ReLU) on the last feature map.
#[derive(Debug, Clone)]
pub struct VggPreLogits {
    fc1: ConvNormAct,
    fc2: ConvNormAct,
}

impl VggPreLogits {
    /// Reads `fc1.{weight,bias}` and `fc2.{weight,bias}` under `vb` (timm: `pre_logits`).
    pub fn new(vb: VarBuilder, in_channels: usize) -> Result<Self> {
        let spec = |cin, cout, kernel| ConvSpec {
            in_channels: cin,
            out_channels: cout,
            kernel,
            stride: 1,
            dilation: 1,
            groups: 1,
            bias: true,
            padding: ConvPadding::Symmetric(0),
            norm: None,
            activation: Activation::Relu,
        };
        Ok(Self {
            fc1: ConvNormAct::new(
                vb.pp("fc1"),
                vb.pp("fc1"),
                spec(in_channels, VGG_FEATURES, FC1_KERNEL),
            )?,
            fc2: ConvNormAct::new(
                vb.pp("fc2"),
                vb.pp("fc2"),
                spec(VGG_FEATURES, VGG_FEATURES, 1),
            )?,
        })
    }

    /// `N x 4096 x H' x W'` from the `N x 512 x H x W` last feature map.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let x = if h < FC1_KERNEL || w < FC1_KERNEL {
            ops::adaptive_avg_pool2d(x, h.max(FC1_KERNEL), w.max(FC1_KERNEL))?
        } else {
            x.clone()
        };
        let y = self.fc1.forward_t(&x, train)?;
        self.fc2.forward_t(&y, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_positions_follow_torchvision_indices() {
        let positions = vgg16_conv_positions();
        let indices: Vec<usize> = positions.iter().map(|p| p.0).collect();
        assert_eq!(indices, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]);
        assert_eq!(positions[4], (10, 2));
        assert_eq!(positions[12], (28, 4));
    }

    #[test]
    fn only_output_stride_32() {
        let vb = VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        let mut net = Vgg16::new(vb, VggConfig::default()).unwrap();
        assert!(net.set_output_stride(32).is_ok());
        let err = net.set_output_stride(16).unwrap_err().to_string();
        assert!(err.contains("only 32"), "{err}");
    }
}
