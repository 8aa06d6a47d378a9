//! A segmentation training run end to end: data, starting weights, augmentation, the epochs,
//! validation at each image's own size, checkpoints, metrics, curves, early stopping and resume.
//!
//! RUN holds what [`voc_tensor::run::RunPaths`] names: `config.json` (the [`SegTrainConfig`] and the
//! data folder), `metrics.jsonl` (one [`SegEpochRecord`] per epoch), `best.safetensors` and
//! `last.safetensors` (segmenter checkpoints `voc predict --segmenter` and `voc eval segment` load),
//! `resume.safetensors` (weights, optimiser state and counters), `curves.png`, and `confusion.csv` /
//! `confusion.png` of the best epoch. Every file is written to a temporary name and renamed, an
//! epoch's checkpoints before its metrics line, so a run killed at any moment resumes from its last
//! saved epoch.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use voc_classify::weights::FromWeights;
use voc_classify::ModelPreset;
use voc_core::metrics::SegmentationMetrics;
use voc_core::{Mask, RgbImage, MASK_CLASS_NAMES, NUM_MASK_CLASSES, VOID};
use voc_data::{
    AugmentConfig, BatchConfig, BatchLoader, CompetitionDir, Dataset, LoadMode, ResizeMode,
};
use voc_tensor::checkpoint::{self, CheckpointMeta};
use voc_tensor::hub::{self, HubCache, WeightsSource};
use voc_tensor::ops::cross_entropy_2d;
use voc_tensor::optim::{EarlyStopping, LrSchedule, Mode, ReduceLrOnPlateau};
use voc_tensor::run::{
    self as run_folder, Resumed, RunPaths, SaveThrottle, SavedRun, TrainObserver,
};

use crate::deeplabv3::{DeepLabV3, DEEPLABV3_ARCH};
use crate::deeplabv3plus::{DeepLabV3Plus, DeepLabV3PlusConfig, DEEPLABV3PLUS_ARCH};
use crate::error::{Result, SegmentError};
use crate::preset::SegmenterPreset;
use crate::segmenter::{argmax_mask, SegmentationNet, Segmenter, SizeStrategy};
use crate::train::config::{
    Monitor, SegAugment, SegBackbone, SegClassWeights, SegModel, SegSchedule, SegTrainConfig,
    SegValidation,
};
use crate::train::learner::{SegArch, SegBatchNorm, SegLearner, SegLearnerConfig};

/// Where a run reads and writes, and on what.
#[derive(Debug, Clone)]
pub struct SegTrainOptions {
    /// The competition-layout data folder (its splits must have masks).
    pub data: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    /// The device training runs on.
    pub device: Device,
    /// Threads preparing batches.
    pub workers: usize,
    /// Continue the run in `out` from its last saved epoch.
    pub resume: bool,
    /// Where pretrained weights come from.
    pub hub: HubCache,
}

/// One epoch, as a line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegEpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (cross-entropy, plus the Dice term when on).
    pub train_loss: f64,
    /// Cross-entropy on the validation images at their own sizes (void ignored, no class weights).
    pub val_loss: f64,
    /// Share of validation pixels (void excluded) classified right.
    pub val_pixel_accuracy: f64,
    /// Mean IoU over the 21 classes (background included), as `voc eval segment` reports it.
    pub val_miou: f64,
    /// Mean IoU over the 20 object classes.
    pub val_miou_classes: f64,
    /// IoU per class, background first (`null`: the class is in neither truth nor prediction).
    pub val_iou: Vec<Option<f64>>,
    /// The competition's segmentation Dice (what `voc score` computes from a submission).
    pub val_dice: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
    /// Training crops per second (training steps only).
    pub images_per_s: f64,
}

impl SegEpochRecord {
    /// The epoch in one line, as the CLI prints it.
    pub fn summary(&self) -> String {
        format!(
            "epoch {:>3} train loss {:.4}  val loss {:.4}  pixel acc {:.4}  mIoU {:.4} (20 classes {:.4})  Dice {:.4}  lr {:.2e}  {:.0}s ({:.1} img/s)",
            self.epoch,
            self.train_loss,
            self.val_loss,
            self.val_pixel_accuracy,
            self.val_miou,
            self.val_miou_classes,
            self.val_dice,
            self.lr,
            self.seconds,
            self.images_per_s
        )
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct SegTrainSummary {
    /// The run folder.
    pub run: PathBuf,
    /// The best checkpoint.
    pub best: PathBuf,
    /// Epoch of the best monitored value.
    pub best_epoch: usize,
    /// That epoch's record.
    pub best_record: Option<SegEpochRecord>,
    /// Epochs completed (resumed ones included).
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Training images and validation images.
    pub images: (usize, usize),
}

/// Counters a resumed run continues from (in `resume.safetensors`'s metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SegResumeState {
    epoch: usize,
    lr: f64,
    best: Option<f64>,
    best_epoch: usize,
    early_stop: Option<EarlyStopping>,
    plateau: Option<ReduceLrOnPlateau>,
}

/// The records of a segmentation run's `metrics.jsonl` (none when it does not exist); a malformed
/// line is an error naming it, a torn last line is dropped.
pub fn read_seg_records(path: &std::path::Path) -> Result<Vec<SegEpochRecord>> {
    Ok(run_folder::read_jsonl(path)?)
}

impl SegTrainConfig {
    /// The network with its configuration at the run's output stride.
    pub fn arch(&self) -> SegArch {
        match self.model {
            SegModel::Deeplabv3plus => {
                let default = DeepLabV3PlusConfig::default();
                SegArch::DeepLabV3Plus(DeepLabV3PlusConfig {
                    backbone: default.backbone.with_output_stride(self.output_stride),
                    pretrained_aspp: self.init_aspp,
                    ..default
                })
            }
            SegModel::Deeplabv3 => {
                let mut config = SegmenterPreset::DEEPLABV3_MOBILENET_V2.config;
                config.backbone.output_stride = self.output_stride;
                SegArch::DeepLabV3(config)
            }
        }
    }

    /// The training augmentation: random scale, a `crop` window (void where the image is smaller),
    /// flip and colour jitter; or only the window.
    pub fn augment_config(&self) -> AugmentConfig {
        let crop = ResizeMode::RandomCrop {
            height: self.crop,
            width: self.crop,
            pad: 0,
        };
        match self.augment {
            SegAugment::Standard => AugmentConfig {
                resize: crop,
                rotate_deg: 0.0,
                scale: self.scale,
                ..AugmentConfig::segmentation(self.crop)
            },
            SegAugment::None => AugmentConfig::eval(crop),
        }
    }
}

impl SegArch {
    /// The network from a complete set of `tensors` (constants only: inference runs without
    /// gradient bookkeeping); `source` names them in errors.
    pub fn from_tensors(
        &self,
        tensors: HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<SegmentationNet> {
        Ok(match *self {
            Self::DeepLabV3(c) => SegmentationNet::DeepLabV3(Box::new(DeepLabV3::from_tensors(
                tensors, source, c, device,
            )?)),
            Self::DeepLabV3Plus(c) => SegmentationNet::DeepLabV3Plus(Box::new(
                DeepLabV3Plus::from_tensors(tensors, source, c, device)?,
            )),
        })
    }

    /// The architecture name of its checkpoints.
    pub fn architecture(&self) -> &'static str {
        match self {
            Self::DeepLabV3(_) => DEEPLABV3_ARCH,
            Self::DeepLabV3Plus(_) => DEEPLABV3PLUS_ARCH,
        }
    }
}

/// The images of a run, with masks.
struct SegData {
    train: Dataset,
    val: Dataset,
}

fn masked_split(dir: &CompetitionDir, name: &str, what: &str) -> Result<voc_data::SplitIndex> {
    let index = dir.split(name)?;
    if index.is_empty() {
        return Err(SegmentError::BadArgument(format!(
            "the {what} split '{name}' ({}) has no images",
            index.csv_path().display()
        )));
    }
    if !index.has_masks {
        return Err(SegmentError::BadArgument(format!(
            "the {what} split '{name}' has no masks ({} is missing): training a segmenter needs the true masks",
            index.dir().join("seg").display()
        )));
    }
    Ok(index)
}

fn load_data(config: &SegTrainConfig, data: &std::path::Path) -> Result<SegData> {
    let dir = CompetitionDir::open(data)?;
    let train = masked_split(&dir, "train", "training")?;
    let (train, val) = match &config.validation {
        SegValidation::Split(name) => (train, masked_split(&dir, name, "validation")?),
        SegValidation::Fraction(f) => {
            let labels = train.labels.clone().ok_or_else(|| {
                SegmentError::BadArgument(format!(
                    "--val-fraction needs the training labels of {} (every label is -1): give --val-split",
                    train.csv_path().display()
                ))
            })?;
            let (t, v) = voc_data::stratified_split(&labels, *f, config.seed)?;
            if v.is_empty() || t.is_empty() {
                return Err(SegmentError::BadArgument(format!(
                    "--val-fraction {f} of {} images leaves an empty split",
                    labels.len()
                )));
            }
            (train.subset(&t)?, train.subset(&v)?)
        }
    };
    // Eager: every image and mask is read (and checked: mask values 0..=20 or 255, sizes equal to
    // the images') before anything is written.
    Ok(SegData {
        train: Dataset::new(train, LoadMode::Eager)?,
        val: Dataset::new(val, LoadMode::Eager)?,
    })
}

/// Median-frequency class weights over the training masks (void ignored): `median(f) / f[c]` with
/// `f[c]` = pixels of class `c` / pixels of the images containing `c`; a class absent from every mask
/// gets weight 1.
pub fn median_frequency_weights(masks: &[&ndarray::Array2<u8>]) -> Vec<f32> {
    let mut pixels = [0u64; NUM_MASK_CLASSES];
    let mut present_in = [0u64; NUM_MASK_CLASSES];
    for mask in masks {
        let mut counts = [0u64; NUM_MASK_CLASSES];
        let mut valid = 0u64;
        for &v in mask.iter() {
            if (v as usize) < NUM_MASK_CLASSES {
                counts[v as usize] += 1;
                valid += 1;
            }
        }
        for c in 0..NUM_MASK_CLASSES {
            if counts[c] > 0 {
                pixels[c] += counts[c];
                present_in[c] += valid;
            }
        }
    }
    let freq: Vec<Option<f64>> = (0..NUM_MASK_CLASSES)
        .map(|c| (present_in[c] > 0).then(|| pixels[c] as f64 / present_in[c] as f64))
        .collect();
    let mut known: Vec<f64> = freq.iter().flatten().copied().collect();
    if known.is_empty() {
        return vec![1.0; NUM_MASK_CLASSES];
    }
    known.sort_by(f64::total_cmp);
    let n = known.len();
    let median = if n % 2 == 1 {
        known[n / 2]
    } else {
        (known[n / 2 - 1] + known[n / 2]) / 2.0
    };
    freq.iter()
        .map(|f| f.map_or(1.0, |f| (median / f) as f32))
        .collect()
}

/// The starting weights `config` names: the VOC DeepLabV3's (all of them for `--model deeplabv3`, its
/// backbone for DeepLabV3+), the ImageNet MobileNetV2's backbone, or none (random).
fn starting_weights(
    config: &SegTrainConfig,
    opts: &SegTrainOptions,
) -> Result<(HashMap<String, Tensor>, String)> {
    let source = |default: WeightsSource| match &config.weights {
        Some(file) => WeightsSource::File(file.clone()),
        None => default,
    };
    let (source, keep_all) = match config.backbone {
        SegBackbone::Random => return Ok((HashMap::new(), "random".into())),
        SegBackbone::Voc => (
            source(SegmenterPreset::DEEPLABV3_MOBILENET_V2.weights_source()),
            config.model == SegModel::Deeplabv3,
        ),
        SegBackbone::Imagenet => (source(ModelPreset::MOBILENET_V2.weights_source()), false),
    };
    let path = hub::resolve_weights_in(&opts.hub, &source)?;
    let mut tensors = voc_classify::weights::read_weights(&path, &opts.device)?;
    let aspp = if config.init_aspp {
        aspp_from_deeplabv3(&tensors, &path)?
    } else {
        HashMap::new()
    };
    if !keep_all {
        tensors.retain(|name, _| name.starts_with(BACKBONE_PREFIX));
    }
    tensors.extend(aspp);
    if tensors.is_empty() {
        return Err(SegmentError::BadArgument(format!(
            "{}: no {BACKBONE_PREFIX}* tensors: expected MobileNetV2 weights in the transformers layout (e.g. {})",
            path.display(),
            match config.backbone {
                SegBackbone::Imagenet => ModelPreset::MOBILENET_V2.repo_id,
                _ => SegmenterPreset::DEEPLABV3_MOBILENET_V2.repo_id,
            }
        )));
    }
    Ok((tensors, path.display().to_string()))
}

const BACKBONE_PREFIX: &str = "mobilenet_v2.";

/// DeepLabV3+'s ASPP tensors from a pretrained DeepLabV3 head (transformers names): the 1x1 branch
/// from `conv_aspp`, image pooling from `conv_pool`, and the projection from `conv_projection`, whose
/// input is `[pool, aspp]` there and `[1x1, atrous 6, 12, 18, pool]` here: its two blocks of columns
/// go to the 1x1 and pooling blocks, the atrous blocks start at zero. With the atrous branches
/// silent, the projection's output equals the pretrained head's at the start.
fn aspp_from_deeplabv3(
    tensors: &HashMap<String, Tensor>,
    path: &std::path::Path,
) -> Result<HashMap<String, Tensor>> {
    let get = |name: &str| -> Result<&Tensor> {
        tensors.get(name).ok_or_else(|| {
            SegmentError::BadArgument(format!(
                "{}: no {name}: --init-aspp needs the pretrained DeepLabV3's head",
                path.display()
            ))
        })
    };
    let mut out = HashMap::new();
    for (ours, theirs) in [("aspp_1x1", "conv_aspp"), ("aspp_pool", "conv_pool")] {
        for leaf in [
            "convolution.weight",
            "normalization.weight",
            "normalization.bias",
            "normalization.running_mean",
            "normalization.running_var",
        ] {
            out.insert(
                format!("decode_head.{ours}.{leaf}"),
                get(&format!("segmentation_head.{theirs}.{leaf}"))?.clone(),
            );
        }
    }
    let projection = get("segmentation_head.conv_projection.convolution.weight")?;
    let (c_out, c_in, _, _) = projection.dims4()?;
    if c_in % 2 != 0 {
        return Err(SegmentError::BadArgument(format!(
            "{}: conv_projection takes {c_in} channels, not two equal branches",
            path.display()
        )));
    }
    let branch = c_in / 2;
    let pool = projection.narrow(1, 0, branch)?;
    let aspp = projection.narrow(1, branch, branch)?;
    let atrous = Tensor::zeros(
        (c_out, 3 * branch, 1, 1),
        projection.dtype(),
        projection.device(),
    )?;
    out.insert(
        "decode_head.aspp_projection.convolution.weight".into(),
        Tensor::cat(&[&aspp, &atrous, &pool], 1)?,
    );
    for leaf in ["weight", "bias", "running_mean", "running_var"] {
        out.insert(
            format!("decode_head.aspp_projection.normalization.{leaf}"),
            get(&format!(
                "segmentation_head.conv_projection.normalization.{leaf}"
            ))?
            .clone(),
        );
    }
    Ok(out)
}

/// Fails unless every backbone weight the network uses (and, when fine-tuning the whole pretrained
/// segmenter, every weight) came from the starting weights: a foreign file would otherwise train
/// from a silent random start.
fn check_coverage(
    learner: &SegLearner,
    pretrained: &HashMap<String, Tensor>,
    config: &SegTrainConfig,
    source: &str,
) -> Result<()> {
    let whole = config.model == SegModel::Deeplabv3 && config.backbone == SegBackbone::Voc;
    let mut missing: Vec<String> = learner
        .all_tensors()?
        .into_keys()
        .filter(|n| (whole || n.starts_with(BACKBONE_PREFIX)) && !pretrained.contains_key(n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
    Err(SegmentError::BadArgument(format!(
        "{source}: {} weights of the {} are missing (e.g. {}): not the weights --backbone {} expects",
        missing.len(),
        if whole { "segmenter" } else { "backbone" },
        shown.join(", "),
        config.backbone
    )))
}

/// Validation: every image at its own size through `voc predict`'s size strategy.
struct Validation {
    loss: f64,
    metrics: SegmentationMetrics,
    /// Per image, in the split's order.
    images: Vec<ImageScore>,
    /// The predicted masks of the best and worst images by [`ImageScore::miou`].
    examples: Vec<(String, Mask)>,
}

/// One validation image's score, a row of `val_scores.csv`.
#[derive(Debug, Clone)]
struct ImageScore {
    id: String,
    pixel_accuracy: f64,
    /// Mean IoU over the classes in the truth or the prediction.
    miou: f64,
    truth: String,
    predicted: String,
}

/// How many best and how many worst validation images keep their predicted masks.
const EXAMPLES_EACH_END: usize = 6;

fn image_score(id: &str, truth: &[u8], pred: &[u8]) -> ImageScore {
    let (mut inter, mut union) = ([0u64; 21], [0u64; 21]);
    let (mut correct, mut counted) = (0u64, 0u64);
    for (&t, &p) in truth.iter().zip(pred) {
        if t == VOID {
            continue;
        }
        counted += 1;
        let p = usize::from(p.min(20));
        let t = usize::from(t.min(20));
        if t == p {
            correct += 1;
            inter[t] += 1;
            union[t] += 1;
        } else {
            union[t] += 1;
            union[p] += 1;
        }
    }
    let present: Vec<usize> = (0..21).filter(|&c| union[c] > 0).collect();
    let miou = if present.is_empty() {
        0.0
    } else {
        present
            .iter()
            .map(|&c| inter[c] as f64 / union[c] as f64)
            .sum::<f64>()
            / present.len() as f64
    };
    let names = |m: &[u8]| {
        let counts = voc_core::image::value_counts(m);
        (1..21)
            .filter(|&c| counts[c] > 0)
            .map(|c| MASK_CLASS_NAMES[c])
            .collect::<Vec<_>>()
            .join(" ")
    };
    ImageScore {
        id: id.to_string(),
        pixel_accuracy: correct as f64 / counted.max(1) as f64,
        miou,
        truth: names(truth),
        predicted: names(pred),
    }
}

/// Keeps the `EXAMPLES_EACH_END` highest and lowest scored masks seen so far.
fn keep_example(kept: &mut Vec<(f64, String, Mask)>, score: f64, id: &str, mask: &Mask) {
    kept.push((score, id.to_string(), mask.clone()));
    if kept.len() > 2 * EXAMPLES_EACH_END {
        kept.sort_by(|a, b| b.0.total_cmp(&a.0));
        kept.remove(EXAMPLES_EACH_END);
    }
}

/// `val_scores.csv` and `val_examples/ID.png` of the best epoch. The examples folder is replaced
/// whole (written beside it, then renamed), so it never mixes two epochs.
fn write_val_outputs(
    paths: &RunPaths,
    images: &[ImageScore],
    examples: &[(String, Mask)],
) -> Result<()> {
    let mut text = String::from("Id,pixel_accuracy,miou,truth,predicted\n");
    for s in images {
        text.push_str(&format!(
            "{},{:.6},{:.6},{},{}\n",
            s.id, s.pixel_accuracy, s.miou, s.truth, s.predicted
        ));
    }
    voc_core::write_atomic(&paths.val_scores(), |f| {
        std::io::Write::write_all(f, text.as_bytes())
    })?;
    let dir = paths.val_examples();
    let staging = paths.dir.join(".val_examples.partial");
    let io = |path: &std::path::Path, source: std::io::Error| voc_tensor::VocError::Io {
        path: path.to_path_buf(),
        source,
    };
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
    for (id, mask) in examples {
        mask.write_png(&staging.join(format!("{id}.png")))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    std::fs::rename(&staging, &dir).map_err(|e| io(&dir, e))?;
    Ok(())
}

fn validate(
    segmenter: &Segmenter,
    data: &Dataset,
    device: &Device,
    observer: &mut dyn TrainObserver,
    what: &str,
) -> Result<Validation> {
    let mut metrics = SegmentationMetrics::new();
    let (mut loss_sum, mut pixels) = (0f64, 0u64);
    let mut images = Vec::with_capacity(data.len());
    let mut kept = Vec::new();
    observer.start(what, data.len());
    for i in 0..data.len() {
        let sample = data.get(i)?;
        let (h, w) = (sample.image.shape()[0], sample.image.shape()[1]);
        let image = RgbImage::new(h, w, sample.image.iter().copied().collect())?;
        let mask = sample.mask.as_ref().ok_or_else(|| {
            SegmentError::BadArgument(format!("validation image {} has no mask", sample.id))
        })?;
        let truth: Vec<u8> = mask.iter().copied().collect();
        let logits = segmenter.logits(&image, device)?;
        let valid = truth.iter().filter(|&&v| v != VOID).count() as u64;
        if valid > 0 {
            let target = Tensor::from_vec(
                truth.iter().map(|&v| u32::from(v)).collect::<Vec<u32>>(),
                (1, h, w),
                device,
            )?;
            let l = cross_entropy_2d(&logits, &target, None, Some(u32::from(VOID)))?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            loss_sum += l * valid as f64;
            pixels += valid;
        }
        let predicted = argmax_mask(&logits)?;
        metrics.add_image(&truth, predicted.as_slice())?;
        let score = image_score(&sample.id, &truth, predicted.as_slice());
        keep_example(&mut kept, score.miou, &sample.id, &predicted);
        images.push(score);
        observer.advance(1, None);
    }
    observer.finish();
    Ok(Validation {
        loss: loss_sum / pixels.max(1) as f64,
        metrics,
        images,
        examples: kept.into_iter().map(|(_, id, m)| (id, m)).collect(),
    })
}

/// The metadata of a segmenter checkpoint of this run.
fn segmenter_meta(config: &SegTrainConfig, record: Option<&SegEpochRecord>) -> CheckpointMeta {
    let mut meta = CheckpointMeta::new(
        config.arch().architecture(),
        MASK_CLASS_NAMES.map(String::from).to_vec(),
    );
    meta.input_size = Some((config.crop, config.crop));
    meta.normalization = SegmenterPreset::DEEPLABV3_MOBILENET_V2.normalization;
    meta.training = serde_json::to_value(config).unwrap_or_default();
    meta.seed = Some(config.seed);
    meta.extra = serde_json::json!({
        "output_stride": config.output_stride,
        "size_strategy": config.val_size,
        "epoch": record.map(|r| r.epoch),
        "val_miou": record.map(|r| r.val_miou),
        "val_dice": record.map(|r| r.val_dice),
        "val_pixel_accuracy": record.map(|r| r.val_pixel_accuracy),
    });
    meta
}

/// Runs (or resumes) the training `config` describes; see the module docs for what RUN holds.
///
/// Errors: an invalid config, data without masks or with bad mask values, a RUN that already holds a
/// run (without `resume`), resuming with another config or a RUN without a run, starting weights that
/// are missing or do not fit.
pub fn train_segmenter(
    config: &SegTrainConfig,
    opts: &SegTrainOptions,
    observer: &mut dyn TrainObserver,
) -> Result<SegTrainSummary> {
    config.validate()?;
    let strategy: SizeStrategy = config.val_size.parse()?;
    let paths = RunPaths::new(&opts.out);
    run_folder::check_run(&paths, &opts.data, config, opts.resume, |a, b| {
        a.differences(b)
    })?;

    // Data and starting weights before RUN/config.json: a run that cannot start leaves nothing.
    let data = load_data(config, &opts.data)?;
    if config.bn != SegBatchNorm::Frozen && data.train.len() < 2 {
        return Err(SegmentError::BadArgument(format!(
            "{} training image(s): batch statistics (--bn {}) need batches of at least 2; add images or use --bn frozen",
            data.train.len(),
            config.bn
        )));
    }
    let resumed: Option<Resumed<SegResumeState>> = if opts.resume && paths.resume().is_file() {
        Some(run_folder::load_resume(&paths.resume(), &opts.device)?)
    } else {
        None
    };
    let (values, source) = match &resumed {
        Some(r) => (r.weights.clone(), paths.resume().display().to_string()),
        None => starting_weights(config, opts)?,
    };

    let class_weight = match config.class_weights {
        SegClassWeights::MedianFreq => {
            let samples: Vec<_> = (0..data.train.len())
                .map(|i| data.train.get(i))
                .collect::<std::result::Result<_, _>>()?;
            let masks: Vec<&ndarray::Array2<u8>> =
                samples.iter().filter_map(|s| s.mask.as_ref()).collect();
            Some(median_frequency_weights(&masks))
        }
        SegClassWeights::None => None,
    };
    let arch = config.arch();
    let learner_config = SegLearnerConfig {
        optimizer: config.optimizer,
        lr: config.lr,
        weight_decay: config.weight_decay,
        bn: config.bn,
        class_weight,
        dice_weight: config.dice_weight,
    };
    let mut learner = SegLearner::new(
        arch,
        values.clone(),
        config.train,
        config.seed,
        &learner_config,
        &opts.device,
    )?;
    if resumed.is_none() && config.backbone != SegBackbone::Random {
        check_coverage(&learner, &values, config, &source)?;
    }
    drop(values);

    let mut records: Vec<SegEpochRecord> = Vec::new();
    let saved = SavedRun {
        format: voc_tensor::run::RUN_FORMAT,
        config: config.clone(),
        data: opts.data.clone(),
    };
    if opts.resume {
        // A resumed run may have been given another number of epochs: config.json says the current.
        run_folder::create_run(&paths, &saved)?;
    }
    if let Some(r) = &resumed {
        learner.load_optimizer_state(&r.optimizer)?;
        learner.set_learning_rate(r.state.lr);
        records = read_seg_records(&paths.metrics())?
            .into_iter()
            .filter(|rec| rec.epoch <= r.state.epoch)
            .collect();
        run_folder::write_jsonl(&paths.metrics(), &records)?;
    } else if opts.resume {
        // Killed before the first checkpoint: start over in the same folder.
        run_folder::write_jsonl::<SegEpochRecord>(&paths.metrics(), &[])?;
    } else {
        run_folder::create_run(&paths, &saved)?;
    }

    let mode = match config.monitor {
        Monitor::ValLoss => Mode::Min,
        Monitor::ValMiou => Mode::Max,
    };
    let state = resumed.as_ref().map(|r| r.state.clone());
    let mut best = state.as_ref().and_then(|s| s.best);
    let mut best_epoch = state.as_ref().map_or(0, |s| s.best_epoch);
    let done = state.as_ref().map_or(0, |s| s.epoch);
    let mut plateau = match &state {
        Some(s) => s.plateau.clone(),
        None => (config.schedule == SegSchedule::Plateau)
            .then(|| {
                ReduceLrOnPlateau::new(mode, config.plateau_factor, config.plateau_patience)
                    .map(|p| p.with_min_lr(config.min_lr))
            })
            .transpose()?,
    };
    let mut early_stop = match &state {
        Some(s) => s.early_stop.clone(),
        None => (config.patience > 0).then(|| EarlyStopping::new(mode, config.patience, 0.0)),
    };

    // Training-mode batch norm cannot take a batch of one crop: such runs drop a short last batch.
    let drop_last = config.bn != SegBatchNorm::Frozen && data.train.len() >= config.batch;
    let train_loader = BatchLoader::new(
        data.train.clone(),
        BatchConfig {
            batch_size: config.batch,
            shuffle: true,
            drop_last,
            seed: config.seed,
            workers: opts.workers.max(1),
            prefetch: 2,
            pad_multiple: None,
            augment: config.augment_config(),
            normalize: SegmenterPreset::DEEPLABV3_MOBILENET_V2.normalization,
            masks: true,
            copy_paste: config.copy_paste,
        },
        opts.device.clone(),
    )?;
    let steps_per_epoch = train_loader.num_batches();
    let schedule = (config.schedule == SegSchedule::Poly).then(|| LrSchedule::Poly {
        total: config.epochs * steps_per_epoch,
        power: 0.9,
    });

    let mut throttle = SaveThrottle::default();
    type BestEpoch = (
        HashMap<String, Tensor>,
        CheckpointMeta,
        SegmentationMetrics,
        Vec<ImageScore>,
        Vec<(String, Mask)>,
    );
    let mut pending_best: Option<BestEpoch> = None;
    let mut stopped_early = false;
    let mut epochs_run = done;
    for epoch in done + 1..=config.epochs {
        let t0 = Instant::now();
        let (mut loss_sum, mut batches, mut images) = (0f64, 0usize, 0usize);
        observer.start(&format!("epoch {epoch}/{}", config.epochs), steps_per_epoch);
        for (i, batch) in train_loader.epoch(epoch).enumerate() {
            let batch = batch?;
            if let Some(s) = &schedule {
                learner.set_learning_rate(s.lr_at(config.lr, (epoch - 1) * steps_per_epoch + i));
            }
            let masks = batch.masks.as_ref().ok_or_else(|| {
                SegmentError::BadArgument("a training batch without masks".into())
            })?;
            let l = learner.step(&batch.images, masks)?;
            if !l.is_finite() {
                return Err(SegmentError::BadArgument(format!(
                    "the training loss became {l} at epoch {epoch}: lower --lr"
                )));
            }
            loss_sum += f64::from(l);
            batches += 1;
            images += batch.len();
            observer.advance(1, Some(loss_sum / batches as f64));
        }
        observer.finish();
        let train_seconds = t0.elapsed().as_secs_f64();

        let weights = learner.all_tensors()?;
        let segmenter = Segmenter::new(
            arch.from_tensors(weights.clone(), "the trained weights", &opts.device)?,
            SegmenterPreset::DEEPLABV3_MOBILENET_V2.normalization,
            strategy,
        );
        let val = validate(
            &segmenter,
            &data.val,
            &opts.device,
            observer,
            &format!("epoch {epoch}/{}: validation", config.epochs),
        )?;
        drop(segmenter);
        let m = &val.metrics;
        let monitored = match config.monitor {
            Monitor::ValLoss => val.loss,
            Monitor::ValMiou => m.mean_iou().unwrap_or(0.0),
        };
        if let Some(p) = plateau.as_mut() {
            let next = p.step(monitored, learner.learning_rate());
            learner.set_learning_rate(next);
        }
        let stop = early_stop
            .as_mut()
            .is_some_and(|e| e.should_stop(monitored));
        let seconds = t0.elapsed().as_secs_f64();
        let record = SegEpochRecord {
            epoch,
            train_loss: loss_sum / batches.max(1) as f64,
            val_loss: val.loss,
            val_pixel_accuracy: m.pixel_accuracy().unwrap_or(0.0),
            val_miou: m.mean_iou().unwrap_or(0.0),
            val_miou_classes: m.mean_class_iou().unwrap_or(0.0),
            val_iou: m.class_iou().to_vec(),
            val_dice: m.segmentation_dice().unwrap_or(0.0),
            lr: learner.learning_rate(),
            seconds,
            images_per_s: images as f64 / train_seconds.max(1e-9),
        };
        let improved = best.is_none_or(|b| match mode {
            Mode::Min => monitored < b,
            Mode::Max => monitored > b,
        });
        let meta = segmenter_meta(config, Some(&record));
        if improved {
            best = Some(monitored);
            best_epoch = epoch;
            pending_best = Some((
                weights.clone(),
                meta.clone(),
                val.metrics.clone(),
                val.images.clone(),
                val.examples.clone(),
            ));
        }
        let state = SegResumeState {
            epoch,
            lr: learner.learning_rate(),
            best,
            best_epoch,
            early_stop: early_stop.clone(),
            plateau: plateau.clone(),
        };
        // The best weights wait in memory until the throttle lets the files be written; the resume
        // state saved with them names the same best epoch.
        // The epoch's metrics line first, then the checkpoints: a kill between the two leaves a resume
        // state older than metrics.jsonl (its extra lines are dropped on resume and the epochs run again),
        // never a resume state whose epoch has no metrics line.
        records.push(record.clone());
        run_folder::write_jsonl(&paths.metrics(), &records)?;
        write_seg_curves(
            &paths.curves(),
            &records,
            Some(best_epoch),
            stop.then_some(epoch),
        )?;
        if throttle.due(epoch == config.epochs || stop) {
            if let Some((best_weights, best_meta, best_metrics, images, examples)) =
                pending_best.take()
            {
                checkpoint::save_checkpoint_tensors(&paths.best(), &best_weights, &best_meta)?;
                write_confusion(&paths, &best_metrics, epoch_of(&best_meta))?;
                write_val_outputs(&paths, &images, &examples)?;
            }
            run_folder::save_resume(
                &paths.resume(),
                &weights,
                learner.optimizer_state()?,
                meta.clone(),
                &state,
            )?;
            checkpoint::save_checkpoint_tensors(&paths.last(), &weights, &meta)?;
            throttle.saved();
        }
        observer.epoch(&record.summary());
        epochs_run = epoch;
        if stop {
            stopped_early = true;
            break;
        }
    }

    Ok(SegTrainSummary {
        run: paths.dir.clone(),
        best: paths.best(),
        best_epoch,
        best_record: records.iter().find(|r| r.epoch == best_epoch).cloned(),
        epochs: epochs_run,
        stopped_early,
        images: (data.train.len(), data.val.len()),
    })
}

fn epoch_of(meta: &CheckpointMeta) -> usize {
    meta.extra["epoch"].as_u64().unwrap_or(0) as usize
}

/// `confusion.csv` and `confusion.png` of the best epoch.
fn write_confusion(paths: &RunPaths, metrics: &SegmentationMetrics, epoch: usize) -> Result<()> {
    let names: Vec<String> = MASK_CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let confusion: Vec<Vec<u64>> = metrics.confusion().iter().map(|r| r.to_vec()).collect();
    voc_data::chart::write_confusion(
        &paths.confusion_csv(),
        &paths.confusion_png(),
        &format!(
            "confusion, validation, epoch {epoch}, {} images",
            metrics.images()
        ),
        &names,
        &confusion,
    )?;
    Ok(())
}

/// The learning-curve panels of a segmenter run: losses, validation scores and the learning rate per
/// epoch, with the best epoch and an early stop marked (`curves.png`, `voc report`).
pub fn seg_curve_panels(
    records: &[SegEpochRecord],
    best_epoch: Option<usize>,
    stopped_at: Option<usize>,
) -> Vec<voc_data::chart::Panel> {
    voc_data::chart::training_curve_panels(
        records,
        &[
            ("pixel acc", |r| r.val_pixel_accuracy),
            ("mIoU", |r| r.val_miou),
            ("Dice", |r| r.val_dice),
        ],
        best_epoch,
        stopped_at,
    )
}

impl voc_data::chart::EpochPoint for SegEpochRecord {
    fn epoch(&self) -> usize {
        self.epoch
    }
    fn train_loss(&self) -> f64 {
        self.train_loss
    }
    fn val_loss(&self) -> f64 {
        self.val_loss
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
}

/// `curves.png`: [`seg_curve_panels`] as a picture.
pub fn write_seg_curves(
    path: &std::path::Path,
    records: &[SegEpochRecord],
    best_epoch: Option<usize>,
    stopped_at: Option<usize>,
) -> Result<()> {
    voc_data::chart::write_panels_png(
        path,
        &seg_curve_panels(records, best_epoch, stopped_at),
        420,
        300,
    )
    .map_err(|e| SegmentError::BadArgument(format!("curves: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The projection's columns: DeepLabV3's `[pool, aspp]` become `[aspp, 0, 0, 0, pool]`, so with
    /// silent atrous branches DeepLabV3+'s projection computes what the pretrained one did.
    #[test]
    fn aspp_initialisation_puts_the_pretrained_columns_where_the_branches_are() {
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        for branch in ["conv_aspp", "conv_pool"] {
            tensors.insert(
                format!("segmentation_head.{branch}.convolution.weight"),
                Tensor::ones((2, 3, 1, 1), DType::F32, &device).unwrap(),
            );
        }
        for conv in ["conv_aspp", "conv_pool", "conv_projection"] {
            for leaf in ["weight", "bias", "running_mean", "running_var"] {
                tensors.insert(
                    format!("segmentation_head.{conv}.normalization.{leaf}"),
                    Tensor::ones(2, DType::F32, &device).unwrap(),
                );
            }
        }
        // 2 outputs x [pool (2 channels) = 1, 2 | aspp (2 channels) = 3, 4].
        let projection = Tensor::new(&[[1f32, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], &device)
            .unwrap()
            .reshape((2, 4, 1, 1))
            .unwrap();
        tensors.insert(
            "segmentation_head.conv_projection.convolution.weight".into(),
            projection,
        );
        let out = aspp_from_deeplabv3(&tensors, std::path::Path::new("x")).unwrap();
        let w = out["decode_head.aspp_projection.convolution.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            w,
            [
                3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 5.0, 6.0
            ]
        );
        assert!(out.contains_key("decode_head.aspp_1x1.normalization.running_var"));
        tensors.remove("segmentation_head.conv_pool.convolution.weight");
        let err = aspp_from_deeplabv3(&tensors, std::path::Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("conv_pool"), "{err}");
    }

    #[test]
    fn median_frequency_weights_balance_pixel_shares() {
        // Image 1: 6 background, 2 cat (8); image 2: 4 background, 4 dog. Background: 10/16, cat:
        // 2/8, dog: 4/8; median 0.5 -> weights 0.8, 2, 1; absent classes 1.
        let a = ndarray::Array2::from_shape_vec((2, 4), vec![0, 0, 0, 0, 0, 0, 8, 8]).unwrap();
        let b = ndarray::Array2::from_shape_vec((2, 5), vec![0, 0, 0, 0, 12, 12, 12, 12, 255, 255])
            .unwrap();
        let w = median_frequency_weights(&[&a, &b]);
        assert!((w[0] - 0.8).abs() < 1e-6, "{w:?}");
        assert!((w[8] - 2.0).abs() < 1e-6, "{w:?}");
        assert!((w[12] - 1.0).abs() < 1e-6, "{w:?}");
        assert_eq!(w[1], 1.0);
    }
}
