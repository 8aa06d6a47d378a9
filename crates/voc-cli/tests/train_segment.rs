//! End-to-end tests of `voc train segment`: the `voc` binary trains a DeepLabV3+ from random weights
//! (no download) on a small folder built from the bundled sample, is killed mid-run and resumed, its
//! checkpoints load in `voc eval segment`, and bad input is refused with errors that say what is wrong.
use std::time::Duration;

mod common;
use common::{
    assert_fails_naming, json_line, kill_after_first_epoch, metrics_epochs, path_str,
    small_seg_data, text, voc,
};

/// A small, fast configuration: random DeepLabV3+, 65x65 crops, validation resized to 65x65.
const SMALL: [&str; 16] = [
    "--model",
    "deeplabv3plus",
    "--backbone",
    "random",
    "--crop",
    "65",
    "--batch",
    "2",
    "--val-fraction",
    "0.25",
    "--val-size",
    "resize:65",
    "--device",
    "cpu",
    "--seed",
    "5",
];

#[test]
fn a_killed_segment_run_stays_loadable_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_seg_data(tmp.path(), 8);
    let run = tmp.path().join("run");
    let (data_s, run_s) = (path_str(&data), path_str(&run));
    let mut args = vec![
        "train", "segment", "--data", data_s, "--out", run_s, "--epochs", "5",
    ];
    args.extend(SMALL);
    // SIGKILL (no clean-up) once the first epoch's files are written, mid-way through the next.
    let done = kill_after_first_epoch(
        &args,
        &run,
        Duration::from_secs(180),
        Duration::from_millis(300),
    );
    assert!(
        !done.is_empty() && done.len() < 5,
        "killed after epochs {done:?}"
    );

    // Loadable as it is: the last checkpoint segments and scores.
    let eval = |checkpoint: &str| {
        json_line(
            &voc(
                &[
                    "eval",
                    "segment",
                    "--data",
                    data_s,
                    "--split",
                    "train",
                    "--segmenter",
                    path_str(&run.join(checkpoint)),
                    "--size-strategy",
                    "resize:65",
                    "--json",
                    "--device",
                    "cpu",
                ],
                None,
            ),
            "voc eval segment",
        )
    };
    let scores = eval("last.safetensors");
    assert_eq!(scores["images"], 8);
    assert!(scores["pixel_accuracy"].as_f64().unwrap() > 0.0);

    // Resumed: it ends with every epoch once, in order.
    let out = voc(&["train", "segment", "--resume", run_s, "--json"], None);
    let summary = json_line(&out, "voc train segment --resume");
    assert_eq!(summary["epochs"], 5);
    assert_eq!(metrics_epochs(&run), [1, 2, 3, 4, 5]);
    for file in [
        "best.safetensors",
        "last.safetensors",
        "resume.safetensors",
        "curves.png",
        "confusion.csv",
        "confusion.png",
        "config.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let record: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    for key in [
        "train_loss",
        "val_loss",
        "val_pixel_accuracy",
        "val_miou",
        "val_dice",
        "lr",
        "seconds",
        "images_per_s",
    ] {
        assert!(record[key].is_number(), "{key} missing in {record}");
    }
    assert_eq!(record["val_iou"].as_array().unwrap().len(), 21);
    let best = eval("best.safetensors");
    assert!(best["mean_iou"].is_number());

    // A finished run resumed again has nothing left to do and says so by its summary.
    let again = json_line(
        &voc(&["train", "segment", "--resume", run_s, "--json"], None),
        "voc train segment --resume (done)",
    );
    assert_eq!(again["epochs"], 5);
    assert_eq!(metrics_epochs(&run), [1, 2, 3, 4, 5]);
    // Given more epochs, it trains on and config.json records the new length.
    let longer = json_line(
        &voc(
            &[
                "train", "segment", "--resume", run_s, "--epochs", "6", "--json",
            ],
            None,
        ),
        "voc train segment --resume --epochs 6",
    );
    assert_eq!(longer["epochs"], 6);
    assert_eq!(metrics_epochs(&run), [1, 2, 3, 4, 5, 6]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["config"]["epochs"], 6);
}

#[test]
fn segment_training_bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_seg_data(tmp.path(), 4);
    let data_s = path_str(&data);
    let run = tmp.path().join("run");
    let run_s = path_str(&run);
    // SMALL with the flags in `extra` set (replaced where SMALL has them).
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "segment", "--data", data_s, "--out", run_s];
        let mut small = SMALL.to_vec();
        for pair in extra.chunks(2) {
            if let Some(i) = small.iter().position(|a| *a == pair[0]) {
                small.drain(i..i + 2);
            }
        }
        args.extend(small);
        args.extend(extra);
        voc(&args, None)
    };

    // A crop larger than the networks are trained at.
    assert_fails_naming(&train(&["--crop", "600"]), &["--crop 600", "513"]);
    // A validation split without masks.
    let mut args = vec!["train", "segment", "--data", data_s, "--out", run_s];
    args.extend(&SMALL[..8]);
    args.extend(["--val-split", "test"]);
    assert_fails_naming(&voc(&args, None), &["'test'", "no masks", "seg"]);
    // Unknown choices list the known ones.
    assert_fails_naming(
        &train(&["--backbone", "resnet"]),
        &["unknown backbone 'resnet'", "imagenet, voc, random"],
    );
    assert!(!run.exists(), "a failed start left {run_s} behind");

    // A mask with a value that is neither a class (0..=20) nor void (255).
    let bad = tmp.path().join("bad");
    common::copy_dir(&data, &bad);
    let mask = std::fs::read_dir(bad.join("train/seg"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&mask).unwrap();
    let n = bytes.len();
    bytes[n - 1] = 30;
    std::fs::write(&mask, bytes).unwrap();
    let mut args = vec!["train", "segment", "--data", path_str(&bad), "--out", run_s];
    args.extend(SMALL);
    let name = mask.file_name().unwrap().to_str().unwrap().to_string();
    assert_fails_naming(&voc(&args, None), &[&name, "30"]);
    assert!(!run.exists(), "a failed start left {run_s} behind");

    // Starting weights that are not a MobileNetV2: a file of other tensors.
    let foreign = tmp.path().join("classifier.safetensors");
    let t = candle_core::Tensor::zeros((20, 8), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("classifier.weight".to_string(), t)]),
        &foreign,
    )
    .unwrap();
    let mut args = vec!["train", "segment", "--data", data_s, "--out", run_s];
    args.extend([
        "--backbone",
        "voc",
        "--weights",
        path_str(&foreign),
        "--crop",
        "65",
        "--val-fraction",
        "0.25",
        "--device",
        "cpu",
    ]);
    assert_fails_naming(
        &voc(&args, None),
        &["classifier.safetensors", "mobilenet_v2"],
    );
    assert!(!run.exists(), "a failed start left {run_s} behind");

    // Resuming with another configuration, or a folder without a run.
    let ok = train(&["--epochs", "1"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_fails_naming(
        &voc(
            &["train", "segment", "--resume", run_s, "--lr", "0.5"],
            None,
        ),
        &["another configuration", "lr"],
    );
    assert_fails_naming(
        &voc(
            &["train", "segment", "--resume", run_s, "--backbone", "voc"],
            None,
        ),
        &["started with --backbone random, not voc"],
    );
    assert_fails_naming(
        &train(&["--epochs", "1"]),
        &["already holds a training run"],
    );
    assert_fails_naming(
        &voc(
            &[
                "train",
                "segment",
                "--resume",
                path_str(&tmp.path().join("nothing")),
            ],
            None,
        ),
        &["no run there"],
    );
}
