//! End-to-end tests of `voc predict` and `voc segment`: the `voc` binary (cargo builds it for these tests)
//! is run on the sample data and its outputs read back.
//!
//! The pretrained segmenter comes from the offline hub cache in `shared/hf`; tests that need it are
//! skipped (with a `SKIPPED` line naming the missing file) where the shared folder is absent, and fail
//! under `VOC_REQUIRE_SHARED=1`. Bad-input tests that fail before any model is loaded use only the sample
//! bundled in `assets/`.
use std::collections::HashMap;
use std::path::Path;

use voc_core::testing::{hub_model, shared_with};
use voc_tensor::checkpoint::{save_checkpoint_tensors, CheckpointMeta};
use voc_tensor::{Device, Tensor};

mod common;
use common::{assert_fails_naming, json_line, path_str, repo_root, voc};

/// Copies the bundled sample's test split into a fresh folder the test may break.
fn sample_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = repo_root().join("assets/voc-sample/test");
    let dst = dir.path().join("test");
    std::fs::create_dir_all(dst.join("img")).unwrap();
    std::fs::copy(src.join("test_set.csv"), dst.join("test_set.csv")).unwrap();
    for entry in std::fs::read_dir(src.join("img")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join("img").join(entry.file_name())).unwrap();
    }
    dir
}

/// A `.npy` file of the given numpy dtype descriptor and shape, zero-filled.
fn write_npy(path: &Path, descr: &str, shape: &[usize], item_size: usize) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.resize(bytes.len() + shape.iter().product::<usize>() * item_size, 0);
    std::fs::write(path, bytes).unwrap();
}

/// The acceptance check of issue 5: the pretrained DeepLabV3 on voc-sample's labelled split, graded by
/// `voc score` (an independent port scores 0.88 segmentation, 1.0 classification).
#[test]
fn predict_and_score_voc_sample_train() {
    let Some(shared) = shared_with(
        "predict_and_score_voc_sample_train",
        &[
            hub_model("google/deeplabv3_mobilenet_v2_1.0_513"),
            "data/voc-sample".into(),
        ],
    ) else {
        return;
    };
    let hf = shared.join("hf");
    let data = shared.join("data/voc-sample");
    let dir = tempfile::tempdir().unwrap();
    let submission = dir.path().join("submission.csv");
    let masks = dir.path().join("masks");
    let out = voc(
        &[
            "predict",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--out",
            path_str(&submission),
            "--save-masks",
            path_str(&masks),
            "--device",
            "cpu",
            "--json",
        ],
        Some(&hf),
    );
    let summary = json_line(&out, "voc predict");
    assert_eq!(summary["images"], 6);
    assert_eq!(summary["rows"], 12);
    assert_eq!(summary["output_stride"], 16);
    assert!(masks.join("train_5.npy").is_file() && masks.join("train_5.png").is_file());

    let out = voc(
        &[
            "score",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--submission",
            path_str(&submission),
            "--json",
        ],
        None,
    );
    let score = json_line(&out, "voc score");
    let seg = score["segmentation_dice"].as_f64().unwrap();
    let cls = score["classification_dice"].as_f64().unwrap();
    eprintln!("voc-sample train: segmentation Dice {seg:.4}, classification Dice {cls:.4}");
    assert!(seg >= 0.86, "segmentation Dice {seg:.4} < 0.86");
    assert!(
        cls >= 0.999,
        "classification Dice {cls:.4}: every label of voc-sample train should be right"
    );

    // `voc eval segment` scores the same masks from the pixels: the same Dice and class IoU.
    let report_dir = dir.path().join("eval");
    let out = voc(
        &[
            "eval",
            "segment",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--out",
            path_str(&report_dir),
            "--device",
            "cpu",
            "--json",
        ],
        Some(&hf),
    );
    let eval = json_line(&out, "voc eval segment");
    assert_eq!(eval["images"], 6);
    let eval_seg = eval["segmentation_dice"].as_f64().unwrap();
    assert!(
        (eval_seg - seg).abs() < 1e-9,
        "{eval_seg} vs voc score's {seg}"
    );
    let eval_iou = eval["mean_class_iou"].as_f64().unwrap();
    let score_iou = score["mean_iou"].as_f64().unwrap();
    assert!(
        (eval_iou - score_iou).abs() < 1e-9,
        "{eval_iou} vs {score_iou}"
    );
    let accuracy = eval["pixel_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9 && accuracy <= 1.0, "{accuracy}");
    let confusion = eval["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 21);
    let csv = std::fs::read_to_string(report_dir.join("confusion.csv")).unwrap();
    assert_eq!(csv.lines().count(), 22, "{csv}");
    assert!(
        csv.starts_with("truth\\predicted,background,aeroplane,"),
        "{csv}"
    );
    assert!(report_dir.join("confusion.png").is_file());

    // A mask value that is neither a class nor void is named with its file.
    let broken = tempfile::tempdir().unwrap();
    common::copy_dir(&data, broken.path());
    let mask_path = broken.path().join("train/seg/train_5.npy");
    let mut bytes = std::fs::read(&mask_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] = 21;
    std::fs::write(&mask_path, bytes).unwrap();
    let out = voc(
        &[
            "eval",
            "segment",
            "--data",
            path_str(broken.path()),
            "--split",
            "train",
            "--device",
            "cpu",
        ],
        Some(&hf),
    );
    assert_fails_naming(&out, &["train_5.npy", "21"]);
}

/// `voc eval segment` on a split without masks says so before loading any model.
#[test]
fn eval_segment_needs_masks() {
    let data = repo_root().join("assets/voc-sample");
    let out = voc(
        &[
            "eval",
            "segment",
            "--data",
            path_str(&data),
            "--split",
            "test",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_fails_naming(&out, &["has no masks", "seg"]);
}

#[test]
fn segment_writes_palette_mask_and_overlay() {
    let Some(shared) = shared_with(
        "segment_writes_palette_mask_and_overlay",
        &[
            hub_model("google/deeplabv3_mobilenet_v2_1.0_513"),
            "data/photos/bird.png".into(),
        ],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mask, overlay) = (dir.path().join("mask.png"), dir.path().join("overlay.png"));
    let photo = shared.join("data/photos/bird.png");
    let out = voc(
        &[
            "segment",
            "--image",
            path_str(&photo),
            "--out",
            path_str(&mask),
            "--overlay",
            path_str(&overlay),
            "--json",
        ],
        Some(&shared.join("hf")),
    );
    let summary = json_line(&out, "voc segment");
    let bird = summary["class_areas"]["bird"].as_f64().unwrap_or(0.0);
    assert!(bird > 0.1, "the bird covers {bird} of the photo: {summary}");
    assert!(
        summary["class_areas"].as_object().unwrap().len() <= 3,
        "{summary}"
    );
    // PNG signature, then the IHDR chunk: width and height, big-endian, at bytes 16..24.
    for png in [&mask, &overlay] {
        let bytes = std::fs::read(png).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is not a PNG",
            png.display()
        );
        let size = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(
            (size(16), size(20)),
            (
                summary["width"].as_u64().unwrap() as u32,
                summary["height"].as_u64().unwrap() as u32
            )
        );
    }
}

#[test]
fn missing_test_image_is_named() {
    let data = sample_copy();
    let image = data.path().join("test/img/test_1.npy");
    std::fs::remove_file(&image).unwrap();
    let out_file = data.path().join("submission.csv");
    let out = voc(
        &[
            "predict",
            "--data",
            path_str(data.path()),
            "--out",
            path_str(&out_file),
        ],
        None,
    );
    assert_fails_naming(&out, &[path_str(&image), "Id 1"]);
    assert!(
        !out_file.exists(),
        "no submission may be written after an error"
    );
}

#[test]
fn image_that_is_not_hxwx3_uint8_is_named() {
    for (descr, shape, item, expect) in [
        ("|u1", vec![4, 5], 1, "(H, W, 3)"),
        ("<f4", vec![4, 5, 3], 4, "uint8"),
    ] {
        let data = sample_copy();
        let image = data.path().join("test/img/test_1.npy");
        write_npy(&image, descr, &shape, item);
        let out = voc(
            &[
                "predict",
                "--data",
                path_str(data.path()),
                "--out",
                path_str(&data.path().join("s.csv")),
            ],
            None,
        );
        assert_fails_naming(&out, &[path_str(&image), expect]);
    }
    // `voc segment` reads .npy photos with the same rule.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("gray.npy");
    write_npy(&image, "|u1", &[4, 5], 1);
    let out = voc(
        &[
            "segment",
            "--image",
            path_str(&image),
            "--out",
            path_str(&dir.path().join("m.png")),
        ],
        None,
    );
    assert_fails_naming(&out, &[path_str(&image), "(H, W, 3)"]);
}

#[test]
fn unknown_hub_id_offline_is_a_clear_error() {
    let data = sample_copy();
    let out = voc(
        &[
            "predict",
            "--data",
            path_str(data.path()),
            "--out",
            path_str(&data.path().join("s.csv")),
            "--segmenter",
            "nobody/no-such-segmenter",
        ],
        None,
    );
    assert_fails_naming(
        &out,
        &["nobody/no-such-segmenter", "HF_HUB_OFFLINE", "HF_HOME"],
    );
    let out = voc(
        &[
            "predict",
            "--data",
            path_str(data.path()),
            "--out",
            path_str(&data.path().join("s.csv")),
            "--segmenter",
            "not-a-model",
        ],
        None,
    );
    assert_fails_naming(&out, &["unknown segmenter 'not-a-model'"]);
}

/// The pretrained segmenter and the ImageNet MobileNetV2, in the shared hub cache.
fn both_models() -> [String; 2] {
    [
        hub_model("google/deeplabv3_mobilenet_v2_1.0_513"),
        hub_model("google/mobilenet_v2_1.0_224"),
    ]
}

fn tiny_checkpoint(path: &Path, architecture: &str, class_names: Vec<String>) {
    let tensors = HashMap::from([(
        "classifier.weight".to_string(),
        Tensor::zeros((2, 2), voc_tensor::DType::F32, &Device::Cpu).unwrap(),
    )]);
    save_checkpoint_tensors(
        path,
        &tensors,
        &CheckpointMeta::new(architecture, class_names),
    )
    .unwrap();
}

fn voc_names(background: bool) -> Vec<String> {
    background
        .then_some("background")
        .into_iter()
        .chain(voc_data::CLASS_NAMES)
        .map(String::from)
        .collect()
}

#[test]
fn checkpoint_of_the_wrong_architecture_is_named() {
    let data = sample_copy();
    let ckpt = data.path().join("classifier.safetensors");
    tiny_checkpoint(&ckpt, "mobilenet_v2_classifier", voc_names(false));
    let args = |flag: &str, value: &Path| -> Vec<String> {
        [
            "predict",
            "--data",
            path_str(data.path()),
            "--out",
            path_str(&data.path().join("s.csv")),
            flag,
            path_str(value),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: Vec<String>, hf: Option<&Path>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        voc(&args, hf)
    };
    // A classifier where the segmenter belongs: refused from the metadata, before any tensor is used.
    let out = run(args("--segmenter", &ckpt), None);
    assert_fails_naming(
        &out,
        &[
            path_str(&ckpt),
            "mobilenet_v2_classifier",
            "not a segmenter",
        ],
    );

    let Some(shared) = shared_with(
        "checkpoint_of_the_wrong_architecture_is_named",
        &both_models(),
    ) else {
        return;
    };
    let hf = shared.join("hf");
    // A segmenter where the classifier belongs.
    let seg_ckpt = data.path().join("segmenter.safetensors");
    tiny_checkpoint(&seg_ckpt, "deeplabv3_mobilenet_v2", voc_names(true));
    let out = run(args("--classifier", &seg_ckpt), Some(&hf));
    assert_fails_naming(
        &out,
        &[
            path_str(&seg_ckpt),
            "deeplabv3_mobilenet_v2",
            "not a classifier",
        ],
    );
    // Plain weights of another network (the ImageNet MobileNetV2) as the segmenter.
    let imagenet = std::fs::read_dir(hf.join("hub/models--google--mobilenet_v2_1.0_224/snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("model.safetensors");
    let out = run(args("--segmenter", &imagenet), Some(&hf));
    assert_fails_naming(
        &out,
        &[
            path_str(&imagenet),
            "deeplabv3_mobilenet_v2",
            "segmentation_head",
        ],
    );
}

/// `--classifier`: labels come from the checkpoint's network and thresholds, not from the masks.
#[test]
fn classifier_checkpoint_decides_the_labels() {
    let Some(shared) = shared_with("classifier_checkpoint_decides_the_labels", &both_models())
    else {
        return;
    };
    let hf = shared.join("hf");
    let snapshot = std::fs::read_dir(hf.join("hub/models--google--mobilenet_v2_1.0_224/snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // The ImageNet network with a 20-row head: any weights do, the thresholds decide.
    let mut tensors =
        voc_tensor::hub::load_tensors(&snapshot.join("model.safetensors"), &Device::Cpu).unwrap();
    for name in ["classifier.weight", "classifier.bias"] {
        let t = tensors[name].narrow(0, 0, 20).unwrap();
        tensors.insert(name.to_string(), t);
    }
    let data = sample_copy();
    let submission = data.path().join("submission.csv");
    for (threshold, expected_row) in [(0.0f32, "1 20"), (1.0, "")] {
        let ckpt = data.path().join(format!("clf{threshold}.safetensors"));
        let mut meta = CheckpointMeta::new("mobilenet_v2_classifier", voc_names(false));
        meta.input_size = Some((224, 224));
        meta.thresholds = Some(vec![threshold; 20]);
        save_checkpoint_tensors(&ckpt, &tensors, &meta).unwrap();
        let out = voc(
            &[
                "predict",
                "--data",
                path_str(data.path()),
                "--out",
                path_str(&submission),
                "--classifier",
                path_str(&ckpt),
                "--json",
            ],
            Some(&hf),
        );
        let summary = json_line(&out, "voc predict --classifier");
        assert!(
            summary["labels_from"]
                .as_str()
                .unwrap()
                .contains("classifier"),
            "{summary}"
        );
        let text = std::fs::read_to_string(&submission).unwrap();
        let row = text
            .lines()
            .find_map(|l| l.strip_prefix("1_classification,"))
            .unwrap_or_else(|| panic!("no classification row in {text}"));
        assert_eq!(row, expected_row, "threshold {threshold}: {text}");
    }
}
