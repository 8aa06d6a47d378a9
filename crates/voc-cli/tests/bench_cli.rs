//! End-to-end tests of `voc bench`: the `voc` binary (cargo builds it for these tests) is run on tiny
//! inputs and its JSON read back.
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voc"))
        .arg("bench")
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("running voc bench")
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = bench(args);
    assert!(
        out.status.success(),
        "voc bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line, got {stdout:?}");
    serde_json::from_str(lines[0]).expect("the line is JSON")
}

fn check_report(v: &serde_json::Value, model: &str, batch: u64, size: u64, train: bool) {
    assert_eq!(v["model"], model);
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["batch"], batch);
    assert_eq!(v["size"], size);
    assert_eq!(v["train"], train);
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
    };
    let (median, min, max) = (num("median_ms"), num("min_ms"), num("max_ms"));
    assert!(min > 0.0 && min <= median && median <= max, "{v}");
    let images_per_s = num("images_per_s");
    assert!(
        (images_per_s - batch as f64 * 1000.0 / median).abs() < 1e-6 * images_per_s,
        "{v}"
    );
    // The weights alone of these networks take several MiB.
    assert!(num("peak_rss_mb") > 10.0, "{v}");
}

#[test]
fn classifier_inference_and_training_step() {
    let common = [
        "--device", "cpu", "--size", "64", "--iters", "3", "--warmup", "1", "--json",
    ];
    let v = bench_json(&[&["--model", "mobilenet_v2", "--batch", "2"], &common[..]].concat());
    check_report(&v, "mobilenet_v2", 2, 64, false);
    let v = bench_json(
        &[
            &["--model", "mobilenet_v2", "--batch", "2", "--train"],
            &common[..],
        ]
        .concat(),
    );
    check_report(&v, "mobilenet_v2", 2, 64, true);
    let v = bench_json(
        &[
            &["--model", "efficientnet_lite0", "--batch", "1"],
            &common[..],
        ]
        .concat(),
    );
    check_report(&v, "efficientnet_lite0", 1, 64, false);
}

/// The notebook's other backbones: every workload runs (seeded random weights, tiny inputs).
#[test]
fn timm_backbones_inference_training_finetune_and_features() {
    let common = [
        "--device", "cpu", "--size", "32", "--iters", "1", "--warmup", "0", "--json",
    ];
    for (model, extra, batch, train) in [
        ("resnet50", &[][..], 2, false),
        ("resnet50", &["--train"][..], 2, true),
        ("resnet50v2", &["--train", "--unfreeze", "3"][..], 2, true),
        ("resnet50v2", &["--features"][..], 1, false),
        ("vgg16", &["--features"][..], 1, false),
        ("vgg16", &["--train", "--unfreeze", "2"][..], 2, true),
    ] {
        let batch_arg = batch.to_string();
        let args = [
            &["--model", model, "--batch", &batch_arg],
            extra,
            &common[..],
        ]
        .concat();
        let v = bench_json(&args);
        check_report(&v, model, batch, 32, train);
    }
}

#[test]
fn classifier_finetune_step_and_feature_pass() {
    let v = bench_json(&[
        "--device",
        "cpu",
        "--model",
        "mobilenet_v2",
        "--train",
        "--unfreeze",
        "2",
        "--batch",
        "2",
        "--size",
        "64",
        "--iters",
        "1",
        "--json",
    ]);
    check_report(&v, "mobilenet_v2", 2, 64, true);
    assert_eq!(v["unfreeze"], "2", "{v}");
    assert_eq!(v["features"], false, "{v}");
    let v = bench_json(&[
        "--device",
        "cpu",
        "--model",
        "mobilenet_v2",
        "--features",
        "--batch",
        "2",
        "--size",
        "64",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    check_report(&v, "mobilenet_v2", 2, 64, false);
    assert_eq!(v["unfreeze"], serde_json::Value::Null, "{v}");
    assert_eq!(v["features"], true, "{v}");
    // The plain workloads say they are neither.
    let v = bench_json(&[
        "--device", "cpu", "--size", "32", "--iters", "1", "--warmup", "0", "--json",
    ]);
    assert_eq!(v["unfreeze"], serde_json::Value::Null, "{v}");
    assert_eq!(v["features"], false, "{v}");
}

#[test]
fn segmenter_inference_and_training_step() {
    let common = [
        "--device", "cpu", "--size", "65", "--iters", "2", "--warmup", "1", "--json",
    ];
    let v = bench_json(&[&["--model", "deeplabv3"], &common[..]].concat());
    check_report(&v, "deeplabv3", 1, 65, false);
    let v = bench_json(
        &[
            &["--model", "deeplabv3plus", "--batch", "2", "--train"],
            &common[..],
        ]
        .concat(),
    );
    check_report(&v, "deeplabv3plus", 2, 65, true);
}

#[test]
fn text_output_names_the_numbers() {
    let out = bench(&[
        "--device", "cpu", "--size", "32", "--iters", "1", "--warmup", "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["mobilenet_v2 inference", "median", "images/s", "peak RSS"] {
        assert!(text.contains(needle), "{needle:?} missing from {text:?}");
    }
}

#[test]
fn bad_arguments_fail_with_a_message() {
    for (args, needle) in [
        (&["--batch", "0"][..], "--batch"),
        (&["--size", "8"][..], "--size 8"),
        (
            &["--model", "deeplabv3", "--train", "--batch", "1"][..],
            "--batch of at least 2",
        ),
        (&["--model", "resnet101"][..], "resnet101"),
        // MobileNetV2 has 17 blocks: the stem and layer.0..15.
        (
            &["--train", "--unfreeze", "99", "--size", "32"][..],
            "--unfreeze 99: mobilenet_v2 has 17 blocks",
        ),
        (&["--unfreeze", "2"][..], "needs --train"),
        (&["--train", "--unfreeze", "0"][..], "--unfreeze 0"),
        (&["--train", "--unfreeze", "five"][..], "five"),
        (&["--features", "--train"][..], "not with --train"),
        (&["--model", "deeplabv3", "--features"][..], "not deeplabv3"),
    ] {
        let out = bench(&[args, &["--device", "cpu"][..]].concat());
        assert!(!out.status.success(), "voc bench {args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "voc bench {args:?}: {needle:?} not in {err:?}"
        );
    }
}
