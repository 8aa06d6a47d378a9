//! 2-D convolutions: asymmetric ("TF SAME") padding, a strided conv whose backward is right for any
//! input size, 1x1 convs as matmuls, and depthwise convs on a fast CPU kernel.
use candle_core::{DType, Tensor};

use super::{depthwise, dims4, im2col, take_strided};
use crate::error::{Result, VocError};

/// Zero padding of the four sides of an NCHW tensor's spatial axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding {
    /// Rows added above.
    pub top: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padding {
    /// The same padding `p` on all four sides (PyTorch's `padding=p`).
    pub fn same(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// TensorFlow's `padding="SAME"`: the output has `ceil(in / stride)` positions and the total padding
/// needed for that is split with the extra pixel at the bottom/right (TF-trained weights expect it).
pub fn tf_same_padding(
    in_h: usize,
    in_w: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Padding {
    let split = |size: usize| {
        let stride = stride.max(1);
        let out = size.div_ceil(stride);
        let effective_kernel = dilation.max(1) * (kernel.max(1) - 1) + 1;
        let total = ((out.max(1) - 1) * stride + effective_kernel).saturating_sub(size);
        (total / 2, total - total / 2)
    };
    let (top, bottom) = split(in_h);
    let (left, right) = split(in_w);
    Padding {
        top,
        bottom,
        left,
        right,
    }
}

/// Output length of one axis, or a clear error when the (padded) input is smaller than the kernel.
fn conv_out_size(
    op: &str,
    size: usize,
    pad: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Result<usize> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return Err(VocError::BadArgument(format!(
            "{op}: kernel, stride and dilation must be positive"
        )));
    }
    let effective_kernel = dilation * (kernel - 1) + 1;
    if size + pad < effective_kernel {
        return Err(VocError::BadArgument(format!(
            "{op}: input size {size} with padding {pad} is smaller than the dilated kernel {effective_kernel}"
        )));
    }
    Ok((size + pad - effective_kernel) / stride + 1)
}

/// [`conv_out_size`] for both spatial axes: `(oh, ow)`.
fn conv_out_hw(
    op: &str,
    (h, w): (usize, usize),
    padding: Padding,
    (kh, kw): (usize, usize),
    stride: usize,
    dilation: usize,
) -> Result<(usize, usize)> {
    Ok((
        conv_out_size(op, h, padding.top + padding.bottom, kh, stride, dilation)?,
        conv_out_size(op, w, padding.left + padding.right, kw, stride, dilation)?,
    ))
}

fn add_bias(y: Tensor, bias: Option<&Tensor>, op: &str) -> Result<Tensor> {
    match bias {
        None => Ok(y),
        Some(b) => {
            let c = y.dim(1)?;
            if b.elem_count() != c {
                return Err(VocError::BadArgument(format!(
                    "{op}: bias has shape {:?}, expected ({c})",
                    b.dims()
                )));
            }
            Ok(y.broadcast_add(&b.reshape((1, c, 1, 1))?)?)
        }
    }
}

/// Depthwise convolution (`groups == channels`), weight `C x 1 x kh x kw`, optional bias `C`.
///
/// On the CPU in f32 a hand-written kernel (custom op, rayon over N*C planes) runs forward and backward;
/// elsewhere the conv is a sum of `kh*kw` shifted, strided slices scaled per channel, built from
/// differentiable primitives (candle's grouped conv is one conv per channel, which is slow).
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: Padding,
    dilation: usize,
) -> Result<Tensor> {
    let (_, c, h, w) = dims4(x, "depthwise_conv2d")?;
    let (wc, one, kh, kw) = dims4(weight, "depthwise_conv2d weight")?;
    if wc != c || one != 1 {
        return Err(VocError::BadArgument(format!(
            "depthwise_conv2d: weight has shape {:?}, expected ({c}, 1, kh, kw) for {c} input channels",
            weight.dims()
        )));
    }
    let params = depthwise_params((h, w), (kh, kw), stride, padding, dilation)?;
    let (oh, ow) = (params.oh, params.ow);
    if let Some(b) = bias {
        if b.elem_count() != c {
            return Err(VocError::BadArgument(format!(
                "depthwise_conv2d: bias has shape {:?}, expected ({c})",
                b.dims()
            )));
        }
    }
    let on_cpu_kernel = x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.iter().all(|b| b.dtype() == DType::F32);
    if on_cpu_kernel {
        Ok(depthwise::forward(x, weight, bias, params)?)
    } else {
        let y = depthwise_by_taps(x, weight, stride, padding, dilation, oh, ow)?;
        add_bias(y, bias, "depthwise_conv2d")
    }
}

/// `act(depthwise_conv2d(x, weight) + shift)` in one pass, the activation applied as each output row
/// is stored, when the CPU kernel can run it and nothing needs a gradient (inference on constant
/// weights); `None` otherwise (not depthwise, another device or dtype, a tracked input), for the caller
/// to take the general path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_bias_act_inference(
    x: &Tensor,
    weight: &Tensor,
    shift: &Tensor,
    stride: usize,
    padding: Padding,
    dilation: usize,
    groups: usize,
    act: crate::fused::Act,
) -> Result<Option<Tensor>> {
    let (_, c, h, w) = dims4(x, "depthwise_conv2d")?;
    let (wc, one, kh, kw) = dims4(weight, "depthwise_conv2d weight")?;
    let applies = groups == c
        && wc == c
        && one == 1
        && groups > 1
        && shift.elem_count() == c
        && [x, weight, shift]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op());
    if !applies {
        return Ok(None);
    }
    let params = depthwise_params((h, w), (kh, kw), stride, padding, dilation)?;
    Ok(Some(depthwise::forward_inference(
        x, weight, shift, params, act,
    )?))
}

/// Where a depthwise kernel of size `kernel` reads an `H x W` input, and the output size.
pub(crate) fn depthwise_params(
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    padding: Padding,
    dilation: usize,
) -> Result<depthwise::DwParams> {
    let (oh, ow) = conv_out_hw(
        "depthwise_conv2d",
        (h, w),
        padding,
        (kh, kw),
        stride,
        dilation,
    )?;
    Ok(depthwise::DwParams {
        stride,
        dilation,
        pad_top: padding.top,
        pad_left: padding.left,
        oh,
        ow,
    })
}

/// Device-independent depthwise conv: `sum over taps of slice(x_padded) * w[:, tap]`.
pub(crate) fn depthwise_by_taps(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: Padding,
    dilation: usize,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let (c, _, kh, kw) = weight.dims4()?;
    let xp = x
        .pad_with_zeros(2, padding.top, padding.bottom)?
        .pad_with_zeros(3, padding.left, padding.right)?;
    let mut acc: Option<Tensor> = None;
    for ki in 0..kh {
        let rows = take_strided(&xp, 2, ki * dilation, oh, stride)?;
        for kj in 0..kw {
            let tap = take_strided(&rows, 3, kj * dilation, ow, stride)?;
            let wt = weight
                .narrow(2, ki, 1)?
                .narrow(3, kj, 1)?
                .reshape((1, c, 1, 1))?;
            let term = tap.broadcast_mul(&wt)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| VocError::BadArgument("depthwise_conv2d: empty kernel".into()))
}

/// 2-D convolution, PyTorch `F.conv2d` with asymmetric padding: weight `C_out x C_in/groups x kh x kw`.
///
/// candle's conv backward assumes H and W leave the same remainder under the stride and fails (e.g. on
/// 9x10 or 375x500 at stride 2); here the padded input is cropped to exactly the rows and columns the
/// conv reads, so both remainders are zero and candle's backward is exact. Depthwise convs
/// (`groups == C_in == C_out`) go to [`depthwise_conv2d`], 1x1 stride-1 convs to a single matmul.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: Padding,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let (n, c_in, h, w) = dims4(x, "conv2d")?;
    let (c_out, c_in_per_group, kh, kw) = dims4(weight, "conv2d weight")?;
    if groups == 0 || c_in % groups != 0 || c_out % groups != 0 || c_in_per_group * groups != c_in {
        return Err(VocError::BadArgument(format!(
            "conv2d: weight shape {:?} with groups {groups} does not fit {c_in} input channels \
             (expected C_out x C_in/groups x kh x kw, C_in and C_out divisible by groups)",
            weight.dims()
        )));
    }
    if groups == c_in && c_out == c_in && c_in_per_group == 1 && groups > 1 {
        return depthwise_conv2d(x, weight, bias, stride, padding, dilation);
    }
    let (oh, ow) = conv_out_hw("conv2d", (h, w), padding, (kh, kw), stride, dilation)?;
    if kh == 1 && kw == 1 && stride == 1 && groups == 1 && padding.is_zero() {
        let input_grad_only = x.track_op()
            && !weight.track_op()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && weight.dtype() == DType::F32;
        if input_grad_only {
            let y = crate::fused::pointwise_const_weight(x, weight)?;
            return add_bias(y, bias, "conv2d");
        }
        let cpu_f32 =
            x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
        if cpu_f32 && weight.track_op() {
            let y = crate::fused::pointwise_conv(x, weight)?;
            return add_bias(y, bias, "conv2d");
        }
        let y = weight
            .reshape((c_out, c_in))?
            .broadcast_left(n)?
            .matmul(&x.reshape((n, c_in, h * w))?)?;
        return add_bias(y.reshape((n, c_out, h, w))?, bias, "conv2d");
    }
    let p = im2col::Im2ColParams {
        n,
        c: c_in,
        h,
        w,
        kh,
        kw,
        stride,
        dilation,
        pad_top: padding.top,
        pad_left: padding.left,
        oh,
        ow,
    };
    let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    let fast = if groups == 1 && cpu_f32 {
        im2col_conv(x, weight, p, IM2COL_MAX_ELEMS)?
    } else {
        None
    };
    let y = match fast {
        Some(y) => y,
        None => conv2d_by_candle(x, weight, stride, padding, dilation, groups, oh, ow)?,
    };
    add_bias(y, bias, "conv2d")
}

/// Largest im2col buffer (f32 elements, 256 MiB) of the CPU conv: bigger batches run in chunks of
/// images, and an image whose own buffer is bigger goes to candle's tiled conv, which needs less memory.
const IM2COL_MAX_ELEMS: usize = 64 << 20;

/// The CPU im2col conv with its buffer bounded by `max_elems`: the batch runs in chunks of images, and
/// `None` means one image alone would need more.
pub(crate) fn im2col_conv(
    x: &Tensor,
    weight: &Tensor,
    p: im2col::Im2ColParams,
    max_elems: usize,
) -> Result<Option<Tensor>> {
    let per_image = p.cols_len() / p.n.max(1);
    if per_image > max_elems || p.n == 0 {
        return Ok(None);
    }
    // Training: one image's expanded matrix at a time, recomputed in the backward pass.
    if x.track_op() || weight.track_op() {
        return Ok(Some(im2col::conv2d_recompute(x, weight, p)?));
    }
    // Inference (nothing needs a gradient): the batch as one gemm, the weights packed once, in chunks
    // of images whose expanded matrix fits the cap.
    let conv = |x: &Tensor, p| im2col::conv2d_wide(x, weight, p);
    let chunk = (max_elems / per_image.max(1)).clamp(1, p.n);
    if chunk >= p.n {
        return Ok(Some(conv(x, p)?));
    }
    let mut parts = Vec::with_capacity(p.n.div_ceil(chunk));
    for start in (0..p.n).step_by(chunk) {
        let len = chunk.min(p.n - start);
        let part = im2col::Im2ColParams { n: len, ..p };
        parts.push(conv(&x.narrow(0, start, len)?, part)?);
    }
    Ok(Some(Tensor::cat(&parts, 0)?))
}

/// candle's conv on the explicitly padded input, cropped to the rows and columns the conv reads so that
/// candle's backward (which assumes equal remainders in H and W) is exact.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_by_candle(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: Padding,
    dilation: usize,
    groups: usize,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    let xp = x
        .pad_with_zeros(2, padding.top, padding.bottom)?
        .pad_with_zeros(3, padding.left, padding.right)?;
    let used_h = (oh - 1) * stride + dilation * (kh - 1) + 1;
    let used_w = (ow - 1) * stride + dilation * (kw - 1) + 1;
    let xp = if used_h != xp.dim(2)? || used_w != xp.dim(3)? {
        xp.narrow(2, 0, used_h)?.narrow(3, 0, used_w)?
    } else {
        xp
    };
    Ok(xp.conv2d(weight, 0, stride, dilation, groups)?)
}
