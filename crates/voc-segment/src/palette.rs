//! PASCAL VOC's colour palette, and masks written as colour PNGs and overlays.
use std::path::Path;

use voc_classify::Rgb8Image;
use voc_tensor::VocError;

use crate::error::{Result, SegmentError};

pub use voc_data::preview::voc_color;

/// The 21 class names, 0 = background: "background", then [`voc_data::VOC_CLASSES`] (mask value `c`
/// is class `c`).
pub const VOC_CLASSES: [&str; 21] = {
    let mut names = ["background"; 21];
    let mut c = 0;
    while c < voc_data::NUM_CLASSES {
        names[c + 1] = voc_data::VOC_CLASSES[c];
        c += 1;
    }
    names
};

/// A class-index mask (`height x width`, row-major) painted with the VOC palette.
pub fn colorize(mask: &[u8], height: usize, width: usize) -> Result<Rgb8Image> {
    if mask.len() != height * width {
        return Err(SegmentError::BadArgument(format!(
            "mask has {} pixels, expected {height}x{width}",
            mask.len()
        )));
    }
    let palette = voc_data::preview::voc_palette();
    let data = mask.iter().flat_map(|&c| palette[c as usize]).collect();
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
    let buffer =
        image::RgbImage::from_raw(image.width as u32, image.height as u32, image.data.clone())
            .ok_or_else(|| io_err("image buffer does not match its size".into()))?;
    let mut png = Vec::new();
    buffer
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| io_err(format!("cannot encode PNG: {e}")))?;
    voc_tensor::checkpoint::write_atomic(path, &png).map_err(|e| match e {
        VocError::Io { source, .. } => io_err(format!("cannot write PNG: {source}")),
        VocError::BadFile { .. } => io_err("not a file path".into()),
        other => other.into(),
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

    #[test]
    fn class_names_are_background_then_the_vocdevkit_order() {
        assert_eq!(VOC_CLASSES[0], "background");
        assert_eq!(VOC_CLASSES[1], "aeroplane");
        assert_eq!(VOC_CLASSES[12], "dog");
        assert_eq!(VOC_CLASSES[15], "person");
        assert_eq!(VOC_CLASSES[20], "tvmonitor");
        assert_eq!(VOC_CLASSES[1..], voc_data::VOC_CLASSES);
    }
}
