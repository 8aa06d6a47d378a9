//! Writes a backbone's weights made by `shared/README.md`'s seeded generator (the weights of the timm
//! reference files) as a safetensors file, for running the pipelines of a model whose pretrained weights
//! cannot be downloaded: `voc train classify --model resnet50 --weights FILE ...` runs end to end and
//! shows its speed and memory; its accuracy means nothing.
//!
//! `cargo run --release -p voc-classify --example seeded_weights -- --model resnet50 --out resnet50.seeded.safetensors`
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Device;
use clap::Parser;
use voc_classify::weights::expected_tensors;
use voc_classify::{ImageClassifier, ModelPreset};
use voc_tensor::testing::{seeded_tensor, SeededKind};

#[derive(Parser)]
#[command(
    about = "A model's ImageNet classifier with seeded (not pretrained) weights, as safetensors"
)]
struct Args {
    /// mobilenet_v2, efficientnet_lite0, resnet50, resnet50v2 or vgg16.
    #[arg(long)]
    model: String,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let preset = ModelPreset::by_name(&args.model)?;
    let config = preset.classifier_config();
    let names = expected_tensors(&Device::Cpu, |vb| ImageClassifier::new(vb, config))?;
    let tensors = names
        .iter()
        .map(|(name, shape)| {
            Ok((
                name.clone(),
                seeded_tensor(name, shape, SeededKind::of(name, shape))?,
            ))
        })
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let meta =
        voc_tensor::checkpoint::CheckpointMeta::new(format!("{}_seeded", preset.name), Vec::new());
    voc_tensor::checkpoint::save_checkpoint_tensors(&args.out, &tensors, &meta)?;
    println!(
        "wrote {} seeded tensors of {} to {}",
        tensors.len(),
        preset.name,
        args.out.display()
    );
    Ok(())
}
