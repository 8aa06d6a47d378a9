//! FGSM or PGD on a pretrained ImageNet classifier: the top class before and after, the budget spent,
//! and the adversarial image as a PNG (re-classified after rounding to 8 bits, as a file holds it).
//!
//! `cargo run -p voc-attack --example attack_imagenet -- --image ../shared/data/photos/bird.png --steps 10 --eps 4`
//! `... --target 935 --eps 8 --steps 20` (towards "hotdog"); offline: `HF_HOME=../shared/hf HF_HUB_OFFLINE=1`.
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{Tensor, D};
use clap::{Parser, ValueEnum};
use voc_attack::{attack, AttackConfig, Norm, Objective};
use voc_classify::{resize_rgb, rgb_to_tensor, top_k, ModelPreset};
use voc_core::RgbImage;
use voc_tensor::DeviceSpec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, ValueEnum)]
enum NormArg {
    Linf,
    L2,
}

#[derive(Parser)]
#[command(about = "Adversarial attack (FGSM / PGD) on a pretrained ImageNet classifier")]
struct Args {
    /// The photo to attack (.png, .jpg or .npy HxWx3 uint8); resized to the model's input size.
    #[arg(long)]
    image: PathBuf,
    /// mobilenet_v2 or efficientnet_lite0.
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// Budget in 8-bit pixel levels (L-inf: per value; L2: of the whole image, in levels).
    #[arg(long, default_value_t = 2.0)]
    eps: f64,
    /// Step size in pixel levels (default: eps for one step, else eps / 4).
    #[arg(long)]
    step: Option<f64>,
    /// Gradient steps (1 with step = eps is FGSM).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    #[arg(long, value_enum, default_value = "linf")]
    norm: NormArg,
    /// Push towards this class index instead of away from the predicted one.
    #[arg(long)]
    target: Option<u32>,
    /// Start from a random point of the budget ball drawn with this seed.
    #[arg(long)]
    random_start: Option<u64>,
    /// Write the adversarial image (at the model's input size) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
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
    let preset = ModelPreset::by_name(&args.model)?;
    let net = preset
        .load(&device)
        .with_context(|| format!("loading {}", preset.repo_id))?;
    let names = preset.class_names()?;
    let image = resize_rgb(
        &voc_data::read_rgb_image(&args.image)?,
        preset.input_size,
        preset.input_size,
    )?;
    // The attack runs on pixels in 0..1; the model closure applies the preset's normalisation.
    let pixels = (rgb_to_tensor(&image, &device)? / 255.0)?;
    let model = |u: &Tensor| -> voc_classify::Result<Tensor> {
        let x = voc_tensor::preprocess::normalize(&(u * 255.0)?, &preset.normalization)?;
        net.forward_t(&x, false)
    };
    let clean_logits = model(&pixels)?;
    let predicted = clean_logits.argmax(D::Minus1)?.to_vec1::<u32>()?[0];
    let norm = match args.norm {
        NormArg::Linf => Norm::Linf,
        NormArg::L2 => Norm::L2,
    };
    // Budgets are given in 8-bit levels; the attack runs on pixels in 0..1.
    let eps = args.eps / 255.0;
    let step =
        args.step
            .map(|s| s / 255.0)
            .unwrap_or(if args.steps == 1 { eps } else { eps / 4.0 });
    let mut config = AttackConfig::pgd(norm, eps, step, args.steps);
    if let Some(seed) = args.random_start {
        config = config.with_random_start(seed);
    }
    let class = match args.target {
        Some(t) => {
            config = config.targeted();
            t
        }
        None => predicted,
    };
    let outcome = attack(
        &model,
        &Objective::CrossEntropy {
            classes: vec![class],
        },
        &pixels,
        &config,
    )?;
    let adv_logits = model(&outcome.adversarial)?;
    // What a PNG of the adversarial image holds: values rounded to 8 bits.
    let bytes: Vec<u8> = (&outcome.adversarial * 255.0)?
        .round()?
        .clamp(0.0, 255.0)?
        .squeeze(0)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_dtype(candle_core::DType::U8)?
        .to_vec1::<u8>()?;
    let saved = RgbImage::new(image.height(), image.width(), bytes)?;
    let saved_logits = model(&(rgb_to_tensor(&saved, &device)? / 255.0)?)?;
    if let Some(out) = &args.out {
        saved.write_png(out)?;
    }
    let clean = top_k(&clean_logits, &names, 1)?.remove(0);
    let adv = top_k(&adv_logits, &names, 1)?.remove(0);
    let png = top_k(&saved_logits, &names, 1)?.remove(0);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "clean": clean, "adversarial": adv, "adversarial_8bit": png,
                "linf_levels": outcome.linf[0] * 255.0, "l2_levels": outcome.l2[0] * 255.0,
                "losses": outcome.losses,
            })
        );
    } else {
        println!("{} on {}:", preset.repo_id, args.image.display());
        println!(
            "  clean:        {} ({:.1}%)",
            clean.label,
            100.0 * clean.prob
        );
        println!("  adversarial:  {} ({:.1}%)", adv.label, 100.0 * adv.prob);
        println!("  as 8-bit PNG: {} ({:.1}%)", png.label, 100.0 * png.prob);
        println!(
            "  perturbation: L-inf {:.2} levels, L2 {:.2} levels; loss {:.3} -> {:.3}",
            outcome.linf[0] * 255.0,
            outcome.l2[0] * 255.0,
            outcome.losses[0],
            outcome.losses[outcome.losses.len() - 1]
        );
    }
    if let Some(out) = &args.out {
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
