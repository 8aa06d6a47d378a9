//! The 1x1 convolution of inference as register-blocked kernels on the NCHW layout, with the folded
//! batch norm's shift, an optional residual and the activation applied before each value is stored.
//!
//! `y[b, o, p] = act(Σ_k w[o, k] · x[b, k, p] + shift[o] (+ residual[b, o, p]))`. Nothing is packed:
//! a kernel reads `NR` consecutive pixels of each input channel (one row of the NCHW image) and
//! broadcasts one weight from each of its `MR` output channels' weight rows (each row read in order,
//! so every cache line of it serves sixteen depth steps); `MR x NR` sums stay in registers over the
//! whole depth, in order, with fused multiply-adds. So each output value is the same sum whatever the tiling, the
//! batch size or the thread count, and the AVX-512 and AVX2 kernels agree bit for bit.
//!
//! The tiles (image, block of output channels, block of pixels) are spread over rayon's threads in
//! one parallel region per convolution; a general gemm library instead packs both operands on every
//! call and splits its work on its own, which on the small convolutions of a MobileNet costs more than
//! the arithmetic.
use rayon::prelude::*;

use super::Act;
use crate::simd::Isa;

/// `(x, packed weights, shift, residual)` of one convolution, for the kernels.
pub(crate) struct PointwiseProblem<'a> {
    pub x: &'a [f32],
    pub weight: &'a [f32],
    pub shift: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub act: Act,
    /// Whether `shift` runs along the columns (one value per output column: the channels of an NHWC
    /// output, where the rows are pixels) instead of the rows (the channels of NCHW).
    pub shift_per_col: bool,
    /// 0: each row of `x` holds `hw` values (NCHW). `P > 0`: `x` is packed in panels of `P` columns
    /// (the last one zero-padded), each `c_in x P` values in a row, so a register block reads
    /// consecutive memory (a multiple of every instruction set's block width).
    pub x_panel: usize,
    pub n: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub hw: usize,
}

/// Each instruction set's register block.
impl Isa {
    /// Output channels and pixels per register block.
    fn block(self) -> (usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => (12, 32),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => (6, 16),
            Self::Portable => (4, 16),
        }
    }
}

/// Work per tile below which splitting further costs more in scheduling than it gains (multiply-adds).
const MIN_TILE_MACS: usize = 1 << 16;
/// Pixels per tile at most.
const MAX_TILE_PIXELS: usize = 1024;
/// A tile's input panel (`c_in x` its pixels) takes at most this many bytes, so that it stays in L2
/// while every channel block of the tile reads it (a deep input, 960 channels, takes 136 pixels).
const MAX_PANEL_BYTES: usize = 256 << 10;

/// One tile of the output: image `image`, output channels `rows`, pixels `cols`.
#[derive(Debug, Clone)]
struct Tile {
    image: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

/// Tiles covering the output: enough for each thread to have about four when there is the work for
/// it, none below [`MIN_TILE_MACS`]; pixels are split first (whole register blocks), output channels
/// when the images are small.
fn tiles(p: &PointwiseProblem, (mr, nr): (usize, usize), threads: usize) -> Vec<Tile> {
    let (n, c_out, hw) = (p.n, p.c_out, p.hw);
    let macs = n * p.c_in * c_out * hw;
    let wanted = if threads > 1 {
        (threads * 4).min(macs / MIN_TILE_MACS).max(1)
    } else {
        1
    };
    let per_image = wanted.div_ceil(n.max(1));
    let col_units = hw.div_ceil(nr).max(1);
    let col_blocks = per_image
        .max(hw.div_ceil(MAX_TILE_PIXELS))
        .max(hw.div_ceil((MAX_PANEL_BYTES / (4 * p.c_in.max(1))).max(nr)))
        .clamp(1, col_units);
    let col_len = col_units.div_ceil(col_blocks) * nr;
    let col_blocks = hw.div_ceil(col_len).max(1);
    let row_units = c_out.div_ceil(mr).max(1);
    let row_blocks = per_image.div_ceil(col_blocks).clamp(1, row_units);
    let row_len = row_units.div_ceil(row_blocks) * mr;
    let mut out = Vec::new();
    for image in 0..n {
        for r0 in (0..c_out).step_by(row_len) {
            for c0 in (0..hw.max(1)).step_by(col_len) {
                out.push(Tile {
                    image,
                    rows: r0..(r0 + row_len).min(c_out),
                    cols: c0..(c0 + col_len).min(hw),
                });
            }
        }
    }
    out
}

/// Tiles for the NHWC orientation (rows are pixels, columns the output channels): pixel rows are split
/// first, so that each tile reads its rows of the input once while the weights (`c_in x c_out`, read by
/// every tile) stay in L2; columns only when there are too few rows for the threads, or when a tile's
/// weight panel would not fit [`MAX_PANEL_BYTES`].
fn row_tiles(p: &PointwiseProblem, (mr, nr): (usize, usize), threads: usize) -> Vec<Tile> {
    let (rows_total, cols_total) = (p.n * p.c_out, p.hw);
    let macs = rows_total * p.c_in * cols_total;
    let wanted = if threads > 1 {
        (threads * 4).min(macs / MIN_TILE_MACS).max(1)
    } else {
        1
    };
    let row_units = rows_total.div_ceil(mr).max(1);
    let col_units = cols_total.div_ceil(nr).max(1);
    let panel_cols = (MAX_PANEL_BYTES / (4 * p.c_in.max(1))).max(nr);
    if threads > 1 && wanted >= threads && rows_total >= 2 * threads * mr {
        return balanced_row_tiles(
            p,
            mr,
            (nr, col_units, panel_cols),
            threads,
            wanted / threads,
        );
    }
    let row_blocks = wanted.clamp(1, row_units);
    let row_len = row_units.div_ceil(row_blocks) * mr;
    let col_blocks = wanted
        .div_ceil(row_blocks)
        .max(cols_total.div_ceil(panel_cols))
        .clamp(1, col_units);
    let col_len = col_units.div_ceil(col_blocks) * nr;
    let mut out = Vec::new();
    for c0 in (0..cols_total.max(1)).step_by(col_len) {
        for r0 in (0..rows_total).step_by(row_len) {
            out.push(Tile {
                image: 0,
                rows: r0..(r0 + row_len).min(rows_total),
                cols: c0..(c0 + col_len).min(cols_total),
            });
        }
    }
    out
}

/// [`row_tiles`] when every thread can have whole register blocks: the pixels cut in one share per
/// thread, even to 4 pixels (the smallest register block), each share in `per_thread` tiles of whole
/// blocks. Tiles of whole blocks over all the pixels left one thread up to a tile more than the
/// other (MobileNetV2's 14x14 layers: 108 pixels against 88).
fn balanced_row_tiles(
    p: &PointwiseProblem,
    mr: usize,
    (nr, col_units, panel_cols): (usize, usize, usize),
    threads: usize,
    per_thread: usize,
) -> Vec<Tile> {
    let (rows_total, cols_total) = (p.n * p.c_out, p.hw);
    let col_blocks = cols_total.div_ceil(panel_cols).clamp(1, col_units);
    let col_len = col_units.div_ceil(col_blocks) * nr;
    let share_start = |t: usize| {
        if t >= threads {
            rows_total
        } else {
            (t * rows_total / threads + 2) / 4 * 4
        }
    };
    let mut out = Vec::new();
    for c0 in (0..cols_total.max(1)).step_by(col_len) {
        let cols = c0..(c0 + col_len).min(cols_total);
        for t in 0..threads {
            let (s0, s1) = (share_start(t), share_start(t + 1));
            let units = (s1 - s0) / mr;
            let tile_start = |j: usize| {
                if j >= per_thread {
                    s1
                } else {
                    s0 + j * units / per_thread * mr
                }
            };
            for j in 0..per_thread {
                let rows = tile_start(j)..tile_start(j + 1);
                if !rows.is_empty() {
                    out.push(Tile {
                        image: 0,
                        rows,
                        cols: cols.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The output buffer's pointer, shared by the tiles (each writes its own elements only).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tiles write disjoint elements of the buffer, which outlives the parallel loop.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw pointer field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `act(w · x + shift (+ residual))` for every image, `n x c_out x hw` values.
pub(crate) fn pointwise_forward_epilogue(p: &PointwiseProblem) -> Vec<f32> {
    let len = p.n * p.c_out * p.hw;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: `y` has room for the `len` values, which the call writes, every one.
    unsafe {
        pointwise_run(p, y.as_mut_ptr(), true);
        y.set_len(len);
    }
    y
}

/// [`pointwise_forward_epilogue`] into `out` (`n x c_out x hw` values) on the calling thread: for
/// a caller that already splits its work over the threads (a block fused row by row).
pub(crate) fn pointwise_serial_into(p: &PointwiseProblem, out: &mut [std::mem::MaybeUninit<f32>]) {
    assert!(
        out.len() >= p.n * p.c_out * p.hw,
        "pointwise conv: output shorter than its values"
    );
    // SAFETY: `out` holds the values the call writes (MaybeUninit<f32> has f32's layout).
    unsafe { pointwise_run(p, out.as_mut_ptr().cast(), false) };
}

/// Writes the `n x c_out x hw` values of `p` to `out`, in parallel tiles when `parallel`.
///
/// # Safety
/// `out` has room for `n x c_out x hw` values.
unsafe fn pointwise_run(p: &PointwiseProblem, out: *mut f32, parallel: bool) {
    let (n, c_in, c_out, hw) = (p.n, p.c_in, p.c_out, p.hw);
    let x_len = if p.x_panel > 0 {
        hw.div_ceil(p.x_panel) * p.x_panel * c_in
    } else {
        n * c_in * hw
    };
    assert!(
        p.x.len() >= x_len
            && (p.x_panel == 0 || (p.x_panel.is_multiple_of(32) && n == 1))
            && p.weight.len() >= c_out * c_in
            && p.shift
                .is_none_or(|s| s.len() >= if p.shift_per_col { hw } else { c_out })
            && p.residual.is_none_or(|r| r.len() >= n * c_out * hw),
        "pointwise conv: buffers shorter than {n} x {c_in} -> {c_out} x {hw}"
    );
    let isa = Isa::detect();
    let (mr, nr) = isa.block();
    let out = OutPtr(out);
    let run_tile = |tile: &Tile| {
        for r0 in tile.rows.clone().step_by(mr) {
            let rows = (tile.rows.end - r0).min(mr);
            for c0 in tile.cols.clone().step_by(nr) {
                let (x_offset, x_stride) = if p.x_panel > 0 {
                    let panel = p.x_panel;
                    ((c0 / panel) * c_in * panel + c0 % panel, panel)
                } else {
                    (tile.image * c_in * hw + c0, hw)
                };
                let block = Block {
                    x_offset,
                    x_stride,
                    y_offset: tile.image * c_out * hw + r0 * hw + c0,
                    row0: r0,
                    rows,
                    col0: c0,
                    cols: (tile.cols.end - c0).min(nr),
                };
                // SAFETY: the block's rows x cols lie inside this tile (so inside the output and
                // written by no other tile), its input columns inside image `image` of x and its
                // weight rows inside the weights (lengths asserted above); the kernel matching `isa`
                // runs only on a CPU that has it (Isa::detect).
                unsafe { run_block(isa, p, &block, out.get()) };
            }
        }
    };
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let tiles = if p.shift_per_col {
        row_tiles(p, (mr, nr), threads)
    } else {
        tiles(p, (mr, nr), threads)
    };
    // The tiles cover every (image, channel, pixel) once, and every block's kernel writes all of its
    // values.
    if tiles.len() == 1 {
        run_tile(&tiles[0]);
    } else {
        tiles.par_iter().for_each(run_tile);
    }
}

/// One register block: output channels `row0..row0 + rows` (`rows <= MR`) and `cols <= NR` pixels.
struct Block {
    x_offset: usize,
    /// Values from one row of `x` to the next.
    x_stride: usize,
    y_offset: usize,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
}

/// # Safety
/// As the kernels': the block lies inside the buffers and the CPU supports `isa`.
unsafe fn run_block(isa: Isa, p: &PointwiseProblem, b: &Block, out: *mut f32) {
    match isa {
        // SAFETY: the caller's guarantees.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::block_avx512(p, b, out) },
        // SAFETY: the caller's guarantees.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::block_avx2(p, b, out) },
        // SAFETY: the caller's guarantees.
        Isa::Portable => unsafe { block_portable(p, b, out) },
    }
}

/// The weights of row `r` of the block (`c_in` values); rows past the block's last repeat it (their
/// sums are computed but never stored, so the kernels need no row tail).
#[inline(always)]
fn weight_row<'a>(p: &PointwiseProblem<'a>, b: &Block, r: usize) -> &'a [f32] {
    let row = b.row0 + r.min(b.rows - 1);
    &p.weight[row * p.c_in..(row + 1) * p.c_in]
}

/// The shift of value (`r`, `j`) of the block: its row's or its column's, 0 without one.
#[inline(always)]
fn shift_at(p: &PointwiseProblem, b: &Block, r: usize, j: usize) -> f32 {
    match p.shift {
        Some(s) if p.shift_per_col => s[b.col0 + j],
        Some(s) => s[b.row0 + r],
        None => 0.0,
    }
}

/// The epilogue of one value, as the separate in-place pass computes it: `act(y + shift + residual)`
/// left to right (a missing shift is 0, as there).
#[inline(always)]
fn finish(v: f32, shift: f32, residual: Option<f32>, act: Act) -> f32 {
    let v = match residual {
        Some(r) => v + shift + r,
        None => v + shift,
    };
    match act {
        Act::Identity => v,
        Act::Relu => v.max(0.0),
        Act::Relu6 => v.clamp(0.0, 6.0),
    }
}

/// Plain Rust (any CPU; multiply then add, not fused).
///
/// # Safety
/// The block lies inside the buffers (see [`pointwise_forward_epilogue`]).
#[allow(clippy::needless_range_loop)]
unsafe fn block_portable(p: &PointwiseProblem, b: &Block, out: *mut f32) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0f32; NR]; MR];
    let w_rows: [&[f32]; MR] = std::array::from_fn(|r| weight_row(p, b, r));
    for k in 0..p.c_in {
        let xs = &p.x[b.x_offset + k * b.x_stride..][..b.cols];
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let wv = w_rows[r][k];
            for (a, &xv) in acc_row.iter_mut().zip(xs) {
                *a += wv * xv;
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate().take(b.rows) {
        let at = b.y_offset + r * p.hw;
        for (j, &v) in acc_row.iter().enumerate().take(b.cols) {
            let shift = shift_at(p, b, r, j);
            let res = p.residual.map(|res| res[at + j]);
            // SAFETY: element (row0 + r, col j) of the block, inside the output (the caller's
            // guarantee).
            unsafe { *out.add(at + j) = finish(v, shift, res, p.act) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{weight_row, Block, PointwiseProblem};

    /// Up to 12 output channels x 32 pixels: 24 accumulators, two input vectors and twelve broadcast
    /// weights (one from each weight row, each row read in order) per depth step.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the block lies inside the buffers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512(p: &PointwiseProblem, b: &Block, out: *mut f32) {
        // SAFETY: the caller's guarantees; the quad variants get blocks of exactly their rows.
        unsafe {
            // A block of 16 columns or fewer (an NHWC output of 16 channels) runs one vector per
            // row instead of multiplying a masked-off second one; one of 17 to 24 (an NHWC output
            // of 24 channels) multiplies its second vector in 256-bit halves, so the masked-off
            // lanes cost nothing (a Zen 4 core runs two 256-bit multiply-adds per cycle, one 512-bit).
            match (b.rows, b.cols) {
                (12, 25..) => block_avx512_rows::<12, true, true, false>(p, b, out),
                (8, 25..) => block_avx512_rows::<8, true, true, false>(p, b, out),
                (4, 25..) => block_avx512_rows::<4, true, true, false>(p, b, out),
                (12, 17..=24) => block_avx512_rows::<12, true, true, true>(p, b, out),
                (8, 17..=24) => block_avx512_rows::<8, true, true, true>(p, b, out),
                (4, 17..=24) => block_avx512_rows::<4, true, true, true>(p, b, out),
                (12, _) => block_avx512_rows::<12, true, false, false>(p, b, out),
                (8, _) => block_avx512_rows::<8, true, false, false>(p, b, out),
                (4, _) => block_avx512_rows::<4, true, false, false>(p, b, out),
                // A short tail block computes only the rows it needs, rounded up to 4 or 8; a single
                // row (the 49 pixels of a 7x7 map end in one) alone, at a quarter of a 4-row block's
                // multiply-adds.
                (1, _) => block_avx512_rows::<1, false, true, false>(p, b, out),
                (2..=3, _) => block_avx512_rows::<4, false, true, false>(p, b, out),
                (5..=7, _) => block_avx512_rows::<8, false, true, false>(p, b, out),
                _ => block_avx512_rows::<12, false, true, false>(p, b, out),
            }
        }
    }

    /// [`block_avx512`] with `MR` accumulator rows. With `QUADS` (a block of exactly `MR` rows, a
    /// multiple of 4) row `4j + i` is read `c_in * i` past row `4j`: one pointer per quad and two
    /// strides keep every weight address in registers (twelve row pointers would spill, and reloading
    /// them cost a tenth of the kernel's time). Without, each row has its own pointer (rows past the
    /// block's last repeat it: computed, never stored).
    ///
    /// # Safety
    /// As [`block_avx512`]; with `QUADS`, `b.rows == MR` and `MR % 4 == 0`; without `TWO` (one vector
    /// of columns per row), `b.cols <= 16`; with `NARROW` (a second vector of 8 lanes), `b.cols <= 24`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block_avx512_rows<
        const MR: usize,
        const QUADS: bool,
        const TWO: bool,
        const NARROW: bool,
    >(
        p: &PointwiseProblem,
        b: &Block,
        out: *mut f32,
    ) {
        let lanes = |k: usize| -> __mmask16 {
            match k {
                0 => 0,
                1..=15 => (1u16 << k) - 1,
                _ => u16::MAX,
            }
        };
        let (m0, m1) = (lanes(b.cols), lanes(b.cols.saturating_sub(16)));
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // The second vector's accumulators when NARROW.
        let mut acc_narrow = [_mm256_setzero_ps(); MR];
        let x = p.x.as_ptr();
        let c_in = p.c_in;
        let w_rows: [*const f32; MR] = std::array::from_fn(|r| {
            let row = if QUADS { 4 * (r / 4) } else { r };
            weight_row(p, b, row).as_ptr()
        });
        for k in 0..c_in {
            // SAFETY: row k of the block's input columns (cols <= 32 of them, the rest masked off)
            // lies inside x; each weight row holds c_in values, and with QUADS rows 4j + i (all
            // inside the block) start c_in * i past row 4j.
            unsafe {
                let row = x.add(b.x_offset + k * b.x_stride);
                let x0 = _mm512_maskz_loadu_ps(m0, row);
                let x1 = if TWO {
                    _mm512_maskz_loadu_ps(m1, row.wrapping_add(16))
                } else {
                    _mm512_setzero_ps()
                };
                for (r, (a, a_narrow)) in acc.iter_mut().zip(&mut acc_narrow).enumerate() {
                    let w = if QUADS {
                        *w_rows[r].add(k + (r % 4) * c_in)
                    } else {
                        *w_rows[r].add(k)
                    };
                    let wr = _mm512_set1_ps(w);
                    a[0] = _mm512_fmadd_ps(wr, x0, a[0]);
                    if TWO && NARROW {
                        *a_narrow = _mm256_fmadd_ps(
                            _mm512_castps512_ps256(wr),
                            _mm512_castps512_ps256(x1),
                            *a_narrow,
                        );
                    } else if TWO {
                        a[1] = _mm512_fmadd_ps(wr, x1, a[1]);
                    }
                }
            }
        }
        // One call per constant row index: each row's accumulators are then named registers. A
        // loop indexing `acc` at run time kept a zeroed copy of all 24 in memory (a 1.5 KB memset
        // per block, 3% of a MobileNetV2 inference, `perf`).
        macro_rules! store_rows {
            ($($r:literal)*) => {$(
                if $r < MR && $r < b.rows {
                    let a = if NARROW {
                        [acc[$r][0], _mm512_castps256_ps512(acc_narrow[$r])]
                    } else {
                        acc[$r]
                    };
                    // SAFETY: row $r of the block, inside the output (the caller's guarantee); the
                    // lanes past a narrow second vector's 8 are masked off.
                    unsafe { store_row_avx512(p, b, out, $r, a, (m0, m1)) };
                }
            )*};
        }
        store_rows!(0 1 2 3 4 5 6 7 8 9 10 11);
    }

    /// Row `r` of a block: its two accumulators plus the row's shift and the residual, the
    /// activation, stored to the lanes of `masks`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; row `r` of the block lies inside the buffers.
    // Not a `#[target_feature]` function (those cannot be forced inline): only ever called, and
    // inlined, from the block kernel of its instruction set, so the accumulators stay in registers.
    #[inline(always)]
    unsafe fn store_row_avx512(
        p: &PointwiseProblem,
        b: &Block,
        out: *mut f32,
        r: usize,
        a: [__m512; 2],
        masks: (__mmask16, __mmask16),
    ) {
        // SAFETY: the caller's: the CPU has the instruction set, row `r` lies inside the buffers.
        unsafe {
            let row_shift = _mm512_set1_ps(match p.shift {
                Some(s) if !p.shift_per_col => s[b.row0 + r],
                _ => 0.0,
            });
            let at = b.y_offset + r * p.hw;
            for (half, m) in [(0, masks.0), (1, masks.1)] {
                if m == 0 {
                    continue;
                }
                let shift = match p.shift {
                    // SAFETY: the masked lanes are this block's columns, inside the shift (one per column).
                    Some(s) if p.shift_per_col => {
                        _mm512_maskz_loadu_ps(m, s.as_ptr().add(b.col0 + 16 * half))
                    }
                    _ => row_shift,
                };
                let mut v = _mm512_add_ps(a[half], shift);
                if let Some(res) = p.residual {
                    // SAFETY: the masked lanes are this block's pixels of row row0 + r, inside the
                    // residual (same shape as the output).
                    let rv = _mm512_maskz_loadu_ps(m, res.as_ptr().add(at + 16 * half));
                    v = _mm512_add_ps(v, rv);
                }
                let v = crate::simd::avx512::act16(v, p.act);
                // SAFETY: the masked lanes are this block's pixels of row row0 + r.
                _mm512_mask_storeu_ps(out.add(at + 16 * half), m, v);
            }
        }
    }

    /// Lane masks for the first `k` of 8 lanes.
    #[target_feature(enable = "avx2")]
    fn mask8(k: usize) -> __m256i {
        let k = k.min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(k),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// 6 output channels x 16 pixels: 12 accumulators in the 16 AVX2 registers.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; the block lies inside the buffers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2(p: &PointwiseProblem, b: &Block, out: *mut f32) {
        const MR: usize = 6;
        let (m0, m1) = (mask8(b.cols), mask8(b.cols.saturating_sub(8)));
        let any1 = b.cols > 8;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let x = p.x.as_ptr();
        let w_rows: [*const f32; MR] = std::array::from_fn(|r| weight_row(p, b, r).as_ptr());
        for k in 0..p.c_in {
            // SAFETY: as in the AVX-512 kernel; masked-off lanes are not read.
            unsafe {
                let row = x.add(b.x_offset + k * b.x_stride);
                let x0 = _mm256_maskload_ps(row, m0);
                let x1 = _mm256_maskload_ps(row.wrapping_add(8), m1);
                for (r, a) in acc.iter_mut().enumerate() {
                    let wr = _mm256_set1_ps(*w_rows[r].add(k));
                    a[0] = _mm256_fmadd_ps(wr, x0, a[0]);
                    a[1] = _mm256_fmadd_ps(wr, x1, a[1]);
                }
            }
        }
        // One call per constant row index, as in the AVX-512 kernel.
        macro_rules! store_rows {
            ($($r:literal)*) => {$(
                if $r < b.rows {
                    // SAFETY: row $r of the block, inside the output (the caller's guarantee).
                    unsafe { store_row_avx2(p, b, out, $r, acc[$r], (m0, m1), any1) };
                }
            )*};
        }
        store_rows!(0 1 2 3 4 5);
    }

    /// Row `r` of a block, as [`store_row_avx512`] on 8 lanes; the second half only when `any1`.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; row `r` of the block lies inside the buffers.
    // Not a `#[target_feature]` function (those cannot be forced inline): only ever called, and
    // inlined, from the block kernel of its instruction set, so the accumulators stay in registers.
    #[inline(always)]
    unsafe fn store_row_avx2(
        p: &PointwiseProblem,
        b: &Block,
        out: *mut f32,
        r: usize,
        a: [__m256; 2],
        masks: (__m256i, __m256i),
        any1: bool,
    ) {
        // SAFETY: the caller's: the CPU has the instruction set, row `r` lies inside the buffers.
        unsafe {
            let row_shift = _mm256_set1_ps(match p.shift {
                Some(s) if !p.shift_per_col => s[b.row0 + r],
                _ => 0.0,
            });
            let at = b.y_offset + r * p.hw;
            for (half, m) in [(0, masks.0), (1, masks.1)] {
                if half == 1 && !any1 {
                    continue;
                }
                let shift = match p.shift {
                    // SAFETY: the masked lanes are this block's columns, inside the shift (one per column).
                    Some(s) if p.shift_per_col => {
                        _mm256_maskload_ps(s.as_ptr().add(b.col0 + 8 * half), m)
                    }
                    _ => row_shift,
                };
                let mut v = _mm256_add_ps(a[half], shift);
                if let Some(res) = p.residual {
                    // SAFETY: as in the AVX-512 kernel.
                    let rv = _mm256_maskload_ps(res.as_ptr().add(at + 8 * half), m);
                    v = _mm256_add_ps(v, rv);
                }
                let v = crate::simd::avx2::act8(v, p.act);
                // SAFETY: the masked lanes are this block's pixels of row row0 + r.
                _mm256_maskstore_ps(out.add(at + 8 * half), m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random buffer in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The same maths in f64, then the epilogue.
    fn reference(p: &PointwiseProblem) -> Vec<f64> {
        let mut y = vec![0f64; p.n * p.c_out * p.hw];
        for b in 0..p.n {
            for o in 0..p.c_out {
                for j in 0..p.hw {
                    let mut acc = 0f64;
                    for k in 0..p.c_in {
                        acc += p.weight[o * p.c_in + k] as f64
                            * p.x[(b * p.c_in + k) * p.hw + j] as f64;
                    }
                    let at = (b * p.c_out + o) * p.hw + j;
                    let shift_index = if p.shift_per_col { j } else { o };
                    acc += p.shift.map_or(0.0, |s| s[shift_index] as f64);
                    acc += p.residual.map_or(0.0, |r| r[at] as f64);
                    y[at] = match p.act {
                        Act::Identity => acc,
                        Act::Relu => acc.max(0.0),
                        Act::Relu6 => acc.clamp(0.0, 6.0),
                    };
                }
            }
        }
        y
    }

    /// Every instruction-set level, shapes with row and pixel tails, deep and shallow sums, with and
    /// without shift and residual: the f64 result to rounding, AVX-512 and AVX2 bit for bit alike.
    #[test]
    fn kernels_match_f64_and_each_other() {
        // (n, c_in, c_out, hw)
        let shapes = [
            (1, 3, 5, 7),
            (2, 16, 13, 49),
            (1, 40, 25, 100),
            (3, 7, 12, 33),
            (1, 300, 30, 20),
        ];
        for (seed, &(n, c_in, c_out, hw)) in shapes.iter().enumerate() {
            let x = values(n * c_in * hw, seed as u64 + 1);
            let w = values(c_out * c_in, seed as u64 + 11);
            let shift = values(c_out.max(hw), seed as u64 + 21);
            let residual = values(n * c_out * hw, seed as u64 + 31);
            for (with_shift, with_residual, act, shift_per_col) in [
                (true, false, Act::Relu6, false),
                (true, true, Act::Identity, false),
                (false, true, Act::Relu, false),
                (false, false, Act::Identity, false),
                (true, false, Act::Relu6, true),
                (true, true, Act::Relu, true),
            ] {
                // The NHWC orientation has one image of pixel rows.
                if shift_per_col && n > 1 {
                    continue;
                }
                let p = PointwiseProblem {
                    x: &x,
                    weight: &w,
                    shift: with_shift.then_some(&shift[..]),
                    residual: with_residual.then_some(&residual[..]),
                    act,
                    shift_per_col,
                    x_panel: 0,
                    n,
                    c_in,
                    c_out,
                    hw,
                };
                let want = reference(&p);
                let label = format!(
                    "{n}x{c_in}->{c_out}x{hw} shift {with_shift} (per column {shift_per_col}) \
                     residual {with_residual} {act:?}"
                );
                let mut by_level = Vec::new();
                crate::simd::for_each_level(|level| {
                    let got = pointwise_forward_epilogue(&p);
                    for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (1.0 + r.abs()) * (c_in as f64).sqrt();
                        assert!(
                            (g as f64 - r).abs() <= tol,
                            "{label} {level:?}: value {i} is {g}, f64 {r}"
                        );
                    }
                    by_level.push(got);
                });
                #[cfg(target_arch = "x86_64")]
                if crate::simd::has_avx512() {
                    assert_eq!(by_level[0], by_level[1], "{label}: AVX-512 and AVX2 differ");
                }
            }
        }
    }

    type Planner = fn(&PointwiseProblem, (usize, usize), usize) -> Vec<Tile>;

    /// A problem of these sizes without data, for the tile planners.
    fn sizes_only(n: usize, c_in: usize, c_out: usize, hw: usize) -> PointwiseProblem<'static> {
        PointwiseProblem {
            x: &[],
            weight: &[],
            shift: None,
            residual: None,
            act: Act::Identity,
            shift_per_col: false,
            x_panel: 0,
            n,
            c_in,
            c_out,
            hw,
        }
    }

    /// The tiles (both orientations' planners) cover every output once, for batch sizes, thread
    /// counts and shapes around the split rules (a tile left out or written twice would leave a value
    /// unset or race).
    #[test]
    fn tiles_cover_the_output_once() {
        for &(n, c_in, c_out, hw) in &[
            (1, 32, 16, 12544),
            (16, 96, 24, 3136),
            (1, 960, 160, 49),
            (2, 3, 5, 1),
            (1, 1, 1, 1),
            // NHWC orientation (pixels as rows): MobileNetV2's 28x28, 14x14 and 7x7 layers.
            (1, 32, 784, 192),
            (1, 96, 196, 576),
            (1, 576, 196, 96),
            (1, 160, 49, 960),
            (1, 24, 3136, 144),
        ] {
            let p = sizes_only(n, c_in, c_out, hw);
            for threads in [1, 2, 3, 8] {
                for (block, planner) in [(12, 32), (6, 16), (4, 16)]
                    .into_iter()
                    .flat_map(|b| [(b, tiles as Planner), (b, row_tiles as Planner)])
                {
                    let mut count = vec![0u8; n * c_out * hw];
                    for t in planner(&p, block, threads) {
                        for r in t.rows.clone() {
                            for c in t.cols.clone() {
                                count[(t.image * c_out + r) * hw + c] += 1;
                            }
                        }
                    }
                    assert!(
                        count.iter().all(|&c| c == 1),
                        "{n}x{c_out}x{hw} threads {threads} block {block:?}"
                    );
                }
            }
        }
    }

    /// With two threads, the NHWC tiles' halves (what each thread takes when rayon splits the list)
    /// hold the same pixels to 4.
    #[test]
    fn row_tiles_halves_are_even() {
        for pixels in [784, 196, 3136, 1000, 98] {
            let p = PointwiseProblem {
                shift_per_col: true,
                x_panel: 32,
                ..sizes_only(1, 96, pixels, 576)
            };
            let tiles = row_tiles(&p, (12, 32), 2);
            let (first, second) = tiles.split_at(tiles.len() / 2);
            let area = |t: &[Tile]| t.iter().map(|t| t.rows.len() * t.cols.len()).sum::<usize>();
            let (a, b) = (area(first), area(second));
            assert!(
                a.abs_diff(b) <= 4 * 576,
                "{pixels} pixels: halves of {a} and {b} values"
            );
        }
    }
}
