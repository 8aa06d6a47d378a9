//! The NHWC layers against the NCHW inference path (the same sums in the same order: equal values),
//! at every instruction-set level.
use candle_core::{Device, IndexOp, Tensor};

use super::*;
use crate::fused::{conv2d_bias_act, conv2d_bias_residual_act};
use crate::ops::tf_same_padding;

/// A deterministic pseudo-random tensor in [-1, 1).
fn values(shape: &[usize], seed: u64) -> Tensor {
    let len: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Every value equal (f32 `==`: the sign of a zero sum may differ, its value not).
fn assert_same(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(a == b, "{what}: value {i} is {a}, the NCHW path's {b}");
    }
}

#[test]
fn depthwise_matches_the_nchw_path() {
    // (n, c, h, w, kernel, stride, dilation, tf_same)
    let cases = [
        (1, 16, 9, 9, 3, 1, 1, true),
        (2, 32, 14, 14, 3, 2, 1, true),
        (1, 24, 7, 7, 3, 1, 1, true),
        (1, 7, 5, 11, 3, 2, 1, false),
        (1, 40, 17, 13, 3, 1, 2, true),
        (1, 48, 33, 33, 3, 1, 4, true),
        (1, 20, 12, 12, 5, 2, 1, true),
        (1, 16, 1, 1, 3, 1, 1, true),
        (1, 9, 2, 3, 3, 2, 1, false),
        (1, 96, 28, 28, 3, 2, 1, true),
        (1, 20, 6, 11, 3, 1, 1, false),
    ];
    for (seed, &(n, c, h, w, k, stride, dilation, tf_same)) in cases.iter().enumerate() {
        let seed = seed as u64;
        let x = values(&[n, c, h, w], seed + 1);
        let weight = values(&[c, 1, k, k], seed + 2);
        let shift = values(&[c], seed + 3);
        let padding = if tf_same {
            tf_same_padding(h, w, k, stride, dilation)
        } else {
            Padding::same(dilation * (k - 1) / 2)
        };
        for act in [Act::Relu6, Act::Identity, Act::Relu] {
            let what = format!("{n}x{c}x{h}x{w} k{k} s{stride} d{dilation} {padding:?} {act:?}");
            crate::simd::for_each_level(|level| {
                let want = conv2d_bias_act(&x, &weight, &shift, stride, padding, dilation, c, act)
                    .unwrap();
                let layer = DepthwiseConv::new(&weight, &shift, act).unwrap();
                let got = layer
                    .forward(&NhwcMaps::from_nchw(&x).unwrap(), stride, dilation, padding)
                    .unwrap()
                    .to_nchw()
                    .unwrap();
                assert_same(&got, &want, &format!("{what} {level:?}"));
            });
        }
    }
}

#[test]
fn pointwise_matches_the_nchw_path() {
    // (n, c_in, c_out, h, w)
    let cases = [
        (1, 16, 96, 7, 7),
        (2, 24, 144, 5, 6),
        (1, 160, 24, 3, 3),
        (3, 7, 13, 4, 5),
        (1, 960, 320, 2, 2),
        (1, 32, 16, 20, 20),
        (2, 96, 72, 14, 13),
    ];
    for (seed, &(n, c_in, c_out, h, w)) in cases.iter().enumerate() {
        let seed = seed as u64 + 10;
        let x = values(&[n, c_in, h, w], seed + 1);
        let weight = values(&[c_out, c_in, 1, 1], seed + 2);
        let shift = values(&[c_out], seed + 3);
        let residual = values(&[n, c_out, h, w], seed + 4);
        let nhwc_x = NhwcMaps::from_nchw(&x).unwrap();
        let nhwc_residual = NhwcMaps::from_nchw(&residual).unwrap();
        for act in [Act::Relu6, Act::Identity] {
            let what = format!("{n}x{c_in}->{c_out}x{h}x{w} {act:?}");
            crate::simd::for_each_level(|level| {
                let layer = PointwiseConv::new(&weight, &shift, act).unwrap();
                let want =
                    conv2d_bias_act(&x, &weight, &shift, 1, Padding::default(), 1, 1, act).unwrap();
                let got = layer.forward(&nhwc_x, None).unwrap().to_nchw().unwrap();
                assert_same(&got, &want, &format!("{what} {level:?}"));
                let want = conv2d_bias_residual_act(
                    &x,
                    &weight,
                    Some(&shift),
                    &residual,
                    1,
                    Padding::default(),
                    1,
                    1,
                    act,
                )
                .unwrap();
                let got = layer
                    .forward(&nhwc_x, Some(&nhwc_residual))
                    .unwrap()
                    .to_nchw()
                    .unwrap();
                assert_same(&got, &want, &format!("{what} + residual {level:?}"));
            });
        }
    }
}

#[test]
fn layout_round_trips_and_bad_shapes_are_errors() {
    let x = values(&[2, 5, 3, 4], 7);
    let maps = NhwcMaps::from_nchw(&x).unwrap();
    assert_eq!(maps.dims(), (2, 3, 4, 5));
    // Channels innermost: pixel (0, 0, 1) holds channel 0..5 of column 1.
    let col1 = x.i((0, .., 0, 1)).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(&maps.as_slice()[5..10], &col1[..]);
    assert_same(&maps.to_nchw().unwrap(), &x, "round trip");

    assert!(NhwcMaps::new(vec![0.0; 5], (1, 2, 2, 2)).is_err());
    let w = values(&[8, 5, 1, 1], 1);
    let shift = values(&[8], 2);
    let pw = PointwiseConv::new(&w, &shift, Act::Identity).unwrap();
    assert_eq!(pw.channels(), (5, 8));
    let err = pw.forward(
        &NhwcMaps::from_nchw(&values(&[1, 4, 2, 2], 3)).unwrap(),
        None,
    );
    assert!(err.unwrap_err().to_string().contains("4 channels"));
    let wrong_residual = NhwcMaps::from_nchw(&values(&[1, 7, 3, 4], 4)).unwrap();
    let err = pw.forward(&maps, Some(&wrong_residual));
    assert!(err.unwrap_err().to_string().contains("residual"));
    assert!(PointwiseConv::new(&values(&[8, 5, 3, 3], 5), &shift, Act::Identity).is_err());
    assert!(PointwiseConv::new(&w, &values(&[7], 6), Act::Identity).is_err());

    let dw = DepthwiseConv::new(&values(&[5, 1, 3, 3], 8), &values(&[5], 9), Act::Relu).unwrap();
    let tiny = NhwcMaps::from_nchw(&values(&[1, 5, 1, 1], 10)).unwrap();
    let err = dw.forward(&tiny, 1, 1, Padding::default());
    assert!(err.unwrap_err().to_string().contains("smaller than"));
    assert!(DepthwiseConv::new(&values(&[5, 2, 3, 3], 8), &values(&[5], 9), Act::Relu).is_err());
}

/// The dense convolution over patches against the NCHW path (im2col and a gemm library, which sums
/// in another order: equal to rounding), TF "SAME" and symmetric padding, strides 1 and 2.
#[test]
fn dense_conv_matches_the_nchw_path() {
    // (n, c_in, c_out, h, w, kernel, stride, dilation, tf_same)
    let cases = [
        (1, 3, 32, 17, 15, 3, 2, 1, true),
        (2, 3, 16, 8, 8, 3, 1, 1, false),
        (1, 5, 24, 9, 12, 3, 2, 2, true),
        (1, 2, 7, 6, 5, 1, 1, 1, false),
        // Wide enough for whole groups of pixels, 40 channels: a pair of vectors, then one masked.
        (1, 3, 40, 9, 41, 3, 1, 1, true),
        (1, 3, 32, 12, 60, 3, 2, 1, true),
    ];
    for (seed, &(n, c_in, c_out, h, w, k, stride, dilation, tf_same)) in cases.iter().enumerate() {
        let seed = seed as u64 + 20;
        let x = values(&[n, c_in, h, w], seed + 1);
        let weight = values(&[c_out, c_in, k, k], seed + 2);
        let shift = values(&[c_out], seed + 3);
        let padding = if tf_same {
            tf_same_padding(h, w, k, stride, dilation)
        } else {
            Padding::same(dilation * (k - 1) / 2)
        };
        let what = format!("{n}x{c_in}x{h}x{w} -> {c_out} k{k} s{stride} d{dilation}");
        crate::simd::for_each_level(|level| {
            let want = conv2d_bias_act(
                &x,
                &weight,
                &shift,
                stride,
                padding,
                dilation,
                1,
                Act::Relu6,
            )
            .unwrap();
            let got = DenseConv::new(&weight, &shift, Act::Relu6)
                .unwrap()
                .forward_nchw(&x, stride, dilation, padding)
                .unwrap()
                .to_nchw()
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "{what}");
            let diff = crate::testing::max_abs_diff(&got, &want).unwrap();
            assert!(diff < 1e-5, "{what} {level:?}: differs by {diff}");
        });
    }
    let dense = DenseConv::new(&values(&[4, 3, 3, 3], 1), &values(&[4], 2), Act::Relu).unwrap();
    let err = dense.forward_nchw(&values(&[1, 2, 5, 5], 3), 1, 1, Padding::same(1));
    assert!(err.unwrap_err().to_string().contains("2 channels"));
    let err = dense.forward_nchw(&values(&[1, 3, 1, 1], 3), 1, 1, Padding::default());
    assert!(err.unwrap_err().to_string().contains("smaller than"));
}

/// The inverted-residual block row by row (maps large enough to be fused) against its layers one
/// after the other: the same values, with and without expansion and residual, strided and dilated,
/// one image (bands over the threads) and a batch (one band per image).
#[test]
fn fused_block_matches_its_layers() {
    // (n, c_in, expanded, c_out, h, w, stride, dilation, residual, expand)
    let cases = [
        (1, 16, 96, 16, 64, 56, 1, 1, true, true),
        (1, 16, 96, 24, 65, 63, 2, 1, false, true),
        (3, 24, 144, 24, 48, 48, 1, 2, true, true),
        (1, 32, 32, 16, 96, 96, 1, 1, false, false),
        (2, 8, 48, 8, 80, 80, 1, 4, true, true),
    ];
    for (seed, &(n, c_in, e, c_out, h, w, stride, dilation, residual, expand)) in
        cases.iter().enumerate()
    {
        let seed = seed as u64 + 40;
        let x = NhwcMaps::from_nchw(&values(&[n, c_in, h, w], seed)).unwrap();
        let block = InvertedResidual {
            expand: expand.then(|| {
                let weight = values(&[e, c_in, 1, 1], seed + 1);
                PointwiseConv::new(&weight, &values(&[e], seed + 2), Act::Relu6).unwrap()
            }),
            depthwise: DepthwiseConv::new(
                &values(&[e, 1, 3, 3], seed + 3),
                &values(&[e], seed + 4),
                Act::Relu6,
            )
            .unwrap(),
            project: PointwiseConv::new(
                &values(&[c_out, e, 1, 1], seed + 5),
                &values(&[c_out], seed + 6),
                Act::Identity,
            )
            .unwrap(),
        };
        let padding = tf_same_padding(h, w, 3, stride, dilation);
        let what = format!("{n}x{h}x{w} {c_in}->{e}->{c_out} s{stride} d{dilation}");
        assert!(block::worth_fusing(h, w, e), "{what}: would not be fused");
        crate::simd::for_each_level(|level| {
            let want = block
                .layer_by_layer(&x, stride, dilation, padding, residual)
                .unwrap();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool
                    .install(|| block.forward(&x, stride, dilation, padding, residual))
                    .unwrap();
                assert_eq!(got.dims(), want.dims(), "{what}");
                let same = got
                    .as_slice()
                    .iter()
                    .zip(want.as_slice())
                    .all(|(a, b)| a == b);
                assert!(
                    same,
                    "{what} {level:?} threads {threads}: fused values differ"
                );
            }
        });
    }
    let block = InvertedResidual {
        expand: None,
        depthwise: DepthwiseConv::new(&values(&[8, 1, 3, 3], 1), &values(&[8], 2), Act::Relu6)
            .unwrap(),
        project: PointwiseConv::new(&values(&[4, 8, 1, 1], 3), &values(&[4], 4), Act::Identity)
            .unwrap(),
    };
    let x = NhwcMaps::from_nchw(&values(&[1, 8, 5, 5], 5)).unwrap();
    let err = block.forward(&x, 1, 1, Padding::same(1), true).unwrap_err();
    assert!(err.to_string().contains("residual"), "{err}");
    let x = NhwcMaps::from_nchw(&values(&[1, 6, 5, 5], 5)).unwrap();
    let err = block
        .forward(&x, 1, 1, Padding::same(1), false)
        .unwrap_err();
    assert!(err.to_string().contains("6 channels"), "{err}");
}

#[test]
fn dense_conv_refuses_more_rows_than_its_kernel_holds() {
    let c_in = kernels::MAX_DENSE_ROWS / 3 + 1;
    let err = DenseConv::new(&values(&[4, c_in, 3, 3], 1), &values(&[4], 2), Act::Relu)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{c_in} input channels")), "{err}");
}

/// The pool gives candle's `mean_keepdim(3)` then `mean_keepdim(2)` of the NCHW maps, value for
/// value, for rows narrower than 32 pixels.
#[test]
fn mean_of_row_means_matches_candles_means() {
    for (seed, shape) in [
        [1, 1280, 7, 7],
        [2, 5, 3, 9],
        [1, 16, 1, 31],
        [3, 24, 30, 2],
    ]
    .into_iter()
    .enumerate()
    {
        let x = values(&shape, seed as u64 + 40);
        let want = x
            .mean_keepdim(3)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .flatten_from(1)
            .unwrap();
        let got = NhwcMaps::from_nchw(&x)
            .unwrap()
            .mean_of_row_means()
            .unwrap();
        assert_same(&got, &want, &format!("{shape:?}"));
    }
}

/// Depthwise and dense chunks split the rows evenly over the threads: equal chunks, as many per
/// thread, or one per thread.
#[test]
fn chunks_split_rows_evenly() {
    for threads in [1, 2, 3, 4] {
        for rows in 1..300 {
            for row_values in [1, 700, 6720, 1 << 15] {
                let chunk = kernels::chunk_rows(rows, row_values, threads);
                let chunks = rows.div_ceil(chunk);
                let even = rows.is_multiple_of(chunk) && chunks.is_multiple_of(threads);
                assert!(
                    chunk >= 1 && (even || chunks <= threads),
                    "{rows} rows of {row_values} on {threads} threads: chunks of {chunk}"
                );
            }
        }
    }
}
