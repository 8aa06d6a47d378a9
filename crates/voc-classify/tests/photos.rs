//! The full path a user takes (photo file -> preset preprocessing -> pretrained model -> top-1 name)
//! names the expected ImageNet class of every photo in `shared/data/photos`, with both backbones.
use candle_core::Device;
use voc_classify::{top_k, ModelPreset};
use voc_core::testing::{hub_model, shared_with};
use voc_tensor::hub::HubCache;
use voc_tensor::testing::{load_golden, max_abs_diff};

const EXPECTED: [(&str, &str); 7] = [
    ("bird", "chickadee"),
    ("chelsea", "Egyptian cat"),
    ("cat", "Egyptian cat"),
    ("coffee", "espresso"),
    ("dragonfly", "dragonfly"),
    ("hot_dog", "hotdog"),
    ("grace_hopper", "military uniform"),
];

fn check_photos(preset: ModelPreset) -> anyhow::Result<()> {
    let Some(shared) = shared_with(
        &format!("{}_names_the_photos", preset.name),
        &[hub_model(preset.repo_id), "data/photos".into()],
    ) else {
        return Ok(());
    };
    let cache = HubCache::new(shared.join("hf").join("hub"), true);
    let device = Device::Cpu;
    let model = preset.load_in(&cache, &preset.weights_source(), &device)?;
    let names = preset.class_names_in(&cache)?;
    let mut wrong = Vec::new();
    for (photo, expected) in EXPECTED {
        let image =
            voc_data::read_rgb_image(&shared.join("data/photos").join(format!("{photo}.png")))?;
        let input = preset.preprocess(&image, &device)?;
        let best = top_k(&model.forward_t(&input, false)?, &names, 1)?;
        let first_name = best[0]
            .label
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        eprintln!(
            "{}: {photo} -> {} ({:.3})",
            preset.name, best[0].label, best[0].prob
        );
        if first_name != expected {
            wrong.push(format!(
                "{photo}: got '{}', expected '{expected}'",
                best[0].label
            ));
        }
    }
    assert!(wrong.is_empty(), "{}: {wrong:?}", preset.name);
    Ok(())
}

#[test]
fn mobilenet_v2_names_the_photos() -> anyhow::Result<()> {
    check_photos(ModelPreset::MOBILENET_V2)
}

#[test]
fn efficientnet_lite0_names_the_photos() -> anyhow::Result<()> {
    check_photos(ModelPreset::EFFICIENTNET_LITE0)
}

/// The preset's resize is the reference's (PIL bilinear with anti-aliasing), up to rounding.
#[test]
fn preprocessing_reproduces_the_reference_input() -> anyhow::Result<()> {
    let Some(shared) = shared_with(
        "preprocessing_reproduces_the_reference_input",
        &["reference/mobilenet_v2_1.0_224.safetensors", "data/photos"],
    ) else {
        return Ok(());
    };
    let golden = load_golden(&shared.join("reference/mobilenet_v2_1.0_224.safetensors"))?;
    let preset = ModelPreset::MOBILENET_V2;
    for photo in ["bird", "coffee"] {
        let image =
            voc_data::read_rgb_image(&shared.join("data/photos").join(format!("{photo}.png")))?;
        let input = preset.preprocess(&image, &Device::Cpu)?;
        let diff = max_abs_diff(&input, &golden[&format!("{photo}.input")])?;
        eprintln!(
            "{photo}: max |preprocessed - reference input| = {diff:.4} (one grey level = {:.4})",
            1.0 / 127.5
        );
        assert!(
            diff <= 1.5 / 127.5,
            "{photo}: preprocessing differs from the reference by {diff}"
        );
    }
    Ok(())
}
