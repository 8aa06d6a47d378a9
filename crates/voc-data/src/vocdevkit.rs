//! The VOCdevkit layout (`JPEGImages/*.jpg`, `SegmentationClass/*.png` palette images with void = 255,
//! `ImageSets/Segmentation/{train,val}.txt`) and its conversion to the competition layout.
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3};
use rayon::prelude::*;

use crate::competition::{mask_labels, Sample};
use crate::error::{DataError, Result};
use crate::{io, npy, LabelSet, CLASS_NAMES, NUM_CLASSES, VOID};

/// A VOCdevkit year folder (the one holding `JPEGImages/`).
///
/// ```
/// use voc_data::VocDevkit;
///
/// // One image pair of the shared sample, vendored in this crate's test data.
/// let devkit = VocDevkit::open("tests/data/vocdevkit".as_ref())?;
/// assert_eq!(devkit.image_set("train")?.len(), 6);
/// let sample = devkit.read_sample("2007_000063", false)?; // void (255) becomes background
/// assert_eq!(sample.image.dim(), (375, 500, 3));
/// assert_eq!(sample.labels.unwrap().names().collect::<Vec<_>>(), ["chair", "dog"]);
/// # Ok::<(), voc_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct VocDevkit {
    root: PathBuf,
}

impl VocDevkit {
    /// Opens `root`, or `root/VOC2012` / `root/VOCdevkit/VOC2012` when those hold `JPEGImages/`.
    pub fn open(root: &Path) -> Result<Self> {
        let candidates = [
            root.to_path_buf(),
            root.join("VOC2012"),
            root.join("VOCdevkit").join("VOC2012"),
        ];
        candidates
            .iter()
            .find(|c| c.join("JPEGImages").is_dir())
            .map(|c| Self { root: c.clone() })
            .ok_or_else(|| DataError::Missing {
                path: root.to_path_buf(),
                what: "VOCdevkit folder (expected JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/)".into(),
            })
    }

    /// The year folder found by [`VocDevkit::open`] (the one holding `JPEGImages/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `JPEGImages/{name}.jpg` (whether or not it exists).
    pub fn image_path(&self, name: &str) -> PathBuf {
        self.root.join("JPEGImages").join(format!("{name}.jpg"))
    }

    /// `SegmentationClass/{name}.png` (whether or not it exists).
    pub fn mask_path(&self, name: &str) -> PathBuf {
        self.root
            .join("SegmentationClass")
            .join(format!("{name}.png"))
    }

    /// Image names listed in `ImageSets/Segmentation/{set}.txt`, in file order.
    pub fn image_set(&self, set: &str) -> Result<Vec<String>> {
        let path = self
            .root
            .join("ImageSets")
            .join("Segmentation")
            .join(format!("{set}.txt"));
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let mut names = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.is_empty() {
                continue;
            }
            if name.contains(['/', '\\']) {
                return Err(DataError::BadCsvRow {
                    path,
                    line: i + 1,
                    msg: format!("'{name}' is not an image name"),
                });
            }
            names.push(name.to_string());
        }
        Ok(names)
    }

    /// Decodes `JPEGImages/{name}.jpg` to HxWx3 uint8.
    pub fn read_image(&self, name: &str) -> Result<Array3<u8>> {
        decode_rgb(&self.image_path(name))
    }

    /// Reads `SegmentationClass/{name}.png` as class indices (palette index or grey level), void 255.
    pub fn read_mask(&self, name: &str) -> Result<Array2<u8>> {
        read_index_png(&self.mask_path(name))
    }

    /// Image, mask (void mapped to 0 unless `keep_void`) and labels derived from the mask, with `name`
    /// as Id; [`DataError::SizeMismatch`] when the two sizes differ.
    pub fn read_sample(&self, name: &str, keep_void: bool) -> Result<Sample> {
        let image = self.read_image(name)?;
        let mut mask = self.read_mask(name)?;
        let (ih, iw) = (image.shape()[0], image.shape()[1]);
        if mask.dim() != (ih, iw) {
            return Err(DataError::SizeMismatch {
                image: self.image_path(name),
                mask: self.mask_path(name),
                image_h: ih,
                image_w: iw,
                mask_h: mask.dim().0,
                mask_w: mask.dim().1,
            });
        }
        if !keep_void {
            mask.mapv_inplace(|v| if v == VOID { 0 } else { v });
        }
        let labels = mask_labels(&mask);
        Ok(Sample {
            id: name.to_string(),
            image,
            mask: Some(mask),
            labels: Some(labels),
        })
    }
}

/// Decodes a JPEG or PNG file to HxWx3 uint8 RGB.
pub fn decode_rgb(path: &Path) -> Result<Array3<u8>> {
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let decoded = reader.decode().map_err(|e| DataError::BadImage {
        path: path.to_path_buf(),
        msg: format!("cannot decode: {e}"),
    })?;
    let rgb = decoded.into_rgb8();
    let (w, h) = rgb.dimensions();
    Array3::from_shape_vec((h as usize, w as usize, 3), rgb.into_raw()).map_err(|e| {
        DataError::BadImage {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    })
}

/// The most pixels a mask PNG may claim (8192 x 8192): the header is checked before any buffer is
/// allocated, so a hostile file cannot make voc allocate gigabytes.
pub const MAX_MASK_PIXELS: usize = 1 << 26;

/// Reads an 8-bit palette or greyscale PNG as raw indices; values must be 0..=20 or 255.
pub fn read_index_png(path: &Path) -> Result<Array2<u8>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let bad = |msg: String| DataError::BadImage {
        path: path.to_path_buf(),
        msg,
    };
    let mut decoder = png::Decoder::new(BufReader::new(file));
    // Keep palette indices as they are: they are the class ids.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("cannot decode PNG: {e}")))?;
    let (color, depth) = reader.output_color_type();
    if !matches!(color, png::ColorType::Indexed | png::ColorType::Grayscale)
        || depth != png::BitDepth::Eight
    {
        return Err(bad(format!("mask PNG is {color:?} {depth:?}; expected an 8-bit palette (or greyscale) image of class ids")));
    }
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w.saturating_mul(h) > MAX_MASK_PIXELS {
        return Err(bad(format!(
            "a {w}x{h} mask is larger than voc reads ({MAX_MASK_PIXELS} pixels); VOC masks are about 500x500"
        )));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("PNG too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("cannot decode PNG: {e}")))?;
    let (w, h, stride) = (info.width as usize, info.height as usize, info.line_size);
    let mut out = Vec::with_capacity(w * h);
    for row in buf.chunks(stride).take(h) {
        out.extend_from_slice(&row[..w]);
    }
    if let Some((i, &v)) = out
        .iter()
        .enumerate()
        .find(|(_, &v)| !voc_core::is_mask_value(v))
    {
        return Err(DataError::BadMaskValue {
            path: path.to_path_buf(),
            value: v as i64,
            row: i / w,
            col: i % w,
        });
    }
    Array2::from_shape_vec((h, w), out).map_err(|e| bad(e.to_string()))
}

/// Options of [`convert`].
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Keep VOC's void (255) in the masks; by default it becomes background (0) as in the competition.
    pub keep_void: bool,
    /// Image set for the train split (default `train`).
    pub train_set: Option<String>,
    /// Image set for the test split (default `val`).
    pub test_set: Option<String>,
    /// Write the test labels as -1, exactly like the competition's `test_set.csv`. By default they are
    /// written (from the masks) so the converted test split can be scored locally.
    pub hide_test_labels: bool,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    /// The output folder.
    pub out: PathBuf,
    /// Images written to `train/`.
    pub train: usize,
    /// Images written to `test/`.
    pub test: usize,
    /// (split, Id, VOC image name) in write order.
    pub ids: Vec<(String, String, String)>,
}

/// Writes the competition layout for a VOCdevkit folder: `train` from the train image set, `test` from
/// the val set, Ids 0.. in list order, labels from the masks. `test/seg/` and the test labels are written
/// too so the test split can be scored locally (`hide_test_labels` writes -1 labels as the competition).
/// `{split}/voc_names.csv` maps each Id to its VOC image name. `progress(done, total)` is called per image.
pub fn convert(
    devkit: &VocDevkit,
    out: &Path,
    options: &ConvertOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ConvertReport> {
    let train_names = devkit.image_set(options.train_set.as_deref().unwrap_or("train"))?;
    let test_names = devkit.image_set(options.test_set.as_deref().unwrap_or("val"))?;
    let total = train_names.len() + test_names.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut ids = Vec::new();
    for (split, names) in [("train", &train_names), ("test", &test_names)] {
        let dir = out.join(split);
        io::create_dir_all(&dir.join("img"))?;
        io::create_dir_all(&dir.join("seg"))?;
        let labels: Vec<LabelSet> = names
            .par_iter()
            .enumerate()
            .map(|(i, name)| {
                let sample = devkit.read_sample(name, options.keep_void)?;
                let (h, w) = (sample.image.shape()[0], sample.image.shape()[1]);
                let image = sample.image.as_standard_layout();
                npy::write_u8(
                    &dir.join("img").join(format!("{split}_{i}.npy")),
                    &[h, w, 3],
                    image.as_slice().expect("standard"),
                )?;
                let mask = sample.mask.expect("read_sample returns a mask");
                npy::write_u8(
                    &dir.join("seg").join(format!("{split}_{i}.npy")),
                    &[h, w],
                    mask.as_standard_layout().as_slice().expect("standard"),
                )?;
                progress(
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                    total,
                );
                Ok(sample.labels.expect("read_sample derives labels"))
            })
            .collect::<Result<_>>()?;
        let mut csv = format!("Id,{}\n", CLASS_NAMES.join(","));
        for (i, l) in labels.iter().enumerate() {
            let values: Vec<String> = if split == "train" || !options.hide_test_labels {
                l.to_flags().iter().map(|v| v.to_string()).collect()
            } else {
                vec!["-1".into(); NUM_CLASSES]
            };
            csv += &format!("{i},{}\n", values.join(","));
        }
        voc_core::write_atomic(&dir.join(format!("{split}_set.csv")), |f| {
            f.write_all(csv.as_bytes())
        })?;
        let mut map = String::from("Id,name\n");
        for (i, name) in names.iter().enumerate() {
            map += &format!("{i},{name}\n");
            ids.push((split.to_string(), i.to_string(), name.clone()));
        }
        voc_core::write_atomic(&dir.join("voc_names.csv"), |f| f.write_all(map.as_bytes()))?;
    }
    Ok(ConvertReport {
        out: out.to_path_buf(),
        train: train_names.len(),
        test: test_names.len(),
        ids,
    })
}
