//! `voc data ...`: convert a VOCdevkit folder, statistics, stratified splits, checks and a preview grid.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use voc_data::competition::{CompetitionDir, SplitIndex};
use voc_data::vocdevkit::{convert, ConvertOptions, VocDevkit};
use voc_data::{preview, stratified_split, SplitStats};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write the competition layout (train/, test/ with npy arrays and CSVs) from a VOCdevkit folder.
    Convert(ConvertArgs),
    /// Per-class image counts, pixel shares, balanced weights and BCE pos_weight of a split.
    Stats(StatsArgs),
    /// A deterministic stratified train/validation split of a split's Ids.
    Split(SplitArgs),
    /// Read every file of a split and report problems and label/mask disagreements.
    Check(CheckArgs),
    /// A PNG grid with one example per class: title, image, and its mask in the VOC palette.
    Preview(PreviewArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// VOCdevkit year folder (with JPEGImages/, SegmentationClass/, ImageSets/Segmentation/).
    #[arg(long)]
    vocdevkit: PathBuf,
    /// Output folder for the competition layout.
    #[arg(long)]
    out: PathBuf,
    /// Keep VOC's void label 255 in the masks (the competition maps it to 0).
    #[arg(long)]
    keep_void: bool,
    /// Write -1 test labels exactly as the competition does (default: real labels, for local scoring).
    #[arg(long)]
    hide_test_labels: bool,
    /// Image set (ImageSets/Segmentation/NAME.txt) for the train split.
    #[arg(long, default_value = "train")]
    train_set: String,
    /// Image set for the test split.
    #[arg(long, default_value = "val")]
    test_set: String,
    /// Write into an output folder that already has a train/ or test/ folder.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct StatsArgs {
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "train")]
    split: String,
    /// Print JSON: {"split", "images", "classes": [{"name", "images", "pixel_share", "weight", "pos_weight"}], ...}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SplitArgs {
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    /// Labelled split to divide.
    #[arg(long, default_value = "train")]
    split: String,
    /// Fraction of the images (and of every class) that goes to validation.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write {"train": [Ids], "val": [Ids]} to this JSON file (atomically); otherwise print it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct CheckArgs {
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "train")]
    split: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PreviewArgs {
    /// Competition data folder.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "train")]
    split: String,
    /// PNG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Side of each image tile in pixels.
    #[arg(long, default_value_t = 200)]
    cell: usize,
    /// Tiles per row.
    #[arg(long, default_value_t = 5)]
    columns: usize,
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Convert(a) => run_convert(a),
        DataCommand::Stats(a) => run_stats(a),
        DataCommand::Split(a) => run_split(a),
        DataCommand::Check(a) => run_check(a),
        DataCommand::Preview(a) => run_preview(a),
    }
}

fn open_split(data: &std::path::Path, split: &str) -> anyhow::Result<SplitIndex> {
    Ok(CompetitionDir::open(data)?.split(split)?)
}

fn run_convert(args: ConvertArgs) -> anyhow::Result<()> {
    let devkit = VocDevkit::open(&args.vocdevkit)?;
    if !args.force && (args.out.join("train").exists() || args.out.join("test").exists()) {
        bail!(
            "{}: already holds train/ or test/; pass --force to write into it",
            args.out.display()
        );
    }
    let options = ConvertOptions {
        keep_void: args.keep_void,
        train_set: Some(args.train_set),
        test_set: Some(args.test_set),
        hide_test_labels: args.hide_test_labels,
    };
    let bar = crate::progress::bar(0, "converting");
    let report = convert(&devkit, &args.out, &options, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!(
        "wrote {} train and {} test images (npy, CSV, masks) from {} to {}",
        report.train,
        report.test,
        devkit.root().display(),
        report.out.display()
    );
    Ok(())
}

fn run_stats(args: StatsArgs) -> anyhow::Result<()> {
    let index = open_split(&args.data, &args.split)?;
    let stats = SplitStats::compute(&index)?;
    if args.json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        print!("{}", stats.table());
    }
    Ok(())
}

fn run_split(args: SplitArgs) -> anyhow::Result<()> {
    let index = open_split(&args.data, &args.split)?;
    let labels = match &index.labels {
        Some(l) => l.clone(),
        None if index.has_masks => index
            .ids
            .iter()
            .map(|id| Ok(voc_data::competition::mask_labels(&index.read_mask(id)?)))
            .collect::<anyhow::Result<_>>()?,
        None => bail!(
            "{}: split '{}' has no labels (all -1) and no masks to stratify by",
            index.csv_path().display(),
            index.name
        ),
    };
    let (train, val) = stratified_split(&labels, args.val_fraction, args.seed)?;
    let ids = |p: &[usize]| p.iter().map(|&i| index.ids[i].clone()).collect::<Vec<_>>();
    let json = serde_json::json!({
        "split": index.name, "val_fraction": args.val_fraction, "seed": args.seed,
        "train": ids(&train), "val": ids(&val),
    });
    match &args.out {
        Some(path) => {
            let text = serde_json::to_string_pretty(&json)?;
            voc_core::write_atomic(path, |f| f.write_all(text.as_bytes()))?;
            println!(
                "wrote {} train and {} validation Ids of split '{}' to {}",
                train.len(),
                val.len(),
                index.name,
                path.display()
            );
        }
        None => println!("{json}"),
    }
    Ok(())
}

fn run_check(args: CheckArgs) -> anyhow::Result<()> {
    let index = open_split(&args.data, &args.split)?;
    let bar = crate::progress::bar(index.len(), "checking");
    for i in 0..index.len() {
        index
            .read_sample(i)
            .with_context(|| format!("split '{}', Id {}", index.name, index.ids[i]))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mismatches = index.label_mismatches()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"split": index.name, "images": index.len(), "label_mismatches": mismatches})
        );
    } else {
        println!(
            "split '{}': {} images read, {} label/mask disagreements",
            index.name,
            index.len(),
            mismatches.len()
        );
        for m in &mismatches {
            println!(
                "  Id {}: {} is {} in the CSV but {} the mask",
                m.id,
                m.class,
                m.csv,
                if m.in_mask { "in" } else { "not in" }
            );
        }
    }
    Ok(())
}

fn run_preview(args: PreviewArgs) -> anyhow::Result<()> {
    let index = open_split(&args.data, &args.split)?;
    let (image, entries) = preview::class_grid(&index, args.cell, args.columns)?;
    preview::write_png(&args.out, &image)?;
    let shown: Vec<String> = entries
        .iter()
        .map(|e| format!("{} (Id {})", e.class, e.id))
        .collect();
    println!(
        "wrote {}x{} preview of {} classes to {}: {}",
        image.width(),
        image.height(),
        entries.len(),
        args.out.display(),
        shown.join(", ")
    );
    Ok(())
}
