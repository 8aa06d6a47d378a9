//! `voc encode`, `voc validate`, `voc score`: the Kaggle submission file.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use voc_core::{LabelSet, Mask, CLASS_NAMES};
use voc_data::competition::{CompetitionDir, SplitIndex};
use voc_submit::{list_problems, ExpectedImage, MaskView, Scorer, Submission, SubmissionWriter};

#[derive(Args)]
pub struct EncodeArgs {
    /// Competition data folder (train/train_set.csv, train/seg/*.npy, ...).
    #[arg(long)]
    data: PathBuf,
    /// Labelled split whose ground truth (labels and masks) is encoded.
    #[arg(long, default_value = "train")]
    split: String,
    /// Submission file to write (atomically); `-` or nothing writes to stdout.
    #[arg(long, default_value = "-")]
    out: PathBuf,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// Submission file to check.
    #[arg(long)]
    submission: PathBuf,
    /// Competition data folder; the split's CSV gives the Ids and order, its images the sizes.
    #[arg(long)]
    data: PathBuf,
    /// Split the submission is for.
    #[arg(long, default_value = "test")]
    split: String,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ScoreArgs {
    /// Submission file to score.
    #[arg(long)]
    submission: PathBuf,
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    /// Labelled split (with labels and masks) to score against.
    #[arg(long, default_value = "train")]
    split: String,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

fn open_split(data: &Path, split: &str) -> anyhow::Result<SplitIndex> {
    let dir = CompetitionDir::open(data)?;
    Ok(dir.split(split)?)
}

/// The split's labels and checks that it has masks: encode and score need its ground truth.
fn labelled(index: &SplitIndex, command: &str) -> anyhow::Result<Vec<LabelSet>> {
    let Some(labels) = &index.labels else {
        bail!(
            "{}: split '{}' has no labels (all -1): `voc {command}` needs a labelled split such as train",
            index.csv_path().display(),
            index.name
        );
    };
    if !index.has_masks {
        bail!(
            "{}: split '{}' has no seg/ folder: `voc {command}` needs its masks",
            index.dir().display(),
            index.name
        );
    }
    Ok(labels.clone())
}

fn view<'a>(index: &SplitIndex, id: &str, mask: &'a Mask) -> anyhow::Result<MaskView<'a>> {
    MaskView::new(mask.as_slice(), mask.height(), mask.width())
        .with_context(|| index.mask_path(id).display().to_string())
}

fn write_rows<W: Write>(
    writer: &mut SubmissionWriter<W>,
    index: &SplitIndex,
    labels: &[LabelSet],
) -> anyhow::Result<()> {
    let bar = crate::progress::bar(index.ids.len(), "encoding");
    for (id, labels) in index.ids.iter().zip(labels) {
        let mask = index.read_checked_mask(id)?;
        writer
            .write_image(id, &labels.to_flags(), view(index, id, &mask)?)
            .with_context(|| {
                format!(
                    "Id {id} ({} and {})",
                    index.csv_path().display(),
                    index.mask_path(id).display()
                )
            })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

pub fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    let index = open_split(&args.data, &args.split)?;
    let labels = labelled(&index, "encode")?;
    let target = if args.out.as_os_str() == "-" {
        let mut writer = SubmissionWriter::new(std::io::BufWriter::new(std::io::stdout().lock()))?;
        write_rows(&mut writer, &index, &labels)?;
        writer.into_inner()?;
        "stdout".to_string()
    } else {
        let mut writer = SubmissionWriter::create(&args.out)?;
        write_rows(&mut writer, &index, &labels)?;
        writer.finish()?.display().to_string()
    };
    eprintln!(
        "wrote {} rows ({} images, ground truth of split '{}') to {target}",
        2 * index.ids.len(),
        index.ids.len(),
        index.name
    );
    Ok(())
}

/// Id and image size of every image of the split, in order: what a submission for it must hold.
pub(crate) fn expected_images(index: &SplitIndex) -> anyhow::Result<Vec<ExpectedImage>> {
    index
        .ids
        .iter()
        .map(|id| {
            let (height, width) = index.image_size(id)?;
            Ok(ExpectedImage {
                id: id.clone(),
                height,
                width,
            })
        })
        .collect()
}

pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let (index, report) = validation_of(&args.data, &args.split, &args.submission)?;
    let expected_len = index.ids.len();
    let file = args.submission.display();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "submission": file.to_string(),
                "split": index.name,
                "images": expected_len,
                "valid": report.is_valid(),
                "rows": report.rows,
                "problems": report.problems,
                "warnings": report.warnings,
            })
        );
    } else {
        for warning in &report.warnings {
            println!("warning: {warning}");
        }
        if report.is_valid() {
            println!(
                "{file}: valid: {} rows for the {} image{} of split '{}'",
                report.rows,
                expected_len,
                if expected_len == 1 { "" } else { "s" },
                index.name
            );
        } else {
            println!(
                "{file}: {} problem(s):\n{}",
                report.problems.len(),
                list_problems(&report.problems, 200)
            );
        }
    }
    if !report.is_valid() {
        bail!(
            "{file} is not a valid submission for split '{}' ({} problem(s))",
            index.name,
            report.problems.len()
        );
    }
    Ok(())
}

/// `voc validate`'s check of `submission` against split `split` of `data`.
pub(crate) fn validation_of(
    data: &Path,
    split: &str,
    submission: &Path,
) -> anyhow::Result<(SplitIndex, voc_submit::ValidationReport)> {
    let index = open_split(data, split)?;
    let expected = expected_images(&index)?;
    let report = voc_submit::validate_file(submission, &expected)?;
    Ok((index, report))
}

/// `voc score`'s scores of a valid `submission` against the labelled split `split` of `data`.
pub(crate) fn score_of(
    data: &Path,
    split: &str,
    submission: &Path,
) -> anyhow::Result<(SplitIndex, voc_submit::Score)> {
    let (index, report) = validation_of(data, split, submission)?;
    let labels = labelled(&index, "score")?;
    let file = submission.display();
    if !report.is_valid() {
        bail!(
            "{file} is not a valid submission for split '{}', not scored ({} problem(s)):\n{}",
            index.name,
            report.problems.len(),
            list_problems(&report.problems, 50)
        );
    }
    let submission = Submission::read(submission)?;
    let mut scorer = Scorer::new(&submission)?;
    let bar = crate::progress::bar(index.ids.len(), "scoring");
    for (id, labels) in index.ids.iter().zip(&labels) {
        let mask = index.read_checked_mask(id)?;
        scorer
            .add_image(id, &labels.to_flags(), view(&index, id, &mask)?)
            .with_context(|| format!("{file}: scoring Id {id}"))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((index, scorer.finish()?))
}

pub fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let file = args.submission.display();
    let (index, score) = score_of(&args.data, &args.split, &args.submission)?;
    let class_iou: serde_json::Map<String, serde_json::Value> = CLASS_NAMES
        .iter()
        .zip(score.class_iou)
        .map(|(name, iou)| (name.to_string(), serde_json::json!(iou)))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "submission": file.to_string(),
                "split": index.name,
                "images": score.images,
                "dice": score.dice,
                "classification_dice": score.classification_dice,
                "segmentation_dice": score.segmentation_dice,
                "mean_iou": score.mean_iou,
                "class_iou": class_iou,
            })
        );
    } else {
        println!(
            "{file} against the ground truth of split '{}' ({} images):",
            index.name, score.images
        );
        println!("  mean Dice, all rows             {:.6}", score.dice);
        println!(
            "  mean Dice, classification rows  {:.6}",
            score.classification_dice
        );
        println!(
            "  mean Dice, segmentation rows    {:.6}",
            score.segmentation_dice
        );
        let present = score.class_iou.iter().flatten().count();
        match score.mean_iou {
            Some(miou) => println!(
                "  {:<32}{miou:.6}",
                format!("mean IoU over {present} classes")
            ),
            None => println!("  mean IoU: no class in the truth or the submission"),
        }
        for (name, iou) in CLASS_NAMES.iter().zip(score.class_iou) {
            if let Some(iou) = iou {
                println!("    {name:<12} IoU {iou:.6}");
            }
        }
    }
    Ok(())
}
