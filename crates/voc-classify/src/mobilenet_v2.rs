//! MobileNetV2 in the Hugging Face transformers layout (`google/mobilenet_v2_1.0_224`,
//! `google/deeplabv3_mobilenet_v2_1.0_513`).
//!
//! As in the TensorFlow original the transformers port follows: TF "SAME" padding, ReLU6, and a stem whose
//! first block has no 1x1 expansion (the 3x3 stem convolution already produces its 32 channels). An output
//! stride below 32 is reached as transformers does it: once the running stride equals the target, later
//! blocks keep stride 1 and the blocks after a skipped stride-2 block dilate their depthwise convolution by
//! the product of the skipped strides.
use std::sync::Arc;

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::VarBuilder;
use voc_tensor::nhwc::{self, DenseConv, DepthwiseConv, NhwcMaps};

type NhwcBlock = nhwc::InvertedResidual;

use crate::backbone::{stride_schedule, BackboneFeatures, FeatureChannels};
use crate::error::{ClassifyError, Result};
use crate::layers::{Activation, BuiltOnce, ConvNormAct, ConvPadding, ConvSpec, NormSpec};

/// Output channels of the stem and of the 16 inverted-residual blocks, before the depth multiplier.
const CHANNELS: [usize; 17] = [
    16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320,
];
/// Depthwise stride of each block at output stride 32.
const STRIDES: [usize; 16] = [2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1];
const EXPAND_RATIO: f64 = 6.0;
/// Index of the last block at each nominal stride 4, 8, 16, 32 (the feature taps).
const TAPS: [usize; 4] = [1, 4, 11, 15];

/// Architecture parameters of a MobileNetV2 backbone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MobileNetV2Config {
    /// Width multiplier applied to every layer (1.0 for the pretrained models).
    pub depth_multiplier: f64,
    /// 8, 16 or 32: the stride of the last feature map.
    pub output_stride: usize,
    /// Batch norm of every layer (eps 1e-3, as the TensorFlow weights want).
    pub norm: NormSpec,
}

impl Default for MobileNetV2Config {
    fn default() -> Self {
        Self {
            depth_multiplier: 1.0,
            output_stride: 32,
            norm: NormSpec {
                eps: 1e-3,
                momentum: 0.1,
            },
        }
    }
}

impl MobileNetV2Config {
    /// The same config at `output_stride` (checked when a network is built).
    pub fn with_output_stride(mut self, output_stride: usize) -> Self {
        self.output_stride = output_stride;
        self
    }

    /// Channel count after the width multiplier, rounded as the TensorFlow original does.
    pub fn channels(&self, base: usize) -> usize {
        make_divisible((base as f64 * self.depth_multiplier).round(), 8, 8)
    }

    /// Channels of the 1x1 convolution that closes the classifier (`conv_1x1`): 1280 is only ever widened.
    pub fn head_channels(&self) -> usize {
        if self.depth_multiplier < 1.0 {
            1280
        } else {
            self.channels(1280)
        }
    }

    fn validate(&self) -> Result<()> {
        if ![8, 16, 32].contains(&self.output_stride) {
            return Err(ClassifyError::BadArgument(format!(
                "MobileNetV2 output stride {} is not one of 8, 16, 32",
                self.output_stride
            )));
        }
        if !(self.depth_multiplier > 0.0 && self.depth_multiplier.is_finite()) {
            return Err(ClassifyError::BadArgument(format!(
                "MobileNetV2 depth multiplier {} must be positive",
                self.depth_multiplier
            )));
        }
        Ok(())
    }
}

/// Rounds `value` to the nearest multiple of `divisor` (at least `min_value`), never more than 10% down.
pub fn make_divisible(value: f64, divisor: usize, min_value: usize) -> usize {
    let d = divisor as f64;
    let mut rounded = (min_value as f64).max(((value + d / 2.0) / d).floor() * d);
    if rounded < 0.9 * value {
        rounded += d;
    }
    rounded as usize
}

/// Expand 1x1 (skipped in the stem), depthwise 3x3, linear projection 1x1, residual when shapes allow.
#[derive(Debug, Clone)]
struct InvertedResidual {
    expand: Option<ConvNormAct>,
    depthwise: ConvNormAct,
    project: ConvNormAct,
    residual: bool,
}

impl InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward_t(x, train)?,
            None => x.clone(),
        };
        let h = self.depthwise.forward_t(&h, train)?;
        let residual = self.residual.then_some(x);
        self.project.forward_residual_t(&h, residual, train)
    }

    /// The block's layers for the NHWC path, or `None` when one of them is not all constants.
    fn nhwc_layers(&self) -> Result<Option<NhwcBlock>> {
        let expand = match &self.expand {
            Some(e) => match e.nhwc_pointwise()? {
                Some(p) => Some(p),
                None => return Ok(None),
            },
            None => None,
        };
        let Some((w, shift)) = self.depthwise.constant_folded()? else {
            return Ok(None);
        };
        let depthwise = DepthwiseConv::new(&w, &shift, self.depthwise.spec().activation.fused())?;
        let Some(project) = self.project.nhwc_pointwise()? else {
            return Ok(None);
        };
        Ok(Some(NhwcBlock {
            expand,
            depthwise,
            project,
        }))
    }

    /// The block on NHWC maps with `layers` (from [`InvertedResidual::nhwc_layers`]); the geometry is
    /// this block's current one.
    fn forward_nhwc(&self, layers: &NhwcBlock, x: &NhwcMaps) -> Result<NhwcMaps> {
        let spec = self.depthwise.spec();
        let (_, height, width, _) = x.dims();
        let padding = spec.padding_on(height, width);
        Ok(layers.forward(x, spec.stride, spec.dilation, padding, self.residual)?)
    }
}

/// The network's constant layers for the NHWC path.
#[derive(Debug)]
struct NhwcLayers {
    first_conv: DenseConv,
    /// The stem block's layers, then the 16 blocks'.
    blocks: Vec<NhwcBlock>,
}

/// The MobileNetV2 feature extractor: `conv_stem` and `layer.0..15` (no `conv_1x1`, which belongs to the
/// classification head).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use voc_classify::{MobileNetV2, MobileNetV2Config};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let mut net = MobileNetV2::new(vb, MobileNetV2Config::default())?;
/// let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
/// let features = net.features_t(&x, false)?;
/// assert_eq!(features.stride4.dims(), [1, 24, 16, 16]);
/// assert_eq!(features.stride32.dims(), [1, 320, 2, 2]);
/// net.set_output_stride(8)?; // dilated: the deeper maps stay at stride 8
/// assert_eq!(net.features_t(&x, false)?.stride32.dims(), [1, 320, 8, 8]);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    first_conv: ConvNormAct,
    stem_block: InvertedResidual,
    blocks: Vec<InvertedResidual>,
    config: MobileNetV2Config,
    /// The blocks' layers for inference in NHWC, built on the first eval-mode call; shared by clones
    /// (as the weights are).
    nhwc: BuiltOnce<NhwcLayers>,
}

impl MobileNetV2 {
    /// Builds the network; `vb` points at the backbone's prefix (`mobilenet_v2` in the hub files). An
    /// output stride other than 8, 16 or 32 or a depth multiplier that is not positive is a
    /// [`ClassifyError::BadArgument`].
    pub fn new(vb: VarBuilder, config: MobileNetV2Config) -> Result<Self> {
        config.validate()?;
        let norm = config.norm;
        let channels: Vec<usize> = CHANNELS.iter().map(|&c| config.channels(c)).collect();
        let stem_channels = config.channels(32);

        let stem = vb.pp("conv_stem");
        let first_conv = ConvNormAct::transformers(
            stem.pp("first_conv"),
            ConvSpec::conv_bn(3, stem_channels, 3, norm, Activation::Relu6).stride(2),
        )?;
        let stem_block = InvertedResidual {
            expand: None,
            depthwise: ConvNormAct::transformers(
                stem.pp("conv_3x3"),
                ConvSpec::conv_bn(stem_channels, stem_channels, 3, norm, Activation::Relu6)
                    .depthwise(),
            )?,
            project: ConvNormAct::transformers(
                stem.pp("reduce_1x1"),
                ConvSpec::conv_bn(stem_channels, channels[0], 1, norm, Activation::Identity),
            )?,
            residual: false,
        };

        let schedule = stride_schedule(2, &STRIDES, config.output_stride);
        let mut blocks = Vec::with_capacity(STRIDES.len());
        for (i, &(stride, block_dilation)) in schedule.iter().enumerate() {
            let (cin, cout) = (channels[i], channels[i + 1]);
            let expanded = make_divisible((cin as f64 * EXPAND_RATIO).round(), 8, 8);
            let lvb = vb.pp("layer").pp(i);
            blocks.push(InvertedResidual {
                expand: Some(ConvNormAct::transformers(
                    lvb.pp("expand_1x1"),
                    ConvSpec::conv_bn(cin, expanded, 1, norm, Activation::Relu6),
                )?),
                depthwise: ConvNormAct::transformers(
                    lvb.pp("conv_3x3"),
                    ConvSpec::conv_bn(expanded, expanded, 3, norm, Activation::Relu6)
                        .depthwise()
                        .stride(stride)
                        .dilation(block_dilation),
                )?,
                project: ConvNormAct::transformers(
                    lvb.pp("reduce_1x1"),
                    ConvSpec::conv_bn(expanded, cout, 1, norm, Activation::Identity),
                )?,
                residual: stride == 1 && cin == cout,
            });
        }
        Ok(Self {
            first_conv,
            stem_block,
            blocks,
            config,
            nhwc: BuiltOnce::default(),
        })
    }

    /// The configuration, with the current output stride.
    pub fn config(&self) -> &MobileNetV2Config {
        &self.config
    }

    /// Switches the output stride (8, 16 or 32) of the built network; the weights stay the same. Any
    /// other value is a [`ClassifyError::BadArgument`].
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        let config = MobileNetV2Config {
            output_stride,
            ..self.config
        };
        config.validate()?;
        let schedule = stride_schedule(2, &STRIDES, output_stride);
        for (i, (block, &(stride, dilation))) in self.blocks.iter_mut().zip(&schedule).enumerate() {
            block
                .depthwise
                .set_geometry(stride, dilation, ConvPadding::TfSame);
            let (cin, cout) = (
                config.channels(CHANNELS[i]),
                config.channels(CHANNELS[i + 1]),
            );
            block.residual = stride == 1 && cin == cout;
        }
        self.config = config;
        Ok(())
    }

    /// Channel counts of the feature maps (24, 32, 96, 320 at depth multiplier 1).
    pub fn feature_channels(&self) -> FeatureChannels {
        let c = |i: usize| self.config.channels(CHANNELS[i + 1]);
        FeatureChannels {
            stride4: c(TAPS[0]),
            stride8: c(TAPS[1]),
            stride16: c(TAPS[2]),
            stride32: c(TAPS[3]),
        }
    }

    /// Features of an `N x 3 x H x W` batch after `layer.1`, `layer.4`, `layer.11` and `layer.15`; see
    /// [`BackboneFeatures`]. `train`: batch norms use batch statistics and update their running averages.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<BackboneFeatures> {
        if train {
            // A training forward moves the batch-norm statistics the NHWC layers were folded from.
            self.nhwc.reset();
        } else if let Some(layers) = self.nhwc_layers(x)? {
            let (mut taps, last) = self.taps_nhwc(x, &layers, true)?;
            taps.push(last.to_nchw()?);
            return BackboneFeatures::from_taps(taps);
        }
        let mut h = self.first_conv.forward_t(x, train)?;
        h = self.stem_block.forward_t(&h, train)?;
        let mut taps = Vec::with_capacity(4);
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward_t(&h, train)?;
            if TAPS.contains(&i) {
                taps.push(h.clone());
            }
        }
        BackboneFeatures::from_taps(taps)
    }
}

impl MobileNetV2 {
    /// The blocks' NHWC layers when inference on `x` can run in NHWC (enabled, a CPU f32 batch, every
    /// block all constants), built on the first call.
    fn nhwc_layers(&self, x: &Tensor) -> Result<Option<Arc<NhwcLayers>>> {
        if !nhwc::enabled() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.track_op() {
            return Ok(None);
        }
        self.nhwc.get_or_build(|| self.build_nhwc_layers())
    }

    /// Every layer's NHWC form, or `None` when one of them is not all constants.
    fn build_nhwc_layers(&self) -> Result<Option<NhwcLayers>> {
        let Some((w, shift)) = self.first_conv.constant_folded()? else {
            return Ok(None);
        };
        let first_conv = DenseConv::new(&w, &shift, self.first_conv.spec().activation.fused())?;
        let mut blocks = Vec::with_capacity(self.blocks.len() + 1);
        for block in std::iter::once(&self.stem_block).chain(&self.blocks) {
            match block.nhwc_layers()? {
                Some(l) => blocks.push(l),
                None => return Ok(None),
            }
        }
        Ok(Some(NhwcLayers { first_conv, blocks }))
    }

    /// The last feature map of [`MobileNetV2::features_t`] (`stride32`) alone: in eval mode on the
    /// NHWC path only that map goes back to NCHW (what a classifier or DeepLabV3 reads).
    pub fn last_features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            if let Some(last) = self.last_features_nhwc(x)? {
                return Ok(last.to_nchw()?);
            }
        }
        Ok(self.features_t(x, train)?.stride32)
    }

    /// [`MobileNetV2::last_features_t`] in eval mode as NHWC maps, for a caller that goes on in
    /// NHWC (a classifier's 1x1 widening convolution and pool); `None` when inference on `x` does not
    /// run in NHWC (disabled, not a CPU f32 batch, or a layer with variable weights).
    pub fn last_features_nhwc(&self, x: &Tensor) -> Result<Option<NhwcMaps>> {
        match self.nhwc_layers(x)? {
            Some(layers) => Ok(Some(self.taps_nhwc(x, &layers, false)?.1)),
            None => Ok(None),
        }
    }

    /// The feature taps in eval mode in NHWC: the stem convolution reads the NCHW batch and writes
    /// NHWC maps, the blocks run on those. Returns the taps before the last back in NCHW (none unless
    /// `all_taps`) and the last map in NHWC.
    fn taps_nhwc(
        &self,
        x: &Tensor,
        layers: &NhwcLayers,
        all_taps: bool,
    ) -> Result<(Vec<Tensor>, NhwcMaps)> {
        let (_, _, height, width) = x.dims4()?;
        let spec = self.first_conv.spec();
        let stem = layers.first_conv.forward_nchw(
            x,
            spec.stride,
            spec.dilation,
            spec.padding_on(height, width),
        )?;
        let mut h = self.stem_block.forward_nhwc(&layers.blocks[0], &stem)?;
        let mut taps = Vec::with_capacity(3);
        let last = self.blocks.len().saturating_sub(1);
        for (i, (block, block_layers)) in self.blocks.iter().zip(&layers.blocks[1..]).enumerate() {
            h = block.forward_nhwc(block_layers, &h)?;
            if all_taps && i != last && TAPS.contains(&i) {
                taps.push(h.to_nchw()?);
            }
        }
        Ok((taps, h))
    }
}

impl ModuleT for MobileNetV2 {
    /// The last feature map of [`MobileNetV2::features_t`] (`stride32`, after `layer.15`).
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.last_features_t(xs, train)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::BuildState;

    #[test]
    fn make_divisible_matches_tensorflow_rounding() {
        assert_eq!(make_divisible(32.0, 8, 8), 32);
        assert_eq!(make_divisible(96.0, 8, 8), 96);
        assert_eq!(make_divisible(3.0, 8, 8), 8);
        // 0.35 x 24 = 8.4 -> 8; 0.35 x 320 = 112; 0.75 x 24 = 18 -> 16 would lose > 10%? 16 >= 16.2 fails -> 24
        assert_eq!(make_divisible((24.0f64 * 0.35).round(), 8, 8), 8);
        assert_eq!(make_divisible(18.0, 8, 8), 24);
        assert_eq!(make_divisible(20.0, 8, 8), 24);
    }

    #[test]
    fn depth_multiplier_scales_every_layer() {
        // mobilenet_v2_0.35_96: stem 16, taps 8/16/32/112 channels, head kept at 1280.
        let cfg = MobileNetV2Config {
            depth_multiplier: 0.35,
            ..Default::default()
        };
        let vb = VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        let net = MobileNetV2::new(vb, cfg).unwrap();
        assert_eq!(cfg.channels(32), 16);
        let ch = net.feature_channels();
        assert_eq!(
            (ch.stride4, ch.stride8, ch.stride16, ch.stride32),
            (8, 16, 32, 112)
        );
        assert_eq!(cfg.head_channels(), 1280);
        let wide = MobileNetV2Config {
            depth_multiplier: 1.4,
            ..Default::default()
        };
        assert_eq!(
            (wide.channels(32), wide.channels(320), wide.head_channels()),
            (48, 448, 1792)
        );
        let x = candle_core::Tensor::zeros(
            (1, 3, 32, 32),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            net.features_t(&x, false).unwrap().stride32.dims(),
            &[1, 112, 1, 1]
        );
    }

    #[test]
    fn output_stride_is_validated() {
        let cfg = MobileNetV2Config::default().with_output_stride(4);
        let vb = VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        let err = MobileNetV2::new(vb, cfg).unwrap_err().to_string();
        assert!(err.contains("output stride 4"), "{err}");
    }

    /// Constant weights: every tensor of a freshly built network replaced by seeded values (running
    /// variances and batch-norm weights positive).
    fn constant_weights(config: MobileNetV2Config, seed: u64) -> MobileNetV2 {
        use candle_core::Device;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        MobileNetV2::new(vb, config).unwrap();
        let tensors = crate::seeded_constants(&varmap, seed);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        MobileNetV2::new(vb, config).unwrap()
    }

    /// The NHWC inference path gives the NCHW path's features (to rounding), at output stride 32
    /// and dilated at 8 (odd input sizes: TF "SAME" puts the odd padding pixel bottom/right).
    #[test]
    fn nhwc_inference_matches_the_nchw_path() {
        let _switch = crate::NHWC_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let mut net = constant_weights(MobileNetV2Config::default(), 3);
        let x = Tensor::rand(-1f32, 1f32, (2, 3, 45, 37), &candle_core::Device::Cpu).unwrap();
        for stride in [32, 8] {
            net.set_output_stride(stride).unwrap();
            voc_tensor::nhwc::set_enabled(false);
            let nchw = net.features_t(&x, false).unwrap();
            voc_tensor::nhwc::set_enabled(true);
            let nhwc = net.features_t(&x, false).unwrap();
            assert!(matches!(*net.nhwc.state(), BuildState::Ready(_)));
            let last = net.last_features_t(&x, false).unwrap();
            let max_diff = voc_tensor::testing::max_abs_diff(&last, &nhwc.stride32).unwrap();
            assert_eq!(max_diff, 0.0, "stride {stride}: the last map alone differs");
            for (a, b) in [
                (&nhwc.stride4, &nchw.stride4),
                (&nhwc.stride8, &nchw.stride8),
                (&nhwc.stride16, &nchw.stride16),
                (&nhwc.stride32, &nchw.stride32),
            ] {
                assert_eq!(a.dims(), b.dims());
                let (a, b) = (
                    a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                // The blocks give the NCHW path's values exactly (voc-tensor's tests); the stem sums
                // in another order than the gemm library, which moves the features by rounding.
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
                assert!(
                    diff <= 1e-4 * scale.max(1.0),
                    "stride {stride}: differ by {diff}"
                );
            }
        }
        // A training forward drops the layers (its batch statistics move the folded shifts).
        net.features_t(&x, true).unwrap();
        assert!(matches!(*net.nhwc.state(), BuildState::Unbuilt));
    }

    /// Variable weights (training, fine-tuning) keep the NCHW path.
    #[test]
    fn variable_weights_keep_the_nchw_path() {
        let _switch = crate::NHWC_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &candle_core::Device::Cpu);
        let net = MobileNetV2::new(vb, MobileNetV2Config::default()).unwrap();
        let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &candle_core::Device::Cpu).unwrap();
        net.features_t(&x, false).unwrap();
        assert!(matches!(*net.nhwc.state(), BuildState::Unavailable));
    }
}
