//! CPU convolution as im2col + one gemm, with col2im (its transpose) as the backward.
//!
//! candle's CPU conv is a tiled im2col forward and a direct-loop `conv_transpose2d` backward; both run
//! a few times slower than PyTorch on the 3x3 convs of DeepLab heads. Expanding the (padded, strided,
//! dilated) input windows into a `C_in*kh*kw x oh*ow` matrix once per image turns the forward into one
//! matmul and the backward into two matmuls plus a scatter-add back to the image, which candle's gemm
//! runs at full speed. The expanded matrix is `kh*kw` times the input, so `conv2d` only takes this path
//! below a size cap.
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{contiguous_f32, planes_from};

/// Geometry of one conv: input `c x h x w` per image, kernel `kh x kw`, output `oh x ow`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Im2ColParams {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Im2ColParams {
    fn input_row(&self, oy: usize, ki: usize) -> Option<usize> {
        let iy = (oy * self.stride + ki * self.dilation) as isize - self.pad_top as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }

    /// Output columns `lo..hi` read input columns `ix0, ix0 + stride, ...` for tap column `kj`.
    fn span(&self, kj: usize) -> (usize, usize, usize) {
        let s = self.stride as isize;
        let offset = (kj * self.dilation) as isize - self.pad_left as isize;
        let lo = if offset >= 0 {
            0
        } else {
            (-offset + s - 1) / s
        };
        let hi = if self.w as isize - offset <= 0 {
            0
        } else {
            ((self.w as isize - offset - 1) / s + 1).min(self.ow as isize)
        };
        if lo >= hi {
            (0, 0, 0)
        } else {
            (lo as usize, hi as usize, (lo * s + offset) as usize)
        }
    }

    /// Writes the `oh x ow` values that tap row `ki` (with column span `span`, see [`Self::span`])
    /// reads from one input plane `xs` into `out`: the shared inner loop of both im2col layouts.
    fn fill_tap(&self, xs: &[f32], ki: usize, span: (usize, usize, usize), out: &mut [f32]) {
        let (lo, hi, ix0) = span;
        for (oy, orow) in out.chunks_exact_mut(self.ow).enumerate() {
            match self.input_row(oy, ki) {
                Some(iy) if lo < hi => {
                    let irow = &xs[iy * self.w..(iy + 1) * self.w];
                    orow[..lo].fill(0.0);
                    orow[hi..].fill(0.0);
                    if self.stride == 1 {
                        orow[lo..hi].copy_from_slice(&irow[ix0..ix0 + hi - lo]);
                    } else {
                        for (o, v) in orow[lo..hi]
                            .iter_mut()
                            .zip(irow[ix0..].iter().step_by(self.stride))
                        {
                            *o = *v;
                        }
                    }
                }
                _ => orow.fill(0.0),
            }
        }
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// Elements of the expanded matrix for the whole batch.
    pub fn cols_len(&self) -> usize {
        self.n * self.c * self.taps() * self.out_plane()
    }
}

/// `x (N, C, H, W) -> cols (N, C*kh*kw, oh*ow)`.
struct Im2Col(Im2ColParams);
/// `grad_cols (N, C*kh*kw, oh*ow) -> grad_x (N, C, H, W)`.
struct Col2Im(Im2ColParams);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "voc-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = contiguous_f32(s, l, "conv2d im2col input")?;
        let spans: Vec<_> = (0..p.kw).map(|kj| p.span(kj)).collect();
        let block = p.taps() * p.out_plane(); // the rows of one input channel
        let cols = planes_from(
            p.cols_len(),
            block,
            |_| 0.0,
            || (),
            |_, plane, rows| {
                let xs = &x[plane * p.plane()..(plane + 1) * p.plane()];
                for (tap, row) in rows.chunks_exact_mut(p.out_plane()).enumerate() {
                    let (ki, kj) = (tap / p.kw, tap % p.kw);
                    p.fill_tap(xs, ki, spans[kj], row);
                }
            },
        );
        Ok((
            CpuStorage::F32(cols),
            Shape::from((p.n, p.c * p.taps(), p.out_plane())),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "voc-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let cols = contiguous_f32(s, l, "conv2d col2im gradient")?;
        let spans: Vec<_> = (0..p.kw).map(|kj| p.span(kj)).collect();
        let block = p.taps() * p.out_plane();
        let dx = planes_from(
            p.n * p.c * p.plane(),
            p.plane(),
            |_| 0.0,
            || (),
            |_, plane, dxs| {
                let rows = &cols[plane * block..(plane + 1) * block];
                for (tap, row) in rows.chunks_exact(p.out_plane()).enumerate() {
                    let (ki, kj) = (tap / p.kw, tap % p.kw);
                    let (lo, hi, ix0) = spans[kj];
                    if lo >= hi {
                        continue;
                    }
                    for (oy, grow) in row.chunks_exact(p.ow).enumerate() {
                        let Some(iy) = p.input_row(oy, ki) else {
                            continue;
                        };
                        let drow = &mut dxs[iy * p.w..(iy + 1) * p.w];
                        if p.stride == 1 {
                            for (d, g) in drow[ix0..ix0 + hi - lo].iter_mut().zip(&grow[lo..hi]) {
                                *d += g;
                            }
                        } else {
                            for (d, g) in
                                drow[ix0..].iter_mut().step_by(p.stride).zip(&grow[lo..hi])
                            {
                                *d += g;
                            }
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(dx), Shape::from((p.n, p.c, p.h, p.w))))
    }
}

/// `x (N, C, H, W) -> cols (C*kh*kw, N*oh*ow)`: the images side by side, so the whole batch is one
/// gemm whose weight matrix is packed once (forward only: inference on constant weights).
struct Im2ColWide(Im2ColParams);

impl CustomOp1 for Im2ColWide {
    fn name(&self) -> &'static str {
        "voc-im2col-wide"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = contiguous_f32(s, l, "conv2d im2col input")?;
        let spans: Vec<_> = (0..p.kw).map(|kj| p.span(kj)).collect();
        let row_len = p.n * p.out_plane();
        let cols = planes_from(
            p.cols_len(),
            row_len,
            |_| 0.0,
            || (),
            |_, r, row| {
                let (ch, tap) = (r / p.taps(), r % p.taps());
                let (ki, kj) = (tap / p.kw, tap % p.kw);
                for (image, seg) in row.chunks_exact_mut(p.out_plane()).enumerate() {
                    let plane = image * p.c + ch;
                    let xs = &x[plane * p.plane()..(plane + 1) * p.plane()];
                    p.fill_tap(xs, ki, spans[kj], seg);
                }
            },
        );
        Ok((
            CpuStorage::F32(cols),
            Shape::from((p.c * p.taps(), row_len)),
        ))
    }
}

/// [`conv2d`] for inference: one gemm for the whole batch over [`Im2ColWide`]'s matrix, then the
/// `C_out x N` result put back in NCHW order. No gradient.
pub(crate) fn conv2d_wide(
    x: &Tensor,
    weight: &Tensor,
    p: Im2ColParams,
) -> candle_core::Result<Tensor> {
    let c_out = weight.dim(0)?;
    let cols = x.contiguous()?.apply_op1_no_bwd(&Im2ColWide(p))?;
    let w2 = weight.reshape((c_out, p.c * p.taps()))?;
    w2.matmul(&cols)?
        .reshape((c_out, p.n, p.oh, p.ow))?
        .transpose(0, 1)?
        .contiguous()
}

/// `conv2d(x, weight)` (groups 1, no bias) on the CPU as `weight (C_out, C_in*kh*kw) @ im2col(x)`.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, p: Im2ColParams) -> candle_core::Result<Tensor> {
    let c_out = weight.dim(0)?;
    let cols = x.contiguous()?.apply_op1(Im2Col(p))?;
    let w2 = weight.reshape((c_out, p.c * p.taps()))?;
    let y = w2.broadcast_left(p.n)?.matmul(&cols)?;
    y.reshape((p.n, c_out, p.oh, p.ow))
}
