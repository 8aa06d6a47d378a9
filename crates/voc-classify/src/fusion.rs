//! Image labels from a classifier and a segmenter together, on plain slices (no tensors).
//!
//! A multi-label classifier gives each class a probability `p_c`; a segmenter's mask gives each
//! class an area `a_c`, the fraction of the image's pixels it labels class `c` (mask value `c + 1`).
//! Each is a noisy witness of the image's labels: the classifier misses small or unusual objects,
//! the segmenter hallucinates specks and confuses similar classes. A [`FusionRule`] mixes the two
//! into one score per class,
//!
//! ```text
//! score_c = w · p_c + (1 − w) · min(1, a_c / area_scale)
//! ```
//!
//! (`w` = [`FusionRule::classifier_weight`]), and decides the labels from the scores with
//! [`Thresholds`] (a class is present at or above its threshold; with the argmax fallback an image
//! where none passes gets its highest-scoring class). `w = 1` is the classifier alone; `w = 0` is the
//! mask alone, where a class is present once its area reaches `threshold · area_scale`. The area term
//! saturates at `area_scale`: any object at least that large counts as fully seen by the segmenter.
//!
//! [`fit_fusion`] chooses `w`, `area_scale` and the thresholds on labelled (validation) data to
//! maximise the mean classification Dice ([`metrics::classification_dice`], the competition's score
//! of the label rows): a grid over `w` ∈ {0, 0.1, …, 1} ([`WEIGHTS`]) and `area_scale` ∈
//! [`AREA_SCALES`], thresholds by [`metrics::choose_thresholds`] on each candidate's scores. As the
//! choice is made on the data it is scored on, its Dice is optimistic; [`cross_fitted_dice`] compares
//! the classifier alone, the mask alone and the fusion honestly, each fitted on k − 1 folds and scored
//! on the held-out one, on the same images.
//!
//! Layout as in [`metrics`]: `probs` and `areas` are row-major N x C slices (C = `num_classes`),
//! `truth` N x C 0/1 labels. Shapes that do not fit, labels other than 0/1, probabilities that are
//! not finite and areas outside [0, 1] are [`ClassifyError::BadArgument`] errors.
//!
//! ```
//! use voc_classify::fusion::fit_fusion;
//! use voc_classify::metrics::ThresholdRule;
//!
//! // Four images, two classes. The classifier is sure of class 0 but blind to class 1, which the
//! // segmenter finds (2% and 3% of the pixels where it is present, specks elsewhere).
//! let probs = [0.9, 0.1, /* */ 0.1, 0.2, /* */ 0.8, 0.2, /* */ 0.7, 0.1];
//! let areas = [0.3, 0.02, /* */ 0.0, 0.03, /* */ 0.2, 0.0, /* */ 0.1, 0.001];
//! let truth = [1, 1, /* */ 0, 1, /* */ 1, 0, /* */ 1, 0];
//! let fit = fit_fusion(&probs, &areas, &truth, 2, ThresholdRule::PerClass)?;
//! assert_eq!(fit.dice, 1.0);
//! assert!(fit.dice > fit.classifier_only_dice);
//! assert_eq!(fit.rule.decide(&[0.9, 0.1], &[0.3, 0.02]), [1, 1]);
//! # Ok::<(), voc_classify::ClassifyError>(())
//! ```
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ClassifyError, Result};
use crate::metrics::{self, ThresholdRule, Thresholds};

/// The classifier weights [`fit_fusion`] tries, in tenths: `w = k / 10` for `k` in this range.
pub const WEIGHTS: std::ops::RangeInclusive<u8> = 0..=10;

/// The area scales [`fit_fusion`] tries (fractions of the image), smallest first.
pub const AREA_SCALES: [f32; 8] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];

/// Mean Dice values this close are ties (decided by the order of preference).
const TIE: f64 = 1e-12;

fn bad(message: String) -> ClassifyError {
    ClassifyError::BadArgument(message)
}

/// How a classifier's probabilities and a segmenter's class areas become labels: see the
/// [module](self) documentation.
///
/// ```
/// use voc_classify::fusion::FusionRule;
/// use voc_classify::metrics::Thresholds;
///
/// let rule = FusionRule {
///     classifier_weight: 0.5,
///     area_scale: 0.01,
///     thresholds: Thresholds::uniform(0.5, 2, true),
/// };
/// // Class 0: 0.5·0.2 + 0.5·min(1, 0.02/0.01) = 0.6; class 1: 0.5·0.6 + 0.5·0.0 = 0.3.
/// let scores = rule.scores(&[0.2, 0.6], &[0.02, 0.0]);
/// assert!((scores[0] - 0.6).abs() < 1e-6 && (scores[1] - 0.3).abs() < 1e-6);
/// assert_eq!(rule.decide(&[0.2, 0.6], &[0.02, 0.0]), [1, 0]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionRule {
    /// `w` in [0, 1]: the weight of the classifier's probability (1 − w goes to the area term).
    pub classifier_weight: f32,
    /// The area (a fraction of the image, > 0) at which the segmenter's evidence saturates.
    pub area_scale: f32,
    /// Per-class thresholds on the fused scores, with the argmax fallback flag.
    pub thresholds: Thresholds,
}

impl FusionRule {
    /// The fused score of every class of one image: `w · p_c + (1 − w) · min(1, a_c / area_scale)`.
    ///
    /// # Panics
    ///
    /// When `probs` and `areas` differ in length.
    pub fn scores(&self, probs: &[f32], areas: &[f32]) -> Vec<f32> {
        assert_eq!(
            probs.len(),
            areas.len(),
            "FusionRule::scores: {} probabilities but {} areas",
            probs.len(),
            areas.len()
        );
        fused_scores(probs, areas, self.classifier_weight, self.area_scale)
    }

    /// The 0/1 labels of one image: [`Thresholds::decide`] on [`scores`](Self::scores) (the argmax
    /// fallback, when set, picks the highest fused score).
    ///
    /// # Panics
    ///
    /// When `probs`, `areas` and the thresholds differ in length.
    pub fn decide(&self, probs: &[f32], areas: &[f32]) -> Vec<u8> {
        self.thresholds.decide(&self.scores(probs, areas))
    }

    /// Checks the rule for `num_classes` classes (e.g. one read from a file): a weight in [0, 1], a
    /// finite positive area scale, one finite threshold per class.
    pub fn check(&self, num_classes: usize) -> Result<()> {
        let w = self.classifier_weight;
        if !(0.0..=1.0).contains(&w) {
            return Err(bad(format!(
                "classifier_weight {w}: expected a weight in [0, 1]"
            )));
        }
        let s = self.area_scale;
        if !(s.is_finite() && s > 0.0) {
            return Err(bad(format!(
                "area_scale {s}: expected a positive fraction of the image"
            )));
        }
        let t = &self.thresholds.per_class;
        if t.len() != num_classes {
            return Err(bad(format!(
                "{} thresholds for {num_classes} classes: expected one per class",
                t.len()
            )));
        }
        if let Some(c) = t.iter().position(|t| !t.is_finite()) {
            return Err(bad(format!(
                "the threshold of class {c} is {}: expected a finite number",
                t[c]
            )));
        }
        Ok(())
    }
}

/// Fused scores of any number of whole rows (same length slices).
fn fused_scores(probs: &[f32], areas: &[f32], w: f32, area_scale: f32) -> Vec<f32> {
    probs
        .iter()
        .zip(areas)
        .map(|(&p, &a)| w * p + (1.0 - w) * (a / area_scale).min(1.0))
        .collect()
}

/// What [`fit_fusion`] found on its data: the chosen rule and the in-sample mean classification
/// Dice of it and of the two sources alone (each with thresholds chosen the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionFit {
    /// The best rule of the grid.
    pub rule: FusionRule,
    /// Its mean classification Dice on the data it was chosen on.
    pub dice: f64,
    /// The classifier alone (`w = 1`).
    pub classifier_only_dice: f64,
    /// The mask alone (`w = 0`, the best area scale).
    pub mask_only_dice: f64,
}

/// The three rules a fit compares, with their in-sample Dice.
struct Fitted {
    fused: (FusionRule, f64),
    classifier_only: (FusionRule, f64),
    mask_only: (FusionRule, f64),
}

/// The number of images, after checking shapes and values.
fn check_inputs(probs: &[f32], areas: &[f32], truth: &[u8], num_classes: usize) -> Result<usize> {
    if num_classes == 0 {
        return Err(bad("num_classes is 0: expected at least one class".into()));
    }
    for (what, len) in [
        ("probs", probs.len()),
        ("areas", areas.len()),
        ("truth", truth.len()),
    ] {
        if !len.is_multiple_of(num_classes) {
            return Err(bad(format!(
                "{what} has {len} values: expected N x {num_classes} (whole rows of \
                 {num_classes} classes)"
            )));
        }
    }
    if probs.len() != truth.len() || areas.len() != truth.len() {
        return Err(bad(format!(
            "probs, areas and truth have {}, {} and {} values: expected the same N x {num_classes} \
             layout",
            probs.len(),
            areas.len(),
            truth.len()
        )));
    }
    let at = |i: usize| format!("(image {}, class {})", i / num_classes, i % num_classes);
    if let Some(i) = probs.iter().position(|p| !p.is_finite()) {
        return Err(bad(format!(
            "probs[{i}] {} is {}: expected a finite probability",
            at(i),
            probs[i]
        )));
    }
    if let Some(i) = areas.iter().position(|a| !(0.0..=1.0).contains(a)) {
        return Err(bad(format!(
            "areas[{i}] {} is {}: expected a fraction of the image in [0, 1]",
            at(i),
            areas[i]
        )));
    }
    if let Some(i) = truth.iter().position(|&t| t > 1) {
        return Err(bad(format!(
            "truth[{i}] {} is {}: expected 0 or 1",
            at(i),
            truth[i]
        )));
    }
    let n = truth.len() / num_classes;
    if n == 0 {
        return Err(bad("no images to fit a fusion rule on".into()));
    }
    Ok(n)
}

/// The rule of weight `w` and scale `area_scale` with thresholds chosen on the data, and its Dice.
fn fit_one(
    probs: &[f32],
    areas: &[f32],
    truth: &[u8],
    num_classes: usize,
    rule: ThresholdRule,
    w: f32,
    area_scale: f32,
) -> Result<(FusionRule, f64)> {
    let scores = fused_scores(probs, areas, w, area_scale);
    let thresholds = metrics::choose_thresholds(&scores, truth, num_classes, rule)?;
    let dice = metrics::classification_dice(&thresholds.decide_all(&scores)?, truth, num_classes)?;
    let rule = FusionRule {
        classifier_weight: w,
        area_scale,
        thresholds,
    };
    Ok((rule, dice))
}

/// The grid search behind [`fit_fusion`], inputs already checked.
fn fit_checked(
    probs: &[f32],
    areas: &[f32],
    truth: &[u8],
    num_classes: usize,
    rule: ThresholdRule,
) -> Result<Fitted> {
    let mut fused: Option<(FusionRule, f64)> = None;
    let mut classifier_only = None;
    let mut mask_only: Option<(FusionRule, f64)> = None;
    // Preference order: larger w first, then smaller area scale; a later candidate wins only when
    // strictly better.
    for k in WEIGHTS.rev() {
        let w = f32::from(k) / 10.0;
        // With w = 1 the area term vanishes: every scale gives the same scores.
        let scales: &[f32] = if k == 10 {
            &AREA_SCALES[..1]
        } else {
            &AREA_SCALES
        };
        for &scale in scales {
            let candidate = fit_one(probs, areas, truth, num_classes, rule, w, scale)?;
            if k == 10 {
                classifier_only = Some(candidate.clone());
            }
            if k == 0 && mask_only.as_ref().is_none_or(|m| candidate.1 > m.1 + TIE) {
                mask_only = Some(candidate.clone());
            }
            if fused.as_ref().is_none_or(|f| candidate.1 > f.1 + TIE) {
                fused = Some(candidate);
            }
        }
    }
    Ok(Fitted {
        fused: fused.expect("the grid is not empty"),
        classifier_only: classifier_only.expect("the grid holds w = 1"),
        mask_only: mask_only.expect("the grid holds w = 0"),
    })
}

/// Chooses a [`FusionRule`] on labelled data: the classifier weight `w` ∈ {0, 0.1, …, 1} and the
/// area scale ∈ [`AREA_SCALES`] that, with thresholds on the fused scores chosen by
/// [`metrics::choose_thresholds`] (`rule`), maximise the mean classification Dice. Ties (within
/// 1e-12) go to the larger `w`, then the smaller area scale, so the result is deterministic and the
/// classifier alone is kept unless the mask adds something. Also reports the Dice of the classifier
/// alone (`w = 1`) and of the mask alone (`w = 0`, its best scale), thresholds chosen the same way.
///
/// All three Dice values are in-sample (the choice was made on the same data); see
/// [`cross_fitted_dice`] for held-out ones. Errors: shapes, non-finite probabilities, areas outside
/// [0, 1], labels other than 0/1, no images.
pub fn fit_fusion(
    probs: &[f32],
    areas: &[f32],
    truth: &[u8],
    num_classes: usize,
    rule: ThresholdRule,
) -> Result<FusionFit> {
    check_inputs(probs, areas, truth, num_classes)?;
    let fitted = fit_checked(probs, areas, truth, num_classes, rule)?;
    Ok(FusionFit {
        rule: fitted.fused.0,
        dice: fitted.fused.1,
        classifier_only_dice: fitted.classifier_only.1,
        mask_only_dice: fitted.mask_only.1,
    })
}

/// Held-out mean classification Dice of the classifier alone, the mask alone and the fusion, from
/// [`cross_fitted_dice`]: each a mean over [`repeats`](Self::repeats) fold assignments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossFit {
    /// Folds the images were split into.
    pub folds: usize,
    /// Seed of the first fold assignment (the others use the seeds after it).
    pub seed: u64,
    /// Fold assignments the Dice values are averaged over (seeds `seed`, `seed + 1`, …).
    #[serde(default = "one")]
    pub repeats: usize,
    /// Images scored (each exactly once per repeat, by the rules fitted without it).
    pub images: usize,
    /// The classifier alone (`w = 1`, thresholds fitted on the other folds).
    pub classifier_only_dice: f64,
    /// The mask alone (`w = 0`, scale and thresholds fitted on the other folds).
    pub mask_only_dice: f64,
    /// The fusion [`fit_fusion`] chooses on the other folds.
    pub fused_dice: f64,
    /// Repeats in which the fusion's held-out Dice beat both the classifier's and the mask's.
    #[serde(default)]
    pub fused_wins: usize,
}

fn one() -> usize {
    1
}

/// Where the labels of an image come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// The classifier's probabilities, thresholded.
    Classifier,
    /// The classes of the segmenter's mask that cover enough of the image.
    Mask,
    /// Both, through a [`FusionRule`].
    Fused,
}

impl LabelSource {
    /// Every source, in the order of [`LabelSource::name`]'s list.
    pub const ALL: [LabelSource; 3] = [Self::Classifier, Self::Mask, Self::Fused];

    /// Its name (`voc predict --labels NAME`): `classifier`, `mask` or `fused`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classifier => "classifier",
            Self::Mask => "mask",
            Self::Fused => "fused",
        }
    }
}

impl std::fmt::Display for LabelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LabelSource {
    type Err = ClassifyError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                bad(format!(
                    "labels source '{s}': expected classifier, mask or fused"
                ))
            })
    }
}

impl CrossFit {
    /// The labels source of the highest mean held-out Dice; the fusion only when it beats both
    /// sources alone in the mean and in most repeats (a fusion that wins by chance on one fold
    /// assignment costs a rule fitted to noise), and ties go to the simpler source.
    pub fn best_labels(&self) -> LabelSource {
        let single = if self.mask_only_dice + TIE >= self.classifier_only_dice {
            (LabelSource::Mask, self.mask_only_dice)
        } else {
            (LabelSource::Classifier, self.classifier_only_dice)
        };
        if self.fused_dice > single.1 + TIE && 2 * self.fused_wins > self.repeats {
            LabelSource::Fused
        } else {
            single.0
        }
    }
}

/// The fold (0..folds) of each of `n` images: a seeded shuffle, dealt round-robin, so that fold
/// sizes differ by at most one.
fn fold_of(n: usize, folds: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut fold = vec![0; n];
    for (k, &i) in order.iter().enumerate() {
        fold[i] = k % folds;
    }
    fold
}

/// An honest comparison of the classifier alone, the mask alone and their fusion on the same
/// images: the images are split into `folds` folds (a deterministic shuffle from the seed); for
/// each fold, the three rules are fitted as [`fit_fusion`] fits them (`rule` choosing the
/// thresholds) on the other folds and decide the labels of the held-out fold. A repeat's Dice
/// values are the mean over all images of their held-out Dice (so each fold weighs by its size);
/// with 112 images one fold assignment moves them by about ±0.01, so the result averages
/// `repeats` assignments (seeds `seed`, `seed + 1`, …) and counts those the fusion won.
///
/// Errors: as [`fit_fusion`], `folds` below 2 or above the number of images, `repeats` 0.
#[allow(clippy::too_many_arguments)]
pub fn cross_fitted_dice(
    probs: &[f32],
    areas: &[f32],
    truth: &[u8],
    num_classes: usize,
    rule: ThresholdRule,
    folds: usize,
    seed: u64,
    repeats: usize,
) -> Result<CrossFit> {
    let n = check_inputs(probs, areas, truth, num_classes)?;
    if folds < 2 || folds > n {
        return Err(bad(format!(
            "{folds} folds for {n} images: expected 2 to {n} (every fold needs an image, and \
             something left to fit on)"
        )));
    }
    if repeats == 0 {
        return Err(bad(
            "0 repeats: expected at least one fold assignment".into()
        ));
    }
    let mut sums = [0.0f64; 3];
    let mut fused_wins = 0;
    for r in 0..repeats {
        let [classifier, mask, fused] = held_out_dice(
            probs,
            areas,
            truth,
            num_classes,
            rule,
            &fold_of(n, folds, seed.wrapping_add(r as u64)),
            folds,
        )?;
        if fused > classifier.max(mask) + TIE {
            fused_wins += 1;
        }
        for (sum, d) in sums.iter_mut().zip([classifier, mask, fused]) {
            *sum += d;
        }
    }
    let mean = |k: usize| sums[k] / repeats as f64;
    Ok(CrossFit {
        folds,
        seed,
        repeats,
        images: n,
        classifier_only_dice: mean(0),
        mask_only_dice: mean(1),
        fused_dice: mean(2),
        fused_wins,
    })
}

/// The held-out Dice of the classifier alone, the mask alone and the fusion for one fold
/// assignment (`fold[i]` in 0..folds), inputs already checked.
fn held_out_dice(
    probs: &[f32],
    areas: &[f32],
    truth: &[u8],
    num_classes: usize,
    rule: ThresholdRule,
    fold: &[usize],
    folds: usize,
) -> Result<[f64; 3]> {
    let n = fold.len();
    let rows = |keep: &dyn Fn(usize) -> bool| {
        let mut p = Vec::new();
        let mut a = Vec::new();
        let mut t = Vec::new();
        for i in (0..n).filter(|&i| keep(i)) {
            let range = i * num_classes..(i + 1) * num_classes;
            p.extend_from_slice(&probs[range.clone()]);
            a.extend_from_slice(&areas[range.clone()]);
            t.extend_from_slice(&truth[range]);
        }
        (p, a, t)
    };
    // Held-out predictions of the three rules, filled fold by fold, in image order.
    let mut pred = [
        vec![0u8; truth.len()],
        vec![0; truth.len()],
        vec![0; truth.len()],
    ];
    for f in 0..folds {
        let (p, a, t) = rows(&|i| fold[i] != f);
        let fitted = fit_checked(&p, &a, &t, num_classes, rule)?;
        let rules = [
            &fitted.classifier_only.0,
            &fitted.mask_only.0,
            &fitted.fused.0,
        ];
        for i in (0..n).filter(|&i| fold[i] == f) {
            let range = i * num_classes..(i + 1) * num_classes;
            for (r, out) in rules.iter().zip(pred.iter_mut()) {
                let labels = r.decide(&probs[range.clone()], &areas[range.clone()]);
                out[range.clone()].copy_from_slice(&labels);
            }
        }
    }
    let dice = |p: &[u8]| metrics::classification_dice(p, truth, num_classes);
    Ok([dice(&pred[0])?, dice(&pred[1])?, dice(&pred[2])?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Synthetic data: `n` images, 4 classes, about a third of the labels true (at least one per
    /// image). The classifier is informative on classes 0 and 1 and pure noise on 2 and 3; the
    /// segmenter finds classes 2 and 3 (areas of 2-30% when present, specks below 0.3% otherwise)
    /// and is pure noise on 0 and 1.
    fn synthetic(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
        let c = 4;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut probs, mut areas, mut truth) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let mut row: Vec<u8> = (0..c).map(|_| u8::from(rng.gen_bool(0.35))).collect();
            if !row.contains(&1) {
                row[rng.gen_range(0..c)] = 1;
            }
            for (k, &t) in row.iter().enumerate() {
                let informative_probs = k < 2;
                let p: f32 = if informative_probs {
                    if t == 1 {
                        rng.gen_range(0.6..1.0)
                    } else {
                        rng.gen_range(0.0..0.4)
                    }
                } else {
                    rng.gen_range(0.0..1.0)
                };
                let a: f32 = if !informative_probs {
                    if t == 1 {
                        rng.gen_range(0.02..0.3)
                    } else {
                        rng.gen_range(0.0..0.003)
                    }
                } else {
                    rng.gen_range(0.0..0.3)
                };
                probs.push(p);
                areas.push(a);
            }
            truth.extend(row);
        }
        (probs, areas, truth)
    }

    #[test]
    fn fused_beats_both_sources_when_each_is_blind_somewhere() {
        let (probs, areas, truth) = synthetic(200, 1);
        let fit = fit_fusion(&probs, &areas, &truth, 4, ThresholdRule::PerClass).unwrap();
        assert!(
            fit.dice > fit.classifier_only_dice + 0.05 && fit.dice > fit.mask_only_dice + 0.05,
            "{fit:?}"
        );
        let w = fit.rule.classifier_weight;
        assert!(w > 0.0 && w < 1.0, "{fit:?}");
        let cross =
            cross_fitted_dice(&probs, &areas, &truth, 4, ThresholdRule::PerClass, 2, 7, 1).unwrap();
        assert_eq!((cross.images, cross.folds, cross.seed), (200, 2, 7));
        assert!(
            cross.fused_dice > cross.classifier_only_dice + 0.03
                && cross.fused_dice > cross.mask_only_dice + 0.03,
            "{cross:?}"
        );
        // Held-out Dice cannot beat the in-sample optimum of the same grid by much.
        assert!(cross.fused_dice <= fit.dice + 1e-9, "{cross:?} {fit:?}");
        // Deterministic.
        let again =
            cross_fitted_dice(&probs, &areas, &truth, 4, ThresholdRule::PerClass, 2, 7, 1).unwrap();
        assert_eq!(cross, again);
        assert_eq!(
            fit,
            fit_fusion(&probs, &areas, &truth, 4, ThresholdRule::PerClass).unwrap()
        );
    }

    #[test]
    fn repeats_average_the_fold_assignments_and_count_the_fusions_wins() {
        let (probs, areas, truth) = synthetic(80, 3);
        let rule = ThresholdRule::Global;
        let single: Vec<CrossFit> = (5..8)
            .map(|seed| cross_fitted_dice(&probs, &areas, &truth, 4, rule, 3, seed, 1).unwrap())
            .collect();
        let repeated = cross_fitted_dice(&probs, &areas, &truth, 4, rule, 3, 5, 3).unwrap();
        assert_eq!((repeated.seed, repeated.repeats, repeated.folds), (5, 3, 3));
        let mean = |f: fn(&CrossFit) -> f64| single.iter().map(f).sum::<f64>() / 3.0;
        assert!((repeated.fused_dice - mean(|c| c.fused_dice)).abs() < 1e-12);
        assert!((repeated.mask_only_dice - mean(|c| c.mask_only_dice)).abs() < 1e-12);
        assert!((repeated.classifier_only_dice - mean(|c| c.classifier_only_dice)).abs() < 1e-12);
        let wins: usize = single.iter().map(|c| c.fused_wins).sum();
        assert_eq!(repeated.fused_wins, wins);
        for c in &single {
            let won = c.fused_dice > c.mask_only_dice.max(c.classifier_only_dice) + TIE;
            assert_eq!(c.fused_wins, usize::from(won), "{c:?}");
        }
        // Different seeds deal different folds.
        assert!(single.windows(2).any(|w| w[0] != w[1]), "{single:?}");
        let e = cross_fitted_dice(&probs, &areas, &truth, 4, rule, 3, 5, 0).unwrap_err();
        assert!(e.to_string().contains("0 repeats"), "{e}");
    }

    #[test]
    fn best_labels_takes_the_fusion_only_when_it_wins_in_the_mean_and_mostly() {
        let fit = |classifier, mask, fused, wins| CrossFit {
            folds: 5,
            seed: 0,
            repeats: 5,
            images: 100,
            classifier_only_dice: classifier,
            mask_only_dice: mask,
            fused_dice: fused,
            fused_wins: wins,
        };
        assert_eq!(fit(0.8, 0.85, 0.87, 5).best_labels(), LabelSource::Fused);
        assert_eq!(fit(0.8, 0.85, 0.87, 3).best_labels(), LabelSource::Fused);
        // Ahead in the mean by one lucky assignment only.
        assert_eq!(fit(0.8, 0.85, 0.87, 2).best_labels(), LabelSource::Mask);
        assert_eq!(fit(0.8, 0.85, 0.84, 0).best_labels(), LabelSource::Mask);
        assert_eq!(
            fit(0.9, 0.85, 0.88, 0).best_labels(),
            LabelSource::Classifier
        );
        // A tie between the sources goes to the mask, one with the fusion to the source.
        assert_eq!(fit(0.85, 0.85, 0.80, 0).best_labels(), LabelSource::Mask);
        assert_eq!(fit(0.8, 0.85, 0.85, 5).best_labels(), LabelSource::Mask);
        // Files from before repeats were counted read as one assignment the fusion did not win.
        let old: CrossFit = serde_json::from_str(
            r#"{"folds": 2, "seed": 0, "images": 2, "classifier_only_dice": 0.5,
                "mask_only_dice": 0.6, "fused_dice": 0.7}"#,
        )
        .unwrap();
        assert_eq!((old.repeats, old.fused_wins), (1, 0));
        assert_eq!(old.best_labels(), LabelSource::Mask);
    }

    #[test]
    fn label_sources_parse_from_their_names() {
        for source in LabelSource::ALL {
            assert_eq!(source.name().parse::<LabelSource>().unwrap(), source);
            assert_eq!(source.to_string(), source.name());
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{}\"", source.name()));
        }
        let e = "best".parse::<LabelSource>().unwrap_err().to_string();
        assert!(
            e.contains("'best'") && e.contains("classifier, mask or fused"),
            "{e}"
        );
    }

    #[test]
    fn weight_one_is_thresholding_the_probabilities() {
        let (probs, areas, truth) = synthetic(60, 2);
        for rule in [
            ThresholdRule::Global,
            ThresholdRule::PerClass,
            ThresholdRule::Seed,
        ] {
            let thresholds = metrics::choose_thresholds(&probs, &truth, 4, rule).unwrap();
            let fusion = FusionRule {
                classifier_weight: 1.0,
                area_scale: 0.01,
                thresholds: thresholds.clone(),
            };
            for (p, a) in probs.chunks_exact(4).zip(areas.chunks_exact(4)) {
                assert_eq!(fusion.scores(p, a), p);
                assert_eq!(fusion.decide(p, a), thresholds.decide(p));
            }
            let expected =
                metrics::classification_dice(&thresholds.decide_all(&probs).unwrap(), &truth, 4)
                    .unwrap();
            let fit = fit_fusion(&probs, &areas, &truth, 4, rule).unwrap();
            assert_eq!(fit.classifier_only_dice, expected, "{rule}");
            assert!(fit.dice >= expected && fit.dice >= fit.mask_only_dice);
        }
    }

    #[test]
    fn weight_zero_thresholds_the_saturated_areas() {
        let rule = FusionRule {
            classifier_weight: 0.0,
            area_scale: 0.02,
            thresholds: Thresholds::uniform(0.5, 3, true),
        };
        // Areas 0.05 (saturates), 0.01 (0.5: passes), 0.004 (0.2).
        let scores = rule.scores(&[0.0, 1.0, 1.0], &[0.05, 0.01, 0.004]);
        for (s, expected) in scores.iter().zip([1.0, 0.5, 0.2]) {
            assert!((s - expected).abs() < 1e-6, "{scores:?}");
        }
        assert_eq!(rule.decide(&[0.0; 3], &[0.05, 0.01, 0.004]), [1, 1, 0]);
        assert_eq!(rule.decide(&[0.9, 0.9, 0.9], &[0.0, 0.0, 0.004]), [0, 0, 1]);
        // the fallback
    }

    #[test]
    fn ties_prefer_the_classifier_then_the_smaller_scale() {
        // Probabilities and areas both perfect: every w reaches Dice 1, so w = 1 is kept.
        let probs = [0.9, 0.1, 0.2, 0.8];
        let areas = [0.3, 0.0, 0.0, 0.3];
        let truth = [1, 0, 0, 1];
        let fit = fit_fusion(&probs, &areas, &truth, 2, ThresholdRule::Global).unwrap();
        assert_eq!(fit.rule.classifier_weight, 1.0);
        assert_eq!(fit.rule.area_scale, AREA_SCALES[0]);
        assert_eq!(
            (fit.dice, fit.classifier_only_dice, fit.mask_only_dice),
            (1.0, 1.0, 1.0)
        );
        // Useless probabilities: only the mask decides, at the smallest scale that works.
        let probs = [0.5; 4];
        let fit = fit_fusion(&probs, &areas, &truth, 2, ThresholdRule::Global).unwrap();
        assert_eq!(fit.dice, 1.0);
        assert!(fit.rule.classifier_weight < 1.0);
        assert!(fit.classifier_only_dice < 1.0);
    }

    #[test]
    fn folds_are_balanced_and_seeded() {
        let f = fold_of(7, 3, 5);
        let mut sizes = [0; 3];
        for &k in &f {
            sizes[k] += 1;
        }
        assert_eq!(
            {
                sizes.sort();
                sizes
            },
            [2, 2, 3]
        );
        assert_eq!(f, fold_of(7, 3, 5));
        assert_ne!(fold_of(40, 2, 5), fold_of(40, 2, 6));
    }

    fn message(e: ClassifyError) -> String {
        match e {
            ClassifyError::BadArgument(m) => m,
            other => panic!("expected BadArgument, got {other:?}"),
        }
    }

    #[test]
    fn bad_inputs_are_bad_argument_errors() {
        let probs = [0.5, 0.5, 0.5, 0.5];
        let areas = [0.1, 0.0, 0.0, 0.1];
        let truth = [1, 0, 0, 1];
        let fit = |p: &[f32], a: &[f32], t: &[u8], c: usize| {
            message(fit_fusion(p, a, t, c, ThresholdRule::Global).unwrap_err())
        };
        assert!(fit(&probs, &areas[..2], &truth, 2).contains("4, 2 and 4 values"));
        assert!(fit(&probs[..2], &areas, &truth, 2).contains("probs, areas and truth"));
        assert!(fit(&probs, &areas, &truth[..3], 2).contains("truth has 3 values"));
        assert!(fit(&probs, &areas, &truth, 0).contains("num_classes is 0"));
        assert!(fit(&probs, &areas, &truth, 3).contains("whole rows"));
        assert!(fit(&[], &[], &[], 2).contains("no images"));
        assert!(fit(&probs, &[0.1, 1.5, 0.0, 0.0], &truth, 2).contains("areas[1]"));
        assert!(fit(&[0.5, f32::NAN, 0.5, 0.5], &areas, &truth, 2).contains("probs[1]"));
        assert!(fit(&probs, &areas, &[1, 2, 0, 1], 2).contains("truth[1]"));
        let cross = |folds| {
            message(
                cross_fitted_dice(
                    &probs,
                    &areas,
                    &truth,
                    2,
                    ThresholdRule::Global,
                    folds,
                    0,
                    1,
                )
                .unwrap_err(),
            )
        };
        assert!(cross(1).contains("1 folds for 2 images"));
        assert!(cross(3).contains("3 folds for 2 images"));
        let e = cross_fitted_dice(
            &probs,
            &areas[..2],
            &truth,
            2,
            ThresholdRule::Global,
            2,
            0,
            1,
        )
        .unwrap_err();
        assert!(message(e).contains("probs, areas and truth"));
    }

    #[test]
    fn check_rejects_rules_that_cannot_apply() {
        let good = FusionRule {
            classifier_weight: 0.3,
            area_scale: 0.01,
            thresholds: Thresholds::uniform(0.4, 2, true),
        };
        good.check(2).unwrap();
        assert!(message(good.check(3).unwrap_err()).contains("2 thresholds for 3 classes"));
        let with = |f: &dyn Fn(&mut FusionRule)| {
            let mut r = good.clone();
            f(&mut r);
            message(r.check(2).unwrap_err())
        };
        assert!(with(&|r| r.classifier_weight = 1.5).contains("classifier_weight"));
        assert!(with(&|r| r.area_scale = 0.0).contains("area_scale"));
        assert!(with(&|r| r.thresholds.per_class[1] = f32::NAN).contains("class 1"));
    }

    #[test]
    fn serde_round_trip() {
        let rule = FusionRule {
            classifier_weight: 0.7,
            area_scale: 0.005,
            thresholds: Thresholds::uniform(0.25, 2, true),
        };
        let json = serde_json::to_string(&rule).unwrap();
        assert!(json.contains("\"classifier_weight\":0.7"), "{json}");
        assert_eq!(serde_json::from_str::<FusionRule>(&json).unwrap(), rule);
    }
}
