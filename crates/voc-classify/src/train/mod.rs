//! Training multi-label classifiers: the scratch CNN from random weights, and pretrained backbones
//! with frozen features or fine-tuned — what `voc train classify` runs.
pub mod config;
pub mod learner;
pub mod params;
pub mod run;

pub use config::{
    Adversarial, Augment, BnMode, ClassWeights, Geometry, OptimizerKind, ScheduleKind, TrainConfig,
    TrainMode, Unfreeze, Validation,
};
pub use learner::{backbone_blocks, variable_rule, Learner, Loss, Phase};
pub use params::{build_mixed, MixedParams};
pub use run::{
    curve_panels, read_records, train_augment, train_classifier, write_curves, EpochRecord, Quiet,
    RunPaths, TrainObserver, TrainOptions, TrainSummary,
};
