//! Wrong weights files, unknown hub ids and unreadable images fail with errors that say what is wrong.
use candle_core::Device;
use candle_nn::VarMap;
use voc_classify::{ClassifyError, FromWeights, ImageClassifier, ModelPreset};
use voc_core::testing::{hub_model, shared_with};
use voc_tensor::hub::{load_tensors, HubCache, WeightsSource};
use voc_tensor::testing::shared_hub_file;

#[test]
fn efficientnet_weights_are_not_a_mobilenet() {
    let Some(shared) = shared_with(
        "efficientnet_weights_are_not_a_mobilenet",
        &[hub_model("timm/tf_efficientnet_lite0.in1k")],
    ) else {
        return;
    };
    let cache = HubCache::new(shared.join("hf/hub"), true);
    let wrong = shared_hub_file(
        &shared,
        "timm/tf_efficientnet_lite0.in1k",
        "model.safetensors",
    )
    .unwrap();
    let err = ModelPreset::MOBILENET_V2
        .load_in(&cache, &WeightsSource::File(wrong.clone()), &Device::Cpu)
        .unwrap_err();
    assert!(
        matches!(err, ClassifyError::WeightsMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains(&wrong.display().to_string()),
        "names the file: {msg}"
    );
    assert!(
        msg.contains("mobilenet_v2"),
        "names the architecture: {msg}"
    );
    assert!(
        msg.contains("missing")
            && msg.contains("mobilenet_v2.conv_stem.first_conv.convolution.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected") && msg.contains("blocks.0.0.conv_dw.weight"),
        "{msg}"
    );
}

#[test]
fn segmenter_weights_are_not_an_imagenet_classifier() {
    let Some(shared) = shared_with(
        "segmenter_weights_are_not_an_imagenet_classifier",
        &[hub_model("google/deeplabv3_mobilenet_v2_1.0_513")],
    ) else {
        return;
    };
    let path = shared_hub_file(
        &shared,
        "google/deeplabv3_mobilenet_v2_1.0_513",
        "model.safetensors",
    )
    .unwrap();
    let tensors = load_tensors(&path, &Device::Cpu).unwrap();
    let config = ModelPreset::MOBILENET_V2.classifier_config();
    let msg = ImageClassifier::from_tensors(tensors, "deeplab file", config, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("mobilenet_v2.conv_1x1.convolution.weight")
            && msg.contains("classifier.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("segmentation_head.conv_pool.convolution.weight"),
        "{msg}"
    );
}

#[test]
fn a_head_of_another_size_is_a_shape_mismatch() {
    // The training twin's MobileNetV2 has a 20-class head; the ImageNet preset wants 1001.
    let Some(path) = voc_core::testing::shared_file(
        "a_head_of_another_size_is_a_shape_mismatch",
        "reference/train_mobilenet_v2.init.safetensors",
    ) else {
        return;
    };
    let tensors = load_tensors(&path, &Device::Cpu).unwrap();
    let varmap = VarMap::new();
    let config = ModelPreset::MOBILENET_V2.classifier_config();
    let msg =
        ImageClassifier::trainable_from_tensors(&varmap, tensors, "twin", config, &Device::Cpu)
            .unwrap_err()
            .to_string();
    assert!(
        msg.contains("shape mismatch")
            && msg.contains("classifier.weight (expected [1001, 1280], found [20, 1280])"),
        "{msg}"
    );
}

#[test]
fn unknown_hub_id_offline_is_a_clear_error() {
    // An offline cache that holds nothing.
    let empty = std::env::temp_dir().join(format!("voc-classify-empty-hub-{}", std::process::id()));
    let cache = HubCache::new(empty, true);
    let msg = ModelPreset::MOBILENET_V2
        .load_in(
            &cache,
            &WeightsSource::hub("nobody/no_such_model", None),
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("nobody/no_such_model") && msg.contains("HF_HOME"),
        "{msg}"
    );
    assert!(ModelPreset::by_name("resnet101")
        .unwrap_err()
        .to_string()
        .contains("mobilenet_v2, efficientnet_lite0, resnet50, resnet50v2, vgg16"));
}

#[test]
fn an_unreadable_config_keeps_its_cause() {
    let dir = std::env::temp_dir().join(format!("voc-classify-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, "{not json").unwrap();
    let err = voc_classify::preset::class_names_from_config(&path).unwrap_err();
    assert!(matches!(err, ClassifyError::ConfigJson { .. }), "{err:?}");
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    std::fs::remove_dir_all(&dir).ok();
    let err = voc_classify::preset::class_names_from_config(&path).unwrap_err();
    assert!(matches!(err, ClassifyError::ConfigIo { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot read"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}
