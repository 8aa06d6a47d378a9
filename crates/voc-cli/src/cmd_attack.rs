//! `voc attack classify` and `voc attack segment`: adversarial perturbations swept over budgets, with
//! the metrics before and after, how visible the perturbations are, the adversarial images, a gallery
//! per image and robustness curves.
//!
//! Attacks run on 8-bit pixels scaled to 0..1 at the size the network sees (a classifier's fitted
//! input, a segmenter's whole photo); budgets are given in 1/255 units. Every adversarial image is
//! rounded to 8 bits before it is scored, so the metrics are those of the PNGs written.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use voc_attack::defence::InputTransform;
use voc_attack::{attack, quality, AttackConfig, AttackError, Norm, Objective};
use voc_classify::metrics::evaluate;
use voc_classify::{rgb_to_tensor, CheckpointClassifier, ImageClassifier, ModelPreset};
use voc_core::{RgbImage, NUM_CLASSES};
use voc_data::competition::CompetitionDir;
use voc_data::preview::{captioned_grid, Tile};
use voc_tensor::DeviceSpec;

#[derive(Args)]
pub struct AttackArgs {
    #[command(subcommand)]
    what: AttackCommand,
}

#[derive(Subcommand)]
enum AttackCommand {
    /// Attack a multi-label classifier (a `voc train classify` checkpoint) or an ImageNet classifier
    /// (`imagenet:mobilenet_v2`): label metrics, success rate and perceptibility per budget.
    Classify(Box<ClassifyAttackArgs>),
    /// Attack a segmenter (a checkpoint or hub repo): pixel metrics, the share of the goal reached
    /// and perceptibility per budget.
    Segment(Box<SegmentAttackArgs>),
}

pub fn run(args: AttackArgs) -> anyhow::Result<()> {
    match args.what {
        AttackCommand::Classify(a) => classify(*a),
        AttackCommand::Segment(a) => segment(*a),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AttackKind {
    /// One step of size eps along the gradient's sign (Goodfellow et al.; the notebook's).
    Fgsm,
    /// Basic iterative method: --steps steps of --step-size, projected to the budget.
    Bim,
    /// BIM from a random start in the budget (Madry et al.).
    Pgd,
    /// Momentum iterative FGSM (Dong et al.): steps along an accumulated gradient, step eps/steps.
    Mifgsm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NormArg {
    Linf,
    L2,
}

/// The options both attack commands share.
#[derive(Args)]
struct SweepArgs {
    /// The attack.
    #[arg(long, value_enum, default_value = "fgsm")]
    attack: AttackKind,
    /// Budgets to sweep, in 1/255 units (L-inf: per pixel value; L2: of the whole image).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,4,8,16")]
    eps: Vec<f64>,
    /// Gradient steps of the iterative attacks (FGSM: 1).
    #[arg(long)]
    steps: Option<usize>,
    /// Step size in 1/255 units (default: eps/4 for BIM and PGD, eps/steps for MI-FGSM).
    #[arg(long)]
    step_size: Option<f64>,
    /// Start from a random point of the budget (PGD always does).
    #[arg(long)]
    random_start: bool,
    /// The budget's norm.
    #[arg(long, value_enum, default_value = "linf")]
    norm: NormArg,
    /// Competition data folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Attack these photos (.png, .jpg or .npy) instead of a split of --data.
    #[arg(long, num_args = 1.., conflicts_with_all = ["data", "ids"])]
    images: Vec<PathBuf>,
    /// Split of --data to attack.
    #[arg(long, default_value = "test")]
    split: String,
    /// Only these Ids of the split (comma-separated).
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    /// Only the first N images (after --ids).
    #[arg(long)]
    limit: Option<usize>,
    /// Run folder: adversarial PNGs per budget, a gallery per image, curves.png, report.json.
    #[arg(long)]
    out: PathBuf,
    /// Defend the model with an input transformation (`jpeg:QUALITY` or `bits:BITS`): every image,
    /// clean or adversarial, is transformed before the model sees it.
    #[arg(long)]
    defence: Option<InputTransform>,
    /// Attack through the defence (BPDA: the transformation forwards, the identity's gradient
    /// backwards) instead of attacking the undefended model and transferring.
    #[arg(long, requires = "defence")]
    adaptive: bool,
    /// Seed of random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

impl SweepArgs {
    /// The attack at budget `eps` (1/255 units) in 0..1 pixel units.
    fn config(&self, eps: f64) -> AttackConfig {
        let (e, norm) = (
            eps / 255.0,
            match self.norm {
                NormArg::Linf => Norm::Linf,
                NormArg::L2 => Norm::L2,
            },
        );
        let steps = match self.attack {
            AttackKind::Fgsm => 1,
            _ => self.steps.unwrap_or(10).max(1),
        };
        let step = match (self.attack, self.step_size) {
            (AttackKind::Fgsm, _) => e,
            (_, Some(s)) => s / 255.0,
            (AttackKind::Mifgsm, None) => e / steps as f64,
            (_, None) => e / 4.0,
        };
        let mut config = AttackConfig::pgd(norm, e, step, steps);
        if self.attack == AttackKind::Pgd || self.random_start {
            config = config.with_random_start(self.seed);
        }
        if self.attack == AttackKind::Mifgsm {
            config = config.with_momentum(1.0);
        }
        config
    }

    fn check(&self) -> anyhow::Result<()> {
        crate::outputs::check_dir(&self.out, self.data.as_deref(), "--out")?;
        if self.eps.is_empty() {
            bail!("--eps: give at least one budget, e.g. --eps 0,2,4,8");
        }
        for &e in &self.eps {
            if !(0.0..=255.0).contains(&e) {
                bail!("--eps {e}: budgets are in 1/255 units, from 0 to 255");
            }
        }
        if let Some(s) = self.step_size {
            if !(s > 0.0 && s.is_finite()) {
                bail!("--step-size {s}: expected a positive number of 1/255 units");
            }
        }
        if self.steps == Some(0) {
            bail!("--steps 0: an iterative attack takes at least one step");
        }
        Ok(())
    }

    /// The photos to attack: `(Id, photo, true labels, true mask)` from --images (file names as Ids,
    /// no truth) or the selected images of the split.
    fn photos(&self) -> anyhow::Result<Vec<Photo>> {
        if !self.images.is_empty() {
            let mut photos: Vec<Photo> = Vec::new();
            for path in self.images.iter().take(self.limit.unwrap_or(usize::MAX)) {
                let id = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("image{}", photos.len()));
                if photos.iter().any(|p| p.id == id) {
                    bail!("--images: two photos named '{id}' (Ids come from the file names)");
                }
                photos.push(Photo {
                    id,
                    image: voc_data::read_rgb_image(path)?,
                    labels: None,
                    mask: None,
                });
            }
            return Ok(photos);
        }
        let (index, chosen) = self.images()?;
        chosen
            .iter()
            .map(|&i| {
                let id = index.ids[i].clone();
                Ok(Photo {
                    image: index.read_rgb_image(&id)?,
                    labels: index.labels.as_ref().map(|l| l[i].to_flags().to_vec()),
                    mask: if index.has_masks {
                        Some(index.read_mask(&id)?.iter().copied().collect())
                    } else {
                        None
                    },
                    id,
                })
            })
            .collect()
    }

    /// The split's images (with their Ids) that --ids and --limit select.
    fn images(&self) -> anyhow::Result<(voc_data::SplitIndex, Vec<usize>)> {
        let Some(data) = &self.data else {
            bail!("--data DIR is required (the competition-layout data folder)");
        };
        let index = CompetitionDir::open(data)?.split(&self.split)?;
        let mut chosen: Vec<usize> = if self.ids.is_empty() {
            (0..index.len()).collect()
        } else {
            self.ids
                .iter()
                .map(|id| {
                    index.position(id).with_context(|| {
                        format!(
                            "--ids: '{id}' is not an Id of split '{}' ({})",
                            index.name,
                            index.csv_path().display()
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        if let Some(n) = self.limit {
            chosen.truncate(n);
        }
        if chosen.is_empty() {
            bail!("no images to attack: split '{}' selects none", index.name);
        }
        Ok((index, chosen))
    }

    fn describe(&self) -> Value {
        json!({
            "kind": format!("{:?}", self.attack).to_lowercase(),
            "norm": format!("{:?}", self.norm).to_lowercase(),
            "steps": self.config(1.0).steps,
            "step_size": self.step_size,
            "random_start": self.config(1.0).random_start,
            "seed": self.seed,
            "defence": self.defence.map(|d| d.to_string()),
            "adaptive": self.adaptive,
        })
    }

    /// What the attacker differentiates: the undefended input, or BPDA through the defence.
    fn attacked_input(&self, u: &Tensor) -> Result<Tensor, AttackError> {
        match self.defence {
            Some(t) if self.adaptive => t.straight_through(u),
            _ => Ok(u.clone()),
        }
    }

    /// What the deployed model sees: the defence's output, or the input itself.
    fn deployed_input(&self, u: &Tensor) -> anyhow::Result<Tensor> {
        Ok(match self.defence {
            Some(t) => t.apply_batch(u)?,
            None => u.clone(),
        })
    }
}

/// A photo to attack with what is known of it.
struct Photo {
    id: String,
    image: RgbImage,
    /// 0/1 per VOC class, when the split is labelled.
    labels: Option<Vec<u8>>,
    /// The true mask (row-major), when the split has masks.
    mask: Option<Vec<u8>>,
}

/// `1 x 3 x H x W` pixels in 0..1.
fn unit_pixels(image: &RgbImage, device: &Device) -> anyhow::Result<Tensor> {
    Ok((rgb_to_tensor(image, device)? / 255.0)?)
}

/// Image `i` of an `N x 3 x H x W` 0..1 batch as 8-bit pixels (rounded: what a PNG holds).
fn to_image(batch: &Tensor, i: usize) -> anyhow::Result<RgbImage> {
    let (_, _, h, w) = batch.dims4()?;
    let bytes: Vec<u8> = (batch.get(i)? * 255.0)?
        .round()?
        .clamp(0.0, 255.0)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_dtype(DType::U8)?
        .to_vec1()?;
    Ok(RgbImage::new(h, w, bytes)?)
}

/// The perturbation magnified 10 times around mid-grey, as galleries show it.
fn magnified(clean: &RgbImage, adversarial: &RgbImage) -> anyhow::Result<RgbImage> {
    let bytes = clean
        .as_bytes()
        .iter()
        .zip(adversarial.as_bytes())
        .map(|(&c, &a)| (128.0 + 10.0 * (f32::from(a) - f32::from(c))).clamp(0.0, 255.0) as u8)
        .collect();
    Ok(RgbImage::new(clean.height(), clean.width(), bytes)?)
}

/// A budget as a file-name part: `4`, `0.5`.
fn eps_name(eps: f64) -> String {
    let s = format!("{eps}");
    s.replace('.', "_")
}

/// Mean of the finite values, or None.
fn mean_finite(values: &[f64]) -> Option<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64)
}

/// Perceptibility of a budget: means over the images (PSNR over those that changed).
fn perceptibility(pairs: &[(RgbImage, RgbImage)]) -> anyhow::Result<Value> {
    let (mut linf, mut l2, mut psnr, mut ssim) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (clean, adv) in pairs {
        linf.push(quality::linf(clean, adv)?);
        l2.push(quality::l2(clean, adv)?);
        psnr.push(quality::psnr(clean, adv)?);
        ssim.push(quality::ssim(clean, adv)?);
    }
    Ok(json!({
        "linf": mean_finite(&linf),
        "linf_max": linf.iter().copied().fold(0.0, f64::max),
        "l2": mean_finite(&l2),
        "psnr": mean_finite(&psnr),
        "psnr_min": psnr.iter().copied().filter(|v| v.is_finite()).reduce(f64::min),
        "ssim": mean_finite(&ssim),
    }))
}

fn write_png(path: &Path, image: &RgbImage) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    }
    // RgbImage::write_png writes a temporary file and renames it.
    image
        .write_png(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// `curves.png`: the task's metrics and the perceptibility against the budget.
/// The metrics a sweep's curves show (`report.json` key, label): with ground truth the task's scores,
/// without it the goal's success alone.
pub(crate) fn sweep_metrics(task: &str, labelled: bool) -> Vec<(&'static str, &'static str)> {
    match (task, labelled) {
        ("classify", true) => vec![
            ("map", "mAP"),
            ("dice", "Dice"),
            ("success_rate", "success"),
        ],
        ("classify", false) => vec![("success_rate", "success")],
        (_, true) => vec![
            ("pixel_accuracy", "pixel acc"),
            ("miou", "mIoU"),
            ("dice", "Dice"),
            ("target_share", "goal"),
        ],
        (_, false) => vec![("target_share", "goal")],
    }
}

/// The sweep's panels: the task's metrics, PSNR and SSIM against epsilon (`curves.png`, `voc report`).
pub(crate) fn sweep_panels(
    sweep: &[Value],
    metrics: &[(&str, &str)],
) -> Vec<voc_data::chart::Panel> {
    use voc_data::chart::{Panel, Series, SERIES_COLORS};
    let series = |key: &str, label: &str, color: usize| {
        Series::new(
            label,
            SERIES_COLORS[color % SERIES_COLORS.len()],
            sweep
                .iter()
                .filter_map(|row| Some((row["eps"].as_f64()?, row[key].as_f64()?)))
                .collect(),
        )
    };
    let task: Vec<Series> = metrics
        .iter()
        .enumerate()
        .map(|(i, (key, label))| series(key, label, i))
        .collect();
    vec![
        Panel::new("Robustness", "epsilon (1/255)", task).with_y_range(0.0, 1.0),
        Panel::new(
            "PSNR (dB)",
            "epsilon (1/255)",
            vec![series("psnr", "PSNR", 0)],
        ),
        Panel::new("SSIM", "epsilon (1/255)", vec![series("ssim", "SSIM", 2)])
            .with_y_range(0.0, 1.0),
    ]
}

fn write_curves(path: &Path, sweep: &[Value], metrics: &[(&str, &str)]) -> anyhow::Result<()> {
    voc_data::chart::write_panels_png(path, &sweep_panels(sweep, metrics), 420, 300)?;
    Ok(())
}

fn write_report(out: &Path, report: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    voc_core::write_atomic(&out.join("report.json"), |f| {
        std::io::Write::write_all(f, text.as_bytes())
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Classification

#[derive(Args)]
struct ClassifyAttackArgs {
    /// The classifier: a `voc train classify` checkpoint, or `imagenet:MODEL` (mobilenet_v2,
    /// efficientnet_lite0, resnet50, resnet50v2, vgg16: the pretrained ImageNet network).
    #[arg(long)]
    classifier: String,
    /// Reach exactly these labels (comma-separated class names; ImageNet: one class name or index).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["remove", "add"])]
    target: Vec<String>,
    /// Remove this class from the predicted labels, keeping the others.
    #[arg(long, conflicts_with = "add")]
    remove: Option<String>,
    /// Add this class to the predicted labels, keeping the others.
    #[arg(long)]
    add: Option<String>,
    /// Images per attack batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// One perturbation for all the images (universal): --steps passes over them (FGSM: one),
    /// each batch a signed step of --step-size; written as universal_eps_E.png (x10 around grey).
    #[arg(long)]
    universal: bool,
    #[command(flatten)]
    sweep: SweepArgs,
}

/// The network under attack.
enum Victim {
    /// A multi-label VOC classifier with its thresholds.
    Voc(Box<CheckpointClassifier>),
    /// A single-label ImageNet classifier.
    ImageNet {
        net: Box<ImageClassifier>,
        preset: ModelPreset,
        names: Vec<String>,
    },
}

impl Victim {
    fn load(spec: &str, device: &Device) -> anyhow::Result<(Self, String)> {
        if let Some(model) = spec.strip_prefix("imagenet:") {
            let preset = ModelPreset::by_name(model)?;
            let net = preset
                .load(device)
                .with_context(|| format!("loading {} from the hub", preset.repo_id))?;
            let names = preset.class_names()?;
            return Ok((
                Self::ImageNet {
                    net: Box::new(net),
                    preset,
                    names,
                },
                format!("hub:{}", preset.repo_id),
            ));
        }
        let path = Path::new(spec);
        if !path.is_file() {
            bail!(
                "--classifier {spec}: no such file (a classifier is a `voc train classify` checkpoint or imagenet:MODEL)"
            );
        }
        let classifier = CheckpointClassifier::load(path, device)
            .with_context(|| format!("--classifier {spec}"))?;
        Ok((Self::Voc(Box::new(classifier)), spec.to_string()))
    }

    fn class_names(&self) -> &[String] {
        match self {
            Self::Voc(c) => &c.class_names,
            Self::ImageNet { names, .. } => names,
        }
    }

    fn fitted(&self, image: &RgbImage) -> anyhow::Result<RgbImage> {
        Ok(match self {
            Self::Voc(c) => c.fitted(image)?,
            Self::ImageNet { preset, .. } => {
                voc_classify::resize_rgb(image, preset.input_size, preset.input_size)?
            }
        })
    }

    /// Logits of `N x 3 x H x W` pixels in 0..1.
    fn logits(&self, u: &Tensor) -> voc_classify::Result<Tensor> {
        match self {
            Self::Voc(c) => {
                let x = voc_tensor::preprocess::normalize(&(u * 255.0)?, &c.normalization)?;
                c.model.logits(&x, false, false)
            }
            Self::ImageNet { net, preset, .. } => {
                let x = voc_tensor::preprocess::normalize(&(u * 255.0)?, &preset.normalization)?;
                net.forward_t(&x, false)
            }
        }
    }

    /// Per-image probabilities: sigmoid (VOC) or softmax (ImageNet).
    fn probabilities(&self, logits: &Tensor) -> anyhow::Result<Vec<Vec<f32>>> {
        let logits = logits.to_dtype(DType::F32)?;
        let p = match self {
            Self::Voc(_) => candle_nn::ops::sigmoid(&logits)?,
            Self::ImageNet { .. } => candle_nn::ops::softmax(&logits, 1)?,
        };
        Ok(p.to_vec2()?)
    }

    /// The predicted labels of one image: 0/1 per class (VOC) or the one-hot top-1 (ImageNet).
    fn decide(&self, probs: &[f32]) -> Vec<u8> {
        match self {
            Self::Voc(c) => c.decision().decide(probs),
            Self::ImageNet { .. } => {
                let top = argmax(probs);
                (0..probs.len()).map(|k| u8::from(k == top)).collect()
            }
        }
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// The class index of `name` (or of a number, for ImageNet) among `names`.
fn class_index(name: &str, names: &[String], what: &str) -> anyhow::Result<usize> {
    if let Some(i) = names.iter().position(|n| n == name) {
        return Ok(i);
    }
    if let Ok(i) = name.parse::<usize>() {
        if i < names.len() && names.len() != NUM_CLASSES {
            return Ok(i);
        }
    }
    let shown: Vec<&str> = names.iter().take(20).map(String::as_str).collect();
    bail!(
        "{what} '{name}' is not a class of this classifier (its classes: {}{})",
        shown.join(", "),
        if names.len() > 20 { ", ..." } else { "" }
    )
}

/// What the attacker wants, per image.
#[derive(Debug, Clone)]
enum LabelGoal {
    /// Lose every label of the reference set (the truth, or the clean prediction without it).
    Untargeted,
    /// Reach exactly this label set.
    Exact(Vec<u8>),
    /// Drop one class, keep the rest of the clean prediction.
    Remove(usize),
    /// Add one class to the clean prediction.
    Add(usize),
}

fn classify(args: ClassifyAttackArgs) -> anyhow::Result<()> {
    let sweep = &args.sweep;
    sweep.check()?;
    if args.batch == 0 {
        bail!("--batch 0: at least one image per attack batch");
    }
    let device = sweep.device.open()?;
    let (victim, source) = Victim::load(&args.classifier, &device)?;
    let names = victim.class_names().to_vec();
    let multi_label = matches!(victim, Victim::Voc(_));

    // The images, fitted to the network, and their true labels when the split has them.
    let all = sweep.photos()?;
    let ids: Vec<String> = all.iter().map(|p| p.id.clone()).collect();
    let truth: Option<Vec<Vec<u8>>> = if multi_label {
        all.iter().map(|p| p.labels.clone()).collect()
    } else {
        None
    };
    let photos: Vec<RgbImage> = all.into_iter().map(|p| p.image).collect();
    let fitted: Vec<RgbImage> = photos
        .iter()
        .map(|p| victim.fitted(p))
        .collect::<anyhow::Result<_>>()?;
    if multi_label && names.len() != NUM_CLASSES {
        bail!("{source}: {} classes, not VOC's {NUM_CLASSES}", names.len());
    }

    let goal = if !args.target.is_empty() {
        let mut set = vec![0u8; names.len()];
        for name in &args.target {
            set[class_index(name, &names, "--target")?] = 1;
        }
        if !multi_label && args.target.len() != 1 {
            bail!("--target: an ImageNet classifier has one label per image; name one class");
        }
        LabelGoal::Exact(set)
    } else if let Some(name) = &args.remove {
        if !multi_label {
            bail!("--remove needs a multi-label VOC classifier");
        }
        LabelGoal::Remove(class_index(name, &names, "--remove")?)
    } else if let Some(name) = &args.add {
        if !multi_label {
            bail!("--add needs a multi-label VOC classifier");
        }
        LabelGoal::Add(class_index(name, &names, "--add")?)
    } else {
        LabelGoal::Untargeted
    };

    let started = Instant::now();
    // The attacker's view of the model (through the defence only with --adaptive), and the
    // deployed model every score comes from.
    let model = |u: &Tensor| -> Result<Tensor, AttackError> {
        victim
            .logits(&sweep.attacked_input(u)?)
            .map_err(|e| AttackError::Model(Box::new(e)))
    };
    let deployed =
        |u: &Tensor| -> anyhow::Result<Tensor> { Ok(victim.logits(&sweep.deployed_input(u)?)?) };
    // Clean predictions, batch by batch.
    let batches: Vec<Vec<usize>> = (0..fitted.len())
        .collect::<Vec<_>>()
        .chunks(args.batch)
        .map(<[usize]>::to_vec)
        .collect();
    let stack = |idx: &[usize], images: &[RgbImage]| -> anyhow::Result<Tensor> {
        let parts: Vec<Tensor> = idx
            .iter()
            .map(|&i| unit_pixels(&images[i], &device))
            .collect::<anyhow::Result<_>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    };
    let mut clean_probs = Vec::new();
    for idx in &batches {
        clean_probs.extend(victim.probabilities(&deployed(&stack(idx, &fitted)?)?)?);
    }
    let clean_labels: Vec<Vec<u8>> = clean_probs.iter().map(|p| victim.decide(p)).collect();

    // Per image: the objective's target labels, whether the attack is targeted, and whether the image
    // counts for the success rate.
    let mut targets = Vec::new();
    let mut applicable = Vec::new();
    for (i, clean) in clean_labels.iter().enumerate() {
        let reference = truth.as_ref().map_or(clean, |t| &t[i]);
        let (target, counts) = match &goal {
            LabelGoal::Untargeted => (reference.clone(), reference.contains(&1)),
            LabelGoal::Exact(set) => (set.clone(), set != reference),
            LabelGoal::Remove(c) => {
                let mut t = clean.clone();
                t[*c] = 0;
                (t, clean[*c] == 1)
            }
            LabelGoal::Add(c) => {
                let mut t = clean.clone();
                t[*c] = 1;
                (t, clean[*c] == 0)
            }
        };
        targets.push(target);
        applicable.push(counts);
    }
    if !applicable.iter().any(|&a| a) {
        bail!(
            "the goal changes nothing on these {} images: {}",
            ids.len(),
            match &goal {
                LabelGoal::Exact(_) => "the target equals every image's labels",
                LabelGoal::Remove(_) => "no image is predicted to have the class to remove",
                LabelGoal::Add(_) => "every image is already predicted to have the class to add",
                LabelGoal::Untargeted => "no image has a label to lose",
            }
        );
    }
    let targeted = !matches!(goal, LabelGoal::Untargeted);
    let success = |adv: &[u8], i: usize| -> bool {
        match &goal {
            LabelGoal::Untargeted => !adv.iter().zip(&targets[i]).any(|(&a, &t)| a == 1 && t == 1),
            _ => adv == targets[i].as_slice(),
        }
    };
    let label_metrics = |probs: &[Vec<f32>], labels: &[Vec<u8>]| -> anyhow::Result<Value> {
        let wins = (0..labels.len())
            .filter(|&i| applicable[i] && success(&labels[i], i))
            .count();
        let counted = applicable.iter().filter(|&&a| a).count();
        let mut m = json!({
            "success_rate": wins as f64 / counted.max(1) as f64,
            "images_counted": counted,
        });
        if let (Some(t), Victim::Voc(c)) = (&truth, &victim) {
            let flat_p: Vec<f32> = probs.iter().flatten().copied().collect();
            let flat_t: Vec<u8> = t.iter().flatten().copied().collect();
            let report = evaluate(&flat_p, &flat_t, NUM_CLASSES, &c.decision())?;
            m["map"] = json!(report.map);
            m["dice"] = json!(report.dice);
        }
        if !multi_label {
            let same = (0..labels.len())
                .filter(|&i| labels[i] == clean_labels[i])
                .count();
            m["top1_unchanged"] = json!(same as f64 / labels.len() as f64);
        }
        Ok(m)
    };
    let clean_metrics = label_metrics(&clean_probs, &clean_labels)?;

    let caption = |probs: &[f32], labels: &[u8]| -> Vec<String> {
        let mut shown: Vec<usize> = (0..labels.len()).filter(|&k| labels[k] == 1).collect();
        shown.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let mut lines: Vec<String> = shown
            .iter()
            .take(3)
            .map(|&k| format!("{} {:.2}", names[k], probs[k]))
            .collect();
        if lines.is_empty() {
            lines.push("NO LABEL".into());
        }
        lines
    };

    std::fs::create_dir_all(&sweep.out)
        .with_context(|| format!("cannot create {}", sweep.out.display()))?;
    let mut rows = Vec::new();
    let mut gallery: Vec<Vec<Vec<Tile>>> = vec![Vec::new(); ids.len()];
    for &eps in &sweep.eps {
        let t0 = Instant::now();
        let mut config = sweep.config(eps);
        if targeted {
            config = config.targeted();
        }
        let objective_of = |idx: &[usize]| -> anyhow::Result<Objective> {
            Ok(if multi_label {
                let t: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| targets[i].iter().map(|&v| f32::from(v)))
                    .collect();
                Objective::MultiLabel {
                    targets: Tensor::from_vec(t, (idx.len(), names.len()), &device)?,
                }
            } else {
                Objective::CrossEntropy {
                    classes: idx.iter().map(|&i| argmax_u8(&targets[i])).collect(),
                }
            })
        };
        // A universal perturbation: one delta for every image, found over the whole selection.
        let universal = if args.universal && eps > 0.0 {
            let work: Vec<(Tensor, Objective)> = batches
                .iter()
                .map(|idx| Ok((stack(idx, &fitted)?, objective_of(idx)?)))
                .collect::<anyhow::Result<_>>()?;
            let passes = if sweep.attack == AttackKind::Fgsm {
                1
            } else {
                config.steps
            };
            let one_step = AttackConfig {
                steps: 1,
                ..config.clone()
            };
            let delta = voc_attack::universal_perturbation(&model, &work, &one_step, passes)
                .with_context(|| format!("the universal perturbation at eps {eps}"))?;
            let grey = Tensor::full(0.5f32, delta.dims(), &device)?;
            let picture = to_image(&(grey + (&delta * 10.0)?)?.clamp(0.0, 1.0)?, 0)?;
            write_png(
                &sweep
                    .out
                    .join(format!("universal_eps_{}.png", eps_name(eps))),
                &picture,
            )?;
            Some(delta)
        } else {
            None
        };
        let mut adversarial: Vec<RgbImage> = Vec::with_capacity(fitted.len());
        let bar = crate::progress::bar(fitted.len(), &format!("eps {eps}/255"));
        for idx in &batches {
            bar.inc(idx.len() as u64);
            let clean = stack(idx, &fitted)?;
            let adv = match (&universal, eps == 0.0) {
                (_, true) => clean,
                (Some(delta), _) => clean.broadcast_add(delta)?.clamp(0.0, 1.0)?,
                (None, _) => {
                    attack(&model, &objective_of(idx)?, &clean, &config)
                        .with_context(|| format!("attacking at eps {eps}"))?
                        .adversarial
                }
            };
            for k in 0..idx.len() {
                adversarial.push(to_image(&adv, k)?);
            }
        }
        bar.finish_and_clear();
        let attack_seconds = t0.elapsed().as_secs_f64();
        // Scored as written: the 8-bit images.
        let mut probs = Vec::new();
        for idx in &batches {
            probs.extend(victim.probabilities(&deployed(&stack(idx, &adversarial)?)?)?);
        }
        let labels: Vec<Vec<u8>> = probs.iter().map(|p| victim.decide(p)).collect();
        let mut row = label_metrics(&probs, &labels)?;
        let pairs: Vec<(RgbImage, RgbImage)> = fitted
            .iter()
            .cloned()
            .zip(adversarial.iter().cloned())
            .collect();
        let seen = perceptibility(&pairs)?;
        for (k, v) in seen.as_object().expect("an object") {
            row[k] = v.clone();
        }
        row["eps"] = json!(eps);
        row["seconds"] = json!(attack_seconds);
        // What each image became: its labels (most probable first) and whether the goal was reached.
        row["per_image"] = json!((0..ids.len())
            .map(|i| {
                let mut shown: Vec<usize> = (0..labels[i].len())
                    .filter(|&k| labels[i][k] == 1)
                    .collect();
                shown.sort_by(|&a, &b| probs[i][b].total_cmp(&probs[i][a]));
                json!({
                    "id": ids[i],
                    "labels": shown.iter().map(|&k| names[k].clone()).collect::<Vec<_>>(),
                    "probabilities": shown.iter().map(|&k| probs[i][k]).collect::<Vec<_>>(),
                    "success": applicable[i] && success(&labels[i], i),
                })
            })
            .collect::<Vec<_>>());
        let dir = sweep.out.join(format!("eps_{}", eps_name(eps)));
        for (i, adv) in adversarial.iter().enumerate() {
            write_png(&dir.join(format!("{}.png", ids[i])), adv)?;
            if eps > 0.0 {
                gallery[i].push(vec![
                    Tile {
                        image: fitted[i].clone(),
                        caption: caption(&clean_probs[i], &clean_labels[i]),
                    },
                    Tile {
                        image: magnified(&fitted[i], adv)?,
                        caption: vec![format!("EPS {eps}/255 X10")],
                    },
                    Tile {
                        image: adv.clone(),
                        caption: caption(&probs[i], &labels[i]),
                    },
                ]);
            }
        }
        if !sweep.json {
            eprintln!(
                "eps {eps:>5}: {}  PSNR {}  SSIM {}  ({attack_seconds:.1} s)",
                summary_of(&row, multi_label),
                row["psnr"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.1} dB")),
                row["ssim"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.4}")),
            );
        }
        rows.push(row);
    }
    for (i, tiles) in gallery.iter().enumerate() {
        if !tiles.is_empty() {
            let picture = captioned_grid(
                &format!("{} {}", ids[i], describe_goal(&goal, &names)),
                tiles,
            )?;
            write_png(
                &sweep.out.join("gallery").join(format!("{}.png", ids[i])),
                &picture,
            )?;
        }
    }
    let metric_keys = sweep_metrics("classify", truth.is_some());
    write_curves(&sweep.out.join("curves.png"), &rows, &metric_keys)?;
    let report = json!({
        "format": voc_tensor::run::RUN_FORMAT,
        "task": "classify",
        "classifier": source,
        "attack": sweep.describe(),
        "goal": describe_goal(&goal, &names).to_lowercase(),
        "universal": args.universal,
        "images": ids.len(),
        "ids": ids,
        "clean": clean_metrics,
        "sweep": rows,
        "seconds": started.elapsed().as_secs_f64(),
        "out": sweep.out,
    });
    write_report(&sweep.out, &report)?;
    if sweep.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "attacked {} images of {source} with {} at eps {:?}/255: clean {}; adversarial PNGs, galleries, curves.png and report.json in {}",
            ids.len(),
            format!("{:?}", sweep.attack).to_lowercase(),
            sweep.eps,
            summary_of(&clean_metrics, multi_label),
            sweep.out.display()
        );
    }
    Ok(())
}

fn argmax_u8(labels: &[u8]) -> u32 {
    labels.iter().position(|&v| v == 1).unwrap_or(0) as u32
}

fn describe_goal(goal: &LabelGoal, names: &[String]) -> String {
    match goal {
        LabelGoal::Untargeted => "UNTARGETED".into(),
        LabelGoal::Exact(set) => format!(
            "TARGET {}",
            (0..set.len())
                .filter(|&k| set[k] == 1)
                .map(|k| names[k].as_str())
                .collect::<Vec<_>>()
                .join("+")
        ),
        LabelGoal::Remove(c) => format!("REMOVE {}", names[*c]),
        LabelGoal::Add(c) => format!("ADD {}", names[*c]),
    }
}

fn summary_of(m: &Value, multi_label: bool) -> String {
    let f = |k: &str| m[k].as_f64().map_or("-".into(), |v| format!("{v:.3}"));
    if multi_label && m.get("map").is_some() {
        format!(
            "mAP {}  Dice {}  success {}",
            f("map"),
            f("dice"),
            f("success_rate")
        )
    } else if multi_label {
        format!("success {}", f("success_rate"))
    } else {
        format!(
            "success {}  top-1 unchanged {}",
            f("success_rate"),
            f("top1_unchanged")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Segmentation

#[derive(Args)]
struct SegmentAttackArgs {
    /// The segmenter: a checkpoint, a weights file or a hub repo id (default: the pretrained VOC
    /// DeepLabV3).
    #[arg(long, default_value = voc_segment::DEFAULT_SEGMENTER)]
    segmenter: String,
    /// untargeted (climb the loss of the true mask), erase:CLASS (its pixels become background),
    /// paint:FROM:TO (FROM's pixels become TO), all:CLASS (every pixel becomes CLASS).
    #[arg(long, default_value = "untargeted")]
    goal: String,
    #[command(flatten)]
    sweep: SweepArgs,
}

/// A pixel goal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PixelGoal {
    Untargeted,
    Erase(u8),
    Paint(u8, u8),
    All(u8),
}

fn mask_class(name: &str, flag: &str) -> anyhow::Result<u8> {
    voc_core::MASK_CLASS_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u8)
        .with_context(|| {
            format!(
                "--goal {flag}: '{name}' is not a VOC mask class ({})",
                voc_core::MASK_CLASS_NAMES.join(", ")
            )
        })
}

fn parse_pixel_goal(s: &str) -> anyhow::Result<PixelGoal> {
    let parts: Vec<&str> = s.split(':').collect();
    Ok(match parts.as_slice() {
        ["untargeted"] => PixelGoal::Untargeted,
        ["erase", c] => PixelGoal::Erase(mask_class(c, s)?),
        ["paint", a, b] => PixelGoal::Paint(mask_class(a, s)?, mask_class(b, s)?),
        ["all", c] => PixelGoal::All(mask_class(c, s)?),
        _ => bail!("--goal {s}: expected untargeted, erase:CLASS, paint:FROM:TO or all:CLASS"),
    })
}

fn segment(args: SegmentAttackArgs) -> anyhow::Result<()> {
    let sweep = &args.sweep;
    sweep.check()?;
    let goal = parse_pixel_goal(&args.goal)?;
    if let PixelGoal::Erase(0) | PixelGoal::Paint(_, _) = goal {
        if let PixelGoal::Paint(a, b) = goal {
            if a == b {
                bail!("--goal {}: FROM and TO are the same class", args.goal);
            }
        } else {
            bail!("--goal erase:background: background is what erased pixels become");
        }
    }
    let all = sweep.photos()?;
    let device = sweep.device.open()?;
    let loaded = voc_segment::load_segmenter(
        &args.segmenter,
        16,
        voc_segment::SizeStrategy::default(),
        &device,
    )
    .with_context(|| format!("--segmenter {}", args.segmenter))?;
    let segmenter = loaded.segmenter;
    let started = Instant::now();

    // Model on 0..1 pixels of one photo at its own size: normalise, then fit and run it as `voc
    // predict` does (padded to the stride grid, logits cropped back to the photo).
    let network = |u: &Tensor| -> voc_segment::Result<Tensor> {
        let x = voc_tensor::preprocess::normalize(&(u * 255.0)?, &segmenter.normalization)?;
        segmenter.logits_of_input(&x)
    };
    // The attacker's view (through the defence only with --adaptive) and the deployed model.
    let model = |u: &Tensor| -> Result<Tensor, AttackError> {
        network(&sweep.attacked_input(u)?).map_err(|e| AttackError::Model(Box::new(e)))
    };
    let predict = |u: &Tensor| -> anyhow::Result<Vec<u8>> {
        let logits = network(&sweep.deployed_input(u)?)?;
        Ok(voc_segment::argmax_mask(&logits)?.into_vec())
    };

    let ids: Vec<String> = all.iter().map(|p| p.id.clone()).collect();
    let truths: Vec<Option<Vec<u8>>> = all.iter().map(|p| p.mask.clone()).collect();
    let photos: Vec<RgbImage> = all.into_iter().map(|p| p.image).collect();
    let mut clean_masks = Vec::new();
    for photo in &photos {
        clean_masks.push(predict(&unit_pixels(photo, &device)?)?);
    }
    // The mask each image is pushed towards (untargeted: away from), and the pixels the goal changes.
    let target_of = |i: usize| -> Vec<u8> {
        let clean = &clean_masks[i];
        match goal {
            PixelGoal::Untargeted => truths[i].clone().unwrap_or_else(|| clean.clone()),
            PixelGoal::Erase(c) => clean.iter().map(|&v| if v == c { 0 } else { v }).collect(),
            PixelGoal::Paint(a, b) => clean.iter().map(|&v| if v == a { b } else { v }).collect(),
            PixelGoal::All(c) => vec![c; clean.len()],
        }
    };
    let targets: Vec<Vec<u8>> = (0..photos.len()).map(target_of).collect();
    let changed: usize = (0..photos.len())
        .map(|i| {
            targets[i]
                .iter()
                .zip(&clean_masks[i])
                .filter(|(t, c)| t != c)
                .count()
        })
        .sum();
    if goal != PixelGoal::Untargeted && changed == 0 {
        bail!(
            "--goal {}: no predicted pixel of these {} images would change (the class is not predicted on them)",
            args.goal,
            photos.len()
        );
    }
    let scores = |masks: &[Vec<u8>]| -> anyhow::Result<Value> {
        let mut m = voc_core::metrics::SegmentationMetrics::new();
        let mut any_truth = false;
        for (mask, truth) in masks.iter().zip(&truths) {
            if let Some(t) = truth {
                m.add_image(t, mask)?;
                any_truth = true;
            }
        }
        // Share of the pixels the goal changes that reached their target class (untargeted: share
        // of the clean prediction's pixels whose class changed).
        let (mut reached, mut total) = (0usize, 0usize);
        for (i, mask) in masks.iter().enumerate() {
            for (k, &v) in mask.iter().enumerate() {
                let (t, c) = (targets[i][k], clean_masks[i][k]);
                match goal {
                    PixelGoal::Untargeted => {
                        total += 1;
                        reached += usize::from(v != c);
                    }
                    _ if t != c => {
                        total += 1;
                        reached += usize::from(v == t);
                    }
                    _ => {}
                }
            }
        }
        let mut out = json!({ "target_share": reached as f64 / total.max(1) as f64 });
        if any_truth {
            out["pixel_accuracy"] = json!(m.pixel_accuracy());
            out["miou"] = json!(m.mean_iou());
            out["miou_classes"] = json!(m.mean_class_iou());
            out["dice"] = json!(m.segmentation_dice());
        }
        Ok(out)
    };
    let clean_scores = scores(&clean_masks)?;
    std::fs::create_dir_all(&sweep.out)
        .with_context(|| format!("cannot create {}", sweep.out.display()))?;
    let mask_picture = |mask: &[u8], h: usize, w: usize| -> anyhow::Result<RgbImage> {
        Ok(voc_core::Mask::new(h, w, mask.to_vec())?.colorize())
    };
    let mask_caption = |mask: &[u8]| -> Vec<String> {
        let counts = voc_core::image::value_counts(mask.iter());
        let n = mask.len().max(1) as f64;
        let mut present: Vec<(usize, u64)> = (1..voc_core::NUM_MASK_CLASSES)
            .map(|c| (c, counts[c]))
            .filter(|&(_, k)| k > 0)
            .collect();
        present.sort_by_key(|&(_, k)| std::cmp::Reverse(k));
        let mut lines: Vec<String> = present
            .iter()
            .take(2)
            .map(|&(c, k)| {
                format!(
                    "{} {:.0}%",
                    voc_core::MASK_CLASS_NAMES[c],
                    100.0 * k as f64 / n
                )
            })
            .collect();
        if lines.is_empty() {
            lines.push("BACKGROUND".into());
        }
        lines
    };
    let mut rows = Vec::new();
    let mut gallery: Vec<Vec<Vec<Tile>>> = vec![Vec::new(); photos.len()];
    for &eps in &sweep.eps {
        let t0 = Instant::now();
        let mut config = sweep.config(eps);
        if goal != PixelGoal::Untargeted {
            config = config.targeted();
        }
        let mut adversarial = Vec::new();
        let bar = crate::progress::bar(photos.len(), &format!("eps {eps}/255"));
        for (i, photo) in photos.iter().enumerate() {
            bar.inc(1);
            let clean = unit_pixels(photo, &device)?;
            // An image the goal does not change (erase a class it does not show) is not attacked.
            let untouched = goal != PixelGoal::Untargeted && targets[i] == clean_masks[i];
            let adv = if eps == 0.0 || untouched {
                clean
            } else {
                let (h, w) = (photo.height(), photo.width());
                let mask = Tensor::from_vec(
                    targets[i]
                        .iter()
                        .map(|&v| u32::from(v))
                        .collect::<Vec<u32>>(),
                    (1, h, w),
                    &device,
                )?;
                let objective = Objective::PixelCrossEntropy {
                    mask,
                    ignore_index: Some(u32::from(voc_core::VOID)),
                    align_corners: true,
                };
                attack(&model, &objective, &clean, &config)
                    .with_context(|| format!("attacking {} at eps {eps}", ids[i]))?
                    .adversarial
            };
            adversarial.push(to_image(&adv, 0)?);
        }
        bar.finish_and_clear();
        let attack_seconds = t0.elapsed().as_secs_f64();
        let masks: Vec<Vec<u8>> = adversarial
            .iter()
            .map(|a| predict(&unit_pixels(a, &device)?))
            .collect::<anyhow::Result<_>>()?;
        let mut row = scores(&masks)?;
        let pairs: Vec<(RgbImage, RgbImage)> = photos
            .iter()
            .cloned()
            .zip(adversarial.iter().cloned())
            .collect();
        for (k, v) in perceptibility(&pairs)?.as_object().expect("an object") {
            row[k] = v.clone();
        }
        row["eps"] = json!(eps);
        row["seconds"] = json!(attack_seconds);
        let dir = sweep.out.join(format!("eps_{}", eps_name(eps)));
        for (i, adv) in adversarial.iter().enumerate() {
            let id = &ids[i];
            write_png(&dir.join(format!("{id}.png")), adv)?;
            if eps > 0.0 {
                let (h, w) = (adv.height(), adv.width());
                gallery[i].push(vec![
                    Tile {
                        image: photos[i].clone(),
                        caption: vec!["ORIGINAL".into()],
                    },
                    Tile {
                        image: mask_picture(&clean_masks[i], h, w)?,
                        caption: mask_caption(&clean_masks[i]),
                    },
                    Tile {
                        image: magnified(&photos[i], adv)?,
                        caption: vec![format!("EPS {eps}/255 X10")],
                    },
                    Tile {
                        image: adv.clone(),
                        caption: vec!["ADVERSARIAL".into()],
                    },
                    Tile {
                        image: mask_picture(&masks[i], h, w)?,
                        caption: mask_caption(&masks[i]),
                    },
                ]);
            }
        }
        if !sweep.json {
            let f = |k: &str| row[k].as_f64().map_or("-".into(), |v| format!("{v:.3}"));
            eprintln!(
                "eps {eps:>5}: pixel acc {}  mIoU {}  Dice {}  goal reached {}  PSNR {}  ({attack_seconds:.1} s)",
                f("pixel_accuracy"),
                f("miou"),
                f("dice"),
                f("target_share"),
                f("psnr")
            );
        }
        rows.push(row);
    }
    for (i, tiles) in gallery.iter().enumerate() {
        if !tiles.is_empty() {
            let id = &ids[i];
            let picture = captioned_grid(&format!("{id} {}", args.goal.to_uppercase()), tiles)?;
            write_png(
                &sweep.out.join("gallery").join(format!("{id}.png")),
                &picture,
            )?;
        }
    }
    let has_truth = truths.iter().any(Option::is_some);
    let metric_keys = sweep_metrics("segment", has_truth);
    write_curves(&sweep.out.join("curves.png"), &rows, &metric_keys)?;
    let report = json!({
        "format": voc_tensor::run::RUN_FORMAT,
        "task": "segment",
        "segmenter": loaded.source,
        "attack": sweep.describe(),
        "goal": args.goal,
        "images": photos.len(),
        "ids": ids,
        "clean": clean_scores,
        "sweep": rows,
        "seconds": started.elapsed().as_secs_f64(),
        "out": sweep.out,
    });
    write_report(&sweep.out, &report)?;
    if sweep.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "attacked {} images of {} ({}) at eps {:?}/255; adversarial PNGs, galleries, curves.png and report.json in {}",
            photos.len(),
            loaded.source,
            args.goal,
            sweep.eps,
            sweep.out.display()
        );
    }
    Ok(())
}
