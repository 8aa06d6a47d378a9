//! An RGB photo and a class mask as plain row-major bytes, with the conversions every crate needs:
//! the labels a mask shows, a mask painted in the VOC palette, an overlay, PNG output.
use std::path::Path;

use crate::atomic::write_atomic;
use crate::classes::{BACKGROUND, NUM_CLASSES};
use crate::error::{CoreError, Result};
use crate::labels::LabelSet;
use crate::palette::PALETTE;

/// An RGB image: `height x width x 3` bytes in row-major order, never empty.
///
/// ```
/// let image = voc_core::RgbImage::new(1, 2, vec![255, 0, 0, 0, 0, 255])?;
/// assert_eq!((image.height(), image.width()), (1, 2));
/// assert_eq!(image.pixel(0, 1), [0, 0, 255]);
/// # Ok::<(), voc_core::CoreError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    height: usize,
    width: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// The image of `height x width` pixels from its `height * width * 3` bytes.
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        check_size(
            "an RGB image",
            "bytes (height x width x 3",
            3,
            height,
            width,
            data.len(),
        )?;
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The bytes, `height x width x 3`, row-major.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, given up.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The colour at row `y`, column `x` (panics outside the image, like slice indexing).
    pub fn pixel(&self, y: usize, x: usize) -> [u8; 3] {
        assert!(
            y < self.height && x < self.width,
            "pixel ({y}, {x}) outside the image"
        );
        let i = 3 * (y * self.width + x);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// The image encoded as an 8-bit RGB PNG.
    pub fn to_png(&self) -> std::result::Result<Vec<u8>, png::EncodingError> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.data)?;
        writer.finish()?;
        Ok(bytes)
    }

    /// Writes the image as a PNG file, atomically.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let bytes = self.to_png().map_err(|source| CoreError::Png {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomic(path, |f| std::io::Write::write_all(f, &bytes))
    }
}

/// A class mask: `height x width` mask values in row-major order (0 background, 1..=20 the classes,
/// [`crate::VOID`] not counted), never empty.
///
/// ```
/// use voc_core::{Mask, VOID};
/// let mask = Mask::new(2, 2, vec![0, 12, 12, VOID])?;
/// assert_eq!(mask.labels().names().collect::<Vec<_>>(), ["dog"]);
/// assert_eq!(mask.colorize().pixel(0, 1), voc_core::PALETTE[12]);
/// # Ok::<(), voc_core::CoreError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    height: usize,
    width: usize,
    data: Vec<u8>,
}

impl Mask {
    /// Writes the mask as an 8-bit greyscale PNG of its values (lossless, small), atomically.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        let encode = |bytes: &mut Vec<u8>| -> std::result::Result<(), png::EncodingError> {
            let mut encoder = png::Encoder::new(bytes, self.width as u32, self.height as u32);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&self.data)?;
            writer.finish()
        };
        encode(&mut bytes).map_err(|source| CoreError::Png {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomic(path, |f| std::io::Write::write_all(f, &bytes))
    }

    /// Reads a mask written by [`Mask::write_png`]: an 8-bit greyscale PNG whose values are mask values.
    pub fn read_png(path: &Path) -> Result<Self> {
        let bad = |msg: String| CoreError::BadArgument(format!("{}: {msg}", path.display()));
        let file = std::fs::File::open(path).map_err(|source| CoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::IDENTITY);
        let mut reader = decoder
            .read_info()
            .map_err(|e| bad(format!("not a PNG: {e}")))?;
        let info = reader.info();
        if info.color_type != png::ColorType::Grayscale || info.bit_depth != png::BitDepth::Eight {
            return Err(bad(format!(
                "expected an 8-bit greyscale mask PNG, found {:?} at {:?}",
                info.color_type, info.bit_depth
            )));
        }
        let (width, height) = (info.width as usize, info.height as usize);
        if width.saturating_mul(height) > 1 << 26 {
            return Err(bad(format!("{width}x{height} is too large a mask")));
        }
        let mut data = vec![0u8; width * height];
        reader
            .next_frame(&mut data)
            .map_err(|e| bad(format!("cannot decode: {e}")))?;
        Self::new(height, width, data)
    }

    /// The mask of `height x width` values.
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        check_size(
            "a mask",
            "values (height x width",
            1,
            height,
            width,
            data.len(),
        )?;
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The mask values, row-major.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// The mask values, given up.
    pub fn into_vec(self) -> Vec<u8> {
        self.data
    }

    /// The value at row `y`, column `x` (panics outside the mask, like slice indexing).
    pub fn get(&self, y: usize, x: usize) -> u8 {
        assert!(
            y < self.height && x < self.width,
            "pixel ({y}, {x}) outside the mask"
        );
        self.data[y * self.width + x]
    }

    /// How many pixels hold each of the 256 mask values.
    pub fn value_counts(&self) -> [u64; 256] {
        value_counts(&self.data)
    }

    /// The classes the mask shows: value `c + 1` present means class `c`; background and void are not
    /// classes.
    pub fn labels(&self) -> LabelSet {
        labels_with_at_least(&self.value_counts(), 0.0)
    }

    /// The classes covering at least `min_area` of the image (a fraction, 0..1) and at least one
    /// pixel: the labels of a predicted mask, where specks of a class are noise.
    pub fn labels_with_min_area(&self, min_area: f64) -> LabelSet {
        labels_with_at_least(&self.value_counts(), min_area * self.data.len() as f64)
    }

    /// The mask painted with the VOC palette (void in its cream colour).
    pub fn colorize(&self) -> RgbImage {
        let data = self
            .data
            .iter()
            .flat_map(|&v| PALETTE[v as usize])
            .collect();
        RgbImage {
            height: self.height,
            width: self.width,
            data,
        }
    }

    /// `image` with this mask's palette colour blended over its non-background pixels (`alpha` of the
    /// colour, clamped to 0..1); the sizes must match.
    pub fn overlay(&self, image: &RgbImage, alpha: f32) -> Result<RgbImage> {
        if (image.height, image.width) != (self.height, self.width) {
            return Err(CoreError::BadArgument(format!(
                "overlay of a {}x{} mask on a {}x{} image: the sizes must match",
                self.height, self.width, image.height, image.width
            )));
        }
        let alpha = alpha.clamp(0.0, 1.0);
        let mut data = image.data.clone();
        for (pixel, &value) in data.chunks_exact_mut(3).zip(&self.data) {
            if value != BACKGROUND {
                for (p, &colour) in pixel.iter_mut().zip(&PALETTE[value as usize]) {
                    *p = ((1.0 - alpha) * *p as f32 + alpha * colour as f32).round() as u8;
                }
            }
        }
        Ok(RgbImage {
            height: self.height,
            width: self.width,
            data,
        })
    }
}

/// Checks that `len` elements make a non-empty `height x width` grid of `per_pixel` values each.
fn check_size(
    what: &str,
    unit: &str,
    per_pixel: usize,
    height: usize,
    width: usize,
    len: usize,
) -> Result<()> {
    if height == 0 || width == 0 || len != height * width * per_pixel {
        return Err(CoreError::BadArgument(format!(
            "{what} of {height}x{width} needs {} {unit}, not empty), got {len}",
            height * width * per_pixel
        )));
    }
    Ok(())
}

/// How many of `values` hold each of the 256 mask values (any container of mask values: a slice, an
/// array's iterator).
pub fn value_counts<'a>(values: impl IntoIterator<Item = &'a u8>) -> [u64; 256] {
    let mut counts = [0u64; 256];
    for &v in values {
        counts[v as usize] += 1;
    }
    counts
}

/// The classes (value `c + 1` is class `c`) with at least one pixel and at least `min_pixels` pixels in
/// `counts`, as [`value_counts`] gives them; background and void are not classes.
pub fn labels_with_at_least(counts: &[u64; 256], min_pixels: f64) -> LabelSet {
    (0..NUM_CLASSES)
        .filter(|&c| {
            let n = counts[c + 1];
            n > 0 && n as f64 >= min_pixels
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VOID;

    #[test]
    fn sizes_are_checked() {
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::new(0, 2, vec![]).is_err());
        assert!(Mask::new(2, 3, vec![0; 5]).is_err());
        let err = Mask::new(2, 2, vec![0; 4])
            .unwrap()
            .overlay(&RgbImage::new(1, 1, vec![0; 3]).unwrap(), 0.5);
        assert!(err.unwrap_err().to_string().contains("sizes must match"));
    }

    #[test]
    fn labels_ignore_background_and_void_and_small_areas() {
        let mut values = vec![0u8; 100];
        values[..10].fill(15); // person, 10%
        values[10] = 3; // one boat pixel
        values[11] = VOID;
        let mask = Mask::new(10, 10, values).unwrap();
        assert_eq!(mask.labels().iter().collect::<Vec<_>>(), [2, 14]);
        assert_eq!(
            mask.labels_with_min_area(0.05).iter().collect::<Vec<_>>(),
            [14]
        );
        assert_eq!(mask.labels_with_min_area(0.0).len(), 2);
    }

    #[test]
    fn overlay_blends_objects_only() {
        let image = RgbImage::new(1, 2, vec![100; 6]).unwrap();
        let mask = Mask::new(1, 2, vec![0, 1]).unwrap();
        let out = mask.overlay(&image, 0.5).unwrap();
        assert_eq!(out.pixel(0, 0), [100, 100, 100]);
        assert_eq!(out.pixel(0, 1), [114, 50, 50]);
    }

    #[test]
    fn png_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let image = Mask::new(2, 3, vec![0, 1, 2, 3, 4, VOID])
            .unwrap()
            .colorize();
        image.write_png(&path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..info.buffer_size()], image.as_bytes());
    }
}
