//! Input transformations as defences (Guo et al. 2018; Xu et al. 2018's feature squeezing): the
//! deployed model sees `T(x)` instead of `x`, which wipes out part of a small perturbation. They are
//! not differentiable, which can look like robustness to an attacker that needs gradients: the
//! [`InputTransform::straight_through`] wrapper is BPDA (Athalye et al. 2018), the adaptive attack
//! that runs `T` forwards and takes its gradient as the identity, so a defence is credited only for
//! what it removes and not for hiding the gradient.
//!
//! ```
//! use voc_attack::defence::InputTransform;
//! use voc_core::RgbImage;
//! let t: InputTransform = "bits:3".parse()?;
//! let image = RgbImage::new(1, 2, vec![0, 100, 200, 255, 17, 130])?;
//! // 3 bits keep 8 levels: multiples of 255/7.
//! assert_eq!(t.apply(&image)?.as_bytes(), [0, 109, 182, 255, 0, 146]);
//! assert_eq!(t.to_string(), "bits:3");
//! assert!("jpeg:75".parse::<InputTransform>().is_ok());
//! assert!("jpeg:0".parse::<InputTransform>().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use voc_core::RgbImage;

use crate::error::{AttackError, Result};

/// A deterministic image-to-image transformation applied before the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputTransform {
    /// JPEG re-encoding at this quality (1..=100).
    Jpeg(u8),
    /// Bit-depth reduction to this many bits per value (1..=7): values rounded to the nearest of
    /// `2^bits` evenly spaced levels.
    Bits(u8),
}

impl fmt::Display for InputTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Jpeg(q) => write!(f, "jpeg:{q}"),
            Self::Bits(b) => write!(f, "bits:{b}"),
        }
    }
}

impl FromStr for InputTransform {
    type Err = AttackError;

    /// `jpeg:QUALITY` (1..=100) or `bits:BITS` (1..=7).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| AttackError::BadInput(format!("defence '{s}': {why}"));
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| bad("expected jpeg:QUALITY or bits:BITS"))?;
        let value: u8 = value
            .parse()
            .map_err(|_| bad("the value is not a small whole number"))?;
        match kind {
            "jpeg" if (1..=100).contains(&value) => Ok(Self::Jpeg(value)),
            "jpeg" => Err(bad("JPEG quality is 1..=100")),
            "bits" if (1..=7).contains(&value) => Ok(Self::Bits(value)),
            "bits" => Err(bad("bit depth is 1..=7 (8 changes nothing)")),
            _ => Err(bad("expected jpeg:QUALITY or bits:BITS")),
        }
    }
}

impl InputTransform {
    /// The transformed picture.
    pub fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        match *self {
            Self::Bits(bits) => {
                let levels = f32::from((1u16 << bits) - 1);
                let bytes = image
                    .as_bytes()
                    .iter()
                    .map(|&v| {
                        let level = (f32::from(v) / 255.0 * levels).round();
                        (level * 255.0 / levels).round() as u8
                    })
                    .collect();
                Ok(RgbImage::new(image.height(), image.width(), bytes)?)
            }
            Self::Jpeg(quality) => {
                let mut encoded = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, quality)
                    .encode(
                        image.as_bytes(),
                        image.width() as u32,
                        image.height() as u32,
                        image::ExtendedColorType::Rgb8,
                    )
                    .map_err(|e| AttackError::BadInput(format!("JPEG encoding: {e}")))?;
                let decoded =
                    image::load_from_memory_with_format(&encoded, image::ImageFormat::Jpeg)
                        .map_err(|e| AttackError::BadInput(format!("JPEG decoding: {e}")))?
                        .into_rgb8();
                Ok(RgbImage::new(
                    image.height(),
                    image.width(),
                    decoded.into_raw(),
                )?)
            }
        }
    }

    /// `T` on an `N x 3 x H x W` batch of pixels in 0..1 (each image rounded to 8 bits first, as a
    /// picture would be), without gradient.
    pub fn apply_batch(&self, u: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = u.dims4()?;
        if c != 3 {
            return Err(AttackError::BadInput(format!(
                "input transformations take RGB batches, got {:?}",
                u.dims()
            )));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let bytes: Vec<u8> = (u.get(i)?.detach() * 255.0)?
                .round()?
                .clamp(0.0, 255.0)?
                .permute((1, 2, 0))?
                .flatten_all()?
                .to_dtype(DType::U8)?
                .to_vec1()?;
            let t = self.apply(&RgbImage::new(h, w, bytes)?)?;
            let pixels = Tensor::from_slice(t.as_bytes(), (h, w, 3), u.device())?
                .permute((2, 0, 1))?
                .to_dtype(u.dtype())?;
            out.push((pixels / 255.0)?);
        }
        Ok(Tensor::stack(&out, 0)?)
    }

    /// BPDA's straight-through estimator: `T(u)` in the forward pass, the identity's gradient in the
    /// backward (`u + (T(u) - u)` with the difference detached).
    pub fn straight_through(&self, u: &Tensor) -> Result<Tensor> {
        let t = self.apply_batch(u)?;
        Ok((u + (t - u.detach())?.detach())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn jpeg_keeps_the_picture_and_removes_fine_noise() {
        let (h, w) = (32, 32);
        let smooth: Vec<u8> = (0..h * w)
            .flat_map(|i| {
                let (y, x) = (i / w, i % w);
                [(x * 8) as u8, (y * 8) as u8, 128]
            })
            .collect();
        let noisy: Vec<u8> = smooth
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if i % 2 == 0 {
                    v.saturating_add(4)
                } else {
                    v.saturating_sub(4)
                }
            })
            .collect();
        let (smooth, noisy) = (
            RgbImage::new(h, w, smooth).unwrap(),
            RgbImage::new(h, w, noisy).unwrap(),
        );
        let jpeg = InputTransform::Jpeg(75);
        let out = jpeg.apply(&noisy).unwrap();
        assert_eq!((out.height(), out.width()), (h, w));
        // Closer to the smooth picture after re-encoding than before.
        let before = crate::quality::l2(&smooth, &noisy).unwrap();
        let after = crate::quality::l2(&smooth, &out).unwrap();
        assert!(
            after < before,
            "L2 to the clean picture {before} -> {after}"
        );
    }

    #[test]
    fn straight_through_runs_the_transform_forwards_and_the_identity_backwards() {
        let u = Var::new(
            &[[[[0.1f32, 0.52]], [[0.9, 0.3]], [[0.0, 1.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        let t = InputTransform::Bits(1);
        let y = t.straight_through(u.as_tensor()).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
        );
        let grads = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(u.as_tensor()).unwrap();
        assert_eq!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [3.0; 6]);
    }

    #[test]
    fn bad_defences_are_named() {
        for bad in ["jpeg", "jpeg:101", "bits:8", "bits:0", "blur:3", "jpeg:x"] {
            let err = bad.parse::<InputTransform>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
