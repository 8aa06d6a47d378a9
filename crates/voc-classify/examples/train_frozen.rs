//! A frozen-feature MobileNetV2 run through the library (what `voc train classify --mode frozen` does):
//! backbone features computed once and cached, a new 20-label head trained on them.
//!
//! `cargo run --release -p voc-classify --example train_frozen [-- DATA [OUT]]`
//! DATA: a competition-layout folder (default: the bundled sample `assets/voc-sample`); OUT: the run
//! folder, which must not hold a run yet (default: a new folder in the temp dir). Weights come from the
//! hub cache; offline: `HF_HOME=../shared/hf HF_HUB_OFFLINE=1`.
use std::path::PathBuf;

use voc_classify::train::{
    train_classifier, TrainConfig, TrainMode, TrainObserver, TrainOptions, Validation,
};
use voc_tensor::hub::HubCache;
use voc_tensor::DeviceSpec;

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
    let temp = std::env::temp_dir().join(format!("voc-train-frozen-{}", std::process::id()));
    let out = args.next().unwrap_or(temp);
    // Validation: a stratified 20% of the training images. The sample has only 2 (its test split is
    // unlabelled, so it cannot validate): there one image trains and one validates, enough to run
    // every step but not to mean anything.
    let n = voc_data::CompetitionDir::open(&data)?.split("train")?.len();
    let config = TrainConfig {
        epochs: 10, // head epochs on cached features: milliseconds each
        validation: Validation::Fraction(if n < 10 { 0.5 } else { 0.2 }),
        ..TrainConfig::defaults("mobilenet_v2", TrainMode::Frozen, 224)
    };
    let opts = TrainOptions {
        data,
        out,
        device: DeviceSpec::Auto.open()?,
        workers: 2,
        resume: false,
        hub: HubCache::from_env(),
    };
    let s = train_classifier(&config, &opts, &mut Print)?;
    println!(
        "best: epoch {} of {}, val mAP {:.3}, Dice {:.3} ({} training / {} validation images)",
        s.best_epoch, s.epochs, s.best_map, s.best_dice, s.images.0, s.images.1
    );
    println!("checkpoint: {}", s.best.display());
    Ok(())
}
