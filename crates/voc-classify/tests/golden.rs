//! The pretrained classifiers against logits computed outside the project
//! (`shared/reference/{mobilenet_v2_1.0_224,tf_efficientnet_lite0.in1k}.safetensors`).
use std::path::Path;

use candle_core::Device;
use voc_classify::ModelPreset;
use voc_core::testing::{hub_model, shared_with};
use voc_tensor::hub::HubCache;
use voc_tensor::testing::{load_golden, rel_err};

fn check_golden(shared: &Path, preset: ModelPreset, golden_file: &str) -> anyhow::Result<()> {
    let cache = HubCache::new(shared.join("hf").join("hub"), true);
    let model = preset.load_in(&cache, &preset.weights_source(), &Device::Cpu)?;
    let golden = load_golden(&shared.join("reference").join(golden_file))?;
    let mut photos: Vec<&str> = golden
        .keys()
        .filter_map(|k| k.strip_suffix(".input"))
        .collect();
    photos.sort();
    assert!(
        photos.len() >= 6,
        "expected the photos in {golden_file}, found {photos:?}"
    );
    let mut worst = 0f32;
    for photo in &photos {
        let logits = model.forward_t(&golden[&format!("{photo}.input")], false)?;
        let err = rel_err(&logits, &golden[&format!("{photo}.logits")])?;
        eprintln!(
            "{} {photo}: max |diff| / max |logit| = {err:.2e}",
            preset.name
        );
        worst = worst.max(err);
    }
    assert!(
        worst <= 1e-3,
        "{}: worst relative error {worst:.2e} > 1e-3",
        preset.name
    );
    Ok(())
}

#[test]
fn mobilenet_v2_matches_reference_logits() -> anyhow::Result<()> {
    let Some(shared) = shared_with(
        "mobilenet_v2_matches_reference_logits",
        &[
            hub_model(ModelPreset::MOBILENET_V2.repo_id),
            "reference/mobilenet_v2_1.0_224.safetensors".into(),
        ],
    ) else {
        return Ok(());
    };
    check_golden(
        &shared,
        ModelPreset::MOBILENET_V2,
        "mobilenet_v2_1.0_224.safetensors",
    )
}

#[test]
fn efficientnet_lite0_matches_reference_logits() -> anyhow::Result<()> {
    let Some(shared) = shared_with(
        "efficientnet_lite0_matches_reference_logits",
        &[
            hub_model(ModelPreset::EFFICIENTNET_LITE0.repo_id),
            "reference/tf_efficientnet_lite0.in1k.safetensors".into(),
        ],
    ) else {
        return Ok(());
    };
    check_golden(
        &shared,
        ModelPreset::EFFICIENTNET_LITE0,
        "tf_efficientnet_lite0.in1k.safetensors",
    )
}
