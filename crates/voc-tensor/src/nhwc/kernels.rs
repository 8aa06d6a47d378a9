//! The NHWC row kernels: the depthwise convolution, and the dense first convolution that reads the
//! NCHW image. One output row at a time, one vector of channels at a time, four output pixels per
//! step (four independent sums hide the multiply-add latency).
//!
//! Each output value is `act(Σ w · x + shift)`, the sum from 0 over the taps in the kernel's order with
//! fused multiply-adds (the portable loop multiplies then adds), a tap outside the input skipped: the
//! order of the NCHW depthwise kernels (whose padded taps add an exact zero) and of the 1x1 kernels on
//! a matrix of patches, so each gives the same values as those.
use std::mem::MaybeUninit;

use crate::fused::Act;
use crate::simd::Isa;

/// Sizes of one depthwise convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

/// Kernel rows at most (the networks here use 3 and 5).
pub(super) const MAX_KH: usize = 16;

impl Geometry {
    /// The kernel rows of output row `oy` that fall inside the input, as `(kernel row, input row
    /// pointer)` from `row_ptr(input row)`, written to `rows`; returns how many.
    pub(super) fn tap_rows(
        &self,
        oy: usize,
        row_ptr: impl Fn(usize) -> *const f32,
        rows: &mut [(usize, *const f32); MAX_KH],
    ) -> usize {
        let mut n = 0;
        for ky in 0..self.kh.min(MAX_KH) {
            if let Some(iy) = self.input(oy, ky, self.pad_top, self.h) {
                rows[n] = (ky, row_ptr(iy));
                n += 1;
            }
        }
        n
    }

    /// The input coordinate of output coordinate `o` and tap `k` on an axis padded by `pad` of
    /// length `len`, or `None` in the padding.
    #[inline(always)]
    fn input(&self, o: usize, k: usize, pad: usize, len: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(pad)
            .filter(|&i| i < len)
    }

    /// The output columns `lo..hi` whose every tap lies inside the input row.
    fn interior_cols(&self) -> (usize, usize) {
        let lo = self.pad_left.div_ceil(self.stride).min(self.ow);
        // The last tap of column o reads o*s - pad_left + (kw-1)*d, which must be below w.
        let reach = (self.kw - 1) * self.dilation;
        let hi = match (self.w + self.pad_left).checked_sub(reach + 1) {
            Some(last) => (last / self.stride + 1).min(self.ow),
            None => 0,
        };
        (lo, hi.max(lo))
    }
}

/// Output rows per parallel chunk at least (each row is `ow x c` values).
const MIN_CHUNK_VALUES: usize = 1 << 14;

/// Output rows per parallel chunk, for `rows` rows of `row_values` values on `threads` threads: as
/// many equal chunks as up to four per thread, each of at least [`MIN_CHUNK_VALUES`], when they split
/// the rows evenly; else one chunk per thread (the rows split to one). Chunks of a quarter of each
/// thread's share, rounded up, left one thread with up to a chunk more than the other (MobileNetV2's
/// 28x28 depthwise layers: 16 rows against 12).
pub(super) fn chunk_rows(rows: usize, row_values: usize, threads: usize) -> usize {
    if threads <= 1 || rows == 0 {
        return rows.max(1);
    }
    (2..=4)
        .rev()
        .map(|per_thread| threads * per_thread)
        .find(|&chunks| {
            rows.is_multiple_of(chunks) && rows / chunks * row_values >= MIN_CHUNK_VALUES
        })
        .map_or(rows.div_ceil(threads), |chunks| rows / chunks)
}

/// `act(depthwise(x) + shift)` of `n` images: `n x oh x ow x c` values.
pub(super) fn depthwise_forward(
    g: &Geometry,
    n: usize,
    x: &[f32],
    taps: &[f32],
    shift: &[f32],
    act: Act,
) -> Vec<f32> {
    assert!(
        x.len() >= n * g.h * g.w * g.c && taps.len() >= g.kh * g.kw * g.c && shift.len() >= g.c,
        "depthwise NHWC: buffers shorter than the geometry"
    );
    let kernel = Isa::detect();
    let image_len = g.h * g.w * g.c;
    let fill_row = |image: usize, oy: usize, out_row: &mut [MaybeUninit<f32>]| {
        let image_x = &x[image * image_len..(image + 1) * image_len];
        let mut rows = [(0, std::ptr::null()); MAX_KH];
        let n_rows = g.tap_rows(oy, |iy| image_x[iy * g.w * g.c..].as_ptr(), &mut rows);
        // SAFETY: each row pointer starts an input row of w x c values inside `image_x`.
        unsafe { kernel.depthwise_row(g, &rows[..n_rows], taps, shift, act, out_row) };
    };
    // SAFETY: the row kernel writes every value of its row.
    unsafe { rows_in_parallel((n, g.oh), g.ow * g.c, fill_row) }
}

/// The output rows of `n` images of `oh` rows, `row_values` values each, in parallel chunks of
/// [`chunk_rows`]: row `oy` of image `image` written by `fill_row(image, oy, row)`.
///
/// # Safety
/// `fill_row` writes every value of the row it is given.
unsafe fn rows_in_parallel(
    (n, oh): (usize, usize),
    row_values: usize,
    fill_row: impl Fn(usize, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let rows = n * oh;
    if rows * row_values == 0 {
        return Vec::new();
    }
    let rows_per_chunk = chunk_rows(rows, row_values, rayon::current_num_threads());
    let fill = |_: &mut (), chunk: usize, out: &mut [MaybeUninit<f32>]| {
        for (i, out_row) in out.chunks_exact_mut(row_values).enumerate() {
            let global = chunk * rows_per_chunk + i;
            fill_row(global / oh, global % oh, out_row);
        }
    };
    // SAFETY: each chunk holds whole output rows (the last one fewer), and the caller's `fill_row`
    // writes every value of each.
    unsafe {
        crate::ops::planes_uninit(rows * row_values, rows_per_chunk * row_values, || (), fill)
    }
}

/// The row kernels, each with its instruction set's lanes.
impl Isa {
    /// One output row (`out` holds `ow x c` values) from the input rows of its kernel rows that lie
    /// inside the input (`Geometry::tap_rows`).
    ///
    /// # Safety
    /// Each row pointer starts an input row of `w x c` readable values.
    pub(super) unsafe fn depthwise_row(
        self,
        g: &Geometry,
        tap_rows: &[(usize, *const f32)],
        taps: &[f32],
        shift: &[f32],
        act: Act,
        out: &mut [MaybeUninit<f32>],
    ) {
        assert!(
            out.len() >= g.ow * g.c && taps.len() >= g.kh * g.kw * g.c && shift.len() >= g.c,
            "depthwise NHWC row: buffers shorter than the geometry"
        );
        let args = RowArgs {
            g,
            tap_rows,
            taps,
            shift,
            act,
        };
        let out = out.as_mut_ptr().cast::<f32>();
        match self {
            // SAFETY: the CPU supports AVX-512F (Isa::detect); `out` holds ow x c values and the
            // input and weights are as long as the geometry says (asserted in `forward`).
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { x86::row_avx512(&args, out) },
            // SAFETY: as above for AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { x86::row_avx2(&args, out) },
            // SAFETY: the portable lanes run on any CPU; buffers as above.
            Self::Portable => unsafe { row_generic::<Portable>(&args, out) },
        }
    }
}

/// What one output row's kernel reads.
struct RowArgs<'a> {
    g: &'a Geometry,
    /// `(kernel row, start of its input row)` for the kernel rows inside the input.
    tap_rows: &'a [(usize, *const f32)],
    taps: &'a [f32],
    shift: &'a [f32],
    act: Act,
}

/// A vector of f32 lanes and the operations the row kernel needs. Implemented once per instruction
/// set; the row kernel is generic over it and compiled inside each `#[target_feature]` wrapper.
trait Lanes: Copy {
    const LANES: usize;
    type Mask: Copy;
    /// The first `k` lanes.
    ///
    /// # Safety
    /// The CPU supports the implementation's instructions (so for every method).
    unsafe fn mask(k: usize) -> Self::Mask;
    unsafe fn zero() -> Self;
    /// `v` in every lane.
    unsafe fn splat(v: f32) -> Self;
    /// Loads the masked lanes from `p` (the others read as 0, and are not touched).
    unsafe fn load(p: *const f32, m: Self::Mask) -> Self;
    /// `acc + w · x`.
    unsafe fn mul_add(w: Self, x: Self, acc: Self) -> Self;
    /// `act(v + shift)`, stored to the masked lanes of `p`.
    unsafe fn finish(p: *mut f32, m: Self::Mask, v: Self, shift: Self, act: Act);
}

/// Output row `oy`: for each vector of channels, the border columns one at a time, the interior four
/// at a time with their input columns computed without bounds checks.
///
/// # Safety
/// The CPU supports `L`'s instructions; `out` holds `ow x c` values; `x`, `taps` and `shift` are as long
/// as the geometry needs.
#[inline(always)]
unsafe fn row_generic<L: Lanes>(a: &RowArgs, out: *mut f32) {
    let g = a.g;
    let c = g.c;
    let tap_rows = a.tap_rows;
    let (lo, hi) = g.interior_cols();
    let taps = a.taps.as_ptr();
    let col_step = g.stride * c;
    // SAFETY: every offset below is inside its buffer: channels c0..c0 + lanes of a tap's weights, of
    // the shift, of an input pixel inside the image (checked or interior) and of an output column
    // below ow.
    unsafe {
        // (A loop, not a closure: a closure would not inherit the caller's target features.)
        for ox in (0..lo).chain(hi..g.ow) {
            for c0 in (0..c).step_by(L::LANES) {
                checked_column::<L>(a, tap_rows, c0, ox, out);
            }
        }
        if g.kh == 3 && g.kw == 3 && tap_rows.len() == 3 {
            interior_3x3::<L>(a, lo, hi, out);
            return;
        }
        // Four output columns at a time, all their channels before the next four: their input
        // pixels are a few contiguous lines of each tap row, read while in L1.
        let mut ox = lo;
        while ox + 4 <= hi {
            for c0 in (0..c).step_by(L::LANES) {
                let m = L::mask(c - c0);
                let (mut a0, mut a1, mut a2, mut a3) = (L::zero(), L::zero(), L::zero(), L::zero());
                for &(ky, row) in tap_rows {
                    let row = row.add(c0);
                    for kx in 0..g.kw {
                        let w = L::load(taps.add((ky * g.kw + kx) * c + c0), m);
                        // Interior: ox*s + kx*d >= pad_left, and the last column stays below w.
                        let ix = ox * g.stride + kx * g.dilation - g.pad_left;
                        let p = row.add(ix * c);
                        a0 = L::mul_add(w, L::load(p, m), a0);
                        a1 = L::mul_add(w, L::load(p.add(col_step), m), a1);
                        a2 = L::mul_add(w, L::load(p.add(2 * col_step), m), a2);
                        a3 = L::mul_add(w, L::load(p.add(3 * col_step), m), a3);
                    }
                }
                let shift = L::load(a.shift.as_ptr().add(c0), m);
                let o = out.add(ox * c + c0);
                L::finish(o, m, a0, shift, a.act);
                L::finish(o.add(c), m, a1, shift, a.act);
                L::finish(o.add(2 * c), m, a2, shift, a.act);
                L::finish(o.add(3 * c), m, a3, shift, a.act);
            }
            ox += 4;
        }
        while ox < hi {
            for c0 in (0..c).step_by(L::LANES) {
                checked_column::<L>(a, tap_rows, c0, ox, out);
            }
            ox += 1;
        }
    }
}

/// The interior columns `lo..hi` of an output row whose three kernel rows all lie inside the input,
/// for a 3x3 kernel (every MobileNetV2 and DeepLabV3 depthwise layer): one vector of channels at a
/// time with its nine weights and shift held in registers, four output columns per step, the taps
/// unrolled. The generic loop spent more on its tap bookkeeping and weight loads than on the
/// multiply-adds. Same sums, in the same order, as [`row_generic`].
///
/// # Safety
/// As [`row_generic`], with `a.tap_rows` holding kernel rows 0, 1 and 2.
#[inline(always)]
unsafe fn interior_3x3<L: Lanes>(a: &RowArgs, lo: usize, hi: usize, out: *mut f32) {
    let c = a.g.c;
    let rows = [a.tap_rows[0].1, a.tap_rows[1].1, a.tap_rows[2].1];
    let full = c - c % L::LANES;
    // SAFETY: the caller's; every vector is inside the channels.
    unsafe {
        for c0 in (0..full).step_by(L::LANES) {
            vector_3x3::<L>(a, rows, c0, L::mask(L::LANES), lo, hi, out);
        }
        if full < c {
            vector_3x3::<L>(a, rows, full, L::mask(c - full), lo, hi, out);
        }
    }
}

/// [`interior_3x3`] for the channels `c0..` of the lanes of `m`. (A function, not a closure: a
/// closure would not inherit the caller's target features.)
///
/// # Safety
/// As [`interior_3x3`].
#[inline(always)]
unsafe fn vector_3x3<L: Lanes>(
    a: &RowArgs,
    rows: [*const f32; 3],
    c0: usize,
    m: L::Mask,
    lo: usize,
    hi: usize,
    out: *mut f32,
) {
    let g = a.g;
    let c = g.c;
    let col_step = g.stride * c;
    let tap_step = g.dilation * c;
    // SAFETY: as in `row_generic`: channels c0.. of the masked lanes, input columns of interior
    // outputs (every tap inside the row), output columns below ow.
    unsafe {
        let w: [L; 9] = std::array::from_fn(|t| L::load(a.taps.as_ptr().add(t * c + c0), m));
        let shift = L::load(a.shift.as_ptr().add(c0), m);
        let mut ox = lo;
        // Stride 1, dilation 1: the four columns' taps read six input pixels per row, each loaded
        // once (half the loads).
        while g.stride == 1 && g.dilation == 1 && ox + 4 <= hi {
            let first = (ox - g.pad_left) * c + c0;
            let mut acc = [L::zero(); 4];
            for (ky, row) in rows.iter().enumerate() {
                let p = row.add(first);
                let x: [L; 6] = std::array::from_fn(|i| L::load(p.add(i * c), m));
                for kx in 0..3 {
                    let w = w[ky * 3 + kx];
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = L::mul_add(w, x[j + kx], *acc);
                    }
                }
            }
            finish_4::<L>(out.add(ox * c + c0), c, m, acc, shift, a.act);
            ox += 4;
        }
        while ox + 4 <= hi {
            let first = (ox * g.stride - g.pad_left) * c + c0;
            let mut acc = [L::zero(); 4];
            for (ky, row) in rows.iter().enumerate() {
                for kx in 0..3 {
                    let p = row.add(first + kx * tap_step);
                    let w = w[ky * 3 + kx];
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = L::mul_add(w, L::load(p.add(j * col_step), m), *acc);
                    }
                }
            }
            finish_4::<L>(out.add(ox * c + c0), c, m, acc, shift, a.act);
            ox += 4;
        }
        while ox < hi {
            let first = (ox * g.stride - g.pad_left) * c + c0;
            let mut acc = L::zero();
            for (ky, row) in rows.iter().enumerate() {
                for kx in 0..3 {
                    let x = L::load(row.add(first + kx * tap_step), m);
                    acc = L::mul_add(w[ky * 3 + kx], x, acc);
                }
            }
            L::finish(out.add(ox * c + c0), m, acc, shift, a.act);
            ox += 1;
        }
    }
}

/// Four consecutive output pixels' sums (`c` values apart from `o`): plus the shift, the activation,
/// stored to the lanes of `m`.
///
/// # Safety
/// The CPU supports `L`'s instructions; the lanes of `m` at `o + j * c` (j < 4) are inside the output.
#[inline(always)]
unsafe fn finish_4<L: Lanes>(o: *mut f32, c: usize, m: L::Mask, acc: [L; 4], shift: L, act: Act) {
    for (j, acc) in acc.into_iter().enumerate() {
        // SAFETY: the caller's.
        unsafe { L::finish(o.add(j * c), m, acc, shift, act) };
    }
}

/// Output column `ox`, channels `c0..` (the lanes of `m`), every tap checked against the input's edges.
///
/// # Safety
/// As [`row_generic`].
#[inline(always)]
unsafe fn checked_column<L: Lanes>(
    a: &RowArgs,
    tap_rows: &[(usize, *const f32)],
    c0: usize,
    ox: usize,
    out: *mut f32,
) {
    let g = a.g;
    let c = g.c;
    // SAFETY: the caller's; every tap read is inside the image (checked) and the store is column ox.
    unsafe {
        let m = L::mask(c - c0);
        let shift = L::load(a.shift.as_ptr().add(c0), m);
        let mut acc = L::zero();
        for &(ky, row) in tap_rows {
            for kx in 0..g.kw {
                if let Some(ix) = g.input(ox, kx, g.pad_left, g.w) {
                    let w = L::load(a.taps.as_ptr().add((ky * g.kw + kx) * c + c0), m);
                    let v = L::load(row.add(ix * c + c0), m);
                    acc = L::mul_add(w, v, acc);
                }
            }
        }
        L::finish(out.add(ox * c + c0), m, acc, shift, a.act);
    }
}

/// A dense convolution's sizes and values, for its row kernel: `g` with `c` the input channels.
pub(super) struct DenseRowArgs<'a> {
    pub g: &'a Geometry,
    pub c_out: usize,
    /// One image, `c x h x w` (NCHW).
    pub x: &'a [f32],
    /// `(c * kh * kw) x c_out`: row `(ci * kh + ky) * kw + kx` holds every output channel's weight.
    pub weight_t: &'a [f32],
    pub shift: &'a [f32],
    pub act: Act,
    pub oy: usize,
}

/// `act(dense conv + shift)` of `n` NCHW images (`g.c` channels) into NHWC maps of `c_out` channels.
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_forward(
    g: &Geometry,
    c_out: usize,
    n: usize,
    x: &[f32],
    weight_t: &[f32],
    shift: &[f32],
    act: Act,
) -> Vec<f32> {
    let plane = g.h * g.w;
    assert!(
        x.len() >= n * g.c * plane
            && weight_t.len() >= g.c * g.kh * g.kw * c_out
            && shift.len() >= c_out,
        "dense NHWC: buffers shorter than the geometry"
    );
    let kernel = Isa::detect();
    let fill_row = |image: usize, oy: usize, out_row: &mut [MaybeUninit<f32>]| {
        let args = DenseRowArgs {
            g,
            c_out,
            x: &x[image * g.c * plane..(image + 1) * g.c * plane],
            weight_t,
            shift,
            act,
            oy,
        };
        let out = out_row.as_mut_ptr().cast::<f32>();
        match kernel {
            // SAFETY: the CPU supports AVX-512F (Isa::detect); `out` holds ow x c_out values, the
            // image and weights are as long as the geometry says (asserted above).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::dense_row_avx512(&args, out) },
            // SAFETY: as above for AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::dense_row_avx2(&args, out) },
            // SAFETY: the portable lanes run on any CPU; buffers as above.
            Isa::Portable => unsafe { dense_row_generic::<Portable, 4>(&args, out) },
        }
    };
    // SAFETY: the row kernel writes every value of its row.
    unsafe { rows_in_parallel((n, g.oh), g.ow * c_out, fill_row) }
}

/// One output row of a dense convolution: the border columns one at a time with every tap checked,
/// the interior four at a time.
///
/// # Safety
/// The CPU supports `L`'s instructions; `out` holds `ow x c_out` values; the buffers of `a` are as long
/// as the geometry needs.
#[inline(always)]
unsafe fn dense_row_generic<L: Lanes, const P: usize>(a: &DenseRowArgs, out: *mut f32) {
    let g = a.g;
    let (lo, hi) = g.interior_cols();
    // SAFETY: every read is inside the image (checked, or interior columns of rows inside it), the
    // weights and the shift (channels co0.. of c_out), every write inside the output row.
    unsafe {
        for ox in (0..lo).chain(hi..g.ow) {
            for co0 in (0..a.c_out).step_by(L::LANES) {
                dense_checked_column::<L>(a, co0, ox, out);
            }
        }
        // The kernel rows inside the image, per input channel: (start of the input row, first tap).
        let mut rows = [(std::ptr::null(), 0); MAX_DENSE_ROWS];
        let mut n_rows = 0;
        for ci in 0..g.c {
            for ky in 0..g.kh {
                if let Some(iy) = g.input(a.oy, ky, g.pad_top, g.h) {
                    rows[n_rows] = (
                        a.x.as_ptr().add((ci * g.h + iy) * g.w),
                        (ci * g.kh + ky) * g.kw,
                    );
                    n_rows += 1;
                }
            }
        }
        let rows = &rows[..n_rows];
        let mut co0 = 0;
        while co0 < a.c_out {
            let left = a.c_out - co0;
            if left > L::LANES {
                let m = [L::mask(L::LANES), L::mask(left - L::LANES)];
                dense_interior::<L, 2, P>(a, rows, co0, m, lo, hi, out);
                co0 += 2 * L::LANES;
            } else {
                dense_interior::<L, 1, P>(a, rows, co0, [L::mask(left)], lo, hi, out);
                co0 += L::LANES;
            }
        }
    }
}

/// Input rows of a dense convolution's output row at most (channels x kernel rows).
pub(super) const MAX_DENSE_ROWS: usize = 64;

/// The interior columns `lo..hi` of a dense convolution's output row, for the `V` vectors of output
/// channels from `co0` (lanes `m`): `P` output pixels at a time (then one at a time), each input value
/// broadcast once for the `V` vectors.
///
/// # Safety
/// As [`dense_row_generic`]; `rows` holds the input rows of the output row inside the image.
#[inline(always)]
unsafe fn dense_interior<L: Lanes, const V: usize, const P: usize>(
    a: &DenseRowArgs,
    rows: &[(*const f32, usize)],
    co0: usize,
    m: [L::Mask; V],
    lo: usize,
    hi: usize,
    out: *mut f32,
) {
    // SAFETY: the caller's.
    unsafe {
        let shift: [L; V] =
            std::array::from_fn(|v| L::load(a.shift.as_ptr().add(co0 + v * L::LANES), m[v]));
        let mut ox = lo;
        while ox + P <= hi {
            dense_pixels::<L, V, P>(a, rows, co0, m, shift, ox, out);
            ox += P;
        }
        while ox < hi {
            dense_pixels::<L, V, 1>(a, rows, co0, m, shift, ox, out);
            ox += 1;
        }
    }
}

/// Output pixels `ox..ox + P` (interior) of [`dense_interior`]'s vectors: the taps in the kernel's
/// order (input channel, kernel row, kernel column), as the 1x1 kernels sum a matrix of patches.
///
/// # Safety
/// As [`dense_interior`], with `ox + P` at most the interior's end.
// The accumulators are a register block indexed by vector and pixel together.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn dense_pixels<L: Lanes, const V: usize, const P: usize>(
    a: &DenseRowArgs,
    rows: &[(*const f32, usize)],
    co0: usize,
    m: [L::Mask; V],
    shift: [L; V],
    ox: usize,
    out: *mut f32,
) {
    let g = a.g;
    // SAFETY: the caller's: interior columns read inside their rows, the weights of the masked
    // lanes, writes inside the output row.
    unsafe {
        let weights = a.weight_t.as_ptr().add(co0);
        let mut acc = [[L::zero(); P]; V];
        for &(row, tap0) in rows {
            for kx in 0..g.kw {
                let tap = weights.add((tap0 + kx) * a.c_out);
                let w: [L; V] = std::array::from_fn(|v| L::load(tap.add(v * L::LANES), m[v]));
                // Interior: ox*s + kx*d >= pad_left, the last column below w.
                let p = row.add(ox * g.stride + kx * g.dilation - g.pad_left);
                for j in 0..P {
                    let x = L::splat(*p.add(j * g.stride));
                    for v in 0..V {
                        acc[v][j] = L::mul_add(w[v], x, acc[v][j]);
                    }
                }
            }
        }
        for j in 0..P {
            let o = out.add((ox + j) * a.c_out + co0);
            for v in 0..V {
                L::finish(o.add(v * L::LANES), m[v], acc[v][j], shift[v], a.act);
            }
        }
    }
}

/// Output column `ox`, channels `co0..`, every tap checked against the image's edges.
///
/// # Safety
/// As [`dense_row_generic`].
#[inline(always)]
unsafe fn dense_checked_column<L: Lanes>(a: &DenseRowArgs, co0: usize, ox: usize, out: *mut f32) {
    let g = a.g;
    // SAFETY: the caller's; every tap read is inside the image (checked).
    unsafe {
        let m = L::mask(a.c_out - co0);
        let mut acc = L::zero();
        for ci in 0..g.c {
            for ky in 0..g.kh {
                let Some(iy) = g.input(a.oy, ky, g.pad_top, g.h) else {
                    continue;
                };
                for kx in 0..g.kw {
                    if let Some(ix) = g.input(ox, kx, g.pad_left, g.w) {
                        let tap = (ci * g.kh + ky) * g.kw + kx;
                        let w = L::load(a.weight_t.as_ptr().add(tap * a.c_out + co0), m);
                        let v = *a.x.as_ptr().add((ci * g.h + iy) * g.w + ix);
                        acc = L::mul_add(w, L::splat(v), acc);
                    }
                }
            }
        }
        let shift = L::load(a.shift.as_ptr().add(co0), m);
        L::finish(out.add(ox * a.c_out + co0), m, acc, shift, a.act);
    }
}

/// Plain Rust, eight lanes in an array (any CPU; multiply then add, as the portable NCHW kernel).
#[derive(Clone, Copy)]
struct Portable([f32; 8]);

impl Lanes for Portable {
    const LANES: usize = 8;
    type Mask = usize;

    #[inline(always)]
    unsafe fn mask(k: usize) -> usize {
        k.min(8)
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        Self([0.0; 8])
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Self([v; 8])
    }

    #[inline(always)]
    unsafe fn load(p: *const f32, m: usize) -> Self {
        let mut v = [0f32; 8];
        for (i, slot) in v.iter_mut().enumerate().take(m) {
            // SAFETY: the caller's: the first m lanes at p are inside the buffer.
            *slot = unsafe { *p.add(i) };
        }
        Self(v)
    }

    #[inline(always)]
    unsafe fn mul_add(w: Self, x: Self, acc: Self) -> Self {
        Self(std::array::from_fn(|i| acc.0[i] + w.0[i] * x.0[i]))
    }

    #[inline(always)]
    unsafe fn finish(p: *mut f32, m: usize, v: Self, shift: Self, act: Act) {
        for i in 0..m {
            let y = v.0[i] + shift.0[i];
            let y = match act {
                Act::Identity => y,
                Act::Relu => y.max(0.0),
                Act::Relu6 => y.clamp(0.0, 6.0),
            };
            // SAFETY: the caller's: the first m lanes at p are inside the output.
            unsafe { *p.add(i) = y };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{dense_row_generic, row_generic, Act, DenseRowArgs, Lanes, RowArgs};
    use crate::simd::avx2::act8;
    use crate::simd::avx512::act16;

    #[derive(Clone, Copy)]
    struct Avx512(__m512);

    impl Lanes for Avx512 {
        const LANES: usize = 16;
        type Mask = __mmask16;

        #[inline(always)]
        unsafe fn mask(k: usize) -> __mmask16 {
            if k >= 16 {
                u16::MAX
            } else {
                (1u16 << k) - 1
            }
        }

        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the caller's (AVX-512F).
            Self(unsafe { _mm512_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            // SAFETY: the caller's (AVX-512F).
            Self(unsafe { _mm512_set1_ps(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32, m: __mmask16) -> Self {
            // SAFETY: the caller's: the masked lanes at p are inside the buffer.
            Self(unsafe { _mm512_maskz_loadu_ps(m, p) })
        }

        #[inline(always)]
        unsafe fn mul_add(w: Self, x: Self, acc: Self) -> Self {
            // SAFETY: the caller's (AVX-512F).
            Self(unsafe { _mm512_fmadd_ps(w.0, x.0, acc.0) })
        }

        #[inline(always)]
        unsafe fn finish(p: *mut f32, m: __mmask16, v: Self, shift: Self, act: Act) {
            // SAFETY: the caller's: AVX-512F, the masked lanes at p are inside the output.
            unsafe {
                let y = act16(_mm512_add_ps(v.0, shift.0), act);
                _mm512_mask_storeu_ps(p, m, y);
            }
        }
    }

    #[derive(Clone, Copy)]
    struct Avx2(__m256);

    impl Lanes for Avx2 {
        const LANES: usize = 8;
        type Mask = __m256i;

        #[inline(always)]
        unsafe fn mask(k: usize) -> __m256i {
            let k = k.min(8) as i32;
            // SAFETY: the caller's (AVX2).
            unsafe {
                _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(k),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                )
            }
        }

        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the caller's (AVX).
            Self(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            // SAFETY: the caller's (AVX).
            Self(unsafe { _mm256_set1_ps(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32, m: __m256i) -> Self {
            // SAFETY: the caller's: the masked lanes at p are inside the buffer.
            Self(unsafe { _mm256_maskload_ps(p, m) })
        }

        #[inline(always)]
        unsafe fn mul_add(w: Self, x: Self, acc: Self) -> Self {
            // SAFETY: the caller's (FMA).
            Self(unsafe { _mm256_fmadd_ps(w.0, x.0, acc.0) })
        }

        #[inline(always)]
        unsafe fn finish(p: *mut f32, m: __m256i, v: Self, shift: Self, act: Act) {
            // SAFETY: the caller's: AVX, the masked lanes at p are inside the output.
            unsafe {
                let y = act8(_mm256_add_ps(v.0, shift.0), act);
                _mm256_maskstore_ps(p, m, y);
            }
        }
    }

    /// # Safety
    /// The CPU supports AVX-512F; buffers as [`row_generic`] needs.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row_avx512(a: &RowArgs, out: *mut f32) {
        // SAFETY: the caller's guarantees.
        unsafe { row_generic::<Avx512>(a, out) }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; buffers as [`row_generic`] needs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_avx2(a: &RowArgs, out: *mut f32) {
        // SAFETY: the caller's guarantees.
        unsafe { row_generic::<Avx2>(a, out) }
    }

    /// # Safety
    /// The CPU supports AVX-512F; buffers as [`dense_row_generic`] needs.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dense_row_avx512(a: &DenseRowArgs, out: *mut f32) {
        // SAFETY: the caller's guarantees.
        unsafe { dense_row_generic::<Avx512, 8>(a, out) }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; buffers as [`dense_row_generic`] needs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dense_row_avx2(a: &DenseRowArgs, out: *mut f32) {
        // SAFETY: the caller's guarantees.
        unsafe { dense_row_generic::<Avx2, 4>(a, out) }
    }
}
