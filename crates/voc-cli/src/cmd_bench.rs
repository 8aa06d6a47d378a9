//! `voc bench`: time inference or one full training step of a network on random data.
//!
//! The weights are random (seeded): speed does not depend on their values, and the command then needs no
//! download. Inference runs the network as `voc predict` does (constant weights, batch norm in eval mode,
//! so it is folded into the convolutions); training runs the forward pass with batch norm in training
//! mode, the loss (BCE on 20 labels for classifiers, cross-entropy with ignore index 255 for segmenters),
//! the backward pass and an SGD step with momentum over every trainable variable.
//!
//! Two workloads of `voc train classify` (classifiers only): `--train --unfreeze K` times one fine-tuning
//! step of its `Learner` (the last K backbone blocks, the widening 1x1 convolution and the head trainable,
//! the rest constant, batch norm frozen in eval mode, AdamW with lr 1e-3 on the head and 1e-4 on the
//! backbone), and `--features` the frozen feature pass of `--mode frozen` (pooled backbone features on
//! constant weights).
use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::{Args, ValueEnum};
use voc_classify::train::{
    BnMode, Learner, Loss, OptimizerKind, Phase, TrainConfig, TrainMode, Unfreeze,
};
use voc_classify::{ClassifierConfig, ImageClassifier, ModelChoice};
use voc_segment::{DeepLabV3, DeepLabV3Config, DeepLabV3Plus, DeepLabV3PlusConfig};
use voc_tensor::optim::{self, Optimizer, Sgd, SgdConfig};
use voc_tensor::DeviceSpec;

/// Networks `voc bench` can time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchModel {
    #[value(name = "mobilenet_v2")]
    MobileNetV2,
    #[value(name = "efficientnet_lite0")]
    EfficientNetLite0,
    #[value(name = "resnet50")]
    ResNet50,
    #[value(name = "resnet50v2")]
    ResNet50V2,
    #[value(name = "vgg16")]
    Vgg16,
    #[value(name = "deeplabv3")]
    DeepLabV3,
    #[value(name = "deeplabv3plus")]
    DeepLabV3Plus,
}

impl BenchModel {
    fn name(self) -> &'static str {
        match self {
            Self::MobileNetV2 => "mobilenet_v2",
            Self::EfficientNetLite0 => "efficientnet_lite0",
            Self::ResNet50 => "resnet50",
            Self::ResNet50V2 => "resnet50v2",
            Self::Vgg16 => "vgg16",
            Self::DeepLabV3 => "deeplabv3",
            Self::DeepLabV3Plus => "deeplabv3plus",
        }
    }

    fn is_segmenter(self) -> bool {
        matches!(self, Self::DeepLabV3 | Self::DeepLabV3Plus)
    }

    /// The input size each network was trained at.
    fn default_size(self) -> usize {
        if self.is_segmenter() {
            513
        } else {
            224
        }
    }
}

/// Labels of the VOC multi-label classifier, classes of the segmenter (with background).
const CLASSIFIER_OUTPUTS: usize = voc_core::NUM_CLASSES;
const SEGMENT_CLASSES: usize = voc_core::NUM_MASK_CLASSES;
const IGNORE_INDEX: u8 = voc_core::VOID;

#[derive(Args)]
pub struct BenchArgs {
    /// Network to time.
    #[arg(long, value_enum, default_value = "mobilenet_v2")]
    model: BenchModel,
    /// Images per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Input height and width (default: 224 for classifiers, 513 for segmenters).
    #[arg(long)]
    size: Option<usize>,
    /// Time one training step (forward in training mode, loss, backward, SGD step) instead of inference.
    #[arg(long)]
    train: bool,
    /// With --train: time a fine-tuning step of `voc train classify` instead: the last K backbone blocks
    /// (the stem counts as one), the 1x1 widening conv and the head train, the rest is constant, batch
    /// norm frozen (eval mode), AdamW with lr 1e-3 on the head and 1e-4 on the backbone. Classifiers only.
    #[arg(long, value_name = "K|all")]
    unfreeze: Option<Unfreeze>,
    /// Time the frozen feature pass (pooled backbone features on constant weights, what `voc train
    /// classify --mode frozen` runs per image) instead of the whole network. Classifiers, inference only.
    #[arg(long)]
    features: bool,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed iterations first (allocator and caches warm up).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Seed of the random weights, inputs and targets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

/// Timing summary of one `voc bench` run (the `--json` line).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub batch: usize,
    pub size: usize,
    pub train: bool,
    /// The fine-tuned blocks of a `--unfreeze` step (`"5"`, `"all"`), `null` otherwise.
    pub unfreeze: Option<String>,
    /// The frozen feature pass (`--features`) was timed.
    pub features: bool,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub images_per_s: f64,
    pub peak_rss_mb: f64,
}

/// A network under test, with what one timed iteration needs.
enum Workload {
    Classifier(Box<ImageClassifier>),
    DeepLabV3(Box<DeepLabV3>),
    DeepLabV3Plus(Box<DeepLabV3Plus>),
}

/// One timed iteration.
type Step = Box<dyn FnMut(&Batch) -> anyhow::Result<()>>;

impl Workload {
    fn build(model: BenchModel, vb: VarBuilder) -> anyhow::Result<Self> {
        let classifier = |arch| ClassifierConfig {
            arch,
            num_classes: CLASSIFIER_OUTPUTS,
            dropout: 0.2,
            head: voc_classify::HeadKind::Linear,
        };
        Ok(match model {
            BenchModel::MobileNetV2
            | BenchModel::EfficientNetLite0
            | BenchModel::ResNet50
            | BenchModel::ResNet50V2
            | BenchModel::Vgg16 => {
                let preset = voc_classify::ModelPreset::by_name(model.name())?;
                Self::Classifier(Box::new(ImageClassifier::new(vb, classifier(preset.arch))?))
            }
            BenchModel::DeepLabV3 => {
                Self::DeepLabV3(Box::new(DeepLabV3::new(vb, DeepLabV3Config::default())?))
            }
            BenchModel::DeepLabV3Plus => Self::DeepLabV3Plus(Box::new(DeepLabV3Plus::new(
                vb,
                DeepLabV3PlusConfig::default(),
            )?)),
        })
    }

    /// Classifier logits `N x 20`, or segmentation logits `N x 21 x H x W` at the input size (DeepLabV3
    /// upsampled from its output stride as it was trained).
    fn forward(&self, x: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        Ok(match self {
            Self::Classifier(m) => m.forward_t(x, train)?,
            Self::DeepLabV3(m) => m.logits_at(x, h, w, train)?,
            Self::DeepLabV3Plus(m) => m.forward_t(x, train)?,
        })
    }

    /// Pooled features `N x F` of a classifier on its frozen backbone (`--features`).
    fn pooled(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        match self {
            Self::Classifier(m) => Ok(m.pooled_t(x, false)?),
            _ => bail!("--features needs a classifier"),
        }
    }
}

/// The current value of every variable of `varmap`, by name (detached: constants from here on).
fn varmap_tensors(varmap: &VarMap) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect())
}

/// The fine-tuning learner of `voc train classify --mode finetune` on the weights `values`: the last
/// `unfreeze` blocks, the widening conv and the head are variables, batch norm frozen, AdamW.
fn finetune_learner(
    model: BenchModel,
    unfreeze: Unfreeze,
    size: usize,
    seed: u64,
    values: HashMap<String, Tensor>,
    device: &Device,
) -> anyhow::Result<Learner> {
    let choice = ModelChoice::by_name(model.name())?;
    let config = TrainConfig {
        unfreeze,
        bn: BnMode::Frozen,
        optimizer: OptimizerKind::Adamw,
        lr: 1e-3,
        backbone_lr: 1e-4,
        seed,
        ..TrainConfig::defaults(model.name(), TrainMode::Finetune, size)
    };
    let loss = Loss {
        pos_weight: None,
        focal_gamma: None,
    };
    Ok(Learner::new(
        choice,
        &config,
        Phase::Finetune,
        values,
        loss,
        device,
    )?)
}

/// Random inputs and targets of one batch.
struct Batch {
    images: Tensor,
    targets: Tensor,
}

/// A small seeded generator (splitmix64): the CPU backend of candle cannot be seeded, and the benchmark
/// should run on the same numbers every time.
struct SeededNoise(u64);

impl SeededNoise {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(f32::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    fn tensor(
        &mut self,
        shape: &[usize],
        device: &Device,
        f: impl Fn(&mut Self) -> f32,
    ) -> anyhow::Result<Tensor> {
        let n = shape.iter().product::<usize>();
        let data: Vec<f32> = (0..n).map(|_| f(self)).collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

/// Replaces the random initial values of every variable by seeded ones with the same mean and spread;
/// constant variables (batch-norm scales and shifts, running statistics) stay as they are.
fn reseed_variables(varmap: &VarMap, noise: &mut SeededNoise) -> anyhow::Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let values = var
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        if std == 0.0 {
            continue;
        }
        let (mean, std) = (mean as f32, std as f32);
        let fresh = noise.tensor(var.dims(), var.device(), |g| mean + std * g.normal())?;
        var.set(&fresh.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

fn make_batch(
    model: BenchModel,
    batch: usize,
    size: usize,
    device: &Device,
    noise: &mut SeededNoise,
) -> anyhow::Result<Batch> {
    let images = noise.tensor(&[batch, 3, size, size], device, |g| g.normal())?;
    let targets = if model.is_segmenter() {
        // Classes 0..21 with about 5% of pixels on the ignore index, as VOC's object borders.
        let pixels: Vec<u8> = (0..batch * size * size)
            .map(|_| {
                let u = noise.uniform();
                if u >= 0.95 {
                    IGNORE_INDEX
                } else {
                    ((u / 0.95 * SEGMENT_CLASSES as f32) as u8).min(SEGMENT_CLASSES as u8 - 1)
                }
            })
            .collect();
        Tensor::from_vec(pixels, (batch, size, size), device)?
    } else {
        noise.tensor(&[batch, CLASSIFIER_OUTPUTS], device, |g| {
            if g.uniform() < 0.1 {
                1.0
            } else {
                0.0
            }
        })?
    };
    Ok(Batch { images, targets })
}

/// Peak resident set size of this process in MiB (`VmHWM`), or 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0.0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Median, minimum and maximum of the samples (ms).
fn summarise(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        0.5 * (samples[n / 2 - 1] + samples[n / 2])
    };
    (median, samples[0], samples[n - 1])
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let size = args.size.unwrap_or_else(|| args.model.default_size());
    // MobileNetV2 halves the input five times; below 32 pixels the last maps would be empty.
    if size < 32 {
        bail!("--size {size}: the networks need inputs of at least 32x32 pixels");
    }
    // The image-pooling branch of the segmenters is batch-normalised over the batch alone.
    if args.train && args.model.is_segmenter() && args.batch < 2 {
        bail!(
            "--train with {} needs --batch of at least 2: the batch norm after its global pooling needs \
             more than one value per channel",
            args.model.name()
        );
    }
    if args.unfreeze.is_some() && !args.train {
        bail!("--unfreeze times a fine-tuning step: it needs --train");
    }
    if args.features && args.train {
        bail!("--features times the frozen feature pass (inference): not with --train");
    }
    if (args.unfreeze.is_some() || args.features) && args.model.is_segmenter() {
        bail!(
            "--unfreeze and --features time the classifier trainer's workloads: use --model \
             a classifier (mobilenet_v2, efficientnet_lite0, resnet50, resnet50v2, vgg16), not {}",
            args.model.name()
        );
    }
    if args.unfreeze == Some(Unfreeze::Last(0)) {
        bail!("--unfreeze 0: no backbone block would train (--features times the frozen feature pass)");
    }
    let device = args.device.open()?;
    let mut noise = SeededNoise(args.seed);
    let device_name = voc_tensor::device::device_name(&device);

    let varmap = VarMap::new();
    let trainable = Workload::build(
        args.model,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )
    .with_context(|| format!("building {}", args.model.name()))?;
    reseed_variables(&varmap, &mut noise)?;
    let mut step: Step = if let (true, Some(unfreeze)) = (args.train, args.unfreeze) {
        // The seeded weights become the "pretrained" values the learner splits into constants and
        // variables.
        let values = varmap_tensors(&varmap)?;
        drop(trainable);
        let mut learner = finetune_learner(args.model, unfreeze, size, args.seed, values, &device)
            .with_context(|| {
                format!("building the fine-tuning learner of {}", args.model.name())
            })?;
        Box::new(move |b: &Batch| {
            // The loss is read back, so the step has finished when this returns.
            let loss = learner.step(&b.images, &b.targets)?;
            if !loss.is_finite() {
                bail!("the fine-tuning step's loss is {loss}");
            }
            Ok(())
        })
    } else if args.train {
        let groups = optim::param_groups(&varmap, 4e-5, &|_| false);
        let mut sgd = Sgd::new(
            groups,
            SgdConfig {
                lr: 1e-3,
                momentum: 0.9,
                ..Default::default()
            },
        )?;
        let model = args.model;
        Box::new(move |b: &Batch| {
            let logits = trainable.forward(&b.images, true)?;
            let loss = if model.is_segmenter() {
                voc_tensor::ops::cross_entropy_2d(
                    &logits,
                    &b.targets,
                    None,
                    Some(IGNORE_INDEX as u32),
                )?
            } else {
                voc_tensor::ops::bce_with_logits(&logits, &b.targets, None)?
            };
            sgd.backward_step(&loss)?;
            Ok(())
        })
    } else {
        // Inference on constant weights, as a loaded pretrained model: no gradient bookkeeping, and batch
        // norm folded into the convolutions.
        let tensors = varmap_tensors(&varmap)?;
        drop(trainable);
        let frozen = Workload::build(
            args.model,
            VarBuilder::from_tensors(tensors, DType::F32, &device),
        )?;
        let features = args.features;
        Box::new(move |b: &Batch| {
            // As `voc predict` and the frozen feature pass run them: one image per thread.
            let out = voc_tensor::ops::per_image(&b.images, |x| {
                if features {
                    frozen.pooled(x)
                } else {
                    frozen.forward(x, false)
                }
            })?;
            // Reading one value forces any queued device work to finish.
            out.flatten_all()?
                .narrow(0, 0, 1)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            Ok(())
        })
    };

    let batch = make_batch(args.model, args.batch, size, &device, &mut noise)?;
    let bar = crate::progress::bar(
        args.warmup + args.iters,
        &format!("bench {} warm-up", args.model.name()),
    );
    for _ in 0..args.warmup {
        step(&batch)?;
        bar.inc(1);
    }
    bar.set_message(format!("bench {}", args.model.name()));
    let mut samples = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        device.synchronize()?;
        let start = Instant::now();
        step(&batch)?;
        device.synchronize()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let (median_ms, min_ms, max_ms) = summarise(&mut samples);
    let report = BenchReport {
        model: args.model.name().to_string(),
        device: device_name,
        batch: args.batch,
        size,
        train: args.train,
        unfreeze: args.unfreeze.map(|u| u.to_string()),
        features: args.features,
        median_ms,
        min_ms,
        max_ms,
        images_per_s: args.batch as f64 * 1e3 / median_ms,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let what = match (args.unfreeze, report.train, report.features) {
            (Some(Unfreeze::All), _, _) => {
                "fine-tune step (every block, frozen batch norm, AdamW)".to_string()
            }
            (Some(Unfreeze::Last(k)), _, _) => format!(
                "fine-tune step (last {k} blocks + 1x1 conv + head, frozen batch norm, AdamW)"
            ),
            (None, true, _) => "training step".to_string(),
            (None, false, true) => "frozen feature pass".to_string(),
            (None, false, false) => "inference".to_string(),
        };
        println!(
            "{} {what}, batch {} at {}x{} on {} ({} threads): median {:.2} ms/batch (min {:.2}, max {:.2} over {} iterations), {:.1} images/s, peak RSS {:.0} MiB",
            report.model,
            report.batch,
            size,
            size,
            report.device,
            std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "?".into()),
            report.median_ms,
            report.min_ms,
            report.max_ms,
            args.iters,
            report.images_per_s,
            report.peak_rss_mb
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(summarise(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summarise(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn peak_rss_is_read_from_proc() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss_mb() > 1.0);
        }
    }
}
