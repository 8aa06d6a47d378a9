//! One full training step (forward with batch norm in training mode, loss, backward, SGD step) of the
//! MobileNetV2 classifier (batch 8 at 224x224, BCE on 20 labels) and of DeepLabV3 (batch 2 at 321x321,
//! cross-entropy ignoring 255), on random weights and data.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench train_step
//! ```
//! `voc bench --train` times the same step from the command line, and `make bench-compare` puts it next
//! to PyTorch's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use voc_classify::{ClassifierArch, ClassifierConfig, ImageClassifier, MobileNetV2Config};
use voc_segment::{DeepLabV3, DeepLabV3Config};
use voc_tensor::ops::{bce_with_logits, cross_entropy_2d};
use voc_tensor::optim::{self, Optimizer, Sgd, SgdConfig};
use voc_tensor::{DType, Device, Tensor};

fn sgd(varmap: &VarMap) -> Sgd {
    let config = SgdConfig {
        lr: 1e-3,
        momentum: 0.9,
        ..Default::default()
    };
    Sgd::new(optim::param_groups(varmap, 4e-5, &|_| false), config).expect("SGD settings are valid")
}

fn classifier_step(c: &mut Criterion) {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let config = ClassifierConfig {
        arch: ClassifierArch::MobileNetV2(MobileNetV2Config::default()),
        num_classes: 20,
        dropout: 0.2,
        head: voc_classify::HeadKind::Linear,
    };
    let model = ImageClassifier::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
        config,
    )
    .expect("MobileNetV2 builds");
    let mut opt = sgd(&varmap);
    let x = Tensor::randn(0f32, 1f32, (8, 3, 224, 224), &device).expect("input");
    let targets = Tensor::rand(0f32, 1f32, (8, 20), &device)
        .and_then(|t| t.ge(0.9))
        .and_then(|t| t.to_dtype(DType::F32))
        .expect("targets");
    c.bench_function("mobilenet_v2 train step b8 224", |b| {
        b.iter(|| {
            let logits = model.forward_t(&x, true).expect("forward");
            let loss = bce_with_logits(&logits, &targets, None).expect("loss");
            opt.backward_step(&loss).expect("backward and step");
        })
    });
}

fn segmenter_step(c: &mut Criterion) {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = DeepLabV3::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
        DeepLabV3Config::default(),
    )
    .expect("DeepLabV3 builds");
    let mut opt = sgd(&varmap);
    let size = 321;
    let x = Tensor::randn(0f32, 1f32, (2, 3, size, size), &device).expect("input");
    let targets = Tensor::rand(0f32, 21f32, (2, size, size), &device)
        .and_then(|t| t.floor())
        .and_then(|t| t.to_dtype(DType::U8))
        .expect("targets");
    c.bench_function("deeplabv3 train step b2 321", |b| {
        b.iter(|| {
            let logits = model.logits_at(&x, size, size, true).expect("forward");
            let loss = cross_entropy_2d(&logits, &targets, None, Some(255)).expect("loss");
            opt.backward_step(&loss).expect("backward and step");
        })
    });
}

fn config() -> Criterion {
    // Keep freed memory mapped: mimalloc option 15 (purge_delay) = -1; why: voc-cli/src/main.rs.
    // SAFETY: sets one mimalloc option (MIMALLOC_PURGE_DELAY still wins) before any thread exists.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
    // SAFETY: criterion_main! calls this config first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(20))
}

criterion_group! { name = benches; config = config(); targets = classifier_step, segmenter_step }
criterion_main!(benches);
