//! DeepLabV3 on MobileNetV2 in the transformers layout (`google/deeplabv3_mobilenet_v2_1.0_513`).
//!
//! The head is the "mobile" DeepLabV3 of the MobileNetV2 paper: an image-pooling branch (global average
//! -> 1x1 conv -> broadcast back) and a 1x1 branch on the last backbone features, concatenated, projected
//! to 256 channels, then a 1x1 classifier. No atrous branches. Logits come out at the output stride; the
//! model was trained to be upsampled with `align_corners=True` (see [`DeepLabV3::logits_at`]).
use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;
use voc_classify::layers::{Activation, ConvNormAct, ConvSpec, NormSpec};
use voc_classify::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use voc_classify::weights::FromWeights;
use voc_tensor::ops::resize_bilinear;

use crate::error::{Result, SegmentError};
use crate::head;

/// The architecture name of [`DeepLabV3`] (weight reports, checkpoints' `architecture`).
pub const DEEPLABV3_ARCH: &str = "deeplabv3_mobilenet_v2";

/// Architecture parameters of [`DeepLabV3`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepLabV3Config {
    /// The backbone, including the output stride (16 for the pretrained model; 8 works too).
    pub backbone: MobileNetV2Config,
    /// Batch norm of the head (eps 1e-5, PyTorch's default, unlike the backbone's 1e-3).
    pub head_norm: NormSpec,
    /// Output channels of the classifier: 21 for VOC (background and the 20 classes).
    pub num_classes: usize,
    /// Channels of every head branch.
    pub head_channels: usize,
    /// Probability of zeroing whole channels before the classifier in training mode; 0 disables it.
    pub dropout: f32,
}

impl Default for DeepLabV3Config {
    fn default() -> Self {
        Self {
            backbone: MobileNetV2Config::default().with_output_stride(16),
            head_norm: NormSpec {
                eps: 1e-5,
                momentum: 0.1,
            },
            num_classes: 21,
            head_channels: 256,
            dropout: 0.0,
        }
    }
}

/// MobileNetV2 backbone (`mobilenet_v2.*`) + DeepLabV3 head (`segmentation_head.*`).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use voc_segment::{DeepLabV3, DeepLabV3Config};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let mut net = DeepLabV3::new(vb, DeepLabV3Config::default())?; // output stride 16, 21 classes
/// let x = Tensor::zeros((1, 3, 33, 33), DType::F32, &Device::Cpu)?;
/// assert_eq!(net.forward_t(&x, false)?.dims(), [1, 21, 3, 3]); // ceil(33 / 16)
/// assert_eq!(net.logits_at(&x, 33, 33, false)?.dims(), [1, 21, 33, 33]);
/// net.set_output_stride(8)?;
/// assert_eq!(net.forward_t(&x, false)?.dims(), [1, 21, 5, 5]);
/// # Ok::<(), voc_segment::SegmentError>(())
/// ```
#[derive(Debug, Clone)]
pub struct DeepLabV3 {
    backbone: MobileNetV2,
    conv_pool: ConvNormAct,
    conv_aspp: ConvNormAct,
    conv_projection: ConvNormAct,
    classifier: ConvNormAct,
    config: DeepLabV3Config,
}

impl DeepLabV3 {
    /// Builds the network; `vb` is the root of the weight names. No classes or head channels, or a bad
    /// backbone config, is a bad-argument error.
    pub fn new(vb: VarBuilder, config: DeepLabV3Config) -> Result<Self> {
        if config.num_classes == 0 || config.head_channels == 0 {
            return Err(SegmentError::BadArgument(
                "DeepLabV3 needs classes and head channels".into(),
            ));
        }
        let backbone = MobileNetV2::new(vb.pp("mobilenet_v2"), config.backbone)?;
        let features = backbone.feature_channels().stride32;
        let (norm, c) = (config.head_norm, config.head_channels);
        let head = vb.pp("segmentation_head");
        let conv_bn_relu = |name: &str, cin: usize| {
            ConvNormAct::transformers(
                head.pp(name),
                ConvSpec::conv_bn(cin, c, 1, norm, Activation::Relu),
            )
        };
        let conv_pool = conv_bn_relu("conv_pool", features)?;
        let conv_aspp = conv_bn_relu("conv_aspp", features)?;
        let conv_projection = conv_bn_relu("conv_projection", 2 * c)?;
        let classifier = head::classifier(head.pp("classifier"), c, config.num_classes, norm)?;
        Ok(Self {
            backbone,
            conv_pool,
            conv_aspp,
            conv_projection,
            classifier,
            config,
        })
    }

    /// The configuration, with the current output stride.
    pub fn config(&self) -> &DeepLabV3Config {
        &self.config
    }

    /// The MobileNetV2 feature extractor.
    pub fn backbone(&self) -> &MobileNetV2 {
        &self.backbone
    }

    /// The current output stride (16 as trained, or 8).
    pub fn output_stride(&self) -> usize {
        self.config.backbone.output_stride
    }

    /// Switches between output stride 16 and 8 (or 32) without touching the weights; any other value is
    /// a bad-argument error.
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        self.backbone.set_output_stride(output_stride)?;
        self.config.backbone.output_stride = output_stride;
        Ok(())
    }

    /// Logits `N x classes x h x w` at the output stride for an `N x 3 x H x W` batch:
    /// `h = ceil(H / output_stride)`. `train`: batch norms use batch statistics, dropout is on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_modes(x, train, train)
    }

    /// [`Self::forward_t`] with the backbone's and the head's modes apart: a pretrained backbone keeps
    /// its batch norms frozen (`backbone_train == false`) while a new head learns batch statistics
    /// (`train`, which also turns dropout on).
    pub fn forward_modes(&self, x: &Tensor, backbone_train: bool, train: bool) -> Result<Tensor> {
        let features = self.backbone.last_features_t(x, backbone_train)?;
        let pooled =
            head::image_pool(&self.conv_pool, &features, self.config.head_channels, train)?;
        let aspp = self.conv_aspp.forward_t(&features, train)?;
        let mut y = self
            .conv_projection
            .forward_t(&Tensor::cat(&[&pooled, &aspp], 1)?, train)?;
        if train && self.config.dropout > 0.0 {
            y = head::dropout2d(&y, self.config.dropout)?;
        }
        Ok(self.classifier.forward_t(&y, train)?)
    }

    /// Logits upsampled to `out_h x out_w` bilinearly with `align_corners=True`, as the model was trained.
    pub fn logits_at(&self, x: &Tensor, out_h: usize, out_w: usize, train: bool) -> Result<Tensor> {
        let logits = self.forward_t(x, train)?;
        Ok(resize_bilinear(&logits, out_h, out_w, true)?)
    }
}

impl FromWeights for DeepLabV3 {
    type Config = DeepLabV3Config;
    type Error = SegmentError;

    fn architecture(_: &DeepLabV3Config) -> &'static str {
        DEEPLABV3_ARCH
    }

    fn build(vb: VarBuilder, config: DeepLabV3Config) -> Result<Self> {
        Self::new(vb, config)
    }
}

impl ModuleT for DeepLabV3 {
    /// [`DeepLabV3::forward_t`]: logits at the output stride.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(DeepLabV3::forward_t(self, xs, train)?)
    }
}
