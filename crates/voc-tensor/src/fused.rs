//! Fused CPU kernels for the convolution epilogues of MobileNet-style networks.
//!
//! Every convolution of these networks is followed by batch norm and a cheap activation. Composed from
//! candle primitives, batch norm in training mode is about ten full passes over the activation forward and
//! twenty backward (each with its own temporary), and ReLU6 five; at 2 threads those passes, not the
//! convolutions, dominate a training step. Here each is one custom op with a hand-written backward:
//!
//! - [`batch_norm_act_train`]: batch norm with batch statistics (PyTorch semantics: biased variance
//!   for normalising, unbiased for the running variance, gradient through the statistics) followed by
//!   the activation, in three passes forward and three backward, and the running-statistics update;
//! - [`conv_bn_act_train`]: a 1x1 or depthwise convolution, that batch norm, the activation and an
//!   optional residual add as one autograd node (candle's backward costs three passes per node);
//! - [`bias_act`]: per-channel bias then the activation in one pass (the epilogue of a convolution
//!   whose eval-mode batch norm was folded into its weights), whose backward is one pass too, and
//!   [`conv2d_bias_act`], which runs it in place after the convolution when nothing needs a gradient;
//!
//! All run on f32 CPU tensors; on other devices or dtypes they compose the same maths from candle
//! primitives, so callers need no second path.
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp1, Layout, Shape, Tensor,
};
use rayon::prelude::*;

use crate::error::{Result, VocError};
use crate::nn::BatchNorm2d;
use crate::ops::contiguous_f32;
use crate::simd;

mod conv_bn;
pub use conv_bn::{conv_bn_act_train, conv_bn_fusion, set_conv_bn_fusion, ConvKind};

/// The activation closing a fused epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`, gradient 1 strictly inside (0, 6), as PyTorch's `hardtanh_backward`.
    Relu6,
}

impl Act {
    /// The same activation from candle primitives (other devices and dtypes).
    fn compose(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Identity => x.clone(),
            Self::Relu => x.relu()?,
            Self::Relu6 => crate::ops::relu6(x)?,
        })
    }
}

/// Planes are handed to rayon in groups of at least this many elements.
const MIN_PARALLEL_ELEMS: usize = 1 << 14;

/// Runs `$body` with the activation `$f` and its output-side gradient gate `$pass` as concrete closures,
/// so the per-element loops are compiled (and vectorised) once per activation.
macro_rules! with_act {
    ($act:expr, |$f:ident, $pass:ident| $body:expr) => {
        match $act {
            Act::Identity => {
                let $f = |v: f32| v;
                let $pass = |_: f32| true;
                $body
            }
            Act::Relu => {
                let $f = |v: f32| v.max(0.0);
                let $pass = |o: f32| o > 0.0;
                $body
            }
            Act::Relu6 => {
                let $f = |v: f32| v.clamp(0.0, 6.0);
                let $pass = |o: f32| (o > 0.0) & (o < 6.0);
                $body
            }
        }
    };
}

fn on_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// A new buffer of `len` values written plane by plane in parallel: `fill(plane_index, plane)` must
/// write every element of its plane. Skips zeroing memory that is overwritten anyway.
fn write_planes(
    len: usize,
    plane: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    write_planes_with_spare(len, 0, plane, fill)
}

/// [`write_planes`] with room for `spare` more values, so a caller can append without copying.
fn write_planes_with_spare(
    len: usize,
    spare: usize,
    plane: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let plane = plane.max(1);
    let mut out = Vec::with_capacity(len + spare);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(plane)
        .with_min_len((MIN_PARALLEL_ELEMS / plane).max(1))
        .enumerate()
        .for_each(|(p, o)| fill(p, o));
    // SAFETY: `fill` wrote each of the `len` elements (every caller writes its whole plane).
    unsafe { out.set_len(len) };
    out
}

/// `act(x + bias[c])` over an `N x C x H x W` tensor in one pass; `bias` (length C) may be absent.
///
/// The gradient flows to `x` (one pass, from the output); the bias must be a constant here (it is the
/// folded shift of an eval-mode batch norm): a bias that needs a gradient takes the composed path.
pub fn bias_act(x: &Tensor, bias: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let (_, c, _, _) = crate::ops::dims4(x, "bias_act")?;
    if let Some(b) = bias {
        if b.elem_count() != c {
            return Err(VocError::BadArgument(format!(
                "bias_act: bias has shape {:?}, expected ({c})",
                b.dims()
            )));
        }
    }
    let fused = on_cpu_f32(&[x]) && bias.iter().all(|b| on_cpu_f32(&[b]) && !b.track_op());
    if !fused {
        let y = match bias {
            Some(b) => x.broadcast_add(&b.reshape((1, c, 1, 1))?)?,
            None => x.clone(),
        };
        return act.compose(&y);
    }
    let bias = match bias {
        Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    Ok(x.contiguous()?.apply_op1(BiasAct { bias, act })?)
}

/// `act(conv2d(x, weight) + shift[c])`: a bias-free convolution (as [`crate::ops::conv2d`]) and the
/// epilogue of a folded eval-mode batch norm.
///
/// When nothing needs a gradient (constant weights and input: plain inference) the epilogue runs in
/// place on the convolution's fresh output, one read-modify-write pass instead of a pass into a new
/// buffer; otherwise it is [`bias_act`], whose gradient flows to `x`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    shift: &Tensor,
    stride: usize,
    padding: crate::ops::Padding,
    dilation: usize,
    groups: usize,
    act: Act,
) -> Result<Tensor> {
    let y = crate::ops::conv2d(x, weight, None, stride, padding, dilation, groups)?;
    let (_, c, h, w) = crate::ops::dims4(&y, "conv2d_bias_act")?;
    let in_place = !y.track_op()
        && !shift.track_op()
        && on_cpu_f32(&[&y, shift])
        && y.is_contiguous()
        && shift.elem_count() == c;
    if !in_place {
        return bias_act(&y, Some(shift), act);
    }
    // `y` was just made by the convolution and nothing else holds its storage (no graph either: it
    // tracks no op), so writing into it changes no other tensor.
    y.inplace_op1(&BiasActInPlace {
        bias: shift.flatten_all()?.to_vec1::<f32>()?,
        act,
        plane: h * w,
    })?;
    Ok(y)
}

struct BiasActInPlace {
    bias: Vec<f32>,
    act: Act,
    plane: usize,
}

impl InplaceOp1 for BiasActInPlace {
    fn name(&self) -> &'static str {
        "voc-bias-act-inplace"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bias_act in place: expected f32 storage");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias_act in place: expected a contiguous tensor");
        };
        let (c, plane) = (self.bias.len(), self.plane.max(1));
        let data = &mut data[start..end];
        if data.len() % (c * plane) != 0 {
            candle_core::bail!(
                "bias_act in place: {} values are not N x {c} x {plane}",
                data.len()
            );
        }
        with_act!(self.act, |f, _pass| data
            .par_chunks_mut(plane)
            .with_min_len((MIN_PARALLEL_ELEMS / plane).max(1))
            .enumerate()
            .for_each(|(p, ys)| {
                let b = self.bias[p % c];
                for y in ys {
                    *y = f(*y + b);
                }
            }));
        Ok(())
    }
}

struct BiasAct {
    bias: Option<Vec<f32>>,
    act: Act,
}

impl CustomOp1 for BiasAct {
    fn name(&self) -> &'static str {
        "voc-bias-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "bias_act")?;
        let (_, c, h, w) = l.shape().dims4()?;
        let plane = (h * w).max(1);
        let out = with_act!(self.act, |f, _pass| write_planes(x.len(), plane, |p, o| {
            let b = self.bias.as_ref().map_or(0.0, |b| b[p % c]);
            for (o, &v) in o.iter_mut().zip(&x[p * plane..]) {
                o.write(f(v + b));
            }
        }));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.act == Act::Identity {
            return Ok(Some(grad.clone()));
        }
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &ActBwd(self.act),
        )?))
    }
}

/// `grad * [act passes at out]`, one pass.
struct ActBwd(Act);

impl CustomOp2 for ActBwd {
    fn name(&self) -> &'static str {
        "voc-act-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = contiguous_f32(s1, l1, "act backward (output)")?;
        let grad = contiguous_f32(s2, l2, "act backward (gradient)")?;
        let chunk = MIN_PARALLEL_ELEMS;
        let dx = with_act!(self.0, |_f, pass| write_planes(out.len(), chunk, |p, d| {
            let range = p * chunk..out.len().min((p + 1) * chunk);
            for ((d, &o), &g) in d.iter_mut().zip(&out[range.clone()]).zip(&grad[range]) {
                d.write(if pass(o) { g } else { 0.0 });
            }
        }));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

fn gemm_parallelism(flops: usize) -> gemm::Parallelism {
    if flops >= 1 << 15 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    }
}

/// `y[b] = w · x[b]` for each image: `w` is `C_out x C_in`, `x` is `N x C_in x HW`.
pub(crate) fn pointwise_forward(
    x: &[f32],
    w: &[f32],
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
) -> Vec<f32> {
    assert!(x.len() >= n * c_in * hw && w.len() >= c_out * c_in);
    let mut y: Vec<f32> = Vec::with_capacity(n * c_out * hw);
    for b in 0..n {
        // SAFETY: the pointers cover exactly the row-major C_out x HW output, C_out x C_in weight and
        // C_in x HW input of image `b` (lengths asserted above); with `read_dst` false gemm writes every
        // output element.
        unsafe {
            gemm::gemm(
                c_out,
                hw,
                c_in,
                y.as_mut_ptr().add(b * c_out * hw),
                1,
                hw as isize,
                false,
                w.as_ptr(),
                1,
                c_in as isize,
                x.as_ptr().add(b * c_in * hw),
                1,
                hw as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm_parallelism(c_out * hw * c_in),
            );
        }
    }
    // SAFETY: each image's gemm wrote its C_out x HW block.
    unsafe { y.set_len(n * c_out * hw) };
    y
}

/// The gradients of [`pointwise_forward`] for output gradient `dy` (`N x C_out x HW`):
/// `dx[b] = wᵀ · dy[b]` (written to `dx`, `N x C_in x HW`) and `dw = Σ_b dy[b] · x[b]ᵀ` (written to `dw`,
/// `C_out x C_in`); both are fully written (they may start uninitialised).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
    dx: &mut [MaybeUninit<f32>],
    dw: &mut [MaybeUninit<f32>],
) {
    assert!(x.len() >= n * c_in * hw && dw.len() >= c_out * c_in);
    pointwise_input_grad(dy, w, n, c_in, c_out, hw, dx);
    let dw = dw.as_mut_ptr() as *mut f32;
    let par = gemm_parallelism(c_out * hw * c_in);
    for b in 0..n {
        // SAFETY: dw (C_out x C_in, length asserted above) accumulates dy[b] (C_out x HW, asserted in
        // pointwise_input_grad) times x[b]ᵀ (HW x C_in: column stride hw, row stride 1), overwriting on
        // the first image.
        unsafe {
            gemm::gemm(
                c_out,
                c_in,
                hw,
                dw,
                1,
                c_in as isize,
                b > 0,
                dy.as_ptr().add(b * c_out * hw),
                1,
                hw as isize,
                x.as_ptr().add(b * c_in * hw),
                hw as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
}

/// `dx[b] = wᵀ · dy[b]` for each image (the input gradient of [`pointwise_forward`]), fully written.
fn pointwise_input_grad(
    dy: &[f32],
    w: &[f32],
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
    dx: &mut [MaybeUninit<f32>],
) {
    assert!(dy.len() >= n * c_out * hw && w.len() >= c_out * c_in && dx.len() >= n * c_in * hw);
    let dx = dx.as_mut_ptr() as *mut f32;
    let par = gemm_parallelism(c_out * hw * c_in);
    for b in 0..n {
        // SAFETY: dx[b] (C_in x HW) = wᵀ (C_in x C_out: column stride c_in, row stride 1) times dy[b]
        // (C_out x HW), all within the lengths asserted above; with `read_dst` false gemm writes every
        // element of dx[b].
        unsafe {
            gemm::gemm(
                c_in,
                hw,
                c_out,
                dx.add(b * c_in * hw),
                1,
                hw as isize,
                false,
                w.as_ptr(),
                c_in as isize,
                1,
                dy.as_ptr().add(b * c_out * hw),
                1,
                hw as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
}

/// A 1x1 convolution (`N x C_in x H x W` by a `C_out x C_in` weight) whose weight is a constant while
/// the input needs a gradient: an attack through a network in eval mode. Composed as a batched matmul,
/// candle's backward would also compute the weight's gradient (a gemm per image, a zero-filled buffer
/// and adds), which nothing reads; this op's backward computes the input gradient only.
pub(crate) fn pointwise_const_weight(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_, c_in, _, _) = crate::ops::dims4(x, "pointwise conv")?;
    let c_out = weight.dim(0)?;
    if weight.elem_count() != c_out * c_in || weight.track_op() {
        return Err(VocError::BadArgument(format!(
            "pointwise conv: weight {:?} must be a constant C_out x C_in (x 1 x 1) for {c_in} input channels",
            weight.dims()
        )));
    }
    let op = PointwiseConstWeight {
        weight: Arc::new(
            weight
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        ),
        c_in,
        c_out,
        input_grad: false,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// The forward of [`pointwise_const_weight`] or, with `input_grad`, its backward (`N x C_out x HW`
/// output gradient to `N x C_in x HW` input gradient).
#[derive(Clone)]
struct PointwiseConstWeight {
    weight: Arc<Vec<f32>>,
    c_in: usize,
    c_out: usize,
    input_grad: bool,
}

impl CustomOp1 for PointwiseConstWeight {
    fn name(&self) -> &'static str {
        if self.input_grad {
            "voc-pointwise-const-weight-input-grad"
        } else {
            "voc-pointwise-const-weight"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "pointwise conv")?;
        let (n, c, h, w) = l.shape().dims4()?;
        let (c_from, c_to) = if self.input_grad {
            (self.c_out, self.c_in)
        } else {
            (self.c_in, self.c_out)
        };
        if c != c_from {
            candle_core::bail!("pointwise conv: {c} channels in, the weight takes {c_from}");
        }
        let y = if self.input_grad {
            let len = n * c_to * h * w;
            let mut dx: Vec<f32> = Vec::with_capacity(len);
            pointwise_input_grad(
                x,
                &self.weight,
                n,
                self.c_in,
                self.c_out,
                h * w,
                &mut dx.spare_capacity_mut()[..len],
            );
            // SAFETY: pointwise_input_grad wrote all `len` elements.
            unsafe { dx.set_len(len) };
            dx
        } else {
            pointwise_forward(x, &self.weight, n, self.c_in, self.c_out, h * w)
        };
        Ok((CpuStorage::F32(y), Shape::from((n, c_to, h, w))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if self.input_grad {
            candle_core::bail!("pointwise conv: no second derivative");
        }
        let op = Self {
            input_grad: true,
            ..self.clone()
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Batch norm of `x` (`N x C x H x W`) with the batch's statistics, then `act`; updates `bn`'s running
/// statistics as [`BatchNorm2d::forward_t`] in training mode does (PyTorch's rule, unbiased variance).
/// The gradient flows to `x`, `bn.weight()` and `bn.bias()`, through the batch statistics.
pub fn batch_norm_act_train(bn: &BatchNorm2d, x: &Tensor, act: Act) -> Result<Tensor> {
    let (n, c, h, w) = crate::ops::dims4(x, "batch_norm_act_train")?;
    if !on_cpu_f32(&[x, bn.weight(), bn.bias()]) || bn.running_mean().dtype() != DType::F32 {
        return act.compose(&bn.forward_t(x, true)?);
    }
    if c != bn.weight().elem_count() {
        return Err(VocError::BadArgument(format!(
            "batch_norm_act_train: input has {c} channels, the batch norm normalises {}",
            bn.weight().elem_count()
        )));
    }
    let count = n * h * w;
    if count < 2 {
        return Err(VocError::BadArgument(format!(
            "BatchNorm2d: training needs more than one value per channel, got input {:?}",
            x.dims()
        )));
    }
    let stats = Arc::new(Mutex::new(None));
    let op = BnActTrain {
        eps: bn.eps() as f32,
        act,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&bn.weight().contiguous()?, &bn.bias().contiguous()?, op)?;
    let Some(BatchStats { mean, var, .. }) = stats.lock().ok().and_then(|s| s.clone()) else {
        return Err(VocError::BadArgument(
            "batch_norm_act_train: the kernel left no statistics".into(),
        ));
    };
    update_running_stats(bn, &mean, &var, count)?;
    Ok(y)
}

/// PyTorch's running-statistics rule: `running = (1 - m)·running + m·batch`, with the unbiased batch
/// variance (`count` values per channel).
pub(crate) fn update_running_stats(
    bn: &BatchNorm2d,
    mean: &[f32],
    var: &[f32],
    count: usize,
) -> Result<()> {
    let c = mean.len();
    let m = bn.momentum() as f32;
    let unbias = count as f32 / (count - 1) as f32;
    let running_mean = bn
        .running_mean()
        .as_tensor()
        .flatten_all()?
        .to_vec1::<f32>()?;
    let running_var = bn
        .running_var()
        .as_tensor()
        .flatten_all()?
        .to_vec1::<f32>()?;
    let new_mean: Vec<f32> = running_mean
        .iter()
        .zip(mean)
        .map(|(&r, &b)| (1.0 - m) * r + m * b)
        .collect();
    let new_var: Vec<f32> = running_var
        .iter()
        .zip(var)
        .map(|(&r, &b)| (1.0 - m) * r + m * b * unbias)
        .collect();
    let device = bn.running_mean().device();
    bn.running_mean()
        .set(&Tensor::from_vec(new_mean, c, device)?)?;
    bn.running_var()
        .set(&Tensor::from_vec(new_var, c, device)?)?;
    Ok(())
}

#[derive(Clone)]
pub(crate) struct BatchStats {
    pub(crate) mean: Vec<f32>,
    /// Biased (population) variance.
    pub(crate) var: Vec<f32>,
    pub(crate) inv_std: Vec<f32>,
}

impl BatchStats {
    /// Per-channel mean and biased variance of an `N x C x plane` buffer.
    pub(crate) fn of(x: &[f32], n: usize, c: usize, plane: usize, eps: f32) -> Self {
        let count = (n * plane) as f64;
        let per_channel: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let pivot = if plane > 0 { x[ch * plane] } else { 0.0 };
                let (mut sum, mut sum_sq) = (0f64, 0f64);
                for b in 0..n {
                    let start = (b * c + ch) * plane;
                    let (s, q) = simd::centred_sums(&x[start..start + plane], pivot);
                    sum += s;
                    sum_sq += q;
                }
                let shift = sum / count;
                let var = (sum_sq / count - shift * shift).max(0.0);
                let mean = pivot as f64 + shift;
                (mean as f32, var as f32)
            })
            .collect();
        let mean: Vec<f32> = per_channel.iter().map(|p| p.0).collect();
        let var: Vec<f32> = per_channel.iter().map(|p| p.1).collect();
        let inv_std = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
        Self { mean, var, inv_std }
    }

    /// The per-channel `(scale, shift)` of `y = x·scale + shift`.
    pub(crate) fn affine(&self, weight: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<f32>) {
        (0..self.mean.len())
            .map(|ch| {
                let scale = self.inv_std[ch] * weight[ch];
                (scale, bias[ch] - self.mean[ch] * scale)
            })
            .unzip()
    }
}

/// `act(x·scale[c] + shift[c]) (+ residual)` over an `N x C x plane` buffer.
pub(crate) fn affine_act(
    x: &[f32],
    c: usize,
    plane: usize,
    scale: &[f32],
    shift: &[f32],
    act: Act,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    with_act!(act, |f, _pass| write_planes(x.len(), plane, |p, o| {
        let ch = p % c;
        let (scale, shift) = (scale[ch], shift[ch]);
        let xs = &x[p * plane..(p + 1) * plane];
        match residual {
            None => {
                for (o, &v) in o.iter_mut().zip(xs) {
                    o.write(f(v * scale + shift));
                }
            }
            Some(r) => {
                for ((o, &v), &r) in o.iter_mut().zip(xs).zip(&r[p * plane..]) {
                    o.write(f(v * scale + shift) + r);
                }
            }
        }
    }))
}

struct BnActTrain {
    eps: f32,
    act: Act,
    /// Filled by the forward kernel; read by the running-stats update and the backward.
    stats: Arc<Mutex<Option<BatchStats>>>,
}

impl CustomOp3 for BnActTrain {
    fn name(&self) -> &'static str {
        "voc-batch-norm-act-train"
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
        let x = contiguous_f32(s1, l1, "batch norm input")?;
        let weight = contiguous_f32(s2, l2, "batch norm weight")?;
        let bias = contiguous_f32(s3, l3, "batch norm bias")?;
        let (n, c, h, w) = l1.shape().dims4()?;
        let plane = h * w;
        let stats = BatchStats::of(x, n, c, plane, self.eps);
        let (scale, shift) = stats.affine(weight, bias);
        let out = affine_act(x, c, plane, &scale, &shift, self.act, None);
        if let Ok(mut s) = self.stats.lock() {
            *s = Some(stats);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| {
                candle_core::Error::Msg("batch norm backward before its forward".into())
            })?;
        let (n, c, h, w) = x.dims4()?;
        let total = n * c * h * w;
        let op = BnActBwd {
            stats,
            weight: weight.flatten_all()?.to_vec1::<f32>()?,
            act: self.act,
        };
        let packed = x.apply_op3_no_bwd(res, &grad.contiguous()?, &op)?;
        let dx = packed.narrow(0, 0, total)?.reshape((n, c, h, w))?;
        let dweight = packed.narrow(0, total, c)?;
        let dbias = packed.narrow(0, total + c, c)?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// Backward of [`BnActTrain`]: with `g = grad * [act passes]` and `x̂ = (x - mean) * inv_std`,
/// `dbias = Σg`, `dweight = Σ g·x̂`, `dx = weight·inv_std·(g - dbias/M - x̂·dweight/M)` per channel;
/// the three results are packed into one flat tensor `[dx (N·C·H·W), dweight (C), dbias (C)]`.
struct BnActBwd {
    stats: BatchStats,
    weight: Vec<f32>,
    act: Act,
}

impl CustomOp3 for BnActBwd {
    fn name(&self) -> &'static str {
        "voc-batch-norm-act-train-bwd"
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
        let x = contiguous_f32(s1, l1, "batch norm backward (input)")?;
        let out = contiguous_f32(s2, l2, "batch norm backward (output)")?;
        let grad = contiguous_f32(s3, l3, "batch norm backward (gradient)")?;
        let (_, c, h, w) = l1.shape().dims4()?;
        let total = x.len();
        let (mut packed, sums) = bn_act_grads(
            x,
            out,
            grad,
            &self.stats,
            &self.weight,
            self.act,
            c,
            h * w,
            2 * c,
        );
        packed.extend(sums.iter().map(|s| s.1));
        packed.extend(sums.iter().map(|s| s.0));
        Ok((CpuStorage::F32(packed), Shape::from(total + 2 * c)))
    }
}

/// The batch norm + activation backward over an `N x C x plane` buffer: with `g = grad · [act passes
/// at out]` and `x̂ = (x - mean)·inv_std`, returns `dx = weight·inv_std·(g - Σg/M - x̂·Σ(g·x̂)/M)` and per
/// channel `(Σg, Σ g·x̂)`, i.e. `(dbias, dweight)`; `dx` has room for `spare` more values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_act_grads(
    x: &[f32],
    out: &[f32],
    grad: &[f32],
    stats: &BatchStats,
    weight: &[f32],
    act: Act,
    c: usize,
    plane: usize,
    spare: usize,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let n = x.len() / (c * plane).max(1);
    let count = (n * plane) as f32;
    let BatchStats { mean, inv_std, .. } = stats;
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sum_g, mut sum_g_centred) = (0f64, 0f64);
            for b in 0..n {
                let r = (b * c + ch) * plane..(b * c + ch + 1) * plane;
                let (s, q) =
                    simd::gated_sums(&x[r.clone()], &out[r.clone()], &grad[r], mean[ch], act);
                sum_g += s;
                sum_g_centred += q;
            }
            (sum_g as f32, (sum_g_centred * inv_std[ch] as f64) as f32)
        })
        .collect();
    let dx = with_act!(act, |_f, pass| write_planes_with_spare(
        x.len(),
        spare,
        plane,
        |p, d| {
            let ch = p % c;
            let (sum_g, sum_gxhat) = sums[ch];
            let k = weight[ch] * inv_std[ch];
            let (mean_g, mean_gxhat) = (sum_g / count, sum_gxhat / count);
            // dx = k·(g - mean_g - (x - mean)·inv_std·mean_gxhat) = k·g + (a·x + b)
            let a = -k * inv_std[ch] * mean_gxhat;
            let b0 = -k * mean_g - a * mean[ch];
            let r = p * plane..(p + 1) * plane;
            for (((d, &xv), &o), &g) in d
                .iter_mut()
                .zip(&x[r.clone()])
                .zip(&out[r.clone()])
                .zip(&grad[r])
            {
                let g = if pass(o) { g } else { 0.0 };
                d.write(k * g + a * xv + b0);
            }
        }
    ));
    (dx, sums)
}

/// Inputs and checks shared by the fused kernels' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use candle_core::backprop::GradStore;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use crate::nn::BatchNorm2d;
    use crate::testing::max_abs_diff;

    /// A deterministic saw-tooth of `shape`, shifted by `seed` so different tensors differ.
    pub(crate) fn ramp(shape: &[usize], scale: f32, offset: f32, seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| (((i + seed) * 37 % 23) as f32 - 11.0) * scale + offset)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// A trainable batch norm (eps 1e-3, momentum 0.1) with the given weight and bias.
    pub(crate) fn batch_norm(weight: &[f32], bias: &[f32]) -> (VarMap, BatchNorm2d) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::new(vb, weight.len(), 1e-3, 0.1).unwrap();
        let data = varmap.data().lock().unwrap();
        data["weight"]
            .set(&Tensor::new(weight, &Device::Cpu).unwrap())
            .unwrap();
        data["bias"]
            .set(&Tensor::new(bias, &Device::Cpu).unwrap())
            .unwrap();
        drop(data);
        (varmap, bn)
    }

    /// The two batch norms' running statistics agree to a few f32 ulps (the fused kernels sum in
    /// AVX2 lanes, candle's reductions in another order).
    pub(crate) fn assert_same_running_stats(a: &BatchNorm2d, b: &BatchNorm2d, what: &str) {
        for (x, y) in [
            (a.running_mean(), b.running_mean()),
            (a.running_var(), b.running_var()),
        ] {
            let diff = max_abs_diff(x.as_tensor(), y.as_tensor()).unwrap();
            assert!(diff < 2e-6, "{what}: running statistics differ by {diff}");
        }
    }

    /// The gradients of `sum(y * mix)`.
    pub(crate) fn weighted_sum_grads(y: &Tensor, mix: &Tensor) -> GradStore {
        (y * mix).unwrap().sum_all().unwrap().backward().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    use super::test_support::{self, ramp};
    use super::*;
    use crate::testing::max_abs_diff;

    fn batch_norm(channels: usize) -> (VarMap, BatchNorm2d) {
        assert_eq!(channels, 3);
        test_support::batch_norm(&[1.5, -0.5, 2.0], &[0.5, 0.2, 3.0])
    }

    /// The in-place epilogue (constant input and weights) and the graph one (a variable input) give
    /// the same values as convolution then [`bias_act`], leave the input untouched, and the graph one
    /// passes a gradient to the input.
    #[test]
    fn conv2d_bias_act_in_place_and_with_gradient_agree() {
        let x = ramp(&[2, 3, 9, 8], 0.2, 0.1, 0);
        let shift = Tensor::new(&[0.5f32, -1.0, 4.0], &Device::Cpu).unwrap();
        let pointwise = ramp(&[3, 3, 1, 1], 0.3, 0.0, 0);
        let depthwise = ramp(&[3, 1, 3, 3], 0.3, 0.1, 0);
        let pad = crate::ops::Padding::same(1);
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            for (weight, stride, padding, groups) in [
                (&pointwise, 1, crate::ops::Padding::default(), 1),
                (&depthwise, 2, pad, 3),
                (&depthwise, 1, pad, 3),
            ] {
                let reference = bias_act(
                    &crate::ops::conv2d(&x, weight, None, stride, padding, 1, groups).unwrap(),
                    Some(&shift),
                    act,
                )
                .unwrap();
                let x_before = x.copy().unwrap();
                let in_place =
                    conv2d_bias_act(&x, weight, &shift, stride, padding, 1, groups, act).unwrap();
                assert_eq!(max_abs_diff(&in_place, &reference).unwrap(), 0.0, "{act:?}");
                assert_eq!(
                    max_abs_diff(&x, &x_before).unwrap(),
                    0.0,
                    "{act:?}: input changed"
                );
                let xv = Var::from_tensor(&x).unwrap();
                let y = conv2d_bias_act(
                    xv.as_tensor(),
                    weight,
                    &shift,
                    stride,
                    padding,
                    1,
                    groups,
                    act,
                )
                .unwrap();
                assert_eq!(
                    max_abs_diff(&y, &reference).unwrap(),
                    0.0,
                    "{act:?} (graph)"
                );
                let grads = y.sum_all().unwrap().backward().unwrap();
                assert!(
                    grads.get(xv.as_tensor()).is_some(),
                    "{act:?}: no input gradient"
                );
            }
        }
    }

    /// The fused op against the composed one: outputs, running statistics and every gradient.
    #[test]
    fn fused_train_batch_norm_matches_the_composed_one() {
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            let (_, fused_bn) = batch_norm(3);
            let (_, plain_bn) = batch_norm(3);
            let x = Var::from_tensor(&ramp(&[2, 3, 5, 7], 0.7, 0.3, 0)).unwrap();
            // A weighting of the outputs so the gradient is not the same everywhere.
            let mix = ramp(&[2, 3, 5, 7], 0.05, 0.4, 0);
            let fused = batch_norm_act_train(&fused_bn, x.as_tensor(), act).unwrap();
            let plain = act
                .compose(&plain_bn.forward_t(x.as_tensor(), true).unwrap())
                .unwrap();
            assert!(
                max_abs_diff(&fused, &plain).unwrap() < 1e-5,
                "{act:?} forward"
            );
            test_support::assert_same_running_stats(&fused_bn, &plain_bn, &format!("{act:?}"));
            let g_fused = test_support::weighted_sum_grads(&fused, &mix);
            let g_plain = test_support::weighted_sum_grads(&plain, &mix);
            for (what, fused_t, plain_t) in [
                ("x", x.as_tensor(), x.as_tensor()),
                ("weight", fused_bn.weight(), plain_bn.weight()),
                ("bias", fused_bn.bias(), plain_bn.bias()),
            ] {
                let a = g_fused.get(fused_t).unwrap();
                let b = g_plain.get(plain_t).unwrap();
                assert!(
                    max_abs_diff(a, b).unwrap() < 1e-5,
                    "{act:?} gradient of {what}"
                );
            }
        }
    }

    #[test]
    fn fused_train_batch_norm_needs_two_values() {
        let (_, bn) = batch_norm(3);
        assert!(batch_norm_act_train(&bn, &ramp(&[1, 3, 1, 1], 1.0, 0.0, 0), Act::Relu).is_err());
    }

    #[test]
    fn bias_act_matches_composed_ops_and_passes_gradients() {
        let bias = Tensor::new(&[0.5f32, -2.0, 5.5], &Device::Cpu).unwrap();
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            let x = Var::from_tensor(&ramp(&[2, 3, 4, 3], 0.9, 0.0, 0)).unwrap();
            let fused = bias_act(x.as_tensor(), Some(&bias), act).unwrap();
            let plain = act
                .compose(
                    &x.as_tensor()
                        .broadcast_add(&bias.reshape((1, 3, 1, 1)).unwrap())
                        .unwrap(),
                )
                .unwrap();
            assert_eq!(max_abs_diff(&fused, &plain).unwrap(), 0.0, "{act:?}");
            let mix = ramp(&[2, 3, 4, 3], 0.1, 0.2, 0);
            let a = test_support::weighted_sum_grads(&fused, &mix);
            let b = test_support::weighted_sum_grads(&plain, &mix);
            let (a, b) = (a.get(x.as_tensor()).unwrap(), b.get(x.as_tensor()).unwrap());
            assert_eq!(max_abs_diff(a, b).unwrap(), 0.0, "{act:?} gradient");
        }
        assert!(bias_act(&ramp(&[1, 2, 2, 2], 1.0, 0.0, 0), Some(&bias), Act::Relu).is_err());
    }
}
