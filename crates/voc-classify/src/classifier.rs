//! Backbone + 1x1 widening convolution + global average pool + linear layer: the ImageNet classifiers,
//! and the same network with a new head for VOC's 20 labels.
use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;
use voc_tensor::nhwc::PointwiseConv;

use crate::backbone::Backbone;
use crate::efficientnet::{EfficientNetLite, EfficientNetLiteConfig, LITE_HEAD_CHANNELS};
use crate::error::{ClassifyError, Result};
use crate::head::{Head, HeadKind};
use crate::layers::{self, Activation, BuiltOnce, ConvNormAct, ConvSpec, NormAct};
use crate::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use crate::resnet::{ResNet, ResNetConfig, ResNetVariant};
use crate::vgg::{Vgg16, VggConfig, VggPreLogits, VGG_FEATURES};
use crate::weights::FromWeights;

/// Which backbone, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClassifierArch {
    /// transformers names: `mobilenet_v2.*` (the head's conv is `mobilenet_v2.conv_1x1`), `classifier.*`.
    MobileNetV2(MobileNetV2Config),
    /// timm names: `conv_stem`, `bn1`, `blocks.*`, `conv_head`, `bn2`, `classifier.*`.
    EfficientNetLite0(EfficientNetLiteConfig),
    /// timm names: ResNet-50 `conv1`, `bn1`, `layer1..4.*`; ResNetV2-50 `stem.conv`, `stages.*`,
    /// `norm`; then `classifier.*` (timm's `fc` / `head.fc`, renamed on loading: see
    /// [`ClassifierArch::adapt_hub_tensors`]).
    ResNet(ResNetConfig),
    /// timm names: `features.N`, `pre_logits.fc{1,2}`, then `classifier.*` (timm's `head.fc`).
    Vgg16(VggConfig),
}

impl ClassifierArch {
    /// The architecture's name (`mobilenet_v2`, `efficientnet_lite0`): weight-mismatch reports and, with
    /// `_classifier`, a checkpoint's `architecture`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MobileNetV2(_) => "mobilenet_v2",
            Self::EfficientNetLite0(_) => "efficientnet_lite0",
            Self::ResNet(c) => match c.variant {
                ResNetVariant::V1 => "resnet50",
                ResNetVariant::V2 => "resnet50v2",
            },
            Self::Vgg16(_) => "vgg16",
        }
    }

    /// The names (and shapes) of a hub weights file made voc's: timm's ResNet head `fc.*` and the
    /// ResNetV2/VGG head `head.fc.*` become `classifier.*`, ResNetV2's 1x1-conv head weight
    /// (`C x F x 1 x 1`) a linear one (`C x F`). Other architectures' files already use voc's names.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use candle_core::{DType, Device, Tensor};
    /// use voc_classify::{ClassifierArch, ResNetConfig};
    /// let w = Tensor::zeros((1000, 2048, 1, 1), DType::F32, &Device::Cpu)?;
    /// let b = Tensor::zeros(1000, DType::F32, &Device::Cpu)?;
    /// let hub = HashMap::from([("head.fc.weight".to_string(), w), ("head.fc.bias".to_string(), b)]);
    /// let ours = ClassifierArch::ResNet(ResNetConfig::RESNETV2_50).adapt_hub_tensors(hub)?;
    /// assert_eq!(ours["classifier.weight"].dims(), [1000, 2048]);
    /// assert!(ours.contains_key("classifier.bias"));
    /// # Ok::<(), voc_classify::ClassifyError>(())
    /// ```
    pub fn adapt_hub_tensors(
        &self,
        tensors: std::collections::HashMap<String, Tensor>,
    ) -> Result<std::collections::HashMap<String, Tensor>> {
        let head_prefix = match self {
            Self::MobileNetV2(_) | Self::EfficientNetLite0(_) => return Ok(tensors),
            Self::ResNet(c) if c.variant == ResNetVariant::V1 => "fc.",
            Self::ResNet(_) | Self::Vgg16(_) => "head.fc.",
        };
        tensors
            .into_iter()
            .map(|(name, tensor)| match name.strip_prefix(head_prefix) {
                Some(rest) => {
                    let tensor = match tensor.dims() {
                        &[out, inp, 1, 1] => tensor.reshape((out, inp))?,
                        _ => tensor,
                    };
                    Ok((format!("classifier.{rest}"), tensor))
                }
                None => Ok((name, tensor)),
            })
            .collect()
    }
}

/// What runs between the backbone's last feature map and the global pool.
#[derive(Debug, Clone)]
enum Neck {
    /// MobileNetV2's / EfficientNet-Lite's 1x1 widening convolution (to 1280 channels).
    Conv(ConvNormAct),
    /// ResNetV2's final batch norm + ReLU (`norm`).
    Norm(NormAct),
    /// VGG16's `pre_logits` (the old fully connected layers as convolutions).
    VggMlp(Box<VggPreLogits>),
    /// Nothing: ResNet-50 pools its last stage directly.
    Identity,
}

impl Neck {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Conv(c) => c.forward_t(x, train),
            Self::Norm(n) => n.forward_t(x, train),
            Self::VggMlp(m) => m.forward_t(x, train),
            Self::Identity => Ok(x.clone()),
        }
    }
}

/// A classifier: architecture, number of outputs, dropout before the last layer (training only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierConfig {
    /// The backbone and its parameters.
    pub arch: ClassifierArch,
    /// Outputs of the last linear layer (1001 or 1000 for the ImageNet presets, 20 for VOC).
    pub num_classes: usize,
    /// Probability of zeroing a feature before the head's last layer in training mode; 0 disables it.
    pub dropout: f32,
    /// The head on the pooled features (the pretrained presets: [`HeadKind::Linear`]).
    pub head: HeadKind,
}

/// A backbone with a global-pooling classification head.
///
/// Built candle-style from a [`VarBuilder`] (fresh variables of a `VarMap` here; pretrained tensors
/// through [`FromWeights`] or [`crate::ModelPreset::load`]), and a [`ModuleT`]:
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use voc_classify::{ClassifierArch, ClassifierConfig, HeadKind, ImageClassifier, MobileNetV2Config};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let config = ClassifierConfig {
///     arch: ClassifierArch::MobileNetV2(MobileNetV2Config::default()),
///     num_classes: 20,
///     dropout: 0.2,
///     head: HeadKind::Linear,
/// };
/// let net = ImageClassifier::new(vb, config)?;
/// let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu)?;
/// assert_eq!(net.forward_t(&x, false)?.dims(), [2, 20]); // logits
/// assert_eq!(net.pooled_t(&x, false)?.dims(), [2, net.num_features()]); // 1280 pooled features
/// assert!(ImageClassifier::new(VarBuilder::zeros(DType::F32, &Device::Cpu),
///                              ClassifierConfig { num_classes: 0, ..config }).is_err());
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ImageClassifier {
    backbone: Backbone,
    neck: Neck,
    num_features: usize,
    head: Head,
    config: ClassifierConfig,
    /// The widening convolution's NHWC form (none without a widening 1x1 convolution of constant
    /// weights).
    neck_nhwc: BuiltOnce<PointwiseConv>,
}

/// Feature maps at least this wide pool through candle (whose sums over such rows run in vector
/// lanes, an order [`voc_tensor::nhwc::NhwcMaps::mean_of_row_means`] does not reproduce).
const NHWC_POOL_MAX_WIDTH: usize = 31;

impl ImageClassifier {
    /// Builds the network; `vb` is the root of the weight names. No classes, a dropout outside `[0, 1)`
    /// or a bad backbone config is a [`ClassifyError::BadArgument`]; a `vb` without the tensors asked
    /// for is a candle error.
    pub fn new(vb: VarBuilder, config: ClassifierConfig) -> Result<Self> {
        if config.num_classes == 0 {
            return Err(ClassifyError::BadArgument(
                "a classifier needs at least one class".into(),
            ));
        }
        let (backbone, neck, features) = match config.arch {
            ClassifierArch::MobileNetV2(cfg) => {
                let net = MobileNetV2::new(vb.pp("mobilenet_v2"), cfg)?;
                let c_in = net.feature_channels().stride32;
                let c_out = cfg.head_channels();
                let head = ConvNormAct::transformers(
                    vb.pp("mobilenet_v2").pp("conv_1x1"),
                    ConvSpec::conv_bn(c_in, c_out, 1, cfg.norm, Activation::Relu6),
                )?;
                (
                    Backbone::MobileNetV2(Box::new(net)),
                    Neck::Conv(head),
                    c_out,
                )
            }
            ClassifierArch::EfficientNetLite0(cfg) => {
                let net = EfficientNetLite::new(vb.clone(), cfg)?;
                let c_in = net.feature_channels().stride32;
                let head = ConvNormAct::new(
                    vb.pp("conv_head"),
                    vb.pp("bn2"),
                    ConvSpec::conv_bn(c_in, LITE_HEAD_CHANNELS, 1, cfg.norm, Activation::Relu6),
                )?;
                (
                    Backbone::EfficientNetLite(Box::new(net)),
                    Neck::Conv(head),
                    LITE_HEAD_CHANNELS,
                )
            }
            ClassifierArch::ResNet(cfg) => {
                let net = ResNet::new(vb.clone(), cfg)?;
                let channels = cfg.num_features();
                let neck = match cfg.variant {
                    ResNetVariant::V1 => Neck::Identity,
                    ResNetVariant::V2 => Neck::Norm(NormAct::new(
                        vb.pp("norm"),
                        channels,
                        cfg.norm,
                        Activation::Relu,
                    )?),
                };
                (Backbone::ResNet(Box::new(net)), neck, channels)
            }
            ClassifierArch::Vgg16(cfg) => {
                let net = Vgg16::new(vb.clone(), cfg)?;
                let c_in = net.feature_channels().stride32;
                let neck = Neck::VggMlp(Box::new(VggPreLogits::new(vb.pp("pre_logits"), c_in)?));
                (Backbone::Vgg16(Box::new(net)), neck, VGG_FEATURES)
            }
        };
        let head = Head::new(
            vb.pp("classifier"),
            config.head,
            features,
            config.num_classes,
            config.dropout,
        )?;
        Ok(Self {
            backbone,
            neck,
            num_features: features,
            head,
            config,
            neck_nhwc: BuiltOnce::default(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// The feature extractor.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Number of pooled features the last layer reads (1280 for MobileNetV2 and EfficientNet-Lite0,
    /// 2048 for the ResNets, 4096 for VGG16).
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// Pooled features `N x num_features`: the last feature map through the architecture's neck (the
    /// widening conv, ResNetV2's final norm, VGG's `pre_logits`), then global average pooling.
    ///
    /// In eval mode on a backbone whose inference runs in NHWC (MobileNetV2), the widening
    /// convolution and the pool run on its NHWC maps too: the same values, without turning 62 720
    /// values per image back to NCHW and pooling them through candle's reductions (together a tenth
    /// of a batch-1 inference).
    pub fn pooled_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = if train {
            // A training forward moves the batch-norm statistics the NHWC form was folded from.
            self.neck_nhwc.reset();
            self.backbone.last_features_t(x, true)?
        } else if let Some(maps) = self.backbone.last_features_nhwc(x)? {
            let neck = self.neck_nhwc.get_or_build(|| match &self.neck {
                Neck::Conv(conv) => conv.nhwc_pointwise(),
                _ => Ok(None),
            })?;
            match neck {
                Some(neck) if maps.dims().2 <= NHWC_POOL_MAX_WIDTH => {
                    return Ok(neck.forward(&maps, None)?.mean_of_row_means()?);
                }
                _ => maps.to_nchw()?,
            }
        } else {
            self.backbone.last_features_t(x, false)?
        };
        let h = self.neck.forward_t(&features, train)?;
        Ok(layers::global_avg_pool(&h)?.flatten_from(1)?)
    }

    /// The head on the pooled features.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Logits `N x num_classes` for an `N x 3 x H x W` batch normalised as the preset says. `train`:
    /// batch norms use batch statistics (and update their running averages), dropout is on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head.forward_t(&self.pooled_t(x, train)?, train)
    }
}

impl FromWeights for ImageClassifier {
    type Config = ClassifierConfig;
    type Error = ClassifyError;

    fn architecture(config: &ClassifierConfig) -> &'static str {
        config.arch.name()
    }

    fn build(vb: VarBuilder, config: ClassifierConfig) -> Result<Self> {
        Self::new(vb, config)
    }

    fn adapt_tensors(
        config: &ClassifierConfig,
        tensors: std::collections::HashMap<String, Tensor>,
    ) -> Result<std::collections::HashMap<String, Tensor>> {
        config.arch.adapt_hub_tensors(tensors)
    }
}

impl ModuleT for ImageClassifier {
    /// [`ImageClassifier::forward_t`]: logits `N x num_classes`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(ImageClassifier::forward_t(self, xs, train)?)
    }
}

/// One ranked class of a prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The class's output index (not serialised).
    #[serde(skip)]
    pub index: usize,
    /// The class's name.
    pub label: String,
    /// Its softmax probability.
    pub prob: f32,
}

/// The `k` most probable classes of one image's logits (`C` or `1 x C`), best first, with softmax
/// probabilities and the names of `class_names`. A name count that differs from the logit count is a
/// [`ClassifyError::BadArgument`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[[0.0f32, 2.0, 1.0]], &Device::Cpu)?;
/// let names = ["cat", "dog", "hotdog"].map(String::from);
/// let best = voc_classify::top_k(&logits, &names, 2)?;
/// assert_eq!((best[0].index, best[0].label.as_str(), best[1].label.as_str()), (1, "dog", "hotdog"));
/// assert!((best[0].prob - 0.665).abs() < 1e-3);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub fn top_k(logits: &Tensor, class_names: &[String], k: usize) -> Result<Vec<Prediction>> {
    let logits = logits.flatten_all()?;
    if logits.elem_count() != class_names.len() {
        return Err(ClassifyError::BadArgument(format!(
            "{} logits but {} class names",
            logits.elem_count(),
            class_names.len()
        )));
    }
    let probs: Vec<f32> =
        candle_nn::ops::softmax(&logits.to_dtype(candle_core::DType::F32)?, 0)?.to_vec1()?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    Ok(order
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            index: i,
            label: class_names[i].clone(),
            prob: probs[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::layers::BuildState;

    /// A MobileNetV2 classifier whose tensors are all constants (seeded; running variances and
    /// batch-norm weights positive).
    fn constant_mobilenet_v2(seed: u64) -> ImageClassifier {
        let config = ClassifierConfig {
            arch: ClassifierArch::MobileNetV2(MobileNetV2Config::default()),
            num_classes: 20,
            dropout: 0.0,
            head: HeadKind::Linear,
        };
        let varmap = candle_nn::VarMap::new();
        ImageClassifier::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            config,
        )
        .unwrap();
        let tensors = crate::seeded_constants(&varmap, seed);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        ImageClassifier::new(vb, config).unwrap()
    }

    /// In eval mode the widening convolution and the pool run on the backbone's NHWC maps and give,
    /// value for value, what candle's layers give on the same maps in NCHW.
    #[test]
    fn nhwc_neck_and_pool_match_the_nchw_layers() {
        let _switch = crate::NHWC_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let net = constant_mobilenet_v2(5);
        for (h, w) in [(64, 64), (45, 37), (224, 224)] {
            let x = Tensor::rand(-1f32, 1f32, (2, 3, h, w), &Device::Cpu).unwrap();
            let pooled = net.pooled_t(&x, false).unwrap();
            assert!(matches!(*net.neck_nhwc.state(), BuildState::Ready(_)));
            let features = net.backbone.last_features_t(&x, false).unwrap();
            let widened = net.neck.forward_t(&features, false).unwrap();
            let want = layers::global_avg_pool(&widened)
                .unwrap()
                .flatten_from(1)
                .unwrap();
            assert_eq!(pooled.dims(), want.dims());
            let (got, want) = (
                pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a == b, "{h}x{w}: feature {i} is {a}, the NCHW layers' {b}");
            }
        }
        // A training forward moves the batch-norm statistics: the NHWC form is built again after.
        net.pooled_t(
            &Tensor::rand(-1f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap(),
            true,
        )
        .unwrap();
        assert!(matches!(*net.neck_nhwc.state(), BuildState::Unbuilt));
    }
}
