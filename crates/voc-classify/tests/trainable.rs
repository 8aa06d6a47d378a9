//! Fresh (VarMap) networks: shapes at every output stride, run-time output-stride switching, and
//! gradients reaching every trainable weight in training mode.
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use voc_classify::{
    ClassifierArch, ClassifierConfig, EfficientNetLiteConfig, ImageClassifier, MobileNetV2Config,
    ResNetConfig, VggConfig,
};

/// Every architecture with dilated variants (VGG16 has output stride 32 only: see [`vgg16`]).
fn archs(output_stride: usize) -> [ClassifierArch; 4] {
    [
        ClassifierArch::MobileNetV2(MobileNetV2Config::default().with_output_stride(output_stride)),
        ClassifierArch::EfficientNetLite0(EfficientNetLiteConfig {
            output_stride,
            ..Default::default()
        }),
        ClassifierArch::ResNet(ResNetConfig {
            output_stride,
            ..ResNetConfig::RESNET50
        }),
        ClassifierArch::ResNet(ResNetConfig {
            output_stride,
            ..ResNetConfig::RESNETV2_50
        }),
    ]
}

fn vgg16() -> ClassifierArch {
    ClassifierArch::Vgg16(VggConfig::default())
}

#[test]
fn feature_maps_have_the_documented_strides() -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu)?;
    for os in [32, 16, 8] {
        let vgg = (os == 32).then(vgg16);
        for arch in archs(os).into_iter().chain(vgg) {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let model = ImageClassifier::new(
                vb,
                ClassifierConfig {
                    arch,
                    num_classes: 20,
                    dropout: 0.0,
                    head: voc_classify::HeadKind::Linear,
                },
            )?;
            let f = model.backbone().features_t(&x, false)?;
            let ch = model.backbone().feature_channels();
            let side = |stride: usize| 64 / stride.min(os);
            for (t, stride, c) in [
                (&f.stride4, 4, ch.stride4),
                (&f.stride8, 8, ch.stride8),
                (&f.stride16, 16, ch.stride16),
                (&f.stride32, 32, ch.stride32),
            ] {
                assert_eq!(
                    t.dims(),
                    &[1, c, side(stride), side(stride)],
                    "{} os{os} stride {stride}",
                    arch.name()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn switching_the_output_stride_equals_building_with_it() -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (1, 3, 48, 40), &Device::Cpu)?;
    for (built32, built8) in archs(32).into_iter().zip(archs(8)) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = ClassifierConfig {
            arch: built32,
            num_classes: 5,
            dropout: 0.0,
            head: voc_classify::HeadKind::Linear,
        };
        let mut switched = ImageClassifier::new(vb.clone(), cfg)?.backbone().clone();
        let direct = ImageClassifier::new(
            vb,
            ClassifierConfig {
                arch: built8,
                ..cfg
            },
        )?;
        switched.set_output_stride(8)?;
        let a = switched.features_t(&x, false)?.stride32;
        let b = direct.backbone().features_t(&x, false)?.stride32;
        assert_eq!(a.dims(), b.dims());
        assert_eq!(
            voc_tensor::testing::max_abs_diff(&a, &b)?,
            0.0,
            "{}",
            built32.name()
        );
        assert!(switched.set_output_stride(4).is_err());
    }
    Ok(())
}

#[test]
fn every_weight_gets_a_gradient_in_training_mode() -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu)?;
    for arch in archs(32).into_iter().chain([vgg16()]) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ImageClassifier::new(
            vb,
            ClassifierConfig {
                arch,
                num_classes: 3,
                dropout: 0.2,
                head: voc_classify::HeadKind::Linear,
            },
        )?;
        let logits = model.forward_t(&x, true)?;
        assert_eq!(logits.dims(), &[2, 3]);
        let grads = logits.sqr()?.sum_all()?.backward()?;
        let vars = varmap.data().lock().unwrap().clone();
        let mut without = Vec::new();
        for (name, var) in &vars {
            let is_state = name.ends_with("running_mean") || name.ends_with("running_var");
            if is_state == grads.get(var.as_tensor()).is_some() {
                without.push(name.clone());
            }
        }
        assert!(
            without.is_empty(),
            "{}: wrong gradient presence for {without:?}",
            arch.name()
        );
    }
    Ok(())
}

/// The whole training forward and backward with the fused conv + batch norm + activation (+ residual)
/// kernels against the same network composed from separate ops (`set_conv_bn_fusion(false)`): the
/// logits, the updated running statistics and every weight's gradient agree to f32 rounding.
///
/// (Against an f64 twin the comparison says little: several gradients are exactly zero in exact
/// arithmetic, e.g. the bias of a projection batch norm whose output only reaches later batch norms
/// through linear layers, and f32 gives rounding noise there, composed or fused alike.)
#[test]
fn fused_training_step_matches_the_composed_one() -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (4, 3, 64, 64), &Device::Cpu)?;
    let mix = Tensor::randn(0f32, 1.0, (4, 5), &Device::Cpu)?;
    for arch in archs(32) {
        let config = ClassifierConfig {
            arch,
            num_classes: 5,
            dropout: 0.0,
            head: voc_classify::HeadKind::Linear,
        };
        let step = |fused: bool| -> anyhow::Result<(Tensor, Vec<(String, Tensor)>)> {
            // The same seeded weights both times: a fresh VarMap from the same tensors.
            let varmap = VarMap::new();
            let model = ImageClassifier::new(
                VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
                config,
            )?;
            let named = varmap.data().lock().unwrap().clone();
            let mut names: Vec<&String> = named.keys().collect();
            names.sort();
            for (i, name) in names.iter().enumerate() {
                let var = &named[*name];
                let n = var.elem_count();
                let values: Vec<f32> = (0..n)
                    .map(|j| (((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.3)
                    .collect();
                if !name.ends_with("running_mean") && !name.ends_with("running_var") {
                    var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
                }
            }
            voc_tensor::fused::set_conv_bn_fusion(fused);
            let logits = model.forward_t(&x, true);
            voc_tensor::fused::set_conv_bn_fusion(true);
            let logits = logits?;
            let grads = (&logits * &mix)?.sum_all()?.backward()?;
            let mut out = Vec::new();
            for name in names {
                let var = named[name].as_tensor();
                let t = match grads.get(var) {
                    Some(g) => g.clone(),
                    None => var.copy()?, // running statistics: compare their values
                };
                out.push((name.clone(), t));
            }
            Ok((logits, out))
        };
        let (fused_logits, fused) = step(true)?;
        let (plain_logits, plain) = step(false)?;
        let rel = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
            Ok(diff / scale)
        };
        let err = rel(&fused_logits, &plain_logits)?;
        assert!(err < 1e-4, "{}: logits differ by {err:.2e}", arch.name());
        assert!(
            fused.len() > 100,
            "{}: {} variables",
            arch.name(),
            fused.len()
        );
        for ((name, f), (_, p)) in fused.iter().zip(&plain) {
            let err = rel(f, p)?;
            assert!(err < 1e-3, "{} {name}: differs by {err:.2e}", arch.name());
        }
    }
    Ok(())
}
