//! A photo to a network input: anti-aliased bilinear resize, the `1 x 3 x H x W` layout, normalisation.
use candle_core::{Device, Tensor};
use voc_core::{Normalization, RgbImage};

use crate::error::{ClassifyError, Result};

/// `image` resized to `height x width`: bilinear, with anti-aliasing when shrinking (the triangle filter
/// widened by the scale, as PIL's `Image.resize(..., BILINEAR)`, which made the reference inputs). The
/// same size returns a copy; an empty target size is an error.
///
/// ```
/// use voc_classify::{resize_rgb, RgbImage};
/// let photo = RgbImage::new(375, 500, vec![200; 375 * 500 * 3])?;
/// let small = resize_rgb(&photo, 224, 224)?;
/// assert_eq!((small.height(), small.width(), small.pixel(100, 100)), (224, 224, [200; 3]));
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub fn resize_rgb(image: &RgbImage, height: usize, width: usize) -> Result<RgbImage> {
    if (height, width) == (image.height(), image.width()) {
        return Ok(image.clone());
    }
    let src = image::RgbImage::from_raw(
        image.width() as u32,
        image.height() as u32,
        image.as_bytes().to_vec(),
    )
    .ok_or_else(|| ClassifyError::BadArgument("image buffer does not match its size".into()))?;
    let out = image::imageops::resize(
        &src,
        width as u32,
        height as u32,
        image::imageops::FilterType::Triangle,
    );
    Ok(RgbImage::new(height, width, out.into_raw())?)
}

/// The image as `1 x 3 x H x W` f32 pixel values in 0..255.
pub fn rgb_to_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let t = Tensor::from_slice(image.as_bytes(), (image.height(), image.width(), 3), device)?;
    Ok(t.permute((2, 0, 1))?
        .unsqueeze(0)?
        .to_dtype(candle_core::DType::F32)?)
}

/// The network input `1 x 3 x H x W` for one photo: resized to `(height, width)` by [`resize_rgb`],
/// then normalised (`voc_tensor::preprocess::normalize`).
///
/// ```
/// use candle_core::Device;
/// use voc_classify::{image_input, Normalization, RgbImage};
/// let photo = RgbImage::new(30, 40, vec![0; 30 * 40 * 3])?;
/// let x = image_input(&photo, (16, 24), &Normalization::MINUS_ONE_TO_ONE, &Device::Cpu)?;
/// assert_eq!(x.dims(), [1, 3, 16, 24]);
/// assert_eq!(x.min_all()?.to_scalar::<f32>()?, -1.0); // black is -1
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn image_input(
    image: &RgbImage,
    (height, width): (usize, usize),
    normalization: &Normalization,
    device: &Device,
) -> Result<Tensor> {
    let pixels = rgb_to_tensor(&resize_rgb(image, height, width)?, device)?;
    Ok(voc_tensor::preprocess::normalize(&pixels, normalization)?)
}
