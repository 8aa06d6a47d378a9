//! ResNet-50, ResNetV2-50 and VGG16 against timm itself: `shared/reference/timm_*.safetensors` hold
//! logits and pooled features that timm computed on seeded weights, which `shared/README.md` defines bit
//! for bit and `voc_tensor::testing::seeded_weights` rebuilds here. The files use timm's names; the
//! classifier reads them through the same renaming as a hub file (`adapt_hub_tensors`).
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use voc_classify::{FromWeights, ImageClassifier, ModelPreset};
use voc_core::testing::shared_file;
use voc_tensor::testing::{golden_metadata, load_golden, rel_err, seeded_weights};

/// The file's tensors and its seeded weights under timm's names.
fn reference(path: &Path) -> anyhow::Result<(HashMap<String, Tensor>, HashMap<String, Tensor>)> {
    let golden = load_golden(path)?;
    let meta = golden_metadata(path)?;
    let listing = meta
        .get("weights")
        .ok_or_else(|| anyhow::anyhow!("{}: no `weights` metadata", path.display()))?;
    Ok((golden, seeded_weights(listing)?))
}

fn check(test: &str, preset: ModelPreset, file: &str) -> anyhow::Result<()> {
    let Some(path) = shared_file(test, format!("reference/{file}")) else {
        return Ok(());
    };
    let (golden, weights) = reference(&path)?;
    let config = preset.classifier_config();
    let tensors = ImageClassifier::adapt_tensors(&config, weights)?;
    let model = ImageClassifier::from_tensors(tensors, file, config, &Device::Cpu)?;
    let x = &golden["x"];
    assert_eq!(x.dims(), [2, 3, 224, 224]);
    let features = model.pooled_t(x, false)?;
    let logits = model.head().forward_t(&features, false)?;
    let feature_err = rel_err(&features, &golden["features"])?;
    let logit_err = rel_err(&logits, &golden["logits"])?;
    eprintln!(
        "{}: features {feature_err:.2e}, logits {logit_err:.2e} (of the largest magnitude)",
        preset.name
    );
    assert!(
        feature_err <= 1e-4,
        "{}: features {feature_err:.2e} > 1e-4",
        preset.name
    );
    assert!(
        logit_err <= 1e-4,
        "{}: logits {logit_err:.2e} > 1e-4",
        preset.name
    );
    Ok(())
}

#[test]
fn resnet50_matches_timm() -> anyhow::Result<()> {
    check(
        "resnet50_matches_timm",
        ModelPreset::RESNET50,
        "timm_resnet50.safetensors",
    )
}

#[test]
fn resnet50v2_matches_timm() -> anyhow::Result<()> {
    check(
        "resnet50v2_matches_timm",
        ModelPreset::RESNET50V2,
        "timm_resnetv2_50.safetensors",
    )
}

#[test]
fn vgg16_matches_timm() -> anyhow::Result<()> {
    check(
        "vgg16_matches_timm",
        ModelPreset::VGG16,
        "timm_vgg16.safetensors",
    )
}

/// candle-transformers' ResNet-50 reads the same names: on the seeded weights both give the same
/// logits (a second, independent implementation of the forward pass).
#[test]
fn resnet50_matches_candle_transformers() -> anyhow::Result<()> {
    let test = "resnet50_matches_candle_transformers";
    let Some(path) = shared_file(test, "reference/timm_resnet50.safetensors") else {
        return Ok(());
    };
    let (golden, weights) = reference(&path)?;
    let x = golden["x"].narrow(0, 0, 1)?;
    let vb =
        candle_nn::VarBuilder::from_tensors(weights.clone(), candle_core::DType::F32, &Device::Cpu);
    let theirs = candle_transformers::models::resnet::resnet50(1000, vb)?;
    let expected = candle_core::Module::forward(&theirs, &x)?;
    let config = ModelPreset::RESNET50.classifier_config();
    let tensors = ImageClassifier::adapt_tensors(&config, weights)?;
    let ours = ImageClassifier::from_tensors(tensors, "seeded", config, &Device::Cpu)?;
    let err = rel_err(&ours.forward_t(&x, false)?, &expected)?;
    eprintln!("resnet50 vs candle-transformers: {err:.2e}");
    assert!(err <= 1e-4, "{err:.2e}");
    Ok(())
}
