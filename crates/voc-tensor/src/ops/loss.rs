//! Losses with PyTorch semantics that stay finite for any logits.
use candle_core::{DType, Tensor, D};

use super::mean_all;
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
    if logits.dims() != targets.dims() {
        return Err(VocError::BadArgument(format!(
            "bce_with_logits: logits {:?} and targets {:?} must have the same shape",
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
                    "bce_with_logits: pos_weight has shape {:?}, expected one weight per class ({classes})",
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
        None => softplus_neg,
        Some(s) => (softplus_neg * s)?,
    };
    let loss = ((targets.affine(-1.0, 1.0)? * logits)? + weighted)?;
    mean_all(&loss)
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
    let (flat_logits, classes) = match logits.rank() {
        4 => {
            let (n, c, h, w) = logits.dims4()?;
            if targets.dims() != [n, h, w] {
                return Err(VocError::BadArgument(format!(
                    "cross_entropy_2d: logits {:?} need targets of shape [{n}, {h}, {w}], got {:?}",
                    logits.dims(),
                    targets.dims()
                )));
            }
            (logits.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?, c)
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
            (logits.clone(), c)
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
    let log_probs = candle_nn::ops::log_softmax(&flat_logits, D::Minus1)?;
    let picked = log_probs
        .gather(&safe_targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let mut pixel_weight = valid.to_dtype(logits.dtype())?;
    if let Some(cw) = class_weight {
        if cw.elem_count() != classes {
            return Err(VocError::BadArgument(format!(
                "cross_entropy_2d: class_weight has shape {:?}, expected ({classes})",
                cw.dims()
            )));
        }
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
