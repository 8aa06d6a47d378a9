//! CPU convolution as im2col + one gemm, with col2im (its transpose) as the backward.
//!
//! candle's CPU conv is a tiled im2col forward and a direct-loop `conv_transpose2d` backward; both run
//! a few times slower than PyTorch on the 3x3 convs of DeepLab heads. Expanding the (padded, strided,
//! dilated) input windows into a `C_in*kh*kw x oh*ow` matrix turns the forward into one gemm and the
//! backward into two gemms plus a scatter-add back to the image. The expanded matrix is `kh*kw` times
//! the input: inference expands a bounded chunk of the batch at once ([`conv2d_wide`]), training one
//! image at a time and again in the backward pass ([`Conv2dRecompute`]), so it is never kept.
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

    /// What the per-image loops of the training conv's three ops share, for `c_out` output channels.
    fn per_image(&self, c_out: usize) -> PerImage {
        let k = self.c * self.taps();
        PerImage {
            k,
            c_out,
            in_len: self.c * self.plane(),
            out_len: c_out * self.out_plane(),
            cols: vec![0f32; k * self.out_plane()],
        }
    }
}

/// One image's sizes in the training conv's ops: rows of the expanded matrix (`c · kh · kw`), output
/// channels, input and output values; and a buffer for its expanded matrix.
struct PerImage {
    k: usize,
    c_out: usize,
    in_len: usize,
    out_len: usize,
    cols: Vec<f32>,
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

/// The expanded matrix of one image (`c*kh*kw x oh*ow`) into `cols`, a channel per rayon task.
fn im2col_image(p: &Im2ColParams, x: &[f32], cols: &mut [f32]) {
    use rayon::prelude::*;
    let spans: Vec<_> = (0..p.kw).map(|kj| p.span(kj)).collect();
    let block = p.taps() * p.out_plane();
    cols[..p.c * block]
        .par_chunks_mut(block.max(1))
        .enumerate()
        .for_each(|(ch, rows)| {
            let xs = &x[ch * p.plane()..(ch + 1) * p.plane()];
            for (tap, row) in rows.chunks_exact_mut(p.out_plane().max(1)).enumerate() {
                p.fill_tap(xs, tap / p.kw, spans[tap % p.kw], row);
            }
        });
}

/// The transpose of [`im2col_image`]: `cols` scatter-added into one image's input gradient `dx`
/// (written whole), a channel per rayon task.
fn col2im_image(p: &Im2ColParams, cols: &[f32], dx: &mut [f32]) {
    use rayon::prelude::*;
    let spans: Vec<_> = (0..p.kw).map(|kj| p.span(kj)).collect();
    let block = p.taps() * p.out_plane();
    dx[..p.c * p.plane()]
        .par_chunks_mut(p.plane().max(1))
        .enumerate()
        .for_each(|(ch, dxs)| {
            dxs.fill(0.0);
            let rows = &cols[ch * block..(ch + 1) * block];
            for (tap, row) in rows.chunks_exact(p.out_plane().max(1)).enumerate() {
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
                        for (d, g) in drow[ix0..].iter_mut().step_by(p.stride).zip(&grow[lo..hi]) {
                            *d += g;
                        }
                    }
                }
            }
        });
}

fn gemm_parallelism(flops: usize) -> gemm::Parallelism {
    if flops >= 1 << 15 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)` on row-major slices given by (row, column)
/// strides of `lhs` and `rhs`; `dst` is contiguous.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(dst.len() >= m * n);
    assert!(lhs.len() >= last(m, k, lhs_rs, lhs_cs) && rhs.len() >= last(k, n, rhs_rs, rhs_cs));
    // SAFETY: the asserts above bound every element gemm reads (lhs, rhs through their strides) and
    // writes (dst, m x n contiguous); with `read_dst` false gemm writes every element of dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(m * n * k),
        );
    }
}

/// `conv2d(x, weight)` (groups 1, no bias) for training on the CPU: per image, the expanded matrix in
/// a scratch buffer and one gemm. A composed im2col + matmul would keep the expanded matrix of the
/// whole batch alive until the backward pass (`kh*kw` times the input: 1 GB for DeepLabV3+'s two
/// decoder convs at batch 8, 321x321), the backward recomputes it image by image from the input,
/// which the graph keeps anyway.
struct Conv2dRecompute(Im2ColParams);
/// `(dy, weight) -> dx` of [`Conv2dRecompute`].
struct Conv2dInputGrad(Im2ColParams);
/// `(x, dy) -> dweight` of [`Conv2dRecompute`].
struct Conv2dWeightGrad(Im2ColParams);

impl candle_core::CustomOp2 for Conv2dRecompute {
    fn name(&self) -> &'static str {
        "voc-conv2d-recompute"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let PerImage {
            k,
            c_out,
            in_len,
            out_len,
            mut cols,
        } = p.per_image(w.len() / (p.c * p.taps()).max(1));
        let mut y = vec![0f32; p.n * out_len];
        for b in 0..p.n {
            im2col_image(&p, &x[b * in_len..(b + 1) * in_len], &mut cols);
            gemm_into(
                &mut y[b * out_len..(b + 1) * out_len],
                false,
                (c_out, p.out_plane(), k),
                w,
                (k, 1),
                &cols,
                (p.out_plane(), 1),
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((p.n, c_out, p.oh, p.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(&weight.contiguous()?, &Conv2dInputGrad(self.0))?)
        } else {
            None
        };
        let dw = if weight.track_op() {
            Some(
                x.contiguous()?
                    .apply_op2_no_bwd(&grad, &Conv2dWeightGrad(self.0))?
                    .reshape(weight.shape())?,
            )
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl candle_core::CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "voc-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let dy = contiguous_f32(s1, l1, "conv2d output gradient")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let PerImage {
            k,
            c_out,
            in_len,
            out_len,
            mut cols,
        } = p.per_image(w.len() / (p.c * p.taps()).max(1));
        let mut dx = vec![0f32; p.n * in_len];
        for b in 0..p.n {
            // dcols = wᵀ · dy[b]: wᵀ is w read with swapped strides.
            gemm_into(
                &mut cols,
                false,
                (k, p.out_plane(), c_out),
                w,
                (1, k),
                &dy[b * out_len..(b + 1) * out_len],
                (p.out_plane(), 1),
            );
            col2im_image(&p, &cols, &mut dx[b * in_len..(b + 1) * in_len]);
        }
        Ok((CpuStorage::F32(dx), Shape::from((p.n, p.c, p.h, p.w))))
    }
}

impl candle_core::CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "voc-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let dy = contiguous_f32(s2, l2, "conv2d output gradient")?;
        let PerImage {
            k,
            c_out,
            in_len,
            out_len,
            mut cols,
        } = p.per_image(dy.len() / (p.n * p.out_plane()).max(1));
        let mut dw = vec![0f32; c_out * k];
        for b in 0..p.n {
            im2col_image(&p, &x[b * in_len..(b + 1) * in_len], &mut cols);
            // dw += dy[b] · colsᵀ: colsᵀ is cols read with swapped strides.
            gemm_into(
                &mut dw,
                b > 0,
                (c_out, k, p.out_plane()),
                &dy[b * out_len..(b + 1) * out_len],
                (p.out_plane(), 1),
                &cols,
                (1, p.out_plane()),
            );
        }
        Ok((CpuStorage::F32(dw), Shape::from((c_out, k))))
    }
}

/// [`Conv2dRecompute`]: the training conv whose backward recomputes the expanded matrix.
pub(crate) fn conv2d_recompute(
    x: &Tensor,
    weight: &Tensor,
    p: Im2ColParams,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dRecompute(p))
}
