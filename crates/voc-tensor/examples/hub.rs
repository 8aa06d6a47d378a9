//! Resolves a model's weights through the Hugging Face cache (or a `--weights FILE`), loads them and
//! checks them against what a 20-class PASCAL VOC classifier on that backbone expects.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run -p voc-tensor --example hub
//! cargo run -p voc-tensor --example hub -- google/deeplabv3_mobilenet_v2_1.0_513
//! cargo run -p voc-tensor --example hub -- --weights path/to/model.safetensors
//! ```
use std::path::PathBuf;

use voc_tensor::hub::{self, HubCache, WeightsSource};
use voc_tensor::{Device, VocError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> voc_tensor::Result<()> {
    let mut repo_id = "google/mobilenet_v2_1.0_224".to_string();
    let mut weights: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--weights" => {
                let file = args
                    .next()
                    .ok_or_else(|| VocError::BadArgument("--weights needs a FILE".into()))?;
                weights = Some(file.into());
            }
            "-h" | "--help" => {
                println!("usage: hub [REPO_ID] [--weights FILE]   (default repo google/mobilenet_v2_1.0_224)");
                return Ok(());
            }
            _ => repo_id = arg,
        }
    }

    let cache = HubCache::from_env();
    println!(
        "hub cache: {} (from {}), offline: {}",
        cache.dir.display(),
        cache.dir_origin,
        cache.offline
    );
    let source = WeightsSource::from_args(weights.as_deref(), &repo_id, None);
    let path = hub::resolve_weights_in(&cache, &source)?;
    let tensors = hub::load_tensors(&path, &Device::Cpu)?;
    let parameters: usize = tensors.values().map(|t| t.elem_count()).sum();
    println!(
        "{source}: {} tensors, {parameters} values, from {}",
        tensors.len(),
        path.display()
    );
    if let WeightsSource::Hub { .. } = source {
        let config = hub::read_config_in(&cache, &repo_id, None)?;
        println!(
            "config.json: model_type {}, architectures {}",
            config["model_type"], config["architectures"]
        );
    }

    // A VOC classifier keeps the backbone and swaps the classifier for 20 outputs: the report names
    // the head as a shape mismatch, which is what fine-tuning code replaces rather than loads.
    let mut expected: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.dims().to_vec()))
        .collect();
    expected.sort();
    for (name, shape) in expected.iter_mut() {
        if name.starts_with("classifier") && !shape.is_empty() {
            shape[0] = 20;
        }
    }
    let report = hub::check_names(&expected, &tensors);
    println!("against a 20-class head: {report}");
    Ok(())
}
