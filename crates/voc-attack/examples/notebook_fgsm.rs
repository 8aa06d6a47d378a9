//! The notebook's experiment: FGSM on a photo of a cat that a trained multi-label classifier gets
//! right, at growing budgets, with the cat's probability and the predicted labels at each.
//!
//! `cargo run --release -p voc-attack --example notebook_fgsm -- --classifier runs/ft/best.safetensors --data data`
//! (a `voc train classify` checkpoint and a competition-layout folder whose `--split`, default `test`,
//! is labelled; the first image labelled cat that the classifier labels cat is attacked). `--out DIR`
//! writes the adversarial images as PNGs.
use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Tensor;
use clap::Parser;
use voc_attack::{attack, quality, AttackConfig};
use voc_classify::{rgb_to_tensor, CheckpointClassifier};
use voc_core::RgbImage;
use voc_tensor::DeviceSpec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "FGSM at growing budgets on a cat a trained classifier gets right")]
struct Args {
    /// A `voc train classify` checkpoint.
    #[arg(long)]
    classifier: PathBuf,
    /// Competition-layout data folder.
    #[arg(long)]
    data: PathBuf,
    /// A labelled split of --data.
    #[arg(long, default_value = "test")]
    split: String,
    /// The class to look for and attack.
    #[arg(long, default_value = "cat")]
    class: String,
    /// Budgets in 1/255 units.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,4,8,16,32")]
    eps: Vec<f64>,
    /// Write the adversarial images here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

fn main() -> anyhow::Result<()> {
    // Keep freed memory mapped: mimalloc option 15 (purge_delay) = -1; why: voc-cli/src/main.rs.
    // SAFETY: sets one mimalloc option (MIMALLOC_PURGE_DELAY still wins) before any thread exists.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    let args = Args::parse();
    let device = args.device.open()?;
    let classifier = CheckpointClassifier::load(&args.classifier, &device)?;
    let class = classifier
        .class_names
        .iter()
        .position(|n| *n == args.class)
        .with_context(|| format!("'{}' is not one of the classifier's classes", args.class))?;
    let index = voc_data::CompetitionDir::open(&args.data)?.split(&args.split)?;
    let Some(labels) = &index.labels else {
        bail!(
            "split '{}' has no labels: choose a labelled split",
            index.name
        );
    };
    let decision = classifier.decision();
    let model = |u: &Tensor| -> voc_classify::Result<Tensor> {
        let x = voc_tensor::preprocess::normalize(&(u * 255.0)?, &classifier.normalization)?;
        classifier.model.logits(&x, false, false)
    };
    let probabilities = |u: &Tensor| -> anyhow::Result<Vec<f32>> {
        Ok(candle_nn::ops::sigmoid(&model(u)?)?
            .flatten_all()?
            .to_vec1()?)
    };
    // The first image labelled `class` that the classifier also labels `class`.
    let mut found = None;
    for (i, id) in index.ids.iter().enumerate() {
        if labels[i].to_flags()[class] == 0 {
            continue;
        }
        let fitted = classifier.fitted(&index.read_rgb_image(id)?)?;
        let u = (rgb_to_tensor(&fitted, &device)? / 255.0)?;
        let p = probabilities(&u)?;
        if decision.decide(&p)[class] == 1 {
            found = Some((id.clone(), labels[i].to_flags().to_vec(), fitted, u));
            break;
        }
    }
    let Some((id, truth, fitted, clean)) = found else {
        bail!(
            "no image of split '{}' is labelled {} and classified as one",
            index.name,
            args.class
        );
    };
    let names = &classifier.class_names;
    let show = |flags: &[u8]| -> String {
        let shown: Vec<&str> = (0..flags.len())
            .filter(|&k| flags[k] == 1)
            .map(|k| names[k].as_str())
            .collect();
        if shown.is_empty() {
            "(none)".into()
        } else {
            shown.join(", ")
        }
    };
    println!("image {id}: true labels {}", show(&truth));
    println!(
        "{:>8} {:>9} {:>8} {:>8}  predicted labels",
        "eps/255", "P(cat)", "PSNR", "SSIM"
    );
    // The loss of the cat label alone (binary cross-entropy of its logit against "present"): the
    // notebook's question is whether the cat is still seen, and the other labels' losses would
    // otherwise dominate the gradient.
    let present = Tensor::ones((1, 1), candle_core::DType::F32, &device)?;
    let cat_loss = |logits: &Tensor| -> voc_attack::Result<Tensor> {
        Ok(voc_tensor::ops::bce_with_logits(
            &logits.narrow(1, class, 1)?,
            &present,
            None,
        )?)
    };
    for &eps in &args.eps {
        let adv = if eps == 0.0 {
            clean.clone()
        } else {
            attack(&model, &cat_loss, &clean, &AttackConfig::fgsm(eps / 255.0))?.adversarial
        };
        // Scored as a PNG would hold it: rounded to 8 bits.
        let bytes: Vec<u8> = (adv.squeeze(0)? * 255.0)?
            .round()?
            .clamp(0.0, 255.0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_dtype(candle_core::DType::U8)?
            .to_vec1()?;
        let image = RgbImage::new(fitted.height(), fitted.width(), bytes)?;
        let p = probabilities(&(rgb_to_tensor(&image, &device)? / 255.0)?)?;
        let psnr = quality::psnr(&fitted, &image)?;
        println!(
            "{eps:>8} {:>9.4} {:>8} {:>8.4}  {}",
            p[class],
            if psnr.is_finite() {
                format!("{psnr:.1}")
            } else {
                "-".into()
            },
            quality::ssim(&fitted, &image)?,
            show(&decision.decide(&p))
        );
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir)?;
            image.write_png(&dir.join(format!("{id}_eps{eps}.png")))?;
        }
    }
    Ok(())
}
