//! One trainable network with its optimiser and loss: what a training step does, for every mode.
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use voc_tensor::optim::{
    self, AdamW, AdamWConfig, Optimizer, ParamGroup, RmsProp, RmsPropConfig, Sgd, SgdConfig,
};

use crate::error::{ClassifyError, Result};
use crate::models::{ClassifierNet, ModelChoice, NetPart};
use crate::train::config::{BnMode, OptimizerKind, TrainConfig, Unfreeze};
use crate::train::params::{build_mixed, IsVariable, MixedParams};

/// The loss: BCE-with-logits (mean over images and classes), optionally focal, optionally with a
/// per-class weight on the positive term.
#[derive(Debug, Clone)]
pub struct Loss {
    /// `pos_weight[c]`, shape `C`.
    pub pos_weight: Option<Tensor>,
    /// Focal loss's gamma (`None`: plain BCE).
    pub focal_gamma: Option<f64>,
}

impl Loss {
    /// The mean loss of `logits` against 0/1 `targets` (both `N x C`).
    pub fn compute(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(match self.focal_gamma {
            Some(gamma) => voc_tensor::ops::sigmoid_focal_loss(
                logits,
                targets,
                gamma,
                None,
                self.pos_weight.as_ref(),
            )?,
            None => voc_tensor::ops::bce_with_logits(logits, targets, self.pos_weight.as_ref())?,
        })
    }
}

/// Which weights train in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Only the head (frozen mode, and fine-tuning's warm-up).
    Head,
    /// The head, the widening convolution and the last `--unfreeze` blocks.
    Finetune,
    /// Everything (the scratch CNN).
    Scratch,
}

impl Phase {
    /// The name in metrics records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Finetune => "finetune",
            Self::Scratch => "scratch",
        }
    }
}

fn is_batch_norm_param(name: &str) -> bool {
    name.split('.').any(|s| {
        s == "normalization"
            || (s.starts_with("bn") && s.len() > 2 && s[2..].chars().all(|c| c.is_ascii_digit()))
    })
}

/// The blocks `--unfreeze` counts, in forward order (stem first), of a network whose weights are named
/// `names`.
pub fn backbone_blocks(choice: ModelChoice, names: &[&str]) -> Vec<NetPart> {
    let ModelChoice::Pretrained(preset) = choice else {
        return Vec::new();
    };
    let mut blocks: Vec<NetPart> = names
        .iter()
        .filter_map(|n| preset.arch.part_of(n))
        .filter(|p| matches!(p, NetPart::Stem | NetPart::Block(..)))
        .collect();
    blocks.sort();
    blocks.dedup();
    blocks
}

/// The rule naming the variables of `phase`: which weights train, and which batch-norm statistics
/// are updated (with `--bn train`). A `--unfreeze` beyond the network's blocks is an error.
pub fn variable_rule(
    choice: ModelChoice,
    config: &TrainConfig,
    phase: Phase,
    names: &[&str],
) -> Result<IsVariable> {
    let ModelChoice::Pretrained(preset) = choice else {
        return Ok(Arc::new(|_: &str| true));
    };
    let arch = preset.arch;
    let blocks = backbone_blocks(choice, names);
    let trained_blocks: Vec<NetPart> = match (phase, config.unfreeze) {
        (Phase::Head, _) => Vec::new(),
        (_, Unfreeze::All) => blocks.clone(),
        (_, Unfreeze::Last(n)) if n > blocks.len() => {
            return Err(ClassifyError::BadArgument(format!(
                "--unfreeze {n}: {} has {} blocks (stem included); use at most {} or 'all'",
                preset.name,
                blocks.len(),
                blocks.len()
            )))
        }
        (_, Unfreeze::Last(n)) => blocks[blocks.len() - n..].to_vec(),
    };
    let head_only = phase == Phase::Head;
    let bn_train = config.bn == BnMode::Train && !head_only;
    Ok(Arc::new(move |name: &str| {
        let Some(part) = arch.part_of(name) else {
            return false;
        };
        let trained = match part {
            NetPart::Head => true,
            _ if head_only => false,
            NetPart::HeadConv => true,
            p => trained_blocks.contains(&p),
        };
        if optim::is_state_var(name) {
            // Running statistics are variables only when training-mode batch norm updates them.
            return bn_train;
        }
        if is_batch_norm_param(name) {
            return trained && bn_train;
        }
        trained
    }))
}

/// A network being trained: its weights (constants and variables), optimiser and loss.
pub struct Learner {
    /// The network.
    pub net: ClassifierNet,
    /// Its weights.
    pub params: MixedParams,
    /// What it trains.
    pub phase: Phase,
    optimizer: Box<dyn Optimizer>,
    loss: Loss,
    bn_train: bool,
}

impl Learner {
    /// Builds the network of `choice` for `phase` from `values` (every weight by name; the head may be
    /// missing, it then starts from a seeded initialisation), with the optimiser of `config`.
    pub fn new(
        choice: ModelChoice,
        config: &TrainConfig,
        phase: Phase,
        values: HashMap<String, Tensor>,
        loss: Loss,
        device: &Device,
    ) -> Result<Self> {
        let build = |vb: VarBuilder| {
            ClassifierNet::new(
                vb,
                choice,
                voc_core::NUM_CLASSES,
                config.head,
                config.dropout,
                config.image_size,
            )
        };
        let names: Vec<String> = crate::weights::expected_tensors(device, build)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let rule = variable_rule(choice, config, phase, &name_refs)?;
        let (net, params) = build_mixed(values, rule, config.seed, device, build)?;
        let bn_train = match phase {
            Phase::Head => false,
            Phase::Finetune => config.bn == BnMode::Train,
            Phase::Scratch => true,
        };
        // Each phase draws its own masks, so a resumed phase does not replay the previous one's.
        net.seed_dropout(config.seed ^ (phase as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let optimizer = make_optimizer(choice, config, phase, &params)?;
        Ok(Self {
            net,
            params,
            phase,
            optimizer,
            loss,
            bn_train,
        })
    }

    /// The loss of one batch and the gradients of every variable.
    pub fn loss_and_grads(&self, x: &Tensor, y: &Tensor) -> Result<(f32, GradStore)> {
        let logits = self.net.logits(x, self.bn_train, true)?;
        let loss = self.loss.compute(&logits, y)?;
        let grads = loss.backward()?;
        Ok((loss.to_dtype(DType::F32)?.to_scalar::<f32>()?, grads))
    }

    /// One optimiser update from `grads`.
    pub fn apply(&mut self, grads: &GradStore) -> Result<()> {
        Ok(self.optimizer.step(grads)?)
    }

    /// A training step on one batch: forward, loss, backward, update. Returns the loss.
    pub fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<f32> {
        let (loss, grads) = self.loss_and_grads(x, y)?;
        self.apply(&grads)?;
        Ok(loss)
    }

    /// A head step on pooled features (frozen mode and the warm-up): the backbone does not run.
    pub fn head_step(&mut self, features: &Tensor, y: &Tensor) -> Result<f32> {
        let ClassifierNet::Transfer(net) = &self.net else {
            return Err(ClassifyError::BadArgument(
                "head steps on features need a backbone classifier".into(),
            ));
        };
        let logits = net.head().forward_t(features, true)?;
        let loss = self.loss.compute(&logits, y)?;
        let grads = loss.backward()?;
        self.optimizer.step(&grads)?;
        Ok(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    }

    /// Logits in eval mode (batch norm on running statistics, no dropout), detached.
    pub fn eval_logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.net.logits(x, false, false)?.detach())
    }

    /// The loss of `logits` against `targets` (validation).
    pub fn loss_of(&self, logits: &Tensor, targets: &Tensor) -> Result<f32> {
        Ok(self
            .loss
            .compute(logits, targets)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?)
    }

    /// The optimiser's base learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.optimizer.learning_rate()
    }

    /// Sets the optimiser's base learning rate (the head's; the backbone's keeps its ratio).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.optimizer.set_learning_rate(lr);
    }

    /// The optimiser's state, to save for a resume.
    pub fn optimizer_state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self.optimizer.state_tensors()?)
    }

    /// Restores the optimiser's state of a saved run.
    pub fn load_optimizer_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(self.optimizer.load_state_tensors(state)?)
    }

    /// The variable called `name`, if it trains.
    pub fn var(&self, name: &str) -> Option<Var> {
        self.params.var(name)
    }
}

/// Parameter groups: head and backbone (backbone at `backbone_lr / lr` of the rate), each split into
/// weights with decay and biases/norms without; batch-norm statistics are never optimised.
fn make_optimizer(
    choice: ModelChoice,
    config: &TrainConfig,
    phase: Phase,
    params: &MixedParams,
) -> Result<Box<dyn Optimizer>> {
    let is_head = |name: &str| match choice {
        ModelChoice::Pretrained(p) => p.arch.part_of(name) == Some(NetPart::Head),
        ModelChoice::Scratch => true,
    };
    let backbone_scale = if config.lr > 0.0 {
        config.backbone_lr / config.lr
    } else {
        0.0
    };
    // The head keeps its own rate after the warm-up too: measured on voc2012-subset (MobileNetV2, 288,
    // crop), continuing it at the backbone's rate reached 0.792 val mAP in fine-tuning, at its own 0.812.
    let mut groups = Vec::new();
    for head in [true, false] {
        let scale = if head || phase == Phase::Scratch {
            1.0
        } else {
            backbone_scale
        };
        for g in optim::param_groups(&params.varmap, config.weight_decay, &|n| is_head(n) != head) {
            if !g.vars.is_empty() {
                groups.push(ParamGroup {
                    lr_scale: scale,
                    ..g
                });
            }
        }
    }
    let lr = config.lr;
    Ok(match config.optimizer {
        OptimizerKind::Adamw => Box::new(AdamW::new(
            groups,
            AdamWConfig {
                lr,
                ..Default::default()
            },
        )?),
        OptimizerKind::Sgd => Box::new(Sgd::new(
            groups,
            SgdConfig {
                lr,
                momentum: 0.9,
                ..Default::default()
            },
        )?),
        // Keras's RMSprop: rho 0.9, epsilon 1e-7.
        OptimizerKind::Rmsprop => Box::new(RmsProp::new(
            groups,
            RmsPropConfig {
                lr,
                alpha: 0.9,
                eps: 1e-7,
                ..Default::default()
            },
        )?),
    })
}
