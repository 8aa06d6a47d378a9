//! Bilinear and nearest resizing with PyTorch's `F.interpolate` index arithmetic.
use candle_core::Tensor;

use super::dims4;
use crate::error::{Result, VocError};

/// For each output position along one axis: the two source indices and their weights, exactly as
/// PyTorch's `upsample_bilinear2d` computes them (in f64, so the f32 result rounds once).
pub(crate) fn bilinear_taps(
    in_size: usize,
    out_size: usize,
    align_corners: bool,
) -> Vec<(usize, usize, f64, f64)> {
    let scale = if align_corners {
        if out_size > 1 {
            (in_size as f64 - 1.0) / (out_size as f64 - 1.0)
        } else {
            0.0
        }
    } else {
        in_size as f64 / out_size as f64
    };
    (0..out_size)
        .map(|dst| {
            let src = if align_corners {
                dst as f64 * scale
            } else {
                ((dst as f64 + 0.5) * scale - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(in_size - 1);
            let i1 = if i0 + 1 < in_size { i0 + 1 } else { i0 };
            let l1 = src - i0 as f64;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// The `out x in` interpolation matrix of one axis.
fn bilinear_matrix(in_size: usize, out_size: usize, align_corners: bool) -> Vec<f32> {
    let mut m = vec![0f64; out_size * in_size];
    for (dst, (i0, i1, l0, l1)) in bilinear_taps(in_size, out_size, align_corners)
        .into_iter()
        .enumerate()
    {
        m[dst * in_size + i0] += l0;
        m[dst * in_size + i1] += l1;
    }
    m.into_iter().map(|v| v as f32).collect()
}

/// Bilinear resize of an NCHW tensor to `out_h x out_w`, up or down, with PyTorch's
/// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=...)` semantics (no antialiasing).
///
/// candle's `upsample_bilinear2d` has no gradient; this one is two interpolation-matrix matmuls,
/// `A_h · X · A_wᵀ`, whose gradients are matmuls too, on any device.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = dims4(x, "resize_bilinear")?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(VocError::BadArgument(format!(
            "resize_bilinear: cannot resize {h}x{w} to {out_h}x{out_w}: sizes must be positive"
        )));
    }
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let a_w_t = Tensor::from_vec(bilinear_matrix(w, out_w, align_corners), (out_w, w), dev)?
        .to_dtype(x.dtype())?
        .t()?;
    let a_h = Tensor::from_vec(bilinear_matrix(h, out_h, align_corners), (out_h, h), dev)?
        .to_dtype(x.dtype())?;
    let rows = x.reshape((n * c * h, w))?.matmul(&a_w_t)?; // (N*C*H, out_w)
    let y = a_h
        .broadcast_left(n * c)?
        .matmul(&rows.reshape((n * c, h, out_w))?)?;
    Ok(y.reshape((n, c, out_h, out_w))?)
}

/// Source index of PyTorch's `mode="nearest"` (the legacy, asymmetric one): `floor(dst * in/out)` in f32.
pub(crate) fn nearest_indices(in_size: usize, out_size: usize) -> Vec<u32> {
    (0..out_size)
        .map(|dst| {
            if out_size == in_size {
                dst
            } else if out_size == 2 * in_size {
                dst >> 1
            } else {
                let scale = in_size as f32 / out_size as f32;
                ((dst as f32 * scale).floor() as usize).min(in_size - 1)
            }
        })
        .map(|i| i as u32)
        .collect()
}

/// Nearest resize of the last two axes, PyTorch `F.interpolate(x, size, mode="nearest")`.
///
/// Works on any dtype and on `N,C,H,W`, `N,H,W` or `H,W` tensors, so the same call resizes images and
/// `u8`/`u32` label masks (labels are picked, never blended). Differentiable for float inputs.
pub fn resize_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 2 {
        return Err(VocError::BadArgument(format!(
            "resize_nearest: expected a tensor with at least 2 dims (.., H, W), got shape {:?}",
            x.dims()
        )));
    }
    let (h, w) = (x.dims()[rank - 2], x.dims()[rank - 1]);
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(VocError::BadArgument(format!(
            "resize_nearest: cannot resize {h}x{w} to {out_h}x{out_w}: sizes must be positive"
        )));
    }
    let dev = x.device();
    let mut y = x.clone();
    if out_h != h {
        let idx = Tensor::from_vec(nearest_indices(h, out_h), out_h, dev)?;
        y = y.index_select(&idx, rank - 2)?;
    }
    if out_w != w {
        let idx = Tensor::from_vec(nearest_indices(w, out_w), out_w, dev)?;
        y = y.index_select(&idx, rank - 1)?;
    }
    Ok(y)
}
