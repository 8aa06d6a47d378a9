//! The segmentation networks used through candle's traits only: `ModuleT` (the train flag) and
//! `Module` (inference) through `Eval`. Each gives exactly the network's own forward; errors of the
//! constructor keep their type through the weight loaders.
use std::collections::HashMap;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use voc_classify::MobileNetV2Config;
use voc_segment::{
    DeepLabV3, DeepLabV3Config, DeepLabV3Plus, DeepLabV3PlusConfig, Eval, FromWeights,
    SegmentError, SegmentationNet,
};
use voc_tensor::testing::max_abs_diff;

/// What a caller generic over candle modules sees.
fn forward_t<M: ModuleT>(net: &M, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
    net.forward_t(x, train)
}

fn forward<M: Module>(net: &M, x: &Tensor) -> candle_core::Result<Tensor> {
    net.forward(x)
}

fn same(a: &Tensor, b: &Tensor) -> anyhow::Result<()> {
    assert_eq!(a.dims(), b.dims());
    assert_eq!(max_abs_diff(a, b)?, 0.0);
    Ok(())
}

fn small_backbone() -> MobileNetV2Config {
    MobileNetV2Config {
        depth_multiplier: 0.35,
        ..Default::default()
    }
    .with_output_stride(16)
}

fn fresh<M>(build: impl FnOnce(VarBuilder) -> voc_segment::Result<M>) -> voc_segment::Result<M> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
}

/// `net` through the traits equals `own` (its inherent forward), in inference and then training mode.
fn check<M: ModuleT + Clone + 'static>(
    net: &M,
    own: impl Fn(&Tensor, bool) -> voc_segment::Result<Tensor>,
) -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (2, 3, 33, 41), &Device::Cpu)?;
    // Inference first: a training-mode pass moves the running statistics.
    let eval = own(&x, false)?;
    same(&forward_t(net, &x, false)?, &eval)?;
    same(&forward(&Eval(net.clone()), &x)?, &eval)?;
    let seq = candle_nn::seq()
        .add(Eval(net.clone()))
        .add(|x: &Tensor| candle_nn::ops::softmax(x, 1));
    same(&seq.forward(&x)?, &candle_nn::ops::softmax(&eval, 1)?)?;
    same(&forward_t(net, &x, true)?, &own(&x, true)?)?;
    Ok(())
}

#[test]
fn segmentation_networks_are_candle_modules() -> anyhow::Result<()> {
    let v3 = fresh(|vb| {
        DeepLabV3::new(
            vb,
            DeepLabV3Config {
                backbone: small_backbone(),
                ..Default::default()
            },
        )
    })?;
    let plus = fresh(|vb| {
        DeepLabV3Plus::new(
            vb,
            DeepLabV3PlusConfig {
                backbone: small_backbone(),
                ..Default::default()
            },
        )
    })?;
    check(&v3, |x, train| v3.forward_t(x, train))?;
    check(&plus, |x, train| plus.forward_t(x, train))?;
    for net in [
        SegmentationNet::DeepLabV3(Box::new(v3.clone())),
        SegmentationNet::DeepLabV3Plus(Box::new(plus.clone())),
    ] {
        check(&net, |x, train| net.forward_t(x, train))?;
    }
    Ok(())
}

#[test]
fn constructor_errors_keep_their_type_through_the_loaders() {
    let config = DeepLabV3Config {
        num_classes: 0,
        ..Default::default()
    };
    let err = DeepLabV3::from_tensors(HashMap::new(), "none", config, &Device::Cpu).unwrap_err();
    assert!(matches!(err, SegmentError::BadArgument(_)), "{err:?}");
    let err = DeepLabV3::trainable_from_tensors(
        &VarMap::new(),
        HashMap::new(),
        "none",
        config,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(matches!(err, SegmentError::BadArgument(_)), "{err:?}");
    // A name mismatch is the classifier crate's report, as the source of nothing else.
    let err = DeepLabV3::from_tensors(
        HashMap::new(),
        "empty",
        DeepLabV3Config::default(),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::Classify(voc_classify::ClassifyError::WeightsMismatch { .. })
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("empty: the weights do not fit deeplabv3_mobilenet_v2"));
}

#[test]
fn a_file_that_is_no_segmenter_keeps_both_reasons() {
    let path = std::env::temp_dir().join(format!(
        "voc-segment-not-a-model-{}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, b"not a model").unwrap();
    let result = voc_segment::load_segmenter(
        path.to_str().unwrap(),
        16,
        voc_segment::SizeStrategy::default(),
        &Device::Cpu,
    );
    std::fs::remove_file(&path).ok();
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("cannot be used as the segmenter")
            && msg.contains("As a voc checkpoint:")
            && msg.contains("As DeepLabV3 weights:"),
        "{msg}"
    );
    let SegmentError::NotASegmenter { as_weights, .. } = &err else {
        panic!("{err:?}");
    };
    let source = std::error::Error::source(&err).expect("a source");
    assert_eq!(source.to_string(), as_weights.to_string());
}
