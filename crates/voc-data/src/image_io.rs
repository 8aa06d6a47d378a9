//! Reading a photo of any supported format as a [`voc_core::RgbImage`], and the conversions between it
//! and the HxWx3 arrays the augmentation works on.
use std::path::Path;

use ndarray::{Array, Array3, ArrayView3, Dimension};
use voc_core::RgbImage;

use crate::error::{DataError, Result};
use crate::{npy, vocdevkit};

/// Reads `.png`, `.jpg`/`.jpeg` (any colour type, converted to RGB) or `.npy` (HxWx3 uint8, the
/// competition's images) by the file's extension (any case). An unknown extension or an undecodable
/// file is [`DataError::BadImage`]; a missing file [`DataError::Missing`]; a `.npy` of another dtype
/// or shape [`DataError::BadArray`].
///
/// ```
/// use voc_data::read_rgb_image;
///
/// // The same VOC photo as a competition array and as the original JPEG.
/// let array = read_rgb_image("../../assets/voc-sample/train/img/train_5.npy".as_ref())?;
/// let jpeg = read_rgb_image("tests/data/vocdevkit/JPEGImages/2007_000063.jpg".as_ref())?;
/// assert_eq!((array.height(), array.width()), (375, 500));
/// assert_eq!((jpeg.height(), jpeg.width()), (375, 500));
/// assert!(read_rgb_image("photo.gif".as_ref()).is_err());
/// # Ok::<(), voc_data::DataError>(())
/// ```
pub fn read_rgb_image(path: &Path) -> Result<RgbImage> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let array = match ext.as_str() {
        "npy" => npy::read_image(path)?,
        "png" | "jpg" | "jpeg" => vocdevkit::decode_rgb(path)?,
        _ => {
            return Err(DataError::BadImage {
                path: path.to_path_buf(),
                msg: "unknown image type: expected .png, .jpg, .jpeg or .npy (HxWx3 uint8)".into(),
            })
        }
    };
    rgb_from_array(array).map_err(|e| DataError::BadImage {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// An HxWx3 array as an [`RgbImage`] (no copy when the array is in standard layout); another shape,
/// or an empty image, is an error.
pub fn rgb_from_array(array: Array3<u8>) -> Result<RgbImage> {
    let (h, w, c) = array.dim();
    if c != 3 {
        return Err(DataError::BadArgument(format!(
            "an RGB image array has shape HxWx3, got {h}x{w}x{c}"
        )));
    }
    Ok(RgbImage::new(h, w, into_row_major(array))?)
}

/// The elements of `array` in row-major order: its own buffer when it is in standard layout (trimmed
/// to the elements a sliced array still shows), a copy otherwise.
pub(crate) fn into_row_major<D: Dimension>(array: Array<u8, D>) -> Vec<u8> {
    if !array.is_standard_layout() {
        return array.iter().copied().collect();
    }
    let len = array.len();
    let (mut raw, offset) = array.into_raw_vec_and_offset();
    let start = offset.unwrap_or(0);
    raw.truncate(start + len);
    raw.drain(..start);
    raw
}

/// An [`RgbImage`] seen as an HxWx3 array.
pub fn rgb_view(image: &RgbImage) -> ArrayView3<'_, u8> {
    ArrayView3::from_shape((image.height(), image.width(), 3), image.as_bytes())
        .expect("an RgbImage holds height x width x 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_images_convert_both_ways() {
        let array = Array3::from_shape_fn((2, 3, 3), |(y, x, c)| (y * 9 + x * 3 + c) as u8);
        let image = rgb_from_array(array.clone()).unwrap();
        assert_eq!(image.pixel(1, 2), [15, 16, 17]);
        assert_eq!(rgb_view(&image), array.view());
        let transposed = array.clone().permuted_axes([1, 0, 2]);
        let image = rgb_from_array(transposed.to_owned()).unwrap();
        assert_eq!((image.height(), image.width()), (3, 2));
        assert_eq!(image.pixel(2, 1), [15, 16, 17]);
        assert!(rgb_from_array(Array3::zeros((2, 2, 4))).is_err());
    }

    #[test]
    fn row_major_keeps_only_the_elements_a_sliced_array_shows() {
        let array = Array3::from_shape_fn((4, 2, 3), |(y, x, c)| (y * 6 + x * 3 + c) as u8);
        let mut rows = array.clone();
        rows.slice_axis_inplace(ndarray::Axis(0), ndarray::Slice::from(1..3));
        assert!(rows.is_standard_layout());
        assert_eq!(into_row_major(rows), (6..18).collect::<Vec<u8>>());
        let mut columns = array.clone();
        columns.slice_axis_inplace(ndarray::Axis(1), ndarray::Slice::from(1..));
        let expected: Vec<u8> = columns.iter().copied().collect();
        assert_eq!(into_row_major(columns), expected);
        assert_eq!(
            into_row_major(array.clone()),
            array.iter().copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn unknown_extensions_are_named() {
        let err = read_rgb_image(Path::new("photo.gif"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("photo.gif") && err.contains(".npy"), "{err}");
    }
}
