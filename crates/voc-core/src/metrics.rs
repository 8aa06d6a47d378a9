//! Overlap scores shared by the classification metrics (voc-classify) and the submission scorer
//! (voc-submit), so that the competition's Dice formula is written once.

/// Dice coefficient `2|A∩B| / (|A|+|B|)` of two binary arrays given as counts: `both` positions
/// set in both, `a` set in the first, `b` set in the second. Two empty arrays agree perfectly: 1.
///
/// This is the Kaggle competition's per-row score, for a classification row (20 labels) as for a
/// segmentation row (the stacked per-class masks).
///
/// ```
/// use voc_core::metrics::dice_from_counts;
///
/// assert_eq!(dice_from_counts(3, 4, 3), 6.0 / 7.0); // 2·3 / (4 + 3)
/// assert_eq!(dice_from_counts(0, 2, 1), 0.0); // disjoint
/// assert_eq!(dice_from_counts(0, 0, 0), 1.0); // both empty
/// ```
pub fn dice_from_counts(both: u64, a: u64, b: u64) -> f64 {
    if a + b == 0 {
        1.0
    } else {
        2.0 * both as f64 / (a + b) as f64
    }
}

use crate::classes::{NUM_MASK_CLASSES, VOID};
use crate::error::{CoreError, Result};

/// Segmentation scores accumulated image by image: the 21 x 21 confusion matrix of the mask values
/// (0 = background, 1..20 the classes) and the Kaggle segmentation Dice of each image.
///
/// Truth pixels that are VOC's void border (255) count nowhere: not in the confusion matrix, not in
/// the Dice. Every other truth value must be a mask value (0..=20) and every prediction one too.
///
/// ```
/// use voc_core::metrics::SegmentationMetrics;
/// let mut m = SegmentationMetrics::new();
/// // A 2x3 image: background, a cat (8), and one void pixel.
/// let truth = [0u8, 8, 8, 0, 8, 255];
/// let pred = [0u8, 8, 0, 0, 8, 8];
/// m.add_image(&truth, &pred)?;
/// assert_eq!(m.pixel_accuracy(), Some(4.0 / 5.0));
/// assert_eq!(m.class_iou()[8], Some(2.0 / 3.0)); // 2 right, 1 missed, none extra
/// assert_eq!(m.class_iou()[0], Some(2.0 / 3.0)); // 2 right, 1 extra
/// assert_eq!(m.segmentation_dice(), Some(2.0 * 2.0 / (2.0 + 3.0)));
/// # Ok::<(), voc_core::CoreError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationMetrics {
    /// `confusion[truth][pred]`: pixels of true value `truth` predicted as `pred`.
    confusion: [[u64; NUM_MASK_CLASSES]; NUM_MASK_CLASSES],
    dice_sum: f64,
    images: usize,
}

impl Default for SegmentationMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentationMetrics {
    /// No images yet.
    pub fn new() -> Self {
        Self {
            confusion: [[0; NUM_MASK_CLASSES]; NUM_MASK_CLASSES],
            dice_sum: 0.0,
            images: 0,
        }
    }

    /// Adds one image's true and predicted masks (the same pixels, row-major). Different lengths, a
    /// truth value in 21..=254 or a prediction above 20 is a [`CoreError::BadArgument`] naming it; the
    /// metrics are unchanged then.
    pub fn add_image(&mut self, truth: &[u8], pred: &[u8]) -> Result<()> {
        if truth.len() != pred.len() {
            return Err(CoreError::BadArgument(format!(
                "segmentation metrics: the true mask has {} pixels, the prediction {}",
                truth.len(),
                pred.len()
            )));
        }
        let mut image = [[0u64; NUM_MASK_CLASSES]; NUM_MASK_CLASSES];
        for (i, (&t, &p)) in truth.iter().zip(pred).enumerate() {
            if t == VOID {
                continue;
            }
            if usize::from(t) >= NUM_MASK_CLASSES {
                return Err(CoreError::BadArgument(format!(
                    "segmentation metrics: true mask value {t} at pixel {i}: expected 0..=20 or 255 (void)"
                )));
            }
            if usize::from(p) >= NUM_MASK_CLASSES {
                return Err(CoreError::BadArgument(format!(
                    "segmentation metrics: predicted value {p} at pixel {i}: expected 0..=20"
                )));
            }
            image[usize::from(t)][usize::from(p)] += 1;
        }
        // The competition's segmentation row: the 20 class masks stacked, background left out.
        let (mut both, mut in_pred, mut in_truth) = (0, 0, 0);
        for c in 1..NUM_MASK_CLASSES {
            both += image[c][c];
            in_truth += image[c].iter().sum::<u64>();
            in_pred += image.iter().map(|row| row[c]).sum::<u64>();
        }
        self.dice_sum += dice_from_counts(both, in_pred, in_truth);
        self.images += 1;
        for (total, row) in self.confusion.iter_mut().zip(&image) {
            for (t, v) in total.iter_mut().zip(row) {
                *t += v;
            }
        }
        Ok(())
    }

    /// Images added.
    pub fn images(&self) -> usize {
        self.images
    }

    /// `confusion()[truth][pred]`: pixel counts over all images (void pixels left out).
    pub fn confusion(&self) -> &[[u64; NUM_MASK_CLASSES]; NUM_MASK_CLASSES] {
        &self.confusion
    }

    /// Share of the scored (non-void) pixels predicted right; `None` before any pixel.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let total: u64 = self.confusion.iter().flatten().sum();
        let right: u64 = (0..NUM_MASK_CLASSES).map(|c| self.confusion[c][c]).sum();
        (total > 0).then(|| right as f64 / total as f64)
    }

    /// IoU of each mask value (0 = background) over all pixels: `TP / (TP + FP + FN)`; `None` for a
    /// value neither in the truth nor in the predictions.
    pub fn class_iou(&self) -> [Option<f64>; NUM_MASK_CLASSES] {
        std::array::from_fn(|c| {
            let tp = self.confusion[c][c];
            let in_truth: u64 = self.confusion[c].iter().sum();
            let in_pred: u64 = self.confusion.iter().map(|row| row[c]).sum();
            let union = in_truth + in_pred - tp;
            (union > 0).then(|| tp as f64 / union as f64)
        })
    }

    /// Mean of the defined IoUs of the 21 values (background included): PASCAL VOC's mIoU.
    pub fn mean_iou(&self) -> Option<f64> {
        mean_defined(&self.class_iou())
    }

    /// Mean of the defined IoUs of the 20 object classes (background left out), as `voc score`
    /// reports it from a submission.
    pub fn mean_class_iou(&self) -> Option<f64> {
        mean_defined(&self.class_iou()[1..])
    }

    /// Mean over images of the competition's segmentation Dice (`None` before any image).
    pub fn segmentation_dice(&self) -> Option<f64> {
        (self.images > 0).then(|| self.dice_sum / self.images as f64)
    }
}

fn mean_defined(values: &[Option<f64>]) -> Option<f64> {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmentation_metrics_by_hand() {
        let mut m = SegmentationMetrics::new();
        assert_eq!(m.pixel_accuracy(), None);
        assert_eq!(m.segmentation_dice(), None);
        // Image 1: perfect dog (12) on background. Image 2: nothing true, a false aeroplane (1).
        m.add_image(&[12, 12, 0, 0], &[12, 12, 0, 0]).unwrap();
        m.add_image(&[0, 0, 0, 0], &[1, 0, 0, 0]).unwrap();
        assert_eq!(m.images(), 2);
        assert_eq!(m.pixel_accuracy(), Some(7.0 / 8.0));
        let iou = m.class_iou();
        assert_eq!(iou[12], Some(1.0));
        assert_eq!(iou[1], Some(0.0));
        assert_eq!(iou[0], Some(5.0 / 6.0));
        assert_eq!(iou[5], None);
        assert_eq!(m.mean_class_iou(), Some(0.5));
        assert_eq!(m.mean_iou(), Some((1.0 + 0.0 + 5.0 / 6.0) / 3.0));
        // Dice 1 for the first image, 0 for the second (prediction non-empty, truth empty).
        assert_eq!(m.segmentation_dice(), Some(0.5));
        assert_eq!(m.confusion()[0][1], 1);
        // Two empty masks agree: Dice 1.
        let mut empty = SegmentationMetrics::new();
        empty.add_image(&[0, 0], &[0, 0]).unwrap();
        assert_eq!(empty.segmentation_dice(), Some(1.0));
    }

    #[test]
    fn bad_masks_are_refused_without_changing_the_counts() {
        let mut m = SegmentationMetrics::new();
        let before = m.clone();
        let err = m.add_image(&[0, 21], &[0, 0]).unwrap_err().to_string();
        assert!(err.contains("true mask value 21 at pixel 1"), "{err}");
        let err = m.add_image(&[0, 0], &[0, 200]).unwrap_err().to_string();
        assert!(err.contains("predicted value 200"), "{err}");
        let err = m.add_image(&[0, 0], &[0]).unwrap_err().to_string();
        assert!(err.contains("2 pixels"), "{err}");
        assert_eq!(m, before);
    }
}
