//! Loading segmenters: wrong files fail with a name report, a pretrained backbone starts a DeepLabV3+,
//! and the size strategies keep the photo's size.
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use voc_core::testing::{hub_model, shared_with};
use voc_core::RgbImage;
use voc_segment::{
    DeepLabV3, DeepLabV3Plus, DeepLabV3PlusConfig, SegmentationNet, Segmenter, SegmenterPreset,
    SizeStrategy,
};
use voc_tensor::hub::{load_tensors, HubCache, WeightsSource};
use voc_tensor::testing::shared_hub_file;

#[test]
fn an_imagenet_classifier_is_not_a_segmenter() {
    let Some(shared) = shared_with(
        "an_imagenet_classifier_is_not_a_segmenter",
        &[
            hub_model("google/mobilenet_v2_1.0_224"),
            "reference/train_deeplabv3plus.init.safetensors".into(),
        ],
    ) else {
        return;
    };
    let cache = HubCache::new(shared.join("hf/hub"), true);
    let preset = SegmenterPreset::DEEPLABV3_MOBILENET_V2;
    let wrong =
        shared_hub_file(&shared, "google/mobilenet_v2_1.0_224", "model.safetensors").unwrap();
    let msg = preset
        .load_in(&cache, &WeightsSource::File(wrong), 16, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("deeplabv3_mobilenet_v2"), "{msg}");
    assert!(
        msg.contains("missing") && msg.contains("segmentation_head.conv_pool.convolution.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected") && msg.contains("classifier.weight"),
        "{msg}"
    );
    // The DeepLabV3+ twin's file carries a different head.
    let twin = shared.join("reference/train_deeplabv3plus.init.safetensors");
    let msg = preset
        .load_in(&cache, &WeightsSource::File(twin), 16, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("decode_head.aspp_1x1.convolution.weight"),
        "{msg}"
    );
    assert!(SegmenterPreset::by_name("nobody/segmenter").is_err());
    assert!("crop:5"
        .parse::<SizeStrategy>()
        .unwrap_err()
        .to_string()
        .contains("resize[:SIZE] or pad[:MIN_SIZE]"));
}

#[test]
fn deeplabv3plus_starts_from_the_pretrained_backbone() -> anyhow::Result<()> {
    let Some(shared) = shared_with(
        "deeplabv3plus_starts_from_the_pretrained_backbone",
        &[
            hub_model("google/deeplabv3_mobilenet_v2_1.0_513"),
            hub_model("timm/tf_efficientnet_lite0.in1k"),
        ],
    ) else {
        return Ok(());
    };
    let path = shared_hub_file(
        &shared,
        "google/deeplabv3_mobilenet_v2_1.0_513",
        "model.safetensors",
    )
    .unwrap();
    let tensors = load_tensors(&path, &Device::Cpu)?;
    let name = "mobilenet_v2.layer.13.conv_3x3.convolution.weight";
    let pretrained = tensors[name].clone();
    let varmap = VarMap::new();
    let cfg = DeepLabV3PlusConfig::default();
    let model =
        DeepLabV3Plus::trainable_with_backbone(&varmap, tensors, "deeplabv3", cfg, &Device::Cpu)?;
    let vars = varmap.data().lock().unwrap().clone();
    assert_eq!(
        voc_tensor::testing::max_abs_diff(vars[name].as_tensor(), &pretrained)?,
        0.0
    );
    assert!(vars.contains_key("decode_head.decoder.1.convolution.weight"));
    let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 48), &Device::Cpu)?;
    assert_eq!(model.forward_t(&x, true)?.dims(), &[2, 21, 64, 48]);

    // An EfficientNet file has no MobileNetV2 backbone to start from.
    let wrong = load_tensors(
        &shared_hub_file(
            &shared,
            "timm/tf_efficientnet_lite0.in1k",
            "model.safetensors",
        )
        .unwrap(),
        &Device::Cpu,
    )?;
    let msg =
        DeepLabV3Plus::trainable_with_backbone(&VarMap::new(), wrong, "lite0", cfg, &Device::Cpu)
            .unwrap_err()
            .to_string();
    assert!(
        msg.contains("missing")
            && msg.contains("mobilenet_v2.conv_stem.first_conv.convolution.weight"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn every_strategy_returns_logits_at_the_photo_size() -> anyhow::Result<()> {
    // A fresh network is enough to check the geometry; odd sizes exercise the padding and cropping.
    let vb = candle_nn::VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    let net = DeepLabV3::new(vb, Default::default())?;
    let image = RgbImage::new(37, 51, (0..37 * 51 * 3).map(|i| (i % 251) as u8).collect())?;
    for strategy in [
        SizeStrategy::Resize(65),
        SizeStrategy::Pad { min_size: 0 },
        SizeStrategy::Pad { min_size: 65 },
    ] {
        for os in [16, 8] {
            let mut segmenter = Segmenter::new(
                SegmentationNet::DeepLabV3(Box::new(net.clone())),
                voc_core::Normalization::MINUS_ONE_TO_ONE,
                strategy,
            );
            segmenter.net.set_output_stride(os)?;
            segmenter.flip_tta = os == 8;
            let logits = segmenter.logits(&image, &Device::Cpu)?;
            assert_eq!(logits.dims(), &[1, 21, 37, 51], "{strategy} os{os}");
            let mask = segmenter.mask(&image, &Device::Cpu)?;
            assert_eq!((mask.height(), mask.width()), (37, 51));
        }
    }
    Ok(())
}
