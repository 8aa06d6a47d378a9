//! What a training run does, as recorded in `RUN/config.json` and compared on `--resume`.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ClassifyError, Result};
use crate::head::HeadKind;
use crate::metrics::ThresholdRule;

/// How the network is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    /// The pretrained backbone runs once per image (and view); only the head trains, on cached features.
    Frozen,
    /// Head warm-up on cached features, then the last `--unfreeze` blocks train with the head.
    Finetune,
    /// Every weight from a random start (the scratch CNN).
    Scratch,
}

/// How many backbone blocks train in fine-tuning (the head convolution and the head always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfreeze {
    /// The last `n` blocks (the stem counts as the first block).
    Last(usize),
    /// Every block, stem included.
    All,
}

/// Batch norm during fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnMode {
    /// Eval mode: running statistics, no updates, scale and shift not trained. Needed for the offline
    /// weights (their batch norms are folded) and usual for small-batch transfer learning.
    Frozen,
    /// Training mode: batch statistics, running statistics updated, scale and shift of trained blocks
    /// trained (real hub weights, large batches).
    Train,
}

/// Per-class weight of the positive term of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// `pos_weight[c] = negatives[c] / positives[c]` on the training images (1 for a class without
    /// positives or without negatives; `voc_data::SplitStats::pos_weights`, what `voc data stats`
    /// prints): each class's positives weigh as much as its negatives, as PyTorch's
    /// `BCEWithLogitsLoss(pos_weight=...)` recipe does.
    Balanced,
    /// Plain BCE.
    None,
}

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// `torch.optim.AdamW` (betas 0.9/0.999, eps 1e-8), decoupled weight decay.
    Adamw,
    /// SGD with momentum 0.9 (Nesterov), weight decay added to the gradient.
    Sgd,
    /// `torch.optim.RMSprop` with Keras's rho 0.9 (the seed notebook's optimiser).
    Rmsprop,
}

/// How the learning rate moves over the epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warm-up over `warmup_epochs`, then cosine decay to `lr * 0.01` at the last epoch (per step).
    Cosine,
    /// Keras's `ReduceLROnPlateau` on the validation mAP (the notebook's): cut by `plateau_factor` after
    /// `plateau_patience` epochs without improvement, never below `min_lr`.
    Plateau,
    /// The same rate throughout.
    Constant,
}

/// How an image is fitted to the square network input, in training and at prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Geometry {
    /// Scale each side to the input size (aspect ratio not kept): every pixel of the photo is seen.
    Stretch,
    /// Scale the whole photo into the square and pad the rest (TensorFlow's `resize_with_pad`, the
    /// notebook's).
    Letterbox,
    /// Scale the shorter side to the input size and keep the centre square (ImageNet evaluation's).
    CenterCrop,
}

impl Geometry {
    /// The voc-data resize of this geometry at a square `size`.
    pub fn resize_mode(self, size: usize) -> voc_data::ResizeMode {
        use voc_data::ResizeMode;
        match self {
            Self::Stretch => ResizeMode::Stretch {
                height: size,
                width: size,
            },
            Self::Letterbox => ResizeMode::Letterbox {
                height: size,
                width: size,
            },
            Self::CenterCrop => ResizeMode::ShortestCenterCrop {
                shortest: size,
                height: size,
                width: size,
            },
        }
    }
}

/// The training augmentation recipe (all in the run's [`Geometry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    /// The seed notebook's Keras recipe: flip, rotation +-20 deg, shear 0.2, zoom 0.8-1.2, small shifts,
    /// colour jitter 0.2.
    Notebook,
    /// torchvision's fine-tuning recipe: a random part of the photo (zoom 1-2x, panned anywhere over
    /// it, like `RandomResizedCrop`), flip, colour jitter 0.2.
    Crop,
    /// None: every epoch sees the evaluation input.
    None,
}

impl Augment {
    /// voc-data's augmentation of this recipe at a square `size` in `geometry`.
    pub fn config(self, geometry: Geometry, size: usize) -> voc_data::AugmentConfig {
        use voc_data::AugmentConfig;
        let resize = geometry.resize_mode(size);
        match self {
            Self::Notebook => AugmentConfig {
                resize,
                ..AugmentConfig::classification(size)
            },
            Self::Crop => AugmentConfig {
                resize,
                hflip_prob: 0.5,
                scale: (1.0, 2.0),
                pan: true,
                brightness: 0.2,
                contrast: 0.2,
                saturation: 0.2,
                ..AugmentConfig::default()
            },
            Self::None => AugmentConfig::eval(resize),
        }
    }
}

/// Adversarial training: each training batch is replaced by adversarial examples of the current
/// network (Madry et al. 2018), crafted in pixel space within `adv_eps` / 255 (L-inf) against the
/// batch's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adversarial {
    /// One step of 1.25 eps from a random start in the budget ("fast is better than free", Wong et
    /// al. 2020): about twice the cost of a plain step.
    Fgsm,
    /// PGD: 7 steps of eps/4 from a random start: about eight times the cost.
    Pgd,
}

/// Where validation images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validation {
    /// A labelled split of the data folder (e.g. `test` after `voc data convert`).
    Split(String),
    /// A stratified fraction of the training split, drawn from the run's seed.
    Fraction(f64),
}

/// Everything that decides what a run computes. Two runs with equal configs and data give the same
/// weights on the same device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// `--model`: a name of [`crate::models::model_names`].
    pub model: String,
    /// `--weights`: the pretrained backbone from this file (safetensors or a PyTorch `.bin`, with the
    /// names of the model's hub repo) instead of the hub; `None`: the hub repo of the model's preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<std::path::PathBuf>,
    /// `--mode`.
    pub mode: TrainMode,
    /// Epochs of the main phase (fine-tuning: after the head warm-up).
    pub epochs: usize,
    /// Head-only epochs on cached features before fine-tuning (fine-tune mode only).
    pub warmup_head_epochs: usize,
    /// Images per batch (feature rows per batch in frozen mode).
    pub batch: usize,
    /// Square input side.
    pub image_size: usize,
    /// How images are fitted to the input.
    pub geometry: Geometry,
    /// Seed of every random choice: initialisation, shuffles, augmentation, dropout, the validation split.
    pub seed: u64,
    /// Augmented views per training image whose features are cached (frozen mode; view 0 is unaugmented).
    pub views: usize,
    /// Blocks to fine-tune.
    pub unfreeze: Unfreeze,
    /// Batch norm while fine-tuning.
    pub bn: BnMode,
    /// The head.
    pub head: HeadKind,
    /// Dropout before the head's last layer.
    pub dropout: f32,
    /// Positive-term weights of the loss.
    pub class_weights: ClassWeights,
    /// Focal loss with this gamma instead of plain BCE-with-logits (`None`: BCE).
    pub focal_gamma: Option<f64>,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Learning rate of the head (and of the scratch CNN).
    pub lr: f64,
    /// Learning rate of the fine-tuned backbone blocks.
    pub backbone_lr: f64,
    /// Weight decay of weights (biases and norms get none).
    pub weight_decay: f64,
    /// The learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Warm-up epochs of the cosine schedule.
    pub warmup_epochs: usize,
    /// Plateau schedule: multiplier of each cut.
    pub plateau_factor: f64,
    /// Plateau schedule: epochs without improvement before a cut.
    pub plateau_patience: usize,
    /// Plateau schedule: the floor.
    pub min_lr: f64,
    /// Early stopping: epochs without a better validation mAP before stopping (0: never stop early).
    pub patience: usize,
    /// Training augmentation.
    pub augment: Augment,
    /// Validation images.
    pub validation: Validation,
    /// How the decision thresholds are chosen on validation.
    pub threshold: ThresholdRule,
    /// Adversarial training (fine-tuning and scratch phases; not the head on cached features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial: Option<Adversarial>,
    /// Budget of the adversarial examples, in 1/255 units.
    #[serde(default)]
    pub adv_eps: f64,
}

impl TrainConfig {
    /// The defaults for `model` trained in `mode`: what `voc train classify` uses for flags not given.
    pub fn defaults(model: &str, mode: TrainMode, image_size: usize) -> Self {
        let base = Self {
            model: model.to_string(),
            weights: None,
            mode,
            epochs: 10,
            warmup_head_epochs: 0,
            batch: 16,
            image_size,
            geometry: Geometry::CenterCrop,
            seed: 0,
            views: 1,
            unfreeze: Unfreeze::Last(5),
            bn: BnMode::Frozen,
            head: HeadKind::Linear,
            dropout: 0.2,
            class_weights: ClassWeights::None,
            focal_gamma: None,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            backbone_lr: 1e-4,
            weight_decay: 1e-4,
            schedule: ScheduleKind::Cosine,
            warmup_epochs: 1,
            plateau_factor: 0.2,
            plateau_patience: 3,
            min_lr: 1e-6,
            patience: 0,
            augment: Augment::Notebook,
            validation: Validation::Fraction(0.2),
            threshold: ThresholdRule::Global,
            adversarial: None,
            adv_eps: 4.0,
        };
        match mode {
            TrainMode::Frozen => Self {
                epochs: 50,
                batch: 64,
                views: 4,
                lr: 1e-3,
                weight_decay: 1e-3,
                dropout: 0.0,
                warmup_epochs: 0,
                ..base
            },
            TrainMode::Finetune => Self {
                warmup_head_epochs: 10,
                augment: Augment::Crop,
                ..base
            },
            TrainMode::Scratch => Self {
                epochs: 60,
                batch: 32,
                head: HeadKind::Mlp,
                dropout: 0.5,
                optimizer: OptimizerKind::Rmsprop,
                schedule: ScheduleKind::Plateau,
                warmup_epochs: 0,
                lr: 1e-3,
                weight_decay: 0.0,
                patience: 15,
                ..base
            },
        }
    }

    /// Checks the values that no type rules out; the error names the flag.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |flag: &str, why: String| Err(ClassifyError::BadArgument(format!("--{flag}: {why}")));
        if self.weights.is_some() && self.mode == TrainMode::Scratch {
            return bad(
                "weights",
                "--mode scratch trains from random weights: no pretrained file to read".into(),
            );
        }
        if self.epochs == 0 && self.warmup_head_epochs == 0 {
            return bad("epochs", "nothing to train: 0 epochs".into());
        }
        if self.batch == 0 {
            return bad("batch", "must be at least 1".into());
        }
        if self.image_size < 32 {
            return bad(
                "image-size",
                format!("{} is too small (at least 32)", self.image_size),
            );
        }
        if self.views == 0 {
            return bad("views", "must be at least 1".into());
        }
        for (flag, v) in [
            ("lr", self.lr),
            ("backbone-lr", self.backbone_lr),
            ("min-lr", self.min_lr),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(flag, format!("{v} is not a finite rate >= 0"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight-decay",
                format!("{} is not finite and >= 0", self.weight_decay),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        if !(self.plateau_factor > 0.0 && self.plateau_factor < 1.0) {
            return bad(
                "plateau-factor",
                format!("{} is not in (0, 1)", self.plateau_factor),
            );
        }
        if let Some(g) = self.focal_gamma {
            if !(g.is_finite() && g >= 0.0) {
                return bad("focal-gamma", format!("{g} is not finite and >= 0"));
            }
        }
        if let Validation::Fraction(f) = self.validation {
            if !(f > 0.0 && f < 1.0) {
                return bad("val-fraction", format!("{f} is not in (0, 1)"));
            }
        }
        if self.adversarial.is_some() {
            if !(self.adv_eps > 0.0 && self.adv_eps <= 255.0) {
                return bad(
                    "adv-eps",
                    format!("{} is not a budget in (0, 255] (1/255 units)", self.adv_eps),
                );
            }
            if self.mode == TrainMode::Frozen {
                return bad(
                    "adversarial",
                    "frozen mode trains a head on cached features, which adversarial examples of the images cannot reach: use --mode finetune or scratch".into(),
                );
            }
        }
        if let Unfreeze::Last(0) = self.unfreeze {
            if self.mode == TrainMode::Finetune {
                return bad(
                    "unfreeze",
                    "0 blocks: use --mode frozen to train only the head".into(),
                );
            }
        }
        match (self.mode, self.model.as_str()) {
            (TrainMode::Scratch, m) if m != "scratch" => bad(
                "mode",
                format!("scratch trains the scratch CNN from random weights; '{m}' is pretrained: use frozen or finetune"),
            ),
            (TrainMode::Frozen | TrainMode::Finetune, "scratch") => bad(
                "mode",
                "the scratch CNN has no pretrained weights to freeze or fine-tune: use --mode scratch".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The fields in which `other` differs from `self`, as `name: ours -> theirs` (resume checks).
    pub fn differences(&self, other: &Self) -> Vec<String> {
        voc_tensor::run::json_differences(self, other)
    }
}

macro_rules! cli_enum {
    ($ty:ident, $what:literal, [$($choices:tt)*]) => {
        voc_core::cli_enum!($ty, $what, ClassifyError, [$($choices)*]);
    };
}

cli_enum!(
    Adversarial,
    "adversarial training",
    [Fgsm = "fgsm", Pgd = "pgd"]
);
cli_enum!(
    TrainMode,
    "mode",
    [
        Frozen = "frozen",
        Finetune = "finetune",
        Scratch = "scratch"
    ]
);
cli_enum!(
    Augment,
    "augmentation",
    [Notebook = "notebook", Crop = "crop", None = "none"]
);
cli_enum!(
    Geometry,
    "geometry",
    [
        Stretch = "stretch",
        Letterbox = "letterbox",
        CenterCrop = "center-crop"
    ]
);
cli_enum!(
    BnMode,
    "batch-norm mode",
    [Frozen = "frozen", Train = "train"]
);
cli_enum!(
    ClassWeights,
    "class weighting",
    [Balanced = "balanced", None = "none"]
);
cli_enum!(
    OptimizerKind,
    "optimiser",
    [Adamw = "adamw", Sgd = "sgd", Rmsprop = "rmsprop"]
);
cli_enum!(
    ScheduleKind,
    "schedule",
    [
        Cosine = "cosine",
        Plateau = "plateau",
        Constant = "constant"
    ]
);

impl fmt::Display for Unfreeze {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Last(n) => write!(f, "{n}"),
            Self::All => f.write_str("all"),
        }
    }
}

impl FromStr for Unfreeze {
    type Err = ClassifyError;

    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        s.parse().map(Self::Last).map_err(|_| {
            ClassifyError::BadArgument(format!(
                "--unfreeze '{s}': expected a number of blocks or 'all'"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in [TrainMode::Frozen, TrainMode::Finetune, TrainMode::Scratch] {
            assert_eq!(m.name().parse::<TrainMode>().unwrap(), m);
        }
        assert!("warm"
            .parse::<TrainMode>()
            .unwrap_err()
            .to_string()
            .contains("frozen, finetune, scratch"));
        assert_eq!("all".parse::<Unfreeze>().unwrap(), Unfreeze::All);
        assert_eq!("5".parse::<Unfreeze>().unwrap(), Unfreeze::Last(5));
        assert!("five".parse::<Unfreeze>().is_err());
    }

    #[test]
    fn defaults_validate_and_differences_name_fields() {
        for (model, mode) in [
            ("mobilenet_v2", TrainMode::Frozen),
            ("mobilenet_v2", TrainMode::Finetune),
            ("scratch", TrainMode::Scratch),
        ] {
            TrainConfig::defaults(model, mode, 224).validate().unwrap();
        }
        let a = TrainConfig::defaults("mobilenet_v2", TrainMode::Frozen, 224);
        let b = TrainConfig {
            lr: 0.5,
            ..a.clone()
        };
        assert_eq!(a.differences(&b), vec!["lr: 0.001 -> 0.5".to_string()]);
        let wrong = TrainConfig::defaults("mobilenet_v2", TrainMode::Scratch, 224);
        assert!(wrong.validate().unwrap_err().to_string().contains("--mode"));
    }
}
