//! `voc encode`, `voc validate` and `voc score` run as a user runs them, on the shared sample data.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VOC: &str = env!("CARGO_BIN_EXE_voc");

fn voc(args: &[&str]) -> Output {
    let output = Command::new(VOC)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running voc");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "voc {args:?} panicked:\n{stderr}"
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What the tests read from the shared folder: the 8-image sample and the competition encoder's
/// submission for its 6 train images.
const SAMPLE_AND_REFERENCE: [&str; 2] = [
    "data/voc-sample",
    "reference/submission_voc_sample_train.csv",
];
const SAMPLE_TRAIN: [&str; 1] = ["data/voc-sample/train"];

fn sample(shared: &Path) -> String {
    shared.join("data/voc-sample").display().to_string()
}

/// A writable copy of the sample's train split, to break on purpose.
fn copy_train(shared: &Path, into: &Path) -> PathBuf {
    let from = shared.join("data/voc-sample/train");
    let to = into.join("train");
    for sub in ["img", "seg"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(sub).join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(from.join("train_set.csv"), to.join("train_set.csv")).unwrap();
    to
}

#[test]
fn encode_matches_the_competition_encoder_byte_for_byte() {
    let Some(shared) = voc_core::testing::shared_with(
        "encode_matches_the_competition_encoder_byte_for_byte",
        &SAMPLE_AND_REFERENCE,
    ) else {
        return;
    };
    let reference =
        std::fs::read(shared.join("reference/submission_voc_sample_train.csv")).unwrap();
    let out = voc(&["encode", "--data", &sample(&shared), "--split", "train"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout == reference,
        "stdout differs from the reference submission"
    );
    assert!(
        stderr(&out).contains("wrote 12 rows (6 images"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("submission.csv");
    let out = voc(&[
        "encode",
        "--data",
        &sample(&shared),
        "--split",
        "train",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&file).unwrap() == reference,
        "file differs from the reference submission"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );
}

#[test]
fn score_of_the_ground_truth_is_exactly_one() {
    let Some(shared) = voc_core::testing::shared_with(
        "score_of_the_ground_truth_is_exactly_one",
        &SAMPLE_AND_REFERENCE,
    ) else {
        return;
    };
    let reference = shared.join("reference/submission_voc_sample_train.csv");
    let args = [
        "score",
        "--submission",
        reference.to_str().unwrap(),
        "--data",
        &sample(&shared),
        "--split",
        "train",
    ];
    let out = voc(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "dice",
        "classification_dice",
        "segmentation_dice",
        "mean_iou",
    ] {
        assert_eq!(json[key].as_f64(), Some(1.0), "{key} in {json}");
    }
    assert_eq!(json["images"], 6);
    assert_eq!(json["class_iou"]["dog"].as_f64(), Some(1.0));
    assert!(json["class_iou"]["bus"].is_null());

    let out = voc(&args);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("mean Dice, all rows             1.000000"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn score_of_a_wrong_submission_is_below_one() {
    let Some(shared) = voc_core::testing::shared_with(
        "score_of_a_wrong_submission_is_below_one",
        &SAMPLE_AND_REFERENCE,
    ) else {
        return;
    };
    let reference =
        std::fs::read_to_string(shared.join("reference/submission_voc_sample_train.csv")).unwrap();
    // Image 5 is chair + dog; claim only the chair, and no pixels at all.
    let wrong: String = reference
        .lines()
        .map(|l| match l.split_once(',') {
            Some(("5_classification", _)) => "5_classification,9 1".to_string(),
            Some(("5_segmentation", _)) => "5_segmentation,".to_string(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.csv");
    std::fs::write(&file, wrong).unwrap();
    let out = voc(&[
        "score",
        "--submission",
        file.to_str().unwrap(),
        "--data",
        &sample(&shared),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let classification = (5.0 + 2.0 / 3.0) / 6.0;
    let segmentation = 5.0 / 6.0;
    assert!(
        (json["classification_dice"].as_f64().unwrap() - classification).abs() < 1e-12,
        "{json}"
    );
    assert!(
        (json["segmentation_dice"].as_f64().unwrap() - segmentation).abs() < 1e-12,
        "{json}"
    );
    assert!(
        (json["dice"].as_f64().unwrap() - (classification + segmentation) / 2.0).abs() < 1e-12,
        "{json}"
    );
    assert_eq!(json["class_iou"]["chair"].as_f64(), Some(0.0));
}

#[test]
fn validate_lists_every_problem_of_a_truncated_or_broken_file() {
    let Some(shared) = voc_core::testing::shared_with(
        "validate_lists_every_problem_of_a_truncated_or_broken_file",
        &SAMPLE_AND_REFERENCE,
    ) else {
        return;
    };
    let reference =
        std::fs::read_to_string(shared.join("reference/submission_voc_sample_train.csv")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.csv");
    let file_arg = file.to_str().unwrap();

    std::fs::write(&file, &reference).unwrap();
    let out = voc(&[
        "validate",
        "--submission",
        file_arg,
        "--data",
        &sample(&shared),
        "--split",
        "train",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("valid: 12 rows"), "{}", stdout(&out));

    // Truncated in the middle of image 4's segmentation row.
    let cut = reference.find("5_classification").unwrap() - 40;
    std::fs::write(&file, &reference[..cut]).unwrap();
    let out = voc(&[
        "validate",
        "--submission",
        file_arg,
        "--data",
        &sample(&shared),
        "--split",
        "train",
        "--json",
    ]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["valid"], false);
    let problems: Vec<String> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["message"].to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing row 5_classification")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing row 5_segmentation")),
        "{problems:?}"
    );
    assert_eq!(json["warnings"][0]["line"], 11, "{json}");

    // The sample's train file checked against the test split: 2 test images, other Ids, other sizes.
    std::fs::write(&file, &reference).unwrap();
    let out = voc(&[
        "validate",
        "--submission",
        file_arg,
        "--data",
        &sample(&shared),
    ]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("line 6: extra row 2_classification"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("not a valid submission for split 'test'"),
        "{}",
        stderr(&out)
    );

    let out = voc(&[
        "score",
        "--submission",
        file_arg,
        "--data",
        &sample(&shared),
        "--split",
        "test",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has no labels"), "{}", stderr(&out));
}

#[test]
fn bad_data_gives_clear_errors() {
    let Some(shared) = voc_core::testing::shared_with("bad_data_gives_clear_errors", &SAMPLE_TRAIN)
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let train = copy_train(&shared, dir.path());
    let data = dir.path().to_str().unwrap();
    let encode = ["encode", "--data", data, "--split", "train"];

    // A mask value that is not a class (nor void).
    let mut mask = vec![0u8; 513 * 513];
    mask[513 + 2] = 30;
    voc_data::npy::write_u8(&train.join("seg/train_0.npy"), &[513, 513], &mask).unwrap();
    let out = voc(&encode);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("train_0.npy") && stderr(&out).contains("30"),
        "{}",
        stderr(&out)
    );

    // A mask of another size than its image.
    voc_data::npy::write_u8(&train.join("seg/train_0.npy"), &[10, 12], &[0; 120]).unwrap();
    let out = voc(&encode);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("mask is 10x12 but its image"),
        "{}",
        stderr(&out)
    );

    // A label that is neither 0 nor 1.
    let csv = std::fs::read_to_string(train.join("train_set.csv")).unwrap();
    std::fs::write(
        train.join("train_set.csv"),
        csv.replacen("\n0,1,", "\n0,2,", 1),
    )
    .unwrap();
    let out = voc(&encode);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("train_set.csv") && stderr(&out).contains("'2'"),
        "{}",
        stderr(&out)
    );
}
