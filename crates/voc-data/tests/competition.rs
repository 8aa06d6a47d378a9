//! The competition-layout reader: the repository's sample and every bad-input error.
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3};
use voc_data::{npy, CompetitionDir, DataError, LoadMode, SplitIndex, CLASS_NAMES};

fn header() -> String {
    format!("Id,{}\n", CLASS_NAMES.join(","))
}

fn row(id: &str, classes: &[usize]) -> String {
    let vals: Vec<&str> = (0..20)
        .map(|c| if classes.contains(&c) { "1" } else { "0" })
        .collect();
    format!("{id},{}\n", vals.join(","))
}

/// A valid two-image train split in `root/train`.
fn make_split(root: &Path) {
    let dir = root.join("train");
    std::fs::create_dir_all(dir.join("img")).unwrap();
    std::fs::create_dir_all(dir.join("seg")).unwrap();
    std::fs::write(
        dir.join("train_set.csv"),
        header() + &row("0", &[0]) + &row("7", &[14]),
    )
    .unwrap();
    for (id, class) in [("0", 1u8), ("7", 15u8)] {
        let img = Array3::<u8>::from_elem((6, 5, 3), 9);
        npy::write_u8(
            &dir.join(format!("img/train_{id}.npy")),
            &[6, 5, 3],
            img.as_slice().unwrap(),
        )
        .unwrap();
        let mut mask = Array2::<u8>::zeros((6, 5));
        mask[[2, 2]] = class;
        mask[[0, 0]] = 255;
        npy::write_u8(
            &dir.join(format!("seg/train_{id}.npy")),
            &[6, 5],
            mask.as_slice().unwrap(),
        )
        .unwrap();
    }
}

fn open_train(root: &Path) -> voc_data::Result<SplitIndex> {
    CompetitionDir::open(root)?.split("train")
}

/// The repository's own sample, `assets/voc-sample` (3 of the shared sample's real VOC images, the same
/// files): train 2 (horse, 513x513) and 5 (chair and dog, 375x500) with masks, test 1.
fn repository_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/voc-sample")
}

#[test]
fn reads_the_repository_sample() {
    let dir = CompetitionDir::open(&repository_sample()).unwrap();
    let train = dir.split("train").unwrap();
    assert_eq!(train.ids, ["2", "5"]);
    assert!(train.has_masks);
    let labels = train.labels.as_ref().unwrap();
    assert!(labels[0].contains(12), "train_2 is a horse");
    assert_eq!(labels[0].len(), 1);
    assert!(
        labels[1].contains(8) && labels[1].contains(11),
        "train_5 has chair and dog"
    );
    assert_eq!(train.image_size("5").unwrap(), (375, 500));
    assert_eq!(train.image_size("2").unwrap(), (513, 513));
    let samples = train.load_all().unwrap();
    assert_eq!(samples.len(), 2);
    for s in &samples {
        assert_eq!(s.image.shape()[..2], s.mask.as_ref().unwrap().shape()[..]);
    }
    assert!(
        train.label_mismatches().unwrap().is_empty(),
        "the sample's CSV agrees with its masks"
    );

    let test = dir.split("test").unwrap();
    assert_eq!(test.ids, ["1"]);
    assert!(test.labels.is_none(), "test labels are all -1");
    assert!(!test.has_masks);
    assert_eq!(test.read_image("1").unwrap().shape(), &[375, 500, 3]);

    let lazy = train.load(LoadMode::Lazy).unwrap();
    let eager = train.load(LoadMode::Eager).unwrap();
    assert_eq!(lazy.get(1).unwrap().image, eager.get(1).unwrap().image);
}

#[test]
fn columns_in_any_order_and_mask_dtypes() {
    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    let dir = tmp.path().join("train");
    // Reversed class columns, Id last.
    let mut cols: Vec<&str> = CLASS_NAMES.to_vec();
    cols.reverse();
    let mut csv = format!("{},Id\n", cols.join(","));
    for (id, class) in [("0", "aeroplane"), ("7", "person")] {
        let vals: Vec<&str> = cols
            .iter()
            .map(|c| if *c == class { "1" } else { "0" })
            .collect();
        csv += &format!("{},{id}\n", vals.join(","));
    }
    std::fs::write(dir.join("train_set.csv"), csv).unwrap();
    // An int64 mask and an int32 mask with void.
    let mut m64 = Array2::<i64>::zeros((6, 5));
    m64[[2, 2]] = 1;
    m64[[0, 0]] = 255;
    ndarray_npy::write_npy(dir.join("seg/train_0.npy"), &m64).unwrap();
    let mut m32 = Array2::<i32>::zeros((6, 5));
    m32[[2, 2]] = 15;
    ndarray_npy::write_npy(dir.join("seg/train_7.npy"), &m32).unwrap();
    let split = open_train(tmp.path()).unwrap();
    let labels = split.labels.clone().unwrap();
    assert!(labels[0].contains(0));
    assert!(labels[1].contains(14));
    assert_eq!(labels[0].len(), 1);
    let m = split.read_mask("0").unwrap();
    assert_eq!((m[[2, 2]], m[[0, 0]], m[[1, 1]]), (1, 255, 0));
    assert_eq!(split.read_mask("7").unwrap()[[2, 2]], 15);
}

fn expect_err(result: voc_data::Result<impl std::fmt::Debug>, must_contain: &[&str]) -> DataError {
    let err = result.expect_err("bad input must be an error");
    let msg = err.to_string();
    for part in must_contain {
        assert!(msg.contains(part), "error `{msg}` should mention `{part}`");
    }
    err
}

#[test]
fn missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    expect_err(
        CompetitionDir::open(&tmp.path().join("nope")),
        &["nope", "missing"],
    );
    make_split(tmp.path());
    std::fs::remove_file(tmp.path().join("train/img/train_7.npy")).unwrap();
    let e = expect_err(open_train(tmp.path()), &["train_7.npy", "missing", "Id 7"]);
    assert!(matches!(e, DataError::Missing { .. }));

    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    std::fs::remove_file(tmp.path().join("train/seg/train_0.npy")).unwrap();
    expect_err(open_train(tmp.path()), &["seg/train_0.npy", "missing"]);

    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    std::fs::remove_file(tmp.path().join("train/train_set.csv")).unwrap();
    expect_err(open_train(tmp.path()), &["train_set.csv", "missing"]);
}

#[test]
fn wrong_dtype_or_shape() {
    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    let dir = tmp.path().join("train");
    ndarray_npy::write_npy(
        dir.join("img/train_0.npy"),
        &Array3::<f32>::zeros((6, 5, 3)),
    )
    .unwrap();
    let split = open_train(tmp.path()).unwrap();
    let e = expect_err(split.read_image("0"), &["train_0.npy", "<f4", "uint8"]);
    assert!(matches!(e, DataError::BadArray { .. }));

    npy::write_u8(&dir.join("img/train_0.npy"), &[6, 5], &[0; 30]).unwrap();
    expect_err(
        split.read_image("0"),
        &["train_0.npy", "[6, 5]", "(H, W, 3)"],
    );
    expect_err(split.image_size("0"), &["train_0.npy", "(H, W, 3)"]);
    npy::write_u8(&dir.join("img/train_0.npy"), &[6, 5, 4], &[0; 120]).unwrap();
    expect_err(split.read_image("0"), &["train_0.npy", "(H, W, 3)"]);

    npy::write_u8(&dir.join("seg/train_7.npy"), &[6, 5, 1], &[0; 30]).unwrap();
    expect_err(split.read_mask("7"), &["seg/train_7.npy", "(H, W)"]);
    ndarray_npy::write_npy(dir.join("seg/train_7.npy"), &Array2::<f64>::zeros((6, 5))).unwrap();
    expect_err(split.read_mask("7"), &["seg/train_7.npy", "<f8"]);

    std::fs::write(dir.join("seg/train_7.npy"), b"not numpy at all").unwrap();
    expect_err(split.read_mask("7"), &["seg/train_7.npy", "not a .npy"]);
    let mut truncated = std::fs::read(dir.join("img/train_0.npy")).unwrap();
    truncated.truncate(truncated.len() - 10);
    std::fs::write(dir.join("img/train_0.npy"), truncated).unwrap();
    expect_err(split.read_image("0"), &["train_0.npy", "truncated"]);
}

#[test]
fn image_and_mask_sizes_differ() {
    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    npy::write_u8(&tmp.path().join("train/seg/train_7.npy"), &[5, 6], &[0; 30]).unwrap();
    let split = open_train(tmp.path()).unwrap();
    let e = expect_err(split.load_all(), &["train_7.npy", "5x6", "6x5"]);
    assert!(matches!(e, DataError::SizeMismatch { .. }));
}

#[test]
fn label_column_missing() {
    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    let csv = std::fs::read_to_string(tmp.path().join("train/train_set.csv"))
        .unwrap()
        .replace("sheep", "shep");
    std::fs::write(tmp.path().join("train/train_set.csv"), csv).unwrap();
    let e = expect_err(open_train(tmp.path()), &["train_set.csv", "`sheep`"]);
    assert!(matches!(e, DataError::MissingColumn { .. }));
}

#[test]
fn mask_value_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    let mut mask = Array2::<i32>::zeros((6, 5));
    mask[[3, 4]] = 21;
    ndarray_npy::write_npy(tmp.path().join("train/seg/train_7.npy"), &mask).unwrap();
    let split = open_train(tmp.path()).unwrap();
    let e = expect_err(
        split.read_mask("7"),
        &["train_7.npy", "value 21", "row 3", "column 4"],
    );
    assert!(matches!(
        e,
        DataError::BadMaskValue {
            value: 21,
            row: 3,
            col: 4,
            ..
        }
    ));
    let mut mask = Array2::<u8>::zeros((6, 5));
    mask[[1, 0]] = 254;
    npy::write_u8(
        &tmp.path().join("train/seg/train_7.npy"),
        &[6, 5],
        mask.as_slice().unwrap(),
    )
    .unwrap();
    expect_err(split.load_all(), &["train_7.npy", "value 254"]);
}

#[test]
fn bad_csv_rows() {
    let cases: [(String, &[&str]); 5] = [
        (header() + "0,1,0\n", &["train_set.csv:2", "3 fields"]),
        (
            header() + &row("0", &[]).replace(",0\n", ",x\n"),
            &["train_set.csv:2", "'x' is not a number"],
        ),
        (
            header() + &row("0", &[]).replace(",0\n", ",2\n"),
            &["train_set.csv:2", "expected 0, 1 or -1"],
        ),
        (
            header() + &row("0", &[]).replacen(",0", ",-1", 3),
            &["train_set.csv:2", "3 of 20 labels are -1"],
        ),
        (
            header() + &row("0", &[]) + &row("0", &[1]),
            &["train_set.csv", "appears twice"],
        ),
    ];
    for (csv, parts) in cases {
        let tmp = tempfile::tempdir().unwrap();
        make_split(tmp.path());
        std::fs::write(tmp.path().join("train/train_set.csv"), csv).unwrap();
        let e = expect_err(open_train(tmp.path()), parts);
        assert!(matches!(e, DataError::BadCsvRow { .. }), "{e}");
    }
}

#[test]
fn label_disagreements_are_counted_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    make_split(tmp.path());
    // Id 7's mask shows a person (15 -> class 14); claim a dog instead.
    std::fs::write(
        tmp.path().join("train/train_set.csv"),
        header() + &row("0", &[0]) + &row("7", &[11]),
    )
    .unwrap();
    let split = open_train(tmp.path()).unwrap();
    let mismatches = split.label_mismatches().unwrap();
    assert_eq!(mismatches.len(), 2);
    assert!(mismatches
        .iter()
        .any(|m| m.id == "7" && m.class == "dog" && m.csv == 1 && !m.in_mask));
    assert!(mismatches
        .iter()
        .any(|m| m.id == "7" && m.class == "person" && m.csv == 0 && m.in_mask));
    let data = split.load(LoadMode::Eager).unwrap();
    assert_eq!(data.label_mismatches().unwrap(), mismatches);
}
