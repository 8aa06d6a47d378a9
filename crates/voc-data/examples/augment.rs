//! Writes a few augmented image/mask pairs side by side as PNG.
//!
//! ```text
//! cargo run -p voc-data --example augment -- --data ../shared/data/voc-sample --out /tmp/aug \
//!     [--split train] [--images 3] [--per-image 4] [--seed 0] [--task segmentation|classification] [--size 320]
//! ```
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::{bail, Context};
use ndarray::{concatenate, Array3, Axis};
use voc_data::batch::sample_seed;
use voc_data::preview::{colorize_mask, to_rgb_image, write_png};
use voc_data::{AugmentConfig, CompetitionDir};

fn main() -> anyhow::Result<()> {
    let mut data = None;
    let mut out = None;
    let (mut split, mut task) = ("train".to_string(), "segmentation".to_string());
    let (mut images, mut per_image, mut seed, mut size) = (3usize, 4usize, 0u64, 320usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--split" => split = value()?,
            "--task" => task = value()?,
            "--images" => images = value()?.parse()?,
            "--per-image" => per_image = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--size" => size = value()?.parse()?,
            _ => bail!("unknown argument {flag}; see the usage at the top of examples/augment.rs"),
        }
    }
    let (Some(data), Some(out)) = (data, out) else {
        bail!("usage: augment --data DIR --out DIR [options]")
    };
    let config = match task.as_str() {
        "segmentation" => AugmentConfig {
            blur_prob: 0.3,
            ..AugmentConfig::segmentation(size)
        },
        "classification" => AugmentConfig::classification(size),
        _ => bail!("--task: expected segmentation or classification, got {task}"),
    };
    let index = CompetitionDir::open(&data)?.split(&split)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = 0;
    for i in 0..images.min(index.len()) {
        let sample = index.read_sample(i)?;
        for k in 0..per_image {
            let (image, mask) = config.augment(
                sample.image.view(),
                sample.mask.as_ref().map(|m| m.view()),
                sample_seed(seed, k, i),
            );
            let right = match mask {
                Some(m) => colorize_mask(m.view()),
                None => Array3::from_elem(image.raw_dim(), 255u8),
            };
            let pair = concatenate(Axis(1), &[image.view(), right.view()])?;
            let path = out.join(format!("{split}_{}_{k}.png", sample.id));
            write_png(&path, &to_rgb_image(pair.view()))?;
            written += 1;
        }
    }
    println!(
        "wrote {written} augmented image|mask pairs ({task}, {size}px, seed {seed}) to {}",
        out.display()
    );
    Ok(())
}
