//! The PASCAL VOC classes and the special mask values.

/// Number of object classes: the length of a label vector and of a submission's segmentation row.
pub const NUM_CLASSES: usize = 20;

/// Number of mask values that are classes: background (0) and the 20 objects (1..=20).
pub const NUM_MASK_CLASSES: usize = NUM_CLASSES + 1;

/// Mask value of background pixels.
pub const BACKGROUND: u8 = 0;

/// Mask value of pixels no loss or score counts: VOC's object borders and "difficult" regions, and the
/// area outside the image after augmentation.
pub const VOID: u8 = 255;

/// Whether `v` may appear in a VOC mask: background, a class (1..=20) or [`VOID`].
///
/// ```
/// assert!(voc_core::is_mask_value(20) && voc_core::is_mask_value(voc_core::VOID));
/// assert!(!voc_core::is_mask_value(21));
/// ```
pub const fn is_mask_value(v: u8) -> bool {
    (v as usize) <= NUM_CLASSES || v == VOID
}

/// The 20 classes in the competition's column order (VOCdevkit's order); class `c` is mask value `c + 1`.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The 21 names of mask values: `"background"`, then [`CLASS_NAMES`] (mask value `v` is `MASK_CLASS_NAMES[v]`).
pub const MASK_CLASS_NAMES: [&str; NUM_MASK_CLASSES] = {
    let mut names = ["background"; NUM_MASK_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        names[c + 1] = CLASS_NAMES[c];
        c += 1;
    }
    names
};

/// The index in [`CLASS_NAMES`] of a class name (exact, lower case), if it is one.
///
/// ```
/// assert_eq!(voc_core::class_index("dog"), Some(11));
/// assert_eq!(voc_core::class_index("background"), None);
/// ```
pub fn class_index(name: &str) -> Option<usize> {
    CLASS_NAMES.iter().position(|&n| n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_names_are_background_then_the_vocdevkit_order() {
        assert_eq!(MASK_CLASS_NAMES[0], "background");
        assert_eq!(MASK_CLASS_NAMES[1], "aeroplane");
        assert_eq!(MASK_CLASS_NAMES[12], "dog");
        assert_eq!(MASK_CLASS_NAMES[15], "person");
        assert_eq!(MASK_CLASS_NAMES[20], "tvmonitor");
        assert_eq!(MASK_CLASS_NAMES[1..], CLASS_NAMES);
    }
}
