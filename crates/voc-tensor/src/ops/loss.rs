//! Losses with PyTorch semantics that stay finite for any logits.
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{contiguous_f32, mean_all};
use crate::error::{Result, VocError};

/// Binary cross-entropy on logits, mean over all elements: PyTorch
/// `F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)`.
///
/// Written in the stable form `(1-t)·x + (1 + (p-1)·t)·(log(1+e^{-|x|}) + max(-x, 0))`, so logits of
/// ±100 (or more) give finite losses and gradients (candle's version overflows past ~17).
/// `pos_weight` has one weight per class (the last axis) and multiplies the positive term.
pub fn bce_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
) -> Result<Tensor> {
    mean_all(&bce_terms(logits, targets, pos_weight, "bce_with_logits")?.loss)
}

/// Sigmoid focal loss, mean over all elements: the per-element loss of torchvision's
/// `sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="mean")`,
/// `alpha_t · ce · (1 - p_t)^gamma` with `p = sigmoid(x)`, `p_t = p·t + (1-p)·(1-t)` and
/// `alpha_t = alpha·t + (1-alpha)·(1-t)` (no `alpha_t` factor when `alpha` is `None`, torchvision's
/// `alpha < 0`).
///
/// `ce` is the per-element [`bce_with_logits`], `pos_weight` (one weight per class, the last axis)
/// multiplying its positive term as PyTorch's `BCEWithLogitsLoss` does (torchvision has no
/// `pos_weight`). `p` and `1 - p` are `exp(-softplus(∓x))` from the same stable softplus as the BCE,
/// so logits of ±100 (or more) give finite values and gradients; with `gamma = 0` and no `alpha` this
/// is exactly [`bce_with_logits`]. `gamma` must be finite and ≥ 0, `alpha` finite.
pub fn sigmoid_focal_loss(
    logits: &Tensor,
    targets: &Tensor,
    gamma: f64,
    alpha: Option<f64>,
    pos_weight: Option<&Tensor>,
) -> Result<Tensor> {
    if !gamma.is_finite() || gamma < 0.0 || alpha.is_some_and(|a| !a.is_finite()) {
        return Err(VocError::BadArgument(format!(
            "sigmoid_focal_loss: gamma must be finite and >= 0 and alpha finite, got gamma {gamma}, alpha {alpha:?}"
        )));
    }
    let BceTerms {
        mut loss,
        softplus_neg,
        targets,
    } = bce_terms(logits, targets, pos_weight, "sigmoid_focal_loss")?;
    if gamma != 0.0 {
        // 1 - p_t = p·(1-t) + (1-p)·t, with p = e^{-softplus(-x)} and 1-p = e^{-softplus(x)}: no
        // cancellation, and a sum of non-negative terms for targets in [0, 1].
        let p = softplus_neg.neg()?.exp()?;
        let one_minus_p = (&softplus_neg + logits)?.neg()?.exp()?;
        let base = ((p * targets.affine(-1.0, 1.0)?)? + (one_minus_p * &targets)?)?;
        // base^gamma, 0 where the base underflowed to 0. The power reads a base of 1 there instead
        // (a constant), so its backward never evaluates 0^(gamma-1) = inf, which times the zero
        // gradient of the unselected branch would be NaN.
        let positive = base.gt(0.0)?;
        let safe_base = positive.where_cond(&base, &base.ones_like()?)?;
        let modulating = positive.where_cond(&safe_base.powf(gamma)?, &base.zeros_like()?)?;
        loss = (loss * modulating)?;
    }
    if let Some(alpha) = alpha {
        // alpha_t = alpha·t + (1-alpha)·(1-t), a constant.
        loss = (loss * targets.affine(2.0 * alpha - 1.0, 1.0 - alpha)?)?;
    }
    mean_all(&loss)
}

/// The per-element pieces of [`bce_with_logits`], which [`sigmoid_focal_loss`] reuses.
struct BceTerms {
    /// The per-element loss, the shape of the logits.
    loss: Tensor,
    /// `softplus(-x) = -log sigmoid(x)`, computed stably.
    softplus_neg: Tensor,
    /// The targets on the logits' device, in their dtype.
    targets: Tensor,
}

/// Checks the shapes and computes [`BceTerms`]; `op` names the caller in errors.
fn bce_terms(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
    op: &str,
) -> Result<BceTerms> {
    if logits.dims() != targets.dims() {
        return Err(VocError::BadArgument(format!(
            "{op}: logits {:?} and targets {:?} must have the same shape",
            logits.dims(),
            targets.dims()
        )));
    }
    let targets = targets
        .to_device(logits.device())?
        .to_dtype(logits.dtype())?;
    // softplus(-x) = log(1 + e^{-|x|}) + max(-x, 0), with |x| and max(-x, 0) written through one detached
    // mask so that their kinks at 0 cancel: the gradient there is -1/2 (candle's abs and relu pick
    // subgradients that would add up to -3/2).
    let non_negative = logits.detach().ge(0.0)?.to_dtype(logits.dtype())?;
    let abs = (logits * non_negative.affine(2.0, -1.0)?)?;
    let negative_part = (logits * (non_negative - 1.0)?)?;
    let softplus_neg = ((abs.neg()?.exp()? + 1.0)?.log()? + negative_part)?;
    let positive_scale = match pos_weight {
        None => None,
        Some(pw) => {
            let classes = *logits.dims().last().unwrap_or(&1);
            if pw.elem_count() != classes && pw.elem_count() != 1 {
                return Err(VocError::BadArgument(format!(
                    "{op}: pos_weight has shape {:?}, expected one weight per class ({classes})",
                    pw.dims()
                )));
            }
            let pw = pw
                .to_device(logits.device())?
                .to_dtype(logits.dtype())?
                .flatten_all()?;
            let pw = if pw.elem_count() == 1 {
                pw.broadcast_as(classes)?
            } else {
                pw
            };
            Some((targets.broadcast_mul(&(pw - 1.0)?)? + 1.0)?)
        }
    };
    let weighted = match positive_scale {
        None => softplus_neg.clone(),
        Some(s) => (&softplus_neg * s)?,
    };
    let loss = ((targets.affine(-1.0, 1.0)? * logits)? + weighted)?;
    Ok(BceTerms {
        loss,
        softplus_neg,
        targets,
    })
}

/// Cross-entropy over class logits with PyTorch `F.cross_entropy(logits, targets, weight=class_weight,
/// ignore_index=ignore_index)` semantics: `sum_i w[t_i]·(-log softmax(x_i)[t_i]) / sum_i w[t_i]` over the
/// pixels whose target is not the ignore index.
///
/// `logits` is `N x C x H x W` with `targets` `N x H x W`, or `N x C` with `N`; targets are u8, u32 or
/// i64. A target outside `0..C` that is not the ignore index is an error. When every pixel is ignored the
/// loss is 0 with a zero gradient (PyTorch returns NaN, which would poison a training run).
pub fn cross_entropy_2d(
    logits: &Tensor,
    targets: &Tensor,
    class_weight: Option<&Tensor>,
    ignore_index: Option<u32>,
) -> Result<Tensor> {
    let classes = match logits.rank() {
        4 => {
            let (n, c, h, w) = logits.dims4()?;
            if targets.dims() != [n, h, w] {
                return Err(VocError::BadArgument(format!(
                    "cross_entropy_2d: logits {:?} need targets of shape [{n}, {h}, {w}], got {:?}",
                    logits.dims(),
                    targets.dims()
                )));
            }
            c
        }
        2 => {
            let (n, c) = logits.dims2()?;
            if targets.dims() != [n] {
                return Err(VocError::BadArgument(format!(
                    "cross_entropy_2d: logits {:?} need targets of shape [{n}], got {:?}",
                    logits.dims(),
                    targets.dims()
                )));
            }
            c
        }
        _ => {
            return Err(VocError::BadArgument(format!(
                "cross_entropy_2d: expected logits N x C x H x W or N x C, got {:?}",
                logits.dims()
            )))
        }
    };
    let targets = targets.flatten_all()?.to_device(logits.device())?;
    let targets = match targets.dtype() {
        DType::U8 | DType::U32 => targets.to_dtype(DType::U32)?,
        DType::I64 => {
            let min = targets.min(0)?.to_scalar::<i64>()?;
            if min < 0 {
                return Err(VocError::BadArgument(format!(
                    "cross_entropy_2d: targets hold {min}; class indices must be in 0..{classes} or the ignore index"
                )));
            }
            targets.to_dtype(DType::U32)?
        }
        other => {
            return Err(VocError::BadArgument(format!(
                "cross_entropy_2d: targets must be u8, u32 or i64 class indices, got {other:?}"
            )))
        }
    };
    let valid = match ignore_index {
        Some(ignore) => targets.ne(ignore)?,
        None => targets.ones_like()?.to_dtype(DType::U8)?,
    };
    let safe_targets = valid.where_cond(&targets, &targets.zeros_like()?)?;
    let max_target = safe_targets.max(0)?.to_scalar::<u32>()? as usize;
    if max_target >= classes {
        return Err(VocError::BadArgument(format!(
            "cross_entropy_2d: a target is {max_target} but there are {classes} classes (and it is not the ignore index)"
        )));
    }
    if let Some(cw) = class_weight {
        if cw.elem_count() != classes {
            return Err(VocError::BadArgument(format!(
                "cross_entropy_2d: class_weight has shape {:?}, expected ({classes})",
                cw.dims()
            )));
        }
    }
    if logits.device().is_cpu()
        && logits.dtype() == DType::F32
        && !matches!(class_weight, Some(w) if w.track_op())
    {
        return cross_entropy_cpu(logits, &targets, class_weight, ignore_index, classes);
    }
    // One row of class logits per pixel (a permuted copy for N x C x H x W).
    let flat_logits = match logits.rank() {
        4 => logits.permute((0, 2, 3, 1))?.reshape(((), classes))?,
        _ => logits.clone(),
    };
    let log_probs = candle_nn::ops::log_softmax(&flat_logits, D::Minus1)?;
    let picked = log_probs
        .gather(&safe_targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let mut pixel_weight = valid.to_dtype(logits.dtype())?;
    if let Some(cw) = class_weight {
        let per_pixel = cw
            .to_device(logits.device())?
            .to_dtype(logits.dtype())?
            .flatten_all()?
            .index_select(&safe_targets, 0)?;
        pixel_weight = (pixel_weight * per_pixel)?;
    }
    let total_weight = pixel_weight.sum_all()?;
    let numerator = (picked * &pixel_weight)?.sum_all()?.neg()?;
    // An all-ignored batch has total weight 0; dividing by max(total, tiny) makes it 0, not NaN.
    let denominator = total_weight.maximum(1e-12)?.detach();
    Ok((numerator / denominator)?)
}

/// The CPU cross-entropy as one op on the `N x C x HW` (or `N x C`) logits as they lie: no permuted
/// copy, one pass for the log-sum-exp of each pixel forward and one more for the gradient backward.
/// Composed of candle ops it took ~10x PyTorch's time (a permute, a log-softmax, a gather and a dozen
/// zero-filled gradient buffers), half of an attack step on DeepLabV3 at 257x257. The exponentials are
/// [`crate::simd::exp`], which vectorises (libm's `expf` per element was half of this op's time).
fn cross_entropy_cpu(
    logits: &Tensor,
    targets: &Tensor,
    class_weight: Option<&Tensor>,
    ignore_index: Option<u32>,
    classes: usize,
) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let hw = logits.elem_count() / (n * classes).max(1);
    let targets = targets.to_vec1::<u32>()?;
    // The caller checked its length.
    let class_weight = match class_weight {
        Some(w) => Some(w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => None,
    };
    // Per-pixel weight: 0 for the ignored, the class weight (or 1) otherwise.
    let pixel_weight: Vec<f32> = targets
        .iter()
        .map(|&t| match (ignore_index, &class_weight) {
            (Some(ignore), _) if t == ignore => 0.0,
            (_, Some(w)) => w[t as usize],
            (_, None) => 1.0,
        })
        .collect();
    let total: f64 = pixel_weight.iter().map(|&w| w as f64).sum();
    let op = CrossEntropyCpu {
        targets: Arc::new(targets),
        pixel_weight: Arc::new(pixel_weight),
        // An all-ignored batch has total weight 0: the loss is 0 with a zero gradient, not NaN.
        denominator: total.max(1e-12),
        n,
        c: classes,
        hw,
        log_sum_exp: Arc::default(),
    };
    Ok(logits.contiguous()?.apply_op1(op)?)
}

#[derive(Clone)]
struct CrossEntropyCpu {
    targets: Arc<Vec<u32>>,
    pixel_weight: Arc<Vec<f32>>,
    denominator: f64,
    n: usize,
    c: usize,
    hw: usize,
    /// The forward's per-pixel log-sum-exp, kept for the backward (two passes over the logits less).
    log_sum_exp: Arc<Mutex<Option<Arc<Vec<f32>>>>>,
}

/// Pixels per parallel task of the cross-entropy passes.
const CE_CHUNK: usize = 2048;

impl CrossEntropyCpu {
    /// `log Σ_c exp(x[b, c, p])` for every pixel, image-major like the targets.
    fn log_sum_exp(&self, x: &[f32]) -> Vec<f32> {
        let (c, hw) = (self.c, self.hw);
        let mut lse = vec![0f32; self.n * hw];
        lse.par_chunks_mut(hw.max(1))
            .enumerate()
            .for_each(|(b, image)| {
                let xb = &x[b * c * hw..(b + 1) * c * hw];
                image
                    .par_chunks_mut(CE_CHUNK)
                    .enumerate()
                    .for_each(|(k, out)| {
                        let p0 = k * CE_CHUNK;
                        let len = out.len();
                        // The running maximum over classes, then the sum of exp(x - max): rows of
                        // contiguous pixels per class, so the inner loops vectorise.
                        out.copy_from_slice(&xb[p0..p0 + len]);
                        for ch in 1..c {
                            let row = &xb[ch * hw + p0..ch * hw + p0 + len];
                            for (m, &v) in out.iter_mut().zip(row) {
                                *m = m.max(v);
                            }
                        }
                        let mut sum = vec![0f32; len];
                        for ch in 0..c {
                            let row = &xb[ch * hw + p0..ch * hw + p0 + len];
                            for ((s, &m), &v) in sum.iter_mut().zip(out.iter()).zip(row) {
                                *s += crate::simd::exp(v - m);
                            }
                        }
                        for (m, s) in out.iter_mut().zip(&sum) {
                            *m += s.ln();
                        }
                    });
            });
        lse
    }
}

impl CustomOp1 for CrossEntropyCpu {
    fn name(&self) -> &'static str {
        "voc-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "cross_entropy_2d")?;
        if x.len() != self.n * self.c * self.hw {
            candle_core::bail!(
                "cross_entropy_2d: {} logits for {}x{}x{}",
                x.len(),
                self.n,
                self.c,
                self.hw
            );
        }
        let lse = Arc::new(self.log_sum_exp(x));
        *self.log_sum_exp.lock().expect("log-sum-exp lock") = Some(lse.clone());
        let (c, hw) = (self.c, self.hw);
        let numerator: f64 = (0..self.n * hw)
            .into_par_iter()
            .with_min_len(CE_CHUNK)
            .map(|i| {
                let w = self.pixel_weight[i];
                if w == 0.0 {
                    return 0.0;
                }
                let (b, p) = (i / hw, i % hw);
                let picked = x[(b * c + self.targets[i] as usize) * hw + p];
                (w * (lse[i] - picked)) as f64
            })
            .sum();
        let loss = (numerator / self.denominator) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let scale = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0];
        let op = CrossEntropyCpuBwd {
            forward: self.clone(),
            scale,
        };
        Ok(Some(x.apply_op1_no_bwd(&op)?))
    }
}

/// `d loss / d x[b, c, p] = scale · w_p / W · (softmax(x[b, :, p])[c] - [c = t_p])`.
struct CrossEntropyCpuBwd {
    forward: CrossEntropyCpu,
    scale: f32,
}

impl CustomOp1 for CrossEntropyCpuBwd {
    fn name(&self) -> &'static str {
        "voc-cross-entropy-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let f = &self.forward;
        let x = contiguous_f32(s, l, "cross_entropy_2d backward")?;
        let kept = f.log_sum_exp.lock().expect("log-sum-exp lock").clone();
        let lse = kept.unwrap_or_else(|| Arc::new(f.log_sum_exp(x)));
        let (c, hw) = (f.c, f.hw);
        let coef: Vec<f32> = f
            .pixel_weight
            .iter()
            .map(|&w| (self.scale as f64 * w as f64 / f.denominator) as f32)
            .collect();
        let dx = super::planes_from(
            x.len(),
            hw,
            |_| 0.0,
            || (),
            |_, plane, out| {
                let (b, ch) = (plane / c, plane % c);
                let xs = &x[plane * hw..(plane + 1) * hw];
                let pixels = b * hw..(b + 1) * hw;
                let (lse, coef, targets) = (
                    &lse[pixels.clone()],
                    &coef[pixels.clone()],
                    &f.targets[pixels],
                );
                for p in 0..hw {
                    let hit = if targets[p] as usize == ch { 1.0 } else { 0.0 };
                    out[p] = coef[p] * (crate::simd::exp(xs[p] - lse[p]) - hit);
                }
            },
        );
        Ok((CpuStorage::F32(dx), l.shape().clone()))
    }
}
