//! `voc eval classify`: score a classifier checkpoint on a labelled split. `voc eval fuse`: fit the
//! rule that fuses a classifier's probabilities with a segmenter's mask areas (`voc predict --labels
//! fused`) on a labelled split, and compare it with either source alone.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use voc_classify::fusion::{cross_fitted_dice, fit_fusion, CrossFit, FusionRule};
use voc_classify::metrics::ThresholdRule;
use voc_classify::{metrics, CheckpointClassifier};
use voc_core::metrics::SegmentationMetrics;
use voc_core::{CLASS_NAMES, MASK_CLASS_NAMES, NUM_CLASSES};
use voc_data::{CompetitionDir, SplitIndex};
use voc_tensor::DeviceSpec;

use crate::cmd_predict::{check_class_names, class_area_fractions, open_segmenter, SegmenterArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    what: EvalCommand,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// mAP, per-class AP, macro F1 and the classification Dice of a classifier checkpoint on a labelled
    /// split, at the checkpoint's thresholds.
    Classify(ClassifyEvalArgs),
    /// Pixel accuracy, mean IoU, per-class IoU, the Kaggle segmentation Dice and the confusion matrix
    /// of a segmenter on a split with masks, each image at its own size (as `voc predict` runs it).
    Segment(SegmentEvalArgs),
    /// Fit the rule that fuses a classifier's probabilities with the segmenter's mask areas (for
    /// `voc predict --labels fused`) on a labelled split; prints the classification Dice of the mask
    /// alone, the classifier alone and the fusion, cross-fitted and in-sample.
    Fuse(FuseEvalArgs),
}

#[derive(Args)]
pub struct FuseEvalArgs {
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    /// A labelled split of it to fit on (`train`, or `test` after `voc data convert`).
    #[arg(long, default_value = "test")]
    split: String,
    /// Classifier checkpoint (`voc train classify`'s best.safetensors).
    #[arg(long)]
    classifier: PathBuf,
    #[command(flatten)]
    model: SegmenterArgs,
    /// Fusion file to write (JSON: the rule, the segmenter setup and classifier it was fitted with,
    /// the Dice values), for `voc predict --labels fused --fusion FILE`.
    #[arg(long)]
    out: PathBuf,
    /// Folds of the cross-fitted comparison (each fold scored by rules fitted on the others);
    /// default 5, or one per image on a split of fewer.
    #[arg(long)]
    folds: Option<usize>,
    /// Fold assignments the cross-fitted comparison averages (seeds --seed, --seed + 1, ...).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Seed of the first fold assignment.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the thresholds on the fused scores are chosen: global, per-class or seed (0.15); all with
    /// the argmax fallback.
    #[arg(long, default_value = "global", value_parser = parse_threshold_rule)]
    threshold: ThresholdRule,
    /// Also write what the fit saw, one row per image: Id, the classifier's 20 probabilities
    /// (`p_CLASS`), the mask's 20 class areas (`area_CLASS`, fractions of the image) and the 20
    /// true labels (`true_CLASS`), as CSV.
    #[arg(long, value_name = "FILE.csv")]
    scores: Option<PathBuf>,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

fn parse_threshold_rule(s: &str) -> Result<ThresholdRule, String> {
    s.parse::<ThresholdRule>().map_err(|e| e.to_string())
}

/// `voc eval fuse --scores`: one CSV row per image with its probabilities, areas and labels.
fn write_fusion_scores(
    path: &Path,
    ids: &[String],
    probs: &[f32],
    areas: &[f32],
    truth: &[u8],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut text = String::from("Id");
    for prefix in ["p_", "area_", "true_"] {
        for name in CLASS_NAMES {
            write!(text, ",{prefix}{name}")?;
        }
    }
    text.push('\n');
    for (i, id) in ids.iter().enumerate() {
        let row = i * NUM_CLASSES..(i + 1) * NUM_CLASSES;
        text.push_str(id);
        for p in &probs[row.clone()] {
            write!(text, ",{p}")?;
        }
        for a in &areas[row.clone()] {
            write!(text, ",{a}")?;
        }
        for t in &truth[row] {
            write!(text, ",{t}")?;
        }
        text.push('\n');
    }
    voc_core::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes()))
        .with_context(|| format!("{}: cannot write the scores", path.display()))
}

/// What a fusion file (`voc eval fuse --out`) marks itself with.
const FUSION_FORMAT: &str = "voc-fusion/1";

/// Mean classification Dice of the three ways to label images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DiceByLabels {
    pub mask_only: f64,
    pub classifier_only: f64,
    pub fused: f64,
}

/// A fusion file: the rule `voc predict --labels fused` applies, what it was fitted with and how
/// well it did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FusionFile {
    /// [`FUSION_FORMAT`].
    pub format: String,
    pub rule: FusionRule,
    /// How the rule's thresholds were chosen.
    pub threshold_rule: ThresholdRule,
    /// The segmenter's source as `voc predict` reports it (`hub:ORG/NAME`, or a file).
    pub segmenter: String,
    pub output_stride: usize,
    pub size_strategy: String,
    pub tta: Option<String>,
    pub classifier: PathBuf,
    pub data: PathBuf,
    pub split: String,
    pub images: usize,
    /// Each rule chosen on every image and scored on the same images (optimistic).
    pub in_sample: DiceByLabels,
    /// Each rule fitted on the other folds, scored on the held-out one.
    pub cross_fitted: CrossFit,
}

impl FusionFile {
    /// Reads and checks the fusion file at `path`; anything else is an error naming the file.
    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the fusion file", path.display()))?;
        let not_one = || {
            format!(
                "{}: not a fusion file written by `voc eval fuse`",
                path.display()
            )
        };
        let value: serde_json::Value = serde_json::from_str(&text).with_context(not_one)?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FUSION_FORMAT) {
            bail!("{} (no \"format\": \"{FUSION_FORMAT}\")", not_one());
        }
        let file: Self = serde_json::from_value(value).with_context(not_one)?;
        file.rule
            .check(NUM_CLASSES)
            .with_context(|| format!("{}: the fusion rule", path.display()))?;
        Ok(file)
    }
}

#[derive(Args)]
pub struct ClassifyEvalArgs {
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    /// A labelled split of it (`train`, or `test` after `voc data convert`).
    #[arg(long, default_value = "test")]
    split: String,
    /// Classifier checkpoint (`voc train classify`'s best.safetensors).
    #[arg(long)]
    classifier: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SegmentEvalArgs {
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    /// A split with masks (`train`, or `test` after `voc data convert`).
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    model: SegmenterArgs,
    /// Also write confusion.csv (pixel counts, rows = true class) and confusion.png into this folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    match args.what {
        EvalCommand::Classify(a) => classify(a),
        EvalCommand::Segment(a) => segment(a),
        EvalCommand::Fuse(a) => fuse(a),
    }
}

/// Split `split` of the data folder `data` with its 0/1 label rows (`N x 20`); a split without images
/// or without labels is an error saying what it is needed `for_what`.
fn labelled_split(
    data: &Path,
    split: &str,
    for_what: &str,
) -> anyhow::Result<(SplitIndex, Vec<u8>)> {
    let index = CompetitionDir::open(data)?.split(split)?;
    if index.is_empty() {
        bail!(
            "split '{}' ({}) has no images",
            index.name,
            index.csv_path().display()
        );
    }
    let Some(labels) = &index.labels else {
        bail!(
            "split '{}' ({}) has no labels (every label is -1): {for_what} on a labelled split",
            index.name,
            index.csv_path().display()
        );
    };
    let truth = labels.iter().flat_map(|l| l.to_flags()).collect();
    Ok((index, truth))
}

fn classify(args: ClassifyEvalArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let (index, truth) = labelled_split(&args.data, &args.split, "evaluate")?;
    let classifier = CheckpointClassifier::load(&args.classifier, &device)?;
    check_class_names(
        &classifier.class_names,
        &format!("{} (checkpoint metadata)", args.classifier.display()),
    )?;
    let bar = crate::progress::bar(index.len(), &format!("classifying {}", index.name));
    let mut probs = Vec::with_capacity(index.len() * NUM_CLASSES);
    for id in &index.ids {
        let image = index.read_rgb_image(id)?;
        probs.extend(
            classifier
                .probabilities(&image, &device)
                .with_context(|| format!("image {}", index.image_path(id).display()))?,
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = metrics::evaluate(&probs, &truth, NUM_CLASSES, &classifier.decision())?;
    if args.json {
        let json = serde_json::json!({
            "classifier": args.classifier,
            "split": index.name,
            "report": report,
            "thresholds": classifier.thresholds,
        });
        println!("{json}");
        return Ok(());
    }
    println!("{:<12} {:>6}", "class", "AP");
    for (name, ap) in CLASS_NAMES.iter().zip(&report.per_class_ap) {
        match ap {
            Some(ap) => println!("{name:<12} {ap:>6.3}"),
            None => println!("{name:<12} {:>6}", "-"),
        }
    }
    println!(
        "{} on {} images of '{}': mAP {:.4}, macro F1 {:.4}, classification Dice {:.4}",
        args.classifier.display(),
        report.images,
        index.name,
        report.map,
        report.macro_f1,
        report.dice
    );
    Ok(())
}

fn segment(args: SegmentEvalArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let device = args.model.device.open()?;
    let index = CompetitionDir::open(&args.data)?.split(&args.split)?;
    if index.is_empty() {
        bail!(
            "{}: split '{}' lists no images",
            index.csv_path().display(),
            index.name
        );
    }
    if !index.has_masks {
        bail!(
            "split '{}' of {} has no masks ({} is missing): evaluating a segmenter needs the true masks",
            index.name,
            args.data.display(),
            index.dir().join("seg").display()
        );
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    }
    let loaded = open_segmenter(&args.model, &device)?;
    let bar = crate::progress::bar(index.len(), &format!("segmenting {}", index.name));
    let mut scores = SegmentationMetrics::new();
    for id in &index.ids {
        let image = index.read_rgb_image(id)?;
        let truth = index.read_mask(id)?;
        if truth.dim() != (image.height(), image.width()) {
            bail!(
                "{}: the mask is {:?}, its image {} is {}x{}",
                index.mask_path(id).display(),
                truth.dim(),
                index.image_path(id).display(),
                image.height(),
                image.width()
            );
        }
        let mask = loaded
            .segmenter
            .mask(&image, &device)
            .with_context(|| format!("segmenting {}", index.image_path(id).display()))?;
        let truth: Vec<u8> = truth.iter().copied().collect();
        scores
            .add_image(&truth, mask.as_slice())
            .with_context(|| format!("scoring {}", index.mask_path(id).display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let names: Vec<String> = MASK_CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let confusion: Vec<Vec<u64>> = scores.confusion().iter().map(|r| r.to_vec()).collect();
    let mut written = Vec::new();
    if let Some(dir) = &args.out {
        let csv_path = dir.join("confusion.csv");
        let png_path = dir.join("confusion.png");
        let title = format!(
            "confusion, split {}, {} images",
            index.name,
            scores.images()
        );
        voc_data::chart::write_confusion(&csv_path, &png_path, &title, &names, &confusion)?;
        written = vec![csv_path, png_path];
    }
    let iou = scores.class_iou();
    if args.json {
        let per_class: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&iou)
            .map(|(n, v)| (n.clone(), serde_json::json!(v)))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "segmenter": loaded.source,
                "split": index.name,
                "images": scores.images(),
                "pixel_accuracy": scores.pixel_accuracy(),
                "mean_iou": scores.mean_iou(),
                "mean_class_iou": scores.mean_class_iou(),
                "segmentation_dice": scores.segmentation_dice(),
                "class_iou": per_class,
                "confusion": confusion,
                "output_stride": args.model.output_stride,
                "size_strategy": args.model.size_strategy.to_string(),
                "tta": args.model.tta_name(),
                "files": written,
                "seconds": seconds,
            })
        );
        return Ok(());
    }
    println!("{:<12} {:>6}", "class", "IoU");
    for (name, v) in names.iter().zip(&iou) {
        match v {
            Some(v) => println!("{name:<12} {v:>6.4}"),
            None => println!("{name:<12} {:>6}", "-"),
        }
    }
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let files = if written.is_empty() {
        String::new()
    } else {
        format!(
            "; wrote {}",
            written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        )
    };
    println!(
        "{} on {} images of '{}' in {seconds:.1} s: pixel accuracy {}, mIoU {} (21 with background), \
         {} (20 classes), segmentation Dice {}{files}",
        loaded.source,
        scores.images(),
        index.name,
        show(scores.pixel_accuracy()),
        show(scores.mean_iou()),
        show(scores.mean_class_iou()),
        show(scores.segmentation_dice()),
    );
    Ok(())
}

fn fuse(args: FuseEvalArgs) -> anyhow::Result<()> {
    // Checked before minutes of inference, not after.
    crate::outputs::check_file(&args.out, Some(&args.data), "--out")?;
    if let Some(scores) = &args.scores {
        crate::outputs::check_file(scores, Some(&args.data), "--scores")?;
    }
    let device = args.model.device.open()?;
    let (index, truth) = labelled_split(&args.data, &args.split, "fit the fusion")?;
    let folds = args.folds.unwrap_or(5.min(index.len()));
    if folds < 2 || folds > index.len() {
        bail!(
            "--folds {folds}: expected 2 to {} (the images of split '{}')",
            index.len(),
            index.name
        );
    }
    if args.repeats == 0 {
        bail!("--repeats 0: expected at least 1 fold assignment to average");
    }
    let classifier = CheckpointClassifier::load(&args.classifier, &device)?;
    check_class_names(
        &classifier.class_names,
        &format!("{} (checkpoint metadata)", args.classifier.display()),
    )?;
    let loaded = open_segmenter(&args.model, &device)?;

    let bar = crate::progress::bar(
        index.len(),
        &format!("classifying and segmenting {}", index.name),
    );
    let mut probs = Vec::with_capacity(index.len() * NUM_CLASSES);
    let mut areas = Vec::with_capacity(index.len() * NUM_CLASSES);
    for id in &index.ids {
        let image_path = index.image_path(id);
        let image = index.read_rgb_image(id)?;
        probs.extend(
            classifier
                .probabilities(&image, &device)
                .with_context(|| format!("classifying {}", image_path.display()))?,
        );
        let mask = loaded
            .segmenter
            .mask(&image, &device)
            .with_context(|| format!("segmenting {}", image_path.display()))?;
        areas.extend(class_area_fractions(&mask));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(path) = &args.scores {
        write_fusion_scores(path, &index.ids, &probs, &areas, &truth)?;
    }

    let fit = fit_fusion(&probs, &areas, &truth, NUM_CLASSES, args.threshold)?;
    let cross = cross_fitted_dice(
        &probs,
        &areas,
        &truth,
        NUM_CLASSES,
        args.threshold,
        folds,
        args.seed,
        args.repeats,
    )?;
    let file = FusionFile {
        format: FUSION_FORMAT.to_string(),
        rule: fit.rule,
        threshold_rule: args.threshold,
        segmenter: loaded.source,
        output_stride: args.model.output_stride,
        size_strategy: args.model.size_strategy.to_string(),
        tta: args.model.tta_name().map(str::to_string),
        classifier: args.classifier.clone(),
        data: args.data.clone(),
        split: index.name.clone(),
        images: index.len(),
        in_sample: DiceByLabels {
            mask_only: fit.mask_only_dice,
            classifier_only: fit.classifier_only_dice,
            fused: fit.dice,
        },
        cross_fitted: cross,
    };
    let json = serde_json::to_string_pretty(&file)?;
    voc_core::write_atomic(&args.out, |f| {
        std::io::Write::write_all(f, format!("{json}\n").as_bytes())
    })?;
    if args.json {
        // From the text written, so that the numbers print as in the file (f32 thresholds at their
        // shortest).
        let mut value: serde_json::Value = serde_json::from_str(&json)?;
        value["fusion"] = serde_json::json!(args.out);
        value["best_labels"] = serde_json::json!(file.cross_fitted.best_labels());
        println!("{value}");
        return Ok(());
    }
    let (c, i) = (&file.cross_fitted, &file.in_sample);
    println!(
        "wrote {}: classifier weight {}, area scale {}, {} thresholds; classification Dice on {} images \
         of '{}', {}-fold cross-fitted (mean of {} fold assignments): mask {:.4}, classifier {:.4}, \
         fused {:.4}, the fusion best in {} of {} (in-sample: mask {:.4}, classifier {:.4}, fused \
         {:.4}); best held out: --labels {}",
        args.out.display(),
        file.rule.classifier_weight,
        file.rule.area_scale,
        file.threshold_rule,
        file.images,
        file.split,
        c.folds,
        c.repeats,
        c.mask_only_dice,
        c.classifier_only_dice,
        c.fused_dice,
        c.fused_wins,
        c.repeats,
        i.mask_only,
        i.classifier_only,
        i.fused,
        c.best_labels(),
    );
    Ok(())
}
