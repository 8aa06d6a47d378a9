// What each fuzz target feeds its input to. Shared, as one definition, by the targets (nightly,
// cargo-fuzz) and by `crates/voc-cli/tests/fuzz_replay.rs` (stable), which replays the seeds and every
// committed crasher so that CI guards the fixes without nightly. Each function may return errors; it
// must not panic, abort or allocate without bound.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// A file named `name` in this process's scratch folder, holding `data` (for readers that take a path).
pub fn as_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voc-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("scratch file");
    path
}

/// `.npy` images and masks: headers, every dtype, orders, truncation, sizes that overflow.
pub fn npy(data: &[u8]) {
    let path = Path::new("fuzz.npy");
    let _ = voc_data::npy::decode_image(data, path);
    let _ = voc_data::npy::decode_mask(data, path);
}

/// The competition's label CSV (`train_set.csv`, `test_set.csv`).
pub fn label_csv(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = voc_data::competition::parse_label_csv(text, Path::new("fuzz.csv"));
    }
}

/// Submission CSVs and the RLE of their rows: parsing, label and mask decoding.
pub fn submission(data: &[u8]) {
    let parsed = voc_submit::Submission::parse(data);
    for row in parsed.submission.rows.iter().take(64) {
        let _ = voc_submit::rle::decode_labels(&row.rle);
        let _ = voc_submit::rle::decode_mask(&row.rle, 17, 23);
        let _ = voc_submit::rle::parse_runs(&row.rle, 1 << 20);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = voc_submit::rle::decode_bits(text, 4096);
        let _ = voc_submit::rle::parse_runs(text, u64::MAX);
    }
}

/// VOCdevkit palette PNG masks, mask PNGs of a run folder, and JPEG/PNG photos.
pub fn image(data: &[u8]) {
    let png = as_file("mask.png", data);
    let _ = voc_data::vocdevkit::read_index_png(&png);
    let _ = voc_data::vocdevkit::decode_rgb(&png);
    let _ = voc_data::read_rgb_image(&png);
    let _ = voc_core::Mask::read_png(&png);
    let jpg = as_file("photo.jpg", data);
    let _ = voc_data::vocdevkit::decode_rgb(&jpg);
    let _ = voc_data::read_rgb_image(&jpg);
}

/// Checkpoints (safetensors and their metadata) and weights files (safetensors, PyTorch zip pickles).
pub fn weights(data: &[u8]) {
    let path = as_file("weights.safetensors", data);
    let _ = voc_tensor::checkpoint::read_checkpoint_meta(&path);
    let _ = voc_tensor::hub::load_tensors(&path, &candle_core::Device::Cpu);
}

/// A hub `config.json`: class names from transformers' `id2label` or timm's `label_names`.
pub fn hub_config(data: &[u8]) {
    let path = as_file("config.json", data);
    let _ = voc_classify::preset::class_names_from_config(&path);
}

/// A run folder's `metrics.jsonl` (classifier and segmenter records, torn last lines) and `config.json`.
pub fn run_folder(data: &[u8]) {
    let path = as_file("metrics.jsonl", data);
    let _ = voc_classify::train::read_records(&path);
    let _ = voc_segment::train::read_seg_records(&path);
    let _ =
        serde_json::from_slice::<voc_tensor::run::SavedRun<voc_classify::train::TrainConfig>>(data);
    let _ = serde_json::from_slice::<voc_tensor::run::SavedRun<voc_segment::train::SegTrainConfig>>(
        data,
    );
}

/// A target's reader calls.
pub type Reader = fn(&[u8]);

/// Every target by name.
pub const TARGETS: [(&str, Reader); 7] = [
    ("npy", npy),
    ("label_csv", label_csv),
    ("submission", submission),
    ("image", image),
    ("weights", weights),
    ("hub_config", hub_config),
    ("run_folder", run_folder),
];
