//! A short segmentation training run through the library (what `voc train segment` does): DeepLabV3+
//! from random weights on small crops, validated every epoch, into a run folder.
//!
//! `cargo run --release -p voc-segment --example train_small [-- DATA [OUT]]`
//! DATA: a competition-layout folder with masks (default: the bundled sample `assets/voc-sample`, whose
//! two training images are split one for training, one for validation: enough to run every step, not
//! to mean anything); OUT: the run folder, which must not hold a run yet (default: a new folder in the
//! temp dir). With real data and `--backbone voc`-like starts, use `SegTrainConfig::defaults` with
//! `SegBackbone::Voc` and the hub cache (`HF_HOME=../shared/hf HF_HUB_OFFLINE=1`).
use std::path::PathBuf;

use voc_segment::train::{
    train_segmenter, SegBackbone, SegBatchNorm, SegModel, SegTrainConfig, SegTrainOptions,
    SegValidation, TrainObserver,
};
use voc_tensor::hub::HubCache;

/// Prints a line per epoch.
struct Print;
impl TrainObserver for Print {
    fn epoch(&mut self, summary: &str) {
        println!("{summary}");
    }
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/voc-sample");
    let data = args.next().unwrap_or(sample);
    let temp = std::env::temp_dir().join(format!("voc-train-segment-{}", std::process::id()));
    let out = args.next().unwrap_or(temp);
    let config = SegTrainConfig {
        epochs: 3,
        batch: 1,
        // One crop per batch: batch statistics would be degenerate, so every batch norm is frozen.
        bn: SegBatchNorm::Frozen,
        crop: 129,
        val_size: "resize:129".into(),
        validation: SegValidation::Fraction(0.5),
        ..SegTrainConfig::defaults(SegModel::Deeplabv3plus, SegBackbone::Random)
    };
    let opts = SegTrainOptions {
        data,
        out: out.clone(),
        device: candle_core::Device::Cpu,
        workers: 2,
        resume: false,
        hub: HubCache::from_env(),
    };
    let summary = train_segmenter(&config, &opts, &mut Print)?;
    println!(
        "{} epochs; best epoch {}; checkpoints, metrics.jsonl and curves.png in {}",
        summary.epochs,
        summary.best_epoch,
        out.display()
    );
    Ok(())
}
