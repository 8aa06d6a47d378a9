//! Fast CPU depthwise convolution: forward, input gradient and weight gradient as candle custom ops.
//!
//! Each (image, channel) plane is independent, so rayon splits the work over the N*C planes (the weight
//! gradient over channels). Inside a plane the loops run output row by output row with the kernel taps
//! innermost-but-one, so a row of the output stays in L1 while the nine taps stream over it, and at
//! stride 1 the innermost loop is a contiguous `y += w * x` that the compiler vectorises.
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub(crate) struct DwParams {
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Sizes shared by the three kernels.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    p: DwParams,
}

impl Geometry {
    /// Output row `oy` reads input row `oy*stride + ki*dilation - pad_top`; `None` when that is padding.
    #[inline]
    fn input_row(&self, oy: usize, ki: usize) -> Option<usize> {
        let iy = (oy * self.p.stride + ki * self.p.dilation) as isize - self.p.pad_top as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }

    /// For tap column `kj`: the range of output columns whose input column lies inside the image, and
    /// the input column of the first of them.
    #[inline]
    fn column_span(&self, kj: usize) -> (usize, usize, usize) {
        let s = self.p.stride as isize;
        let offset = (kj * self.p.dilation) as isize - self.p.pad_left as isize; // ix = ox*s + offset
        let lo = if offset >= 0 {
            0
        } else {
            ((-offset) + s - 1) / s
        };
        let hi_excl = if (self.w as isize) - offset <= 0 {
            0
        } else {
            ((self.w as isize - offset - 1) / s + 1).min(self.p.ow as isize)
        };
        let lo = lo.min(hi_excl.max(0));
        let hi = hi_excl.max(lo);
        (lo as usize, hi as usize, (lo * s + offset).max(0) as usize)
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("depthwise_conv2d: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("depthwise_conv2d: {what} must be contiguous"),
    }
}

/// `out[oy, lo..hi] += wv * inp[ix0 + k*stride]` for one output row and one tap.
#[inline(always)]
fn axpy_row(out: &mut [f32], inp: &[f32], wv: f32, stride: usize, ix0: usize) {
    if out.is_empty() {
        return;
    }
    if stride == 1 {
        let len = out.len();
        for (o, i) in out.iter_mut().zip(&inp[ix0..ix0 + len]) {
            *o += wv * i;
        }
    } else {
        for (o, i) in out.iter_mut().zip(inp[ix0..].iter().step_by(stride)) {
            *o += wv * i;
        }
    }
}

/// `acc[ix0 + k*stride] += wv * g[k]`: the transpose of [`axpy_row`].
#[inline(always)]
fn axpy_row_transposed(acc: &mut [f32], g: &[f32], wv: f32, stride: usize, ix0: usize) {
    if g.is_empty() {
        return;
    }
    if stride == 1 {
        for (a, gv) in acc[ix0..ix0 + g.len()].iter_mut().zip(g) {
            *a += wv * gv;
        }
    } else {
        for (a, gv) in acc[ix0..].iter_mut().step_by(stride).zip(g) {
            *a += wv * gv;
        }
    }
}

#[inline(always)]
fn dot_row(g: &[f32], inp: &[f32], stride: usize, ix0: usize) -> f32 {
    if g.is_empty() {
        return 0.0;
    }
    if stride == 1 {
        g.iter()
            .zip(&inp[ix0..ix0 + g.len()])
            .map(|(a, b)| a * b)
            .sum()
    } else {
        g.iter()
            .zip(inp[ix0..].iter().step_by(stride))
            .map(|(a, b)| a * b)
            .sum()
    }
}

fn fwd_planes(g: Geometry, x: &[f32], wt: &[f32]) -> Vec<f32> {
    let (h, w, kh, kw, oh, ow) = (g.h, g.w, g.kh, g.kw, g.p.oh, g.p.ow);
    let spans: Vec<_> = (0..kw).map(|kj| g.column_span(kj)).collect();
    let mut out = vec![0f32; g.n * g.c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, out)| {
            let ch = plane % g.c;
            let xs = &x[plane * h * w..(plane + 1) * h * w];
            let ws = &wt[ch * kh * kw..(ch + 1) * kh * kw];
            for (oy, orow) in out.chunks_mut(ow).enumerate() {
                for ki in 0..kh {
                    let Some(iy) = g.input_row(oy, ki) else {
                        continue;
                    };
                    let irow = &xs[iy * w..(iy + 1) * w];
                    for (kj, &(lo, hi, ix0)) in spans.iter().enumerate() {
                        axpy_row(&mut orow[lo..hi], irow, ws[ki * kw + kj], g.p.stride, ix0);
                    }
                }
            }
        });
    out
}

fn bwd_input_planes(g: Geometry, grad: &[f32], wt: &[f32]) -> Vec<f32> {
    let (h, w, kh, kw, oh, ow) = (g.h, g.w, g.kh, g.kw, g.p.oh, g.p.ow);
    let spans: Vec<_> = (0..kw).map(|kj| g.column_span(kj)).collect();
    let mut dx = vec![0f32; g.n * g.c * h * w];
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dx)| {
            let ch = plane % g.c;
            let gs = &grad[plane * oh * ow..(plane + 1) * oh * ow];
            let ws = &wt[ch * kh * kw..(ch + 1) * kh * kw];
            for (oy, grow) in gs.chunks(ow).enumerate() {
                for ki in 0..kh {
                    let Some(iy) = g.input_row(oy, ki) else {
                        continue;
                    };
                    let drow = &mut dx[iy * w..(iy + 1) * w];
                    for (kj, &(lo, hi, ix0)) in spans.iter().enumerate() {
                        axpy_row_transposed(drow, &grow[lo..hi], ws[ki * kw + kj], g.p.stride, ix0);
                    }
                }
            }
        });
    dx
}

fn bwd_weight(g: Geometry, grad: &[f32], x: &[f32]) -> Vec<f32> {
    let (h, w, kh, kw, oh, ow) = (g.h, g.w, g.kh, g.kw, g.p.oh, g.p.ow);
    let spans: Vec<_> = (0..kw).map(|kj| g.column_span(kj)).collect();
    let mut dw = vec![0f32; g.c * kh * kw];
    dw.par_chunks_mut(kh * kw).enumerate().for_each(|(ch, dw)| {
        // Row dot products are short; accumulate the plane sums in f64 so large images lose nothing.
        let mut acc = vec![0f64; kh * kw];
        for n in 0..g.n {
            let plane = n * g.c + ch;
            let xs = &x[plane * h * w..(plane + 1) * h * w];
            let gs = &grad[plane * oh * ow..(plane + 1) * oh * ow];
            for (oy, grow) in gs.chunks(ow).enumerate() {
                for ki in 0..kh {
                    let Some(iy) = g.input_row(oy, ki) else {
                        continue;
                    };
                    let irow = &xs[iy * w..(iy + 1) * w];
                    for (kj, &(lo, hi, ix0)) in spans.iter().enumerate() {
                        acc[ki * kw + kj] += dot_row(&grow[lo..hi], irow, g.p.stride, ix0) as f64;
                    }
                }
            }
        }
        for (d, a) in dw.iter_mut().zip(acc) {
            *d = a as f32;
        }
    });
    dw
}

/// The forward op: `(x, weight) -> y`. Its backward runs the two gradient kernels below.
struct DepthwiseFwd(DwParams);
/// `(grad_y, weight) -> grad_x`.
struct DepthwiseBwdInput(DwParams, [usize; 4]);
/// `(grad_y, x) -> grad_weight`.
struct DepthwiseBwdWeight(DwParams, [usize; 4]);

impl CustomOp2 for DepthwiseFwd {
    fn name(&self) -> &'static str {
        "voc-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, _, kh, kw) = l2.shape().dims4()?;
        let g = Geometry {
            n,
            c,
            h,
            w,
            kh,
            kw,
            p: self.0,
        };
        let out = fwd_planes(g, f32_slice(s1, l1, "input")?, f32_slice(s2, l2, "weight")?);
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, c, self.0.oh, self.0.ow)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let x_dims: [usize; 4] = x.dims4()?.into();
        let w_dims: [usize; 4] = weight.dims4()?.into();
        let dx = grad.apply_op2_no_bwd(weight, &DepthwiseBwdInput(self.0, x_dims))?;
        let dw = grad.apply_op2_no_bwd(x, &DepthwiseBwdWeight(self.0, w_dims))?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp2 for DepthwiseBwdInput {
    fn name(&self) -> &'static str {
        "voc-depthwise-conv2d-bwd-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [n, c, h, w] = self.1;
        let (_, _, kh, kw) = l2.shape().dims4()?;
        let g = Geometry {
            n,
            c,
            h,
            w,
            kh,
            kw,
            p: self.0,
        };
        let dx = bwd_input_planes(
            g,
            f32_slice(s1, l1, "gradient")?,
            f32_slice(s2, l2, "weight")?,
        );
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

impl CustomOp2 for DepthwiseBwdWeight {
    fn name(&self) -> &'static str {
        "voc-depthwise-conv2d-bwd-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l2.shape().dims4()?;
        let [_, _, kh, kw] = self.1;
        let g = Geometry {
            n,
            c,
            h,
            w,
            kh,
            kw,
            p: self.0,
        };
        let dw = bwd_weight(
            g,
            f32_slice(s1, l1, "gradient")?,
            f32_slice(s2, l2, "input")?,
        );
        Ok((CpuStorage::F32(dw), Shape::from(&self.1)))
    }
}

/// Runs the CPU depthwise kernel (inputs must be f32 on the CPU; they are made contiguous here).
pub(crate) fn forward(
    x: &Tensor,
    weight: &Tensor,
    params: DwParams,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, DepthwiseFwd(params))
}
