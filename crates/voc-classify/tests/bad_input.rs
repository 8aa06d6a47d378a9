//! Wrong weights files, unknown hub ids and unreadable images fail with errors that say what is wrong.
use candle_core::Device;
use candle_nn::VarMap;
use voc_classify::{ClassifyError, ImageClassifier, ModelPreset, Rgb8Image};
use voc_tensor::hub::{load_tensors, HubCache, WeightsSource};
use voc_tensor::testing::{shared_hub_file, shared_or_skip};

#[test]
fn efficientnet_weights_are_not_a_mobilenet() {
    let Some(shared) = shared_or_skip("efficientnet_weights_are_not_a_mobilenet") else {
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
    let Some(shared) = shared_or_skip("segmenter_weights_are_not_an_imagenet_classifier") else {
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
    let Some(shared) = shared_or_skip("a_head_of_another_size_is_a_shape_mismatch") else {
        return;
    };
    // The training twin's MobileNetV2 has a 20-class head; the ImageNet preset wants 1001.
    let path = shared.join("reference/train_mobilenet_v2.init.safetensors");
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
    let Some(shared) = shared_or_skip("unknown_hub_id_offline_is_a_clear_error") else {
        return;
    };
    let cache = HubCache::new(shared.join("hf/hub"), true);
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
    assert!(ModelPreset::by_name("resnet50")
        .unwrap_err()
        .to_string()
        .contains("mobilenet_v2, efficientnet_lite0"));
}

#[test]
fn images_that_are_not_hxwx3_uint8_are_refused() {
    let dir = std::env::temp_dir().join(format!("voc-classify-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.png");
    assert!(Rgb8Image::read(&missing)
        .unwrap_err()
        .to_string()
        .contains("no such file"));

    let mask = dir.join("mask.npy");
    ndarray_npy::write_npy(&mask, &ndarray::Array2::<u8>::zeros((4, 5))).unwrap();
    let msg = Rgb8Image::read(&mask).unwrap_err().to_string();
    assert!(msg.contains("mask.npy") && msg.contains("HxWx3"), "{msg}");

    let floats = dir.join("floats.npy");
    ndarray_npy::write_npy(&floats, &ndarray::Array3::<f32>::zeros((4, 5, 3))).unwrap();
    let msg = Rgb8Image::read(&floats).unwrap_err().to_string();
    assert!(msg.contains("floats.npy") && msg.contains("uint8"), "{msg}");

    let rgba = dir.join("four.npy");
    ndarray_npy::write_npy(&rgba, &ndarray::Array3::<u8>::zeros((4, 5, 4))).unwrap();
    assert!(Rgb8Image::read(&rgba)
        .unwrap_err()
        .to_string()
        .contains("4x5x4"));

    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    assert!(Rgb8Image::read(&text)
        .unwrap_err()
        .to_string()
        .contains("unknown image type"));
    let fake_png = dir.join("fake.png");
    std::fs::write(&fake_png, "not a png").unwrap();
    assert!(Rgb8Image::read(&fake_png)
        .unwrap_err()
        .to_string()
        .contains("cannot decode"));
    std::fs::remove_dir_all(&dir).ok();
}
