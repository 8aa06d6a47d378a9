//! The innermost loops of the batch-norm and depthwise kernels with explicit AVX-512 and AVX2/FMA code,
//! picked at run time.
//!
//! Written as plain Rust, these per-channel sums compile to code that keeps its eight partial sums in
//! memory (LLVM does not promote the lane arrays to registers) or does not vectorise at all; in a
//! MobileNetV2 training step the batch-norm backward's sums alone took 17% of the time (`perf`). The
//! AVX2 versions are 3-4x faster. Every function checks the CPU once per call and falls back to the
//! portable loop, so a build for any x86-64 (or another architecture) gives the same results to f32
//! rounding; the AVX-512 depthwise spans give the AVX2 ones' results bit for bit.
use crate::fused::Act;

/// Elements summed in f32 lanes before the partial sums are carried on in f64: short enough that the
/// f32 rounding stays ~1e-6 relative, long enough that the inner loop runs at full width.
const SUM_BLOCK: usize = 256;

/// `(Σ (v - pivot), Σ (v - pivot)²)`. Centring on a pivot near the mean (e.g. a value of the channel)
/// keeps the variance `E[d²] - E[d]²` free of cancellation even when the mean is large.
pub(crate) fn centred_sums(xs: &[f32], pivot: f32) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx2::centred_sums(xs, pivot) };
    }
    portable::centred_sums(xs, pivot)
}

/// `(Σ g, Σ g·(x - mean))` with `g = grad` where `act` passes its gradient (judged at its output
/// `outs`), else 0. The three slices have the same length.
pub(crate) fn gated_sums(
    xs: &[f32],
    outs: &[f32],
    grads: &[f32],
    mean: f32,
    act: Act,
) -> (f64, f64) {
    let n = xs.len();
    let (outs, grads) = (&outs[..n], &grads[..n]);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above); the slices have length `n`.
        return unsafe { avx2::gated_sums(xs, outs, grads, mean, act) };
    }
    portable::gated_sums(xs, outs, grads, mean, act)
}

/// The instruction set a kernel runs with: the widest the CPU has (below the tests' cap, see
/// [`for_each_level`]). Kernels with one function per instruction set match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Isa {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                return Self::Avx512;
            }
            if has_avx2_fma() {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// The instruction sets the kernels pick from, widest last.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Portable = 0,
    Avx2 = 1,
    Avx512 = 2,
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(test)]
    if forced_below(Level::Avx2) {
        return false;
    }
    // std caches the CPUID result: this is two relaxed atomic loads.
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// AVX-512F on top of AVX2 and FMA (the AVX-512 kernels use AVX2 code for their tails and helpers).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    #[cfg(test)]
    if forced_below(Level::Avx512) {
        return false;
    }
    std::is_x86_feature_detected!("avx512f") && has_avx2_fma()
}

/// Tests cap the instruction set (process-wide) to run the AVX2 or portable loops on a CPU that has
/// more; every path is correct, so other tests running meanwhile still pass. `u8::MAX`: no cap.
#[cfg(test)]
static FORCED_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

#[cfg(all(test, target_arch = "x86_64"))]
fn forced_below(level: Level) -> bool {
    FORCED_LEVEL.load(std::sync::atomic::Ordering::Relaxed) < level as u8
}

/// Tests that cap the level, and tests that compare two runs of the dispatched kernels bit for bit,
/// hold this lock, so a cap set by one never falls between the other's two runs.
#[cfg(test)]
static LEVEL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lock of [`LEVEL_LOCK`] (a test that panicked while holding it left the level uncapped).
#[cfg(test)]
pub(crate) fn level_lock() -> std::sync::MutexGuard<'static, ()> {
    LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` once per level, the kernels capped at it (widest first; a level the CPU lacks runs the
/// best one it has).
#[cfg(test)]
pub(crate) fn for_each_level(mut f: impl FnMut(Level)) {
    for level in [Level::Avx512, Level::Avx2, Level::Portable] {
        with_level(level, || f(level));
    }
}

/// Runs `f` with the kernels capped at `level`, then uncaps them.
#[cfg(test)]
pub(crate) fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> R {
    struct Uncap;
    impl Drop for Uncap {
        fn drop(&mut self) {
            FORCED_LEVEL.store(u8::MAX, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _lock = level_lock();
    FORCED_LEVEL.store(level as u8, std::sync::atomic::Ordering::Relaxed);
    let _uncap = Uncap;
    f()
}

/// Whether `act` passes the gradient at output value `o` (PyTorch's rule: strictly inside the
/// linear range).
#[inline]
pub(crate) fn passes(act: Act, o: f32) -> bool {
    match act {
        Act::Identity => true,
        Act::Relu => o > 0.0,
        Act::Relu6 => (o > 0.0) & (o < 6.0),
    }
}

/// `e^x` in a few multiply-adds and no branch, so loops over slices vectorise (std's `f32::exp` is a
/// libm call per element). Cody-Waite range reduction `x = n·ln 2 + r`, a degree-6 polynomial on
/// `|r| <= ln 2 / 2` (Cephes' `expf` coefficients), and `2^n` built in the exponent bits. Relative error
/// below 2e-7 for x in [-87.3, 88.7]; below that the result is 0-ish (at most 1.2e-38), above it +inf.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.722_83);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

mod portable {
    use super::{passes, Act, SUM_BLOCK};

    pub(super) fn centred_sums(xs: &[f32], pivot: f32) -> (f64, f64) {
        let (mut s, mut q) = (0f64, 0f64);
        for block in xs.chunks(SUM_BLOCK) {
            let (a, b) = centred_block(block, pivot);
            s += a as f64;
            q += b as f64;
        }
        (s, q)
    }

    /// One block of [`centred_sums`] in f32 (also the AVX2 version's tail).
    #[inline]
    pub(super) fn centred_block(block: &[f32], pivot: f32) -> (f32, f32) {
        let (mut a, mut b) = (0f32, 0f32);
        for &v in block {
            let d = v - pivot;
            a += d;
            b += d * d;
        }
        (a, b)
    }

    pub(super) fn gated_sums(
        xs: &[f32],
        outs: &[f32],
        grads: &[f32],
        mean: f32,
        act: Act,
    ) -> (f64, f64) {
        let (mut s, mut q) = (0f64, 0f64);
        for ((xb, ob), gb) in xs
            .chunks(SUM_BLOCK)
            .zip(outs.chunks(SUM_BLOCK))
            .zip(grads.chunks(SUM_BLOCK))
        {
            let (a, b) = gated_block(xb, ob, gb, mean, act);
            s += a as f64;
            q += b as f64;
        }
        (s, q)
    }

    /// One block of [`gated_sums`] in f32 (also the AVX2 version's tail).
    #[inline]
    pub(super) fn gated_block(
        xs: &[f32],
        outs: &[f32],
        grads: &[f32],
        mean: f32,
        act: Act,
    ) -> (f32, f32) {
        let (mut a, mut b) = (0f32, 0f32);
        for ((&x, &o), &g) in xs.iter().zip(outs).zip(grads) {
            let g = if passes(act, o) { g } else { 0.0 };
            a += g;
            b += g * (x - mean);
        }
        (a, b)
    }
}

/// The taps of a depthwise convolution over one contiguous span of outputs, for the span kernels:
/// `dst[i] = act(init + Σ_t weights[t] · src[bases[t] + i] + shift)`, the taps summed in order onto
/// `init`, the shift (if any) added after them (the fused inference path starts from 0 and adds the
/// folded batch norm's shift last, the order in which a separate bias pass rounds it).
#[cfg(target_arch = "x86_64")]
pub(crate) struct DwSpan<'a> {
    pub bases: &'a [usize],
    pub weights: &'a [f32],
    pub init: f32,
    pub shift: Option<f32>,
    pub act: Act,
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{portable, Act, SUM_BLOCK};

    /// Lane masks for the last `1..=7` elements of a row: `TAIL_MASKS[8 - k..16 - k]` enables `k` lanes.
    const TAIL_MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn tail_mask(k: usize) -> __m256i {
        // SAFETY: 8 - k + 8 <= 16 for k in 1..=8.
        unsafe { _mm256_loadu_si256(TAIL_MASKS.as_ptr().add(8 - k) as *const __m256i) }
    }

    /// `dst += a * src` (fused multiply-add) over the common length.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn axpy(dst: &mut [f32], src: &[f32], a: f32) {
        let n = dst.len().min(src.len());
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: elements i..i + 16 of both slices, below `n` (the shorter length); the CPU
            // features are the caller's guarantee.
            unsafe {
                let y0 = _mm256_fmadd_ps(va, _mm256_loadu_ps(s.add(i)), _mm256_loadu_ps(d.add(i)));
                let y1 = _mm256_fmadd_ps(
                    va,
                    _mm256_loadu_ps(s.add(i + 8)),
                    _mm256_loadu_ps(d.add(i + 8)),
                );
                _mm256_storeu_ps(d.add(i), y0);
                _mm256_storeu_ps(d.add(i + 8), y1);
            }
            i += 16;
        }
        if i + 8 <= n {
            // SAFETY: elements i..i + 8 of both slices, below `n`.
            unsafe {
                let y = _mm256_fmadd_ps(va, _mm256_loadu_ps(s.add(i)), _mm256_loadu_ps(d.add(i)));
                _mm256_storeu_ps(d.add(i), y);
            }
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            // SAFETY: the mask enables the n - i lanes left, so the masked loads and store touch
            // elements below `n` only.
            unsafe {
                let y = _mm256_fmadd_ps(
                    va,
                    _mm256_maskload_ps(s.add(i), m),
                    _mm256_maskload_ps(d.add(i), m),
                );
                _mm256_maskstore_ps(d.add(i), m, y);
            }
        }
    }

    /// `Σ a·b` over the common length.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: elements i..i + 16 of both slices, below `n` (the shorter length); the CPU
            // features are the caller's guarantee.
            unsafe {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    acc1,
                );
            }
            i += 16;
        }
        if i + 8 <= n {
            // SAFETY: elements i..i + 8 of both slices, below `n`.
            unsafe {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            }
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            // SAFETY: the mask enables the n - i lanes left, so the masked loads read below `n` only.
            unsafe {
                acc1 = _mm256_fmadd_ps(
                    _mm256_maskload_ps(pa.add(i), m),
                    _mm256_maskload_ps(pb.add(i), m),
                    acc1,
                );
            }
        }
        lane_sum(_mm256_add_ps(acc0, acc1))
    }

    /// `even[i] = src[2i]`, `odd[i] = src[2i + 1]` for every `i` that `src` has (the column phases of
    /// a stride-2 row); other elements of `even` and `odd` are left as they are.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn deinterleave2(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
        let n = src.len();
        assert!(even.len() >= n.div_ceil(2) && odd.len() >= n / 2);
        let mut i = 0;
        while 2 * i + 16 <= n {
            // SAFETY: reads src[2i..2i+16] (2i + 16 <= n) and writes 8 values from i in each phase
            // (i + 8 <= n / 2 <= both lengths, asserted above).
            unsafe {
                let a = _mm256_loadu_ps(src.as_ptr().add(2 * i));
                let b = _mm256_loadu_ps(src.as_ptr().add(2 * i + 8));
                // Within 128-bit lanes: [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit quarters in order.
                let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
                let e =
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)));
                let o =
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o)));
                _mm256_storeu_ps(even.as_mut_ptr().add(i), e);
                _mm256_storeu_ps(odd.as_mut_ptr().add(i), o);
            }
            i += 8;
        }
        for (k, &v) in src.iter().enumerate().skip(2 * i) {
            if k % 2 == 0 {
                even[k / 2] = v;
            } else {
                odd[k / 2] = v;
            }
        }
    }

    /// The inverse of [`deinterleave2`]: `dst[2i] = even[i]`, `dst[2i + 1] = odd[i]` for every
    /// position of `dst`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn interleave2(even: &[f32], odd: &[f32], dst: &mut [f32]) {
        let n = dst.len();
        assert!(even.len() >= n.div_ceil(2) && odd.len() >= n / 2);
        let mut i = 0;
        while 2 * i + 16 <= n {
            // SAFETY: reads 8 values from i in each phase (i + 8 <= n / 2, asserted lengths) and
            // writes dst[2i..2i+16] (2i + 16 <= n).
            unsafe {
                let quarters = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                // [e0 e1 e4 e5 | e2 e3 e6 e7] and the same for odd, then pairs within 128-bit lanes.
                let e = quarters(_mm256_loadu_ps(even.as_ptr().add(i)));
                let o = quarters(_mm256_loadu_ps(odd.as_ptr().add(i)));
                _mm256_storeu_ps(dst.as_mut_ptr().add(2 * i), _mm256_unpacklo_ps(e, o));
                _mm256_storeu_ps(dst.as_mut_ptr().add(2 * i + 8), _mm256_unpackhi_ps(e, o));
            }
            i += 8;
        }
        for (k, d) in dst.iter_mut().enumerate().skip(2 * i) {
            *d = if k % 2 == 0 { even[k / 2] } else { odd[k / 2] };
        }
    }

    /// The activation on 8 lanes as the scalar code computes it: `f32::max(v, 0)` is 0 for NaN,
    /// `f32::clamp(v, 0, 6)` keeps NaN (`max_ps`/`min_ps` return their second operand on NaN).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn act8(v: __m256, act: Act) -> __m256 {
        match act {
            Act::Identity => v,
            Act::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
            Act::Relu6 => _mm256_min_ps(_mm256_set1_ps(6.0), _mm256_max_ps(_mm256_setzero_ps(), v)),
        }
    }

    /// A depthwise span ([`super::DwSpan`]), 8 lanes at a time, 16 per step, the last lanes masked.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `dst` is valid for `len` writes; for every tap,
    /// `bases[t] + len <= src.len()`; `bases` and `weights` have one length.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn depthwise_span(
        dst: *mut f32,
        len: usize,
        src: &[f32],
        span: &super::DwSpan<'_>,
    ) {
        let taps = span.bases.len().min(span.weights.len());
        let vinit = _mm256_set1_ps(span.init);
        let end = |a: __m256| match span.shift {
            Some(s) => act8(_mm256_add_ps(a, _mm256_set1_ps(s)), span.act),
            None => act8(a, span.act),
        };
        let base = src.as_ptr();
        let mut i = 0;
        while i + 16 <= len {
            let (mut a0, mut a1) = (vinit, vinit);
            for t in 0..taps {
                // SAFETY: t < taps; src[bases[t] + i ..][..16] lies below bases[t] + len.
                unsafe {
                    let w = _mm256_set1_ps(*span.weights.get_unchecked(t));
                    let p = base.add(*span.bases.get_unchecked(t) + i);
                    a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p), a0);
                    a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p.add(8)), a1);
                }
            }
            // SAFETY: i + 16 <= len.
            unsafe {
                _mm256_storeu_ps(dst.add(i), end(a0));
                _mm256_storeu_ps(dst.add(i + 8), end(a1));
            }
            i += 16;
        }
        while i < len {
            let k = (len - i).min(8);
            let m = tail_mask(k);
            let mut a = vinit;
            for t in 0..taps {
                // SAFETY: as above; the mask enables the k lanes below len only.
                unsafe {
                    let w = _mm256_set1_ps(*span.weights.get_unchecked(t));
                    let p = base.add(*span.bases.get_unchecked(t) + i);
                    a = _mm256_fmadd_ps(w, _mm256_maskload_ps(p, m), a);
                }
            }
            // SAFETY: the masked store writes dst[i..i + k], below len.
            unsafe { _mm256_maskstore_ps(dst.add(i), m, end(a)) };
            i += k;
        }
    }

    /// `Σ a`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn sum(a: &[f32]) -> f32 {
        let (n, p) = (a.len(), a.as_ptr());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: elements i..i + 8, below `n`; the CPU features are the caller's guarantee.
            acc = _mm256_add_ps(acc, unsafe { _mm256_loadu_ps(p.add(i)) });
            i += 8;
        }
        if i < n {
            // SAFETY: the mask enables the n - i lanes left, so the masked load reads below `n` only.
            acc = _mm256_add_ps(acc, unsafe {
                _mm256_maskload_ps(p.add(i), tail_mask(n - i))
            });
        }
        lane_sum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    fn lane_sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair)))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn centred_sums(xs: &[f32], pivot: f32) -> (f64, f64) {
        let (mut s, mut q) = (0f64, 0f64);
        let p = _mm256_set1_ps(pivot);
        for block in xs.chunks(SUM_BLOCK) {
            let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (lanes, rest) = block.as_chunks::<8>();
            for v in lanes {
                // SAFETY: `v` is 8 readable f32.
                let d = _mm256_sub_ps(unsafe { _mm256_loadu_ps(v.as_ptr()) }, p);
                a = _mm256_add_ps(a, d);
                b = _mm256_fmadd_ps(d, d, b);
            }
            let (ra, rb) = portable::centred_block(rest, pivot);
            s += (lane_sum(a) + ra) as f64;
            q += (lane_sum(b) + rb) as f64;
        }
        (s, q)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA, and the three slices must have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gated_sums(
        xs: &[f32],
        outs: &[f32],
        grads: &[f32],
        mean: f32,
        act: Act,
    ) -> (f64, f64) {
        let (zero, six, m) = (
            _mm256_setzero_ps(),
            _mm256_set1_ps(6.0),
            _mm256_set1_ps(mean),
        );
        let (mut s, mut q) = (0f64, 0f64);
        let mut start = 0;
        while start < xs.len() {
            let end = (start + SUM_BLOCK).min(xs.len());
            let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = start;
            while i + 8 <= end {
                // SAFETY: i + 8 <= len of all three slices.
                let (x, o, g) = unsafe {
                    (
                        _mm256_loadu_ps(xs.as_ptr().add(i)),
                        _mm256_loadu_ps(outs.as_ptr().add(i)),
                        _mm256_loadu_ps(grads.as_ptr().add(i)),
                    )
                };
                let g = match act {
                    Act::Identity => g,
                    Act::Relu => _mm256_and_ps(g, _mm256_cmp_ps::<_CMP_GT_OQ>(o, zero)),
                    Act::Relu6 => _mm256_and_ps(
                        g,
                        _mm256_and_ps(
                            _mm256_cmp_ps::<_CMP_GT_OQ>(o, zero),
                            _mm256_cmp_ps::<_CMP_LT_OQ>(o, six),
                        ),
                    ),
                };
                a = _mm256_add_ps(a, g);
                b = _mm256_fmadd_ps(g, _mm256_sub_ps(x, m), b);
                i += 8;
            }
            let (ra, rb) =
                portable::gated_block(&xs[i..end], &outs[i..end], &grads[i..end], mean, act);
            s += (lane_sum(a) + ra) as f64;
            q += (lane_sum(b) + rb) as f64;
            start = end;
        }
        (s, q)
    }
}

/// AVX-512F kernels (16 lanes, mask registers for the row tails).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::Act;

    /// As `avx2::act8` on 16 lanes (same NaN behaviour).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn act16(v: __m512, act: Act) -> __m512 {
        match act {
            Act::Identity => v,
            Act::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
            Act::Relu6 => _mm512_min_ps(_mm512_set1_ps(6.0), _mm512_max_ps(_mm512_setzero_ps(), v)),
        }
    }

    /// As [`super::avx2::depthwise_span`], 16 lanes at a time, 32 per step; the sums (same taps,
    /// same order, fused multiply-adds) are bit for bit the AVX2 kernel's.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; the bounds are [`super::avx2::depthwise_span`]'s.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn depthwise_span(
        dst: *mut f32,
        len: usize,
        src: &[f32],
        span: &super::DwSpan<'_>,
    ) {
        let taps = span.bases.len().min(span.weights.len());
        let vinit = _mm512_set1_ps(span.init);
        let end = |a: __m512| match span.shift {
            Some(s) => act16(_mm512_add_ps(a, _mm512_set1_ps(s)), span.act),
            None => act16(a, span.act),
        };
        let base = src.as_ptr();
        let mut i = 0;
        while i + 32 <= len {
            let (mut a0, mut a1) = (vinit, vinit);
            for t in 0..taps {
                // SAFETY: t < taps; src[bases[t] + i ..][..32] lies below bases[t] + len.
                unsafe {
                    let w = _mm512_set1_ps(*span.weights.get_unchecked(t));
                    let p = base.add(*span.bases.get_unchecked(t) + i);
                    a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p), a0);
                    a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p.add(16)), a1);
                }
            }
            // SAFETY: i + 32 <= len.
            unsafe {
                _mm512_storeu_ps(dst.add(i), end(a0));
                _mm512_storeu_ps(dst.add(i + 16), end(a1));
            }
            i += 32;
        }
        while i < len {
            let k = (len - i).min(16);
            let m: __mmask16 = if k == 16 { u16::MAX } else { (1u16 << k) - 1 };
            let mut a = vinit;
            for t in 0..taps {
                // SAFETY: as above; masked-off lanes are neither read nor faulted on.
                unsafe {
                    let w = _mm512_set1_ps(*span.weights.get_unchecked(t));
                    let p = base.add(*span.bases.get_unchecked(t) + i);
                    a = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, p), a);
                }
            }
            // SAFETY: the masked store writes dst[i..i + k], below len.
            unsafe { _mm512_mask_storeu_ps(dst.add(i), m, end(a)) };
            i += k;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_f64_exp_to_2e_7_relative() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        eprintln!("exp: worst relative error {worst:.3e}");
        assert!(worst < 2e-7, "worst relative error {worst:.3e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1000.0) < 1.2e-38 && super::exp(-1000.0) >= 0.0);
        assert!((0.0..1.2e-38).contains(&super::exp(f32::NEG_INFINITY)));
    }

    use super::*;

    fn data(n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * scale + offset)
            .collect()
    }

    /// Sums in f64 element by element: the reference both implementations are held to.
    fn exact_gated(xs: &[f32], outs: &[f32], grads: &[f32], mean: f32, act: Act) -> (f64, f64) {
        let (mut s, mut q) = (0f64, 0f64);
        for ((&x, &o), &g) in xs.iter().zip(outs).zip(grads) {
            if passes(act, o) {
                s += g as f64;
                q += g as f64 * (x as f64 - mean as f64);
            }
        }
        (s, q)
    }

    fn close(a: (f64, f64), b: (f64, f64), scale: f64) -> bool {
        (a.0 - b.0).abs() <= 1e-5 * scale && (a.1 - b.1).abs() <= 1e-5 * scale
    }

    #[test]
    fn dispatched_and_portable_sums_agree_with_f64_sums() {
        // Lengths around the 8-lane and 256-element block edges.
        for n in [0, 1, 7, 8, 9, 255, 256, 257, 1000, 12544] {
            let xs = data(n, 0.7, 3.0);
            let grads = data(n, 0.3, -0.1);
            for act in [Act::Identity, Act::Relu, Act::Relu6] {
                let outs: Vec<f32> = xs
                    .iter()
                    .map(|&v| match act {
                        Act::Identity => v,
                        Act::Relu => v.max(0.0),
                        Act::Relu6 => v.clamp(0.0, 6.0),
                    })
                    .collect();
                let want = exact_gated(&xs, &outs, &grads, 2.5, act);
                let scale = n as f64 + 1.0;
                let got = gated_sums(&xs, &outs, &grads, 2.5, act);
                assert!(
                    close(got, want, scale),
                    "n {n} {act:?}: {got:?} vs {want:?}"
                );
                let got = portable::gated_sums(&xs, &outs, &grads, 2.5, act);
                assert!(
                    close(got, want, scale),
                    "portable n {n} {act:?}: {got:?} vs {want:?}"
                );
            }
            let exact = xs.iter().fold((0f64, 0f64), |(s, q), &v| {
                let d = v as f64 - 2.0;
                (s + d, q + d * d)
            });
            let scale = 10.0 * (n as f64 + 1.0);
            let got = centred_sums(&xs, 2.0);
            assert!(close(got, exact, scale), "n {n}: {got:?} vs {exact:?}");
            let got = portable::centred_sums(&xs, 2.0);
            assert!(
                close(got, exact, scale),
                "portable n {n}: {got:?} vs {exact:?}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_row_kernels_match_plain_loops_at_every_tail_length() {
        if !has_avx2_fma() {
            return;
        }
        for n in 0..40 {
            let a = data(n + 3, 0.25, 0.5);
            let b = data(n, -0.5, 1.0);
            let mut dst = a.clone();
            // SAFETY: AVX2 and FMA checked above.
            unsafe { avx2::axpy(&mut dst[..n], &b, 1.5) };
            for i in 0..n {
                assert!(
                    (dst[i] - (a[i] + 1.5 * b[i])).abs() <= 1e-5,
                    "axpy n {n} at {i}"
                );
            }
            assert_eq!(&dst[n..], &a[n..], "axpy n {n} wrote past the row");
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            // SAFETY: AVX2 and FMA checked above.
            let got = unsafe { avx2::dot(&a, &b) } as f64;
            assert!(
                (got - want).abs() <= 1e-4 * (n as f64 + 1.0),
                "dot n {n}: {got} vs {want}"
            );
            let want: f64 = b.iter().map(|&x| x as f64).sum();
            // SAFETY: AVX2 and FMA checked above.
            let got = unsafe { avx2::sum(&b) } as f64;
            assert!(
                (got - want).abs() <= 1e-4 * (n as f64 + 1.0),
                "sum n {n}: {got} vs {want}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_deinterleave_splits_even_and_odd_columns() {
        if !has_avx2_fma() {
            return;
        }
        for n in 0..70 {
            let src = data(n, 1.0, 0.0);
            let (mut even, mut odd) = (vec![f32::NAN; 40], vec![f32::NAN; 40]);
            // SAFETY: AVX2 and FMA checked above.
            unsafe { avx2::deinterleave2(&src, &mut even, &mut odd) };
            for i in 0..40 {
                let want_even = src.get(2 * i).copied();
                let want_odd = src.get(2 * i + 1).copied();
                assert_eq!(
                    want_even.unwrap_or(f32::NAN).to_bits(),
                    even[i].to_bits(),
                    "n {n} even {i}"
                );
                assert_eq!(
                    want_odd.unwrap_or(f32::NAN).to_bits(),
                    odd[i].to_bits(),
                    "n {n} odd {i}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_interleave_undoes_the_deinterleave() {
        if !has_avx2_fma() {
            return;
        }
        for n in 0..70 {
            let src = data(n, 1.0, 0.5);
            let (mut even, mut odd) = (vec![0.0; 40], vec![0.0; 40]);
            let mut back = vec![f32::NAN; n];
            // SAFETY: AVX2 and FMA checked above.
            unsafe {
                avx2::deinterleave2(&src, &mut even, &mut odd);
                avx2::interleave2(&even, &odd, &mut back);
            }
            assert_eq!(back, src, "n {n}");
        }
    }

    #[test]
    fn gradient_gate_follows_pytorch_at_the_kinks() {
        // Outputs exactly at 0 and 6 block the gradient; NaN outputs block it for ReLU-type gates.
        let outs = [0.0, 6.0, 3.0, f32::NAN, 0.5, 5.9, 6.0, 0.0, 1.0];
        let xs = [0.0; 9];
        let grads = [1.0; 9];
        assert_eq!(gated_sums(&xs, &outs, &grads, 0.0, Act::Relu6).0, 4.0);
        assert_eq!(gated_sums(&xs, &outs, &grads, 0.0, Act::Relu).0, 6.0);
        assert_eq!(gated_sums(&xs, &outs, &grads, 0.0, Act::Identity).0, 9.0);
    }
}
