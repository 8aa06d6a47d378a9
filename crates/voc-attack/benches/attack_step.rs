//! One attack step's model work: forward in eval mode and the gradient of the loss with respect to the
//! input (`input_gradient`), on MobileNetV2 at 224 (batch 1 and 8) and DeepLabV3 at 257 (batch 1).
//! Weights are random constants: the timing does not depend on their values, and constants (as in a
//! loaded pretrained model) mean the backward pass computes the input gradient only.
//! `benches/torch_attack.py` times the same work in PyTorch; run it right after for ratios.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use voc_attack::{input_gradient, Objective};
use voc_classify::{
    ClassifierArch, ClassifierConfig, FromWeights, ImageClassifier, MobileNetV2Config,
};
use voc_segment::{DeepLabV3, DeepLabV3Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The variables of a freshly initialised network, as constant tensors.
fn constants(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect()
}

fn pixels(shape: &[usize]) -> Tensor {
    Tensor::rand(0f32, 1f32, shape, &Device::Cpu).expect("rand")
}

fn mobilenet_v2(c: &mut Criterion) {
    let config = ClassifierConfig {
        arch: ClassifierArch::MobileNetV2(MobileNetV2Config::default()),
        num_classes: 1001,
        dropout: 0.0,
        head: voc_classify::HeadKind::Linear,
    };
    let varmap = VarMap::new();
    ImageClassifier::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        config,
    )
    .expect("init");
    let net = ImageClassifier::from_tensors(constants(&varmap), "random", config, &Device::Cpu)
        .expect("constants");
    let model = |u: &Tensor| net.forward_t(&u.affine(2.0, -1.0)?, false);
    let mut group = c.benchmark_group("attack step MobileNetV2 224");
    group.sample_size(10);
    for batch in [1usize, 8] {
        let u = pixels(&[batch, 3, 224, 224]);
        let objective = Objective::CrossEntropy {
            classes: vec![20; batch],
        };
        group.bench_function(format!("batch {batch} input gradient"), |b| {
            b.iter(|| criterion::black_box(input_gradient(&model, &objective, &u).expect("grad")))
        });
    }
    group.finish();
}

fn deeplabv3(c: &mut Criterion) {
    let varmap = VarMap::new();
    DeepLabV3::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        DeepLabV3Config::default(),
    )
    .expect("init");
    let net = DeepLabV3::from_tensors(
        constants(&varmap),
        "random",
        DeepLabV3Config::default(),
        &Device::Cpu,
    )
    .expect("constants");
    let model = |u: &Tensor| net.forward_t(&u.affine(2.0, -1.0)?, false);
    let u = pixels(&[1, 3, 257, 257]);
    let objective = Objective::segmentation(
        Tensor::zeros((1, 257, 257), DType::U8, &Device::Cpu).expect("mask"),
    );
    let mut group = c.benchmark_group("attack step DeepLabV3 257");
    group.sample_size(10);
    group.bench_function("batch 1 input gradient", |b| {
        b.iter(|| criterion::black_box(input_gradient(&model, &objective, &u).expect("grad")))
    });
    group.finish();
}

/// The allocator and thread settings `voc` itself runs with.
fn setup() -> Criterion {
    // Keep freed memory mapped: mimalloc option 15 (purge_delay) = -1; why: voc-cli/src/main.rs.
    // SAFETY: sets one mimalloc option (MIMALLOC_PURGE_DELAY still wins) before any thread exists.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
    // SAFETY: criterion_main! calls this config first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    Criterion::default()
}

criterion_group! { name = benches; config = setup(); targets = mobilenet_v2, deeplabv3 }
criterion_main!(benches);
