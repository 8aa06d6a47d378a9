//! EfficientNet-Lite0 in the timm layout (`timm/tf_efficientnet_lite0.in1k`).
//!
//! The Lite variants drop squeeze-and-excitation and swish for ReLU6 and keep a fixed 32-channel stem and
//! 1280-channel head; the `tf_` weights want TF "SAME" padding and batch-norm eps 1e-3. The output stride
//! is lowered by dilation exactly like [`crate::mobilenet_v2`].
use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;

use crate::backbone::{stride_schedule, BackboneFeatures, FeatureChannels};
use crate::error::{ClassifyError, Result};
use crate::layers::{Activation, ConvNormAct, ConvPadding, ConvSpec, NormSpec};

/// One stage of the network: `repeats` blocks, the first of which has the stage's stride.
#[derive(Debug, Clone, Copy)]
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand_ratio: usize,
    out_channels: usize,
}

/// timm's `ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ir_r2_k5_s2_e6_c40, ir_r3_k3_s2_e6_c80,
/// ir_r3_k5_s1_e6_c112, ir_r4_k5_s2_e6_c192, ir_r1_k3_s1_e6_c320` (stage 0 is depthwise-separable).
const LITE0: [Stage; 7] = [
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand_ratio: 1,
        out_channels: 16,
    },
    Stage {
        repeats: 2,
        kernel: 3,
        stride: 2,
        expand_ratio: 6,
        out_channels: 24,
    },
    Stage {
        repeats: 2,
        kernel: 5,
        stride: 2,
        expand_ratio: 6,
        out_channels: 40,
    },
    Stage {
        repeats: 3,
        kernel: 3,
        stride: 2,
        expand_ratio: 6,
        out_channels: 80,
    },
    Stage {
        repeats: 3,
        kernel: 5,
        stride: 1,
        expand_ratio: 6,
        out_channels: 112,
    },
    Stage {
        repeats: 4,
        kernel: 5,
        stride: 2,
        expand_ratio: 6,
        out_channels: 192,
    },
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand_ratio: 6,
        out_channels: 320,
    },
];
const STEM_CHANNELS: usize = 32;
/// Width of `conv_head`, the 1x1 convolution of the classifier head.
pub const LITE_HEAD_CHANNELS: usize = 1280;
/// Stages whose last output is the feature map at nominal stride 4, 8, 16, 32.
const TAPS: [usize; 4] = [1, 2, 4, 6];

/// Architecture parameters of an EfficientNet-Lite0 backbone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EfficientNetLiteConfig {
    /// 8, 16 or 32: the stride of the last feature map.
    pub output_stride: usize,
    /// Batch norm of every layer (eps 1e-3, as the TensorFlow weights want).
    pub norm: NormSpec,
}

impl Default for EfficientNetLiteConfig {
    fn default() -> Self {
        Self {
            output_stride: 32,
            norm: NormSpec {
                eps: 1e-3,
                momentum: 0.1,
            },
        }
    }
}

fn check_output_stride(output_stride: usize) -> Result<()> {
    if [8, 16, 32].contains(&output_stride) {
        Ok(())
    } else {
        Err(ClassifyError::BadArgument(format!(
            "EfficientNet-Lite output stride {output_stride} is not one of 8, 16, 32"
        )))
    }
}

/// Stride of every block at output stride 32: the stage's stride for its first block, 1 after.
fn nominal_strides() -> Vec<usize> {
    LITE0
        .iter()
        .flat_map(|s| (0..s.repeats).map(move |i| if i == 0 { s.stride } else { 1 }))
        .collect()
}

/// The next `(stride, dilation)` of a block schedule.
fn next_geometry(schedule: &mut impl Iterator<Item = (usize, usize)>) -> Result<(usize, usize)> {
    schedule.next().ok_or_else(|| {
        ClassifyError::BadArgument("stride schedule shorter than the network".into())
    })
}

/// Depthwise-separable (stage 0: `conv_dw`, `bn1`, `conv_pw`, `bn2`) or inverted-residual block
/// (`conv_pw`, `bn1`, `conv_dw`, `bn2`, `conv_pwl`, `bn3`).
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvNormAct>,
    residual: bool,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len().saturating_sub(1);
        for (i, conv) in self.convs.iter().enumerate() {
            let residual = (self.residual && i == last).then_some(x);
            h = conv.forward_residual_t(&h, residual, train)?;
        }
        Ok(h)
    }
}

/// The EfficientNet-Lite0 feature extractor: `conv_stem`, `bn1`, `blocks.S.I` (no `conv_head`).
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use voc_classify::{EfficientNetLite, EfficientNetLiteConfig};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let net = EfficientNetLite::new(vb, EfficientNetLiteConfig::default())?;
/// let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
/// let features = net.features_t(&x, false)?;
/// assert_eq!(features.stride8.dims(), [1, 40, 8, 8]);
/// assert_eq!(features.stride32.dims(), [1, 320, 2, 2]);
/// // As a candle module: the last feature map.
/// assert_eq!(ModuleT::forward_t(&net, &x, false)?.dims(), [1, 320, 2, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    stem: ConvNormAct,
    stages: Vec<Vec<Block>>,
    config: EfficientNetLiteConfig,
}

impl EfficientNetLite {
    /// Builds the network; `vb` points at the root of the timm names. An output stride other than 8, 16
    /// or 32 is a [`ClassifyError::BadArgument`].
    pub fn new(vb: VarBuilder, config: EfficientNetLiteConfig) -> Result<Self> {
        check_output_stride(config.output_stride)?;
        let norm = config.norm;
        let stem = ConvNormAct::new(
            vb.pp("conv_stem"),
            vb.pp("bn1"),
            ConvSpec::conv_bn(3, STEM_CHANNELS, 3, norm, Activation::Relu6).stride(2),
        )?;

        let mut schedule = stride_schedule(2, &nominal_strides(), config.output_stride).into_iter();

        let mut in_channels = STEM_CHANNELS;
        let mut stages = Vec::with_capacity(LITE0.len());
        for (si, stage) in LITE0.iter().enumerate() {
            let mut blocks = Vec::with_capacity(stage.repeats);
            for bi in 0..stage.repeats {
                let (stride, dilation) = next_geometry(&mut schedule)?;
                let bvb = vb.pp("blocks").pp(si).pp(bi);
                let cout = stage.out_channels;
                let depthwise = |cin: usize, bn: &str| {
                    ConvNormAct::new(
                        bvb.pp("conv_dw"),
                        bvb.pp(bn),
                        ConvSpec::conv_bn(cin, cin, stage.kernel, norm, Activation::Relu6)
                            .depthwise()
                            .stride(stride)
                            .dilation(dilation),
                    )
                };
                let convs = if stage.expand_ratio == 1 {
                    vec![
                        depthwise(in_channels, "bn1")?,
                        ConvNormAct::new(
                            bvb.pp("conv_pw"),
                            bvb.pp("bn2"),
                            ConvSpec::conv_bn(in_channels, cout, 1, norm, Activation::Identity),
                        )?,
                    ]
                } else {
                    let mid = in_channels * stage.expand_ratio;
                    vec![
                        ConvNormAct::new(
                            bvb.pp("conv_pw"),
                            bvb.pp("bn1"),
                            ConvSpec::conv_bn(in_channels, mid, 1, norm, Activation::Relu6),
                        )?,
                        depthwise(mid, "bn2")?,
                        ConvNormAct::new(
                            bvb.pp("conv_pwl"),
                            bvb.pp("bn3"),
                            ConvSpec::conv_bn(mid, cout, 1, norm, Activation::Identity),
                        )?,
                    ]
                };
                blocks.push(Block {
                    convs,
                    residual: stride == 1 && in_channels == cout,
                });
                in_channels = cout;
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
    pub fn config(&self) -> &EfficientNetLiteConfig {
        &self.config
    }

    /// Switches the output stride (8, 16 or 32) of the built network; the weights stay the same. Any
    /// other value is a [`ClassifyError::BadArgument`].
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        check_output_stride(output_stride)?;
        let mut schedule = stride_schedule(2, &nominal_strides(), output_stride).into_iter();
        let mut in_channels = STEM_CHANNELS;
        for (stage, blocks) in LITE0.iter().zip(self.stages.iter_mut()) {
            for block in blocks.iter_mut() {
                let (stride, dilation) = next_geometry(&mut schedule)?;
                let dw = if stage.expand_ratio == 1 { 0 } else { 1 };
                block.convs[dw].set_geometry(stride, dilation, ConvPadding::TfSame);
                block.residual = stride == 1 && in_channels == stage.out_channels;
                in_channels = stage.out_channels;
            }
        }
        self.config.output_stride = output_stride;
        Ok(())
    }

    /// Channel counts of the feature maps: 24, 40, 112, 320.
    pub fn feature_channels(&self) -> FeatureChannels {
        let c = |i: usize| LITE0[TAPS[i]].out_channels;
        FeatureChannels {
            stride4: c(0),
            stride8: c(1),
            stride16: c(2),
            stride32: c(3),
        }
    }

    /// Features of an `N x 3 x H x W` batch after stages 1, 2, 4 and 6; see [`BackboneFeatures`].
    /// `train`: batch norms use batch statistics and update their running averages.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<BackboneFeatures> {
        let mut h = self.stem.forward_t(x, train)?;
        let mut taps = Vec::with_capacity(4);
        for (si, stage) in self.stages.iter().enumerate() {
            for block in stage {
                h = block.forward_t(&h, train)?;
            }
            if TAPS.contains(&si) {
                taps.push(h.clone());
            }
        }
        BackboneFeatures::from_taps(taps)
    }
}

impl ModuleT for EfficientNetLite {
    /// The last feature map of [`EfficientNetLite::features_t`] (`stride32`, 320 channels).
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.features_t(xs, train)?.stride32)
    }
}
