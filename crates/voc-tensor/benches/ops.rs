//! Forward and forward+backward timings of the ops on the hot paths of MobileNetV2/DeepLab training:
//! depthwise conv, bilinear upsampling of logits to 513x513, a dilated 3x3 conv.
//! Compare with `benches/torch_ops.py` (PyTorch, same shapes, same thread count) run right after.
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
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

fn setup() -> Criterion {
    voc_tensor::device::keep_freed_memory_mapped();
    voc_tensor::device::init_cpu_threads();
    Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4))
}

criterion_group! { name = benches; config = setup(); targets = depthwise, bilinear, conv }
criterion_main!(benches);
