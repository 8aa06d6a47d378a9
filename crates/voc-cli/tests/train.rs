//! End-to-end tests of `voc train classify` and `voc eval classify`: the `voc` binary trains the scratch
//! CNN (no download) on a small folder built from the bundled sample, is killed mid-run and resumed, and
//! rejects bad input with errors that say what is wrong. Tests that need the pretrained backbones skip
//! without the shared hub cache (and fail under `VOC_REQUIRE_SHARED=1`).
use std::path::Path;
use std::time::Duration;

mod common;
use common::{copy_dir, kill_after_first_epoch, metrics_epochs, sample_copies, text, voc};

const SCRATCH: [&str; 12] = [
    "--model",
    "scratch",
    "--image-size",
    "108",
    "--batch",
    "4",
    "--val-fraction",
    "0.25",
    "--device",
    "cpu",
    "--seed",
    "3",
];

#[test]
fn a_killed_run_stays_loadable_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copies(tmp.path(), 16, false);
    let run = tmp.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());
    let mut args = vec![
        "train", "classify", "--data", data_s, "--out", run_s, "--epochs", "6",
    ];
    args.extend(SCRATCH);
    // SIGKILL (no clean-up) once the first epoch's files are written, mid-way through the next.
    let done = kill_after_first_epoch(
        &args,
        &run,
        Duration::from_secs(120),
        Duration::from_millis(150),
    );
    assert!(
        !done.is_empty() && done.len() < 6,
        "killed after epochs {done:?}"
    );

    // Loadable as it is: the last checkpoint scores.
    let last = run.join("last.safetensors");
    let out = voc(
        &[
            "eval",
            "classify",
            "--data",
            data_s,
            "--split",
            "train",
            "--classifier",
            last.to_str().unwrap(),
            "--json",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["report"]["map"].as_f64().unwrap() > 0.0, "{report}");

    // Resumed, it ends where an uninterrupted run would: every epoch once, in order.
    let out = voc(
        &[
            "train", "classify", "--resume", run_s, "--device", "cpu", "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(metrics_epochs(&run), [1, 2, 3, 4, 5, 6]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["epochs"], 6, "{summary}");
    for file in [
        "best.safetensors",
        "last.safetensors",
        "curves.png",
        "config.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    eprintln!("temporary files left by the kill: {leftovers:?}");

    // Resuming with another configuration is refused, naming the difference.
    let out = voc(
        &[
            "train", "classify", "--resume", run_s, "--lr", "0.5", "--device", "cpu",
        ],
        None,
    );
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("lr: 0.001 -> 0.5"), "{err}");
    // So is one that names another model.
    let out = voc(
        &[
            "train",
            "classify",
            "--resume",
            run_s,
            "--model",
            "mobilenet_v2",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(!out.status.success());
    let err = text(&out);
    assert!(
        err.contains("started with --model scratch, not mobilenet_v2"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copies(tmp.path(), 4, false);
    let data_s = data.to_str().unwrap();
    let run = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let check = |args: &[&str], expected: &str| {
        let out = voc(args, None);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {t}");
        assert!(
            t.contains(expected),
            "{args:?}: expected '{expected}' in {t}"
        );
    };
    let r1 = run("r1");
    check(
        &[
            "train", "classify", "--data", data_s, "--out", &r1, "--model", "alexnet",
        ],
        "unknown model 'alexnet': expected one of scratch, mobilenet_v2, efficientnet_lite0",
    );
    check(
        &[
            "train", "classify", "--data", data_s, "--out", &r1, "--model", "scratch", "--mode",
            "finetune",
        ],
        "has no pretrained weights",
    );
    check(
        &[
            "train",
            "classify",
            "--data",
            data_s,
            "--out",
            &r1,
            "--model",
            "scratch",
            "--val-split",
            "test",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
        "has no labels",
    );
    // An empty training split.
    let empty = tmp.path().join("empty");
    copy_dir(&data, &empty);
    let header = std::fs::read_to_string(data.join("train/train_set.csv")).unwrap();
    std::fs::write(
        empty.join("train/train_set.csv"),
        format!("{}\n", header.lines().next().unwrap()),
    )
    .unwrap();
    check(
        &[
            "train",
            "classify",
            "--data",
            empty.to_str().unwrap(),
            "--out",
            &run("r2"),
            "--model",
            "scratch",
            "--device",
            "cpu",
        ],
        "no images",
    );
    check(
        &["train", "classify", "--resume", &run("nothing-here")],
        "no run there",
    );
    check(
        &[
            "train",
            "classify",
            "--data",
            data_s,
            "--out",
            &r1,
            "--model",
            "scratch",
            "--unfreeze",
            "lots",
        ],
        "expected a number of blocks or 'all'",
    );
    // A file that is not a classifier checkpoint.
    let not_a_checkpoint = tmp.path().join("x.safetensors");
    std::fs::write(&not_a_checkpoint, b"not a checkpoint").unwrap();
    check(
        &[
            "eval",
            "classify",
            "--data",
            data_s,
            "--split",
            "train",
            "--classifier",
            not_a_checkpoint.to_str().unwrap(),
        ],
        "x.safetensors",
    );
    check(
        &[
            "eval",
            "classify",
            "--data",
            data_s,
            "--split",
            "test",
            "--classifier",
            not_a_checkpoint.to_str().unwrap(),
        ],
        "has no labels",
    );
}

/// `--unfreeze` beyond the backbone's blocks, and a checkpoint of another architecture, need a pretrained
/// model: they run against the shared hub cache.
#[test]
fn pretrained_bad_input_is_a_clear_error() {
    let Some(shared) = voc_core::testing::shared_with(
        "pretrained_bad_input_is_a_clear_error",
        &[voc_core::testing::hub_model("google/mobilenet_v2_1.0_224")],
    ) else {
        return;
    };
    let hf = shared.join("hf");
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copies(tmp.path(), 4, false);
    let run = tmp.path().join("run");
    let out = voc(
        &[
            "train",
            "classify",
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--model",
            "mobilenet_v2",
            "--unfreeze",
            "40",
            "--warmup-head-epochs",
            "0",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
        Some(&hf),
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("--unfreeze 40: mobilenet_v2 has 17 blocks"),
        "{t}"
    );
}

/// Two runs with the same seed compute the same thing: losses and scores epoch for epoch (initialisation,
/// shuffles, augmentation and dropout masks all come from the seed).
#[test]
fn the_same_seed_gives_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copies(tmp.path(), 8, false);
    let records = |name: &str| -> Vec<(f64, f64, f64)> {
        let run = tmp.path().join(name);
        let mut args = vec![
            "train",
            "classify",
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--epochs",
            "2",
        ];
        args.extend(SCRATCH);
        let out = voc(&args, None);
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["train_loss"].as_f64().unwrap(),
                    v["val_loss"].as_f64().unwrap(),
                    v["val_map"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (records("a"), records("b"));
    assert_eq!(a.len(), 2);
    assert_eq!(a, b, "two runs with seed 3 differ");
}

/// A seeded (not pretrained) ResNet-50 ImageNet classifier as a weights file, named as voc builds it.
fn seeded_resnet50(path: &Path) {
    use voc_tensor::testing::{seeded_tensor, SeededKind};
    let preset = voc_classify::ModelPreset::RESNET50;
    let config = preset.classifier_config();
    let names = voc_classify::weights::expected_tensors(&candle_core::Device::Cpu, |vb| {
        voc_classify::ImageClassifier::new(vb, config)
    })
    .unwrap();
    let tensors = names
        .iter()
        .map(|(name, shape)| {
            let t = seeded_tensor(name, shape, SeededKind::of(name, shape)).unwrap();
            (name.clone(), t)
        })
        .collect();
    let meta = voc_tensor::checkpoint::CheckpointMeta::new("resnet50_seeded", Vec::new());
    voc_tensor::checkpoint::save_checkpoint_tensors(path, &tensors, &meta).unwrap();
}

/// The notebook's other backbones train like the others: offline without weights the error names the
/// hub repo; with `--weights FILE` the frozen-feature pipeline runs and its checkpoint loads and scores.
#[test]
fn resnet50_trains_from_a_weights_file_and_its_checkpoint_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copies(tmp.path(), 8, false);
    let data_s = data.to_str().unwrap();
    let run = tmp.path().join("run");
    let run_s = run.to_str().unwrap();
    let frozen = [
        "train",
        "classify",
        "--data",
        data_s,
        "--out",
        run_s,
        "--model",
        "resnet50",
        "--mode",
        "frozen",
        "--image-size",
        "64",
        "--views",
        "1",
        "--epochs",
        "3",
        "--val-fraction",
        "0.25",
        "--device",
        "cpu",
        "--json",
    ];
    let out = voc(&frozen, None);
    common::assert_fails_naming(&out, &["timm/resnet50.a1_in1k"]);
    // A run that cannot start leaves nothing behind: the same --out works once the weights are there.
    assert!(!run.join("config.json").exists());

    let missing = tmp.path().join("no-such-weights.safetensors");
    let with_missing = [&frozen[..], &["--weights", missing.to_str().unwrap()][..]].concat();
    let out = voc(&with_missing, None);
    common::assert_fails_naming(&out, &["no-such-weights.safetensors"]);

    let weights = tmp.path().join("resnet50.seeded.safetensors");
    seeded_resnet50(&weights);
    let with_weights = [&frozen[..], &["--weights", weights.to_str().unwrap()][..]].concat();
    let summary = common::json_line(
        &voc(&with_weights, None),
        "voc train classify --model resnet50",
    );
    assert_eq!(summary["epochs"], 3, "{summary}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["config"]["weights"],
        weights.to_str().unwrap(),
        "{config}"
    );

    // The checkpoint loads and scores (as `voc predict --classifier` loads it).
    let out = voc(
        &[
            "eval",
            "classify",
            "--data",
            data_s,
            "--split",
            "train",
            "--classifier",
            run.join("best.safetensors").to_str().unwrap(),
            "--json",
            "--device",
            "cpu",
        ],
        None,
    );
    let report = common::json_line(&out, "voc eval classify");
    assert!(report["report"]["map"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn adversarial_training_runs_and_frozen_mode_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copies(tmp.path(), 8, false);
    let run = tmp.path().join("adv");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());
    let mut args = vec![
        "train",
        "classify",
        "--data",
        data_s,
        "--out",
        run_s,
        "--epochs",
        "1",
        "--adversarial",
        "pgd",
        "--adv-eps",
        "8",
        "--json",
    ];
    args.extend(SCRATCH);
    let out = voc(&args, None);
    assert!(out.status.success(), "{}", text(&out));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["config"]["adversarial"], "pgd");
    assert_eq!(config["config"]["adv_eps"], 8.0);
    assert_eq!(metrics_epochs(&run), [1]);

    let frozen = voc(
        &[
            "train",
            "classify",
            "--data",
            data_s,
            "--out",
            tmp.path().join("frozen").to_str().unwrap(),
            "--model",
            "mobilenet_v2",
            "--mode",
            "frozen",
            "--adversarial",
            "fgsm",
            "--device",
            "cpu",
        ],
        None,
    );
    common::assert_fails_naming(&frozen, &["--adversarial", "frozen mode"]);
    let bad_eps = voc(
        &[
            "train",
            "classify",
            "--data",
            data_s,
            "--out",
            tmp.path().join("eps").to_str().unwrap(),
            "--model",
            "scratch",
            "--adversarial",
            "fgsm",
            "--adv-eps",
            "300",
            "--device",
            "cpu",
        ],
        None,
    );
    common::assert_fails_naming(&bad_eps, &["--adv-eps", "300"]);
}
