//! Joint image+mask augmentation.
//!
//! Every geometric step (resize mode, flip, rotation, shear, scale, crop offset) is folded into one affine
//! map, and the output is produced by inverse mapping: each output pixel asks where it comes from in the
//! source. Image and mask use the same map and the same inside/outside test, so a mask pixel can never
//! drift from its image pixel; images are sampled bilinearly (with a box prefilter when shrinking by 2x or
//! more, against aliasing), masks by nearest neighbour, and anything from outside the source becomes
//! `fill` in the image and [`VOID`] in the mask.
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use voc_core::Normalization;

use crate::VOID;

/// How the source is fitted to the output canvas before the random transform.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ResizeMode {
    /// Keep the source size (batches pad to the largest; see `BatchConfig::pad_multiple`).
    Keep,
    /// Scale both sides to exactly `height` x `width` (aspect ratio not kept).
    Stretch {
        /// Output rows.
        height: usize,
        /// Output columns.
        width: usize,
    },
    /// Scale so the whole image fits, centre it and pad the rest (TensorFlow's `resize_with_pad`).
    Letterbox {
        /// Output rows.
        height: usize,
        /// Output columns.
        width: usize,
    },
    /// Scale the shortest side to `shortest`, then take the centre `height` x `width`.
    ShortestCenterCrop {
        /// Length of the shortest side after scaling.
        shortest: usize,
        /// Output rows.
        height: usize,
        /// Output columns.
        width: usize,
    },
    /// No resize: a random `height` x `width` window of the (randomly scaled) image; when the image is
    /// smaller it is placed at a random position on the canvas. `pad` widens the range by that many pixels
    /// on every side (torchvision's `RandomCrop(padding=pad)`).
    RandomCrop {
        /// Output rows.
        height: usize,
        /// Output columns.
        width: usize,
        /// Extra range of the window's position on every side, in pixels.
        pad: usize,
    },
}

/// Image sampling for the geometric warp (masks are always nearest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Interpolation {
    /// Weighted mean of the four nearest source pixels (with a box prefilter when shrinking by 2x or more).
    #[default]
    Bilinear,
    /// The source pixel the sample position falls in.
    Nearest,
}

/// What to randomise and by how much. `Default` is no augmentation at the source size.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use voc_data::{AugmentConfig, VOID};
///
/// // A synthetic 300x400 photo whose left half is a "dog" (mask value 12).
/// let image = Array3::from_shape_fn((300, 400, 3), |(y, x, c)| ((x + y + 50 * c) % 256) as u8);
/// let mask = Array2::from_shape_fn((300, 400), |(_, x)| if x < 200 { 12u8 } else { 0 });
///
/// let config = AugmentConfig::segmentation(256);
/// let (out, out_mask) = config.augment(image.view(), Some(mask.view()), 7);
/// let out_mask = out_mask.expect("a mask in, a mask out");
/// assert_eq!(out.dim(), (256, 256, 3));
/// assert_eq!(out_mask.dim(), (256, 256));
/// // Geometry moves labels but never invents them: dog, background, or void outside the source.
/// assert!(out_mask.iter().all(|&v| v == 12 || v == 0 || v == VOID));
/// // The same seed gives the same result.
/// assert_eq!(config.augment(image.view(), Some(mask.view()), 7).0, out);
///
/// // Evaluation geometry only: letterbox into 224x224, padding is `fill` in the image and void in the mask.
/// let eval = AugmentConfig::eval(voc_data::ResizeMode::Letterbox { height: 224, width: 224 });
/// assert!(!eval.is_random());
/// let (_, boxed) = eval.augment(image.view(), Some(mask.view()), 0);
/// assert_eq!(boxed.unwrap()[[0, 0]], VOID); // 300x400 -> 168x224 content, bands above and below
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentConfig {
    /// How the source is fitted to the output before the random transform; fixes the output size.
    pub resize: ResizeMode,
    /// Probability of a horizontal flip.
    pub hflip_prob: f32,
    /// Rotation drawn uniformly from +-`rotate_deg` degrees.
    pub rotate_deg: f32,
    /// x-shear factor drawn uniformly from +-`shear`.
    pub shear: f32,
    /// Zoom factor drawn log-uniformly from this range.
    pub scale: (f32, f32),
    /// Extra random translation of up to this many output pixels in each direction.
    pub translate_px: f32,
    /// Brightness factor drawn from [1-x, 1+x] (torchvision's ColorJitter semantics); 0 is off.
    pub brightness: f32,
    /// Contrast factor drawn from [1-x, 1+x]; 0 is off.
    pub contrast: f32,
    /// Saturation factor drawn from [1-x, 1+x]; 0 is off.
    pub saturation: f32,
    /// Probability of a Gaussian blur, sigma uniform in `blur_sigma`.
    pub blur_prob: f32,
    /// Range of the blur's sigma, in output pixels.
    pub blur_sigma: (f32, f32),
    /// Image sampling of the warp (masks are always nearest).
    pub interpolation: Interpolation,
    /// Image value for areas from outside the source.
    pub fill: [u8; 3],
    /// Move the output window uniformly over the whole (zoomed) content instead of keeping it centred
    /// (plus `translate_px`): with a zoom above 1 this is torchvision's `RandomResizedCrop`, a random
    /// part of the photo at a random scale, never leaving the photo.
    #[serde(default)]
    pub pan: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            resize: ResizeMode::Keep,
            hflip_prob: 0.0,
            rotate_deg: 0.0,
            shear: 0.0,
            scale: (1.0, 1.0),
            translate_px: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            blur_prob: 0.0,
            blur_sigma: (0.1, 2.0),
            interpolation: Interpolation::Bilinear,
            fill: [0, 0, 0],
            pan: false,
        }
    }
}

impl AugmentConfig {
    /// Training augmentation for classification at `size` x `size`: letterbox, flip, +-20 deg, shear 0.2,
    /// zoom 0.8-1.2, colour jitter 0.2.
    pub fn classification(size: usize) -> Self {
        Self {
            resize: ResizeMode::Letterbox {
                height: size,
                width: size,
            },
            hflip_prob: 0.5,
            rotate_deg: 20.0,
            shear: 0.2,
            scale: (0.8, 1.2),
            translate_px: size as f32 * 0.05,
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            ..Self::default()
        }
    }

    /// Training augmentation for segmentation: zoom 0.5-2.0, random `crop` x `crop` window, flip,
    /// +-10 deg, colour jitter 0.2.
    pub fn segmentation(crop: usize) -> Self {
        Self {
            resize: ResizeMode::RandomCrop {
                height: crop,
                width: crop,
                pad: 0,
            },
            hflip_prob: 0.5,
            rotate_deg: 10.0,
            scale: (0.5, 2.0),
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            ..Self::default()
        }
    }

    /// Deterministic evaluation geometry only.
    pub fn eval(resize: ResizeMode) -> Self {
        Self {
            resize,
            ..Self::default()
        }
    }

    /// Output (height, width) for a source of `src_h` x `src_w`.
    pub fn output_size(&self, src_h: usize, src_w: usize) -> (usize, usize) {
        match self.resize {
            ResizeMode::Keep => (src_h, src_w),
            ResizeMode::Stretch { height, width }
            | ResizeMode::Letterbox { height, width }
            | ResizeMode::ShortestCenterCrop { height, width, .. }
            | ResizeMode::RandomCrop { height, width, .. } => (height, width),
        }
    }

    /// Whether any parameter is random.
    pub fn is_random(&self) -> bool {
        self.hflip_prob > 0.0
            || self.rotate_deg != 0.0
            || self.shear != 0.0
            || self.scale.0 != self.scale.1
            || self.translate_px > 0.0
            || self.brightness > 0.0
            || self.contrast > 0.0
            || self.saturation > 0.0
            || self.blur_prob > 0.0
            || matches!(self.resize, ResizeMode::RandomCrop { .. })
            || self.pan
    }

    /// Draws the parameters for one source image of `src_h` x `src_w`.
    pub fn sample(&self, src_h: usize, src_w: usize, rng: &mut impl Rng) -> AugmentParams {
        let mut uniform = |lo: f32, hi: f32| if hi > lo { rng.gen_range(lo..hi) } else { lo };
        let flip = uniform(0.0, 1.0) < self.hflip_prob;
        let angle_deg = uniform(-self.rotate_deg, self.rotate_deg);
        let shear = uniform(-self.shear, self.shear);
        let scale = uniform(self.scale.0.ln(), self.scale.1.ln()).exp();
        let (mut tx, mut ty) = (
            uniform(-self.translate_px, self.translate_px),
            uniform(-self.translate_px, self.translate_px),
        );
        if self.pan {
            let (kx, ky) = self.base_scale(src_h, src_w);
            let (oh, ow) = self.output_size(src_h, src_w);
            let slack_x = ((src_w as f64 * kx * scale as f64 - ow as f64) / 2.0).max(0.0) as f32;
            let slack_y = ((src_h as f64 * ky * scale as f64 - oh as f64) / 2.0).max(0.0) as f32;
            tx += uniform(-slack_x, slack_x);
            ty += uniform(-slack_y, slack_y);
        }
        if let ResizeMode::RandomCrop { height, width, pad } = self.resize {
            // Half the slack between the scaled image and the window, plus the padding.
            let slack_x = (src_w as f32 * scale - width as f32).abs() / 2.0 + pad as f32;
            let slack_y = (src_h as f32 * scale - height as f32).abs() / 2.0 + pad as f32;
            tx += uniform(-slack_x, slack_x).round();
            ty += uniform(-slack_y, slack_y).round();
        }
        let jitter = |u: &mut dyn FnMut(f32, f32) -> f32, x: f32| {
            if x > 0.0 {
                u((1.0 - x).max(0.0), 1.0 + x)
            } else {
                1.0
            }
        };
        let brightness = jitter(&mut uniform, self.brightness);
        let contrast = jitter(&mut uniform, self.contrast);
        let saturation = jitter(&mut uniform, self.saturation);
        let blur_sigma = (self.blur_prob > 0.0 && uniform(0.0, 1.0) < self.blur_prob)
            .then(|| uniform(self.blur_sigma.0, self.blur_sigma.1));
        AugmentParams {
            flip,
            angle_deg,
            shear,
            scale,
            tx,
            ty,
            brightness,
            contrast,
            saturation,
            blur_sigma,
        }
    }

    /// The scale `(kx, ky)` of the fit of a `src_h` x `src_w` source to the canvas, before the random part.
    fn base_scale(&self, src_h: usize, src_w: usize) -> (f64, f64) {
        let (oh, ow) = self.output_size(src_h, src_w);
        let (sh, sw, oh_f, ow_f) = (src_h as f64, src_w as f64, oh as f64, ow as f64);
        match self.resize {
            ResizeMode::Keep | ResizeMode::RandomCrop { .. } => (1.0, 1.0),
            ResizeMode::Stretch { .. } => (ow_f / sw, oh_f / sh),
            ResizeMode::Letterbox { .. } => {
                let k = (oh_f / sh).min(ow_f / sw);
                // Whole-pixel content size, as resize_with_pad does.
                (
                    (sw * k).round().max(1.0) / sw,
                    (sh * k).round().max(1.0) / sh,
                )
            }
            ResizeMode::ShortestCenterCrop { shortest, .. } => {
                let k = shortest as f64 / sh.min(sw);
                (k, k)
            }
        }
    }

    /// The affine map from source to output pixel coordinates for `params`.
    pub fn affine(&self, src_h: usize, src_w: usize, params: &AugmentParams) -> Affine {
        let (oh, ow) = self.output_size(src_h, src_w);
        let (sh, sw, oh_f, ow_f) = (src_h as f64, src_w as f64, oh as f64, ow as f64);
        // Base: source -> canvas, as scale (kx, ky) and offset.
        let (kx, ky) = self.base_scale(src_h, src_w);
        // Centre the scaled source on the canvas; letterbox pads a whole number of pixels, top/left floor.
        let (mut ox, mut oy) = ((ow_f - sw * kx) / 2.0, (oh_f - sh * ky) / 2.0);
        if matches!(self.resize, ResizeMode::Letterbox { .. }) {
            ox = ox.floor();
            oy = oy.floor();
        }
        let base = Affine {
            m: [kx, 0.0, ox, 0.0, ky, oy],
        };
        // Random part about the canvas centre: out = c + t + S R Sh F (p - c).
        let (cx, cy) = (ow_f / 2.0, oh_f / 2.0);
        let theta = (params.angle_deg as f64).to_radians();
        let (sin, cos) = theta.sin_cos();
        let s = params.scale as f64;
        let f = if params.flip { -1.0 } else { 1.0 };
        let shear = params.shear as f64;
        // S R Sh F = s * [[cos, -sin],[sin, cos]] * [[1, shear],[0, 1]] * [[f, 0],[0, 1]]
        let a = s * cos * f;
        let b = s * (cos * shear - sin);
        let c = s * sin * f;
        let d = s * (sin * shear + cos);
        let random = Affine {
            m: [
                a,
                b,
                cx + params.tx as f64 - (a * cx + b * cy),
                c,
                d,
                cy + params.ty as f64 - (c * cx + d * cy),
            ],
        };
        random.compose(&base)
    }

    /// Augments `image` (HxWx3) and `mask` (HxW, same size) with `params`: the warped image (colour
    /// jitter and blur applied) and the warped mask, both of [`AugmentConfig::output_size`].
    pub fn apply(
        &self,
        image: ArrayView3<u8>,
        mask: Option<ArrayView2<u8>>,
        params: &AugmentParams,
    ) -> (Array3<u8>, Option<Array2<u8>>) {
        let (h, w) = (image.shape()[0], image.shape()[1]);
        let (oh, ow) = self.output_size(h, w);
        let forward = self.affine(h, w, params);
        let mut out = warp_image(image, &forward, oh, ow, self.interpolation, self.fill);
        let out_mask = mask.map(|m| warp_mask(m, &forward, oh, ow));
        color_jitter(
            &mut out,
            params.brightness,
            params.contrast,
            params.saturation,
        );
        if let Some(sigma) = params.blur_sigma {
            gaussian_blur(&mut out, sigma);
        }
        (out, out_mask)
    }

    /// Draws parameters from `seed` (ChaCha8) and applies them: the same seed gives the same output.
    pub fn augment(
        &self,
        image: ArrayView3<u8>,
        mask: Option<ArrayView2<u8>>,
        seed: u64,
    ) -> (Array3<u8>, Option<Array2<u8>>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = self.sample(image.shape()[0], image.shape()[1], &mut rng);
        self.apply(image, mask, &params)
    }
}

/// One draw of the random parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AugmentParams {
    /// Mirror left-right.
    pub flip: bool,
    /// Rotation in degrees, about the output centre.
    pub angle_deg: f32,
    /// x-shear factor.
    pub shear: f32,
    /// Zoom factor (1 = the resize mode's size).
    pub scale: f32,
    /// Translation in output pixels, x.
    pub tx: f32,
    /// Translation in output pixels, y.
    pub ty: f32,
    /// Brightness factor (1 = unchanged).
    pub brightness: f32,
    /// Contrast factor (1 = unchanged).
    pub contrast: f32,
    /// Saturation factor (1 = unchanged).
    pub saturation: f32,
    /// Sigma of a Gaussian blur, or no blur.
    pub blur_sigma: Option<f32>,
}

impl AugmentParams {
    /// No change at all.
    pub fn identity() -> Self {
        Self {
            flip: false,
            angle_deg: 0.0,
            shear: 0.0,
            scale: 1.0,
            tx: 0.0,
            ty: 0.0,
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            blur_sigma: None,
        }
    }
}

/// A 2-D affine map on continuous pixel coordinates (pixel (i, j) covers [j, j+1) x [i, i+1)):
/// `x' = m0 x + m1 y + m2`, `y' = m3 x + m4 y + m5`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// The coefficients `[m0, m1, m2, m3, m4, m5]` of the two rows.
    pub m: [f64; 6],
}

impl Affine {
    /// The map that changes nothing.
    pub fn identity() -> Self {
        Self {
            m: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        }
    }

    /// `self` after `first`.
    pub fn compose(&self, first: &Affine) -> Affine {
        let [a, b, c, d, e, f] = self.m;
        let [p, q, r, s, t, u] = first.m;
        Affine {
            m: [
                a * p + b * s,
                a * q + b * t,
                a * r + b * u + c,
                d * p + e * s,
                d * q + e * t,
                d * r + e * u + f,
            ],
        }
    }

    /// The inverse map (not finite for a singular map, e.g. zoom 0).
    pub fn inverse(&self) -> Affine {
        let [a, b, c, d, e, f] = self.m;
        let det = a * e - b * d;
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        Affine {
            m: [ia, ib, -(ia * c + ib * f), id, ie, -(id * c + ie * f)],
        }
    }

    /// The image of the point (x, y).
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let [a, b, c, d, e, f] = self.m;
        (a * x + b * y + c, d * x + e * y + f)
    }

    /// Area scale factor's square root: how much the map enlarges lengths on average.
    pub fn linear_scale(&self) -> f64 {
        (self.m[0] * self.m[4] - self.m[1] * self.m[3]).abs().sqrt()
    }
}

/// Source sample position (in pixel-index units, centre of pixel i is i) for output pixel (ox, oy).
#[inline]
fn source_row_start(inv: &Affine, oy: usize) -> (f32, f32, f32, f32) {
    let (u, v) = inv.apply(0.5, oy as f64 + 0.5);
    (
        u as f32 - 0.5,
        v as f32 - 0.5,
        inv.m[0] as f32,
        inv.m[3] as f32,
    )
}

/// Warps an HxWx3 image by `forward` (source -> output) into `oh` x `ow`.
pub fn warp_image(
    image: ArrayView3<u8>,
    forward: &Affine,
    oh: usize,
    ow: usize,
    interpolation: Interpolation,
    fill: [u8; 3],
) -> Array3<u8> {
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let shrink = forward.linear_scale();
    // Shrinking by k >= 2 with plain bilinear aliases; average k x k blocks first (as antialiased resizes do).
    let k = if interpolation == Interpolation::Bilinear && shrink > 0.0 {
        (1.0 / shrink).floor() as usize
    } else {
        1
    };
    let k = k.clamp(1, h.min(w).max(1));
    let standard = image.as_standard_layout();
    let view = standard.view();
    // The inside test uses exactly the mask's inverse map, so image and mask agree on every border pixel.
    let inv_full = forward.inverse();
    if k >= 2 {
        let small = box_downsample(view, k);
        // Small-image coordinates are full-resolution coordinates divided by k.
        let to_small = Affine {
            m: [1.0 / k as f64, 0.0, 0.0, 0.0, 1.0 / k as f64, 0.0],
        };
        let inv_small = to_small.compose(&inv_full);
        return warp_image_direct(
            small.view(),
            &inv_small,
            &inv_full,
            (oh, ow),
            interpolation,
            fill,
            (h, w),
        );
    }
    warp_image_direct(
        view,
        &inv_full,
        &inv_full,
        (oh, ow),
        interpolation,
        fill,
        (h, w),
    )
}

/// Averages k x k blocks; a partial block at the right/bottom edge averages what it has.
fn box_downsample(image: ArrayView3<u8>, k: usize) -> Array3<u8> {
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let (sh, sw) = (h.div_ceil(k), w.div_ceil(k));
    let src = image.as_slice().expect("standard layout");
    let mut acc = vec![0u32; sw * 3];
    let mut out = vec![0u8; sh * sw * 3];
    for sy in 0..sh {
        acc.iter_mut().for_each(|a| *a = 0);
        let rows = (sy * k)..((sy + 1) * k).min(h);
        let nrows = rows.len();
        for y in rows {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (block, a) in row.chunks(3 * k).zip(acc.chunks_exact_mut(3)) {
                for px in block.chunks_exact(3) {
                    a[0] += px[0] as u32;
                    a[1] += px[1] as u32;
                    a[2] += px[2] as u32;
                }
            }
        }
        for sx in 0..sw {
            let n = (nrows * (((sx + 1) * k).min(w) - sx * k)) as u32;
            for ch in 0..3 {
                out[(sy * sw + sx) * 3 + ch] = ((acc[sx * 3 + ch] + n / 2) / n) as u8;
            }
        }
    }
    Array3::from_shape_vec((sh, sw, 3), out).expect("sizes match")
}

/// `inv` maps output to `image` coordinates, `inv_full` output to full-resolution source coordinates
/// (`full_size`), where the inside test happens.
fn warp_image_direct(
    image: ArrayView3<u8>,
    inv: &Affine,
    inv_full: &Affine,
    (oh, ow): (usize, usize),
    interpolation: Interpolation,
    fill: [u8; 3],
    full_size: (usize, usize),
) -> Array3<u8> {
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let src = image.as_slice().expect("standard layout");
    let (fh, fw) = (full_size.0 as f32, full_size.1 as f32);
    let mut out = vec![0u8; oh * ow * 3];
    let (wmax, hmax) = (w as i32 - 1, h as i32 - 1);
    for oy in 0..oh {
        let (mut u, mut v, du, dv) = source_row_start(inv, oy);
        let (mut fu, mut fv, dfu, dfv) = source_row_start(inv_full, oy);
        let row = &mut out[oy * ow * 3..(oy + 1) * ow * 3];
        for px in row.chunks_exact_mut(3) {
            let inside = fu >= -0.5 && fu < fw - 0.5 && fv >= -0.5 && fv < fh - 0.5;
            if !inside {
                px.copy_from_slice(&fill);
            } else if interpolation == Interpolation::Nearest {
                // Inside the source u, v >= -0.5, so truncation is floor (f32::floor is a libm call on
                // baseline x86-64; a cast is one instruction).
                let x = ((u + 0.5) as i32).clamp(0, wmax) as usize;
                let y = ((v + 0.5) as i32).clamp(0, hmax) as usize;
                px.copy_from_slice(&src[(y * w + x) * 3..(y * w + x) * 3 + 3]);
            } else {
                // Fixed-point weights (8 fractional bits): the four weights sum to exactly 1 << 16, so a
                // uniform neighbourhood reproduces its value exactly.
                // u, v >= -1 here (the inside test), so floor(u) = trunc(u + 2) - 2.
                // Weights are rounded, not truncated (0..=256): the f32 step-by-step sample position
                // may sit a few 1e-5 px off the exact one, and on a pixel centre truncation turned that
                // into a 1/256 weight on the neighbour across it (one grey level of bleed).
                let (x0, y0) = ((u + 2.0) as i32 - 2, (v + 2.0) as i32 - 2);
                let wx = ((u - x0 as f32) * 256.0 + 0.5) as u32;
                let wy = ((v - y0 as f32) * 256.0 + 0.5) as u32;
                let (xa, xb, ya, yb) = if x0 >= 0 && y0 >= 0 && x0 < wmax && y0 < hmax {
                    (x0 as usize, x0 as usize + 1, y0 as usize, y0 as usize + 1)
                } else {
                    (
                        x0.clamp(0, wmax) as usize,
                        (x0 + 1).clamp(0, wmax) as usize,
                        y0.clamp(0, hmax) as usize,
                        (y0 + 1).clamp(0, hmax) as usize,
                    )
                };
                let (w00, w01) = ((256 - wx) * (256 - wy), wx * (256 - wy));
                let (w10, w11) = ((256 - wx) * wy, wx * wy);
                let (i00, i01, i10, i11) = (
                    (ya * w + xa) * 3,
                    (ya * w + xb) * 3,
                    (yb * w + xa) * 3,
                    (yb * w + xb) * 3,
                );
                for ch in 0..3 {
                    let acc = src[i00 + ch] as u32 * w00
                        + src[i01 + ch] as u32 * w01
                        + src[i10 + ch] as u32 * w10
                        + src[i11 + ch] as u32 * w11;
                    px[ch] = ((acc + (1 << 15)) >> 16) as u8;
                }
            }
            u += du;
            v += dv;
            fu += dfu;
            fv += dfv;
        }
    }
    Array3::from_shape_vec((oh, ow, 3), out).expect("sizes match")
}

/// Warps an HxW mask by `forward` with nearest sampling; outside -> [`VOID`].
pub fn warp_mask(mask: ArrayView2<u8>, forward: &Affine, oh: usize, ow: usize) -> Array2<u8> {
    let (h, w) = mask.dim();
    let standard = mask.as_standard_layout();
    let mask = standard.view();
    let src = mask.as_slice().expect("standard layout");
    let inv = forward.inverse();
    let (fh, fw) = (h as f32, w as f32);
    let mut out = vec![VOID; oh * ow];
    for oy in 0..oh {
        let (mut u, mut v, du, dv) = source_row_start(&inv, oy);
        for o in out[oy * ow..(oy + 1) * ow].iter_mut() {
            if u >= -0.5 && u < fw - 0.5 && v >= -0.5 && v < fh - 0.5 {
                // u + 0.5 >= 0 inside: truncation is floor.
                let x = ((u + 0.5) as usize).min(w - 1);
                let y = ((v + 0.5) as usize).min(h - 1);
                *o = src[y * w + x];
            }
            u += du;
            v += dv;
        }
    }
    Array2::from_shape_vec((oh, ow), out).expect("sizes match")
}

/// The pixels of an owned image as one row-major slice, relaying it out first if it is a transposed or
/// otherwise non-standard array (the public in-place ops accept any `Array3`).
fn standard_slice_mut(image: &mut Array3<u8>) -> &mut [u8] {
    if !image.is_standard_layout() {
        *image = image.as_standard_layout().into_owned();
    }
    image
        .as_slice_mut()
        .expect("standard layout after relayout")
}

/// Brightness, contrast, saturation in that order (torchvision's formulas: contrast blends with the mean
/// grey level of the image, saturation with each pixel's grey value). Factors of 1 leave the image as is.
pub fn color_jitter(image: &mut Array3<u8>, brightness: f32, contrast: f32, saturation: f32) {
    if brightness == 1.0 && contrast == 1.0 && saturation == 1.0 {
        return;
    }
    let data = standard_slice_mut(image);
    let clamp = |x: f32| x.clamp(0.0, 255.0);
    // Brightness then contrast map each channel value independently: one 256-entry table. Contrast needs
    // the mean grey level after brightness, which per-channel histograms give without a float pass.
    let bright: [f32; 256] = std::array::from_fn(|v| clamp(v as f32 * brightness));
    let mean = if contrast != 1.0 {
        let mut hist = [[0u32; 256]; 3];
        for p in data.chunks_exact(3) {
            hist[0][p[0] as usize] += 1;
            hist[1][p[1] as usize] += 1;
            hist[2][p[2] as usize] += 1;
        }
        let n = (data.len() / 3).max(1) as f64;
        let channel_mean = |c: usize| {
            hist[c]
                .iter()
                .zip(&bright)
                .map(|(&k, &v)| k as f64 * v as f64)
                .sum::<f64>()
                / n
        };
        (0.299 * channel_mean(0) + 0.587 * channel_mean(1) + 0.114 * channel_mean(2)) as f32
    } else {
        0.0
    };
    let stage1: [f32; 256] =
        std::array::from_fn(|v| clamp(contrast * bright[v] + (1.0 - contrast) * mean));
    if saturation == 1.0 {
        let lut: [u8; 256] = std::array::from_fn(|v| (stage1[v] + 0.5) as u8);
        data.iter_mut().for_each(|v| *v = lut[*v as usize]);
        return;
    }
    let keep = 1.0 - saturation;
    for p in data.chunks_exact_mut(3) {
        let (r, g, b) = (
            stage1[p[0] as usize],
            stage1[p[1] as usize],
            stage1[p[2] as usize],
        );
        let grey = keep * (0.299 * r + 0.587 * g + 0.114 * b);
        p[0] = (clamp(saturation * r + grey) + 0.5) as u8;
        p[1] = (clamp(saturation * g + grey) + 0.5) as u8;
        p[2] = (clamp(saturation * b + grey) + 0.5) as u8;
    }
}

/// Separable Gaussian blur, kernel radius ceil(3 sigma), reflected borders.
pub fn gaussian_blur(image: &mut Array3<u8>, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - m }) as usize
    };
    let data = standard_slice_mut(image);
    let mut tmp = vec![0f32; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for (ki, kv) in kernel.iter().enumerate() {
                let sx = reflect(x as isize + ki as isize - radius, w);
                let o = (y * w + sx) * 3;
                for ch in 0..3 {
                    acc[ch] += kv * data[o + ch] as f32;
                }
            }
            tmp[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&acc);
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for (ki, kv) in kernel.iter().enumerate() {
                let sy = reflect(y as isize + ki as isize - radius, h);
                let o = (sy * w + x) * 3;
                for ch in 0..3 {
                    acc[ch] += kv * tmp[o + ch];
                }
            }
            for ch in 0..3 {
                data[(y * w + x) * 3 + ch] = (acc[ch] + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Writes an HxWx3 image, normalised, into a CHW buffer of a `ph` x `pw` plane (top-left aligned); the
/// rest of the plane is left as it is.
pub fn write_chw(
    normalization: &Normalization,
    image: ArrayView3<u8>,
    out: &mut [f32],
    ph: usize,
    pw: usize,
) {
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let standard = image.as_standard_layout();
    let image = standard.view();
    let src = image.as_slice().expect("standard layout");
    for (c, &(scale, offset)) in normalization.scale_offset().iter().enumerate() {
        let plane = &mut out[c * ph * pw..(c + 1) * ph * pw];
        for y in 0..h {
            let dst = &mut plane[y * pw..y * pw + w];
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (d, px) in dst.iter_mut().zip(row.chunks_exact(3)) {
                *d = px[c] as f32 * scale + offset;
            }
        }
    }
}

/// The HxWx3 image, normalised, as a CHW f32 vector.
pub fn to_chw(normalization: &Normalization, image: ArrayView3<u8>) -> Vec<f32> {
    let (h, w) = (image.shape()[0], image.shape()[1]);
    let mut out = vec![0f32; 3 * h * w];
    write_chw(normalization, image, &mut out, h, w);
    out
}
