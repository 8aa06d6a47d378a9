//! DeepLabV3+ on the MobileNetV2 backbone (the project's own layout, `decode_head.*`; see the crate README).
//!
//! ASPP on the last backbone features (a 1x1 branch, three 3x3 atrous branches, image pooling), projected
//! to 256 channels, upsampled to the stride-4 features (`mobilenet_v2.layer.1`), concatenated with a
//! 48-channel 1x1 reduction of those, two 3x3 convs, a 1x1 classifier, and a bilinear upsampling to the
//! input size. Every resize here uses `align_corners=False`.
use std::collections::HashMap;

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use voc_classify::layers::{Activation, ConvNormAct, ConvPadding, ConvSpec, NormSpec};
use voc_classify::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use voc_classify::weights::FromWeights;
use voc_tensor::ops::resize_bilinear;

use crate::error::{Result, SegmentError};
use crate::head;

/// The architecture name of [`DeepLabV3Plus`] (weight reports, checkpoints' `architecture`).
pub const DEEPLABV3PLUS_ARCH: &str = "deeplabv3plus_mobilenet_v2";

/// Architecture parameters of [`DeepLabV3Plus`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepLabV3PlusConfig {
    /// The backbone, including the output stride (16 by default).
    pub backbone: MobileNetV2Config,
    /// Batch norm of the decoder head (eps 1e-5).
    pub head_norm: NormSpec,
    /// Output channels of the classifier: 21 for VOC (background and the 20 classes).
    pub num_classes: usize,
    /// Dilations of the three atrous branches at output stride 16; at output stride 8 they are doubled,
    /// so each branch keeps its field of view in input pixels.
    pub atrous_rates: [usize; 3],
    /// Channels of every ASPP branch, the projection and the decoder convs.
    pub aspp_channels: usize,
    /// Channels the stride-4 features are reduced to before the concatenation.
    pub low_level_channels: usize,
    /// Channel dropout before the classifier in training mode; 0 disables it.
    pub dropout: f32,
    /// The ASPP's 1x1 and pooling branches and its projection come from a pretrained DeepLabV3 head
    /// (folded batch norms): they keep eval-mode batch norm while the rest of the decoder trains with
    /// batch statistics.
    pub pretrained_aspp: bool,
}

impl Default for DeepLabV3PlusConfig {
    fn default() -> Self {
        Self {
            backbone: MobileNetV2Config::default().with_output_stride(16),
            head_norm: NormSpec {
                eps: 1e-5,
                momentum: 0.1,
            },
            num_classes: 21,
            atrous_rates: [6, 12, 18],
            aspp_channels: 256,
            low_level_channels: 48,
            dropout: 0.0,
            pretrained_aspp: false,
        }
    }
}

impl DeepLabV3PlusConfig {
    fn rates_at(&self, output_stride: usize) -> [usize; 3] {
        self.atrous_rates.map(|r| (r * 16 / output_stride).max(1))
    }
}

/// MobileNetV2 backbone (`mobilenet_v2.*`) + DeepLabV3+ decoder (`decode_head.*`).
///
/// Started from a DeepLabV3's tensors (here a fresh one's; usually the pretrained file's), the backbone
/// comes from them and the decoder is new:
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use voc_segment::{DeepLabV3, DeepLabV3Plus, DeepLabV3PlusConfig};
///
/// let device = Device::Cpu;
/// let deeplabv3 = VarMap::new();
/// DeepLabV3::new(VarBuilder::from_varmap(&deeplabv3, DType::F32, &device), Default::default())?;
/// let tensors: HashMap<String, Tensor> = deeplabv3.data().lock().unwrap().iter()
///     .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
///     .collect();
/// let varmap = VarMap::new();
/// let config = DeepLabV3PlusConfig::default();
/// let net = DeepLabV3Plus::trainable_with_backbone(&varmap, tensors, "deeplabv3", config, &device)?;
/// let x = Tensor::randn(0f32, 1.0, (2, 3, 48, 40), &device)?;
/// assert_eq!(net.forward_t(&x, true)?.dims(), [2, 21, 48, 40]); // logits at the input size
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct DeepLabV3Plus {
    backbone: MobileNetV2,
    aspp_1x1: ConvNormAct,
    aspp_atrous: Vec<ConvNormAct>,
    aspp_pool: ConvNormAct,
    aspp_projection: ConvNormAct,
    low_level: ConvNormAct,
    decoder: [ConvNormAct; 2],
    classifier: ConvNormAct,
    config: DeepLabV3PlusConfig,
}

impl DeepLabV3Plus {
    /// Builds the network; `vb` is the root of the weight names. No classes or channels, or a bad
    /// backbone config, is a bad-argument error.
    pub fn new(vb: VarBuilder, config: DeepLabV3PlusConfig) -> Result<Self> {
        if config.num_classes == 0 || config.aspp_channels == 0 || config.low_level_channels == 0 {
            return Err(SegmentError::BadArgument(
                "DeepLabV3+ needs classes and channels".into(),
            ));
        }
        let backbone = MobileNetV2::new(vb.pp("mobilenet_v2"), config.backbone)?;
        let channels = backbone.feature_channels();
        let (norm, c) = (config.head_norm, config.aspp_channels);
        let head = vb.pp("decode_head");
        let conv = |vb: VarBuilder, cin: usize, cout: usize, kernel: usize, dilation: usize| {
            ConvNormAct::transformers(
                vb,
                ConvSpec::conv_bn(cin, cout, kernel, norm, Activation::Relu)
                    .dilation(dilation)
                    .padding(ConvPadding::Symmetric(dilation * (kernel - 1) / 2)),
            )
        };
        let rates = config.rates_at(config.backbone.output_stride);
        let aspp_atrous = rates
            .iter()
            .enumerate()
            .map(|(i, &rate)| conv(head.pp("aspp_atrous").pp(i), channels.stride32, c, 3, rate))
            .collect::<voc_classify::Result<Vec<_>>>()?;
        Ok(Self {
            aspp_1x1: conv(head.pp("aspp_1x1"), channels.stride32, c, 1, 1)?,
            aspp_atrous,
            aspp_pool: conv(head.pp("aspp_pool"), channels.stride32, c, 1, 1)?,
            aspp_projection: conv(head.pp("aspp_projection"), 5 * c, c, 1, 1)?,
            low_level: conv(
                head.pp("low_level"),
                channels.stride4,
                config.low_level_channels,
                1,
                1,
            )?,
            decoder: [
                conv(
                    head.pp("decoder").pp(0),
                    c + config.low_level_channels,
                    c,
                    3,
                    1,
                )?,
                conv(head.pp("decoder").pp(1), c, c, 3, 1)?,
            ],
            classifier: head::classifier(head.pp("classifier"), c, config.num_classes, norm)?,
            backbone,
            config,
        })
    }

    /// Builds the network on trainable variables in `varmap` with a pretrained backbone: every
    /// `mobilenet_v2.*` tensor comes from `tensors` (names checked; other tensors there, such as a
    /// DeepLabV3 or ImageNet head, are ignored) and the decoder starts from a fresh initialisation.
    /// Tensors without a complete MobileNetV2 backbone are an error naming `source` and what differs.
    pub fn trainable_with_backbone(
        varmap: &VarMap,
        tensors: HashMap<String, Tensor>,
        source: &str,
        config: DeepLabV3PlusConfig,
        device: &Device,
    ) -> Result<Self> {
        Self::trainable_with_prefix(varmap, tensors, "mobilenet_v2.", source, config, device)
    }

    /// The configuration, with the current output stride.
    pub fn config(&self) -> &DeepLabV3PlusConfig {
        &self.config
    }

    /// The MobileNetV2 feature extractor.
    pub fn backbone(&self) -> &MobileNetV2 {
        &self.backbone
    }

    /// The current output stride (16 or 8).
    pub fn output_stride(&self) -> usize {
        self.config.backbone.output_stride
    }

    /// Switches the output stride (16 or 8) without touching the weights; the atrous rates follow. A
    /// value other than 8, 16 or 32 is a bad-argument error.
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        self.backbone.set_output_stride(output_stride)?;
        self.config.backbone.output_stride = output_stride;
        for (branch, rate) in self
            .aspp_atrous
            .iter_mut()
            .zip(self.config.rates_at(output_stride))
        {
            branch.set_geometry(1, rate, ConvPadding::Symmetric(rate));
        }
        Ok(())
    }

    /// Logits `N x classes x H x W` at the input size for an `N x 3 x H x W` batch. `train`: batch norms
    /// use batch statistics, dropout is on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_modes(x, train, train)
    }

    /// [`Self::forward_t`] with the backbone's and the decoder's modes apart: a pretrained backbone
    /// keeps its batch norms frozen (`backbone_train == false`) while a new decoder learns batch
    /// statistics (`head_train`, which also turns dropout on).
    pub fn forward_modes(&self, x: &Tensor, backbone_train: bool, train: bool) -> Result<Tensor> {
        let (_, _, in_h, in_w) = x.dims4()?;
        let features = self.backbone.features_t(x, backbone_train)?;
        let high = &features.stride32;
        let aspp_train = train && !self.config.pretrained_aspp;
        let mut branches = vec![self.aspp_1x1.forward_t(high, aspp_train)?];
        for atrous in &self.aspp_atrous {
            branches.push(atrous.forward_t(high, train)?);
        }
        branches.push(head::image_pool(
            &self.aspp_pool,
            high,
            self.config.aspp_channels,
            aspp_train,
        )?);
        let aspp = self
            .aspp_projection
            .forward_t(&Tensor::cat(&branches, 1)?, aspp_train)?;

        let (_, _, low_h, low_w) = features.stride4.dims4()?;
        let aspp = resize_bilinear(&aspp, low_h, low_w, false)?;
        let low = self.low_level.forward_t(&features.stride4, train)?;
        let mut y = Tensor::cat(&[&aspp, &low], 1)?;
        for conv in &self.decoder {
            y = conv.forward_t(&y, train)?;
        }
        if train && self.config.dropout > 0.0 {
            y = head::dropout2d(&y, self.config.dropout)?;
        }
        let logits = self.classifier.forward_t(&y, train)?;
        Ok(resize_bilinear(&logits, in_h, in_w, false)?)
    }
}

impl FromWeights for DeepLabV3Plus {
    type Config = DeepLabV3PlusConfig;
    type Error = SegmentError;

    fn architecture(_: &DeepLabV3PlusConfig) -> &'static str {
        DEEPLABV3PLUS_ARCH
    }

    fn build(vb: VarBuilder, config: DeepLabV3PlusConfig) -> Result<Self> {
        Self::new(vb, config)
    }
}

impl ModuleT for DeepLabV3Plus {
    /// [`DeepLabV3Plus::forward_t`]: logits at the input size.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(DeepLabV3Plus::forward_t(self, xs, train)?)
    }
}
