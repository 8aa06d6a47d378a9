//! Forward and forward+backward timings of the ops on the hot paths of MobileNetV2/DeepLab training:
//! depthwise conv, bilinear upsampling of logits to 513x513, a dilated 3x3 conv, and the fused
//! convolution epilogues (bias + activation, training batch norm + activation, 1x1 conv + batch norm).
//! Compare with `benches/torch_ops.py` (PyTorch, same shapes, same thread count) run right after.
use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use voc_tensor::fused::{self, Act, ConvKind};
use voc_tensor::nn::BatchNorm2d;
use voc_tensor::ops::{self, Padding};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu).expect("randn")
}

/// One training step's worth of work on the op: forward, then backward of `sum(y * g)`.
fn fwd_bwd(y: impl Fn() -> Tensor, g: &Tensor) {
    let loss = (y() * g).and_then(|t| t.sum_all()).expect("loss");
    let grads = loss.backward().expect("backward");
    criterion::black_box(grads);
}

fn depthwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("depthwise_conv2d 8x144x56x56 3x3");
    group.sample_size(20);
    let x = Var::from_tensor(&randn(&[8, 144, 56, 56])).expect("var");
    let w = Var::from_tensor(&(randn(&[144, 1, 3, 3]) * 0.1).expect("w")).expect("var");
    let b = Var::from_tensor(&randn(&[144])).expect("var");
    for stride in [1usize, 2] {
        let out = (56 - 1) / stride + 1;
        let g = randn(&[8, 144, out, out]);
        let run = || {
            ops::depthwise_conv2d(
                x.as_tensor(),
                w.as_tensor(),
                Some(b.as_tensor()),
                stride,
                Padding::same(1),
                1,
            )
            .expect("depthwise")
        };
        group.bench_function(format!("stride {stride} fwd+bwd"), |bench| {
            bench.iter(|| fwd_bwd(run, &g))
        });
        group.bench_function(format!("stride {stride} fwd"), |bench| {
            bench.iter(|| criterion::black_box(run()))
        });
    }
    group.finish();
}

fn bilinear(c: &mut Criterion) {
    let mut group = c.benchmark_group("resize_bilinear 1x21x65x65 -> 513x513 align_corners");
    group.sample_size(20);
    let x = Var::from_tensor(&randn(&[1, 21, 65, 65])).expect("var");
    let g = randn(&[1, 21, 513, 513]);
    let run = || ops::resize_bilinear(x.as_tensor(), 513, 513, true).expect("resize");
    group.bench_function("fwd+bwd", |bench| bench.iter(|| fwd_bwd(run, &g)));
    group.bench_function("fwd", |bench| bench.iter(|| criterion::black_box(run())));
    group.finish();
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d 2x256x33x33 -> 256 3x3 dilation 6");
    group.sample_size(10);
    let x = Var::from_tensor(&randn(&[2, 256, 33, 33])).expect("var");
    let w = Var::from_tensor(&(randn(&[256, 256, 3, 3]) * 0.02).expect("w")).expect("var");
    let g = randn(&[2, 256, 33, 33]);
    let run = || {
        ops::conv2d(
            x.as_tensor(),
            w.as_tensor(),
            None,
            1,
            Padding::same(6),
            6,
            1,
        )
        .expect("conv2d")
    };
    group.bench_function("fwd+bwd", |bench| bench.iter(|| fwd_bwd(run, &g)));
    group.bench_function("fwd", |bench| bench.iter(|| criterion::black_box(run())));
    group.finish();
}

/// The element-wise epilogues of `voc_tensor::fused` on MobileNetV2 block shapes: large planes
/// (8x144x56x56) and small ones (8x960x7x7, where planes are grouped into rayon tasks).
fn fused_epilogues(c: &mut Criterion) {
    let mut group = c.benchmark_group("fused epilogues");
    group.sample_size(20);
    let bias = randn(&[144]);
    let x = Var::from_tensor(&randn(&[8, 144, 56, 56])).expect("var");
    let g = randn(&[8, 144, 56, 56]);
    let run = || fused::bias_act(x.as_tensor(), Some(&bias), Act::Relu6).expect("bias_act");
    group.bench_function("bias_act 8x144x56x56 relu6 fwd", |bench| {
        bench.iter(|| criterion::black_box(run()))
    });
    group.bench_function("bias_act 8x144x56x56 relu6 fwd+bwd", |bench| {
        bench.iter(|| fwd_bwd(run, &g))
    });
    for shape in [[8, 144, 56, 56], [8, 960, 7, 7]] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::new(vb, shape[1], 1e-3, 0.01).expect("batch norm");
        let x = Var::from_tensor(&randn(&shape)).expect("var");
        let g = randn(&shape);
        let run = || fused::batch_norm_act_train(&bn, x.as_tensor(), Act::Relu6).expect("bn");
        let name = format!("batch_norm_act_train {shape:?} relu6 fwd+bwd");
        group.bench_function(name, |bench| bench.iter(|| fwd_bwd(run, &g)));
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    let bn = BatchNorm2d::new(vb, 144, 1e-3, 0.01).expect("batch norm");
    let x = Var::from_tensor(&randn(&[8, 24, 56, 56])).expect("var");
    let w = Var::from_tensor(&(randn(&[144, 24, 1, 1]) * 0.2).expect("w")).expect("var");
    let run = || {
        let kind = ConvKind::Pointwise;
        fused::conv_bn_act_train(x.as_tensor(), w.as_tensor(), kind, &bn, Act::Relu6, None)
            .expect("conv_bn_act_train")
    };
    group.bench_function(
        "conv_bn_act_train 1x1 8x24x56x56 -> 144 relu6 fwd+bwd",
        |bench| bench.iter(|| fwd_bwd(run, &g)),
    );
    group.finish();
}

fn setup() -> Criterion {
    // Keep freed memory mapped: mimalloc option 15 (purge_delay) = -1; why: voc-cli/src/main.rs.
    // SAFETY: sets one mimalloc option (MIMALLOC_PURGE_DELAY still wins) before any thread exists.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
    // SAFETY: criterion_main! calls this config first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4))
}

criterion_group! { name = benches; config = setup(); targets = depthwise, bilinear, conv, fused_epilogues }
criterion_main!(benches);
