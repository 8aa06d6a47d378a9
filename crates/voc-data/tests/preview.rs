//! The preview grid and its pieces.
use std::path::Path;

use ndarray::Array2;
use voc_core::PALETTE;
use voc_data::preview::{class_grid, colorize_mask};
use voc_data::{CompetitionDir, CLASS_NAMES};

#[test]
fn palette_matches_voc() {
    let p = PALETTE;
    assert_eq!(p[0], [0, 0, 0]);
    assert_eq!(p[1], [128, 0, 0]);
    assert_eq!(p[12], [64, 0, 128], "dog");
    assert_eq!(p[15], [192, 128, 128], "person");
    assert_eq!(p[255], [224, 224, 192], "void");
    let m = Array2::from_shape_vec((1, 2), vec![15u8, 255]).unwrap();
    let c = colorize_mask(m.view());
    assert_eq!((c[[0, 0, 0]], c[[0, 1, 2]]), (192, 192));
}

/// The repository's own sample, `assets/voc-sample`: train 2 (horse) and 5 (chair and dog), test 1.
fn repository_sample() -> CompetitionDir {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/voc-sample");
    CompetitionDir::open(&dir).unwrap()
}

#[test]
fn grid_shows_every_present_class() {
    let train = repository_sample().split("train").unwrap();
    let (image, entries) = class_grid(&train, 100, 2).unwrap();
    let classes: Vec<&str> = entries.iter().map(|e| e.class).collect();
    assert_eq!(classes, ["chair", "dog", "horse"]);
    assert_eq!(entries[0].id, "5");
    assert_eq!(entries[2].id, "2");
    assert!(classes.iter().all(|c| CLASS_NAMES.contains(c)));
    // 2 columns x 2 rows of tiles: title + image + mask per tile.
    assert_eq!(image.width() as usize, 8 + 2 * (100 + 8));
    assert!(image.height() > 2 * 200);
    // The horse mask colour (class 13 = [192, 0, 128]) appears somewhere.
    assert!(image.pixels().any(|p| p.0 == [192, 0, 128]));
    // Titles are drawn in black.
    assert!(image.pixels().any(|p| p.0 == [0, 0, 0]));
}

#[test]
fn unlabelled_split_without_masks_is_an_error() {
    let test = repository_sample().split("test").unwrap();
    let e = class_grid(&test, 100, 3).unwrap_err();
    assert!(e.to_string().contains("neither labels nor masks"), "{e}");
}
