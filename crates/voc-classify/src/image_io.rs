//! Reading a photo (PNG, JPEG, or the competition's `.npy` HxWx3 uint8 arrays) as RGB bytes, resizing
//! it, and turning it into a network input.
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{ClassifyError, Result};

/// An RGB image, row-major `height x width x 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

fn bad_image(path: &Path, message: impl Into<String>) -> ClassifyError {
    ClassifyError::BadImage {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Rgb8Image {
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        if height == 0 || width == 0 || data.len() != height * width * 3 {
            return Err(ClassifyError::BadArgument(format!(
                "an RGB image of {height}x{width} needs {} bytes, got {}",
                height * width * 3,
                data.len()
            )));
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// Reads `.png`/`.jpg`/`.jpeg` (any colour type, converted to RGB) or `.npy` (HxWx3 uint8).
    pub fn read(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if !path.is_file() {
            return Err(bad_image(path, "no such file"));
        }
        match ext.as_str() {
            "npy" => {
                let array: ndarray::Array3<u8> = ndarray_npy::read_npy(path).map_err(|e| {
                    bad_image(
                        path,
                        format!("expected a .npy array of shape HxWx3 and dtype uint8: {e}"),
                    )
                })?;
                let (h, w, c) = array.dim();
                if c != 3 || h == 0 || w == 0 {
                    return Err(bad_image(
                        path,
                        format!("expected shape HxWx3 (uint8), got {h}x{w}x{c}"),
                    ));
                }
                let data = array.as_standard_layout().iter().copied().collect();
                Self::new(h, w, data)
            }
            "png" | "jpg" | "jpeg" => {
                let img = image::open(path)
                    .map_err(|e| bad_image(path, format!("cannot decode: {e}")))?
                    .to_rgb8();
                let (w, h) = img.dimensions();
                Self::new(h as usize, w as usize, img.into_raw())
            }
            _ => Err(bad_image(
                path,
                "unknown image type: expected .png, .jpg, .jpeg or .npy (HxWx3 uint8)",
            )),
        }
    }

    /// Bilinear resize with anti-aliasing when shrinking (the triangle filter widened by the scale, as
    /// PIL's `Image.resize(..., BILINEAR)`).
    pub fn resize(&self, height: usize, width: usize) -> Result<Self> {
        if (height, width) == (self.height, self.width) {
            return Ok(self.clone());
        }
        let src =
            image::RgbImage::from_raw(self.width as u32, self.height as u32, self.data.clone())
                .ok_or_else(|| {
                    ClassifyError::BadArgument("image buffer does not match its size".into())
                })?;
        let out = image::imageops::resize(
            &src,
            width as u32,
            height as u32,
            image::imageops::FilterType::Triangle,
        );
        Self::new(height, width, out.into_raw())
    }

    /// `1 x 3 x H x W` f32 pixel values in 0..255.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let t = Tensor::from_slice(&self.data, (self.height, self.width, 3), device)?;
        Ok(t.permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(candle_core::DType::F32)?)
    }
}
