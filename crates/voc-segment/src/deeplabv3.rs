//! DeepLabV3 on MobileNetV2 in the transformers layout (`google/deeplabv3_mobilenet_v2_1.0_513`).
//!
//! The head is the "mobile" DeepLabV3 of the MobileNetV2 paper: an image-pooling branch (global average
//! -> 1x1 conv -> broadcast back) and a 1x1 branch on the last backbone features, concatenated, projected
//! to 256 channels, then a 1x1 classifier. No atrous branches. Logits come out at the output stride; the
//! model was trained to be upsampled with `align_corners=True` (see [`DeepLabV3::logits_at`]).
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use voc_classify::layers::{Activation, ConvNormAct, ConvSpec, NormSpec};
use voc_classify::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use voc_tensor::ops::resize_bilinear;

use crate::error::{Result, SegmentError};
use crate::head;

/// Architecture parameters of [`DeepLabV3`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepLabV3Config {
    /// The backbone, including the output stride (16 for the pretrained model; 8 works too).
    pub backbone: MobileNetV2Config,
    /// Batch norm of the head (eps 1e-5, PyTorch's default, unlike the backbone's 1e-3).
    pub head_norm: NormSpec,
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
    /// Builds the network; `vb` is the root of the weight names.
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

    /// Builds the network from named tensors as constants (inference), failing with a name report when
    /// they are not exactly this architecture's.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        source: &str,
        config: DeepLabV3Config,
        device: &Device,
    ) -> Result<Self> {
        head::load_frozen(tensors, source, "deeplabv3_mobilenet_v2", device, |vb| {
            Self::new(vb, config)
        })
    }

    /// Builds the network on trainable variables in `varmap`, initialised from named tensors.
    pub fn trainable_from_tensors(
        varmap: &VarMap,
        tensors: HashMap<String, Tensor>,
        source: &str,
        config: DeepLabV3Config,
        device: &Device,
    ) -> Result<Self> {
        head::load_trainable(
            varmap,
            tensors,
            source,
            "deeplabv3_mobilenet_v2",
            device,
            |vb| Self::new(vb, config),
        )
    }

    pub fn config(&self) -> &DeepLabV3Config {
        &self.config
    }

    pub fn backbone(&self) -> &MobileNetV2 {
        &self.backbone
    }

    pub fn output_stride(&self) -> usize {
        self.config.backbone.output_stride
    }

    /// Switches between output stride 16 and 8 (or 32) without touching the weights.
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        self.backbone.set_output_stride(output_stride)?;
        self.config.backbone.output_stride = output_stride;
        Ok(())
    }

    /// Logits `N x classes x h x w` at the output stride: `h = ceil(H / output_stride)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.backbone.features_t(x, train)?.stride32;
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
