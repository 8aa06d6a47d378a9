//! PASCAL VOC's colour palette, and masks written as colour PNGs and overlays.
use std::path::Path;

use voc_classify::Rgb8Image;

use crate::error::{Result, SegmentError};

/// The 21 class names, 0 = background.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
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

/// VOC's colour of class index `c` (the bit-interleaving colour map of the VOCdevkit; 255 = void is
/// (224, 224, 192)).
pub fn voc_color(c: u8) -> [u8; 3] {
    let mut rgb = [0u8; 3];
    let mut label = c;
    for shift in (0..8).rev() {
        for (channel, value) in rgb.iter_mut().enumerate() {
            *value |= ((label >> channel) & 1) << shift;
        }
        label >>= 3;
    }
    rgb
}

/// A class-index mask (`height x width`, row-major) painted with the VOC palette.
pub fn colorize(mask: &[u8], height: usize, width: usize) -> Result<Rgb8Image> {
    if mask.len() != height * width {
        return Err(SegmentError::BadArgument(format!(
            "mask has {} pixels, expected {height}x{width}",
            mask.len()
        )));
    }
    let lut: Vec<[u8; 3]> = (0..=255u8).map(voc_color).collect();
    let data = mask.iter().flat_map(|&c| lut[c as usize]).collect();
    Ok(Rgb8Image::new(height, width, data)?)
}

/// The photo with the coloured mask blended over its non-background pixels (`alpha` of the colour).
pub fn overlay(image: &Rgb8Image, mask: &[u8], alpha: f32) -> Result<Rgb8Image> {
    let colors = colorize(mask, image.height, image.width)?;
    let alpha = alpha.clamp(0.0, 1.0);
    let mut data = image.data.clone();
    for (i, &class) in mask.iter().enumerate() {
        if class != 0 {
            for ch in 0..3 {
                let p = &mut data[3 * i + ch];
                *p = ((1.0 - alpha) * *p as f32 + alpha * colors.data[3 * i + ch] as f32).round()
                    as u8;
            }
        }
    }
    Ok(Rgb8Image::new(image.height, image.width, data)?)
}

/// Writes an RGB image as PNG atomically (a temporary file in the same folder, then a rename).
pub fn write_png(image: &Rgb8Image, path: &Path) -> Result<()> {
    let io_err = |message: String| SegmentError::Io {
        path: path.to_path_buf(),
        message,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io_err("not a file path".into()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let buffer =
        image::RgbImage::from_raw(image.width as u32, image.height as u32, image.data.clone())
            .ok_or_else(|| io_err("image buffer does not match its size".into()))?;
    buffer
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| io_err(format!("cannot write PNG: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(format!("cannot move the written file into place: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_matches_vocdevkit() {
        assert_eq!(voc_color(0), [0, 0, 0]);
        assert_eq!(voc_color(1), [128, 0, 0]);
        assert_eq!(voc_color(3), [128, 128, 0]);
        assert_eq!(voc_color(15), [192, 128, 128]);
        assert_eq!(voc_color(20), [0, 64, 128]);
        assert_eq!(voc_color(255), [224, 224, 192]);
    }
}
