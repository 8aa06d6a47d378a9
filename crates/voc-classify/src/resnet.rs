//! ResNet-50 in timm's layout (`timm/resnet50.a1_in1k`) and the pre-activation ResNetV2-50
//! (`timm/resnetv2_50.a1h_in1k`, the architecture of Keras's `ResNet50V2`).
//!
//! Both are bottleneck networks of four stages (3, 4, 6, 3 blocks; 256, 512, 1024, 2048 channels) after
//! a 7x7 stride-2 stem and a 3x3 stride-2 max pool; a block's stride sits on its 3x3 convolution (the
//! "v1.5" placement). They differ in where batch norm and ReLU go:
//!
//! - ResNet (v1): `conv -> bn -> relu` inside a block, the shortcut added before the last ReLU, the
//!   projection shortcut a strided 1x1 conv with its batch norm (`downsample.0`, `downsample.1`);
//! - ResNetV2: every block starts with `norm1` (bn + ReLU, "pre-activation") and its convolutions have
//!   no batch norm after them but the next one's; the projection shortcut reads the pre-activated input;
//!   the network ends with `norm` (bn + ReLU) before pooling.
//!
//! An output stride of 16 or 8 is reached as timm does it: the later stages keep stride 1 and dilate
//! their 3x3 convolutions, the first block of a dilated stage with the previous stage's dilation.
//!
//! candle-transformers has a ResNet (`models::resnet`) that reads these same v1 names; it is not used
//! here because it runs candle's CPU convolution (im2col + gemm per image, 2-3x slower than
//! [`voc_tensor::ops::conv2d`]), has no training-mode batch norm, no feature taps at strides 4-16 and
//! no dilation. The golden test checks this port against it (and against timm itself).
use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;
use voc_tensor::ops;

use crate::backbone::{BackboneFeatures, FeatureChannels};
use crate::error::{ClassifyError, Result};
use crate::layers::{Activation, ConvNormAct, ConvPadding, ConvSpec, NormAct, NormSpec};

/// Blocks per stage of the 50-layer networks.
pub const RESNET50_LAYERS: [usize; 4] = [3, 4, 6, 3];
/// Bottleneck width of each stage; its output is 4 times that.
const PLANES: [usize; 4] = [64, 128, 256, 512];
const EXPANSION: usize = 4;
const STEM_CHANNELS: usize = 64;

/// Which of the two ResNets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResNetVariant {
    /// The original post-activation ResNet (timm `resnet50`).
    V1,
    /// Pre-activation ResNetV2 (timm `resnetv2_50`).
    V2,
}

/// Architecture parameters of a ResNet or ResNetV2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResNetConfig {
    /// Post- or pre-activation.
    pub variant: ResNetVariant,
    /// Blocks per stage ([`RESNET50_LAYERS`] for the 50-layer networks).
    pub layers: [usize; 4],
    /// 8, 16 or 32: the stride of the last feature map.
    pub output_stride: usize,
    /// Batch norm of every layer (PyTorch's eps 1e-5).
    pub norm: NormSpec,
}

impl ResNetConfig {
    /// ResNet-50 at output stride 32.
    pub const RESNET50: Self = Self {
        variant: ResNetVariant::V1,
        layers: RESNET50_LAYERS,
        output_stride: 32,
        norm: NormSpec {
            eps: 1e-5,
            momentum: 0.1,
        },
    };

    /// ResNetV2-50 at output stride 32.
    pub const RESNETV2_50: Self = Self {
        variant: ResNetVariant::V2,
        ..Self::RESNET50
    };

    /// Channels of the last feature map (2048).
    pub fn num_features(&self) -> usize {
        PLANES[3] * EXPANSION
    }

    fn validate(&self) -> Result<()> {
        if ![8, 16, 32].contains(&self.output_stride) {
            return Err(ClassifyError::BadArgument(format!(
                "ResNet output stride {} is not one of 8, 16, 32",
                self.output_stride
            )));
        }
        if self.layers.contains(&0) {
            return Err(ClassifyError::BadArgument(format!(
                "ResNet stages need at least one block each, got {:?}",
                self.layers
            )));
        }
        Ok(())
    }
}

/// Stride, dilation and first-block dilation of each stage for `output_stride`, as timm computes them:
/// once the running stride (4 after the stem) reaches the target, a stage's stride becomes dilation.
fn stage_geometry(output_stride: usize) -> [(usize, usize, usize); 4] {
    let mut net_stride = 4;
    let mut dilation = 1;
    let mut out = [(1, 1, 1); 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let previous = dilation;
        let mut stride = if i == 0 { 1 } else { 2 };
        if net_stride >= output_stride {
            dilation *= stride;
            stride = 1;
        } else {
            net_stride *= stride;
        }
        *slot = (stride, dilation, previous);
    }
    out
}

/// One bottleneck block of either variant.
#[derive(Debug, Clone)]
struct Bottleneck {
    /// V2 only: the pre-activation `norm1` (bn + ReLU) of the block input.
    preact: Option<NormAct>,
    /// `conv1` with what follows it (V1: `bn1` + ReLU; V2: `norm2` + ReLU).
    reduce: ConvNormAct,
    /// `conv2`, 3x3, carries the stride and dilation (V1: `bn2` + ReLU; V2: `norm3` + ReLU).
    spatial: ConvNormAct,
    /// `conv3`, then the shortcut added (V1: with `bn3` and a ReLU after the sum; V2: bare).
    expand: ConvNormAct,
    /// The projection shortcut of a stage's first block.
    downsample: Option<ConvNormAct>,
    variant: ResNetVariant,
}

impl Bottleneck {
    fn new(
        vb: VarBuilder,
        config: &ResNetConfig,
        in_channels: usize,
        planes: usize,
        stride: usize,
        dilation: usize,
    ) -> Result<Self> {
        let out_channels = planes * EXPANSION;
        let norm = config.norm;
        let plain = |cin, cout, k| ConvSpec {
            in_channels: cin,
            out_channels: cout,
            kernel: k,
            stride: 1,
            dilation: 1,
            groups: 1,
            bias: false,
            padding: ConvPadding::Symmetric(0),
            norm: None,
            activation: Activation::Identity,
        };
        let spatial_spec = |spec: ConvSpec| {
            spec.stride(stride)
                .dilation(dilation)
                .padding(ConvPadding::Symmetric(dilation))
        };
        let needs_projection = stride != 1 || in_channels != out_channels;
        Ok(match config.variant {
            ResNetVariant::V1 => {
                let with_bn = |cin, cout, k, act| ConvSpec {
                    norm: Some(norm),
                    activation: act,
                    ..plain(cin, cout, k)
                };
                Self {
                    preact: None,
                    reduce: ConvNormAct::new(
                        vb.pp("conv1"),
                        vb.pp("bn1"),
                        with_bn(in_channels, planes, 1, Activation::Relu),
                    )?,
                    spatial: ConvNormAct::new(
                        vb.pp("conv2"),
                        vb.pp("bn2"),
                        spatial_spec(with_bn(planes, planes, 3, Activation::Relu)),
                    )?,
                    expand: ConvNormAct::new(
                        vb.pp("conv3"),
                        vb.pp("bn3"),
                        // The ReLU comes after the shortcut is added.
                        with_bn(planes, out_channels, 1, Activation::Relu),
                    )?,
                    downsample: if needs_projection {
                        let ds = vb.pp("downsample");
                        Some(ConvNormAct::new(
                            ds.pp("0"),
                            ds.pp("1"),
                            with_bn(in_channels, out_channels, 1, Activation::Identity)
                                .stride(stride),
                        )?)
                    } else {
                        None
                    },
                    variant: config.variant,
                }
            }
            ResNetVariant::V2 => {
                let then_norm = |cin, cout, k| ConvSpec {
                    norm: Some(norm),
                    activation: Activation::Relu,
                    ..plain(cin, cout, k)
                };
                Self {
                    preact: Some(NormAct::new(
                        vb.pp("norm1"),
                        in_channels,
                        norm,
                        Activation::Relu,
                    )?),
                    reduce: ConvNormAct::new(
                        vb.pp("conv1"),
                        vb.pp("norm2"),
                        then_norm(in_channels, planes, 1),
                    )?,
                    spatial: ConvNormAct::new(
                        vb.pp("conv2"),
                        vb.pp("norm3"),
                        spatial_spec(then_norm(planes, planes, 3)),
                    )?,
                    expand: ConvNormAct::new(
                        vb.pp("conv3"),
                        vb.pp("unused"),
                        plain(planes, out_channels, 1),
                    )?,
                    downsample: if needs_projection {
                        Some(ConvNormAct::new(
                            vb.pp("downsample").pp("conv"),
                            vb.pp("unused"),
                            plain(in_channels, out_channels, 1).stride(stride),
                        )?)
                    } else {
                        None
                    },
                    variant: config.variant,
                }
            }
        })
    }

    fn set_geometry(&mut self, stride: usize, dilation: usize) {
        self.spatial
            .set_geometry(stride, dilation, ConvPadding::Symmetric(dilation));
        if let Some(ds) = &mut self.downsample {
            ds.set_geometry(stride, 1, ConvPadding::Symmetric(0));
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.variant {
            ResNetVariant::V1 => {
                let shortcut = match &self.downsample {
                    Some(ds) => ds.forward_t(x, train)?,
                    None => x.clone(),
                };
                let h = self.reduce.forward_t(x, train)?;
                let h = self.spatial.forward_t(&h, train)?;
                self.expand
                    .forward_residual_then_act_t(&h, &shortcut, train)
            }
            ResNetVariant::V2 => {
                let preact = match &self.preact {
                    Some(norm) => norm.forward_t(x, train)?,
                    None => x.clone(),
                };
                let shortcut = match &self.downsample {
                    Some(ds) => ds.forward_t(&preact, train)?,
                    None => x.clone(),
                };
                let h = self.reduce.forward_t(&preact, train)?;
                let h = self.spatial.forward_t(&h, train)?;
                self.expand
                    .forward_residual_then_act_t(&h, &shortcut, train)
            }
        }
    }
}

/// The ResNet feature extractor: stem, max pool and the four stages (`layer1..4` / `stages.0..3`); the
/// ResNetV2's final `norm` belongs to the classifier (see [`crate::ImageClassifier`]).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use voc_classify::resnet::{ResNet, ResNetConfig};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let mut net = ResNet::new(vb, ResNetConfig::RESNET50)?;
/// let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
/// let features = net.features_t(&x, false)?;
/// assert_eq!(features.stride4.dims(), [1, 256, 16, 16]);
/// assert_eq!(features.stride32.dims(), [1, 2048, 2, 2]);
/// net.set_output_stride(8)?;
/// assert_eq!(net.features_t(&x, false)?.stride32.dims(), [1, 2048, 8, 8]);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvNormAct,
    stages: Vec<Vec<Bottleneck>>,
    config: ResNetConfig,
}

impl ResNet {
    /// Builds the network; `vb` is the root of timm's names (`conv1`, `layer1.0.conv1`, ... for V1;
    /// `stem.conv`, `stages.0.blocks.0.norm1`, ... for V2). A bad config is a
    /// [`ClassifyError::BadArgument`].
    pub fn new(vb: VarBuilder, config: ResNetConfig) -> Result<Self> {
        config.validate()?;
        let stem_spec = ConvSpec {
            in_channels: 3,
            out_channels: STEM_CHANNELS,
            kernel: 7,
            stride: 2,
            dilation: 1,
            groups: 1,
            bias: false,
            padding: ConvPadding::Symmetric(3),
            norm: None,
            activation: Activation::Identity,
        };
        let stem = match config.variant {
            ResNetVariant::V1 => ConvNormAct::new(
                vb.pp("conv1"),
                vb.pp("bn1"),
                ConvSpec {
                    norm: Some(config.norm),
                    activation: Activation::Relu,
                    ..stem_spec
                },
            )?,
            ResNetVariant::V2 => {
                ConvNormAct::new(vb.pp("stem").pp("conv"), vb.pp("unused"), stem_spec)?
            }
        };
        let geometry = stage_geometry(config.output_stride);
        let mut in_channels = STEM_CHANNELS;
        let mut stages = Vec::with_capacity(4);
        for (s, &(stride, dilation, first_dilation)) in geometry.iter().enumerate() {
            let stage_vb = match config.variant {
                ResNetVariant::V1 => vb.pp(format!("layer{}", s + 1)),
                ResNetVariant::V2 => vb.pp("stages").pp(s).pp("blocks"),
            };
            let mut blocks = Vec::with_capacity(config.layers[s]);
            for b in 0..config.layers[s] {
                let (block_stride, block_dilation) = if b == 0 {
                    (stride, first_dilation)
                } else {
                    (1, dilation)
                };
                blocks.push(Bottleneck::new(
                    stage_vb.pp(b),
                    &config,
                    in_channels,
                    PLANES[s],
                    block_stride,
                    block_dilation,
                )?);
                in_channels = PLANES[s] * EXPANSION;
            }
            stages.push(blocks);
        }
        Ok(Self {
            stem,
            stages,
            config,
        })
    }

    /// The configuration, with the current output stride.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Switches the output stride (8, 16 or 32) of the built network; the weights stay the same.
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        let config = ResNetConfig {
            output_stride,
            ..self.config
        };
        config.validate()?;
        for (blocks, &(stride, dilation, first_dilation)) in
            self.stages.iter_mut().zip(&stage_geometry(output_stride))
        {
            for (b, block) in blocks.iter_mut().enumerate() {
                if b == 0 {
                    block.set_geometry(stride, first_dilation);
                } else {
                    block.set_geometry(1, dilation);
                }
            }
        }
        self.config = config;
        Ok(())
    }

    /// Channel counts of the stage outputs: 256, 512, 1024, 2048.
    pub fn feature_channels(&self) -> FeatureChannels {
        FeatureChannels {
            stride4: PLANES[0] * EXPANSION,
            stride8: PLANES[1] * EXPANSION,
            stride16: PLANES[2] * EXPANSION,
            stride32: PLANES[3] * EXPANSION,
        }
    }

    /// The four stage outputs of an `N x 3 x H x W` batch; see [`BackboneFeatures`]. `train`: batch
    /// norms use batch statistics and update their running averages.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<BackboneFeatures> {
        let h = self.stem.forward_t(x, train)?;
        let mut h = ops::max_pool2d(&h, 3, 2, 1)?;
        let mut taps = Vec::with_capacity(4);
        for blocks in &self.stages {
            for block in blocks {
                h = block.forward_t(&h, train)?;
            }
            taps.push(h.clone());
        }
        BackboneFeatures::from_taps(taps)
    }
}

impl ModuleT for ResNet {
    /// The last feature map of [`ResNet::features_t`].
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.features_t(xs, train)?.stride32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_geometry_matches_timm() {
        assert_eq!(
            stage_geometry(32),
            [(1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)]
        );
        assert_eq!(
            stage_geometry(16),
            [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 2, 1)]
        );
        assert_eq!(
            stage_geometry(8),
            [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 4, 2)]
        );
    }

    #[test]
    fn output_stride_is_validated() {
        let vb = VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        let config = ResNetConfig {
            output_stride: 4,
            ..ResNetConfig::RESNETV2_50
        };
        let err = ResNet::new(vb, config).unwrap_err().to_string();
        assert!(err.contains("output stride 4"), "{err}");
    }
}
