//! Max and average pooling with any kernel, stride and padding, differentiable on every device.
//!
//! candle's pools have a gradient only when kernel == stride. Both pools here are separable (a 2-D window
//! max/sum is a max/sum along H followed by one along W), so each is built from `2*kernel` strided
//! slices combined with `maximum`/`add`, all differentiable primitives.
use candle_core::Tensor;

use super::{dims4, pad_with_value, take_strided};
use crate::error::{Result, VocError};

fn pool_out_size(
    op: &str,
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        return Err(VocError::BadArgument(format!(
            "{op}: kernel and stride must be positive"
        )));
    }
    if 2 * padding > kernel {
        return Err(VocError::BadArgument(format!(
            "{op}: padding {padding} must be at most half the kernel {kernel} (as in PyTorch)"
        )));
    }
    if size + 2 * padding < kernel {
        return Err(VocError::BadArgument(format!(
            "{op}: input size {size} with padding {padding} is smaller than the kernel {kernel}"
        )));
    }
    Ok((size + 2 * padding - kernel) / stride + 1)
}

fn window_reduce(
    x: &Tensor,
    dim: usize,
    kernel: usize,
    stride: usize,
    out: usize,
    combine: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    let mut acc = take_strided(x, dim, 0, out, stride)?;
    for k in 1..kernel {
        acc = combine(&acc, &take_strided(x, dim, k, out, stride)?)?;
    }
    Ok(acc)
}

/// Max pooling, PyTorch `F.max_pool2d(x, kernel, stride, padding)` (floor mode, implicit -inf padding).
///
/// The gradient goes to the window's maximum. When several inputs tie for the maximum the gradient is
/// shared among them (candle's `maximum`), where PyTorch gives it all to the first; the sum is the same.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = dims4(x, "max_pool2d")?;
    let oh = pool_out_size("max_pool2d", h, kernel, stride, padding)?;
    let ow = pool_out_size("max_pool2d", w, kernel, stride, padding)?;
    let xp = pad_with_value(x, 2, padding, padding, f64::NEG_INFINITY)?;
    let xp = pad_with_value(&xp, 3, padding, padding, f64::NEG_INFINITY)?;
    let rows = window_reduce(&xp, 2, kernel, stride, oh, |a, b| a.maximum(b))?;
    window_reduce(&rows, 3, kernel, stride, ow, |a, b| a.maximum(b))
}

/// For each output position of one axis: how many window positions fall inside the unpadded input.
fn valid_counts(size: usize, kernel: usize, stride: usize, padding: usize, out: usize) -> Vec<f32> {
    (0..out)
        .map(|o| {
            let start = (o * stride) as isize - padding as isize;
            let end = (start + kernel as isize).min(size as isize);
            (end - start.max(0)) as f32
        })
        .collect()
}

/// Average pooling, PyTorch `F.avg_pool2d(x, kernel, stride, padding, count_include_pad=False)`:
/// padded positions count neither in the sum nor in the divisor.
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = dims4(x, "avg_pool2d")?;
    let oh = pool_out_size("avg_pool2d", h, kernel, stride, padding)?;
    let ow = pool_out_size("avg_pool2d", w, kernel, stride, padding)?;
    let xp = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let rows = window_reduce(&xp, 2, kernel, stride, oh, |a, b| a.add(b))?;
    let sums = window_reduce(&rows, 3, kernel, stride, ow, |a, b| a.add(b))?;
    let ch = valid_counts(h, kernel, stride, padding, oh);
    let cw = valid_counts(w, kernel, stride, padding, ow);
    let inv: Vec<f32> = ch
        .iter()
        .flat_map(|a| cw.iter().map(move |b| 1.0 / (a * b)))
        .collect();
    let inv = Tensor::from_vec(inv, (1, 1, oh, ow), x.device())?.to_dtype(x.dtype())?;
    Ok(sums.broadcast_mul(&inv)?)
}

/// The `out x size` matrix whose row `o` averages PyTorch's adaptive-pooling bin `o`:
/// `[floor(o * size / out), ceil((o + 1) * size / out))`.
fn adaptive_bins(size: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * size];
    for o in 0..out {
        let start = o * size / out;
        let end = ((o + 1) * size).div_ceil(out);
        let share = 1.0 / (end - start) as f32;
        m[o * size + start..o * size + end].fill(share);
    }
    m
}

/// Adaptive average pooling, PyTorch `F.adaptive_avg_pool2d(x, (out_h, out_w))`: output cell `(i, j)`
/// averages the input rows `[floor(i H / out_h), ceil((i + 1) H / out_h))` and the same columns, so an
/// output larger than the input repeats (and blends) input cells, as timm's VGG head does below 7x7.
///
/// Two small matrix products (`A_h · X · A_wᵀ`), differentiable on every device.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu)?;
/// let y = voc_tensor::ops::adaptive_avg_pool2d(&x, 3, 1)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [1.5, 2.5, 3.5]);
/// # Ok::<(), voc_tensor::VocError>(())
/// ```
pub fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, c, h, w) = dims4(x, "adaptive_avg_pool2d")?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(VocError::BadArgument(format!(
            "adaptive_avg_pool2d: cannot pool {h}x{w} to {out_h}x{out_w}"
        )));
    }
    if (out_h, out_w) == (h, w) {
        return Ok(x.clone());
    }
    let device = x.device();
    let a_h = Tensor::from_vec(adaptive_bins(h, out_h), (out_h, h), device)?.to_dtype(x.dtype())?;
    let a_w_t = Tensor::from_vec(adaptive_bins(w, out_w), (out_w, w), device)?
        .to_dtype(x.dtype())?
        .t()?;
    // Columns first: (N C H) x W · W x out_w, then rows on the transposed planes.
    let cols = x.reshape((n * c * h, w))?.matmul(&a_w_t)?;
    let planes = cols
        .reshape((n * c, h, out_w))?
        .transpose(1, 2)?
        .contiguous()?;
    let rows = planes
        .reshape((n * c * out_w, h))?
        .matmul(&a_h.t()?)?
        .reshape((n * c, out_w, out_h))?
        .transpose(1, 2)?
        .contiguous()?;
    Ok(rows.reshape((n, c, out_h, out_w))?)
}
