//! A second segmentation to sharpen the network's: SLIC superpixels (Achanta et al., 2012) computed on
//! the photo, and each superpixel given the class most of its pixels were predicted as. Superpixels
//! follow colour edges at full resolution, where the network's logits come from a stride-16 grid.
//!
//! ```
//! use voc_segment::refine::{slic, SlicParams};
//! use voc_segment::RgbImage;
//! // Left half dark, right half bright: no superpixel straddles the edge.
//! let (h, w) = (24, 32);
//! let data: Vec<u8> = (0..h * w).flat_map(|i| if i % w < 16 { [20; 3] } else { [230; 3] }).collect();
//! let photo = RgbImage::new(h, w, data)?;
//! let labels = slic(&photo, &SlicParams { region_size: 8, ..Default::default() });
//! for y in 0..h {
//!     assert_ne!(labels[y * w + 15], labels[y * w + 16]);
//! }
//! # Ok::<(), voc_core::CoreError>(())
//! ```
use voc_core::{Mask, RgbImage};

use crate::error::Result;

/// SLIC settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlicParams {
    /// Side of the initial square superpixels in pixels (the grid step `S`).
    pub region_size: usize,
    /// Weight of spatial distance against colour distance (CIELAB units per `S` pixels); higher gives
    /// more regular, less edge-following superpixels.
    pub compactness: f32,
    /// Assignment / update rounds.
    pub iterations: usize,
}

impl Default for SlicParams {
    fn default() -> Self {
        Self {
            region_size: 16,
            compactness: 10.0,
            iterations: 10,
        }
    }
}

/// sRGB (0..=255) to CIELAB under D65.
fn lab(rgb: [u8; 3]) -> [f32; 3] {
    let lin = |c: u8| {
        let c = f32::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f32| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// The superpixel of every pixel (row-major, labels `0..n`), each one 4-connected.
pub fn slic(image: &RgbImage, params: &SlicParams) -> Vec<u32> {
    let (h, w) = (image.height(), image.width());
    if h == 0 || w == 0 {
        return Vec::new();
    }
    let step = params.region_size.max(2);
    let pixels: Vec<[f32; 3]> = (0..h * w).map(|i| lab(image.pixel(i / w, i % w))).collect();
    let colour_dist = |a: &[f32; 3], b: &[f32; 3]| {
        (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
    };
    // Centres on the grid, each moved to the lowest colour gradient of its 3x3 neighbourhood so it
    // does not start on an edge.
    let gradient = |y: usize, x: usize| {
        let at = |y: usize, x: usize| &pixels[y.min(h - 1) * w + x.min(w - 1)];
        colour_dist(at(y, x + 1), at(y, x.saturating_sub(1)))
            + colour_dist(at(y + 1, x), at(y.saturating_sub(1), x))
    };
    let mut centres: Vec<[f32; 5]> = Vec::new();
    let mut y = step / 2;
    while y < h.max(step / 2 + 1) {
        let mut x = step / 2;
        while x < w.max(step / 2 + 1) {
            let (cy, cx) = (y.min(h - 1), x.min(w - 1));
            let mut best = (gradient(cy, cx), cy, cx);
            for ny in cy.saturating_sub(1)..=(cy + 1).min(h - 1) {
                for nx in cx.saturating_sub(1)..=(cx + 1).min(w - 1) {
                    let g = gradient(ny, nx);
                    if g < best.0 {
                        best = (g, ny, nx);
                    }
                }
            }
            let c = pixels[best.1 * w + best.2];
            centres.push([c[0], c[1], c[2], best.1 as f32, best.2 as f32]);
            x += step;
        }
        y += step;
    }

    let spatial = (params.compactness / step as f32).powi(2);
    let mut labels = vec![u32::MAX; h * w];
    let mut distance = vec![f32::INFINITY; h * w];
    for _ in 0..params.iterations.max(1) {
        distance.fill(f32::INFINITY);
        for (k, c) in centres.iter().enumerate() {
            let (cy, cx) = (c[3].round() as isize, c[4].round() as isize);
            let s = step as isize;
            let (y0, y1) = ((cy - s).max(0) as usize, ((cy + s) as usize).min(h - 1));
            let (x0, x1) = ((cx - s).max(0) as usize, ((cx + s) as usize).min(w - 1));
            for y in y0..=y1 {
                for x in x0..=x1 {
                    let i = y * w + x;
                    let p = &pixels[i];
                    let d = colour_dist(p, &[c[0], c[1], c[2]])
                        + spatial * ((y as f32 - c[3]).powi(2) + (x as f32 - c[4]).powi(2));
                    if d < distance[i] {
                        distance[i] = d;
                        labels[i] = k as u32;
                    }
                }
            }
        }
        let mut sums = vec![[0f64; 6]; centres.len()];
        for (i, &l) in labels.iter().enumerate() {
            if l == u32::MAX {
                continue;
            }
            let s = &mut sums[l as usize];
            let p = &pixels[i];
            s[0] += f64::from(p[0]);
            s[1] += f64::from(p[1]);
            s[2] += f64::from(p[2]);
            s[3] += (i / w) as f64;
            s[4] += (i % w) as f64;
            s[5] += 1.0;
        }
        for (c, s) in centres.iter_mut().zip(&sums) {
            if s[5] > 0.0 {
                for j in 0..5 {
                    c[j] = (s[j] / s[5]) as f32;
                }
            }
        }
    }
    connected(&labels, h, w, (step * step / 4).max(1))
}

/// Relabels `labels` into 4-connected components `0..n`; a component smaller than `min_size` joins
/// the component next to it that was labelled before it (SLIC's connectivity step).
fn connected(labels: &[u32], h: usize, w: usize, min_size: usize) -> Vec<u32> {
    let mut out = vec![u32::MAX; h * w];
    let mut next = 0u32;
    let mut queue = Vec::new();
    for start in 0..h * w {
        if out[start] != u32::MAX {
            continue;
        }
        // A neighbour with a label already: where a too-small component goes.
        let (sy, sx) = (start / w, start % w);
        let adjacent = [(sx > 0).then(|| start - 1), (sy > 0).then(|| start - w)]
            .into_iter()
            .flatten()
            .map(|j| out[j])
            .find(|&l| l != u32::MAX);
        queue.clear();
        queue.push(start);
        out[start] = next;
        let mut head = 0;
        while head < queue.len() {
            let i = queue[head];
            head += 1;
            let (y, x) = (i / w, i % w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in neighbours.into_iter().flatten() {
                if out[j] == u32::MAX && labels[j] == labels[start] {
                    out[j] = next;
                    queue.push(j);
                }
            }
        }
        match adjacent {
            Some(l) if queue.len() < min_size => {
                for &i in &queue {
                    out[i] = l;
                }
            }
            _ => next += 1,
        }
    }
    out
}

/// `mask` with every superpixel of `image` set to the class most of its pixels have (ties: the lower
/// class). An image and mask of different sizes are an error.
pub fn refine_with_superpixels(image: &RgbImage, mask: &Mask, params: &SlicParams) -> Result<Mask> {
    let (h, w) = (mask.height(), mask.width());
    if (image.height(), image.width()) != (h, w) {
        return Err(crate::SegmentError::BadArgument(format!(
            "superpixel refinement: the image is {}x{}, the mask {h}x{w}",
            image.height(),
            image.width()
        )));
    }
    let labels = slic(image, params);
    let n = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut votes = vec![[0u32; 256]; n];
    for (&l, &c) in labels.iter().zip(mask.as_slice()) {
        votes[l as usize][c as usize] += 1;
    }
    let winner: Vec<u8> = votes
        .iter()
        .map(|v| {
            let mut best = 0usize;
            for c in 1..256 {
                if v[c] > v[best] {
                    best = c;
                }
            }
            best as u8
        })
        .collect();
    Ok(Mask::new(
        h,
        w,
        labels.iter().map(|&l| winner[l as usize]).collect(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superpixels_cover_the_image_connected_and_about_the_asked_size() {
        // A smooth gradient: superpixels close to the grid.
        let (h, w) = (64, 96);
        let data: Vec<u8> = (0..h * w)
            .flat_map(|i| {
                let (y, x) = (i / w, i % w);
                [(x * 2) as u8, (y * 3) as u8, 128]
            })
            .collect();
        let image = RgbImage::new(h, w, data).unwrap();
        let labels = slic(&image, &SlicParams::default());
        let n = *labels.iter().max().unwrap() as usize + 1;
        // 64x96 at 16 px: 4 x 6 = 24 cells.
        assert!((12..=48).contains(&n), "{n} superpixels");
        // Each label is one 4-connected region.
        assert_eq!(connected(&labels, h, w, 1), relabel_in_order(&labels));
    }

    fn relabel_in_order(labels: &[u32]) -> Vec<u32> {
        let mut map = std::collections::HashMap::new();
        labels
            .iter()
            .map(|l| {
                let k = map.len() as u32;
                *map.entry(*l).or_insert(k)
            })
            .collect()
    }

    #[test]
    fn refinement_snaps_a_blurry_mask_to_the_object_edge() {
        // A bright square on a dark image; the predicted mask is the square shifted by 2 pixels, as a
        // coarse network would give. Superpixel voting moves its edge back onto the square's.
        let (h, w) = (48, 48);
        let inside = |y: usize, x: usize| (16..32).contains(&y) && (16..32).contains(&x);
        let data: Vec<u8> = (0..h * w)
            .flat_map(|i| {
                if inside(i / w, i % w) {
                    [220, 60, 60]
                } else {
                    [30, 30, 40]
                }
            })
            .collect();
        let image = RgbImage::new(h, w, data).unwrap();
        let predicted: Vec<u8> = (0..h * w)
            .map(|i| {
                if inside(i / w, (i % w).saturating_sub(2)) {
                    8
                } else {
                    0
                }
            })
            .collect();
        let mask = Mask::new(h, w, predicted).unwrap();
        let params = SlicParams {
            region_size: 8,
            ..Default::default()
        };
        let refined = refine_with_superpixels(&image, &mask, &params).unwrap();
        let wrong = |m: &Mask| {
            (0..h * w)
                .filter(|&i| (m.as_slice()[i] == 8) != inside(i / w, i % w))
                .count()
        };
        assert!(wrong(&mask) > 0);
        assert!(
            wrong(&refined) < wrong(&mask) / 2,
            "{} wrong pixels after refinement, {} before",
            wrong(&refined),
            wrong(&mask)
        );
    }
}
