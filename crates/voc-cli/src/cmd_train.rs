//! `voc train classify`: train a multi-label classifier (the scratch CNN, or a pretrained backbone frozen
//! or fine-tuned) on the competition's data, with validation, checkpoints, curves and resume.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use voc_classify::metrics::ThresholdRule;
use voc_classify::models::{model_names, ModelChoice};
use voc_classify::train::{
    self, Adversarial, Augment, BnMode, ClassWeights, Geometry, OptimizerKind, ScheduleKind,
    TrainConfig, TrainMode, TrainObserver, TrainOptions, Unfreeze, Validation,
};
use voc_classify::HeadKind;
use voc_segment::train::{
    train_segmenter, Monitor, SegAugment, SegBackbone, SegBatchNorm, SegClassWeights, SegModel,
    SegOptimizer, SegSchedule, SegTrainConfig, SegTrainOptions, SegTrainable, SegValidation,
};
use voc_tensor::hub::HubCache;
use voc_tensor::DeviceSpec;

#[derive(Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    what: TrainCommand,
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Train a multi-label classifier of the 20 VOC classes: RUN gets best/last checkpoints (with
    /// thresholds tuned on validation), metrics.jsonl, curves.png and what --resume needs.
    Classify(Box<ClassifyArgs>),
    /// Train a segmenter of the 21 mask classes (DeepLabV3+ or DeepLabV3 on MobileNetV2): RUN gets
    /// best/last checkpoints (for `voc predict --segmenter`), metrics.jsonl, curves.png, the best
    /// epoch's confusion matrix and what --resume needs.
    Segment(Box<SegmentArgs>),
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

/// Every flag but the paths is optional: a new run fills in the defaults of its model and mode, a
/// resumed run takes its saved configuration, and a flag given with --resume must agree with it.
#[derive(Args)]
pub struct ClassifyArgs {
    /// Competition data folder (train/train_set.csv, train/img/train_{Id}.npy, ...).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Network: scratch (the notebook's CNN), mobilenet_v2, efficientnet_lite0, resnet50, resnet50v2,
    /// vgg16.
    #[arg(long)]
    model: Option<String>,
    /// Pretrained backbone weights from this file (safetensors or PyTorch .bin, named as in the
    /// model's hub repo) instead of the hub: weights fetched on another machine, or your own.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// frozen: train a head on cached backbone features; finetune: head warm-up, then the last
    /// --unfreeze blocks too; scratch: every weight from random (the scratch CNN).
    #[arg(long, value_parser = parse::<TrainMode>)]
    mode: Option<TrainMode>,
    /// Run folder to create.
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last complete epoch, with its configuration.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Epochs (fine-tuning: after the head warm-up).
    #[arg(long)]
    epochs: Option<usize>,
    /// Head-only epochs on cached features before fine-tuning.
    #[arg(long)]
    warmup_head_epochs: Option<usize>,
    /// Images per batch (feature rows per batch in frozen mode).
    #[arg(long)]
    batch: Option<usize>,
    /// Square input side (default: 288 for the pretrained backbones, 150 for the scratch CNN).
    #[arg(long)]
    image_size: Option<usize>,
    /// How photos are fitted to the square input: center-crop (default), stretch, letterbox (the
    /// notebook's resize-with-pad)
    #[arg(long, value_parser = parse::<Geometry>)]
    geometry: Option<Geometry>,
    /// Seed of every random choice (initialisation, shuffles, augmentation, validation split).
    #[arg(long)]
    seed: Option<u64>,
    /// Augmented views per training image in the feature cache (frozen mode and the warm-up).
    #[arg(long)]
    views: Option<usize>,
    /// Blocks to fine-tune, counted from the end (the stem is the first block), or `all`.
    #[arg(long, value_parser = parse::<Unfreeze>)]
    unfreeze: Option<Unfreeze>,
    /// Batch norm while fine-tuning: frozen (eval mode; needed for the offline weights, whose batch
    /// norms are folded) or train (real hub weights, larger batches).
    #[arg(long, value_parser = parse::<BnMode>)]
    bn: Option<BnMode>,
    /// Head on the pooled features: linear, or mlp (the notebook's dense 64 -> 64 -> dropout -> 20).
    #[arg(long, value_parser = parse::<HeadKind>)]
    head: Option<HeadKind>,
    /// Dropout before the head's last layer.
    #[arg(long)]
    dropout: Option<f32>,
    /// Positive-term weights: balanced (negatives / positives per class on the training images) or none.
    #[arg(long, value_parser = parse::<ClassWeights>)]
    class_weights: Option<ClassWeights>,
    /// Focal loss with this gamma (e.g. 2) instead of plain BCE-with-logits.
    #[arg(long)]
    focal_gamma: Option<f64>,
    /// adamw, sgd (momentum 0.9) or rmsprop (the notebook's).
    #[arg(long, value_parser = parse::<OptimizerKind>)]
    optimizer: Option<OptimizerKind>,
    /// Learning rate of the head (and of the scratch CNN).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate of the fine-tuned backbone blocks.
    #[arg(long)]
    backbone_lr: Option<f64>,
    /// Weight decay (not applied to biases and norms).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// cosine (with --warmup-epochs), plateau (ReduceLROnPlateau on val mAP) or constant.
    #[arg(long, value_parser = parse::<ScheduleKind>)]
    schedule: Option<ScheduleKind>,
    /// Linear warm-up epochs of the cosine schedule.
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Plateau schedule: multiplier of each cut.
    #[arg(long)]
    plateau_factor: Option<f64>,
    /// Plateau schedule: epochs without a better val mAP before a cut.
    #[arg(long)]
    plateau_patience: Option<usize>,
    /// Plateau schedule: the lowest learning rate.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Stop after this many epochs without a better val mAP (0: never).
    #[arg(long)]
    patience: Option<usize>,
    /// Training augmentation: notebook (flip, rotation 20, shear 0.2, zoom 0.2, colour jitter), crop
    /// (random part of the photo at zoom 1-2x, flip, colour jitter) or none.
    #[arg(long, value_parser = parse::<Augment>)]
    augment: Option<Augment>,
    /// Validate on this labelled split of --data (e.g. `test` after `voc data convert`).
    #[arg(long, conflicts_with = "val_fraction")]
    val_split: Option<String>,
    /// Validate on a stratified, seeded fraction of train (default 0.2).
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Decision thresholds tuned on validation to maximise the classification Dice: per-class,
    /// global, or seed (the notebook's 0.15); all with the argmax fallback.
    #[arg(long, value_parser = parse::<ThresholdRule>)]
    threshold: Option<ThresholdRule>,
    /// Adversarial training: every training batch replaced by adversarial examples of the current
    /// network, fgsm (one step of 1.25 eps from a random start, about 2x the cost) or pgd (7 steps,
    /// about 8x). Fine-tuning and scratch training.
    #[arg(long, value_parser = parse::<Adversarial>)]
    adversarial: Option<Adversarial>,
    /// Budget of the adversarial examples, in 1/255 units (default 4).
    #[arg(long)]
    adv_eps: Option<f64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Threads preparing batches.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

impl ClassifyArgs {
    /// `base` with every flag given on the command line applied; the names of those flags.
    fn apply(&self, mut c: TrainConfig) -> anyhow::Result<(TrainConfig, Vec<&'static str>)> {
        let mut given = Vec::new();
        macro_rules! set {
            ($($field:ident => $flag:literal),+ $(,)?) => {$(
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                    given.push($flag);
                }
            )+};
        }
        set!(
            epochs => "--epochs", warmup_head_epochs => "--warmup-head-epochs", batch => "--batch",
            image_size => "--image-size", geometry => "--geometry", augment => "--augment", seed => "--seed", views => "--views", unfreeze => "--unfreeze",
            bn => "--bn", head => "--head", dropout => "--dropout", class_weights => "--class-weights",
            optimizer => "--optimizer", lr => "--lr", backbone_lr => "--backbone-lr",
            weight_decay => "--weight-decay", schedule => "--schedule", warmup_epochs => "--warmup-epochs",
            plateau_factor => "--plateau-factor", plateau_patience => "--plateau-patience",
            min_lr => "--min-lr", patience => "--patience", threshold => "--threshold",
        );
        if let Some(w) = &self.weights {
            c.weights = Some(w.clone());
            given.push("--weights");
        }
        if let Some(g) = self.focal_gamma {
            c.focal_gamma = Some(g);
            given.push("--focal-gamma");
        }
        if let Some(a) = self.adversarial {
            c.adversarial = Some(a);
            given.push("--adversarial");
        }
        if let Some(e) = self.adv_eps {
            c.adv_eps = e;
            given.push("--adv-eps");
        }
        if let Some(s) = &self.val_split {
            c.validation = Validation::Split(s.clone());
            given.push("--val-split");
        }
        if let Some(f) = self.val_fraction {
            c.validation = Validation::Fraction(f);
            given.push("--val-fraction");
        }
        Ok((c, given))
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    match args.what {
        TrainCommand::Classify(a) => classify(*a),
        TrainCommand::Segment(a) => segment(*a),
    }
}

/// What a run folder saved (`RUN/config.json`): its training configuration and data folder.
#[derive(serde::Deserialize)]
struct SavedRun<C> {
    config: C,
    data: PathBuf,
}

impl<C: serde::de::DeserializeOwned> SavedRun<C> {
    /// The run at `run`, for `--resume`; `what` names the kind of configuration in the error.
    fn read(run: &Path, what: &str) -> anyhow::Result<Self> {
        let path = run.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "--resume {}: no run there (cannot read {})",
                run.display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a voc {what} config", path.display()))
    }
}

/// `--resume`'s rule for the flags that say what a run trains: each given with it (`Some`) must equal
/// the run's saved value; `flags` holds `(given, flag, saved value)`.
fn check_resume_flags(run: &Path, flags: &[(Option<&str>, &str, &str)]) -> anyhow::Result<()> {
    for &(given, flag, saved) in flags {
        if let Some(given) = given {
            if given != saved {
                bail!(
                    "--resume {}: the run was started with {flag} {saved}, not {given}",
                    run.display()
                );
            }
        }
    }
    Ok(())
}

fn classify(args: ClassifyArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let (config, data, out, resume) = match &args.resume {
        Some(run) => {
            let saved: SavedRun<TrainConfig> = SavedRun::read(run, "training")?;
            check_resume_flags(
                run,
                &[
                    (
                        args.model.as_deref(),
                        "--model",
                        saved.config.model.as_str(),
                    ),
                    (
                        args.mode.map(|m| m.name()),
                        "--mode",
                        saved.config.mode.name(),
                    ),
                ],
            )?;
            let (config, _) = args.apply(saved.config.clone())?;
            let data = args.data.clone().unwrap_or(saved.data);
            (config, data, run.clone(), true)
        }
        None => {
            let Some(out) = args.out.clone() else {
                bail!("--out RUN (a new run folder) or --resume RUN is required");
            };
            let Some(data) = args.data.clone() else {
                bail!("--data DIR is required (the competition-layout data folder)");
            };
            let Some(model) = args.model.clone() else {
                bail!("--model is required: one of {}", model_names().join(", "));
            };
            let choice = ModelChoice::by_name(&model)?;
            let mode = args.mode.unwrap_or(match choice {
                ModelChoice::Scratch => TrainMode::Scratch,
                ModelChoice::Pretrained(_) => TrainMode::Finetune,
            });
            let size = args.image_size.unwrap_or(choice.train_size());
            let (config, _) = args.apply(TrainConfig::defaults(&model, mode, size))?;
            (config, data, out, false)
        }
    };
    crate::outputs::check_dir(&out, Some(&data), "--out")?;
    let opts = TrainOptions {
        data,
        out: out.clone(),
        device,
        workers: args.workers.max(1),
        resume,
        hub: HubCache::from_env(),
    };
    let mut observer = Bars::default();
    let summary = train::train_classifier(&config, &opts, &mut observer).with_context(|| {
        format!(
            "training {} ({}) into {}",
            config.model,
            config.mode,
            out.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "trained {} ({}) for {} epochs on {} images: best validation mAP {:.3}, Dice {:.3} at epoch {}{} -> {} (curves: {})",
            config.model,
            config.mode,
            summary.epochs,
            summary.images.0,
            summary.best_map,
            summary.best_dice,
            summary.best_epoch,
            if summary.stopped_early { " (stopped early)" } else { "" },
            summary.best.display(),
            out.join("curves.png").display(),
        );
    }
    Ok(())
}

/// Every flag but the paths is optional: a new run fills in the defaults of its model and backbone,
/// a resumed run takes its saved configuration, and a flag given with --resume must agree with it.
#[derive(Args)]
pub struct SegmentArgs {
    /// Competition data folder whose splits have masks (train/seg/train_{Id}.npy, ...).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Network: deeplabv3plus (ASPP + decoder on stride-4 features) or deeplabv3.
    #[arg(long, value_parser = parse::<SegModel>)]
    model: Option<SegModel>,
    /// Starting weights: imagenet (the ImageNet MobileNetV2, new head: the notebook's recipe), voc
    /// (the pretrained VOC DeepLabV3: its backbone, or all of it with --model deeplabv3) or random.
    #[arg(long, value_parser = parse::<SegBackbone>)]
    backbone: Option<SegBackbone>,
    /// The starting weights from this file (safetensors or PyTorch .bin, named as in the hub repo
    /// --backbone names) instead of the hub.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Run folder to create.
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last saved epoch, with its configuration.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// 16 or 8 (8: finer masks, about 3x the compute).
    #[arg(long)]
    output_stride: Option<usize>,
    /// DeepLabV3+ on the VOC backbone: start the ASPP's 1x1 and pooling branches (and their part of
    /// the projection) from the pretrained DeepLabV3 head; they keep eval-mode batch norm (theirs are
    /// folded) while the new layers train with batch statistics.
    #[arg(long)]
    init_aspp: bool,
    /// Which weights train: head (the backbone frozen) or all.
    #[arg(long, value_parser = parse::<SegTrainable>)]
    train: Option<SegTrainable>,
    /// Batch norms with batch statistics: frozen (none; needed for the folded offline weights), head
    /// (the new head's) or all.
    #[arg(long, value_parser = parse::<SegBatchNorm>)]
    bn: Option<SegBatchNorm>,
    /// Epochs (early stopping may end the run sooner).
    #[arg(long)]
    epochs: Option<usize>,
    /// Crops per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Side of the square training crops (up to 513; smaller images are padded with void).
    #[arg(long)]
    crop: Option<usize>,
    /// Random scale range before cropping, MIN,MAX (default 0.5,2.0).
    #[arg(long, value_parser = parse_range)]
    scale: Option<(f32, f32)>,
    /// Training augmentation: standard (scale, crop, flip, colour jitter) or none (crop only).
    #[arg(long, value_parser = parse::<SegAugment>)]
    augment: Option<SegAugment>,
    /// Probability of pasting another training crop's objects (with their masks) over a crop.
    #[arg(long)]
    copy_paste: Option<f32>,
    /// adam (the notebook's) or sgd (momentum 0.9, DeepLab's).
    #[arg(long, value_parser = parse::<SegOptimizer>)]
    optimizer: Option<SegOptimizer>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay of kernels (added to the gradient).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// plateau (ReduceLROnPlateau on --monitor, the notebook's), poly (DeepLab's) or constant.
    #[arg(long, value_parser = parse::<SegSchedule>)]
    schedule: Option<SegSchedule>,
    /// Plateau schedule: multiplier of each cut (default 0.5).
    #[arg(long)]
    plateau_factor: Option<f64>,
    /// Plateau schedule: epochs without improvement before a cut (default 3).
    #[arg(long)]
    plateau_patience: Option<usize>,
    /// Plateau schedule: the lowest learning rate (default 1e-6).
    #[arg(long)]
    min_lr: Option<f64>,
    /// What early stopping, the plateau schedule and best.safetensors follow: val_loss or val_miou.
    #[arg(long, value_parser = parse::<Monitor>)]
    monitor: Option<Monitor>,
    /// Stop after this many epochs without improvement (0: never; default 5).
    #[arg(long)]
    patience: Option<usize>,
    /// Cross-entropy class weights: none or median-freq.
    #[arg(long, value_parser = parse::<SegClassWeights>)]
    class_weights: Option<SegClassWeights>,
    /// Weight of a soft-Dice term added to the cross-entropy (0: none).
    #[arg(long)]
    dice_weight: Option<f64>,
    /// How validation images are fitted to the network, as `voc predict --size-strategy`.
    #[arg(long)]
    val_size: Option<String>,
    /// Validate on this labelled split of --data with masks (e.g. `test` after `voc data convert`).
    #[arg(long, conflicts_with = "val_fraction")]
    val_split: Option<String>,
    /// Validate on a stratified, seeded fraction of train (default 0.2).
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Seed of every random choice (initialisation, shuffles, augmentation, validation split).
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Threads preparing batches.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

fn parse_range(s: &str) -> Result<(f32, f32), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}': expected MIN,MAX, e.g. 0.5,2.0"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<f32>()
            .map_err(|_| format!("'{s}': '{v}' is not a number"))
    };
    Ok((num(a)?, num(b)?))
}

impl SegmentArgs {
    /// `c` with every flag given on the command line applied.
    fn apply(&self, mut c: SegTrainConfig) -> SegTrainConfig {
        macro_rules! set {
            ($($field:ident),+ $(,)?) => {$(
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                }
            )+};
        }
        set!(
            output_stride,
            train,
            bn,
            epochs,
            batch,
            crop,
            scale,
            augment,
            copy_paste,
            optimizer,
            lr,
            weight_decay,
            schedule,
            plateau_factor,
            plateau_patience,
            min_lr,
            monitor,
            patience,
            class_weights,
            dice_weight,
            val_size,
            seed,
        );
        if let Some(w) = &self.weights {
            c.weights = Some(w.clone());
        }
        if self.init_aspp {
            c.init_aspp = true;
        }
        if let Some(s) = &self.val_split {
            c.validation = SegValidation::Split(s.clone());
        }
        if let Some(f) = self.val_fraction {
            c.validation = SegValidation::Fraction(f);
        }
        c
    }
}

fn segment(args: SegmentArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let (config, data, out, resume) = match &args.resume {
        Some(run) => {
            let saved: SavedRun<SegTrainConfig> = SavedRun::read(run, "segmentation training")?;
            check_resume_flags(
                run,
                &[
                    (
                        args.model.map(|m| m.name()),
                        "--model",
                        saved.config.model.name(),
                    ),
                    (
                        args.backbone.map(|b| b.name()),
                        "--backbone",
                        saved.config.backbone.name(),
                    ),
                ],
            )?;
            let config = args.apply(saved.config.clone());
            let data = args.data.clone().unwrap_or(saved.data);
            (config, data, run.clone(), true)
        }
        None => {
            let Some(out) = args.out.clone() else {
                bail!("--out RUN (a new run folder) or --resume RUN is required");
            };
            let Some(data) = args.data.clone() else {
                bail!("--data DIR is required (the competition-layout data folder, with masks)");
            };
            let model = args.model.unwrap_or(SegModel::Deeplabv3plus);
            let backbone = args.backbone.unwrap_or(SegBackbone::Imagenet);
            (
                args.apply(SegTrainConfig::defaults(model, backbone)),
                data,
                out,
                false,
            )
        }
    };
    crate::outputs::check_dir(&out, Some(&data), "--out")?;
    let opts = SegTrainOptions {
        data,
        out: out.clone(),
        device,
        workers: args.workers.max(1),
        resume,
        hub: HubCache::from_env(),
    };
    let mut observer = Bars::default();
    let summary = train_segmenter(&config, &opts, &mut observer).with_context(|| {
        format!(
            "training {} (backbone {}) into {}",
            config.model,
            config.backbone,
            out.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let best = summary.best_record.as_ref().map_or(String::new(), |r| {
            format!(
                ": best validation pixel accuracy {:.4}, mIoU {:.4} (20 classes {:.4}), Dice {:.4} at epoch {}",
                r.val_pixel_accuracy, r.val_miou, r.val_miou_classes, r.val_dice, r.epoch
            )
        });
        println!(
            "trained {} (backbone {}) for {} epochs on {} images{best}{} -> {} (curves: {})",
            config.model,
            config.backbone,
            summary.epochs,
            summary.images.0,
            if summary.stopped_early {
                " (stopped early)"
            } else {
                ""
            },
            summary.best.display(),
            out.join("curves.png").display(),
        );
    }
    Ok(())
}

/// Progress bars on stderr: one per stage, and a line per finished epoch.
#[derive(Default)]
struct Bars {
    bar: Option<ProgressBar>,
}

impl TrainObserver for Bars {
    fn start(&mut self, what: &str, total: usize) {
        self.bar = Some(crate::progress::bar(total, what));
    }

    fn advance(&mut self, n: usize, loss: Option<f64>) {
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
            if let Some(l) = loss {
                let msg = bar.message();
                let base = msg.split(" loss ").next().unwrap_or_default().to_string();
                bar.set_message(format!("{base} loss {l:.4}"));
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn epoch(&mut self, summary: &str) {
        eprintln!("{summary}");
    }
}
