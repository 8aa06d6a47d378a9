//! `voc eval classify`: score a classifier checkpoint on a labelled split.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use voc_classify::{metrics, CheckpointClassifier};
use voc_core::{CLASS_NAMES, NUM_CLASSES};
use voc_data::CompetitionDir;
use voc_tensor::DeviceSpec;

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

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    match args.what {
        EvalCommand::Classify(a) => classify(a),
    }
}

fn classify(args: ClassifyEvalArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let index = CompetitionDir::open(&args.data)?.split(&args.split)?;
    if index.is_empty() {
        bail!(
            "split '{}' ({}) has no images",
            index.name,
            index.csv_path().display()
        );
    }
    let Some(labels) = &index.labels else {
        bail!(
            "split '{}' ({}) has no labels (every label is -1): evaluate on a labelled split",
            index.name,
            index.csv_path().display()
        );
    };
    let classifier = CheckpointClassifier::load(&args.classifier, &device)?;
    if classifier.class_names.len() != NUM_CLASSES
        || classifier
            .class_names
            .iter()
            .zip(CLASS_NAMES)
            .any(|(a, b)| a != b)
    {
        bail!(
            "{}: its classes are not VOC's 20 in the competition's order",
            args.classifier.display()
        );
    }
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
    let truth: Vec<u8> = labels.iter().flat_map(|l| l.to_flags()).collect();
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
