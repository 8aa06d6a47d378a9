//! `voc predict` (a split's images to a submission) and `voc segment` (one photo to a mask PNG).
//!
//! Every image is segmented at its own size. How an image of any size meets a network trained on
//! 513x513 crops is `--size-strategy`; the default, padding to at least 513 on the output stride's grid
//! and cropping the logits back (DeepLab's own evaluation), scored best on voc-sample train (see the
//! README's Results).
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use voc_classify::{CheckpointClassifier, LabelSource};
use voc_core::{Mask, CLASS_NAMES, MASK_CLASS_NAMES, NUM_CLASSES};
use voc_data::competition::CompetitionDir;
use voc_segment::{load_segmenter, LoadedSegmenter, SizeStrategy, DEFAULT_SEGMENTER};
use voc_submit::{list_problems, MaskView, SubmissionWriter};
use voc_tensor::{Device, DeviceSpec};

use crate::cmd_submit::expected_images;

/// Without a classifier, a class is in an image's labels when its predicted pixels cover at least this
/// fraction of the image. Chosen on voc-sample (README, Results): on its 8 images (6 train, and the 2 test
/// images whose truth is in its vocdevkit/) every value in [0, 0.77%] gives every true label and no
/// false one; above 0.77% the smallest true object the network finds (a bottle) is lost. 0.5% keeps a
/// margin below that while dropping speck-sized predictions.
pub const DEFAULT_MIN_AREA: f64 = 0.005;

/// Opacity of the class colours in overlays.
const OVERLAY_ALPHA: f32 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tta {
    /// Average the logits of the photo and of its left-right mirror image.
    Flip,
    /// Average the logits of the photo at scales 0.75, 1 and 1.25.
    Ms,
    /// Both: the photo and its mirror image at scales 0.75, 1 and 1.25 (6 passes).
    MsFlip,
}

/// The scales of the multi-scale test-time augmentation.
const TTA_SCALES: [f64; 3] = [0.75, 1.0, 1.25];

/// A second segmentation the network's mask is snapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Refine {
    /// SLIC superpixels of the photo (16-pixel grid, compactness 10), each set to its majority class.
    Superpixel,
}

/// The segmenter options `voc predict` and `voc segment` share.
#[derive(Args)]
pub struct SegmenterArgs {
    /// Segmenter: a hub repo id in the DeepLabV3 transformers layout, the preset name
    /// `deeplabv3_mobilenet_v2`, a voc checkpoint (deeplabv3_mobilenet_v2 or deeplabv3plus_mobilenet_v2)
    /// or a DeepLabV3 weights file.
    #[arg(long, default_value = DEFAULT_SEGMENTER)]
    pub(crate) segmenter: String,
    /// Output stride of the backbone: 16 (as trained) or 8 (finer logits, slower: about 1.6x the time of 16
    /// on voc-sample train).
    #[arg(long, default_value_t = 16, value_parser = parse_output_stride)]
    pub(crate) output_stride: usize,
    /// How an image of any size is fitted to the network: `pad[:MIN]` (pad to at least MIN on the
    /// stride grid, crop the logits back) or `resize[:SIZE]` (resize to SIZE x SIZE and back).
    #[arg(long, default_value = "pad:513", value_parser = parse_strategy)]
    pub(crate) size_strategy: SizeStrategy,
    /// Test-time augmentation.
    #[arg(long, value_enum)]
    pub(crate) tta: Option<Tta>,
    /// Snap the mask to a second segmentation of the photo.
    #[arg(long, value_enum)]
    pub(crate) refine: Option<Refine>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceSpec,
}

impl SegmenterArgs {
    /// The test-time augmentation's name (`flip`, `ms`, `ms-flip`) and the refinement (`+superpixel`),
    /// if any, as summaries and fusion files record them.
    pub(crate) fn tta_name(&self) -> Option<&'static str> {
        match (self.tta, self.refine) {
            (None, None) => None,
            (Some(Tta::Flip), None) => Some("flip"),
            (Some(Tta::Ms), None) => Some("ms"),
            (Some(Tta::MsFlip), None) => Some("ms-flip"),
            (None, Some(Refine::Superpixel)) => Some("superpixel"),
            (Some(Tta::Flip), Some(Refine::Superpixel)) => Some("flip+superpixel"),
            (Some(Tta::Ms), Some(Refine::Superpixel)) => Some("ms+superpixel"),
            (Some(Tta::MsFlip), Some(Refine::Superpixel)) => Some("ms-flip+superpixel"),
        }
    }
}

/// `--labels`: where `voc predict` takes each image's labels from, with each value's help.
fn label_source_parser() -> impl clap::builder::TypedValueParser<Value = LabelSource> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(LabelSource::ALL.map(|source| {
        PossibleValue::new(source.name()).help(match source {
            LabelSource::Classifier => "The --classifier checkpoint's thresholds on its probabilities",
            LabelSource::Mask => "The classes whose predicted pixels cover at least --min-area of the image",
            LabelSource::Fused => {
                "The --fusion rule (`voc eval fuse`) on the classifier's probabilities and the mask's areas"
            }
        })
    }))
    .try_map(|name| name.parse::<LabelSource>())
}

#[derive(Args)]
pub struct PredictArgs {
    /// Competition data folder (test/test_set.csv, test/img/test_{Id}.npy, ...).
    #[arg(long)]
    data: PathBuf,
    /// Submission file to write (validated against the split first, then written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Split to predict: `test`, or a labelled split such as `train` for `voc score` to grade.
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    model: SegmenterArgs,
    /// A voc checkpoint of a multi-label classifier (mobilenet_v2_classifier or
    /// efficientnet_lite0_classifier): with --labels classifier (the default when it is given) its
    /// thresholds decide the labels instead of the masks; --labels fused uses its probabilities.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Where the labels come from: classifier (its thresholds), mask (--min-area) or fused (the
    /// --fusion rule on the classifier's probabilities and the mask's class areas). Default:
    /// classifier when --classifier is given, else mask.
    #[arg(long, value_parser = label_source_parser())]
    labels: Option<LabelSource>,
    /// With --labels fused: the rule `voc eval fuse` fitted (FUSION.json).
    #[arg(long)]
    fusion: Option<PathBuf>,
    /// With --labels mask: a class is labelled present when its predicted pixels cover at least this
    /// fraction of the image.
    #[arg(long, default_value_t = DEFAULT_MIN_AREA, value_parser = parse_fraction)]
    min_area: f64,
    /// Also write each predicted mask as `{split}_{Id}.npy` (HxW uint8, the competition's seg/ format)
    /// and `{split}_{Id}.png` (VOC colours) into this folder.
    #[arg(long)]
    save_masks: Option<PathBuf>,
    /// Also write each photo with its mask blended over it as `{split}_{Id}.png` into this folder.
    #[arg(long)]
    save_overlays: Option<PathBuf>,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SegmentArgs {
    /// Photo: .png, .jpg/.jpeg, or .npy (HxWx3 uint8).
    #[arg(long)]
    image: PathBuf,
    /// Mask PNG to write, in the VOC colours (black = background).
    #[arg(long)]
    out: PathBuf,
    /// Also write the photo with the mask blended over it.
    #[arg(long)]
    overlay: Option<PathBuf>,
    #[command(flatten)]
    model: SegmenterArgs,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

fn parse_output_stride(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(os @ (8 | 16)) => Ok(os),
        _ => Err(format!("'{s}': the output stride is 8 or 16")),
    }
}

fn parse_strategy(s: &str) -> Result<SizeStrategy, String> {
    s.parse::<SizeStrategy>().map_err(|e| e.to_string())
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "'{s}': expected a fraction of the image in [0, 1], e.g. 0.01"
        )),
    }
}

/// Fails unless a classifier's `names` are VOC's 20 classes in the competition's order.
pub(crate) fn check_class_names(names: &[String], what: &str) -> anyhow::Result<()> {
    if !names.iter().map(String::as_str).eq(CLASS_NAMES) {
        bail!(
            "{what}: class names {names:?} are not VOC's {} classes in the competition's order {CLASS_NAMES:?}",
            CLASS_NAMES.len()
        );
    }
    Ok(())
}

pub(crate) fn open_segmenter(
    args: &SegmenterArgs,
    device: &Device,
) -> anyhow::Result<LoadedSegmenter> {
    let mut loaded = load_segmenter(
        &args.segmenter,
        args.output_stride,
        args.size_strategy,
        device,
    )
    .context("--segmenter takes a checkpoint, a weights file or a hub repo id")?;
    loaded.segmenter.flip_tta = matches!(args.tta, Some(Tta::Flip | Tta::MsFlip));
    if matches!(args.tta, Some(Tta::Ms | Tta::MsFlip)) {
        loaded.segmenter.scales = TTA_SCALES.to_vec();
    }
    loaded.segmenter.refine = args
        .refine
        .map(|Refine::Superpixel| voc_segment::refine::SlicParams::default());
    Ok(loaded)
}

/// Fraction of the image each mask class (background included) covers, for the classes present.
fn class_areas(mask: &Mask) -> Vec<(&'static str, f64)> {
    let counts = mask.value_counts();
    let pixels = mask.as_slice().len() as f64;
    MASK_CLASS_NAMES
        .into_iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (name, n as f64 / pixels))
        .collect()
}

/// The fraction of the image's pixels the mask labels each of the 20 classes (value `c + 1` is class
/// `c`; background and void count in the total only): the areas a fusion rule reads.
pub(crate) fn class_area_fractions(mask: &Mask) -> Vec<f32> {
    let counts = mask.value_counts();
    let pixels = mask.as_slice().len() as f64;
    (1..=NUM_CLASSES)
        .map(|v| (counts[v] as f64 / pixels) as f32)
        .collect()
}

/// The labels source `args` ask for, with what it needs checked before anything is loaded.
fn label_source(args: &PredictArgs) -> anyhow::Result<LabelSource> {
    let source = args.labels.unwrap_or(if args.classifier.is_some() {
        LabelSource::Classifier
    } else {
        LabelSource::Mask
    });
    match source {
        LabelSource::Classifier if args.classifier.is_none() => {
            bail!("--labels classifier needs --classifier CHECKPOINT")
        }
        LabelSource::Fused if args.fusion.is_none() => bail!(
            "--labels fused needs --fusion FUSION.json (the rule `voc eval fuse` fits on a labelled split)"
        ),
        LabelSource::Fused if args.classifier.is_none() => bail!(
            "--labels fused needs --classifier CHECKPOINT (the classifier the --fusion rule was fitted with)"
        ),
        LabelSource::Classifier | LabelSource::Mask if args.fusion.is_some() => bail!(
            "--fusion is used only with --labels fused (the labels here come from the {})",
            if source == LabelSource::Mask { "masks" } else { "classifier" }
        ),
        _ => Ok(source),
    }
}

/// Warns on stderr where the fusion file was fitted with another segmenter setup or classifier
/// than this run's: the rule still applies, but the areas or probabilities it sees differ.
fn warn_fusion_mismatch(
    file: &crate::cmd_eval::FusionFile,
    path: &Path,
    args: &PredictArgs,
    segmenter_source: &str,
) {
    let mut differ = Vec::new();
    if file.segmenter != segmenter_source {
        differ.push(format!(
            "segmenter {} (here {segmenter_source})",
            file.segmenter
        ));
    }
    if file.output_stride != args.model.output_stride {
        differ.push(format!(
            "output stride {} (here {})",
            file.output_stride, args.model.output_stride
        ));
    }
    let strategy = args.model.size_strategy.to_string();
    if file.size_strategy != strategy {
        differ.push(format!(
            "size strategy {} (here {strategy})",
            file.size_strategy
        ));
    }
    if file.tta.as_deref() != args.model.tta_name() {
        differ.push(format!(
            "TTA {} (here {})",
            file.tta.as_deref().unwrap_or("none"),
            args.model.tta_name().unwrap_or("none")
        ));
    }
    if let Some(classifier) = &args.classifier {
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if !same(&file.classifier, classifier) {
            differ.push(format!(
                "classifier {} (here {})",
                file.classifier.display(),
                classifier.display()
            ));
        }
    }
    if !differ.is_empty() {
        eprintln!(
            "warning: {} was fitted with {}: its rule is applied as it is",
            path.display(),
            differ.join(", ")
        );
    }
}

/// Warns when the fusion file's own held-out comparison found a source alone better than the fusion.
fn warn_fusion_not_best(file: &crate::cmd_eval::FusionFile, path: &Path) {
    let c = &file.cross_fitted;
    let best = c.best_labels();
    if best != LabelSource::Fused {
        eprintln!(
            "warning: in {}'s held-out comparison the fusion did not beat both sources (classification \
             Dice: mask {:.4}, classifier {:.4}, fused {:.4}, the fusion best in {} of {} fold \
             assignments): --labels {best} is likely the better choice",
            path.display(),
            c.mask_only_dice,
            c.classifier_only_dice,
            c.fused_dice,
            c.fused_wins,
            c.repeats,
        );
    }
}

fn create_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the {what} folder", dir.display()))
}

pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::outputs::check_file(&args.out, Some(&args.data), "--out")?;
    for (dir, flag) in [
        (&args.save_masks, "--save-masks"),
        (&args.save_overlays, "--save-overlays"),
    ] {
        if let Some(dir) = dir {
            crate::outputs::check_dir(dir, Some(&args.data), flag)?;
        }
    }
    let source = label_source(&args)?;
    let fusion = match (&args.fusion, source) {
        (Some(path), LabelSource::Fused) => Some(crate::cmd_eval::FusionFile::read(path)?),
        _ => None,
    };
    let device = args.model.device.open()?;
    let index = CompetitionDir::open(&args.data)?.split(&args.split)?;
    if index.is_empty() {
        bail!(
            "{}: split '{}' lists no images",
            index.csv_path().display(),
            index.name
        );
    }
    // Sizes from the .npy headers: a malformed image fails here, before any model is loaded.
    let expected = expected_images(&index)?;
    let loaded = open_segmenter(&args.model, &device)?;
    if let (Some(file), Some(path)) = (&fusion, &args.fusion) {
        warn_fusion_mismatch(file, path, &args, &loaded.source);
        warn_fusion_not_best(file, path);
    }
    let classifier = match &args.classifier {
        Some(path) if source != LabelSource::Mask => {
            let c = CheckpointClassifier::load(path, &device)?;
            check_class_names(
                &c.class_names,
                &format!("{} (checkpoint metadata)", path.display()),
            )?;
            if source == LabelSource::Classifier && !c.thresholds_from_checkpoint {
                eprintln!(
                    "warning: {} records no thresholds; using {} for every class",
                    path.display(),
                    voc_classify::checkpoint::DEFAULT_THRESHOLD
                );
            }
            Some(c)
        }
        _ => None,
    };
    for (dir, what) in [(&args.save_masks, "mask"), (&args.save_overlays, "overlay")] {
        if let Some(dir) = dir {
            create_dir(dir, what)?;
        }
    }

    let bar = crate::progress::bar(index.len(), &format!("segmenting {}", index.name));
    let mut writer = SubmissionWriter::new(Vec::new())?;
    for id in &index.ids {
        let image_path = index.image_path(id);
        let image = index.read_rgb_image(id)?;
        let (h, w) = (image.height(), image.width());
        let mask = loaded
            .segmenter
            .mask(&image, &device)
            .with_context(|| format!("segmenting {}", image_path.display()))?;
        let classify = |c: &CheckpointClassifier| {
            c.probabilities(&image, &device)
                .with_context(|| format!("classifying {}", image_path.display()))
        };
        let labels: Vec<u8> = match (&classifier, &fusion) {
            (Some(c), Some(f)) => f.rule.decide(&classify(c)?, &class_area_fractions(&mask)),
            (Some(c), None) => c.decision().decide(&classify(c)?),
            _ => mask.labels_with_min_area(args.min_area).to_flags().to_vec(),
        };
        writer
            .write_image(id, &labels, MaskView::new(mask.as_slice(), h, w)?)
            .with_context(|| format!("Id {id} ({})", image_path.display()))?;
        let file = format!("{}_{id}", index.name);
        if let Some(dir) = &args.save_masks {
            voc_data::npy::write_u8(&dir.join(format!("{file}.npy")), &[h, w], mask.as_slice())?;
            mask.colorize()
                .write_png(&dir.join(format!("{file}.png")))?;
        }
        if let Some(dir) = &args.save_overlays {
            mask.overlay(&image, OVERLAY_ALPHA)?
                .write_png(&dir.join(format!("{file}.png")))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let bytes = writer.into_inner()?;
    let report = voc_submit::validate(&bytes, &expected);
    if !report.is_valid() {
        bail!(
            "the predicted submission for split '{}' does not validate, so {} was not written:\n{}",
            index.name,
            args.out.display(),
            list_problems(&report.problems, 50)
        );
    }
    voc_core::write_atomic(&args.out, |f| std::io::Write::write_all(f, &bytes))?;
    let seconds = started.elapsed().as_secs_f64();
    let labels_from = match (&classifier, &fusion, &args.fusion) {
        (Some(c), Some(f), Some(path)) => format!(
            "fusion {} (classifier weight {}, area scale {}) of classifier {} and masks",
            path.display(),
            f.rule.classifier_weight,
            f.rule.area_scale,
            c.path.display()
        ),
        (Some(c), _, _) => format!("classifier {}", c.path.display()),
        _ => format!("masks (min area {})", args.min_area),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "submission": args.out.display().to_string(),
                "split": index.name,
                "images": index.len(),
                "rows": report.rows,
                "seconds": seconds,
                "segmenter": loaded.source,
                "output_stride": args.model.output_stride,
                "size_strategy": args.model.size_strategy.to_string(),
                "tta": args.model.tta_name(),
                "labels": source.name(),
                "labels_from": labels_from,
                "masks": args.save_masks.as_ref().map(|p| p.display().to_string()),
                "overlays": args.save_overlays.as_ref().map(|p| p.display().to_string()),
                "device": voc_tensor::device::device_name(&device),
            })
        );
    } else {
        let mut extra = String::new();
        if let Some(dir) = &args.save_masks {
            extra.push_str(&format!("; masks in {}", dir.display()));
        }
        if let Some(dir) = &args.save_overlays {
            extra.push_str(&format!("; overlays in {}", dir.display()));
        }
        println!(
            "wrote {} ({} rows, valid): {} image{} of split '{}' in {seconds:.1} s; {} at output stride {}, {}{}, labels from {labels_from}{extra}",
            args.out.display(),
            report.rows,
            index.len(),
            if index.len() == 1 { "" } else { "s" },
            index.name,
            loaded.source,
            args.model.output_stride,
            args.model.size_strategy,
            args.model
                .tta_name()
                .map_or(String::new(), |t| format!(", test-time {t}")),
        );
    }
    Ok(())
}

pub fn segment(args: SegmentArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = args.model.device.open()?;
    let image = voc_data::read_rgb_image(&args.image)?;
    let loaded = open_segmenter(&args.model, &device)?;
    let mask = loaded
        .segmenter
        .mask(&image, &device)
        .with_context(|| format!("segmenting {}", args.image.display()))?;
    let (h, w) = (image.height(), image.width());
    mask.colorize().write_png(&args.out)?;
    if let Some(path) = &args.overlay {
        mask.overlay(&image, OVERLAY_ALPHA)?.write_png(path)?;
    }
    let areas = class_areas(&mask);
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let classes: serde_json::Map<String, serde_json::Value> = areas
            .iter()
            .map(|(name, area)| (name.to_string(), serde_json::json!(area)))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "image": args.image.display().to_string(),
                "height": h,
                "width": w,
                "mask": args.out.display().to_string(),
                "overlay": args.overlay.as_ref().map(|p| p.display().to_string()),
                "class_areas": classes,
                "seconds": seconds,
                "segmenter": loaded.source,
                "output_stride": args.model.output_stride,
            })
        );
    } else {
        let found: Vec<String> = areas
            .iter()
            .map(|(name, area)| format!("{name} {:.1}%", 100.0 * area))
            .collect();
        let overlay = args
            .overlay
            .as_ref()
            .map(|p| format!(", overlay {}", p.display()))
            .unwrap_or_default();
        println!(
            "wrote mask {}{overlay} for {} ({h}x{w}) in {seconds:.1} s: {}",
            args.out.display(),
            args.image.display(),
            found.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_parsers() {
        assert!(parse_output_stride("32").is_err());
        assert_eq!(parse_output_stride("8"), Ok(8));
        assert!(parse_fraction("1.5").is_err());
        assert_eq!(parse_fraction("0.01"), Ok(0.01));
    }
}
