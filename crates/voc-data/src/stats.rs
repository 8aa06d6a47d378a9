//! Per-class statistics of a split and the class weights derived from them.
use rayon::prelude::*;

use voc_core::image::{labels_with_at_least, value_counts};

use crate::competition::SplitIndex;
use crate::error::Result;
use crate::{LabelSet, CLASS_NAMES, NUM_CLASSES, NUM_MASK_CLASSES};

/// Statistics of one class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassStats {
    /// The class name, from [`CLASS_NAMES`].
    pub name: &'static str,
    /// Images containing the class.
    pub images: usize,
    /// The class's share of all non-void mask pixels (`None` without masks).
    pub pixel_share: Option<f64>,
    /// scikit-learn's 'balanced' weight `n / (k * count)`, k = 20 (`None` when the class never occurs).
    pub weight: Option<f64>,
    /// Multi-label BCE `pos_weight` = negatives / positives (`None` when the class never occurs).
    pub pos_weight: Option<f64>,
}

/// Statistics of a split, serialised as `voc data stats --json` prints them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SplitStats {
    /// The split's name.
    pub split: String,
    /// Number of images.
    pub images: usize,
    /// The 20 classes, in [`CLASS_NAMES`] order.
    pub classes: Vec<ClassStats>,
    /// Background's share of the non-void mask pixels.
    pub background_pixel_share: Option<f64>,
    /// Segmentation cross-entropy weights for the 21 mask classes (background first), balanced on pixel
    /// counts: `total / (21 * pixels_c)`; a class without pixels gets 0.
    pub seg_weights: Option<Vec<f64>>,
    /// Where the per-image labels came from: "csv", "masks", or "none" (an unlabelled split without masks).
    pub labels_from: &'static str,
}

impl SplitStats {
    /// Counts labels (from the CSV, or from the masks when the CSV is unlabelled) and mask pixels; fails
    /// on the first mask that cannot be read.
    ///
    /// ```
    /// use voc_data::{CompetitionDir, SplitStats};
    ///
    /// let train = CompetitionDir::open("../../assets/voc-sample".as_ref())?.split("train")?;
    /// let stats = SplitStats::compute(&train)?;
    /// let dog = &stats.classes[11];
    /// assert_eq!((dog.name, dog.images), ("dog", 1));
    /// assert_eq!(dog.pos_weight, Some(1.0)); // one image without a dog, one with
    /// assert_eq!(stats.seg_weights.as_ref().map(Vec::len), Some(21));
    /// print!("{}", stats.table());
    /// # Ok::<(), voc_data::DataError>(())
    /// ```
    pub fn compute(index: &SplitIndex) -> Result<Self> {
        let pixel_counts: Option<Vec<([u64; NUM_MASK_CLASSES], LabelSet)>> = if index.has_masks {
            Some(
                index
                    .ids
                    .par_iter()
                    .map(|id| {
                        // One pass: the 21 class counts (void, 255, left out) and the labels.
                        let all = value_counts(&index.read_mask(id)?);
                        let counts: [u64; NUM_MASK_CLASSES] = std::array::from_fn(|v| all[v]);
                        Ok((counts, labels_with_at_least(&all, 0.0)))
                    })
                    .collect::<Result<_>>()?,
            )
        } else {
            None
        };
        let (labels, labels_from): (Vec<LabelSet>, _) = match (&index.labels, &pixel_counts) {
            (Some(l), _) => (l.clone(), "csv"),
            (None, Some(p)) => (p.iter().map(|(_, l)| *l).collect(), "masks"),
            (None, None) => (Vec::new(), "none"),
        };
        let totals: Option<[u64; NUM_MASK_CLASSES]> = pixel_counts.as_ref().map(|p| {
            let mut t = [0u64; NUM_MASK_CLASSES];
            for (c, _) in p {
                for k in 0..NUM_MASK_CLASSES {
                    t[k] += c[k];
                }
            }
            t
        });
        let all_pixels = totals.map(|t| t.iter().sum::<u64>().max(1) as f64);
        Ok(Self::from_counts(
            &index.name,
            index.len(),
            &labels,
            labels_from,
            totals,
            all_pixels,
        ))
    }

    /// Statistics from per-image labels alone (no pixel shares).
    pub fn from_labels(split: &str, labels: &[LabelSet]) -> Self {
        Self::from_counts(split, labels.len(), labels, "csv", None, None)
    }

    fn from_counts(
        split: &str,
        n: usize,
        labels: &[LabelSet],
        labels_from: &'static str,
        totals: Option<[u64; NUM_MASK_CLASSES]>,
        all_pixels: Option<f64>,
    ) -> Self {
        let classes = (0..NUM_CLASSES)
            .map(|c| {
                let count = labels.iter().filter(|l| l.contains(c)).count();
                let present = count > 0 && !labels.is_empty();
                ClassStats {
                    name: CLASS_NAMES[c],
                    images: count,
                    pixel_share: totals.zip(all_pixels).map(|(t, all)| t[c + 1] as f64 / all),
                    weight: present
                        .then(|| labels.len() as f64 / (NUM_CLASSES as f64 * count as f64)),
                    pos_weight: present.then(|| (labels.len() - count) as f64 / count as f64),
                }
            })
            .collect();
        let seg_weights = totals.zip(all_pixels).map(|(t, all)| {
            t.iter()
                .map(|&p| {
                    if p == 0 {
                        0.0
                    } else {
                        all / (NUM_MASK_CLASSES as f64 * p as f64)
                    }
                })
                .collect()
        });
        Self {
            split: split.to_string(),
            images: n,
            classes,
            background_pixel_share: totals.zip(all_pixels).map(|(t, all)| t[0] as f64 / all),
            seg_weights,
            labels_from,
        }
    }

    /// `pos_weight` per class for a BCE loss, set to 1 (neutral) for a class absent from the split and
    /// for one in every image (its weight 0 would silence the class's positives).
    pub fn pos_weights(&self) -> [f32; NUM_CLASSES] {
        std::array::from_fn(|c| match self.classes[c].pos_weight {
            Some(w) if w > 0.0 => w as f32,
            _ => 1.0,
        })
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let fmt =
            |x: Option<f64>, prec: usize| x.map_or("-".to_string(), |v| format!("{v:.prec$}"));
        let mut s = format!(
            "split {}: {} images (labels from {})\n",
            self.split, self.images, self.labels_from
        );
        s += &format!(
            "{:<12} {:>7} {:>12} {:>9} {:>11}\n",
            "class", "images", "pixel_share", "weight", "pos_weight"
        );
        for c in &self.classes {
            s += &format!(
                "{:<12} {:>7} {:>12} {:>9} {:>11}\n",
                c.name,
                c.images,
                fmt(c.pixel_share, 4),
                fmt(c.weight, 3),
                fmt(c.pos_weight, 3)
            );
        }
        if let Some(b) = self.background_pixel_share {
            s += &format!("background pixel share {b:.4}\n");
        }
        s
    }
}
