//! `voc predict` (a split's images to a submission) and `voc segment` (one photo to a mask PNG).
//!
//! Every image is segmented at its own size. How an image of any size meets a network trained on
//! 513x513 crops is `--size-strategy`; the default, padding to at least 513 on the output stride's grid
//! and cropping the logits back (DeepLab's own evaluation), scored best on voc-sample train (see the
//! README's Results).
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use voc_classify::checkpoint::normalization_from_checkpoint;
use voc_classify::preset::class_names_from_config;
use voc_classify::{CheckpointClassifier, Rgb8Image};
use voc_data::competition::{CompetitionDir, SplitIndex};
use voc_data::VOC_CLASSES;
use voc_segment::palette::{colorize, overlay, write_png};
use voc_segment::{
    DeepLabV3, DeepLabV3Plus, DeepLabV3PlusConfig, SegmentationNet, Segmenter, SegmenterPreset,
    SizeStrategy,
};
use voc_submit::{list_problems, ExpectedImage, MaskView, SubmissionWriter};
use voc_tensor::checkpoint;
use voc_tensor::hub::{HubCache, WeightsSource};
use voc_tensor::{Device, DeviceSpec};

/// Without a classifier, a class is in an image's labels when its predicted pixels cover at least this
/// fraction of the image. Chosen on voc-sample (README, Results): on its 8 images (6 train, and the 2 test
/// images whose truth is in its vocdevkit/) every value in [0, 0.77%] gives every true label and no
/// false one; above 0.77% the smallest true object the network finds (a bottle) is lost. 0.5% keeps a
/// margin below that while dropping speck-sized predictions.
pub const DEFAULT_MIN_AREA: f64 = 0.005;

/// Opacity of the class colours in overlays.
const OVERLAY_ALPHA: f32 = 0.5;

/// The segmenter used when `--segmenter` is not given.
const DEFAULT_SEGMENTER: &str = "google/deeplabv3_mobilenet_v2_1.0_513";

/// Checkpoint `architecture` names `--segmenter` accepts.
const DEEPLABV3_ARCH: &str = "deeplabv3_mobilenet_v2";
const DEEPLABV3PLUS_ARCH: &str = "deeplabv3plus_mobilenet_v2";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tta {
    /// Average the logits of the photo and of its left-right mirror image.
    Flip,
}

/// The segmenter options `voc predict` and `voc segment` share.
#[derive(Args)]
pub struct SegmenterArgs {
    /// Segmenter: a hub repo id in the DeepLabV3 transformers layout, the preset name
    /// `deeplabv3_mobilenet_v2`, a voc checkpoint (deeplabv3_mobilenet_v2 or deeplabv3plus_mobilenet_v2)
    /// or a DeepLabV3 weights file.
    #[arg(long, default_value = DEFAULT_SEGMENTER)]
    segmenter: String,
    /// Output stride of the backbone: 16 (as trained) or 8 (finer logits, slower: about 1.6x the time of 16
    /// on voc-sample train).
    #[arg(long, default_value_t = 16, value_parser = parse_output_stride)]
    output_stride: usize,
    /// How an image of any size is fitted to the network: `pad[:MIN]` (pad to at least MIN on the
    /// stride grid, crop the logits back) or `resize[:SIZE]` (resize to SIZE x SIZE and back).
    #[arg(long, default_value = "pad:513", value_parser = parse_strategy)]
    size_strategy: SizeStrategy,
    /// Test-time augmentation.
    #[arg(long, value_enum)]
    tta: Option<Tta>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
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
    /// efficientnet_lite0_classifier); its thresholds decide the labels instead of the masks.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Without --classifier: a class is labelled present when its predicted pixels cover at least this
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

/// The 21 class names every VOC segmenter must output, background first.
fn voc_segmenter_classes() -> Vec<String> {
    std::iter::once("background")
        .chain(VOC_CLASSES)
        .map(str::to_string)
        .collect()
}

/// Fails unless `names` are VOC's classes in the competition's order (`what` says whose they are).
fn check_class_names(names: &[String], expected: &[String], what: &str) -> anyhow::Result<()> {
    if names != expected {
        bail!(
            "{what}: class names {names:?} are not VOC's {} classes in the competition's order {expected:?}",
            expected.len()
        );
    }
    Ok(())
}

/// Whether a `--segmenter` value that is not an existing file was meant as a file rather than a hub id.
fn looks_like_path(spec: &str) -> bool {
    let ext = Path::new(spec)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    spec.starts_with(['.', '/', '~'])
        || matches!(
            ext.as_deref(),
            Some("safetensors" | "bin" | "pt" | "pth" | "ckpt")
        )
}

/// A loaded segmenter and a short description of where it came from.
struct LoadedSegmenter {
    segmenter: Segmenter,
    source: String,
}

fn load_segmenter(args: &SegmenterArgs, device: &Device) -> anyhow::Result<LoadedSegmenter> {
    let spec = args.segmenter.as_str();
    let preset = SegmenterPreset::DEEPLABV3_MOBILENET_V2;
    let classes = voc_segmenter_classes();
    let path = Path::new(spec);
    let (net, normalization, source) = if path.is_file() {
        load_segmenter_file(path, args.output_stride, &classes, device)?
    } else if looks_like_path(spec) {
        bail!("{spec}: no such segmenter file (--segmenter takes a checkpoint, a weights file or a hub repo id)");
    } else {
        let repo_id = match SegmenterPreset::by_name(spec) {
            Ok(p) => p.repo_id.to_string(),
            Err(_) if spec.split('/').count() == 2 && !spec.contains(char::is_whitespace) => {
                spec.to_string()
            }
            Err(_) => bail!(
                "unknown segmenter '{spec}': expected a hub repo id (ORG/NAME, e.g. {}), the preset name {}, \
                 or a checkpoint/weights file",
                preset.repo_id,
                preset.name
            ),
        };
        // Any repo in the transformers DeepLabV3-MobileNetV2 layout works; its config.json must name
        // VOC's classes.
        let cache = HubCache::from_env();
        let net = preset
            .load_in(
                &cache,
                &WeightsSource::hub(&repo_id, None),
                args.output_stride,
                device,
            )
            .with_context(|| {
                format!(
                    "loading the segmenter '{repo_id}' from the hub (a local checkpoint or weights \
                     file can be given as --segmenter FILE)"
                )
            })?;
        let config = cache.resolve_file(&repo_id, None, "config.json")?;
        let names = class_names_from_config(&config)?;
        check_class_names(&names, &classes, &config.display().to_string())?;
        (
            SegmentationNet::DeepLabV3(Box::new(net)),
            preset.normalization,
            format!("hub:{repo_id}"),
        )
    };
    let mut segmenter = Segmenter::new(net, normalization, args.size_strategy);
    segmenter.flip_tta = args.tta == Some(Tta::Flip);
    Ok(LoadedSegmenter { segmenter, source })
}

/// A voc checkpoint of a segmenter, or a plain DeepLabV3 weights file in the hub layout.
fn load_segmenter_file(
    path: &Path,
    output_stride: usize,
    classes: &[String],
    device: &Device,
) -> anyhow::Result<(SegmentationNet, voc_classify::Normalization, String)> {
    let name = path.display().to_string();
    let preset = SegmenterPreset::DEEPLABV3_MOBILENET_V2;
    match checkpoint::load_checkpoint(path, device) {
        Ok((tensors, meta)) => {
            let num_classes = meta.class_names.len();
            let net = match meta.architecture.as_str() {
                DEEPLABV3_ARCH => {
                    let mut config = preset.config;
                    config.num_classes = num_classes;
                    config.backbone.output_stride = output_stride;
                    SegmentationNet::DeepLabV3(Box::new(DeepLabV3::from_tensors(
                        tensors, &name, config, device,
                    )?))
                }
                DEEPLABV3PLUS_ARCH => {
                    let default = DeepLabV3PlusConfig::default();
                    let config = DeepLabV3PlusConfig {
                        num_classes,
                        backbone: default.backbone.with_output_stride(output_stride),
                        ..default
                    };
                    SegmentationNet::DeepLabV3Plus(Box::new(DeepLabV3Plus::from_tensors(
                        tensors, &name, config, device,
                    )?))
                }
                other => bail!(
                    "{name}: a checkpoint of architecture '{other}', not a segmenter: --segmenter takes a \
                     {DEEPLABV3_ARCH} or {DEEPLABV3PLUS_ARCH} checkpoint, a DeepLabV3 weights file or a hub repo id"
                ),
            };
            check_class_names(
                &meta.class_names,
                classes,
                &format!("{name} (checkpoint metadata)"),
            )?;
            let source = format!("{name} ({})", meta.architecture);
            Ok((
                net,
                normalization_from_checkpoint(&meta.normalization),
                source,
            ))
        }
        Err(not_checkpoint) => {
            let net = preset
                .load_in(
                    &HubCache::from_env(),
                    &WeightsSource::File(path.to_path_buf()),
                    output_stride,
                    device,
                )
                .map_err(|e| {
                    anyhow!(
                        "{name} cannot be used as the segmenter.\nAs a voc checkpoint: {not_checkpoint}\nAs DeepLabV3 weights: {e}"
                    )
                })?;
            Ok((
                SegmentationNet::DeepLabV3(Box::new(net)),
                preset.normalization,
                format!("{name} ({DEEPLABV3_ARCH} weights)"),
            ))
        }
    }
}

/// The 20 labels of a predicted mask: class `c` (mask value `c + 1`) is present when it covers at least
/// `min_area` of the pixels (and at least one pixel).
pub fn labels_from_mask(mask: &[u8], min_area: f64) -> [u8; 20] {
    let mut counts = [0u64; 256];
    for &v in mask {
        counts[v as usize] += 1;
    }
    let needed = min_area * mask.len() as f64;
    let mut labels = [0u8; 20];
    for (c, label) in labels.iter_mut().enumerate() {
        let n = counts[c + 1];
        *label = u8::from(n > 0 && n as f64 >= needed);
    }
    labels
}

/// Fraction of the image each class (background included) covers, for the classes present.
fn class_areas(mask: &[u8]) -> Vec<(String, f64)> {
    let mut counts = [0u64; 21];
    for &v in mask {
        if let Some(n) = counts.get_mut(v as usize) {
            *n += 1;
        }
    }
    voc_segmenter_classes()
        .into_iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (name, n as f64 / mask.len() as f64))
        .collect()
}

fn expected_images(index: &SplitIndex) -> anyhow::Result<Vec<ExpectedImage>> {
    index
        .ids
        .iter()
        .map(|id| {
            let (height, width) = index.image_size(id)?;
            let path = index.image_path(id);
            let header = voc_data::npy::read_header(&path)?;
            if header.dtype != voc_data::npy::NpyDtype::U8 {
                bail!(
                    "{}: image dtype is '{}'; expected uint8 ('|u1') of shape (H, W, 3)",
                    path.display(),
                    header.descr
                );
            }
            Ok(ExpectedImage {
                id: id.clone(),
                height,
                width,
            })
        })
        .collect()
}

fn read_rgb(index: &SplitIndex, id: &str) -> anyhow::Result<Rgb8Image> {
    let array = index.read_image(id)?;
    let (h, w, _) = array.dim();
    let data = match array.as_slice() {
        Some(data) => data.to_vec(),
        None => array.iter().copied().collect(),
    };
    Rgb8Image::new(h, w, data).with_context(|| index.image_path(id).display().to_string())
}

fn create_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the {what} folder", dir.display()))
}

pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let started = Instant::now();
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
    let loaded = load_segmenter(&args.model, &device)?;
    let classifier = match &args.classifier {
        Some(path) => {
            let c = CheckpointClassifier::load(path, &device)?;
            let voc: Vec<String> = VOC_CLASSES.iter().map(|s| s.to_string()).collect();
            check_class_names(
                &c.class_names,
                &voc,
                &format!("{} (checkpoint metadata)", path.display()),
            )?;
            if !c.thresholds_from_checkpoint {
                eprintln!(
                    "warning: {} records no thresholds; using {} for every class",
                    path.display(),
                    voc_classify::checkpoint::DEFAULT_THRESHOLD
                );
            }
            Some(c)
        }
        None => None,
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
        let image = read_rgb(&index, id)?;
        let (h, w) = (image.height, image.width);
        let mask = loaded
            .segmenter
            .mask(&image, &device)
            .with_context(|| format!("segmenting {}", image_path.display()))?;
        let labels: Vec<u8> = match &classifier {
            Some(c) => c
                .labels(&image, &device)
                .with_context(|| format!("classifying {}", image_path.display()))?,
            None => labels_from_mask(&mask, args.min_area).to_vec(),
        };
        writer
            .write_image(id, &labels, MaskView::new(&mask, h, w)?)
            .with_context(|| format!("Id {id} ({})", image_path.display()))?;
        let file = format!("{}_{id}", index.name);
        if let Some(dir) = &args.save_masks {
            voc_data::npy::write_u8(&dir.join(format!("{file}.npy")), &[h, w], &mask)?;
            write_png(&colorize(&mask, h, w)?, &dir.join(format!("{file}.png")))?;
        }
        if let Some(dir) = &args.save_overlays {
            write_png(
                &overlay(&image, &mask, OVERLAY_ALPHA)?,
                &dir.join(format!("{file}.png")),
            )?;
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
    checkpoint::write_atomic(&args.out, &bytes)?;
    let seconds = started.elapsed().as_secs_f64();
    let labels_from = match &classifier {
        Some(c) => format!("classifier {}", c.path.display()),
        None => format!("masks (min area {})", args.min_area),
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
                "tta": args.model.tta.map(|_| "flip"),
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
            if args.model.tta.is_some() { ", flip TTA" } else { "" },
        );
    }
    Ok(())
}

pub fn segment(args: SegmentArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = args.model.device.open()?;
    let image = Rgb8Image::read(&args.image)?;
    let loaded = load_segmenter(&args.model, &device)?;
    let mask = loaded
        .segmenter
        .mask(&image, &device)
        .with_context(|| format!("segmenting {}", args.image.display()))?;
    let (h, w) = (image.height, image.width);
    write_png(&colorize(&mask, h, w)?, &args.out)?;
    if let Some(path) = &args.overlay {
        write_png(&overlay(&image, &mask, OVERLAY_ALPHA)?, path)?;
    }
    let areas = class_areas(&mask);
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let classes: serde_json::Map<String, serde_json::Value> = areas
            .iter()
            .map(|(name, area)| (name.clone(), serde_json::json!(area)))
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
    fn labels_need_the_minimum_area() {
        // 100 pixels: 90 background, 6 of class 1 (aeroplane), 4 of class 20 (tvmonitor).
        let mut mask = vec![0u8; 90];
        mask.extend([1; 6]);
        mask.extend([20; 4]);
        let labels = labels_from_mask(&mask, 0.05);
        assert_eq!(labels[0], 1);
        assert_eq!(labels[19], 0);
        assert_eq!(labels.iter().map(|&l| l as u32).sum::<u32>(), 1);
        let labels = labels_from_mask(&mask, 0.0);
        assert_eq!((labels[0], labels[19]), (1, 1));
        assert_eq!(labels_from_mask(&[0; 10], 0.0), [0; 20]);
    }

    #[test]
    fn segmenter_specs() {
        assert!(looks_like_path("runs/best.safetensors"));
        assert!(looks_like_path("./model"));
        assert!(!looks_like_path("google/deeplabv3_mobilenet_v2_1.0_513"));
        assert!(parse_output_stride("32").is_err());
        assert_eq!(parse_output_stride("8"), Ok(8));
        assert!(parse_fraction("1.5").is_err());
    }
}
