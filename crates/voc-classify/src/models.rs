//! The classifiers voc trains, by `--model` name, and the network type that holds any of them.
//!
//! A new backbone is one file: its network (implementing the backbone interface of [`crate::backbone`]),
//! a [`crate::ClassifierArch`] variant with its [`ClassifierArch::part_of`] naming rule, and a
//! [`crate::ModelPreset`]; the trainer, checkpoints and the CLI find it through [`ModelChoice`].
use candle_core::Tensor;
use candle_nn::VarBuilder;
use voc_core::Normalization;

use crate::classifier::{ClassifierArch, ClassifierConfig, ImageClassifier};
use crate::error::{ClassifyError, Result};
use crate::head::HeadKind;
use crate::preset::ModelPreset;
use crate::scratch::{ScratchCnn, ScratchCnnConfig};

/// The `architecture` of a scratch-CNN checkpoint.
pub const SCRATCH_ARCHITECTURE: &str = "scratch_classifier";

/// Name of the scratch CNN on command lines.
pub const SCRATCH_NAME: &str = "scratch";

/// Every `--model` name, in help order.
pub fn model_names() -> Vec<&'static str> {
    std::iter::once(SCRATCH_NAME)
        .chain(ModelPreset::ALL.iter().map(|p| p.name))
        .collect()
}

/// A model `voc train classify` can train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelChoice {
    /// A pretrained ImageNet backbone from the hub, with a new head.
    Pretrained(ModelPreset),
    /// The seed notebook's CNN from random weights.
    Scratch,
}

impl ModelChoice {
    /// The model called `name`; an unknown name is a [`ClassifyError::BadArgument`] listing the known ones.
    ///
    /// ```
    /// use voc_classify::models::ModelChoice;
    /// assert_eq!(ModelChoice::by_name("scratch")?.input_size(), 150);
    /// assert_eq!(ModelChoice::by_name("mobilenet_v2")?.input_size(), 224);
    /// let err = ModelChoice::by_name("alexnet").unwrap_err().to_string();
    /// assert!(err.contains("scratch, mobilenet_v2, efficientnet_lite0"), "{err}");
    /// # Ok::<(), voc_classify::ClassifyError>(())
    /// ```
    pub fn by_name(name: &str) -> Result<Self> {
        if name == SCRATCH_NAME {
            return Ok(Self::Scratch);
        }
        ModelPreset::ALL
            .iter()
            .find(|p| p.name == name)
            .map(|p| Self::Pretrained(*p))
            .ok_or_else(|| {
                ClassifyError::BadArgument(format!(
                    "unknown model '{name}': expected one of {}",
                    model_names().join(", ")
                ))
            })
    }

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pretrained(p) => p.name,
            Self::Scratch => SCRATCH_NAME,
        }
    }

    /// The square input side it is trained at by default (the pretrained size; the notebook's 150).
    pub fn input_size(&self) -> usize {
        match self {
            Self::Pretrained(p) => p.input_size,
            Self::Scratch => ScratchCnnConfig::default().input_size,
        }
    }

    /// The square input side `voc train classify` trains at by default: the scratch CNN's 150, and 288
    /// for the pretrained backbones (trained at 224 on ImageNet, but VOC's objects are smaller: on
    /// voc2012-subset, MobileNetV2's frozen features gave 0.776 val mAP at 224 and 0.812 at 288).
    ///
    /// ```
    /// use voc_classify::models::ModelChoice;
    /// assert_eq!(ModelChoice::by_name("mobilenet_v2")?.train_size(), 288);
    /// # Ok::<(), voc_classify::ClassifyError>(())
    /// ```
    pub fn train_size(&self) -> usize {
        match self {
            Self::Pretrained(_) => 288,
            Self::Scratch => self.input_size(),
        }
    }

    /// How pixels become inputs: the pretrained weights' normalisation, or Keras's `rescale=1/255`.
    pub fn normalization(&self) -> Normalization {
        match self {
            Self::Pretrained(p) => p.normalization,
            Self::Scratch => Normalization::ZERO_ONE,
        }
    }

    /// The `architecture` its checkpoints carry.
    pub fn architecture(&self) -> String {
        match self {
            Self::Pretrained(p) => crate::checkpoint::checkpoint_architecture(&p.arch),
            Self::Scratch => SCRATCH_ARCHITECTURE.to_string(),
        }
    }
}

/// Which part of a backbone classifier a weight belongs to: what `--unfreeze` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetPart {
    /// The first convolutions (counted as block 0 by `--unfreeze`).
    Stem,
    /// A backbone block, by (stage, index) in forward order.
    Block(usize, usize),
    /// The 1x1 widening convolution before pooling.
    HeadConv,
    /// The classification head.
    Head,
}

impl ClassifierArch {
    /// The part the weight `name` belongs to (`None` for a name of another architecture).
    ///
    /// ```
    /// use voc_classify::models::NetPart;
    /// use voc_classify::ModelPreset;
    /// let arch = ModelPreset::MOBILENET_V2.arch;
    /// assert_eq!(arch.part_of("mobilenet_v2.layer.12.expand_1x1.convolution.weight"), Some(NetPart::Block(0, 12)));
    /// assert_eq!(arch.part_of("mobilenet_v2.conv_1x1.convolution.weight"), Some(NetPart::HeadConv));
    /// let lite = ModelPreset::EFFICIENTNET_LITE0.arch;
    /// assert_eq!(lite.part_of("blocks.5.3.conv_pw.weight"), Some(NetPart::Block(5, 3)));
    /// assert_eq!(lite.part_of("bn2.running_var"), Some(NetPart::HeadConv));
    /// let resnet = ModelPreset::RESNET50.arch;
    /// assert_eq!(resnet.part_of("layer3.5.bn2.weight"), Some(NetPart::Block(2, 5)));
    /// assert_eq!(resnet.part_of("bn1.bias"), Some(NetPart::Stem));
    /// let v2 = ModelPreset::RESNET50V2.arch;
    /// assert_eq!(v2.part_of("stages.1.blocks.3.norm2.weight"), Some(NetPart::Block(1, 3)));
    /// assert_eq!(v2.part_of("norm.running_mean"), Some(NetPart::HeadConv));
    /// let vgg = ModelPreset::VGG16.arch;
    /// assert_eq!(vgg.part_of("features.12.weight"), Some(NetPart::Block(2, 1)));
    /// assert_eq!(vgg.part_of("pre_logits.fc2.bias"), Some(NetPart::HeadConv));
    /// assert_eq!(vgg.part_of("classifier.weight"), Some(NetPart::Head));
    /// ```
    pub fn part_of(&self, name: &str) -> Option<NetPart> {
        if name.starts_with("classifier.") {
            return Some(NetPart::Head);
        }
        let index = |rest: &str| -> Option<usize> { rest.split('.').next()?.parse().ok() };
        match self {
            Self::MobileNetV2(_) => {
                let rest = name.strip_prefix("mobilenet_v2.")?;
                if rest.starts_with("conv_stem.") {
                    Some(NetPart::Stem)
                } else if rest.starts_with("conv_1x1.") {
                    Some(NetPart::HeadConv)
                } else {
                    Some(NetPart::Block(0, index(rest.strip_prefix("layer.")?)?))
                }
            }
            Self::EfficientNetLite0(_) => {
                if name.starts_with("conv_stem.") || name.starts_with("bn1.") {
                    Some(NetPart::Stem)
                } else if name.starts_with("conv_head.") || name.starts_with("bn2.") {
                    Some(NetPart::HeadConv)
                } else {
                    let rest = name.strip_prefix("blocks.")?;
                    let stage = index(rest)?;
                    let block = index(rest.split_once('.')?.1)?;
                    Some(NetPart::Block(stage, block))
                }
            }
            Self::ResNet(_) => {
                if name.starts_with("conv1.")
                    || name.starts_with("bn1.")
                    || name.starts_with("stem.")
                {
                    Some(NetPart::Stem)
                } else if name.starts_with("norm.") {
                    Some(NetPart::HeadConv)
                } else if let Some(rest) = name.strip_prefix("layer") {
                    // `layer1.0.conv1.weight`: stages count from 1 in torchvision's names.
                    let stage = index(rest)?.checked_sub(1)?;
                    Some(NetPart::Block(stage, index(rest.split_once('.')?.1)?))
                } else {
                    let rest = name.strip_prefix("stages.")?;
                    let stage = index(rest)?;
                    let block = index(rest.split_once(".blocks.")?.1)?;
                    Some(NetPart::Block(stage, block))
                }
            }
            Self::Vgg16(_) => {
                if name.starts_with("pre_logits.") {
                    return Some(NetPart::HeadConv);
                }
                // Each convolution is a block, numbered within its stage (between two pools).
                let layer = index(name.strip_prefix("features.")?)?;
                let positions = crate::vgg::vgg16_conv_positions();
                let &(_, stage) = positions.iter().find(|(i, _)| *i == layer)?;
                let block = positions
                    .iter()
                    .filter(|(i, s)| *s == stage && *i < layer)
                    .count();
                Some(NetPart::Block(stage, block))
            }
        }
    }
}

/// Any classifier voc trains or loads: a backbone with a head, or the scratch CNN.
#[derive(Debug, Clone)]
pub enum ClassifierNet {
    /// A pretrained backbone, its widening convolution and a head.
    Transfer(ImageClassifier),
    /// The seed notebook's CNN.
    Scratch(ScratchCnn),
}

impl ClassifierNet {
    /// Builds the network of `choice` with `num_classes` outputs under `vb`.
    pub fn new(
        vb: VarBuilder,
        choice: ModelChoice,
        num_classes: usize,
        head: HeadKind,
        dropout: f32,
        input_size: usize,
    ) -> Result<Self> {
        Ok(match choice {
            ModelChoice::Pretrained(p) => Self::Transfer(ImageClassifier::new(
                vb,
                ClassifierConfig {
                    arch: p.arch,
                    num_classes,
                    dropout,
                    head,
                },
            )?),
            ModelChoice::Scratch => Self::Scratch(ScratchCnn::new(
                vb,
                ScratchCnnConfig {
                    input_size,
                    num_classes,
                    dropout,
                    ..ScratchCnnConfig::default()
                },
            )?),
        })
    }

    /// Seeds the dropout masks, so a training run with a seed repeats exactly.
    pub fn seed_dropout(&self, seed: u64) {
        match self {
            Self::Transfer(m) => m.head().seed_dropout(seed),
            Self::Scratch(m) => m.seed_dropout(seed),
        }
    }

    /// Logits `N x C`. `bn_train`: batch norms use batch statistics and update their running ones;
    /// `dropout`: the head's dropout is on. (The scratch CNN trains its batch norms whenever it trains.)
    pub fn logits(&self, x: &Tensor, bn_train: bool, dropout: bool) -> Result<Tensor> {
        match self {
            Self::Transfer(m) => m.head().forward_t(&m.pooled_t(x, bn_train)?, dropout),
            Self::Scratch(m) => m.forward_t(x, bn_train || dropout),
        }
    }
}

impl candle_core::ModuleT for ClassifierNet {
    /// Logits; `train` puts batch norm and dropout in training mode.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.logits(xs, train, train)?)
    }
}
