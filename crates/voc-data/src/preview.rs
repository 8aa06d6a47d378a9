//! Pictures of the data: masks in the VOC palette, and a grid with one example per class.
use std::path::Path;

use image::RgbImage;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

use crate::augment::{
    warp_image, warp_mask, AugmentConfig, AugmentParams, Interpolation, ResizeMode,
};
use crate::competition::{mask_labels, SplitIndex};
use voc_core::PALETTE;

use crate::error::{DataError, Result};
use crate::font;
use crate::{CLASS_NAMES, NUM_CLASSES, VOID};

/// A mask as an HxWx3 image in the VOC palette.
pub fn colorize_mask(mask: ArrayView2<u8>) -> Array3<u8> {
    let (h, w) = mask.dim();
    Array3::from_shape_fn((h, w, 3), |(y, x, c)| PALETTE[mask[[y, x]] as usize][c])
}

/// An HxWx3 array as an image-crate RGB image.
pub fn to_rgb_image(image: ArrayView3<u8>) -> RgbImage {
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let data = image
        .as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset()
        .0;
    RgbImage::from_raw(w as u32, h as u32, data).expect("length is h*w*3")
}

/// Writes an RGB image as PNG, atomically.
pub fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    let (w, h) = image.dimensions();
    let image = voc_core::RgbImage::new(h as usize, w as usize, image.as_raw().clone())?;
    Ok(image.write_png(path)?)
}

/// The image scaled down (triangle filter) to at most `max_width` pixels wide, keeping its aspect;
/// narrower images are returned as they are.
pub fn thumbnail(image: &voc_core::RgbImage, max_width: usize) -> Result<voc_core::RgbImage> {
    if image.width() <= max_width || max_width == 0 {
        return Ok(image.clone());
    }
    let rgb = RgbImage::from_raw(
        image.width() as u32,
        image.height() as u32,
        image.as_bytes().to_vec(),
    )
    .expect("length is h*w*3");
    let h = (image.height() * max_width / image.width()).max(1);
    let small = image::imageops::resize(
        &rgb,
        max_width as u32,
        h as u32,
        image::imageops::FilterType::Triangle,
    );
    Ok(voc_core::RgbImage::new(h, max_width, small.into_raw())?)
}

/// The image encoded as a baseline JPEG of `quality` (1-100): photos and galleries in a page at a
/// fraction of a PNG's size.
pub fn to_jpeg(image: &voc_core::RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(
        std::io::Cursor::new(&mut bytes),
        quality.clamp(1, 100),
    )
    .encode(
        image.as_bytes(),
        image.width() as u32,
        image.height() as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| DataError::BadArgument(format!("cannot encode a JPEG: {e}")))?;
    Ok(bytes)
}

/// Fits an image (bilinear) and its mask (nearest) into `size` x `size`, outside white.
fn fit(
    image: ArrayView3<u8>,
    mask: Option<ArrayView2<u8>>,
    size: usize,
) -> (Array3<u8>, Option<Array3<u8>>) {
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let config = AugmentConfig::eval(ResizeMode::Letterbox {
        height: size,
        width: size,
    });
    let forward = config.affine(h, w, &AugmentParams::identity());
    let img = warp_image(
        image,
        &forward,
        size,
        size,
        Interpolation::Bilinear,
        [255; 3],
    );
    let mask = mask.map(|m| {
        let warped = warp_mask(m, &forward, size, size);
        let inside = warp_mask(Array2::<u8>::zeros((h, w)).view(), &forward, size, size);
        let mut coloured = colorize_mask(warped.view());
        for ((y, x), &v) in inside.indexed_iter() {
            if v == VOID {
                for c in 0..3 {
                    coloured[[y, x, c]] = 255;
                }
            }
        }
        coloured
    });
    (img, mask)
}

fn blit(canvas: &mut RgbImage, tile: &Array3<u8>, x0: usize, y0: usize) {
    for ((y, x, c), &v) in tile.indexed_iter() {
        let p = canvas.get_pixel_mut((x0 + x) as u32, (y0 + y) as u32);
        p.0[c] = v;
    }
}

/// The example chosen for each class shown in a preview.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreviewEntry {
    /// The class name, from [`CLASS_NAMES`].
    pub class: &'static str,
    /// The Id of the image shown for it.
    pub id: String,
}

/// A grid with, for every class present in the split, the first image (CSV order) that contains it:
/// the class name as title, the image, and below it the mask in the VOC palette (when the split has
/// masks). Each tile is `cell` x `cell` pixels (at least 32), `columns` tiles per row. Returns the grid
/// and the examples shown; a split with nothing to show is [`DataError::BadArgument`].
pub fn class_grid(
    index: &SplitIndex,
    cell: usize,
    columns: usize,
) -> Result<(RgbImage, Vec<PreviewEntry>)> {
    let cell = cell.max(32);
    let mut chosen: Vec<Option<usize>> = vec![None; NUM_CLASSES];
    for (i, id) in index.ids.iter().enumerate() {
        if chosen.iter().all(Option::is_some) {
            break;
        }
        let labels = match (&index.labels, index.has_masks) {
            (_, true) => mask_labels(&index.read_mask(id)?),
            (Some(l), false) => l[i],
            (None, false) => {
                return Err(DataError::BadArgument(format!(
                    "split '{}' has neither labels nor masks to preview",
                    index.name
                )))
            }
        };
        for c in labels.iter() {
            chosen[c].get_or_insert(i);
        }
    }
    let entries: Vec<(usize, usize)> = chosen
        .iter()
        .enumerate()
        .filter_map(|(c, i)| i.map(|i| (c, i)))
        .collect();
    if entries.is_empty() {
        return Err(DataError::BadArgument(format!(
            "split '{}' has no labelled objects to preview",
            index.name
        )));
    }
    let scale = if cell >= 200 { 3 } else { 2 };
    let (margin, title_h) = (8, font::text_height(scale) + 8);
    let rows_per_tile = if index.has_masks { 2 } else { 1 };
    let tile_w = cell + margin;
    let tile_h = title_h + rows_per_tile * cell + (rows_per_tile - 1) * 4 + margin;
    let columns = columns.clamp(1, entries.len());
    let grid_rows = entries.len().div_ceil(columns);
    let mut canvas = RgbImage::from_pixel(
        (columns * tile_w + margin) as u32,
        (grid_rows * tile_h + margin) as u32,
        image::Rgb([255, 255, 255]),
    );
    let mut shown = Vec::new();
    for (k, &(class, i)) in entries.iter().enumerate() {
        let id = &index.ids[i];
        let image = index.read_image(id)?;
        let mask = if index.has_masks {
            Some(index.read_mask(id)?)
        } else {
            None
        };
        let (img, coloured) = fit(image.view(), mask.as_ref().map(|m| m.view()), cell);
        let (x0, y0) = (
            margin + (k % columns) * tile_w,
            margin + (k / columns) * tile_h,
        );
        let title = CLASS_NAMES[class];
        let tx = x0 + cell.saturating_sub(font::text_width(title, scale)) / 2;
        font::draw_text(&mut canvas, tx, y0, title, scale, [0, 0, 0]);
        blit(&mut canvas, &img, x0, y0 + title_h);
        if let Some(coloured) = coloured {
            blit(&mut canvas, &coloured, x0, y0 + title_h + cell + 4);
        }
        shown.push(PreviewEntry {
            class: title,
            id: id.clone(),
        });
    }
    Ok((canvas, shown))
}

/// One picture of a [`captioned_grid`] with the lines of text under it.
#[derive(Debug, Clone)]
pub struct Tile {
    /// The picture.
    pub image: voc_core::RgbImage,
    /// Lines under the picture (the built-in 5x7 font: capitals, digits, a little punctuation).
    pub caption: Vec<String>,
}

/// Rows of captioned pictures on a white canvas, each row as tall as its tallest tile, each column as
/// wide as its widest picture (or caption), with `title` above everything: galleries such as an
/// attack's original | perturbation | adversarial. An empty grid is an error.
///
/// ```
/// use voc_core::RgbImage;
/// use voc_data::preview::{captioned_grid, Tile};
/// let tile = |v: u8| Tile { image: RgbImage::new(20, 30, vec![v; 20 * 30 * 3]).unwrap(), caption: vec!["CAT 0.93".into()] };
/// let grid = captioned_grid("EPS 4", &[vec![tile(0), tile(128)], vec![tile(255)]])?;
/// assert!(grid.width() >= 2 * 30 && grid.height() >= 2 * 20);
/// # Ok::<(), voc_data::DataError>(())
/// ```
pub fn captioned_grid(title: &str, rows: &[Vec<Tile>]) -> Result<voc_core::RgbImage> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    if columns == 0 {
        return Err(DataError::BadArgument(
            "a captioned grid needs at least one tile".into(),
        ));
    }
    let (scale, margin, gap) = (2, 10, 4);
    let line = font::text_height(scale) + 4;
    let col_w: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|t| {
                    t.caption
                        .iter()
                        .map(|l| font::text_width(l, scale))
                        .max()
                        .unwrap_or(0)
                        .max(t.image.width())
                })
                .max()
                .unwrap_or(0)
        })
        .collect();
    let row_h: Vec<usize> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|t| t.image.height() + gap + t.caption.len() * line)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let title_h = if title.is_empty() { 0 } else { line + gap };
    let width = margin + col_w.iter().map(|w| w + margin).sum::<usize>();
    let height = margin + title_h + row_h.iter().map(|h| h + margin).sum::<usize>();
    let mut canvas =
        image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255, 255, 255]));
    font::draw_text(&mut canvas, margin, margin, title, scale, [0, 0, 0]);
    let mut y0 = margin + title_h;
    for (r, row) in rows.iter().enumerate() {
        let mut x0 = margin;
        for (c, tile) in row.iter().enumerate() {
            let picture = Array3::from_shape_vec(
                (tile.image.height(), tile.image.width(), 3),
                tile.image.as_bytes().to_vec(),
            )
            .map_err(|e| DataError::BadArgument(format!("tile picture: {e}")))?;
            blit(&mut canvas, &picture, x0, y0);
            let mut ty = y0 + tile.image.height() + gap;
            for text in &tile.caption {
                font::draw_text(&mut canvas, x0, ty, text, scale, [0, 0, 0]);
                ty += line;
            }
            x0 += col_w[c] + margin;
        }
        y0 += row_h[r] + margin;
    }
    let (w, h) = (canvas.width() as usize, canvas.height() as usize);
    Ok(voc_core::RgbImage::new(h, w, canvas.into_raw())?)
}
