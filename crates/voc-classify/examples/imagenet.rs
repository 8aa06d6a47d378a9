//! Top-5 ImageNet classes of one photo with a pretrained backbone.
//!
//! `cargo run -p voc-classify --example imagenet -- --image ../shared/data/photos/bird.png [--model efficientnet_lite0] [--json]`
//! Offline: `HF_HOME=../shared/hf HF_HUB_OFFLINE=1`.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use voc_classify::{top_k, ModelPreset};
use voc_tensor::DeviceSpec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Top-5 ImageNet classes of a photo (.png, .jpg or .npy HxWx3 uint8)")]
struct Args {
    /// The photo to classify.
    #[arg(long)]
    image: PathBuf,
    /// mobilenet_v2 (google/mobilenet_v2_1.0_224), efficientnet_lite0 (timm/tf_efficientnet_lite0.in1k),
    /// resnet50 (timm/resnet50.a1_in1k), resnet50v2 (timm/resnetv2_50.a1h_in1k) or vgg16 (timm/vgg16.tv_in1k).
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// Print one JSON line `[{"label": ..., "prob": ...}, ...]` instead of a table.
    #[arg(long)]
    json: bool,
    /// How many classes to print.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    let args = Args::parse();
    let device = args.device.open()?;
    let preset = ModelPreset::by_name(&args.model)?;
    let model = preset
        .load(&device)
        .with_context(|| format!("loading {}", preset.repo_id))?;
    let names = preset.class_names()?;
    let image = voc_data::read_rgb_image(&args.image)?;
    let input = preset.preprocess(&image, &device)?;
    let logits = model.forward_t(&input, false)?;
    let best = top_k(&logits, &names, args.top)?;
    if args.json {
        println!("{}", serde_json::to_string(&best)?);
    } else {
        println!("{} on {}:", preset.repo_id, args.image.display());
        for p in &best {
            println!("{:>7.2}%  {}", 100.0 * p.prob, p.label);
        }
    }
    Ok(())
}
