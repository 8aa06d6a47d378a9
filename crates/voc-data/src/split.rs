//! Deterministic, stratified train/validation splits of multi-label data (iterative stratification,
//! Sechidis, Tsoumakas & Vlahavas 2011): the rarest label is distributed first, each of its samples going
//! to the subset that still needs most of that label.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};
use crate::{LabelSet, NUM_CLASSES};

/// Splits sample positions into (train, validation), each sorted, with about `val_fraction` of the
/// samples and of every label in validation. The same labels, fraction and seed give the same split.
/// A fraction outside `0 <= f < 1` is [`DataError::BadArgument`].
///
/// ```
/// use voc_data::{stratified_split, LabelSet};
///
/// // 100 images: every one has class 14 (person), every tenth also class 2 (bird).
/// let labels: Vec<LabelSet> = (0..100)
///     .map(|i| if i % 10 == 0 { LabelSet::from_classes([2, 14]) } else { LabelSet::from_classes([14]) })
///     .collect::<Result<_, _>>()?;
/// let (train, val) = stratified_split(&labels, 0.2, 0)?;
/// assert_eq!((train.len(), val.len()), (80, 20));
/// assert_eq!(val.iter().filter(|&&i| labels[i].contains(2)).count(), 2); // 20% of the 10 birds
/// assert_eq!(stratified_split(&labels, 0.2, 0)?, (train, val)); // deterministic
/// assert!(stratified_split(&labels, 1.0, 0).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
// Class indices address several per-class arrays at once; index loops read clearer than zips here.
#[allow(clippy::needless_range_loop)]
pub fn stratified_split(
    labels: &[LabelSet],
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::BadArgument(format!(
            "validation fraction {val_fraction}: expected 0 <= f < 1"
        )));
    }
    let n = labels.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ratios = [1.0 - val_fraction, val_fraction];
    // Subset 1 (validation) gets exactly round(n * f) samples overall.
    let n_val = (n as f64 * val_fraction).round() as usize;
    let mut wanted = [(n - n_val) as f64, n_val as f64];
    let mut wanted_per_label = [[0f64; NUM_CLASSES]; 2];
    for c in 0..NUM_CLASSES {
        let count = labels.iter().filter(|l| l.contains(c)).count() as f64;
        for j in 0..2 {
            wanted_per_label[j][c] = count * ratios[j];
        }
    }
    let mut remaining: Vec<usize> = (0..n).collect();
    remaining.shuffle(&mut rng);
    let mut assigned = vec![usize::MAX; n];
    let mut assign =
        |i: usize, j: usize, wanted: &mut [f64; 2], per: &mut [[f64; NUM_CLASSES]; 2]| {
            assigned[i] = j;
            wanted[j] -= 1.0;
            for c in 0..NUM_CLASSES {
                if labels[i].contains(c) {
                    per[j][c] -= 1.0;
                }
            }
        };
    loop {
        // The label with the fewest unassigned samples (ties: lowest class index, after the shuffle).
        let mut best: Option<(usize, usize)> = None;
        for c in 0..NUM_CLASSES {
            let k = remaining.iter().filter(|&&i| labels[i].contains(c)).count();
            if k > 0 && best.is_none_or(|(_, bk)| k < bk) {
                best = Some((c, k));
            }
        }
        let Some((c, _)) = best else { break };
        let (with, without): (Vec<usize>, Vec<usize>) =
            remaining.iter().partition(|&&i| labels[i].contains(c));
        for i in with {
            let (a, b) = (wanted_per_label[0][c], wanted_per_label[1][c]);
            let j = if wanted[0] <= 0.0 || wanted[1] <= 0.0 {
                // A full subset takes no more: keeps the sizes at the requested fraction.
                (wanted[1] > wanted[0]) as usize
            } else if a != b {
                (b > a) as usize
            } else if wanted[0] != wanted[1] {
                (wanted[1] > wanted[0]) as usize
            } else {
                rng.gen_range(0..2)
            };
            assign(i, j, &mut wanted, &mut wanted_per_label);
        }
        remaining = without;
    }
    // Unlabelled samples fill whichever subset is short.
    for i in remaining {
        let j = (wanted[1] > wanted[0]) as usize;
        assign(i, j, &mut wanted, &mut wanted_per_label);
    }
    let train = (0..n).filter(|&i| assigned[i] == 0).collect();
    let val = (0..n).filter(|&i| assigned[i] == 1).collect();
    Ok((train, val))
}
