//! How visible a perturbation is: the distances and image-quality scores an attack report gives for
//! each adversarial image against its original, both 8-bit RGB pictures of the same size.
//!
//! - [`linf`] and [`l2`]: the perturbation's largest value change and Euclidean norm, in 8-bit levels
//!   (the units of `--eps`).
//! - [`psnr`]: peak signal-to-noise ratio in dB (`10 log10(255² / MSE)`; infinite for equal images).
//! - [`ssim`]: structural similarity (Wang et al. 2004) with an 11x11 Gaussian window of sigma 1.5 and
//!   K1 = 0.01, K2 = 0.03 per channel, averaged over the channels and the pixels at least 5 from the
//!   border: scikit-image's `structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
//!   use_sample_covariance=False, data_range=255, channel_axis=2)`, which the tests check it against.
//!
//! ```
//! use voc_attack::quality;
//! use voc_core::RgbImage;
//! let a = RgbImage::new(16, 16, vec![100; 16 * 16 * 3])?;
//! let mut pixels = a.as_bytes().to_vec();
//! pixels[0] = 104; // one value up 4 levels
//! let b = RgbImage::new(16, 16, pixels)?;
//! assert_eq!(quality::linf(&a, &b)?, 4.0);
//! assert_eq!(quality::l2(&a, &b)?, 4.0);
//! let mse = 16.0 / (16.0 * 16.0 * 3.0);
//! assert!((quality::psnr(&a, &b)? - 10.0 * (255.0f64 * 255.0 / mse).log10()).abs() < 1e-9);
//! assert_eq!(quality::psnr(&a, &a)?, f64::INFINITY);
//! assert_eq!(quality::ssim(&a, &a)?, 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use voc_core::RgbImage;

use crate::error::{AttackError, Result};

fn same_size(a: &RgbImage, b: &RgbImage) -> Result<()> {
    if (a.height(), a.width()) != (b.height(), b.width()) {
        return Err(AttackError::BadInput(format!(
            "comparing a {}x{} image with a {}x{} one",
            a.height(),
            a.width(),
            b.height(),
            b.width()
        )));
    }
    Ok(())
}

/// The largest absolute difference of any value, in 8-bit levels.
pub fn linf(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    Ok(a.as_bytes()
        .iter()
        .zip(b.as_bytes())
        .map(|(&x, &y)| (i16::from(x) - i16::from(y)).unsigned_abs())
        .max()
        .map_or(0.0, f64::from))
}

/// The Euclidean norm of the difference, in 8-bit levels.
pub fn l2(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    Ok(squared_error(a, b).sqrt())
}

fn squared_error(a: &RgbImage, b: &RgbImage) -> f64 {
    a.as_bytes()
        .iter()
        .zip(b.as_bytes())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

/// Peak signal-to-noise ratio in dB for 8-bit values; `f64::INFINITY` for equal images.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    let n = a.as_bytes().len();
    if n == 0 {
        return Ok(f64::INFINITY);
    }
    let mse = squared_error(a, b) / n as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    })
}

const SSIM_RADIUS: usize = 5;
const SSIM_SIGMA: f64 = 1.5;

/// The normalised 11-tap Gaussian of sigma 1.5.
fn gaussian_taps() -> [f64; 2 * SSIM_RADIUS + 1] {
    let mut taps = [0.0; 2 * SSIM_RADIUS + 1];
    for (i, t) in taps.iter_mut().enumerate() {
        let d = i as f64 - SSIM_RADIUS as f64;
        *t = (-d * d / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let sum: f64 = taps.iter().sum();
    taps.map(|t| t / sum)
}

/// Separable Gaussian filter of an `h x w` plane with reflected borders (`scipy.ndimage`'s `reflect`:
/// the edge value repeated, `d c b a | a b c d | d c b a`).
fn blur(plane: &[f64], h: usize, w: usize, taps: &[f64]) -> Vec<f64> {
    let r = SSIM_RADIUS as isize;
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        loop {
            if i < 0 {
                i = -i - 1;
            } else if i >= n {
                i = 2 * n - i - 1;
            } else {
                return i as usize;
            }
        }
    };
    let mut rows = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = taps
                .iter()
                .enumerate()
                .map(|(k, t)| t * plane[y * w + reflect(x as isize + k as isize - r, w)])
                .sum();
        }
    }
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = taps
                .iter()
                .enumerate()
                .map(|(k, t)| t * rows[reflect(y as isize + k as isize - r, h) * w + x])
                .sum();
        }
    }
    out
}

/// Structural similarity of two 8-bit RGB images (1 for equal images; see the module docs for the
/// exact definition). Images smaller than 11x11 are a bad-input error (the window does not fit).
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    let (h, w) = (a.height(), a.width());
    let win = 2 * SSIM_RADIUS + 1;
    if h < win || w < win {
        return Err(AttackError::BadInput(format!(
            "SSIM needs images of at least {win}x{win} pixels, got {h}x{w}"
        )));
    }
    let taps = gaussian_taps();
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mut total = 0.0;
    for ch in 0..3 {
        let plane = |img: &RgbImage| -> Vec<f64> {
            img.as_bytes()
                .iter()
                .skip(ch)
                .step_by(3)
                .map(|&v| f64::from(v))
                .collect()
        };
        let (x, y) = (plane(a), plane(b));
        let product =
            |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(u, v)| u * v).collect() };
        let (mx, my) = (blur(&x, h, w, &taps), blur(&y, h, w, &taps));
        let (mxx, myy, mxy) = (
            blur(&product(&x, &x), h, w, &taps),
            blur(&product(&y, &y), h, w, &taps),
            blur(&product(&x, &y), h, w, &taps),
        );
        let mut sum = 0.0;
        let mut count = 0usize;
        for yy in SSIM_RADIUS..h - SSIM_RADIUS {
            for xx in SSIM_RADIUS..w - SSIM_RADIUS {
                let i = yy * w + xx;
                let (ux, uy) = (mx[i], my[i]);
                let vx = mxx[i] - ux * ux;
                let vy = myy[i] - uy * uy;
                let vxy = mxy[i] - ux * uy;
                sum += ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                    / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
                count += 1;
            }
        }
        total += sum / count as f64;
    }
    Ok(total / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values from scikit-image 0.26 (`structural_similarity(a, b, gaussian_weights=True,
    /// sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)` and
    /// `peak_signal_noise_ratio(a, b, data_range=255)`) on these two 23x31 images.
    #[test]
    fn ssim_and_psnr_match_scikit_image() {
        let (h, w) = (23, 31);
        let mut a = Vec::with_capacity(h * w * 3);
        let mut b = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = ((y * 7 + x * 3 + c * 50 + (x * x * y) % 13) % 256) as i64;
                    a.push(v as u8);
                    b.push((v + ((x * y + c) % 9) as i64 - 4).clamp(0, 255) as u8);
                }
            }
        }
        let (a, b) = (
            RgbImage::new(h, w, a).unwrap(),
            RgbImage::new(h, w, b).unwrap(),
        );
        let s = ssim(&a, &b).unwrap();
        assert!((s - 0.984_319_461_931_973_4).abs() < 1e-9, "{s}");
        let p = psnr(&a, &b).unwrap();
        assert!((p - 39.656_103_855_906_6).abs() < 1e-9, "{p}");
        assert!(linf(&a, &b).unwrap() <= 4.0);
    }

    #[test]
    fn images_of_different_sizes_or_too_small_are_refused() {
        let a = RgbImage::new(12, 12, vec![0; 12 * 12 * 3]).unwrap();
        let b = RgbImage::new(12, 13, vec![0; 12 * 13 * 3]).unwrap();
        assert!(psnr(&a, &b).unwrap_err().to_string().contains("12x12"));
        let tiny = RgbImage::new(8, 8, vec![0; 8 * 8 * 3]).unwrap();
        assert!(ssim(&tiny, &tiny)
            .unwrap_err()
            .to_string()
            .contains("11x11"));
    }
}
