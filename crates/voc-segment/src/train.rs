//! One training step of a segmenter: the learner `voc train segment` is built on.
//!
//! A [`SegLearner`] holds a DeepLabV3 or DeepLabV3+ built over a mix of constants and variables
//! (`voc_classify::train::build_mixed`: the frozen part costs no gradient), its optimiser, and the
//! loss: pixel-wise cross-entropy ignoring VOC's void label (255), with optional per-class weights.
//! Which weights train is a name rule ([`SegTrainable`]); batch norm runs in training mode only when
//! asked ([`SegLearnerConfig::bn_train`]): the offline pretrained weights have their batch norms folded,
//! which batch statistics would destroy, so the default is frozen (eval-mode) batch norm.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::{DType, Device, Tensor};
//! use voc_segment::train::{SegArch, SegLearner, SegLearnerConfig, SegTrainable};
//! use voc_segment::DeepLabV3PlusConfig;
//!
//! // A fresh DeepLabV3+ (no pretrained weights: every tensor is a seeded variable).
//! let arch = SegArch::DeepLabV3Plus(DeepLabV3PlusConfig::default());
//! let config = SegLearnerConfig::default();
//! let mut learner = SegLearner::new(arch, HashMap::new(), SegTrainable::All, 0, &config, &Device::Cpu)?;
//! let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu)?;
//! let target = Tensor::zeros((2, 32, 32), DType::U32, &Device::Cpu)?;
//! let loss = learner.step(&x, &target)?;
//! assert!(loss.is_finite() && loss > 0.0);
//! # Ok::<(), voc_segment::SegmentError>(())
//! ```
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use voc_classify::train::{build_mixed, MixedParams};
use voc_core::VOID;
use voc_tensor::ops::{cross_entropy_2d, resize_bilinear};
use voc_tensor::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, Sgd, SgdConfig};

use crate::deeplabv3::{DeepLabV3, DeepLabV3Config};
use crate::deeplabv3plus::{DeepLabV3Plus, DeepLabV3PlusConfig};
use crate::error::{Result, SegmentError};
use crate::segmenter::SegmentationNet;

/// Which network, with its configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SegArch {
    /// DeepLabV3 (transformers layout: `mobilenet_v2.*`, `segmentation_head.*`).
    DeepLabV3(DeepLabV3Config),
    /// DeepLabV3+ (`mobilenet_v2.*`, `decode_head.*`).
    DeepLabV3Plus(DeepLabV3PlusConfig),
}

impl SegArch {
    /// The prefix of the weights that are not the backbone's.
    pub fn head_prefix(&self) -> &'static str {
        match self {
            Self::DeepLabV3(_) => "segmentation_head.",
            Self::DeepLabV3Plus(_) => "decode_head.",
        }
    }

    fn build(&self, vb: candle_nn::VarBuilder) -> Result<SegmentationNet> {
        Ok(match *self {
            Self::DeepLabV3(c) => SegmentationNet::DeepLabV3(Box::new(DeepLabV3::new(vb, c)?)),
            Self::DeepLabV3Plus(c) => {
                SegmentationNet::DeepLabV3Plus(Box::new(DeepLabV3Plus::new(vb, c)?))
            }
        })
    }
}

/// Which weights are variables (trained); the others are constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegTrainable {
    /// Every weight (batch-norm running statistics included, so training-mode batch norm can move them).
    All,
    /// The head only (`decode_head.*` / `segmentation_head.*`): a frozen pretrained backbone.
    Head,
}

/// The optimiser of a [`SegLearner`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SegOptimizer {
    /// Adam (the notebook's), L2 weight decay added to the gradient as `torch.optim.Adam` does.
    Adam,
    /// SGD with momentum 0.9 (DeepLab's), weight decay added to the gradient.
    Sgd,
}

/// Optimiser and loss settings of a [`SegLearner`].
#[derive(Debug, Clone, PartialEq)]
pub struct SegLearnerConfig {
    /// The optimiser.
    pub optimizer: SegOptimizer,
    /// Learning rate (changed during training with [`SegLearner::set_learning_rate`]).
    pub lr: f64,
    /// Weight decay of matrices and kernels (not of biases or batch-norm parameters).
    pub weight_decay: f64,
    /// Batch norm with batch statistics (and running averages updated) while training; `false`
    /// keeps every batch norm in eval mode.
    pub bn_train: bool,
    /// Per-class weights of the cross-entropy (21 values), e.g. median-frequency balancing.
    pub class_weight: Option<Vec<f32>>,
}

impl Default for SegLearnerConfig {
    fn default() -> Self {
        Self {
            optimizer: SegOptimizer::Adam,
            lr: 1e-4,
            weight_decay: 0.0,
            bn_train: false,
            class_weight: None,
        }
    }
}

/// A segmenter, its variables and optimiser, and the loss: [`SegLearner::step`] is one training step.
pub struct SegLearner {
    net: SegmentationNet,
    params: MixedParams,
    optimizer: Box<dyn Optimizer>,
    bn_train: bool,
    class_weight: Option<Tensor>,
}

impl SegLearner {
    /// Builds `arch` from `values` (pretrained or saved weights by name; variables missing there are
    /// initialised from `seed`, constants must be there) with the `trainable` weights as variables.
    /// A class-weight vector that is not 21 values, or an optimiser setting out of range, is a
    /// [`SegmentError::BadArgument`].
    pub fn new(
        arch: SegArch,
        values: HashMap<String, Tensor>,
        trainable: SegTrainable,
        seed: u64,
        config: &SegLearnerConfig,
        device: &Device,
    ) -> Result<Self> {
        let head = arch.head_prefix();
        let rule: voc_classify::train::params::IsVariable = match trainable {
            SegTrainable::All => Arc::new(|_: &str| true),
            SegTrainable::Head => Arc::new(move |name: &str| name.starts_with(head)),
        };
        let mut built = None;
        let (_, params) = build_mixed(values, rule, seed, device, |vb| {
            built = Some(arch.build(vb).map_err(|e| {
                voc_classify::ClassifyError::BadArgument(format!("building {arch:?}: {e}"))
            })?);
            Ok(())
        })?;
        let net = built.ok_or_else(|| SegmentError::BadArgument("network not built".into()))?;
        let class_weight = match &config.class_weight {
            Some(w) if w.len() != voc_core::NUM_MASK_CLASSES => {
                return Err(SegmentError::BadArgument(format!(
                    "class weights: {} values, expected {} (background and the 20 classes)",
                    w.len(),
                    voc_core::NUM_MASK_CLASSES
                )))
            }
            Some(w) => Some(Tensor::new(w.as_slice(), device)?),
            None => None,
        };
        let optimizer = make_optimizer(&params, config)?;
        Ok(Self {
            net,
            params,
            optimizer,
            bn_train: config.bn_train,
            class_weight,
        })
    }

    /// The network.
    pub fn net(&self) -> &SegmentationNet {
        &self.net
    }

    /// Every weight by name (constants and the variables' current values), as a checkpoint saves them.
    pub fn all_tensors(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self.params.all_tensors()?)
    }

    /// The variable called `name`, if it is one (tests read gradients and values through it).
    pub fn var(&self, name: &str) -> Option<candle_core::Var> {
        self.params.var(name)
    }

    /// Logits `N x 21 x H x W` at the input's size: DeepLabV3's are upsampled from its output stride
    /// (bilinear, align_corners as the pretrained model was trained), DeepLabV3+'s already are.
    /// `train`: training mode (batch statistics if `bn_train`, dropout on).
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let bn = train && self.bn_train;
        let logits = self.net.forward_t(x, bn)?;
        let (_, _, lh, lw) = logits.dims4()?;
        Ok(if (lh, lw) == (h, w) {
            logits
        } else {
            resize_bilinear(&logits, h, w, true)?
        })
    }

    /// Cross-entropy of `logits` against `target` (`N x H x W`, u32 labels, 255 ignored), with the
    /// class weights when set.
    pub fn loss(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        Ok(cross_entropy_2d(
            logits,
            target,
            self.class_weight.as_ref(),
            Some(u32::from(VOID)),
        )?)
    }

    /// One step: forward in training mode, loss, backward, optimiser update. Returns the loss.
    pub fn step(&mut self, x: &Tensor, target: &Tensor) -> Result<f32> {
        let (loss, grads) = self.gradients(x, target)?;
        self.apply(&grads)?;
        Ok(loss)
    }

    /// The first half of [`SegLearner::step`]: the loss of a training-mode forward and the gradients
    /// of every variable (read them with [`SegLearner::var`]).
    pub fn gradients(&self, x: &Tensor, target: &Tensor) -> Result<(f32, GradStore)> {
        let logits = self.logits(x, true)?;
        let loss = self.loss(&logits, target)?;
        let grads = loss.backward()?;
        Ok((loss.to_scalar::<f32>()?, grads))
    }

    /// The second half of [`SegLearner::step`]: the optimiser's update from `grads`.
    pub fn apply(&mut self, grads: &GradStore) -> Result<()> {
        Ok(self.optimizer.step(grads)?)
    }

    /// The optimiser's current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.optimizer.learning_rate()
    }

    /// Sets the learning rate (schedules, plateau reductions).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.optimizer.set_learning_rate(lr);
    }
}

fn make_optimizer(params: &MixedParams, config: &SegLearnerConfig) -> Result<Box<dyn Optimizer>> {
    let vars = params
        .varmap
        .data()
        .lock()
        .map_err(|_| SegmentError::BadArgument("the VarMap lock is poisoned".into()))?
        .clone();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    // Running statistics are variables (training-mode batch norm moves them) but never trained.
    let trained = names
        .into_iter()
        .filter(|n| !n.ends_with(".running_mean") && !n.ends_with(".running_var"));
    let (mut decayed, mut plain) = (Vec::new(), Vec::new());
    for name in trained {
        let var = vars[name].clone();
        if var.rank() > 1 {
            decayed.push((name.clone(), var));
        } else {
            plain.push((name.clone(), var));
        }
    }
    let groups = vec![
        ParamGroup::new(decayed, config.weight_decay),
        ParamGroup::new(plain, 0.0),
    ]
    .into_iter()
    .filter(|g| !g.vars.is_empty())
    .collect();
    Ok(match config.optimizer {
        SegOptimizer::Adam => Box::new(AdamW::new(
            groups,
            AdamWConfig {
                lr: config.lr,
                decoupled_weight_decay: false,
                ..Default::default()
            },
        )?),
        SegOptimizer::Sgd => Box::new(Sgd::new(
            groups,
            SgdConfig {
                lr: config.lr,
                momentum: 0.9,
                ..Default::default()
            },
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn small_arch() -> SegArch {
        SegArch::DeepLabV3Plus(DeepLabV3PlusConfig::default())
    }

    /// With a frozen backbone only the head trains: the backbone's weights are constants a step leaves
    /// unchanged, the head's are variables it moves.
    #[test]
    fn head_only_training_leaves_the_backbone_alone() -> Result<()> {
        let device = Device::Cpu;
        let config = SegLearnerConfig {
            lr: 1e-2,
            ..Default::default()
        };
        let fresh = SegLearner::new(
            small_arch(),
            HashMap::new(),
            SegTrainable::All,
            1,
            &config,
            &device,
        )?;
        let values = fresh.all_tensors()?;
        let mut learner = SegLearner::new(
            small_arch(),
            values.clone(),
            SegTrainable::Head,
            1,
            &config,
            &device,
        )?;
        let stem = "mobilenet_v2.conv_stem.first_conv.convolution.weight";
        let head = "decode_head.classifier.convolution.weight";
        assert!(learner.var(stem).is_none());
        assert!(learner.var(head).is_some());
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &device)?;
        let target = Tensor::ones((2, 32, 32), DType::U32, &device)?;
        let first = learner.step(&x, &target)?;
        let second = learner.step(&x, &target)?;
        assert!(second < first, "the loss did not fall: {first} -> {second}");
        let after = learner.all_tensors()?;
        let diff = |name: &str| -> Result<f32> {
            Ok(voc_tensor::testing::max_abs_diff(
                &after[name],
                &values[name],
            )?)
        };
        assert_eq!(diff(stem)?, 0.0);
        assert!(diff(head)? > 0.0);
        Ok(())
    }

    #[test]
    fn class_weights_must_cover_the_21_values() {
        let config = SegLearnerConfig {
            class_weight: Some(vec![1.0; 20]),
            ..Default::default()
        };
        let err = SegLearner::new(
            small_arch(),
            HashMap::new(),
            SegTrainable::All,
            0,
            &config,
            &Device::Cpu,
        )
        .err()
        .expect("20 weights are refused")
        .to_string();
        assert!(err.contains("20 values, expected 21"), "{err}");
    }
}
