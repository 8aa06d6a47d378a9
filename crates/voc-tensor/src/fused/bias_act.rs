//! `act(x + bias[c])`: the epilogue of a convolution whose eval-mode batch norm was folded into its
//! weights, as one pass forward and one backward, or in place on the convolution's fresh output.
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, InplaceOp1, InplaceOp2, Layout, Shape, Tensor,
};
use rayon::prelude::*;

use super::{on_cpu_f32, planes, Act, MIN_PARALLEL_ELEMS};
use crate::error::{Result, VocError};
use crate::ops::contiguous_f32;

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
    // A depthwise convolution adds the shift and applies the activation as it stores each row, a 1x1
    // convolution on each tile of its output while the tile is in cache.
    if let Some(y) = crate::ops::conv::depthwise_bias_act_inference(
        x, weight, shift, stride, padding, dilation, groups, act,
    )? {
        return Ok(y);
    }
    let geometry = (stride, padding, groups);
    if let Some(y) =
        super::pointwise::pointwise_epilogue_inference(x, weight, geometry, Some(shift), None, act)?
    {
        return Ok(y);
    }
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

/// `act(conv2d(x, weight) + shift[c] + residual)`: a bias-free convolution, the folded batch norm's
/// shift (optional), a residual added *before* the activation (the end of a ResNet block), then the
/// activation.
///
/// When nothing needs a gradient (inference on constant weights) the whole epilogue is one pass in
/// place on the convolution's fresh output; otherwise the same maths from differentiable ops.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bias_residual_act(
    x: &Tensor,
    weight: &Tensor,
    shift: Option<&Tensor>,
    residual: &Tensor,
    stride: usize,
    padding: crate::ops::Padding,
    dilation: usize,
    groups: usize,
    act: Act,
) -> Result<Tensor> {
    let geometry = (stride, padding, groups);
    if let Some(y) = super::pointwise::pointwise_epilogue_inference(
        x,
        weight,
        geometry,
        shift,
        Some(residual),
        act,
    )? {
        return Ok(y);
    }
    let y = crate::ops::conv2d(x, weight, None, stride, padding, dilation, groups)?;
    if y.dims() != residual.dims() {
        return Err(VocError::BadArgument(format!(
            "conv2d_bias_residual_act: the convolution gives {:?}, the residual is {:?}",
            y.dims(),
            residual.dims()
        )));
    }
    let (_, c, h, w) = crate::ops::dims4(&y, "conv2d_bias_residual_act")?;
    let in_place = !y.track_op()
        && !residual.track_op()
        && shift.is_none_or(|s| !s.track_op() && s.elem_count() == c && on_cpu_f32(&[s]))
        && on_cpu_f32(&[&y, residual])
        && y.is_contiguous()
        && residual.is_contiguous();
    if !in_place {
        let y = match shift {
            Some(s) => y.broadcast_add(&s.reshape((1, c, 1, 1))?)?,
            None => y,
        };
        return act.compose(&(y + residual)?);
    }
    let bias = match shift {
        Some(s) => s.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; c],
    };
    // As in `conv2d_bias_act`: `y` is the convolution's fresh output, owned by nothing else.
    y.inplace_op2(
        residual,
        &BiasResidualActInPlace {
            bias,
            act,
            plane: h * w,
        },
    )?;
    Ok(y)
}

struct BiasResidualActInPlace {
    bias: Vec<f32>,
    act: Act,
    plane: usize,
}

impl InplaceOp2 for BiasResidualActInPlace {
    fn name(&self) -> &'static str {
        "voc-bias-residual-act-inplace"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bias_residual_act in place: expected f32 storage");
        };
        let (Some((start, end)), Some((r_start, r_end))) = (
            layout.contiguous_offsets(),
            residual_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("bias_residual_act in place: expected contiguous tensors");
        };
        let CpuStorage::F32(res) = residual else {
            candle_core::bail!("bias_residual_act in place: expected an f32 residual");
        };
        let (c, plane) = (self.bias.len(), self.plane.max(1));
        let data = &mut data[start..end];
        let res = &res[r_start..r_end];
        if data.len() % (c * plane) != 0 || res.len() != data.len() {
            candle_core::bail!(
                "bias_residual_act in place: {} values (residual {}) are not N x {c} x {plane}",
                data.len(),
                res.len()
            );
        }
        with_act!(self.act, |f, _pass| data
            .par_chunks_mut(plane)
            .zip(res.par_chunks(plane))
            .with_min_len((MIN_PARALLEL_ELEMS / plane).max(1))
            .enumerate()
            .for_each(|(p, (ys, rs))| {
                let b = self.bias[p % c];
                for (y, r) in ys.iter_mut().zip(rs) {
                    *y = f(*y + b + r);
                }
            }));
        Ok(())
    }
}

/// `act(x · scale[c] + shift[c])`: an eval-mode batch norm (as its affine map) and the activation in
/// one pass over an `N x C x H x W` tensor; `scale` and `shift` hold C values.
///
/// One pass into a new buffer when nothing needs a gradient; otherwise differentiable ops (the
/// gradient reaches `x`, and `scale`/`shift` if they track one).
pub fn scale_shift_act(x: &Tensor, scale: &Tensor, shift: &Tensor, act: Act) -> Result<Tensor> {
    let (_, c, _, _) = crate::ops::dims4(x, "scale_shift_act")?;
    if scale.elem_count() != c || shift.elem_count() != c {
        return Err(VocError::BadArgument(format!(
            "scale_shift_act: scale {:?} and shift {:?} must hold {c} values",
            scale.dims(),
            shift.dims()
        )));
    }
    let fused =
        on_cpu_f32(&[x, scale, shift]) && !x.track_op() && !scale.track_op() && !shift.track_op();
    if !fused {
        let y = x
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
        return act.compose(&y);
    }
    let op = ScaleShiftAct {
        scale: scale.flatten_all()?.to_vec1()?,
        shift: shift.flatten_all()?.to_vec1()?,
        act,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&op)?)
}

struct ScaleShiftAct {
    scale: Vec<f32>,
    shift: Vec<f32>,
    act: Act,
}

impl CustomOp1 for ScaleShiftAct {
    fn name(&self) -> &'static str {
        "voc-scale-shift-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "scale_shift_act")?;
        let (_, c, h, w) = l.shape().dims4()?;
        let plane = (h * w).max(1);
        let out = with_act!(self.act, |f, _pass| planes(x.len(), plane, |p| {
            let (a, b) = (self.scale[p % c], self.shift[p % c]);
            x[p * plane..(p + 1) * plane]
                .iter()
                .map(move |&v| f(v * a + b))
        }));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
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
        let out = with_act!(self.act, |f, _pass| planes(x.len(), plane, |p| {
            let b = self.bias.as_ref().map_or(0.0, |b| b[p % c]);
            x[p * plane..(p + 1) * plane].iter().map(move |&v| f(v + b))
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
        let dx = with_act!(self.0, |_f, pass| planes(out.len(), chunk, |p| {
            let range = p * chunk..out.len().min((p + 1) * chunk);
            out[range.clone()]
                .iter()
                .zip(&grad[range])
                .map(move |(&o, &g)| if pass(o) { g } else { 0.0 })
        }));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::fused::test_support::{self, ramp};
    use crate::testing::max_abs_diff;

    /// The in-place epilogue (constant input and weights) and the graph one (a variable input) give
    /// the same values as convolution then [`bias_act`], leave the input untouched, and the graph one
    /// passes a gradient to the input.
    #[test]
    fn conv2d_bias_act_in_place_and_with_gradient_agree() {
        // At every instruction-set level: the fused depthwise epilogue rounds as the separate pass does,
        // and the 1x1 kernels agree with a gemm library to rounding.
        crate::simd::for_each_level(|level| conv2d_bias_act_agrees(&format!("{level:?}")));
    }

    fn conv2d_bias_act_agrees(level: &str) {
        // 41 columns: the AVX-512 depthwise rows take a 32-wide step, then a masked tail; at stride 2
        // the 21-column output runs as one span over the plane; 2 x 9 x 41 pixels make several 1x1
        // register blocks with a tail.
        let x = ramp(&[2, 3, 9, 41], 0.2, 0.1, 0);
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
                let diff = max_abs_diff(&in_place, &reference).unwrap();
                if groups == 1 {
                    // The 1x1 kernels sum in their own order (the reference is a gemm library's).
                    assert!(diff < 1e-5, "{level} {act:?} 1x1: {diff}");
                } else {
                    assert_eq!(diff, 0.0, "{level} {act:?} depthwise stride {stride}");
                }
                assert_eq!(
                    max_abs_diff(&x, &x_before).unwrap(),
                    0.0,
                    "{level} {act:?}: input changed"
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
                    "{level} {act:?} (graph)"
                );
                let grads = y.sum_all().unwrap().backward().unwrap();
                assert!(
                    grads.get(xv.as_tensor()).is_some(),
                    "{level} {act:?}: no input gradient"
                );
            }
        }
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

    /// The in-place residual epilogue (constant input and weights) equals the composed ops, leaves the
    /// input and the residual untouched, and with a variable input the gradient flows through both.
    #[test]
    fn conv2d_bias_residual_act_in_place_and_with_gradient_agree() {
        // Two runs compared bit for bit: no other test may cap the kernels' level in between.
        let _level = crate::simd::level_lock();
        let x = ramp(&[2, 3, 9, 8], 0.2, 0.1, 0);
        let residual = ramp(&[2, 4, 5, 4], 0.7, -0.3, 1);
        let shift = Tensor::new(&[0.5f32, -1.0, 4.0, 0.0], &Device::Cpu).unwrap();
        let weight = ramp(&[4, 3, 3, 3], 0.3, 0.1, 2);
        let pad = crate::ops::Padding::same(1);
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            for shift in [Some(&shift), None] {
                let conv = crate::ops::conv2d(&x, &weight, None, 2, pad, 1, 1).unwrap();
                let conv = match shift {
                    Some(s) => conv
                        .broadcast_add(&s.reshape((1, 4, 1, 1)).unwrap())
                        .unwrap(),
                    None => conv,
                };
                let reference = act.compose(&(conv + &residual).unwrap()).unwrap();
                let (x_before, r_before) = (x.copy().unwrap(), residual.copy().unwrap());
                let in_place =
                    conv2d_bias_residual_act(&x, &weight, shift, &residual, 2, pad, 1, 1, act)
                        .unwrap();
                assert!(
                    max_abs_diff(&in_place, &reference).unwrap() < 1e-6,
                    "{act:?}"
                );
                assert_eq!(max_abs_diff(&x, &x_before).unwrap(), 0.0, "input changed");
                assert_eq!(
                    max_abs_diff(&residual, &r_before).unwrap(),
                    0.0,
                    "residual changed"
                );
                let xv = Var::from_tensor(&x).unwrap();
                let rv = Var::from_tensor(&residual).unwrap();
                let y = conv2d_bias_residual_act(
                    xv.as_tensor(),
                    &weight,
                    shift,
                    rv.as_tensor(),
                    2,
                    pad,
                    1,
                    1,
                    act,
                )
                .unwrap();
                assert!(
                    max_abs_diff(&y, &reference).unwrap() < 1e-6,
                    "{act:?} graph"
                );
                let grads = y.sum_all().unwrap().backward().unwrap();
                assert!(grads.get(xv.as_tensor()).is_some(), "no input gradient");
                assert!(grads.get(rv.as_tensor()).is_some(), "no residual gradient");
            }
        }
        let wrong = ramp(&[2, 4, 4, 4], 1.0, 0.0, 0);
        let err = conv2d_bias_residual_act(&x, &weight, None, &wrong, 2, pad, 1, 1, Act::Relu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("residual"), "{err}");
    }

    #[test]
    fn scale_shift_act_matches_composed_ops() {
        let scale = Tensor::new(&[0.5f32, -2.0, 1.5], &Device::Cpu).unwrap();
        let shift = Tensor::new(&[0.1f32, 0.3, -0.2], &Device::Cpu).unwrap();
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            let x = ramp(&[2, 3, 4, 3], 2.9, -1.0, 0);
            let plain = act
                .compose(
                    &x.broadcast_mul(&scale.reshape((1, 3, 1, 1)).unwrap())
                        .unwrap()
                        .broadcast_add(&shift.reshape((1, 3, 1, 1)).unwrap())
                        .unwrap(),
                )
                .unwrap();
            let fused = scale_shift_act(&x, &scale, &shift, act).unwrap();
            assert!(max_abs_diff(&fused, &plain).unwrap() < 1e-6, "{act:?}");
            // A variable input takes the differentiable path.
            let xv = Var::from_tensor(&x).unwrap();
            let y = scale_shift_act(xv.as_tensor(), &scale, &shift, act).unwrap();
            assert!(max_abs_diff(&y, &plain).unwrap() < 1e-6, "{act:?} graph");
            let grads = y.sum_all().unwrap().backward().unwrap();
            assert!(grads.get(xv.as_tensor()).is_some());
        }
        let x = ramp(&[1, 2, 2, 2], 1.0, 0.0, 0);
        assert!(scale_shift_act(&x, &scale, &shift, Act::Relu).is_err());
    }
}
