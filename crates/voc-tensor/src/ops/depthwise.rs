//! Fast CPU depthwise convolution: forward and one fused backward as candle custom ops.
//!
//! Each (image, channel) plane is independent, so rayon splits the work over the N*C planes.
//!
//! Forward: each input plane is copied into a zero-padded polyphase layout ([`Polyphase`]), where every
//! output row reads one contiguous span per tap, and the span kernels (`simd::avx512`, `simd::avx2`, a
//! portable loop) sum each output vector over the taps in a register, the activation and the folded
//! batch norm's shift applied as it is stored (inference) or the bias added first (the differentiable
//! op).
//!
//! Backward: the loops run output row by output row with the kernel taps inside, so a row stays in L1
//! while the taps stream over it, and the innermost loop is a contiguous `y += w * x` (or a dot
//! product): at stride `s > 1` the input plane is first split into its `s` column phases
//! (`x[.., p + j*s]` for each `p`), which makes the strided reads contiguous. It reads the upstream
//! gradient and the input once and produces the input, weight and bias gradients together (per-plane
//! partial weight and bias sums, reduced over the batch at the end).
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, init_plane, planes_uninit};
use crate::fused::Act;
#[cfg(target_arch = "x86_64")]
use crate::simd;

#[derive(Debug, Clone, Copy)]
pub(crate) struct DwParams {
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Sizes shared by the kernels.
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

/// One kernel tap column: output columns `lo..hi` read input columns `ix0, ix0 + s, ...`, found in the
/// phased layout at phase `ix0 % s`, position `ix0 / s`.
#[derive(Debug, Clone, Copy)]
struct Span {
    lo: usize,
    hi: usize,
    phase: usize,
    first: usize,
}

impl Geometry {
    fn new(
        p: DwParams,
        (n, c, h, w): (usize, usize, usize, usize),
        (kh, kw): (usize, usize),
    ) -> Self {
        Self {
            n,
            c,
            h,
            w,
            kh,
            kw,
            p,
        }
    }

    /// Length of one column phase of an input row.
    fn phase_len(&self) -> usize {
        self.w.div_ceil(self.p.stride)
    }

    /// Output row `oy` reads input row `oy*stride + ki*dilation - pad_top`; `None` when that is padding.
    #[inline]
    fn input_row(&self, oy: usize, ki: usize) -> Option<usize> {
        let iy = (oy * self.p.stride + ki * self.p.dilation) as isize - self.p.pad_top as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }

    /// The output columns of tap column `kj` whose input column lies inside the image.
    fn span(&self, kj: usize) -> Span {
        let s = self.p.stride as isize;
        let offset = (kj * self.p.dilation) as isize - self.p.pad_left as isize; // ix = ox*s + offset
        let lo = if offset >= 0 {
            0
        } else {
            (-offset + s - 1) / s
        };
        let hi = if self.w as isize - offset <= 0 {
            0
        } else {
            ((self.w as isize - offset - 1) / s + 1).min(self.p.ow as isize)
        };
        if lo >= hi {
            return Span {
                lo: 0,
                hi: 0,
                phase: 0,
                first: 0,
            };
        }
        let ix0 = (lo * s + offset) as usize;
        Span {
            lo: lo as usize,
            hi: hi as usize,
            phase: ix0 % self.p.stride,
            first: ix0 / self.p.stride,
        }
    }

    /// Start of input row `iy`, phase `phase` in the phased layout (the plain layout when stride is 1).
    #[inline]
    fn row_start(&self, iy: usize, span: &Span) -> usize {
        (iy * self.p.stride + span.phase) * self.phase_len() + span.first
    }
}

/// Copies a plane into the phased layout: row `iy`, phase `p`, position `j` holds `x[iy, p + j*s]`.
fn to_phased(g: &Geometry, plane: &[f32], out: &mut [f32]) {
    let (s, wp) = (g.p.stride, g.phase_len());
    for (row, phased) in plane.chunks_exact(g.w).zip(out.chunks_exact_mut(s * wp)) {
        split_phases(row, s, wp, phased);
    }
}

/// The inverse of [`to_phased`].
fn from_phased(g: &Geometry, phased_plane: &[f32], plane: &mut [f32]) {
    let (s, wp) = (g.p.stride, g.phase_len());
    #[cfg(target_arch = "x86_64")]
    if s == 2 && simd::has_avx2_fma() {
        for (row, phased) in plane
            .chunks_exact_mut(g.w)
            .zip(phased_plane.chunks_exact(2 * wp))
        {
            let (even, odd) = phased.split_at(wp);
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            unsafe { simd::avx2::interleave2(even, odd, row) };
        }
        return;
    }
    for (row, phased) in plane
        .chunks_exact_mut(g.w)
        .zip(phased_plane.chunks_exact(s * wp))
    {
        for (p, src) in phased.chunks_exact(wp).enumerate() {
            for (d, v) in row.iter_mut().skip(p).step_by(s).zip(src) {
                *d = *v;
            }
        }
    }
}

/// The row kernels of the plane loops. The plane loops are generic over it and compiled once per
/// implementation, the AVX2 one inside `#[target_feature]` functions, so the kernels inline there.
trait Lanes {
    /// `dst += a * src`.
    ///
    /// # Safety
    /// The CPU must support the implementation's instructions.
    unsafe fn axpy(dst: &mut [f32], src: &[f32], a: f32);
    /// `Σ a·b`. Safety: as [`Lanes::axpy`].
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `Σ a`. Safety: as [`Lanes::axpy`].
    unsafe fn sum(a: &[f32]) -> f32;
}

/// Plain Rust (any CPU): the compiler vectorises these for the baseline instruction set.
struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    unsafe fn axpy(dst: &mut [f32], src: &[f32], a: f32) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += a * s;
        }
    }

    /// Eight independent accumulators, so it vectorises (a single f32 accumulator would force the
    /// compiler to keep the sequential order).
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; 8];
        let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (a8.remainder(), b8.remainder());
        for (x, y) in a8.zip(b8) {
            for k in 0..8 {
                acc[k] += x[k] * y[k];
            }
        }
        let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    unsafe fn sum(a: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let a8 = a.chunks_exact(8);
        let tail: f32 = a8.remainder().iter().sum();
        for x in a8 {
            for k in 0..8 {
                acc[k] += x[k];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// AVX2 + FMA intrinsics.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    #[inline(always)]
    unsafe fn axpy(dst: &mut [f32], src: &[f32], a: f32) {
        // SAFETY: the caller guarantees AVX2 and FMA.
        unsafe { simd::avx2::axpy(dst, src, a) }
    }

    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the caller guarantees AVX2 and FMA.
        unsafe { simd::avx2::dot(a, b) }
    }

    #[inline(always)]
    unsafe fn sum(a: &[f32]) -> f32 {
        // SAFETY: the caller guarantees AVX2 and FMA.
        unsafe { simd::avx2::sum(a) }
    }
}

/// Runs `$plane::<Lanes>($args)` with the AVX2 kernels when the CPU has them, else the portable ones.
macro_rules! dispatch_lanes {
    ($avx2:ident, $plane:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if simd::has_avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { $avx2($($arg),*) }
            } else {
                // SAFETY: the portable kernels run on any CPU.
                unsafe { $plane::<Portable>($($arg),*) }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // SAFETY: the portable kernels run on any CPU.
            unsafe { $plane::<Portable>($($arg),*) }
        }
    }};
}

/// The forward pass reads each input plane from a zero-padded polyphase copy: for stride `s`, `s x s`
/// sub-planes, sub-plane `(rp, cp)` holding padded rows `rp, rp + s, ...` and columns `cp, cp + s,
/// ...`, each `wq` wide with one spare row. Tap `(ki, kj)` of output `(oy, ox)` then reads position
/// `tap_base(ki, kj) + oy * wq + ox`: every output row is one contiguous span per tap, with no border
/// cases (padding reads zeros) and no stride, and consecutive output rows are `wq` apart, so narrow
/// planes run as one span over all their rows (the `wq - ow` columns between rows computed and
/// dropped).
#[derive(Debug, Clone)]
struct Polyphase {
    s: usize,
    d: usize,
    /// Padded rows of the image before row 0.
    pad_top: usize,
    h: usize,
    w: usize,
    /// Rows (without the spare one) and width of each sub-plane.
    hq: usize,
    wq: usize,
    /// Per column phase `cp`: the input row phase it copies from, where (`off`: sub-plane column `cq`
    /// reads that phase at `cq + off`), and the sub-plane columns `first..end` that fall inside the
    /// input (the others are padding).
    columns: Vec<ColumnCopy>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ColumnCopy {
    par: usize,
    off: isize,
    first: usize,
    end: usize,
}

impl Polyphase {
    /// `None` when the output is empty.
    fn new(g: &Geometry) -> Option<Self> {
        let (s, d, oh, ow) = (g.p.stride, g.p.dilation, g.p.oh, g.p.ow);
        if oh == 0 || ow == 0 || s == 0 {
            return None;
        }
        let rows_read = (oh - 1) * s + (g.kh - 1) * d + 1;
        let cols_read = (ow - 1) * s + (g.kw - 1) * d + 1;
        let wq = cols_read.div_ceil(s);
        let mut columns = vec![ColumnCopy::default(); s];
        for (cp, column) in columns.iter_mut().enumerate() {
            // Sub-plane column cq reads input column cq * s + c0: phase `par` of the row, position
            // cq + off.
            let c0 = cp as isize - g.p.pad_left as isize;
            let par = c0.rem_euclid(s as isize) as usize;
            let off = (c0 - par as isize) / s as isize;
            let phase_len = g.w.saturating_sub(par).div_ceil(s) as isize;
            let first = (-off).clamp(0, wq as isize) as usize;
            let end = (phase_len - off).clamp(first as isize, wq as isize) as usize;
            *column = ColumnCopy {
                par,
                off,
                first,
                end,
            };
        }
        Some(Self {
            s,
            d,
            pad_top: g.p.pad_top,
            h: g.h,
            w: g.w,
            hq: rows_read.div_ceil(s),
            wq,
            columns,
        })
    }

    fn sub_len(&self) -> usize {
        (self.hq + 1) * self.wq
    }

    fn len(&self) -> usize {
        self.s * self.s * self.sub_len()
    }

    /// Where tap `(ki, kj)` reads for output `(0, 0)`.
    fn tap_base(&self, ki: usize, kj: usize) -> usize {
        let (a, b) = (ki * self.d, kj * self.d);
        ((a % self.s) * self.s + b % self.s) * self.sub_len() + (a / self.s) * self.wq + b / self.s
    }

    /// Writes every value of `buf` (`len()` values) from the `h x w` input plane; `phases` is scratch
    /// for one input row split into its `s` column phases (unused at stride 1).
    fn fill(&self, plane: &[f32], buf: &mut [f32], phases: &mut Vec<f32>) {
        let (s, wq, sub_len) = (self.s, self.wq, self.sub_len());
        let phase_len = self.w.div_ceil(s);
        phases.resize(s * phase_len, 0.0);
        for padded_row in 0..(self.hq + 1) * s {
            let (rp, rq) = (padded_row % s, padded_row / s);
            let r = padded_row as isize - self.pad_top as isize;
            // Row rq (<= hq, so inside) of sub-plane (rp, cp).
            let dst_start = |cp: usize| (rp * s + cp) * sub_len + rq * wq;
            if r < 0 || r as usize >= self.h {
                for cp in 0..s {
                    buf[dst_start(cp)..dst_start(cp) + wq].fill(0.0);
                }
                continue;
            }
            let src = &plane[r as usize * self.w..(r as usize + 1) * self.w];
            if s > 1 {
                split_phases(src, s, phase_len, phases);
            }
            for (cp, col) in self.columns.iter().enumerate() {
                let phase: &[f32] = if s == 1 {
                    src
                } else {
                    &phases[col.par * phase_len..(col.par + 1) * phase_len]
                };
                let dst = &mut buf[dst_start(cp)..dst_start(cp) + wq];
                // Plain loops, not memset/memcpy: the pads are a pixel or two and the rows short,
                // where the library calls cost more than the copy (a third of the fill, `perf`).
                for v in &mut dst[..col.first] {
                    *v = 0.0;
                }
                let from = (col.first as isize + col.off) as usize;
                for (d, v) in dst[col.first..col.end].iter_mut().zip(&phase[from..]) {
                    *d = *v;
                }
                for v in &mut dst[col.end..] {
                    *v = 0.0;
                }
            }
        }
    }
}

/// `phases[p * phase_len + j] = row[j * s + p]` (`phase_len = ceil(w / s)`).
fn split_phases(row: &[f32], s: usize, phase_len: usize, phases: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if s == 2 && simd::has_avx2_fma() {
        let (even, odd) = phases.split_at_mut(phase_len);
        // SAFETY: the CPU supports AVX2 (checked); even and odd hold ceil(w / 2) values.
        unsafe { simd::avx2::deinterleave2(row, even, odd) };
        return;
    }
    for (k, &v) in row.iter().enumerate() {
        phases[(k % s) * phase_len + k / s] = v;
    }
}

/// How each output value starts and ends: the taps are summed onto `init`, then `shift` is added and
/// `act` applied as the value is stored.
///
/// The differentiable op starts from its bias (as the kernel always has); the inference path of a
/// convolution with a folded batch norm starts from 0 and adds the shift after the taps, the order in
/// which a separate bias pass after the convolution rounds it, so fusing the two changes no bit.
#[derive(Debug, Clone, Copy)]
struct Epilogue {
    init: f32,
    shift: Option<f32>,
    act: Act,
}

/// Output rows narrower than this run as one span over the whole plane (then copied out row by row):
/// per-row spans would be mostly vector tails.
const FLAT_BELOW: usize = 24;

/// Per-worker buffers of the forward planes: the polyphase input plane, and the plane's output at the
/// polyphase width when it runs as one span.
struct ForwardScratch {
    poly: Vec<f32>,
    flat: Vec<f32>,
    phases: Vec<f32>,
}

/// `dst[i] = act(init + Σ_t weights[t] · src[bases[t] + i] + shift)` for `i < dst.len()`, the taps in
/// order: the vector kernels with fused multiply-adds, the portable one multiply then add (as it
/// always has).
fn depthwise_span(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    bases: &[usize],
    weights: &[f32],
    ep: Epilogue,
) {
    let len = dst.len();
    if len == 0 {
        return;
    }
    assert!(
        bases.len() == weights.len() && bases.iter().all(|&b| b + len <= src.len()),
        "depthwise span reads past its buffer"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let span = simd::DwSpan {
            bases,
            weights,
            init: ep.init,
            shift: ep.shift,
            act: ep.act,
        };
        if simd::has_avx512() {
            // SAFETY: the CPU supports AVX-512F (checked); every tap reads src[base..base + len]
            // (asserted above) and dst holds len values.
            return unsafe {
                simd::avx512::depthwise_span(dst.as_mut_ptr().cast(), len, src, &span)
            };
        }
        if simd::has_avx2_fma() {
            // SAFETY: as above for AVX2 and FMA.
            return unsafe { simd::avx2::depthwise_span(dst.as_mut_ptr().cast(), len, src, &span) };
        }
    }
    let values = init_plane(dst, ep.init);
    for (&base, &w) in bases.iter().zip(weights) {
        for (d, x) in values.iter_mut().zip(&src[base..base + len]) {
            *d += w * x;
        }
    }
    if let Some(shift) = ep.shift {
        values.iter_mut().for_each(|v| *v += shift);
    }
    match ep.act {
        Act::Identity => {}
        Act::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
        Act::Relu6 => values.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
    }
}

/// `act(bias + depthwise(x) + shift)` over every plane (per channel, either may be absent; see
/// [`Epilogue`]); `Act::Identity` and no shift for the differentiable op.
fn forward_planes(
    g: Geometry,
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    shift: Option<&[f32]>,
    act: Act,
) -> Vec<f32> {
    let (h, w, kh, kw, oh, ow) = (g.h, g.w, g.kh, g.kw, g.p.oh, g.p.ow);
    let Some(poly) = Polyphase::new(&g) else {
        return Vec::new();
    };
    let bases: Vec<usize> = (0..kh)
        .flat_map(|ki| (0..kw).map(move |kj| (ki, kj)))
        .map(|(ki, kj)| poly.tap_base(ki, kj))
        .collect();
    let flat = ow < FLAT_BELOW;
    let wq = poly.wq;
    let fill = |scratch: &mut ForwardScratch, plane: usize, out: &mut [MaybeUninit<f32>]| {
        let ch = plane % g.c;
        poly.fill(
            &x[plane * h * w..(plane + 1) * h * w],
            &mut scratch.poly,
            &mut scratch.phases,
        );
        let weights = &wt[ch * kh * kw..(ch + 1) * kh * kw];
        let ep = Epilogue {
            init: bias.map_or(0.0, |b| b[ch]),
            shift: shift.map(|s| s[ch]),
            act,
        };
        if flat {
            let values = &mut scratch.flat;
            // SAFETY: MaybeUninit<f32> has f32's layout; the span writes every value before the
            // rows are copied out of it.
            let slots =
                unsafe { &mut *(values.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>]) };
            depthwise_span(slots, &scratch.poly, &bases, weights, ep);
            for (orow, frow) in out.chunks_exact_mut(ow).zip(values.chunks(wq)) {
                for (o, v) in orow.iter_mut().zip(frow) {
                    o.write(*v);
                }
            }
        } else {
            for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
                depthwise_span(orow, &scratch.poly[oy * wq..], &bases, weights, ep);
            }
        }
    };
    let scratch = || ForwardScratch {
        poly: vec![0f32; poly.len()],
        flat: vec![0f32; if flat { oh * wq } else { 0 }],
        phases: Vec::new(),
    };
    // SAFETY: every plane is written whole: row by row by the spans, or copied out of the flat span
    // (oh rows of ow <= wq values each).
    unsafe { planes_uninit(g.n * g.c * oh * ow, oh * ow, scratch, fill) }
}

/// One plane of the backward pass: accumulates the input gradient into `dacc` (phased when the stride
/// is above 1) and the per-tap weight-gradient and bias-gradient partials into `part`.
///
/// # Safety
/// The CPU must support `L`'s instructions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_plane<L: Lanes>(
    g: &Geometry,
    spans: &[Span],
    gs: &[f32],
    xs: &[f32],
    ws: &[f32],
    dacc: &mut [f32],
    part: &mut [f64],
    weight_grads: bool,
) {
    let (kw, taps) = (g.kw, g.kh * g.kw);
    for (oy, grow) in gs.chunks_exact(g.p.ow).enumerate() {
        if weight_grads {
            // SAFETY: the caller guarantees L's instructions; `sum` reads only the slice it is given.
            part[taps] += unsafe { L::sum(grow) } as f64;
        }
        for ki in 0..g.kh {
            let Some(iy) = g.input_row(oy, ki) else {
                continue;
            };
            for (kj, sp) in spans.iter().enumerate() {
                if sp.lo < sp.hi {
                    let start = g.row_start(iy, sp);
                    let len = sp.hi - sp.lo;
                    let gv = &grow[sp.lo..sp.hi];
                    // SAFETY: the caller guarantees L's instructions; `axpy` and `dot` touch only the
                    // (bounds-checked) slices they are given.
                    unsafe { L::axpy(&mut dacc[start..start + len], gv, ws[ki * kw + kj]) };
                    if weight_grads {
                        // SAFETY: as for `axpy` just above.
                        part[ki * kw + kj] += unsafe { L::dot(gv, &xs[start..start + len]) } as f64;
                    }
                }
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_plane_avx2(
    g: &Geometry,
    spans: &[Span],
    gs: &[f32],
    xs: &[f32],
    ws: &[f32],
    dacc: &mut [f32],
    part: &mut [f64],
    weight_grads: bool,
) {
    // SAFETY: this function's target features are Avx2's.
    unsafe { backward_plane::<Avx2>(g, spans, gs, xs, ws, dacc, part, weight_grads) }
}

/// Returns `[dx (N*C*H*W) | dw (C*kh*kw) | db (C)]` for upstream gradient `grad`, with room for
/// `spare` more values. Without `weight_grads` (a constant weight: an attack through an eval-mode
/// network) only dx is computed and dw, db are zeros.
fn backward_planes(
    g: Geometry,
    grad: &[f32],
    x: &[f32],
    wt: &[f32],
    spare: usize,
    weight_grads: bool,
) -> Vec<f32> {
    let (n, c, h, w, kh, kw, oh, ow, s) =
        (g.n, g.c, g.h, g.w, g.kh, g.kw, g.p.oh, g.p.ow, g.p.stride);
    let taps = kh * kw;
    let spans: Vec<Span> = (0..kw).map(|kj| g.span(kj)).collect();
    let phased_len = h * s * g.phase_len();
    let len = n * c * h * w + c * taps + c;
    let mut out: Vec<f32> = Vec::with_capacity(len + spare);
    // Per plane: `taps` weight-gradient partials, then the bias-gradient partial, in f64.
    let mut partials = vec![0f64; n * c * (taps + 1)];
    let (dx, tail) = out.spare_capacity_mut()[..len].split_at_mut(n * c * h * w);
    dx.par_chunks_mut((h * w).max(1))
        .zip(partials.par_chunks_mut(taps + 1))
        .enumerate()
        .for_each_init(
            || {
                (
                    vec![0f32; if s > 1 { phased_len } else { 0 }],
                    vec![0f32; if s > 1 { phased_len } else { 0 }],
                )
            },
            |(xbuf, dbuf), (plane, (dx, part))| {
                let ch = plane % c;
                let gs = &grad[plane * oh * ow..(plane + 1) * oh * ow];
                let xs = &x[plane * h * w..(plane + 1) * h * w];
                let ws = &wt[ch * taps..(ch + 1) * taps];
                // x is read for the weight gradient only.
                let xs: &[f32] = if s > 1 && weight_grads {
                    to_phased(&g, xs, xbuf);
                    xbuf
                } else {
                    xs
                };
                // The plane of dx is zeroed here, in cache, not all of dx up front; at stride > 1 the
                // phased buffer accumulates and `from_phased` then writes every element of dx's plane.
                let dx = init_plane(dx, 0.0);
                let dacc: &mut [f32] = if s > 1 {
                    dbuf.fill(0.0);
                    dbuf
                } else {
                    dx
                };
                dispatch_lanes!(
                    backward_plane_avx2,
                    backward_plane(&g, &spans, gs, xs, ws, dacc, part, weight_grads)
                );
                if s > 1 {
                    from_phased(&g, dbuf, dx);
                }
            },
        );
    let tail = init_plane(tail, 0.0);
    let (dw, db) = tail.split_at_mut(c * taps);
    for (ch, (dw, db)) in dw.chunks_exact_mut(taps).zip(db.iter_mut()).enumerate() {
        let mut acc = vec![0f64; taps + 1];
        for img in 0..n {
            let part = &partials[(img * c + ch) * (taps + 1)..(img * c + ch + 1) * (taps + 1)];
            for (a, p) in acc.iter_mut().zip(part) {
                *a += p;
            }
        }
        for (d, a) in dw.iter_mut().zip(&acc) {
            *d = *a as f32;
        }
        *db = acc[taps] as f32;
    }
    // SAFETY: every plane of dx and the whole tail were initialised by `init_plane`.
    unsafe { out.set_len(len) };
    out
}

fn geometry(p: DwParams, x: &Layout, w: &Layout) -> candle_core::Result<Geometry> {
    let (n, c, h, wd) = x.shape().dims4()?;
    let (_, _, kh, kw) = w.shape().dims4()?;
    Ok(Geometry {
        n,
        c,
        h,
        w: wd,
        kh,
        kw,
        p,
    })
}

/// The forward kernel on an op's storages: `x` and `weight`, then (per channel, each optional) the
/// bias the taps are summed onto and the shift added after them, and the activation.
fn forward_storage(
    p: DwParams,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    bias: Option<&[f32]>,
    shift: Option<&[f32]>,
    act: Act,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let g = geometry(p, l1, l2)?;
    let out = forward_planes(
        g,
        contiguous_f32(s1, l1, "depthwise_conv2d input")?,
        contiguous_f32(s2, l2, "depthwise_conv2d weight")?,
        bias,
        shift,
        act,
    );
    Ok((
        CpuStorage::F32(out),
        Shape::from((g.n, g.c, g.p.oh, g.p.ow)),
    ))
}

/// `(x, weight) -> y`, no bias.
struct DepthwiseFwd(DwParams);
/// `(x, weight, bias) -> y`.
struct DepthwiseBiasFwd(DwParams);
/// `(grad_y, x, weight) -> [dx | dw | db]`, flat.
/// The backward kernel as an op; the flag says whether the weight (and bias) gradients are wanted.
struct DepthwiseBwd(DwParams, bool);

/// Splits the fused backward output into `(dx, dw, db)` shaped like `x`, `weight` and `(C)`; dw and db
/// are zeros unless `weight_grads`.
fn backward(
    p: DwParams,
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    weight_grads: bool,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let flat = grad
        .contiguous()?
        .apply_op3_no_bwd(x, weight, &DepthwiseBwd(p, weight_grads))?;
    let (nx, nw) = (x.elem_count(), weight.elem_count());
    let dx = flat.narrow(0, 0, nx)?.reshape(x.shape())?;
    let dw = flat.narrow(0, nx, nw)?.reshape(weight.shape())?;
    let db = flat.narrow(0, nx + nw, weight.dim(0)?)?;
    Ok((dx, dw, db))
}

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
        forward_storage(self.0, (s1, l1), (s2, l2), None, None, Act::Identity)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // A constant weight (eval mode under an attack) needs no gradient: candle would zero-fill and
        // accumulate one for it all the same.
        let weight_grads = weight.track_op();
        let (dx, dw, _) = backward(self.0, x, weight, grad, weight_grads)?;
        Ok((Some(dx), weight_grads.then_some(dw)))
    }
}

impl CustomOp3 for DepthwiseBiasFwd {
    fn name(&self) -> &'static str {
        "voc-depthwise-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = contiguous_f32(s3, l3, "depthwise_conv2d bias")?;
        forward_storage(self.0, (s1, l1), (s2, l2), Some(bias), None, Act::Identity)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let weight_grads = weight.track_op() || bias.track_op();
        let (dx, dw, db) = backward(self.0, x, weight, grad, weight_grads)?;
        if !weight_grads {
            return Ok((Some(dx), None, None));
        }
        Ok((Some(dx), Some(dw), Some(db.reshape(bias.shape())?)))
    }
}

impl CustomOp3 for DepthwiseBwd {
    fn name(&self) -> &'static str {
        "voc-depthwise-conv2d-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geometry(self.0, l2, l3)?;
        if l1.shape().dims() != [g.n, g.c, g.p.oh, g.p.ow] {
            candle_core::bail!(
                "depthwise_conv2d backward: gradient shape {:?} does not match",
                l1.shape()
            );
        }
        let grad = contiguous_f32(s1, l1, "depthwise_conv2d gradient")?;
        let out = backward_planes(
            g,
            grad,
            contiguous_f32(s2, l2, "depthwise_conv2d input")?,
            contiguous_f32(s3, l3, "depthwise_conv2d weight")?,
            0,
            self.1,
        );
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `(x, weight, shift) -> act(depthwise(x) + shift)`, for inference (no backward).
struct DepthwiseBiasActFwd(DwParams, Act);

impl CustomOp3 for DepthwiseBiasActFwd {
    fn name(&self) -> &'static str {
        "voc-depthwise-conv2d-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shift = contiguous_f32(s3, l3, "depthwise_conv2d shift")?;
        forward_storage(self.0, (s1, l1), (s2, l2), None, Some(shift), self.1)
    }
}

/// `act(depthwise(x) + bias)` on the CPU kernel, with no gradient (inputs f32 on the CPU).
pub(crate) fn forward_inference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    params: DwParams,
    act: Act,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias.flatten_all()?.contiguous()?,
        &DepthwiseBiasActFwd(params, act),
    )
}

/// Runs the CPU depthwise kernel (inputs must be f32 on the CPU; they are made contiguous here).
pub(crate) fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: DwParams,
) -> candle_core::Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        None => x.apply_op2(&weight, DepthwiseFwd(params)),
        Some(b) => x.apply_op3(
            &weight,
            &b.flatten_all()?.contiguous()?,
            DepthwiseBiasFwd(params),
        ),
    }
}

/// The forward kernel on raw buffers: `x` is `N x C x H x W` (`dims`), `weight` is `C x 1 x kh x kw`
/// (`kernel`); returns the `N x C x oh x ow` output.
pub(crate) fn forward_f32(
    params: DwParams,
    dims: (usize, usize, usize, usize),
    kernel: (usize, usize),
    x: &[f32],
    weight: &[f32],
) -> Vec<f32> {
    let g = Geometry::new(params, dims, kernel);
    forward_planes(g, x, weight, None, None, Act::Identity)
}

/// The backward kernel on raw buffers (shapes as in [`forward_f32`]): `[dx | dweight | dbias]`, with
/// room for `spare` more values.
pub(crate) fn backward_f32(
    params: DwParams,
    dims: (usize, usize, usize, usize),
    kernel: (usize, usize),
    grad: &[f32],
    x: &[f32],
    weight: &[f32],
    spare: usize,
) -> Vec<f32> {
    let g = Geometry::new(params, dims, kernel);
    backward_planes(g, grad, x, weight, spare, true)
}
