//! The 1x1 convolution on raw buffers (one gemm per image, forward and backward), and a 1x1
//! convolution with a constant weight whose backward computes the input gradient only.
use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::Act;
use crate::error::{Result, VocError};
use crate::ops::contiguous_f32;

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
    // SAFETY: each image's gemm (`read_dst` false) wrote every element of its C_out x HW block, and
    // the n blocks cover the n * C_out * HW values.
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
    if n == 0 {
        // No image to accumulate: the weight gradient is zero (the loop below would not write it).
        crate::ops::init_plane(&mut dw[..c_out * c_in], 0.0);
        return;
    }
    let dw = dw.as_mut_ptr() as *mut f32;
    let par = gemm_parallelism(c_out * hw * c_in);
    for b in 0..n {
        // SAFETY: dw (C_out x C_in, length asserted above) accumulates dy[b] (C_out x HW, asserted in
        // pointwise_input_grad) times x[b]ᵀ (HW x C_in: column stride hw, row stride 1). On the first
        // image `read_dst` is false and gemm writes every element of dw (zeros when hw is 0), so the
        // later images read initialised values.
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

/// A 1x1 convolution (`N x C_in x H x W` by a `C_out x C_in (x 1 x 1)` weight) with gradients for both:
/// one gemm per image forward, and backward the input gradient per image and the weight gradient
/// accumulated into one buffer. Composed as a batched matmul, candle's backward builds one weight
/// gradient per image and sums them on one thread (a sixth of a frozen-BN fine-tuning step, by `perf`).
pub(crate) fn pointwise_conv(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_, c_in, _, _) = crate::ops::dims4(x, "pointwise conv")?;
    let c_out = weight.dim(0)?;
    if weight.elem_count() != c_out * c_in {
        return Err(VocError::BadArgument(format!(
            "pointwise conv: weight {:?} is not C_out x C_in (x 1 x 1) for {c_in} input channels",
            weight.dims()
        )));
    }
    let w = weight.reshape((c_out, c_in))?.contiguous()?;
    Ok(x.contiguous()?.apply_op2(&w, PointwiseConv)?)
}

struct PointwiseConv;

impl candle_core::CustomOp2 for PointwiseConv {
    fn name(&self) -> &'static str {
        "voc-pointwise-conv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "pointwise conv")?;
        let w = contiguous_f32(ws, wl, "pointwise conv weight")?;
        let (n, c_in, h, wd) = xl.shape().dims4()?;
        let (c_out, wc) = wl.shape().dims2()?;
        if wc != c_in {
            candle_core::bail!("pointwise conv: {c_in} channels in, the weight takes {wc}");
        }
        let y = pointwise_forward(x, w, n, c_in, c_out, h * wd);
        Ok((CpuStorage::F32(y), Shape::from((n, c_out, h, wd))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c_in, h, wd) = x.dims4()?;
        let (c_out, _) = w.dims2()?;
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let (dx_len, dw_len) = (n * c_in * h * wd, c_out * c_in);
        let mut dx: Vec<f32> = Vec::with_capacity(dx_len);
        let mut dw: Vec<f32> = Vec::with_capacity(dw_len);
        pointwise_backward(
            &dy,
            &xv,
            &wv,
            n,
            c_in,
            c_out,
            h * wd,
            &mut dx.spare_capacity_mut()[..dx_len],
            &mut dw.spare_capacity_mut()[..dw_len],
        );
        // SAFETY: pointwise_backward fully writes both gradients.
        unsafe {
            dx.set_len(dx_len);
            dw.set_len(dw_len);
        }
        let dx = Tensor::from_vec(dx, (n, c_in, h, wd), x.device())?;
        let dw = Tensor::from_vec(dw, (c_out, c_in), w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `act(w · x[b] + shift[c] (+ residual[b]))` for every image: the 1x1 convolution of inference (no
/// gradient) with its folded batch norm's shift, an optional residual and the activation.
///
/// Register-blocked kernels ([`super::pointwise_gemm`]) apply the epilogue before each value is
/// stored: one parallel region and one pass over the output per convolution, instead of a parallel
/// gemm into a zero-filled buffer and a second pass. The epilogue rounds as the separate in-place pass
/// does (`act(y + shift + residual)`, left to right); the sums are the kernels' own (in depth order,
/// fused multiply-adds), so they may differ from a gemm library's in the last bits.
///
/// `None` when this path does not apply (not a 1x1 convolution at stride 1 without padding or groups,
/// another device or dtype, something that needs a gradient): the caller takes the general one.
pub(crate) fn pointwise_epilogue_inference(
    x: &Tensor,
    weight: &Tensor,
    (stride, padding, groups): (usize, crate::ops::Padding, usize),
    shift: Option<&Tensor>,
    residual: Option<&Tensor>,
    act: Act,
) -> Result<Option<Tensor>> {
    let (n, c_in, h, w) = crate::ops::dims4(x, "pointwise conv")?;
    let dims = weight.dims();
    let c_out = dims[0];
    let applies = stride == 1
        && padding.is_zero()
        && groups == 1
        && dims.len() == 4
        && dims[1] == c_in
        && dims[2] == 1
        && dims[3] == 1
        && shift.is_none_or(|s| s.elem_count() == c_out)
        && residual.is_none_or(|r| r.dims() == [n, c_out, h, w])
        && [Some(x), Some(weight), shift, residual]
            .into_iter()
            .flatten()
            .all(|t| super::on_cpu_f32(&[t]) && !t.track_op());
    if !applies {
        return Ok(None);
    }
    let op = PointwiseEpilogue {
        shift: match shift {
            Some(s) => Some(s.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        },
        act,
        dims: (n, c_in, c_out, h * w),
    };
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let y = match residual {
        Some(r) => x.apply_op3_no_bwd(&weight, &r.contiguous()?, &op)?,
        None => x.apply_op2_no_bwd(&weight, &op)?,
    };
    Ok(Some(y.reshape((n, c_out, h, w))?))
}

struct PointwiseEpilogue {
    shift: Option<Vec<f32>>,
    act: Act,
    /// `(n, c_in, c_out, hw)`.
    dims: (usize, usize, usize, usize),
}

impl PointwiseEpilogue {
    /// The op's output storage (`n x c_out x hw`) for the inputs of either arity.
    fn run(
        &self,
        x: &[f32],
        w: &[f32],
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c_in, c_out, hw) = self.dims;
        if x.len() != n * c_in * hw
            || w.len() != c_out * c_in
            || residual.is_some_and(|r| r.len() != n * c_out * hw)
            || self.shift.as_ref().is_some_and(|s| s.len() != c_out)
        {
            candle_core::bail!("pointwise conv: buffer sizes do not match {:?}", self.dims);
        }
        let y = super::pointwise_gemm::pointwise_forward_epilogue(
            &super::pointwise_gemm::PointwiseProblem {
                x,
                weight: w,
                shift: self.shift.as_deref(),
                residual,
                act: self.act,
                shift_per_col: false,
                x_panel: 0,
                n,
                c_in,
                c_out,
                hw,
            },
        );
        Ok((CpuStorage::F32(y), Shape::from((n, c_out, hw))))
    }
}

impl candle_core::CustomOp2 for PointwiseEpilogue {
    fn name(&self) -> &'static str {
        "voc-pointwise-epilogue"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(
            contiguous_f32(s1, l1, "pointwise conv input")?,
            contiguous_f32(s2, l2, "pointwise conv weight")?,
            None,
        )
    }
}

impl candle_core::CustomOp3 for PointwiseEpilogue {
    fn name(&self) -> &'static str {
        "voc-pointwise-epilogue-residual"
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
        self.run(
            contiguous_f32(s1, l1, "pointwise conv input")?,
            contiguous_f32(s2, l2, "pointwise conv weight")?,
            Some(contiguous_f32(s3, l3, "pointwise conv residual")?),
        )
    }
}
