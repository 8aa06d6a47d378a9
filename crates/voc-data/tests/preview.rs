//! The preview grid and its pieces.
use ndarray::Array2;
use voc_data::preview::{class_grid, colorize_mask, voc_palette};
use voc_data::{CompetitionDir, VOC_CLASSES};

#[test]
fn palette_matches_voc() {
    let p = voc_palette();
    assert_eq!(p[0], [0, 0, 0]);
    assert_eq!(p[1], [128, 0, 0]);
    assert_eq!(p[12], [64, 0, 128], "dog");
    assert_eq!(p[15], [192, 128, 128], "person");
    assert_eq!(p[255], [224, 224, 192], "void");
    let m = Array2::from_shape_vec((1, 2), vec![15u8, 255]).unwrap();
    let c = colorize_mask(m.view());
    assert_eq!((c[[0, 0, 0]], c[[0, 1, 2]]), (192, 192));
}

#[test]
fn grid_shows_every_present_class() {
    let Some(shared) = voc_tensor::testing::shared_or_skip("grid_shows_every_present_class") else {
        return;
    };
    let train = CompetitionDir::open(&shared.join("data/voc-sample"))
        .unwrap()
        .split("train")
        .unwrap();
    let (image, entries) = class_grid(&train, 100, 3).unwrap();
    let classes: Vec<&str> = entries.iter().map(|e| e.class).collect();
    assert_eq!(classes, ["aeroplane", "chair", "dog", "horse", "sheep"]);
    assert_eq!(entries[0].id, "0");
    assert!(classes.iter().all(|c| VOC_CLASSES.contains(c)));
    // 3 columns x 2 rows of tiles: title + image + mask per tile.
    assert_eq!(image.width() as usize, 8 + 3 * (100 + 8));
    assert!(image.height() > 2 * 200);
    // The sheep mask colour (class 17 = [128, 64, 0]) appears somewhere.
    assert!(image.pixels().any(|p| p.0 == [128, 64, 0]));
    // Titles are drawn in black.
    assert!(image.pixels().any(|p| p.0 == [0, 0, 0]));
}

#[test]
fn unlabelled_split_without_masks_is_an_error() {
    let Some(shared) =
        voc_tensor::testing::shared_or_skip("unlabelled_split_without_masks_is_an_error")
    else {
        return;
    };
    let test = CompetitionDir::open(&shared.join("data/voc-sample"))
        .unwrap()
        .split("test")
        .unwrap();
    let e = class_grid(&test, 100, 3).unwrap_err();
    assert!(e.to_string().contains("neither labels nor masks"), "{e}");
}
