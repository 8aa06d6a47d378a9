//! Batch norm in training mode followed by an activation, as one custom op with a hand-written
//! backward; and the pieces the fused conv + batch norm op shares with it: the batch statistics, the
//! running-statistics update, the normalise-and-activate pass and its backward.
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{append_planes, on_cpu_f32, planes, Act};
use crate::error::{Result, VocError};
use crate::nn::BatchNorm2d;
use crate::ops::contiguous_f32;
use crate::simd;

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
    let affine = move |p: usize| (scale[p % c], shift[p % c], p * plane..(p + 1) * plane);
    match residual {
        None => with_act!(act, |f, _pass| planes(x.len(), plane, |p| {
            let (scale, shift, span) = affine(p);
            x[span].iter().map(move |&v| f(v * scale + shift))
        })),
        Some(r) => with_act!(act, |f, _pass| planes(x.len(), plane, |p| {
            let (scale, shift, span) = affine(p);
            x[span.clone()]
                .iter()
                .zip(&r[span])
                .map(move |(&v, &r)| f(v * scale + shift) + r)
        })),
    }
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
    let mut dx = Vec::with_capacity(x.len() + spare);
    with_act!(act, |_f, pass| append_planes(
        &mut dx,
        x.len(),
        plane,
        |p| {
            let ch = p % c;
            let (sum_g, sum_gxhat) = sums[ch];
            let k = weight[ch] * inv_std[ch];
            let (mean_g, mean_gxhat) = (sum_g / count, sum_gxhat / count);
            // dx = k·(g - mean_g - (x - mean)·inv_std·mean_gxhat) = k·g + (a·x + b)
            let a = -k * inv_std[ch] * mean_gxhat;
            let b0 = -k * mean_g - a * mean[ch];
            let r = p * plane..(p + 1) * plane;
            x[r.clone()]
                .iter()
                .zip(&out[r.clone()])
                .zip(&grad[r])
                .map(move |((&xv, &o), &g)| {
                    let g = if pass(o) { g } else { 0.0 };
                    k * g + a * xv + b0
                })
        }
    ));
    (dx, sums)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use candle_nn::VarMap;

    use super::*;
    use crate::fused::test_support::{self, ramp};
    use crate::testing::max_abs_diff;

    fn batch_norm(channels: usize) -> (VarMap, BatchNorm2d) {
        assert_eq!(channels, 3);
        test_support::batch_norm(&[1.5, -0.5, 2.0], &[0.5, 0.2, 3.0])
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
}
