//! Scores the ways of fitting an image to DeepLabV3 (resize vs pad, output stride 16 vs 8, flip) on a
//! labelled split in the competition layout: the competition's segmentation Dice (per image, over the
//! 20 class channels, background dropped) and pixel accuracy.
//!
//! `cargo run --release -p voc-segment --example size_strategies -- --data ../shared/data/voc-sample`
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use voc_segment::{Segmenter, SegmenterPreset, SizeStrategy};
use voc_tensor::hub::HubCache;
use voc_tensor::DeviceSpec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Compare resize/pad, output stride and flip TTA on a labelled split")]
struct Args {
    /// Competition-layout folder with train/img/*.npy and train/seg/*.npy.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "train")]
    split: String,
    /// Strategies to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pad:513,pad:0,resize:513"
    )]
    sizes: Vec<SizeStrategy>,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

/// The competition's Dice of one image: over the 20 binary class channels, 1 when both are empty.
fn dice(pred: &[u8], truth: &[u8]) -> f64 {
    let is_class = |c: u8| (1..=20).contains(&c);
    let total = pred.iter().chain(truth).filter(|&&c| is_class(c)).count();
    let inter = pred
        .iter()
        .zip(truth)
        .filter(|(&p, &t)| is_class(p) && p == t)
        .count();
    if total == 0 {
        1.0
    } else {
        2.0 * inter as f64 / total as f64
    }
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    let args = Args::parse();
    let device = args.device.open()?;
    let dir = args.data.join(&args.split);
    let mut ids: Vec<PathBuf> = std::fs::read_dir(dir.join("img"))
        .with_context(|| format!("reading {}", dir.join("img").display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    ids.sort();
    let mut samples = Vec::new();
    for img_path in &ids {
        let name = img_path.file_name().context("file name")?;
        let mask: ndarray::Array2<u8> = ndarray_npy::read_npy(dir.join("seg").join(name))
            .with_context(|| format!("mask of {}", img_path.display()))?;
        samples.push((
            voc_data::read_rgb_image(img_path)?,
            mask.iter().copied().collect::<Vec<u8>>(),
        ));
    }
    let preset = SegmenterPreset::DEEPLABV3_MOBILENET_V2;
    let cache = HubCache::from_env();
    println!("{} images of {}", samples.len(), dir.display());
    println!(
        "{:<12} {:>3} {:>5} {:>8} {:>9} {:>8}",
        "size", "os", "flip", "dice", "pixel_acc", "s/image"
    );
    for os in [16, 8] {
        for &size in &args.sizes {
            for flip in [false, true] {
                let mut segmenter = Segmenter::from_preset(
                    &preset,
                    &cache,
                    &preset.weights_source(),
                    os,
                    size,
                    &device,
                )?;
                segmenter.flip_tta = flip;
                let start = std::time::Instant::now();
                let (mut dice_sum, mut correct, mut pixels) = (0.0, 0usize, 0usize);
                for (image, truth) in &samples {
                    let pred = segmenter.mask(image, &device)?.into_vec();
                    dice_sum += dice(&pred, truth);
                    correct += pred.iter().zip(truth).filter(|(p, t)| p == t).count();
                    pixels += truth.len();
                }
                let n = samples.len().max(1) as f64;
                println!(
                    "{:<12} {:>3} {:>5} {:>8.4} {:>9.4} {:>8.2}",
                    size.to_string(),
                    os,
                    flip,
                    dice_sum / n,
                    correct as f64 / pixels.max(1) as f64,
                    start.elapsed().as_secs_f64() / n
                );
            }
        }
    }
    Ok(())
}
