//! What an attack pushes on: a scalar loss of the model's logits.
use candle_core::{DType, Tensor};
use voc_tensor::ops::{bce_with_logits, cross_entropy_2d, resize_bilinear};

use crate::error::{AttackError, Result};

/// A scalar loss of a batch of logits. An untargeted attack climbs it, a targeted one descends it.
///
/// Implemented by [`Objective`] and by any `Fn(&Tensor) -> voc_attack::Result<Tensor>` closure.
pub trait Loss {
    fn loss(&self, logits: &Tensor) -> Result<Tensor>;
}

impl<F> Loss for F
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    fn loss(&self, logits: &Tensor) -> Result<Tensor> {
        self(logits)
    }
}

/// The losses of the three kinds of model this project attacks. Each is a mean over the batch (and over
/// the pixels), as PyTorch's default reductions are; the attack steps only use the gradient's sign or
/// direction per image, so the reduction does not change them.
#[derive(Debug, Clone)]
pub enum Objective {
    /// Single-label classification (`N x C` logits): cross-entropy to one class per image. Untargeted:
    /// the true classes; targeted: the classes to reach.
    CrossEntropy { classes: Vec<u32> },
    /// Multi-label classification (`N x C` logits, such as the 20 VOC labels): binary cross-entropy on
    /// logits against `N x C` 0/1 targets.
    MultiLabel { targets: Tensor },
    /// Semantic segmentation: pixel cross-entropy against an `N x H x W` mask (u8, u32 or i64). Logits
    /// at a lower resolution (a DeepLab head at its output stride) are first upsampled to `H x W`
    /// bilinearly with `align_corners`, as the segmenter's own prediction is; pixels equal to
    /// `ignore_index` do not count.
    PixelCrossEntropy {
        mask: Tensor,
        ignore_index: Option<u32>,
        align_corners: bool,
    },
}

impl Objective {
    /// Pixel cross-entropy against `mask` with DeepLab's upsampling (`align_corners = true`) and VOC's
    /// void label 255 ignored.
    pub fn segmentation(mask: Tensor) -> Self {
        Self::PixelCrossEntropy {
            mask,
            ignore_index: Some(255),
            align_corners: true,
        }
    }
}

impl Loss for Objective {
    fn loss(&self, logits: &Tensor) -> Result<Tensor> {
        match self {
            Self::CrossEntropy { classes } => {
                let (n, c) = logits.dims2().map_err(|_| {
                    AttackError::BadInput(format!(
                        "cross-entropy objective: expected N x C logits, got {:?}",
                        logits.dims()
                    ))
                })?;
                if classes.len() != n {
                    return Err(AttackError::BadInput(format!(
                        "cross-entropy objective: {} classes for a batch of {n} images",
                        classes.len()
                    )));
                }
                if let Some(&bad) = classes.iter().find(|&&k| k as usize >= c) {
                    return Err(AttackError::BadInput(format!(
                        "cross-entropy objective: class {bad} is not in 0..{c}"
                    )));
                }
                let targets = Tensor::from_slice(classes, n, logits.device())?;
                Ok(cross_entropy_2d(logits, &targets, None, None)?)
            }
            Self::MultiLabel { targets } => {
                if targets.dims() != logits.dims() {
                    return Err(AttackError::BadInput(format!(
                        "multi-label objective: targets {:?} do not match logits {:?}",
                        targets.dims(),
                        logits.dims()
                    )));
                }
                Ok(bce_with_logits(logits, targets, None)?)
            }
            Self::PixelCrossEntropy {
                mask,
                ignore_index,
                align_corners,
            } => {
                let (n, _, h, w) = logits.dims4().map_err(|_| {
                    AttackError::BadInput(format!(
                        "segmentation objective: expected N x C x H x W logits, got {:?}",
                        logits.dims()
                    ))
                })?;
                let (mn, mh, mw) = mask.dims3().map_err(|_| {
                    AttackError::BadInput(format!(
                        "segmentation objective: expected an N x H x W mask, got {:?}",
                        mask.dims()
                    ))
                })?;
                if mn != n {
                    return Err(AttackError::BadInput(format!(
                        "segmentation objective: {mn} masks for a batch of {n} images"
                    )));
                }
                let logits = if (mh, mw) == (h, w) {
                    logits.clone()
                } else {
                    resize_bilinear(logits, mh, mw, *align_corners)?
                };
                let mask = match mask.dtype() {
                    DType::U8 | DType::U32 | DType::I64 => mask.clone(),
                    other => {
                        return Err(AttackError::BadInput(format!(
                            "segmentation objective: mask must hold class indices (u8, u32 or i64), got {other:?}"
                        )))
                    }
                };
                Ok(cross_entropy_2d(&logits, &mask, None, *ignore_index)?)
            }
        }
    }
}
