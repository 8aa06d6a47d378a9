//! Unit tests of the ops beyond the PyTorch goldens (tests/ops_golden.rs): numerical edge cases, the
//! fast CPU depthwise kernel against independent implementations, masks, and error cases.
use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::testing::{max_abs_diff, rel_err};

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    // A small LCG keeps the tests deterministic without pulling rand into the library's dependencies.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

#[test]
fn bce_is_finite_and_exact_at_large_logits() {
    let logits = Var::new(&[[100f32, -100., 100., -100., 0.]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[[0f32, 1., 1., 0., 1.]], &Device::Cpu).unwrap();
    for pos_weight in [
        None,
        Some(Tensor::new(&[2f32, 3., 4., 5., 6.], &Device::Cpu).unwrap()),
    ] {
        let loss = bce_with_logits(logits.as_tensor(), &targets, pos_weight.as_ref()).unwrap();
        let value = loss.to_scalar::<f32>().unwrap();
        // Per element: 100, 100*pw, ~0, ~0, ln 2 * pw; mean over 5.
        let (pw1, pw4) = pos_weight.as_ref().map_or((1.0, 1.0), |_| (3.0, 6.0));
        let want = (100.0 + 100.0 * pw1 + std::f32::consts::LN_2 * pw4) / 5.0;
        assert!((value - want).abs() < 1e-3, "loss {value} vs {want}");
        let grad = loss
            .backward()
            .unwrap()
            .get(logits.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap();
        let grad = grad.to_vec1::<f32>().unwrap();
        assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
        // d/dx = (sigmoid(x) * (1 + (pw-1) t) - pw t) / n
        let want_grad = [1.0 / 5.0, -pw1 / 5.0, 0.0, 0.0, (0.5 * pw4 - pw4) / 5.0];
        for (g, w) in grad.iter().zip(want_grad) {
            assert!((g - w).abs() < 1e-5, "{grad:?} vs {want_grad:?}");
        }
    }
}

#[test]
fn cross_entropy_ignores_pixels_and_checks_targets() {
    let logits = seeded(&[2, 4, 3, 3], 1);
    let all_ignored = Tensor::full(255u32, (2, 3, 3), &Device::Cpu).unwrap();
    let loss = cross_entropy_2d(&logits, &all_ignored, None, Some(255)).unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);

    let bad = Tensor::full(4u32, (2, 3, 3), &Device::Cpu).unwrap();
    let err = cross_entropy_2d(&logits, &bad, None, Some(255))
        .unwrap_err()
        .to_string();
    assert!(err.contains("4 classes"), "{err}");

    // N x C logits with N targets agree with candle's own cross-entropy when nothing is ignored.
    let flat = seeded(&[6, 5], 2);
    let targets = Tensor::new(&[0u32, 4, 2, 1, 3, 2], &Device::Cpu).unwrap();
    let ours = cross_entropy_2d(&flat, &targets, None, None).unwrap();
    let candle = candle_nn::loss::cross_entropy(&flat, &targets).unwrap();
    assert!(max_abs_diff(&ours, &candle).unwrap() < 1e-6);
}

/// The CPU cross-entropy kernel against the composed ops (which a class weight that needs a gradient
/// still takes): loss and logit gradient, with ignored pixels, class weights, a pixel count that is
/// not a multiple of the kernel's chunk, large logits, and an all-ignored batch (0, zero gradient).
#[test]
fn cpu_cross_entropy_kernel_matches_the_composed_ops() {
    let (n, c, h, w) = (2, 5, 37, 61);
    let logits = (seeded(&[n, c, h, w], 31) * 30.0).unwrap();
    let targets: Vec<u32> = (0..n * h * w)
        .map(|i| if i % 7 == 3 { 255 } else { (i * 13 % c) as u32 })
        .collect();
    let targets = Tensor::from_vec(targets, (n, h, w), &Device::Cpu).unwrap();
    let weights = Tensor::new(&[0.5f32, 2.0, 1.0, 0.25, 3.0], &Device::Cpu).unwrap();
    let loss_and_grad = |class_weight: Option<&Tensor>, targets: &Tensor| {
        let x = Var::from_tensor(&logits).unwrap();
        let loss = cross_entropy_2d(x.as_tensor(), targets, class_weight, Some(255)).unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap().clone();
        (loss.to_scalar::<f32>().unwrap(), dx)
    };
    // A class weight that is a variable keeps the composed path; its values are the same.
    let weight_var = Var::from_tensor(&weights).unwrap();
    let (fused, dx_fused) = loss_and_grad(Some(&weights), &targets);
    let (composed, dx_composed) = loss_and_grad(Some(weight_var.as_tensor()), &targets);
    assert!(
        (fused - composed).abs() <= 1e-5 * composed.abs(),
        "{fused} vs {composed}"
    );
    assert!(rel_err(&dx_fused, &dx_composed).unwrap() < 1e-5);

    let all_ignored = Tensor::full(255u32, (n, h, w), &Device::Cpu).unwrap();
    let (loss, dx) = loss_and_grad(None, &all_ignored);
    assert_eq!(loss, 0.0);
    assert_eq!(
        dx.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn nearest_resizes_u8_masks_without_blending() {
    let mask: Vec<u8> = (0..2 * 5 * 7).map(|i| (i % 21) as u8).collect();
    let mask = Tensor::from_vec(mask, (2, 5, 7), &Device::Cpu).unwrap();
    let up = resize_nearest(&mask, 11, 3).unwrap();
    assert_eq!(up.dtype(), DType::U8);
    assert_eq!(up.dims(), &[2, 11, 3]);
    let src = mask.to_vec3::<u8>().unwrap();
    let got = up.to_vec3::<u8>().unwrap();
    for (n, plane) in got.iter().enumerate() {
        for (y, row) in plane.iter().enumerate() {
            for (x, &v) in row.iter().enumerate() {
                // PyTorch nearest: floor(dst * in / out).
                let sy = ((y as f32 * (5.0 / 11.0)).floor() as usize).min(4);
                let sx = ((x as f32 * (7.0 / 3.0)).floor() as usize).min(6);
                assert_eq!(v, src[n][sy][sx], "at {n},{y},{x}");
            }
        }
    }
    let mask4 = mask.to_dtype(DType::U32).unwrap().unsqueeze(1).unwrap();
    let up4 = resize_nearest(&mask4, 11, 3).unwrap();
    assert_eq!(up4.dims(), &[2, 1, 11, 3]);
    assert_eq!(
        up4.squeeze(1)
            .unwrap()
            .to_dtype(DType::U8)
            .unwrap()
            .to_vec3::<u8>()
            .unwrap(),
        got
    );
}

#[test]
fn bilinear_same_size_is_identity_and_rejects_empty() {
    let x = seeded(&[1, 2, 5, 6], 3);
    assert_eq!(
        max_abs_diff(&resize_bilinear(&x, 5, 6, false).unwrap(), &x).unwrap(),
        0.0
    );
    assert!(resize_bilinear(&x, 0, 6, true).is_err());
    // align_corners keeps the corners exactly.
    let up = resize_bilinear(&x, 9, 11, true).unwrap();
    let corner = |t: &Tensor, y: usize, xx: usize| {
        t.get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .get(y)
            .unwrap()
            .get(xx)
            .unwrap()
    };
    let d = (corner(&up, 8, 10) - corner(&x, 4, 5))
        .unwrap()
        .abs()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-6);
}

/// Forward and both gradients of a depthwise conv computed by `f`, for `sum(y * g)`.
fn dw_with_grads(
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    g_seed: u64,
) -> (Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(w).unwrap();
    let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
    let g = seeded(y.dims(), g_seed);
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).unwrap().clone();
    let dw = grads.get(wv.as_tensor()).unwrap().clone();
    (y, dx, dw)
}

#[test]
fn cpu_depthwise_kernel_matches_candle_and_the_tap_composition() {
    // (n, c, h, w, k, stride, dilation, padding): odd sizes like a 375x500 photo scaled down, strides,
    // dilations, asymmetric TF-SAME padding and a 5x5 kernel.
    let cases = [
        (2, 6, 11, 10, 3, 1, 1, Padding::same(1)),
        (1, 5, 47, 63, 3, 2, 1, Padding::same(1)),
        (1, 4, 47, 63, 3, 2, 2, Padding::same(2)),
        (2, 3, 23, 31, 5, 2, 1, Padding::same(2)),
        (1, 7, 19, 25, 3, 1, 2, Padding::same(2)),
        (1, 3, 17, 20, 3, 3, 1, Padding::same(0)),
        (1, 4, 9, 10, 3, 2, 1, tf_same_padding(9, 10, 3, 2, 1)),
        (2, 3, 24, 24, 5, 2, 1, tf_same_padding(24, 24, 5, 2, 1)),
    ];
    for (seed, &(n, c, h, w, k, stride, dilation, padding)) in cases.iter().enumerate() {
        let x = seeded(&[n, c, h, w], 10 + seed as u64);
        let weight = seeded(&[c, 1, k, k], 20 + seed as u64);
        let label = format!("{n}x{c}x{h}x{w} k{k} s{stride} d{dilation} {padding:?}");

        // The AVX2 row kernels (what a CPU without AVX-512 runs) sum the same taps in the same order
        // with the same fused multiply-adds: bit for bit the AVX-512 ones.
        let run = || {
            dw_with_grads(
                |x, w| depthwise_conv2d(x, w, None, stride, padding, dilation),
                &x,
                &weight,
                7,
            )
        };
        let (ya, dxa, dwa) = crate::simd::with_level(crate::simd::Level::Avx2, run);
        let lock = crate::simd::level_lock();
        let (y, dx, dw) = run();
        drop(lock);
        for (name, a, b) in [("forward", &y, &ya), ("dx", &dx, &dxa), ("dw", &dw, &dwa)] {
            assert_eq!(max_abs_diff(a, b).unwrap(), 0.0, "{label}: AVX2 {name}");
        }
        // The portable row kernels (what a CPU without AVX2 runs) against the dispatched ones.
        let (yp, dxp, dwp) = crate::simd::with_level(crate::simd::Level::Portable, run);
        for (name, a, b) in [("forward", &y, &yp), ("dx", &dx, &dxp), ("dw", &dw, &dwp)] {
            assert!(rel_err(a, b).unwrap() < 1e-5, "{label}: portable {name}");
        }

        // Forward against candle's grouped conv on the explicitly padded input.
        let xp = x
            .pad_with_zeros(2, padding.top, padding.bottom)
            .unwrap()
            .pad_with_zeros(3, padding.left, padding.right)
            .unwrap();
        let candle_y = xp.conv2d(&weight, 0, stride, dilation, c).unwrap();
        assert_eq!(y.dims(), candle_y.dims(), "{label}");
        assert!(rel_err(&y, &candle_y).unwrap() < 1e-5, "{label}: forward");

        // Gradients against the device-independent tap composition (different code, same maths).
        let (oh, ow) = (y.dim(2).unwrap(), y.dim(3).unwrap());
        let (y2, dx2, dw2) = dw_with_grads(
            |x, w| conv::depthwise_by_taps(x, w, stride, padding, dilation, oh, ow),
            &x,
            &weight,
            7,
        );
        assert!(rel_err(&y, &y2).unwrap() < 1e-5, "{label}: forward vs taps");
        assert!(
            rel_err(&dx, &dx2).unwrap() < 1e-5,
            "{label}: input gradient"
        );
        assert!(
            rel_err(&dw, &dw2).unwrap() < 1e-5,
            "{label}: weight gradient"
        );
    }
}

#[test]
fn strided_conv_backward_works_on_photo_sized_inputs() {
    // 375x500 at stride 2: H and W leave different remainders, where candle's own backward fails.
    let x = Var::from_tensor(&seeded(&[1, 3, 375, 500], 5)).unwrap();
    let w = Var::from_tensor(&seeded(&[4, 3, 3, 3], 6)).unwrap();
    let y = conv2d(
        x.as_tensor(),
        w.as_tensor(),
        None,
        2,
        Padding::same(1),
        1,
        1,
    )
    .unwrap();
    assert_eq!(y.dims(), &[1, 4, 188, 250]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), &[1, 3, 375, 500]);
    assert_eq!(grads.get(w.as_tensor()).unwrap().dims(), &[4, 3, 3, 3]);
}

#[test]
fn pointwise_conv_matmul_matches_candle_conv() {
    let x = seeded(&[2, 8, 5, 7], 8);
    let w = seeded(&[6, 8, 1, 1], 9);
    let b = seeded(&[6], 10);
    let ours = conv2d(&x, &w, Some(&b), 1, Padding::default(), 1, 1).unwrap();
    let candle = x
        .conv2d(&w, 0, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap())
        .unwrap();
    assert!(rel_err(&ours, &candle).unwrap() < 1e-5);
}

/// A constant 1x1 weight with an input that needs a gradient (an attack in eval mode) takes the
/// input-gradient-only op: same output and input gradient as candle's conv, and no weight gradient.
#[test]
fn pointwise_conv_with_constant_weight_gives_the_input_gradient_only() {
    let x = Var::from_tensor(&seeded(&[3, 8, 5, 7], 11)).unwrap();
    let w = seeded(&[6, 8, 1, 1], 12);
    let b = seeded(&[6], 13);
    let mix = seeded(&[3, 6, 5, 7], 14);
    let ours = conv2d(x.as_tensor(), &w, Some(&b), 1, Padding::default(), 1, 1).unwrap();
    assert!(ours.track_op(), "the output is in the graph");
    let candle = x
        .as_tensor()
        .conv2d(&w, 0, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap())
        .unwrap();
    assert!(rel_err(&ours, &candle).unwrap() < 1e-5);
    let grad_of = |y: &Tensor, weight_grad_expected: bool| {
        let grads = (y * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        // candle's conv backward computes (and stores) the constant weight's gradient too.
        assert_eq!(grads.get(&w).is_some(), weight_grad_expected);
        grads.get(x.as_tensor()).unwrap().clone()
    };
    let (dx, dx_candle) = (grad_of(&ours, false), grad_of(&candle, true));
    assert_eq!(dx.dims(), [3, 8, 5, 7]);
    assert!(rel_err(&dx, &dx_candle).unwrap() < 1e-5);
}

/// The depthwise kernel with a constant weight (an attack in eval mode) computes the input gradient
/// only, equal to the one it computes alongside the weight gradient, and gives the weight none.
#[test]
fn depthwise_conv_with_constant_weight_gives_the_input_gradient_only() {
    // Two runs compared bit for bit: no other test may cap the kernels' level in between.
    let _level = crate::simd::level_lock();
    for (stride, dilation, bias) in [(1, 1, false), (2, 1, true), (1, 2, false)] {
        let x = seeded(&[2, 5, 11, 9], 21);
        let w = seeded(&[5, 1, 3, 3], 22);
        let b = bias.then(|| seeded(&[5], 23));
        let pad = Padding::same(dilation);
        let run =
            |x: &Tensor, w: &Tensor| depthwise_conv2d(x, w, b.as_ref(), stride, pad, dilation);
        let (y_ref, dx_ref, _) = dw_with_grads(run, &x, &w, 24);
        let xv = Var::from_tensor(&x).unwrap();
        let y = run(xv.as_tensor(), &w).unwrap();
        let g = seeded(y.dims(), 24);
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(&w).is_none(),
            "stride {stride}: the constant weight got a gradient"
        );
        if let Some(b) = &b {
            assert!(
                grads.get(b).is_none(),
                "stride {stride}: the constant bias got a gradient"
            );
        }
        assert_eq!(max_abs_diff(&y, &y_ref).unwrap(), 0.0);
        let dx = grads.get(xv.as_tensor()).unwrap();
        assert_eq!(
            max_abs_diff(dx, &dx_ref).unwrap(),
            0.0,
            "stride {stride}, dilation {dilation}"
        );
    }
}

#[test]
fn tf_same_padding_matches_tensorflow() {
    // 224 at stride 2 with a 3x3 kernel: TF pads 0 before and 1 after.
    assert_eq!(
        tf_same_padding(224, 224, 3, 2, 1),
        Padding {
            top: 0,
            bottom: 1,
            left: 0,
            right: 1
        }
    );
    assert_eq!(tf_same_padding(7, 7, 3, 1, 1), Padding::same(1));
    assert_eq!(tf_same_padding(33, 33, 3, 1, 2), Padding::same(2));
    assert_eq!(
        tf_same_padding(112, 112, 5, 2, 1),
        Padding {
            top: 1,
            bottom: 2,
            left: 1,
            right: 2
        }
    );
}

#[test]
fn relu6_clamps_and_gates_the_gradient() {
    let x = Var::new(&[-1f32, 0.0, 3.0, 6.0, 7.0], &Device::Cpu).unwrap();
    let y = relu6(x.as_tensor()).unwrap();
    assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0.0, 0.0, 3.0, 6.0, 6.0]);
    let g = y
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(g, vec![0.0, 0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn cpu_bilinear_kernel_matches_the_matmul_path() {
    for (seed, &(h, w, oh, ow, align)) in [
        (7, 9, 13, 20, false),
        (7, 9, 4, 5, false),
        (65, 65, 513, 513, true),
        (5, 8, 1, 3, true),
        (6, 6, 17, 2, false),
    ]
    .iter()
    .enumerate()
    {
        let x = seeded(&[2, 3, h, w], 30 + seed as u64);
        let fwd_bwd = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let xv = Var::from_tensor(&x).unwrap();
            let y = f(xv.as_tensor()).unwrap();
            let g = seeded(y.dims(), 40 + seed as u64);
            let dx = (&y * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(xv.as_tensor())
                .unwrap()
                .clone();
            (y, dx)
        };
        let (y1, dx1) = fwd_bwd(&|x| resize_bilinear(x, oh, ow, align));
        let (y2, dx2) = fwd_bwd(&|x| resize::bilinear_by_matmul(x, oh, ow, align));
        let label = format!("{h}x{w} -> {oh}x{ow} align_corners={align}");
        assert!(rel_err(&y1, &y2).unwrap() < 1e-5, "{label}: forward");
        assert!(rel_err(&dx1, &dx2).unwrap() < 1e-5, "{label}: gradient");
    }
}

#[test]
fn cpu_im2col_conv_matches_candle_conv() {
    // (n, c_in, c_out, h, w, k, stride, dilation, padding)
    let cases = [
        (2, 5, 8, 9, 10, 3, 2, 1, Padding::same(1)),
        (1, 4, 6, 47, 63, 3, 2, 1, tf_same_padding(47, 63, 3, 2, 1)),
        (2, 6, 4, 17, 15, 3, 1, 6, Padding::same(6)),
        (
            1,
            3,
            5,
            20,
            21,
            5,
            3,
            1,
            Padding {
                top: 1,
                bottom: 2,
                left: 0,
                right: 2,
            },
        ),
        (2, 8, 3, 7, 7, 1, 2, 1, Padding::same(0)),
    ];
    for (seed, &(n, ci, co, h, w, k, stride, dilation, padding)) in cases.iter().enumerate() {
        let label = format!("{n}x{ci}x{h}x{w} -> {co} k{k} s{stride} d{dilation} {padding:?}");
        let x = seeded(&[n, ci, h, w], 50 + seed as u64);
        let weight = seeded(&[co, ci, k, k], 60 + seed as u64);
        let (y1, dx1, dw1) = dw_with_grads(
            |x, w| conv2d(x, w, None, stride, padding, dilation, 1),
            &x,
            &weight,
            70,
        );
        let (oh, ow) = (y1.dim(2).unwrap(), y1.dim(3).unwrap());
        let (y2, dx2, dw2) = dw_with_grads(
            |x, w| conv::conv2d_by_candle(x, w, stride, padding, dilation, 1, oh, ow),
            &x,
            &weight,
            70,
        );
        assert!(rel_err(&y1, &y2).unwrap() < 1e-5, "{label}: forward");
        assert!(
            rel_err(&dx1, &dx2).unwrap() < 1e-5,
            "{label}: input gradient"
        );
        assert!(
            rel_err(&dw1, &dw2).unwrap() < 1e-5,
            "{label}: weight gradient"
        );
    }
}

#[test]
fn im2col_conv_in_batch_chunks_matches_one_pass() {
    let x = seeded(&[5, 3, 11, 9], 80);
    let weight = seeded(&[4, 3, 3, 3], 81);
    let p = im2col::Im2ColParams {
        n: 5,
        c: 3,
        h: 11,
        w: 9,
        kh: 3,
        kw: 3,
        stride: 2,
        dilation: 1,
        pad_top: 1,
        pad_left: 0,
        oh: 6,
        ow: 4,
    };
    let per_image = p.cols_len() / 5;
    // Inference (constants) runs in chunks of images under the cap; training (variables) one image
    // at a time whatever the cap. Both agree with the single pass.
    let y = conv::im2col_conv(&x, &weight, p, usize::MAX)
        .unwrap()
        .unwrap();
    // Two images per chunk: chunks of 2, 2 and 1.
    let y2 = conv::im2col_conv(&x, &weight, p, 2 * per_image + 1)
        .unwrap()
        .unwrap();
    assert!(max_abs_diff(&y, &y2).unwrap() < 1e-6);
    let (y3, dx, dw) = dw_with_grads(
        |x, w| Ok(conv::im2col_conv(x, w, p, usize::MAX)?.unwrap()),
        &x,
        &weight,
        82,
    );
    let (y4, dx2, dw2) = dw_with_grads(
        |x, w| Ok(conv::im2col_conv(x, w, p, 2 * per_image + 1)?.unwrap()),
        &x,
        &weight,
        82,
    );
    assert!(max_abs_diff(&y, &y3).unwrap() < 1e-5);
    assert!(max_abs_diff(&y3, &y4).unwrap() < 1e-6);
    assert!(max_abs_diff(&dx, &dx2).unwrap() < 1e-6);
    assert!(rel_err(&dw, &dw2).unwrap() < 1e-6);
    assert!(conv::im2col_conv(&x, &weight, p, per_image - 1)
        .unwrap()
        .is_none());
}

/// The one-pass plane writer initialises every value whatever its iterator yields: a short iterator
/// leaves zeros, a long one is cut at the plane; appending keeps what the buffer held.
#[test]
fn planes_from_iterators_are_fully_initialised() {
    let mut plane = [std::mem::MaybeUninit::<f32>::uninit(); 5];
    assert_eq!(
        init_plane_from(&mut plane, [1.0, 2.0].into_iter()),
        [1.0, 2.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(
        init_plane_from(&mut plane, (0..9).map(|v| v as f32)),
        [0.0, 1.0, 2.0, 3.0, 4.0]
    );
    let mut out = vec![-1.0];
    // Planes of 3 with the last one short, and one plane yielding fewer values than it holds.
    append_planes_from(&mut out, 8, 3, 1, |i| {
        (0..if i == 1 { 1 } else { 3 }).map(move |k| (10 * i + k) as f32)
    });
    assert_eq!(out, [-1.0, 0.0, 1.0, 2.0, 10.0, 0.0, 0.0, 20.0, 21.0]);
}

/// The 1x1 convolution with a trainable weight (one weight-gradient buffer) against candle's batched
/// matmul: output, input gradient and weight gradient.
#[test]
fn pointwise_conv_with_a_variable_weight_matches_the_batched_matmul() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, (3, 5, 4, 6), &dev)?;
    let w = Var::randn(0f32, 0.5, (7, 5, 1, 1), &dev)?;
    let g = Tensor::randn(0f32, 1.0, (3, 7, 4, 6), &dev)?;
    let y = conv2d(
        x.as_tensor(),
        w.as_tensor(),
        None,
        1,
        Padding::default(),
        1,
        1,
    )?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    let reference = w
        .as_tensor()
        .reshape((7, 5))?
        .broadcast_left(3)?
        .matmul(&x.as_tensor().reshape((3, 5, 24))?)?
        .reshape((3, 7, 4, 6))?;
    let ref_grads = (&reference * &g)?.sum_all()?.backward()?;
    for (a, b, what) in [
        (&y, &reference, "output"),
        (
            grads.get(x.as_tensor()).unwrap(),
            ref_grads.get(x.as_tensor()).unwrap(),
            "input gradient",
        ),
        (
            grads.get(w.as_tensor()).unwrap(),
            ref_grads.get(w.as_tensor()).unwrap(),
            "weight gradient",
        ),
    ] {
        let err = crate::testing::max_abs_diff(a, &b.reshape(a.dims())?)?;
        assert!(err < 1e-4, "{what}: max |diff| {err}");
    }
    Ok(())
}

#[test]
fn adaptive_avg_pool_matches_pytorch_up_and_down() -> Result<()> {
    // F.adaptive_avg_pool2d(arange(60).reshape(1, 2, 5, 6), (7, 4)) and the gradient of
    // sum(y * arange(56).reshape(1, 2, 7, 4)), from PyTorch 2.15.
    let x = Var::from_tensor(&Tensor::arange(0f32, 60., &Device::Cpu)?.reshape((1, 2, 5, 6))?)?;
    let y = adaptive_avg_pool2d(x.as_tensor(), 7, 4)?;
    let expected_y = [
        0.5f32, 1.5, 3.5, 4.5, 3.5, 4.5, 6.5, 7.5, 9.5, 10.5, 12.5, 13.5, 12.5, 13.5, 15.5, 16.5,
        15.5, 16.5, 18.5, 19.5, 21.5, 22.5, 24.5, 25.5, 24.5, 25.5, 27.5, 28.5, 30.5, 31.5, 33.5,
        34.5, 33.5, 34.5, 36.5, 37.5, 39.5, 40.5, 42.5, 43.5, 42.5, 43.5, 45.5, 46.5, 45.5, 46.5,
        48.5, 49.5, 51.5, 52.5, 54.5, 55.5, 54.5, 55.5, 57.5, 58.5,
    ];
    let got: Vec<f32> = y.flatten_all()?.to_vec1()?;
    assert!(
        got.iter()
            .zip(expected_y)
            .all(|(a, b)| (a - b).abs() < 1e-5),
        "{got:?}"
    );
    let weights = Tensor::arange(0f32, 56., &Device::Cpu)?.reshape((1, 2, 7, 4))?;
    let grads = (y * weights)?.sum_all()?.backward()?;
    let expected_grad = [
        1.0f32, 2.75, 1.75, 2.5, 5.75, 3.25, 3.0, 6.5, 3.5, 4.0, 8.5, 4.5, 12.0, 25.0, 13.0, 14.0,
        29.0, 15.0, 9.0, 18.5, 9.5, 10.0, 20.5, 10.5, 17.0, 34.75, 17.75, 18.5, 37.75, 19.25, 22.0,
        44.75, 22.75, 23.5, 47.75, 24.25, 17.0, 34.5, 17.5, 18.0, 36.5, 18.5, 40.0, 81.0, 41.0,
        42.0, 85.0, 43.0, 23.0, 46.5, 23.5, 24.0, 48.5, 24.5, 38.0, 76.75, 38.75, 39.5, 79.75,
        40.25,
    ];
    let grad: Vec<f32> = grads
        .get(&x)
        .expect("gradient of x")
        .flatten_all()?
        .to_vec1()?;
    assert!(
        grad.iter()
            .zip(expected_grad)
            .all(|(a, b)| (a - b).abs() < 1e-4),
        "{grad:?}"
    );
    // Same size: the input itself; empty outputs are refused.
    assert_eq!(
        adaptive_avg_pool2d(x.as_tensor(), 5, 6)?.dims(),
        [1, 2, 5, 6]
    );
    assert!(adaptive_avg_pool2d(x.as_tensor(), 0, 6).is_err());
    Ok(())
}

/// Inference (constant input and weight) runs the batch as one gemm over images side by side; it
/// gives the values of the per-image path the graph takes, chunked or not, strided, dilated, padded.
#[test]
fn inference_conv_as_one_gemm_matches_the_per_image_path() -> Result<()> {
    for (n, stride, dilation, top, left) in [(5, 2, 1, 1, 0), (3, 1, 2, 2, 2), (1, 1, 1, 0, 1)] {
        let (h, w, k) = (11, 9, 3);
        let x = seeded(&[n, 3, h, w], 90);
        let weight = seeded(&[4, 3, k, k], 91);
        let span = dilation * (k - 1) + 1;
        let (oh, ow) = (
            (h + 2 * top - span) / stride + 1,
            (w + 2 * left - span) / stride + 1,
        );
        let p = im2col::Im2ColParams {
            n,
            c: 3,
            h,
            w,
            kh: k,
            kw: k,
            stride,
            dilation,
            pad_top: top,
            pad_left: left,
            oh,
            ow,
        };
        let per_image = p.cols_len() / n;
        let graph = Var::from_tensor(&x)?;
        let per_image_path = conv::im2col_conv(graph.as_tensor(), &weight, p, usize::MAX)?.unwrap();
        for max_elems in [usize::MAX, 2 * per_image] {
            let wide = conv::im2col_conv(&x, &weight, p, max_elems)?.unwrap();
            assert!(!wide.track_op());
            assert!(
                max_abs_diff(&wide, &per_image_path)? < 1e-5,
                "n {n} s{stride} d{dilation} chunk {max_elems}"
            );
        }
    }
    Ok(())
}
