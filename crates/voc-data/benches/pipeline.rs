//! Decode + augment + batch throughput on 749 synthetic 375x500 images, against torchvision.
//!
//! Writes a competition-layout folder of 749 synthetic images and masks (`.npy`, like the real data),
//! then for 224x224 classification augmentation and 512x512 segmentation augmentation:
//! 1. criterion: one image through the augmentation (single thread);
//! 2. epochs through [`BatchLoader`] (lazy: every image read from disk each epoch, 2 workers, batch 32),
//!    timed over 3 epochs after a warm-up epoch;
//! 3. the same pipeline in torchvision.transforms.v2 (`benches/torchvision_pipeline.py`, DataLoader with 2
//!    workers, torch.set_num_threads(2)) on the same files, when `$VOC_TORCH_PYTHON` (a Python with
//!    torch and torchvision) is set; prints both images/s and the ratio.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use criterion::{black_box, Criterion};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voc_data::{
    npy, AugmentConfig, BatchConfig, BatchLoader, CompetitionDir, LoadMode, CLASS_NAMES,
};

const IMAGES: usize = 749;
const BATCH: usize = 32;
const EPOCHS: usize = 3;

/// Smooth gradients, a few coloured rectangles (also in the mask) and noise: JPEG-like content.
fn synthetic_pair(rng: &mut ChaCha8Rng) -> (Array3<u8>, Array2<u8>) {
    let (h, w) = (375, 500);
    let mut mask = Array2::<u8>::zeros((h, w));
    let mut image = Array3::from_shape_fn((h, w, 3), |(y, x, c)| {
        ((x * (c + 1) + y * (3 - c)) / 4 % 256) as u8
    });
    for _ in 0..rng.gen_range(1..4) {
        let class = rng.gen_range(1..=20u8);
        let (y0, x0) = (rng.gen_range(0..h - 50), rng.gen_range(0..w - 50));
        let (y1, x1) = (rng.gen_range(y0 + 20..h), rng.gen_range(x0 + 20..w));
        let colour = [rng.gen::<u8>(), rng.gen::<u8>(), rng.gen::<u8>()];
        for y in y0..y1 {
            for x in x0..x1 {
                mask[[y, x]] = class;
                for c in 0..3 {
                    image[[y, x, c]] = colour[c];
                }
            }
        }
    }
    image.mapv_inplace(|v| v.saturating_add(rng.gen_range(0..16)));
    (image, mask)
}

fn write_dataset(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("train");
    std::fs::create_dir_all(dir.join("img"))?;
    std::fs::create_dir_all(dir.join("seg"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut csv = format!("Id,{}\n", CLASS_NAMES.join(","));
    for i in 0..IMAGES {
        let (image, mask) = synthetic_pair(&mut rng);
        npy::write_u8(
            &dir.join(format!("img/train_{i}.npy")),
            &[375, 500, 3],
            image.as_slice().unwrap(),
        )?;
        npy::write_u8(
            &dir.join(format!("seg/train_{i}.npy")),
            &[375, 500],
            mask.as_slice().unwrap(),
        )?;
        let labels = voc_data::competition::mask_labels(&mask);
        let row: Vec<String> = labels.iter().map(|v| v.to_string()).collect();
        csv += &format!("{i},{}\n", row.join(","));
    }
    std::fs::write(dir.join("train_set.csv"), csv)?;
    Ok(())
}

fn configs() -> [(&'static str, usize, AugmentConfig); 2] {
    [
        ("classification", 224, AugmentConfig::classification(224)),
        ("segmentation", 512, AugmentConfig::segmentation(512)),
    ]
}

fn rust_images_per_s(root: &Path, augment: AugmentConfig) -> anyhow::Result<f64> {
    let index = CompetitionDir::open(root)?.split("train")?;
    let dataset = index.load(LoadMode::Lazy)?;
    let config = BatchConfig {
        batch_size: BATCH,
        workers: 2,
        prefetch: 2,
        augment,
        normalize: voc_core::Normalization::IMAGENET,
        seed: 0,
        ..BatchConfig::default()
    };
    let loader = BatchLoader::new(dataset, config, Device::Cpu)?;
    let run_epoch = |epoch: usize| -> anyhow::Result<usize> {
        let mut n = 0;
        for batch in loader.epoch(epoch) {
            let batch = batch?;
            n += black_box(batch).len();
        }
        Ok(n)
    };
    run_epoch(0)?;
    let start = Instant::now();
    let mut n = 0;
    for epoch in 1..=EPOCHS {
        n += run_epoch(epoch)?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn torch_images_per_s(python: &Path, root: &Path, task: &str, size: usize) -> anyhow::Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torchvision_pipeline.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args([
            "--data",
            &root.display().to_string(),
            "--task",
            task,
            "--size",
            &size.to_string(),
        ])
        .args([
            "--epochs",
            &EPOCHS.to_string(),
            "--batch",
            &BATCH.to_string(),
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "{}: {}\n{}",
            script.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("images_per_s=")
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no images_per_s= line in the script's output: {stdout}"))
}

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root: PathBuf = tmp.path().to_path_buf();
    eprintln!(
        "writing {IMAGES} synthetic 375x500 images and masks to {}",
        root.display()
    );
    write_dataset(&root)?;

    let index = CompetitionDir::open(&root)?.split("train")?;
    let sample = index.read_sample(0)?;
    let mut criterion = Criterion::default().sample_size(30).configure_from_args();
    for (task, size, config) in configs() {
        let mut seed = 0u64;
        criterion.bench_function(&format!("augment_one/{task}_{size}"), |b| {
            b.iter(|| {
                seed += 1;
                black_box(config.augment(
                    sample.image.view(),
                    sample.mask.as_ref().map(|m| m.view()),
                    seed,
                ))
            })
        });
        criterion.bench_function(&format!("read_npy_pair/{task}_{size}"), |b| {
            b.iter(|| black_box(index.read_sample(0).unwrap()))
        });
    }
    criterion.final_summary();

    let python = std::env::var_os("VOC_TORCH_PYTHON").map(PathBuf::from);
    println!("\ndecode + augment + batch, {IMAGES} images of 375x500, batch {BATCH}, 2 workers, {EPOCHS} epochs after a warm-up epoch");
    println!(
        "{:<26} {:>14} {:>16} {:>7}",
        "pipeline", "voc-data img/s", "torchvision img/s", "ratio"
    );
    for (task, size, config) in configs() {
        let ours = rust_images_per_s(&root, config)?;
        let theirs = match python.as_deref().filter(|p| p.is_file()) {
            Some(python) => Some(torch_images_per_s(python, &root, task, size)?),
            None => None,
        };
        let name = format!("{task} {size}x{size}");
        match theirs {
            Some(t) => println!("{name:<26} {ours:>14.1} {t:>16.1} {:>6.2}x", ours / t),
            None => println!(
                "{name:<26} {ours:>14.1} {:>16} (set VOC_TORCH_PYTHON to a Python with torchvision)",
                "-"
            ),
        }
    }
    Ok(())
}
