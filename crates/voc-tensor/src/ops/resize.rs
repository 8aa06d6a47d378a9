//! Bilinear and nearest resizing with PyTorch's `F.interpolate` index arithmetic.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::{contiguous_f32, dims4, planes_from};
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
/// candle's `upsample_bilinear2d` has no gradient. On the CPU in f32 this runs a separable two-tap
/// kernel (and its transpose for the gradient); elsewhere it is two interpolation-matrix matmuls,
/// `A_h · X · A_wᵀ`, whose gradients are matmuls too, on any device.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = dims4(x, "resize_bilinear")?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(VocError::BadArgument(format!(
            "resize_bilinear: cannot resize {h}x{w} to {out_h}x{out_w}: sizes must be positive"
        )));
    }
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let plan = BilinearPlan::new(h, w, out_h, out_w, align_corners);
        return Ok(x
            .contiguous()?
            .apply_op1(BilinearFwd(std::sync::Arc::new(plan)))?);
    }
    bilinear_by_matmul(x, out_h, out_w, align_corners)
}

/// Device-independent bilinear resize as `A_h · X · A_wᵀ`.
pub(crate) fn bilinear_by_matmul(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = dims4(x, "resize_bilinear")?;
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

/// The taps of both axes in f32, shared by the CPU bilinear kernels.
#[derive(Debug, Clone)]
struct BilinearPlan {
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    rows: Vec<(usize, usize, f32, f32)>,
    cols: Vec<(usize, usize, f32, f32)>,
}

impl BilinearPlan {
    fn new(h: usize, w: usize, out_h: usize, out_w: usize, align_corners: bool) -> Self {
        let f32_taps = |taps: Vec<(usize, usize, f64, f64)>| {
            taps.into_iter()
                .map(|(a, b, la, lb)| (a, b, la as f32, lb as f32))
                .collect::<Vec<_>>()
        };
        Self {
            h,
            w,
            out_h,
            out_w,
            rows: f32_taps(bilinear_taps(h, out_h, align_corners)),
            cols: f32_taps(bilinear_taps(w, out_w, align_corners)),
        }
    }

    /// One plane: first along W (gathers, on the small input), then along H, where every output row is a
    /// blend of two contiguous rows and vectorises.
    fn forward_plane(&self, x: &[f32], tmp: &mut [f32], out: &mut [f32]) {
        for (row, t) in x.chunks_exact(self.w).zip(tmp.chunks_exact_mut(self.out_w)) {
            for (t, &(i0, i1, l0, l1)) in t.iter_mut().zip(&self.cols) {
                *t = l0 * row[i0] + l1 * row[i1];
            }
        }
        for (orow, &(i0, i1, l0, l1)) in out.chunks_exact_mut(self.out_w).zip(&self.rows) {
            let (r0, r1) = (
                &tmp[i0 * self.out_w..(i0 + 1) * self.out_w],
                &tmp[i1 * self.out_w..(i1 + 1) * self.out_w],
            );
            for ((o, a), b) in orow.iter_mut().zip(r0).zip(r1) {
                *o = l0 * a + l1 * b;
            }
        }
    }

    /// The transpose of [`Self::forward_plane`].
    fn backward_plane(&self, g: &[f32], tmp: &mut [f32], dx: &mut [f32]) {
        tmp.fill(0.0);
        for (grow, &(i0, i1, l0, l1)) in g.chunks_exact(self.out_w).zip(&self.rows) {
            for (t, gv) in tmp[i0 * self.out_w..(i0 + 1) * self.out_w]
                .iter_mut()
                .zip(grow)
            {
                *t += l0 * gv;
            }
            for (t, gv) in tmp[i1 * self.out_w..(i1 + 1) * self.out_w]
                .iter_mut()
                .zip(grow)
            {
                *t += l1 * gv;
            }
        }
        for (drow, t) in dx
            .chunks_exact_mut(self.w)
            .zip(tmp.chunks_exact(self.out_w))
        {
            drow.fill(0.0);
            for (tv, &(i0, i1, l0, l1)) in t.iter().zip(&self.cols) {
                drow[i0] += l0 * tv;
                drow[i1] += l1 * tv;
            }
        }
    }
}

/// CPU bilinear resize `x -> y` whose backward is [`BilinearBwd`].
struct BilinearFwd(std::sync::Arc<BilinearPlan>);
/// `grad_y -> grad_x`.
struct BilinearBwd(std::sync::Arc<BilinearPlan>);

impl CustomOp1 for BilinearFwd {
    fn name(&self) -> &'static str {
        "voc-resize-bilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let (n, c, _, _) = l.shape().dims4()?;
        let x = contiguous_f32(s, l, "resize_bilinear input")?;
        let (plane, out_plane) = (p.h * p.w, p.out_h * p.out_w);
        let out = planes_from(
            n * c * out_plane,
            out_plane,
            |_| 0.0,
            || vec![0f32; p.h * p.out_w],
            |tmp, i, out| p.forward_plane(&x[i * plane..(i + 1) * plane], tmp, out),
        );
        Ok((CpuStorage::F32(out), Shape::from((n, c, p.out_h, p.out_w))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&BilinearBwd(self.0.clone()))?,
        ))
    }
}

impl CustomOp1 for BilinearBwd {
    fn name(&self) -> &'static str {
        "voc-resize-bilinear-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let (n, c, _, _) = l.shape().dims4()?;
        let g = contiguous_f32(s, l, "resize_bilinear gradient")?;
        let (plane, out_plane) = (p.h * p.w, p.out_h * p.out_w);
        let dx = planes_from(
            n * c * plane,
            plane,
            |_| 0.0,
            || vec![0f32; p.h * p.out_w],
            |tmp, i, dx| p.backward_plane(&g[i * out_plane..(i + 1) * out_plane], tmp, dx),
        );
        Ok((CpuStorage::F32(dx), Shape::from((n, c, p.h, p.w))))
    }
}
