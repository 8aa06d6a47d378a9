//! End-to-end tests of `voc eval fuse` and `voc predict --labels classifier|mask|fused`: a small
//! MobileNetV2 head is trained on the shared voc-sample, the fusion rule is fitted on its labelled
//! split, and the fused labels are predicted, validated and scored. Those tests skip without the shared
//! hub cache and data (and fail under `VOC_REQUIRE_SHARED=1`); the bad-input tests fail before any
//! model is loaded and use only the sample bundled in `assets/`.
use std::path::Path;
use std::process::Output;

use voc_core::testing::{hub_model, shared_with};

mod common;
use common::{assert_fails_naming, json_line, path_str, repo_root, stderr, voc};

/// `voc score --json` of `submission` against `split` of `data`.
fn score(data: &Path, split: &str, submission: &Path) -> serde_json::Value {
    let out = voc(
        &[
            "score",
            "--data",
            path_str(data),
            "--split",
            split,
            "--submission",
            path_str(submission),
            "--json",
        ],
        None,
    );
    json_line(&out, "voc score")
}

#[test]
fn fuse_then_predict_fused_labels_on_voc_sample() {
    let Some(shared) = shared_with(
        "fuse_then_predict_fused_labels_on_voc_sample",
        &[
            hub_model("google/deeplabv3_mobilenet_v2_1.0_513"),
            hub_model("google/mobilenet_v2_1.0_224"),
            "data/voc-sample".into(),
        ],
    ) else {
        return;
    };
    let hf = shared.join("hf");
    let data = shared.join("data/voc-sample");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");

    // A classifier in seconds: a head on cached features of 96x96 inputs, 2 epochs.
    let out = voc(
        &[
            "train",
            "classify",
            "--model",
            "mobilenet_v2",
            "--mode",
            "frozen",
            "--epochs",
            "2",
            "--views",
            "1",
            "--image-size",
            "96",
            "--data",
            path_str(&data),
            "--out",
            path_str(&run),
            "--device",
            "cpu",
        ],
        Some(&hf),
    );
    assert!(out.status.success(), "voc train failed:\n{}", stderr(&out));
    let classifier = run.join("best.safetensors");
    assert!(classifier.is_file());

    let fusion = tmp.path().join("fusion.json");
    let scores = tmp.path().join("scores.csv");
    let out = voc(
        &[
            "eval",
            "fuse",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--classifier",
            path_str(&classifier),
            "--out",
            path_str(&fusion),
            "--folds",
            "3",
            "--repeats",
            "4",
            "--scores",
            path_str(&scores),
            "--device",
            "cpu",
            "--json",
        ],
        Some(&hf),
    );
    let summary = json_line(&out, "voc eval fuse");
    // What the fit saw: a header of Id + 3 x 20 columns, one row per image; areas are fractions
    // of the image that sum to at most 1, the labels the split's.
    let text = std::fs::read_to_string(&scores).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 1 + 6, "{text}");
    assert_eq!(rows[0][0], "Id");
    assert_eq!(rows[0][1], "p_aeroplane");
    assert_eq!(rows[0][21], "area_aeroplane");
    assert_eq!(rows[0][60], "true_tvmonitor");
    for row in &rows[1..] {
        assert_eq!(row.len(), 61, "{text}");
        let values: Vec<f64> = row[1..].iter().map(|v| v.parse().unwrap()).collect();
        assert!(
            values[..20].iter().all(|p| (0.0..=1.0).contains(p)),
            "{text}"
        );
        let area: f64 = values[20..40].iter().sum();
        assert!(area <= 1.0 + 1e-5, "{text}");
        assert!(values[40..].iter().all(|&t| t == 0.0 || t == 1.0), "{text}");
        assert!(values[40..].contains(&1.0), "{text}");
    }
    assert_eq!(summary["fusion"], path_str(&fusion));
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fusion).unwrap()).unwrap();
    for key in [
        "rule",
        "threshold_rule",
        "segmenter",
        "output_stride",
        "size_strategy",
        "classifier",
        "split",
        "in_sample",
        "cross_fitted",
    ] {
        assert_eq!(file[key], summary[key], "{key}: {file}");
    }
    assert_eq!(
        file["segmenter"],
        "hub:google/deeplabv3_mobilenet_v2_1.0_513"
    );
    assert_eq!(file["output_stride"], 16);
    assert_eq!(file["size_strategy"], "pad:513");
    assert_eq!(file["split"], "train");
    assert_eq!(file["images"], 6);
    assert_eq!(file["threshold_rule"], "global");
    assert_eq!(file["cross_fitted"]["folds"], 3);
    assert_eq!(file["cross_fitted"]["repeats"], 4);
    let wins = file["cross_fitted"]["fused_wins"].as_u64().unwrap();
    assert!(wins <= 4, "{file}");
    let best_labels = summary["best_labels"].as_str().unwrap().to_string();
    assert!(
        ["mask", "classifier", "fused"].contains(&best_labels.as_str()),
        "{summary}"
    );
    let w = file["rule"]["classifier_weight"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&w), "{file}");
    assert_eq!(
        file["rule"]["thresholds"]["per_class"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
    let in_sample = |k: &str| file["in_sample"][k].as_f64().unwrap();
    // The fusion is chosen over a grid that holds both sources alone.
    assert!(in_sample("fused") >= in_sample("classifier_only") - 1e-12);
    assert!(in_sample("fused") >= in_sample("mask_only") - 1e-12);
    for k in ["classifier_only_dice", "mask_only_dice", "fused_dice"] {
        let d = file["cross_fitted"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&d), "{k}: {file}");
    }

    // Fused labels: a valid submission whose classification Dice is the fit's in-sample Dice (same
    // images, same segmenter setup, same classifier).
    let submission = tmp.path().join("fused.csv");
    let out = voc(
        &[
            "predict",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--classifier",
            path_str(&classifier),
            "--labels",
            "fused",
            "--fusion",
            path_str(&fusion),
            "--out",
            path_str(&submission),
            "--device",
            "cpu",
            "--json",
        ],
        Some(&hf),
    );
    let predicted = json_line(&out, "voc predict --labels fused");
    assert_eq!(predicted["labels"], "fused");
    assert_eq!(predicted["rows"], 12);
    assert!(
        !stderr(&out).contains("was fitted with"),
        "same setup, no warning about it:\n{}",
        stderr(&out)
    );
    // The file's own held-out comparison: a warning exactly when the fusion did not win it.
    assert_eq!(
        stderr(&out).contains("the fusion did not beat both sources"),
        best_labels != "fused",
        "best held out: {best_labels}\n{}",
        stderr(&out)
    );
    let out = voc(
        &[
            "validate",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--submission",
            path_str(&submission),
        ],
        None,
    );
    assert!(out.status.success(), "voc validate:\n{}", stderr(&out));
    let fused = score(&data, "train", &submission)["classification_dice"]
        .as_f64()
        .unwrap();
    assert!(
        (fused - in_sample("fused")).abs() < 1e-9,
        "scored {fused}, fitted {}",
        in_sample("fused")
    );

    // --labels classifier is what --classifier alone gave before; --labels mask ignores it.
    let predict = |extra: &[&str], name: &str| {
        let path = tmp.path().join(name);
        let mut args = vec![
            "predict",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--out",
            path_str(&path),
            "--device",
            "cpu",
            "--json",
        ];
        args.extend_from_slice(extra);
        let summary = json_line(&voc(&args, Some(&hf)), name);
        (std::fs::read_to_string(&path).unwrap(), summary)
    };
    let classifier_s = path_str(&classifier);
    let (default, summary) = predict(&["--classifier", classifier_s], "default.csv");
    assert_eq!(summary["labels"], "classifier");
    let (explicit, _) = predict(
        &["--classifier", classifier_s, "--labels", "classifier"],
        "classifier.csv",
    );
    assert_eq!(default, explicit);
    let (mask, summary) = predict(&["--classifier", classifier_s, "--labels", "mask"], "m.csv");
    assert_eq!(summary["labels"], "mask");
    let (no_classifier, _) = predict(&[], "plain.csv");
    assert_eq!(mask, no_classifier);

    // A rule fitted with another setup still applies, with a warning naming what differs.
    let out = voc(
        &[
            "predict",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--classifier",
            path_str(&classifier),
            "--labels",
            "fused",
            "--fusion",
            path_str(&fusion),
            "--size-strategy",
            "pad:0",
            "--out",
            path_str(&tmp.path().join("pad0.csv")),
            "--device",
            "cpu",
        ],
        Some(&hf),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning") && err.contains("size strategy pad:513 (here pad:0)"),
        "{err}"
    );
}

/// `voc predict` on the bundled sample's test split with `extra` flags (fails before loading a
/// model when the flags do not fit).
fn predict_sample(extra: &[&str], out: &Path) -> Output {
    let data = repo_root().join("assets/voc-sample");
    let mut args = vec![
        "predict",
        "--data",
        path_str(&data),
        "--out",
        path_str(out),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    voc(&args, None)
}

#[test]
fn label_flags_that_do_not_fit_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("submission.csv");
    let checkpoint = tmp.path().join("classifier.safetensors");
    let checkpoint = path_str(&checkpoint);
    let fusion = tmp.path().join("fusion.json");
    let fusion_s = path_str(&fusion);

    let out = predict_sample(
        &["--labels", "fused", "--classifier", checkpoint],
        &out_file,
    );
    assert_fails_naming(&out, &["--labels fused", "--fusion"]);
    let out = predict_sample(&["--labels", "fused", "--fusion", fusion_s], &out_file);
    assert_fails_naming(&out, &["--labels fused", "--classifier"]);
    let out = predict_sample(&["--fusion", fusion_s], &out_file);
    assert_fails_naming(&out, &["--fusion", "--labels fused"]);
    let out = predict_sample(
        &["--classifier", checkpoint, "--fusion", fusion_s],
        &out_file,
    );
    assert_fails_naming(&out, &["--fusion", "--labels fused"]);
    let out = predict_sample(&["--labels", "classifier"], &out_file);
    assert_fails_naming(&out, &["--labels classifier", "--classifier"]);
    let out = predict_sample(&["--labels", "best"], &out_file);
    assert_fails_naming(&out, &["classifier", "mask", "fused"]);
    assert!(!out_file.exists());
}

#[test]
fn a_file_that_is_not_a_fusion_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("submission.csv");
    let checkpoint = tmp.path().join("classifier.safetensors");
    let fusion = tmp.path().join("fusion.json");
    let rule = serde_json::json!({
        "classifier_weight": 0.5,
        "area_scale": 0.01,
        "thresholds": {"per_class": vec![0.5; 20], "argmax_fallback": true},
    });
    let good = serde_json::json!({
        "format": "voc-fusion/1",
        "rule": rule,
        "threshold_rule": "global",
        "segmenter": "hub:google/deeplabv3_mobilenet_v2_1.0_513",
        "output_stride": 16,
        "size_strategy": "pad:513",
        "tta": null,
        "classifier": "classifier.safetensors",
        "data": "data",
        "split": "test",
        "images": 2,
        "in_sample": {"mask_only": 1.0, "classifier_only": 1.0, "fused": 1.0},
        "cross_fitted": {
            "folds": 2, "seed": 0, "images": 2,
            "classifier_only_dice": 1.0, "mask_only_dice": 1.0, "fused_dice": 1.0
        },
    });
    let mut three_thresholds = good.clone();
    three_thresholds["rule"]["thresholds"]["per_class"] = serde_json::json!([0.5, 0.5, 0.5]);
    let mut heavy = good.clone();
    heavy["rule"]["classifier_weight"] = serde_json::json!(2.0);
    let mut no_rule = good.clone();
    no_rule.as_object_mut().unwrap().remove("rule");
    let cases: [(String, &[&str]); 6] = [
        ("not json {".into(), &["not a fusion file"]),
        (
            serde_json::json!({"architecture": "mobilenet_v2"}).to_string(),
            &["not a fusion file", "voc-fusion/1"],
        ),
        (no_rule.to_string(), &["not a fusion file", "rule"]),
        (
            three_thresholds.to_string(),
            &["3 thresholds for 20 classes"],
        ),
        (heavy.to_string(), &["classifier_weight 2"]),
        (String::new(), &["not a fusion file"]),
    ];
    for (text, needles) in cases {
        std::fs::write(&fusion, &text).unwrap();
        let out = predict_sample(
            &[
                "--labels",
                "fused",
                "--fusion",
                path_str(&fusion),
                "--classifier",
                path_str(&checkpoint),
            ],
            &out_file,
        );
        let mut all = vec![path_str(&fusion)];
        all.extend_from_slice(needles);
        assert_fails_naming(&out, &all);
    }
    // The well-formed file passes the fusion checks: the error is now the missing checkpoint.
    std::fs::write(&fusion, good.to_string()).unwrap();
    let out = predict_sample(
        &[
            "--labels",
            "fused",
            "--fusion",
            path_str(&fusion),
            "--classifier",
            path_str(&checkpoint),
        ],
        &out_file,
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(!err.contains("fusion file"), "{err}");
    let missing = voc(
        &[
            "predict",
            "--data",
            path_str(&repo_root().join("assets/voc-sample")),
            "--labels",
            "fused",
            "--fusion",
            path_str(&tmp.path().join("absent.json")),
            "--classifier",
            path_str(&checkpoint),
            "--out",
            path_str(&out_file),
        ],
        None,
    );
    assert_fails_naming(&missing, &["absent.json", "cannot read the fusion file"]);
    assert!(!out_file.exists());
}

#[test]
fn eval_fuse_needs_a_labelled_split_and_sane_folds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_root().join("assets/voc-sample");
    let fusion = tmp.path().join("fusion.json");
    let classifier = tmp.path().join("classifier.safetensors");
    // `voc eval fuse` on the bundled sample with `flags` after the common ones.
    let fuse_with = |split: &str, flags: &[&str]| {
        let mut args = vec![
            "eval",
            "fuse",
            "--data",
            path_str(&data),
            "--split",
            split,
            "--classifier",
            path_str(&classifier),
            "--out",
            path_str(&fusion),
            "--device",
            "cpu",
        ];
        args.extend(flags);
        voc(&args, None)
    };
    let fuse = |split: &str, folds: &str| fuse_with(split, &["--folds", folds, "--repeats", "1"]);
    assert_fails_naming(&fuse("test", "2"), &["split 'test'", "no labels"]);
    // The bundled train split has 2 images.
    assert_fails_naming(&fuse("train", "1"), &["--folds 1", "2 to 2"]);
    assert_fails_naming(&fuse("train", "3"), &["--folds 3", "2 to 2"]);
    assert_fails_naming(
        &fuse_with("train", &["--folds", "2", "--repeats", "0"]),
        &["--repeats 0", "at least 1"],
    );
    // Output paths are checked before anything is loaded (no hub cache here).
    let out = fuse_with("train", &["--scores", path_str(tmp.path())]);
    assert_fails_naming(&out, &["--scores", "is a folder"]);
    assert!(!fusion.exists());
}
