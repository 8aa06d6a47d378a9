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
