//! The networks used through candle's traits only: `ModuleT` (the train flag) for every network, and
//! `Module` (inference) through `Eval`, inside candle's own containers. Each gives exactly what the
//! network's own forward gives, and errors keep their message.
use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use voc_classify::{
    ClassifierArch, ClassifierConfig, EfficientNetLite, EfficientNetLiteConfig, Eval,
    ImageClassifier, MobileNetV2, MobileNetV2Config,
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

fn input() -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1.0, (2, 3, 40, 36), &Device::Cpu)
}

/// A freshly initialised (random, trainable) network from `build`.
fn fresh<M>(build: impl FnOnce(VarBuilder) -> voc_classify::Result<M>) -> voc_classify::Result<M> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
}

#[test]
fn classifiers_are_candle_modules() -> anyhow::Result<()> {
    let small = MobileNetV2Config {
        depth_multiplier: 0.35,
        ..Default::default()
    };
    for arch in [
        ClassifierArch::MobileNetV2(small),
        ClassifierArch::EfficientNetLite0(EfficientNetLiteConfig::default()),
    ] {
        let config = ClassifierConfig {
            arch,
            num_classes: 5,
            dropout: 0.0,
            head: voc_classify::HeadKind::Linear,
        };
        let net = fresh(|vb| ImageClassifier::new(vb, config))?;
        let x = input()?;
        // Inference first: a training-mode pass moves the running statistics.
        let own = net.forward_t(&x, false)?;
        same(&forward_t(&net, &x, false)?, &own)?;
        same(&forward(&Eval(net.clone()), &x)?, &own)?;
        let seq = candle_nn::seq()
            .add(Eval(net.clone()))
            .add(candle_nn::ops::sigmoid);
        same(&seq.forward(&x)?, &candle_nn::ops::sigmoid(&own)?)?;

        let own = net.forward_t(&x, true)?;
        same(&forward_t(&net, &x, true)?, &own)?;
        // Among candle's own layers, as trait objects.
        let layers: Vec<Box<dyn ModuleT>> = vec![
            Box::new(net.clone()),
            Box::new(candle_nn::Dropout::new(0.0)),
        ];
        let mut y = x.clone();
        for layer in &layers {
            y = layer.forward_t(&y, true)?;
        }
        same(&y, &own)?;
    }
    Ok(())
}

#[test]
fn backbones_are_candle_modules_returning_their_last_features() -> anyhow::Result<()> {
    let mobilenet = fresh(|vb| {
        MobileNetV2::new(
            vb,
            MobileNetV2Config {
                depth_multiplier: 0.35,
                ..Default::default()
            }
            .with_output_stride(16),
        )
    })?;
    let lite = fresh(|vb| EfficientNetLite::new(vb, EfficientNetLiteConfig::default()))?;
    let x = input()?;
    for train in [false, true] {
        same(
            &forward_t(&mobilenet, &x, train)?,
            &mobilenet.features_t(&x, train)?.stride32,
        )?;
        same(
            &forward_t(&lite, &x, train)?,
            &lite.features_t(&x, train)?.stride32,
        )?;
    }
    same(
        &forward(&Eval(lite.clone()), &x)?,
        &lite.features_t(&x, false)?.stride32,
    )?;
    Ok(())
}

#[test]
fn errors_through_the_traits_keep_their_message() -> anyhow::Result<()> {
    let config = ClassifierConfig {
        arch: ClassifierArch::MobileNetV2(MobileNetV2Config {
            depth_multiplier: 0.35,
            ..Default::default()
        }),
        num_classes: 5,
        dropout: 0.0,
        head: voc_classify::HeadKind::Linear,
    };
    let net = fresh(|vb| ImageClassifier::new(vb, config))?;
    for bad in [
        Tensor::zeros((3, 32, 32), DType::F32, &Device::Cpu)?,
        Tensor::zeros((1, 4, 32, 32), DType::F32, &Device::Cpu)?,
    ] {
        // The first line: with RUST_BACKTRACE set candle appends each error's own backtrace.
        let own = net.forward_t(&bad, false).unwrap_err().to_string();
        let own = own.lines().next().unwrap_or_default().to_string();
        let through = forward_t(&net, &bad, false).unwrap_err().to_string();
        assert!(through.contains(&own), "{through} vs {own}");
        let through = forward(&Eval(net.clone()), &bad).unwrap_err().to_string();
        assert!(through.contains(&own), "{through} vs {own}");
    }
    // A crate error that is not candle's is carried with its message.
    let err: candle_core::Error =
        voc_classify::ClassifyError::BadArgument("not a photo".into()).into();
    assert!(
        err.to_string().contains("bad argument: not a photo"),
        "{err}"
    );
    Ok(())
}
