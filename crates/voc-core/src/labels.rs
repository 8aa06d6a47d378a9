//! Which of the 20 classes an image shows: a multi-label target or prediction.
use std::fmt;

use crate::classes::{CLASS_NAMES, NUM_CLASSES};
use crate::error::{CoreError, Result};

/// A set of VOC classes (indices into [`CLASS_NAMES`]), the label vector of one image.
///
/// ```
/// use voc_core::LabelSet;
/// let labels = LabelSet::from_flags(&[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
/// assert_eq!(labels.names().collect::<Vec<_>>(), ["aeroplane", "bus"]);
/// assert!(labels.contains(5));
/// assert_eq!(labels.to_flags()[5], 1);
/// # Ok::<(), voc_core::CoreError>(())
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(u32);

impl LabelSet {
    /// No class.
    pub const EMPTY: Self = Self(0);
    /// Every class.
    pub const ALL: Self = Self((1 << NUM_CLASSES) - 1);

    /// The set of 0/1 flags in class order; exactly 20 flags, each 0 or 1, or an error saying which.
    pub fn from_flags(flags: &[u8]) -> Result<Self> {
        if flags.len() != NUM_CLASSES {
            return Err(CoreError::BadArgument(format!(
                "a label vector has {NUM_CLASSES} entries (one per class), got {}",
                flags.len()
            )));
        }
        let mut set = Self::EMPTY;
        for (class, &flag) in flags.iter().enumerate() {
            match flag {
                0 => {}
                1 => set.insert(class),
                other => {
                    return Err(CoreError::BadArgument(format!(
                        "label of class {class} ({}) is {other}; expected 0 or 1",
                        CLASS_NAMES[class]
                    )))
                }
            }
        }
        Ok(set)
    }

    /// The set of the given class indices; an index of 20 or more is an error.
    pub fn from_classes(classes: impl IntoIterator<Item = usize>) -> Result<Self> {
        let mut set = Self::EMPTY;
        for class in classes {
            if class >= NUM_CLASSES {
                return Err(CoreError::BadArgument(format!(
                    "class index {class} is out of range 0..{NUM_CLASSES}"
                )));
            }
            set.insert(class);
        }
        Ok(set)
    }

    /// The flags in class order, 1 for a class in the set.
    pub fn to_flags(self) -> [u8; NUM_CLASSES] {
        std::array::from_fn(|c| u8::from(self.contains(c)))
    }

    /// Whether class `class` is in the set (false for an index out of range).
    pub fn contains(self, class: usize) -> bool {
        class < NUM_CLASSES && self.0 >> class & 1 == 1
    }

    /// Adds class `class`.
    ///
    /// # Panics
    /// When `class >= 20`, a bug in the caller: indices come from [`CLASS_NAMES`] positions.
    pub fn insert(&mut self, class: usize) {
        assert!(class < NUM_CLASSES, "class index {class} out of range");
        self.0 |= 1 << class;
    }

    /// Removes class `class` (nothing happens for an index out of range).
    pub fn remove(&mut self, class: usize) {
        if class < NUM_CLASSES {
            self.0 &= !(1 << class);
        }
    }

    /// Number of classes in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set has no class.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The class indices in the set, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..NUM_CLASSES).filter(move |&c| self.contains(c))
    }

    /// The class names in the set, in class order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        self.iter().map(|c| CLASS_NAMES[c])
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl FromIterator<usize> for LabelSet {
    /// Collects class indices; panics on an index of 20 or more like [`LabelSet::insert`].
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = Self::EMPTY;
        for class in iter {
            set.insert(class);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_and_bad_flags_are_named() {
        let flags: [u8; NUM_CLASSES] = std::array::from_fn(|c| (c % 3 == 0) as u8);
        let set = LabelSet::from_flags(&flags).unwrap();
        assert_eq!(set.to_flags(), flags);
        assert_eq!(set.len(), 7);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 3, 6, 9, 12, 15, 18]);
        let mut bad = flags;
        bad[11] = 2;
        let err = LabelSet::from_flags(&bad).unwrap_err().to_string();
        assert!(err.contains("dog") && err.contains("0 or 1"), "{err}");
        let err = LabelSet::from_flags(&flags[..19]).unwrap_err().to_string();
        assert!(err.contains("20 entries"), "{err}");
        assert!(LabelSet::from_classes([20]).is_err());
        assert_eq!(LabelSet::ALL.len(), NUM_CLASSES);
        assert!(!LabelSet::ALL.contains(NUM_CLASSES));
        assert_eq!(
            format!("{:?}", LabelSet::from_classes([2, 7]).unwrap()),
            "{\"bird\", \"cat\"}"
        );
    }
}
