//! What an attack pushes on: a scalar loss of the model's logits.
use candle_core::{DType, Tensor};
use voc_tensor::ops::{bce_with_logits, cross_entropy_2d, resize_bilinear};

use crate::error::{AttackError, Result};

/// A scalar loss of a batch of logits. An untargeted attack climbs it, a targeted one descends it.
///
/// Implemented by [`Objective`] and by any `Fn(&Tensor) -> voc_attack::Result<Tensor>` closure:
///
/// ```
/// use candle_core::{Device, Tensor};
/// use voc_attack::{input_gradient, Loss};
/// // The logit of class 0, which an untargeted attack would raise.
/// let logit0 = |logits: &Tensor| -> voc_attack::Result<Tensor> {
///     Ok(logits.narrow(1, 0, 1)?.sum_all()?)
/// };
/// let logits = Tensor::new(&[[2f32, -1.0]], &Device::Cpu)?;
/// assert_eq!(logit0.loss(&logits)?.to_scalar::<f32>()?, 2.0);
/// // model x -> 3 x: the gradient of 3 x_0 is [3, 0].
/// let model = |x: &Tensor| x.affine(3.0, 0.0);
/// let x = Tensor::new(&[[0.5f32, 0.25]], &Device::Cpu)?;
/// let (grad, value) = input_gradient(&model, &logit0, &x)?;
/// assert_eq!((grad.to_vec2::<f32>()?, value), (vec![vec![3.0, 0.0]], 1.5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Loss {
    /// The loss of `logits` as a scalar tensor (the attack fails on any other shape); logits that do
    /// not fit (shape, labels out of range) are [`AttackError::BadInput`].
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
///
/// ```
/// use candle_core::{Device, Tensor};
/// use voc_attack::{Loss, Objective};
/// let logits = Tensor::new(&[[0f32, 0.0], [3.0, -3.0]], &Device::Cpu)?;
/// let ce = Objective::CrossEntropy { classes: vec![0, 0] }.loss(&logits)?.to_scalar::<f32>()?;
/// assert!((ce - (2f32.ln() + (1.0 + (-6f32).exp()).ln()) / 2.0).abs() < 1e-6);
/// let targets = Tensor::new(&[[1f32, 0.0], [1.0, 0.0]], &Device::Cpu)?;
/// let bce = Objective::MultiLabel { targets }.loss(&logits)?.to_scalar::<f32>()?;
/// assert!(bce > 0.0);
/// // Wrong label counts are errors, not panics.
/// assert!(Objective::CrossEntropy { classes: vec![0] }.loss(&logits).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub enum Objective {
    /// Single-label classification (`N x C` logits): cross-entropy to one class per image. Untargeted:
    /// the true classes; targeted: the classes to reach.
    CrossEntropy {
        /// One class index per image, each below `C`.
        classes: Vec<u32>,
    },
    /// Multi-label classification (`N x C` logits, such as the 20 VOC labels): binary cross-entropy on
    /// logits against `N x C` 0/1 targets.
    MultiLabel {
        /// `N x C` 0/1 (float) targets, the logits' shape.
        targets: Tensor,
    },
    /// Semantic segmentation: pixel cross-entropy against an `N x H x W` mask (u8, u32 or i64). Logits
    /// at a lower resolution (a DeepLab head at its output stride) are first upsampled to `H x W`
    /// bilinearly with `align_corners`, as the segmenter's own prediction is; pixels equal to
    /// `ignore_index` do not count.
    PixelCrossEntropy {
        /// `N x H x W` class indices.
        mask: Tensor,
        /// The mask value that does not count (VOC's void, 255), if any.
        ignore_index: Option<u32>,
        /// How lower-resolution logits are upsampled (`true` for DeepLab).
        align_corners: bool,
    },
}

impl Objective {
    /// Pixel cross-entropy against `mask` with DeepLab's upsampling (`align_corners = true`) and VOC's
    /// void label 255 ignored.
    pub fn segmentation(mask: Tensor) -> Self {
        Self::PixelCrossEntropy {
            mask,
            ignore_index: Some(u32::from(voc_core::VOID)),
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
