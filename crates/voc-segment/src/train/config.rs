//! What a segmentation training run does, as recorded in `RUN/config.json` and compared on `--resume`.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SegmentError};
use crate::segmenter::SizeStrategy;
use crate::train::learner::{SegBatchNorm, SegOptimizer, SegTrainable};

/// The network trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegModel {
    /// DeepLabV3+ (ASPP at 6/12/18, a decoder on the stride-4 features; `decode_head.*`).
    Deeplabv3plus,
    /// DeepLabV3 (transformers' MobileNetV2 layout, `segmentation_head.*`): with `--backbone voc`, the
    /// pretrained VOC segmenter itself.
    Deeplabv3,
}

/// Where the starting weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegBackbone {
    /// The ImageNet MobileNetV2 (`google/mobilenet_v2_1.0_224`), a new head: the notebook's recipe.
    Imagenet,
    /// The pretrained VOC DeepLabV3 (`google/deeplabv3_mobilenet_v2_1.0_513`): its backbone under a
    /// new DeepLabV3+ head, or the whole segmenter for `--model deeplabv3`.
    Voc,
    /// Every weight from a seeded random initialisation.
    Random,
}

/// How the learning rate moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegSchedule {
    /// Keras's ReduceLROnPlateau on the monitored value (the notebook's): cut by `plateau_factor` after
    /// `plateau_patience` epochs without improvement, never below `min_lr`.
    Plateau,
    /// DeepLab's poly: `lr (1 - step / steps)^0.9` per step over the run's epochs.
    Poly,
    /// The same rate throughout.
    Constant,
}

/// What early stopping, the plateau schedule and the best checkpoint follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Validation cross-entropy (lower is better; the notebook's).
    ValLoss,
    /// Validation mean IoU over the 21 classes (higher is better).
    ValMiou,
}

/// Per-class weights of the cross-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegClassWeights {
    /// Median-frequency balancing (Eigen & Fergus): `median(f) / f[c]`, `f[c]` = pixels of class c
    /// over the pixels of the training images that contain c.
    MedianFreq,
    /// Every class 1.
    None,
}

/// Training augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegAugment {
    /// Random scale in `scale`, a random `crop` window (padded with void where the image is smaller),
    /// horizontal flip, colour jitter 0.2.
    Standard,
    /// The `crop` window at scale 1 from a random position, nothing else.
    None,
}

voc_core::cli_enum!(
    SegModel,
    "segmentation model",
    SegmentError,
    [Deeplabv3plus = "deeplabv3plus", Deeplabv3 = "deeplabv3"]
);
voc_core::cli_enum!(
    SegBackbone,
    "backbone",
    SegmentError,
    [Imagenet = "imagenet", Voc = "voc", Random = "random"]
);
voc_core::cli_enum!(
    SegSchedule,
    "schedule",
    SegmentError,
    [Plateau = "plateau", Poly = "poly", Constant = "constant"]
);
voc_core::cli_enum!(
    Monitor,
    "monitor",
    SegmentError,
    [ValLoss = "val_loss", ValMiou = "val_miou"]
);
voc_core::cli_enum!(
    SegClassWeights,
    "class weighting",
    SegmentError,
    [MedianFreq = "median-freq", None = "none"]
);
voc_core::cli_enum!(
    SegAugment,
    "augmentation",
    SegmentError,
    [Standard = "standard", None = "none"]
);

/// Which images validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegValidation {
    /// A labelled split of the data folder with masks (e.g. `test` after `voc data convert`).
    Split(String),
    /// A seeded, label-stratified fraction of the training split.
    Fraction(f64),
}

/// Everything a segmentation run is trained with: `RUN/config.json`; a resumed run must agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegTrainConfig {
    /// The network.
    pub model: SegModel,
    /// Where the starting weights come from.
    pub backbone: SegBackbone,
    /// The pretrained weights from this file instead of the hub (the repo `backbone` names).
    pub weights: Option<PathBuf>,
    /// 16 or 8 (training and validation).
    pub output_stride: usize,
    /// DeepLabV3+ on the VOC backbone: start the ASPP branches the pretrained DeepLabV3 head has (the
    /// 1x1 branch, image pooling, and their columns of the projection, the atrous ones at zero), so
    /// the new head starts from the pretrained one's features.
    #[serde(default)]
    pub init_aspp: bool,
    /// Which weights train.
    pub train: SegTrainable,
    /// Which batch norms use batch statistics.
    pub bn: SegBatchNorm,
    /// Epochs (early stopping may end the run sooner).
    pub epochs: usize,
    /// Crops per batch.
    pub batch: usize,
    /// Side of the square training crops.
    pub crop: usize,
    /// Range of the random scale applied before cropping.
    pub scale: (f32, f32),
    /// Training augmentation.
    pub augment: SegAugment,
    /// Probability that a training crop gets the objects of another training crop pasted over it.
    pub copy_paste: f32,
    /// The optimiser.
    pub optimizer: SegOptimizer,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay of kernels (not biases or norms), added to the gradient.
    pub weight_decay: f64,
    /// How the learning rate moves.
    pub schedule: SegSchedule,
    /// Plateau schedule: multiplier of each cut.
    pub plateau_factor: f64,
    /// Plateau schedule: epochs without improvement before a cut.
    pub plateau_patience: usize,
    /// Plateau schedule: the lowest learning rate.
    pub min_lr: f64,
    /// What early stopping, the plateau schedule and `best.safetensors` follow.
    pub monitor: Monitor,
    /// Stop after this many epochs without improvement of `monitor` (0: never).
    pub patience: usize,
    /// Per-class weights of the cross-entropy.
    pub class_weights: SegClassWeights,
    /// Weight of the soft-Dice term (0: cross-entropy alone).
    pub dice_weight: f64,
    /// How validation images are fitted to the network (`voc predict`'s `--size-strategy`).
    pub val_size: String,
    /// Which images validate.
    pub validation: SegValidation,
    /// Seed of every random choice (initialisation, shuffles, augmentation, validation split).
    pub seed: u64,
}

impl SegTrainConfig {
    /// The defaults of `model` started from `backbone`: a new head on a pretrained backbone trains
    /// with that backbone's batch norms frozen and the head's in training mode; DeepLabV3+ on the VOC
    /// backbone trains its head only (Adam 1e-3), on the ImageNet backbone every weight (Adam 1e-4,
    /// the notebook's); the pretrained DeepLabV3 is fine-tuned whole at Adam 1e-5 with every batch
    /// norm frozen; from random weights everything trains with batch statistics (Adam 1e-3).
    pub fn defaults(model: SegModel, backbone: SegBackbone) -> Self {
        let (train, bn, lr) = match (model, backbone) {
            (SegModel::Deeplabv3plus, SegBackbone::Voc) => {
                (SegTrainable::Head, SegBatchNorm::Head, 1e-3)
            }
            (SegModel::Deeplabv3, SegBackbone::Voc) => {
                (SegTrainable::All, SegBatchNorm::Frozen, 1e-5)
            }
            (_, SegBackbone::Imagenet) => (SegTrainable::All, SegBatchNorm::Head, 1e-4),
            (_, SegBackbone::Random) => (SegTrainable::All, SegBatchNorm::All, 1e-3),
        };
        Self {
            model,
            backbone,
            weights: None,
            output_stride: 16,
            init_aspp: false,
            train,
            bn,
            epochs: 30,
            batch: 8,
            crop: 321,
            scale: (0.5, 2.0),
            augment: SegAugment::Standard,
            copy_paste: 0.0,
            optimizer: SegOptimizer::Adam,
            lr,
            weight_decay: 0.0,
            schedule: SegSchedule::Plateau,
            plateau_factor: 0.5,
            plateau_patience: 3,
            min_lr: 1e-6,
            monitor: Monitor::ValLoss,
            patience: 5,
            class_weights: SegClassWeights::None,
            dice_weight: 0.0,
            val_size: SizeStrategy::default().to_string(),
            validation: SegValidation::Fraction(0.2),
            seed: 0,
        }
    }

    /// Checks every value; the error names the flag and what it accepts.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SegmentError::BadArgument(m));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if self.batch == 1 && self.bn != SegBatchNorm::Frozen {
            return bad(format!(
                "--batch 1 with --bn {}: batch statistics of one crop are degenerate; use --batch 2 or more, or --bn frozen",
                self.bn
            ));
        }
        if !(16..=513).contains(&self.crop) {
            return bad(format!(
                "--crop {}: expected 16..=513 (the networks are trained and evaluated at up to 513x513; larger crops are not supported)",
                self.crop
            ));
        }
        if !(self.scale.0 > 0.0 && self.scale.0 <= self.scale.1 && self.scale.1 <= 4.0) {
            return bad(format!(
                "--scale {},{}: expected MIN,MAX with 0 < MIN <= MAX <= 4",
                self.scale.0, self.scale.1
            ));
        }
        if !(0.0..=1.0).contains(&self.copy_paste) {
            return bad(format!(
                "--copy-paste {}: a probability in [0, 1]",
                self.copy_paste
            ));
        }
        if !matches!(self.output_stride, 8 | 16) {
            return bad(format!(
                "--output-stride {}: expected 16 or 8",
                self.output_stride
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr {}: expected a positive number", self.lr));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "--weight-decay {}: expected >= 0",
                self.weight_decay
            ));
        }
        if !(self.dice_weight >= 0.0 && self.dice_weight.is_finite()) {
            return bad(format!("--dice-weight {}: expected >= 0", self.dice_weight));
        }
        if !(self.plateau_factor > 0.0 && self.plateau_factor < 1.0) {
            return bad(format!(
                "--plateau-factor {}: expected a factor in (0, 1)",
                self.plateau_factor
            ));
        }
        if let SegValidation::Fraction(f) = self.validation {
            if !(f > 0.0 && f < 1.0) {
                return bad(format!("--val-fraction {f}: expected a fraction in (0, 1)"));
            }
        }
        if self.init_aspp
            && (self.model != SegModel::Deeplabv3plus || self.backbone != SegBackbone::Voc)
        {
            return bad(
                "--init-aspp starts DeepLabV3+'s ASPP from the pretrained VOC DeepLabV3's head: it needs --model deeplabv3plus --backbone voc".into(),
            );
        }
        self.val_size.parse::<SizeStrategy>()?;
        Ok(())
    }

    /// The settings that differ from `other`, as `field: old -> new` (for `--resume`). The number of
    /// epochs is not one of them: a resumed run may be given more (or fewer) epochs.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let same_length = Self {
            epochs: other.epochs,
            ..self.clone()
        };
        voc_tensor::run::json_differences(&same_length, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_flag() {
        for model in [SegModel::Deeplabv3plus, SegModel::Deeplabv3] {
            for backbone in [SegBackbone::Imagenet, SegBackbone::Voc, SegBackbone::Random] {
                SegTrainConfig::defaults(model, backbone)
                    .validate()
                    .unwrap();
            }
        }
        let base = SegTrainConfig::defaults(SegModel::Deeplabv3plus, SegBackbone::Voc);
        for (config, flag) in [
            (
                SegTrainConfig {
                    crop: 640,
                    ..base.clone()
                },
                "--crop 640",
            ),
            (
                SegTrainConfig {
                    output_stride: 32,
                    ..base.clone()
                },
                "--output-stride 32",
            ),
            (
                SegTrainConfig {
                    batch: 1,
                    ..base.clone()
                },
                "--batch 1",
            ),
            (
                SegTrainConfig {
                    val_size: "crop:3".into(),
                    ..base.clone()
                },
                "crop:3",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        assert_eq!(
            "median-freq".parse::<SegClassWeights>().ok(),
            Some(SegClassWeights::MedianFreq)
        );
    }
}
