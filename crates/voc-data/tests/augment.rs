//! Augmentation: image and mask stay aligned, seeds reproduce, geometry of the resize modes.
use ndarray::{Array2, Array3};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voc_data::augment::{
    warp_image, warp_mask, Affine, AugmentConfig, AugmentParams, Interpolation, ResizeMode,
};
use voc_data::VOID;

/// A distinct colour per label (0..=20) and for void.
fn encode(label: u8) -> [u8; 3] {
    if label == VOID {
        [250, 5, 250]
    } else {
        [
            label * 12,
            255 - label * 12,
            (label as u32 * 37 % 200) as u8,
        ]
    }
}

fn decode(px: &[u8]) -> Option<u8> {
    (0..=20u8).chain([VOID]).find(|&l| encode(l) == px)
}

/// A mask of random labelled blocks with some void, and the image that encodes it.
fn labelled_pair(h: usize, w: usize, block: usize, seed: u64) -> (Array3<u8>, Array2<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bh = h.div_ceil(block);
    let bw = w.div_ceil(block);
    let blocks: Vec<u8> = (0..bh * bw)
        .map(|_| {
            if rng.gen_bool(0.1) {
                VOID
            } else {
                rng.gen_range(0..=20)
            }
        })
        .collect();
    let mask = Array2::from_shape_fn((h, w), |(y, x)| blocks[(y / block) * bw + x / block]);
    let image = Array3::from_shape_fn((h, w, 3), |(y, x, c)| encode(mask[[y, x]])[c]);
    (image, mask)
}

fn random_config(rng: &mut ChaCha8Rng) -> AugmentConfig {
    let (oh, ow) = (rng.gen_range(24..90), rng.gen_range(24..90));
    let resize = match rng.gen_range(0..5) {
        0 => ResizeMode::Keep,
        1 => ResizeMode::Stretch {
            height: oh,
            width: ow,
        },
        2 => ResizeMode::Letterbox {
            height: oh,
            width: ow,
        },
        3 => ResizeMode::ShortestCenterCrop {
            shortest: oh.max(ow),
            height: oh,
            width: ow,
        },
        _ => ResizeMode::RandomCrop {
            height: oh,
            width: ow,
            pad: rng.gen_range(0..8),
        },
    };
    AugmentConfig {
        resize,
        hflip_prob: 0.5,
        rotate_deg: 30.0,
        shear: 0.3,
        scale: (0.5, 2.0),
        translate_px: 5.0,
        ..AugmentConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// With nearest sampling for the image too, every output pixel's image colour decodes to exactly its
    /// mask value (void outside included): one map, one inside test.
    #[test]
    fn nearest_image_matches_mask_everywhere(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, w) = (rng.gen_range(20..80), rng.gen_range(20..80));
        let (image, mask) = labelled_pair(h, w, rng.gen_range(1..6), seed);
        let mut config = random_config(&mut rng);
        config.interpolation = Interpolation::Nearest;
        config.fill = encode(VOID);
        let (out, out_mask) = config.augment(image.view(), Some(mask.view()), seed ^ 1);
        let out_mask = out_mask.unwrap();
        prop_assert_eq!(&out.shape()[..2], out_mask.shape());
        for ((y, x), &m) in out_mask.indexed_iter() {
            let px = [out[[y, x, 0]], out[[y, x, 1]], out[[y, x, 2]]];
            prop_assert_eq!(decode(&px), Some(m), "pixel ({}, {})", y, x);
        }
    }

    #[test]
    fn bilinear_image_matches_mask_inside_regions(seed in any::<u64>()) {
        let result = check_bilinear(seed);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// With bilinear images: wherever the image pixel's bilinear footprint in the source lies in one uniform
/// region, the image decodes exactly to that region's label and the mask pixel equals it; the mask is
/// everywhere the nearest source pixel under the same map. Pixels near region borders are skipped because
/// blending there is expected. Returns how many pixels were checked against a region.
fn check_bilinear(seed: u64) -> Result<usize, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, w) = (rng.gen_range(30..90), rng.gen_range(30..90));
    let (image, mask) = labelled_pair(h, w, 12, seed);
    let config = random_config(&mut rng);
    let params = config.sample(h, w, &mut rng);
    let (out, out_mask) = config.apply(image.view(), Some(mask.view()), &params);
    let out_mask = out_mask.unwrap();
    let inv = config.affine(h, w, &params).inverse();
    // Shrinking by k >= 2 goes through a k x k box prefilter, then bilinear on the small image: the
    // footprint of an output pixel is 2 x 2 small pixels, i.e. 2k x 2k source pixels.
    let k = ((1.0 / config.affine(h, w, &params).linear_scale()).floor() as usize)
        .clamp(1, h.min(w)) as isize;
    let mut checked = 0;
    for ((y, x), &m) in out_mask.indexed_iter() {
        let (u, v) = inv.apply(x as f64 + 0.5, y as f64 + 0.5);
        // The mask is the nearest source pixel, or void outside (skip points within 1e-3 of a pixel
        // edge, where float rounding may pick either side).
        let near_edge = |t: f64| (t - t.round()).abs() < 1e-3;
        if !near_edge(u) && !near_edge(v) {
            let inside = u >= 0.0 && v >= 0.0 && u < w as f64 && v < h as f64;
            let expect = if inside {
                mask[[v as usize, u as usize]]
            } else {
                VOID
            };
            if m != expect {
                return Err(format!("nearest mask at ({y}, {x}): {m} vs {expect}"));
            }
        }
        let (jx, jy) = (
            (u / k as f64 - 0.5).floor() as isize,
            (v / k as f64 - 0.5).floor() as isize,
        );
        let mut labels = Vec::new();
        for sy in jy * k..(jy + 2) * k {
            for sx in jx * k..(jx + 2) * k {
                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                    labels.push(None);
                } else {
                    labels.push(Some(mask[[sy as usize, sx as usize]]));
                }
            }
        }
        let first = labels[0];
        if first.is_none() || first == Some(VOID) || labels.iter().any(|l| *l != first) {
            continue;
        }
        let px = [out[[y, x, 0]], out[[y, x, 1]], out[[y, x, 2]]];
        if Some(m) != first {
            return Err(format!("mask at ({y}, {x}): {m} vs {first:?}"));
        }
        if decode(&px) != first {
            return Err(format!("image at ({y}, {x}) = {px:?}, region {first:?}"));
        }
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn bilinear_check_is_not_vacuous() {
    let checked: usize = (0..24).map(|seed| check_bilinear(seed).unwrap()).sum();
    assert!(
        checked > 5000,
        "only {checked} pixels checked over 24 geometries"
    );
}

#[test]
fn same_seed_same_output_different_seed_differs() {
    let (image, mask) = labelled_pair(60, 80, 5, 3);
    let mut config = AugmentConfig::classification(48);
    config.blur_prob = 0.5;
    let a = config.augment(image.view(), Some(mask.view()), 42);
    let b = config.augment(image.view(), Some(mask.view()), 42);
    let c = config.augment(image.view(), Some(mask.view()), 43);
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
}

#[test]
fn identity_params_keep_image() {
    let (image, mask) = labelled_pair(37, 51, 4, 9);
    let config = AugmentConfig::default();
    let (out, out_mask) = config.apply(image.view(), Some(mask.view()), &AugmentParams::identity());
    assert_eq!(out, image);
    assert_eq!(out_mask.unwrap(), mask);
}

#[test]
fn hflip_mirrors_exactly() {
    let (image, mask) = labelled_pair(20, 30, 3, 4);
    let config = AugmentConfig::default();
    let params = AugmentParams {
        flip: true,
        ..AugmentParams::identity()
    };
    let (out, out_mask) = config.apply(image.view(), Some(mask.view()), &params);
    let out_mask = out_mask.unwrap();
    for y in 0..20 {
        for x in 0..30 {
            assert_eq!(out_mask[[y, x]], mask[[y, 29 - x]]);
            assert_eq!(out[[y, x, 1]], image[[y, 29 - x, 1]]);
        }
    }
}

#[test]
fn letterbox_pads_with_void_and_keeps_aspect() {
    // 40 x 80 into 64 x 64: content 32 x 64 centred, 16 rows of padding above and below.
    let image = Array3::<u8>::from_elem((40, 80, 3), 100);
    let mask = Array2::<u8>::from_elem((40, 80), 7);
    let config = AugmentConfig {
        fill: [1, 2, 3],
        ..AugmentConfig::eval(ResizeMode::Letterbox {
            height: 64,
            width: 64,
        })
    };
    let (out, out_mask) = config.apply(image.view(), Some(mask.view()), &AugmentParams::identity());
    let out_mask = out_mask.unwrap();
    for y in 0..64 {
        let expect = if (16..48).contains(&y) { 7 } else { VOID };
        assert!(out_mask.row(y).iter().all(|&m| m == expect), "row {y}");
        let expect_px = if (16..48).contains(&y) {
            [100, 100, 100]
        } else {
            [1, 2, 3]
        };
        assert_eq!(
            [out[[y, 5, 0]], out[[y, 5, 1]], out[[y, 5, 2]]],
            expect_px,
            "row {y}"
        );
    }
}

#[test]
fn shortest_center_crop_takes_the_middle() {
    // 50 x 100 -> shortest side 50 (no scaling), centre 50 x 50 = columns 25..75.
    let mask = Array2::from_shape_fn((50, 100), |(_, x)| (x / 5) as u8);
    let image = Array3::from_shape_fn((50, 100, 3), |(y, x, _)| mask[[y, x]]);
    let config = AugmentConfig::eval(ResizeMode::ShortestCenterCrop {
        shortest: 50,
        height: 50,
        width: 50,
    });
    let (out, out_mask) = config.apply(image.view(), Some(mask.view()), &AugmentParams::identity());
    let out_mask = out_mask.unwrap();
    for x in 0..50 {
        assert_eq!(out_mask[[10, x]], mask[[10, x + 25]]);
        assert_eq!(out[[10, x, 0]], image[[10, x + 25, 0]]);
    }
}

#[test]
fn stretch_downscale_of_constant_is_constant() {
    let image = Array3::<u8>::from_elem((375, 500, 3), 77);
    let config = AugmentConfig::eval(ResizeMode::Stretch {
        height: 64,
        width: 64,
    });
    let (out, _) = config.apply(image.view(), None, &AugmentParams::identity());
    assert!(out.iter().all(|&v| v == 77));
}

#[test]
fn warp_functions_agree_on_rotation_by_90() {
    let (image, mask) = labelled_pair(10, 10, 1, 5);
    // Rotate 90 deg about the centre of a 10x10 image: (x, y) -> (10 - y, x).
    let forward = Affine {
        m: [0.0, -1.0, 10.0, 1.0, 0.0, 0.0],
    };
    let out = warp_image(
        image.view(),
        &forward,
        10,
        10,
        Interpolation::Bilinear,
        [0; 3],
    );
    let out_mask = warp_mask(mask.view(), &forward, 10, 10);
    for y in 0..10 {
        for x in 0..10 {
            assert_eq!(out_mask[[y, x]], mask[[9 - x, y]]);
            assert_eq!(out[[y, x, 0]], image[[9 - x, y, 0]]);
        }
    }
}

#[test]
fn jitter_and_blur_change_pixels_not_mask() {
    let (image, mask) = labelled_pair(30, 30, 6, 2);
    let config = AugmentConfig {
        brightness: 0.5,
        contrast: 0.5,
        saturation: 0.5,
        blur_prob: 1.0,
        ..AugmentConfig::default()
    };
    let (out, out_mask) = config.augment(image.view(), Some(mask.view()), 1);
    assert_eq!(out_mask.unwrap(), mask);
    assert_ne!(out, image);
}

#[test]
fn void_exactly_where_image_is_fill_even_when_shrinking() {
    // A constant image and mask: after any geometry, a pixel is fill in the image iff void in the mask,
    // including shrinks by 2-5x, where the image goes through the box prefilter.
    let image = Array3::<u8>::from_elem((300, 410, 3), 200);
    let mask = Array2::<u8>::from_elem((300, 410), 3);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for trial in 0..40 {
        let config = AugmentConfig {
            resize: ResizeMode::Letterbox {
                height: rng.gen_range(40..120),
                width: rng.gen_range(40..120),
            },
            rotate_deg: 45.0,
            shear: 0.3,
            scale: (0.4, 1.5),
            translate_px: 20.0,
            hflip_prob: 0.5,
            ..AugmentConfig::default()
        };
        let (out, out_mask) = config.augment(image.view(), Some(mask.view()), trial);
        for ((y, x), &m) in out_mask.unwrap().indexed_iter() {
            let v = out[[y, x, 0]];
            assert!(
                (m == VOID && v == 0) || (m == 3 && v == 200),
                "trial {trial} ({y}, {x}): mask {m}, image {v}"
            );
        }
    }
}

#[test]
fn jitter_matches_per_pixel_formula() {
    let (image, _) = labelled_pair(23, 31, 2, 8);
    let noisy = image.mapv(|v| v.wrapping_mul(7).wrapping_add(13));
    for (b, c, s) in [
        (1.3, 1.0, 1.0),
        (0.8, 1.4, 1.0),
        (1.1, 0.7, 0.6),
        (1.0, 1.0, 1.5),
    ] {
        let mut fast = noisy.clone();
        voc_data::augment::color_jitter(&mut fast, b, c, s);
        let clamp = |x: f32| x.clamp(0.0, 255.0);
        let grey = |p: [f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        let bright: Vec<[f32; 3]> = noisy
            .as_slice()
            .unwrap()
            .chunks(3)
            .map(|p| [0, 1, 2].map(|i| clamp(p[i] as f32 * b)))
            .collect();
        let mean = bright.iter().map(|&p| grey(p) as f64).sum::<f64>() / bright.len() as f64;
        for (k, p) in bright.iter().enumerate() {
            let q = p.map(|v| clamp(c * v + (1.0 - c) * mean as f32));
            let g = grey(q);
            let r = q.map(|v| (clamp(s * v + (1.0 - s) * g) + 0.5) as u8);
            let got = &fast.as_slice().unwrap()[k * 3..k * 3 + 3];
            for (g, e) in got.iter().zip(r) {
                assert!(
                    g.abs_diff(e) <= 1,
                    "({b}, {c}, {s}) pixel {k}: {got:?} vs {r:?}"
                );
            }
        }
    }
}

/// The in-place colour ops take any `Array3`, including one whose memory is not row-major (a permuted
/// view made owned keeps its strides): the result must equal the same op on the row-major copy.
#[test]
fn in_place_ops_accept_non_standard_layouts() {
    let pixels: Vec<u8> = (0..3 * 7 * 5).map(|i| (i * 37 % 251) as u8).collect();
    let chw = Array3::from_shape_vec((3, 7, 5), pixels).unwrap();
    let permuted = chw.permuted_axes([1, 2, 0]); // 7x5x3, not standard layout
    assert!(!permuted.is_standard_layout());
    let standard = permuted.as_standard_layout().into_owned();

    let (mut a, mut b) = (permuted.clone(), standard.clone());
    voc_data::augment::color_jitter(&mut a, 1.2, 0.8, 1.3);
    voc_data::augment::color_jitter(&mut b, 1.2, 0.8, 1.3);
    assert_eq!(a, b);

    let (mut a, mut b) = (permuted, standard);
    voc_data::augment::gaussian_blur(&mut a, 1.0);
    voc_data::augment::gaussian_blur(&mut b, 1.0);
    assert_eq!(a, b);
}

/// A geometry proptest found: an output pixel whose sample lands 2e-5 px past a source pixel centre in
/// exact arithmetic and just before it in the kernel's f32 steps, which used to bleed one grey level of the
/// neighbouring region in.
#[test]
fn bilinear_sample_on_a_pixel_centre_takes_nothing_from_across_it() {
    let checked = check_bilinear(4557618694879235778).unwrap();
    assert!(checked > 100, "{checked}");
}

/// `pan` with a zoom of at least 1 moves the window over the photo without ever leaving it (no fill in
/// the output), and over many draws reaches both ends of the long side.
#[test]
fn pan_stays_inside_the_photo_and_covers_it() {
    use voc_data::ResizeMode;
    // 60x120: left half dark grey, right half light grey; nothing black.
    let image = Array3::from_shape_fn((60, 120, 3), |(_, x, _)| if x < 60 { 60u8 } else { 200 });
    let config = AugmentConfig {
        resize: ResizeMode::ShortestCenterCrop {
            shortest: 32,
            height: 32,
            width: 32,
        },
        scale: (1.0, 2.0),
        pan: true,
        ..AugmentConfig::default()
    };
    assert!(config.is_random());
    let (mut saw_dark_only, mut saw_light_only) = (false, false);
    for seed in 0..200 {
        let (out, _) = config.augment(image.view(), None, seed);
        assert!(
            out.iter().all(|&v| v >= 50),
            "seed {seed}: the window left the photo"
        );
        saw_dark_only |= out.iter().all(|&v| v < 100);
        saw_light_only |= out.iter().all(|&v| v > 150);
    }
    assert!(
        saw_dark_only && saw_light_only,
        "the window never reached an end of the photo"
    );
}
