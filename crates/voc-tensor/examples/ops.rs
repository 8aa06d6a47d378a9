//! A tour of `voc_tensor::ops`: a tiny MobileNet-style block trained for one step on the CPU, with the
//! gradients that candle's own ops would not give (bilinear resize, strided odd-size conv, pooling).
//!
//! `cargo run -p voc-tensor --example ops`
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use voc_tensor::nn::BatchNorm2d;
use voc_tensor::ops::{self, Padding};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deterministic pseudo-random values (candle's CPU generator cannot be seeded), so runs are repeatable.
fn values(shape: &[usize], seed: f32, scale: f32) -> voc_tensor::Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| ((i as f32 * 12.9898 + seed).sin() * 43758.547).fract() * 2.0 * scale)
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

fn main() -> voc_tensor::Result<()> {
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    let dev = Device::Cpu;
    // A 9x10 "image": H and W leave different remainders at stride 2.
    let x = Var::from_tensor(&values(&[2, 3, 9, 10], 1.0, 1.0)?)?;
    let stem_w = Var::from_tensor(&values(&[8, 3, 3, 3], 2.0, 0.3)?)?;
    let dw_w = Var::from_tensor(&values(&[8, 1, 3, 3], 3.0, 0.3)?)?;
    let varmap = VarMap::new();
    let bn = BatchNorm2d::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("bn"),
        8,
        1e-3,
        0.1,
    )?;

    // Stem: 3x3 stride-2 conv with TensorFlow "SAME" padding (0 left, 1 right on a width of 10).
    let pad = ops::tf_same_padding(9, 10, 3, 2, 1);
    let h = ops::conv2d(x.as_tensor(), stem_w.as_tensor(), None, 2, pad, 1, 1)?;
    let h = ops::relu6(&bn.forward_t(&h, true)?)?;
    // Depthwise 3x3 (the fast CPU kernel), then max pooling with padding.
    let h = ops::depthwise_conv2d(&h, dw_w.as_tensor(), None, 1, Padding::same(1), 1)?;
    let h = ops::max_pool2d(&h, 3, 2, 1)?;
    // Segmentation-style head: logits of 4 classes upsampled back to the input with bilinear resize.
    let logits = ops::resize_bilinear(&h.narrow(1, 0, 4)?, 9, 10, true)?;
    let targets = Tensor::from_vec(
        (0..180u32)
            .map(|i| if i % 7 == 0 { 255 } else { i % 4 })
            .collect(),
        (2, 9, 10),
        &dev,
    )?;
    let loss = ops::cross_entropy_2d(&logits, &targets, None, Some(255))?;

    let grads = loss.backward()?;
    println!("stem padding (TF SAME on 9x10): {pad:?}");
    println!(
        "features after pool {:?}, logits {:?}",
        h.dims(),
        logits.dims()
    );
    println!(
        "cross-entropy (ignore 255): {:.5}",
        loss.to_scalar::<f32>()?
    );
    for (name, var) in [("input", &x), ("stem conv", &stem_w), ("depthwise", &dw_w)] {
        let g = grads
            .get(var.as_tensor())
            .map(|g| g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>());
        println!("|d loss / d {name}| = {:.5}", g.transpose()?.unwrap_or(0.0));
    }
    println!(
        "bn running mean after one training step: {:?}",
        bn.running_mean().as_tensor().to_vec1::<f32>()?
    );

    // Nearest resize keeps label masks as labels.
    let mask = Tensor::from_vec(vec![0u8, 1, 2, 255], (1, 2, 2), &dev)?;
    println!(
        "mask 2x2 -> 3x4 (nearest): {:?}",
        ops::resize_nearest(&mask, 3, 4)?.to_vec3::<u8>()?
    );
    // BCE on logits of +-100 stays finite.
    let big = Tensor::new(&[[100f32, -100.]], &dev)?;
    let bce = ops::bce_with_logits(&big, &Tensor::new(&[[0f32, 1.]], &dev)?, None)?;
    println!(
        "bce at logits +-100 with the wrong labels: {}",
        bce.to_scalar::<f32>()?
    );
    Ok(())
}
