//! Convolution + batch norm (training mode) + activation (+ residual) as one autograd node.
//!
//! candle's backward visits every node of the graph, zero-fills a gradient buffer for each input and
//! adds the node's gradient into it: three extra passes over an activation-sized buffer per node. An
//! inverted-residual block composed of separate ops (conv, batch norm, activation, conv, ..., add)
//! has seven activation-sized nodes; built from this op it has three. The op keeps the convolution's
//! output (which the batch norm's backward needs) and the batch statistics, and its backward runs the
//! batch norm + activation backward and the convolution's backward on raw buffers.
//!
//! The parameters travel as one flat tensor `[conv weight | bn weight | bn bias]` (candle's custom
//! ops take at most three inputs: the input, the parameters and the residual).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::batch_norm::{affine_act, bn_act_grads, update_running_stats, BatchStats};
use super::pointwise::{pointwise_backward, pointwise_forward};
use super::{on_cpu_f32, Act};
use crate::error::{Result, VocError};
use crate::nn::BatchNorm2d;
use crate::ops::depthwise::{self, DwParams};
use crate::ops::{self, contiguous_f32, Padding};

static FUSION: AtomicBool = AtomicBool::new(true);

/// Switches [`conv_bn_act_train`] between its fused kernel (the default) and the same maths composed
/// from separate ops, for the whole process.
///
/// A test and benchmark knob, not a model option (as PyTorch's backend flags): it exists to check or
/// time a whole network's fused training step against the composed one, and library and program code
/// never call it. It is global: once set, every later call on every thread follows it, including the
/// other tests running at the same time in the same test binary. That is harmless to their results,
/// since both paths compute the same values to f32 rounding (only the speed differs), but a test that
/// turns fusion off must turn it back on when it is done, whether or not its step failed.
pub fn set_conv_bn_fusion(enabled: bool) {
    FUSION.store(enabled, Ordering::Relaxed);
}

/// Whether [`conv_bn_act_train`] runs its fused kernel (see [`set_conv_bn_fusion`]).
pub fn conv_bn_fusion() -> bool {
    FUSION.load(Ordering::Relaxed)
}

/// The convolution of a [`conv_bn_act_train`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// 1x1, stride 1, no padding, no groups: weight `C_out x C_in x 1 x 1`.
    Pointwise,
    /// One filter per channel: weight `C x 1 x kh x kw`.
    Depthwise {
        /// The stride, both axes.
        stride: usize,
        /// Zero padding of the four sides.
        padding: Padding,
        /// The dilation, both axes.
        dilation: usize,
    },
}

/// `act(batch_norm(conv(x))) + residual` with the batch norm in training mode (batch statistics,
/// gradient through them, running statistics updated by PyTorch's rule), as one graph node on f32 CPU
/// tensors. `weight` is the bias-free convolution's; gradients flow to `x`, `weight`, the batch norm's
/// weight and bias, and `residual`.
///
/// On other devices or dtypes, for a residual after a non-linear activation, and while
/// [`set_conv_bn_fusion`] has turned fusion off, the same maths is composed from separate ops.
pub fn conv_bn_act_train(
    x: &Tensor,
    weight: &Tensor,
    kind: ConvKind,
    bn: &BatchNorm2d,
    act: Act,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, c_in, h, w) = ops::dims4(x, "conv_bn_act_train")?;
    let (c_out, w_in, kh, kw) = ops::dims4(weight, "conv_bn_act_train weight")?;
    let kernel = match kind {
        ConvKind::Pointwise => {
            if w_in != c_in || kh != 1 || kw != 1 {
                return Err(VocError::BadArgument(format!(
                    "conv_bn_act_train: pointwise weight {:?} is not C_out x {c_in} x 1 x 1",
                    weight.dims()
                )));
            }
            Kernel::Pointwise
        }
        ConvKind::Depthwise {
            stride,
            padding,
            dilation,
        } => {
            if c_out != c_in || w_in != 1 {
                return Err(VocError::BadArgument(format!(
                    "conv_bn_act_train: depthwise weight {:?} is not {c_in} x 1 x kh x kw",
                    weight.dims()
                )));
            }
            Kernel::Depthwise {
                params: ops::depthwise_params((h, w), (kh, kw), stride, padding, dilation)?,
                kernel: (kh, kw),
            }
        }
    };
    if bn.weight().elem_count() != c_out {
        return Err(VocError::BadArgument(format!(
            "conv_bn_act_train: the convolution gives {c_out} channels, the batch norm normalises {}",
            bn.weight().elem_count()
        )));
    }
    let (oh, ow) = match kernel {
        Kernel::Pointwise => (h, w),
        Kernel::Depthwise { params, .. } => (params.oh, params.ow),
    };
    if let Some(r) = residual {
        if r.dims() != [n, c_out, oh, ow] {
            return Err(VocError::BadArgument(format!(
                "conv_bn_act_train: residual has shape {:?}, the output is {:?}",
                r.dims(),
                [n, c_out, oh, ow]
            )));
        }
    }
    let count = n * oh * ow;
    if count < 2 {
        return Err(VocError::BadArgument(format!(
            "BatchNorm2d: training needs more than one value per channel, got output {:?}",
            [n, c_out, oh, ow]
        )));
    }
    let all_f32_cpu = on_cpu_f32(&[x, weight, bn.weight(), bn.bias()])
        && residual.is_none_or(|r| on_cpu_f32(&[r]));
    if !all_f32_cpu || (residual.is_some() && act != Act::Identity) || !conv_bn_fusion() {
        return compose(x, weight, kind, bn, act, residual);
    }

    let params = Tensor::cat(&[&weight.flatten_all()?, bn.weight(), bn.bias()], 0)?;
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnActTrain {
        kernel,
        c_out,
        weight_len: weight.elem_count(),
        eps: bn.eps() as f32,
        act,
        saved: saved.clone(),
    };
    let x = x.contiguous()?;
    let y = match residual {
        None => x.apply_op2(&params, op)?,
        Some(r) => x.apply_op3(&params, &r.contiguous()?, op)?,
    };
    let saved = saved.lock().ok().and_then(|s| s.clone()).ok_or_else(|| {
        VocError::BadArgument("conv_bn_act_train: the kernel left no statistics".into())
    })?;
    update_running_stats(bn, &saved.stats.mean, &saved.stats.var, count)?;
    Ok(y)
}

/// The same maths from separate ops (other devices and dtypes; a residual after a non-linearity).
fn compose(
    x: &Tensor,
    weight: &Tensor,
    kind: ConvKind,
    bn: &BatchNorm2d,
    act: Act,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let y = match kind {
        ConvKind::Pointwise => ops::conv2d(x, weight, None, 1, Padding::default(), 1, 1)?,
        ConvKind::Depthwise {
            stride,
            padding,
            dilation,
        } => ops::depthwise_conv2d(x, weight, None, stride, padding, dilation)?,
    };
    let y = super::batch_norm_act_train(bn, &y, act)?;
    Ok(match residual {
        Some(r) => (y + r)?,
        None => y,
    })
}

#[derive(Debug, Clone, Copy)]
enum Kernel {
    Pointwise,
    Depthwise {
        params: DwParams,
        kernel: (usize, usize),
    },
}

/// What the backward needs from the forward: the convolution's output and the batch statistics.
struct Saved {
    conv_out: Vec<f32>,
    stats: BatchStats,
}

struct ConvBnActTrain {
    kernel: Kernel,
    c_out: usize,
    weight_len: usize,
    eps: f32,
    act: Act,
    saved: Arc<Mutex<Option<Arc<Saved>>>>,
}

impl ConvBnActTrain {
    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "conv_bn_act_train input")?;
        let params = contiguous_f32(s2, l2, "conv_bn_act_train parameters")?;
        let (n, c_in, h, w) = l1.shape().dims4()?;
        let c = self.c_out;
        if params.len() != self.weight_len + 2 * c {
            candle_core::bail!(
                "conv_bn_act_train: {} parameters, expected {}",
                params.len(),
                self.weight_len + 2 * c
            );
        }
        let (weight, bn) = params.split_at(self.weight_len);
        let (gamma, beta) = bn.split_at(c);
        let (conv_out, oh, ow) = match self.kernel {
            Kernel::Pointwise => (pointwise_forward(x, weight, n, c_in, c, h * w), h, w),
            Kernel::Depthwise { params, kernel } => (
                depthwise::forward_f32(params, (n, c_in, h, w), kernel, x, weight),
                params.oh,
                params.ow,
            ),
        };
        let plane = oh * ow;
        let stats = BatchStats::of(&conv_out, n, c, plane, self.eps);
        let (scale, shift) = stats.affine(gamma, beta);
        let out = affine_act(&conv_out, c, plane, &scale, &shift, self.act, residual);
        if let Ok(mut s) = self.saved.lock() {
            *s = Some(Arc::new(Saved { conv_out, stats }));
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    /// `(dx, dparams)` for output gradient `grad`; `out` is the op's output (the activation's gradient
    /// gate; with a residual the activation is the identity and needs none).
    fn backward(
        &self,
        x: &Tensor,
        params: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let saved = self
            .saved
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| {
                candle_core::Error::Msg("conv_bn_act_train backward before its forward".into())
            })?;
        let op = ConvBnActBwd {
            kernel: self.kernel,
            c_out: self.c_out,
            weight_len: self.weight_len,
            act: self.act,
            params: params.flatten_all()?.to_vec1::<f32>()?,
            saved,
        };
        let packed = grad
            .contiguous()?
            .apply_op3_no_bwd(x, &out.contiguous()?, &op)?;
        let dx = packed.narrow(0, 0, x.elem_count())?.reshape(x.shape())?;
        let dparams = packed.narrow(0, x.elem_count(), params.elem_count())?;
        Ok((dx, dparams))
    }
}

impl CustomOp2 for ConvBnActTrain {
    fn name(&self) -> &'static str {
        "voc-conv-bn-act-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dparams) = self.backward(x, params, res, grad)?;
        Ok((Some(dx), Some(dparams)))
    }
}

impl CustomOp3 for ConvBnActTrain {
    fn name(&self) -> &'static str {
        "voc-conv-bn-act-residual-train"
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
        let residual = contiguous_f32(s3, l3, "conv_bn_act_train residual")?;
        self.forward(s1, l1, s2, l2, Some(residual))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _residual: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dparams) = self.backward(x, params, res, grad)?;
        Ok((Some(dx), Some(dparams), Some(grad.clone())))
    }
}

/// `(grad, x, out) -> [dx | dweight | dgamma | dbeta]`, flat.
struct ConvBnActBwd {
    kernel: Kernel,
    c_out: usize,
    weight_len: usize,
    act: Act,
    params: Vec<f32>,
    saved: Arc<Saved>,
}

impl CustomOp3 for ConvBnActBwd {
    fn name(&self) -> &'static str {
        "voc-conv-bn-act-train-bwd"
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
        let grad = contiguous_f32(s1, l1, "conv_bn_act_train backward (gradient)")?;
        let x = contiguous_f32(s2, l2, "conv_bn_act_train backward (input)")?;
        let out = contiguous_f32(s3, l3, "conv_bn_act_train backward (output)")?;
        let (n, c_in, h, w) = l2.shape().dims4()?;
        let (_, c, oh, ow) = l1.shape().dims4()?;
        let Saved { conv_out, stats } = &*self.saved;
        if c != self.c_out || grad.len() != conv_out.len() || out.len() != conv_out.len() {
            candle_core::bail!(
                "conv_bn_act_train backward: gradient shape {:?} does not match",
                l1.shape()
            );
        }
        let (weight, bn) = self.params.split_at(self.weight_len);
        let gamma = &bn[..c];
        let (dy, sums) = bn_act_grads(conv_out, out, grad, stats, gamma, self.act, c, oh * ow, 0);
        let dx_len = n * c_in * h * w;
        let total = dx_len + self.weight_len + 2 * c;
        let mut packed = match self.kernel {
            Kernel::Pointwise => {
                let mut packed: Vec<f32> = Vec::with_capacity(total);
                let (dx, rest) = packed.spare_capacity_mut().split_at_mut(dx_len);
                pointwise_backward(
                    &dy,
                    x,
                    weight,
                    n,
                    c_in,
                    c,
                    h * w,
                    dx,
                    &mut rest[..self.weight_len],
                );
                // SAFETY: pointwise_backward fully writes both slices it is given, dx and dweight:
                // the first dx_len + weight_len values.
                unsafe { packed.set_len(dx_len + self.weight_len) };
                packed
            }
            Kernel::Depthwise { params, kernel } => {
                // [dx | dweight | dbias of the conv]: the conv has no bias, so its slot is dropped.
                let mut packed =
                    depthwise::backward_f32(params, (n, c_in, h, w), kernel, &dy, x, weight, c);
                packed.truncate(dx_len + self.weight_len);
                packed
            }
        };
        debug_assert!(packed.capacity() >= total);
        packed.extend(sums.iter().map(|s| s.1));
        packed.extend(sums.iter().map(|s| s.0));
        Ok((CpuStorage::F32(packed), Shape::from(total)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use candle_nn::VarMap;

    use super::*;
    use crate::fused::test_support::{self, ramp};
    use crate::testing::max_abs_diff;

    fn batch_norm(channels: usize) -> (VarMap, BatchNorm2d) {
        let weight = ramp(&[channels], 0.1, 1.0, 3).to_vec1::<f32>().unwrap();
        let bias = ramp(&[channels], 0.2, 0.5, 5).to_vec1::<f32>().unwrap();
        test_support::batch_norm(&weight, &bias)
    }

    /// The fused op against the same layers composed from separate ops: output, running statistics
    /// and the gradients of the input, conv weight, batch-norm weight and bias, and residual.
    fn check(
        kind: ConvKind,
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        act: Act,
        with_residual: bool,
    ) {
        let what = format!("{kind:?} {act:?} residual {with_residual}");
        let x = Var::from_tensor(&ramp(&x_shape, 0.3, 0.2, 0)).unwrap();
        let weight = Var::from_tensor(&ramp(&w_shape, 0.05, 0.01, 7)).unwrap();
        let c = w_shape[0];
        let (fused_vars, fused_bn) = batch_norm(c);
        let (plain_vars, plain_bn) = batch_norm(c);
        // The output shape, from a throwaway batch norm (training mode moves its running statistics).
        let out_shape = compose(
            x.as_tensor(),
            weight.as_tensor(),
            kind,
            &batch_norm(c).1,
            act,
            None,
        )
        .unwrap()
        .dims()
        .to_vec();
        let residual = Var::from_tensor(&ramp(&out_shape, 0.1, -0.3, 11)).unwrap();
        let residual_t = with_residual.then(|| residual.as_tensor());
        let mix = ramp(&out_shape, 0.05, 0.4, 13);
        let fused = conv_bn_act_train(
            x.as_tensor(),
            weight.as_tensor(),
            kind,
            &fused_bn,
            act,
            residual_t,
        )
        .unwrap();
        let plain = compose(
            x.as_tensor(),
            weight.as_tensor(),
            kind,
            &plain_bn,
            act,
            residual_t,
        )
        .unwrap();
        assert_eq!(fused.dims(), plain.dims(), "{what}");
        let diff = max_abs_diff(&fused, &plain).unwrap();
        assert!(diff < 2e-5, "{what}: forward differs by {diff}");
        test_support::assert_same_running_stats(&fused_bn, &plain_bn, &what);
        let g_fused = test_support::weighted_sum_grads(&fused, &mix);
        let g_plain = test_support::weighted_sum_grads(&plain, &mix);
        let fused_data = fused_vars.data().lock().unwrap();
        let plain_data = plain_vars.data().lock().unwrap();
        let mut pairs = vec![
            ("input", x.as_tensor(), x.as_tensor()),
            ("conv weight", weight.as_tensor(), weight.as_tensor()),
            (
                "bn weight",
                fused_data["weight"].as_tensor(),
                plain_data["weight"].as_tensor(),
            ),
            (
                "bn bias",
                fused_data["bias"].as_tensor(),
                plain_data["bias"].as_tensor(),
            ),
        ];
        if with_residual {
            pairs.push(("residual", residual.as_tensor(), residual.as_tensor()));
        }
        for (name, f, p) in pairs {
            let gf = g_fused
                .get(f)
                .unwrap_or_else(|| panic!("{what}: no fused gradient for {name}"));
            let gp = g_plain
                .get(p)
                .unwrap_or_else(|| panic!("{what}: no composed gradient for {name}"));
            let scale = gp
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1.0);
            let diff = max_abs_diff(gf, gp).unwrap();
            assert!(
                diff < 1e-4 * scale,
                "{what}: {name} gradient differs by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn pointwise_matches_the_composed_layers() {
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            check(ConvKind::Pointwise, [2, 5, 6, 7], [4, 5, 1, 1], act, false);
        }
        check(
            ConvKind::Pointwise,
            [2, 5, 6, 7],
            [5, 5, 1, 1],
            Act::Identity,
            true,
        );
        // A residual after a non-linearity takes the composed path; the result is the same.
        check(
            ConvKind::Pointwise,
            [2, 5, 6, 7],
            [5, 5, 1, 1],
            Act::Relu6,
            true,
        );
    }

    #[test]
    fn depthwise_matches_the_composed_layers() {
        let same = |p| Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        };
        for act in [Act::Identity, Act::Relu6] {
            for (stride, dilation, padding) in [(1, 1, same(1)), (2, 1, same(1)), (1, 2, same(2))] {
                let kind = ConvKind::Depthwise {
                    stride,
                    padding,
                    dilation,
                };
                check(kind, [2, 3, 9, 10], [3, 1, 3, 3], act, false);
            }
        }
        let kind = ConvKind::Depthwise {
            stride: 1,
            padding: same(1),
            dilation: 1,
        };
        check(kind, [2, 3, 9, 10], [3, 1, 3, 3], Act::Identity, true);
        // TF "SAME": the odd pixel of padding at the bottom/right.
        let kind = ConvKind::Depthwise {
            stride: 2,
            padding: Padding {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1,
            },
            dilation: 1,
        };
        check(kind, [2, 3, 8, 8], [3, 1, 3, 3], Act::Relu, false);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (_, bn) = batch_norm(4);
        let x = ramp(&[2, 5, 6, 7], 0.3, 0.2, 0);
        let err = conv_bn_act_train(
            &x,
            &ramp(&[4, 3, 1, 1], 0.1, 0.0, 0),
            ConvKind::Pointwise,
            &bn,
            Act::Relu,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not C_out x 5 x 1 x 1"), "{err}");
        let err = conv_bn_act_train(
            &x,
            &ramp(&[3, 5, 1, 1], 0.1, 0.0, 0),
            ConvKind::Pointwise,
            &bn,
            Act::Relu,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("batch norm normalises 4"), "{err}");
        let residual = ramp(&[2, 4, 6, 6], 0.1, 0.0, 0);
        let err = conv_bn_act_train(
            &x,
            &ramp(&[4, 5, 1, 1], 0.1, 0.0, 0),
            ConvKind::Pointwise,
            &bn,
            Act::Identity,
            Some(&residual),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("residual has shape"), "{err}");
    }
}
