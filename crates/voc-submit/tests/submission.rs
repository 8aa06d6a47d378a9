//! Writing, reading, validating and scoring whole submissions, and the golden file of the sample data.
use std::path::{Path, PathBuf};

use ndarray::Array2;
use voc_submit::{
    validate, ExpectedImage, MaskView, Problem, RowKind, Scorer, Submission, SubmissionWriter,
    HEADER,
};

struct Image {
    id: String,
    labels: [u8; 20],
    mask: Array2<u8>,
}

/// The ground truth of a competition split, read directly (voc-data is the crate that reads it for
/// users; this crate does not depend on it).
fn read_split(dir: &Path, split: &str) -> Vec<Image> {
    let csv = std::fs::read_to_string(dir.join(format!("{split}_set.csv"))).unwrap();
    csv.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let labels = std::array::from_fn(|i| fields[i + 1].parse().unwrap());
            let mask =
                ndarray_npy::read_npy(dir.join("seg").join(format!("{split}_{}.npy", fields[0])))
                    .unwrap();
            Image {
                id: fields[0].to_string(),
                labels,
                mask,
            }
        })
        .collect()
}

fn encode(images: &[Image]) -> Vec<u8> {
    let mut writer = SubmissionWriter::new(Vec::new()).unwrap();
    for image in images {
        let (h, w) = image.mask.dim();
        writer
            .write_image(
                &image.id,
                &image.labels,
                MaskView::new(image.mask.as_slice().unwrap(), h, w).unwrap(),
            )
            .unwrap();
    }
    writer.into_inner().unwrap()
}

fn expected(images: &[Image]) -> Vec<ExpectedImage> {
    images
        .iter()
        .map(|i| ExpectedImage {
            id: i.id.clone(),
            height: i.mask.dim().0,
            width: i.mask.dim().1,
        })
        .collect()
}

fn score_of(bytes: &[u8], images: &[Image]) -> voc_submit::Result<voc_submit::Score> {
    let parsed = Submission::parse(bytes);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let mut scorer = Scorer::new(&parsed.submission)?;
    for image in images {
        let (h, w) = image.mask.dim();
        scorer.add_image(
            &image.id,
            &image.labels,
            MaskView::new(image.mask.as_slice().unwrap(), h, w)?,
        )?;
    }
    scorer.finish()
}

/// `tests/data/NAME`: files vendored with the crate (tests/data/SOURCES.md).
fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The header and the rows of `ids` of the competition encoder's submission for the ground truth of the
/// shared sample's 6 train images.
fn reference_rows(ids: &[&str]) -> Vec<u8> {
    let text = std::fs::read_to_string(data_file("submission_voc_sample_train.csv")).unwrap();
    let mut lines = text.split_inclusive('\n');
    let mut out = lines.next().unwrap().to_string();
    for line in lines {
        let id = line.rsplit_once(',').unwrap().0.rsplit_once('_').unwrap().0;
        if ids.contains(&id) {
            out += line;
        }
    }
    out.into_bytes()
}

/// Encodes the ground truth of the train split in `dir` and checks it against the competition encoder's
/// rows for the same images, byte for byte; then validates and scores those rows.
fn check_sample_ground_truth(dir: &Path, present_classes: &[usize]) {
    let images = read_split(dir, "train");
    let ids: Vec<&str> = images.iter().map(|i| i.id.as_str()).collect();
    let reference = reference_rows(&ids);
    assert_eq!(
        reference.iter().filter(|&&b| b == b'\n').count(),
        1 + 2 * images.len(),
        "the reference holds every image of {}",
        dir.display()
    );
    let ours = encode(&images);
    assert_eq!(ours.len(), reference.len());
    assert!(ours == reference, "encoding differs from the reference");

    let report = validate(&reference, &expected(&images));
    assert!(report.is_valid(), "{:?}", report.problems);
    assert!(report.warnings.is_empty());
    assert_eq!(report.rows, 2 * images.len());

    let score = score_of(&reference, &images).unwrap();
    assert_eq!(score.images, images.len());
    assert_eq!(score.dice, 1.0);
    assert_eq!(score.classification_dice, 1.0);
    assert_eq!(score.segmentation_dice, 1.0);
    assert_eq!(score.mean_iou, Some(1.0));
    let present: Vec<usize> = (0..20).filter(|&c| score.class_iou[c].is_some()).collect();
    assert_eq!(present, present_classes);
}

/// The repository's sample (`assets/voc-sample`: train images 2 and 5 of the shared sample, the same
/// files) against the reference's rows for those images: runs on every checkout.
#[test]
fn sample_ground_truth_matches_the_competition_encoder_byte_for_byte() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/voc-sample/train");
    // Classes: horse (train_2), chair and dog (train_5).
    check_sample_ground_truth(&dir, &[8, 11, 12]);
}

/// The whole reference file against all 6 train images of the shared sample.
#[test]
fn shared_sample_ground_truth_matches_the_competition_encoder_byte_for_byte() {
    let Some(dir) = voc_core::testing::shared_file(
        "shared_sample_ground_truth_matches_the_competition_encoder_byte_for_byte",
        "data/voc-sample/train",
    ) else {
        return;
    };
    assert_eq!(read_split(&dir, "train").len(), 6);
    assert_eq!(
        reference_rows(&["0", "1", "2", "3", "4", "5"]),
        std::fs::read(data_file("submission_voc_sample_train.csv")).unwrap()
    );
    // Classes in the sample: aeroplane, chair, dog, horse, sheep.
    check_sample_ground_truth(&dir, &[0, 8, 11, 12, 16]);
}

fn toy_images() -> Vec<Image> {
    let mut a = Array2::<u8>::zeros((2, 3));
    a[[0, 1]] = 1;
    a[[1, 1]] = 1;
    let mut b = Array2::<u8>::zeros((3, 2));
    b[[2, 0]] = 2;
    b[[0, 0]] = 255;
    let mut la = [0u8; 20];
    la[0] = 1;
    let mut lb = [0u8; 20];
    lb[1] = 1;
    vec![
        Image {
            id: "a".into(),
            labels: la,
            mask: a,
        },
        Image {
            id: "b".into(),
            labels: lb,
            mask: b,
        },
    ]
}

#[test]
fn writer_writes_the_competition_layout() {
    let text = String::from_utf8(encode(&toy_images())).unwrap();
    assert_eq!(text, "Id,Predicted\na_classification,1 1\na_segmentation,2 1 5 1\nb_classification,2 1\nb_segmentation,11 1\n");
}

#[test]
fn writer_checks_before_writing() {
    let mut writer = SubmissionWriter::new(Vec::new()).unwrap();
    let mut labels = [0u8; 20];
    labels[19] = 7;
    let mask = [0u8; 4];
    let err = writer
        .write_image("x", &labels, MaskView::new(&mask, 2, 2).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("tvmonitor"), "{err}");
    let bad_mask = [0u8, 30, 0, 0];
    assert!(writer
        .write_image("x", &[0; 20], MaskView::new(&bad_mask, 2, 2).unwrap())
        .is_err());
    assert!(writer.write_classification("x,y", &[0; 20]).is_err());
    assert!(writer.write_classification("", &[0; 20]).is_err());
    assert_eq!(writer.rows(), 0);
    assert_eq!(
        writer.into_inner().unwrap(),
        format!("{HEADER}\n").into_bytes(),
        "failed rows leave nothing behind"
    );
}

#[test]
fn atomic_file_appears_only_when_finished() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("submission.csv");
    let images = toy_images();
    let mut writer = SubmissionWriter::create(&path).unwrap();
    writer.write_classification("a", &images[0].labels).unwrap();
    assert!(!path.exists());
    drop(writer);
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary file removed"
    );

    let mut writer = SubmissionWriter::create(&path).unwrap();
    writer.write_classification("a", &images[0].labels).unwrap();
    assert_eq!(writer.finish().unwrap(), path);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "Id,Predicted\na_classification,1 1\n"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn reader_accepts_quotes_and_crlf() {
    let parsed =
        Submission::parse(b"Id,Predicted\r\n\"a_classification\",\"1 1\"\r\na_segmentation,\r\n");
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let rows = &parsed.submission.rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].line,
            rows[0].image_id.as_str(),
            rows[0].kind,
            rows[0].rle.as_str()
        ),
        (2, "a", RowKind::Classification, "1 1")
    );
    assert_eq!(
        (rows[1].kind, rows[1].rle.as_str()),
        (RowKind::Segmentation, "")
    );
}

fn lines_of(problems: &[Problem]) -> Vec<Option<usize>> {
    problems.iter().map(|p| p.line).collect()
}

#[test]
fn validation_reports_every_problem_with_its_line() {
    let images = toy_images();
    let text = "\
Id,Predicted
a_classification,1 1
a_segmentation,2 1 5 1 200 1
b_segmentation,11 1
b_classification,2 1 2
c_classification,1 1
a_classification,1 1
b_foo,1 1

b_segmentation,1,2
";
    let report = validate(text.as_bytes(), &expected(&images));
    let messages: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        lines_of(&report.problems),
        vec![
            Some(3),
            Some(5),
            Some(5),
            Some(6),
            Some(7),
            Some(8),
            Some(9),
            Some(10)
        ],
        "{messages:#?}"
    );
    let all = messages.join("\n");
    for needle in [
        "line 3: a_segmentation: run 3 (200 1) ends at 200, past the end of the array (120 values) (20 classes x 2 x 3 pixels",
        "line 5: row b_classification is out of order: it comes after b_segmentation (line 4)",
        "line 5: b_classification: odd number of values (3)",
        "line 6: extra row c_classification: image Id \"c\" is not an image of the split",
        "line 7: duplicate row a_classification (first on line 2)",
        "line 8: Id \"b_foo\" must be",
        "line 9: empty line",
        "line 10: expected 2 fields",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in\n{all}");
    }
    assert!(!report.is_valid());
}

#[test]
fn validation_finds_missing_rows_and_truncation() {
    let images = toy_images();
    let full = encode(&images);
    // Cut in the middle of the last row: the row's RLE is still well-formed ("1"), so the missing line
    // break is what tells.
    let cut = &full[..full.len() - 3];
    let report = validate(cut, &expected(&images));
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0]
        .to_string()
        .starts_with("line 5: the last line does not end with a line break"));
    assert!(
        !report.is_valid(),
        "a cut RLE is odd: {:?}",
        report.problems
    );

    let report = validate(&full[..full.len() / 2], &expected(&images));
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message == "missing row b_segmentation"),
        "{:?}",
        report.problems
    );

    let report = validate(b"", &expected(&images));
    assert!(report.problems[0].message.starts_with("the file is empty"));
    let report = validate(b"id,predicted\n", &expected(&images));
    assert_eq!(
        report.problems[0].to_string(),
        "line 1: header is \"id,predicted\": expected `Id,Predicted`"
    );
    assert_eq!(report.problems.len(), 5);
    let report = validate(&[0xff, 0xfe, b'\n'], &expected(&images));
    assert!(report.problems[0].message.contains("UTF-8"));
}

#[test]
fn scorer_computes_dice_and_iou() {
    let images = toy_images();
    // a: truth labels {0}, mask plane 6 with class 1 at positions 1 and 4 -> stack runs 2 1 5 1.
    // Prediction: labels {0, 1} (dice 2*1/(1+2) = 2/3); segmentation only position 2 (dice 2*1/3).
    // b: exact.
    let text = "Id,Predicted\na_classification,1 2\na_segmentation,2 1\nb_classification,2 1\nb_segmentation,11 1\n";
    let score = score_of(text.as_bytes(), &images).unwrap();
    assert!((score.classification_dice - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    assert!((score.segmentation_dice - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    assert!((score.dice - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    assert_eq!(score.class_iou[0], Some(0.5));
    assert_eq!(score.class_iou[1], Some(1.0));
    assert_eq!(score.class_iou[2], None);
    assert_eq!(score.mean_iou, Some(0.75));

    // Both empty rows count as 1; a prediction of nothing against something as 0.
    let text = "Id,Predicted\na_classification,\na_segmentation,\nb_classification,2 1\nb_segmentation,11 1\n";
    let score = score_of(text.as_bytes(), &images).unwrap();
    assert_eq!(score.dice, 0.5);
}

#[test]
fn scorer_rejects_incomplete_or_extra_rows() {
    let images = toy_images();
    let missing =
        "Id,Predicted\na_classification,1 1\na_segmentation,2 1 5 1\nb_classification,2 1\n";
    let err = score_of(missing.as_bytes(), &images).unwrap_err();
    assert!(err.to_string().contains("no row b_segmentation"), "{err}");
    let extra = format!(
        "{}z_classification,\n",
        String::from_utf8(encode(&images)).unwrap()
    );
    let err = score_of(extra.as_bytes(), &images).unwrap_err();
    assert!(
        err.to_string().contains("z_classification (line 6)"),
        "{err}"
    );
    let bad = "Id,Predicted\na_classification,1 1\na_segmentation,2 1 5 1\nb_classification,2 1\nb_segmentation,118 9\n";
    let err = score_of(bad.as_bytes(), &images).unwrap_err();
    assert!(
        err.to_string()
            .contains("line 5: b_segmentation: run 1 (118 9) ends at 126"),
        "{err}"
    );
}
