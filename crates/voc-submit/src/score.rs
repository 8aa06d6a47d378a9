//! Scoring a submission locally against the ground truth of a labelled split.
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::{Result, SubmitError};
use crate::reader::{RowKind, Submission, SubmissionRow};
use crate::rle::{parse_runs, runs_of_labels, ClassRuns, MaskView, Run};
use crate::NUM_CLASSES;

/// Number of ones in sorted, non-overlapping runs.
pub fn ones(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.len).sum()
}

/// Number of positions set in both run lists (each sorted and non-overlapping).
pub fn intersection(a: &[Run], b: &[Run]) -> u64 {
    let (mut i, mut j, mut total) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].start.max(b[j].start);
        let hi = a[i].end().min(b[j].end());
        total += hi.saturating_sub(lo);
        if a[i].end() < b[j].end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

/// The competition's Dice of two binary arrays given as counts (1 when both are empty); the one
/// definition lives in voc-core.
pub use voc_core::metrics::dice_from_counts;

/// Dice of two run lists.
pub fn dice(a: &[Run], b: &[Run]) -> f64 {
    dice_from_counts(intersection(a, b), ones(a), ones(b))
}

/// A submission's local score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// Images scored (each has two rows).
    pub images: usize,
    /// Mean Dice over all rows: the competition's metric.
    pub dice: f64,
    /// Mean Dice over classification rows.
    pub classification_dice: f64,
    /// Mean Dice over segmentation rows.
    pub segmentation_dice: f64,
    /// IoU of each class over all decoded masks (sum of intersections / sum of unions); `None` for a
    /// class absent from both the truth and the submission.
    pub class_iou: [Option<f64>; NUM_CLASSES],
    /// Mean of the defined per-class IoUs.
    pub mean_iou: Option<f64>,
}

/// Scores a submission image by image against ground truth, so the truth need not be held in memory.
///
/// ```
/// use voc_submit::{MaskView, Scorer, Submission, SubmissionWriter};
///
/// // Truth: a dog (class 11, mask value 12) on the left half of a 2x4 image.
/// let mut dog = [0u8; 20];
/// dog[11] = 1;
/// let truth = [12u8, 12, 0, 0, 12, 12, 0, 0];
///
/// // A prediction that finds the dog but covers only three of its four pixels.
/// let predicted = [12u8, 12, 0, 0, 12, 0, 0, 0];
/// let mut writer = SubmissionWriter::new(Vec::new())?;
/// writer.write_image("3", &dog, MaskView::new(&predicted, 2, 4)?)?;
/// let bytes = writer.into_inner()?;
/// let parsed = Submission::parse(&bytes);
/// assert!(parsed.problems.is_empty());
///
/// let mut scorer = Scorer::new(&parsed.submission)?;
/// scorer.add_image("3", &dog, MaskView::new(&truth, 2, 4)?)?;
/// let score = scorer.finish()?;
/// assert_eq!(score.classification_dice, 1.0);
/// assert_eq!(score.segmentation_dice, 2.0 * 3.0 / 7.0); // 2|A∩B| / (|A| + |B|)
/// assert_eq!(score.dice, (1.0 + 6.0 / 7.0) / 2.0);
/// assert_eq!(score.class_iou[11], Some(0.75));
/// # Ok::<(), voc_submit::SubmitError>(())
/// ```
pub struct Scorer<'a> {
    rows: HashMap<(&'a str, RowKind), &'a SubmissionRow>,
    scored: HashSet<&'a str>,
    classification_sum: f64,
    segmentation_sum: f64,
    class_inter: [u64; NUM_CLASSES],
    class_union: [u64; NUM_CLASSES],
    truth: ClassRuns,
}

impl<'a> Scorer<'a> {
    /// Indexes the submission's rows; a duplicate row is an error.
    pub fn new(submission: &'a Submission) -> Result<Self> {
        let mut rows = HashMap::new();
        for row in &submission.rows {
            if let Some(first) = rows.insert((row.image_id.as_str(), row.kind), row) {
                return Err(SubmitError::Invalid(format!(
                    "line {}: duplicate row {} (first on line {})",
                    row.line,
                    row.row_id(),
                    first.line
                )));
            }
        }
        Ok(Self {
            rows,
            scored: HashSet::new(),
            classification_sum: 0.0,
            segmentation_sum: 0.0,
            class_inter: [0; NUM_CLASSES],
            class_union: [0; NUM_CLASSES],
            truth: ClassRuns::new(),
        })
    }

    fn row(&self, id: &str, kind: RowKind) -> Result<&'a SubmissionRow> {
        self.rows.get(&(id, kind)).copied().ok_or_else(|| {
            SubmitError::Invalid(format!("the submission has no row {id}{}", kind.suffix()))
        })
    }

    fn runs(row: &SubmissionRow, size: u64) -> Result<Vec<Run>> {
        parse_runs(&row.rle, size).map_err(|source| SubmitError::Rle {
            context: format!("line {}: {}", row.line, row.row_id()),
            source,
        })
    }

    /// Scores both rows of image `id` against its true labels and mask. Errors: bad truth (labels or mask
    /// values), a missing row, an image added twice, or malformed RLE in its rows.
    pub fn add_image(&mut self, id: &str, labels: &[u8], mask: MaskView<'_>) -> Result<()> {
        let truth_labels = runs_of_labels(labels)?;
        self.truth.fill(mask)?;
        let classification = self.row(id, RowKind::Classification)?;
        let segmentation = self.row(id, RowKind::Segmentation)?;
        if !self.scored.insert(classification.image_id.as_str()) {
            return Err(SubmitError::Invalid(format!("image {id} was scored twice")));
        }
        let predicted_labels = Self::runs(classification, NUM_CLASSES as u64)?;
        self.classification_sum += dice(&truth_labels, &predicted_labels);

        let plane = self.truth.plane();
        let predicted_stack = Self::runs(segmentation, NUM_CLASSES as u64 * plane)?;
        let predicted = ClassRuns::from_stack_runs(&predicted_stack, plane)?;
        let (mut both, mut truth_ones, mut predicted_ones) = (0, 0, 0);
        for c in 0..NUM_CLASSES {
            let (t, p) = (self.truth.class(c), predicted.class(c));
            let inter = intersection(t, p);
            let (nt, np) = (ones(t), ones(p));
            both += inter;
            truth_ones += nt;
            predicted_ones += np;
            self.class_inter[c] += inter;
            self.class_union[c] += nt + np - inter;
        }
        self.segmentation_sum += dice_from_counts(both, truth_ones, predicted_ones);
        Ok(())
    }

    /// The score; rows of images that were never added are an error (the submission has extra rows).
    pub fn finish(self) -> Result<Score> {
        let images = self.scored.len();
        if images == 0 {
            return Err(SubmitError::Invalid("no images were scored".into()));
        }
        let mut extra: Vec<&SubmissionRow> = self
            .rows
            .iter()
            .filter(|((id, _), _)| !self.scored.contains(id))
            .map(|(_, r)| *r)
            .collect();
        if !extra.is_empty() {
            extra.sort_by_key(|r| r.line);
            let names: Vec<String> = extra
                .iter()
                .take(10)
                .map(|r| format!("{} (line {})", r.row_id(), r.line))
                .collect();
            return Err(SubmitError::Invalid(format!(
                "{} row(s) for images not in the ground truth: {}{}",
                extra.len(),
                names.join(", "),
                if extra.len() > 10 { ", ..." } else { "" }
            )));
        }
        let n = images as f64;
        let class_iou: [Option<f64>; NUM_CLASSES] = std::array::from_fn(|c| {
            (self.class_union[c] > 0)
                .then(|| self.class_inter[c] as f64 / self.class_union[c] as f64)
        });
        let defined: Vec<f64> = class_iou.iter().flatten().copied().collect();
        let mean_iou =
            (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
        Ok(Score {
            images,
            dice: (self.classification_sum + self.segmentation_sum) / (2.0 * n),
            classification_dice: self.classification_sum / n,
            segmentation_dice: self.segmentation_sum / n,
            class_iou,
            mean_iou,
        })
    }
}
