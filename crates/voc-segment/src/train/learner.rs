//! One training step of a segmenter: the learner [`crate::train::train_segmenter`] is built on.
//!
//! A [`SegLearner`] holds a DeepLabV3 or DeepLabV3+ built over a mix of constants and variables
//! (`voc_classify::train::build_mixed`: the frozen part costs no gradient), its optimiser, and the
//! loss: pixel-wise cross-entropy ignoring VOC's void label (255), with optional per-class weights and
//! an optional soft-Dice term. Which weights train is a name rule ([`SegTrainable`]); which batch norms
//! use batch statistics is [`SegBatchNorm`]: the offline pretrained weights have their batch norms
//! folded, which batch statistics would destroy, so pretrained parts stay in eval mode by default.
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

    pub(crate) fn build(&self, vb: candle_nn::VarBuilder) -> Result<SegmentationNet> {
        Ok(match *self {
            Self::DeepLabV3(c) => SegmentationNet::DeepLabV3(Box::new(DeepLabV3::new(vb, c)?)),
            Self::DeepLabV3Plus(c) => {
                SegmentationNet::DeepLabV3Plus(Box::new(DeepLabV3Plus::new(vb, c)?))
            }
        })
    }
}

/// Which weights are variables (trained); the others are constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegTrainable {
    /// Every weight (batch-norm running statistics included, so training-mode batch norm can move them).
    All,
    /// The head only (`decode_head.*` / `segmentation_head.*`): a frozen pretrained backbone.
    Head,
}

/// The optimiser of a [`SegLearner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegOptimizer {
    /// Adam (the notebook's), L2 weight decay added to the gradient as `torch.optim.Adam` does.
    Adam,
    /// SGD with momentum 0.9 (DeepLab's), weight decay added to the gradient.
    Sgd,
}

voc_core::cli_enum!(
    SegTrainable,
    "trainable part",
    SegmentError,
    [All = "all", Head = "head"]
);
voc_core::cli_enum!(
    SegOptimizer,
    "optimiser",
    SegmentError,
    [Adam = "adam", Sgd = "sgd"]
);

/// Which batch norms use batch statistics (and update their running ones) in training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegBatchNorm {
    /// Every batch norm in eval mode (running statistics): pretrained weights fine-tuned whole.
    Frozen,
    /// The head's (`decode_head.*` / `segmentation_head.*`) in training mode, the backbone's frozen:
    /// a new head on a pretrained backbone.
    Head,
    /// Every batch norm in training mode: a network trained from random weights.
    All,
}

voc_core::cli_enum!(
    SegBatchNorm,
    "batch-norm mode",
    SegmentError,
    [Frozen = "frozen", Head = "head", All = "all"]
);

/// Optimiser and loss settings of a [`SegLearner`].
#[derive(Debug, Clone, PartialEq)]
pub struct SegLearnerConfig {
    /// The optimiser.
    pub optimizer: SegOptimizer,
    /// Learning rate (changed during training with [`SegLearner::set_learning_rate`]).
    pub lr: f64,
    /// Weight decay of matrices and kernels (not of biases or batch-norm parameters).
    pub weight_decay: f64,
    /// Which batch norms use batch statistics in training steps.
    pub bn: SegBatchNorm,
    /// Per-class weights of the cross-entropy (21 values), e.g. median-frequency balancing.
    pub class_weight: Option<Vec<f32>>,
    /// Weight of a soft-Dice term added to the cross-entropy (0: none).
    pub dice_weight: f64,
}

impl Default for SegLearnerConfig {
    fn default() -> Self {
        Self {
            optimizer: SegOptimizer::Adam,
            lr: 1e-4,
            weight_decay: 0.0,
            bn: SegBatchNorm::Frozen,
            class_weight: None,
            dice_weight: 0.0,
        }
    }
}

/// A segmenter, its variables and optimiser, and the loss: [`SegLearner::step`] is one training step.
pub struct SegLearner {
    net: SegmentationNet,
    params: MixedParams,
    optimizer: Box<dyn Optimizer>,
    bn: SegBatchNorm,
    class_weight: Option<Tensor>,
    dice_weight: f64,
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
        let (net, params) = build_mixed(values, rule, seed, device, |vb| {
            arch.build(vb).map_err(|e| {
                voc_classify::ClassifyError::BadArgument(format!("building {arch:?}: {e}"))
            })
        })?;
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
            bn: config.bn,
            class_weight,
            dice_weight: config.dice_weight,
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
    /// `train`: training mode (batch statistics where [`SegBatchNorm`] says, the head's dropout on).
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let backbone_bn = train && self.bn == SegBatchNorm::All;
        let head_bn = train && self.bn != SegBatchNorm::Frozen;
        let logits = self.net.forward_modes(x, backbone_bn, head_bn)?;
        let (_, _, lh, lw) = logits.dims4()?;
        Ok(if (lh, lw) == (h, w) {
            logits
        } else {
            resize_bilinear(&logits, h, w, true)?
        })
    }

    /// Cross-entropy of `logits` against `target` (`N x H x W`, u32 labels, 255 ignored), with the
    /// class weights when set, plus the soft-Dice term when its weight is not 0.
    pub fn loss(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let ce = cross_entropy_2d(
            logits,
            target,
            self.class_weight.as_ref(),
            Some(u32::from(VOID)),
        )?;
        if self.dice_weight == 0.0 {
            return Ok(ce);
        }
        Ok((ce + (soft_dice_loss(logits, target)? * self.dice_weight)?)?)
    }

    /// The batch norm mode of training steps.
    pub fn batch_norm(&self) -> SegBatchNorm {
        self.bn
    }

    /// The optimiser's state tensors (for a resume checkpoint).
    pub fn optimizer_state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self.optimizer.state_tensors()?)
    }

    /// Restores what [`Self::optimizer_state`] returned.
    pub fn load_optimizer_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(self.optimizer.load_state_tensors(state)?)
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

/// `1 - mean over classes of (2 |P∩T| + 1) / (|P| + |T| + 1)` with softmax probabilities P and the
/// one-hot target T over the batch's non-void pixels; classes absent from both score 1, so only the
/// classes in play pull. Complements the cross-entropy on small objects, whose pixels it weighs as
/// much as the background's.
pub fn soft_dice_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = logits.dims4()?;
    let probs = candle_nn::ops::softmax(logits, 1)?;
    let target = target.unsqueeze(1)?;
    let valid = target.ne(u32::from(VOID))?.to_dtype(probs.dtype())?;
    let classes = Tensor::arange(0u32, c as u32, logits.device())?.reshape((1, c, 1, 1))?;
    let one_hot = target.broadcast_eq(&classes)?.to_dtype(probs.dtype())?;
    let probs = probs.broadcast_mul(&valid)?;
    let sum_over_pixels = |t: &Tensor| -> Result<Tensor> { Ok(t.sum(0)?.sum(1)?.sum(1)?) };
    let intersection = sum_over_pixels(&(&probs * &one_hot)?)?;
    let sizes = (sum_over_pixels(&probs)? + sum_over_pixels(&one_hot)?)?;
    let dice = ((intersection * 2.0)? + 1.0)?.div(&(sizes + 1.0)?)?;
    Ok(dice.mean_all()?.affine(-1.0, 1.0)?)
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
