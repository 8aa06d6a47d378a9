//! Differentiable ops that candle 0.11 lacks or gets wrong.
//!
//! Everything here is NCHW and f32, has a gradient with respect to every float input, and runs on the CPU
//! and on CUDA. Where candle's own op has a gap (no gradient for bilinear upsampling or overlapping pools,
//! a wrong conv backward when H and W have different remainders, NaN in BCE for large logits, no ignore
//! index in cross-entropy, a slow per-group depthwise conv) the op here either composes differentiable
//! candle primitives (so the same code serves CPU and CUDA) or, on the hot CPU paths, runs a hand-written
//! kernel wrapped as a candle custom op whose backward is itself a fast kernel.
pub(crate) mod conv;
pub(crate) mod depthwise;
pub(crate) mod im2col;
mod loss;
mod pool;
mod resize;

pub(crate) use conv::depthwise_params;
pub use conv::{conv2d, depthwise_conv2d, tf_same_padding, Padding};
pub use loss::{bce_with_logits, cross_entropy_2d, sigmoid_focal_loss};
pub use pool::{adaptive_avg_pool2d, avg_pool2d, max_pool2d};
pub use resize::{resize_bilinear, resize_nearest};

use candle_core::{Tensor, D};

use crate::error::{Result, VocError};

/// ReLU capped at 6 (MobileNet, EfficientNet-Lite): `min(max(x, 0), 6)`.
///
/// The gradient is 1 strictly inside (0, 6) and 0 elsewhere, as PyTorch's `hardtanh_backward`; candle's
/// `clamp` would instead hand half a gradient to inputs sitting exactly on a bound.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    let inside = x.gt(0.0)?.mul(&x.lt(6.0)?)?;
    let clamped = x.clamp(0f32, 6f32)?.detach();
    Ok(inside.where_cond(x, &clamped)?)
}

/// `f` (a network on constant weights: inference) applied to each image of the batch `x`
/// (`N x ...`) on rayon's threads, one image at a time per thread, the outputs concatenated along the
/// batch; `f(x)` itself when there is nothing to split (one image, one thread, not on the CPU, or an
/// input that needs a gradient).
///
/// Run layer by layer over a whole batch, a MobileNet's activations (77 MB for one layer at batch 16)
/// go to memory and back between layers, and every layer's work is split between the threads and
/// joined again. One image per thread keeps an image's activations in the caches and the threads
/// apart until the end. Each image's outputs are what the batch would give (no op mixes images in
/// inference); `f` must not depend on the batch (batch statistics, a gradient through the weights).
///
/// ```
/// use candle_core::{Device, Tensor};
/// # fn main() -> voc_tensor::Result<()> {
/// let x = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((4, 2, 3))?;
/// let y = voc_tensor::ops::per_image(&x, |xi| Ok::<_, voc_tensor::VocError>((xi * 2.0)?))?;
/// assert_eq!(y.to_vec3::<f32>()?, (x * 2.0)?.to_vec3::<f32>()?);
/// # Ok(())
/// # }
/// ```
pub fn per_image<E>(
    x: &Tensor,
    f: impl Fn(&Tensor) -> std::result::Result<Tensor, E> + Sync,
) -> std::result::Result<Tensor, E>
where
    E: From<candle_core::Error> + Send,
{
    use rayon::prelude::*;
    let n = x.dim(0)?;
    if n < 2 || !x.device().is_cpu() || x.track_op() || rayon::current_num_threads() < 2 {
        return f(x);
    }
    let outs = (0..n)
        .into_par_iter()
        .map(|i| f(&x.narrow(0, i, 1)?))
        .collect::<std::result::Result<Vec<Tensor>, E>>()?;
    Ok(Tensor::cat(&outs, 0)?)
}

/// Takes `count` entries of `dim` starting at `start`, `stride` apart: a strided slice built from
/// differentiable primitives (narrow, or index_select whose backward is index_add) so it works everywhere.
pub(crate) fn take_strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    count: usize,
    stride: usize,
) -> Result<Tensor> {
    if stride == 1 || count <= 1 {
        return Ok(x.narrow(dim, start, count)?);
    }
    let idx: Vec<u32> = (0..count).map(|i| (start + i * stride) as u32).collect();
    let idx = Tensor::from_vec(idx, count, x.device())?;
    Ok(x.index_select(&idx, dim)?)
}

/// Pads `dim` with a constant value (candle only pads with zeros or edge values).
pub(crate) fn pad_with_value(
    x: &Tensor,
    dim: usize,
    before: usize,
    after: usize,
    value: f64,
) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let mut parts = Vec::with_capacity(3);
    let block = |n: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Ok(Tensor::full(value, dims, x.device())?.to_dtype(x.dtype())?)
    };
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}

/// Checks that `x` is NCHW and returns its dims.
pub(crate) fn dims4(x: &Tensor, op: &str) -> Result<(usize, usize, usize, usize)> {
    x.dims4().map_err(|_| {
        VocError::BadArgument(format!(
            "{op}: expected an NCHW tensor, got shape {:?}",
            x.dims()
        ))
    })
}

/// The f32 data of a contiguous CPU tensor, as the custom kernels read it; `what` names the op and the
/// input in the error.
pub(crate) fn contiguous_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        candle_core::CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Mean over every element, returned as a 0-d tensor.
pub(crate) fn mean_all(x: &Tensor) -> Result<Tensor> {
    let n = x.elem_count().max(1);
    Ok((x.flatten_all()?.sum(D::Minus1)? / n as f64)?)
}

#[cfg(test)]
mod tests;

/// Writes `value` to every element and returns the plane as initialised values: kernels set each
/// plane of an uninitialised output just before they accumulate into it, while it is in cache, instead
/// of zeroing the whole buffer first (one pass over memory less).
pub(crate) fn init_plane(plane: &mut [std::mem::MaybeUninit<f32>], value: f32) -> &mut [f32] {
    for v in plane.iter_mut() {
        v.write(value);
    }
    // SAFETY: every element was written just above; `std::mem::MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(plane as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// A new `len`-value buffer computed plane by plane in parallel: plane `i` (of `plane` values) is set
/// to `value(i)` (see [`init_plane`]) and handed to `fill(scratch, i, plane)`, with one `scratch` per
/// worker made by `scratch()`.
pub(crate) fn planes_from<S>(
    len: usize,
    plane: usize,
    value: impl Fn(usize) -> f32 + Sync + Send,
    scratch: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each_init(scratch, |s, (i, p)| fill(s, i, init_plane(p, value(i))));
    // SAFETY: `init_plane` initialised every plane, which together cover the `len` values.
    unsafe { out.set_len(len) };
    out
}

/// A new `len`-value buffer computed plane by plane in parallel, each plane (of `plane` values) handed
/// uninitialised to `fill(scratch, i, plane)`, with one `scratch` per worker made by `scratch()`: for
/// kernels that write every output once, where [`planes_from`]'s initial pass would be wasted.
///
/// # Safety
/// `fill` must write every element of the plane it is given.
pub(crate) unsafe fn planes_uninit<S>(
    len: usize,
    plane: usize,
    scratch: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each_init(scratch, |s, (i, p)| fill(s, i, p));
    // SAFETY: the caller guarantees `fill` wrote every plane, which together cover the `len` values.
    unsafe { out.set_len(len) };
    out
}

/// Writes `values` into `plane` in one pass and returns the plane as initialised values; positions
/// that a too-short `values` does not reach are set to 0, so every element is written whatever
/// `values` yields. For element-wise kernels, whose output is a function of their inputs: with
/// [`init_plane`] they would write each plane twice (6-35% slower on the fused epilogues, measured).
pub(crate) fn init_plane_from(
    plane: &mut [std::mem::MaybeUninit<f32>],
    values: impl Iterator<Item = f32>,
) -> &mut [f32] {
    let mut written = 0;
    for (slot, v) in plane.iter_mut().zip(values) {
        slot.write(v);
        written += 1;
    }
    for slot in &mut plane[written..] {
        slot.write(0.0);
    }
    // SAFETY: the zip loop wrote the first `written` elements (it counts its own writes, so a
    // misbehaving iterator cannot make it overstate them) and the second loop the rest;
    // `std::mem::MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(plane as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// Appends `len` values to `out`, computed plane by plane in parallel: plane `i` (of `plane` values)
/// is written from `values(i)` by [`init_plane_from`], and rayon hands out at least `min_planes`
/// planes per task (so tiny planes are not scheduled one by one). A caller that appends more values
/// afterwards creates `out` with the capacity for them, and nothing is copied.
pub(crate) fn append_planes_from<I: Iterator<Item = f32>>(
    out: &mut Vec<f32>,
    len: usize,
    plane: usize,
    min_planes: usize,
    values: impl Fn(usize) -> I + Sync + Send,
) {
    use rayon::prelude::*;
    let start = out.len();
    out.reserve_exact(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(plane.max(1))
        .with_min_len(min_planes.max(1))
        .enumerate()
        .for_each(|(i, p)| {
            init_plane_from(p, values(i));
        });
    // SAFETY: the planes cover the `len` spare values just after the `start` initialised ones, and
    // `init_plane_from` initialised every plane.
    unsafe { out.set_len(start + len) };
}
