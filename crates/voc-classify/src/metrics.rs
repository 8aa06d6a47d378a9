//! Multi-label classification metrics and the choice of decision thresholds, on plain slices (no
//! tensors).
//!
//! Layout: `probs` is a row-major N x C slice of per-class probabilities (the sigmoids of a
//! classifier's logits), `truth` and `pred` row-major N x C slices of 0/1 labels, C =
//! `num_classes`. Lengths that do not fit, `num_classes` 0, labels other than 0/1 and non-finite
//! probabilities are [`ClassifyError::BadArgument`] errors naming the values at fault.
//!
//! Definitions:
//!
//! - [`average_precision`]: a class's average precision exactly as scikit-learn's
//!   `average_precision_score`: `Σ_k (R_k − R_{k−1}) P_k` over the distinct scores taken as
//!   thresholds, highest first (tied scores enter together); undefined (`None`) for a class without
//!   positives. [`mean_average_precision`] averages the classes that have positives.
//! - [`classification_dice`]: the Kaggle competition's score of the classification rows: per image,
//!   the Dice `2|P∩T| / (|P|+|T|)` of the predicted and true label sets (1 when both are empty,
//!   [`voc_core::metrics::dice_from_counts`]), averaged over the images.
//! - [`macro_f1`]: scikit-learn's `f1_score(average="macro", zero_division=0)`: the mean over all
//!   classes of `2TP / (2TP + FP + FN)`, 0 for a class neither true nor predicted anywhere.
//!
//! Decisions ([`Thresholds`]): a class is predicted when its probability is at or above its
//! threshold; with the argmax fallback an image where no class passes gets its most probable class
//! alone (every VOC image holds at least one object).
//!
//! [`choose_thresholds`] picks thresholds that maximise the mean classification Dice on labelled
//! (validation) data, always with the argmax fallback, by one of three rules ([`ThresholdRule`]):
//!
//! - `seed`: [`SEED_THRESHOLD`] (0.15) for every class, the seed notebook's choice;
//! - `global`: the best single threshold for all classes;
//! - `per-class`: from the global best, coordinate ascent over the classes (up to 3 passes), each
//!   class's threshold changed only when the mean Dice improves by more than 1e-9.
//!
//! Every threshold is considered: the Dice only changes where the threshold crosses a probability
//! of the data, so the search sweeps the distinct probabilities in order, updating each image's
//! counts as labels switch on, and no grid can do better. Of the threshold ranges that reach the
//! best Dice (within 1e-12), the lowest contiguous run is taken (ties go to the smaller
//! thresholds), and the threshold returned is the middle of that run: halfway between the two
//! probabilities that bound it (or between a probability and 0 or 1 at the ends), not a probability
//! of the data, which would sit on the edge of the range. Per-class thresholds are fit to the
//! validation data class by class: on a small split they overfit it (a rare class's threshold
//! rests on a handful of images), so compare them with `global` on held-out data before trusting
//! them.
//!
//! Cost: one sort of the N·C probabilities and linear sweeps. For 750 images and 20 classes,
//! measured once in a release build on a busy 2-core machine: `global` 2.6 ms, `per-class` 4.4 ms
//! (9 and 21 ms in the unoptimised test build; `tests/metrics.rs` bounds it).
//!
//! ```
//! use voc_classify::metrics::{choose_thresholds, evaluate, ThresholdRule};
//!
//! // Three images, two classes: probabilities and true labels.
//! let probs = [0.9, 0.2, 0.6, 0.7, 0.1, 0.3];
//! let truth = [1, 0, 1, 1, 0, 1];
//! let thresholds = choose_thresholds(&probs, &truth, 2, ThresholdRule::Global)?;
//! let report = evaluate(&probs, &truth, 2, &thresholds)?;
//! // Any threshold in (0.2, 0.6] is perfect (above 0.3, image 2 falls back to its argmax):
//! assert_eq!(thresholds.per_class, [0.4, 0.4]); // the middle
//! assert_eq!(report.dice, 1.0);
//! assert_eq!(report.map, 1.0);
//! # Ok::<(), voc_classify::ClassifyError>(())
//! ```
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use voc_core::metrics::dice_from_counts;

use crate::error::{ClassifyError, Result};

/// The seed notebook's decision threshold (with the argmax fallback): [`ThresholdRule::Seed`].
pub const SEED_THRESHOLD: f32 = 0.15;

/// Passes of coordinate ascent for [`ThresholdRule::PerClass`].
const PER_CLASS_PASSES: usize = 3;
/// A per-class threshold changes only when the mean Dice improves by more than this.
const MIN_IMPROVEMENT: f64 = 1e-9;
/// Mean Dice values this close are ties (the incremental sums drift by far less).
const TIE: f64 = 1e-12;

fn bad(message: String) -> ClassifyError {
    ClassifyError::BadArgument(message)
}

/// The number of rows of the N x C slice `what` of length `len`.
fn rows(what: &str, len: usize, num_classes: usize) -> Result<usize> {
    if num_classes == 0 {
        return Err(bad("num_classes is 0: expected at least one class".into()));
    }
    if !len.is_multiple_of(num_classes) {
        return Err(bad(format!(
            "{what} has {len} values: expected N x {num_classes} (a whole number of rows of \
             {num_classes} classes)"
        )));
    }
    Ok(len / num_classes)
}

/// The number of rows N of two N x C slices that must have the same shape.
fn same_rows(a: (&str, usize), b: (&str, usize), num_classes: usize) -> Result<usize> {
    let n = rows(b.0, b.1, num_classes)?;
    if a.1 != b.1 {
        return Err(bad(format!(
            "{} has {} values but {} has {} ({n} images x {num_classes} classes): expected the \
             same N x C layout",
            a.0, a.1, b.0, b.1
        )));
    }
    Ok(n)
}

fn check_binary(what: &str, values: &[u8], num_classes: usize) -> Result<()> {
    match values.iter().position(|&v| v > 1) {
        Some(i) => Err(bad(format!(
            "{what}[{i}] (image {}, class {}) is {}: expected 0 or 1",
            i / num_classes,
            i % num_classes,
            values[i]
        ))),
        None => Ok(()),
    }
}

fn check_finite(probs: &[f32], num_classes: usize) -> Result<()> {
    match probs.iter().position(|p| !p.is_finite()) {
        Some(i) => Err(bad(format!(
            "probs[{i}] (image {}, class {}) is {}: expected a finite probability",
            i / num_classes,
            i % num_classes,
            probs[i]
        ))),
        None => Ok(()),
    }
}

/// The number of images of a `probs`/`truth` pair, checked: same N x C shape, 0/1 truth, finite
/// probabilities.
fn check_scored(probs: &[f32], truth: &[u8], num_classes: usize) -> Result<usize> {
    let n = same_rows(("probs", probs.len()), ("truth", truth.len()), num_classes)?;
    check_binary("truth", truth, num_classes)?;
    check_finite(probs, num_classes)?;
    Ok(n)
}

/// The number of images of a `pred`/`truth` pair of 0/1 labels, checked.
fn check_labels(pred: &[u8], truth: &[u8], num_classes: usize) -> Result<usize> {
    let n = same_rows(("pred", pred.len()), ("truth", truth.len()), num_classes)?;
    check_binary("truth", truth, num_classes)?;
    check_binary("pred", pred, num_classes)?;
    Ok(n)
}

/// Average precision of one class, exactly as scikit-learn's `average_precision_score`:
/// `Σ_k (R_k − R_{k−1}) P_k`, where the thresholds k are the distinct scores, highest first (tied
/// scores are ranked together, not in some order among themselves), and `P_k`, `R_k` the precision
/// and recall of "score ≥ threshold k". `None` when `truth` has no positive (the value is
/// undefined).
///
/// Scores should be finite (a NaN ranks above every number, each NaN on its own).
///
/// # Panics
///
/// When `scores` and `truth` differ in length.
///
/// ```
/// use voc_classify::metrics::average_precision;
///
/// assert_eq!(average_precision(&[0.9, 0.8, 0.3, 0.1], &[true, true, false, false]), Some(1.0));
/// // Ranked: + - + : precision 1 at recall 1/2, 2/3 at recall 1.
/// let ap = average_precision(&[0.9, 0.5, 0.2], &[true, false, true]).unwrap();
/// assert!((ap - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-15);
/// // Ties enter together: both at 0.5 give precision 1/2 at recall 1.
/// assert_eq!(average_precision(&[0.5, 0.5], &[true, false]), Some(0.5));
/// assert_eq!(average_precision(&[0.5, 0.4], &[false, false]), None);
/// ```
pub fn average_precision(scores: &[f32], truth: &[bool]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        truth.len(),
        "average_precision: {} scores but {} labels",
        scores.len(),
        truth.len()
    );
    let positives = truth.iter().filter(|&&t| t).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = positives as f64;
    let (mut true_positives, mut ap, mut previous_recall) = (0usize, 0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        true_positives += usize::from(truth[i]);
        let group_ends = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if group_ends {
            let precision = true_positives as f64 / (k + 1) as f64;
            let recall = true_positives as f64 / positives;
            ap += (recall - previous_recall) * precision;
            previous_recall = recall;
        }
    }
    Some(ap)
}

/// [`average_precision`] of every class (column) of N x C probabilities against 0/1 truth; `None`
/// for a class without positives.
///
/// ```
/// use voc_classify::metrics::{mean_average_precision, per_class_average_precision};
///
/// let probs = [0.9, 0.1, 0.2, 0.3, 0.8, 0.4];
/// let truth = [1, 0, 0, 0, 1, 0];
/// let ap = per_class_average_precision(&probs, &truth, 2)?;
/// assert_eq!(ap, [Some(1.0), None]); // class 1 is never true
/// assert_eq!(mean_average_precision(&ap), 1.0);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub fn per_class_average_precision(
    probs: &[f32],
    truth: &[u8],
    num_classes: usize,
) -> Result<Vec<Option<f64>>> {
    check_scored(probs, truth, num_classes)?;
    Ok((0..num_classes)
        .map(|c| {
            let scores: Vec<f32> = probs.iter().skip(c).step_by(num_classes).copied().collect();
            let labels: Vec<bool> = truth
                .iter()
                .skip(c)
                .step_by(num_classes)
                .map(|&t| t == 1)
                .collect();
            average_precision(&scores, &labels)
        })
        .collect())
}

/// The mean of the defined average precisions (classes with positives); 0 when none is defined.
///
/// ```
/// use voc_classify::metrics::mean_average_precision;
///
/// assert_eq!(mean_average_precision(&[Some(1.0), None, Some(0.5)]), 0.75);
/// assert_eq!(mean_average_precision(&[None]), 0.0);
/// ```
pub fn mean_average_precision(per_class: &[Option<f64>]) -> f64 {
    let defined: Vec<f64> = per_class.iter().flatten().copied().collect();
    if defined.is_empty() {
        0.0
    } else {
        defined.iter().sum::<f64>() / defined.len() as f64
    }
}

/// Per-class decision thresholds: class c is predicted when its probability is `>= per_class[c]`;
/// with `argmax_fallback`, an image where no class passes gets its most probable class alone (the
/// first of equally probable ones).
///
/// ```
/// use voc_classify::metrics::Thresholds;
///
/// let t = Thresholds { per_class: vec![0.5, 0.3, 0.9], argmax_fallback: true };
/// assert_eq!(t.decide(&[0.6, 0.3, 0.1]), [1, 1, 0]); // at or above the threshold
/// assert_eq!(t.decide(&[0.4, 0.1, 0.8]), [0, 0, 1]); // none passes: the argmax alone
/// let strict = Thresholds::uniform(0.5, 3, false);
/// assert_eq!(strict.decide(&[0.4, 0.1, 0.2]), [0, 0, 0]);
/// assert_eq!(t.decide_all(&[0.6, 0.3, 0.1, 0.4, 0.1, 0.8])?, [1, 1, 0, 0, 0, 1]);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// One threshold per class.
    pub per_class: Vec<f32>,
    /// Whether an image where no class passes gets its most probable class.
    pub argmax_fallback: bool,
}

/// The index of the first largest value.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (c, &p) in row.iter().enumerate().skip(1) {
        if p > row[best] {
            best = c;
        }
    }
    best
}

impl Thresholds {
    /// The same threshold `t` for each of `num_classes` classes.
    pub fn uniform(t: f32, num_classes: usize, argmax_fallback: bool) -> Self {
        Self {
            per_class: vec![t; num_classes],
            argmax_fallback,
        }
    }

    /// The 0/1 decisions for one image's probabilities: 1 where `p >= t_c`; when none passes and
    /// `argmax_fallback` is set, 1 for the most probable class only.
    ///
    /// # Panics
    ///
    /// When `probs_row` does not hold one probability per threshold.
    pub fn decide(&self, probs_row: &[f32]) -> Vec<u8> {
        assert_eq!(
            probs_row.len(),
            self.per_class.len(),
            "Thresholds::decide: {} probabilities for {} thresholds",
            probs_row.len(),
            self.per_class.len()
        );
        let mut labels: Vec<u8> = probs_row
            .iter()
            .zip(&self.per_class)
            .map(|(p, t)| u8::from(p >= t))
            .collect();
        if self.argmax_fallback && !labels.is_empty() && !labels.contains(&1) {
            labels[argmax(probs_row)] = 1;
        }
        labels
    }

    /// [`decide`](Self::decide) for every row of N x C probabilities (C = the number of
    /// thresholds): N x C 0/1 labels. Errors: no thresholds, a NaN threshold, a length that is not
    /// whole rows, non-finite probabilities.
    pub fn decide_all(&self, probs: &[f32]) -> Result<Vec<u8>> {
        let num_classes = self.per_class.len();
        if num_classes == 0 {
            return Err(bad("no thresholds: expected one per class".into()));
        }
        rows("probs", probs.len(), num_classes)?;
        if let Some(c) = self.per_class.iter().position(|t| t.is_nan()) {
            return Err(bad(format!("the threshold of class {c} is NaN")));
        }
        check_finite(probs, num_classes)?;
        Ok(probs
            .chunks_exact(num_classes)
            .flat_map(|row| self.decide(row))
            .collect())
    }
}

/// The Kaggle competition's score of the classification rows: the mean over images of the Dice of
/// each image's predicted and true 0/1 label rows ([`voc_core::metrics::dice_from_counts`]: 1 when
/// both are empty). Errors: shapes, labels other than 0/1, no images.
///
/// ```
/// use voc_classify::metrics::classification_dice;
///
/// let truth = [1, 1, 0, /* */ 0, 0, 0];
/// let pred = [1, 0, 1, /* */ 0, 0, 0];
/// // Image 0: 2·1 / (2 + 2) = 0.5; image 1: both empty, 1.
/// assert_eq!(classification_dice(&pred, &truth, 3)?, 0.75);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub fn classification_dice(pred: &[u8], truth: &[u8], num_classes: usize) -> Result<f64> {
    let n = check_labels(pred, truth, num_classes)?;
    if n == 0 {
        return Err(bad("no images: the mean Dice is undefined".into()));
    }
    let total: f64 = pred
        .chunks_exact(num_classes)
        .zip(truth.chunks_exact(num_classes))
        .map(|(p, t)| {
            let count = |row: &[u8]| row.iter().map(|&v| u64::from(v)).sum::<u64>();
            let both = p.iter().zip(t).filter(|(&a, &b)| a == 1 && b == 1).count() as u64;
            dice_from_counts(both, count(p), count(t))
        })
        .sum();
    Ok(total / n as f64)
}

/// F1 of every class: `2TP / (2TP + FP + FN)`, 0 for a class neither true nor predicted anywhere
/// (as scikit-learn's `f1_score(average=None, zero_division=0)`).
pub fn per_class_f1(pred: &[u8], truth: &[u8], num_classes: usize) -> Result<Vec<f64>> {
    check_labels(pred, truth, num_classes)?;
    let mut counts = vec![(0u64, 0u64, 0u64); num_classes]; // (tp, fp, fn)
    for (p, t) in pred
        .chunks_exact(num_classes)
        .zip(truth.chunks_exact(num_classes))
    {
        for (c, (&p, &t)) in p.iter().zip(t).enumerate() {
            match (p, t) {
                (1, 1) => counts[c].0 += 1,
                (1, _) => counts[c].1 += 1,
                (_, 1) => counts[c].2 += 1,
                _ => {}
            }
        }
    }
    Ok(counts
        .into_iter()
        .map(|(tp, fp, fn_)| {
            let denominator = 2 * tp + fp + fn_;
            if denominator == 0 {
                0.0
            } else {
                (2 * tp) as f64 / denominator as f64
            }
        })
        .collect())
}

/// The mean of [`per_class_f1`] over all classes: scikit-learn's
/// `f1_score(average="macro", zero_division=0)`.
///
/// ```
/// use voc_classify::metrics::{macro_f1, per_class_f1};
///
/// let truth = [1, 0, /* */ 1, 1];
/// let pred = [1, 1, /* */ 0, 1];
/// // Class 0: TP 1, FN 1 -> 2/3; class 1: TP 1, FP 1 -> 2/3.
/// assert_eq!(per_class_f1(&pred, &truth, 2)?, [2.0 / 3.0, 2.0 / 3.0]);
/// assert_eq!(macro_f1(&pred, &truth, 2)?, 2.0 / 3.0);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub fn macro_f1(pred: &[u8], truth: &[u8], num_classes: usize) -> Result<f64> {
    let f1 = per_class_f1(pred, truth, num_classes)?;
    Ok(f1.iter().sum::<f64>() / f1.len() as f64)
}

/// How [`choose_thresholds`] picks decision thresholds (names as on the command line: `per-class`,
/// `global`, `seed`).
///
/// ```
/// use voc_classify::metrics::ThresholdRule;
///
/// let rule: ThresholdRule = "per-class".parse()?;
/// assert_eq!(rule, ThresholdRule::PerClass);
/// assert_eq!(ThresholdRule::Global.to_string(), "global");
/// let error = "best".parse::<ThresholdRule>().unwrap_err().to_string();
/// assert!(error.contains("per-class, global, seed"));
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdRule {
    /// One threshold per class, by coordinate ascent from the global best (may overfit a small
    /// validation split).
    PerClass,
    /// The best single threshold for every class.
    Global,
    /// [`SEED_THRESHOLD`] for every class, the seed notebook's choice.
    Seed,
}

impl ThresholdRule {
    const ALL: [ThresholdRule; 3] = [Self::PerClass, Self::Global, Self::Seed];

    fn name(self) -> &'static str {
        match self {
            Self::PerClass => "per-class",
            Self::Global => "global",
            Self::Seed => "seed",
        }
    }
}

impl fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ThresholdRule {
    type Err = ClassifyError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|r| r.name()).collect();
                bad(format!(
                    "unknown threshold rule `{s}`: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Per-image counts behind the mean classification Dice of some thresholds (with the argmax
/// fallback), updated as single labels switch on or off.
struct DiceCounts<'a> {
    num_classes: usize,
    truth: &'a [u8],
    /// True labels of each image.
    true_count: Vec<u32>,
    /// Whether each image's most probable class is true (the fallback's Dice).
    argmax_true: Vec<bool>,
    /// Classes passing their threshold in each image.
    predicted: Vec<u32>,
    /// Of those, the true ones.
    hits: Vec<u32>,
    /// The sum over images of their Dice.
    total: f64,
}

impl<'a> DiceCounts<'a> {
    /// Counts with no class passing (every image on its fallback).
    fn new(probs: &[f32], truth: &'a [u8], num_classes: usize) -> Self {
        let true_count = truth
            .chunks_exact(num_classes)
            .map(|t| t.iter().map(|&v| u32::from(v)).sum())
            .collect();
        let argmax_true = probs
            .chunks_exact(num_classes)
            .zip(truth.chunks_exact(num_classes))
            .map(|(p, t)| t[argmax(p)] == 1)
            .collect();
        let n = truth.len() / num_classes;
        let mut counts = Self {
            num_classes,
            truth,
            true_count,
            argmax_true,
            predicted: vec![0; n],
            hits: vec![0; n],
            total: 0.0,
        };
        counts.total = counts.sum();
        counts
    }

    fn images(&self) -> usize {
        self.predicted.len()
    }

    /// Dice of image `i` with `predicted` labels passing of which `hits` true.
    fn dice(&self, i: usize, predicted: u32, hits: u32) -> f64 {
        let truth = u64::from(self.true_count[i]);
        if predicted == 0 {
            dice_from_counts(u64::from(self.argmax_true[i]), 1, truth)
        } else {
            dice_from_counts(u64::from(hits), u64::from(predicted), truth)
        }
    }

    /// The sum of the images' Dice, recomputed.
    fn sum(&self) -> f64 {
        (0..self.images())
            .map(|i| self.dice(i, self.predicted[i], self.hits[i]))
            .sum()
    }

    /// Switches label (i, c) on (`on`) or off, keeping `total` up to date.
    fn switch(&mut self, i: usize, c: usize, on: bool) {
        let old = self.dice(i, self.predicted[i], self.hits[i]);
        let hit = u32::from(self.truth[i * self.num_classes + c]);
        if on {
            self.predicted[i] += 1;
            self.hits[i] += hit;
        } else {
            self.predicted[i] -= 1;
            self.hits[i] -= hit;
        }
        self.total += self.dice(i, self.predicted[i], self.hits[i]) - old;
    }
}

/// The result of sweeping a threshold down through `values` (distinct, descending): `sums[s]` is
/// the Dice sum with the `s` highest values passing, `s` = 0 (threshold above all) ..=
/// `values.len()`.
struct Sweep {
    values: Vec<f32>,
    sums: Vec<f64>,
}

impl Sweep {
    /// The best Dice sum, and a threshold reaching it (within [`TIE`] per image): the range of the
    /// lowest-threshold run of best states, cut in the middle.
    fn best(&self, images: usize) -> (f64, f32) {
        let best = self.sums.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let good = |s: usize| self.sums[s] >= best - TIE * images as f64;
        let last = (0..self.sums.len()).rev().find(|&s| good(s)).unwrap_or(0);
        let mut first = last;
        while first > 0 && good(first - 1) {
            first -= 1;
        }
        // States first..=last: thresholds in (values[last], values[first - 1]].
        let low = self.values.get(last).copied();
        let high = first.checked_sub(1).map(|s| self.values[s]);
        let t = threshold_between(low, high);
        // The state t gives: the values at or above it pass (one of first..=last).
        (self.sums[self.values.partition_point(|&v| v >= t)], t)
    }
}

/// A threshold `t` with `low < t <= high` (`None`: unbounded), in the middle where the range
/// allows; probabilities are taken to lie in [0, 1] to bound the open ends.
fn threshold_between(low: Option<f32>, high: Option<f32>) -> f32 {
    let middle = |low: f32, high: f32| {
        let t = ((f64::from(low) + f64::from(high)) / 2.0) as f32;
        if t > low && t <= high {
            t
        } else {
            high
        }
    };
    match (low, high) {
        (Some(low), Some(high)) => middle(low, high),
        (None, Some(high)) if high > 0.0 => middle(0.0, high),
        (None, Some(high)) => high,
        (Some(low), None) if low < 1.0 => middle(low, 1.0),
        (Some(low), None) => low.next_up(),
        (None, None) => 0.5,
    }
}

/// Sweeps a threshold down through `entries` (value, image, class), sorted by descending value,
/// switching labels on in `counts` as they pass; leaves every entry on.
fn sweep(counts: &mut DiceCounts<'_>, entries: &[(f32, u32, u32)]) -> Sweep {
    let mut values = Vec::new();
    let mut sums = vec![counts.total];
    let mut k = 0;
    while k < entries.len() {
        let value = entries[k].0;
        while k < entries.len() && entries[k].0 == value {
            counts.switch(entries[k].1 as usize, entries[k].2 as usize, true);
            k += 1;
        }
        values.push(value);
        sums.push(counts.total);
    }
    Sweep { values, sums }
}

fn sort_descending(entries: &mut [(f32, u32, u32)]) {
    entries.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
}

/// Decision thresholds that maximise the mean classification Dice ([`classification_dice`]) of
/// `probs` against `truth`, by `rule` (see the [module](self) documentation); always with the
/// argmax fallback. Errors: shapes, labels other than 0/1, non-finite probabilities, no images.
///
/// ```
/// use voc_classify::metrics::{
///     choose_thresholds, classification_dice, ThresholdRule, Thresholds, SEED_THRESHOLD,
/// };
///
/// // Class 0 is true above 0.7, class 1 above 0.15.
/// let probs = [0.9, 0.3, /* */ 0.6, 0.25, /* */ 0.8, 0.1, /* */ 0.65, 0.2];
/// let truth = [1, 1, /* */ 0, 1, /* */ 1, 0, /* */ 0, 1];
/// let seed = choose_thresholds(&probs, &truth, 2, ThresholdRule::Seed)?;
/// assert_eq!(seed.per_class, [SEED_THRESHOLD; 2]);
/// let global = choose_thresholds(&probs, &truth, 2, ThresholdRule::Global)?;
/// let per_class = choose_thresholds(&probs, &truth, 2, ThresholdRule::PerClass)?;
/// assert!(per_class.argmax_fallback);
/// let dice = |t: &Thresholds| {
///     classification_dice(&t.decide_all(&probs).unwrap(), &truth, 2).unwrap()
/// };
/// assert!(dice(&global) >= dice(&seed)); // no one threshold suits both classes here
/// assert_eq!(dice(&per_class), 1.0);
/// assert!(per_class.per_class[0] > 0.65 && per_class.per_class[0] <= 0.8);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub fn choose_thresholds(
    probs: &[f32],
    truth: &[u8],
    num_classes: usize,
    rule: ThresholdRule,
) -> Result<Thresholds> {
    let n = check_scored(probs, truth, num_classes)?;
    if n == 0 {
        return Err(bad("no images to choose thresholds on".into()));
    }
    if rule == ThresholdRule::Seed {
        return Ok(Thresholds::uniform(SEED_THRESHOLD, num_classes, true));
    }
    let entry = |k: usize| (probs[k], (k / num_classes) as u32, (k % num_classes) as u32);

    // Global: one sweep down through every probability.
    let mut counts = DiceCounts::new(probs, truth, num_classes);
    let mut all: Vec<_> = (0..probs.len()).map(entry).collect();
    sort_descending(&mut all);
    let (_, global) = sweep(&mut counts, &all).best(n);
    let mut thresholds = Thresholds::uniform(global, num_classes, true);
    if rule == ThresholdRule::Global {
        return Ok(thresholds);
    }

    // Per class: coordinate ascent, sweeping one column with the others fixed.
    let columns: Vec<Vec<(f32, u32, u32)>> = (0..num_classes)
        .map(|c| {
            let mut column: Vec<_> = (0..n).map(|i| entry(i * num_classes + c)).collect();
            sort_descending(&mut column);
            column
        })
        .collect();
    let mut counts = DiceCounts::new(probs, truth, num_classes);
    for (k, &p) in probs.iter().enumerate() {
        if p >= global {
            counts.switch(k / num_classes, k % num_classes, true);
        }
    }
    counts.total = counts.sum();
    for _ in 0..PER_CLASS_PASSES {
        let mut changed = false;
        for (c, column) in columns.iter().enumerate() {
            let current = counts.total;
            let t = thresholds.per_class[c];
            // Column c off, then swept on (all on at the end), then off below the chosen threshold.
            for &(_, i, _) in column.iter().filter(|e| e.0 >= t) {
                counts.switch(i as usize, c, false);
            }
            let (best, candidate) = sweep(&mut counts, column).best(n);
            let keep = best <= current + MIN_IMPROVEMENT * n as f64;
            let chosen = if keep { t } else { candidate };
            for &(_, i, _) in column.iter().filter(|e| e.0 < chosen) {
                counts.switch(i as usize, c, false);
            }
            counts.total = counts.sum(); // no drift between classes
            if !keep {
                thresholds.per_class[c] = chosen;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(thresholds)
}

/// A classifier's scores on labelled data, from its probabilities and decision thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Mean average precision over the classes with positives ([`mean_average_precision`]).
    pub map: f64,
    /// Average precision of each class; `None` for a class without positives.
    pub per_class_ap: Vec<Option<f64>>,
    /// Macro F1 of the thresholded decisions ([`macro_f1`]).
    pub macro_f1: f64,
    /// F1 of each class's decisions.
    pub per_class_f1: Vec<f64>,
    /// Mean classification Dice of the decisions, the competition's classification-row score
    /// ([`classification_dice`]).
    pub dice: f64,
    /// Images scored.
    pub images: usize,
}

/// Scores N x C probabilities against 0/1 truth: the ranking metrics (AP, mAP) from the
/// probabilities, F1 and Dice from the decisions of `thresholds`. Errors: shapes, labels other than
/// 0/1, non-finite probabilities, a threshold count other than `num_classes`, no images.
///
/// ```
/// use voc_classify::metrics::{evaluate, Thresholds};
///
/// let probs = [0.9, 0.4, /* */ 0.2, 0.3];
/// let truth = [1, 1, /* */ 0, 1];
/// let report = evaluate(&probs, &truth, 2, &Thresholds::uniform(0.5, 2, true))?;
/// // Decisions [1, 0] and, by the fallback, [0, 1]: Dice 2/3 and 1.
/// assert_eq!(report.dice, (2.0 / 3.0 + 1.0) / 2.0);
/// assert_eq!((report.map, report.images), (1.0, 2));
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub fn evaluate(
    probs: &[f32],
    truth: &[u8],
    num_classes: usize,
    thresholds: &Thresholds,
) -> Result<ClassificationReport> {
    let images = check_scored(probs, truth, num_classes)?;
    if thresholds.per_class.len() != num_classes {
        return Err(bad(format!(
            "{} thresholds for {num_classes} classes: expected one per class",
            thresholds.per_class.len()
        )));
    }
    let pred = thresholds.decide_all(probs)?;
    let per_class_ap = per_class_average_precision(probs, truth, num_classes)?;
    let per_class_f1 = per_class_f1(&pred, truth, num_classes)?;
    Ok(ClassificationReport {
        map: mean_average_precision(&per_class_ap),
        per_class_ap,
        macro_f1: per_class_f1.iter().sum::<f64>() / num_classes as f64,
        per_class_f1,
        dice: classification_dice(&pred, truth, num_classes)?,
        images,
    })
}
