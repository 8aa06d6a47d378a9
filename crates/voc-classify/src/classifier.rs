//! Backbone + 1x1 widening convolution + global average pool + linear layer: the ImageNet classifiers,
//! and the same network with a new head for VOC's 20 labels.
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::backbone::Backbone;
use crate::efficientnet::{EfficientNetLite, EfficientNetLiteConfig, LITE_HEAD_CHANNELS};
use crate::error::{ClassifyError, Result};
use crate::layers::{self, Activation, ConvNormAct, ConvSpec};
use crate::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use crate::weights::{self, Unexpected};

/// Which backbone, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClassifierArch {
    /// transformers names: `mobilenet_v2.*` (the head's conv is `mobilenet_v2.conv_1x1`), `classifier.*`.
    MobileNetV2(MobileNetV2Config),
    /// timm names: `conv_stem`, `bn1`, `blocks.*`, `conv_head`, `bn2`, `classifier.*`.
    EfficientNetLite0(EfficientNetLiteConfig),
}

impl ClassifierArch {
    pub fn name(&self) -> &'static str {
        match self {
            Self::MobileNetV2(_) => "mobilenet_v2",
            Self::EfficientNetLite0(_) => "efficientnet_lite0",
        }
    }
}

/// A classifier: architecture, number of outputs, dropout before the last layer (training only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierConfig {
    pub arch: ClassifierArch,
    pub num_classes: usize,
    /// Probability of zeroing a pooled feature in training mode; 0 disables it.
    pub dropout: f32,
}

/// A backbone with a global-pooling classification head.
#[derive(Debug, Clone)]
pub struct ImageClassifier {
    backbone: Backbone,
    head_conv: ConvNormAct,
    classifier: candle_nn::Linear,
    config: ClassifierConfig,
}

impl ImageClassifier {
    /// Builds the network; `vb` is the root of the weight names.
    pub fn new(vb: VarBuilder, config: ClassifierConfig) -> Result<Self> {
        if config.num_classes == 0 {
            return Err(ClassifyError::BadArgument(
                "a classifier needs at least one class".into(),
            ));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(ClassifyError::BadArgument(format!(
                "dropout {} is not in [0, 1)",
                config.dropout
            )));
        }
        let (backbone, head_conv, features) = match config.arch {
            ClassifierArch::MobileNetV2(cfg) => {
                let net = MobileNetV2::new(vb.pp("mobilenet_v2"), cfg)?;
                let c_in = net.feature_channels().stride32;
                let c_out = cfg.head_channels();
                let head = ConvNormAct::transformers(
                    vb.pp("mobilenet_v2").pp("conv_1x1"),
                    ConvSpec::conv_bn(c_in, c_out, 1, cfg.norm, Activation::Relu6),
                )?;
                (Backbone::MobileNetV2(Box::new(net)), head, c_out)
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
                    head,
                    LITE_HEAD_CHANNELS,
                )
            }
        };
        let classifier = layers::linear(vb.pp("classifier"), features, config.num_classes)?;
        Ok(Self {
            backbone,
            head_conv,
            classifier,
            config,
        })
    }

    /// Builds the network from named tensors as constants (inference), failing with a name report when
    /// they are not exactly this architecture's.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        source: &str,
        config: ClassifierConfig,
        device: &Device,
    ) -> Result<Self> {
        weights::load_frozen(
            tensors,
            source,
            config.arch.name(),
            Unexpected::Error,
            device,
            |vb| Self::new(vb, config),
        )
    }

    /// Builds the network on trainable variables in `varmap`, initialised from named tensors.
    pub fn trainable_from_tensors(
        varmap: &VarMap,
        tensors: HashMap<String, Tensor>,
        source: &str,
        config: ClassifierConfig,
        device: &Device,
    ) -> Result<Self> {
        weights::load_trainable(
            varmap,
            tensors,
            source,
            config.arch.name(),
            Unexpected::Error,
            device,
            |vb| Self::new(vb, config),
        )
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Number of pooled features the last layer reads (1280 for both pretrained models).
    pub fn num_features(&self) -> usize {
        self.head_conv.spec().out_channels
    }

    /// Pooled features `N x num_features` (after the widening conv, ReLU6 and global average pooling).
    pub fn pooled_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.backbone.features_t(x, train)?;
        let h = self.head_conv.forward_t(&features.stride32, train)?;
        Ok(layers::global_avg_pool(&h)?.flatten_from(1)?)
    }

    /// Logits `N x num_classes` for an `N x 3 x H x W` batch normalised as the preset says.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut pooled = self.pooled_t(x, train)?;
        if train && self.config.dropout > 0.0 {
            pooled = candle_nn::ops::dropout(&pooled, self.config.dropout)?;
        }
        layers::linear_forward(&self.classifier, &pooled)
    }
}

/// One ranked class of a prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    #[serde(skip)]
    pub index: usize,
    pub label: String,
    pub prob: f32,
}

/// The `k` most probable classes of one image's logits (`C` or `1 x C`), best first, with softmax
/// probabilities and the names of `class_names`.
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
