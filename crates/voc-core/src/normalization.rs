//! How 0..255 pixel values become network inputs.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Per-channel input normalisation: pixel `p` in 0..255 of channel `c` is fed as
/// `(p / 255 - mean[c]) / std[c]`, computed as `p * scale[c] + offset[c]` (see [`Self::scale_offset`]).
///
/// ```
/// use voc_core::Normalization;
/// let [(scale, offset), ..] = Normalization::MINUS_ONE_TO_ONE.scale_offset();
/// assert_eq!((255.0 * scale + offset, 0.0 * scale + offset), (1.0, -1.0));
/// assert_eq!("imagenet".parse::<Normalization>()?, Normalization::IMAGENET);
/// # Ok::<(), voc_core::CoreError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel means on the 0..1 scale, RGB order.
    pub mean: [f32; 3],
    /// Channel standard deviations on the 0..1 scale, RGB order.
    pub std: [f32; 3],
}

impl Normalization {
    /// `x / 127.5 - 1`, inputs in `[-1, 1]`: the TensorFlow MobileNet and DeepLab models, and timm's
    /// mean = std = 0.5 (EfficientNet-Lite).
    pub const MINUS_ONE_TO_ONE: Self = Self {
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    /// The ImageNet channel statistics torchvision's models were trained with.
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// `x / 255`, inputs in `[0, 1]`.
    pub const ZERO_ONE: Self = Self {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    /// Per channel `(scale, offset)` with input = `p * scale + offset` for a pixel `p` in 0..255.
    pub fn scale_offset(&self) -> [(f32, f32); 3] {
        std::array::from_fn(|c| (1.0 / (255.0 * self.std[c]), -self.mean[c] / self.std[c]))
    }

    /// Per channel `(scale, offset)` of the inverse map: pixel = `x * scale + offset`.
    pub fn inverse_scale_offset(&self) -> [(f32, f32); 3] {
        std::array::from_fn(|c| (255.0 * self.std[c], 255.0 * self.mean[c]))
    }

    /// Whether every channel is mapped the same way (then one scalar affine map does it).
    pub fn is_uniform(&self) -> bool {
        self.mean.iter().all(|&m| m == self.mean[0]) && self.std.iter().all(|&s| s == self.std[0])
    }

    /// The preset's name (`imagenet`, `minus-one-one`, `zero-one`), if this is a preset.
    pub fn preset_name(&self) -> Option<&'static str> {
        PRESETS
            .iter()
            .find(|(_, preset)| preset == self)
            .map(|(name, _)| *name)
    }
}

/// The presets by the names [`Normalization::preset_name`] gives and [`str::parse`] takes.
const PRESETS: [(&str, Normalization); 3] = [
    ("imagenet", Normalization::IMAGENET),
    ("minus-one-one", Normalization::MINUS_ONE_TO_ONE),
    ("zero-one", Normalization::ZERO_ONE),
];

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.preset_name() {
            Some(name) => f.write_str(name),
            None => write!(f, "mean {:?} std {:?}", self.mean, self.std),
        }
    }
}

impl FromStr for Normalization {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, CoreError> {
        let name = match s.trim().to_ascii_lowercase().as_str() {
            "-1,1" | "[-1,1]" | "tf" => "minus-one-one".to_string(),
            "0,1" | "[0,1]" => "zero-one".to_string(),
            other => other.to_string(),
        };
        PRESETS
            .iter()
            .find(|(preset_name, _)| *preset_name == name)
            .map(|(_, preset)| *preset)
            .ok_or_else(|| {
                CoreError::BadArgument(format!(
                    "normalisation '{s}': expected imagenet, minus-one-one or zero-one"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_map_as_their_formulas() {
        let [(s, o), ..] = Normalization::MINUS_ONE_TO_ONE.scale_offset();
        assert_eq!((s, o), (1.0 / 127.5, -1.0));
        let [(s, o), ..] = Normalization::ZERO_ONE.scale_offset();
        assert_eq!((s, o), (1.0 / 255.0, 0.0));
        let so = Normalization::IMAGENET.scale_offset();
        for (c, &(scale, offset)) in so.iter().enumerate() {
            let m = Normalization::IMAGENET.mean[c];
            let sd = Normalization::IMAGENET.std[c];
            assert_eq!((scale, offset), (1.0 / (255.0 * sd), -m / sd));
            let (is, io) = Normalization::IMAGENET.inverse_scale_offset()[c];
            let back = (200.0 * scale + offset) * is + io;
            assert!((back - 200.0).abs() < 1e-3, "{back}");
        }
        assert!(Normalization::MINUS_ONE_TO_ONE.is_uniform());
        assert!(!Normalization::IMAGENET.is_uniform());
    }

    #[test]
    fn names_parse_and_print() {
        for n in [
            Normalization::IMAGENET,
            Normalization::MINUS_ONE_TO_ONE,
            Normalization::ZERO_ONE,
        ] {
            assert_eq!(n.to_string().parse::<Normalization>().unwrap(), n);
        }
        let err = "bogus".parse::<Normalization>().unwrap_err().to_string();
        assert!(err.contains("expected imagenet"), "{err}");
    }
}
