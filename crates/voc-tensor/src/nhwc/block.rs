//! The inverted-residual block (1x1 expand, depthwise, 1x1 project, residual) row by row.
//!
//! Run layer after layer, a block writes its expanded maps (six times its input's channels) to
//! memory and reads them back twice: at 513x513 the first ones are 25 MB, and those layers ran at
//! half the arithmetic rate of the ones whose maps fit in cache. Here each thread walks down its band
//! of output rows keeping only the expanded input rows its depthwise taps still need (a ring of
//! `(kh - 1) * dilation + 1` rows) and one depthwise output row, which the project convolution turns
//! into the output row at once: the expanded maps never leave L2. Every value is the sum the layered
//! path computes, in the same order.
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::kernels::{Geometry, MAX_KH};
use super::{DepthwiseConv, NhwcMaps, PointwiseConv};
use crate::error::{Result, VocError};
use crate::fused::pointwise_gemm::{pointwise_serial_into, PointwiseProblem};
use crate::ops::Padding;
use crate::simd::Isa;

/// Expanded maps below this many bytes (per image) stay in cache anyway: the block runs layer by
/// layer (one call per layer, spread over the threads by each kernel).
const FUSE_ABOVE_BYTES: usize = 1 << 19;
/// Rows narrower than this make 1x1 products of too few pixels (their register blocks' tails cost more
/// than the memory traffic saved): DeepLabV3 at 513 took 35.4 ms fusing its 33-pixel rows too, 34.5
/// without (`voc bench`, 2 threads); MobileNetV2's 28-pixel rows gained nothing either way.
const FUSE_MIN_WIDTH: usize = 40;

/// Whether a block whose expanded maps are `h x w x expanded` runs row by row.
pub(super) fn worth_fusing(h: usize, w: usize, expanded: usize) -> bool {
    h * w * expanded * 4 > FUSE_ABOVE_BYTES && w >= FUSE_MIN_WIDTH
}

/// The three convolutions of a MobileNetV2 inverted-residual block, batch norms folded in.
#[derive(Debug, Clone)]
pub struct InvertedResidual {
    /// The 1x1 expansion (absent in MobileNetV2's first block).
    pub expand: Option<PointwiseConv>,
    /// The depthwise convolution, with its activation.
    pub depthwise: DepthwiseConv,
    /// The linear 1x1 projection.
    pub project: PointwiseConv,
}

impl InvertedResidual {
    /// The block on `x`: the depthwise convolution at `stride` and `dilation` with `padding`, and the
    /// input added to the output when `residual` (which needs an output of the input's size).
    pub fn forward(
        &self,
        x: &NhwcMaps,
        stride: usize,
        dilation: usize,
        padding: Padding,
        residual: bool,
    ) -> Result<NhwcMaps> {
        let (n, h, w, c) = x.dims();
        let expanded = self.depthwise.c;
        let expand_in = self.expand.as_ref().map_or(expanded, |e| e.c_in);
        if c != expand_in
            || self.expand.as_ref().is_some_and(|e| e.c_out != expanded)
            || self.project.c_in != expanded
        {
            return Err(VocError::BadArgument(format!(
                "InvertedResidual: input of {c} channels, layers of {expand_in} -> {expanded} -> {}",
                self.project.c_out
            )));
        }
        let dw = &self.depthwise;
        let g = super::geometry((h, w, expanded), (dw.kh, dw.kw), stride, dilation, padding)?;
        let (oh, ow) = (g.oh, g.ow);
        let c_out = self.project.c_out;
        if residual && (oh, ow, c_out) != (h, w, c) {
            return Err(VocError::BadArgument(format!(
                "InvertedResidual: a residual needs the output ({oh}x{ow}x{c_out}) to have the \
                 input's size ({h}x{w}x{c})"
            )));
        }
        let span = (dw.kh - 1) * g.dilation + 1;
        let threads = rayon::current_num_threads().max(1);
        // Bands per image: each starts by expanding the span - 1 rows above it again.
        let bands = if n >= threads { 1 } else { threads.div_ceil(n) }.min(oh.max(1));
        let recomputed = (span - 1) * (bands - 1);
        let big = worth_fusing(h, w, expanded);
        if !big || dw.kh > MAX_KH || recomputed * 8 > h || oh * ow == 0 {
            return self.layer_by_layer(x, stride, dilation, padding, residual);
        }
        let band_rows = oh.div_ceil(bands);
        let out_row = ow * c_out;
        let image_out = oh * out_row;
        let mut out: Vec<f32> = Vec::with_capacity(n * image_out);
        let kernel = Isa::detect();
        out.spare_capacity_mut()[..n * image_out]
            .par_chunks_mut(image_out)
            .enumerate()
            .for_each(|(image, image_slots)| {
                let image_x = &x.data[image * h * w * c..(image + 1) * h * w * c];
                image_slots
                    .par_chunks_mut(band_rows * out_row)
                    .enumerate()
                    .for_each(|(band, slots)| {
                        let oy0 = band * band_rows;
                        self.band(&g, kernel, image_x, residual, oy0, slots);
                    });
            });
        // SAFETY: the bands of every image cover its output rows, and `band` writes each row whole.
        unsafe { out.set_len(n * image_out) };
        NhwcMaps::new(out, (n, oh, ow, c_out))
    }

    /// The layers one after the other, each over the whole batch.
    pub(super) fn layer_by_layer(
        &self,
        x: &NhwcMaps,
        stride: usize,
        dilation: usize,
        padding: Padding,
        residual: bool,
    ) -> Result<NhwcMaps> {
        let expanded;
        let h = match &self.expand {
            Some(e) => {
                expanded = e.forward(x, None)?;
                &expanded
            }
            None => x,
        };
        let h = self.depthwise.forward(h, stride, dilation, padding)?;
        self.project.forward(&h, residual.then_some(x))
    }

    /// Output rows `oy0..` of one image (as many as `slots` holds), written to `slots`.
    fn band(
        &self,
        g: &Geometry,
        kernel: Isa,
        image_x: &[f32],
        residual: bool,
        oy0: usize,
        slots: &mut [MaybeUninit<f32>],
    ) {
        let (w, c_in, e) = (g.w, image_x.len() / (g.h * g.w), g.c);
        let c_out = self.project.c_out;
        let span = (g.kh - 1) * g.dilation + 1;
        let mut ring = vec![
            0f32;
            if self.expand.is_some() {
                span * w * e
            } else {
                0
            }
        ];
        // The input row each ring slot holds (row `iy` lives in slot `iy % span`).
        let mut held = vec![usize::MAX; span];
        let mut dw_row = vec![0f32; g.ow * e];
        for (i, out_row) in slots.chunks_exact_mut(g.ow * c_out).enumerate() {
            let oy = oy0 + i;
            if let Some(expand) = &self.expand {
                for ky in 0..g.kh {
                    let Some(iy) = (oy * g.stride + ky * g.dilation)
                        .checked_sub(g.pad_top)
                        .filter(|&iy| iy < g.h)
                    else {
                        continue;
                    };
                    let slot = iy % span;
                    if held[slot] != iy {
                        expand_row(
                            expand,
                            &image_x[iy * w * c_in..(iy + 1) * w * c_in],
                            w,
                            as_slots(&mut ring[slot * w * e..(slot + 1) * w * e]),
                        );
                        held[slot] = iy;
                    }
                }
            }
            let mut rows = [(0, std::ptr::null()); MAX_KH];
            let n_rows = if self.expand.is_some() {
                g.tap_rows(oy, |iy| ring[(iy % span) * w * e..].as_ptr(), &mut rows)
            } else {
                g.tap_rows(oy, |iy| image_x[iy * w * e..].as_ptr(), &mut rows)
            };
            let dw = &self.depthwise;
            // SAFETY: each row pointer starts an expanded (or input) row of w x e values, held in
            // the ring (or the image) for this output row.
            unsafe {
                kernel.depthwise_row(
                    g,
                    &rows[..n_rows],
                    &dw.taps,
                    &dw.shift,
                    dw.act,
                    as_slots(&mut dw_row),
                )
            };
            let project = &self.project;
            let residual_row = residual.then(|| &image_x[oy * w * c_in..(oy + 1) * w * c_in]);
            pointwise_serial_into(
                &PointwiseProblem {
                    x: &project.weight_t,
                    weight: &dw_row,
                    shift: Some(&project.shift),
                    residual: residual_row,
                    act: project.act,
                    shift_per_col: true,
                    x_panel: super::PANEL,
                    n: 1,
                    c_in: e,
                    c_out: g.ow,
                    hw: c_out,
                },
                out_row,
            );
        }
    }
}

/// An initialised buffer as slots for a kernel to overwrite.
fn as_slots(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the kernels only write f32 values into it.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// The expansion of one input row (`w` pixels) into `out` (`w x c_out` values).
fn expand_row(expand: &PointwiseConv, row: &[f32], w: usize, out: &mut [MaybeUninit<f32>]) {
    pointwise_serial_into(
        &PointwiseProblem {
            x: &expand.weight_t,
            weight: row,
            shift: Some(&expand.shift),
            residual: None,
            act: expand.act,
            shift_per_col: true,
            x_panel: super::PANEL,
            n: 1,
            c_in: expand.c_in,
            c_out: w,
            hw: expand.c_out,
        },
        out,
    );
}
