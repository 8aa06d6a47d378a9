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
